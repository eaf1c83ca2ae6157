"""What ``clotclf evaluate`` writes beside metrics.json and predictions.csv: one QuPath GeoJSON per
scored slide (``qupath/``), the heatmaps of the slides its report shows (``heatmaps/``, over the
TileSet's tissue mask: evaluate reads no slide) and ``report.html``.

The report shows the slides of the patients the model got most wrong first (largest patient-level
log loss of the true class), at most :data:`~clotclf_core.scoring.report_html.MAX_SLIDES` of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from clotclf_core.scoring import metrics
from clotclf_core.scoring import report_html as rh
from clotclf_core.scoring.slide_views import SlideScores, write_geojson, write_heatmap

#: the metrics of a group's table in the report
COLUMNS = ("n", "weighted_log_loss", "balanced_accuracy", "roc_auc", "accuracy")


def slide_views(df: pd.DataFrame, member: dict[str, Any], slides: Any, data: Any, views: Any) -> dict[str, SlideScores]:
    """Each scored slide's tiles with every model's per-tile P (and attention): ``member`` name ->
    (rows, C) tile probabilities of ``df``'s rows (tile-level), or name -> BagScores of ``slides``
    (MIL, scored with details). ``views`` is the TileSet the slides' geometry and masks come from."""
    n = len(member)
    of = f"mean of the {n} fold models ({', '.join(member)})" if n > 1 else ""
    weights = {name: 1.0 / n for name in member}
    out = {}
    if slides is None:
        for image_id, pos in df.groupby("image_id", sort=False).indices.items():
            out[image_id] = SlideScores(image_id, views, df.iloc[pos].reset_index(drop=True),
                                        {k: np.asarray(p, dtype=np.float64)[pos] for k, p in member.items()}, weights, {}, of, n)
        return out
    for i, image_id in enumerate(slides.ids):
        rows = data.index.iloc[slides.rows[i]].reset_index(drop=True)
        probs = {k: np.asarray(b.tile_probs[i], dtype=np.float64) for k, b in member.items()}
        attention = {k: np.asarray(b.attention[i], dtype=np.float64) for k, b in member.items() if b.attention[i] is not None}
        out[image_id] = SlideScores(image_id, views, rows, probs, weights, attention, of, n)
    return out


def worst_first(df: pd.DataFrame, probs: np.ndarray, labels: Sequence[str]) -> list[str]:
    """The slides, those of the patients with the largest log loss of their true class first."""
    patients = metrics.aggregate(df, probs, labels, "patient")
    truth = metrics.class_indices(patients["label"], labels)
    p = patients[[f"p_{name}" for name in labels]].to_numpy()[np.arange(len(patients)), truth]
    order = patients["patient_id"].to_numpy()[np.argsort(-np.log(np.clip(p, 1e-15, 1)), kind="stable")]
    by_patient = df.drop_duplicates("image_id").groupby("patient_id", sort=False)["image_id"].apply(list)
    return [i for patient in order for i in by_patient.get(patient, [])]


def write_outputs(out: Path, report: dict[str, Any], table: pd.DataFrame, df: pd.DataFrame, probs: np.ndarray,
                  member: dict[str, Any], slides: Any, data: Any, views: Any, labels: list[str], qupath: bool) -> None:
    """``qupath/``, ``heatmaps/`` and ``report.html`` into ``out`` (evaluate's staged folder)."""
    per_slide = slide_views(df, member, slides, data, views)
    if qupath:
        for image_id, view in per_slide.items():
            write_geojson([view], labels, out / "qupath" / f"{image_id}.geojson")
    shown = [i for i in worst_first(df, probs, labels) if i in per_slide][: rh.MAX_SLIDES]
    heatmaps = [write_heatmap(per_slide[i], labels, out / "heatmaps" / f"{i}.png") for i in shown]
    write_report(out, report, df, probs, labels, heatmaps, views, len(per_slide))


def write_report(out: Path, report: dict[str, Any], df: pd.DataFrame, probs: np.ndarray, labels: list[str],
                 heatmaps: list[Path], views: Any, n_slides: int) -> Path:
    folds = report.get("fold_ensemble")
    run = Path(report["run"]).name
    data = Path(report.get("tileset") or report.get("features") or "").name
    subtitle = [f"model {run}" + (f": the ensemble of its {len(folds)} folds ({', '.join(folds)})" if folds else ""),
                (f"on {data}: {report['patients_scored']} patient(s) scored ({report['subset']}); "
                 f"{report['seen_in_training']} of its patients were trained on"),
                report.get("note", "")]
    sections = [("Headline", rh.headline_html(report["headline"]))]
    for name, group in report["groups"].items():
        rows = [{"level": level, **{k: m.get(k) for k in COLUMNS}} for level, m in group["metrics"].items()
                if isinstance(m, dict) and "n" in m]
        sections.append((f"{name} patients (n = {group['n_patients']})",
                         rh.notes_html([group["what"]]) + rh.table_html(pd.DataFrame(rows))))
    patients = metrics.aggregate(df, probs, labels, "patient")
    group_of = df.drop_duplicates("patient_id").set_index("patient_id")["group"]
    patients.insert(0, "group", patients["patient_id"].map(group_of))
    patients["pred"] = [labels[i] for i in patients[[f"p_{n}" for n in labels]].to_numpy().argmax(axis=1)]
    for c in (f"p_{n}" for n in labels):
        patients[c] = patients[c].round(4)
    sections.append(("Patients", rh.table_html(patients)))
    qc = [rh.Picture(f"{p.stem}: tiling QC", Path(views.root) / "qc" / p.name, "qc") for p in heatmaps
          if (Path(views.root) / "qc" / p.name).is_file()]
    shown = (f"{len(heatmaps)} of {n_slides} slides, those of the patients the model got most wrong first "
             "(largest log loss of the true class); every slide's tiles are in qupath/.")
    sections.append(("Tiling QC", rh.qc_html(qc)))
    sections.append(("Heatmaps", rh.notes_html([shown]) + rh.gallery_html([rh.Picture(p.stem, p, "heatmap") for p in heatmaps])))
    sections.append(("Plots", rh.gallery_html(rh.plot_pictures(out / "plots"))))
    return rh.write_report(out / "report.html", f"clotclf evaluate: {run}", subtitle, sections)

"""What ``clotclf predict`` writes beside its tables: per slide a heatmap and a QuPath GeoJSON
(:mod:`clotclf_core.scoring.slide_views`), per model the columns of ``predictions.csv``, and
``report.html`` (:mod:`clotclf_core.scoring.report_html`).

Every member of the ensemble is in the pictures, MIL members included (their per-tile probability
is the tile as a bag of one); a member whose tiling recipe differs scored other tiles, so it is
named as left out of a heatmap drawn on the first recipe's tiles, and its tiles are in the GeoJSON
as their own detections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from clotclf_core.predict.ensemble import LoadedModel, MemberScores
from clotclf_core.scoring import report_html as rh
from clotclf_core.scoring.headline import headline
from clotclf_core.scoring.slide_views import SlideScores, align, write_geojson, write_heatmap
from clotclf_core.slides.open import find_slide, open_slide

Scored = Sequence[tuple[LoadedModel, Any, MemberScores]]


def _groups(scored: Scored, names: dict[int, str]) -> list[tuple[Any, list[tuple[LoadedModel, MemberScores, str]]]]:
    """The members by the TileSet (tiling recipe) they scored, in order."""
    out: list[tuple[Any, list]] = []
    for m, ts, res in scored:
        for t, members in out:
            if t is ts:
                members.append((m, res, names[id(m)]))
                break
        else:
            out.append((ts, [(m, res, names[id(m)])]))
    return out


def _who(members: list[tuple[LoadedModel, MemberScores, str]], others: list[str], n_models: int) -> str:
    if n_models == 1:
        return ""
    mil = [n for m, _, n in members if m.form.is_mil]
    text = f"weighted mean of {', '.join(n for _, _, n in members)}"
    if mil:
        text += f" (MIL {'model' if len(mil) == 1 else 'models'} {', '.join(mil)}: each tile as a bag of one)"
    if others:
        text += f"; left out: {', '.join(others)} (tiled differently)"
    return text


def slide_scores(scored: Scored, names: dict[int, str], image_id: str,
                 positions: dict[int, dict[str, np.ndarray]] | None = None) -> list[SlideScores]:
    """The slide's tiles in each tiling recipe with every member's P per tile, aligned. ``positions``:
    per TileSet (by ``id``), each slide's rows in its index (computed here when not given)."""
    out = []
    groups = _groups(scored, names)
    everyone = [n for _, members in groups for _, _, n in members]
    for ts, members in groups:
        where = (positions or {}).get(id(ts))
        if where is None:
            where = ts.index.groupby("image_id", sort=False).indices
        if image_id not in where:
            continue
        rows = ts.index.iloc[where[image_id]]
        probs, weights, attention = {}, {}, {}
        for m, res, name in members:
            if image_id not in res.tiles:
                continue
            probs[name] = align(rows, res.tiles[image_id], res.tile_probs[image_id])
            weights[name] = m.weight
            if image_id in res.attention:
                attention[name] = align(rows, res.tiles[image_id], res.attention[image_id])
        if probs:
            mine = {n for _, _, n in members}
            out.append(SlideScores(image_id, ts, rows.reset_index(drop=True), probs, weights, attention,
                                   _who(members, [n for n in everyone if n not in mine], len(everyone)), len(everyone)))
    return out


def write_slide_views(scored: Scored, names: dict[int, str], labels: list[str], out: Path, slides_dir: str | Path,
                      heatmaps: bool, qupath: bool, trust_declared_size: bool = False) -> tuple[list[str], list[str]]:
    """``heatmaps/<image_id>.png`` (over the slide's thumbnail) and ``qupath/<image_id>.geojson``;
    ``trust_declared_size``: the slides are opened as ``predict --trust-declared-size`` says."""
    ids = list(dict.fromkeys(i for _, _, res in scored for i in res.tiles))
    files = {}
    for _, ts, _ in scored:
        files.update({k: v.get("file") for k, v in ts.slides.items()})
    positions = {id(ts): ts.index.groupby("image_id", sort=False).indices for _, ts, _ in scored}
    pngs, geojsons = [], []
    for image_id in ids:
        views = slide_scores(scored, names, image_id, positions)
        if not views:
            continue
        if qupath:
            geojsons.append(str(write_geojson(views, labels, out / "qupath" / f"{image_id}.geojson")))
        if heatmaps:
            view = next((v for v in views if v.attention), views[0])
            thumb, dims = _thumbnail(slides_dir, image_id, files.get(image_id), trust_declared_size)
            pngs.append(str(write_heatmap(view, labels, out / "heatmaps" / f"{image_id}.png", thumb, dims)))
    return pngs, geojsons


def _thumbnail(slides_dir: str | Path, image_id: str, name: str | None,
               trust_declared_size: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    path = Path(slides_dir) / name if name else None
    if path is None or not path.is_file():
        path = find_slide(slides_dir, image_id)
    slide = open_slide(str(path), trust_declared_size=trust_declared_size)
    try:
        return slide.thumbnail(1024), slide.dimensions
    finally:
        slide.close()


# ----------------------------------------------------------------------------- per-model columns


def per_model_columns(table: pd.DataFrame, scored: Scored, names: dict[int, str], labels: list[str],
                      patient_of: dict[str, str]) -> pd.DataFrame:
    """``p_<label>[<model>]`` beside the ensemble's columns (an ensemble only): each model's slide
    probability, and per patient the mean of that model's slides (empty where it scored none)."""
    if len({names[id(m)] for m, _, _ in scored}) < 2:
        return table
    table = table.copy()
    slide_rows = (table["level"] == "slide").to_numpy()
    patient_rows = (table["level"] == "patient").to_numpy()
    for name in dict.fromkeys(names[id(m)] for m, _, _ in scored):
        parts = [res.slides for m, _, res in scored if names[id(m)] == name]
        per_slide = pd.concat(parts).drop_duplicates("image_id").set_index("image_id")
        per_patient = per_slide.assign(patient_id=per_slide.index.map(patient_of)).groupby("patient_id").mean(numeric_only=True)
        for label in labels:
            col = f"p_{label}[{name}]"
            values = np.full(len(table), np.nan)
            values[slide_rows] = table.loc[slide_rows, "image_id"].map(per_slide[f"p_{label}"]).to_numpy(dtype=float)
            values[patient_rows] = table.loc[patient_rows, "patient_id"].map(per_patient[f"p_{label}"]).to_numpy(dtype=float)
            table[col] = np.round(values, 6)
    return table


# ----------------------------------------------------------------------------- report.html


def write_report(out: Path, summary: dict[str, Any], table: pd.DataFrame, labels: list[str], metrics: dict[str, Any] | None,
                 scored: Scored, heatmaps: list[str]) -> Path:
    """``report.html`` of a prediction: what was scored by whom, the metrics when the manifest had
    labels, every patient's and slide's row, and the QC picture and heatmap of the first slides."""
    models = summary["models"]
    subtitle = [f"{summary['n_slides']} slide(s) of {summary['n_patients']} patient(s), scored by "
                + (f"{len(models)} models: " if len(models) > 1 else "the model ")
                + ", ".join(f"{m['name']} (weight {m['weight']:g})" if len(models) > 1 else m["name"] for m in models),
                f"patients from the {summary['patient_ids_from']}"]
    sections = []
    if metrics and "patient" in metrics:
        left_out = metrics["patient_note"].partition("; ")[2]
        h = headline("test", {"patient": metrics["patient"]}, len(labels),
                     what="labelled patients the models never trained on" + (f" ({left_out})" if left_out else ""))
        rows = [{"level": level, **{k: metrics[level].get(k) for k in ("n", "weighted_log_loss", "balanced_accuracy",
                                                                       "roc_auc", "accuracy")}}
                for level in ("slide", "patient", "patient_all") if level in metrics]
        body = rh.headline_html(h) + rh.table_html(pd.DataFrame(rows))
        body += rh.notes_html([metrics.get("patient_all_note", ""), metrics.get("without_tiles_note", "")])
        sections.append(("Headline", body))
    elif summary.get("labels_note"):
        sections.append(("Labels", rh.notes_html([summary["labels_note"]])))
    patients = table[table["level"] == "patient"].drop(columns=["level", "image_id", "n_tiles"], errors="ignore")
    notes = [f"{len(summary['patients_without_tiles'])} patient(s) had no usable tile: equal probabilities."
             if summary["patients_without_tiles"] else "",
             "in_model_split = train: a TRAINING patient of the model(s); its prediction is optimistic."
             if summary["patients_in_model_split"].get("train") else ""]
    sections.append(("Patients", rh.table_html(patients.dropna(axis=1, how="all")) + rh.notes_html(notes)))
    slides = table[table["level"] == "slide"].drop(columns=["level", "n_slides", "in_model_split"], errors="ignore")
    sections.append(("Slides", rh.table_html(slides.dropna(axis=1, how="all"))))
    ids = list(slides.loc[slides["status"] == "ok", "image_id"])[: rh.MAX_SLIDES]  # the first slides, in job order
    pngs = {Path(p).stem: Path(p) for p in heatmaps}
    qc = []
    for image_id in ids:
        path = next((Path(ts.root) / "qc" / f"{image_id}.png" for _, ts, _ in scored
                     if (Path(ts.root) / "qc" / f"{image_id}.png").is_file()), None)
        if path is not None:
            qc.append(rh.Picture(f"{image_id}: tiling QC", path, "qc"))
    shown = [pngs[i] for i in ids if i in pngs]
    more = [f"{len(heatmaps) - len(shown)} more heatmaps in heatmaps/." if len(heatmaps) > len(shown) else ""]
    sections.append(("Tiling QC", rh.qc_html(qc)))
    sections.append(("Heatmaps", rh.gallery_html([rh.Picture(p.stem, p, "heatmap") for p in shown]) + rh.notes_html(more)))
    sections.append(("Plots", rh.gallery_html(rh.plot_pictures(out / "plots"))))
    return rh.write_report(out / "report.html", "clotclf predict", subtitle, sections)

"""``clotclf predict``: new slides -> tiles -> one or more models -> slide and patient probabilities.

The path is the training path run forward: the slides are tiled with the *same* tiling settings
and filters each model was trained with (read from its ``config.json``); a tile-level model
scores every tile (slide probability = mean of its tiles), a multiple-instance (MIL) model pools
every tile of a slide in one bag — on features of its encoder, rebuilt from its record and
checked, when it was trained on a feature store (:mod:`clotclf_core.predict.ensemble`); patient
probability = mean of its slides (as in ``metrics.aggregate``). Several models form an ensemble:
the weighted mean of their slide probabilities, whatever their kind (the published PoolFormer +
CCT ensemble is ``--model A --model B``).

Patients: see :mod:`clotclf_core.predict.submission` (the manifest's ``patient_id``, else the STRIP AI
image-id convention ``<patient>_<n>``, else refused unless ``--slide-is-patient``). A manifest's
labels are not needed: any are accepted (``Other`` / ``Unknown`` of STRIP AI's ``other.csv``), and
metrics are computed only when they are all labels the models know.

A cross-validation run folder (``--fold all``) given as one ``--model`` is the ensemble of its folds.

Writes into OUT:
  predictions.csv   one row per slide and per patient: probabilities, predicted label, tiles used,
                    which side of the models' split a patient was on (``in_model_split``), status;
                    for an ensemble also each model's ``p_<label>[<model>]``
  submission.csv    Kaggle STRIP AI style: ``patient_id,CE,LAA``, exactly one row per patient of
                    the job, in manifest order; a patient with no usable tile gets equal
                    probabilities (:data:`NO_TILE_NOTE`) and is listed in the summary
  heatmaps/*.png    tile probabilities over each slide's thumbnail (the ensemble's, MIL members
                    included), axes and scale bar in µm, and each tile's attention weight beside
                    them when a model has attention (``--attention-heatmaps`` requires one)
  qupath/*.geojson  per slide, for QuPath's File > Import objects: the tiles as detections with
                    their probabilities (per model and ensemble) and the tissue outline
                    (:mod:`clotclf_core.scoring.qupath`)
  report.html       one self-contained page: metrics, patients, slides, QC pictures, heatmaps
  tiles/            the TileSet(s) the slides were cut into (reused when predicting again)
  features/         a MIL model's encoder features of those tiles (reused when predicting again)
  metrics.json      only when the manifest has labels: slide- and patient-level metrics on the
                    patients the models never trained on (training patients apart, labelled)
  summary.json      what ``--json`` prints
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from clotclf_core.models.runtime import pick_runtime
from clotclf_core.plugin.io import csv_text as to_csv_text
from clotclf_core.plugin.io import csv_unescape, write_guard, write_json, write_text
from clotclf_core.predict.ensemble import (
    LoadedModel,
    PredictError,
    check_feature_models,
    load_models,
    member_names,
    score_features,
    score_member,
)
from clotclf_core.predict.outputs import per_model_columns, write_report, write_slide_views
from clotclf_core.predict.submission import NO_TILE_NOTE, job_of, round_rows
from clotclf_core.scoring import metrics
from clotclf_core.tiling.run import tile_slides
from clotclf_core.tiling.settings import TileSettings
from clotclf_core.tiling.tileset import TileSet


def _tiling_of(m: LoadedModel) -> dict[str, Any]:
    """The tiling settings, filters and source a model was trained with (config.json's ``tileset``)."""
    recorded = dict((m.config.get("tileset") or {}).get("settings") or {})
    if not recorded:
        raise PredictError(
            f"model '{m.ref}' does not record the tiling settings it was trained with (config.json has no "
            "'tileset' section), so its tiles cannot be reproduced; use a run directory written by `clotclf train`"
        )
    settings = TileSettings.from_recorded(recorded)  # records of clotclf 0.1 get its geometry (edges dropped, white glass)
    filters = [(f["name"], dict(f.get("options") or {})) for f in recorded.get("filters", [])]
    source = recorded.get("source")
    return {"settings": settings, "filters": filters, "source": None if source in (None, "auto") else source}


def _settings_key(t: dict[str, Any]) -> str:
    blob = json.dumps({"s": t["settings"].model_dump(mode="json"), "f": t["filters"], "src": t["source"]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _trained_on(loaded: list[LoadedModel]) -> dict[str, set[str]]:
    """The patients each side of the models' recorded splits holds (union over the ensemble)."""
    sides: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for m in loaded:
        split = m.config.get("split") or {}
        for side in sides:
            sides[side] |= {str(p) for p in split.get(side, [])}
    return sides


def predict(
    slides_dir: str | Path,
    models: Sequence[str],
    out: str | Path,
    manifest: str | Path | None = None,
    weights: Sequence[float] | None = None,
    workers: int = 1,
    batch_size: int = 64,
    loader_workers: int = 0,
    device: str = "auto",
    heatmaps: bool = True,
    progress: bool = True,
    slide_is_patient: bool = False,
    attention: bool = False,
    standardise: str = "auto",
    qupath: bool = True,
    features: str | Path | None = None,
    dask: str | None = None,
    devices: Sequence[str] | None = None,
    trust_declared_size: bool = False,
) -> dict[str, Any]:
    """Run the whole path; returns a summary (what ``--json`` prints). See the module docstring.

    Never drops a patient: every patient of the job (the manifest's, or the folder's) has one row
    in submission.csv. One with no usable tile gets equal probabilities (:data:`NO_TILE_NOTE`) and
    is listed in ``summary["patients_without_tiles"]``; slides that could not be read are in
    ``summary["failed_slides"]`` (``clotclf predict`` then exits with code 3). ``attention``: the
    heatmaps must show attention weights (refused at once unless some model has them; without it,
    a model with attention adds its attention panel anyway). ``qupath``: write the QuPath GeoJSON.
    ``features``: score the slides of this feature store (``clotclf embed`` or ``clotclf
    import-features``) instead of slides: MIL models on features of its encoder only, no slide is
    opened, no heatmaps and no QuPath files (``slides_dir`` is not read). ``dask`` (an address, or
    ``local``): slides are tiled, and a MIL model's encoder embeds them, one task per slide on that
    cluster; ``devices``: the encoder embeds in one process per device. ``trust_declared_size``: read
    TIFFs whose declared size passes the memory caps (:mod:`clotclf_core.slides.guard`)."""
    t0 = time.perf_counter()
    out = Path(out)
    if batch_size < 1:
        raise PredictError(f"--batch-size must be at least 1 (got {batch_size})")
    if loader_workers < 0:
        raise PredictError(f"--loader-workers must be 0 or more (got {loader_workers})")
    if attention and not heatmaps:
        raise PredictError("--attention-heatmaps and --no-heatmaps ask for opposite things: give one of them")
    loaded = load_models(models, weights, device, attention, standardise, encoders=features is None)
    labels = loaded[0].labels
    rt = pick_runtime(device)
    names = {id(m): n for m, n in zip(loaded, member_names(loaded))}
    store = open_store(features, loaded) if features is not None else None
    heatmaps = heatmaps and store is None  # stored features come without slide images
    qupath = qupath and store is None
    job = job_of(slides_dir, manifest, slide_is_patient, ids=sorted(store.slides) if store is not None else None)
    job_ids = set(job.image_ids)
    _check_writable(out)
    _clear_earlier_results(out)  # (after every check: a refused command leaves the earlier results alone)

    # 1. tile once per distinct tiling recipe among the models
    groups: dict[str, list[LoadedModel]] = {}
    recipes: dict[str, dict[str, Any]] = {}
    for m in loaded if store is None else []:  # stored features: nothing to tile
        t = _tiling_of(m)
        key = _settings_key(t)
        groups.setdefault(key, []).append(m)
        recipes[key] = t
    slide_tables, member_scores, statuses = [], [], {}
    for key, members in groups.items():
        t = recipes[key]
        tiles_dir = out / "tiles" / key
        with write_guard("the tiles of the slides", tiles_dir, after="run the same command again (finished slides are kept)"):
            tiled = tile_slides(
                slides_dir, tiles_dir, manifest=manifest, settings=t["settings"], filters=t["filters"], source=t["source"],
                workers=workers, progress=progress, labels=None, require_labels=False,  # prediction needs no label
                require_tiles=False,  # slides without tissue still get their patients' rows
                dask=dask,
                trust_declared_size=trust_declared_size,
            )
        ts = TileSet(tiles_dir)
        # out/tiles is reused between runs: score only this job's slides, never leftovers of an earlier one
        ts.index = ts.index[ts.index["image_id"].isin(job_ids)].reset_index(drop=True)
        ts.index["patient_id"] = ts.index["image_id"].map(job.patient_of)
        mine = {k: v for k, v in ts.slides.items() if k in job_ids}
        if tiled["missing"]["count"]:  # (rows without a slide file are listed in a file, not in tileset.json)
            gone = pd.read_csv(tiled["missing"]["list"], dtype=str, keep_default_na=False)["image_id"].map(csv_unescape)
            mine.update({k: {"status": "failed", "reason": "no slide file in the slide folder"} for k in gone if k in job_ids})
        statuses.update({k: v for k, v in mine.items() if k not in statuses or v.get("status") == "done"})
        if len(ts) == 0:
            continue
        for m in members:  # every member gives slide probabilities (tile-level: mean of its tiles; MIL: its bag)
            res = score_member(m, ts, key, out, batch_size, loader_workers, rt, progress, heatmaps or qupath, job.patient_of,
                               {"dask": dask, "devices": devices})
            slide_tables.append(res.slides.assign(_weight=m.weight))
            member_scores.append((m, ts, res))
    if store is not None:
        slide_tables, member_scores, statuses = score_features(loaded, store, job.image_ids, job.patient_of, batch_size,
                                                               loader_workers, rt, progress, heatmaps)

    # 2. ensemble at slide level (weighted mean over the models that scored the slide), then patients = mean of slides
    pcols = [f"p_{name}" for name in labels]
    if slide_tables:
        allt = pd.concat(slide_tables, ignore_index=True)
        for c in pcols:
            allt[c] = allt[c] * allt["_weight"]
        slides = allt.groupby("image_id", sort=False).agg(
            {**{c: "sum" for c in pcols}, "_weight": "sum", "n_tiles": "max"}).reset_index()
        for c in pcols:
            slides[c] = slides[c] / slides["_weight"]
        slides = slides.drop(columns="_weight")
    else:
        slides = pd.DataFrame(columns=["image_id", *pcols, "n_tiles"])
    order = {i: n for n, i in enumerate(job.image_ids)}
    slides = slides.assign(_o=slides["image_id"].map(order)).sort_values("_o").drop(columns="_o").reset_index(drop=True)
    slides.insert(1, "patient_id", slides["image_id"].map(job.patient_of))
    slides["label"] = slides["image_id"].map(lambda i: job.labels.get(i, ""))
    patients = slides.groupby("patient_id", sort=False).agg({**{c: "mean" for c in pcols}, "image_id": "count"}).reset_index()
    patients = patients.rename(columns={"image_id": "n_slides"})
    scored = set(patients["patient_id"])
    missing = [p for p in job.patients if p not in scored]
    uniform = 1.0 / len(labels)
    if missing:  # no usable tile: equal probabilities, the best constant under the class-weighted metric
        patients = pd.concat([patients, pd.DataFrame({"patient_id": missing, **{c: uniform for c in pcols}, "n_slides": 0})],
                             ignore_index=True)
    porder = {p: n for n, p in enumerate(job.patients)}
    patients = patients.assign(_o=patients["patient_id"].map(porder)).sort_values("_o").drop(columns="_o").reset_index(drop=True)
    first_label = {}
    for i in job.image_ids:
        first_label.setdefault(job.patient_of[i], "")
        if not first_label[job.patient_of[i]]:
            first_label[job.patient_of[i]] = job.labels.get(i, "")
    patients["label"] = patients["patient_id"].map(first_label)
    sides = _trained_on(loaded)
    side_of = lambda p: "train" if p in sides["train"] else "val" if p in sides["val"] else "test" if p in sides["test"] else ""  # noqa: E731
    patients["in_model_split"] = patients["patient_id"].map(side_of)

    # every slide of the job is listed: scored, or with the reason it is not
    done = set(slides["image_id"])
    failed = {k: f"{statuses.get(k, {}).get('status', 'failed')}: {statuses.get(k, {}).get('reason', 'not tiled')}"
              for k in job.image_ids if k not in done}
    rows = []
    for rec in slides.to_dict("records"):
        rows.append({"level": "slide", **rec, "pred": labels[int(np.argmax([rec[c] for c in pcols]))], "status": "ok"})
    for image_id, why in failed.items():
        rows.append({"level": "slide", "image_id": image_id, "patient_id": job.patient_of[image_id],
                     "label": job.labels.get(image_id, ""), "status": why})
    for rec in patients.to_dict("records"):
        status = "ok" if rec["patient_id"] in scored else f"no usable tile: equal probabilities ({uniform:g} each)"
        rows.append({"level": "patient", **rec, "pred": labels[int(np.argmax([rec[c] for c in pcols]))] if status == "ok" else "",
                     "status": status})
    table = pd.DataFrame(rows)
    for c in pcols:
        table[c] = table[c].round(6)
    cols = ["level", "patient_id", "image_id", *pcols, "pred", "label", "n_tiles", "n_slides", "in_model_split", "status"]
    table = per_model_columns(table.reindex(columns=[c for c in cols if c in table.columns]), member_scores, names,
                              labels, job.patient_of)
    for c in ("n_tiles", "n_slides"):
        if c in table.columns:
            table[c] = table[c].astype("Int64")
    sub = round_rows(patients[["patient_id", *pcols]], pcols).rename(columns={f"p_{n}": n for n in labels})

    summary: dict[str, Any] = {
        "out": str(out),
        "models": [{"ref": m.ref, "name": names[id(m)], "run_dir": str(m.run_dir), "weight": round(m.weight, 4),
                    "kind": m.form.kind, "model": m.model.config.describe(),
                    "calibration": m.calibration.describe() if m.calibration.active else None,
                    **({"fold_of": m.of} if m.of else {})}
                   for m in loaded],
        "labels": labels,
        "patient_ids_from": job.patients_from,
        "n_slides": int(len(slides)),
        "n_patients": int(len(patients)),
        "n_slides_in_job": len(job.image_ids),
        "slides_without_tiles": sorted(failed),
        "failed_slides": {k: v for k, v in failed.items() if not v.startswith("no_tissue")},
        "patients_without_tiles": missing,
        "patients_in_model_split": {side: int((patients["in_model_split"] == side).sum()) for side in ("train", "val", "test")},
        "predictions": str(out / "predictions.csv"),
        "submission": str(out / "submission.csv"),
        **({"features": str(store.root), "note": "scored from stored features: no slide was opened, no heatmaps"}
           if store is not None else {}),
    }
    # 3. metrics when the manifest carried labels (slide and patient level only: tiles differ by model)
    labelled = patients[patients["label"] != ""]
    res = None
    foreign = sorted(set(job.labels.values()) - set(labels))
    if foreign:
        summary["labels_note"] = (f"the manifest's label(s) {', '.join(foreign)} are not the models' ({', '.join(labels)}): "
                                  "kept in predictions.csv, no metrics (prediction needs no label)")
    elif len(labelled) and len(labelled) < len(patients):
        summary["labels_note"] = f"{len(patients) - len(labelled)} patient(s) have no label: no metrics"
    if len(labelled) and len(labelled) == len(patients) and not foreign:
        res = _label_metrics(slides, patients, labels, pcols, missing)
        summary["metrics"] = {lvl: {k: res[lvl].get(k) for k in ("n", "accuracy", "balanced_accuracy", "roc_auc", "weighted_log_loss")}
                              for lvl in ("slide", "patient") if lvl in res}
    csv_text, sub_text = to_csv_text(table), to_csv_text(sub, float_format="%.6f")
    per_slide = 200_000 * heatmaps + 300 * int(slides["n_tiles"].sum() if len(slides) else 0) * qupath
    with write_guard("the predictions", out, needed=len(csv_text) + len(sub_text) + per_slide * len(slides)):
        written, geojson = write_slide_views(member_scores, names, labels, out, slides_dir, heatmaps, qupath,
                                             trust_declared_size)
        write_text(out / "predictions.csv", csv_text)
        write_text(out / "submission.csv", sub_text)
        if res is not None:
            write_json(out / "metrics.json", res)
        summary["heatmaps"] = written
        summary["qupath"] = geojson
        summary["report"] = str(write_report(out, summary, table, labels, res, member_scores, written))
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(out / "summary.json", summary)
    return summary


def _label_metrics(slides, patients, labels, pcols, missing) -> dict[str, Any]:
    """Slide- and patient-level metrics, on the patients the models never trained on first."""
    res: dict[str, Any] = {}
    unseen = patients[patients["in_model_split"] != "train"]
    seen = int((patients["in_model_split"] == "train").sum())
    if len(unseen):
        y = metrics.class_indices(unseen["label"], labels)
        res["patient"] = metrics.classification_metrics(y, unseen[pcols].to_numpy(), labels)
        res["patient_note"] = (f"{len(unseen)} patient(s) the models never trained on"
                               + (f"; {seen} training patient(s) left out (scored in patient_all)" if seen else ""))
    scored_slides = slides[slides["label"] != ""]
    trained = set(patients.loc[patients["in_model_split"] == "train", "patient_id"])
    scored_slides = scored_slides[~scored_slides["patient_id"].isin(trained)]
    if len(scored_slides):
        y = metrics.class_indices(scored_slides["label"], labels)
        res["slide"] = metrics.classification_metrics(y, scored_slides[pcols].to_numpy(), labels)
    if seen:
        y = metrics.class_indices(patients["label"], labels)
        res["patient_all"] = metrics.classification_metrics(y, patients[pcols].to_numpy(), labels)
        res["patient_all_note"] = (f"every patient, {seen} of them TRAINING patients of the model(s): optimistic, "
                                   "not an estimate of anything")
    res["n_seen_in_training"] = seen
    res["n_without_tiles"] = len(missing)
    if missing:
        res["without_tiles_note"] = f"{len(missing)} patient(s) had no usable tile and are scored with {NO_TILE_NOTE}"
    return res


def open_store(features: str | Path, loaded: list[LoadedModel]):
    """``--features``: the feature store, checked against every model (MIL on features of its encoder)."""
    from clotclf_core.features.store import FeatureStore
    from clotclf_core.inputs import check_folder

    store = FeatureStore(check_folder(features, "feature store (--features)",
                                      "give the folder `clotclf embed --out` or `clotclf import-features --out` wrote"))
    check_feature_models(loaded, store)
    return store


def _check_writable(out: Path) -> None:
    """Fail on a read-only or forbidden --out before minutes of tiling."""
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out '{out}' is a file, not a folder: choose a folder for the predictions")
    with write_guard("the predictions", out):
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=out)
        os.close(fd)
        os.unlink(probe)


#: what a predict run writes in --out (``tiles/`` and ``features/`` are caches reused between runs, and kept)
RESULTS = ("predictions.csv", "submission.csv", "metrics.json", "summary.json", "heatmaps", "qupath", "report.html")


def _clear_earlier_results(out: Path) -> None:
    """Remove an earlier run's results from a reused ``--out`` before anything new is written: a run
    killed half-way must not leave the old CSVs beside new heatmaps looking current, and a complete
    run must not leave heatmaps of slides it did not score."""
    import shutil

    with write_guard("the earlier predictions", out):
        for name in RESULTS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

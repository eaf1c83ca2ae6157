"""``clotclf predict``: new slides -> tiles -> one or more models -> slide and patient probabilities.

The path is the training path run forward: the slides are tiled with the *same* tiling settings
and filters each model was trained with (read from its ``config.json``), every tile is scored,
slide probability = mean of its tiles, patient probability = mean of its slides (as in
``metrics.aggregate``). Several models form an ensemble: the weighted mean of their slide
probabilities (the published PoolFormer + CCT ensemble is ``--model A --model B``).

Writes into OUT:
  predictions.csv   one row per slide and per patient: probabilities, predicted label, tiles used
  submission.csv    Kaggle STRIP AI style: ``patient_id,CE,LAA``
  heatmaps/*.png    tile probabilities over each slide's thumbnail
  tiles/            the TileSet(s) the slides were cut into (reused when predicting again)
  metrics.json      only when the manifest has labels: slide- and patient-level metrics
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ClotclfError
from .io import write_json, write_text


class PredictError(ClotclfError):
    pass


@dataclass
class LoadedModel:
    ref: str
    run_dir: Path
    config: dict[str, Any]
    model: Any
    weight: float

    @property
    def labels(self) -> list[str]:
        return list(self.model.config.labels)


def _tiling_of(m: LoadedModel) -> dict[str, Any]:
    """The tiling settings, filters and source a model was trained with (config.json's ``tileset``)."""
    from .tiling import TileSettings

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


def load_models(refs: Sequence[str], weights: Sequence[float] | None = None) -> list[LoadedModel]:
    from .model import load_model, read_config, resolve_run_dir

    if not refs:
        raise PredictError("no --model given: pass a run directory (or registry name) with --model, once per ensemble member")
    if weights and len(weights) != len(refs):
        raise PredictError(f"{len(weights)} --weight value(s) for {len(refs)} --model(s): give one weight per model, or none")
    w = list(weights) if weights else [1.0] * len(refs)
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise PredictError(f"ensemble weights must be non-negative with a positive sum (got {w})")
    out = []
    for ref, weight in zip(refs, w):
        run_dir = resolve_run_dir(ref)
        out.append(LoadedModel(str(ref), run_dir, read_config(run_dir), load_model(run_dir), weight / sum(w)))
    first = out[0].labels
    for m in out[1:]:
        if m.labels != first:
            raise PredictError(
                f"models disagree on their labels: '{out[0].ref}' has {first}, '{m.ref}' has {m.labels}; "
                "an ensemble needs models trained on the same labels in the same order"
            )
    return out


def _job_image_ids(slides_dir: str | Path, manifest: str | Path | None, labels: list[str]) -> set[str]:
    """The image_ids this prediction is about: the manifest's rows, or every slide file in the folder."""
    from .manifest import manifest_from_files, read_manifest
    from .tiling import TilingError, find_slides

    if manifest is not None:
        try:
            df = read_manifest(manifest, labels=labels, require_labels=False)
        except ClotclfError as exc:
            raise PredictError(
                f"{exc}".replace("choose the labels with --label", f"use a model trained on these labels (this one knows {', '.join(labels)})")
            ) from None
        return set(df["image_id"])
    folder = Path(slides_dir)
    if not folder.is_dir():
        raise TilingError(f"slide folder '{folder}' does not exist or is not a folder: check the SLIDES argument")
    return set(manifest_from_files(find_slides(folder))["image_id"])


def _settings_key(t: dict[str, Any]) -> str:
    blob = json.dumps({"s": t["settings"].model_dump(mode="json"), "f": t["filters"], "src": t["source"]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _score_tileset(ts, members: list[LoadedModel], batch_size: int, workers: int, rt, progress: bool) -> np.ndarray:
    """Weighted mean over ``members`` of tile probabilities (n_tiles, C), weights renormalised."""
    from .data import TileDataset, build_transform
    from .evaluate import eval_loader, predict_probs

    total = sum(m.weight for m in members)
    acc = None
    for m in members:
        m.model.to(rt.device)
        transform = build_transform(m.model.config.input_size, ts.tile_size, None)
        ds = TileDataset(ts, np.arange(len(ts)), m.labels, transform)
        loader, positions = eval_loader(ds, batch_size, workers, rt)
        probs = predict_probs(m.model, loader, positions, len(ds), rt, progress=progress, desc=f"predict {m.ref}")
        acc = probs * (m.weight / total) if acc is None else acc + probs * (m.weight / total)
    return acc


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
) -> dict[str, Any]:
    """Run the whole path; returns a summary (what ``--json`` prints). See the module docstring."""
    import pandas as pd

    from . import metrics
    from .evaluate import pick_runtime
    from .tiling import tile_slides
    from .tileset import TileSet

    t0 = time.perf_counter()
    out = Path(out)
    loaded = load_models(models, weights)
    labels = loaded[0].labels
    rt = pick_runtime(device)
    job_ids = _job_image_ids(slides_dir, manifest, labels)

    # 1. tile once per distinct tiling recipe among the models
    groups: dict[str, list[LoadedModel]] = {}
    recipes: dict[str, dict[str, Any]] = {}
    for m in loaded:
        t = _tiling_of(m)
        key = _settings_key(t)
        groups.setdefault(key, []).append(m)
        recipes[key] = t
    slide_tables, tile_tables, statuses = [], {}, {}
    for key, members in groups.items():
        t = recipes[key]
        tiles_dir = out / "tiles" / key
        tile_slides(
            slides_dir, tiles_dir, manifest=manifest, settings=t["settings"], filters=t["filters"], source=t["source"],
            workers=workers, progress=progress, labels=labels, require_labels=False,
        )
        ts = TileSet(tiles_dir)
        # out/tiles is reused between runs: score only this job's slides, never leftovers of an earlier one
        ts.index = ts.index[ts.index["image_id"].isin(job_ids)].reset_index(drop=True)
        mine = {k: v for k, v in ts.slides.items() if k in job_ids}
        statuses.update({k: v for k, v in mine.items() if k not in statuses or v.get("status") == "done"})
        if len(ts) == 0:
            continue
        probs = _score_tileset(ts, members, batch_size, loader_workers, rt, progress)
        table = metrics.aggregate(ts.index, probs, labels, "slide")
        table["_weight"] = sum(m.weight for m in members)
        slide_tables.append(table)
        tile_tables.setdefault("first", (ts, probs))
    if not slide_tables:
        raise PredictError(f"no tissue tiles were found in any slide of '{slides_dir}'; see the QC pictures in {out / 'tiles'}")

    # 2. ensemble at slide level (weighted mean over tiling recipes), then patients = mean of slides
    pcols = [f"p_{name}" for name in labels]
    allt = pd.concat(slide_tables, ignore_index=True)
    for c in pcols:
        allt[c] = allt[c] * allt["_weight"]
    keep = [c for c in ("image_id", "patient_id", "label") if c in allt.columns]
    slides = allt.groupby(keep, sort=True, dropna=False).agg({**{c: "sum" for c in pcols}, "_weight": "sum", "n_tiles": "max"}).reset_index()
    for c in pcols:
        slides[c] = slides[c] / slides["_weight"]
    slides = slides.drop(columns="_weight")
    patients = slides.groupby("patient_id", sort=True).agg({**{c: "mean" for c in pcols}, "image_id": "count"}).reset_index()
    patients = patients.rename(columns={"image_id": "n_slides"})
    if "label" in slides.columns:  # a patient's label: the first non-empty one of its slides
        first_label = slides.groupby("patient_id")["label"].agg(lambda v: next((x for x in v if x), ""))
        patients = patients.merge(first_label.reset_index(), on="patient_id")

    # slides that gave no tiles are listed with their reason; patients with none get no made-up number
    failed = [(k, v) for k, v in statuses.items() if v.get("status") != "done" and k not in set(slides["image_id"])]
    rows = []
    for rec in slides.to_dict("records"):
        rows.append({"level": "slide", **rec, "pred": labels[int(np.argmax([rec[c] for c in pcols]))], "status": "ok"})
    for image_id, info in failed:
        rows.append({"level": "slide", "image_id": image_id, "status": f"{info.get('status')}: {info.get('reason', '')}"})
    for rec in patients.to_dict("records"):
        rows.append({"level": "patient", **rec, "pred": labels[int(np.argmax([rec[c] for c in pcols]))], "status": "ok"})
    table = pd.DataFrame(rows)
    for c in pcols:
        table[c] = table[c].round(6)
    cols = ["level", "patient_id", "image_id", *pcols, "pred", "label", "n_tiles", "n_slides", "status"]
    table = table.reindex(columns=[c for c in cols if c in table.columns])
    for c in ("n_tiles", "n_slides"):
        if c in table.columns:
            table[c] = table[c].astype("Int64")
    write_text(out / "predictions.csv", table.to_csv(index=False))
    sub = patients[["patient_id", *pcols]].rename(columns={f"p_{n}": n for n in labels})
    write_text(out / "submission.csv", sub.to_csv(index=False, float_format="%.6f"))

    # 3. heatmaps over thumbnails
    written = []
    if heatmaps:
        written = _heatmaps(*tile_tables["first"], labels, out / "heatmaps", slides_dir)

    summary: dict[str, Any] = {
        "out": str(out),
        "models": [{"ref": m.ref, "run_dir": str(m.run_dir), "weight": round(m.weight, 4)} for m in loaded],
        "labels": labels,
        "n_slides": int(len(slides)),
        "n_patients": int(len(patients)),
        "slides_without_tiles": [k for k, _ in failed],
        "predictions": str(out / "predictions.csv"),
        "submission": str(out / "submission.csv"),
        "heatmaps": written,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    # 4. metrics when the manifest carried labels (slide and patient level only: tiles differ by model)
    if "label" in slides.columns and (slides["label"] != "").all() and set(slides["label"]) <= set(labels):
        res = {}
        for level, frame in (("slide", slides), ("patient", patients)):
            y = metrics.label_indices(frame["label"], labels)
            res[level] = metrics.classification_metrics(y, frame[pcols].to_numpy(), labels)
        write_json(out / "metrics.json", res)
        summary["metrics"] = {lvl: {k: res[lvl].get(k) for k in ("n", "accuracy", "balanced_accuracy", "roc_auc", "weighted_log_loss")} for lvl in res}
    write_json(out / "summary.json", summary)
    return summary


def _heatmaps(ts, probs: np.ndarray, labels: list[str], out_dir: Path, slides_dir: str | Path) -> list[str]:
    """One PNG per slide: P(second label) of each tile over the slide thumbnail."""
    from .plots import plot_heatmap
    from .sources import open_slide

    target = labels[-1]
    col = labels.index(target)
    written = []
    for image_id, group in ts.index.groupby("image_id", sort=True):
        name = ts.slides.get(image_id, {}).get("file")
        path = Path(slides_dir) / name if name else None
        if path is None or not path.is_file():
            from .sources import find_slide

            path = find_slide(slides_dir, image_id)
        slide = open_slide(str(path))
        try:
            thumb = slide.thumbnail(1024)
            dims = slide.dimensions
        finally:
            slide.close()
        png = out_dir / f"{image_id}.png"
        plot_heatmap(thumb, group[["x", "y", "size"]].to_numpy(), probs[group.index.to_numpy(), col], dims, png,
                     target, f"{image_id}: P({target}) per tile")
        written.append(str(png))
    return written

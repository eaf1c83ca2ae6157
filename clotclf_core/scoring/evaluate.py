"""Scoring tile predictions: metrics at three levels, prediction tables, pictures, and the
``clotclf evaluate RUN --tiles TILES`` command's work. (Inference itself — tiles to
probabilities — is :mod:`clotclf_core.scoring.inference`, shared with training and predict.)

Training uses the same functions for its validation and final reports, so a number printed at
the end of ``clotclf train`` and one from ``clotclf evaluate`` on the same patients are computed
by the same code.

Honesty rules: ``evaluate`` scores, by default, only patients the model never trained on
(``--patients unseen``), and it scores each group of them on its own: the run's held-out test
patients, patients outside its split (another cohort), and its validation patients (labelled as
the ones early stopping chose on). They are never pooled. ``--patients all`` adds the training
patients, as their own, labelled group. Output is written all at once (a staged folder renamed
into place), so a full disk leaves the previous results or none, never some.

A run that calibrates or clips its probabilities (``config.json``'s ``calibration``) is scored
before and after (the headline after: what ``clotclf predict`` gives), each group with its
bootstrap interval, ECE, reliability diagram and per-centre table; a MIL model on features is
scored with the standardisation it stores (``--standardise on|off`` only asserts it).

A cross-validation run folder (``--fold all``) is evaluated as the ensemble of its folds (the mean
of their probabilities, each calibrated first when the run calibrates, as ``predict`` and its
test-ensemble headline do); its patients' groups come from all folds
(:func:`~clotclf_core.models.runs.fold_ensemble_split`: trained on by any fold is ``train``). Beside
the numbers go one QuPath GeoJSON per slide, heatmaps of some slides and ``report.html``
(:mod:`clotclf_core.scoring.evaluate_outputs`).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clotclf_core.features.bags import FeatureBags, Slides
from clotclf_core.features.embed import embed_bags
from clotclf_core.features.encoder import encoder_from_record
from clotclf_core.features.store import FeatureStore, check_encoder, check_matches_tileset
from clotclf_core.models.form import ModelForm
from clotclf_core.models.mil import check_standardise_option
from clotclf_core.models.runs import fold_ensemble_split, fold_runs, read_config, resolve_run_dir
from clotclf_core.models.runtime import pick_runtime
from clotclf_core.models.saved import load_model
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import csv_text as to_csv_text
from clotclf_core.plugin.io import staged_dir, write_guard, write_text
from clotclf_core.scoring import metrics, plots
from clotclf_core.scoring.calibration import Calibration, calibrate_slides
from clotclf_core.scoring.evaluate_outputs import write_outputs
from clotclf_core.scoring.headline import held_out
from clotclf_core.scoring.inference import TileScorer, score_bags
from clotclf_core.scoring.intervals import disagreement
from clotclf_core.scoring.report_html import MAX_SLIDES
from clotclf_core.tiling.tileset import TileSet, open_tileset, tileset_is_synthetic

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

# ----------------------------------------------------------------------------- metrics


def patient_loss(df: "pd.DataFrame", probs: np.ndarray, labels: Sequence[str], weighted: bool = False) -> float:
    """Log loss of the patient-level probabilities (mean of slide means): early stopping's measure."""
    table = metrics.aggregate(df, probs, labels, "patient")
    y = metrics.class_indices(table["label"], labels)
    p = table[[f"p_{name}" for name in labels]].to_numpy()
    return metrics.weighted_log_loss(y, p) if weighted else metrics.log_loss(y, p)


def score(df: "pd.DataFrame", probs: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics at tile, slide and patient level (``metrics.evaluate``)."""
    return metrics.evaluate(df, probs, labels)


def score_slides(df: "pd.DataFrame", probs: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics at slide and patient level of slide predictions (one row per slide: a MIL model's)."""
    levels = metrics.evaluate(df, probs, labels)  # its "tile" level is the slide rows themselves
    return {"slide": levels["slide"], "patient": levels["patient"]}


def predictions_frame(df: "pd.DataFrame", probs: np.ndarray, labels: Sequence[str]) -> "pd.DataFrame":
    cols = [c for c in ("image_id", "patient_id", "center_id", "label", "row", "x", "y", "size", "n_tiles")
            if c in df.columns]
    out = df[cols].reset_index(drop=True).copy()
    for i, name in enumerate(labels):
        out[f"p_{name}"] = np.round(probs[:, i].astype(np.float64), 6)
    out["pred"] = [labels[i] for i in probs.argmax(axis=1)]
    return out


def write_pictures(out_dir: Path, df: "pd.DataFrame", probs: np.ndarray, labels: Sequence[str],
                   result: dict[str, Any], name: str) -> list[str]:
    """Confusion matrices (tile — slide for a MIL model, which has no tile level — and patient level)
    and the patient-level ROC curve, in ``out_dir/plots``."""
    plots_dir = out_dir / "plots"
    written = []
    for level in ("tile" if "tile" in result else "slide", "patient"):
        cm = result[level]["confusion_matrix"]
        png = plots_dir / f"confusion_{level}_{name}.png"
        plots.plot_confusion(cm, labels, f"{name}: {level} level (n={result[level]['n']})", png)
        written.append(str(png))
    table = metrics.aggregate(df, probs, labels, "patient")
    y = metrics.class_indices(table["label"], labels)
    png = plots_dir / f"roc_patient_{name}.png"
    plots.plot_roc(y, table[[f"p_{n}" for n in labels]].to_numpy(), labels, png, f"{name}: patient level ROC")
    written.append(str(png))
    return written


def write_reliability(out_dir: Path, name: str, res: dict[str, Any], labels: Sequence[str]) -> str:
    """``plots/reliability_<name>.png`` of a :func:`clotclf_core.scoring.headline.held_out` result:
    patient level, before and after any calibration."""
    cols = [f"p_{n}" for n in labels]
    before, after = res["_patients_before"], res["_patients"]
    curves = {"model" if after is before else "before calibration": before[cols].to_numpy()}
    if after is not before:
        curves["after"] = after[cols].to_numpy()
    png = out_dir / "plots" / f"reliability_{name}.png"
    plots.plot_reliability(metrics.class_indices(before["label"], labels), curves, labels, png, f"{name}: patient level")
    return str(png)


# ----------------------------------------------------------------------------- the command

#: the groups of patients ``evaluate`` scores separately, most honest first, and what each one is
GROUPS = {
    "test": "the run's held-out test patients: never trained on, never used for early stopping",
    "other": "patients outside the run's split (another cohort, or added since): never seen in training",
    "validation": "the run's validation patients: early stopping chose the epoch on them, so this is optimistic",
    "train": "the run's TRAINING patients: the model learnt them, so this estimates nothing (optimistic)",
}


def _check_labels(model_labels: list[str], index: "pd.DataFrame", where: str) -> None:
    found = sorted(set(index["label"]) - {""})
    unknown = [lab for lab in found if lab not in model_labels]
    if unknown:
        raise ClotclfError(
            f"the TileSet '{where}' has label(s) {', '.join(unknown)} that the model does not know (its labels: "
            f"{', '.join(model_labels)}); evaluate a model trained on these labels, or re-tile with a manifest "
            "whose labels match"
        )
    if not found:
        raise ClotclfError(f"the TileSet '{where}' has no labels, so there is nothing to evaluate against; "
                           "use `clotclf predict` for unlabelled slides")


def patient_groups(index: "pd.DataFrame", config: dict[str, Any]) -> "pd.Series":
    """Each tile's group (see :data:`GROUPS`) from the run's recorded split."""
    split = config.get("split") or {}
    group = {p: "train" for p in split.get("train", [])}
    group |= {p: "validation" for p in split.get("val", [])}
    group |= {p: "test" for p in split.get("test", [])}
    return index["patient_id"].map(lambda p: group.get(p, "other"))


def select_patients(index: "pd.DataFrame", config: dict[str, Any], subset: str) -> tuple["pd.DataFrame", dict[str, Any]]:
    """Rows of ``index`` to score (with a ``group`` column) and what was left out (see the module docstring)."""
    groups = patient_groups(index, config)
    patients = set(index["patient_id"])
    trained = set(index.loc[groups == "train", "patient_id"])
    info = {"subset": subset, "patients_in_tileset": len(patients), "seen_in_training": len(trained)}
    wanted = {"all": set(GROUPS), "unseen": {"test", "other", "validation"}, "val": {"validation"}, "test": {"test"}}
    if subset not in wanted:
        raise ClotclfError(f"unknown --patients '{subset}': choose unseen, val, test or all")
    split = config.get("split") or {}
    if split.get("redacted") and subset != "all":
        raise ClotclfError(
            "this model's split was redacted when it was published (its patient lists are counts and a hash), so "
            "clotclf cannot tell which patients of this TileSet it trained on or was selected on: evaluate it on "
            "patients you know it never saw with --patients all, or ask its author for the run pushed with "
            "--include-split"
        )
    if subset in ("val", "test") and not split.get(subset):
        raise ClotclfError(f"the run's split has no {subset} patients; use --patients unseen or all")
    keep = index[groups.isin(wanted[subset])].assign(group=groups[groups.isin(wanted[subset])])
    if keep.empty:
        if subset in ("val", "test"):
            raise ClotclfError(f"none of the run's {subset} patients is in this TileSet; use --patients unseen or all")
        raise ClotclfError(
            f"no tiles left to evaluate with --patients {subset}: every patient of this TileSet was used to train "
            "the model. Evaluate on other patients, or pass --patients all to score training patients (optimistic)"
        )
    info["patients_scored"] = int(keep["patient_id"].nunique())
    return keep, info


def evaluate_run(run: str, tiles: str | None = None, out: str | None = None, patients: str = "unseen",
                 batch_size: int = 64, workers: int = 2, device: str = "auto", progress: bool = True,
                 features: str | None = None, standardise: str = "auto", qupath: bool = True) -> dict[str, Any]:
    """Re-evaluate a trained model on a TileSet (``tiles``) or, for a MIL model on features, a feature
    store of its encoder (``features``; given ``tiles`` only, they are embedded with the encoder
    rebuilt from the run's record, in a temporary folder); write metrics, predictions and pictures
    to ``out`` (default ``RUN/eval-<tileset or feature store folder name>``), all or nothing.
    Returns the report that was written.

    Each group of patients (:data:`GROUPS`: test, other, validation[, train]) is scored on its
    own; the headline is the most honest group present, never a pool of validation (used for
    early stopping) and test patients. A MIL model is scored per slide (every tile of it in one
    bag): slide and patient level, no tile level. A cross-validation run folder is the ensemble of
    its folds. ``qupath``: write the per-slide GeoJSON."""
    if batch_size < 1:
        raise ClotclfError(f"--batch-size must be at least 1 (got {batch_size})")
    if workers < 0:
        raise ClotclfError(f"--workers must be 0 or more (got {workers})")
    run_dir = resolve_run_dir(run)
    config, models = load_members(run_dir)
    model = next(iter(models.values()))
    for m in models.values():
        check_standardise_option(m, standardise, str(run))
    form = model.config.form
    if not form.is_mil and tiles is None:
        raise ClotclfError(f"'{run_dir}' is a tile-level model: give --tiles (a TileSet from `clotclf tile`)"
                           + ("; --features is for multiple-instance models" if features else ""))
    if not form.is_mil and features is not None:
        raise ClotclfError(f"'{run_dir}' is a tile-level model, which scores tiles, not a feature store: drop --features")
    where = str(features or tiles)
    out_dir = Path(out) if out else run_dir / f"eval-{Path(where).resolve().name}"
    if form.on_features and features is None:  # the tiles, embedded with the model's own encoder
        with write_guard("the features of the tiles (a temporary feature store)", out_dir.resolve().parent):
            scratch_parent = _scratch_parent(out_dir)
        with tempfile.TemporaryDirectory(prefix=".clotclf-embed-", dir=scratch_parent) as scratch:  # removed afterwards
            data = _embedded_tiles(model, str(run_dir), tiles, Path(scratch) / "features", device, progress)
            return _evaluate(run_dir, config, models, data, tiles, where, out_dir, patients, batch_size, workers, device,
                             progress, qupath)
    data = _data_for_model(model, str(run_dir), tiles, features)
    return _evaluate(run_dir, config, models, data, tiles, where, out_dir, patients, batch_size, workers, device, progress,
                     qupath)


def load_members(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, {name: model}): the run's model, or a cross-validation folder's fold models (named
    ``fold_<k>``) with the fold ensemble's split; folds that disagree on what they score are refused."""
    folds = fold_runs(run_dir)
    if folds is None:
        return read_config(run_dir), {run_dir.name or str(run_dir): load_model(run_dir)}
    configs = [read_config(d) for d in folds]
    models = {d.name: load_model(d) for d in folds}
    first = models[folds[0].name].config

    def what(c) -> tuple:
        return (list(c.labels), c.form, c.input_size, c.encoder.weights_sha256 if c.form.on_features else None)

    odd = [name for name, m in models.items() if what(m.config) != what(first)]
    if odd:
        raise ClotclfError(f"the folds of '{run_dir}' differ in labels, kind, input size or encoder ({', '.join(odd)} vs "
                           f"{folds[0].name}), so they are no ensemble: evaluate the fold folders one by one")
    return {**configs[0], "split": fold_ensemble_split(configs)}, models


def _data_for_model(model, ref: str, tiles: str | None, features: str | None) -> Any:
    """What ``model`` scores, as given: a TileSet (a tile-level model, or MIL end to end) or a feature
    store of a MIL model's own encoder (``--features``, checked: another encoder is refused, naming
    both; with ``--tiles`` too, checked to be that TileSet's)."""
    form = model.config.form
    if form is ModelForm.MIL_END_TO_END:  # the model's own backbone reads the tiles
        if features is not None:
            raise ClotclfError(f"model '{ref}' was trained end to end on tiles (backbone {model.config.backbone}), so it "
                               "does not take a feature store: give --tiles instead of --features")
        if tiles is None:
            raise ClotclfError(f"model '{ref}' scores tiles: give --tiles (a TileSet from `clotclf tile`)")
    if not form.on_features:
        return open_tileset(tiles, "--tiles")
    store = FeatureStore(features)
    check_encoder(store, model.config.encoder.model_dump(mode="json"), f"the model '{ref}'")
    if tiles is not None:
        check_matches_tileset(store, open_tileset(tiles, "--tiles"), tiles)
    return FeatureBags(store)


def _embedded_tiles(model, ref: str, tiles: str | None, out: Path, device: str, progress: bool) -> FeatureBags:
    """A MIL model on features given a TileSet: its tiles embedded into ``out`` with the encoder rebuilt
    from the model's record (its weights checked against the recorded sha256), as bags."""
    if tiles is None:
        raise ClotclfError(f"model '{ref}' scores features of its encoder: give --features (a feature store made with "
                           "that encoder) or --tiles (embedded with it first)")
    open_tileset(tiles, "--tiles")  # a clear error for what is not a TileSet, before the encoder is built
    encoder = encoder_from_record(model.config.encoder.model_dump(mode="json"), device)
    return embed_bags(tiles, out, encoder, progress=progress)


def _scratch_parent(out_dir: Path) -> str:
    """Where a temporary feature store goes: beside the output folder (same disk), made if need be."""
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return str(parent)


def _evaluate(run_dir: Path, config: dict[str, Any], models: dict[str, Any], ts, tiles: str | None, where: str,
              out_dir: Path, patients: str, batch_size: int, workers: int, device: str, progress: bool,
              qupath: bool) -> dict[str, Any]:
    model = next(iter(models.values()))
    form = model.config.form
    mil = form.is_mil
    labels = model.labels
    _check_labels(labels, ts.index, where)
    notes = []
    if not mil and model.config.input_size != ts.tile_size:
        notes.append(f"tiles are {ts.tile_size} px and the model takes {model.config.input_size} px: resized on the fly")
    unlabelled = ts.index["label"] == ""
    if unlabelled.any():  # nothing to score them against: left out, and said
        n_slides = int(ts.index.loc[unlabelled, "image_id"].nunique())
        notes.append(f"{n_slides} slide(s) without a label left out (nothing to score them against; "
                     "`clotclf predict` gives their probabilities)")
    empty = sorted(k for k, v in ts.slides.items() if v.get("status") != "done")
    if mil and empty:
        notes.append(f"{len(empty)} slide(s) without tiles have no bag and are not scored: {', '.join(empty[:5])}"
                     + (" …" if len(empty) > 5 else ""))
    subset_df, info = select_patients(ts.index[~unlabelled], config, patients)
    info["unlabelled_slides_left_out"] = int(ts.index.loc[unlabelled, "image_id"].nunique())
    rt = pick_runtime(device)
    t0 = time.perf_counter()
    rows = subset_df.index.to_numpy()
    if mil:  # every model on every bag; per-tile probabilities and attention for the QuPath export and heatmaps
        slides = Slides(ts.index, [], labels, rows=rows)
        per = {name: score_bags(rt.place(m), ts, slides, batch_size, workers, rt, progress, "evaluate", details=True)
               for name, m in models.items()}
        df = next(iter(per.values()))[0]
        member = {name: scores for name, (_, scores) in per.items()}
        probs, scorer = np.mean([b.probs for b in member.values()], axis=0), score_slides
        df["group"] = df["image_id"].map(subset_df.groupby("image_id")["group"].first()).to_numpy()
    else:
        tile_scorer = TileScorer(ts, rows, labels, model.config.input_size, batch_size, workers, rt)
        member = {name: tile_scorer.probs(rt.place(m), progress, "evaluate") for name, m in models.items()}
        df, probs = tile_scorer.frame, np.mean(list(member.values()), axis=0)
        df["group"] = subset_df["group"].to_numpy()
        scorer = score
    seconds = time.perf_counter() - t0
    calibration = Calibration.from_record(config.get("calibration"), len(labels), f"'{run_dir / 'config.json'}'")
    synthetic = tileset_is_synthetic(ts)
    groups: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for name in GROUPS:
        mask = (df["group"] == name).to_numpy()
        if mask.any():
            part = df[mask].reset_index(drop=True)
            levels = scorer(part, probs[mask], labels)
            calibrated = None
            if calibration.active and len(member) > 1:  # an ensemble calibrates each fold, then averages (as predict)
                each = [calibrate_slides(part, (p.probs if mil else p)[mask], labels, calibration) for p in member.values()]
                calibrated = (each[0][0], np.mean([q for _, q in each], axis=0))
            # the run's validation patients are among those its calibration was fitted on
            res = results[name] = held_out(name, part, probs[mask], levels, labels, synthetic, GROUPS[name], calibration,
                                           calibrated, in_sample=name in ("validation", "train") and calibration.method != "none")
            groups[name] = {"what": GROUPS[name], "n_patients": int(df.loc[mask, "patient_id"].nunique()),
                            "metrics": levels, "headline": res["headline"],
                            **({"calibrated": res["calibrated"], "calibration": res["calibration"]}
                               if "calibrated" in res else {}),
                            "per_center": res["per_center"]}
    first = next(iter(groups))
    note = disagreement(groups["validation"]["headline"], groups["test"]["headline"]) \
        if {"validation", "test"} <= set(groups) else None
    n_tiles = int(df["n_tiles"].sum()) if mil else int(len(df))
    report = {
        "run": str(run_dir),
        **({"fold_ensemble": list(models)} if len(models) > 1 else {}),
        ("features" if form.on_features else "tileset"): str(Path(ts.root).resolve()),
        **info,
        "n_tiles": n_tiles,
        **({"n_slides": int(len(df))} if mil else {}),
        "seconds": round(seconds, 2),
        "tiles_per_s": round(n_tiles / seconds, 1) if seconds > 0 else None,
        "note": "; ".join(notes),
        "headline": groups[first]["headline"],
        **({"disagreement": note} if note else {}),
        **({"calibration": calibration.record()} if calibration.active else {}),
        "per_center": groups[first]["per_center"],
        "groups": groups,
        "metrics": groups[first]["metrics"],
    }
    table = predictions_frame(df, probs, labels)
    table.insert(0, "group", df["group"].to_numpy())
    if len(models) > 1:  # each fold's probabilities beside the ensemble's
        for name, p in member.items():
            for i, label in enumerate(labels):
                table[f"p_{label}[{name}]"] = np.round((p.probs if mil else p)[:, i].astype(np.float64), 6)
    csv_text, json_text = to_csv_text(table), json.dumps(report, indent=2, default=str) + "\n"
    needed = (len(csv_text) + len(json_text) + 150_000 * 3 * len(groups)  # a picture is a few tens of kB
              + 300 * n_tiles * qupath + 400_000 * min(MAX_SLIDES, df["image_id"].nunique()))  # GeoJSON, heatmaps, report
    with write_guard("the evaluation results", out_dir, needed):
        with staged_dir(out_dir) as tmp:  # all files or none: a failure half-way leaves no partial output
            write_text(tmp / "predictions.csv", csv_text)
            for name, group in groups.items():
                mask = (df["group"] == name).to_numpy()
                write_pictures(tmp, df[mask].reset_index(drop=True), probs[mask], labels, group["metrics"], f"evaluate_{name}")
                write_reliability(tmp, f"evaluate_{name}", results[name], labels)
            write_text(tmp / "metrics.json", json_text)
            views = open_tileset(tiles, "--tiles") if tiles is not None and not isinstance(ts, TileSet) else ts
            write_outputs(tmp, report, table, df, probs, member, slides if mil else None, ts, views, labels, qupath)
    report["out"] = str(out_dir)
    return report

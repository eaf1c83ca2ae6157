"""The models of a prediction (``clotclf predict --model A --model B``): loaded, checked, and each
one scored on the TileSet of new slides, tile-level and multiple-instance (MIL) models alike.

Every member gives **slide probabilities** (a tile-level model: the mean of the slide's tile
probabilities; a MIL model: the aggregator on the bag of all the slide's tiles), so an ensemble
mixing the two kinds is the weighted mean of its members' slide probabilities, and a patient the
mean of its slides' — the rule training and evaluation use.

A MIL model on features needs its encoder: it is rebuilt from the model's record when the model
is loaded (before any slide is tiled) and its weights are checked against the recorded sha256
(:func:`clotclf_core.features.encoder.encoder_from_record`: changed weights are refused, naming the fix).
The TileSet of the new slides is then embedded once per encoder into ``OUT/features/`` (kept and
reused, like ``OUT/tiles/``) and the bags are pooled.

For heatmaps each member also gives, per slide, its tiles' positions and per-tile P(class) (a MIL
model: each tile as a bag of one) and, for an attention aggregator, each tile's attention weight.

A member whose run calibrates or clips its probabilities (``config.json``'s ``calibration``,
fitted when it was trained: :mod:`clotclf_core.scoring.calibration`) has its **slide**
probabilities post-processed before the ensemble mean, so ``submission.csv`` holds calibrated
probabilities; the per-tile heatmap probabilities stay the model's own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from clotclf_core.features.bags import FeatureBags, Slides
from clotclf_core.features.embed import embed_bags
from clotclf_core.features.encoder import encoder_from_record
from clotclf_core.features.store import check_encoder
from clotclf_core.models.aggregate import require_attention
from clotclf_core.models.form import ModelForm
from clotclf_core.models.inputs import BATCH_INPUT_BYTES, batch_for_input
from clotclf_core.models.mil import check_standardise_option
from clotclf_core.models.runs import fold_runs, read_config, resolve_run_dir
from clotclf_core.models.saved import load_model
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import write_guard
from clotclf_core.scoring import metrics
from clotclf_core.scoring.calibration import Calibration, CalibrationError
from clotclf_core.scoring.inference import score_bags, score_tiles


class PredictError(ClotclfError):
    pass


@dataclass
class LoadedModel:
    ref: str
    run_dir: Path
    config: dict[str, Any]
    model: Any
    weight: float
    encoder: Any = None  #: a MIL model on features: its frozen encoder, rebuilt and checked
    #: how the run post-processes its slide probabilities (none: method "none", no clip)
    calibration: Calibration = field(default_factory=Calibration)
    of: str = ""  #: a fold of a cross-validation run given as one --model: that --model (the fold ensemble)

    @property
    def name(self) -> str:
        """A short name for columns, titles and QuPath measurements: the run folder's name (``fold_2``
        of a fold ensemble: ``<run>/fold_2``), or the registry name as given."""
        if self.of:
            return f"{Path(self.of).name or self.of}/{self.run_dir.name}"
        p = Path(self.ref)
        return p.name if p.is_dir() and p.name else self.ref

    @property
    def labels(self) -> list[str]:
        return list(self.model.config.labels)

    @property
    def form(self) -> ModelForm:
        return self.model.config.form

    @property
    def has_attention(self) -> bool:
        return self.form.is_mil and bool(getattr(self.model, "has_attention", False))


@dataclass
class MemberScores:
    """One model on one TileSet: ``slides`` (image_id, p_<label>…, n_tiles); per slide, for
    heatmaps, ``tiles`` (x, y, size), ``tile_probs`` (n, C) and ``attention`` (n,) or absent."""

    slides: Any
    tiles: dict[str, np.ndarray] = field(default_factory=dict)
    tile_probs: dict[str, np.ndarray] = field(default_factory=dict)
    attention: dict[str, np.ndarray] = field(default_factory=dict)


def _load_member(ref: str, run_dir: Path, weight: float, of: str = "") -> LoadedModel:
    """One ensemble member: its config, its model and the calibration its config records."""
    config, model = read_config(run_dir), load_model(run_dir)
    try:
        calibration = Calibration.from_record(config.get("calibration"), model.config.num_classes,
                                              f"model '{ref}': '{run_dir / 'config.json'}'")
    except CalibrationError as exc:
        raise PredictError(str(exc)) from None
    return LoadedModel(ref, run_dir, config, model, weight, calibration=calibration, of=of)


def load_models(refs: Sequence[str], weights: Sequence[float] | None = None, device: str = "auto",
                attention: bool = False, standardise: str = "auto", encoders: bool = True) -> list[LoadedModel]:
    """Load every ``--model`` (run directory or registry name), with its ensemble weight and its
    calibration; a MIL model on features gets its encoder rebuilt and checked now (unless
    ``encoders`` is False: the features are given, ``predict --features``). A cross-validation run
    folder (``--fold all``) is its fold ensemble: one member per fold, sharing its weight equally
    (:func:`~clotclf_core.models.runs.fold_runs`), each with the calibration its config records.
    ``attention``: attention heatmaps were asked for, so some model must have attention (else one
    clear refusal); ``standardise`` (``on`` / ``off``): what every MIL model on features must do with
    its features."""
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
        folds = fold_runs(run_dir)
        if folds is None:
            out.append(_load_member(str(ref), run_dir, weight / sum(w)))
            continue
        for fold in folds:  # the fold ensemble: its weight shared equally by its folds
            out.append(_load_member(f"{ref}/{fold.name}", fold, weight / sum(w) / len(folds), of=str(ref)))
    if standardise != "auto":
        features = [m for m in out if m.form.on_features]
        for m in features or out[:1]:  # no model on features: the first one says why the option does not apply
            try:
                check_standardise_option(m.model, standardise, m.ref)
            except ClotclfError as exc:
                raise PredictError(str(exc)) from None
    first = out[0].labels
    for m in out[1:]:
        if m.labels != first:
            raise PredictError(
                f"models disagree on their labels: '{out[0].ref}' has {first}, '{m.ref}' has {m.labels}; "
                "an ensemble needs models trained on the same labels in the same order"
            )
    if attention:
        check_attention(out)
    if encoders:  # False: the features are given (predict --features), nothing is embedded
        _attach_encoders(out, device)
    return out


def check_attention(loaded: list[LoadedModel]) -> None:
    """Attention heatmaps need a model with attention weights: one clear line otherwise."""
    if any(m.has_attention for m in loaded):
        return
    mil = [m for m in loaded if m.form.is_mil]
    if mil:
        try:
            require_attention(mil[0].model.aggregator)
        except ClotclfError as exc:
            raise PredictError(f"--attention-heatmaps: model '{mil[0].ref}': {exc}") from None
    names = ", ".join(f"'{m.ref}'" for m in loaded)
    raise PredictError(
        f"--attention-heatmaps: {names} {'is a tile-level model' if len(loaded) == 1 else 'are tile-level models'}, "
        "with no attention weights to draw: add a model trained with an attention aggregator (clotclf train "
        "--aggregator abmil), or leave --attention-heatmaps out for class-probability heatmaps")


def _attach_encoders(loaded: list[LoadedModel], device: str) -> None:
    """Rebuild the frozen encoder of each MIL model on features from its record (once per distinct encoder)."""
    built: dict[str, Any] = {}
    for m in loaded:
        if not m.form.on_features:
            continue
        record = m.model.config.encoder.model_dump(mode="json")
        if record["weights_sha256"] not in built:
            try:
                built[record["weights_sha256"]] = encoder_from_record(record, device)
            except ClotclfError as exc:
                raise PredictError(f"model '{m.ref}' needs its encoder to embed the new slides' tiles: {exc}") from None
        m.encoder = built[record["weights_sha256"]]


def features_dir(out: Path, recipe: str, m: LoadedModel) -> Path:
    """Where a MIL model's encoder features of a prediction's tiles are kept (reused next time)."""
    return out / "features" / f"{recipe}-{m.encoder.weights_sha256[:12]}"


def score_member(m: LoadedModel, ts, recipe: str, out: Path, batch_size: int, workers: int, rt, progress: bool,
                 details: bool, patient_of: dict[str, str], engine: dict[str, Any] | None = None) -> MemberScores:
    """One member on the TileSet ``ts`` (its index holds the job's slides, patients from the job);
    ``engine``: where a MIL model's encoder embeds the slides (``devices`` / ``dask``, as ``clotclf embed``).
    ``batch_size`` is bounded by bytes of input (:func:`clotclf_core.models.inputs.batch_for_input`)."""
    labels = m.labels
    record = m.model.config.encoder  # a MIL model on features: its encoder's tiles are the batches
    side = max(m.model.config.input_size, record.input_size if record is not None else 0)
    if batch_for_input(batch_size, side) < batch_size:
        batch_size = batch_for_input(batch_size, side)
        print(f"note: model '{m.ref}' takes {side}-px tiles: batches of {batch_size} (at most "
              f"{BATCH_INPUT_BYTES // 2**20} MiB of input each)", file=sys.stderr)
    rt.place(m.model)
    if not m.form.is_mil:
        frame, probs = score_tiles(m.model, ts, np.arange(len(ts)), batch_size, workers, rt, progress, f"predict {m.ref}")
        slides = metrics.aggregate(frame.assign(label=""), probs, labels, "slide")
        res = MemberScores(slides[["image_id", *[f"p_{n}" for n in labels], "n_tiles"]])
        if details:
            for image_id, group in frame.groupby("image_id", sort=False):
                pos = group.index.to_numpy()
                res.tiles[image_id] = group[["x", "y", "size"]].to_numpy()
                res.tile_probs[image_id] = probs[pos]
        return calibrated(m, res)
    return calibrated(m, _score_mil(m, ts, recipe, out, batch_size, workers, rt, progress, details, patient_of, engine))


def calibrated(m: LoadedModel, res: MemberScores) -> MemberScores:
    """``res`` with its slide probabilities post-processed as the member's run says (calibration,
    clipping; nothing for a run without): before the ensemble mean, as the run's own headline."""
    if m.calibration.active:
        cols = [f"p_{n}" for n in m.labels]
        res.slides = res.slides.copy()
        res.slides[cols] = m.calibration.apply(res.slides[cols].to_numpy())
    return res


def _score_mil(m: LoadedModel, ts, recipe: str, out: Path, batch_size: int, workers: int, rt, progress: bool,
               details: bool, patient_of: dict[str, str], engine: dict[str, Any] | None = None) -> MemberScores:
    data = ts
    if m.form.on_features:  # features of the model's own encoder, made once per recipe and encoder
        where = features_dir(out, recipe, m)
        with write_guard("the features of the tiles", where, after="run the same command again (finished slides are kept)"):
            data = embed_bags(ts.root, where, m.encoder, batch_size=batch_size, progress=progress, **(engine or {}))
        keep = data.index["image_id"].isin(set(ts.index["image_id"]))
        data.index = data.index[keep].reset_index(drop=True)
        data.index["patient_id"] = data.index["image_id"].map(patient_of)
    return score_bag_data(m, data, batch_size, workers, rt, progress, details)


def check_feature_models(loaded: list[LoadedModel], store: Any) -> None:
    """``predict --features``: every model must be a MIL model on features of the store's encoder."""
    for m in loaded:
        if not m.form.on_features:
            what = "a tile-level model" if not m.form.is_mil else "a MIL model trained end to end on tile images"
            raise PredictError(f"model '{m.ref}' is {what}: it scores tile images, not stored features. Give the slides "
                               "(SLIDES) instead of --features, or leave this model out")
        check_encoder(store, m.model.config.encoder.model_dump(mode="json"), f"the model '{m.ref}'")


def score_features(loaded: list[LoadedModel], store: Any, job_ids: Sequence[str], patient_of: dict[str, str],
                   batch_size: int, workers: int, rt, progress: bool, details: bool
                   ) -> tuple[list[Any], list[tuple[LoadedModel, Any, MemberScores]], dict[str, dict[str, Any]]]:
    """``predict --features``: every model on the store's bags of the job's slides (no slide is
    opened). Returns the slide tables (with each model's ``_weight``), the member scores, and a
    status per job slide: ``done``, the store's reason for a slide without features, or not in the store."""
    data = FeatureBags(store)
    wanted = set(job_ids)
    data.index = data.index[data.index["image_id"].isin(wanted)].reset_index(drop=True)
    data.index["patient_id"] = data.index["image_id"].map(patient_of)
    statuses = {i: {"status": "failed", "reason": f"not in the feature store '{store.root}'"} for i in job_ids}
    statuses |= {i: {**e, "reason": e.get("reason", "")} for i, e in data.slides.items() if i in wanted}
    tables, members = [], []
    if len(data.index):
        for m in loaded:
            res = calibrated(m, score_bag_data(m, data, batch_size, workers, rt, progress, details))
            tables.append(res.slides.assign(_weight=m.weight))
            members.append((m, data, res))
    return tables, members, statuses


def score_bag_data(m: LoadedModel, data: Any, batch_size: int, workers: int, rt, progress: bool,
                   details: bool) -> MemberScores:
    """A MIL member on bags of ``data`` (a TileSet, or a feature store's :class:`FeatureBags`): every
    slide of its index, one bag each."""
    rt.place(m.model)
    slides = Slides(data.index, [], m.labels, rows=np.arange(len(data.index)))
    frame, scores = score_bags(m.model, data, slides, batch_size, workers, rt, progress, f"predict {m.ref}", details)
    table = pd.DataFrame({"image_id": frame["image_id"], **{f"p_{n}": scores.probs[:, i] for i, n in enumerate(m.labels)},
                          "n_tiles": frame["n_tiles"]})
    res = MemberScores(table)
    if details:
        for i, image_id in enumerate(slides.ids):
            res.tiles[image_id] = data.index.iloc[slides.rows[i]][["x", "y", "size"]].to_numpy()
            res.tile_probs[image_id] = scores.tile_probs[i]
            if scores.attention[i] is not None:
                res.attention[image_id] = scores.attention[i]
    return res


def member_names(loaded: list[LoadedModel]) -> list[str]:
    """Each member's :attr:`LoadedModel.name`, made unique (``name#2`` for a second of the same name):
    the names of predictions.csv's per-model columns, the heatmaps' and the QuPath measurements."""
    names: list[str] = []
    for m in loaded:
        name, k = m.name, 2
        while name in names:
            name, k = f"{m.name}#{k}", k + 1
        names.append(name)
    return names

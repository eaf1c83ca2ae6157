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
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clotclf_core.plugin.errors import ClotclfError


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

    @property
    def labels(self) -> list[str]:
        return list(self.model.config.labels)

    @property
    def kind(self) -> str:
        return self.model.config.kind

    @property
    def has_attention(self) -> bool:
        return self.kind == "mil" and bool(getattr(self.model, "has_attention", False))


@dataclass
class MemberScores:
    """One model on one TileSet: ``slides`` (image_id, p_<label>…, n_tiles); per slide, for
    heatmaps, ``tiles`` (x, y, size), ``tile_probs`` (n, C) and ``attention`` (n,) or absent."""

    slides: Any
    tiles: dict[str, np.ndarray] = field(default_factory=dict)
    tile_probs: dict[str, np.ndarray] = field(default_factory=dict)
    attention: dict[str, np.ndarray] = field(default_factory=dict)


def load_models(refs: Sequence[str], weights: Sequence[float] | None = None, device: str = "auto",
                attention: bool = False) -> list[LoadedModel]:
    """Load every ``--model`` (run directory or registry name), with its ensemble weight; a MIL model
    on features gets its encoder rebuilt and checked now. ``attention``: attention heatmaps were
    asked for, so some model must have attention (else one clear refusal)."""
    from clotclf_core.models.runs import read_config, resolve_run_dir
    from clotclf_core.models.saved import load_model

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
    if attention:
        check_attention(out)
    _attach_encoders(out, device)
    return out


def check_attention(loaded: list[LoadedModel]) -> None:
    """Attention heatmaps need a model with attention weights: one clear line otherwise."""
    if any(m.has_attention for m in loaded):
        return
    mil = [m for m in loaded if m.kind == "mil"]
    if mil:
        from clotclf_core.models.aggregate import require_attention

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
    """Rebuild each MIL model's frozen encoder from its record (once per distinct encoder)."""
    from clotclf_core.features.encoder import encoder_from_record

    built: dict[str, Any] = {}
    for m in loaded:
        enc = m.model.config.encoder
        if enc is None:
            continue
        record = enc.model_dump(mode="json")
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
                 details: bool, patient_of: dict[str, str]) -> MemberScores:
    """One member on the TileSet ``ts`` (its index holds the job's slides, patients from the job).
    ``batch_size`` is bounded by bytes of input (:func:`clotclf_core.models.inputs.batch_for_input`)."""
    from clotclf_core.models.inputs import BATCH_INPUT_BYTES, batch_for_input
    from clotclf_core.scoring import metrics

    labels = m.labels
    record = m.model.config.encoder  # a MIL model on features: its encoder's tiles are the batches
    side = max(m.model.config.input_size, record.input_size if record is not None else 0)
    if batch_for_input(batch_size, side) < batch_size:
        batch_size = batch_for_input(batch_size, side)
        print(f"note: model '{m.ref}' takes {side}-px tiles: batches of {batch_size} (at most "
              f"{BATCH_INPUT_BYTES // 2**20} MiB of input each)", file=sys.stderr)
    rt.place(m.model)
    if m.kind != "mil":
        from clotclf_core.scoring.inference import score_tiles

        frame, probs = score_tiles(m.model, ts, np.arange(len(ts)), batch_size, workers, rt, progress, f"predict {m.ref}")
        slides = metrics.aggregate(frame.assign(label=""), probs, labels, "slide")
        res = MemberScores(slides[["image_id", *[f"p_{n}" for n in labels], "n_tiles"]])
        if details:
            for image_id, group in frame.groupby("image_id", sort=False):
                pos = group.index.to_numpy()
                res.tiles[image_id] = group[["x", "y", "size"]].to_numpy()
                res.tile_probs[image_id] = probs[pos]
        return res
    return _score_mil(m, ts, recipe, out, batch_size, workers, rt, progress, details, patient_of)


def _score_mil(m: LoadedModel, ts, recipe: str, out: Path, batch_size: int, workers: int, rt, progress: bool,
               details: bool, patient_of: dict[str, str]) -> MemberScores:
    import pandas as pd

    from clotclf_core.features.bags import FeatureBags, Slides
    from clotclf_core.scoring.inference import score_bags

    data = ts
    if m.encoder is not None:  # features of the model's own encoder, made once per recipe and encoder
        from clotclf_core.features.embed import embed_tileset
        from clotclf_core.features.store import FeatureStore
        from clotclf_core.plugin.io import write_guard

        where = features_dir(out, recipe, m)
        with write_guard("the features of the tiles", where, after="run the same command again (finished slides are kept)"):
            embed_tileset(ts.root, where, m.encoder.backbone, encoder=m.encoder, batch_size=batch_size, progress=progress)
        data = FeatureBags(FeatureStore(where))
        keep = data.index["image_id"].isin(set(ts.index["image_id"]))
        data.index = data.index[keep].reset_index(drop=True)
        data.index["patient_id"] = data.index["image_id"].map(patient_of)
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

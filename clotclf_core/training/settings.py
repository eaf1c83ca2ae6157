"""Every setting of a training run, and how YAML and the command line become one :class:`TrainSettings`
(with no data given, the demo preset fills the fields the user left unset: :func:`apply_demo_preset`).

Light: pydantic only (the CLI imports this module to build ``clotclf train``'s options).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from clotclf_core.config import StrictModel, closest, load_yaml
from clotclf_core.models.form import ModelForm
from clotclf_core.plugin.errors import ConfigError
from clotclf_core.plugin.spec import format_validation_error


class AugmentSettings(StrictModel):
    """The published augmentation list; probabilities and ranges are settings, not constants."""

    enabled: bool = Field(True, description="augment training tiles (never validation / test tiles)")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.5, ge=0, le=1, description="probability of a vertical flip")
    rot90: float = Field(0.5, ge=0, le=1, description="probability of a random 90-degree rotation")
    brightness: float = Field(0.2, ge=0, le=1, description="brightness change range (+-)")
    contrast: float = Field(0.2, ge=0, le=1, description="contrast change range (+-)")
    brightness_contrast_p: float = Field(0.5, ge=0, le=1, description="probability of a brightness / contrast change")
    shift: float = Field(0.0625, ge=0, le=0.5, description="shift-scale-rotate: shift as a fraction of the side (+-)")
    scale: float = Field(0.1, ge=0, lt=1, description="shift-scale-rotate: scale change (+-)")
    rotate: float = Field(45.0, ge=0, le=180, description="shift-scale-rotate: rotation in degrees (+-)")
    shift_scale_rotate_p: float = Field(0.5, ge=0, le=1, description="probability of a shift-scale-rotate")
    hed_sigma: float = Field(0.0, ge=0, lt=1, description="HED jitter: each stain's density scaled by U(1 +- hed_sigma) (0: off; sane: 0.05)")
    hed_bias: float = Field(0.0, ge=0, le=0.05, description="HED jitter: each stain's density shifted by U(+- hed_bias), skimage units where tissue is ~0-0.1 (0: off; sane: 0.005)")
    hed_p: float = Field(0.5, ge=0, le=1, description="probability of an HED jitter")


class TrainSettings(StrictModel):
    """Every setting of a training run: a ``clotclf train`` option or a field of its ``--config`` YAML.

    Saved, resolved, as ``training`` in ``config.json`` and as ``training.yaml`` in the run
    directory (``clotclf train --config RUN/training.yaml`` repeats the run).
    """

    # -- data
    tiles: str | None = Field(None, description="TileSet folder (from `clotclf tile`); none: the built-in demo cohort")
    features: str | None = Field(None, description="feature store (from `clotclf embed`): train --aggregator on bags of its tile features (with --tiles too: checked to be that TileSet's)")
    demo_dir: str = Field("clotclf-demo", description="where the demo cohort and its tiles are made once and reused")
    out: str | None = Field(None, description="run directory (default: runs/<backbone>-<date>-<time>)")
    labels: list[str] | None = Field(None, description="class names in output order (default: CE, LAA, else the TileSet's labels sorted)")
    require_patients: bool = Field(False, description="refuse slides without a patient_id (each would count as its own patient: leakage)")
    dataset_name: str | None = Field(None, min_length=1, max_length=200,
                                     description="the data's name in config.json and the model card, e.g. 'Mayo Clinic STRIP AI' (default: the TileSet folder's name)")
    # -- model
    backbone: str | None = Field("cct", description="backbone plugin (`clotclf list-plugins --kind backbone`); with --features: none, the feature store's encoder")
    backbone_options: dict[str, Any] = Field(default_factory=dict, description="backbone options (`clotclf show-plugin NAME`)")
    head: str | None = Field("linear", description="head plugin (tile-level models; an aggregator classifies by itself)")
    head_options: dict[str, Any] = Field(default_factory=dict, description="head options")
    aggregator: str | None = Field(None, description="aggregator plugin (mean, abmil…: `clotclf list-plugins --kind aggregator`): a slide-level multiple-instance model on bags of tiles; none: tile level")
    aggregator_options: dict[str, Any] = Field(default_factory=dict, description="aggregator options")
    bag_size: int | None = Field(None, ge=1, description="tiles per training bag, drawn anew each epoch (seeded); a slide with fewer gives all its tiles, padded with a mask. Default: every tile with --features, 16 end to end")
    standardise: Literal["auto", "on", "off"] = Field(
        "auto", description="standardise feature bags: each feature's mean / std over the fold's training patients' tiles, stored in the model and applied by evaluate and predict (auto: on with --features; end to end and tile level have no feature bags)")
    input_size: int | None = Field(None, ge=8, description="model input side in pixels (default: the TileSet's tile side)")
    # -- split
    folds: int = Field(5, ge=2, description="k of the patient-level stratified k-fold")
    fold: int | Literal["all"] = Field(0, description="which fold validates (0..folds-1), or 'all' for full cross-validation")
    group_by: Literal["patient", "center"] = Field("patient", description="keep whole patients (or whole centres) on one side")
    test_fraction: float = Field(0.0, ge=0, description="share of patients held out from every fold as a test set (0 to 0.5; 0: none)")
    split_file: str | None = Field(None, description="reuse a saved split.json instead of making a split")
    # -- optimisation
    epochs: int = Field(20, ge=1, description="maximum epochs per fold")
    batch_size: int = Field(32, ge=1, description="per step (per process under DDP): tiles for a tile-level model, bags (slides) with --aggregator")
    lr: float = Field(3e-4, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay (not applied to biases and norm weights)")
    schedule: Literal["cosine", "plateau", "constant"] = Field("cosine", description="LR schedule: cosine with warm-up, reduce-on-plateau, or constant")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up length (cosine only)")
    min_lr: float = Field(1e-6, ge=0, description="floor of the cosine / plateau schedule")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="reduce-on-plateau: LR multiplier")
    plateau_patience: int = Field(2, ge=0, description="reduce-on-plateau: epochs without improvement before reducing")
    patience: int = Field(3, ge=0, description="early stopping: epochs without improvement of the monitored loss (0: never stop early)")
    min_delta: float = Field(1e-4, ge=0, description="smallest decrease of the monitored loss that counts as improvement")
    monitor: Literal["patient_weighted_log_loss", "patient_log_loss"] = Field(
        "patient_weighted_log_loss",
        description="validation loss for early stopping and the best checkpoint (the STRIP AI metric, or the plain log loss)")
    grad_clip: float = Field(1.0, ge=0, description="clip the gradient norm to this (0: off)")
    loss: Literal["cross_entropy", "weighted_log_loss"] = Field(
        "cross_entropy", description="training loss: cross entropy, or the STRIP AI metric itself (each class's mean log loss in the batch, averaged with equal weight)")
    class_weights: Literal["none", "balanced"] = Field("none", description="weight the loss by inverse class frequency of the training tiles")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    max_tiles_per_slide: int | None = Field(None, ge=1, description="train on at most this many tiles per slide (seeded choice)")
    augment: AugmentSettings = Field(default_factory=AugmentSettings, description="augmentation of training tiles")
    stain_normalise: str | None = Field(None, description="stain normalisation of every tile (training, validation, test, predict): macenko, macenko:target=REF.png or reinhard:target=REF.png, estimated per slide and recorded in the model; with --features it is chosen at `clotclf embed --stain-normalise`")
    # -- probabilities
    calibrate: Literal["none", "temperature", "platt"] = Field(
        "none", description="calibrate the slide probabilities, fitted on the out-of-fold (--fold all) or validation patients, never the test ones; evaluate and predict apply it")
    clip: float | None = Field(None, description="clip the probabilities to [P, 1-P], after any calibration (0 < P < 0.5; the STRIP AI winners shrank theirs toward 0.5)")
    # -- runtime
    seed: int = Field(0, description="the one seed everything random is derived from")
    workers: int = Field(2, ge=0, description="data-loader worker processes (results do not depend on it)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice, one per core); 1 is fastest for small models on a busy machine")
    eval_batch_size: int | None = Field(None, ge=1, description="tiles per inference batch (default: 2 x batch_size)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA if available")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    channels_last: bool | Literal["auto"] = Field("auto", description="channels-last memory format (auto: on CUDA)")
    compile: bool = Field(False, description="torch.compile the model for training")

    @field_validator("dataset_name")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value)):
            raise ValueError("the dataset's name must be one line of visible text (it is shown in the model card)")
        return value

    @model_validator(mode="after")
    def _check(self) -> "TrainSettings":
        if self.fold != "all" and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold {self.fold} does not exist with folds={self.folds}: use 0..{self.folds - 1} or 'all'")
        if self.labels is not None and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise ValueError(f"labels must be at least two distinct names, got {self.labels}")
        self._check_mil()
        self._kind_defaults()
        if self.loss == "weighted_log_loss" and self.class_weights == "balanced":
            raise ValueError("loss weighted_log_loss is class-balanced already: leave class_weights at none")
        if self.loss == "weighted_log_loss" and self.label_smoothing:
            raise ValueError("label_smoothing applies to the cross_entropy loss only: set it to 0 with loss weighted_log_loss")
        if self.clip is not None and not 0 < self.clip < 0.5:
            raise ValueError(f"--clip {self.clip:g} must be between 0 and 0.5 (exclusive): probabilities are clipped to "
                             "[P, 1 - P], e.g. --clip 0.05 keeps them within [0.05, 0.95]")
        if self.test_fraction > 0.5:
            raise ValueError(
                f"test_fraction {self.test_fraction} would hold out more patients than are trained on; use a share "
                "above 0 and at most 0.5 (e.g. 0.2), or 0 for no test set")
        return self

    def _kind_defaults(self) -> None:
        """A multiple-instance run's own defaults (:data:`MIL_DEFAULTS`) in the fields not given, and
        ``standardise`` resolved (auto: on for feature bags). Not marked as given, so the demo preset
        (:func:`apply_demo_preset`) still fills them for the demo."""
        given = self.model_fields_set
        if self.form.is_mil:
            for name, value in MIL_DEFAULTS.items():
                if name not in given:
                    object.__setattr__(self, name, value)
        if self.standardise == "on" and not self.form.on_features:
            raise ValueError("--standardise on applies to feature bags (--features with --aggregator); "
                             + ("an end-to-end model" if self.form.is_mil else "a tile-level model")
                             + " learns from normalised tile images: leave --standardise out")
        if self.standardise == "auto":
            object.__setattr__(self, "standardise", "on" if self.form.on_features else "off")

    @property
    def form(self) -> ModelForm:
        """The model this run trains: tile level, MIL on ``--features`` or MIL end to end (an
        ``--aggregator`` with a ``--backbone``) (:mod:`clotclf_core.models.form`)."""
        return ModelForm.of(self.aggregator is not None, self.features is not None)

    def _check_mil(self) -> None:
        given = self.model_fields_set
        if self.aggregator is None:
            for name, flag in (("features", "--features"), ("bag_size", "--bag-size")):
                if getattr(self, name) is not None:
                    raise ValueError(f"{flag} is for multiple-instance training: add --aggregator abmil (or mean, or "
                                     "another aggregator plugin)")
            if self.aggregator_options:
                raise ValueError("aggregator options without an aggregator: add --aggregator NAME")
            if self.backbone is None or self.head is None:
                raise ValueError("a tile-level model needs a backbone and a head")
            return
        if "head" in given and self.head is not None or self.head_options:
            raise ValueError(f"a multiple-instance model classifies with its aggregator ({self.aggregator}): leave --head "
                             "and its options out")
        object.__setattr__(self, "head", None)
        if self.features is not None:
            if self.stain_normalise is not None:
                raise ValueError("with --features the stain normalisation is the feature store's: embed the tiles with "
                                 "`clotclf embed --stain-normalise METHOD` and leave --stain-normalise out of train")
            if ("backbone" in given and self.backbone is not None) or self.backbone_options:
                raise ValueError("with --features the encoder is the feature store's (it made the features); --backbone "
                                 "trains one end to end on --tiles: give one of the two")
            object.__setattr__(self, "backbone", None)
        elif self.backbone is None:
            raise ValueError("multiple-instance training needs --features (a feature store) or a --backbone to train end "
                             "to end on --tiles")


# ----------------------------------------------------------------------------- multiple-instance defaults

#: a multiple-instance run's own defaults (with --aggregator, on features or end to end), where the
#: tile-level ones would give a cohort of 200 patients 4 optimiser steps an epoch: the centre of the sweep
#: of ``benchmarks/mil_defaults.py`` (docs/training.md: lr 3e-3 ranked first there by less than the seed
#: spread, on feature bags only; these also serve end-to-end MIL, so they were not moved)
MIL_DEFAULTS: dict[str, Any] = {"batch_size": 8, "lr": 1e-3, "epochs": 40, "patience": 8, "weight_decay": 1e-5}


# ----------------------------------------------------------------------------- the demo preset

#: the demo's model when the user names no options: small enough to train on a laptop CPU in
#: minutes. Applied only to fields the user did not set; a backbone without an entry keeps its defaults.
DEMO_BACKBONE_OPTIONS: dict[str, dict[str, Any]] = {
    "cct": {"variant": "cct_2_3x2_32", "img_size": 64},
    "poolformer": {"variant": "poolformer_s12"},
}
#: side of the demo TileSet's cached tiles: the demo's 224-px tiles (1 um/pixel) are cached at
#: 64 px, so the small demo CCT trains on a laptop CPU in minutes
DEMO_TRAIN_SIZE = 64
#: (``input_size``: the demo trains at its tiles' 64 px, also with a backbone that declares 224)
DEMO_SETTINGS: dict[str, Any] = {"epochs": 10, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "folds": 4,
                                 "test_fraction": 0.25, "patience": 4, "warmup_epochs": 1.0, "max_tiles_per_slide": 32,
                                 "input_size": DEMO_TRAIN_SIZE}
#: a multiple-instance demo (``--aggregator``): a batch is bags of 16 tiles, so fewer per step
DEMO_MIL_SETTINGS: dict[str, Any] = {"batch_size": 4, "bag_size": 16}


def apply_demo_preset(settings: TrainSettings) -> TrainSettings:
    """``settings`` with the demo's values (:data:`DEMO_SETTINGS`…) in the fields the user did not set."""
    given = settings.model_fields_set
    preset = DEMO_SETTINGS | (DEMO_MIL_SETTINGS if settings.form.is_mil else {})
    values = {k: v for k, v in preset.items() if k not in given}
    if "backbone_options" not in given and settings.backbone in DEMO_BACKBONE_OPTIONS:
        values["backbone_options"] = DEMO_BACKBONE_OPTIONS[settings.backbone]
    return settings.model_copy(update=values)


# ----------------------------------------------------------------------------- resolving

#: settings whose change does not change what is computed: allowed to differ on --resume
RESUME_MAY_CHANGE = {"workers", "eval_batch_size", "out", "demo_dir", "require_patients", "dataset_name"}
#: settings naming files: compared as resolved paths on --resume (a relative and an absolute path are the same folder)
PATH_SETTINGS = ("tiles", "features", "split_file")
#: settings added since runs were first recorded, with the value that does what a run recorded before
#: them did: such a run resumes when the new setting has that value
ADDED_LATER = {"standardise": "off", "calibrate": "none", "clip": None}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_settings(config: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> TrainSettings:
    """YAML fields (``--config``) overridden by the command-line values that were given.

    Unknown YAML fields are errors (with the closest known name), never silently ignored. With no
    TileSet the demo preset fills the fields the user left unset.
    """
    data = load_yaml(config) if config else {}
    data = _merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    source = f"config file '{config}'" if config else "training settings"
    try:
        settings = TrainSettings.model_validate(data)
    except ValidationError as err:
        hints = []
        for e in err.errors():
            if e["type"] == "extra_forbidden":
                name = str(e["loc"][-1])
                pool = list(AugmentSettings.model_fields) if len(e["loc"]) > 1 else list(TrainSettings.model_fields)
                close = closest(name, pool)
                if close:
                    hints.append(f"did you mean '{close}' for '{name}'?")
        raise ConfigError(
            format_validation_error(err, source) + (" (" + "; ".join(hints) + ")" if hints else "")
            + ". The fields are listed by `clotclf train --help` and in docs/training.md"
        ) from None
    if settings.tiles is None and settings.features is None:
        settings = apply_demo_preset(settings)
    return settings


def settings_dict(s: TrainSettings) -> dict[str, Any]:
    """The settings as JSON-able data (what training.yaml and config.json's ``training`` hold).
    Paths of inputs are absolute, so ``--config RUN/training.yaml --resume`` works from any folder."""
    data = s.model_dump(mode="json")
    for key in PATH_SETTINGS:
        if data.get(key):
            data[key] = str(Path(data[key]).expanduser().resolve())
    return data


def _same_path(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a == b
    return a == b or Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two settings dicts that would change the result (for ``--resume``)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key in RESUME_MAY_CHANGE:
            continue
        if key in PATH_SETTINGS and _same_path(old.get(key), new.get(key)):
            continue
        if key not in old and key in ADDED_LATER and new.get(key) == ADDED_LATER[key]:
            continue
        if old.get(key) != new.get(key):
            out.append(f"{key}: run has {old.get(key)!r}, now {new.get(key)!r}")
    return out

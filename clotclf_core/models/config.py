"""What a saved model is: :class:`ModelConfig` (``config.json``'s ``model``, bounded so a config
from elsewhere is refused before anything is built) and :class:`EncoderRecord` (the frozen encoder
of a feature store a MIL model was trained on)."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clotclf_core.config import StrictModel
from clotclf_core.models.form import ModelForm
from clotclf_core.plugin.errors import ConfigError
from clotclf_core.plugin.protocols import IMAGENET_MEAN, IMAGENET_STD
from clotclf_core.plugin.spec import format_validation_error


def model_config_from(data: Any, where: str) -> "ModelConfig":
    """``data`` (config.json's ``model`` section) as a :class:`ModelConfig`, or one
    :class:`ConfigError` naming ``where`` and every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the model section is {type(data).__name__}, not an object")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


#: the component kinds a :class:`ModelConfig` names, each as ``<kind>`` and ``<kind>_options``
#: (a new kind of model component is one entry here and two fields below)
MODEL_KINDS: tuple[str, ...] = ("backbone", "head", "aggregator")


#: what a model is: ``tile`` (backbone + head, one tile in, one prediction out) or ``mil`` (an
#: aggregator pooling a bag of tiles into one slide prediction, on features of a frozen encoder
#: recorded in ``encoder``, or end to end behind a trained backbone); code asks :attr:`ModelConfig.form`
ModelKind = Literal["tile", "mil"]


#: a component reference: ``name`` or ``plugin/name``
COMPONENT_REF = r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,99}/)?[a-z0-9][a-z0-9._-]{0,63}$"


MAX_INPUT_SIZE = 2048


MAX_LABELS = 64


MAX_FEATURES = 65536


def _check_normalisation(values: tuple[float, float, float], name: str) -> tuple[float, float, float]:
    if not all(math.isfinite(v) and abs(v) <= 1e3 for v in values):
        raise ValueError(f"{name} {values} must be finite numbers")
    if name == "std" and not all(v > 0 for v in values):
        raise ValueError(f"std {values} must be positive")
    return values


class EncoderRecord(BaseModel):
    """The frozen encoder a feature store was made with (``features.json``'s ``encoder``), as a MIL
    run records it: enough to rebuild it (``backbone``, ``options``) and to recognise it
    (``weights_sha256``, normalisation, input size). Other fields of the record are kept as they are.

    Features made elsewhere (``clotclf import-features``: TRIDENT / CLAM ``.h5`` files) have an
    ``imported`` record instead of a way to rebuild the encoder, and may not know its weights'
    hash or normalisation (``None``): such an encoder is recognised by name and patch size only."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    backbone: str = Field(..., pattern=COMPONENT_REF)
    options: dict[str, Any] = Field(default_factory=dict)
    weights_sha256: str | None = Field(..., pattern=r"^[0-9a-f]{64}$")
    num_features: int = Field(..., ge=1, le=MAX_FEATURES)
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    input_size: int = Field(..., ge=8, le=MAX_INPUT_SIZE)
    # ``imported`` (a dict, features made elsewhere) is an extra field: absent from clotclf's own records

    @field_validator("mean", "std")
    @classmethod
    def _normalisation(cls, values: tuple[float, float, float] | None, info: Any) -> tuple[float, float, float] | None:
        return None if values is None else _check_normalisation(values, info.field_name)

    @model_validator(mode="after")
    def _rebuildable_unless_imported(self) -> "EncoderRecord":
        imported = (self.model_extra or {}).get("imported")
        if imported is not None and not isinstance(imported, dict):
            raise ValueError(f"imported must be an object describing where the features came from (got {imported!r})")
        if imported is None and (self.weights_sha256 is None or self.mean is None or self.std is None):
            raise ValueError("an encoder clotclf made needs weights_sha256, mean and std (only imported features may lack them)")
        return self


def describe_encoder(record: dict[str, Any]) -> str:
    """An encoder record (:class:`EncoderRecord`, ``features.json``'s ``encoder``) in one line:
    ``timm(model=convnext_atto) [weights sha256 1a2b3c4d…, 224 px, mean (0.485, …)]``."""
    imported = record.get("imported")
    if isinstance(imported, dict):
        digest = f"weights sha256 {str(record['weights_sha256'])[:12]}…" if record.get("weights_sha256") else "weights unknown"
        return (f"{record.get('backbone')} [imported from {imported.get('format', '?')} .h5 files, {digest}, "
                f"{record.get('input_size')} px patches]")
    opts = record.get("options") or {}
    shown = ", ".join(f"{k}={v}" for k, v in opts.items() if v is not None and k != "img_size" and not isinstance(v, dict))
    if record.get("hub_commit"):
        shown += f" @ commit {str(record['hub_commit'])[:12]}"
    digest = str(record.get("weights_sha256") or "?")[:12]
    mean = ", ".join(f"{v:g}" for v in record.get("mean") or [])
    stain = record.get("stain_normalise")
    stain = f", {stain.get('method')} stain normalisation" if isinstance(stain, dict) else ""
    return f"{record.get('backbone')}({shown}) [weights sha256 {digest}…, {record.get('input_size')} px, mean ({mean}){stain}]"


class ModelConfig(StrictModel):
    """Everything needed to rebuild a saved model (``config.json``'s ``model``).

    ``kind`` ``tile`` (the default, and every config written before MIL existed): a
    :class:`clotclf_core.models.build.ClotClassifier`, ``backbone`` + ``head``. ``kind`` ``mil``: a
    :class:`clotclf_core.models.mil.MILClassifier`, an ``aggregator`` on bags of tile features, with
    either ``encoder`` (the frozen encoder of the feature store it was trained on: its weights are
    not part of the model) or ``backbone`` (trained end to end with the aggregator); no head.

    Bounded so that a config from elsewhere (a pulled model) is refused before anything is built:
    component names follow the name rule, 2-64 distinct labels, input size 8-2048 px, a finite
    normalisation with a positive std. Each component's options are checked by its own options
    model (:func:`clotclf_core.models.build.resolve_components`), and the size of the model they describe
    against the weights (:func:`clotclf_core.models.saved.check_buildable`).
    """

    kind: ModelKind = "tile"
    backbone: str | None = None
    backbone_options: dict[str, Any] = Field(default_factory=dict)
    head: str | None = "linear"
    head_options: dict[str, Any] = Field(default_factory=dict)
    aggregator: str | None = None
    aggregator_options: dict[str, Any] = Field(default_factory=dict)
    encoder: EncoderRecord | None = None
    #: a MIL model on features standardises each feature with the mean / std of its training patients'
    #: tiles, stored as buffers beside its weights (``feature_mean``, ``feature_std`` in model.safetensors)
    standardise: bool = False
    labels: list[str] = Field(default_factory=lambda: ["CE", "LAA"], min_length=2, max_length=MAX_LABELS)
    input_size: int = Field(224, ge=8, le=MAX_INPUT_SIZE)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: the stain normalisation every slide's tiles get before the backbone (a model trained on tiles with
    #: ``--stain-normalise``: :meth:`clotclf_core.tiling.stain.StainTarget.record`); on features it is the encoder's
    stain_normalise: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _mil_has_no_head(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "mil" and "head" not in data:
            data = {**data, "head": None}
        return data

    @field_validator(*MODEL_KINDS)
    @classmethod
    def _component(cls, name: str | None, info: Any) -> str | None:
        if info.field_name == "backbone" and name is not None and name.startswith("run:") and len(name) > 4:
            return name  # a pre-training run (models.backbones): resolved to its component when built, never saved
        if name is not None and not re.match(COMPONENT_REF, name):
            raise ValueError(f"{info.field_name} {name!r} is not a component name (NAME or PLUGIN/NAME: lower-case "
                             "letters, digits, '.', '_', '-')")
        return name

    @model_validator(mode="after")
    def _parts_fit_the_kind(self) -> "ModelConfig":
        if self.kind == "tile":
            missing = [k for k in ("backbone", "head") if not getattr(self, k)]
            if missing:
                raise ValueError(f"a tile-level model needs a {' and a '.join(missing)}")
            if self.aggregator or self.encoder:
                raise ValueError("a tile-level model has no aggregator or encoder (kind 'mil' has)")
        else:
            if not self.aggregator:
                raise ValueError("a MIL model (kind 'mil') needs an aggregator")
            if self.head:
                raise ValueError("a MIL model has no head: its aggregator classifies")
            if (self.backbone is None) == (self.encoder is None):
                raise ValueError("a MIL model has either an encoder (trained on a feature store) or a backbone "
                                 "(trained end to end), not both or neither")
        if self.standardise and self.encoder is None:
            raise ValueError("standardise applies to a MIL model on stored features (with an encoder) only")
        return self

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str]) -> list[str]:
        for label in labels:
            if not label or len(label) > 64 or not label.isprintable():
                raise ValueError(f"label {label!r} must be 1-64 printable characters")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels {labels} repeat a label")
        return labels

    @field_validator("mean", "std")
    @classmethod
    def _normalisation(cls, values: tuple[float, float, float], info: Any) -> tuple[float, float, float]:
        return _check_normalisation(values, info.field_name)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def form(self) -> ModelForm:
        """Tile-level, MIL on features (an ``encoder`` is recorded) or MIL end to end (:mod:`clotclf_core.models.form`)."""
        return ModelForm.of(self.kind == "mil", self.encoder is not None)

    @property
    def components(self) -> dict[str, str]:
        """``{kind: name}`` of the components this model is built from (``backbone``, ``head``, ``aggregator``)."""
        return {k: getattr(self, k) for k in MODEL_KINDS if getattr(self, k)}

    def describe(self) -> str:
        """``cct + linear``, ``abmil on timm features``, ``cct + abmil (end to end)``: one short phrase."""
        if self.form is ModelForm.TILE:
            return f"{self.backbone} + {self.head}"
        if self.form is ModelForm.MIL_ON_FEATURES:
            return f"{self.aggregator} on {self.encoder.backbone} features"
        return f"{self.backbone} + {self.aggregator} (end to end)"

    def options_of(self, kind: str) -> dict[str, Any]:
        return dict(getattr(self, f"{kind}_options") or {})

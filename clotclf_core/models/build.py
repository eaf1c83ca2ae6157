"""Building the model a :class:`~clotclf_core.models.config.ModelConfig` describes: its components
found among the plugins (:func:`resolve_components`, options validated and resolved, who provides
each recorded) and built (:func:`build_model`): a :class:`ClotClassifier` = Backbone plugin + Head
plugin (tile level), or a :class:`clotclf_core.models.mil.MILClassifier` (an aggregator on bags of
tiles), as the config's :attr:`~clotclf_core.models.config.ModelConfig.form` says.

A config from elsewhere can be built under a parameter budget (a config describing a far larger
model than its weights stops while being built) or on the ``meta`` device (shapes only, no
memory). Saving and loading a model as a run directory is :mod:`clotclf_core.models.saved`.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from clotclf_core.models.backbones import backbone_spec, is_run_ref, rebuild_overrides
from clotclf_core.models.config import MODEL_KINDS, ModelConfig
from clotclf_core.models.inputs import apply_to_model_config
from clotclf_core.models.mil import build_mil
from clotclf_core.plugin.errors import ModelLoadError, PluginError
from clotclf_core.plugin.spec import ComponentSpec
from clotclf_core.plugin_manager import get_manager

# ----------------------------------------------------------------------------- resolving a config


@dataclass
class Resolved:
    """A :class:`ModelConfig` with every component found and its options validated."""

    config: ModelConfig  #: with the resolved options (defaults included): what config.json records
    specs: dict[str, ComponentSpec]
    options: dict[str, Any]  #: the validated options objects the factories get (rebuild overrides applied)
    provenance: dict[str, dict[str, str]] = field(default_factory=dict)


def resolve_components(cfg: ModelConfig, specs: dict[str, ComponentSpec] | None = None, rebuild: bool = False) -> Resolved:
    """Find each component of ``cfg`` (``specs`` given: those providers, e.g. the ones a saved run
    records) and validate its options; ``rebuild`` applies :func:`rebuild_overrides`."""
    mgr = get_manager()
    found: dict[str, ComponentSpec] = {}
    options: dict[str, Any] = {}
    resolved_values: dict[str, Any] = {}
    for kind in MODEL_KINDS:
        name = getattr(cfg, kind, None)
        if not name:
            continue
        if rebuild and kind == "backbone" and is_run_ref(name):  # saved configs name the run's component instead
            raise ModelLoadError(f"the saved model names the backbone '{name}': a saved model records the component "
                                 "its backbone is (e.g. timm), never a run directory; it was edited")
        # a backbone may also be a pre-training run (run:PATH): models.backbones
        spec = (specs or {}).get(kind) or (backbone_spec(name) if kind == "backbone" else mgr.get(kind, name))
        values = cfg.options_of(kind)
        if kind == "backbone" and "img_size" in spec.options.model_fields and values.get("img_size") is None:
            # convention: a backbone with an ``img_size`` option is built for the model's input size
            values["img_size"] = cfg.input_size
        opts = spec.validate_options(values)
        resolved_values[kind] = spec.name
        resolved_values[f"{kind}_options"] = opts.model_dump(mode="json")
        if rebuild and (override := rebuild_overrides(spec)):
            opts = spec.validate_options(opts.model_dump() | override)
        found[kind], options[kind] = spec, opts
    provenance = {k: {"name": s.name, **mgr.distribution_of(s)} for k, s in found.items()}
    for kind, s in found.items():  # where a pre-trained backbone's weights came from (information only)
        if isinstance(s.extra.get("backbone_run"), dict):
            provenance[kind]["backbone_run"] = dict(s.extra["backbone_run"])
    return Resolved(cfg.model_copy(update=resolved_values), found, options, provenance)


# ----------------------------------------------------------------------------- building


class _TooBig(ModelLoadError):
    pass


@contextlib.contextmanager
def _parameter_guard(budget: int | None, meta: bool, what: str) -> Iterator[None]:
    """While building: count parameters and buffers (non-persistent ones too: a fixed sine position
    table is not in the weights) as modules register them, and stop once they exceed ``budget``
    elements; with ``meta``, every tensor is made on the meta device (no memory at all: a buffer a
    config blows up to gigabytes is never allocated) and each one registered is moved there."""
    if budget is None and not meta:
        yield
        return
    with _GUARD_LOCK:  # the patch is process-wide: builds in other threads wait (and nest correctly)
        with _patched_registration(budget, meta, what), (torch.device("meta") if meta else contextlib.nullcontext()):
            yield


_GUARD_LOCK = threading.RLock()


@contextlib.contextmanager
def _patched_registration(budget: int | None, meta: bool, what: str) -> Iterator[None]:
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer
    count = [0]

    def add(numel: int, buffer: bool) -> None:
        count[0] += numel
        if budget is not None and count[0] > budget:
            raise _TooBig(
                f"{what} describes a model with more than {budget:,} parameters and buffers"
                + (f" (a buffer of {numel:,} values among them, not stored in the weights)" if buffer else "")
                + ", far more than its weights file holds; its options (e.g. img_size) were changed or do not belong to "
                "these weights. Nothing was built"
            )

    def on_parameter(self: nn.Module, name: str, param: Any) -> None:
        register_parameter(self, name, param)
        p = self._parameters.get(name)
        if p is None:
            return
        add(p.numel(), False)
        if meta and p.device.type != "meta":
            self._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    def on_buffer(self: nn.Module, name: str, tensor: Any, persistent: bool = True) -> None:
        register_buffer(self, name, tensor, persistent)
        b = self._buffers.get(name)
        if b is None:
            return
        add(b.numel(), not persistent)
        if meta and b.device.type != "meta":
            self._buffers[name] = b.to("meta")

    nn.Module.register_parameter, nn.Module.register_buffer = on_parameter, on_buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer  # type: ignore[method-assign]


def build_model(cfg: ModelConfig, *, specs: dict[str, ComponentSpec] | None = None, rebuild: bool = False,
                param_budget: int | None = None, meta: bool = False, what: str = "the config") -> nn.Module:
    """Build the model ``cfg`` describes (options validated first): a :class:`ClotClassifier`
    (``kind`` ``tile``) or a :class:`clotclf_core.models.mil.MILClassifier` (``kind`` ``mil``).

    ``specs``: use these providers (a saved run's); ``rebuild``: rebuilding saved weights (no
    pretrained downloads); ``param_budget``: refuse a model with more parameters; ``meta``: build on
    the meta device (shapes only, no memory). ``model.config`` holds the resolved options and
    ``model.plugins`` who provided each component.
    """
    res = resolve_components(cfg, specs, rebuild)
    with _parameter_guard(param_budget, meta, what):
        backbone = _build_backbone(res) if "backbone" in res.specs else None
        if res.config.form.is_mil:
            model = build_mil(res.config, res.specs, res.options, backbone)
        else:
            hspec = res.specs["head"]
            head = hspec.factory(res.options["head"], backbone.num_features, res.config.num_classes)
            model = ClotClassifier(backbone, head, res.config)
    model.plugins = res.provenance
    if res.config.form.on_features:  # the frozen encoder of a MIL model's features: recorded, not built
        enc = res.config.encoder.model_dump(mode="json")
        model.plugins["encoder"] = {"name": enc["backbone"], **{k: enc[k] for k in ("plugin", "distribution", "version")
                                                                 if isinstance(enc.get(k), str)}}
    return model


def _build_backbone(res: Resolved) -> nn.Module:
    """The backbone of ``res`` built; ``res.config`` gets what it records and declares (normalisation…)."""
    bspec = res.specs["backbone"]
    backbone = bspec.factory(res.options["backbone"])
    res.config = record_built_options(res.config, "backbone", backbone)
    res.config = apply_to_model_config(res.config, backbone)  # the backbone's declared mean / std, where cfg sets none
    num_features = getattr(backbone, "num_features", None)
    if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features <= 0:
        raise PluginError(
            f"backbone '{bspec.name}' (plugin {bspec.plugin}, distribution {bspec.distribution} {bspec.version}) built a "
            "module without a positive integer `num_features`; the plugin must set it (see docs/plugins.md)"
        )
    return backbone


def record_built_options(cfg: ModelConfig, kind: str, module: Any) -> ModelConfig:
    """``cfg`` with what the built component asks to record beside its options
    (``module.clotclf_record_options``, e.g. the Hub commit and config.json a timm ``hf-hub:`` model
    resolved to), so the saved model rebuilds the same module without network."""
    extra = getattr(module, "clotclf_record_options", None)
    if not isinstance(extra, dict) or not extra:
        return cfg
    return cfg.model_copy(update={f"{kind}_options": {**cfg.options_of(kind), **extra}})


class ClotClassifier(nn.Module):
    """Images (B, 3, H, W), normalised with ``config.mean/std`` -> logits (B, num_classes)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, config: ModelConfig):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        #: which plugin / distribution / version provided each component (saved in config.json)
        self.plugins: dict[str, Any] = {}

    @property
    def labels(self) -> list[str]:
        return list(self.config.labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

"""Models and their save / load as a run directory: ClotClassifier = Backbone plugin + Head plugin
(tile level), or a :class:`clotclf_core.milmodel.MILClassifier` (an aggregator on bags of tiles),
chosen by ``config.json``'s ``model.kind``.

A run directory holds ``model.safetensors`` (weights only, with a few strings in
``__metadata__``) and ``config.json`` (see docs/data-formats.md). What is saved describes itself:

- ``model``: the **resolved** options of every component — the options model's defaults
  included — so a plugin release that changes a default does not change an old run;
- ``plugins``: the plugin, distribution and version of every component (and of the TileSet's
  filters and source), so loading uses **the recorded provider**: a plugin installed later that
  registers the same name can neither change nor break the run; a different installed version
  is a warning, a missing one the exact ``pip install``;
- ``weights_sha256``: loading refuses weights that changed after saving.

Loading never downloads anything: options listed in a spec's ``rebuild_options`` (by default
``pretrained=False``) are applied, since the saved weights replace whatever a factory loads. The
model is built under a parameter budget taken from the safetensors header, so a config that
describes a far larger model than its weights fails at once instead of exhausting memory;
:func:`check_buildable` does the same check on the ``meta`` device (no memory at all) for a
downloaded model. Only safetensors are ever loaded: nothing here unpickles anything.

This module imports torch; the CLI imports it only inside the commands that need a model.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from . import __version__
from .backbone_input import apply_to_model_config
from .config import MODEL_KINDS, ModelConfig, model_config_from
from .errors import ConfigError, ModelLoadError, PluginError
from .hookspecs import PLUGIN_API_VERSION
from .interfaces import ComponentSpec
from .io import atomic_path, write_json
from .plugins import get_manager
from .runs import (  # noqa: F401  (re-exported)
    CONFIG_NAME,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    check_requirements,
    header_numel,
    pipeline_provenance,
    printable,
    read_config,
    read_safetensors_header,
    resolve_run_dir,
    sha256_file,
)

# ----------------------------------------------------------------------------- resolving a config


def rebuild_overrides(spec: ComponentSpec) -> dict[str, Any]:
    """Options set when a saved model is rebuilt: ``spec.extra['rebuild_options']``, or
    ``pretrained=False`` when the options model has a ``pretrained`` field."""
    given = spec.extra.get("rebuild_options")
    if isinstance(given, dict):
        return dict(given)
    return {"pretrained": False} if "pretrained" in spec.options.model_fields else {}


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
        spec = (specs or {}).get(kind) or mgr.get(kind, name)
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
    return Resolved(cfg.model_copy(update=resolved_values), found, options, provenance)


# ----------------------------------------------------------------------------- building


class _TooBig(ModelLoadError):
    pass


@contextlib.contextmanager
def _parameter_guard(budget: int | None, meta: bool, what: str) -> Iterator[None]:
    """While building: count parameters as modules register them and stop once they exceed
    ``budget`` elements; with ``meta``, move each one to the meta device (no memory)."""
    if budget is None and not meta:
        yield
        return
    with _GUARD_LOCK:  # the patch is process-wide: builds in other threads wait (and nest correctly)
        with _patched_registration(budget, meta, what):
            yield


_GUARD_LOCK = threading.RLock()


@contextlib.contextmanager
def _patched_registration(budget: int | None, meta: bool, what: str) -> Iterator[None]:
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer
    count = [0]

    def on_parameter(self: nn.Module, name: str, param: Any) -> None:
        register_parameter(self, name, param)
        p = self._parameters.get(name)
        if p is None:
            return
        count[0] += p.numel()
        if budget is not None and count[0] > budget:
            raise _TooBig(
                f"{what} describes a model with more than {budget:,} parameters, far more than its weights file holds; "
                "its options were changed or do not belong to these weights. Nothing was built"
            )
        if meta and p.device.type != "meta":
            self._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    def on_buffer(self: nn.Module, name: str, tensor: Any, persistent: bool = True) -> None:
        register_buffer(self, name, tensor, persistent)
        if meta and self._buffers.get(name) is not None:
            self._buffers[name] = self._buffers[name].to("meta")

    nn.Module.register_parameter, nn.Module.register_buffer = on_parameter, on_buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer  # type: ignore[method-assign]


def build_model(cfg: ModelConfig, *, specs: dict[str, ComponentSpec] | None = None, rebuild: bool = False,
                param_budget: int | None = None, meta: bool = False, what: str = "the config") -> nn.Module:
    """Build the model ``cfg`` describes (options validated first): a :class:`ClotClassifier`
    (``kind`` ``tile``) or a :class:`clotclf_core.milmodel.MILClassifier` (``kind`` ``mil``).

    ``specs``: use these providers (a saved run's); ``rebuild``: rebuilding saved weights (no
    pretrained downloads); ``param_budget``: refuse a model with more parameters; ``meta``: build on
    the meta device (shapes only, no memory). ``model.config`` holds the resolved options and
    ``model.plugins`` who provided each component.
    """
    res = resolve_components(cfg, specs, rebuild)
    with _parameter_guard(param_budget, meta, what):
        backbone = _build_backbone(res) if "backbone" in res.specs else None
        if res.config.kind == "mil":
            from .milmodel import build_mil

            model = build_mil(res.config, res.specs, res.options, backbone)
        else:
            hspec = res.specs["head"]
            head = hspec.factory(res.options["head"], backbone.num_features, res.config.num_classes)
            model = ClotClassifier(backbone, head, res.config)
    model.plugins = res.provenance
    if res.config.encoder is not None:  # the frozen encoder of a MIL model's features: recorded, not built
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


# ----------------------------------------------------------------------------- save


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write the model's state dict as safetensors, atomically. Returns the file's sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "clotclf_version": __version__}
    cfg = getattr(model, "config", None)
    if isinstance(cfg, ModelConfig):
        meta |= {"kind": cfg.kind, **cfg.components}
    meta |= metadata or {}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return sha256_file(path)


def save_model(model: nn.Module, run_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``run_dir``; ``extra`` adds top-level
    sections to config.json (training settings, split, tileset...). ``plugins`` records every
    component's provider and, from ``extra['tileset']``, the TileSet's filters and source.
    Returns the run directory."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    digest = save_weights(model, run_dir / WEIGHTS_NAME)
    extra = dict(extra or {})
    config: dict[str, Any] = {
        "clotclf_version": __version__,
        "plugin_api": PLUGIN_API_VERSION,
        "model": model.config.model_dump(mode="json"),
        "plugins": dict(getattr(model, "plugins", {})) | pipeline_provenance(extra.get("tileset")),
        "weights_sha256": digest,
    }
    existing = read_config(run_dir) if (run_dir / CONFIG_NAME).is_file() else {}
    for key, value in existing.items():  # keep sections written by other steps (training, split...)
        config.setdefault(key, value)
    config.update(extra)
    config["weights_sha256"] = digest
    write_json(run_dir / CONFIG_NAME, config)
    return run_dir


# ----------------------------------------------------------------------------- load


def _check_safetensors(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"'{path}' is a pickle-based checkpoint ({path.suffix}); clotclf only loads safetensors, because "
            "unpickling can run arbitrary code. If you made this file yourself and trust it, convert it: "
            "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')"
        )
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors = 8-byte little-endian header length, then the JSON header: its first byte can be
    # anything (0x80 when the length is 128 more than a multiple of 256), so the "{" decides first
    if len(head) == 9 and head[8:9] == b"{":
        return
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise ModelLoadError(
            f"'{path}' is a pickle / torch.save file despite its name; clotclf only loads safetensors "
            "(convert it with safetensors.torch.save_file if you made it yourself)"
        )
    if len(head) < 9 or head[8:9] != b"{":
        raise ModelLoadError(f"'{path}' is not a safetensors file (bad header); re-save the weights")


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a state dict, refusing anything else."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file '{path}' does not exist")
    _check_safetensors(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelLoadError(f"'{path}' could not be read as safetensors ({exc}); the file may be truncated") from None


def _shape_problems(own: dict[str, tuple[int, ...]], theirs: dict[str, tuple[int, ...]]) -> list[str]:
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    wrong = sorted(k for k in set(own) & set(theirs) if tuple(own[k]) != tuple(theirs[k]))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(printable(k, 80) for k in missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(printable(k, 80) for k in unexpected[:3])})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} with other shapes (e.g. {printable(k, 80)}: file {tuple(theirs[k])} vs model {tuple(own[k])})")
    return parts


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str = "") -> None:
    """Load ``state`` with strict keys and shapes; one error listing what does not match."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    parts = _shape_problems(own, {k: tuple(v.shape) for k, v in state.items()})
    if parts:
        raise ModelLoadError(
            f"weights in '{source}' do not fit the model described by its config.json: " + "; ".join(parts)
            + ". The weights and config.json come from different models; use the config.json saved with these weights"
            + hint
        )
    model.load_state_dict(state, strict=True)


def check_plugins(config: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """Each component ``config`` names must be installed from the recorded distribution; otherwise
    one error saying what to install (:func:`clotclf_core.runs.check_requirements`)."""
    return check_requirements(config, source)


def parameter_budget(header: dict[str, Any]) -> int:
    """How many parameters a config may describe for weights with ``header``: twice theirs plus
    16M, so a small mismatch is reported by name and shape (strict loading), and an absurd one
    (a depth of 10**6, huge widths) is stopped while being built."""
    return 2 * header_numel(header) + 2**24


def _recorded_specs(config: dict[str, Any], label: str) -> tuple[dict[str, ComponentSpec], str]:
    """The providers the run records (after :func:`check_plugins`), and a hint for messages when
    an installed version differs from the recorded one."""
    mgr = get_manager()
    recorded = config.get("plugins") if isinstance(config.get("plugins"), dict) else {}
    specs, differ = {}, []
    for kind in MODEL_KINDS:
        name = config["model"].get(kind)
        if not name:
            continue
        row = mgr.requirement(kind, str(name), recorded.get(kind))
        if row["spec"] is None:  # pragma: no cover - check_plugins raised already
            raise ModelLoadError(f"model '{label}' needs {kind} '{printable(name)}': {row['fix']}")
        specs[kind] = row["spec"]
        if row["state"] == "version differs":
            differ.append(printable(f"{row['distribution']} {row['version']} (installed: {row['installed_version']}; {row['fix']})", 400))
    hint = f". It was saved with {', '.join(differ)}: install that version" if differ else ""
    return specs, hint


def _read_run(run_dir: Path) -> tuple[dict[str, Any], Path]:
    if not run_dir.is_dir():
        raise ModelLoadError(f"run directory '{run_dir}' does not exist")
    config = read_config(run_dir)
    if config.get("kind", "clot_classifier") != "clot_classifier":  # e.g. a patch filter's run directory
        name = printable(config.get("filter") or config["kind"], 80)
        kind = printable(config["kind"], 80)
        raise ModelLoadError(
            f"'{run_dir}' holds a {kind} ({name}), not a clot classifier; "
            f"use it where a {kind} is expected (e.g. `clotclf tile --filter {name}:weights={run_dir}`)"
        )
    weights = run_dir / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [p.name for p in run_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            _check_safetensors(run_dir / pickles[0])
        raise ModelLoadError(f"'{run_dir}' has no {WEIGHTS_NAME}; the run did not finish saving, or the folder is incomplete")
    return config, weights


def _model_config(config: dict[str, Any], run_dir: Path) -> ModelConfig:
    try:
        return model_config_from(config["model"], f"'{run_dir / CONFIG_NAME}' (model section)")
    except ConfigError as exc:
        raise ModelLoadError(f"{exc}; the file was edited or does not come from clotclf") from None


def check_weights_hash(config: dict[str, Any], weights: Path) -> None:
    """``weights`` must hash to the ``weights_sha256`` that config.json recorded when it was saved."""
    recorded = config.get("weights_sha256")
    if not recorded:
        return
    actual = sha256_file(weights)
    if actual != recorded:
        raise ModelLoadError(
            f"'{weights}' is not the file its {CONFIG_NAME} describes (sha256 {actual[:12]}…, recorded "
            f"{printable(recorded, 16)[:12]}…): it was changed or damaged after the model was saved, so clotclf will not "
            "use it. Restore it (pull the model again, or copy it from where it was trained)"
        )


def _build_saved(cfg: ModelConfig, specs: dict[str, ComponentSpec], header: dict[str, Any], run_dir: Path, hint: str,
                 meta: bool) -> nn.Module:
    """Rebuild a saved model (recorded providers, no downloads, a parameter budget from its weights)."""
    what = f"'{run_dir / CONFIG_NAME}'"
    try:
        return build_model(cfg, specs=specs, rebuild=True, param_budget=parameter_budget(header), meta=meta, what=what)
    except ModelLoadError:
        raise
    except (ConfigError, PluginError) as exc:
        raise ModelLoadError(f"{what} does not build: {exc}{hint}") from exc


def load_model(run_dir: str | Path) -> nn.Module:
    """Rebuild the model saved in ``run_dir`` and load its weights (safetensors only, strict).

    Checks, in order: the weights are the file config.json describes (sha256); the model section
    is valid; every component is installed from its recorded distribution (a different version
    warns); the model config describes is no larger than the weights; the keys and shapes match.
    """
    run_dir = Path(run_dir)
    config, weights = _read_run(run_dir)
    check_weights_hash(config, weights)
    cfg = _model_config(config, run_dir)
    check_plugins(config, str(run_dir))
    specs, hint = _recorded_specs(config, str(run_dir))
    header = read_safetensors_header(weights)
    model = _build_saved(cfg, specs, header, run_dir, hint, meta=False)
    load_state_into(model, load_state(weights), str(weights), hint)
    model.eval()
    return model


def check_buildable(run_dir: str | Path) -> dict[str, Any]:
    """Everything :func:`load_model` checks, without allocating the model: it is built on the meta
    device and its parameter names and shapes compared with the safetensors header. For models
    that came from elsewhere (a pull): a config that would not load, or would describe a model far
    larger than its weights, is refused before anyone uses it. Returns ``{"parameters", "needs"}``."""
    run_dir = Path(run_dir)
    config, weights = _read_run(run_dir)
    check_weights_hash(config, weights)
    cfg = _model_config(config, run_dir)
    rows = check_plugins(config, str(run_dir))
    specs, hint = _recorded_specs(config, str(run_dir))
    header = read_safetensors_header(weights)
    model = _build_saved(cfg, specs, header, run_dir, hint, meta=True)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    parts = _shape_problems(own, {k: shape for k, (_, shape) in header.items()})
    if parts:
        raise ModelLoadError(
            f"weights in '{weights}' do not fit the model described by its config.json: " + "; ".join(parts)
            + ". The weights and config.json come from different models" + hint
        )
    return {"parameters": sum(p.numel() for p in model.parameters()), "needs": rows}

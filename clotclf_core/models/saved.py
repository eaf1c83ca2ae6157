"""A model saved as a run directory, and loaded back: ``model.safetensors`` (weights only, a few
strings in ``__metadata__``) + ``config.json`` (see docs/data-formats.md). What is saved describes itself:

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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from clotclf_core import __version__
from clotclf_core.models.build import build_model
from clotclf_core.models.config import MODEL_KINDS, ModelConfig, model_config_from
from clotclf_core.models.requirements import check_requirements, pipeline_provenance
from clotclf_core.models.runs import header_numel, read_config, read_safetensors_header
from clotclf_core.plugin.errors import ConfigError, ModelLoadError, PluginError, printable
from clotclf_core.plugin.hookspecs import PLUGIN_API_VERSION
from clotclf_core.plugin.io import write_json
from clotclf_core.plugin.spec import ComponentSpec
from clotclf_core.plugin.weights import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    _shape_problems,
    check_weights_hash,
    load_state,
    load_state_into,
    run_weights,
    save_weights,
)
from clotclf_core.plugin_manager import get_manager


def save_model(model: nn.Module, run_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``run_dir``; ``extra`` adds top-level
    sections to config.json (training settings, split, tileset...). ``plugins`` records every
    component's provider and, from ``extra['tileset']``, the TileSet's filters and source.
    Returns the run directory."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    digest = save_weights(model, run_dir / WEIGHTS_NAME, {"kind": model.config.kind, **model.config.components})
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


def parameter_budget(header: dict[str, Any]) -> int:
    """How many parameters a config may describe for weights with ``header``: twice theirs plus
    16M, so a small mismatch is reported by name and shape (strict loading), and an absurd one
    (a depth of 10**6, huge widths) is stopped while being built."""
    return 2 * header_numel(header) + 2**24


def _recorded_specs(config: dict[str, Any], label: str, trusted: bool = True) -> tuple[dict[str, ComponentSpec], str]:
    """The providers the run records (after :func:`~clotclf_core.models.requirements.check_requirements`), and
    a hint for messages when an installed version differs from the recorded one."""
    mgr = get_manager()
    recorded = config.get("plugins") if isinstance(config.get("plugins"), dict) else {}
    specs, differ = {}, []
    for kind in MODEL_KINDS:
        name = config["model"].get(kind)
        if not name:
            continue
        row = mgr.requirement(kind, str(name), recorded.get(kind), trusted)
        if row["spec"] is None:  # pragma: no cover - check_requirements raised already
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
    return config, run_weights(run_dir)


def _model_config(config: dict[str, Any], run_dir: Path) -> ModelConfig:
    try:
        return model_config_from(config["model"], f"'{run_dir / CONFIG_NAME}' (model section)")
    except ConfigError as exc:
        raise ModelLoadError(f"{exc}; the file was edited or does not come from clotclf") from None


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
    warns); the model config describes — parameters and buffers, built first on the meta device,
    so nothing is allocated for a config that asks for gigabytes — is no larger than the weights;
    the keys and shapes match.
    """
    run_dir = Path(run_dir)
    config, weights = _read_run(run_dir)
    check_weights_hash(config, weights)
    cfg = _model_config(config, run_dir)
    check_requirements(config, str(run_dir))
    specs, hint = _recorded_specs(config, str(run_dir))
    header = read_safetensors_header(weights)
    _build_saved(cfg, specs, header, run_dir, hint, meta=True)  # the budget checked at no cost, before memory is spent
    model = _build_saved(cfg, specs, header, run_dir, hint, meta=False)
    load_state_into(model, load_state(weights), str(weights), hint)
    model.eval()
    return model


def check_buildable(run_dir: str | Path, trusted: bool = True) -> dict[str, Any]:
    """Everything :func:`load_model` checks, without allocating the model: it is built on the meta
    device and its parameter names and shapes compared with the safetensors header. For models
    that came from elsewhere (a pull, ``trusted=False``: a missing plugin's distribution is named
    without a ``pip install`` unless clotclf knows it): a config that would not load, or would
    describe a model — parameters and buffers — far larger than its weights, is refused before
    anyone uses it. Returns ``{"parameters", "needs"}``."""
    run_dir = Path(run_dir)
    config, weights = _read_run(run_dir)
    check_weights_hash(config, weights)
    cfg = _model_config(config, run_dir)
    rows = check_requirements(config, str(run_dir), trusted=trusted)
    specs, hint = _recorded_specs(config, str(run_dir), trusted)
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

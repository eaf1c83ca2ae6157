"""ClotClassifier = Backbone plugin + Head plugin, and its save / load as a run directory.

A run directory holds ``model.safetensors`` (weights only, with a few strings in
``__metadata__``) and ``config.json`` (see docs/data-formats.md). Loading checks that the plugins
the config names are installed, builds the model from the config, and loads the weights with
strict keys and shapes. Only safetensors are ever loaded: nothing here unpickles anything.

This module imports torch; the CLI imports it only inside the commands that need a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .backbone_input import apply_to_model_config
from .config import ModelConfig
from .errors import ModelLoadError, PluginError
from .io import atomic_path, write_json
from .plugins import get_manager

from .runs import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, read_config, resolve_run_dir, sha256_file  # noqa: F401  (re-exported)


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build a :class:`ClotClassifier` from names + options (options validated first)."""
    mgr = get_manager()
    bspec = mgr.get("backbone", cfg.backbone)
    hspec = mgr.get("head", cfg.head)
    bvalues = dict(cfg.backbone_options)
    if "img_size" in bspec.options.model_fields and "img_size" not in bvalues:
        # convention: a backbone with an ``img_size`` option is built for the model's input size
        bvalues["img_size"] = cfg.input_size
    bopts = bspec.validate_options(bvalues)
    hopts = hspec.validate_options(cfg.head_options)
    backbone = bspec.factory(bopts)
    cfg = apply_to_model_config(cfg, backbone)  # the backbone's declared mean / std, where cfg sets none
    num_features = getattr(backbone, "num_features", None)
    if not isinstance(num_features, int) or num_features <= 0:
        raise PluginError(
            f"backbone '{cfg.backbone}' (plugin {bspec.plugin}) built a module without a positive integer "
            "`num_features`; the plugin must set it (see docs/plugins.md)"
        )
    head = hspec.factory(hopts, num_features, cfg.num_classes)
    model = ClotClassifier(backbone, head, cfg)
    model.plugins = {
        "backbone": mgr.distribution_of(bspec) | {"name": bspec.name},
        "head": mgr.distribution_of(hspec) | {"name": hspec.name},
    }
    return model


class ClotClassifier(nn.Module):
    """Images (B, 3, H, W), normalised with ``config.mean/std`` -> logits (B, num_classes)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, config: ModelConfig):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        #: which plugin / distribution / version provided the backbone and head (saved in config.json)
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
        meta |= {"backbone": cfg.backbone, "head": cfg.head}
    meta |= metadata or {}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return sha256_file(path)


def save_model(model: nn.Module, run_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``run_dir``; ``extra`` adds top-level
    sections to config.json (training settings, split, ...). Returns the run directory."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    digest = save_weights(model, run_dir / WEIGHTS_NAME)
    config: dict[str, Any] = {
        "clotclf_version": __version__,
        "model": model.config.model_dump(mode="json"),
        "plugins": getattr(model, "plugins", {}),
        "weights_sha256": digest,
    }
    existing = read_config(run_dir) if (run_dir / CONFIG_NAME).is_file() else {}
    for key, value in existing.items():  # keep sections written by other steps (training, split...)
        config.setdefault(key, value)
    config.update(extra or {})
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


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` with strict keys and shapes; one error listing what does not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes (e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        raise ModelLoadError(
            f"weights in '{source}' do not fit the model described by its config.json: " + "; ".join(parts)
            + ". The weights and config.json come from different models; use the config.json saved with these weights."
        )
    model.load_state_dict(state, strict=True)


def check_plugins(config: dict[str, Any], source: str) -> None:
    """Each component named in ``config`` must be installed; otherwise say what to install."""
    mgr = get_manager()
    model_cfg = config["model"]
    recorded = config.get("plugins", {})
    for kind in ("backbone", "head"):
        name = model_cfg.get(kind)
        if not name:
            raise ModelLoadError(f"'{source}' config.json names no {kind}")
        if name.split("/")[-1] in mgr.names(kind):
            continue
        info = recorded.get(kind, {})
        dist = info.get("distribution") or "the plugin that provides it"
        ver = info.get("version")
        pin = f"=={ver}" if ver and dist != "the plugin that provides it" else ""
        raise ModelLoadError(
            f"model '{source}' needs the {kind} '{name}' from distribution {dist}{' ' + ver if ver else ''}, "
            f"which is not installed: pip install '{dist}{pin}' (then check with `clotclf list-plugins`)"
        )


def load_model(run_dir: str | Path) -> nn.Module:
    """Rebuild the model saved in ``run_dir`` and load its weights (safetensors only, strict)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelLoadError(f"run directory '{run_dir}' does not exist")
    config = read_config(run_dir)
    if config.get("kind", "clot_classifier") != "clot_classifier":  # e.g. a patch filter's run directory
        name = config.get("filter") or config["kind"]
        raise ModelLoadError(
            f"'{run_dir}' holds a {config['kind']} ({name}), not a clot classifier; "
            f"use it where a {config['kind']} is expected (e.g. `clotclf tile --filter {name}:weights={run_dir}`)"
        )
    weights = run_dir / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [p.name for p in run_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            _check_safetensors(run_dir / pickles[0])
        raise ModelLoadError(f"'{run_dir}' has no {WEIGHTS_NAME}; the run did not finish saving, or the folder is incomplete")
    check_plugins(config, str(run_dir))
    try:
        cfg = ModelConfig.model_validate(config["model"])
    except Exception as exc:
        raise ModelLoadError(f"'{run_dir / CONFIG_NAME}' has an invalid model section: {exc}") from None
    model = build_model(cfg)
    load_state_into(model, load_state(weights), str(weights))
    model.eval()
    return model

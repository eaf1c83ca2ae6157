"""The background/tissue network and its run directory (save / load, safetensors only).

A filter run directory holds::

    model.safetensors   the network's weights (nothing else; never a pickle)
    config.json         {"kind": "patch_filter", "filter": "mobilenetv3", "model": {arch, input_size,
                        mean, std, labels}, "weights_sha256", "training", "split", ...}

``kind`` / ``filter`` keep a filter from being mistaken for a clot classifier and the other way
round. The label order is fixed, ``["background", "tissue"]``: logit 1 is tissue, so the filter's
score is ``softmax(logits)[:, 1]``.

This module imports torch and timm: only the factories and ``train-filter`` import it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clotclf_core import __version__ as CORE_VERSION
from clotclf_core.models.runs import resolve_run_dir
from clotclf_core.plugin import IMAGENET_MEAN, IMAGENET_STD, ClotclfError, ModelLoadError, write_json
from clotclf_core.plugin.weights import (
    CONFIG_NAME,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    load_state,
    load_state_into,
    save_weights,
    sha256_file,
)

from . import ARCHES, FILTER_NAME, KIND, LABELS


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else must exist on this machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ClotclfError(f"device '{device}' is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ClotclfError(f"device '{device}' was asked for but no CUDA GPU is available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ClotclfError(f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


class BackgroundNet(nn.Module):
    """A timm MobileNetV3 with a two-class output (background, tissue).

    :meth:`prepare` turns uint8 RGB tiles (N, H, W, 3) into the normalised input at
    ``input_size``, so training and filtering preprocess tiles in exactly the same way.
    """

    def __init__(self, arch: str, input_size: int, pretrained: bool = False,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        import timm

        if arch not in ARCHES:
            raise ClotclfError(f"unknown arch '{arch}'; choose one of {', '.join(ARCHES)}")
        try:
            self.net = timm.create_model(arch, pretrained=pretrained, num_classes=len(LABELS))
        except Exception as exc:
            if not pretrained:
                raise
            raise ClotclfError(
                f"could not fetch timm's ImageNet weights for '{arch}' ({type(exc).__name__}); this needs network "
                "access to the Hugging Face Hub once (or the weights in its cache); otherwise train without --pretrained"
            ) from None
        self.arch = arch
        self.input_size = int(input_size)
        self.mean_values = tuple(float(v) for v in mean)
        self.std_values = tuple(float(v) for v in std)
        # not persistent: model.safetensors holds only the network's weights; config.json holds these
        self.register_buffer("mean", torch.tensor(self.mean_values).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.std_values).view(1, 3, 1, 1), persistent=False)

    def prepare(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, S, S), resized (antialiased) and normalised."""
        x = tiles.to(self.mean.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                          antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def describe(self) -> dict[str, Any]:
        """The ``model`` section of config.json: all that is needed to rebuild this network."""
        return {"arch": self.arch, "input_size": self.input_size, "mean": list(self.mean_values),
                "std": list(self.std_values), "labels": list(LABELS)}


def save_run(net: BackgroundNet, run_dir: Path, extra: dict[str, Any]) -> str:
    """Write model.safetensors then config.json (each atomically). Returns the weights' sha256."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        dist_version = version("clotclf")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        dist_version = CORE_VERSION
    run_dir.mkdir(parents=True, exist_ok=True)
    digest = save_weights(net, run_dir / WEIGHTS_NAME,
                          metadata={"kind": KIND, "filter": FILTER_NAME, "arch": net.arch})
    config = {
        "kind": KIND,
        "filter": FILTER_NAME,
        "clotclf_version": CORE_VERSION,
        "model": net.describe(),
        "plugins": {"filter": {"name": FILTER_NAME, "plugin": "mobilenetv3", "distribution": "clotclf",
                               "version": dist_version}},
        "weights_sha256": digest,
        **extra,
    }
    write_json(run_dir / CONFIG_NAME, config)
    return digest


def _run_dir_of(ref: str) -> Path:
    """The run directory ``ref`` names: a folder, a file inside one, or a registry name."""
    path = Path(ref).expanduser()
    if path.is_file():
        if path.name in (WEIGHTS_NAME, CONFIG_NAME):
            return path.parent
        hint = f"give the run directory that holds {WEIGHTS_NAME} and {CONFIG_NAME} (made by `clotclf train-filter`)"
        try:
            load_state(path)  # the clear "pickle / not safetensors" refusal when it is one
        except ModelLoadError as exc:
            raise ModelLoadError(f"weights='{ref}': {exc}; {hint}") from None
        raise ModelLoadError(f"weights='{ref}' is a file; {hint}")
    if path.is_dir():
        return path
    looks_like_path = path.is_absolute() or ref.startswith((".", "~")) or (os.sep in ref and path.parent.is_dir())
    if looks_like_path:
        raise ModelLoadError(
            f"weights='{ref}' does not exist; train a background filter with `clotclf train-filter DATA --out RUN` "
            "and pass weights=RUN"
        )
    try:
        return resolve_run_dir(ref)  # a registry name, when the registry plugin knows it
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"weights='{ref}': {exc}. A background filter's run directory is made by `clotclf train-filter DATA --out RUN`"
        ) from None


def read_filter_config(run_dir: Path) -> dict[str, Any]:
    """config.json of a filter run, refusing clot classifiers and other filters with a clear reason."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"'{run_dir}' has no {CONFIG_NAME}: it is not a background-filter run directory "
            "(train one with `clotclf train-filter DATA --out RUN`)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"'{path}' is not valid JSON ({exc}); re-run `clotclf train-filter`") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"'{path}' does not hold a JSON object; re-run `clotclf train-filter`")
    kind = config.get("kind")
    if kind != KIND:
        what = "a clot classifier (CE vs LAA) run directory" if "backbone" in (config.get("model") or {}) else (
            f"of kind {kind!r}" if kind else "not a patch-filter run directory")
        raise ModelLoadError(
            f"'{run_dir}' is {what}, not a {FILTER_NAME} background filter; pass weights= a run directory made by "
            "`clotclf train-filter`"
        )
    if config.get("filter") != FILTER_NAME:
        raise ModelLoadError(
            f"'{run_dir}' holds weights of the filter {config.get('filter')!r}, not {FILTER_NAME!r}; "
            f"use it with --filter {config.get('filter')}"
        )
    model = config.get("model") or {}
    missing = [k for k in ("arch", "input_size", "mean", "std", "labels") if k not in model]
    if missing:
        raise ModelLoadError(f"'{path}' lacks model.{', model.'.join(missing)}; re-run `clotclf train-filter`")
    if list(model["labels"]) != list(LABELS):
        raise ModelLoadError(
            f"'{path}' has labels {model['labels']}, this filter needs {list(LABELS)} in that order; re-train it"
        )
    return config


def load_run(ref: str) -> tuple[BackgroundNet, dict[str, Any], Path]:
    """Rebuild the network of a filter run (path or registry name) and load its weights, strictly."""
    run_dir = _run_dir_of(ref)
    config = read_filter_config(run_dir)
    weights = run_dir / WEIGHTS_NAME
    if not weights.is_file():
        pickles = sorted(p for p in run_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            load_state(pickles[0])  # raises: clotclf never unpickles
        raise ModelLoadError(f"'{run_dir}' has no {WEIGHTS_NAME}; the training did not finish saving")
    expected = config.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        raise ModelLoadError(
            f"'{weights}' does not match the sha256 recorded in its config.json: the file was changed or "
            "truncated after training; re-download or re-train it"
        )
    m = config["model"]
    net = BackgroundNet(m["arch"], int(m["input_size"]), mean=tuple(m["mean"]), std=tuple(m["std"]))
    load_state_into(net, load_state(weights), str(weights))
    net.eval()
    return net, config, run_dir

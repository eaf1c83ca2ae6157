"""The background/tissue network and its run directory (save / load, safetensors only).

A filter run directory holds::

    model.safetensors   the network's weights (nothing else; never a pickle)
    config.json         {"kind": "patch_filter", "filter": "mobilenetv3", "model": {arch, input_size,
                        mean, std, labels}, "weights_sha256", "training", "split", ...}

``kind`` / ``filter`` keep a filter from being mistaken for a clot classifier and the other way
round. The label order is fixed, ``["background", "tissue"]``: logit 1 is tissue, so the filter's
score is ``softmax(logits)[:, 1]``. Writing and the checks on reading (config.json present and an
object, weights present and not a pickle, weights' sha256 the recorded one) are the plugin API's
run-directory helpers (:mod:`clotclf_core.plugin.weights`), the same the core's own runs use.

This module imports torch and timm: only the factories and ``train-filter`` import it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clotclf_core.plugin import IMAGENET_MEAN, IMAGENET_STD, ClotclfError, ModelLoadError
from clotclf_core.plugin.weights import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_weights_hash,
    load_state,
    load_state_into,
    read_run_config,
    run_weights,
    save_run,
)

from . import ARCHES, FILTER_NAME, KIND, LABELS

#: how messages say to make a run directory of this filter
TRAIN_HINT = "train one with `clotclf train-filter DATA --out RUN`"


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


def save_filter_run(net: BackgroundNet, run_dir: Path, extra: dict[str, Any]) -> str:
    """Write model.safetensors then config.json (each atomically). Returns the weights' sha256."""
    try:
        dist_version = version("clotclf")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        dist_version = "unknown"
    config = {
        "kind": KIND,
        "filter": FILTER_NAME,
        "model": net.describe(),
        "plugins": {"filter": {"name": FILTER_NAME, "plugin": "mobilenetv3", "distribution": "clotclf",
                               "version": dist_version}},
        **extra,
    }
    return save_run(net, run_dir, config, metadata={"kind": KIND, "filter": FILTER_NAME, "arch": net.arch})


def _run_dir_of(ref: str) -> Path:
    """The run directory ``ref`` names: a folder or a file inside one. A registry name has been
    turned into a folder already (the option is a ``RunDirectory``); one no plugin knew is not a path."""
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
    raise ModelLoadError(
        f"weights='{ref}' does not exist, and no installed plugin (such as the registry) knows it as a model name: "
        f"{TRAIN_HINT} and pass weights=RUN"
    )


def read_filter_config(run_dir: Path) -> dict[str, Any]:
    """config.json of a filter run, refusing clot classifiers and other filters with a clear reason."""
    config = read_run_config(run_dir, "a background-filter run directory", TRAIN_HINT)
    path = run_dir / CONFIG_NAME
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


def load_filter_run(ref: str) -> tuple[BackgroundNet, dict[str, Any], Path]:
    """Rebuild the network of a filter run and load its weights (checked against the recorded sha256), strictly."""
    run_dir = _run_dir_of(ref)
    config = read_filter_config(run_dir)
    weights = run_weights(run_dir)
    check_weights_hash(config, weights)
    m = config["model"]
    net = BackgroundNet(m["arch"], int(m["input_size"]), mean=tuple(m["mean"]), std=tuple(m["std"]))
    load_state_into(net, load_state(weights), str(weights))
    net.eval()
    return net, config, run_dir

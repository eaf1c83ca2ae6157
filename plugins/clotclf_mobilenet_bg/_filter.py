"""The ``mobilenetv3`` PatchFilter: P(tissue) for a batch of uint8 RGB tiles."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clotclf_core.plugin import ClotclfError, ConfigError
from clotclf_core.plugin.device import resolve_device

from . import FILTER_NAME
from ._net import load_filter_run


class MobileNetFilter:
    """Loads a filter run directory once; :meth:`score` runs it batched under ``inference_mode``."""

    def __init__(self, opts: Any):
        if not opts.weights:
            raise ClotclfError(
                f"filter '{FILTER_NAME}' needs trained weights: train them with `clotclf train-filter DATA --out RUN` "
                f"and pass {FILTER_NAME}:weights=RUN (or drop this filter and keep `otsu` alone)"
            )
        net, config, run_dir = load_filter_run(opts.weights)
        if opts.arch is not None and opts.arch != net.arch:
            raise ConfigError(
                f"filter '{FILTER_NAME}': arch={opts.arch} was asked for but '{run_dir}' holds a {net.arch}; "
                "drop the arch option (the weights decide it) or pass weights trained with that arch"
            )
        if opts.input_size is not None:
            net.input_size = int(opts.input_size)
        self.device = resolve_device(opts.device)
        self.net = net.to(self.device).eval()
        self.threshold = float(opts.threshold)
        self.batch_size = int(opts.batch_size)
        self.run_dir = run_dir
        self.config = config

    def describe(self) -> dict[str, Any]:
        """What produced the scores (for tileset.json)."""
        return {"filter": FILTER_NAME, "weights": str(self.run_dir), "weights_sha256": self.config.get("weights_sha256"),
                "arch": self.net.arch, "input_size": self.net.input_size, "threshold": self.threshold}

    def score(self, tiles: np.ndarray) -> np.ndarray:
        """``tiles``: uint8 (N, H, W, 3) RGB. Returns float32 (N,) P(tissue)."""
        if not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
            got = f"{tiles.dtype} {tiles.shape}" if isinstance(tiles, np.ndarray) else type(tiles).__name__
            raise ValueError(f"{FILTER_NAME}.score() needs uint8 tiles of shape (N, H, W, 3), got {got}")
        out = np.empty(len(tiles), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(tiles), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(tiles[start:start + self.batch_size]))
                if self.device.type == "cuda":
                    batch = batch.pin_memory()
                logits = self.net(self.net.prepare(batch))
                out[start:start + len(batch)] = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
        return out

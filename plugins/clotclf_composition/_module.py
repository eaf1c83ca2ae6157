"""The composition encoder as a torch module (the backbone contract); the measuring is :mod:`._features`."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ._features import FEATURE_NAMES, Thresholds, tile_features


class CompositionEncoder(nn.Module):
    """uint8-valued tiles scaled to 0-1 (B, 3, H, W) -> float32 (B, len(FEATURE_NAMES)).

    No parameters. Its state is two buffers — the stain matrix and the thresholds — so the
    ``weights_sha256`` a feature store records changes when the definitions do. Gradients do not
    flow through it (the features are numpy measurements): trained end to end, only the aggregator
    learns, exactly as on a feature store of the same features.
    """

    #: the identity: the core hands the backbone x / 255, the raw pixels on a 0-1 scale
    pretrained_cfg: ClassVar[dict] = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    feature_names = FEATURE_NAMES
    num_features = len(FEATURE_NAMES)

    def __init__(self, opts):
        super().__init__()
        from skimage.color import hed_from_rgb

        self.register_buffer("stain_matrix", torch.tensor(hed_from_rgb, dtype=torch.float32))
        self.register_buffer("thresholds", torch.tensor(
            [opts.tissue_od, opts.min_tissue_pixels, opts.nucleus_h, opts.red_cell_residual, opts.fibrin_eosin,
             opts.glcm_levels], dtype=torch.float64))
        self._t = Thresholds(opts.tissue_od, opts.min_tissue_pixels, opts.nucleus_h, opts.red_cell_residual,
                             opts.fibrin_eosin, opts.glcm_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        feats = np.stack([tile_features(tile, self.stain_matrix.cpu().numpy(), self._t) for tile in rgb]) if len(rgb) \
            else np.zeros((0, self.num_features), np.float32)
        return torch.from_numpy(feats.astype(np.float32)).to(x.device)

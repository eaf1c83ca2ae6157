"""Stain robustness: H&E stain normalisation (Macenko, Reinhard) and HED jitter, on uint8 RGB tiles.

**Normalisation** maps every slide's stain onto one target, the same way for training, embedding
and prediction (``clotclf embed --stain-normalise macenko``, ``clotclf train --stain-normalise …``):

- ``macenko``: the target is the Macenko paper's reference H&E stain matrix and maximum
  concentrations (torchstain's defaults); ``macenko:target=REF.png`` fits them to a reference image.
- ``reinhard:target=REF.png``: the target is the reference image's mean and std in Lab.

A slide's own stain is estimated **once per slide** from up to :data:`SAMPLE_TILES` of its tiles
(evenly spaced, so the same tiles every time) with torchstain's estimators, and every tile of the
slide is then mapped with that one estimate. Per-tile estimation would scale each tile's stain
concentrations to the same 99th percentile and each tile's Lab statistics to the target's, erasing
the differences between tiles (a red-cell-rich tile and a fibrin tile) that the classifier needs.
A slide whose sampled tiles hold fewer than :data:`MIN_TISSUE_PIXELS` stained pixels (blank, glass)
has no stain to estimate (torchstain's Macenko raises ``LinAlgError`` there): its tiles pass
through unchanged, and :attr:`SlideNormaliser.fitted` says so.

What a run records (``features.json`` / ``config.json``) is :meth:`StainTarget.record`: the method
and the target's numbers (never the reference image's path), so ``predict`` rebuilds exactly the
same normalisation without the reference file.

**HED jitter** (Tellez et al. 2018): each tile's haematoxylin / eosin / DAB optical densities
(scikit-image's ``hed_from_rgb``) scaled by ``U(1 - sigma, 1 + sigma)`` and shifted by
``U(-bias, bias)`` per stain, then back to RGB. The maths is skimage's without its clamp of
negative stain values (``rgb2hed`` clips them, so ``hed2rgb(rgb2hed(x))`` is lossy: mean 3.5, max 59
grey levels off on a tissue tile); unclamped, zero jitter gives the tile back exactly. Scale:
skimage's HED values of tissue are about 0-0.1, so ``bias`` 0.05 is huge (mean |ΔRGB| 56 grey levels);
sigma 0.05 with bias 0.005 moves a tile by about 5-8 grey levels.

numpy + scikit-image + torchstain (numpy backend); no torch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clotclf_core.plugin.errors import ConfigError

METHODS = ("macenko", "reinhard")
#: tiles of a slide its stain is estimated from (evenly spaced over the slide's tiles)
SAMPLE_TILES = 16
#: fewer stained pixels (optical density above beta in every channel) than this: nothing to estimate
MIN_TISSUE_PIXELS = 2000
#: Macenko's constants (torchstain's defaults): transmitted light, percentile of the angle extremes, OD floor
IO, ALPHA, BETA = 240.0, 1.0, 0.15
SPEC_HELP = "macenko, macenko:target=REF.png or reinhard:target=REF.png (or none)"


@dataclass(frozen=True)
class StainTarget:
    """What every slide is normalised to: ``method`` and the target's numbers (``params``)."""

    method: str
    params: dict[str, Any]
    #: where the numbers came from: ``"macenko-reference"`` or ``"image sha256 <hex>"``
    source: str = "macenko-reference"

    def record(self) -> dict[str, Any]:
        """What a feature store / run records (plain JSON)."""
        return {"method": self.method, **self.params, "source": self.source, "sample_tiles": SAMPLE_TILES,
                "min_tissue_pixels": MIN_TISSUE_PIXELS, "per": "slide"}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StainTarget:
        """The target a run recorded; one clear error when the record is not one."""
        if not isinstance(record, dict) or record.get("method") not in METHODS:
            raise ConfigError(f"the recorded stain normalisation {record!r} is not one this clotclf knows ({', '.join(METHODS)})")
        try:
            if record["method"] == "macenko":
                params = {"he": _matrix(record["he"], (3, 2)), "max_c": _matrix(record["max_c"], (2,))}
            else:
                params = {"means": _matrix(record["means"], (3,)), "stds": _matrix(record["stds"], (3,))}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the recorded {record['method']} stain normalisation is damaged ({exc}); embed or train again") from None
        return cls(record["method"], params, str(record.get("source", "")))


def _matrix(value: Any, shape: tuple[int, ...]) -> list:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape or not np.isfinite(arr).all():
        raise ValueError(f"expected {shape} finite numbers, got {arr.shape}")
    return arr.tolist()


def _read_reference(path: str) -> tuple[np.ndarray, str]:
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"stain normalisation target '{path}' is not a file: give an RGB image (PNG/JPEG/TIFF) of "
                          "well-stained tissue")
    try:
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"stain normalisation target '{path}' cannot be read as an image ({exc})") from None
    return rgb, "image sha256 " + hashlib.sha256(p.read_bytes()).hexdigest()


def parse_stain_normalise(text: str | None) -> StainTarget | None:
    """``--stain-normalise`` text -> the target (None for none). One clear error for anything else."""
    if text is None or str(text).strip().lower() in ("", "none", "off"):
        return None
    method, _, rest = str(text).strip().partition(":")
    method = method.strip().lower()
    if method not in METHODS:
        raise ConfigError(f"--stain-normalise '{text}': unknown method '{method}'; use {SPEC_HELP}")
    opts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key.strip() != "target" or not value.strip():
            raise ConfigError(f"--stain-normalise '{text}': '{part}' is not an option; the only one is target=REF.png")
        opts["target"] = value.strip()
    if "target" not in opts:
        if method == "reinhard":
            raise ConfigError("--stain-normalise reinhard needs a reference image: reinhard:target=REF.png")
        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

        ref = NumpyMacenkoNormalizer()
        return StainTarget("macenko", {"he": ref.HERef.tolist(), "max_c": ref.maxCRef.tolist()}, "macenko-reference")
    rgb, source = _read_reference(opts["target"])
    fit = estimate(method, rgb[None])
    if fit is None:
        raise ConfigError(f"stain normalisation target '{opts['target']}' holds fewer than {MIN_TISSUE_PIXELS} stained "
                          "pixels, so no stain can be fitted to it: give an image of well-stained tissue")
    return StainTarget(method, fit, source)


def stain_record(text: str | None) -> dict[str, Any] | None:
    """What a model records for ``--stain-normalise`` text (None: none)."""
    target = parse_stain_normalise(text)
    return target.record() if target is not None else None


def _stained_pixels(tiles: np.ndarray) -> int:
    od = -np.log((tiles.reshape(-1, 3).astype(np.float64) + 1.0) / IO)
    return int((od >= BETA).all(axis=1).sum())


def estimate(method: str, tiles: np.ndarray) -> dict[str, Any] | None:
    """The stain of ``tiles`` (uint8 (k, S, S, 3), one slide's sample) by torchstain's estimator:
    Macenko's stain matrix and 99th-percentile concentrations, or Reinhard's Lab mean / std.
    ``None`` when they hold too few stained pixels to estimate anything."""
    if _stained_pixels(tiles) < MIN_TISSUE_PIXELS:
        return None
    flat = np.ascontiguousarray(tiles.reshape(-1, 1, 3))  # one image of every sampled pixel
    if method == "macenko":
        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

        norm = NumpyMacenkoNormalizer()
        try:
            norm.fit(flat, Io=IO, alpha=ALPHA, beta=BETA)
        except np.linalg.LinAlgError:
            return None
        if not (np.isfinite(norm.HERef).all() and np.isfinite(norm.maxCRef).all()) or (norm.maxCRef <= 0).any():
            return None
        return {"he": norm.HERef.tolist(), "max_c": norm.maxCRef.tolist()}
    from torchstain.numpy.normalizers import NumpyReinhardNormalizer

    norm = NumpyReinhardNormalizer()
    norm.fit(flat)
    means, stds = np.asarray(norm.target_means), np.asarray(norm.target_stds)
    if not (np.isfinite(means).all() and np.isfinite(stds).all()) or (stds <= 0).any():
        return None
    return {"means": means.tolist(), "stds": stds.tolist()}


def sample_rows(n: int, k: int = SAMPLE_TILES) -> np.ndarray:
    """``k`` evenly spaced positions of ``n`` tiles (all of them when ``n <= k``)."""
    return np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(np.int64)) if n else np.zeros(0, np.int64)


@dataclass
class SlideNormaliser:
    """One slide's tiles mapped onto ``target``, from the slide's stain estimated once (:func:`estimate`)."""

    target: StainTarget
    source: dict[str, Any] | None = field(default=None)

    @classmethod
    def fit(cls, target: StainTarget, sample: np.ndarray) -> SlideNormaliser:
        return cls(target, estimate(target.method, sample))

    @property
    def fitted(self) -> bool:
        return self.source is not None

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 (B, S, S, 3) -> uint8 (B, S, S, 3) in the target's stain (unchanged if not fitted)."""
        if self.source is None:
            return tiles
        shape = tiles.shape
        rgb = tiles.reshape(-1, 3)
        if self.target.method == "macenko":
            out = _macenko_map(rgb, np.asarray(self.source["he"]), np.asarray(self.source["max_c"]),
                               np.asarray(self.target.params["he"]), np.asarray(self.target.params["max_c"]))
        else:
            out = _reinhard_map(rgb, self.source, self.target.params)
        return out.reshape(shape)


def _macenko_map(rgb: np.ndarray, he: np.ndarray, max_c: np.ndarray, he_ref: np.ndarray, max_c_ref: np.ndarray) -> np.ndarray:
    """Macenko's mapping (torchstain's ``normalize`` with the slide's stain in place of the tile's):
    concentrations in the slide's stain vectors, scaled by the reference's / the slide's maxima,
    recombined with the reference vectors."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / np.float32(IO))  # (n, 3)
    conc = od @ np.linalg.pinv(he).T.astype(np.float32)  # (n, 2): least squares of od = he @ c
    conc *= (max_c_ref / max_c).astype(np.float32)
    out = np.float32(IO) * np.exp(-(conc @ he_ref.T.astype(np.float32)))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _reinhard_map(rgb: np.ndarray, source: dict[str, Any], target: dict[str, Any]) -> np.ndarray:
    """Reinhard's mapping with the slide's Lab mean / std (torchstain's colour conversions)."""
    from torchstain.numpy.utils.lab2rgb import lab2rgb
    from torchstain.numpy.utils.rgb2lab import rgb2lab

    lab = rgb2lab(rgb.reshape(-1, 1, 3).astype(np.float32) / 255.0).reshape(-1, 3)
    mu, sd = np.asarray(source["means"]), np.asarray(source["stds"])
    mu_t, sd_t = np.asarray(target["means"]), np.asarray(target["stds"])
    lab = (lab - mu) / sd * sd_t + mu_t
    out = lab2rgb(lab.reshape(-1, 1, 3).astype(np.float32)).reshape(-1, 3)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


class SlideNormalisers:
    """Per-slide normalisers of a TileSet, fitted lazily (each from the slide's sampled tiles), so a
    dataset worker fits only the slides it reads. ``pixels(image_id)`` gives a slide's cached tiles."""

    def __init__(self, target: StainTarget, pixels):
        self.target, self.pixels = target, pixels
        self._fitted: dict[str, SlideNormaliser] = {}

    def __call__(self, image_id: str) -> SlideNormaliser:
        norm = self._fitted.get(image_id)
        if norm is None:
            tiles = self.pixels(image_id)
            norm = SlideNormaliser.fit(self.target, np.asarray(tiles[sample_rows(len(tiles))]))
            self._fitted[image_id] = norm
        return norm

    def __getstate__(self):  # a DataLoader worker gets the target and the TileSet, not the fits
        return {"target": self.target, "pixels": self.pixels, "_fitted": {}}


# ----------------------------------------------------------------------------- HED jitter

def _hed_matrices() -> tuple[np.ndarray, np.ndarray]:
    from skimage.color import hed_from_rgb, rgb_from_hed

    return hed_from_rgb.astype(np.float32), rgb_from_hed.astype(np.float32)


_LOG_FLOOR = float(np.log(1e-6))  # skimage's separate_stains: log(max(rgb, 1e-6)) / log(1e-6)


def hed_jitter(rgb: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) RGB with its H, E, D stain values ``* scale + shift`` (3 each): skimage's
    ``rgb2hed`` / ``hed2rgb`` maths without the clamp, so scale 1 and shift 0 return ``rgb`` exactly."""
    hed_from, rgb_from = _hed_matrices()
    x = np.maximum(rgb.astype(np.float32) / 255.0, 1e-6)
    stains = (np.log(x) / _LOG_FLOOR) @ hed_from
    stains = stains * np.asarray(scale, np.float32) + np.asarray(shift, np.float32)
    out = np.exp((stains * _LOG_FLOOR) @ rgb_from)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def check_jitter(sigma: float, bias: float) -> None:
    if not (0 <= sigma < 1 and math.isfinite(sigma)) or not (0 <= bias <= 0.05 and math.isfinite(bias)):
        raise ConfigError(f"HED jitter sigma must be in [0, 1) and bias in [0, 0.05] (skimage units); got {sigma}, {bias}")

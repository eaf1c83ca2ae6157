"""Reading a labelled patch folder: ``DATA/tissue/*.png|jpg`` and ``DATA/background/*.png|jpg``.

This is the layout of the public STRIP AI background set and of `clotclf export-patches`.
Every image is decoded once, up front, resized to the training size and kept as one uint8 array
(N, S, S, 3): a bad file is named before training starts, and epochs never touch the disk.
Memory is N x S x S x 3 bytes (20,000 patches at 224 px: 3 GB).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from clotclf_core.plugin import ClotclfError

from . import LABELS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_patches(data: str | Path) -> tuple[list[Path], np.ndarray]:
    """All image files under ``data/<label>/`` (recursively, sorted) and their label indices."""
    root = Path(data)
    if not root.exists():
        raise ClotclfError(f"patch folder '{root}' does not exist; make one with `clotclf export-patches SLIDES --out {root}`")
    if not root.is_dir():
        raise ClotclfError(f"'{root}' is a file; DATA must be a folder holding tissue/ and background/ subfolders")
    missing = [name for name in LABELS if not (root / name).is_dir()]
    if missing:
        raise ClotclfError(
            f"patch folder '{root}' has no {' and no '.join(n + '/' for n in missing)} subfolder; DATA must hold "
            "tissue/ and background/ folders of PNG/JPEG patches (e.g. from `clotclf export-patches`)"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(LABELS):
        found = sorted(
            p for p in (root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")  # ._x.png: macOS metadata
        )
        if not found:
            raise ClotclfError(
                f"'{root / name}' holds no PNG/JPEG images; both classes need patches (found none for '{name}')"
            )
        paths += found
        labels += [index] * len(found)
    return paths, np.asarray(labels, dtype=np.int64)


def _read_one(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            return np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ClotclfError(f"image '{path}' cannot be read ({reason}); delete or replace it, then re-run") from None


def read_patches(paths: list[Path], size: int, progress: bool = True) -> np.ndarray:
    """Decode ``paths`` in threads (PIL releases the GIL) into a uint8 (N, size, size, 3) array."""
    from tqdm.auto import tqdm

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: _read_one(p, size), paths)
        for i, arr in enumerate(tqdm(results, total=len(paths), desc="reading patches", unit="img", disable=not progress)):
            out[i] = arr
    return out

"""The demo: with no ``--tiles``, train on the built-in synthetic cohort, made once.

The cohort (``demo_dir/cohort``, seed 0) and its tiles (``demo_dir/tiles``) are generated on the
first run and reused afterwards; the settings the demo fills in are
:func:`clotclf_core.training.settings.apply_demo_preset`'s.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clotclf_core.demo.cohort import DEMO_TILING, write_demo_cohort
from clotclf_core.tiling.run import tile_slides
from clotclf_core.tiling.settings import TileSettings
from clotclf_core.tiling.tileset import TileSet, TileSetError
from clotclf_core.training.settings import DEMO_TRAIN_SIZE, TrainSettings


def is_demo(s: TrainSettings) -> bool:
    if s.form.on_features:
        return False  # a feature store says itself whether its tiles were synthetic (features.json)
    return s.tiles is None or Path(s.tiles).resolve() == (Path(s.demo_dir) / "tiles").resolve()


def prepare_demo(demo_dir: str | Path, progress: bool = True) -> Path:
    """The demo TileSet: ``demo_dir/cohort`` (synthetic slides + Kaggle-style train.csv, seed 0)
    tiled into ``demo_dir/tiles``. Both are made once; later runs find and reuse them (tiling
    resumes after the slides already done, so an interrupted preparation just continues)."""
    demo_dir = Path(demo_dir)
    cohort, tiles = demo_dir / "cohort", demo_dir / "tiles"
    manifest = cohort / "train.csv"
    if not manifest.is_file():  # written last by the generator: absent means absent or unfinished
        manifest = Path(write_demo_cohort(cohort, seed=0, overwrite=cohort.exists(), progress=progress))
    wanted = set(pd.read_csv(manifest, dtype=str)["image_id"])
    if (tiles / "tileset.json").is_file():
        try:
            if wanted <= set(TileSet(tiles).slides):
                return tiles
        except TileSetError:
            pass  # e.g. a damaged pixel file: tiling again below repairs just those slides
    settings = TileSettings(**{**dict(DEMO_TILING), "train_size": DEMO_TRAIN_SIZE})
    tile_slides(cohort / "slides", tiles, manifest=manifest, settings=settings, progress=progress)
    return tiles

"""The demo preset: with no ``--tiles``, train on the built-in synthetic cohort, made once.

The preset only fills settings the user did not give; the cohort (``demo_dir/cohort``, seed 0)
and its tiles (``demo_dir/tiles``) are generated on the first run and reused afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.training.settings import TrainSettings

#: the demo's model when the user names no options: small enough to train on a laptop CPU in
#: minutes. Applied only to fields the user did not set; a backbone without an entry keeps its defaults.
DEMO_BACKBONE_OPTIONS: dict[str, dict[str, Any]] = {
    "cct": {"variant": "cct_2_3x2_32", "img_size": 64},
    "poolformer": {"variant": "poolformer_s12"},
}
#: side of the demo TileSet's cached tiles: the demo's 224-px tiles (1 um/pixel) are cached at
#: 64 px, so the small demo CCT trains on a laptop CPU in minutes
DEMO_TRAIN_SIZE = 64
#: (``input_size``: the demo trains at its tiles' 64 px, also with a backbone that declares 224)
DEMO_SETTINGS: dict[str, Any] = {"epochs": 10, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "folds": 4,
                                 "test_fraction": 0.25, "patience": 4, "warmup_epochs": 1.0, "max_tiles_per_slide": 32,
                                 "input_size": DEMO_TRAIN_SIZE}


#: a multiple-instance demo (``--aggregator``): a batch is bags of 16 tiles, so fewer per step
DEMO_MIL_SETTINGS: dict[str, Any] = {"batch_size": 4, "bag_size": 16}


def apply_demo_preset(settings: "TrainSettings") -> "TrainSettings":
    given = settings.model_fields_set
    preset = DEMO_SETTINGS | (DEMO_MIL_SETTINGS if settings.aggregator else {})
    values = {k: v for k, v in preset.items() if k not in given}
    if "backbone_options" not in given and settings.backbone in DEMO_BACKBONE_OPTIONS:
        values["backbone_options"] = DEMO_BACKBONE_OPTIONS[settings.backbone]
    return settings.model_copy(update=values)


def is_demo(s: "TrainSettings") -> bool:
    if s.features is not None:
        return False  # a feature store says itself whether its tiles were synthetic (features.json)
    return s.tiles is None or Path(s.tiles).resolve() == (Path(s.demo_dir) / "tiles").resolve()


def prepare_demo(demo_dir: str | Path, progress: bool = True) -> Path:
    """The demo TileSet: ``demo_dir/cohort`` (synthetic slides + Kaggle-style train.csv, seed 0)
    tiled into ``demo_dir/tiles``. Both are made once; later runs find and reuse them (tiling
    resumes after the slides already done, so an interrupted preparation just continues)."""
    from clotclf_core.demo.cohort import DEMO_TILING, write_demo_cohort
    from clotclf_core.tiling.run import tile_slides
    from clotclf_core.tiling.settings import TileSettings
    from clotclf_core.tiling.tileset import TileSet, TileSetError

    demo_dir = Path(demo_dir)
    cohort, tiles = demo_dir / "cohort", demo_dir / "tiles"
    manifest = cohort / "train.csv"
    if not manifest.is_file():  # written last by the generator: absent means absent or unfinished
        manifest = Path(write_demo_cohort(cohort, seed=0, overwrite=cohort.exists(), progress=progress))
    import pandas as pd

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

"""The records of a run's data that go into each fold's ``config.json``: the TileSet (``tileset``),
what was used of it (``data``), the fold's split (``split``), assembled in one place by
:func:`config_sections`. (A MIL run on features adds the feature store's own records,
:meth:`clotclf_core.features.bags.FeatureBags.tileset_record` and ``features_record``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clotclf_core.tiling.tileset import tileset_is_synthetic
from clotclf_core.training.demo import is_demo
from clotclf_core.training.settings import TrainSettings, settings_dict

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from clotclf_core.tiling.tileset import TileSet
    from clotclf_core.training.splits import Split


def tileset_record(ts: "TileSet") -> dict[str, Any]:
    """config.json's ``tileset``: the TileSet a run trained on (its tiling recipe, which ``clotclf
    predict`` repeats on new slides) and its filters' / sources' providers."""
    return {
        "path": str(ts.root.resolve()),
        "format_version": ts.meta.get("format_version"),
        "tile_pixels": ts.tile_size,
        "settings": ts.settings,
        "n_tiles": len(ts),
        "n_slides": int(ts.index["image_id"].nunique()),
        "n_patients": int(ts.index["patient_id"].nunique()),
        # filters' / sources' providers (tileset.json's "components"), copied into config.json's plugins
        **({"plugins": ts.meta["components"]} if isinstance(ts.meta.get("components"), dict) else {}),
    }


def is_synthetic(s: TrainSettings, ts: "TileSet") -> bool:
    """The demo, or a TileSet of synthetic slides."""
    return is_demo(s) or tileset_is_synthetic(ts)


def data_record(s: TrainSettings, ts: "TileSet") -> dict[str, Any]:
    """config.json's ``data``: what the run used of it (after unlabelled slides were left out)."""
    return {
        "dataset": s.dataset_name or ("clotclf synthetic demo cohort" if is_demo(s) else ts.root.resolve().name),
        "synthetic": is_synthetic(s, ts),
        "n_slides": int(ts.index["image_id"].nunique()),
        "n_patients": int(ts.index["patient_id"].nunique()),
        "n_tiles": len(ts),
    }


def fold_split_record(split: "Split", k: int, index: "pd.DataFrame") -> dict[str, Any]:
    fold = split.folds[k]
    slides = lambda ps: int(index.loc[index["patient_id"].isin(set(ps)), "image_id"].nunique())  # noqa: E731
    strategy = "stratified k-fold by " + ("centre (leave-centres-out)" if split.group_by == "center" else "patient")
    return {
        "strategy": strategy, "group_by": split.group_by, "n_folds": len(split.folds), "fold": k, "seed": split.seed,
        "n_train_patients": len(fold.train), "n_val_patients": len(fold.val), "n_test_patients": len(split.test),
        "n_train_slides": slides(fold.train), "n_val_slides": slides(fold.val), "n_test_slides": slides(split.test),
        "test_fraction": split.test_fraction, "test_fraction_achieved": split.test_fraction_achieved,
        "train": fold.train, "val": fold.val, "test": split.test,
    }


def config_sections(s: TrainSettings, split: "Split", k: int, ts: "TileSet", records: dict[str, Any]) -> dict[str, Any]:
    """Everything a fold's config.json records beside the model: the one place it is assembled
    (``records``: the data's sections, ``tileset``, ``data`` and e.g. a MIL run's ``features``)."""
    return {"training": settings_dict(s), "split": fold_split_record(split, k, ts.index), **records}

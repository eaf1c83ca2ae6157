"""Patch-feature ``.h5`` files written the way TRIDENT and CLAM write them (h5py), for
``clotclf import-features`` tests. The writers are transcribed from the projects' code:

- TRIDENT (mahmoodlab/TRIDENT ``trident/IO.py`` ``save_h5``, ``wsi_objects/WSI.py`` ``extract_features``):
  datasets ``features`` (N, D) and ``coords`` (N, 2) int64 (level-0 x, y), chunks ``(1,) + shape[1:]``,
  ``maxshape (None, ...)``; attributes per dataset, dicts as JSON strings and None as ``"None"``;
  ``coords`` carries the coords file's attributes (patch_size, patch_size_level0, magnifications…),
  ``features`` ``{name, savetodir, encoder}``.
- CLAM (mahmoodlab/CLAM ``utils/file_utils.py`` ``save_hdf5``, ``extract_features_fp.py``): per batch,
  ``features`` float32 (N, D) and ``coords`` int32 (N, 2), first batch ``mode='w'``, then appended
  (``mode='a'``: resize + write), chunks ``(32,) + shape[1:]``, no attributes at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def trident_save_h5(save_path, assets, attributes=None, mode="w"):
    import h5py

    with h5py.File(save_path, mode) as file:
        for key, val in assets.items():
            data_shape = val.shape
            if key not in file:
                chunk_shape = (1,) + data_shape[1:]
                dset = file.create_dataset(key, shape=data_shape, maxshape=(None,) + data_shape[1:], chunks=chunk_shape,
                                           dtype=val.dtype)
                dset[:] = val
                if attributes is not None and key in attributes:
                    for attr_key, attr_val in attributes[key].items():
                        if isinstance(attr_val, dict):
                            attr_val = json.dumps(attr_val)
                        elif attr_val is None:
                            attr_val = "None"
                        dset.attrs[attr_key] = attr_val
            else:
                dset = file[key]
                dset.resize(len(dset) + data_shape[0], axis=0)
                dset[-data_shape[0]:] = val


def clam_save_hdf5(output_path, asset_dict, attr_dict=None, mode="a", chunk_size=32):
    import h5py

    with h5py.File(output_path, mode) as file:
        for key, val in asset_dict.items():
            data_shape = val.shape
            if key not in file:
                dset = file.create_dataset(key, shape=data_shape, maxshape=(None,) + data_shape[1:],
                                           chunks=(chunk_size,) + data_shape[1:], dtype=val.dtype)
                dset[:] = val
                if attr_dict is not None and key in attr_dict:
                    for attr_key, attr_val in attr_dict[key].items():
                        dset.attrs[attr_key] = attr_val
            else:
                dset = file[key]
                dset.resize(len(dset) + data_shape[0], axis=0)
                dset[-data_shape[0]:] = val
    return output_path


def trident_file(path: Path, features: np.ndarray, coords: np.ndarray, encoder: str = "uni_v2", patch_size: int = 256,
                 src_mag: int = 40, target_mag: int = 20) -> Path:
    """One slide's TRIDENT features file (what ``extract_features(saveas='h5')`` writes)."""
    coords_attrs = {"patch_size": patch_size, "patch_size_level0": patch_size * src_mag // target_mag,
                    "level0_magnification": src_mag, "target_magnification": target_mag, "overlap": 0,
                    "name": path.stem, "savetodir": "/home/someone/trident_processed/20x_256px_0px_overlap/patches",
                    "level0_width": 100_000, "level0_height": 80_000}
    features_attrs = {"name": path.stem, "savetodir": "/home/someone/trident_processed/features_" + encoder,
                      "encoder": encoder}
    trident_save_h5(path, {"features": features, "coords": coords.astype(np.int64)},
                    attributes={"features": features_attrs, "coords": coords_attrs}, mode="w")
    return path


def clam_file(path: Path, features: np.ndarray, coords: np.ndarray, batch: int = 4) -> Path:
    """One slide's CLAM features file (``compute_w_loader``: batches appended, no attributes)."""
    for start in range(0, max(len(features), 1), batch):
        clam_save_hdf5(path, {"features": features[start:start + batch].astype(np.float32),
                              "coords": coords[start:start + batch].astype(np.int32)},
                       mode="w" if start == 0 else "a")
    return path

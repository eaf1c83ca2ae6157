"""``clotclf import-features``: patch features made elsewhere (TRIDENT / CLAM ``.h5`` files, one per
slide) turned into a clotclf feature store (:mod:`clotclf_core.features.store`), so ``train
--features``, ``evaluate --features`` and ``predict --features`` work on them.

The two layouts read (checked against their writers, see docs/data-formats.md, "Features from
elsewhere"):

- **TRIDENT** (``trident/IO.py``, ``WSI.extract_features``): datasets ``features`` (N, D) and
  ``coords`` (N, 2) int64 = level-0 (x, y) top-left corners; ``coords``' attributes say the patch
  geometry: ``patch_size`` (pixels at the target magnification), ``patch_size_level0``,
  ``target_magnification``, ``level0_magnification``; ``features``' attributes may name the
  ``encoder``. Attribute values that were dicts or None are JSON strings / ``"None"``.
- **CLAM** (``extract_features_fp.py``): datasets ``features`` float32 (N, D) and ``coords`` int32
  (N, 2), level-0 (x, y), **no attributes**: the patch size must be given
  (``--patch-size-level0``, and ``--patch-size`` when the patches were resized). CLAM's
  ``pt_files/*.pt`` are pickles and are never read.

Each slide's rows become tile rows (``x, y`` from ``coords``, ``size`` = the patch's side in
level-0 pixels, ``downsample`` = ``size / patch_size``, ``row`` = the patch's position in the
file) with the manifest's patient, centre and label; its features become the float16 matrix
(values outside float16's range are refused, never clipped). The encoder is recorded by the name
given (``--encoder-name``), with ``imported`` (format, patch size, magnification, how many files)
and its weights' sha256 when known (``--weights-sha256``); otherwise ``weights_sha256`` is null
and the summary says that features are then matched by encoder name and patch size only.

Manifest rows without a file are listed as ``no_tiles`` (reason: no file), files without a row
are left out and said. Resumable: a slide already imported from a file of the same size is kept.
No torch; numpy, pandas and h5py (imported here only).

A slide's matrix is written as every writer of a store writes it (:func:`~clotclf_core.features.store.matrix_file`),
but the store is opened and its slides recorded here rather than by
:class:`~clotclf_core.features.writer.FeatureStoreWriter`, because the rules differ: ``import-features
--overwrite`` keeps the slides of a store of the same encoder and patching (resumed by their source file's
size, ``source_bytes``) where ``embed --overwrite`` replaces every slide, and there is no TileSet to sync with.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from clotclf_core.features.store import (
    DTYPE,
    FORMAT,
    FORMAT_VERSION,
    JOURNAL_NAME,
    META_NAME,
    SLIDES_DIR,
    FeatureStoreError,
    encoder_identity,
    matrix_file,
    read_store_meta,
    rows_fingerprint,
    tileset_fingerprint,
)
from clotclf_core.inputs import check_folder
from clotclf_core.journal import Journal
from clotclf_core.models.config import describe_encoder
from clotclf_core.plugin.io import write_csv, write_json
from clotclf_core.progress import bar
from clotclf_core.tiling.tileset import MANIFEST_COLUMNS, npy_problem

#: an encoder name as recorded (the component-name rule, so a MIL run's config accepts it)
ENCODER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ImportFeaturesError(FeatureStoreError):
    """A file or an option that cannot make a feature store (one line naming the file and the fix)."""


def _attr(value: Any) -> Any:
    """An HDF5 attribute as a plain value: bytes decoded, numpy scalars unboxed, TRIDENT's JSON strings
    and ``"None"`` read back."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, str):
        if value == "None":
            return None
        if value[:1] in "{[":
            try:
                return json.loads(value)
            except ValueError:
                return value
    return value


def read_h5(path: Path, header_only: bool = False) -> dict[str, Any]:
    """``{"features" (N, D) float array, "coords" (N, 2) int64, "attrs": coords' and features' attributes}``
    of one slide's file (``header_only``: ``{"dim": D, "attrs"}`` without reading the data); anything
    else is refused naming the file."""
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise ImportFeaturesError(f"'{path}' is not a readable HDF5 file ({exc}); re-export it, or move it out of the folder") from None
    with fh:
        missing = [k for k in ("features", "coords") if not isinstance(fh.get(k), h5py.Dataset)]
        if missing:
            raise ImportFeaturesError(f"'{path}' has no {' and no '.join(missing)} dataset (it has: {', '.join(sorted(fh.keys())) or 'nothing'}): "
                               "import-features reads TRIDENT / CLAM patch-feature files (datasets features (N, D) and coords (N, 2))")
        feats, coords = fh["features"], fh["coords"]
        attrs = {k: _attr(v) for k, v in coords.attrs.items()} | {f"features.{k}": _attr(v) for k, v in feats.attrs.items()}
        if header_only:
            if feats.ndim not in (2, 3) or feats.dtype.kind not in "fiu":
                raise ImportFeaturesError(f"'{path}': features is {feats.dtype} {feats.shape}, not a (patches, features) matrix "
                                          "of numbers (a slide-level embedding is not patch features)")
            return {"dim": int(feats.shape[-1]), "attrs": attrs}
        if feats.ndim == 3 and feats.shape[0] == 1:  # some writers keep a batch axis of one
            features = np.asarray(feats[0])
        else:
            features = np.asarray(feats[()])
        coords_arr = np.asarray(coords[()])
    if features.ndim != 2 or features.dtype.kind not in "fiu":
        raise ImportFeaturesError(f"'{path}': features is {features.dtype} {features.shape}, not a (patches, features) matrix of "
                           "numbers (a slide-level embedding is not patch features)")
    if coords_arr.ndim != 2 or coords_arr.shape[1] != 2 or coords_arr.dtype.kind not in "iu":
        raise ImportFeaturesError(f"'{path}': coords is {coords_arr.dtype} {coords_arr.shape}, not integer (patches, 2) level-0 (x, y)")
    if len(coords_arr) != len(features):
        raise ImportFeaturesError(f"'{path}' has {len(features)} feature rows but {len(coords_arr)} coords: the file is truncated or "
                           "was written by two runs; export it again")
    return {"features": features, "coords": coords_arr.astype(np.int64), "attrs": attrs}


def geometry(path: Path, attrs: dict[str, Any], patch_size_level0: int | None, patch_size: int | None) -> dict[str, Any]:
    """A file's patch geometry: ``size`` (level-0 px), ``patch_size`` (px the encoder saw),
    ``target_magnification``, ``format`` (``trident`` when its attributes say so, else ``clam``)."""
    def number(key: str) -> float | None:
        value = attrs.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None

    ps, ps0, target, level0 = number("patch_size"), number("patch_size_level0"), number("target_magnification"), number("level0_magnification")
    if ps0 is None and ps is not None and target and level0:
        ps0 = ps * level0 / target  # TRIDENT's own rule (patch_size * src_mag // target_mag)
    if ps0 is None and ps is not None and isinstance(attrs.get("downsample"), (list, int, float)):  # CLAM's patch files
        ds = attrs["downsample"]
        ps0 = ps * float(ds[0] if isinstance(ds, list) else ds)
    fmt = "trident" if (ps0 is not None or target is not None) else "clam"
    if patch_size_level0 is not None:
        if ps0 is not None and round(ps0) != int(patch_size_level0):
            raise ImportFeaturesError(f"--patch-size-level0 {patch_size_level0} disagrees with '{path}', whose attributes say "
                               f"{round(ps0)} level-0 px per patch: leave the option out, or check the files")
        ps0 = float(patch_size_level0)
    if ps0 is None:
        raise ImportFeaturesError(f"'{path}' does not say its patch size (CLAM feature files carry no attributes): give "
                           "--patch-size-level0 N, the side of a patch in level-0 pixels (CLAM: patch_size x the "
                           "downsample of patch_level; 256 at level 0 is 256)")
    if patch_size is not None:
        if ps is not None and int(ps) != int(patch_size):
            raise ImportFeaturesError(f"--patch-size {patch_size} disagrees with '{path}', whose attributes say {int(ps)} px")
        ps = float(patch_size)
    ps = ps if ps is not None else ps0
    return {"format": fmt, "size": round(ps0), "patch_size": int(ps), "target_magnification": target}


def _manifest(manifest: str | Path | None, stems: list[str], labels: tuple[str, ...]) -> Any:
    import pandas as pd

    from clotclf_core.slides.manifest import read_manifest

    if manifest is not None:
        return read_manifest(manifest, labels=labels, require_labels=False)
    return pd.DataFrame({"image_id": stems, "patient_id": stems, "center_id": "", "label": ""})


def _rows(image_id: str, entry: Any, coords: np.ndarray, geo: dict[str, Any]) -> Any:
    import pandas as pd

    n = len(coords)
    frame = pd.DataFrame({"image_id": image_id, **{c: str(entry[c]) for c in MANIFEST_COLUMNS},
                          "row": np.arange(n, dtype=np.int64), "x": coords[:, 0], "y": coords[:, 1],
                          "size": geo["size"], "downsample": geo["size"] / geo["patch_size"]})
    return frame


def import_features(h5_dir: str | Path, out: str | Path, encoder_name: str, *, manifest: str | Path | None = None,
                    labels: tuple[str, ...] = ("CE", "LAA"), weights_sha256: str | None = None,
                    patch_size_level0: int | None = None, patch_size: int | None = None, overwrite: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Turn the ``<image_id>.h5`` files of ``h5_dir`` into the feature store ``out``; return a summary."""
    t0 = time.perf_counter()
    folder = check_folder(h5_dir, "feature folder (H5_DIR)", "give the folder of TRIDENT / CLAM .h5 files (one per slide)")
    if not ENCODER_NAME.match(encoder_name or ""):
        raise ImportFeaturesError(f"--encoder-name {encoder_name!r} is not an encoder name: lower-case letters, digits, '.', '_', '-' "
                           "(e.g. uni2-h, conch_v15, gigapath)")
    if weights_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", weights_sha256):
        raise ImportFeaturesError(f"--weights-sha256 {weights_sha256!r} is not a sha256 (64 lower-case hex digits); leave it out "
                           "when the encoder's weights are not known")
    files = {p.stem: p for p in sorted(folder.glob("*.h5")) if p.is_file()}
    if not files:
        raise ImportFeaturesError(f"'{folder}' holds no .h5 files: give the folder TRIDENT (features_<encoder>/) or CLAM "
                           "(h5_files/) wrote")
    table = _manifest(manifest, list(files), labels)
    wanted = list(table["image_id"])
    present = [i for i in wanted if i in files]
    if not present:
        raise ImportFeaturesError(f"none of the {len(wanted)} slide(s) of the manifest has a file in '{folder}' (looked for "
                           f"<image_id>.h5, e.g. {wanted[0]}.h5; the folder has e.g. {next(iter(files))}.h5)")
    entries = table.set_index("image_id")

    # first pass: every file's header (shapes, attributes), so a mismatch is refused before anything is written
    heads: dict[str, dict[str, Any]] = {}
    for image_id in present:
        head = read_h5(files[image_id], header_only=True)
        named = head["attrs"].get("features.encoder")
        heads[image_id] = {"geometry": geometry(files[image_id], head["attrs"], patch_size_level0, patch_size),
                           "dim": head["dim"], "encoder": named if isinstance(named, str) else None}
    dims = {h["dim"] for h in heads.values()}
    if len(dims) != 1 or None in dims:
        shown = ", ".join(f"{i}: {h['dim']}" for i, h in list(heads.items())[:4])
        raise ImportFeaturesError(f"the files do not all hold features of one size ({shown}): one feature store is one encoder; "
                           "import each encoder's folder into its own --out")
    named = {h["encoder"] for h in heads.values() if h["encoder"]}
    if len(named) > 1 or (named and _norm(next(iter(named))) != _norm(encoder_name)):
        raise ImportFeaturesError(f"--encoder-name {encoder_name} disagrees with the files, which say they were made with "
                           f"{', '.join(sorted(named))}: give that name (one feature store is one encoder)")
    sizes = {h["geometry"]["patch_size"] for h in heads.values()}
    mags = {h["geometry"]["target_magnification"] for h in heads.values()}
    if len(sizes) > 1 or len(mags) > 1:
        raise ImportFeaturesError(f"the files were patched differently (patch sizes {sorted(sizes)}, magnifications "
                           f"{sorted(m for m in mags if m) or '?'}): one feature store is one patching recipe; import "
                           "each recipe into its own --out")
    fmt = sorted({h["geometry"]["format"] for h in heads.values()})
    num_features, tile_px = dims.pop(), sizes.pop()
    settings = {"imported": True, "format": "/".join(fmt), "patch_size": tile_px, "target_magnification": mags.pop()}
    encoder = {"backbone": encoder_name, "options": {}, "imported": {"format": "/".join(fmt), "files": len(present),
               "patch_size": tile_px, "target_magnification": settings["target_magnification"],
               "source": folder.resolve().name},
               "num_features": num_features, "weights_sha256": weights_sha256, "mean": None, "std": None,
               "input_size": tile_px, "normalisation_from": "unknown (imported)"}
    tileset = {"fingerprint": tileset_fingerprint(settings, tile_px), "tile_pixels": tile_px, "settings": settings,
               "path": str(folder.resolve()), "synthetic": False, "format_version": None}
    writer = _open_store(Path(out), encoder, tileset, num_features, overwrite)

    imported, kept, empty = [], [], {}
    slides = writer["meta"]["slides"]
    for image_id in wanted:
        if image_id not in files:
            slides[image_id] = {"status": "no_tiles", "n_tiles": 0, "tileset_status": "failed",
                                "reason": f"no {image_id}.h5 in the feature folder",
                                **{c: str(entries.loc[image_id, c]) for c in MANIFEST_COLUMNS if entries.loc[image_id, c]}}
            empty[image_id] = slides[image_id]["reason"]
    todo = [i for i in present if not _intact(writer, i, files[i])]
    kept = [i for i in present if i not in todo]
    for image_id in bar(todo, desc="import", unit="slide", disable=not progress):
        data = read_h5(files[image_id])
        entry = entries.loc[image_id]
        if len(data["features"]) == 0:
            slides[image_id] = {"status": "no_tiles", "n_tiles": 0, "tileset_status": "no_tissue",
                                "reason": "the .h5 file holds no patches",
                                **{c: str(entry[c]) for c in MANIFEST_COLUMNS if entry[c]}}
            empty[image_id] = slides[image_id]["reason"]
            writer["journal"].record(image_id, slides[image_id])  # (features.json: at the end, see _write_meta)
            continue
        values = data["features"]
        if not np.isfinite(values).all() or (np.abs(values) > np.finfo(DTYPE).max).any():
            raise ImportFeaturesError(f"'{files[image_id]}' holds features that are not finite or exceed float16's range (±65504): "
                               "the feature store keeps float16; nothing of this slide was written")
        rows = _rows(image_id, entry, data["coords"], heads[image_id]["geometry"])
        root = writer["root"]
        with matrix_file(root / SLIDES_DIR / f"{image_id}.npy", len(values), num_features) as matrix:
            matrix[:] = values.astype(DTYPE)
        write_csv(root / SLIDES_DIR / f"{image_id}.csv", rows)
        slides[image_id] = {"status": "done", "n_tiles": len(rows), "tiles_sha256": rows_fingerprint(rows),
                            **{c: str(entry[c]) for c in MANIFEST_COLUMNS}, "source_bytes": files[image_id].stat().st_size}
        writer["journal"].record(image_id, slides[image_id])
        imported.append(image_id)
    _write_meta(writer)
    left_out = sorted(set(files) - set(wanted))
    return {
        "out": str(out), "encoder": describe_encoder(encoder), "format": "/".join(fmt), "num_features": num_features,
        "patch_size": tile_px, "weights_known": weights_sha256 is not None, "slides": len(slides), "imported": len(imported),
        "kept": len(kept), "no_tiles": empty, "files_not_in_manifest": left_out,
        "tiles": int(sum(int(slides[i].get("n_tiles", 0)) for i in imported)), "seconds": round(time.perf_counter() - t0, 2),
    }


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _open_store(root: Path, encoder: dict[str, Any], tileset: dict[str, Any], num_features: int, overwrite: bool) -> dict[str, Any]:
    """The store to write: new, or resumed when it holds features of the same encoder and recipe."""
    if root.exists() and not root.is_dir():
        raise ImportFeaturesError(f"--out '{root}' is a file, not a folder: choose a folder for the feature store")
    if (root / META_NAME).is_file():
        try:
            meta = read_store_meta(root)
        except FeatureStoreError:
            if not overwrite:
                raise
            meta = None
        same = meta is not None and encoder_identity(meta.get("encoder", {})) == encoder_identity(encoder) \
            and meta.get("tileset", {}).get("fingerprint") == tileset["fingerprint"]
        if meta is not None and not same and not overwrite:
            raise ImportFeaturesError(f"'{root}' holds features of {describe_encoder(meta.get('encoder', {}))} (or another patching): "
                               "choose another --out, or pass --overwrite to replace them")
        if not same:
            import shutil

            shutil.rmtree(root / SLIDES_DIR, ignore_errors=True)
            meta = None
    elif root.is_dir() and any(root.iterdir()):
        raise ImportFeaturesError(f"--out '{root}' is not empty and is not a feature store (no {META_NAME}): choose a new or empty folder")
    else:
        meta = None
    from clotclf_core import __version__

    if meta is None:
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "clotclf_version": __version__, "encoder": encoder,
                "num_features": int(num_features), "dtype": "float16", "tileset": tileset, "slides": {}}
    meta["encoder"], meta["tileset"] = encoder, tileset
    writer = {"root": root, "meta": meta, "journal": Journal(root / JOURNAL_NAME)}
    _write_meta(writer)  # first: it marks the folder as a feature store
    (root / SLIDES_DIR).mkdir(parents=True, exist_ok=True)
    return writer


def _intact(writer: dict[str, Any], image_id: str, source: Path) -> bool:
    entry = writer["meta"]["slides"].get(image_id)
    if not entry or entry.get("status") != "done" or entry.get("source_bytes") != source.stat().st_size:
        return False
    root = writer["root"]
    return npy_problem(root / SLIDES_DIR / f"{image_id}.npy", DTYPE, (int(entry["n_tiles"]), int(writer["meta"]["num_features"]))) is None \
        and (root / SLIDES_DIR / f"{image_id}.csv").is_file()


def _write_meta(writer: dict[str, Any]) -> None:
    slides = writer["meta"]["slides"]
    ordered = sorted(slides.items())
    slides.clear()
    slides.update(ordered)  # in place: callers hold this dict
    write_json(writer["root"] / META_NAME, writer["meta"])
    writer["journal"].remove()  # folded: one line per slide meanwhile, not a rewrite of features.json (quadratic)


def format_summary(s: dict[str, Any]) -> str:
    lines = [(f"{s['imported']} slide(s) imported ({s['tiles']} patches in {s['seconds']} s), {s['kept']} already there; "
             f"{s['slides']} slide(s) in {s['out']}"),
             f"encoder: {s['encoder']}, {s['num_features']} features, {s['format']} files"]
    if not s["weights_known"]:
        lines.append("note: the encoder's weights are not known (no --weights-sha256): runs on these features match other "
                     "feature stores by encoder name and patch size only")
    for image_id, reason in s["no_tiles"].items():
        lines.append(f"{image_id}: no features ({reason})")
    if s["files_not_in_manifest"]:
        shown = ", ".join(s["files_not_in_manifest"][:5])
        more = f" and {len(s['files_not_in_manifest']) - 5} more" if len(s["files_not_in_manifest"]) > 5 else ""
        lines.append(f"left out, not in the manifest: {shown}{more}")
    return "\n".join(lines)

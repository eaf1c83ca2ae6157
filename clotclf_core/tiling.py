"""Slides -> TileSet: tissue mask, candidate grid, batched filters, pixel cache, QC pictures.

For each slide (see docs/data-formats.md for what is written):

1. a tissue mask on a low-resolution view (:func:`overview`): the slide's thumbnail through
   :func:`clotclf_core.tissue.tissue_mask`; or, for large single-level tiled TIFFs (which have
   no small level, so a thumbnail decodes every pixel), the compressed size of each TIFF tile,
   checked by decoding a sample (the byte-count *prescreen*);
2. the tile grid (tiles of ``tile_size`` pixels at 1/``downsample``, edge remainders dropped) is
   cut down to *candidates*: tiles with at least ``min_tissue`` of their area in the mask. Tiles
   on background are never read at full resolution — on a STRIP AI slide most of the area is glass;
3. candidates are read in batches (``threads`` in parallel), straight at the cache resolution
   (``train_size``), through the Slide's ``read_region``: one resampling from level 0;
4. the filters (plugins, e.g. ``otsu`` then ``mobilenetv3``) score each batch in order; a tile
   survives a filter when its score >= that filter's threshold. Each score is kept in the index;
5. kept tiles are committed with the slide's status by :class:`clotclf_core.tileset.TileSetWriter`.

A slide that cannot be read, has no tissue, or is smaller than one tile is recorded with its
status and reason and the run goes on; re-running skips finished slides (``failed`` ones are
retried, and so are slides whose pixel file is missing or broken) after bringing them up to date
with the current manifest: new patient / centre / label values are written into the index without
pixel work, and slides it no longer lists leave the TileSet. ``workers`` > 1 tiles slides in
parallel processes (one slide per process at a time, its handle closed after); the parent alone
writes, in manifest order, so the result does not depend on the number of workers.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
from pydantic import Field, model_validator

from .config import StrictModel
from .errors import ClotclfError, PluginError

#: file suffixes picked up when a folder is tiled without a manifest, if no source declares any
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
#: longer side of the QC pictures, in pixels (kept small: one per slide)
QC_MAX_SIDE = 1024

FilterRef = tuple[str, dict[str, Any]]


class TilingError(ClotclfError):
    """Tiling cannot start (bad folder, no slides, nothing could be tiled)."""


class SlideSkip(ClotclfError):
    """A slide that yields no tiles for a reason that is not a bug: recorded by ``tile_slides``,
    raised by ``tile_slide`` (except ``no_tissue``, which there is an empty result)."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class TileSettings(StrictModel):
    """How slides are cut into tiles. Every field is recorded in ``tileset.json``."""

    downsample: float = Field(10.0, ge=1.0, description="view the slide at 1/downsample (the published recipe: 10)")
    tile_size: int = Field(600, ge=8, description="tile side in pixels of that view (600 at 1/10 = 6000 level-0 pixels)")
    stride: int | None = Field(None, ge=1, description="step between tiles in pixels of that view (default: tile_size, no overlap)")
    tile_um: float | None = Field(
        None, gt=0, description="tile side in microns instead of tile_size (needs the slide's mpp)"
    )
    train_size: int = Field(224, ge=8, description="side of the cached tiles (the training input size)")
    min_tissue: float = Field(0.1, ge=0.0, le=1.0, description="share of a tile that must lie in the tissue mask to be read")
    thumbnail_size: int = Field(1024, ge=64, description="longer side of the low-resolution view the tissue mask is computed on")
    tissue_method: Literal["saturation", "od", "either", "both"] = Field(
        "either", description="tissue mask: saturation, optical density, either or both (see clotclf_core.tissue)"
    )
    batch_size: int = Field(64, ge=1, description="tiles read and filtered together")
    prescreen: bool = Field(
        True,
        description="large single-level tiled TIFFs: take the tissue mask from the TIFF tiles' compressed sizes, "
        "checked on a 1-in-16 sample of the quiet tiles (if the sample finds tissue, the whole slide is decoded)",
    )

    @model_validator(mode="after")
    def _check(self) -> "TileSettings":
        if self.stride is not None and self.tile_um is None and self.stride > self.tile_size:
            raise ValueError(f"stride ({self.stride}) larger than tile_size ({self.tile_size}) would skip tissue between tiles")
        return self

    @classmethod
    def from_values(cls, **values: Any) -> "TileSettings":
        """Validate settings given by a user (CLI, YAML): a bad value is one ConfigError naming it."""
        from pydantic import ValidationError

        from .config import format_validation_error
        from .errors import ConfigError

        try:
            return cls(**values)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, "tiling settings")) from None

    def geometry(self, mpp: float | None) -> tuple[int, int]:
        """(tile side, stride) in level-0 pixels for a slide with ``mpp`` microns per pixel."""
        if self.tile_um is not None:
            if not mpp:
                raise SlideSkip(
                    "failed", "the slide does not record its microns per pixel, so tile_um cannot be used; use --tile-size instead"
                )
            size0 = int(round(self.tile_um / mpp))
        else:
            size0 = int(round(self.tile_size * self.downsample))
        stride0 = int(round(self.stride * self.downsample)) if self.stride else size0
        return max(size0, 1), max(stride0, 1)


# ----------------------------------------------------------------------------- filters


@dataclass
class BuiltFilter:
    """A filter plugin ready to score: its name (score column ``score_<name>``), object and options."""

    name: str
    obj: Any
    options: dict[str, Any]

    @property
    def threshold(self) -> float:
        return float(self.obj.threshold)

    def describe(self) -> dict[str, Any]:
        extra = self.obj.describe() if callable(getattr(self.obj, "describe", None)) else {}
        return {"name": self.name, "options": self.options, **({"describe": extra} if extra else {})}


def build_filters(refs: Sequence[FilterRef]) -> list[BuiltFilter]:
    """Validate options and build each filter plugin once (bad names / options raise here)."""
    from .plugins import get_manager

    mgr = get_manager()
    built: list[BuiltFilter] = []
    for name, options in refs:
        spec = mgr.get("filter", name)
        if any(b.name == spec.name for b in built):
            raise PluginError(f"filter '{spec.name}' is given twice; give each filter once (its score column is score_{spec.name})")
        opts = spec.validate_options(options)
        obj = spec.factory(opts)
        if not callable(getattr(obj, "score", None)) or not isinstance(getattr(obj, "threshold", None), (int, float)):
            raise PluginError(
                f"filter '{spec.name}' (plugin {spec.plugin}) built an object without score() and a numeric threshold; "
                "see PatchFilter in clotclf_core/interfaces.py"
            )
        built.append(BuiltFilter(spec.name, obj, opts.model_dump(mode="json")))
    return built


def _as_built(filters: Sequence[FilterRef | BuiltFilter]) -> list[BuiltFilter]:
    if all(isinstance(f, BuiltFilter) for f in filters):
        return list(filters)  # type: ignore[arg-type]
    return build_filters([(f[0], dict(f[1] or {})) for f in filters])  # type: ignore[index]


# ----------------------------------------------------------------------------- one slide


def candidate_grid(
    mask: np.ndarray, dimensions: tuple[int, int], size0: int, stride0: int, min_tissue: float
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (n, 2) of the grid tiles that overlap the mask enough, and their mask fraction.

    The grid starts at (0, 0) and steps by ``stride0`` while a whole tile fits (edge remainders
    dropped). A tile's fraction is the mean of the mask over the mask pixels it covers.
    """
    width, height = dimensions
    xs = np.arange(0, width - size0 + 1, stride0, dtype=np.int64)
    ys = np.arange(0, height - size0 + 1, stride0, dtype=np.int64)
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    mh, mw = mask.shape
    sx, sy = mw / width, mh / height
    c0 = np.clip(np.floor(xs * sx).astype(np.int64), 0, mw - 1)
    c1 = np.clip(np.ceil((xs + size0) * sx).astype(np.int64), c0 + 1, mw)
    r0 = np.clip(np.floor(ys * sy).astype(np.int64), 0, mh - 1)
    r1 = np.clip(np.ceil((ys + size0) * sy).astype(np.int64), r0 + 1, mh)
    sat = np.zeros((mh + 1, mw + 1), np.int64)  # summed-area table
    sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    R0, C0 = np.meshgrid(r0, c0, indexing="ij")
    R1, C1 = np.meshgrid(r1, c1, indexing="ij")
    inside = sat[R1, C1] - sat[R0, C1] - sat[R1, C0] + sat[R0, C0]
    frac = inside / ((R1 - R0) * (C1 - C0))
    keep = (frac > 0) & (frac >= min_tissue)
    Y, X = np.meshgrid(ys, xs, indexing="ij")
    xy = np.stack([X[keep], Y[keep]], axis=1)
    return xy, frac[keep].astype(np.float32)


def overview(slide: Any, settings: TileSettings) -> tuple[np.ndarray, np.ndarray, str]:
    """The slide's low-resolution view, its tissue mask, and how they were made
    (:func:`clotclf_core.tissue.slide_overview` with these settings)."""
    from .tissue import slide_overview

    return slide_overview(slide, settings.thumbnail_size, settings.tissue_method, settings.prescreen)


@dataclass
class SlideTiles:
    """Everything tiling one slide produced; ``pixels``/``rows``/``info`` are what gets written."""

    pixels: np.ndarray
    rows: list[dict[str, Any]]
    info: dict[str, Any]
    thumbnail: np.ndarray | None = None
    mask: np.ndarray | None = None
    candidates: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    #: per candidate: -1 kept, else the index of the filter that rejected it
    rejected_by: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    size0: int = 0


def _read_tile(slide: Any, x: int, y: int, size0: int, out: int) -> np.ndarray:
    """One candidate at the cache resolution, (out, out, 3) uint8."""
    tile = np.asarray(slide.read_region(int(x), int(y), size0, size0, size0 / out))
    if tile.ndim != 3 or tile.shape[2] < 3:
        raise ValueError(f"read_region returned an array of shape {tile.shape}, not (H, W, 3)")
    tile = tile[..., :3]
    if tile.shape[:2] != (out, out):  # a source rounding differently: resize the rest of the way
        from PIL import Image

        tile = np.asarray(Image.fromarray(np.ascontiguousarray(tile, dtype=np.uint8)).resize((out, out), Image.BILINEAR))
    return tile.astype(np.uint8, copy=False)


def _tile(slide: Any, settings: TileSettings, filters: list[BuiltFilter], bar: Any = None, threads: int = 1) -> SlideTiles:
    start = time.perf_counter()
    width, height = (int(v) for v in slide.dimensions)
    mpp = getattr(slide, "mpp", None)
    size0, stride0 = settings.geometry(mpp)
    S = settings.train_size
    info: dict[str, Any] = {
        "width": width,
        "height": height,
        "mpp": mpp,
        "tile_size_level0": size0,
        "stride_level0": stride0,
    }
    if width < size0 or height < size0:
        raise SlideSkip(
            "failed",
            f"the slide ({width} x {height} px) is smaller than one tile ({size0} px at level 0); "
            "lower --tile-size or --downsample",
        )
    thumb, mask, info["mask_from"] = overview(slide, settings)
    info["tissue_fraction"] = round(float(mask.mean()), 4)
    xy, frac = candidate_grid(mask, (width, height), size0, stride0, settings.min_tissue)
    info["n_candidates"] = int(len(xy))
    result = SlideTiles(np.zeros((0, S, S, 3), np.uint8), [], info, thumb, mask, xy, np.full(len(xy), -1, np.int64), size0)
    if not mask.any():
        raise _NoTissue(result, "the tissue mask is empty (blank or unreadable image?)")
    if len(xy) == 0:
        raise _NoTissue(result, f"no tile has at least {settings.min_tissue:.0%} of its area in the tissue mask")

    _read_and_filter(slide, settings, filters, result, frac, bar, threads)
    info["seconds"] = round(time.perf_counter() - start, 3)
    if not result.rows:
        raise _NoTissue(
            result,
            f"all {len(xy)} candidate tiles were rejected by the filters ("
            + ", ".join(f"{k}: {v}" for k, v in info["rejected"].items())
            + ")",
        )
    return result


def _read_and_filter(
    slide: Any, settings: TileSettings, filters: list[BuiltFilter], result: SlideTiles, frac: np.ndarray, bar: Any, threads: int
) -> None:
    """Read the candidates batch by batch, run the filters in order, keep the survivors (fills ``result``)."""
    from concurrent.futures import ThreadPoolExecutor

    info, xy, size0, S = result.info, result.candidates, result.size0, settings.train_size
    rejected = {f.name: 0 for f in filters}
    kept_pixels: list[np.ndarray] = []
    if bar is not None:
        bar.reset(total=len(xy))
    # decoders release the GIL, so threads read a batch's tiles in parallel (same pixels, same order)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for b0 in range(0, len(xy), settings.batch_size):
            coords = xy[b0 : b0 + settings.batch_size]
            batch = np.stack(list(pool.map(lambda c: _read_tile(slide, c[0], c[1], size0, S), coords)))
            alive = np.ones(len(batch), bool)
            scores = {f.name: np.full(len(batch), np.nan, np.float32) for f in filters}
            for fi, f in enumerate(filters):
                idx = np.flatnonzero(alive)
                if len(idx) == 0:
                    break
                s = np.asarray(f.obj.score(batch[idx]), dtype=np.float32).reshape(-1)
                if s.shape != (len(idx),) or not np.isfinite(s).all():
                    raise PluginError(f"filter '{f.name}' returned {s.shape} scores (all finite: {np.isfinite(s).all()}) for {len(idx)} tiles")
                scores[f.name][idx] = s
                drop = s < f.threshold
                rejected[f.name] += int(drop.sum())
                alive[idx[drop]] = False
                result.rejected_by[b0 + idx[drop]] = fi
            for j in np.flatnonzero(alive):
                x, y = (int(v) for v in coords[j])
                row = {"x": x, "y": y, "size": size0, "downsample": settings.downsample, "tissue": round(float(frac[b0 + j]), 4)}
                row.update({f"score_{name}": round(float(v[j]), 4) for name, v in scores.items()})
                result.rows.append(row)
            kept_pixels.append(batch[alive])
            if info["mask_from"] == "byte_counts":  # the overview lacks these pixels: paste them in for the QC picture
                _paste(result.thumbnail, batch, coords, size0, (info["width"], info["height"]))
            if bar is not None:
                bar.update(len(coords))
    if kept_pixels:
        result.pixels = np.concatenate(kept_pixels)
    info.update(n_kept=len(result.rows), rejected=rejected)


def _paste(view: np.ndarray, tiles: np.ndarray, coords: np.ndarray, size0: int, dimensions: tuple[int, int]) -> None:
    """Draw tiles (level-0 corners ``coords``, side ``size0``) into the low-resolution ``view``, in place."""
    from PIL import Image

    vh, vw = view.shape[:2]
    fx, fy = vw / dimensions[0], vh / dimensions[1]
    for tile, (x, y) in zip(tiles, coords):
        x0, y0 = round(x * fx), round(y * fy)
        x1, y1 = min(round((x + size0) * fx), vw), min(round((y + size0) * fy), vh)
        if x1 > x0 and y1 > y0:
            small = Image.fromarray(tile).resize((round((x + size0) * fx) - x0, round((y + size0) * fy) - y0), Image.BOX)
            view[y0:y1, x0:x1] = np.asarray(small)[: y1 - y0, : x1 - x0]


class _NoTissue(SlideSkip):
    def __init__(self, result: SlideTiles, reason: str):
        super().__init__("no_tissue", reason)
        self.result = result


def tile_slide(
    slide: Any,
    settings: TileSettings | None = None,
    filters: Sequence[FilterRef | BuiltFilter] = (("otsu", {}),),
    threads: int = 1,
) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """Tile one open Slide without writing anything (prediction uses this).

    ``filters``: ``[(name, options), ...]`` (built here) or already built filters. Returns
    ``(pixels, rows, info)``: uint8 (n, S, S, 3) tiles at ``train_size``, one dict per tile
    (x, y, size, downsample, tissue, score_<filter>...) and facts about the slide. A slide
    without tissue gives zero tiles and ``info["status"] == "no_tissue"`` with the reason; a slide
    that cannot be tiled (smaller than one tile...) raises :class:`SlideSkip`. ``threads`` read
    tiles in parallel (the result does not depend on it).
    """
    settings = settings or TileSettings()
    built = _as_built(filters)
    try:
        res = _tile(slide, settings, built, threads=threads)
    except _NoTissue as skip:
        res = skip.result
        res.info.update(status=skip.status, reason=skip.reason)
        return res.pixels, [], res.info
    res.info["status"] = "done"
    return res.pixels, res.rows, res.info


# ----------------------------------------------------------------------------- QC picture


_PALETTE = [(230, 30, 30), (255, 150, 0), (200, 0, 200), (120, 60, 0)]
_COLOUR_NAMES = ["red", "orange", "magenta", "brown"]


def write_qc(path: Path, res: SlideTiles, filters: list[BuiltFilter], title: str) -> None:
    """Thumbnail + tissue-mask outline (blue) + kept tiles (green) + rejected tiles (red, orange...)."""
    from PIL import Image, ImageDraw

    from .io import atomic_path

    if res.thumbnail is None:
        return
    img = Image.fromarray(np.ascontiguousarray(res.thumbnail))
    scale = min(1.0, QC_MAX_SIDE / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    if res.mask is not None and res.mask.any():
        from skimage.segmentation import find_boundaries

        m = np.asarray(Image.fromarray(res.mask.astype(np.uint8) * 255).resize(img.size, Image.NEAREST)) > 0
        arr = np.array(img)
        arr[find_boundaries(m, mode="inner")] = (40, 90, 255)
        img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    f = img.width / (res.info.get("width") or 1)
    for (x, y), by in zip(res.candidates, res.rejected_by):
        colour = (0, 190, 0) if by < 0 else _PALETTE[int(by) % len(_PALETTE)]
        box = [x * f, y * f, (x + res.size0) * f - 1, (y + res.size0) * f - 1]
        draw.rectangle(box, outline=colour, width=2 if by < 0 else 1)
    legend = f"{title}: kept {int((res.rejected_by < 0).sum())} (green)"
    for fi, flt in enumerate(filters):
        legend += f", {flt.name} rejected {int((res.rejected_by == fi).sum())} ({_COLOUR_NAMES[fi % len(_PALETTE)]})"
    framed = Image.new("RGB", (img.width, img.height + 16), (255, 255, 255))
    framed.paste(img, (0, 16))
    ImageDraw.Draw(framed).text((2, 2), legend, fill=(0, 0, 0))
    img = framed
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


# ----------------------------------------------------------------------------- many slides

_FILTER_CACHE: dict[str, list[BuiltFilter]] = {}


def _filters_for(refs: list[FilterRef]) -> list[BuiltFilter]:
    """Filters built once per process (worker processes build their own)."""
    key = json.dumps(refs, sort_keys=True, default=str)
    if key not in _FILTER_CACHE:
        _FILTER_CACHE[key] = build_filters(refs)
    return _FILTER_CACHE[key]


def _open(path: str, source: str | None) -> Any:
    from .config import parse_component_ref
    from .sources import open_slide

    if source:
        name, options = parse_component_ref(source, "--source")
        return open_slide(path, source=name, options=options)
    return open_slide(path)


def _locate(job: dict[str, Any]) -> str:
    if job.get("path"):
        return job["path"]
    from .sources import find_slide

    return str(find_slide(job["folder"], job["image_id"]))


def process_slide(job: dict[str, Any], bar: Any = None) -> dict[str, Any]:
    """Open, tile, write the QC picture and close one slide. Never raises for a bad slide:
    returns ``{"image_id", "status", "reason", "info", "pixels", "rows"}``."""
    settings = TileSettings(**job["settings"])
    filters = _filters_for(job["filters"])
    out: dict[str, Any] = {"image_id": job["image_id"], "status": "failed", "reason": "", "info": {}, "pixels": None, "rows": []}
    slide = None
    res: SlideTiles | None = None
    try:
        path = _locate(job)
        out["info"]["file"] = Path(path).name
        slide = _open(path, job.get("source"))
        used = getattr(slide, "source_name", None) or getattr(slide, "source", None)
        if isinstance(used, str):
            out["info"]["source"] = used
        res = _tile(slide, settings, filters, bar, threads=int(job.get("threads", 1)))
        out.update(status="done", pixels=res.pixels, rows=res.rows)
        out["info"].update(res.info)
    except _NoTissue as skip:
        res = skip.result
        out["info"].update(res.info)
        out.update(status=skip.status, reason=skip.reason)
    except SlideSkip as skip:
        out.update(status=skip.status, reason=skip.reason)
    except ClotclfError as exc:
        out["reason"] = str(exc)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:  # a corrupt file can fail anywhere inside a reader: record, go on
        out["reason"] = f"{type(exc).__name__}: {exc}".strip()[:500]
    finally:
        if slide is not None:
            try:
                slide.close()
            except Exception:
                pass
    if res is not None and job.get("qc_dir"):
        try:
            write_qc(Path(job["qc_dir"]) / f"{job['image_id']}.png", res, filters, job["image_id"])
        except Exception as exc:  # a QC picture is a by-product: never lose the tiles for it
            out["info"]["qc_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


def _worker_init() -> None:
    """Worker processes: one thread each (the pool is the parallelism)."""
    import os

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def _slide_facts(rec: dict[str, Any]) -> dict[str, Any]:
    """What tileset.json records per slide from its manifest row, whether or not it gave tiles: its
    patient (so training can name a patient lost to a failed slide) and the ``synthetic`` mark."""
    facts: dict[str, Any] = {"patient_id": str(rec.get("patient_id", ""))}
    if "synthetic" in rec:
        facts["synthetic"] = str(rec["synthetic"]).strip().lower() in ("true", "1", "yes")
    return facts


def find_slides(folder: Path) -> list[Path]:
    """Slide files directly in ``folder``: the extensions installed sources declare (else :data:`SLIDE_SUFFIXES`)."""
    from .sources import slide_extensions

    exts = set(slide_extensions()) or set(SLIDE_SUFFIXES)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def tile_slides(
    slides_dir: str | Path,
    out: str | Path,
    manifest: str | Path | None = None,
    settings: TileSettings | None = None,
    filters: Sequence[FilterRef] = (("otsu", {}),),
    source: str | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    labels: Iterable[str] = ("CE", "LAA"),
    require_labels: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Tile every slide of ``slides_dir`` (those of ``manifest``, or every slide file) into a TileSet.

    Returns the summary (also what ``clotclf tile --json`` prints). Raises :class:`TilingError`
    when it cannot start (no folder, no slide files) or when no slide at all could be tiled.
    ``threads``: reading threads per worker (default: the CPU cores shared among the workers, at most 8).
    """
    from tqdm.auto import tqdm

    from .manifest import manifest_from_files, read_manifest
    from .tileset import MANIFEST_COLUMNS, TileSetWriter

    t_start = time.perf_counter()
    settings = settings or TileSettings()
    slides_dir = Path(slides_dir)
    if not slides_dir.is_dir():
        raise TilingError(f"slide folder '{slides_dir}' does not exist or is not a folder: check the SLIDES argument")
    if workers < 1:
        raise TilingError(f"--workers must be at least 1 (got {workers})")
    if threads is None:
        import os

        threads = min(8, max(1, (os.cpu_count() or 1) // workers))  # each thread may hold a region being decoded
    if threads < 1:
        raise TilingError(f"--threads must be at least 1 (got {threads})")
    if manifest is not None:
        df = read_manifest(manifest, labels=labels, require_labels=require_labels)
    else:
        files = find_slides(slides_dir)
        if not files:
            raise TilingError(
                f"no slide files ({', '.join(SLIDE_SUFFIXES)}) in '{slides_dir}'; pass the folder holding the slides, "
                "or a --manifest"
            )
        df = manifest_from_files(files)
    if source:  # fail now on an unknown source, not once per slide
        from .config import parse_component_ref
        from .plugins import get_manager

        name, options = parse_component_ref(source, "--source")
        get_manager().get("source", name).validate_options(options)

    refs = [(str(n), dict(o or {})) for n, o in filters]
    built = _filters_for(refs)
    recorded = {
        **settings.model_dump(mode="json"),
        "filters": [b.describe() for b in built],
        "source": source or "auto",
    }
    writer = TileSetWriter(out, recorded, tile_pixels=settings.train_size, overwrite=overwrite)
    qc_dir = str(Path(out) / "qc")

    records = df.to_dict("records")
    # a resumed TileSet must say what a fresh one would: labels and slides from the current manifest
    changes = writer.sync({rec["image_id"]: {c: rec.get(c, "") for c in MANIFEST_COLUMNS} for rec in records})
    listing = "manifest" if manifest is not None else "slide folder"
    per_slide: list[dict[str, Any]] = [
        {"image_id": k, "status": "removed", "candidates": 0, "kept": 0, "seconds": 0.0, "reason": f"no longer in the {listing} ({why})"}
        for k, why in changes["removed"].items()
    ] + [
        {"image_id": k, "status": "relabelled", "candidates": 0, "kept": 0, "seconds": 0.0, "reason": what}
        for k, what in changes["relabelled"].items()
    ]
    notes = [f"{k}: pixels/{k}.npy was broken ({why}); tiling it again" for k, why in writer.broken.items() if k not in changes["removed"]]
    todo, skipped = [], []
    for rec in records:
        status = writer.meta["slides"].get(rec["image_id"], {}).get("status")
        (skipped if status in ("done", "no_tissue") else todo).append(rec)

    jobs = [
        {
            "image_id": rec["image_id"],
            "path": rec.get("path") or None,
            "folder": str(slides_dir),
            "source": source,
            "settings": settings.model_dump(),
            "filters": refs,
            "qc_dir": qc_dir,
            "threads": threads,
        }
        for rec in todo
    ]
    by_id = {rec["image_id"]: rec for rec in todo}
    # tileset.json's top-level mark: true as soon as one slide of the manifest is synthetic (demo-data marks them)
    synthetic = any(_slide_facts(rec).get("synthetic") for rec in records)
    rejected = {b.name: 0 for b in built}

    def commit(res: dict[str, Any]) -> None:
        rec = by_id[res["image_id"]]
        info = {**res["info"], **_slide_facts(rec)}
        writer.meta["synthetic"] = synthetic
        if res["status"] == "done":
            base = {k: rec[k] for k in ("patient_id", "center_id", "label")}
            rows = [{"image_id": rec["image_id"], **base, **r} for r in res["rows"]]
            writer.add_slide(rec["image_id"], res["pixels"], rows, info)
        else:
            writer.record_failure(rec["image_id"], res["status"], res["reason"], info)
        for k, v in (info.get("rejected") or {}).items():
            rejected[k] = rejected.get(k, 0) + v
        per_slide.append(
            {
                "image_id": rec["image_id"],
                "status": res["status"],
                "candidates": info.get("n_candidates", 0),
                "kept": info.get("n_kept", 0) if res["status"] == "done" else 0,
                "seconds": info.get("seconds", 0.0),
                "reason": res["reason"],
            }
        )

    overall = tqdm(total=len(jobs), desc="slides", unit="slide", disable=not progress)
    try:
        if workers == 1 or len(jobs) <= 1:
            inner = tqdm(total=0, desc="tiles", unit="tile", leave=False, disable=not progress)
            try:
                for job in jobs:
                    inner.set_description(job["image_id"][:24])
                    commit(process_slide(job, inner if progress else None))
                    overall.update()
            finally:
                inner.close()
        else:
            _run_pool(jobs, workers, commit, overall)
    finally:
        overall.close()

    done_total = sum(1 for v in writer.meta["slides"].values() if v.get("status") == "done")
    summary = {
        "out": str(out),
        "slides": len(records),
        "skipped": len(skipped),
        "relabelled": len(changes["relabelled"]),
        "removed": len(changes["removed"]),
        "tiled": sum(1 for s in per_slide if s["status"] == "done"),
        "no_tissue": sum(1 for s in per_slide if s["status"] == "no_tissue"),
        "failed": sum(1 for s in per_slide if s["status"] == "failed"),
        "candidates": sum(s["candidates"] for s in per_slide),
        "tiles_kept": sum(s["kept"] for s in per_slide),
        "rejected": rejected,
        "tiles_in_tileset": sum(int(v.get("n_tiles", 0)) for v in writer.meta["slides"].values()),
        "workers": workers,
        "threads": threads,
        "seconds": round(time.perf_counter() - t_start, 2),
        "per_slide": per_slide,
        "notes": list(df.attrs.get("notes", [])) + notes,
    }
    if done_total == 0:
        tried = [s for s in per_slide if s["status"] in ("failed", "no_tissue")]
        reasons = "; ".join(f"{s['image_id']}: {s['reason']}" for s in tried[:3])
        raise TilingError(
            f"no slide could be tiled ({summary['failed']} failed, {summary['no_tissue']} without tissue): {reasons}"
            + (" ..." if len(tried) > 3 else "")
            + f". Statuses are in {Path(out) / 'tileset.json'}"
        )
    return summary


def _run_pool(jobs: list[dict[str, Any]], workers: int, commit: Any, overall: Any) -> None:
    """Tile in ``workers`` spawned processes; commit results in job order, few in flight."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # fork after torch/openslide threads start can deadlock
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    pending: deque = deque()
    it = iter(jobs)
    try:
        for job in it:
            pending.append(pool.submit(process_slide, job))
            if len(pending) >= 2 * workers:
                break
        while pending:
            res = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(process_slide, nxt))
            commit(res)
            overall.update()
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table printed by ``clotclf tile``."""
    lines = [
        f"TileSet {summary['out']}: {summary['slides']} slides: {summary['tiled']} tiled, {summary['skipped']} already done"
        + "".join(f", {summary[k]} {k}" for k in ("relabelled", "removed") if summary.get(k))
        + f", {summary['no_tissue']} without tissue, {summary['failed']} failed; {summary['seconds']} s with {summary['workers']} worker(s)",
        f"tiles: {summary['candidates']} candidates read, {summary['tiles_kept']} kept"
        + "".join(f", {k} rejected {v}" for k, v in summary["rejected"].items())
        + f"; {summary['tiles_in_tileset']} tiles in the TileSet",
    ]
    rows = summary["per_slide"]
    if rows:
        cols = ["image_id", "status", "candidates", "kept", "seconds", "reason"]
        width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
        lines.append("  ".join(c.upper().ljust(width.get(c, 0)) for c in cols).rstrip())
        for r in rows:
            reason = r["reason"] if len(r["reason"]) <= 100 else r["reason"][:99] + "…"
            lines.append("  ".join(str(reason if c == "reason" else r[c]).ljust(width.get(c, 0)) for c in cols).rstrip())
    lines.extend(f"note: {n}" for n in summary.get("notes", []))
    return "\n".join(lines)


__all__ = [
    "TileSettings",
    "BuiltFilter",
    "build_filters",
    "candidate_grid",
    "tile_slide",
    "tile_slides",
    "process_slide",
    "format_summary",
    "SLIDE_SUFFIXES",
]

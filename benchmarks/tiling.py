"""Tiling benchmark: clotclf tiling vs a re-implementation of the published STRIP AI approach.

Generates single-level, tiled (512 px), deflate-compressed RGB TIFFs like the Mayo Clinic STRIP AI
slides, square, of increasing size, with pink textured "tissue" blobs covering ~30 % of the
area on slightly noisy glass (cached in --workdir). Each measurement runs in a fresh child
process, which reports its wall and CPU time for the work itself (imports done first) and its
peak RSS (``VmHWM`` of the process, and ``resource.getrusage(RUSAGE_CHILDREN)`` for workers).

- ``clotclf``: ``tile_slides`` with the recipe geometry (1/10 view, 600 px tiles -> 224 px cache),
  the ``otsu`` filter, TileSet + QC picture written; with the byte-count prescreen (1 and 2
  reading threads) and without it (1 thread).
- ``published``: PIL loads the whole image (``MAX_IMAGE_PIXELS`` raised), downscales it by 10,
  cuts every 600 x 600 tile to a PNG on disk, then filters each PNG one by one with Otsu. It
  holds the whole slide in memory, so it is skipped when that would exceed --published-max-gb.

Usage::

    .venv/bin/python benchmarks/tiling.py                       # 10k, 20k, 40k px: ~3 min on 2 cores
    .venv/bin/python benchmarks/tiling.py --sizes 10000,20000,30000,40000 --repeat 2   # docs/performance.md

Prints a markdown table (paste it into docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TIFF_TILE = 512


# ----------------------------------------------------------------------------- synthetic slides


def make_slide(path: Path, size: int, seed: int = 0, coverage: float = 0.3) -> Path:
    """Write a size x size single-level tiled deflate TIFF, streaming tiles (bounded memory)."""
    import tifffile

    rng = np.random.default_rng(seed)
    cell = 32  # the blob field is drawn at 1/32 and upsampled per tile
    mh = mw = -(-size // cell)
    yy, xx = np.mgrid[0:mh, 0:mw]
    field = np.zeros((mh, mw))
    for _ in range(12):
        cy, cx, s = rng.uniform(0, mh), rng.uniform(0, mw), rng.uniform(0.05, 0.15) * mh
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    blobs = field > np.quantile(field, 1 - coverage)
    tissue = [np.clip(np.array([205, 110, 150]) + rng.normal(0, 25, (TIFF_TILE, TIFF_TILE, 3)), 0, 255).astype(np.uint8) for _ in range(4)]
    glass = [np.clip(242 + rng.normal(0, 2, (TIFF_TILE, TIFF_TILE, 3)), 0, 255).astype(np.uint8) for _ in range(4)]
    k = TIFF_TILE // cell

    def tiles():
        for ty in range(0, size, TIFF_TILE):
            for tx in range(0, size, TIFF_TILE):
                m = blobs[ty // cell : ty // cell + k, tx // cell : tx // cell + k]
                if not m.any():
                    yield glass[(tx + ty) // TIFF_TILE % 4]
                    continue
                full = np.zeros((k, k), bool)
                full[: m.shape[0], : m.shape[1]] = m
                inside = np.repeat(np.repeat(full, cell, 0), cell, 1)[..., None]
                yield np.where(inside, tissue[(tx // TIFF_TILE) % 4], glass[(ty // TIFF_TILE) % 4])

    tmp = path.with_suffix(".part")
    tifffile.imwrite(
        tmp, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(TIFF_TILE, TIFF_TILE), photometric="rgb",
        compression="deflate", compressionargs={"level": 1}, maxworkers=2,
        resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER",
    )
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- the two approaches (child side)


def peak_rss_mb() -> float:
    """Peak RSS of this process since it started (VmHWM: ``ru_maxrss`` also counts the pages of the
    parent it was forked from, before exec) and of its worker processes (RUSAGE_CHILDREN)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with open("/proc/self/status") as fh:
            own = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0  # KiB


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (worker processes)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def run_clotclf(slides: str, out: str, downsample: float, tile_size: int, workers: int, prescreen: bool, threads: int) -> dict:
    from clotclf_core.tiling import TileSettings, TilingError, tile_slides

    settings = TileSettings(downsample=downsample, tile_size=tile_size, prescreen=prescreen)
    t0 = time.perf_counter()
    try:
        tile_slides(slides, out, settings=settings, filters=[("otsu", {})], workers=workers, threads=threads, progress=False)
    except TilingError:  # every candidate rejected: still a measurement (0 tiles kept)
        pass
    seconds = time.perf_counter() - t0
    slides_meta = json.loads((Path(out) / "tileset.json").read_text())["slides"].values()
    return {"seconds": seconds, "candidates": sum(m.get("n_candidates", 0) for m in slides_meta),
            "kept": sum(m.get("n_tiles", 0) for m in slides_meta), "how": sorted({m.get("mask_from", "?") for m in slides_meta})}


def run_published(path: str, out: str, downsample: float, tile_size: int) -> dict:
    """Whole image in RAM -> downscale -> every tile to PNG -> Otsu on each PNG (bright-side share, as published)."""
    from PIL import Image
    from skimage.filters import threshold_otsu

    Image.MAX_IMAGE_PIXELS = None
    t0 = time.perf_counter()
    with Image.open(path) as im:
        im.load()
        small = im.resize((round(im.width / downsample), round(im.height / downsample)))
    n = 0
    for y in range(0, small.height - tile_size + 1, tile_size):
        for x in range(0, small.width - tile_size + 1, tile_size):
            small.crop((x, y, x + tile_size, y + tile_size)).save(Path(out) / f"{x}_{y}.png")
            n += 1
    del small
    kept = 0
    for png in sorted(Path(out).glob("*.png")):
        grey = np.asarray(Image.open(png).convert("L"))
        kept += int((grey > threshold_otsu(grey)).mean() >= 0.3) if grey.min() < grey.max() else 0
    return {"seconds": time.perf_counter() - t0, "candidates": n, "kept": kept, "how": ["full image"]}


def child(argv: list[str]) -> None:
    kind, args = argv[0], json.loads(argv[1])
    # imports and plugin discovery first: the clock measures the work, not the interpreter's start
    import PIL.Image  # noqa: F401
    import skimage.filters  # noqa: F401
    import tifffile  # noqa: F401

    from clotclf_core.plugins import get_manager
    from clotclf_core import tiling, sources  # noqa: F401

    get_manager()
    cpu0 = cpu_seconds()
    res = run_clotclf(**args) if kind == "clotclf" else run_published(**args)
    res["cpu"] = cpu_seconds() - cpu0
    res["rss_mb"] = peak_rss_mb()
    print(json.dumps(res))


# ----------------------------------------------------------------------------- parent side


def measure(kind: str, repeat: int = 1, clean: Path | None = None, **args) -> dict:
    """Run ``kind`` in fresh child processes ``repeat`` times; keep the fastest run (least disturbed)."""
    best: dict = {}
    for _ in range(repeat):
        if clean is not None:
            shutil.rmtree(clean, ignore_errors=True)
            if kind == "published":
                clean.mkdir(parents=True)
        proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(args)], capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:120]}
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        if not best or res["seconds"] < best["seconds"]:
            best = res
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,20000,40000", help="comma-separated slide sides in pixels")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "clotclf-bench-tiling"), help="slides are cached here")
    ap.add_argument("--downsample", type=float, default=10.0)
    ap.add_argument("--tile-size", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2, help="also tile all slides together with 1 and with this many workers (0: skip)")
    ap.add_argument("--published-max-gb", type=float, default=6.0, help="skip the published approach above this memory need")
    ap.add_argument("--no-published", action="store_true", help="only measure clotclf")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest is reported (for busy machines)")
    opts = ap.parse_args()

    work = Path(opts.workdir)
    (work / "slides").mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in opts.sizes.split(",") if s.strip()]
    geometry = {"downsample": opts.downsample, "tile_size": opts.tile_size}
    rows = []
    for size in sizes:
        path = work / "slides" / f"synthetic_{size}.tif"
        if not path.exists():
            t0 = time.perf_counter()
            make_slide(path, size)
            print(f"generated {path.name} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        single = work / f"one_{size}"
        single.mkdir(exist_ok=True)
        if not (single / path.name).exists():
            (single / path.name).symlink_to(path)
        base = {"size": size, "file_mb": path.stat().st_size / 1e6}
        variants = [("clotclf, 1 thread", True, 1), ("clotclf, 2 threads", True, 2), ("clotclf --no-prescreen, 1 thread", False, 1)]
        for label, prescreen, threads in variants:
            out = work / f"ts_{size}_{prescreen}_{threads}"
            res = measure("clotclf", opts.repeat, out, slides=str(single), out=str(out), workers=1, prescreen=prescreen,
                          threads=threads, **geometry)
            rows.append({**base, "approach": label, **res})
            print(f"{size}: {label}: {res}", file=sys.stderr)
        need_gb = 2 * size * size * 3 / 1e9  # measured: PIL's peak is ~1.9x the raw RGB image (load + resize)
        if opts.no_published:
            continue
        if need_gb > opts.published_max_gb:
            rows.append({**base, "approach": "published", "skipped": f"would need ~{need_gb:.1f} GB RAM > cap {opts.published_max_gb:g} GB"})
            continue
        out = work / f"png_{size}"
        res = measure("published", opts.repeat, out, path=str(path), out=str(out), **geometry)
        rows.append({**base, "approach": "published", **res})
        print(f"{size}: published: {res}", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)

    multi = []
    if opts.workers:
        together = work / "together"
        shutil.rmtree(together, ignore_errors=True)
        together.mkdir()
        for size in sizes:
            (together / f"synthetic_{size}.tif").symlink_to(work / "slides" / f"synthetic_{size}.tif")
        for w in sorted({1, opts.workers}):
            out = work / f"ts_all_{w}"
            res = measure("clotclf", 1, out, slides=str(together), out=str(out), workers=w, prescreen=True,
                          threads=1, **geometry)
            multi.append({"workers": w, **res})
            print(f"all slides, {w} worker(s): {res}", file=sys.stderr)
    print(render(rows, multi, opts, sizes))


def render(rows: list[dict], multi: list[dict], opts, sizes) -> str:
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0]
    lines = [
        f"Machine: {os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}, "
        f"load average {load:.1f} at the end (other work shares these cores: wall times are noisy, CPU times less so; "
        f"best of {opts.repeat} run(s)). "
        f"Geometry: 1/{opts.downsample:g} view, {opts.tile_size}-px tiles ({opts.downsample * opts.tile_size:.0f} level-0 px), "
        "otsu filter. One slide per run, one process (published: single-threaded PIL).",
        "",
        "| slide (px) | file (MB) | approach | wall s | CPU s | peak RSS (MB) | tiles read | tiles kept | tiles/s | mask from | vs published (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    published = {r["size"]: r for r in rows if r["approach"] == "published" and "seconds" in r}
    for r in rows:
        head = f"| {r['size']:,} | {r['file_mb']:.0f} | {r['approach']} |"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped']} | | | | | | | |")
            continue
        if "error" in r:
            lines.append(f"{head} error: {r['error']} | | | | | | | |")
            continue
        rate = r["candidates"] / r["seconds"] if r["seconds"] else 0.0
        ref = published.get(r["size"])
        if r["approach"] == "published":
            speed = "1.0x / 1.0x"
        elif ref:
            speed = f"{ref['seconds'] / r['seconds']:.1f}x / {ref['cpu'] / r['cpu']:.1f}x"
        else:
            speed = "n/a"
        lines.append(
            f"{head} {r['seconds']:.1f} | {r['cpu']:.1f} | {r['rss_mb']:.0f} | {r['candidates']} | {r['kept']} | {rate:.2f} | "
            f"{', '.join(r.get('how', []))} | {speed} |"
        )
    if multi:
        lines += ["", f"All {len(sizes)} slides in one run (`tile_slides`, prescreen on, 1 reading thread per worker):", "",
                  "| workers | wall s | CPU s | peak RSS per process (MB) | tiles read | tiles/s per worker |", "|---|---|---|---|---|---|"]
        for m in multi:
            if "error" in m:
                lines.append(f"| {m['workers']} | error: {m['error']} | | | | |")
                continue
            lines.append(
                f"| {m['workers']} | {m['seconds']:.1f} | {m['cpu']:.1f} | {m['rss_mb']:.0f} | {m['candidates']} | "
                f"{m['candidates'] / m['seconds'] / m['workers']:.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()

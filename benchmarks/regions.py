"""read_region / thumbnail of a big single-level slide: the tifffile source's segment I/O against
tifffile's zarr view (``aszarr``), both answered by the same :class:`RegionSlide` engine.

The slide is benchmarks/tiling.py's mean STRIP-AI-shaped one (**synthetic**: 23,000 x 37,600, deflate,
512-px tiles, ~30 % tissue; cached in --workdir). Each measurement runs in a fresh child process that
imports everything and opens the slide first, then times one request (wall and CPU, its threads
included; peak RSS). Engines:

- **segments**: the ``tifffile`` source as shipped (``TifffileSlide``: each TIFF tile that meets the
  request read from its offset and decoded with ``page.decode``);
- **zarr**: the same slide class with ``_blocks`` reading row bands of the request through
  ``zarr.open(tif.aszarr(level))`` (zarr decodes the same tiles through tifffile's store).

Requests: ``thumbnail(1024)``; a 4,096-px square at downsample 1 and 4 (on the pixel grid); a
3,000-px square at downsample 3.3 (off the grid); 50 tiles of 896 px at downsample 4 (what
``export-patches`` reads).

Usage::

    .venv/bin/python -m pip install zarr          # only for this comparison
    .venv/bin/python benchmarks/regions.py --repeat 3

Prints a markdown table (docs/performance.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import ensure_slide  # noqa: E402 (the sibling modules: the benchmark slides)
from tiling import MEAN, cpu_seconds, peak_rss_mb  # noqa: E402

REQUESTS = {
    "thumbnail(1024)": lambda s: s.thumbnail(1024),
    "4,096 px square, downsample 1": lambda s: s.read_region(5000, 9000, 4096, 4096, 1.0),
    "4,096 px square, downsample 4": lambda s: s.read_region(5000, 9000, 4096, 4096, 4.0),
    "3,000 px square, downsample 3.3": lambda s: s.read_region(5001, 9003, 3000, 3000, 3.3),
    "50 tiles of 896 px, downsample 4": lambda s: [s.read_region(1000 + 400 * i, 2000 + 600 * i, 896, 896, 4.0) for i in range(50)],
}


def zarr_slide(path: str, band: int):
    """The tifffile source's slide with ``_blocks`` read through tifffile's zarr view."""
    import zarr

    from clotclf_core.plugin.regions import to_rgb
    from clotclf_core.slides.open import open_slide

    slide = open_slide(path, "tifffile")
    arrays = [zarr.open(slide._tif.aszarr(level=i), mode="r") for i in range(slide.level_count)]

    def _blocks(level: int):
        z = arrays[level]

        def blocks(x0: int, y0: int, x1: int, y1: int):
            for y in range(y0, y1, band):
                yield x0, y, to_rgb(z[y : min(y1, y + band), x0:x1])

        return blocks

    slide._blocks = _blocks
    return slide


def child(engine: str, request: str, path: str, band: int) -> None:
    import numpy as np  # noqa: F401
    import tifffile  # noqa: F401

    from clotclf_core.slides.open import open_slide

    slide = zarr_slide(path, band) if engine == "zarr" else open_slide(path, "tifffile")
    slide.read_region(0, 0, 512, 512)  # the file's header and one tile: both engines warm
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    REQUESTS[request](slide)
    res = {"seconds": time.perf_counter() - t0, "cpu": cpu_seconds() - cpu0, "rss_mb": peak_rss_mb()}
    slide.close()
    print(json.dumps(res))


def measure(engine: str, request: str, path: Path, band: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", engine, request, str(path), str(band)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "clotclf-bench-tiling"), help="slides are cached here")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement, engines alternating; the least CPU is reported")
    ap.add_argument("--band", type=int, default=2048, help="rows per zarr read")
    opts = ap.parse_args()
    try:
        import zarr
    except ImportError:
        sys.exit("benchmarks/regions.py compares with tifffile's zarr view: `.venv/bin/python -m pip install zarr` first")
    import tifffile

    path = ensure_slide(Path(opts.workdir) / "mean" / "mean.tif", *MEAN)
    best: dict[tuple[str, str], dict] = {}
    for _ in range(opts.repeat):
        for request in REQUESTS:
            for engine in ("segments", "zarr"):
                res = measure(engine, request, path, opts.band)
                old = best.get((engine, request))
                if old is None or "error" in old or ("cpu" in res and res["cpu"] < old["cpu"]):
                    best[(engine, request)] = res
    lines = [
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), Python {platform.python_version()}, "
        f"tifffile {tifffile.__version__}, zarr {zarr.__version__}, {time.strftime('%Y-%m-%d')}, load average "
        f"{os.getloadavg()[0]:.1f} at the end (shared cores; best of {opts.repeat} by CPU). Synthetic {MEAN[0]:,} x {MEAN[1]:,} "
        f"single-level deflate TIFF, 512-px tiles; zarr reads bands of {opts.band} rows.",
        "",
        "| request | segments wall s | segments CPU s | zarr wall s | zarr CPU s | zarr CPU ÷ segments | peak RSS MB (segments / zarr) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for request in REQUESTS:
        a, b = best[("segments", request)], best[("zarr", request)]
        if "error" in a or "error" in b:
            lines.append(f"| {request} | {a.get('error', '')} | | {b.get('error', '')} | | | |")
            continue
        lines.append(f"| {request} | {a['seconds']:.2f} | {a['cpu']:.2f} | {b['seconds']:.2f} | {b['cpu']:.2f} | "
                     f"{b['cpu'] / a['cpu']:.2f} | {a['rss_mb']:.0f} / {b['rss_mb']:.0f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()

"""Hostile files (issue 19): what it costs to reach the one Error line, against the floor of a
``clotclf tile`` of one ordinary small slide in the same run.

Rows:

- **peak RSS and wall time to the error line** of ``clotclf tile`` on crafted TIFFs (each in a
  fresh process, ``ru_maxrss`` of the child): a 502-byte header declaring 200,000 x 200,000 px, one
  32,768 x 32,768 deflate tile (3 GiB decoded) in a few kB, 65,536 tiles sharing one block (12.9 GB
  declared in 0.5 MB), a tile table 4 tiles short of 25 — under the automatic source and
  ``--source openslide``; and a FIFO named by a manifest (a plain ``open()`` blocks forever);
- **manifests of N rows** whose slides are all missing but one (``tile`` ends in one bounded
  Error line and ``missing_slides.csv``): wall time for N = 1k, 10k, 100k, 1M;
- **per-slide bookkeeping** of ``TileSetWriter`` (no pixels): N slide statuses recorded through the
  journal against rewriting ``tileset.json`` after each slide (what clotclf did before);
- **open file descriptors** after reading every slide of a 300-slide TileSet (bounded memory maps
  against one per slide), and the same under ``ulimit -n 128``.

Usage::

    .venv/bin/python benchmarks/hostile_files.py [Peak] [Manifests] [Per-slide] [Open]   # ~3 min on a 2-core machine

Prints markdown tables (paste them into docs/performance.md).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_hostile_files import one_huge_tile_tiff, shared_tiles_tiff, short_table_tiff  # noqa: E402
from test_tiling import write_slide  # noqa: E402

CLOTCLF = [sys.executable, "-m", "clotclf_core.cli"]
SMALL = ["--downsample", "2", "--tile-size", "100", "--train-size", "50", "-q"]


def _huge_header(path: Path) -> Path:
    from test_bad_inputs_tiling import _huge_header_tiff

    return _huge_header_tiff(path)


def rss_table(work: Path) -> list[str]:
    rows = ["| input (file size) | source | exit | wall s | peak RSS MiB | said |", "|---|---|---|---|---|---|"]
    ok = work / "ok"
    ok.mkdir()
    write_slide(ok / "s1.tif")
    cases = [("ordinary 1000 x 800 slide (floor)", ok, None)]
    for name, make in (("200,000 x 200,000 px header", _huge_header), ("one 32,768 x 32,768 tile", one_huge_tile_tiff),
                       ("65,536 tiles sharing one block", shared_tiles_tiff), ("tile table 4 of 25", short_table_tiff)):
        d = work / name.split()[0].replace(",", "")
        d.mkdir()
        make(d / "lie.tif")
        cases.append((f"{name} ({(d / 'lie.tif').stat().st_size:,} B)", d, None))
        cases.append((f"{name}", d, "openslide"))
    for label, folder, source in cases:
        args = ["tile", folder, "--out", work / f"ts{len(rows)}", *SMALL] + (["--source", source] if source else [])
        wall, rss, code, line = run_fresh(args)
        rows.append(f"| {label} | {source or 'auto'} | {code} | {wall:.2f} | {rss:.0f} | {_said(line)} |")
    fifo_dir = work / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "pipe.tif")
    (work / "fifo.csv").write_text("image_id\npipe\n")
    wall, rss, code, line = run_fresh(["tile", fifo_dir, "--manifest", work / "fifo.csv", "--out", work / "tsfifo", *SMALL])
    rows.append(f"| FIFO named by the manifest | auto | {code} | {wall:.2f} | {rss:.0f} | {_said(line)} |")
    return rows


def _said(line: str) -> str:
    """What the Error line calls the file (or "-" for a run without one)."""
    for words in ("is damaged", "is truncated", "decoding one takes", "share their data", "FIFO (named pipe)"):
        if words in line:
            return f"one line: ... {words} ..."
    return line[:60] or "-"


def run_fresh(args: list[str]) -> tuple[float, float, int, str]:
    """``child`` through a one-shot Python wrapper, so that ``RUSAGE_CHILDREN`` holds this child alone."""
    code = ("import resource, subprocess, sys, time;"
            "t=time.perf_counter(); p=subprocess.run(sys.argv[1:], capture_output=True, text=True);"
            "w=time.perf_counter()-t; r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024;"
            "lines=[x for x in p.stderr.splitlines() if x.strip()];"
            "print(w, r, p.returncode, (lines[-1] if lines else ''), sep='\\t')")
    out = subprocess.run([sys.executable, "-c", code, *CLOTCLF, *map(str, args)], capture_output=True, text=True, timeout=600)
    wall, rss, rc, line = (out.stdout.rstrip("\n").split("\t", 3) + ["", "", "", ""])[:4]
    return float(wall), float(rss), int(rc), line


def manifest_table(work: Path) -> list[str]:
    rows = ["| manifest rows (all missing but one) | exit | wall s | Error line chars | missing_slides.csv rows |", "|---|---|---|---|---|"]
    folder = work / "one"
    folder.mkdir()
    write_slide(folder / "s1.tif")
    for n in (1_000, 10_000, 100_000, 1_000_000):
        m = work / f"m{n}.csv"
        with open(m, "w") as fh:
            fh.write("image_id\ns1\n")
            fh.writelines(f"gone{i}\n" for i in range(n - 1))
        out = work / f"tsm{n}"
        wall, _, code, line = run_fresh(["tile", folder, "--manifest", m, "--out", out, *SMALL])
        listed = (out / "missing_slides.csv").read_text().count("\n") - 1
        rows.append(f"| {n:,} | {code} | {wall:.1f} | {len(line):,} | {listed:,} |")
    return rows


def bookkeeping_table(work: Path) -> list[str]:
    from clotclf_core.tiling.writer import TileSetWriter

    rows = ["| slides | journal (s) | rewrite tileset.json per slide (s) | ratio |", "|---|---|---|---|"]
    info = {"file": "x.tif", "fingerprint": "123:abcdef", "source": "tifffile", "width": 40000, "height": 30000,
            "mpp": 0.25, "n_candidates": 900, "n_kept": 400, "seconds": 12.3}

    def record(n: int, rewrite: bool) -> float:
        w = TileSetWriter(work / f"w{n}{rewrite}", {"bench": True}, 224)
        listed = {f"s{i}": {"patient_id": f"p{i}", "center_id": "c", "label": "CE"} for i in range(n)}
        w.sync(listed)
        t0 = time.perf_counter()
        for i in range(n):
            w.commit(f"s{i}", "no_tissue", info, listed[f"s{i}"])
            if rewrite:
                w._write_meta()  # what each slide cost before the journal
        w._write_meta()
        return time.perf_counter() - t0

    for n in (1_000, 3_000, 10_000, 100_000):
        journal = record(n, False)
        old = record(n, True) if n <= 3_000 else None  # (quadratic: 10k would take minutes)
        rows.append(f"| {n:,} | {journal:.2f} | " + (f"{old:.1f} | {old / journal:.0f}x |" if old else "not run | |"))
    return rows


def fds_table(work: Path) -> list[str]:
    """Open file descriptors after reading every slide of a 300-slide TileSet (bounded memory maps
    against one kept per slide, as before), and the same reading in a process under ``ulimit -n 128``
    (what embed, train, predict and evaluate do through ``TileSet.pixels`` / ``FeatureStore.features``,
    which share :class:`clotclf_core.tiling.arrays.MappedArrays`)."""
    from tilesets import make_tileset

    from clotclf_core.tiling import arrays
    from clotclf_core.tiling.tileset import TileSet

    n = 300  # (each slide of make_tileset is two fsynced files: minutes for 1,000 on this machine)
    tiles = make_tileset(work / "ts", sizes=(2,) * n, tile=8, empty={})
    rows = ["| reader (300 slides) | memory maps kept | open fds after reading every slide | under `ulimit -n 128` |",
            "|---|---|---|---|"]
    for limit, label in ((arrays.MAX_OPEN, f"{arrays.MAX_OPEN} (now)"), (10**9, "one per slide (before)")):
        before = len(os.listdir("/proc/self/fd"))
        reader = TileSet(tiles)
        reader._arrays = arrays.MappedArrays(limit)
        for image_id in reader.slides:
            reader.pixels(image_id)
        held = len(os.listdir("/proc/self/fd")) - before
        del reader
        script = ("import sys; from clotclf_core.tiling import arrays; from clotclf_core.tiling.tileset import TileSet;"
                  f"t = TileSet(sys.argv[1]); t._arrays = arrays.MappedArrays({limit});"
                  "any(t.pixels(i) is None for i in t.slides)")  # (each array dropped at once, as a loader does)
        res = subprocess.run(["bash", "-c", 'ulimit -n 128 && exec "$@"', "bash", sys.executable, "-c", script, str(tiles)],
                             capture_output=True, text=True, timeout=300)
        said = "read all" if res.returncode == 0 else (res.stderr.strip().splitlines() or ["?"])[-1].split(": ", 1)[-1][:90] + "…"
        rows.append(f"| TileSet.pixels | {label} | {held:,} | {said} |")
    return rows


def main() -> None:
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"Python {platform.python_version()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tables = (("Peak RSS and wall time to the Error line", rss_table), ("Manifests of N rows", manifest_table),
                  ("Per-slide bookkeeping", bookkeeping_table), ("Open file descriptors", fds_table))
        only = sys.argv[1:]  # (a table's first word: Peak, Manifests, Per-slide)
        for title, table in (t for t in tables if not only or t[0].split()[0] in only):
            (work / title[:4]).mkdir()
            print(f"### {title}\n")
            print("\n".join(table(work / title[:4])) + "\n", flush=True)


if __name__ == "__main__":
    main()

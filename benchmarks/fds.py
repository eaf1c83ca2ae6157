"""Many slides (issue 19): open file descriptors of whole commands under ``ulimit -n``, and the wall
time of ``clotclf tile`` over manifests of N real slides.

Rows:

- **open fds**: a **synthetic** TileSet of N slides (3 random 32-px tiles each, patients of two
  slides, 5 centres; written as ``clotclf tile`` writes one: ``tests/tilesets.py``'s
  ``make_cohort_tileset``), then, each in a child process whose ``RLIMIT_NOFILE`` is set to
  ``--limit`` (256: a batch system's ``ulimit -n``): ``clotclf embed`` (a 1-block random-init timm
  ViT), ``clotclf train`` tile-level (a 1-layer random-init CCT, 1 epoch, fold 0 of 3, the default 2
  data-loader workers) and on the features (``--aggregator mean``, 2 epochs), ``clotclf predict
  --features`` with the MIL run and ``clotclf evaluate`` of both runs on all patients. Per command:
  exit code, wall time, and the peak number of open descriptors of its busiest process and of all
  its processes together (``/proc/PID/fd`` of the child and its descendants, sampled every 50 ms);
- **tile over manifests** (``--tile``): N copies (hard links, under N names) of one small real
  **synthetic** slide (a 600 x 600 px tiled TIFF, tests/test_tiling.py's ``write_slide``), listed by
  a manifest of N rows, tiled by ``clotclf tile --workers 1`` in a child process: wall time and
  slides per second (constant if tiling is linear in the number of slides).

Usage::

    .venv/bin/python benchmarks/fds.py --slides 1000 3000                   # open fds (~N/100 min)
    .venv/bin/python benchmarks/fds.py --slides --tile 1000 3000 10000      # tile over manifests only

Prints markdown tables (paste them into docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tilesets import TINY_TIMM, make_cohort_tileset  # noqa: E402

CLOTCLF = [sys.executable, "-m", "clotclf_core.cli"]
TIMM = ["--backbone", "timm:" + ",".join(f"{k}={v}" for k, v in TINY_TIMM.items())]
CCT = ["--backbone", "cct", *[a for k, v in {"variant": "cct_2_3x2_32", "img_size": 32, "num_layers": 1, "embed_dim": 32,
                                               "num_heads": 2}.items() for a in ("--backbone-opt", f"{k}={v}")]]


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (``/proc/PID/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def run_sampled(cmd: list[str], limit: int | None, timeout: float = 1800) -> dict:
    """Run ``cmd`` with ``RLIMIT_NOFILE`` = ``limit``; its exit code, wall time, peak fds of one process
    and of all its processes together (sampled every 50 ms), and its last stderr line."""

    def lower_limit() -> None:
        if limit:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        # (preexec_fn: this script starts no thread of its own; it is how the child gets its own limit)
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lower_limit, env={**os.environ, "PYTHONWARNINGS": "ignore"})  # noqa: PLW1509
        peak_one = peak_all = 0
        while proc.poll() is None:
            counts = [c for c in map(open_fds, descendants(proc.pid)) if c is not None]
            if counts:
                peak_one, peak_all = max(peak_one, max(counts)), max(peak_all, sum(counts))
            if time.perf_counter() - t0 > timeout:
                proc.kill()
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        err.seek(0)
        lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
    return {"rc": proc.returncode, "wall": wall, "peak_one": peak_one, "peak_all": peak_all,
            "said": lines[-1][:160] if lines else ""}


def fd_rows(work: Path, n: int, limit: int) -> list[str]:
    t0 = time.perf_counter()
    ts = make_cohort_tileset(work / f"tiles{n}", n)
    made = time.perf_counter() - t0
    feats, tile_run, mil_run = work / f"features{n}", work / f"tile-run{n}", work / f"mil-run{n}"
    common = ["--device", "cpu", "-q"]
    commands = [
        ("embed", ["embed", "--tiles", ts, *TIMM, "--out", feats, *common]),
        ("train (tile-level, 1 epoch)", ["train", "--tiles", ts, *CCT, "--epochs", "1", "--batch-size", "64", "--folds", "3",
                                         "--fold", "0", "--patience", "0", "--out", tile_run, *common]),
        ("train --features (mean, 2 epochs)", ["train", "--features", feats, "--aggregator", "mean", "--epochs", "2",
                                               "--folds", "3", "--fold", "0", "--out", mil_run, *common]),
        ("predict --features (MIL run)", ["predict", "--features", feats, "--model", mil_run, "--out", work / f"pred{n}",
                                          "--slide-is-patient", *common]),
        ("evaluate --tiles (tile-level run)", ["evaluate", tile_run, "--tiles", ts, "--patients", "all", "--no-qupath",
                                               "--out", work / f"eval-tile{n}", *common]),
        ("evaluate --features (MIL run)", ["evaluate", mil_run, "--features", feats, "--patients", "all", "--no-qupath",
                                           "--out", work / f"eval-mil{n}", *common]),
    ]
    rows = []
    for name, args in commands:
        r = run_sampled([*CLOTCLF, *args], limit)
        ok = "yes" if r["rc"] == 0 else f"no: {r['said']}"
        rows.append(f"| {n:,} | {name} | {r['rc']} | {r['wall']:.1f} | {r['peak_one']} | {r['peak_all']} | {ok} |")
        print(rows[-1], flush=True)
    print(f"(building the {n:,}-slide synthetic TileSet took {made:.1f} s)", flush=True)
    return rows


# ----------------------------------------------------------------------------- tile over manifests


def tile_rows(work: Path, sizes: list[int]) -> list[str]:
    from test_tiling import DARK, write_slide

    one = work / "one.tif"
    write_slide(one, size=(600, 600), blobs=((200, 200, 150, DARK), (420, 400, 130, DARK)))
    rows = []
    for n in sizes:
        slides, out = work / f"slides{n}", work / f"tiled{n}"
        slides.mkdir()
        names = [f"slide{i:06d}" for i in range(n)]
        for name in names:
            os.link(one, slides / f"{name}.tif")
        manifest = work / f"manifest{n}.csv"
        manifest.write_text("image_id,patient_id,label\n" + "".join(f"{s},p{i // 2},{'CE' if (i // 2) % 2 else 'LAA'}\n"
                                                                     for i, s in enumerate(names)))
        r = run_sampled([*CLOTCLF, "tile", slides, "--manifest", manifest, "--out", out, "--workers", "1",
                         "--downsample", "2", "--tile-size", "100", "--train-size", "32", "-q"], None, timeout=3600)
        rows.append(f"| {n:,} | {r['rc']} | {r['wall']:.1f} | {n / r['wall']:.1f} | {r['said'] or '-'} |")
        print(rows[-1], flush=True)
        shutil.rmtree(slides)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=int, nargs="*", default=[1000], help="TileSet sizes for the open-fd table (none: skip it)")
    ap.add_argument("--limit", type=int, default=256, help="RLIMIT_NOFILE of each command (ulimit -n)")
    ap.add_argument("--tile", type=int, nargs="*", default=[], help="manifest sizes for the tile table")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, deleted)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="clotclf-fds-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    try:
        if args.slides:
            head = ["", (f"| slides (synthetic) | command | exit | wall s | peak fds, one process | peak fds, all processes | "
                         f"passed under `ulimit -n {args.limit}` |"), "|---|---|---|---|---|---|---|"]
            rows = [row for n in args.slides for row in fd_rows(work, n, args.limit)]
            print("\n".join(head + rows))
        if args.tile:
            head = ["", "| manifest rows (hard links of one synthetic 600 x 600 TIFF) | exit | wall s | slides/s | said |",
                    "|---|---|---|---|---|"]
            print("\n".join(head + tile_rows(work, args.tile)))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

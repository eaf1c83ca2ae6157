"""clotclf's tiling against the tools a user would pick instead, side by side on the same slides.

Peers: hs2p 6.1.0, LazySlide 0.13.0 and TIAToolbox 2.1.3 (from PyPI), each run by its own Python from
its own virtual environment under ``--venvs DIR`` (``DIR/<peer>/bin/python``; ``--install`` creates
and fills them with pip: torch for them is ``torch==2.14.1`` / ``torchvision==0.29.1``, the wheels
on this machine's disk, never a download; TIAToolbox 2.1.3 pins ``torch<2.13``, so its other
requirements are installed as it lists them and torch as above). clotclf runs from this Python;
the peers' runners (their own documented APIs) are in :mod:`peer_runners`.

Slides (**synthetic**, :mod:`synthetic`, cached in ``--workdir``): STRIP-AI-shaped deflate TIFFs at
0.25 um/px — the mean slide (23,000 x 37,600), a grey-glass slide (12,000 x 9,000, glass RGB
203, 207, 198) and a small one (4,420 x 4,470) — as single-level files (the STRIP AI shape) and as
pyramidal copies (levels by 4, the same level-0 pixels). Geometry for everyone: 224-px tiles at
1 um/px (896 level-0 px, read at 1/4), each tool's own tissue detection and defaults otherwise, in
two modes: **pixels** (the RGB pixels of every kept tile extracted, as uint8 arrays in memory; a
tool's own way to read them) and **coords** (coordinates only).

Rows: **clotclf** is ``clotclf tile`` (``tile_slides``: the TileSet written, with its QC picture and
mask) and **clotclf-api** the Python ``tile_slide`` (tiles in memory, nothing written); the peers'
rows run their Python APIs in memory, and **hs2p-files** is hs2p as its command line runs
(``tile_slides`` with its default config: coordinates ``.npz``, process list and both previews; in
mode pixels also its tar of JPEG tiles), the like-for-like peer of ``clotclf tile``.

Each run is a fresh child process that imports its tool first and then times the work: wall, CPU
(user + system, its threads and child processes included; **process CPU-s**: the whole process, the
interpreter's start and the imports included, what one command on one slide costs), peak RSS (``VmHWM``, or its
children's), the kept tiles, and against the generator's tissue map (one cell per 16 level-0 px):
**coverage** (share of the true tissue inside some kept tile) and **glass** (share of the kept area
inside the slide that is not tissue). Rounds alternate the tools (the order rotates each round);
the table gives the median of each tool's rounds. A run is stopped at ``--max-rss-gb`` (the machine is
shared) or ``--timeout`` seconds, and the table says so.

Usage::

    .venv/bin/python benchmarks/peers.py --venvs /tmp/peer-venvs --install     # create the venvs (~15 GB, minutes from local wheels)
    .venv/bin/python benchmarks/peers.py --venvs /tmp/peer-venvs --rounds 3
    .venv/bin/python benchmarks/peers.py --venvs /tmp/peer-venvs --slides small --shapes pyramid --rounds 1

Prints a markdown table (docs/performance.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peer_runners import RUNNERS as PEER_RUNNERS, read_back_hs2p  # stdlib only: the peers' venvs import it too

#: what each peer's venv gets (the torch wheels are on this machine's disk: never a CUDA download)
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
PEERS = {
    "hs2p": {"dist": "hs2p", "version": "6.1.0", "extras": ["openslide-python", "openslide-bin", "tifffile", "imagecodecs"]},
    "lazyslide": {"dist": "lazyslide", "version": "0.13.0", "extras": TORCH},
    "tiatoolbox": {"dist": "tiatoolbox", "version": "2.1.3", "extras": [], "override": TORCH},
}
#: extra rows run in a peer's venv: hs2p as its command line writes its results (the peer of `clotclf tile`)
VENV_OF = {"hs2p-files": "hs2p"}
TOOLS = ["clotclf", "clotclf-api", "hs2p", "hs2p-files", "lazyslide", "tiatoolbox"]
SLIDES = {  # name: (width, height, seed, glass)
    "mean": (23_000, 37_600, 0, "white"),
    "grey": (12_000, 9_000, 2, "grey"),
    "small": (4_420, 4_470, 3, "white"),
}


# ----------------------------------------------------------------------------- installing the peers


def pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", *args]
    print("+", " ".join(cmd[3:]), file=sys.stderr)
    subprocess.run(cmd, check=True)


def install(venvs: Path, peers: list[str]) -> None:
    """A venv per peer with the peer at its pinned version (``override``: its requirements as it lists
    them, except those named, which are installed as given: TIAToolbox's ``torch<2.13``)."""
    for name in peers:
        spec = PEERS[name]
        env = venvs / name
        python = env / "bin" / "python"
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        pinned = f"{spec['dist']}=={spec['version']}"
        if "override" not in spec:
            pip(python, pinned, *spec["extras"])
            continue
        pip(python, "--no-deps", pinned)
        replaced = {r.split("=")[0].split("<")[0].split(">")[0].lower() for r in spec["override"]}
        listed = subprocess.run([str(python), "-c", "import importlib.metadata as m, json; "
                                 f"print(json.dumps(m.requires({spec['dist']!r}) or []))"],
                                check=True, capture_output=True, text=True).stdout
        keep = [r for r in json.loads(listed) if "extra ==" not in r
                and r.split(";")[0].strip().split("<")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower() not in replaced]
        pip(python, *keep, *spec["override"])



# ----------------------------------------------------------------------------- measuring (child side: stdlib + the tool)


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu() -> float:
    """CPU seconds (user + system) of this process, its threads, its reaped children and the
    processes still running below it (a tool's worker pool)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in descendants(os.getpid()):
        try:
            f = _stat(pid)
            total += sum(int(v) for v in f[11:15]) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith(key)), 0)
    except OSError:
        return 0


def peak_rss_mb() -> float:
    """The largest peak RSS (``VmHWM``) of this process and of any process it ran."""
    kb = max([_status_kb(os.getpid(), "VmHWM:"), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
              *(_status_kb(p, "VmHWM:") for p in descendants(os.getpid()))])
    return kb / 1024


def run_clotclf(slide: str, mode: str, out: str) -> dict:
    """``tile_slides`` into a TileSet folder (pixel cache, index, QC picture, mask, tileset.json).
    The kept tiles are read back from the folder after the clock stops (:func:`read_back`): the
    peers' runs end with their coordinates in memory, this one with them on disk."""
    from clotclf_core.tiling.run import tile_slides
    from clotclf_core.tiling.settings import TileSettings

    folder = Path(slide).parent  # each slide has a folder of its own
    tile_slides(str(folder), out, settings=TileSettings(coords_only=mode == "coords"), threads=1, progress=False)
    return {"read_back": out}


def read_back(out: str) -> dict:
    from clotclf_core.tiling.tileset import TileSet

    ts = TileSet(out)
    idx = ts.index
    boxes = [[int(x), int(y), int(s), int(s)] for x, y, s in zip(idx["x"], idx["y"], idx["size"])]
    rec = next(iter(ts.slides.values()))
    return {"boxes": boxes, "note": f"{rec.get('source')}; {rec.get('mask_from', rec.get('reason', ''))}"}


def run_clotclf_api(slide: str, mode: str, out: str) -> dict:
    """clotclf's Python API ``tile_slide``: the same pipeline, tiles returned in memory and nothing
    written (no pixel cache, index, QC picture or tileset.json), as the peers' runs here."""
    from clotclf_core.slides.open import open_slide
    from clotclf_core.tiling.run import tile_slide
    from clotclf_core.tiling.settings import TileSettings

    with open_slide(slide) as handle:
        pixels, kept, info = tile_slide(handle, TileSettings(coords_only=mode == "coords"))
    size = int(kept[0]["size"]) if kept else 0
    boxes = [[int(r["x"]), int(r["y"]), size, size] for r in kept]
    return {"boxes": boxes, "read": 0 if pixels is None else len(pixels), "note": f"in memory; {info.get('mask_from', '')}"}


def _warm_clotclf() -> None:
    # every module a run imports (a sys.modules diff around one run), as hs2p's warm-up imports hs2p's
    import multiprocessing.synchronize  # noqa: F401

    import cv2  # noqa: F401
    import openslide  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401
    import pandas  # noqa: F401
    import PIL.Image  # noqa: F401
    import PIL.ImageDraw  # noqa: F401
    import tifffile  # noqa: F401
    import tqdm.auto  # noqa: F401

    import imagecodecs._deflate  # noqa: F401  (tifffile's decoder for these deflate TIFFs, imported on first use)
    import imagecodecs._zlib  # noqa: F401

    import clotclf_core.slides.guard  # noqa: F401
    import clotclf_core.slides.manifest  # noqa: F401
    import clotclf_core.slides.tissue  # noqa: F401
    import clotclf_core.tiling.execution  # noqa: F401
    import clotclf_core.tiling.pipeline  # noqa: F401
    import clotclf_core.tiling.qc  # noqa: F401
    import clotclf_core.tiling.writer  # noqa: F401
    import clotclf_core.tiling.run  # noqa: F401
    import clotclf_core.tiling.tileset  # noqa: F401
    from clotclf_core.plugin_manager import get_manager

    get_manager()
    import clotclf_openslide._slide  # noqa: F401  (the built-in plugins' modules load on first use)
    import clotclf_otsu._filter  # noqa: F401
    import clotclf_tifffile._slide  # noqa: F401
    from clotclf_core.tiling.pipeline import blas_controller

    blas_controller()  # once per process, like an import: threadpoolctl lists the loaded libraries (~15 ms)


RUNNERS = {"clotclf": (run_clotclf, _warm_clotclf), "clotclf-api": (run_clotclf_api, _warm_clotclf), **PEER_RUNNERS}


def child(tool: str, mode: str, slide: str, out: str) -> None:
    run, warm = RUNNERS[tool]
    warm()  # imports first: the clock measures the work, not the interpreter's start
    cpu0, t0 = tree_cpu(), time.perf_counter()
    res = run(slide, mode, out)
    res.update(seconds=time.perf_counter() - t0, cpu=tree_cpu() - cpu0, rss_mb=peak_rss_mb(),
               cpu_process=tree_cpu())  # (the whole process: the interpreter's start, the imports and the work)
    if "read_back" in res:  # (after the clock)
        res.update(read_back(res.pop("read_back")))
    if "read_back_hs2p" in res:
        res.update(read_back_hs2p(res.pop("read_back_hs2p")))
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------- running (parent side)


def python_for(tool: str, venvs: Path | None) -> tuple[str | None, str]:
    """The Python that runs ``tool``, or None and why it cannot run here."""
    if tool.startswith("clotclf"):
        return sys.executable, ""
    if tool not in RUNNERS:
        return None, f"not run: no runner for {tool} is written in this script yet"
    venv = VENV_OF.get(tool, tool)
    python = (venvs / venv / "bin" / "python") if venvs else None
    if python is None or not python.exists():
        return None, (f"not run: {venv} {PEERS[venv]['version']} is not installed here "
                      f"({'no --venvs given' if venvs is None else f'no {python}'}; `--install` creates it)")
    return str(python), ""


def run_child(python: str, tool: str, mode: str, slide: Path, timeout: float, max_rss_mb: float) -> dict:
    """One measured run in a fresh process, stopped past ``timeout`` s or ``max_rss_mb`` of RSS (its tree)."""
    out = tempfile.mkdtemp(prefix=f"peers-{tool}-")
    cmd = [python, str(Path(__file__).resolve()), "--child", tool, mode, str(slide), out]
    # output to files, not pipes: a chatty tool (a log line per tile) would fill a pipe nobody reads and hang
    with tempfile.TemporaryFile("w+") as log_out, tempfile.TemporaryFile("w+") as log_err:
        proc = subprocess.Popen(cmd, stdout=log_out, stderr=log_err, text=True, start_new_session=True)
        t0, stopped = time.perf_counter(), ""
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                rss = sum(_status_kb(p, "VmRSS:") for p in [proc.pid, *descendants(proc.pid)]) / 1024
                if rss > max_rss_mb:
                    stopped = f"stopped: RSS {rss / 1024:.1f} GB > --max-rss-gb"
                elif time.perf_counter() - t0 > timeout:
                    stopped = f"stopped after {timeout:.0f} s (--timeout)"
                if stopped:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return {"error": stopped, "seconds": time.perf_counter() - t0}
        finally:
            shutil.rmtree(out, ignore_errors=True)
        log_out.seek(0)
        log_err.seek(0)
        stdout, stderr = log_out.read(), log_err.read()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        last = (stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"failed (exit {proc.returncode}): {last[:200]}"}
    return json.loads(line[len("RESULT "):])


def slide_files(workdir: Path, names: list[str], shapes: list[str]) -> dict[tuple[str, str], Path]:
    """The synthetic slides (generated once, cached in ``workdir``), single-level and pyramidal."""
    from synthetic import GREY_GLASS, WHITE_GLASS, ensure_slide, make_pyramid

    out = {}
    for name in names:
        w, h, seed, glass = SLIDES[name]
        single = ensure_slide(workdir / "single" / name / f"{name}.tif", w, h, seed, GREY_GLASS if glass == "grey" else WHITE_GLASS)
        for shape in shapes:
            if shape == "single":
                out[(name, shape)] = single
            else:
                (workdir / "pyramid" / name).mkdir(parents=True, exist_ok=True)
                out[(name, shape)] = make_pyramid(single, workdir / "pyramid" / name / f"{name}.tif")
    return out


def score(slide: Path, boxes: list) -> dict:
    import numpy as np
    import tifffile
    from synthetic import coverage, tissue_path

    with tifffile.TiffFile(slide) as tif:
        size = (tif.pages[0].imagewidth, tif.pages[0].imagelength)
    return coverage(np.load(tissue_path(slide)), np.asarray(boxes, np.float64).reshape(-1, 4), size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "clotclf-peers", help="synthetic slides (cached)")
    ap.add_argument("--venvs", type=Path, default=None, help="DIR/<peer>/bin/python runs each peer")
    ap.add_argument("--install", action="store_true", help="create the peers' venvs under --venvs and exit")
    ap.add_argument("--tools", nargs="+", default=TOOLS, choices=TOOLS)
    ap.add_argument("--slides", nargs="+", default=list(SLIDES), choices=list(SLIDES))
    ap.add_argument("--shapes", nargs="+", default=["single", "pyramid"], choices=["single", "pyramid"])
    ap.add_argument("--modes", nargs="+", default=["pixels", "coords"], choices=["pixels", "coords"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1500.0)
    ap.add_argument("--max-rss-gb", type=float, default=12.0)
    opts = ap.parse_args()
    if opts.install:
        if opts.venvs is None:
            ap.error("--install needs --venvs DIR")
        install(opts.venvs, sorted({VENV_OF.get(t, t) for t in opts.tools} & set(PEERS)))
        return
    files = slide_files(opts.workdir, opts.slides, opts.shapes)
    runnable, skipped = {}, {}
    for tool in opts.tools:
        python, why = python_for(tool, opts.venvs)
        (runnable.__setitem__(tool, python) if python else skipped.__setitem__(tool, why))
    results: dict[tuple, list[dict]] = {}
    for rnd in range(opts.rounds):
        order = list(runnable)[rnd % max(len(runnable), 1):] + list(runnable)[: rnd % max(len(runnable), 1)]
        for (name, shape), path in files.items():
            for mode in opts.modes:
                for tool in order:
                    res = run_child(runnable[tool], tool, mode, path, opts.timeout, opts.max_rss_gb * 1024)
                    if "boxes" in res:
                        boxes = res.pop("boxes")
                        res.update(score(path, boxes), kept=len(boxes))
                        if mode == "pixels" and res.get("read", len(boxes)) != len(boxes):
                            res["note"] = f"{res.get('note', '')}; only {res['read']} of the {len(boxes)} tiles read"
                    results.setdefault((name, shape, mode, tool), []).append(res)
                    said = res.get("error") or "{:.3f} CPU-s, {:.0f} MB".format(res["cpu"], res["rss_mb"])
                    print(f"round {rnd + 1} {name} {shape} {mode} {tool}: {said}", file=sys.stderr)
    print(render(results, skipped, opts))


def render(results: dict, skipped: dict, opts) -> str:
    med = statistics.median
    lines = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
             f"({platform.platform()}); median of {opts.rounds} round(s), tools alternating; **synthetic** slides.", "",
             "| slide | file | mode | tool | wall s | CPU-s | process CPU-s | peak RSS MB | kept | coverage | glass | note |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for (name, shape, mode, tool), runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            lines.append(f"| {name} | {shape} | {mode} | {tool} | | | | | | | | {runs[0]['error']} |")
            continue
        kept = med([r["kept_area_mpx"] for r in ok])
        n = med([r["kept"] for r in ok])
        lines.append(f"| {name} | {shape} | {mode} | {tool} | {med([r['seconds'] for r in ok]):.2f} | {med([r['cpu'] for r in ok]):.3f} | "
                     f"{med([r['cpu_process'] for r in ok]):.2f} | {med([r['rss_mb'] for r in ok]):.0f} | {n:.0f} | {med([r['coverage'] for r in ok]):.3f} | "
                     f"{med([r['glass'] for r in ok]):.3f} | {ok[0].get('note', '')} (kept area {kept:.0f} Mpx) |")
    for tool, why in skipped.items():
        lines.append(f"| all | | | {tool} | | | | | | | | {why} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        main()

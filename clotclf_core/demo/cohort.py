"""A small synthetic cohort shaped like Mayo Clinic STRIP AI, for demos and end-to-end tests.

``write_demo_cohort(out)`` writes ``out/train.csv`` (the Kaggle columns ``image_id, center_id,
patient_id, image_num, label``, then ``synthetic`` = ``true``: the mark ``clotclf tile`` carries
into the TileSet and training into the model card), ``out/slides/<image_id>.tif``,
``out/README.md`` and, first of all, the marker ``out/.clotclf-demo-cohort.json``: ``--overwrite``
replaces only a folder that holds a demo cohort and nothing foreign (:func:`overwrite_problem`).
Everything is drawn from one seed, so a seed always gives the same pixels.

The cohort, and why:

- 4 centres, each with its own stain tint (H&E optical densities scaled per channel), assigned
  independently of the label (balanced per class), so a model cannot use the tint as a shortcut.
- Patients with 1-3 slides; about 65% CE, like STRIP AI's 72%.
- Files as in real cohorts: mostly single-level tiled deflate TIFFs (like STRIP AI), some
  pyramidal JPEG TIFFs (reduced pages, as OpenSlide reads them), some pyramids in SubIFDs, and
  one stripped TIFF (which OpenSlide refuses), 2000-3000 pixels a side at 0.5 um/pixel.

How each slide is drawn (tissue, clot components, stain, glass, debris) is
:mod:`clotclf_core.demo.paint`; this module plans the cohort (patients, labels, centres, stains,
file layouts) and writes its files.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from clotclf_core import __version__
from clotclf_core.demo.paint import SIDE_RANGE, DemoSlide, draw_textures, render_slide
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import atomic_path, write_text

#: Tiling settings for the demo cohort (``TileSettings`` fields): 224-pixel tiles at 1 um/pixel,
#: overlapping by half, so that each slide gives about 35-100 tissue tiles while staying small.
DEMO_TILING: dict[str, Any] = {"downsample": 2.0, "tile_size": 224, "stride": 112}
KAGGLE_COLUMNS = ("image_id", "center_id", "patient_id", "image_num", "label")
#: the Kaggle columns, then the synthetic mark
MANIFEST_COLUMNS = (*KAGGLE_COLUMNS, "synthetic")
#: written first into a cohort folder: what ``--overwrite`` recognises as a demo cohort
MARKER = ".clotclf-demo-cohort.json"
README_TITLE = "# clotclf demo cohort (synthetic)"
DEFAULT_PATIENTS = 22
MPP = 0.5  # microns per level-0 pixel, written in the TIFF resolution tags
LAYOUTS = ("tiled", "pyramid", "subifd", "stripped")

#: Per-centre stain: optical density multipliers for R, G, B (>1 absorbs more of that channel).
CENTRE_STAINS = (
    (1.00, 1.00, 1.00),  # reference H&E
    (1.30, 1.15, 0.85),  # haematoxylin-heavy: purple
    (0.80, 1.20, 1.05),  # eosin-heavy: magenta-pink
    (0.85, 0.95, 1.35),  # aged / yellowed
)

#: ``--stain-shift S``: centre k's optical density gains are multiplied by ``exp(S * CENTRE_SHIFTS[k])``
#: on top of its tint, so at S = 1 each centre's stain is 15-40 % stronger or weaker per channel than
#: the reference's (a lab whose stain drifts, the confounder stain normalisation is meant to remove).
CENTRE_SHIFTS = (
    (0.35, 0.25, -0.15),  # darker, bluer
    (-0.35, 0.15, 0.30),  # less red absorbed, more blue: towards purple-grey
    (0.20, -0.35, 0.10),  # magenta
    (-0.20, -0.20, -0.30),  # pale, washed out
)
MAX_STAIN_SHIFT = 2.0


# ----------------------------------------------------------------------------- the cohort plan


def plan_cohort(seed: int = 0, n_patients: int = DEFAULT_PATIENTS) -> list[DemoSlide]:
    """Patients, labels, centres, slide sizes and file layouts, deterministic from ``seed``."""
    if seed < 0:
        raise ClotclfError(f"the demo seed must be 0 or more, got --seed {seed}")
    if n_patients < 4:
        raise ClotclfError(f"the demo cohort needs at least 4 patients (2 per class), got --patients {n_patients}")
    rng = np.random.default_rng(seed)
    n_laa = max(2, round(0.35 * n_patients))
    labels = ["CE"] * (n_patients - n_laa) + ["LAA"] * n_laa
    labels = [labels[i] for i in rng.permutation(n_patients)]
    centre_ids = sorted(int(c) for c in rng.choice(np.arange(1, 12), size=len(CENTRE_STAINS), replace=False))
    centres: list[int] = [0] * n_patients
    for label in ("CE", "LAA"):  # deal centres round-robin within each class: tint independent of label
        offset = int(rng.integers(len(centre_ids)))
        members = [i for i, lab in enumerate(labels) if lab == label]
        for j, i in enumerate(members):
            centres[i] = (offset + j) % len(centre_ids)
    patient_ids = [f"{int(v):06x}" for v in rng.choice(16**6, size=n_patients, replace=False)]
    n_slides = rng.choice([1, 2, 3], size=n_patients, p=[0.6, 0.28, 0.12])
    if n_slides.max() == 1:
        n_slides[0] = 2  # always some patients with several slides
    slides = []
    for p in range(n_patients):
        for num in range(int(n_slides[p])):
            if labels[p] == "CE":
                red = float(rng.uniform(0.12, 0.42))
            else:
                red = float(rng.uniform(0.58, 0.88))
            slides.append(
                DemoSlide(
                    image_id=f"{patient_ids[p]}_{num}",
                    center_id=centre_ids[centres[p]],
                    patient_id=patient_ids[p],
                    image_num=num,
                    label=labels[p],
                    width=int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1)),
                    height=int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1)),
                    layout="tiled",
                    red_fraction=red,
                    stain=CENTRE_STAINS[centres[p]],
                    seed=int(rng.integers(2**63)),
                    texture_seed=seed,
                )
            )
    # file layouts independent of the label: one stripped, ~1/4 JPEG pyramids, ~1/6 SubIFD pyramids
    order = rng.permutation(len(slides))
    n_pyr, n_sub = round(len(slides) / 4), round(len(slides) / 6)
    layout_of = {int(order[0]): "stripped"}
    layout_of.update({int(i): "pyramid" for i in order[1 : 1 + n_pyr]})
    layout_of.update({int(i): "subifd" for i in order[1 + n_pyr : 1 + n_pyr + n_sub]})
    slides = [DemoSlide(**{**asdict(s), "layout": layout_of.get(i, "tiled")}) for i, s in enumerate(slides)]
    return sorted(slides, key=lambda s: s.image_id)


def shift_stains(slides: list[DemoSlide], shift: float) -> list[DemoSlide]:
    """``slides`` with each centre's stain pushed ``shift`` along its own direction (:data:`CENTRE_SHIFTS`;
    centres in id order). The shift is the same for both labels, so it is a confounder of the centre only."""
    if not (0.0 <= shift <= MAX_STAIN_SHIFT) or not math.isfinite(shift):
        raise ClotclfError(f"--stain-shift must be between 0 and {MAX_STAIN_SHIFT:g} (1: strong), got {shift}")
    if shift == 0:
        return slides
    ids = sorted({s.center_id for s in slides})
    out = []
    for s in slides:
        direction = CENTRE_SHIFTS[ids.index(s.center_id) % len(CENTRE_SHIFTS)]
        stain = tuple(float(g * math.exp(shift * d)) for g, d in zip(s.stain, direction))
        out.append(DemoSlide(**{**asdict(s), "stain": stain}))
    return out


# ----------------------------------------------------------------------------- files


def _write_tiff(path: Path, pixels: np.ndarray, layout: str) -> None:
    """Write ``pixels`` as a TIFF of the given layout, atomically, with 0.5 um/pixel resolution tags."""
    import tifffile
    from PIL import Image

    common = {
        "photometric": "rgb",
        "resolution": (1e4 / MPP, 1e4 / MPP),
        "resolutionunit": "CENTIMETER",
        "software": f"clotclf {__version__} demo-data",
        "metadata": None,
    }
    deflate = {"compression": "zlib", "compressionargs": {"level": 1}}
    with atomic_path(path, suffix=".tif") as tmp:
        if layout == "tiled":
            tifffile.imwrite(tmp, pixels, tile=(256, 256), description="clotclf synthetic demo slide", **deflate, **common)
        elif layout == "stripped":
            tifffile.imwrite(tmp, pixels, rowsperstrip=32, description="clotclf synthetic demo slide", **deflate, **common)
        else:
            levels = [pixels]
            while max(levels[-1].shape[:2]) > 700:
                levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(2)))
            codec = {"compression": "jpeg", "compressionargs": {"level": 90}} if layout == "pyramid" else deflate
            with tifffile.TiffWriter(tmp, bigtiff=False) as tw:
                sub = {"subifds": len(levels) - 1} if layout == "subifd" else {}
                tw.write(levels[0], tile=(256, 256), description="clotclf synthetic demo slide", **sub, **codec, **common)
                for level in levels[1:]:
                    tw.write(level, tile=(256, 256), subfiletype=1, photometric="rgb", metadata=None, **codec)


def _demo_slide_name(name: str) -> bool:
    """A file a demo cohort's slides/ may hold: ``<6 hex>_<n>.tif`` or an atomic write's temporary."""
    import re

    return bool(re.fullmatch(r"[0-9a-f]{6}_\d+\.tif", name) or (name.startswith(".") and name.endswith(".tmp")))


def overwrite_problem(out: Path) -> str | None:
    """Why ``--overwrite`` must not replace ``out`` (None: it holds a demo cohort and nothing of the user's
    that would be deleted). Only ``slides/``, ``train.csv`` and ``README.md`` are ever replaced."""
    readme = out / "README.md"
    is_demo = (out / MARKER).is_file()
    if not is_demo and readme.is_file():  # a cohort written before the marker existed
        try:
            is_demo = readme.read_text(encoding="utf-8", errors="replace").startswith(README_TITLE)
        except OSError:
            is_demo = False
    if not is_demo:
        return (f"'{out}' does not hold a clotclf demo cohort (no {MARKER}, and no demo README.md), so --overwrite "
                "would delete your own files: choose an empty or new folder for the demo")
    slides = out / "slides"
    if slides.exists() and not slides.is_dir():
        return f"'{slides}' is a file, not the demo's slide folder: move it, or choose another folder"
    foreign = sorted(p.name for p in slides.iterdir() if not _demo_slide_name(p.name)) if slides.is_dir() else []
    if foreign:
        return (f"'{slides}' holds {len(foreign)} file(s) that are not demo slides (e.g. '{foreign[0]}'), which "
                "--overwrite would delete: move them out, or choose another folder for the demo")
    manifest = out / "train.csv"
    if manifest.is_file():
        try:
            header = manifest.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        except OSError:
            header = []
        if not header or not header[0].startswith(",".join(KAGGLE_COLUMNS)):
            return (f"'{manifest}' is not the demo's manifest (its header is {header[0][:60]!r} if any), and "
                    "--overwrite would replace it: move it, or choose another folder for the demo" if header else
                    f"'{manifest}' is not the demo's manifest: move it, or choose another folder for the demo")
    return None


def _clear_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ClotclfError(f"demo output '{out}' is a file, not a folder: choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ClotclfError(
                f"demo output folder '{out}' is not empty: choose an empty or new folder, or pass --overwrite "
                "to replace the demo cohort in it"
            )
        problem = overwrite_problem(out)
        if problem:
            raise ClotclfError(f"demo-data --overwrite refused: {problem}")
        slides = out / "slides"
        if slides.is_dir():
            shutil.rmtree(slides)
        for name in ("train.csv", "README.md", "markers.csv"):
            (out / name).unlink(missing_ok=True)


def _write_marker(out: Path, seed: int, n_patients: int, stain_shift: float = 0.0) -> None:
    import json

    write_text(out / MARKER, json.dumps({"clotclf_demo_cohort": True, "synthetic": True, "seed": seed,
                                         "patients": n_patients, "stain_shift": stain_shift,
                                         "clotclf_version": __version__}) + "\n")


def _estimated_bytes(slides: list[DemoSlide]) -> int:
    """About what the cohort takes on disk (deflate / JPEG TIFFs of these drawings: ~0.45 byte per pixel)."""
    return int(sum(s.width * s.height for s in slides) * 0.45)


def _readme(slides: list[DemoSlide], seed: int, n_patients: int) -> str:
    layouts = {k: sum(s.layout == k for s in slides) for k in LAYOUTS}
    n_ce = sum(s.label == "CE" for s in slides)
    n_centres = len({s.center_id for s in slides})
    return f"""# clotclf demo cohort (synthetic)

**These slides are synthetic.** They are not tissue and not real clots; they only mimic the
layout of the Mayo Clinic STRIP AI data so that clotclf can be demonstrated and tested on a
laptop. Nothing learnt from them says anything about real stroke clots.

Generated by clotclf {__version__}: `clotclf demo-data OUT --seed {seed} --patients {n_patients}`
(`clotclf_core.demo.cohort.write_demo_cohort`); the same seed gives the same pixels.

- `train.csv`: Kaggle STRIP AI columns `image_id, center_id, patient_id, image_num, label`;
  {n_patients} patients, {len(slides)} slides ({n_ce} CE, {len(slides) - n_ce} LAA), {n_centres} centres.
- `slides/<image_id>.tif`: RGB TIFFs, {SIDE_RANGE[0]}-{SIDE_RANGE[1]} px a side, {MPP} um/pixel in the
  resolution tags. Layouts: {layouts['tiled']} single-level tiled deflate (like STRIP AI),
  {layouts['pyramid']} pyramidal JPEG (reduced pages), {layouts['subifd']} pyramidal deflate (SubIFDs),
  {layouts['stripped']} single-level stripped deflate (OpenSlide cannot read it; the tifffile source can).

How a slide is drawn: 1-3 irregular tissue blobs on noisy near-white glass with a few debris
specks. Inside the tissue a smooth random map mixes two components: fibrin/platelet-rich
(pale pink laminar streaks, scattered nuclei) and red-cell-rich (packed red discs with pale
centres). CE slides are mostly fibrin (12-42% red cells), LAA slides mostly red cells
(58-88%), so the label is in the texture, and some tiles of each class resemble the other.
Each centre has its own stain tint, dealt to patients independently of their label.

Suggested tiling (`clotclf_core.demo.cohort.DEMO_TILING`): the slide viewed at 1/{DEMO_TILING['downsample']:g}
(1 um/pixel), tiles of {DEMO_TILING['tile_size']} pixels overlapping by half (stride {DEMO_TILING['stride']}):
about 35-100 tissue tiles per slide (seed 0, otsu filter).

    clotclf tile slides --manifest train.csv --out tiles \\
        --downsample {DEMO_TILING['downsample']:g} --tile-size {DEMO_TILING['tile_size']} --stride {DEMO_TILING['stride']}
"""


def write_demo_cohort(
    out: str | os.PathLike,
    seed: int = 0,
    n_patients: int = DEFAULT_PATIENTS,
    overwrite: bool = False,
    progress: bool = False,
    workers: int | None = None,
    signal: str = "texture",
    stain_shift: float = 0.0,
) -> Path:
    """Write the synthetic cohort into ``out``; return the manifest path ``out/train.csv``.

    Refuses a non-empty ``out`` unless ``overwrite`` (which replaces ``slides/``, ``train.csv``
    and ``README.md`` of a demo cohort and leaves other files alone; a folder that does not hold
    a demo cohort is refused, see :func:`overwrite_problem`). Every file is written atomically and the
    manifest last, so a manifest always describes complete slides. ``progress`` shows a tqdm
    bar; ``workers`` threads draw slides at once (default: the CPU count, at most 4).
    ``signal="sparse"``: the label shows in a few tiles only (:mod:`clotclf_core.demo.sparse`).
    ``stain_shift``: each centre's stain pushed further from the reference (:func:`shift_stains`).
    """
    from clotclf_core.demo import sparse as demo_sparse
    from clotclf_core.plugin.io import write_guard

    if signal not in demo_sparse.SIGNALS:
        raise ClotclfError(f"unknown --signal '{signal}': choose {' or '.join(demo_sparse.SIGNALS)}")
    out = Path(out)
    slides = plan_cohort(seed, n_patients)  # validates n_patients before touching the disk
    if signal == "sparse":
        slides = demo_sparse.plan(slides, seed)
    slides = shift_stains(slides, stain_shift)
    with write_guard("the synthetic demo cohort", out, needed=_estimated_bytes(slides),
                     after="run the same command again with --overwrite"):
        _clear_output(out, overwrite)
        (out / "slides").mkdir(parents=True, exist_ok=True)
        _write_marker(out, seed, n_patients, stain_shift)
        return _write_cohort(out, slides, seed, n_patients, progress, workers, signal, stain_shift)


def _write_cohort(out: Path, slides: list[DemoSlide], seed: int, n_patients: int, progress: bool,
                  workers: int | None, signal: str = "texture", stain_shift: float = 0.0) -> Path:
    """The slides (threads), the README, and the manifest last: a manifest always describes complete slides."""
    from clotclf_core.demo import sparse as demo_sparse
    from clotclf_core.progress import bar

    def make(slide: DemoSlide) -> list[dict[str, Any]]:
        pixels, spots = render_slide(slide), []
        if signal == "sparse":
            pixels, spots = demo_sparse.add_markers(pixels, slide)
        _write_tiff(out / "slides" / f"{slide.image_id}.tif", pixels, slide.layout)
        return spots

    draw_textures(seed)  # the shared textures once, before the threads
    workers = workers or min(4, os.cpu_count() or 1)
    spots: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # numpy, PIL and zlib release the GIL
        for made in bar(pool.map(make, slides), total=len(slides), desc="demo slides", unit="slide", disable=not progress):
            spots += made
    rows = [",".join([*(str(getattr(s, c)) for c in KAGGLE_COLUMNS), "true"]) for s in slides]
    readme = _readme(slides, seed, n_patients)
    if signal == "sparse":
        demo_sparse.write_markers(out, spots)
        readme = demo_sparse.readme(readme, spots)
    if stain_shift:
        readme += (f"\n**Stain shift** (`--stain-shift {stain_shift:g}`): each centre's stain is pushed further from the "
                   "reference, along its own direction (`clotclf_core.demo.cohort.CENTRE_SHIFTS`), the same for both "
                   "labels: a centre confounder for leave-centre-out tests of stain normalisation.\n")
    write_text(out / "README.md", readme)
    manifest = out / "train.csv"
    write_text(manifest, "\n".join([",".join(MANIFEST_COLUMNS), *rows]) + "\n")
    return manifest


def cohort_summary(manifest: str | os.PathLike, seconds: float | None = None) -> dict[str, Any]:
    """Counts for the CLI: patients, slides and labels, centres, size on disk, the demo's tiling."""
    import pandas as pd

    manifest = Path(manifest)
    df = pd.read_csv(manifest, dtype=str)
    slide_dir = manifest.parent / "slides"
    files = [slide_dir / f"{i}.tif" for i in df["image_id"]]
    per_patient = df.groupby("patient_id").size()
    summary = {
        "manifest": str(manifest),
        "slides_dir": str(slide_dir),
        "patients": int(df["patient_id"].nunique()),
        "slides": int(len(df)),
        "slides_per_label": {k: int(v) for k, v in df["label"].value_counts().sort_index().items()},
        "patients_per_label": {k: int(v) for k, v in df.groupby("label")["patient_id"].nunique().items()},
        "patients_with_several_slides": int((per_patient > 1).sum()),
        "centres": sorted(int(c) for c in df["center_id"].unique()),
        "megabytes": round(sum(f.stat().st_size for f in files) / 1e6, 1),
        "tiling": DEMO_TILING,
    }
    if seconds is not None:
        summary["seconds"] = round(seconds, 1)
    return summary


def timed_write(out: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """:func:`write_demo_cohort` plus its :func:`cohort_summary` (with the time taken)."""
    t0 = time.perf_counter()
    manifest = write_demo_cohort(out, **kwargs)
    return cohort_summary(manifest, time.perf_counter() - t0)

"""The synthetic demo cohort: manifest format, determinism, slide files, class signal, CLI."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from clotclf_core.cli.main import cli
from clotclf_core.demo import cohort as demo_data
from clotclf_core.demo.cohort import DEMO_TILING, MANIFEST_COLUMNS, plan_cohort, write_demo_cohort
from clotclf_core.demo.paint import SIDE_RANGE, render_slide
from clotclf_core.plugin import ClotclfError
from clotclf_core.slides.open import find_slide, open_slide

N_PATIENTS = 4  # the smallest cohort: 2 patients per class, 6 slides, every file layout


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_demo_cohort(tmp_path_factory.mktemp("demo") / "cohort", seed=1, n_patients=N_PATIENTS)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_manifest_has_the_kaggle_columns_and_the_synthetic_mark(cohort):
    assert cohort.name == "train.csv"
    assert cohort.read_text().splitlines()[0] == "image_id,center_id,patient_id,image_num,label,synthetic"
    df = pd.read_csv(cohort, dtype=str)
    assert tuple(df.columns) == MANIFEST_COLUMNS and (df["synthetic"] == "true").all()
    assert (df["image_id"] == df["patient_id"] + "_" + df["image_num"]).all()
    assert df["image_id"].is_unique and df["center_id"].str.isdigit().all()
    assert set(df["label"]) == {"CE", "LAA"}
    per_patient = df.groupby("patient_id").agg(labels=("label", "nunique"), centres=("center_id", "nunique"), n=("image_id", "size"))
    assert len(per_patient) == N_PATIENTS
    assert (per_patient["labels"] == 1).all() and (per_patient["centres"] == 1).all()
    assert (per_patient["n"] > 1).any()  # some patients have several slides
    assert ((per_patient["n"] >= 1) & (per_patient["n"] <= 3)).all()
    readme = (cohort.parent / "README.md").read_text()
    assert "synthetic" in readme.lower() and "--seed 1" in readme


def test_every_slide_opens_with_its_layout(cohort):
    df = pd.read_csv(cohort, dtype=str)
    layouts = {s.image_id: s.layout for s in plan_cohort(1, N_PATIENTS)}
    assert set(layouts.values()) == set(demo_data.LAYOUTS)
    lo, hi = SIDE_RANGE
    for image_id in df["image_id"]:
        path = find_slide(cohort.parent / "slides", image_id)
        with open_slide(path) as slide:
            assert lo <= min(slide.dimensions) and max(slide.dimensions) <= hi
            assert slide.mpp == pytest.approx(demo_data.MPP)
            assert (slide.level_count == 1) == (layouts[image_id] in ("tiled", "stripped"))
            thumb = slide.thumbnail(256)
            glass = thumb[thumb.min(axis=-1) > 225]  # near-white background exists and is near white
            assert 0.2 < len(glass) / thumb[..., 0].size < 0.9
            region = slide.read_region(0, 0, 896, 896, DEMO_TILING["downsample"])
            assert region.shape == (448, 448, 3)
        if layouts[image_id] == "stripped":
            with pytest.raises(ClotclfError):
                open_slide(path, "openslide")


def test_same_seed_same_bytes_and_the_cli(cohort, tmp_path):
    out = tmp_path / "again"
    result = CliRunner().invoke(cli, ["demo-data", str(out), "--seed", "1", "--patients", str(N_PATIENTS), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["patients"] == N_PATIENTS and summary["tiling"] == DEMO_TILING
    assert sum(summary["slides_per_label"].values()) == summary["slides"] == len(pd.read_csv(cohort))
    assert _digests(out / "slides") == _digests(cohort.parent / "slides")
    assert (out / "train.csv").read_bytes() == cohort.read_bytes()


def test_different_seed_different_cohort():
    a, b = plan_cohort(1, N_PATIENTS), plan_cohort(2, N_PATIENTS)
    assert [s.image_id for s in a] != [s.image_id for s in b]
    same_plan_other_seed = replace(a[0], seed=a[0].seed + 1, texture_seed=7)
    assert not np.array_equal(render_slide(a[0]), render_slide(same_plan_other_seed))
    assert plan_cohort(1, N_PATIENTS) == a


def test_label_is_in_the_pixels_not_in_the_stain():
    """More red-cell-rich tissue -> more red-disc pixels; centres' stains are dealt independently of labels."""
    base = replace(plan_cohort(0, N_PATIENTS)[0], stain=(1.0, 1.0, 1.0), width=1200, height=1200)

    def disc_share(red_fraction: float) -> float:
        px = render_slide(replace(base, red_fraction=red_fraction)).astype(int)
        r, g, b = px[..., 0], px[..., 1], px[..., 2]
        tissue = (px.max(axis=-1) - px.min(axis=-1)) > 40
        disc_core = (r > 150) & (g < 90) & (b < 110)  # the red discs' dark rims and bodies
        return float(disc_core.sum() / tissue.sum())

    low, high = disc_share(0.2), disc_share(0.8)
    assert high > 2.5 * low > 0, (low, high)
    plan = plan_cohort(0)  # the default 22-patient cohort
    labels_by_centre = {}
    for s in plan:
        labels_by_centre.setdefault(s.center_id, set()).add(s.label)
    assert len(labels_by_centre) == 4 and all(labels == {"CE", "LAA"} for labels in labels_by_centre.values())
    n_ce = sum(s.label == "CE" for s in plan)
    assert 0.55 <= n_ce / len(plan) <= 0.75 and 28 <= len(plan) <= 36


def test_refuses_non_empty_output_and_overwrites_only_a_demo_cohort(tmp_path):
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "slides").mkdir()
    (out / "slides" / "stale_0.tif").write_bytes(b"the user's own slide")
    (out / "train.csv").write_text("image_id,label\nstale_0,CE\n")
    with pytest.raises(ClotclfError, match="not empty.*--overwrite"):
        write_demo_cohort(out, n_patients=N_PATIENTS)
    runner = CliRunner()
    result = runner.invoke(cli, ["demo-data", str(out), "--patients", str(N_PATIENTS)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--overwrite" in result.output
    # not a demo cohort: --overwrite refuses instead of deleting the user's slides and manifest
    result = runner.invoke(cli, ["demo-data", str(out), "--patients", str(N_PATIENTS), "--overwrite", "--quiet"])
    assert result.exit_code == 2 and "does not hold a clotclf demo cohort" in result.output
    assert (out / "slides" / "stale_0.tif").read_bytes() == b"the user's own slide" and (out / "train.csv").is_file()

    demo = tmp_path / "demo"
    first = write_demo_cohort(demo, seed=2, n_patients=N_PATIENTS)
    (demo / "notes.txt").write_text("keep me")
    result = runner.invoke(cli, ["demo-data", str(demo), "--patients", str(N_PATIENTS), "--overwrite", "--quiet"])
    assert result.exit_code == 0 and result.output.strip() == str(first)
    assert (demo / "notes.txt").read_text() == "keep me"  # not ours: left alone
    assert len(list((demo / "slides").iterdir())) == len(pd.read_csv(demo / "train.csv"))
    # a demo cohort the user added a slide of their own to is refused too
    (demo / "slides" / "mine.svs").write_bytes(b"x")
    result = runner.invoke(cli, ["demo-data", str(demo), "--overwrite"])
    assert result.exit_code == 2 and "not demo slides (e.g. 'mine.svs')" in result.output
    assert (demo / "slides" / "mine.svs").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ClotclfError, match="at least 4 patients"):
        write_demo_cohort(tmp_path / "a", n_patients=3)
    assert not (tmp_path / "a").exists()  # nothing written for a bad request
    with pytest.raises(ClotclfError, match="seed"):
        plan_cohort(-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClotclfError, match="is a file"):
        write_demo_cohort(tmp_path / "file")
    result = CliRunner().invoke(cli, ["demo-data", str(tmp_path / "b"), "--patients", "2"])
    assert result.exit_code == 2 and "at least 4 patients" in result.output


def test_demo_tiling_is_valid_tile_settings():
    from clotclf_core.tiling.settings import TileSettings

    settings = TileSettings(**DEMO_TILING)
    assert settings.downsample == 2.0 and settings.tile_size == 224 and settings.stride == 112

"""demo-data --signal sparse: the label lives in a few small spots, nowhere else (synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest

from clotclf_core.demo import sparse as demo_sparse
from clotclf_core.demo.cohort import _clear_output, plan_cohort, write_demo_cohort
from clotclf_core.demo.paint import render_slide


def test_bulk_of_the_tissue_is_independent_of_the_label():
    slides = demo_sparse.plan(plan_cohort(0, 40), 0)
    red = {lab: [s.red_fraction for s in slides if s.label == lab] for lab in ("CE", "LAA")}
    lo, hi = demo_sparse.RED_RANGE
    assert all(lo <= r <= hi for r in red["CE"] + red["LAA"])
    # both classes spread over the whole range (the standard cohort separates them at 0.42 / 0.58)
    assert min(red["LAA"]) < 0.42 and max(red["CE"]) > 0.58
    assert [s.red_fraction for s in demo_sparse.plan(plan_cohort(0, 40), 0)] == [s.red_fraction for s in slides]


def test_spots_only_in_laa_slides_and_only_inside_their_disks():
    slides = demo_sparse.plan(plan_cohort(3, 4), 3)
    laa = next(s for s in slides if s.label == "LAA")
    ce = next(s for s in slides if s.label == "CE")
    base = render_slide(laa)
    drawn, spots = demo_sparse.add_markers(base, laa)
    assert 1 <= len(spots) <= 2 and all(s["image_id"] == laa.image_id for s in spots)
    again, same = demo_sparse.add_markers(render_slide(laa), laa)
    assert same == spots and np.array_equal(again, drawn)  # deterministic from the slide's seed
    changed = np.any(drawn != base, axis=2)
    yy, xx = np.nonzero(changed)
    inside = np.zeros(len(yy), bool)
    for s in spots:
        inside |= (xx - s["x"]) ** 2 + (yy - s["y"]) ** 2 <= (s["radius"] + 1) ** 2
    assert changed.sum() > 0.5 * np.pi * demo_sparse.SPOT_RADIUS ** 2 * len(spots) and inside.all()
    ce_pixels, ce_spots = demo_sparse.add_markers(render_slide(ce), ce)
    assert ce_spots == [] and np.array_equal(ce_pixels, render_slide(ce))


def test_sparse_cohort_files(tmp_path):
    manifest = write_demo_cohort(tmp_path / "demo", seed=1, n_patients=4, signal="sparse")
    standard = plan_cohort(1, 4)
    lines = manifest.read_text().splitlines()
    assert lines[0] == "image_id,center_id,patient_id,image_num,label,synthetic" and len(lines) == len(standard) + 1
    assert [ln.split(",")[-2] for ln in lines[1:]] == [s.label for s in standard]  # same patients and labels
    assert {ln.split(",")[-1] for ln in lines[1:]} == {"true"}  # marked synthetic, as the standard demo
    markers = (tmp_path / "demo" / "markers.csv").read_text().splitlines()
    assert markers[0] == "image_id,x,y,radius,kind"
    laa = {s.image_id for s in standard if s.label == "LAA"}
    assert {m.split(",")[0] for m in markers[1:]} == laa
    readme = (tmp_path / "demo" / "README.md").read_text()
    assert "synthetic" in readme and "--signal sparse" in readme and "Signal: sparse" in readme
    assert "CE slides are mostly fibrin" not in readme
    _clear_output(tmp_path / "demo", overwrite=True)  # --overwrite leaves no stale markers behind
    assert not (tmp_path / "demo" / "markers.csv").exists()


def test_unknown_signal(tmp_path):
    from clotclf_core.plugin import ClotclfError

    with pytest.raises(ClotclfError, match="unknown --signal 'dense'"):
        write_demo_cohort(tmp_path / "d", n_patients=4, signal="dense")
    assert not (tmp_path / "d").exists()

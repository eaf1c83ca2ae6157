"""Plots: each writes one non-empty PNG of the documented size, atomically, and bad inputs fail clearly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clotclf_core.scoring.plots import (
    DPI,
    SIZES,
    PlotError,
    plot_confusion,
    plot_heatmap,
    plot_history,
    plot_roc,
    probability_grid,
)

REAL_SLIDE = Path(__file__).parent / "data" / "cmu_small_region.svs"


def png_size(path, size_in):
    """Assert ``path`` is a PNG of ``size_in`` inches at DPI, alone in its folder (no temp files left)."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (round(size_in[0] * DPI), round(size_in[1] * DPI))
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5, "picture is blank"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.fixture
def history():
    epochs = np.arange(1, 7)
    return pd.DataFrame(
        {
            "epoch": epochs,
            "train_loss": 1 / epochs,
            "val_loss": 1 / epochs + 0.1,
            "lr": 1e-3 * 0.5**epochs,
            "val_patient_balanced_accuracy": [0.5, np.nan, 0.6, np.nan, 0.7, np.nan],  # validated every 2nd epoch
            "note": ["a"] * 6,  # non-numeric: ignored
        }
    )


def test_history_from_dataframe_has_three_panels(tmp_path, history):
    out = plot_history(history, tmp_path / "h" / "history.png")
    w, h = SIZES["history_panel"]
    png_size(out, (3 * w, h))


def test_history_from_csv_with_only_some_columns(tmp_path, history):
    csv = tmp_path / "history.csv"
    history[["epoch", "train_loss"]].to_csv(csv, index=False)
    out = plot_history(csv, tmp_path / "plots" / "history.png")
    png_size(out, SIZES["history_panel"])  # one panel: loss only


def test_history_bad_inputs(tmp_path, history):
    with pytest.raises(PlotError, match="does not exist"):
        plot_history(tmp_path / "missing.csv", tmp_path / "h.png")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(PlotError, match="not a readable CSV"):
        plot_history(tmp_path / "empty.csv", tmp_path / "h.png")
    with pytest.raises(PlotError, match="no numeric column"):
        plot_history(pd.DataFrame({"epoch": [1, 2], "note": ["a", "b"]}), tmp_path / "h.png")
    with pytest.raises(PlotError, match="must end in .png"):
        plot_history(history, tmp_path / "h.jpg")
    assert not list(tmp_path.glob("h.*"))


def test_confusion(tmp_path):
    out = plot_confusion([[30, 5], [7, 0]], ["CE", "LAA"], "patient level", tmp_path / "c" / "confusion.png")
    png_size(out, SIZES["confusion"])
    # a class with no samples (row of zeros) still draws
    plot_confusion(np.array([[3, 1, 0], [0, 0, 0], [1, 0, 2]]), ["A", "B", "C"], "3 classes", tmp_path / "c3.png")
    with pytest.raises(PlotError, match=r"shape \(2, 2\), expected 3x3"):
        plot_confusion([[1, 2], [3, 4]], ["A", "B", "C"], "bad", tmp_path / "bad.png")


@pytest.mark.parametrize("labels", [["CE", "LAA"], ["A", "B", "C"]])
def test_roc(tmp_path, labels):
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(labels), 40)
    y[: len(labels)] = np.arange(len(labels))
    p = rng.dirichlet(np.ones(len(labels)), 40)
    p[np.arange(40), y] += 0.5
    out = plot_roc(y, p, labels, tmp_path / "r" / "roc.png", "validation ROC")
    png_size(out, SIZES["roc"])


def test_roc_with_an_absent_class_draws_an_explanation(tmp_path):
    out = plot_roc([0, 0, 0], [[0.6, 0.4], [0.3, 0.7], [0.9, 0.1]], ["CE", "LAA"], tmp_path / "r" / "roc.png", "fold 3")
    png_size(out, SIZES["roc"])
    with pytest.raises(PlotError):
        plot_roc([0, 1], [[0.5, 0.5]], ["CE", "LAA"], tmp_path / "roc.txt")


def test_probability_grid_by_hand():
    # a 100x50 (W x H) slide seen at 10x5; tile A covers the left half, tile B the right half,
    # tile C the middle column of tile A and tile B: overlaps are averaged
    tiles = np.array([[0, 0, 50], [50, 0, 50], [40, 0, 20]])
    grid = probability_grid(tiles, [0.2, 0.8, 0.5], (100, 50), (5, 10))
    assert grid.shape == (5, 10)
    assert grid[0, 0] == pytest.approx(0.2) and grid[0, 9] == pytest.approx(0.8)
    assert grid[0, 4] == pytest.approx((0.2 + 0.5) / 2) and grid[0, 5] == pytest.approx((0.8 + 0.5) / 2)
    empty = probability_grid(np.array([[0, 0, 10]]), [0.3], (100, 50), (5, 10))
    assert empty[0, 0] == pytest.approx(0.3) and math.isnan(empty[4, 9])  # a tiny tile still covers one pixel


def test_heatmap_on_the_real_slide(tmp_path):
    import openslide
    with openslide.OpenSlide(str(REAL_SLIDE)) as slide:
        width, height = slide.dimensions
        thumb = np.asarray(slide.get_thumbnail((256, 256)).convert("RGB"))
    xs, ys = np.meshgrid(np.arange(0, width - 512, 512), np.arange(0, height - 512, 512))
    tiles = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "size": 512})
    probs = np.linspace(0, 1, len(tiles))
    out = plot_heatmap(thumb, tiles, probs, (width, height), tmp_path / "hm" / "slide.png", "LAA", "cmu_small_region")
    png_size(out, SIZES["heatmap"])


def test_heatmap_bad_inputs(tmp_path):
    thumb = np.full((20, 30, 3), 200, np.uint8)
    tiles = np.array([[0, 0, 100], [100, 0, 100]])
    with pytest.raises(PlotError, match="2 probabilities for 3 tiles"):
        plot_heatmap(thumb, np.vstack([tiles, tiles[:1]]), [0.1, 0.2], (300, 200), tmp_path / "a.png", "LAA", "t")
    with pytest.raises(PlotError, match=r"in \[0, 1\]"):
        plot_heatmap(thumb, tiles, [0.1, 3.0], (300, 200), tmp_path / "a.png", "LAA", "t")
    with pytest.raises(PlotError, match="RGB image"):
        plot_heatmap(np.zeros((20, 30, 5)), tiles, [0.1, 0.2], (300, 200), tmp_path / "a.png", "LAA", "t")
    with pytest.raises(PlotError, match="must be positive"):
        plot_heatmap(thumb, tiles, [0.1, 0.2], (0, 200), tmp_path / "a.png", "LAA", "t")
    with pytest.raises(PlotError, match="lacks column"):
        plot_heatmap(thumb, pd.DataFrame({"x": [0]}), [0.1], (300, 200), tmp_path / "a.png", "LAA", "t")
    assert not (tmp_path / "a.png").exists()
    # no tiles kept: the thumbnail alone, with a note
    out = plot_heatmap(thumb, np.zeros((0, 3)), [], (300, 200), tmp_path / "none" / "n.png", "LAA", "empty slide")
    png_size(out, SIZES["heatmap"])

"""Pictures of a run: training history, confusion matrix, ROC curves, reliability diagrams and slide heatmaps.

Every function draws on its own :class:`matplotlib.figure.Figure` with the Agg canvas (never
pyplot), so plotting works without a display, leaks no global figure state between calls and is
safe in worker processes. Each writes one PNG atomically and returns its path. Sizes are fixed
(``SIZES``, inches at ``DPI``) so pictures of different runs line up side by side.

At about 400 lines this module is at the project's ~400: it is one concern (a run's pictures, every one
drawn through the same figure, size table and atomic PNG writer above), so it stays one module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import atomic_path

DPI = 120
#: figure size in inches per picture; the PNG is ``size * DPI`` pixels
SIZES = {
    "history_panel": (4.4, 3.8),  # one panel; the history picture is 1 to 3 panels wide
    "confusion": (5.2, 4.6),
    "roc": (5.2, 4.8),
    "heatmap": (11.0, 5.4),
    "attention_heatmap": (16.0, 5.4),
}


class PlotError(ClotclfError):
    """Inputs that cannot be drawn (missing history file, shape mismatch, wrong file type)."""


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out


def _check_png(out_png: str | os.PathLike) -> None:
    if Path(out_png).suffix.lower() != ".png":
        raise PlotError(f"plot file '{out_png}' must end in .png (pictures are written as PNG)")


# ----------------------------------------------------------------------------- history


def _history_frame(history: Any):
    import pandas as pd

    if isinstance(history, pd.DataFrame):
        return history
    path = Path(history)
    if not path.is_file():
        raise PlotError(f"training history '{path}' does not exist; it is the history.csv a training run writes")
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise PlotError(f"training history '{path}' is not a readable CSV ({exc})") from None


def _history_panels(frame) -> dict[str, list[str]]:
    """Sort numeric columns into loss / metric / learning-rate panels (tolerant of naming)."""
    skip = {"epoch", "step", "seconds", "time", "elapsed", "wall_s", "fold"}
    numeric = [c for c in frame.columns if c not in skip and frame[c].dtype.kind in "if" and frame[c].notna().any()]
    lr = [c for c in numeric if c == "lr" or c.startswith("lr") or "learning_rate" in c]
    loss = [c for c in numeric if c not in lr and "loss" in c]
    rest = [c for c in numeric if c not in lr and c not in loss]
    # prefer the patient-level balanced accuracy and AUC; at most four lines stay readable
    rank = lambda c: (("patient" not in c), ("balanced_accuracy" not in c), ("auc" not in c), rest.index(c))  # noqa: E731
    metric = sorted(rest, key=rank)[:4]
    return {"loss": loss, "metric": metric, "learning rate": lr}


def plot_history(history: Any, out_png: str | os.PathLike, title: str = "Training history") -> Path:
    """Loss (train / val), validation metrics and learning rate against epoch, one panel each.

    ``history`` is a DataFrame or the path of a ``history.csv``. Columns are recognised by name:
    ``epoch`` (else the row number), anything containing ``loss``, ``lr``/``learning_rate``, and
    other numeric columns as metrics (patient-level balanced accuracy first). Panels without
    columns are left out; a history with no numeric column at all is an error.
    """
    _check_png(out_png)
    frame = _history_frame(history)
    panels = {k: v for k, v in _history_panels(frame).items() if v}
    if not panels:
        raise PlotError(f"training history has no numeric column to plot (columns: {list(frame.columns)})")
    x = frame["epoch"].to_numpy() if "epoch" in frame.columns else np.arange(1, len(frame) + 1)
    w, h = SIZES["history_panel"]
    fig = _figure((w * len(panels), h))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, cols) in zip(axes, panels.items()):
        for col in cols:
            y = frame[col].to_numpy(dtype=float)
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], marker="o" if ok.sum() < 30 else None, ms=3, label=col)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name.capitalize())
        ax.grid(alpha=0.3)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if name == "metric" and all(frame[c].dropna().between(0, 1).all() for c in cols):
            ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, out_png)


# ----------------------------------------------------------------------------- confusion / ROC


def plot_confusion(cm: Any, labels: Sequence[str], title: str, out_png: str | os.PathLike) -> Path:
    """Confusion matrix: each cell shows its count and the share of its true class (row %).

    Colour is the row share, so a minority class (LAA) reads as clearly as the majority.
    """
    _check_png(out_png)
    cm = np.asarray(cm)
    labels = list(labels)
    if cm.ndim != 2 or cm.shape != (len(labels), len(labels)):
        raise PlotError(f"confusion matrix has shape {cm.shape}, expected {len(labels)}x{len(labels)} for labels {labels}")
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    fig = _figure(SIZES["confusion"])
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            pct = f"{100 * share[i, j]:.0f}%" if rows[i, 0] > 0 else "n/a"
            ax.text(j, i, f"{int(cm[i, j])}\n{pct}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=11)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="share of true class")
    return _save(fig, out_png)


def plot_roc(y_true_idx: Any, probs: Any, labels: Sequence[str], out_png: str | os.PathLike, title: str = "ROC") -> Path:
    """ROC curve(s) with AUC in the legend: binary -> the positive (second) label; more classes ->
    one-vs-rest per class. When a class has no samples the curve is undefined and the picture
    says so instead of failing (small validation folds can lack LAA patients)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from clotclf_core.scoring.metrics import _check_inputs, _check_labels, _rescale

    _check_png(out_png)
    labels = _check_labels(labels)
    y, p = _check_inputs(y_true_idx, probs, len(labels))
    p = _rescale(p)
    fig = _figure(SIZES["roc"])
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    absent = [labels[c] for c in range(len(labels)) if not np.any(y == c)]
    if absent:
        ax.text(0.5, 0.5, f"ROC not defined:\nno samples of {', '.join(absent)}", ha="center", va="center", fontsize=12)
    else:
        classes = [1] if len(labels) == 2 else list(range(len(labels)))
        aucs = []
        for c in classes:
            fpr, tpr, _ = roc_curve(y == c, p[:, c])
            aucs.append(roc_auc_score(y == c, p[:, c]))
            ax.plot(fpr, tpr, lw=2, label=f"{labels[c]} vs rest (AUC {aucs[-1]:.3f})")
        if len(classes) > 1:
            title = f"{title}, macro AUC {np.mean(aucs):.3f}"
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{title} (n={len(y)})")
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


def plot_reliability(y_true_idx: Any, curves: dict[str, Any], labels: Sequence[str], out_png: str | os.PathLike,
                     title: str = "Reliability") -> Path:
    """Reliability diagram: observed frequency against mean predicted probability in 10 equal bins
    (two classes: P(second label); more: the top class's confidence), one line per entry of
    ``curves`` (e.g. ``{"before": probs, "after calibration": probs}``), each with its ECE."""
    from clotclf_core.scoring.calibration import expected_calibration_error, reliability
    from clotclf_core.scoring.metrics import _check_inputs, _check_labels

    _check_png(out_png)
    labels = _check_labels(labels)
    fig = _figure(SIZES["roc"])
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    n = 0
    for name, probs in curves.items():
        y, p = _check_inputs(y_true_idx, probs, len(labels))
        predicted, observed = reliability(y, p)
        ax.plot(predicted, observed, marker="o", lw=2, label=f"{name} (ECE {expected_calibration_error(y, p):.3f})")
        n = len(y)
    what = f"P({labels[1]})" if len(labels) == 2 else "top-class confidence"
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(f"mean predicted {what}")
    ax.set_ylabel("observed frequency" if len(labels) == 2 else "observed accuracy")
    ax.set_title(f"{title} (n={n})")
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


# ----------------------------------------------------------------------------- heatmap


def _tile_array(tiles: Any) -> np.ndarray:
    if hasattr(tiles, "columns"):  # a DataFrame with x, y, size columns (the TileSet index)
        missing = [c for c in ("x", "y", "size") if c not in tiles.columns]
        if missing:
            raise PlotError(f"tile table lacks column(s) {missing}; it needs x, y, size in level-0 pixels")
        tiles = tiles[["x", "y", "size"]].to_numpy()
    arr = np.asarray(tiles, dtype=np.float64).reshape(-1, 3) if len(tiles) else np.zeros((0, 3))
    return arr


def probability_grid(tiles: Any, probs: Any, slide_dims: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Mean tile probability per pixel of a ``shape`` = (height, width) view of the slide; NaN where
    no tile lies. ``tiles`` are (x, y, size) in level-0 pixels of a slide ``slide_dims`` = (W, H)."""
    tiles = _tile_array(tiles)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if len(probs) != len(tiles):
        raise PlotError(f"{len(probs)} probabilities for {len(tiles)} tiles; pass one probability per tile")
    if len(probs) and (not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1):
        raise PlotError("tile probabilities must lie in [0, 1]; pass the probability of one class, not logits")
    width, height = slide_dims
    if width <= 0 or height <= 0:
        raise PlotError(f"slide dimensions {slide_dims} must be positive (width, height) in level-0 pixels")
    h, w = shape
    sx, sy = w / width, h / height
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    for (x, y, size), prob in zip(tiles, probs):
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = max(x0 + 1, int(np.ceil((x + size) * sx))), max(y0 + 1, int(np.ceil((y + size) * sy)))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 > x0 and y1 > y0:
            total[y0:y1, x0:x1] += prob
            count[y0:y1, x0:x1] += 1
    return np.divide(total, count, out=np.full((h, w), np.nan), where=count > 0)


#: longest side a heatmap's thumbnail is drawn at: a panel is about this many pixels wide, so a larger
#: one only costs matplotlib a resampling per panel
HEATMAP_SIDE = 640


def _thumbnail(thumbnail_rgb: Any) -> np.ndarray:
    """A heatmap's thumbnail as (H, W) grey or (H, W, 3) RGB (an alpha channel dropped), at most
    :data:`HEATMAP_SIDE` a side (area-averaged), else PlotError."""
    thumb = np.asarray(thumbnail_rgb)
    if thumb.ndim == 3 and thumb.shape[2] == 4:
        thumb = thumb[..., :3]
    if not (thumb.ndim == 2 or (thumb.ndim == 3 and thumb.shape[2] == 3)) or min(thumb.shape[:2]) < 1:
        raise PlotError(f"thumbnail must be an RGB image (height, width, 3), got shape {thumb.shape}")
    scale = HEATMAP_SIDE / max(thumb.shape[:2])
    if scale < 1:
        import cv2

        size = (max(1, round(thumb.shape[1] * scale)), max(1, round(thumb.shape[0] * scale)))
        thumb = cv2.resize(np.ascontiguousarray(thumb), size, interpolation=cv2.INTER_AREA)
    return thumb


def scale_bar_length(span: float) -> float:
    """A round length (1, 2 or 5 x 10^k) near a fifth of ``span``: a scale bar that reads at a glance."""
    if not span > 0:
        return 1.0
    target = span / 5
    k = np.floor(np.log10(target))
    return float(min((m * 10**k for m in (1, 2, 5, 10)), key=lambda v: abs(np.log(v / target))))


def _length_label(length: float, unit: str) -> str:
    if unit == "µm" and length >= 1000:
        return f"{length / 1000:g} mm"
    return f"{length:,.0f} {unit}" if length >= 1 else f"{length:g} {unit}"


def _draw_slide(axes: Any, thumb: np.ndarray, slide_dims: tuple[int, int], mpp: float | None = None) -> list[float]:
    """The thumbnail under every panel of a heatmap, its axes in µm when the slide records its
    microns per pixel (``mpp``, level 0), else in level-0 pixels, and a scale bar in the corner of
    each panel. Returns the image extent the panels' overlays must use."""
    from matplotlib.offsetbox import AnchoredText
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    unit = "µm" if mpp else "level-0 px"
    width, height = (v * (mpp or 1.0) for v in slide_dims)
    extent = [0.0, float(width), float(height), 0.0]
    length = scale_bar_length(width)
    for ax in axes:
        ax.imshow(thumb, cmap="gray" if thumb.ndim == 2 else None, extent=extent)
        ax.set_xlabel(f"x ({unit})")
        ax.set_ylabel(f"y ({unit})")
        ax.tick_params(labelsize=7)
        ax.add_artist(AnchoredSizeBar(ax.transData, length, _length_label(length, unit), "lower right", pad=0.4,
                                      color="black", frameon=True, size_vertical=height / 150, sep=3))
        if not mpp:
            ax.add_artist(AnchoredText("no µm: the slide records no mpp", loc="upper right", prop={"size": 7}))
    return extent


def plot_heatmap(
    thumbnail_rgb: Any,
    tiles: Any,
    probs: Any,
    slide_dims: tuple[int, int],
    out_png: str | os.PathLike,
    label_name: str,
    title: str,
    mpp: float | None = None,
    of: str = "",
    background: str = "slide",
) -> Path:
    """The slide thumbnail beside the same thumbnail overlaid with each tile's P(``label_name``).

    ``tiles``: (N, 3) array of x, y, size in level-0 pixels (or a DataFrame with those columns);
    ``probs``: (N,) probabilities of ``label_name``; ``slide_dims``: level-0 (width, height);
    ``mpp``: level-0 microns per pixel (axes and scale bar in µm), else pixels; ``of``: whose
    probabilities (the models an ensemble's panel averages), shown under the panel's title;
    ``background``: what the thumbnail is (``slide``, or e.g. ``tissue mask`` when the slide was not read).
    Overlapping tiles are averaged. The colour scale is fixed to [0, 1] so heatmaps compare.
    """
    _check_png(out_png)
    thumb = _thumbnail(thumbnail_rgb)
    grid = probability_grid(tiles, probs, slide_dims, thumb.shape[:2])
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    fig = _figure(SIZES["heatmap"])
    left, right = fig.subplots(1, 2)
    extent = _draw_slide((left, right), thumb, slide_dims, mpp)
    left.set_title(background)
    im = right.imshow(np.ma.masked_invalid(grid), cmap="coolwarm", vmin=0, vmax=1, alpha=0.6, interpolation="nearest",
                      extent=extent)
    summary = f"{len(probs)} tiles, mean P({label_name}) = {probs.mean():.2f}" if len(probs) else "no tiles kept"
    right.set_title(f"P({label_name}) per tile: {summary}" + (f"\n{of}" if of else ""), fontsize=10)
    fig.colorbar(im, ax=right, label=f"P({label_name})", shrink=0.85)
    fig.suptitle(title)
    return _save(fig, out_png)


def plot_attention_heatmap(
    thumbnail_rgb: Any,
    tiles: Any,
    probs: Any,
    attention: Any,
    slide_dims: tuple[int, int],
    out_png: str | os.PathLike,
    label_name: str,
    title: str,
    attention_of: str = "",
    mpp: float | None = None,
    of: str = "",
    background: str = "slide",
) -> Path:
    """The slide, each tile's P(``label_name``) and each tile's attention weight, side by side.

    ``attention`` (N,) are a MIL model's weights over the slide's tiles (they sum to 1); drawn
    relative to the slide's largest weight (1 = the tile attended most), so slides compare by
    where the model looked, not by their tile counts. The uniform weight 1/N is named in the title.
    ``mpp``, ``of`` and ``background`` as in :func:`plot_heatmap`.
    """
    _check_png(out_png)
    thumb = _thumbnail(thumbnail_rgb)
    attention = np.asarray(attention, dtype=np.float64).reshape(-1)
    if len(attention) and (not np.all(np.isfinite(attention)) or attention.min() < 0):
        raise PlotError("attention weights must be finite and non-negative (a softmax over the slide's tiles)")
    relative = attention / attention.max() if len(attention) and attention.max() > 0 else attention
    prob_grid = probability_grid(tiles, probs, slide_dims, thumb.shape[:2])
    att_grid = probability_grid(tiles, relative, slide_dims, thumb.shape[:2])
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    fig = _figure(SIZES["attention_heatmap"])
    left, middle, right = fig.subplots(1, 3)
    extent = _draw_slide((left, middle, right), thumb, slide_dims, mpp)
    left.set_title(background)
    im = middle.imshow(np.ma.masked_invalid(prob_grid), cmap="coolwarm", vmin=0, vmax=1, alpha=0.6, interpolation="nearest",
                       extent=extent)
    middle.set_title(f"P({label_name}) per tile" + (f": mean {probs.mean():.2f}" if len(probs) else "")
                     + (f"\n{of}" if of else ""), fontsize=10)
    fig.colorbar(im, ax=middle, label=f"P({label_name})", shrink=0.85)
    im = right.imshow(np.ma.masked_invalid(att_grid), cmap="magma", vmin=0, vmax=1, alpha=0.7, interpolation="nearest",
                      extent=extent)
    top = f"\nlargest {attention.max():.3f}, uniform 1/{len(attention)} = {1 / len(attention):.3f}" if len(attention) else ""
    right.set_title(f"attention{(' (' + attention_of + ')') if attention_of else ''}{top}")
    fig.colorbar(im, ax=right, label="attention / the slide's largest", shrink=0.85)
    fig.suptitle(title)
    return _save(fig, out_png)

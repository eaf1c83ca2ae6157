"""``report.html``: one self-contained page per ``evaluate`` and ``predict`` run that a colleague can
open from a shared folder or an e-mail — no script, no external resource (stylesheet inline, every
picture a ``data:`` URI), every text from the data escaped.

Sections, each left out when there is nothing for it: the headline (with its interval when the
headline record carries one, and the 0.693 baseline beside it), the metrics, the per-patient table,
QC pictures and heatmaps of some slides (scaled down; the full-size files sit beside the report),
and the run's plots (the calibration plot first when there is one).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clotclf_core.plugin.io import write_text
from clotclf_core.scoring.headline import headline_sentence

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: slides whose pictures go into a report (the files of all of them are beside it)
MAX_SLIDES = 24
#: longest side of a picture in the report, in pixels, by kind
SIDES = {"qc": 360, "heatmap": 1100, "plot": 640}
#: the headline metrics, in the order shown, and how they read
HEADLINE_METRICS = (("weighted_log_loss", "patient-level weighted log loss (the competition metric; lower is better)"),
                    ("balanced_accuracy", "balanced accuracy"), ("roc_auc", "ROC AUC"), ("accuracy", "accuracy"))

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#1d1d1f;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin:0 0 12px}.headline{background:#f3f6fb;border-left:4px solid #3b4cc0;padding:10px 14px}
.synthetic{background:#fff4e5;border-left:4px solid #e68a00;padding:8px 14px;font-weight:600}
.big{font-size:20px;font-weight:600}table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f5f5f7}td.n{text-align:right;
font-variant-numeric:tabular-nums}.gallery{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}
figcaption{font-size:12px;color:#555;max-width:1100px}img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#555;font-size:13px}
"""


@dataclass
class Picture:
    caption: str
    path: Path
    kind: str = "plot"  #: a key of :data:`SIDES`


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(path: Path, max_side: int, photo: bool = False) -> str | None:
    """A picture as a ``data:`` URI, scaled down to ``max_side``: a PNG, or a JPEG for ``photo``s
    (slide thumbnails under heatmaps, QC pictures: a tenth of the bytes); None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if max(img.size) > max_side:
                scale = max_side / max(img.size)
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85) if photo else img.save(buf, format="PNG", optimize=True)
    except (OSError, ValueError):
        return None
    return f"data:image/{'jpeg' if photo else 'png'};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def headline_interval(h: dict[str, Any], metric: str) -> tuple[float, float, str] | None:
    """``(low, high, how)`` of ``metric`` when the headline record carries an interval for it:
    ``h["intervals"][metric]`` or ``h[f"{metric}_ci"]`` / ``h[f"{metric}_interval"]``, each either
    ``[low, high]`` or ``{"low", "high"[, "level", "method"]}`` (``lo`` / ``hi`` accepted)."""
    found = (h.get("intervals") or {}).get(metric) if isinstance(h.get("intervals"), dict) else None
    for key in (f"{metric}_ci", f"{metric}_interval"):
        found = found if found is not None else h.get(key)
    if isinstance(found, (list, tuple)) and len(found) == 2:
        low, high, how = found[0], found[1], ""
    elif isinstance(found, dict):
        low, high = found.get("low", found.get("lo")), found.get("high", found.get("hi"))
        level, method = found.get("level"), found.get("method")
        how = " ".join(str(x) for x in ((f"{float(level):.0%}" if isinstance(level, (int, float)) else level), method) if x)
    else:
        return None
    try:
        return float(low), float(high), how or str(h.get("interval_method") or "")
    except (TypeError, ValueError):
        return None


def headline_html(h: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    rows = []
    for metric, what in HEADLINE_METRICS:
        if metric not in h:
            continue
        ci = headline_interval(h, metric)
        interval = f" <span class='note'>({esc(ci[2] or 'interval')}: {ci[0]:.3f} to {ci[1]:.3f})</span>" if ci else ""
        extra = (f" <span class='note'>(equal probabilities for every patient: {h['baseline_weighted_log_loss']:.3f})</span>"
                 if metric == "weighted_log_loss" and h.get("baseline_weighted_log_loss") is not None else "")
        rows.append(f"<tr><th>{esc(what)}</th><td class='n'>{f(h.get(metric))}</td><td>{interval}{extra}</td></tr>")
    synthetic = ("<p class='synthetic'>SYNTHETIC DATA: these numbers say nothing about real clots.</p>"
                 if h.get("synthetic") else "")
    main = h.get("weighted_log_loss")
    return (f"{synthetic}<div class='headline'><p>{esc(headline_sentence(h))}</p>"
            f"<p class='big'>{f(main)} <span class='note'>weighted log loss, n = {esc(h.get('n_patients'))} patients"
            "</span></p>"
            f"<table>{''.join(rows)}</table></div>")


def _cell(v: Any) -> str:
    import numpy as np
    import pandas as pd

    if v is None or (np.ndim(v) == 0 and not isinstance(v, str) and pd.isna(v)):
        return "<td></td>"
    if isinstance(v, (float, np.floating)):
        return f"<td class='n'>{v:.4f}</td>"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"<td class='n'>{v}</td>"
    return f"<td>{esc(v)}</td>"


def table_html(frame: "pd.DataFrame", caption: str = "", max_rows: int = 2000) -> str:
    shown = frame.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in shown.itertuples(index=False))
    more = f"<p class='note'>{len(frame) - max_rows} more rows in the CSV beside this report.</p>" if len(frame) > max_rows else ""
    cap = f"<caption class='note'>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def gallery_html(pictures: Sequence[Picture]) -> str:
    """The pictures side by side, wrapping (nothing at all for none)."""
    if not pictures:
        return ""
    items = []
    for p in pictures:
        uri = data_uri(p.path, SIDES.get(p.kind, 640), photo=p.kind in ("qc", "heatmap"))
        if uri is None:
            items.append(f"<figure><figcaption>{esc(p.caption)}: the picture could not be read</figcaption></figure>")
            continue
        items.append(f"<figure><img src='{uri}' alt='{esc(p.caption)}'><figcaption>{esc(p.caption)}</figcaption></figure>")
    return f"<div class='gallery'>{''.join(items)}</div>"


#: what the QC pictures show (tiling's drawing, see :mod:`clotclf_core.tiling.qc`)
QC_LEGEND = ("Blue outline: the tissue mask; green: kept tiles; other colours: tiles a filter rejected; grey-blue "
             "hatching: areas never decoded (glass skipped by the byte-count prescreen), not a slide artefact.")


def qc_html(pictures: Sequence[Picture]) -> str:
    """The tiling QC pictures with their legend (nothing when there are none)."""
    return gallery_html(pictures) + notes_html([QC_LEGEND]) if pictures else ""


def notes_html(notes: Sequence[str]) -> str:
    return "".join(f"<p class='note'>{esc(n)}</p>" for n in notes if n)


def plot_pictures(plots_dir: Path) -> list[Picture]:
    """The PNGs of a run's ``plots/`` folder, calibration / reliability diagrams first."""
    if not plots_dir.is_dir():
        return []
    files = sorted(plots_dir.glob("*.png"))
    first = [p for p in files if "calibration" in p.name or "reliability" in p.name]
    return [Picture(p.stem.replace("_", " "), p) for p in first + [p for p in files if p not in first]]


def render(title: str, subtitle: Sequence[str], sections: Sequence[tuple[str, str]]) -> str:
    """The page: ``sections`` are (heading, HTML body) pairs, bodies already escaped."""
    subs = "".join(f"<p class='sub'>{esc(s)}</p>" for s in subtitle if s)
    body = "".join(f"<section><h2>{esc(h)}</h2>{b}</section>" for h, b in sections if b)
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
            f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>{subs}{body}</body></html>\n")


def write_report(path: Path, title: str, subtitle: Sequence[str], sections: Sequence[tuple[str, str]]) -> Path:
    write_text(path, render(title, subtitle, sections))
    return path

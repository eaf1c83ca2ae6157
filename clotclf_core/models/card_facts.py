"""What a model card says about a run, gathered from what the run recorded (no formatting here).

- ``config`` is ``config.json``'s content: ``model`` (backbone, head, labels, input size), and when
  present ``name``, ``license``, ``data`` (``dataset`` name, ``synthetic`` flag, counts), ``split``
  (strategy, folds, fold, seed, patients / slides per side) and ``training`` (or ``train``);
- ``metrics`` is ``metrics.json``: :func:`clotclf_core.scoring.metrics.evaluate`'s ``{"tile", "slide",
  "patient"}``, possibly under ``val`` / ``validation``, and held-out results under ``test``,
  ``test_ensemble`` or ``oof``; ``headline`` (see :mod:`clotclf_core.training.report`) names the
  one the card leads with;
- ``extra`` overrides or adds ``name``, ``license``, ``dataset``, ``synthetic``, ``repo_id``, ``notes``.

:mod:`clotclf_core.models.card` turns these facts into the card's metadata,
:mod:`clotclf_core.models.card_text` into its Markdown body.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from clotclf_core import __version__

#: held-out results a run may record, most honest first: (metrics.json key, model-index split, title)
HELD_OUT = [
    ("test", "test", "Held-out test patients"),
    ("test_ensemble", "test", "Held-out test patients, mean of the fold models"),
    ("oof", "out-of-fold", "Out-of-fold patients"),
]
VAL_TITLE = "Validation patients (what early stopping saw: optimistic)"


def number(entry: Any) -> float | None:
    """A plain number, or the mean of a summarise_folds entry; None when undefined."""
    if isinstance(entry, dict):
        entry = entry.get("mean")
    if isinstance(entry, bool) or entry is None:
        return None
    try:
        value = float(entry)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _section(config: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        value = config.get(name)
        if isinstance(value, dict):
            return value
    return {}


def validation_levels(metrics: dict[str, Any]) -> dict[str, Any]:
    """The validation ``{level: metrics}`` dict, at top level or under ``val`` / ``validation``."""
    for candidate in (metrics, metrics.get("val"), metrics.get("validation")):
        if isinstance(candidate, dict) and isinstance(candidate.get("patient"), dict):
            return candidate
    return {}


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The result a card leads with: ``metrics["headline"]["on"]`` when recorded, else the first
    held-out result present (test, test ensemble, out-of-fold), else validation.

    Returns ``{"key", "split", "title", "levels", "what", "record", "raw_levels"}``: the metrics.json
    key, the model-index split, the section title, the ``{level: metrics}`` dict (after the run's
    calibration / clipping when it has one: ``<key>_calibrated``, what ``predict`` outputs), the
    recorded description (or None), the recorded headline and the levels before post-processing (or None)."""
    recorded = metrics.get("headline") if isinstance(metrics.get("headline"), dict) else {}
    keys = [recorded.get("on")] + [k for k, _, _ in HELD_OUT]
    found = None
    for key in keys:
        levels = metrics.get(key) if key else None
        if key != "val" and isinstance(levels, dict) and isinstance(levels.get("patient"), dict):
            split, title = next(((s, t) for k, s, t in HELD_OUT if k == key), ("test", str(key)))
            found = {"key": key, "split": split, "title": title, "levels": levels}
            break
    if found is None:
        found = {"key": "val", "split": "validation", "title": VAL_TITLE, "levels": validation_levels(metrics)}
    after = metrics.get(f"{found['key']}_calibrated")
    raw = None
    if isinstance(after, dict) and isinstance(after.get("patient"), dict):
        raw, found["levels"] = found["levels"], after
    return {**found, "what": recorded.get("what"), "record": recorded, "raw_levels": raw}


def describe(config: dict[str, Any], extra: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Everything the card says about the run, gathered (and defaulted) in one place.

    ``config["model"]`` must be a dict (:mod:`clotclf_core.models.card` checks it first)."""
    model = config["model"]
    data = _section(config, "data", "dataset_info")
    dataset = extra.get("dataset") or data.get("dataset") or data.get("name")
    if not dataset and isinstance(config.get("dataset"), str):
        dataset = config["dataset"]
    dataset = str(dataset or "unspecified dataset")
    synthetic = extra.get("synthetic", data.get("synthetic"))
    if synthetic is None:
        synthetic = bool(re.search(r"synthetic|demo", dataset, re.IGNORECASE))
    return {
        "name": str(extra.get("name") or config.get("name") or run_dir.name),
        "repo_id": extra.get("repo_id"),
        "license": str(extra.get("license") or config.get("license") or "other"),
        "model": model,
        "labels": list(model.get("labels") or ["CE", "LAA"]),
        "dataset": dataset,
        "synthetic": bool(synthetic),
        "data": data,
        "split": _section(config, "split"),
        "training": _section(config, "training", "train"),
        "version": config.get("clotclf_version", __version__),
        "notes": extra.get("notes"),
    }


"""A cross-validation run (``clotclf train --fold all``) pushed as one model: the ensemble of its folds.

The run folder is read by the core's one reader, :func:`clotclf_core.models.runs.fold_runs`
(which ``predict`` and ``evaluate`` use too). What is published::

    config.json            {"kind": "fold_ensemble", "folds": ["fold_0", ...], "n_folds", "labels",
                            "ensemble", "weights_sha256"}   (no model of its own)
    fold_<k>/model.safetensors, fold_<k>/config.json, fold_<k>/metrics.json
                           each fold's run directory, checked and redacted like a single run's push
    README.md, metrics.json, plots/*   the cross-validation summary (held-out headline first)

``weights_sha256`` of the root is the sha256 of the folds' own ``weights_sha256`` values, one per
line in fold order: one string that names the ensemble's exact weights. A pull checks every fold
like a single model (hashes, config builds) and keeps the same layout, so the pulled folder is
read by the same reader. No timm export: timm builds one trunk (push a fold's folder for that).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from clotclf_core.models.runs import FOLD_ENSEMBLE_KIND
from clotclf_core.plugin import CONFIG_NAME, WEIGHTS_NAME

from .card import card_for_push
from .errors import RegistryError
from .layout import CARD_NAME, METRICS_NAME, run_files
from .redact import redact_run
from .verify import check_run_dir

ENSEMBLE_NOTE = "mean of the fold models' class probabilities, equal weights (as --fold all scores its test patients)"


def ensemble_digest(digests: list[str]) -> str:
    return hashlib.sha256("\n".join(digests).encode("utf-8")).hexdigest()


def publishable_ensemble(run: Path, members: list[Path], repo_id: str, include_split: bool = False,
                         require_metrics: bool = True) -> tuple[list[tuple[str, Path | bytes]], Any, dict[str, Any]]:
    """The files a push of the cross-validation folder ``run`` uploads, the root's redaction, and
    the first fold's redacted config (what the card and the registry metadata describe)."""
    out: list[tuple[str, Path | bytes]] = []
    digests, first = [], None
    for fold in members:
        config = check_run_dir(fold, require_metrics=False)
        texts = {METRICS_NAME: (fold / METRICS_NAME).read_bytes()} if (fold / METRICS_NAME).is_file() else {}
        red = redact_run(fold, config, texts, include_split=include_split)
        out.append((f"{fold.name}/{CONFIG_NAME}", (json.dumps(red.config, indent=2) + "\n").encode("utf-8")))
        out.append((f"{fold.name}/{WEIGHTS_NAME}", fold / WEIGHTS_NAME))
        out += [(f"{fold.name}/{name}", data) for name, data in red.texts.items()]
        digests.append(str(config["weights_sha256"]))
        first = first or red.config
    files = dict(run_files(run, include_split=False))  # README.md, metrics.json, plots/* of the summary
    if require_metrics and METRICS_NAME not in files:
        raise RegistryError(f"cannot push '{run}': the cross-validation summary has no {METRICS_NAME}; finish the training "
                            "(--resume), or pass --no-metrics")
    texts = {METRICS_NAME: files[METRICS_NAME].read_bytes()} if METRICS_NAME in files else {}
    try:
        metrics = json.loads(texts.get(METRICS_NAME, b"{}"))
    except ValueError:
        metrics = {}
    fold0 = json.loads((members[0] / CONFIG_NAME).read_text(encoding="utf-8"))

    def card(redacted: dict[str, Any]) -> dict[str, bytes]:
        return {CARD_NAME: card_for_push(run, redacted | {"ensemble_of_folds": len(members)}, metrics, repo_id).encode("utf-8")}

    root = redact_run(run, fold0, texts, include_split=include_split, more_texts=card)
    model = first.get("model") if isinstance(first, dict) else {}
    config = {"kind": FOLD_ENSEMBLE_KIND, "folds": [m.name for m in members], "n_folds": len(members),
              "labels": (model or {}).get("labels"), "ensemble": ENSEMBLE_NOTE, "clotclf_version": fold0.get("clotclf_version"),
              "weights_sha256": ensemble_digest(digests)}
    out.append((CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode("utf-8")))
    out += [(name, data) for name, data in root.texts.items()]
    out += [(name, path) for name, path in files.items() if name not in (CARD_NAME, METRICS_NAME)]
    return sorted(out, key=lambda f: f[0]), root, first or {}

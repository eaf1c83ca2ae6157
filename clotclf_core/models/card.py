"""The model card: a run directory's README.md, in Hugging Face model-card format.

The card is YAML front matter (``library_name``, ``tags``, ``license``, ``metrics`` and a
``model-index`` with the patient-level results of the run's *held-out* patients — test, else
out-of-fold, else validation, the split named — so the Hub and ``clotclf list-models`` show the
honest number) followed by a Markdown body a person reads before trusting the model:
what data, which split, the results, the training settings, how to use it, and its limits.

The card is written from what the run already recorded, never from new computation:

- ``config`` is ``config.json``'s content: ``model`` (backbone, head, labels, input size), and when
  present ``name``, ``license``, ``data`` (``dataset`` name, ``synthetic`` flag, counts), ``split``
  (strategy, folds, fold, seed, patients / slides per side) and ``training`` (or ``train``);
- ``metrics`` is ``metrics.json``: :func:`clotclf_core.scoring.metrics.evaluate`'s ``{"tile", "slide",
  "patient"}``, possibly under ``val`` / ``validation``, and held-out results under ``test``,
  ``test_ensemble`` or ``oof``; ``headline`` (see :mod:`clotclf_core.training.report`) names the
  one the card leads with. The Results section starts with it (n, the STRIP AI weighted log
  loss, the constant-prediction baseline beside it), then the other results, validation last and
  labelled as what early stopping saw; a ``cv`` entry from
  :func:`clotclf_core.scoring.metrics.summarise_folds` adds a cross-validation table;
- ``extra`` overrides or adds ``name``, ``license``, ``dataset``, ``synthetic``, ``repo_id``, ``notes``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from clotclf_core import __version__
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import write_text

CARD_NAME = "README.md"
BASE_TAGS = ["histopathology", "stroke", "whole-slide-image", "clotclf"]
#: (metric key, model-index type, readable name) of the headline results, best-known first
HEADLINE = [
    ("weighted_log_loss", "weighted_log_loss", "Patient-level weighted log loss (STRIP AI metric, lower is better)"),
    ("balanced_accuracy", "balanced_accuracy", "Patient-level balanced accuracy"),
    ("roc_auc", "roc_auc", "Patient-level ROC AUC"),
]
#: rows of the results tables
RESULT_ROWS = [
    ("n", "samples"),
    ("weighted_log_loss", "weighted log loss (STRIP AI) ↓"),
    ("log_loss", "log loss ↓"),
    ("balanced_accuracy", "balanced accuracy"),
    ("accuracy", "accuracy"),
    ("roc_auc", "ROC AUC"),
    ("f1_macro", "macro F1"),
]
LEVEL_ORDER = ("patient", "slide", "tile")


class ModelCardError(ClotclfError):
    """A model card that cannot be written or parsed."""


# ----------------------------------------------------------------------------- reading the run


def _section(config: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        value = config.get(name)
        if isinstance(value, dict):
            return value
    return {}


def _levels(metrics: dict[str, Any]) -> dict[str, Any]:
    """The validation ``{level: metrics}`` dict, at top level or under ``val`` / ``validation``."""
    for candidate in (metrics, metrics.get("val"), metrics.get("validation")):
        if isinstance(candidate, dict) and isinstance(candidate.get("patient"), dict):
            return candidate
    return {}


#: held-out results a run may record, most honest first: (metrics.json key, model-index split, title)
HELD_OUT = [
    ("test", "test", "Held-out test patients"),
    ("test_ensemble", "test", "Held-out test patients, mean of the fold models"),
    ("oof", "out-of-fold", "Out-of-fold patients"),
]
VAL_TITLE = "Validation patients (what early stopping saw: optimistic)"


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The result a card leads with: ``metrics["headline"]["on"]`` when recorded, else the first
    held-out result present (test, test ensemble, out-of-fold), else validation."""
    recorded = metrics.get("headline") if isinstance(metrics.get("headline"), dict) else {}
    keys = [recorded.get("on")] + [k for k, _, _ in HELD_OUT]
    for key in keys:
        levels = metrics.get(key) if key else None
        if key != "val" and isinstance(levels, dict) and isinstance(levels.get("patient"), dict):
            split, title = next(((s, t) for k, s, t in HELD_OUT if k == key), ("test", str(key)))
            return {"key": key, "split": split, "title": title, "levels": levels, "what": recorded.get("what")}
    return {"key": "val", "split": "validation", "title": VAL_TITLE, "levels": _levels(metrics), "what": recorded.get("what")}


def _value(entry: Any) -> float | None:
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


def _fmt(entry: Any, key: str = "") -> str:
    value = _value(entry)
    if value is None:
        return "n/a"
    if key == "n" and not isinstance(entry, dict):
        return str(int(value))
    if isinstance(entry, dict) and entry.get("std") is not None:
        return f"{value:.3f} ± {entry['std']:.3f}"
    return f"{value:.3f}"


def _count(value: Any) -> Any:
    return len(value) if isinstance(value, (list, tuple, set)) else value


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "dataset"


def _describe(config: dict[str, Any], extra: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Everything the card says about the run, gathered (and defaulted) in one place."""
    model = config.get("model")
    if not isinstance(model, dict) or not (model.get("backbone") or model.get("aggregator")):
        raise ModelCardError(
            f"config for '{run_dir}' has no model.backbone (nor model.aggregator); pass config.json's content "
            "(clotclf_core.models.runs.read_config)"
        )
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


# ----------------------------------------------------------------------------- front matter


def _front_matter(info: dict[str, Any], headline: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "library_name": "clotclf",
        "license": info["license"],
        "pipeline_tag": "image-classification",
        "tags": BASE_TAGS + _component_tags(info["model"]) + (["synthetic-data"] if info["synthetic"] else []),
        "metrics": [kind for _, kind, _ in HEADLINE],
    }
    patient = headline["levels"].get("patient") or {}
    results = [
        {"type": kind, "value": round(v, 4), "name": name}
        for key, kind, name in HEADLINE
        if (v := _value(patient.get(key))) is not None
    ]
    if results:
        labels = " vs ".join(info["labels"])
        meta["model-index"] = [
            {
                "name": info["name"],
                "results": [
                    {
                        "task": {"type": "image-classification", "name": f"Stroke clot origin ({labels})"},
                        "dataset": {"name": info["dataset"], "type": _slug(info["dataset"]), "split": headline["split"]},
                        "metrics": results,
                    }
                ],
            }
        ]
    return meta


# ----------------------------------------------------------------------------- body


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _data_section(info: dict[str, Any]) -> str:
    if info["synthetic"]:
        text = (
            f"Trained and validated on **{info['dataset']}**: synthetic slides generated by clotclf's demo, "
            "not real tissue. Its results show that the pipeline runs end to end; **they say nothing about "
            "real clots**."
        )
    else:
        text = f"Trained and validated on **{info['dataset']}**."
    facts = [f"- {k}: {_count(v)}" for k, v in info["data"].items() if k not in ("dataset", "name", "synthetic")
             and not isinstance(v, dict)]
    return "## Data\n\n" + text + ("\n\n" + "\n".join(facts) if facts else "") + "\n"


def _split_section(split: dict[str, Any]) -> str:
    """Reads clotclf_core.training.splits' record (``group_by``, ``seed``, ``n_folds``/``folds``, ``fold``,
    ``train``/``val``/``test`` patient lists) and also ``n_<side>_patients`` / ``n_<side>_slides`` counts."""
    if not split:
        return "## Split\n\nThe split was not recorded in config.json.\n"
    group_by = split.get("group_by", "patient")
    strategy = split.get("strategy") or ("grouped by centre" if group_by in ("center", "centre") else "patient-level")
    folds = _count(split.get("n_folds") or split.get("folds") or split.get("k"))
    fold = split.get("fold")
    sentence = f"Split: **{strategy}**"
    if folds and folds > 1:
        sentence += f", {folds}-fold cross-validation" + (f", fold index {fold}" if fold is not None else "")
    sentence += ". All slides of a patient are on the same side, so no patient is in both training and validation"
    sentence += " (nor any centre)." if group_by in ("center", "centre") else "."
    rows = []
    for side in ("train", "val", "test"):
        patients = _count(split.get(f"n_{side}_patients", split.get(f"{side}_patients", split.get(side))))
        slides = _count(split.get(f"n_{side}_slides", split.get(f"{side}_slides")))
        if patients is not None or slides is not None:
            rows.append([side, str(patients if patients is not None else "?"), str(slides if slides is not None else "?")])
    body = f"## Split\n\n{sentence}"
    if split.get("seed") is not None:
        body += f" Seed {split['seed']}."
    if rows:
        body += "\n\n" + _table(["side", "patients", "slides"], rows)
    return body + "\n"


def _level_table(levels: dict[str, Any]) -> str:
    shown = [lv for lv in LEVEL_ORDER if isinstance(levels.get(lv), dict)]
    rows = [[name] + [_fmt(levels[lv].get(key), key) for lv in shown] for key, name in RESULT_ROWS]
    return _table(["metric"] + [f"{lv}" if lv != "patient" else "**patient**" for lv in shown], rows)


def _headline_block(info: dict[str, Any], headline: dict[str, Any]) -> list[str]:
    """The run's most honest number first, with n and the constant-prediction baseline beside it."""
    patient = headline["levels"].get("patient") or {}
    chance = math.log(len(info["labels"]))
    what = headline["what"] or headline["title"]
    what = what.split(": ", 1)[1] if ": " in what else what  # "held-out test patients: never ..." -> "never ..."
    n = patient.get("n")
    equal = " / ".join(f"{1 / len(info['labels']):g}" for _ in info["labels"])
    rows = [
        ["**this model**", f"**{_fmt(patient.get('weighted_log_loss'))}**", _fmt(patient.get("balanced_accuracy")),
         _fmt(patient.get("roc_auc"))],
        [f"constant {equal} (baseline)", f"{chance:.3f}", "0.500", "0.500"],
    ]
    out = [
        f"**{headline['title']}**, n = {n if n is not None else '?'} patients: {what}.",
        "",
        _table(["patient level", "weighted log loss (STRIP AI) ↓", "balanced accuracy", "ROC AUC"], rows),
        "",
        f"Equal probabilities for every patient score a weighted log loss of ln {len(info['labels'])} = {chance:.3f} "
        "whatever the class mix; no constant prediction scores lower, so a model is informative only below it.",
    ]
    if info["synthetic"]:
        out += ["", "**Synthetic data**: these numbers show the pipeline runs and is measured on unseen patients; "
                "they say nothing about real clots."]
    return out


def _results_section(info: dict[str, Any], headline: dict[str, Any], metrics: dict[str, Any], run_dir: Path) -> str:
    if not headline["levels"]:
        return "## Results\n\nNo evaluation results were recorded for this run.\n"
    slide_rule = ("Slide = the aggregator's probability for the bag of its tiles (there is no tile level)"
                  if info["model"].get("kind") == "mil" else "Slide = mean of its tiles' probabilities")
    out = ["## Results", "", *_headline_block(info, headline), "",
           "Patient level is the one that matters (one answer per patient; the STRIP AI competition scored "
           f"patients). {slide_rule}; patient = mean of its slides'.", "",
           f"### {headline['title']}", "", _level_table(headline["levels"])]
    levels = headline["levels"]
    note = (levels.get("patient") or {}).get("roc_auc_note")
    if note:
        out += ["", f"Patient-level ROC AUC is {note}."]
    cm = (levels.get("patient") or {}).get("confusion_matrix")
    if cm and len(cm) == len(info["labels"]):
        out += ["", "Patient-level confusion matrix (rows: true class, columns: predicted):", ""]
        out.append(_table(["true \\ predicted"] + info["labels"], [[lab] + [str(v) for v in row] for lab, row in zip(info["labels"], cm)]))
    for key, _, title in HELD_OUT:  # the other held-out results (e.g. out-of-fold beside the test ensemble)
        other = metrics.get(key)
        if key != headline["key"] and isinstance(other, dict) and isinstance(other.get("patient"), dict):
            out += ["", f"### {title}", "", _level_table(other)]
    val = _levels(metrics)
    if headline["key"] != "val" and val and val is not levels:
        out += ["", f"### {VAL_TITLE}", "", _level_table(val)]
    cv = metrics.get("cv")
    if isinstance(cv, dict) and isinstance(cv.get("patient"), dict):
        folds = max((e.get("n", 0) for e in cv["patient"].values() if isinstance(e, dict)), default=0)
        out += ["", f"Cross-validation, patient level, mean ± standard deviation over {folds} folds "
                "(each fold's validation patients, which its early stopping watched):", ""]
        out.append(_table(["metric", "patient"], [[name, _fmt(cv["patient"].get(key), key)] for key, name in RESULT_ROWS]))
    plots = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
    if plots:
        out += [""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    return "\n".join(out) + "\n"


def _component_tags(model: dict[str, Any]) -> list[str]:
    """The model's components as tags: backbone (or a MIL model's encoder), aggregator, ``multiple-instance``."""
    encoder = model.get("encoder") if isinstance(model.get("encoder"), dict) else {}
    tags = [str(n) for n in (model.get("backbone") or encoder.get("backbone"), model.get("aggregator")) if n]
    return tags + (["multiple-instance"] if model.get("kind") == "mil" else [])


def _options_json(options: Any) -> str:
    """Options for the card: a recorded Hub snapshot (a whole config.json) shown by its commit only."""
    shown = dict(options or {})
    snapshot = shown.get("hub_snapshot")
    if isinstance(snapshot, dict):
        shown["hub_snapshot"] = f"{snapshot.get('repo')}@{str(snapshot.get('commit'))[:12]} (config.json in config.json)"
    return json.dumps(shown)


def _component_rows(model: dict[str, Any]) -> list[list[str]]:
    rows = []
    encoder = model.get("encoder") if isinstance(model.get("encoder"), dict) else None
    if encoder is not None:
        from clotclf_core.features.store import describe_encoder

        rows.append(["encoder (frozen; its weights are not part of this model)", f"`{describe_encoder(encoder)}`"])
    for kind in ("backbone", "head", "aggregator"):
        if model.get(kind):
            rows.append([kind, f"`{model[kind]}` {_options_json(model.get(f'{kind}_options'))}"])
    return rows


def _training_section(info: dict[str, Any]) -> str:
    model = info["model"]
    rows = [
        *_component_rows(model),
        ["labels", ", ".join(info["labels"])],
        ["input size", f"{model.get('input_size', '?')} px"],
    ]
    for key, value in info["training"].items():
        rows.append([str(key), json.dumps(value) if isinstance(value, (dict, list)) else str(value)])
    return "## Training settings\n\n" + _table(["setting", "value"], rows) + f"\n\nclotclf {info['version']}; the full record is `config.json`.\n"


def _usage_section(info: dict[str, Any]) -> str:
    ref = info["repo_id"] or info["name"]
    return (
        "## How to use\n\n"
        "```bash\n"
        f"clotclf predict SLIDES... --model {ref}\n"
        "```\n\n"
        "This writes slide- and patient-level probabilities and per-slide heatmaps. In Python:\n\n"
        "```python\n"
        "from clotclf_core.models.saved import load_model\n"
        "model = load_model(\"path/to/this/folder\")  # weights are safetensors; nothing is unpickled\n"
        "```\n"
    )


_NEEDED_FOR = {"model": "loading the model", "encoder": "embedding new slides' tiles (the frozen encoder)",
               "tiling": "tiling new slides"}


def requirements_section(config: dict[str, Any]) -> str:
    """The "What must be installed" section: the distribution and version of every component, as
    config.json records them (the model's, then the tiling pipeline's that `clotclf predict` re-creates)."""
    from clotclf_core.models.runs import install_command, recorded_components

    rows = recorded_components(config)
    if not rows:
        return ""
    table = _table(["needed for", "kind", "name", "distribution", "version"],
                   [[_NEEDED_FOR.get(r["part"], r["part"]), r["role"], f"`{r['name']}`",
                     r["distribution"], r["version"]] for r in rows])
    command = install_command(rows)
    text = "## What must be installed\n\n" + table + "\n"
    if command:
        text += f"\n```bash\n{command}\n```\n"
    return text + ("\n`clotclf pull` checks these before it calls a download verified; loading uses exactly these "
                   "providers (another plugin registering the same name is never used in their place).\n")


def _limits_section(info: dict[str, Any]) -> str:
    lines = [
        "## Intended use and limitations",
        "",
        "- **Research use only.** This is not a medical device and must not be used for clinical decisions.",
        "- Clot origin is hard to read from histology: compare any result with the equal-probability "
        "reference above before trusting it, and prefer cross-validated numbers to a single fold.",
        "- Slides differ by centre, stain and scanner; a model validated at some centres may not transfer "
        "to others. Validation here is on held-out patients, not held-out centres, unless the split says so.",
        "- Classes are imbalanced (STRIP AI is about 72 % CE); read balanced accuracy and the weighted log "
        "loss, not plain accuracy.",
    ]
    if info["synthetic"]:
        lines.append("- **These results come from synthetic demo data and say nothing about real clots.**")
    if info["notes"]:
        lines.append(f"- {info['notes']}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- API


def render_model_card(config: dict[str, Any], metrics: dict[str, Any], extra: dict[str, Any] | None = None,
                      run_dir: str | os.PathLike = ".") -> str:
    """The card's text (front matter + body) without writing it; see :func:`write_model_card`."""
    import yaml

    run_dir = Path(run_dir)
    if not isinstance(config, dict):
        raise ModelCardError(f"config must be a dict (config.json's content), got {type(config).__name__}")
    metrics = metrics if isinstance(metrics, dict) else {}
    info = _describe(config, extra or {}, run_dir)
    headline = _headline(metrics)
    meta = yaml.safe_dump(_front_matter(info, headline), sort_keys=False, allow_unicode=True)
    labels = " vs ".join(info["labels"])
    intro = f"# {info['name']}\n\nA clotclf model that classifies the origin of ischemic-stroke blood clots ({labels}) from whole-slide images: "
    model = info["model"]
    if model.get("kind") == "mil":
        encoder = model.get("encoder") if isinstance(model.get("encoder"), dict) else {}
        source = (f"features of the frozen encoder `{encoder.get('backbone')}` (not part of this model: `clotclf predict` "
                  "rebuilds it from its record and checks its weights' sha256)" if encoder else
                  f"tiles through the backbone `{model.get('backbone')}`, trained with it end to end")
        intro += (f"a multiple-instance model, aggregator `{model.get('aggregator')}` pooling each slide's {source} into one "
                  "slide probability; a patient's is the mean of its slides'.\n")
    else:
        intro += (f"backbone `{model['backbone']}`, head `{model.get('head', 'linear')}`, applied to tiles whose "
                  "probabilities are averaged per slide and per patient.\n")
    if info["synthetic"]:
        intro += "\n> **Synthetic demo model.** Trained on generated slides; its numbers say nothing about real clots.\n"
    sections = [
        intro,
        _data_section(info),
        _split_section(info["split"]),
        _results_section(info, headline, metrics, run_dir),
        _training_section(info),
        _usage_section(info),
        requirements_section(config),
        _limits_section(info),
    ]
    return f"---\n{meta}---\n\n" + "\n".join(sections)


def write_model_card(run_dir: str | os.PathLike, config: dict[str, Any], metrics: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> Path:
    """Write ``run_dir/README.md`` (atomically) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelCardError(f"run directory '{run_dir}' does not exist; write the model card after saving the model")
    path = run_dir / CARD_NAME
    write_text(path, render_model_card(config, metrics, extra, run_dir))
    return path


def read_model_card(text: str) -> tuple[dict[str, Any], str]:
    """Split a card into ``(front-matter dict, Markdown body)``. A card without front matter gives
    ``({}, text)``; unterminated or invalid YAML front matter is a :class:`ModelCardError`."""
    import yaml

    text = text.lstrip("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n") != "---":
        return {}, text
    for i, line in enumerate(lines[1:], start=1):
        if line.rstrip("\r\n") == "---":
            break
    else:
        raise ModelCardError("model card front matter starts with '---' but has no closing '---' line")
    try:
        meta = yaml.safe_load("".join(lines[1:i]))
    except yaml.YAMLError as exc:
        raise ModelCardError(f"model card front matter is not valid YAML: {exc}") from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ModelCardError(f"model card front matter must be a YAML mapping, not {type(meta).__name__}")
    return meta, "".join(lines[i + 1 :]).lstrip("\r\n")


def card_results(meta: dict[str, Any]) -> dict[str, float]:
    """``{metric type: value}`` of the first model-index result, e.g. for a ``list-models`` column."""
    try:
        metrics = meta["model-index"][0]["results"][0]["metrics"]
    except (KeyError, IndexError, TypeError):
        return {}
    out = {}
    for m in metrics:
        if isinstance(m, dict) and "type" in m and (v := _value(m.get("value"))) is not None:
            out[str(m["type"])] = v
    return out

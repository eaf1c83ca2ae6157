"""The model card: a run directory's README.md, a Hugging Face model card built and read by
``huggingface_hub`` (:class:`~huggingface_hub.ModelCard`, :class:`~huggingface_hub.ModelCardData`,
:class:`~huggingface_hub.EvalResult`), so the Hub, ``ModelCard.load`` and ``clotclf list-models``
read the same metadata.

The metadata holds ``library_name``, ``license``, ``pipeline_tag``, ``tags`` (``synthetic-data``
for demo data), ``metrics`` and a ``model-index`` with the patient-level results of the run's
*held-out* patients — test, else out-of-fold, else validation, the split named — so the Hub and
``list-models`` show the honest number. The body (:mod:`clotclf_core.models.card_text`) is what a
person reads before trusting the model. Both are written from what the run recorded
(:mod:`clotclf_core.models.card_facts`), never from new computation.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from clotclf_core.config import load_yaml_text
from clotclf_core.models.card_facts import describe, headline, number
from clotclf_core.models.card_text import card_body
from clotclf_core.plugin.errors import ClotclfError, ConfigError
from clotclf_core.plugin.io import write_text

CARD_NAME = "README.md"
BASE_TAGS = ["histopathology", "stroke", "whole-slide-image", "clotclf"]
#: (metric key, model-index type, readable name) of the headline results, best-known first
HEADLINE = [
    ("weighted_log_loss", "weighted_log_loss", "Patient-level weighted log loss (STRIP AI metric, lower is better)"),
    ("balanced_accuracy", "balanced_accuracy", "Patient-level balanced accuracy"),
    ("roc_auc", "roc_auc", "Patient-level ROC AUC"),
]
TASK = "image-classification"
#: the metadata's key order (model-index comes last); other keys follow in huggingface_hub's order
FRONT_MATTER_ORDER = ["library_name", "license", "pipeline_tag", "tags", "metrics"]


class ModelCardError(ClotclfError):
    """A model card that cannot be written or parsed."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "dataset"


def _component_tags(model: dict[str, Any]) -> list[str]:
    """The model's components as tags: backbone (or a MIL model's encoder), aggregator, ``multiple-instance``."""
    encoder = model.get("encoder") if isinstance(model.get("encoder"), dict) else {}
    tags = [str(n) for n in (model.get("backbone") or encoder.get("backbone"), model.get("aggregator")) if n]
    return tags + (["multiple-instance"] if model.get("kind") == "mil" else [])


def card_data(info: dict[str, Any], lead: dict[str, Any]) -> ModelCardData:
    """The card's metadata from :func:`~clotclf_core.models.card_facts.describe`'s ``info`` and the
    :func:`~clotclf_core.models.card_facts.headline` result ``lead``: one model-index result (the
    headline's split) whose metrics are the defined ones of :data:`HEADLINE`, rounded to 4 digits."""
    patient = lead["levels"].get("patient") or {}
    task = f"Stroke clot origin ({' vs '.join(info['labels'])})"
    results = [
        EvalResult(task_type=TASK, task_name=task, dataset_name=info["dataset"], dataset_type=_slug(info["dataset"]),
                   dataset_split=lead["split"], metric_type=kind, metric_value=round(value, 4), metric_name=name)
        for key, kind, name in HEADLINE
        if (value := number(patient.get(key))) is not None
    ]
    return ModelCardData(
        library_name="clotclf",
        license=info["license"],
        pipeline_tag=TASK,
        tags=BASE_TAGS + _component_tags(info["model"]) + (["synthetic-data"] if info["synthetic"] else []),
        metrics=[kind for _, kind, _ in HEADLINE],
        # no results, no model-index (and no model_name key, which only names the results)
        **({"model_name": info["name"], "eval_results": results} if results else {}),
    )


def assemble(data: ModelCardData, body: str) -> ModelCard:
    """A card from its metadata and Markdown body (as huggingface_hub's guide builds one)."""
    return ModelCard(f"---\n{data.to_yaml(original_order=FRONT_MATTER_ORDER)}\n---\n\n{body}")


def model_card(config: dict[str, Any], metrics: dict[str, Any], extra: dict[str, Any] | None = None,
               run_dir: str | os.PathLike = ".") -> ModelCard:
    """The card of a run from its ``config`` (config.json's content), ``metrics`` (metrics.json's) and
    ``extra`` (``name``, ``license``, ``dataset``, ``synthetic``, ``repo_id``, ``notes``); see
    :mod:`clotclf_core.models.card_facts` for what each is read for. ``run_dir`` is searched for plots."""
    run_dir = Path(run_dir)
    if not isinstance(config, dict):
        raise ModelCardError(f"config must be a dict (config.json's content), got {type(config).__name__}")
    model = config.get("model")
    if not isinstance(model, dict) or not (model.get("backbone") or model.get("aggregator")):
        raise ModelCardError(
            f"config for '{run_dir}' has no model.backbone (nor model.aggregator); pass config.json's content "
            "(clotclf_core.models.runs.read_config)"
        )
    metrics = metrics if isinstance(metrics, dict) else {}
    info = describe(config, extra or {}, run_dir)
    lead = headline(metrics)
    return assemble(card_data(info, lead), card_body(info, lead, metrics, config, run_dir))


def render_model_card(config: dict[str, Any], metrics: dict[str, Any], extra: dict[str, Any] | None = None,
                      run_dir: str | os.PathLike = ".") -> str:
    """The card's text (front matter + body) without writing it; see :func:`model_card`."""
    return str(model_card(config, metrics, extra, run_dir))


def write_model_card(run_dir: str | os.PathLike, config: dict[str, Any], metrics: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> Path:
    """Write ``run_dir/README.md`` (atomically) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelCardError(f"run directory '{run_dir}' does not exist; write the model card after saving the model")
    path = run_dir / CARD_NAME
    write_text(path, render_model_card(config, metrics, extra, run_dir))
    return path


def load_model_card(text: str, lenient: bool = False) -> ModelCard:
    """A card's text parsed by huggingface_hub; a text without front matter is a card with empty metadata.

    Refused with a :class:`ModelCardError`: front matter that starts with ``---`` and never closes
    (huggingface_hub would read it all as body), YAML that does not parse or is not a mapping, and —
    unless ``lenient`` (what the Hub does when it lists models) — a ``model-index`` it cannot read."""
    text = text.lstrip("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n") != "---":
        return assemble(ModelCardData(), text)
    closing = next((i for i, line in enumerate(lines[1:], start=1) if line.rstrip(" \t\r\n") == "---"), None)
    if closing is None:
        raise ModelCardError("model card front matter starts with '---' but has no closing '---' line")
    if closing == 1:  # "---" right after "---": empty metadata, though the Hub's pattern needs a line between
        return assemble(ModelCardData(), "".join(lines[2:]).lstrip("\r\n"))
    try:
        load_yaml_text("".join(lines[1:closing]), "the model card's front matter")  # no aliases (a YAML bomb)
        return ModelCard(text, ignore_metadata_errors=lenient)
    except ConfigError as exc:
        raise ModelCardError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ModelCardError(f"model card front matter is not valid YAML: {exc}") from None
    except ValueError as exc:  # huggingface_hub: not a mapping, or a model-index it cannot read
        what = "must be a YAML mapping" if "should be a dict" in str(exc) else f"is not a valid model card: {exc}"
        raise ModelCardError(f"model card front matter {what}") from None


def read_model_card(text: str, lenient: bool = False) -> tuple[dict[str, Any], str]:
    """Split a card into ``(metadata dict, Markdown body)``; see :func:`load_model_card`."""
    card = load_model_card(text, lenient)
    return card.data.to_dict(), card.text.lstrip("\r\n")


def card_results(meta: dict[str, Any]) -> dict[str, float]:
    """``{metric type: value}`` of the first model-index result (its task, dataset and split), e.g.
    for a ``list-models`` column; ``{}`` when there is none or huggingface_hub cannot read it."""
    try:
        results = ModelCardData(**meta).eval_results or []
    except (TypeError, ValueError):
        return {}
    first = results[0].unique_identifier if results else None
    return {r.metric_type: v for r in results
            if r.unique_identifier == first and (v := number(r.metric_value)) is not None}

"""The model card as pushed, and what ``list-models`` reads back from it.

A run's own README.md (written by training) is pushed with its body untouched; its metadata
(a :class:`huggingface_hub.ModelCard`'s ``data``) gains what a registry needs to find and describe
the model without downloading it: ``library_name: clotclf``, the ``clotclf`` tag, and a
``clotclf:`` section (kind, backbone, head, labels, input size, weights sha256). A run without a
README gets one from :func:`clotclf_core.models.card.model_card`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clotclf_core.models.card import BASE_TAGS, ModelCardError, assemble, card_results, load_model_card, model_card

from .layout import CARD_NAME
from .verify import BACKBONE_KIND, FILTER_KIND, model_kind

#: the headline metric, best first: (model-index type, short label)
HEADLINE = [("weighted_log_loss", "patient wLL"), ("balanced_accuracy", "patient bal.acc"), ("roc_auc", "patient AUC")]


def card_metadata(config: dict[str, Any]) -> dict[str, Any]:
    """The ``clotclf:`` section: enough to list and judge a model without downloading it."""
    model = config.get("model") or {}
    kind = model_kind(config)
    encoder = model.get("encoder") if isinstance(model.get("encoder"), dict) else {}
    if kind == FILTER_KIND:
        backbone, head = model.get("arch"), "-"
    elif kind == BACKBONE_KIND:  # a pre-trained backbone: no head, no labels
        backbone, head = config.get("backbone"), "-"
    elif model.get("kind") == "mil":  # a multiple-instance model: the aggregator pools, on an encoder's features or end to end
        backbone, head = model.get("backbone") or f"{encoder.get('backbone')} (frozen encoder)", model.get("aggregator")
    else:
        backbone, head = model.get("backbone"), model.get("head", "linear")
    return {
        "kind": kind,
        **({"model_kind": "mil", "aggregator": str(model.get("aggregator"))} if model.get("kind") == "mil" else {}),
        "backbone": str(backbone),
        "head": str(head),
        "labels": list(model.get("labels") or []),
        "input_size": model.get("input_size"),
        "weights_sha256": config.get("weights_sha256"),
        "clotclf_version": config.get("clotclf_version"),
        **({"ensemble_of_folds": int(config["ensemble_of_folds"])} if config.get("ensemble_of_folds") else {}),
    }


def card_for_push(run_dir: Path, config: dict[str, Any], metrics: dict[str, Any], repo_id: str) -> str:
    """The README.md text to upload: the run's card (or a rendered one) with registry metadata added."""
    from huggingface_hub import ModelCardData

    path = run_dir / CARD_NAME
    if path.is_file():
        try:
            card = load_model_card(path.read_text(encoding="utf-8"))
        except ModelCardError as exc:
            raise ModelCardError(f"cannot push '{run_dir}': its {CARD_NAME}: {exc}; fix it, or delete it and push writes "
                                 "one from config.json and metrics.json") from None
    elif model_kind(config) == "classifier":
        extra = {"repo_id": repo_id} | ({} if config.get("name") else {"name": repo_id.split("/")[-1]})
        card = model_card(config, metrics, extra, run_dir)
    elif model_kind(config) == BACKBONE_KIND:
        card = assemble(ModelCardData(), f"# {repo_id}\n\nA {config.get('backbone')} backbone pre-trained by `clotclf "
                                         "pretrain`; use it with `--backbone run:NAME`. See config.json and metrics.json.\n")
    else:
        card = assemble(ModelCardData(), f"# {repo_id}\n\nA clotclf {config.get('filter', 'patch')} filter. See config.json and metrics.json.\n")
    info = card_metadata(config)
    card.data.library_name = "clotclf"
    tags = [str(t) for t in card.data.tags or []]
    extra = BASE_TAGS + ([info["backbone"].split(" ")[0]] if info["kind"] == "classifier" else
                         ["self-supervised", info["backbone"]] if info["kind"] == BACKBONE_KIND else
                         ["patch-filter", info["backbone"]])
    if info.get("model_kind") == "mil":
        extra += [info["aggregator"], "multiple-instance"]
    card.data.tags = tags + [t for t in extra if t not in tags]
    card.data["clotclf"] = info
    return str(card)


def summarize(meta: dict[str, Any]) -> dict[str, Any]:
    """``{kind, backbone, head, metric, value, synthetic}`` from a card's front matter (missing -> None)."""
    info = meta.get("clotclf") if isinstance(meta.get("clotclf"), dict) else {}
    results = card_results(meta)
    metric, value = None, None
    for key, label in HEADLINE:
        if key in results:
            metric, value = label, results[key]
            break
    else:
        if results:
            metric, value = next(iter(results.items()))
    return {
        "kind": info.get("kind"),
        "backbone": info.get("backbone"),
        "head": info.get("head"),
        "metric": metric,
        "value": value,
        # the model card tags a model trained (and scored) on synthetic data; list-models says so
        "synthetic": "synthetic-data" in [str(t) for t in meta.get("tags") or []],
    }

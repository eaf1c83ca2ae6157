"""Model card: valid Hugging Face front matter, round trip through read_model_card, honest wording
(synthetic demo vs real data), and clear errors for what cannot be written or parsed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from huggingface_hub import ModelCard

from clotclf_core.models.card import ModelCardError, card_results, read_model_card, write_model_card
from clotclf_core.scoring.metrics import evaluate, summarise_folds

LABELS = ["CE", "LAA"]


@pytest.fixture
def metrics():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"image_id": [f"s{i % 8}" for i in range(32)]})
    df["patient_id"] = df["image_id"].map(lambda s: f"p{int(s[1:]) // 2}")
    df["label"] = df["patient_id"].map(lambda p: "LAA" if p in ("p0", "p3") else "CE")
    return evaluate(df, rng.dirichlet([1, 1], len(df)), LABELS)


def config(dataset="STRIP AI demo (synthetic)", **more):
    cfg = {
        "clotclf_version": "0.1.0",
        "model": {"backbone": "poolformer", "backbone_options": {"depth": 2}, "head": "mlp",
                  "head_options": {"hidden": 16}, "labels": LABELS, "input_size": 64},
        "data": {"dataset": dataset, "n_slides": 8, "n_patients": 4},
        "split": {"strategy": "patient-level stratified k-fold", "n_folds": 5, "fold": 2, "seed": 7,
                  "train_patients": ["p1", "p2"], "val_patients": ["p0", "p3"]},
        "training": {"epochs": 3, "lr": 0.001, "batch_size": 8},
    }
    cfg.update(more)
    return cfg


def test_round_trip_and_front_matter(tmp_path, metrics):
    path = write_model_card(tmp_path, config(), metrics, extra={"name": "demo-poolformer"})
    assert path == tmp_path / "README.md" and [p.name for p in tmp_path.iterdir()] == ["README.md"]
    text = path.read_text(encoding="utf-8")
    meta, body = read_model_card(text)
    assert meta["library_name"] == "clotclf" and meta["license"] == "other"
    assert {"histopathology", "stroke", "whole-slide-image", "clotclf", "poolformer"} <= set(meta["tags"])
    assert meta["metrics"] == ["weighted_log_loss", "balanced_accuracy", "roc_auc"]
    result = meta["model-index"][0]["results"][0]
    assert meta["model-index"][0]["name"] == "demo-poolformer"
    assert result["dataset"]["name"] == "STRIP AI demo (synthetic)" and result["dataset"]["split"] == "validation"
    patient = metrics["patient"]
    assert card_results(meta) == {
        "weighted_log_loss": round(patient["weighted_log_loss"], 4),
        "balanced_accuracy": round(patient["balanced_accuracy"], 4),
        "roc_auc": round(patient["roc_auc"], 4),
    }
    assert body.startswith("# demo-poolformer") and "---" not in body.splitlines()[0]
    # Hugging Face's own parser accepts it and reads the same results (offline; no validate() call)
    card = ModelCard(text)
    assert card.data.library_name == "clotclf"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == card_results(meta)
    assert all(r.dataset_split == "validation" and r.task_type == "image-classification" for r in card.data.eval_results)


def test_body_sections_and_numbers(tmp_path, metrics):
    body = read_model_card(write_model_card(tmp_path, config(), metrics).read_text())[1]
    for heading in ("## Data", "## Split", "## Results", "## Training settings", "## How to use",
                    "## Intended use and limitations"):
        assert heading in body
    assert "5-fold cross-validation, fold index 2" in body and "Seed 7." in body
    assert "| train | 2 | ? |" in body and "| val | 2 | ? |" in body
    assert f"| {metrics['patient']['weighted_log_loss']:.3f} |" in body
    assert "ln 2 = 0.693" in body
    assert f"clotclf predict SLIDES... --model {tmp_path.name}" in body
    assert "not be used for clinical decisions" in body
    assert "| epochs | 3 |" in body and '`mlp` {"hidden": 16}' in body


def test_card_says_synthetic_for_the_demo_and_not_for_real_data(tmp_path, metrics):
    demo = (tmp_path / "demo")
    demo.mkdir()
    text = write_model_card(demo, config(), metrics).read_text()
    meta, body = read_model_card(text)
    assert "synthetic-data" in meta["tags"]
    assert "say nothing about real clots" in body and "Synthetic demo model" in body

    real = tmp_path / "real"
    real.mkdir()
    text = write_model_card(real, config("Mayo Clinic STRIP AI", license="cc-by-nc-4.0"), metrics).read_text()
    meta, body = read_model_card(text)
    assert "synthetic" not in text.lower()
    assert meta["license"] == "cc-by-nc-4.0"
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "mayo-clinic-strip-ai"
    # an explicit flag wins over the name
    flagged = tmp_path / "flagged"
    flagged.mkdir()
    cfg = config("in-house set")
    cfg["data"]["synthetic"] = True
    assert "synthetic-data" in read_model_card(write_model_card(flagged, cfg, metrics).read_text())[0]["tags"]


def test_undefined_auc_cross_validation_and_nested_metrics(tmp_path, metrics):
    metrics["patient"]["roc_auc"] = None
    metrics["patient"]["roc_auc_note"] = "not defined: no true samples of 'LAA'"
    wrapped = {"val": metrics, "cv": summarise_folds([metrics, metrics]), "best_epoch": 2}
    meta, body = read_model_card(write_model_card(tmp_path, config(), wrapped).read_text())
    assert set(card_results(meta)) == {"weighted_log_loss", "balanced_accuracy"}  # no null values in model-index
    assert "Patient-level ROC AUC is not defined: no true samples of 'LAA'." in body
    assert "mean ± standard deviation over 2 folds" in body and "± 0.000" in body


def test_split_as_clotclf_splits_records_it(tmp_path, metrics):
    split = {"group_by": "center", "seed": 3, "folds": [{"fold": 0}, {"fold": 1}, {"fold": 2}], "fold": 1,
             "train": ["p1", "p2", "p5"], "val": ["p0", "p3"], "test": ["p9"]}
    body = read_model_card(write_model_card(tmp_path, config(split=split), metrics).read_text())[1]
    assert "**grouped by centre**, 3-fold cross-validation, fold index 1" in body and "(nor any centre)" in body
    assert "| train | 3 | ? |" in body and "| val | 2 | ? |" in body and "| test | 1 | ? |" in body


def test_card_without_metrics_or_split(tmp_path):
    cfg = {"model": {"backbone": "cct"}}
    meta, body = read_model_card(write_model_card(tmp_path, cfg, {}).read_text())
    assert "model-index" not in meta and "cct" in meta["tags"]
    assert "No evaluation results were recorded" in body and "The split was not recorded" in body
    assert "unspecified dataset" in body


def test_plots_in_the_run_are_linked(tmp_path, metrics):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "confusion_patient.png").write_bytes(b"\x89PNG")
    body = read_model_card(write_model_card(tmp_path, config(), metrics).read_text())[1]
    assert "![confusion_patient](plots/confusion_patient.png)" in body


def test_write_errors(tmp_path, metrics):
    with pytest.raises(ModelCardError, match="does not exist"):
        write_model_card(tmp_path / "nope", config(), metrics)
    with pytest.raises(ModelCardError, match="no model.backbone"):
        write_model_card(tmp_path, {"training": {}}, metrics)
    with pytest.raises(ModelCardError, match="must be a dict"):
        write_model_card(tmp_path, ["model"], metrics)
    assert not (tmp_path / "README.md").exists()


def test_read_model_card_edge_cases():
    assert read_model_card("# plain readme\n") == ({}, "# plain readme\n")
    assert read_model_card("---\n---\nbody\n") == ({}, "body\n")
    meta, body = read_model_card("\ufeff---\r\nlicense: mit\r\n---\r\n\r\n# Title\r\n")
    assert meta == {"license": "mit"} and body.startswith("# Title")
    with pytest.raises(ModelCardError, match="no closing"):
        read_model_card("---\nlicense: mit\n# Title\n")
    with pytest.raises(ModelCardError, match="not valid YAML"):
        read_model_card("---\nlicense: [mit\n---\n")
    with pytest.raises(ModelCardError, match="mapping"):
        read_model_card("---\n- a\n- b\n---\n")
    assert card_results({}) == {} and card_results({"model-index": "junk"}) == {}


def test_huggingface_hub_loads_the_written_file_with_the_headline_first(tmp_path, metrics):
    """ModelCard.load (the Hub's own reader) on the file: metadata, eval results and the body's order."""
    held_out = {"val": dict(metrics), "test": metrics, "headline": {"on": "test", "what": "held out: never trained on"}}
    card = ModelCard.load(write_model_card(tmp_path, config(), held_out))
    assert card.data.library_name == "clotclf" and "synthetic-data" in card.data.tags
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    body = card.text
    results = body.index("## Results")
    headline = body.index(f"**Held-out test patients**, n = {metrics['patient']['n']} patients: never trained on.")
    assert results < headline < body.index("ln 2 = 0.693") < body.index("### Held-out test patients")
    assert body.index("**Synthetic data**") < body.index("### Validation patients")
    assert body.index("## Data") < body.index("## Split") < results < body.index("## Training settings") \
        < body.index("## How to use") < body.index("## Intended use and limitations")


def test_an_unreadable_model_index_is_refused_or_left_out_when_listing():
    text = "---\nlibrary_name: clotclf\nmodel-index: junk\n---\n# x\n"
    with pytest.raises(ModelCardError, match="not a valid model card"):
        read_model_card(text)
    meta, body = read_model_card(text, lenient=True)  # as the Hub lists it: the model, without results
    assert meta == {"library_name": "clotclf"} and body == "# x\n" and card_results(meta) == {}
    assert card_results({"model-index": [{"name": "m", "results": [{"metrics": []}]}]}) == {}


def test_card_results_reads_the_first_result_only():
    def result(split, value):
        return {"task": {"type": "image-classification"}, "dataset": {"name": "d", "type": "d", "split": split},
                "metrics": [{"type": "weighted_log_loss", "value": value}, {"type": "roc_auc", "value": None}]}

    meta = {"model-index": [{"name": "m", "results": [result("test", 0.5), result("validation", 0.1)]}]}
    assert card_results(meta) == {"weighted_log_loss": 0.5}


def test_push_keeps_a_hand_written_card_and_refuses_a_broken_one(tmp_path, metrics):
    from clotclf_registry.card import card_for_push

    cfg = config() | {"weights_sha256": "ab" * 32}
    (tmp_path / "README.md").write_text("# Only notes\n")
    meta, body = read_model_card(card_for_push(tmp_path, cfg, {"val": metrics}, "org/m"))
    assert body == "# Only notes\n" and meta["library_name"] == "clotclf" and meta["clotclf"]["backbone"] == "poolformer"
    assert "model-index" not in meta and "poolformer" in meta["tags"]
    (tmp_path / "README.md").write_text("---\nlicense: mit\nmodel-index: [1, 2]\n---\n# Notes\n")
    with pytest.raises(ModelCardError, match=r"cannot push .*README.md: .*delete it and push writes one"):
        card_for_push(tmp_path, cfg, {"val": metrics}, "org/m")

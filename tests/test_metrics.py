"""Metrics: the STRIP AI weighted log loss against scikit-learn, the tile -> slide -> patient
aggregation checked by hand, metrics with an absent class, fold summaries and tables."""

from __future__ import annotations

import inspect
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from clotclf_core.plugin import ClotclfError
from clotclf_core.scoring.metrics import (
    MetricsError,
    aggregate,
    class_indices,
    classification_metrics,
    evaluate,
    format_table,
    log_loss,
    summarise_folds,
    weighted_log_loss,
)

LABELS = ["CE", "LAA"]


def sk_log_loss(y, p, n_classes, sample_weight=None):
    """scikit-learn's log_loss across versions (1.9 renamed y_pred to y_proba)."""
    kwargs = {"labels": list(range(n_classes)), "sample_weight": sample_weight}
    if "y_proba" in inspect.signature(skm.log_loss).parameters:
        return skm.log_loss(y, y_proba=p, **kwargs)
    return skm.log_loss(y, p, **kwargs)


def class_balanced_weights(y):
    counts = np.bincount(y)
    return 1.0 / counts[y]


# ----------------------------------------------------------------------------- weighted log loss


@pytest.mark.parametrize(
    "n, priors, seed",
    [
        (50, [0.5, 0.5], 0),
        (200, [0.72, 0.28], 1),  # STRIP AI's imbalance
        (90, [0.6, 0.3, 0.1], 2),  # three classes, imbalanced
        (120, [0.25, 0.25, 0.25, 0.25], 3),
        (37, [0.9, 0.1], 4),
    ],
)
def test_weighted_log_loss_matches_sklearn_with_class_weights(n, priors, seed):
    rng = np.random.default_rng(seed)
    c = len(priors)
    y = rng.choice(c, size=n, p=priors)
    y[:c] = np.arange(c)  # every class present
    p = rng.dirichlet(np.ones(c), size=n)
    ours = weighted_log_loss(y, p)
    ref = sk_log_loss(y, p, c, sample_weight=class_balanced_weights(y))
    assert ours == pytest.approx(ref, rel=1e-9)
    # and it really differs from the unweighted loss when classes are imbalanced
    if len(set(priors)) > 1:
        assert ours != pytest.approx(log_loss(y, p), rel=1e-6)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p, c), rel=1e-9)


def test_weighted_log_loss_by_hand():
    y = np.array([0, 0, 0, 1])
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.5, 0.5], [0.3, 0.7]])
    ce = -(math.log(0.9) + math.log(0.8) + math.log(0.5)) / 3
    laa = -math.log(0.7)
    assert weighted_log_loss(y, p) == pytest.approx((ce + laa) / 2)
    assert log_loss(y, p) == pytest.approx((3 * ce + laa) / 4)


def test_perfect_and_uniform_predictions():
    y = np.array([0, 1, 2, 2, 1, 0, 0])
    perfect = np.eye(3)[y]
    assert weighted_log_loss(y, perfect) == pytest.approx(0.0, abs=1e-12)
    uniform = np.full((len(y), 3), 1 / 3)
    assert weighted_log_loss(y, uniform) == pytest.approx(math.log(3))
    # rows are rescaled before scoring, as Kaggle does: [2, 2] is the same as [0.5, 0.5]
    assert weighted_log_loss([0, 1], [[2.0, 2.0], [5.0, 5.0]]) == pytest.approx(math.log(2))


def test_clipping_at_zero_and_one():
    # class 0 is predicted with certainty (clipped to 1 - 1e-15); class 1 gets p = 0 (clipped to 1e-15)
    y = np.array([0, 1])
    p = np.array([[1.0, 0.0], [1.0, 0.0]])
    expected = (-math.log(1 - 1e-15) - math.log(1e-15)) / 2
    assert weighted_log_loss(y, p) == pytest.approx(expected)
    assert math.isfinite(weighted_log_loss(y, p)) and weighted_log_loss(y, p) == pytest.approx(17.2694, abs=1e-3)


def test_absent_class_is_left_out_of_the_mean():
    y = np.array([0, 0, 2, 2, 2])  # class 1 has no samples
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(3), size=len(y))
    per_sample = -np.log(p[np.arange(len(y)), y])
    expected = (per_sample[y == 0].mean() + per_sample[y == 2].mean()) / 2
    assert weighted_log_loss(y, p) == pytest.approx(expected)
    assert weighted_log_loss(y, p) == pytest.approx(sk_log_loss(y, p, 3, sample_weight=1.0 / np.bincount(y)[y]))


def test_one_dimensional_probs_are_the_positive_class():
    y = np.array([0, 1, 1])
    pos = np.array([0.2, 0.6, 0.9])
    assert weighted_log_loss(y, pos) == pytest.approx(weighted_log_loss(y, np.stack([1 - pos, pos], 1)))


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([0, 1], [[0.5, 0.5]], "match one to one"),
        ([], np.zeros((0, 2)), "no samples"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], "outside 0..1"),
        ([0, -1], [[0.5, 0.5], [0.5, 0.5]], "outside 0..1"),
        ([0, 1], [[0.5, np.nan], [0.5, 0.5]], "NaN"),
        ([0, 1], [[1.5, -0.5], [0.5, 0.5]], "negative"),
        ([0, 1], [[0.0, 0.0], [0.5, 0.5]], "row 0 sums to 0"),
        (["CE", "LAA"], [[0.5, 0.5], [0.5, 0.5]], "class indices"),
        ([0.5, 1], [[0.5, 0.5], [0.5, 0.5]], "class indices"),
        ([0, 1], np.zeros((2, 2, 2)), "shape"),
    ],
)
def test_bad_inputs_raise_one_clear_error(y, p, match):
    with pytest.raises(MetricsError, match=match):
        weighted_log_loss(y, p)


def test_n_classes_must_match_columns():
    with pytest.raises(ClotclfError, match="3 columns but there are 2 classes"):
        weighted_log_loss([0, 1], np.full((2, 3), 1 / 3), n_classes=2)


# ----------------------------------------------------------------------------- classification metrics


@pytest.mark.parametrize("labels, seed", [(LABELS, 0), (["A", "B", "C"], 1)])
def test_classification_metrics_match_sklearn(labels, seed):
    rng = np.random.default_rng(seed)
    c = len(labels)
    y = rng.integers(0, c, 80)
    p = rng.dirichlet(np.ones(c), 80)
    p[np.arange(80), y] += 0.4  # better than chance, rows no longer sum to 1 (rescaled inside)
    m = classification_metrics(y, p, labels)
    pn = p / p.sum(1, keepdims=True)
    pred = pn.argmax(1)
    assert m["n"] == 80
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    prec, rec, f1, _ = skm.precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert (m["precision_macro"], m["recall_macro"], m["f1_macro"]) == pytest.approx((prec, rec, f1))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=list(range(c))).tolist()
    if c == 2:
        assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, pn[:, 1]))
    else:
        assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, pn, multi_class="ovr", average="macro"))
    assert m["roc_auc_note"] is None
    assert m["weighted_log_loss"] == pytest.approx(sk_log_loss(y, pn, c, class_balanced_weights(y)))
    assert m["class_counts"] == {lab: int((y == i).sum()) for i, lab in enumerate(labels)}
    per = m["per_class"][labels[0]]
    assert per["support"] == int((y == 0).sum())
    assert per["f1"] == pytest.approx(skm.f1_score(y == 0, pred == 0))
    json.dumps(m)  # metrics.json must be able to hold it


def test_metrics_when_a_class_is_absent():
    y = np.array([0, 0, 0, 0])  # no LAA patient in this fold
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.8, 0.2]])
    m = classification_metrics(y, p, LABELS)
    assert m["roc_auc"] is None and "no true samples of 'LAA'" in m["roc_auc_note"]
    assert m["per_class"]["LAA"]["recall"] is None and m["per_class"]["LAA"]["f1"] is None
    assert m["per_class"]["LAA"]["precision"] == 0.0  # predicted once, wrongly
    assert m["per_class"]["CE"]["recall"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx(0.75)  # mean over the classes present
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[3, 1], [0, 0]]
    assert m["weighted_log_loss"] == pytest.approx(m["log_loss"])  # one class: both are its mean
    json.dumps(m)


def test_class_never_predicted_has_undefined_precision():
    m = classification_metrics([0, 1, 1], [[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]], LABELS)
    assert m["per_class"]["LAA"]["precision"] is None and m["per_class"]["LAA"]["recall"] == 0.0
    assert m["per_class"]["LAA"]["f1"] == 0.0
    assert m["precision_macro"] == pytest.approx((1 / 3 + 0) / 2)


def test_one_sample_one_class_and_absent_classes_score_without_warnings():
    """scikit-learn warns on single-label folds and predicted classes without true samples; the
    metrics leave such classes out as documented instead, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = classification_metrics([1], [[0.2, 0.8]], LABELS)
        three = classification_metrics([0, 0, 2, 2], [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.1, 0.7], [0.6, 0.2, 0.2]],
                                       ["A", "B", "C"])
    assert one["balanced_accuracy"] == one["accuracy"] == 1.0 and one["confusion_matrix"] == [[0, 0], [0, 1]]
    assert one["per_class"]["CE"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert (one["precision_macro"], one["recall_macro"], one["f1_macro"]) == (1.0, 1.0, 1.0)
    # B: predicted once, never true -> precision 0, no recall, no F1; macro over A and C only
    assert three["per_class"]["B"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    assert three["per_class"]["A"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert three["balanced_accuracy"] == three["recall_macro"] == 0.5 and three["precision_macro"] == 0.75  # C: 1 of 1
    assert three["confusion_matrix"] == [[1, 1, 0], [0, 0, 0], [1, 0, 1]] and three["accuracy"] == 0.5


def test_labels_must_be_distinct_and_at_least_two():
    with pytest.raises(MetricsError, match="duplicates"):
        classification_metrics([0, 1], [[0.5, 0.5]] * 2, ["CE", "CE"])
    with pytest.raises(MetricsError, match="at least two"):
        classification_metrics([0, 0], [[1.0], [1.0]], ["CE"])


# ----------------------------------------------------------------------------- aggregation


@pytest.fixture
def tiles():
    """Patient P1: slide a (3 tiles) + slide b (1 tile); patient P2: slide c (2 tiles)."""
    df = pd.DataFrame(
        {
            "image_id": ["a", "a", "a", "b", "c", "c"],
            "patient_id": ["P1", "P1", "P1", "P1", "P2", "P2"],
            "label": ["CE", "CE", "CE", "CE", "LAA", "LAA"],
        }
    )
    laa = np.array([0.1, 0.2, 0.6, 0.9, 0.7, 0.5])
    return df, np.stack([1 - laa, laa], axis=1)


def test_aggregate_levels_by_hand(tiles):
    df, p = tiles
    tile = aggregate(df, p, LABELS, "tile")
    assert list(tile.columns) == ["image_id", "patient_id", "label", "p_CE", "p_LAA"]
    assert np.allclose(tile["p_LAA"], p[:, 1])

    slide = aggregate(df, p, LABELS, "slide").set_index("image_id")
    assert slide.loc["a", "p_LAA"] == pytest.approx(0.3)  # (0.1 + 0.2 + 0.6) / 3
    assert slide.loc["b", "p_LAA"] == pytest.approx(0.9)
    assert slide.loc["c", "p_LAA"] == pytest.approx(0.6)
    assert slide.loc["a", "n_tiles"] == 3 and slide.loc["a", "patient_id"] == "P1"

    patient = aggregate(df, p, LABELS, "patient").set_index("patient_id")
    # P1 = mean of slide means (0.3 + 0.9) / 2 = 0.6, NOT the mean of its 4 tiles (0.45)
    assert patient.loc["P1", "p_LAA"] == pytest.approx(0.6)
    assert patient.loc["P1", "p_LAA"] != pytest.approx(p[:4, 1].mean())
    assert patient.loc["P1", "p_CE"] == pytest.approx(0.4)
    assert patient.loc["P2", "p_LAA"] == pytest.approx(0.6)
    assert patient.loc["P1", "n_slides"] == 2 and patient.loc["P1", "n_tiles"] == 4
    assert patient.loc["P2", "label"] == "LAA"


def test_aggregate_without_label_column_for_prediction(tiles):
    df, p = tiles
    out = aggregate(df.drop(columns="label"), p, LABELS, "patient")
    assert "label" not in out.columns and len(out) == 2


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda df: df.assign(label=["CE", "LAA", "CE", "CE", "LAA", "LAA"]), "image_id 'a' has several label"),
        (lambda df: df.assign(label=["CE", "CE", "CE", "LAA", "LAA", "LAA"]), "patient_id 'P1' has several label"),
        (lambda df: df.assign(patient_id=["P1", "P1", "P9", "P1", "P2", "P2"]), "image_id 'a' has several patient_id"),
        (lambda df: df.drop(columns="patient_id"), "lacks column"),
        (lambda df: df.assign(patient_id=["P1", "P1", "P1", "", "P2", "P2"]), "empty patient_id"),
        (lambda df: df.assign(image_id=["a", None, "a", "b", "c", "c"]), "empty image_id"),
    ],
)
def test_aggregate_rejects_inconsistent_tables(tiles, change, match):
    df, p = tiles
    with pytest.raises(MetricsError, match=match):
        aggregate(change(df), p, LABELS, "patient")


def test_aggregate_bad_arguments(tiles):
    df, p = tiles
    with pytest.raises(MetricsError, match="unknown level 'case'"):
        aggregate(df, p, LABELS, "case")
    with pytest.raises(MetricsError, match=r"expected \(6 tiles, 2 classes"):
        aggregate(df, p[:5], LABELS, "slide")


def test_evaluate_all_levels(tiles):
    df, p = tiles
    ev = evaluate(df, p, LABELS)
    assert list(ev) == ["tile", "slide", "patient"]
    assert [ev[lv]["n"] for lv in ev] == [6, 3, 2]
    # patient level: P1 (CE) gets 0.6 LAA -> wrong; P2 (LAA) gets 0.6 -> right
    assert ev["patient"]["accuracy"] == pytest.approx(0.5)
    assert ev["patient"]["weighted_log_loss"] == pytest.approx((-math.log(0.4) - math.log(0.6)) / 2)
    json.dumps(ev)


def test_evaluate_needs_known_labels(tiles):
    df, p = tiles
    with pytest.raises(MetricsError, match=r"label\(s\) \['SCA'\] are not among"):
        evaluate(df.assign(label=["SCA"] * 4 + ["LAA"] * 2), p, LABELS)
    with pytest.raises(MetricsError, match="no 'label' column"):
        evaluate(df.drop(columns="label"), p, LABELS)
    assert class_indices(["LAA", "CE"], LABELS).tolist() == [1, 0]


# ----------------------------------------------------------------------------- folds and tables


def test_summarise_folds_mean_and_std():
    rng = np.random.default_rng(0)
    folds = []
    for seed in range(3):
        y = np.array([0, 0, 1, 1, 0])
        p = np.random.default_rng(seed).dirichlet([1, 1], 5)
        folds.append({"tile": classification_metrics(y, p, LABELS), "patient": classification_metrics(y, p, LABELS)})
    folds[2]["patient"] = classification_metrics([0, 0], rng.dirichlet([1, 1], 2), LABELS)  # no LAA: AUC undefined
    s = summarise_folds(folds)
    assert set(s) == {"tile", "patient"}
    wll = [f["patient"]["weighted_log_loss"] for f in folds]
    assert s["patient"]["weighted_log_loss"]["mean"] == pytest.approx(np.mean(wll))
    assert s["patient"]["weighted_log_loss"]["std"] == pytest.approx(np.std(wll, ddof=1))
    assert s["patient"]["roc_auc"]["n"] == 2  # the fold without LAA has no AUC
    assert s["patient"]["roc_auc"]["mean"] == pytest.approx(np.mean([f["patient"]["roc_auc"] for f in folds[:2]]))
    assert "recall[LAA]" in s["patient"] and s["patient"]["recall[LAA]"]["n"] == 2
    json.dumps(s)
    table = format_table(s)
    assert "±" in table and "patient" in table.splitlines()[0]


def test_summarise_single_level_and_one_fold():
    m = classification_metrics([0, 1], [[0.7, 0.3], [0.4, 0.6]], LABELS)
    s = summarise_folds([m])
    assert s["accuracy"] == {"mean": 1.0, "std": 0.0, "min": 1.0, "max": 1.0, "n": 1, "values": [1.0]}
    with pytest.raises(MetricsError, match="no fold metrics"):
        summarise_folds([])


def test_format_table(tiles):
    df, p = tiles
    ev = evaluate(df, p, LABELS)
    ev["patient"]["roc_auc"] = None
    lines = format_table(ev).splitlines()
    assert lines[0].split() == ["metric", "tile", "slide", "patient"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["n"] == ["6", "3", "2"]
    assert rows["roc_auc"][-1] == "n/a"
    assert rows["weighted_log_loss"][-1] == f"{ev['patient']['weighted_log_loss']:.3f}"
    assert len({len(line) for line in lines}) == 1  # fixed width
    single = format_table(ev["patient"])
    assert single.splitlines()[0].split() == ["metric", "value"]
    with pytest.raises(MetricsError, match="no known metric"):
        format_table({"foo": 1})

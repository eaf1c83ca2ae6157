"""clotclf_core.splits: stratified k-fold by patient (or centre); leaks and impossible splits refused."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from clotclf_core.splits import SplitError, load_split, make_split, patient_table, save_split


def index(n_patients=12, slides=2, tiles=3, centers=3, label_of=None):
    """A tile index: patient p has label CE/LAA alternating (or label_of(p)), 'slides' slides each."""
    rows = []
    for p in range(n_patients):
        label = label_of(p) if label_of else ("CE", "LAA")[p % 2]
        for s in range(slides):
            for t in range(tiles):
                rows.append({"image_id": f"s{p}_{s}", "patient_id": f"p{p}", "center_id": f"c{p % centers}",
                             "label": label, "row": t})
    return pd.DataFrame(rows)


def test_patient_table_has_one_row_per_patient():
    table = patient_table(index(4, slides=2, tiles=3))
    assert list(table["patient_id"]) == ["p0", "p1", "p2", "p3"]
    assert list(table["n_slides"]) == [2, 2, 2, 2] and list(table["n_tiles"]) == [6, 6, 6, 6]


def test_a_patient_with_two_labels_is_an_error():
    df = index(4)
    df.loc[df["image_id"] == "s1_1", "label"] = "CE"  # p1 is LAA on its other slide
    with pytest.raises(SplitError, match="patient 'p1' has slides with different labels"):
        patient_table(df)


def test_folds_partition_the_patients_and_are_stratified():
    df = index(20)
    split = make_split(df, n_folds=5, seed=1)
    everyone = set(df["patient_id"])
    vals = [set(f.val) for f in split.folds]
    assert set().union(*vals) == everyone and sum(len(v) for v in vals) == 20  # each patient validates once
    for fold in split.folds:
        assert not set(fold.train) & set(fold.val)
        assert set(fold.train) | set(fold.val) == everyone
        labels = {("CE", "LAA")[int(p[1:]) % 2] for p in fold.val}
        assert labels == {"CE", "LAA"}  # 10 + 10 patients in 5 folds: both classes in each
    assert make_split(df, 5, seed=1).to_dict() == split.to_dict()
    assert make_split(df, 5, seed=2).to_dict() != split.to_dict()


def test_group_by_center_keeps_whole_centres_on_one_side():
    df = index(24, centers=4)
    split = make_split(df, n_folds=4, seed=0, group_by="center")
    centre = dict(zip(df["patient_id"], df["center_id"]))
    for fold in split.folds:
        assert not {centre[p] for p in fold.train} & {centre[p] for p in fold.val}


def test_held_out_test_patients_are_in_no_fold():
    split = make_split(index(20), n_folds=3, seed=0, test_fraction=0.2)
    assert 3 <= len(split.test) <= 5
    for fold in split.folds:
        assert not set(split.test) & (set(fold.train) | set(fold.val))


def test_fewer_patients_than_folds_is_refused():
    with pytest.raises(SplitError, match="3 patient\\(s\\) cannot be split into 5 folds"):
        make_split(index(3), n_folds=5)
    with pytest.raises(SplitError, match="every class has fewer patients \\(CE: 3, LAA: 3\\) than folds \\(4\\)"):
        make_split(index(6), n_folds=4)
    with pytest.raises(SplitError, match="needs at least as many centres as folds: 2 centre"):
        make_split(index(10, centers=2), n_folds=3, group_by="center")


def test_a_class_absent_from_a_training_split_is_refused():
    # one LAA patient: in the fold where it validates, no training patient is LAA
    with pytest.raises(SplitError, match="no training patient has label LAA"):
        make_split(index(6, label_of=lambda p: "LAA" if p == 0 else "CE"), n_folds=3)


def test_saved_split_round_trips(tmp_path):
    df = index(10)
    split = make_split(df, n_folds=2, seed=0)
    save_split(split, tmp_path / "split.json")
    again = load_split(tmp_path / "split.json", df)
    assert [f.to_dict() for f in again.folds] == [f.to_dict() for f in split.folds]


def test_split_file_with_a_patient_on_both_sides_is_refused(tmp_path):
    df = index(6)
    leaky = {"folds": [{"train": ["p0", "p1", "p2", "p3"], "val": ["p3", "p4", "p5"]}]}
    (tmp_path / "split.json").write_text(json.dumps(leaky))
    with pytest.raises(SplitError, match="p3 are on both the training and validation side"):
        load_split(tmp_path / "split.json", df)
    unknown = {"folds": [{"train": ["p0", "p1"], "val": ["p9"]}]}
    (tmp_path / "split.json").write_text(json.dumps(unknown))
    with pytest.raises(SplitError, match="not in this TileSet: p9"):
        load_split(tmp_path / "split.json", df)
    (tmp_path / "split.json").write_text("{\"folds\": 3}")
    with pytest.raises(SplitError, match="is not a clotclf split"):
        load_split(tmp_path / "split.json", df)
    with pytest.raises(SplitError, match="does not exist"):
        load_split(tmp_path / "nope.json", df)

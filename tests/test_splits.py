"""clotclf_core.training.splits: stratified k-fold by patient (or centre); leaks and impossible splits refused."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from clotclf_core.training.splits import SplitError, load_split, make_split, patient_table, save_split


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


def test_a_patient_with_two_centres_is_an_error():
    df = index(6, slides=2)
    df.loc[df["image_id"] == "s1_1", "center_id"] = "c9"  # p1's other slide is from c1
    with pytest.raises(SplitError, match="patient 'p1' has slides from different centres \\(c1, c9\\).*center_id"):
        patient_table(df)
    with pytest.raises(SplitError, match="patient 'p1'"):  # so it can never be on both sides of a centre split
        make_split(df, n_folds=2, group_by="center")


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.25, 0.3, 0.4, 0.5])
def test_the_test_set_is_the_fraction_asked_for_and_stratified(fraction):
    df = index(40, centers=5)  # 20 CE + 20 LAA patients
    split = make_split(df, n_folds=2, seed=3, test_fraction=fraction)
    assert len(split.test) == round(40 * fraction)
    per_class = [sum(int(p[1:]) % 2 == c for p in split.test) for c in (0, 1)]
    assert abs(per_class[0] - per_class[1]) <= 1  # as stratified as whole patients allow
    assert split.to_dict()["test_fraction"] == fraction
    assert split.to_dict()["test_fraction_achieved"] == pytest.approx(len(split.test) / 40)
    assert any(f"{len(split.test)} of 40 patients" in n for n in split.notes)


def test_the_test_set_follows_the_seed_and_rounds_class_shares():
    # 18 CE + 12 LAA: 0.3 of them is 9 patients, 5.4 + 3.6 -> 5 CE + 4 LAA (largest remainder)
    df = index(30, label_of=lambda p: "CE" if p < 18 else "LAA")
    tests = [make_split(df, 2, seed=s, test_fraction=0.3).test for s in range(3)]
    for test in tests:
        assert len(test) == 9 and sum(int(p[1:]) < 18 for p in test) == 5
    assert len({tuple(t) for t in tests}) > 1
    assert make_split(df, 2, seed=1, test_fraction=0.3).test == tests[1]


@pytest.mark.parametrize("fraction", [0.6, 0.75, 0.99, -0.1])
def test_a_test_fraction_outside_0_to_half_is_refused(fraction):
    with pytest.raises(SplitError, match=f"--test-fraction must be above 0 and at most 0.5 \\(got {fraction}\\)"):
        make_split(index(20), n_folds=2, test_fraction=fraction)


def test_a_test_fraction_too_small_to_hold_out_anyone_is_refused():
    with pytest.raises(SplitError, match="--test-fraction 0.05 of 8 patient\\(s\\) holds out no patient; use at least 0.07"):
        make_split(index(8), n_folds=2, test_fraction=0.05)


def test_group_by_center_holds_out_whole_centres_close_to_the_fraction():
    df = index(60, centers=5)  # 5 centres of 12 patients (6 CE + 6 LAA each): 0.2 is one centre
    centre = dict(zip(df["patient_id"], df["center_id"]))
    held = set()
    for seed in range(4):
        split = make_split(df, n_folds=2, seed=seed, group_by="center", test_fraction=0.2)
        test_centres = {centre[p] for p in split.test}
        assert len(test_centres) == 1 and len(split.test) == 12 and split.test_fraction_achieved == 0.2
        for fold in split.folds:
            assert not test_centres & {centre[p] for p in fold.train + fold.val}
        held |= test_centres
    assert len(held) > 1  # the seed picks among equally good centres
    # 0.3 cannot be met with 12-patient centres: the nearest (one or two centres) is taken, and said
    split = make_split(df, n_folds=2, seed=0, group_by="center", test_fraction=0.3)
    assert len(split.test) in (12, 24)
    assert any("whole centres being held out" in n for n in split.notes)
    with pytest.raises(SplitError, match="only 1 centre"):
        make_split(index(10, centers=1), n_folds=2, group_by="center", test_fraction=0.2)


def test_saved_split_keeps_the_test_fraction(tmp_path):
    df = index(20)
    split = make_split(df, n_folds=2, seed=0, test_fraction=0.25)
    save_split(split, tmp_path / "split.json")
    again = load_split(tmp_path / "split.json", df)
    assert (again.test_fraction, again.test_fraction_achieved, again.test) == (0.25, 0.25, split.test)
    older = json.loads((tmp_path / "split.json").read_text())
    del older["test_fraction"]  # a split.json from before the fraction was recorded
    (tmp_path / "split.json").write_text(json.dumps(older))
    from clotclf_core.training.splits import describe_test_set

    assert describe_test_set(load_split(tmp_path / "split.json", df)) == "held-out test set: 5 of 20 patients (25.0%)"


def test_test_set_is_spread_over_centres():
    import pandas as pd

    from clotclf_core.training.splits import holdout

    patients = pd.DataFrame({
        "patient_id": [f"p{i:02d}" for i in range(18)],
        "label": ["CE"] * 18,
        "center_id": ["A"] * 6 + ["B"] * 6 + ["C"] * 6,
    })
    for seed in range(5):
        chosen = holdout(patients, 1 / 3, seed)
        per_centre = patients[patients["patient_id"].isin(chosen)]["center_id"].value_counts()
        assert len(chosen) == 6 and per_centre.to_dict() == {"A": 2, "B": 2, "C": 2}


def _validate_twice(d):
    p = d["folds"][0]["val"][0]
    d["folds"][1]["train"].remove(p)
    d["folds"][1]["val"].append(p)


def _listed_twice(d):
    d["folds"][0]["train"].append(d["folds"][0]["train"][0])


def _missing_from_one_fold(d):
    d["folds"][2]["train"].pop(0)


def _placed_nowhere(d):
    p = d["folds"][0]["val"][0]
    for f in d["folds"]:
        for side in ("train", "val"):
            if p in f[side]:
                f[side].remove(p)


@pytest.mark.parametrize("mutate, match", [
    (_validate_twice, "validates in fold 0 and in fold 1"),
    (_listed_twice, "twice on its training side"),
    (_missing_from_one_fold, "fold 2 leaves out patient"),
    (_placed_nowhere, "places no fold or test side for 1 patient"),
])
def test_a_split_file_is_checked_for_every_overlap_and_gap(tmp_path, mutate, match):
    tiles = index(n_patients=12)
    data = make_split(tiles, n_folds=3, seed=0).to_dict()
    mutate(data)
    (tmp_path / "split.json").write_text(json.dumps(data))
    with pytest.raises(SplitError, match=match):
        load_split(tmp_path / "split.json", tiles)

"""Patient-level splits: which patients train, which validate, which are held out for testing.

Tiles of one slide, and slides of one patient, look alike. A split by tile (what the published
STRIP AI notebooks did) puts the same patient on both sides and measures memory, not skill. So
every split here is made on a table with one row per patient, label-stratified, and every split
is checked before use: a patient on both sides, or a class missing from the training side, is
refused with a :class:`SplitError`.

- ``group_by="patient"``: stratified k-fold over patients.
- ``group_by="center"``: stratified *group* k-fold with centres as groups, so no centre is on both
  sides (a leave-centre-out check of how a model travels to another hospital).
- ``test_fraction`` (0 to 0.5): patients held out before the folds are made; no fold ever trains
  or validates on them, so they give an estimate untouched by early stopping or model choice. The
  held-out share is label-stratified and as close to the request as whole patients (or whole
  centres) allow; the share achieved is recorded with the split.

A split is saved with the run (``split.json`` and ``config.json``'s ``split``) and can be fed
back with ``--split-file`` to train another model on exactly the same patients.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import write_json

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

GroupBy = Literal["patient", "center"]


class SplitError(ClotclfError):
    """A split that would leak patients or cannot be trained on."""


@dataclass
class Fold:
    """One train / validation partition of patient ids."""

    index: int
    train: list[str]
    val: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"fold": self.index, "train": self.train, "val": self.val}


@dataclass
class Split:
    """All folds of a run plus the held-out test patients (possibly none)."""

    folds: list[Fold]
    test: list[str] = field(default_factory=list)
    group_by: str = "patient"
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    #: the ``--test-fraction`` asked for (None: not recorded, a split file from an older version),
    #: and how many patients the split covers (test included)
    test_fraction: float | None = 0.0
    n_patients: int | None = None

    @property
    def test_fraction_achieved(self) -> float | None:
        """Share of the patients actually held out (whole patients / centres: near, not equal, to the request)."""
        return round(len(self.test) / self.n_patients, 4) if self.n_patients else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "group_by": self.group_by,
            "seed": self.seed,
            "n_folds": len(self.folds),
            "n_patients": self.n_patients,
            "test_fraction": self.test_fraction,
            "test_fraction_achieved": self.test_fraction_achieved,
            "test": self.test,
            "folds": [f.to_dict() for f in self.folds],
            "notes": self.notes,
        }


def patient_table(index: "pd.DataFrame") -> "pd.DataFrame":
    """One row per patient: ``patient_id, label, center_id, n_slides, n_tiles``.

    A patient with two labels or two centres is an error in the manifest, not something to
    guess about. An empty ``patient_id`` falls back to the slide's ``image_id`` (each such slide
    is its own patient), the same rule ``clotclf tile`` applies to manifests.
    """
    import pandas as pd

    df = index[["image_id", "patient_id", "center_id", "label"]].copy()
    empty = df["patient_id"].astype(str).str.strip() == ""
    df.loc[empty, "patient_id"] = df.loc[empty, "image_id"]
    grouped = df.groupby("patient_id", sort=True)
    labels = grouped["label"].nunique()
    bad = labels[labels > 1]
    if len(bad):
        pid = bad.index[0]
        seen = sorted(df.loc[df["patient_id"] == pid, "label"].unique())
        raise SplitError(
            f"patient '{pid}' has slides with different labels ({', '.join(seen)}); a patient has one stroke "
            f"etiology. Fix the label in the manifest and re-tile ({len(bad)} patient(s) affected)"
        )
    # a patient under two centres would be put on both sides of a --group-by center split, and its
    # centre is reported with every result: a manifest error, never a first-one-wins guess
    centres = grouped["center_id"].nunique()
    bad = centres[centres > 1]
    if len(bad):
        pid = bad.index[0]
        seen = sorted(df.loc[df["patient_id"] == pid, "center_id"].unique())
        raise SplitError(
            f"patient '{pid}' has slides from different centres ({', '.join(seen)}); a patient's slides come from "
            f"one centre. Fix the center_id in the manifest and re-tile ({len(bad)} patient(s) affected)"
        )
    table = pd.DataFrame(
        {
            "label": grouped["label"].first(),
            "center_id": grouped["center_id"].first(),
            "n_slides": grouped["image_id"].nunique(),
            "n_tiles": grouped.size(),
        }
    ).reset_index()
    return table


def _check_counts(patients: "pd.DataFrame", n_folds: int, group_by: str) -> None:
    if n_folds < 2:
        raise SplitError(f"--folds must be at least 2 (got {n_folds}): one part trains, another validates")
    n = len(patients)
    if n < n_folds:
        raise SplitError(
            f"{n} patient(s) cannot be split into {n_folds} folds: each fold needs at least one validation "
            f"patient. Use --folds {max(2, n)} or fewer, or add slides from more patients"
        )
    counts = patients["label"].value_counts()
    if (counts < n_folds).all():  # stratification needs one class with a patient in every fold
        per_class = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        raise SplitError(
            f"every class has fewer patients ({per_class}) than folds ({n_folds}), so the folds cannot be "
            f"stratified; use --folds {max(2, int(counts.max()))} or fewer (or a smaller --test-fraction)"
        )
    if group_by == "center":
        centres = patients["center_id"].nunique()
        if centres < n_folds:
            raise SplitError(
                f"--group-by center needs at least as many centres as folds: {centres} centre(s) for "
                f"{n_folds} folds. Use --folds {max(2, centres)} or --group-by patient"
            )


#: the largest --test-fraction: beyond it the test set would be larger than what is trained on
MAX_TEST_FRACTION = 0.5


def holdout(patients: "pd.DataFrame", fraction: float, seed: int, group_by: str = "patient") -> list[str]:
    """About ``fraction`` of the patients, label-stratified, as a test set (whole centres if grouped).

    By patient: each class gives its share (largest remainders, so the total is
    ``round(fraction * n)``), chosen at random from ``seed`` and spread over the centres. By centre: the set of whole centres
    whose patient count and label mix come closest to the request (see :func:`_pick_centres`).
    """
    if fraction == 0:
        return []
    if not 0 < fraction <= MAX_TEST_FRACTION:
        raise SplitError(
            f"--test-fraction must be above 0 and at most {MAX_TEST_FRACTION} (got {fraction}): it is the share of "
            "patients held out for testing, and more than half would leave less to train on than to test. "
            "Use e.g. --test-fraction 0.2, or 0 for no test set"
        )
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(patients)
    if group_by == "center":
        return _pick_centres(patients, fraction, rng)
    target = round(fraction * n)
    if target < 1:
        raise SplitError(
            f"--test-fraction {fraction} of {n} patient(s) holds out no patient; use at least "
            f"{math.ceil(50 / n) / 100 if n else 1:.2f}, or --test-fraction 0 for no test set"
        )
    classes = sorted(patients["label"].unique())
    counts = np.array([(patients["label"] == c).sum() for c in classes])
    quota = fraction * counts
    take = np.floor(quota).astype(int)
    # largest remainders first (ties in random order), until the total is the target
    order = sorted(range(len(classes)), key=lambda i: (-(quota[i] - take[i]), rng.random()))
    for i in order[: max(0, target - int(take.sum()))]:
        take[i] += 1
    chosen: list[str] = []
    for cls, k in zip(classes, take):
        chosen += _spread_over_centres(patients[patients["label"] == cls], int(k), rng)
    return sorted(chosen)


def _spread_over_centres(patients: "pd.DataFrame", k: int, rng) -> list[str]:
    """``k`` patients drawn at random but spread over the centres (round-robin over centres in a
    random order), so a test set never takes most of one centre's patients: a model that met a
    centre's stain only through one or two training patients learns that stain as their label."""
    centres = patients["center_id"] if "center_id" in patients.columns else None
    if centres is None:
        ids = sorted(patients["patient_id"])
        return [ids[j] for j in rng.permutation(len(ids))[:k]]
    groups = {}
    for centre in sorted(set(centres)):
        ids = sorted(patients.loc[centres == centre, "patient_id"])
        groups[centre] = [ids[j] for j in rng.permutation(len(ids))]
    order = [list(groups)[j] for j in rng.permutation(len(groups))]
    picked: list[str] = []
    while len(picked) < k:
        for centre in order:
            if groups[centre] and len(picked) < k:
                picked.append(groups[centre].pop(0))
    return picked


def _pick_centres(patients: "pd.DataFrame", fraction: float, rng) -> list[str]:
    """Whole centres to hold out: among sets of centres, those whose share of patients is closest
    to ``fraction`` and whose label mix is closest to the whole cohort's (score = |share - fraction|
    + half the L1 distance of the class proportions); one of the near-best is drawn from ``rng``.
    Every set is tried up to 14 centres (16,383 sets), a random 20,000 beyond that."""
    import numpy as np

    table = patients.groupby(["center_id", "label"]).size().unstack(fill_value=0).sort_index()
    centres, counts = list(table.index), table.to_numpy(dtype=float)
    g, n = len(centres), counts.sum()
    if g < 2:
        raise SplitError(
            f"--test-fraction with --group-by center holds out whole centres, and there is only {g} centre; "
            "use --group-by patient, or --test-fraction 0"
        )
    if g <= 14:
        masks = ((np.arange(1, 2**g - 1)[:, None] >> np.arange(g)) & 1).astype(bool)
    else:
        masks = rng.random((20000, g)) < fraction
        masks = masks[masks.any(1) & ~masks.all(1)]
    sizes = masks.astype(float) @ counts  # (sets, classes)
    share = sizes.sum(1) / n
    mix = sizes / np.maximum(sizes.sum(1, keepdims=True), 1)
    overall = counts.sum(0) / n
    score = np.abs(share - fraction) + 0.5 * np.abs(mix - overall).sum(1)
    near = np.flatnonzero(score <= score.min() + 0.01)
    pick = masks[near[rng.integers(len(near))]]
    held = {c for c, m in zip(centres, pick) if m}
    return sorted(patients.loc[patients["center_id"].isin(held), "patient_id"])


def make_split(
    index: "pd.DataFrame",
    n_folds: int = 5,
    seed: int = 0,
    group_by: GroupBy = "patient",
    test_fraction: float = 0.0,
    labels: list[str] | None = None,
) -> Split:
    """Stratified (group) k-fold over the patients of a tile index; every fold is checked."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    patients = patient_table(index)
    test = holdout(patients, test_fraction, seed, group_by)
    rest = patients[~patients["patient_id"].isin(test)].reset_index(drop=True)
    _check_counts(rest, n_folds, group_by)
    groups = rest["center_id" if group_by == "center" else "patient_id"].to_numpy()
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    with warnings.catch_warnings():  # "least populated class has only N members": checked below instead
        warnings.simplefilter("ignore", UserWarning)
        for k, (tr, va) in enumerate(splitter.split(rest, rest["label"], groups)):
            folds.append(Fold(k, sorted(rest["patient_id"].iloc[tr]), sorted(rest["patient_id"].iloc[va])))
    split = Split(folds, test, group_by, seed, test_fraction=test_fraction, n_patients=len(patients))
    if (index["patient_id"].astype(str).str.strip() == "").any():
        split.notes.append("some slides had no patient_id: each of them was treated as its own patient")
    if test:
        split.notes.append(describe_test_set(split))
    check_split(split, patients, labels)
    return split


def describe_test_set(split: Split) -> str:
    """One sentence: how many patients were held out, against what was asked."""
    achieved = split.test_fraction_achieved or 0.0
    asked = "" if split.test_fraction is None else f"; --test-fraction asked {split.test_fraction:.1%}"
    text = f"held-out test set: {len(split.test)} of {split.n_patients} patients ({achieved:.1%}{asked})"
    if split.group_by == "center" and split.test_fraction is not None and abs(achieved - split.test_fraction) > 0.05:
        text += ", whole centres being held out, the share can only move in steps of a centre's size"
    return text


def _duplicates(ids: list[str]) -> list[str]:
    seen, twice = set(), set()
    for p in ids:
        (twice if p in seen else seen).add(p)
    return sorted(twice)


def check_split(split: Split, patients: "pd.DataFrame", labels: list[str] | None = None) -> None:
    """Refuse a split that leaks or loses a patient: one on two sides of a fold, in two validation
    folds, listed twice, missing from a fold, unknown to the TileSet, or a TileSet patient the split
    does not place; and one that leaves a class out of a training side."""
    known = set(patients["patient_id"])
    label_of = dict(zip(patients["patient_id"], patients["label"]))
    centre_of = dict(zip(patients["patient_id"], patients["center_id"]))
    wanted = sorted(set(labels) if labels else set(patients["label"]))
    test = set(split.test)
    hint = "Fix the split file or let clotclf make the split"
    twice = _duplicates(split.test)
    if twice:
        raise SplitError(f"the test set lists patient(s) {', '.join(twice[:5])} more than once; {hint}")
    placed = set(split.test).union(*(set(f.train) | set(f.val) for f in split.folds)) if split.folds else set(split.test)
    val_of: dict[str, int] = {}
    for fold in split.folds:
        where = f"fold {fold.index}"
        unknown = sorted((set(fold.train) | set(fold.val) | test) - known)
        if unknown:
            raise SplitError(
                f"{where} names patient(s) not in this TileSet: {', '.join(unknown[:5])}; the split was made for "
                "other data: drop --split-file or re-make it for these tiles"
            )
        for side, ids in (("training", fold.train), ("validation", fold.val)):
            twice = _duplicates(ids)
            if twice:
                raise SplitError(f"{where} lists patient(s) {', '.join(twice[:5])} twice on its {side} side; {hint}")
        for a, b, sides in ((fold.train, fold.val, "training and validation"), (fold.train, test, "training and test"),
                            (fold.val, test, "validation and test")):
            both = sorted(set(a) & set(b))
            if both:
                raise SplitError(
                    f"{where}: patient(s) {', '.join(both[:5])} are on both the {sides} side ({len(both)} in all); "
                    f"a split must be by patient, never by tile or slide. {hint}"
                )
        for p in fold.val:
            if p in val_of:
                raise SplitError(
                    f"patient '{p}' validates in fold {val_of[p]} and in fold {fold.index}: each patient must validate in "
                    f"exactly one fold, or its out-of-fold prediction is counted twice. {hint}")
            val_of[p] = fold.index
        absent = sorted(placed - set(fold.train) - set(fold.val) - test)
        if absent:
            raise SplitError(
                f"{where} leaves out patient(s) {', '.join(absent[:5])} that other folds use ({len(absent)} in all): "
                f"every fold must place every patient on its training or validation side (or in the test set). {hint}")
        if not fold.val:
            raise SplitError(f"{where} has no validation patients; use fewer folds")
        present = {label_of[p] for p in fold.train}
        missing = [lab for lab in wanted if lab not in present]
        if missing:
            raise SplitError(
                f"{where}: no training patient has label {', '.join(missing)}, so the model could never learn it. "
                f"There are too few patients of that class for {len(split.folds)} folds: use fewer folds, a "
                "smaller --test-fraction, or add data"
            )
        if split.group_by == "center":
            shared = {centre_of[p] for p in fold.train} & {centre_of[p] for p in fold.val}
            if shared:
                raise SplitError(
                    f"{where}: centre(s) {', '.join(sorted(shared))} on both sides of a --group-by center split"
                )
    outside = sorted(known - placed)
    if outside:
        raise SplitError(
            f"the split places no fold or test side for {len(outside)} patient(s) of this TileSet (e.g. "
            f"{', '.join(outside[:5])}): it was made for other data, or the TileSet gained patients since. Drop "
            "--split-file (or start a new run) so the split is made for these tiles")


def save_split(split: Split, path: str | Path) -> None:
    write_json(path, split.to_dict())


def load_split(path: str | Path, index: "pd.DataFrame", labels: list[str] | None = None) -> Split:
    """Read a ``split.json`` (as saved with a run) and check it against this tile index."""
    p = Path(path)
    if not p.is_file():
        raise SplitError(f"split file '{p}' does not exist; give the split.json of an earlier run")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        folds = [Fold(int(f.get("fold", i)), [str(x) for x in f["train"]], [str(x) for x in f["val"]])
                 for i, f in enumerate(data["folds"])]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SplitError(
            f"split file '{p}' is not a clotclf split ({type(exc).__name__}: {exc}); it needs "
            '{"folds": [{"train": [...], "val": [...]}, ...], "test": [...]}'
        ) from None
    if not folds:
        raise SplitError(f"split file '{p}' has no folds")
    patients = patient_table(index)
    test = [str(x) for x in data.get("test", [])]
    split = Split(folds, test, str(data.get("group_by", "patient")), int(data.get("seed", 0)), [f"loaded from {p}"],
                  test_fraction=None if data.get("test_fraction") is None else float(data["test_fraction"]),
                  n_patients=len(set(test).union(*(set(f.train) | set(f.val) for f in folds))))
    check_split(split, patients, labels)
    return split

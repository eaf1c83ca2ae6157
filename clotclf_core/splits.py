"""Patient-level splits: which patients train, which validate, which are held out for testing.

Tiles of one slide, and slides of one patient, look alike. A split by tile (what the published
STRIP AI notebooks did) puts the same patient on both sides and measures memory, not skill. So
every split here is made on a table with one row per patient, label-stratified, and every split
is checked before use: a patient on both sides, or a class missing from the training side, is
refused with a :class:`SplitError`.

- ``group_by="patient"``: stratified k-fold over patients.
- ``group_by="center"``: stratified *group* k-fold with centres as groups, so no centre is on both
  sides (a leave-centre-out check of how a model travels to another hospital).
- ``test_fraction``: patients held out before the folds are made; no fold ever trains or
  validates on them, so they give an estimate untouched by early stopping or model choice.

A split is saved with the run (``split.json`` and ``config.json``'s ``split``) and can be fed
back with ``--split-file`` to train another model on exactly the same patients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import ClotclfError

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "group_by": self.group_by,
            "seed": self.seed,
            "n_folds": len(self.folds),
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


def holdout(patients: "pd.DataFrame", fraction: float, seed: int, group_by: str = "patient") -> list[str]:
    """Pick about ``fraction`` of the patients (label-stratified, whole centres if grouped) as a test set."""
    if fraction <= 0:
        return []
    if not 0 < fraction < 1:
        raise SplitError(f"--test-fraction must be between 0 and 1 (got {fraction})")
    from sklearn.model_selection import StratifiedGroupKFold

    n_parts = max(2, round(1 / fraction))
    groups = patients["center_id" if group_by == "center" else "patient_id"].to_numpy()
    if len(set(groups)) < n_parts:
        raise SplitError(
            f"--test-fraction {fraction} needs at least {n_parts} {group_by}s to hold some out "
            f"(found {len(set(groups))}); lower the fraction or use --test-fraction 0"
        )
    splitter = StratifiedGroupKFold(n_splits=n_parts, shuffle=True, random_state=seed)
    _, test_idx = next(splitter.split(patients, patients["label"], groups))
    return sorted(patients["patient_id"].iloc[test_idx].tolist())


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
    split = Split(folds, test, group_by, seed)
    if (index["patient_id"].astype(str).str.strip() == "").any():
        split.notes.append("some slides had no patient_id: each of them was treated as its own patient")
    check_split(split, patients, labels)
    return split


def check_split(split: Split, patients: "pd.DataFrame", labels: list[str] | None = None) -> None:
    """Refuse a split that leaks a patient across sides, names unknown patients, or leaves a
    class out of a training side."""
    known = set(patients["patient_id"])
    label_of = dict(zip(patients["patient_id"], patients["label"]))
    centre_of = dict(zip(patients["patient_id"], patients["center_id"]))
    wanted = sorted(set(labels) if labels else set(patients["label"]))
    test = set(split.test)
    for fold in split.folds:
        where = f"fold {fold.index}"
        unknown = sorted((set(fold.train) | set(fold.val) | test) - known)
        if unknown:
            raise SplitError(
                f"{where} names patient(s) not in this TileSet: {', '.join(unknown[:5])}; the split was made for "
                "other data: drop --split-file or re-make it for these tiles"
            )
        for a, b, sides in ((fold.train, fold.val, "training and validation"), (fold.train, test, "training and test"),
                            (fold.val, test, "validation and test")):
            both = sorted(set(a) & set(b))
            if both:
                raise SplitError(
                    f"{where}: patient(s) {', '.join(both[:5])} are on both the {sides} side ({len(both)} in all); "
                    "a split must be by patient, never by tile or slide. Fix the split file or let clotclf make the split"
                )
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


def save_split(split: Split, path: str | Path) -> None:
    from .io import write_json

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
    split = Split(folds, [str(x) for x in data.get("test", [])], str(data.get("group_by", "patient")),
                  int(data.get("seed", 0)), [f"loaded from {p}"])
    check_split(split, patient_table(index), labels)
    return split

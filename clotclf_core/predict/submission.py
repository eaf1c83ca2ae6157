"""Who the patients of a prediction are, and ``submission.csv``: exactly one row per patient.

A slide's patient is the manifest's ``patient_id``; without one (no manifest, or no such column),
the STRIP AI image-id convention ``<patient>_<n>`` (``006388_0`` and ``006388_1`` are slides of
patient ``006388``); slide names that follow neither are refused, unless ``--slide-is-patient``
makes each slide its own patient. A patient none of whose slides gave a usable tile still gets
its row: :data:`NO_TILE_NOTE`. Rows are rounded so they still sum to exactly 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clotclf_core.inputs import check_folder
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.slides.manifest import manifest_from_files, read_manifest
from clotclf_core.slides.open import slide_files

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


#: what a patient without a single usable tile gets in submission.csv, and why
NO_TILE_NOTE = ("equal probabilities (1/number of classes: 0.5 for CE / LAA), the constant that scores best on the "
                "class-weighted STRIP AI metric (ln 2 = 0.693); the training prior would score worse (about 0.80)")


#: the STRIP AI image-id convention: ``<patient>_<n>`` (e.g. ``006388_0`` is slide 0 of patient ``006388``)
STRIP_IMAGE_ID = re.compile(r"^(?P<patient>.+)_(?P<num>\d+)$")


@dataclass
class Job:
    """The slides this prediction is about, in order, and whose patient each one is."""

    image_ids: list[str]
    patient_of: dict[str, str]
    patients_from: str  #: "manifest", "image-id convention <patient>_<n>", or "each slide its own patient"
    labels: dict[str, str]  #: image_id -> label, when the manifest has one

    @property
    def patients(self) -> list[str]:
        """Every patient of the job, in the order of their first slide (the manifest's order)."""
        return list(dict.fromkeys(self.patient_of[i] for i in self.image_ids))


def patients_of(ids: list[str], given: dict[str, str], slide_is_patient: bool, where: str) -> tuple[dict[str, str], str]:
    """Whose patient each slide is: the manifest's patient_id, else the STRIP AI image-id
    convention ``<patient>_<n>``, else (asked for) each slide its own patient, else a refusal."""
    if ids and all(i in given for i in ids):
        return {i: given[i] for i in ids}, "manifest"
    if slide_is_patient:
        return {i: given.get(i, i) for i in ids}, "each slide its own patient (--slide-is-patient)"
    matches = {i: STRIP_IMAGE_ID.match(i) for i in ids if i not in given}
    odd = sorted(i for i, m in matches.items() if m is None)
    if odd:
        raise ClotclfError(
            f"cannot tell which patient each slide belongs to: {len(matches)} slide(s) have no patient_id ({where}), "
            f"and {len(odd)} of them (e.g. '{odd[0]}') do not follow the STRIP AI image-id convention <patient>_<n>. "
            "Pass --manifest with a patient_id column (Kaggle's test.csv has one), or --slide-is-patient to make each "
            "slide its own patient (submission.csv then has one row per slide)"
        )
    source = "manifest, else the image-id convention <patient>_<n>" if given else "image-id convention <patient>_<n>"
    return {i: given[i] if i in given else matches[i]["patient"] for i in ids}, source


def job_of(slides_dir: str | Path | None, manifest: str | Path | None, slide_is_patient: bool,
           ids: list[str] | None = None) -> Job:
    """The image_ids this prediction is about (the manifest's rows, or every slide file in the
    folder, or ``ids``: a feature store's slides), each with its patient (:func:`patients_of`) and
    label. Labels are not checked: prediction needs none (STRIP AI's ``other.csv`` labels ``Other`` /
    ``Unknown`` are kept as given; metrics are computed only when every label is one the models know)."""
    if manifest is not None:
        df = read_manifest(manifest, labels=None, require_labels=False)
        filled = set(df.attrs.get("patients_from_image_id", set()))
        ids = list(df["image_id"])
        given = {i: p for i, p in zip(df["image_id"], df["patient_id"]) if i not in filled}
        where = f"the manifest '{manifest}' gives none"
        slide_labels = {i: lab for i, lab in zip(df["image_id"], df["label"]) if lab}
    elif ids is not None:
        given, where, slide_labels = {}, "no --manifest", {}
    else:
        folder = check_folder(slides_dir, "slide folder", "check the SLIDES argument")
        ids = list(manifest_from_files(slide_files(folder))["image_id"])
        given, where, slide_labels = {}, "no --manifest", {}
    if not ids:
        raise ClotclfError(f"no slides to predict in '{slides_dir if ids is None else 'the feature store'}'"
                           + (f" (manifest '{manifest}')" if manifest else ""))
    patient_of, source = patients_of(ids, given, slide_is_patient, where)
    return Job(ids, patient_of, source, slide_labels)


def round_rows(frame: "pd.DataFrame", cols: list[str]) -> "pd.DataFrame":
    """Probabilities to 6 decimals whose rows still sum to exactly 1 (the last column takes the rest)."""
    values = np.round(frame[cols].to_numpy(dtype=np.float64), 6)
    values = values / values.sum(axis=1, keepdims=True)
    values = np.round(values, 6)
    values[:, -1] = np.round(1.0 - values[:, :-1].sum(axis=1), 6)
    out = frame.copy()
    out[cols] = values
    return out

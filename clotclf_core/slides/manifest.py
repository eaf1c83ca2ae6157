"""Manifests: which slides exist, whose they are, and their labels (format in docs/data-formats.md).

A manifest is a CSV with at least ``image_id`` (and ``label`` for training); ``patient_id`` and
``center_id`` when known. The Kaggle Mayo Clinic STRIP AI ``train.csv`` (image_id, center_id,
patient_id, image_num, label) and ``other.csv`` (image_id, patient_id, image_num,
other_specified, label) read as they are. Every problem is reported with the file, the CSV line,
the offending value and the fix, because a manifest is typed or exported by hand and a silent
mistake here (a duplicated slide, a patient with two labels) would leak into every later metric.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from clotclf_core.plugin.errors import ClotclfError

log = logging.getLogger("clotclf.manifest")

REQUIRED = ("image_id", "patient_id", "center_id", "label")
#: characters that cannot appear in an image_id: it names files (pixels/<image_id>.npy)
_BAD_ID_CHARS = set('/\\:*?"<>|')


class ManifestError(ClotclfError):
    """A manifest that cannot be used as it is."""


def _line(i: int) -> int:
    """CSV line of data row ``i`` (0-based; line 1 is the header)."""
    return i + 2


def check_image_id(image_id: str, where: str) -> None:
    """Raise if ``image_id`` cannot name a file in a TileSet."""
    if not image_id:
        raise ManifestError(f"{where}: empty image_id; every row needs one (e.g. the slide's file name without extension)")
    if image_id in (".", "..") or any(c in _BAD_ID_CHARS for c in image_id) or image_id != image_id.strip():
        raise ManifestError(
            f"{where}: image_id {image_id!r} cannot name a file (no path separators, :*?\"<>| or surrounding spaces); "
            "rename it in the manifest and the slide file"
        )


def read_manifest(
    path: str | Path, labels: Iterable[str] | None = ("CE", "LAA"), require_labels: bool = True
) -> "pandas.DataFrame":  # noqa: F821 - pandas is imported lazily
    """Read and check a manifest; return a DataFrame with image_id, patient_id, center_id, label
    (as strings, in this order) followed by any extra columns of the file, unchanged.

    - ``labels``: the allowed label values (``--label``); a label outside them is an error.
      ``None``: labels are not checked at all (prediction, which needs none: STRIP AI's ``other.csv``
      labels ``Other`` / ``Unknown`` are kept as given).
    - ``require_labels``: training needs a label on every row; prediction does not
      (``False``: the ``label`` column may be missing or empty, a non-empty label must still be known).
    - A missing ``patient_id`` column (or an empty cell) falls back to the image_id, i.e. each
      slide counts as its own patient: said once in the log and in ``df.attrs["notes"]``.
    - A missing ``center_id`` column becomes ``""``.
    """
    import pandas as pd

    from clotclf_core.inputs import why_unusable

    path = Path(path)
    allowed = None if labels is None else [str(x) for x in labels]
    if allowed is not None and not allowed:
        raise ManifestError("no labels given: pass at least one --label (e.g. --label CE --label LAA)")
    problem = why_unusable(path)
    if problem or not path.is_file():
        what = problem or "is a folder, not a CSV file"
        raise ManifestError(f"manifest '{path}' {what}" + (": check the path given to --manifest" if problem in (None, "does not exist") else ""))
    _check_fields(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise ManifestError(f"manifest '{path}' is empty: it needs a header line (image_id,label,...) and one row per slide") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ManifestError(f"manifest '{path}' is not a readable CSV ({first}); save it as UTF-8 comma-separated text") from None

    df.columns = [str(c).strip() for c in df.columns]
    for col in df.columns:
        df[col] = df[col].str.strip()
    notes: list[str] = []

    if "image_id" not in df.columns:
        raise ManifestError(
            f"manifest '{path}' has no 'image_id' column (columns: {', '.join(df.columns) or 'none'}); "
            "add one naming each slide (its file name without extension)"
        )
    if require_labels and "label" not in df.columns:
        raise ManifestError(
            f"manifest '{path}' has no 'label' column (columns: {', '.join(df.columns)}); "
            f"training needs one label per slide ({', '.join(allowed or [])})"
        )
    if len(df) == 0:
        raise ManifestError(f"manifest '{path}' has a header but no rows: add one row per slide")

    if "label" not in df.columns:
        df["label"] = ""
    if "center_id" not in df.columns:
        df["center_id"] = ""
    if "patient_id" not in df.columns:
        df["patient_id"] = df["image_id"]
        filled = set(df["image_id"])
        notes.append(f"manifest '{path}' has no patient_id column: each slide is treated as its own patient. "
                     f"{LEAKAGE}")
    else:
        empty = df["patient_id"] == ""
        filled = set(df.loc[empty, "image_id"])
        if empty.any():
            df.loc[empty, "patient_id"] = df.loc[empty, "image_id"]
            notes.append(f"manifest '{path}': {int(empty.sum())} row(s) without patient_id are treated as their own "
                         f"patient. {LEAKAGE}")

    seen: dict[str, int] = {}
    for i, image_id in enumerate(df["image_id"]):
        where = f"manifest '{path}' line {_line(i)}"
        check_image_id(image_id, where)
        if image_id in seen:
            raise ManifestError(
                f"{where}: image_id '{image_id}' already appears on line {_line(seen[image_id])}; "
                "each slide must be listed once (remove or rename one of the rows)"
            )
        seen[image_id] = i

    for i, label in enumerate(df["label"] if allowed is not None else []):
        if label == "" and not require_labels:
            continue
        if label not in allowed:
            got = "an empty label" if label == "" else f"label '{label}'"
            raise ManifestError(
                f"manifest '{path}' line {_line(i)} (image_id '{df['image_id'].iat[i]}'): {got}; allowed labels are "
                f"{', '.join(allowed)} (fix the row, or choose the labels with --label)"
            )

    labelled = df[df["label"] != ""] if allowed is not None else df.iloc[:0]
    for patient, group in labelled.groupby("patient_id", sort=False):
        found = list(dict.fromkeys(group["label"]))
        if len(found) > 1:
            rows = ", ".join(f"line {_line(int(i))} '{lab}'" for i, lab in zip(group.index, group["label"]))
            raise ManifestError(
                f"manifest '{path}': patient '{patient}' has slides with different labels ({rows}); "
                "a patient's clot has one origin: correct the label or the patient_id"
            )

    for note in notes:
        log.warning(note)
    extra = [c for c in df.columns if c not in REQUIRED]
    df = df[list(REQUIRED) + extra].reset_index(drop=True)
    df.attrs["notes"] = notes
    df.attrs["path"] = str(path)
    df.attrs["patients_from_image_id"] = filled  #: image_ids whose patient_id was filled in from the image_id
    return df


#: said wherever slides lack a patient id: the split cannot keep a patient's slides together
LEAKAGE = ("PATIENT LEAKAGE POSSIBLE: slides of one patient can land on both sides of a training split; "
           "add a patient_id column (`clotclf train --require-patients` refuses such data)")


def _check_fields(path: Path) -> None:
    """Separator and rows with too many fields, named with their line: pandas would shift such a row
    into its index (blaming the wrong column), and read a tab-separated file as one column."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError:
        raise ManifestError(f"manifest '{path}' is not UTF-8 text (a spreadsheet or binary file?); "
                            "save it as UTF-8 comma-separated text (CSV)") from None
    header = next((line for line in lines if line.strip()), None)
    if header is None:
        return  # empty: reported by the reader
    if "," not in header:
        for sep, name in (("\t", "tab"), (";", "semicolon"), ("|", "'|'")):
            if sep in header:
                raise ManifestError(
                    f"manifest '{path}' is {name}-separated, not comma-separated (its header line is "
                    f"{header.strip()[:80]!r}); save it as CSV with commas (e.g. image_id,patient_id,center_id,label)")
    rows = list(csv.reader(lines))
    width = len(rows[0]) if rows else 0
    for i, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) > width:  # (a short row reads as empty trailing values, which the checks below judge)
            raise ManifestError(
                f"manifest '{path}' line {i} has {len(row)} fields but the header has {width} "
                f"({', '.join(c.strip() for c in rows[0])}): a comma inside a value? Put that value in double "
                "quotes, or remove the extra field")


def manifest_from_files(paths: Iterable[Path]) -> "pandas.DataFrame":  # noqa: F821
    """A label-less manifest for slide files found without a manifest: image_id = file stem.

    Two files with the same stem (``a.svs`` and ``a.tif``) are an error: they would share an id.
    """
    import pandas as pd

    by_id: dict[str, Path] = {}
    for p in sorted(Path(x) for x in paths):
        image_id = p.stem
        check_image_id(image_id, f"slide file '{p}'")
        if image_id in by_id:
            raise ManifestError(
                f"slide files '{by_id[image_id]}' and '{p}' would both get image_id '{image_id}'; "
                "rename one, or pass a --manifest naming the slides"
            )
        by_id[image_id] = p
    df = pd.DataFrame(
        {"image_id": list(by_id), "patient_id": list(by_id), "center_id": "", "label": "", "path": [str(p) for p in by_id.values()]}
    )
    df.attrs["notes"] = ["no manifest: every slide file is its own patient, without a label"]
    return df

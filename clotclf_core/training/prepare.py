"""What a run trains on: every check that can refuse it (and only reads).

:func:`prepare_run` opens the TileSet, leaves unlabelled slides out, names slides without a
patient id (``PATIENT LEAKAGE POSSIBLE``; ``--require-patients`` refuses them) and the patients
lost to slides that gave no tiles, builds the model once on one input, and makes or loads (and
checks) the split. ``train`` writes nothing before it returns, so a refused command leaves no
half-started run behind. (The records themselves: :mod:`clotclf_core.training.records`.)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clotclf_core.config import load_yaml
from clotclf_core.features.bags import bag_size_for, short_slides_note
from clotclf_core.models.backbones import backbone_spec
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin_manager import get_manager
from clotclf_core.scoring.calibration import check_calibration_set
from clotclf_core.training.kinds import TrainingKind, kind_for
from clotclf_core.training.records import data_record
from clotclf_core.training.settings import TrainSettings, differences, settings_dict
from clotclf_core.training.splits import Split, SplitError, describe_test_set, load_split, make_split

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from clotclf_core.tiling.tileset import TileSet


# ============================================================================ checks that only read


def check_model_options(s: TrainSettings) -> None:
    """The backbone, head and aggregator exist and their options are valid: checked first, before
    minutes of demo-cohort generation and before anything is written."""
    mgr = get_manager()
    for kind in ("backbone", "head", "aggregator"):
        name = getattr(s, kind)
        if name:
            spec = backbone_spec(name) if kind == "backbone" else mgr.get(kind, name)  # run:PATH too
            spec.validate_options(getattr(s, f"{kind}_options"))


def _build_checked(s: TrainSettings, labels: list[str], input_size: int, data: Any, kind: TrainingKind):
    try:
        return kind.build(s, labels, input_size, data)
    except ClotclfError:
        raise
    except Exception as exc:  # a plugin factory's own error: name the options, not a traceback
        names = [getattr(s, k) for k in ("backbone", "head", "aggregator") if getattr(s, k)]
        parts = [f"{k} '{getattr(s, k)}'" for k in ("backbone", "head", "aggregator") if getattr(s, k)]
        shows = " and ".join(f"`clotclf show-plugin {n}`" for n in names)
        raise ClotclfError(
            f"{' with '.join(parts)} cannot be built from these options ({type(exc).__name__}: {str(exc)[:200]}); "
            f"check them with {shows}"
        ) from None


def check_model(s: TrainSettings, labels: list[str], data: Any, kind: TrainingKind) -> tuple[int, str]:
    """Build the model once and push one input through it, so options that validate but cannot be
    built, or an input size the backbone cannot take, are refused before the run directory is
    touched. Returns the input size and where it comes from: ``--input-size``, else the size the
    backbone declares (timm's ``pretrained_cfg``), else the tiles' side."""
    size = s.input_size or data.tile_size
    source = "--input-size" if s.input_size else "the tile side"
    model = _build_checked(s, labels, size, data, kind)
    declared = kind.declared_size(s, model)
    if declared and declared != size:
        what = f"backbone '{s.backbone}'" if s.backbone else "the feature store's encoder"
        size, source = declared, f"declared by the {what}"
        model = _build_checked(s, labels, size, data, kind)
    kind.dry_run(model, size, s)
    return size, source


def _labels_for(s: TrainSettings, index: "pd.DataFrame", where: str) -> list[str]:
    found = sorted(set(index["label"]) - {""})
    if s.labels:
        unknown = [lab for lab in found if lab not in s.labels]
        if unknown:
            raise ClotclfError(
                f"the TileSet '{where}' has label(s) {', '.join(unknown)} that are not in --labels "
                f"{','.join(s.labels)}; add them to --labels or fix the manifest"
            )
        return list(s.labels)
    if not found:
        raise ClotclfError(
            f"the TileSet '{where}' has no labelled tiles; tile the slides with a manifest that has a label column"
        )
    if set(found) <= {"CE", "LAA"}:
        return ["CE", "LAA"]
    if len(found) < 2:
        raise ClotclfError(f"the TileSet '{where}' has only the label {found[0]}; a classifier needs at least two classes")
    return found


def _drop_unlabelled(ts: "TileSet") -> dict[str, int]:
    """Leave the tiles without a label out of ``ts.index`` (in memory only); returns what was left out.

    ``clotclf tile`` accepts manifest rows without a label (slides one only wants to predict on).
    Training cannot use them, so they go before the split is made: no unlabelled patient can land
    in a fold. A patient with labelled and unlabelled slides keeps its labelled ones.
    """
    index = ts.index
    unlabelled = (index["label"] == "").to_numpy()
    if not unlabelled.any():
        return {}
    gone, kept = index[unlabelled], index[~unlabelled]
    ts.index = kept.reset_index(drop=True)
    return {"slides": int(gone["image_id"].nunique()), "tiles": int(len(gone)),
            "patients": int(len(set(gone["patient_id"]) - set(kept["patient_id"])))}


def _ids(items, n: int = 8) -> str:
    items = sorted(items)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def lost_slides(ts: "TileSet") -> dict[str, Any]:
    """Slides of the TileSet that gave no tiles (failed, no tissue) and the patients they cost.

    ``tileset.json`` records each slide's status (and, from this version, its patient id), so a
    patient whose only slide failed is named instead of silently missing from every split."""
    bad = {k: v for k, v in ts.slides.items() if v.get("status") != "done"}
    if not bad:
        return {}
    kept = set(ts.index["patient_id"])
    patients = {v.get("patient_id") for v in bad.values() if v.get("patient_id")}
    return {
        "slides": {k: f"{v.get('status')}: {v.get('reason', '')}".strip().rstrip(":") for k, v in sorted(bad.items())},
        "patients_lost": sorted(patients - kept),
        "patients_reduced": sorted(patients & kept),
        "unknown_patients": sum(1 for v in bad.values() if not v.get("patient_id")),
    }


def _lost_warning(lost: dict[str, Any], where: str, features: bool = False) -> str:
    slides = lost["slides"]
    by_status: dict[str, list[str]] = {}
    for k, why in slides.items():
        by_status.setdefault(why.split(":")[0], []).append(k)
    parts = "; ".join(f"{status.replace('_', ' ')}: {_ids(ids, 5)}" for status, ids in sorted(by_status.items()))
    text = f"{len(slides)} slide(s) of the {'feature store' if features else 'TileSet'} '{where}' gave no tiles ({parts})"
    if lost["patients_lost"]:
        text += f". LOST PATIENT(S), trained and scored on nowhere: {_ids(lost['patients_lost'])}"
    if lost["patients_reduced"]:
        text += f". Patient(s) left with their other slides only: {_ids(lost['patients_reduced'])}"
    if lost["unknown_patients"]:
        text += f". {lost['unknown_patients']} of these slides record no patient (tiled by an older clotclf)"
    if features:  # zero-tile bags: no features, left out of training and scoring
        return text + (f"; they have no features and are left out (no bag). The reasons are in {Path(where) / 'features.json'}; "
                       "fix those slides, re-run `clotclf tile` and `clotclf embed` to use them")
    return text + f". The reasons are in {Path(where) / 'tileset.json'}; fix those slides and re-run `clotclf tile` to use them"


def slides_without_patient(index: "pd.DataFrame") -> list[str]:
    """Slides whose patient id is their own slide id: the manifest gave them none (see manifest.py)."""
    same = index.drop_duplicates("image_id")
    return sorted(same.loc[same["patient_id"] == same["image_id"], "image_id"])


def _patient_warning(no_patient: list[str], n_slides: int) -> str:
    return (f"PATIENT LEAKAGE POSSIBLE: {len(no_patient)} of {n_slides} slide(s) have no patient_id, so each counts as "
            "its own patient and two slides of one patient can land on both sides of the split (training and "
            "validation / test), which inflates every result. Add a patient_id column to the manifest and re-tile "
            "(--require-patients makes this an error)")


@dataclasses.dataclass
class RunData:
    """What a run trains on, every check passed (see :func:`prepare_run`)."""

    ts: "TileSet"  #: its index holds the labelled tiles only
    labels: list[str]
    split: Split
    records: dict[str, Any]  #: config.json's ``tileset`` (the whole TileSet) and ``data`` (what was used) sections
    #: data left out or at risk, always printed (stderr); notes (the test set's size) printed with progress; both in the summary
    warnings: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    input_size: int = 224  #: the model's input side (see :func:`check_model`)


def prepare_run(s: TrainSettings, run_dir: Path, resume: bool, kind: TrainingKind | None = None) -> RunData:
    """Everything that can refuse a run, and only reads: the TileSet, its labels (unlabelled slides
    left out), the model (built once and run on one input) and the split (made or loaded, checked).
    ``train`` writes nothing before this returns, so a refused command leaves no half-started run.
    ``kind``: the kind of training (default: the one ``s`` asks for, :func:`~.kinds.kind_for`)."""
    kind = kind or kind_for(s)
    ts = kind.open_data(s)
    where = s.features or s.tiles
    if len(ts) == 0:
        what = "feature store" if s.form.on_features else "TileSet"
        raise ClotclfError(f"the {what} '{where}' has no tiles; check `clotclf tile`'s summary (no tissue found?)")
    described = kind.records(s, ts)
    labels = _labels_for(s, ts.index, where)
    dropped = _drop_unlabelled(ts)
    data = data_record(s, ts)
    warnings, notes = [], []
    no_patient = slides_without_patient(ts.index)
    if no_patient:
        if s.require_patients:
            raise ClotclfError(
                f"--require-patients: {len(no_patient)} of {data['n_slides']} slide(s) of '{s.tiles}' have no patient_id "
                f"(e.g. {_ids(no_patient, 3)}); add a patient_id column to the manifest and re-tile")
        warnings.append(_patient_warning(no_patient, data["n_slides"]))
        data["n_slides_without_patient_id"] = len(no_patient)
    lost = lost_slides(ts)
    if lost:
        warnings.append(_lost_warning(lost, where, s.form.on_features))
        data |= {"n_slides_without_tiles": len(lost["slides"]), "n_patients_lost": len(lost["patients_lost"])}
    if dropped:
        data |= {"n_unlabelled_slides_left_out": dropped["slides"], "n_unlabelled_patients_left_out": dropped["patients"]}
        warnings.append(
            f"{dropped['slides']} slide(s) of the TileSet have no label ({dropped['tiles']} tiles; {dropped['patients']} "
            "patient(s) with no labelled slide at all): they are left out of training, validation and test. Label "
            "them in the manifest and re-tile to use them")
    input_size, size_from = check_model(s, labels, ts, kind)
    data["input_size"], data["input_size_from"] = input_size, size_from
    if s.form.is_mil:
        bag_size = bag_size_for(s.form, s.bag_size)
        data["bag_size"] = bag_size
        if (note := short_slides_note(ts.index, bag_size)):
            notes.append(note)
    if size_from.startswith("declared") and input_size != ts.tile_size and not s.form.on_features:
        notes.append(f"input size {input_size} px, {size_from} (the {ts.tile_size}-px tiles are resized on the fly; "
                     "--input-size chooses another)")
    try:
        if resume and (run_dir / "split.json").is_file():
            split = load_split(run_dir / "split.json", ts.index, labels)
        elif s.split_file:
            split = load_split(s.split_file, ts.index, labels)
        else:
            split = make_split(ts.index, s.folds, s.seed, s.group_by, s.test_fraction, labels)
    except SplitError as exc:
        if not dropped:
            raise
        raise SplitError(f"{exc} (counted after leaving out the {dropped['slides']} unlabelled slide(s))") from None
    if len(split.folds) != s.folds:
        raise ClotclfError(f"the split has {len(split.folds)} folds but folds={s.folds}; set --folds {len(split.folds)}")
    if split.test:
        notes.append(describe_test_set(split))
    if s.calibrate != "none":
        _check_calibration_patients(s, ts.index, split, labels)
    return RunData(ts, labels, split, {**described, "data": data}, warnings, notes, input_size)


def _check_calibration_patients(s: TrainSettings, index: "pd.DataFrame", split: Split, labels: list[str]) -> None:
    """``--calibrate`` needs enough patients of every class to fit on: every non-test patient
    (out of fold) under ``--fold all``, else the fold's validation patients. Checked before training."""
    if s.fold == "all":
        patients, fitted_on = set(index["patient_id"]) - set(split.test), "out-of-fold"
    else:
        patients, fitted_on = set(split.folds[int(s.fold)].val), "validation"
    label_of = index.drop_duplicates("patient_id").set_index("patient_id")["label"]
    mine = label_of[label_of.index.isin(patients)]
    check_calibration_set(len(mine), {name: int((mine == name).sum()) for name in labels}, fitted_on)


def default_out(s: TrainSettings) -> str:
    name = "-".join(n.split("/")[-1] for n in (s.backbone, s.aggregator) if n)
    return str(Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def check_out(s: TrainSettings, run_dir: Path, resume: bool) -> None:
    """``--out`` can hold this run: not a file, not another run (unless resuming it with the same settings)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ClotclfError(f"--out '{run_dir}' is a file, not a folder: choose a folder for the run directory")
    started = (run_dir / "training.yaml").is_file() or (run_dir / "split.json").is_file()
    if resume and not started:
        raise ClotclfError(f"--resume: '{run_dir}' holds no run to resume (no training.yaml); start it without --resume")
    if not resume and started:
        raise ClotclfError(
            f"'{run_dir}' already holds a training run; add --resume to continue it, or choose another --out"
        )
    if resume:
        diff = differences(load_yaml(run_dir / "training.yaml"), settings_dict(s))
        if diff:
            raise ClotclfError(
                f"--resume: '{run_dir}' was started with other settings ({'; '.join(diff[:4])}). Resume with "
                f"the same settings (--config {run_dir / 'training.yaml'} --resume), or choose another --out"
            )

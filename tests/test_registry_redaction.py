"""A push publishes no patient, slide or centre identifiers and no local paths unless asked
(--include-split); the run directory keeps everything; a push that would still hold identifiers
after redaction is refused."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

from test_registry import NS, Registry, make_run, reg, start_hub  # noqa: E402,F401  (reg: the hub|local fixture)

from clotclf_core.plugin import CONFIG_NAME, WEIGHTS_NAME  # noqa: E402
from clotclf_registry.redact import IdentifierLeft, split_hash  # noqa: E402

PATIENTS = {"train": ["4f2a1c", "8b0e77", "0c93d1"], "val": ["a41e2f"], "test": ["77d0b9", "e1f0aa"]}
SLIDES = ["4f2a1c_0", "4f2a1c_1", "8b0e77_0", "0c93d1_0", "a41e2f_0", "77d0b9_0", "e1f0aa_0"]


@pytest.fixture(scope="module")
def clinical(tmp_path_factory) -> Path:
    """A run as training leaves it on a hospital machine: the split, absolute paths, a card that
    quotes them, predictions with slide ids, split.csv, and its TileSet still on disk."""
    from clotclf_core.models.card import write_model_card

    root = tmp_path_factory.mktemp("clinical")
    run = make_run(root / "run", seed=21)
    tiles = root / "data" / "mayo-tiles"
    tiles.mkdir(parents=True)
    (tiles / "tiles.csv").write_text("image_id,patient_id,center_id,label,x,y\n"
                                     + "".join(f"{s},{s[:6]},11,CE,0,0\n" for s in SLIDES) + "secret_slide_9,b00b1e,4,LAA,0,0\n")
    cfg = json.loads((run / CONFIG_NAME).read_text())
    weights_dir = str(root / "bg-filter")
    cfg["split"] = {"strategy": "stratified k-fold by patient", "n_folds": 5, "fold": 0, "seed": 0, **PATIENTS}
    cfg["tileset"] = {"path": str(tiles), "n_tiles": 100, "settings": {"filters": [{"name": "mobilenetv3", "options": {"weights": weights_dir}}]}}
    cfg["training"] = {"tiles": str(tiles), "out": str(run), "split_file": str(Path.home() / "cohort" / "split.csv"), "seed": 0}
    cfg["data"] = {"dataset": "mayo-tiles", "synthetic": False, "n_patients": 6}
    (run / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    write_model_card(run, cfg, json.loads((run / "metrics.json").read_text()))
    (run / "predictions_val.csv").write_text("image_id,patient_id,center_id,p_CE\n" + "a41e2f_0,a41e2f,11,0.7\n")
    (run / "split.csv").write_text("patient_id,subset\n" + "".join(f"{p},{k}\n" for k, ps in PATIENTS.items() for p in ps))
    return run


def pushed_files(reg: Registry, repo: str) -> dict[str, bytes]:
    path = Path(reg.pull(repo).path)
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def identifiers_in(data: bytes) -> list[str]:
    text = data.decode("utf-8", "replace")
    return [i for i in [*SLIDES, *(p for ps in PATIENTS.values() for p in ps), "secret_slide_9", "b00b1e"] if i in text]


def test_a_push_publishes_counts_and_a_salted_hash_not_the_cohort(reg, clinical):
    before = {p.name: p.read_bytes() for p in clinical.iterdir() if p.is_file()}
    reg.push(clinical, repo="clinical")
    files = pushed_files(reg, "clinical")
    assert "split.csv" not in files and "predictions_val.csv" not in files
    for name, data in files.items():
        assert identifiers_in(data) == [], f"{name} publishes identifiers"
        text = data.decode("utf-8", "replace")
        assert str(clinical.parent) not in text and str(Path.home()) not in text, f"{name} publishes a local path"
    cfg = json.loads(files[CONFIG_NAME])
    split = cfg["split"]
    salt = cfg["weights_sha256"][:32]
    assert split["redacted"] is True and split["salt"] == salt
    assert (split["n_train_patients"], split["n_val_patients"], split["n_test_patients"]) == (3, 1, 2)
    assert split["patients_sha256"]["train"] == split_hash(PATIENTS["train"], salt)  # the owner can check their split
    assert cfg["tileset"]["path"] == "mayo-tiles" and cfg["training"]["out"] == "run"
    assert cfg["training"]["split_file"] == "~/cohort/split.csv"
    assert cfg["tileset"]["settings"]["filters"][0]["options"]["weights"] == "bg-filter"
    assert cfg["model"] == json.loads(before[CONFIG_NAME])["model"]  # what rebuilds the model is untouched
    assert {p.name: p.read_bytes() for p in clinical.iterdir() if p.is_file()} == before  # the run keeps everything


def test_relative_paths_of_the_run_are_cut_to_their_last_component(clinical, tmp_path):
    from clotclf_core.models.card import write_model_card

    run = Path(shutil.copytree(clinical, tmp_path / "run"))
    cfg = json.loads((run / CONFIG_NAME).read_text())
    cfg["training"] |= {"out": "studies/stroke-mayo-2024/run", "tiles": "../cohorts/mayo/tiles", "demo_dir": "clotclf-demo"}
    (run / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    write_model_card(run, cfg, json.loads((run / "metrics.json").read_text()))
    reg = Registry("local", tmp_path)
    reg.push(run, repo="relative")
    files = pushed_files(reg, "relative")
    training = json.loads(files[CONFIG_NAME])["training"]
    assert (training["out"], training["tiles"], training["demo_dir"]) == ("run", "tiles", "clotclf-demo")
    for name, data in files.items():
        assert b"stroke-mayo-2024" not in data and b"cohorts/mayo" not in data, f"{name} publishes a local path"


def test_include_split_publishes_the_split_knowingly(reg, clinical, capsys):
    reg.push(clinical, repo="with-split", include_split=True)
    err = capsys.readouterr().err
    assert "warning: --include-split: the push publishes the run's split with" in err and "split.csv" in err
    files = pushed_files(reg, "with-split")
    assert json.loads(files[CONFIG_NAME])["split"]["train"] == PATIENTS["train"] and "split.csv" in files
    assert str(clinical.parent) not in files[CONFIG_NAME].decode()  # paths are redacted all the same


@pytest.mark.parametrize(
    ("where", "edit", "pattern"),
    [
        (CONFIG_NAME, lambda c: c | {"name": "model for patient 4f2a1c"}, r"config\.json would still hold the identifier '4f2a1c' at name"),
        (CONFIG_NAME, lambda c: c | {"notes": {"secret_slide_9": "excluded"}}, r"identifier 'secret_slide_9' at notes\.secret_slide_9"),
        ("metrics.json", lambda m: m | {"worst_patient": "8b0e77"}, r"its metrics\.json holds the identifier '8b0e77'"),
        ("README.md", "\nPatient a41e2f was excluded by hand.\n", r"its README\.md holds the identifier 'a41e2f' \(line \d+\)"),
    ],
)
def test_a_push_that_would_still_publish_identifiers_is_refused(clinical, tmp_path, where, edit, pattern):
    run = Path(shutil.copytree(clinical, tmp_path / "run"))
    path = run / where
    if callable(edit):
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    else:
        path.write_text(path.read_text() + edit)
    reg = Registry("local", tmp_path)
    with pytest.raises(IdentifierLeft, match=pattern + ".*nothing was pushed.*--include-split"):
        reg.push(run, repo="leaky")
    assert not (reg.root / NS / "leaky").exists()


def test_the_cli_says_why_a_push_is_refused(clinical, tmp_path):
    from badinput import assert_clean_error, invoke

    run = Path(shutil.copytree(clinical, tmp_path / "run"))
    cfg = json.loads((run / CONFIG_NAME).read_text())
    (run / CONFIG_NAME).write_text(json.dumps(cfg | {"name": "cohort of 0c93d1"}))
    registry = tmp_path / "registry"
    registry.mkdir()
    outcome = invoke(["push", str(run), "--repo", "leaky", "--registry", registry.as_uri(), "--namespace", NS])
    assert_clean_error(outcome, 2, ["would still hold the identifier", "0c93d1", "nothing was pushed"])
    ok = invoke(["push", str(run), "--repo", "leaky", "--registry", registry.as_uri(), "--namespace", NS, "--include-split"])
    assert ok.exit_code == 0, ok.stderr
    assert (run / WEIGHTS_NAME).is_file()


def test_per_centre_tables_are_published_with_letters_not_centre_identifiers(clinical, tmp_path):
    from clotclf_registry.api import publishable

    run = tmp_path / "run"
    shutil.copytree(clinical, run)
    metrics = json.loads((run / "metrics.json").read_text())
    row = {"n_patients": 3, "class_counts": {"CE": 2, "LAA": 1}, "weighted_log_loss": 0.5,
           "weighted_log_loss_ci95": [0.3, 0.7], "balanced_accuracy": 0.75, "roc_auc": 1.0}
    on = (metrics.get("headline") or {}).get("on", "val")
    metrics["per_center"] = {on: [{"center_id": "mayo-north", **row}, {"center_id": "stroke-unit-7", **row}]}
    (run / "metrics.json").write_text(json.dumps(metrics))
    from clotclf_core.models.card import write_model_card

    write_model_card(run, json.loads((run / CONFIG_NAME).read_text()), metrics)  # the run's own card names them
    assert "| mayo-north | 3 |" in (run / "README.md").read_text()
    files, _ = publishable(run, json.loads((run / CONFIG_NAME).read_text()), f"{NS}/centres")
    published = {name: data if isinstance(data, bytes) else data.read_bytes() for name, data in files}
    text = published["metrics.json"].decode() + published["README.md"].decode()
    assert "mayo-north" not in text and "stroke-unit-7" not in text
    assert [r["center_id"] for r in json.loads(published["metrics.json"])["per_center"][on]] == ["centre A", "centre B"]
    assert "| centre A | 3 |" in published["README.md"].decode()  # the card's per-centre table
    assert json.loads((run / "metrics.json").read_text())["per_center"][on][0]["center_id"] == "mayo-north"  # kept locally

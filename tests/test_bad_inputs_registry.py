"""Bad inputs of the registry, model loading and plugin commands: one clear ``Error:`` line, the
documented exit code, no traceback, nothing half-written (issue 11's battery, this area's part)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from badinput import assert_clean_error, files_under, invoke, run, run_on_small_disk  # noqa: E402
from test_registry import NS, Registry, make_run  # noqa: E402

from clotclf_core.plugin import CONFIG_NAME, WEIGHTS_NAME  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("bad-inputs") / "run", seed=31)


@pytest.fixture(scope="module")
def flipped(model, tmp_path_factory) -> Path:
    """The run with one bit of one weight flipped: still a valid safetensors file."""
    run_dir = Path(shutil.copytree(model, tmp_path_factory.mktemp("flipped") / "run"))
    data = bytearray((run_dir / WEIGHTS_NAME).read_bytes())
    data[-3] ^= 0x10
    (run_dir / WEIGHTS_NAME).write_bytes(bytes(data))
    return run_dir


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_flipped_byte_in_the_weights_is_refused_by_evaluate_and_predict(flipped, tmp_path, command):
    out = tmp_path / "out"
    args = (["evaluate", str(flipped), "--tiles", str(tmp_path / "tiles"), "--out", str(out)] if command == "evaluate" else
            ["predict", str(REPO / "tests" / "data"), "--model", str(flipped), "--out", str(out)])
    outcome = invoke(args)
    assert_clean_error(outcome, 2, ["model.safetensors", "is not the file its config.json describes", "changed or damaged"])
    assert files_under(out) == []


def test_pull_into_a_read_only_output_folder_is_one_line_and_writes_nothing(model, tmp_path):
    reg = Registry("local", tmp_path)
    reg.push(model)
    mount = tmp_path / "ro"
    env = {"CLOTCLF_REGISTRY": reg.settings.registry, "CLOTCLF_NAMESPACE": NS, "CLOTCLF_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "0"}
    outcome, left = run_on_small_disk(["pull", "tiny", "--out", str(mount / "models" / "tiny")], mount, readonly=True, env=env)
    assert_clean_error(outcome, 2, ["read-only", "nothing was written"])
    assert left == []
    full, left = run_on_small_disk(["pull", "tiny", "--out", str(mount / "models" / "tiny")], mount, size_kb=64, env=env)
    assert_clean_error(full, 2, ["out of disk space while writing the files of 'lab/tiny'", str(mount / "models"), "MiB needed",
                                 "nothing was left half-written", "pull again"])
    assert left == []  # no half model next to --out, not even the folder made for it


def test_a_push_to_a_read_only_store_is_one_line(model, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    args = ["push", str(model), "--repo", "tiny", "--registry", store.as_uri(), "--namespace", NS]
    outcome, left = run_on_small_disk(args, store, readonly=True)
    assert_clean_error(outcome, 2, ["cannot push 'lab/tiny'", "read-only", "pulls work without it"])
    assert left == []


def test_pulls_from_a_read_only_store_still_work(model, tmp_path):
    reg = Registry("local", tmp_path)
    reg.push(model)
    store = tmp_path / "mounted"
    env = {"CLOTCLF_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "0"}
    args = ["pull", "tiny", "--registry", store.as_uri(), "--namespace", NS, "--out", str(tmp_path / "here")]
    outcome, _ = run_on_small_disk(args, store, size_kb=8192, readonly=True, env=env,
                                   prepare=f"cp -a {reg.root}/. {store}/")
    assert outcome.exit_code == 0, outcome.stderr
    assert "verified:" in outcome.stdout and (tmp_path / "here" / WEIGHTS_NAME).is_file()


@pytest.mark.parametrize(
    ("args", "code", "mentions"),
    [
        (["--disable-plugin", "no-such-plugin", "list-plugins"], 2, ["--disable-plugin", "no-such-plugin", "installed plugins"]),
        (["smoke-test", "--batch-size", "0"], 2, ["--batch-size", "0 is not in the range x>=1"]),
        (["smoke-test", "cct", "--batch-size", "-3"], 2, ["--batch-size"]),
        (["smoke-test", "--input-size", "0"], 2, ["--input-size"]),
        (["smoke-test", "no-such-plugin"], 2, ["no plugin or component called 'no-such-plugin'", "installed plugins"]),
        (["show-plugin", "cct", "--kind", "wheel"], 2, ["--kind"]),
    ],
)
def test_plugin_command_bad_inputs(args, code, mentions):
    assert_clean_error(invoke(args), code, mentions)


def test_the_smoke_test_api_refuses_a_batch_of_zero_instead_of_blaming_every_model():
    from clotclf_core.plugin import ConfigError
    from clotclf_core.smoke import smoke_all, smoke_plugins

    for call in (lambda: smoke_all(batch_size=0), lambda: smoke_plugins(["heads"], batch_size=0)):
        with pytest.raises(ConfigError, match="--batch-size must be at least 1 .got 0."):
            call()


@pytest.mark.parametrize(
    ("edit", "mentions"),
    [
        (lambda c: c["model"].update(backbone_options={"variant": "cct_2_3x2_32", "num_layers": 10**6}), ["far more than its weights"]),
        (lambda c: c["model"].update(input_size="huge"), ["option 'input_size'"]),
        (lambda c: c.update(model=[1, 2]), ["'model' section is list"]),
        (lambda c: c["plugins"]["backbone"].update(distribution="clotclf-gone", version="9.9"), ["pip install 'clotclf-gone==9.9'"]),
    ],
)
def test_a_broken_run_directory_is_one_line_for_evaluate(model, tmp_path, edit, mentions):
    run_dir = Path(shutil.copytree(model, tmp_path / "run"))
    cfg = json.loads((run_dir / CONFIG_NAME).read_text())
    edit(cfg)
    (run_dir / CONFIG_NAME).write_text(json.dumps(cfg))
    assert_clean_error(invoke(["evaluate", str(run_dir), "--tiles", str(tmp_path / "tiles")]), 2, mentions)


def test_smoke_test_names_a_component_that_fails_to_build_and_exits_1(fake_dist, tmp_path):
    root = fake_dist("fake-bad-head", "fake_bad_head", """
        from clotclf_core.plugin import hookimpl
        from clotclf_core.plugin import ComponentSpec, NoOptions
        def build(opts, in_features, num_classes):
            raise KeyError("a head that cannot count")
        @hookimpl
        def clotclf_heads():
            return [ComponentSpec("head", "badhead", "fails", NoOptions, build)]
    """)
    env = {"PYTHONPATH": str(root)}
    plain = run(["smoke-test", "fake_bad_head"], env=env)
    assert plain.exit_code == 1 and "head 'badhead' (plugin fake_bad_head, distribution fake-bad-head 0.1.0) failed to build" in plain.stdout

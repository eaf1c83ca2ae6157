"""The hostile battery, local half: configs crafted to take memory (a fixed buffer of gigabytes, a
YAML alias bomb), a pulled config naming a distribution of someone else's choosing, a typo'd run
path that must not become a download, and two processes writing one output folder. Each case
checks one ``Error:`` line, exit code 2 and nothing half-written; where a child process runs, the
harness bounds its time (a subprocess timeout), never a timing assertion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub

from badinput import assert_clean_error, invoke, run  # noqa: E402
from test_registry import NS, Registry, make_run  # noqa: E402

from clotclf_core.plugin import CONFIG_NAME, WEIGHTS_NAME, ModelLoadError  # noqa: E402

BOUND = 120  # seconds the harness gives a child process (a cold torch import takes a few here)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("hostile-local") / "run", seed=9)


def edited(src: Path, dst: Path, **model: object) -> Path:
    """A copy of the run ``src`` whose config.json's model section gets ``model`` (weights unchanged)."""
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / CONFIG_NAME).read_text())
    for key, value in model.items():
        if isinstance(value, dict):
            cfg["model"].setdefault(key, {}).update(value)
        else:
            cfg["model"][key] = value
    (dst / CONFIG_NAME).write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory) -> Path:
    """A CCT with a fixed sine position table (not in the weights), its config asking for 8192-px
    images: a 536,870,912-value table (2 GiB) the weights file says nothing about."""
    import torch

    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.saved import save_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="cct", input_size=32,
                                    backbone_options={"variant": "cct_2_3x2_32", "positional_embedding": "sine"}))
    run = save_model(model, tmp_path_factory.mktemp("sine") / "run")
    cfg = json.loads((run / CONFIG_NAME).read_text())
    cfg["model"]["backbone_options"]["img_size"] = 8192
    (run / CONFIG_NAME).write_text(json.dumps(cfg))
    return run


# ----------------------------------------------------------------------------- memory by declaration


def test_a_config_declaring_a_huge_buffer_is_refused_without_allocating_it(sine_run):
    """check_buildable (a pull's check) and load_model (predict, evaluate) refuse it on the meta
    device: the child's peak memory stays far below the 2 GiB table (it was 3.7 GB before)."""
    code = textwrap.dedent(f"""
        from clotclf_core.models.saved import check_buildable, load_model
        for check in (check_buildable, load_model):
            try:
                check({str(sine_run)!r})
                print("accepted")
            except Exception as exc:
                print(type(exc).__name__, str(exc))
        # VmHWM: this process's own peak (ru_maxrss would keep the forking test process's size across exec)
        peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        print("peak_mib", int(peak.split()[1]) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=BOUND)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(lines) == 3 and all("parameters and buffers (a buffer of 536,870,912 values" in line for line in lines[:2]), lines
    assert int(lines[2].split()[1]) < 1536, lines[2]  # torch itself is ~0.5 GiB; the table alone would be 2 GiB


def test_a_pulled_config_declaring_a_huge_buffer_is_one_line_and_nothing_is_kept(sine_run, tmp_path):
    reg = Registry("local", tmp_path)
    reg.raw_push("sine", {WEIGHTS_NAME: sine_run / WEIGHTS_NAME, CONFIG_NAME: sine_run / CONFIG_NAME})
    env = {"CLOTCLF_REGISTRY": reg.settings.registry, "CLOTCLF_NAMESPACE": NS, "CLOTCLF_CACHE_DIR": str(reg.cache)}
    outcome = invoke(["pull", "sine", "--out", tmp_path / "models" / "sine"], env=env)
    assert_clean_error(outcome, 2, ["cannot be used here, so nothing was kept", "parameters and buffers", "img_size"])
    assert not (tmp_path / "models").exists() and not list(reg.cache.rglob(WEIGHTS_NAME))


def test_predict_bounds_its_batches_by_bytes_of_input():
    from clotclf_core.models.inputs import BATCH_INPUT_BYTES, batch_for_input

    assert batch_for_input(64, 224) == 64  # the usual tiles: --batch-size as given
    assert batch_for_input(64, 2048) == 5 and 5 * 3 * 4 * 2048**2 <= BATCH_INPUT_BYTES  # a pulled 2048-px model: 5
    assert batch_for_input(64, 8192, budget=1) == 1  # never below one tile


# ----------------------------------------------------------------------------- no attacker-chosen pip command


def test_a_pulled_config_naming_an_unknown_distribution_gets_no_pip_command(run_dir, tmp_path):
    reg = Registry("local", tmp_path)
    for repo, dist in (("unknown", "totally-legit-plugins"), ("known", "clotclf")):
        cfg = json.loads((run_dir / CONFIG_NAME).read_text())
        cfg["model"]["backbone"] = "resnet-x"
        cfg["plugins"]["backbone"] = {"name": "resnet-x", "plugin": "rx", "distribution": dist, "version": "6.6.6"}
        reg.raw_push(repo, {WEIGHTS_NAME: run_dir / WEIGHTS_NAME, CONFIG_NAME: json.dumps(cfg).encode()})
    env = {"CLOTCLF_REGISTRY": reg.settings.registry, "CLOTCLF_NAMESPACE": NS, "CLOTCLF_CACHE_DIR": str(reg.cache)}
    line = assert_clean_error(invoke(["pull", "unknown"], env=env), 2, [
        "'lab/unknown' from file://", "backbone 'resnet-x' from distribution totally-legit-plugins 6.6.6",
        "is the name this model's config.json gives, not a distribution clotclf knows"])
    assert "pip install" not in line
    line = assert_clean_error(invoke(["pull", "known"], env=env), 2, ["pip install 'clotclf==6.6.6'"])  # a name it knows


def test_install_advice_only_names_commands_for_trusted_or_known_distributions():
    from clotclf_core.plugin_manager import get_manager, install_advice

    assert install_advice("clotclf-x", "1.0", True, "backbone 'x'") == "pip install 'clotclf-x==1.0'"  # the user's own run
    assert "pip install" not in install_advice("clotclf-x", "1.0", False, "backbone 'x'")
    assert install_advice("clotclf", "not a version; rm -rf ~", True, "backbone 'x'") == "pip install 'clotclf'"
    assert "not a valid package name" in install_advice("x @ https://evil.example/x.whl", None, True, "backbone 'x'")
    row = get_manager().requirement("backbone", "nope", {"distribution": "evil-dist", "version": "1.0"}, trusted=False)
    assert row["state"] == "not installed" and "pip install" not in row["fix"] and "evil-dist" in row["fix"]


# ----------------------------------------------------------------------------- YAML aliases


def _bomb(key: str) -> str:
    """A 9-level "billion laughs": ~400 bytes that name 9**9 strings."""
    items = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    items += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return f"{key}: [{', '.join(items)}]\n"


@pytest.mark.parametrize("case", ["train --config", "registry settings file", "an option value", "a huge file"])
def test_a_yaml_bomb_is_refused_before_it_is_expanded(tmp_path, case):
    config = tmp_path / "settings.yaml"
    env: dict[str, str] = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    if case == "train --config":
        config.write_text(_bomb("labels"))
        args = ["train", "--config", config, "--tiles", tmp_path / "none", "--out", tmp_path / "run"]
    elif case == "registry settings file":
        config.write_text(_bomb("endpoint"))
        args, env = ["pull", "lab/x", "--out", tmp_path / "run"], env | {"CLOTCLF_CONFIG": str(config)}
    elif case == "an option value":
        args = ["train", "--backbone-opt", "x=[&a [1, 2], *a]", "--tiles", tmp_path / "none", "--out", tmp_path / "run"]
    else:
        config.write_text("# " + "x" * (2**20 + 10) + "\n")
        args = ["train", "--config", config, "--tiles", tmp_path / "none", "--out", tmp_path / "run"]
    outcome = run(args, env=env, timeout=BOUND)  # it took 39 s and 3 GB (train) or 60+ s and 6 GB (settings) before
    assert_clean_error(outcome, 2, ["more than a settings file can be"] if case == "a huge file" else
                       ["uses a YAML alias (*a", "line 1", "write the values out"])
    assert not (tmp_path / "run").exists()


def test_a_model_card_with_yaml_aliases_is_refused():
    from clotclf_core.models.card import ModelCardError, read_model_card

    with pytest.raises(ModelCardError, match=r"the model card's front matter uses a YAML alias \(\*x, line 2\)"):
        read_model_card("---\nlicense: &x mit\ntags: [*x, *x]\n---\nbody\n")


# ----------------------------------------------------------------------------- a path is never a download


@pytest.fixture
def watched_hub(run_dir, monkeypatch, tmp_path):
    """A Hub holding lab/tiny and clotclf/best_model, set as the registry of the environment; its
    ``requests`` show whether anything was asked of it."""
    from hub_server import HubServer

    from clotclf_core.plugin_manager import reset_manager

    hub = HubServer().start()
    files = {name: (run_dir / name).read_bytes() for name in (WEIGHTS_NAME, CONFIG_NAME, "metrics.json")}
    for repo in (f"{NS}/tiny", "clotclf/best_model", "runs/cct-final"):
        hub.create_repo(repo)
        hub.raw_commit(repo, files, keep=True)
    for name in ("CLOTCLF_REGISTRY", "CLOTCLF_NAMESPACE", "CLOTCLF_CONFIG", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("CLOTCLF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "work" / "runs" / "cct-final-2").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    reset_manager()
    hub.requests.clear()
    yield hub
    hub.stop()


@pytest.mark.parametrize(("ref", "words"), [
    ("runs/cct-final", ["'runs' exists here", "did you mean 'runs/cct-final-2'"]),
    ("./best_model", ["it is written as a path"]),
    ("models/a/b", ["more than one '/'"]),
    ("best_model.safetensors", ["it names a file"]),
])
def test_a_reference_that_may_be_a_path_is_never_sent_to_a_registry(watched_hub, ref, words):
    from clotclf_core.models.runs import resolve_run_dir

    with pytest.raises(ModelLoadError, match="is not a run directory: the path does not exist") as refused:
        resolve_run_dir(ref)
    for w in words:
        assert w in str(refused.value)
    assert "never as a registry name" in str(refused.value) and watched_hub.requests == []


def test_a_short_name_is_looked_up_only_in_a_namespace_the_user_chose(watched_hub, monkeypatch, capsys):
    from clotclf_core.models.runs import resolve_run_dir
    from clotclf_registry.errors import RegistryError

    with pytest.raises(RegistryError, match=r"'best_model' is not a folder here, and a short name is looked up in a registry "
                                            r"only in a namespace you chose .* full name \(clotclf/best_model\)"):
        resolve_run_dir("best_model")
    assert watched_hub.requests == []
    monkeypatch.setenv("CLOTCLF_NAMESPACE", NS)
    path = resolve_run_dir("tiny")
    assert (path / WEIGHTS_NAME).is_file()
    err = capsys.readouterr().err
    assert f"note: model 'tiny' is {NS}/tiny@main (commit " in err and f"from {watched_hub.url}, verified" in err


def test_every_model_from_a_registry_is_announced_on_stderr(watched_hub, tmp_path):
    (tmp_path / "slides").mkdir()
    outcome = invoke(["predict", tmp_path / "slides", "--model", f"{NS}/tiny@main", "--out", tmp_path / "preds"])
    assert f"note: model '{NS}/tiny@main' is {NS}/tiny@main (commit " in outcome.stderr


# ----------------------------------------------------------------------------- one writer per folder

HOLDER = """
import sys, time
from clotclf_core.plugin.lock import output_lock
with output_lock(sys.argv[1], command="clotclf train --out " + sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A real second process holding the lock of ``tmp_path / 'out'``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=BOUND)


def test_a_second_pull_into_a_locked_folder_is_refused_then_takes_over_a_dead_holders_lock(holder, run_dir, tmp_path):
    reg = Registry("local", tmp_path)
    reg.push(run_dir)
    env = {"CLOTCLF_REGISTRY": reg.settings.registry, "CLOTCLF_NAMESPACE": NS, "CLOTCLF_CACHE_DIR": str(reg.cache),
           "HF_HUB_OFFLINE": "0"}
    outcome = run(["pull", "tiny", "--out", tmp_path / "out"], env=env, timeout=BOUND)
    assert_clean_error(outcome, 2, [f"'{tmp_path / 'out'}' is being written by another clotclf process",
                                    f"pid {holder.pid}", "clotclf train --out"])
    assert not (tmp_path / "out").exists()
    holder.send_signal(signal.SIGKILL)  # dies holding it: the kernel drops the flock, the file stays
    holder.wait(timeout=BOUND)
    assert (tmp_path / ".out.clotclf-lock").exists()
    outcome = run(["pull", "tiny", "--out", tmp_path / "out"], env=env, timeout=BOUND)
    assert outcome.exit_code == 0, outcome.stderr
    assert (tmp_path / "out" / WEIGHTS_NAME).is_file() and not (tmp_path / ".out.clotclf-lock").exists()


def test_a_second_train_into_a_locked_run_folder_is_refused(holder, tmp_path):
    outcome = run(["train", "--tiles", tmp_path / "tiles", "--out", tmp_path / "out", "--resume"], timeout=BOUND)
    assert_clean_error(outcome, 2, [f"pid {holder.pid}", "wait for it to finish"])
    assert not (tmp_path / "out").exists()


def test_the_lock_in_one_process(tmp_path):
    from clotclf_core.plugin.lock import OutputLocked, lock_path, output_lock

    target = tmp_path / "new" / "deeper" / "out"
    with output_lock(target, "--out") as path:
        assert path == lock_path(target) and json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputLocked, match=f"pid {os.getpid()}"):  # a second writer, even in the same process
            with output_lock(target):
                pass
    assert not (tmp_path / "new").exists()  # the lock file and the folders made for it are gone
    with output_lock(target):  # and it can be taken again
        pass

"""The registry's CLI commands (in-process, through click's runner), its settings and names, a
model that is not a classifier (the mobilenetv3 background filter's weights by registry name), and
a registry backend provided by another distribution."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub

from test_registry import NS, WRITE_TOKEN, Registry, make_run, start_hub  # noqa: E402

from clotclf_core.cli.main import cli  # noqa: E402
from clotclf_core.plugin import WEIGHTS_NAME, ClotclfError  # noqa: E402
from clotclf_registry import api  # noqa: E402
from clotclf_registry.errors import RegistryError  # noqa: E402
from clotclf_registry.settings import load_settings  # noqa: E402

CLEAN_ENV = {"CLOTCLF_REGISTRY": None, "CLOTCLF_NAMESPACE": None, "CLOTCLF_CACHE_DIR": None, "CLOTCLF_CONFIG": None,
             "CLOTCLF_HUB_XET": None, "HF_ENDPOINT": None, "HF_TOKEN": None, "HF_HUB_OFFLINE": None}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("clirun") / "run", seed=7)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No setting leaks in from the developer's environment or ~/.config."""
    for key in CLEAN_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def clotclf(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


# ----------------------------------------------------------------------------- commands


def test_push_pull_list_against_a_local_registry(run, tmp_path):
    registry = tmp_path / "models"
    registry.mkdir()
    env = {"CLOTCLF_REGISTRY": registry.as_uri(), "CLOTCLF_NAMESPACE": NS, "CLOTCLF_CACHE_DIR": str(tmp_path / "cache")}
    pushed = clotclf("push", str(run), "--repo", "tiny", "--tag", "v1", "-m", "first model", env=env)
    assert pushed.exit_code == 0, pushed.output
    assert f"pushed {run} to {registry.as_uri()}/lab/tiny" in pushed.stdout and "(tag v1)" in pushed.stdout
    assert f"pull it with: clotclf pull lab/tiny@v1 --registry {registry.as_uri()}" in pushed.stdout

    pulled = clotclf("pull", "tiny@v1", "--json", env=env)
    assert pulled.exit_code == 0, pulled.output
    info = json.loads(pulled.stdout)
    assert info["repo_id"] == "lab/tiny" and info["verified_against"] == ["registry", "config.json"]
    assert (Path(info["path"]) / WEIGHTS_NAME).read_bytes() == (run / WEIGHTS_NAME).read_bytes()

    text = clotclf("pull", "lab/tiny", "--out", str(tmp_path / "here"), env=env)
    assert text.exit_code == 0, text.output
    assert f"path: {tmp_path / 'here'}" in text.stdout
    assert "needs: backbone 'cct' from clotclf 0.1.0: installed (0.1.0)" in text.stdout
    assert "use it: clotclf predict SLIDES --model lab/tiny@" in text.stdout

    table = clotclf("list-models", env=env)
    assert table.exit_code == 0, table.output
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "KIND", "BACKBONE", "HEAD", "HEADLINE", "PRIVATE", "UPDATED"]
    assert row.split()[:6] == ["lab/tiny", "classifier", "cct", "linear", "patient", "wLL=0.670"]
    rows = json.loads(clotclf("list-models", "--json", env=env).stdout)
    assert rows[0]["value"] == pytest.approx(0.67) and rows[0]["metric"] == "patient wLL"
    assert clotclf("list-models", "--namespace", "other", env=env).stdout.startswith("no clotclf models in 'other'")


def test_cli_errors_are_one_line_with_exit_code_2_and_never_show_a_token(run, tmp_path):
    hub = start_hub()
    try:
        secret = "hf_cli_SECRET_token_value"
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": secret, "CLOTCLF_NAMESPACE": NS, "CLOTCLF_CACHE_DIR": str(tmp_path)}
        results = [
            clotclf("push", str(run), "--repo", "tiny", env=env),  # unknown token: 401
            clotclf("pull", "tiny", env=env | {"HF_TOKEN": WRITE_TOKEN}),  # no such model
            clotclf("pull", "a/b/c", env=env),
            clotclf("push", str(tmp_path / "nope"), "--repo", "tiny", env=env),
            clotclf("list-models", "--registry", "s3://bucket/x", env=env),
            clotclf("pull", "tiny", "--endpoint", "ftp://x", env=env),
        ]
        for result in results:
            assert result.exit_code == 2, result.output
            assert result.stdout == "" and result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
            assert secret not in result.output and "Traceback" not in result.output
        assert "(HTTP 401)" in results[0].stderr and "'lab/tiny' was not found" in results[1].stderr
        assert "clotclf.registry_backends" in results[4].stderr and "not an http(s) URL" in results[5].stderr

        ok = clotclf("push", str(run), "--repo", "tiny", "--json", env=env | {"HF_TOKEN": WRITE_TOKEN})
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.stdout)["repo_id"] == "lab/tiny" and WRITE_TOKEN not in ok.output
        assert hub.repos["lab/tiny"].branches["main"] == json.loads(ok.stdout)["commit"]
    finally:
        hub.stop()


# ----------------------------------------------------------------------------- settings and names


def test_settings_come_from_option_then_environment_then_config_file_then_default(tmp_path, monkeypatch):
    assert load_settings().namespace == "clotclf" and load_settings().endpoint == "https://huggingface.co"
    config = tmp_path / "config" / "clotclf" / "registry.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("namespace: from-file\nendpoint: https://hub.example.org/\nxet: 'off'\n")
    assert (load_settings().namespace, load_settings().endpoint, load_settings().xet) == ("from-file", "https://hub.example.org", "off")
    monkeypatch.setenv("CLOTCLF_NAMESPACE", "from-env")
    assert load_settings().namespace == "from-env"
    assert load_settings(namespace="from-option").namespace == "from-option"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_settings().offline is True

    other = tmp_path / "elsewhere.yaml"
    other.write_text("registry: file:///srv/models\n")
    monkeypatch.setenv("CLOTCLF_CONFIG", str(other))
    assert load_settings().scheme == "file" and load_settings().registry == "file:///srv/models"
    assert load_settings(registry="https://mirror.example.org/").endpoint == "https://mirror.example.org"

    other.write_text("namspace: typo\n")
    with pytest.raises(RegistryError, match="unknown setting\\(s\\) namspace; known: registry, endpoint, namespace"):
        load_settings()
    monkeypatch.setenv("CLOTCLF_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(RegistryError, match="CLOTCLF_CONFIG=.*missing.yaml does not exist"):
        load_settings()
    monkeypatch.delenv("CLOTCLF_CONFIG")
    with pytest.raises(RegistryError, match="xet: Input should be 'auto', 'on' or 'off'"):
        load_settings(xet="maybe")
    with pytest.raises(ClotclfError, match="namespace 'bad name' is not valid"):
        load_settings(namespace="bad name")


def test_push_names_and_tags():
    """Model names are parsed by clotclf_core.plugin.hub (tests/test_plugin_hub.py); a push adds its own rules."""
    for repo, tag in (("tiny@v1", None), ("tiny", "a" * 40), ("tiny", "x/y"), ("tiny", "../up"), ("a/b/c", None)):
        with pytest.raises(ClotclfError, match="push always goes to the main branch|could be mistaken|not valid|one '/' at most"):
            api.push("unused-run", repo, tag=tag, settings=load_settings())


# ----------------------------------------------------------------------------- a filter's weights


def test_a_background_filter_is_pushed_and_used_by_name_as_filter_weights(tmp_path, monkeypatch):
    import numpy as np
    import torch

    from clotclf_core.plugin_manager import get_manager
    from clotclf_mobilenet_bg._net import BackgroundNet, save_filter_run  # a built-in plugin: must be installed
    torch.manual_seed(0)
    run = tmp_path / "bg"
    save_filter_run(BackgroundNet("mobilenetv3_small_050", input_size=32), run, {})
    (run / "metrics.json").write_text(json.dumps({"validation": {"balanced_accuracy": 0.9}}))

    reg = Registry("local", tmp_path)
    reg.push(run, repo="strip-background", tag="v1")
    row = api.list_models(settings=reg.settings)[0]
    assert (row["kind"], row["backbone"], row["head"]) == ("patch_filter", "mobilenetv3_small_050", "-")

    monkeypatch.setenv("CLOTCLF_REGISTRY", reg.settings.registry)
    monkeypatch.setenv("CLOTCLF_NAMESPACE", NS)
    monkeypatch.setenv("CLOTCLF_CACHE_DIR", str(reg.cache))
    spec = get_manager().get("filter", "mobilenetv3")
    tiles = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    by_name = spec.factory(spec.validate_options({"weights": "strip-background@v1", "device": "cpu"}))
    by_path = spec.factory(spec.validate_options({"weights": str(run), "device": "cpu"}))
    assert str(by_name.run_dir).startswith(str(reg.cache))
    assert np.array_equal(by_name.score(tiles), by_path.score(tiles))


# ----------------------------------------------------------------------------- a backend from a plugin


def test_a_registry_backend_from_another_distribution_gets_every_shared_check(tmp_path, monkeypatch, run):
    """A distribution registering scheme 'mirror' in clotclf.registry_backends (here: the local
    registry under another name) is found by URL scheme, and pushes / pulls go through it."""
    site = tmp_path / "site"
    (site / "fake_mirror-1.0.dist-info").mkdir(parents=True)
    (site / "fake_mirror-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-mirror\nVersion: 1.0\n")
    (site / "fake_mirror-1.0.dist-info" / "entry_points.txt").write_text(
        "[clotclf.registry_backends]\nmirror = fake_mirror:MirrorRegistry\nbroken = fake_mirror:Missing\n"
    )
    (site / "fake_mirror.py").write_text(
        "from clotclf_registry.local import LocalRegistry\n"
        "class MirrorRegistry(LocalRegistry):\n"
        "    def __init__(self, settings, token=None):\n"
        "        super().__init__(settings.model_copy(update={'registry': settings.registry.replace('mirror://', 'file://', 1)}), token)\n"
    )
    monkeypatch.syspath_prepend(str(site))
    (tmp_path / "store").mkdir()
    settings = load_settings(registry=f"mirror://{tmp_path / 'store'}", namespace=NS, cache_dir=str(tmp_path / "cache"))
    pushed = api.push(run, "tiny", settings=settings, quiet=True)
    assert (tmp_path / "store" / NS / "tiny" / "refs.json").is_file()
    assert api.pull("tiny", settings=settings, quiet=True).commit == pushed.commit
    with pytest.raises(RegistryError, match="registry backend 'broken' .* failed to load: AttributeError"):
        api.list_models(settings=load_settings(registry="broken://x"))
    with pytest.raises(RegistryError, match="no registry backend for 's3://b' .*available: hub, broken, file, mirror"):
        api.list_models(settings=load_settings(registry="s3://b"))
    monkeypatch.undo()
    sys.modules.pop("fake_mirror", None)


def test_predict_and_evaluate_take_registry_like_the_registry_commands(tmp_path, monkeypatch):
    """Friction (issue 17): `predict --model NAME` needed CLOTCLF_REGISTRY in the environment."""
    from test_predict import make_run as make_predict_run
    from test_predict import write_slide

    registry = tmp_path / "models"
    registry.mkdir()
    run = make_predict_run(tmp_path / "run", 3)
    (run / "metrics.json").write_text('{"patient": {"weighted_log_loss": 0.6}}')
    monkeypatch.setenv("CLOTCLF_CACHE_DIR", str(tmp_path / "cache"))
    pushed = clotclf("push", str(run), "--repo", "lab/p", "--registry", registry.as_uri())
    assert pushed.exit_code == 0, pushed.output
    pulled = clotclf("pull", "lab/p", "--registry", registry.as_uri())
    assert f"use it: clotclf predict SLIDES --model lab/p@" in pulled.stdout and f"--registry {registry.as_uri()}" in pulled.stdout
    (tmp_path / "slides").mkdir()
    write_slide(tmp_path / "slides" / "a_0.tif", ((300, 300, 180),), 1)
    monkeypatch.setenv("CLOTCLF_REGISTRY", "hub")  # restored after the test: --registry sets it for its command
    out = clotclf("predict", str(tmp_path / "slides"), "--model", "lab/p", "--registry", registry.as_uri(),
                  "--out", str(tmp_path / "p"), "--no-heatmaps", "-q")
    assert out.exit_code == 0, out.output
    assert (tmp_path / "p" / "submission.csv").read_text().startswith("patient_id,CE,LAA\na,")
    for command in ("predict", "evaluate"):
        assert "--registry URL" in clotclf(command, "--help").stdout

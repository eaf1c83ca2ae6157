"""Registry round trips, run against both backends: the Hub (through huggingface_hub, against the
stand-in server in tests/hub_server.py) and a local-directory registry.

Also home of the helpers the other test_registry_* files import (tiny run directories, the
stand-in fixture and a backend-neutral ``Registry`` handle for the tests).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# huggingface_hub's own LFS upload passes a file object as `data=`, which httpx deprecates
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

from hub_server import HubServer, Token  # noqa: E402

from clotclf_core.plugin import CONFIG_NAME, WEIGHTS_NAME, ClotclfError, ModelLoadError, sha256_file  # noqa: E402  # noqa: E402
from clotclf_registry import api  # noqa: E402
from clotclf_registry.errors import IntegrityError, NotAModelError, NotFoundError, RegistryError, UnreachableError  # noqa: E402
from clotclf_registry.factory import open_backend  # noqa: E402
from clotclf_registry.local import commit_id  # noqa: E402
from clotclf_registry.settings import load_settings  # noqa: E402

WRITE_TOKEN = "hf_test_write_0123456789abcdef"  # a value that must never appear in any output
READ_TOKEN = "hf_test_read_0123456789abcdef"
NS = "lab"


# ----------------------------------------------------------------------------- run directories


def make_run(path: Path, seed: int, metrics: dict[str, Any] | None = None) -> Path:
    """A tiny saved model (CCT 2 layers, 32 px; PoolFormer-S12 if the CCT plugin is absent) with a
    metrics.json, as `clotclf train` would leave it (minus the card, which push generates)."""
    import torch

    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.saved import save_model
    from clotclf_core.plugin import PluginError

    torch.manual_seed(seed)
    try:
        model = build_model(ModelConfig(backbone="cct", backbone_options={"variant": "cct_2_3x2_32"}, input_size=32))
    except PluginError:
        model = build_model(ModelConfig(backbone="poolformer", input_size=32))
    save_model(model, path, extra={"training": {"seed": seed}})
    metrics = metrics or {"patient": {"weighted_log_loss": 0.6 + seed / 100, "balanced_accuracy": 0.55, "roc_auc": 0.6}}
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "plots").mkdir(exist_ok=True)
    (path / "plots" / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([seed]) * 64)
    return path


def outputs(run_dir: Path) -> Any:
    import torch

    from clotclf_core.models.saved import load_model

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return load_model(run_dir)(x)


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two different tiny models: ``a`` and ``b``."""
    root = tmp_path_factory.mktemp("runs")
    return {"a": make_run(root / "run-a", seed=1), "b": make_run(root / "run-b", seed=2)}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- registries


def start_hub() -> HubServer:
    return HubServer(
        {
            WRITE_TOKEN: Token("alice", write=True, orgs=(NS,)),
            READ_TOKEN: Token("bob", write=False, orgs=()),
        }
    ).start()


@pytest.fixture
def hub():
    server = start_hub()
    yield server
    server.stop()


class Registry:
    """One registry for a test: its settings, token, and a way to corrupt what it stores."""

    def __init__(self, kind: str, tmp: Path, hub: HubServer | None = None):
        self.kind, self.hub = kind, hub
        self.cache = tmp / "cache"
        if kind == "hub":
            self.root = None
            self.settings = load_settings(registry="hub", endpoint=hub.url, namespace=NS, cache_dir=str(self.cache))
            self.token: Any = WRITE_TOKEN
        else:
            self.root = tmp / "registry"
            self.root.mkdir()
            self.settings = load_settings(registry=self.root.as_uri(), namespace=NS, cache_dir=str(self.cache))
            self.token = None

    def offline(self):
        return self.settings.model_copy(update={"offline": True})

    def backend(self):
        return open_backend(self.settings, self.token)

    def push(self, run: Path, repo: str = "tiny", **kw: Any):
        return api.push(run, repo, settings=self.settings, token=self.token, quiet=True, **kw)

    def pull(self, name: str, **kw: Any):
        settings = kw.pop("settings", self.settings)
        return api.pull(name, settings=settings, token=self.token, quiet=True, **kw)

    def raw_push(self, repo: str, files: dict[str, bytes | Path]) -> str:
        """A commit of arbitrary files, past every check push makes (what a careless or hostile
        uploader can do with other tools)."""
        return self.backend().push(f"{NS}/{repo}", list(files.items()), private=False, tag=None, message="raw").commit

    def tamper(self, repo: str, path: str, data: bytes) -> None:
        """Change the stored bytes of ``path`` at main, leaving every recorded hash as it was."""
        if self.kind == "hub":
            self.hub.tamper(f"{NS}/{repo}", path, data)
            return
        folder = self.root / NS / repo
        head = json.loads((folder / "refs.json").read_text())["branches"]["main"]
        sha = json.loads((folder / "commits" / f"{head}.json").read_text())["files"][path]["sha256"]
        (folder / "objects" / sha[:2] / sha).write_bytes(data)

    def lose(self, repo: str, path: str) -> None:
        """The registry still lists ``path`` at main but has lost its content."""
        if self.kind == "hub":
            self.hub.hide(f"{NS}/{repo}", path)
            return
        folder = self.root / NS / repo
        head = json.loads((folder / "refs.json").read_text())["branches"]["main"]
        sha = json.loads((folder / "commits" / f"{head}.json").read_text())["files"][path]["sha256"]
        (folder / "objects" / sha[:2] / sha).unlink()

    def escaping_commit(self, repo: str, files: dict[str, bytes]) -> None:
        """A commit whose file names were never validated (e.g. ``../x``)."""
        if self.kind == "hub":
            self.hub.create_repo(f"{NS}/{repo}")
            self.hub.raw_commit(f"{NS}/{repo}", files)
            return
        backend = self.backend()
        safe = {f"f{i}": data for i, data in enumerate(files.values())}
        commit = backend.push(f"{NS}/{repo}", list(safe.items()), private=False, tag=None, message="raw").commit
        folder = self.root / NS / repo
        manifest = json.loads((folder / "commits" / f"{commit}.json").read_text())
        manifest["files"] = {name: manifest["files"][f"f{i}"] for i, name in enumerate(files)}
        evil = commit_id(manifest)
        (folder / "commits" / f"{evil}.json").write_text(json.dumps(manifest))
        refs = json.loads((folder / "refs.json").read_text())
        refs["branches"]["main"] = evil
        (folder / "refs.json").write_text(json.dumps(refs))


@pytest.fixture(params=["hub", "local"])
def reg(request, tmp_path):
    if request.param == "hub":
        server = start_hub()
        request.addfinalizer(server.stop)
        return Registry("hub", tmp_path, server)
    return Registry("local", tmp_path)


# ----------------------------------------------------------------------------- round trips


def test_push_pull_round_trip_gives_identical_weights_and_predictions(reg, runs):
    import torch

    pushed = reg.push(runs["a"], tag="v1")
    assert len(pushed.commit) == 40 and pushed.tag == "v1" and not pushed.unchanged
    assert pushed.files == ["README.md", CONFIG_NAME, "metrics.json", WEIGHTS_NAME, "plots/loss.png"]

    pulled = reg.pull("tiny@v1")
    path = Path(pulled.path)
    assert pulled.commit == pushed.commit and pulled.repo_id == f"{NS}/tiny"
    assert (path / WEIGHTS_NAME).read_bytes() == (runs["a"] / WEIGHTS_NAME).read_bytes()
    assert json.loads((path / CONFIG_NAME).read_text()) == json.loads((runs["a"] / CONFIG_NAME).read_text())
    assert (path / "plots" / "loss.png").read_bytes() == (runs["a"] / "plots" / "loss.png").read_bytes()
    assert pulled.verified_against == ["registry", CONFIG_NAME]
    assert [(n["role"], n["name"], n["installed"]) for n in pulled.needs] == [("backbone", "cct", True), ("head", "linear", True)]
    assert torch.equal(outputs(path), outputs(runs["a"]))

    card = (path / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: clotclf" in card and "weights_sha256: " + sha256_file(runs["a"] / WEIGHTS_NAME) in card


def test_revisions_pin_exact_bytes_after_a_second_push(reg, runs):
    first = reg.push(runs["a"], tag="v1")
    second = reg.push(runs["b"], tag="v2")
    assert second.commit != first.commit
    bytes_a = (runs["a"] / WEIGHTS_NAME).read_bytes()
    bytes_b = (runs["b"] / WEIGHTS_NAME).read_bytes()

    def weights(name: str) -> bytes:
        return (Path(reg.pull(name).path) / WEIGHTS_NAME).read_bytes()

    assert weights("tiny") == bytes_b  # main moved
    assert weights(f"{NS}/tiny@main") == bytes_b
    assert weights("tiny@v1") == bytes_a  # tags stay
    assert weights(f"tiny@{first.commit}") == bytes_a  # a commit sha is forever
    assert weights(f"tiny@{second.commit}") == bytes_b

    again = reg.push(runs["b"])  # same files again: no new commit
    assert again.unchanged and again.commit == second.commit


def test_an_existing_tag_is_refused_before_anything_is_pushed(reg, runs):
    first = reg.push(runs["a"], tag="v1")
    with pytest.raises(RegistryError, match="already has a tag 'v1'.*Nothing was pushed"):
        reg.push(runs["b"], tag="v1")
    assert reg.pull("tiny").commit == first.commit


def test_offline_pull_uses_the_cache_and_says_when_a_model_is_not_there(reg, runs):
    pushed = reg.push(runs["a"], tag="v1")
    online = reg.pull("tiny@v1")
    offline = reg.pull("tiny@v1", settings=reg.offline())
    assert offline.from_cache and offline.commit == pushed.commit and offline.path == online.path
    assert offline.verified_against == ["cache", CONFIG_NAME]  # every cached file re-hashed, then config.json
    with pytest.raises(UnreachableError, match=r"'lab/tiny@v2'.* not in .*offline mode is on"):
        reg.pull("tiny@v2", settings=reg.offline())
    with pytest.raises(UnreachableError, match="not in"):
        reg.pull("other", settings=reg.offline())


def test_tampered_weights_are_detected_and_not_kept(reg, runs):
    reg.push(runs["a"])
    good = (runs["a"] / WEIGHTS_NAME).read_bytes()
    bad = good[:-8] + b"\x00" * 8  # same size, other bytes
    reg.tamper("tiny", WEIGHTS_NAME, bad)
    with pytest.raises(IntegrityError, match="tampered|modified or corrupted"):
        reg.pull("tiny")
    assert not list(reg.cache.rglob("snapshots/*/" + WEIGHTS_NAME)), "a copy that failed verification was kept"
    reg.tamper("tiny", WEIGHTS_NAME, good)  # repaired on the server: the next pull works
    assert (Path(reg.pull("tiny").path) / WEIGHTS_NAME).read_bytes() == good


def test_weights_replaced_without_their_config_are_refused(reg, runs):
    reg.raw_push("mixed", {WEIGHTS_NAME: runs["b"] / WEIGHTS_NAME, CONFIG_NAME: runs["a"] / CONFIG_NAME})
    with pytest.raises(IntegrityError, match="not the file its config.json describes"):
        reg.pull("mixed")


def test_missing_model_revision_and_bad_names_are_clear_errors(reg, runs):
    reg.push(runs["a"], tag="v1")
    with pytest.raises(NotFoundError, match="'lab/nope' was not found"):
        reg.pull("nope")
    with pytest.raises(NotFoundError, match="has no revision 'v9'.*main, v1"):
        reg.pull("tiny@v9")
    with pytest.raises(NotFoundError, match="no revision"):
        reg.pull("tiny@" + "0" * 40)
    for bad in ("a/b/c", "tiny@", "bad--name", "-x"):
        with pytest.raises(ClotclfError, match="is not of the form|not valid"):
            reg.pull(bad)


def test_a_listed_file_the_registry_cannot_serve_is_named(reg, runs):
    reg.push(runs["a"])
    reg.lose("tiny", CONFIG_NAME)
    with pytest.raises(RegistryError, match="has no config.json at revision|object of config.json is missing"):
        reg.pull("tiny")
    with pytest.raises(UnreachableError, match="not in|incomplete"):  # what did arrive is never used as the model
        reg.pull("tiny", settings=reg.offline())


def test_repos_that_are_not_clotclf_models_are_refused_before_download(reg, runs):
    reg.raw_push("pickled", {"pytorch_model.bin": b"\x80\x04pickle", CONFIG_NAME: b"{}"})
    with pytest.raises(NotAModelError, match="only pickle-based weights.*safetensors only"):
        reg.pull("pickled")
    reg.raw_push("timmish", {WEIGHTS_NAME: runs["a"] / WEIGHTS_NAME, "open_clip_config.json": b"{}"})
    with pytest.raises(NotAModelError, match="no config.json"):
        reg.pull("timmish")
    reg.raw_push("notes", {"notes.txt": b"hello"})
    with pytest.raises(NotAModelError, match="has no model.safetensors"):
        reg.pull("notes")
    reg.raw_push("foreign-config", {WEIGHTS_NAME: runs["a"] / WEIGHTS_NAME, CONFIG_NAME: b'{"architecture": "x"}'})
    with pytest.raises(NotAModelError, match="not a clotclf model"):
        reg.pull("foreign-config")


def test_a_file_name_escaping_the_target_folder_is_refused(reg, runs, tmp_path):
    reg.escaping_commit("evil", {
        WEIGHTS_NAME: (runs["a"] / WEIGHTS_NAME).read_bytes(),
        CONFIG_NAME: (runs["a"] / CONFIG_NAME).read_bytes(),
        "../../escaped.txt": b"owned",
    })
    out = tmp_path / "deep" / "out"
    with pytest.raises(NotAModelError, match="escape the download folder.*'../../escaped.txt'"):
        reg.pull("evil", out=out)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not out.exists() and not (tmp_path / "deep").exists()  # not even the folders made for it


def test_push_refuses_incomplete_or_broken_run_directories(reg, runs, tmp_path):
    def refused(run: Path, pattern: str) -> None:
        with pytest.raises(ClotclfError, match=pattern):
            reg.push(run, repo="broken")
        with pytest.raises(NotFoundError):  # nothing reached the registry
            reg.pull("broken")

    refused(tmp_path / "missing", "does not exist")
    no_weights = copy_run(runs["a"], tmp_path / "no-weights")
    (no_weights / WEIGHTS_NAME).rename(no_weights / "model.pth")
    refused(no_weights, r"no model.safetensors \(it has model.pth")
    no_config = copy_run(runs["a"], tmp_path / "no-config")
    (no_config / CONFIG_NAME).unlink()
    refused(no_config, "no config.json")
    swapped = copy_run(runs["a"], tmp_path / "swapped")
    shutil.copy(runs["b"] / WEIGHTS_NAME, swapped / WEIGHTS_NAME)
    refused(swapped, "not the file config.json describes")
    no_metrics = copy_run(runs["a"], tmp_path / "no-metrics")
    (no_metrics / "metrics.json").unlink()
    refused(no_metrics, "no metrics.json.*--no-metrics")
    assert reg.push(no_metrics, repo="broken", require_metrics=False).files  # explicitly allowed
    bad_shape = copy_run(runs["a"], tmp_path / "bad-shape")
    cfg = json.loads((bad_shape / CONFIG_NAME).read_text())
    cfg["model"]["labels"] = ["CE", "LAA", "OTHER"]  # head of 3 classes: the 2-class weights do not fit
    (bad_shape / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(RegistryError, match="does not load.*do not fit"):
        reg.push(bad_shape, repo="bad-shape")


def test_pull_of_a_model_needing_an_uninstalled_plugin_names_the_distribution(reg, runs, tmp_path):
    run = copy_run(runs["a"], tmp_path / "needs")
    cfg = json.loads((run / CONFIG_NAME).read_text())
    cfg["model"]["backbone"] = "resnet-x"
    cfg["plugins"]["backbone"] = {"name": "resnet-x", "plugin": "resnetx", "distribution": "clotclf-resnetx", "version": "0.3.1"}
    (run / CONFIG_NAME).write_text(json.dumps(cfg))
    reg.raw_push("needs-plugin", {WEIGHTS_NAME: run / WEIGHTS_NAME, CONFIG_NAME: run / CONFIG_NAME})
    with pytest.raises(ModelLoadError, match=r"was downloaded but cannot be used here, so nothing was kept: .*"
                                             r"backbone 'resnet-x' from distribution clotclf-resnetx 0\.3\.1.*"
                                             r"'clotclf-resnetx' is the name this model's config.json gives, not a "
                                             r"distribution clotclf knows") as refused:
        reg.pull("needs-plugin")
    assert "pip install" not in str(refused.value)  # a name from elsewhere is never put in front of the user as a command
    assert not list(reg.cache.rglob(WEIGHTS_NAME))  # "verified" means "loads here": nothing was kept
    result = reg.pull("needs-plugin", check_plugins=False)  # the API can still fetch it for a machine that has the plugin
    assert [n["installed"] for n in result.needs] == [False, True]


def test_pull_to_an_out_folder_is_atomic_and_replaces_only_an_earlier_pull(reg, runs, tmp_path):
    first = reg.push(runs["a"], tag="v1")
    reg.push(runs["b"])
    out = tmp_path / "models" / "tiny"
    result = reg.pull("tiny@v1", out=out)
    assert Path(result.path) == out.resolve()
    assert (out / WEIGHTS_NAME).read_bytes() == (runs["a"] / WEIGHTS_NAME).read_bytes()
    record = json.loads((out / ".clotclf-pull.json").read_text())
    assert record["commit"] == first.commit and record["ref"] == "lab/tiny@v1"
    assert not (out / ".cache").exists()
    reg.pull("tiny", out=out)  # an earlier pull is replaced
    assert (out / WEIGHTS_NAME).read_bytes() == (runs["b"] / WEIGHTS_NAME).read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no staging or backup left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(RegistryError, match="holds other files"):
        reg.pull("tiny", out=mine)
    assert (mine / "notes.txt").read_text() == "keep"


def test_list_models_shows_backbone_head_and_headline_metric(reg, runs, tmp_path):
    reg.push(runs["a"], repo="model-a")
    reg.push(runs["b"], repo="model-b")
    reg.raw_push("not-clotclf", {"notes.txt": b"x"})
    rows = api.list_models(settings=reg.settings, token=reg.token)
    assert [r["name"] for r in rows] == [f"{NS}/model-a", f"{NS}/model-b"]
    assert rows[0]["backbone"] == "cct" and rows[0]["head"] == "linear" and rows[0]["kind"] == "classifier"
    assert rows[0]["metric"] == "patient wLL" and rows[0]["value"] == pytest.approx(0.61)
    assert rows[1]["value"] == pytest.approx(0.62)
    assert api.list_models("nobody", settings=reg.settings, token=reg.token) == []


def test_a_run_with_its_own_card_keeps_its_text_and_gains_registry_metadata(reg, runs, tmp_path):
    run = copy_run(runs["a"], tmp_path / "carded")
    (run / "README.md").write_text("---\nlicense: mit\ntags: [mine]\n---\n\n# My model\n\nHand-written notes.\n")
    reg.push(run, repo="carded")
    card = (Path(reg.pull("carded").path) / "README.md").read_text()
    from clotclf_core.models.card import read_model_card

    meta, body = read_model_card(card)
    assert body == "# My model\n\nHand-written notes.\n"
    assert meta["license"] == "mit" and meta["library_name"] == "clotclf"
    assert meta["tags"][0] == "mine" and "clotclf" in meta["tags"] and "cct" in meta["tags"]
    assert meta["clotclf"]["backbone"] == "cct" and meta["clotclf"]["weights_sha256"] == sha256_file(run / WEIGHTS_NAME)
    assert (run / "README.md").read_text().startswith("---\nlicense: mit")  # the run itself is untouched


def test_model_names_resolve_anywhere_a_run_directory_is_accepted(reg, runs, monkeypatch):
    import torch

    from clotclf_core.models.runs import resolve_run_dir
    from clotclf_core.models.saved import load_model

    pushed = reg.push(runs["a"], tag="v1")
    monkeypatch.setenv("CLOTCLF_REGISTRY", reg.settings.registry)
    monkeypatch.setenv("HF_ENDPOINT", reg.settings.endpoint)
    monkeypatch.setenv("CLOTCLF_NAMESPACE", NS)
    monkeypatch.setenv("CLOTCLF_CACHE_DIR", str(reg.cache))
    if reg.token:
        monkeypatch.setenv("HF_TOKEN", reg.token)
    for name in ("tiny", "tiny@v1", f"{NS}/tiny@{pushed.commit}"):
        path = resolve_run_dir(name)
        assert torch.equal(outputs(path), outputs(runs["a"]))
    assert load_model(resolve_run_dir("tiny")).labels == ["CE", "LAA"]
    import clotclf_core.predict.run as predict

    by_name, by_path = predict.load_models([f"{NS}/tiny@v1", str(runs["a"])])  # what `clotclf predict --model` does
    assert sha256_file(by_name.run_dir / WEIGHTS_NAME) == sha256_file(runs["a"] / WEIGHTS_NAME)
    assert by_name.config == by_path.config
    with pytest.raises(ModelLoadError, match=r"read as a path \(it is written as a path\), never as a registry name"):
        resolve_run_dir("./no/such/run")  # a path: no registry lookup at all
    with pytest.raises(NotFoundError, match="'nope' is not a local folder, and the registry could not provide it"):
        resolve_run_dir("nope")

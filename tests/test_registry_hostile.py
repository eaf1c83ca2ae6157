"""A pull from a hostile or broken registry: every file checked against the registry's hash, only
the documented layout, size caps, config.json that must build, nothing kept when anything fails;
moved tags; control characters from remote text; credentials in --endpoint; and a local store
that is damaged, read-only or raced by two first pushes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub

from test_registry import NS, WRITE_TOKEN, Registry, make_run, reg, start_hub  # noqa: E402,F401  (reg: the hub|local fixture)

from clotclf_core.plugin import (  # noqa: E402
    CONFIG_NAME,
    WEIGHTS_NAME,
    ModelLoadError,  # noqa: E402
)
from clotclf_registry import api, layout  # noqa: E402
from clotclf_registry.errors import IntegrityError, NotAModelError, RegistryError  # noqa: E402
from clotclf_registry.local import commit_id  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("hostile") / "run", seed=11)


@pytest.fixture
def hub_reg(tmp_path):
    server = start_hub()
    yield Registry("hub", tmp_path, server)
    server.stop()


def stored(reg: Registry, repo: str, path: str) -> bytes:
    """The bytes the registry stores for ``path`` at main."""
    if reg.kind == "hub":
        commit = reg.hub._resolve_commit(reg.hub.repos[f"{NS}/{repo}"], "main")
        return reg.hub.blobs[commit.files[path].sha256]
    folder = reg.root / NS / repo
    head = json.loads((folder / "refs.json").read_text())["branches"]["main"]
    sha = json.loads((folder / "commits" / f"{head}.json").read_text())["files"][path]["sha256"]
    return (folder / "objects" / sha[:2] / sha).read_bytes()


def nothing_kept(reg: Registry) -> None:
    left = [p for p in reg.cache.rglob("*") if p.is_file() and "snapshots" in p.parts or
            (p.parent.name == "blobs" and not p.name.endswith(".incomplete"))]
    assert left == [], f"kept after a failed pull: {left}"


def downloads(reg: Registry) -> list[str]:
    return [p for m, p in reg.hub.requests if m == "GET" and "/resolve/" in p]


def model_files(run: Path, **changes: bytes | Path) -> dict[str, bytes | Path]:
    return {WEIGHTS_NAME: run / WEIGHTS_NAME, CONFIG_NAME: run / CONFIG_NAME, "metrics.json": run / "metrics.json"} | changes


def config_with(run: Path, weights: bytes | None = None, **model: object) -> bytes:
    cfg = json.loads((run / CONFIG_NAME).read_text())
    cfg["model"] |= model
    if weights is not None:
        cfg["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    return json.dumps(cfg).encode()


# ----------------------------------------------------------------------------- every file verified


def test_a_swapped_config_is_refused_and_nothing_is_kept(reg, run, capsys):
    reg.push(run)
    config = stored(reg, "tiny", CONFIG_NAME)
    swapped = re.sub(rb'"CE",(\s+)"LAA"', rb'"LAA",\1"CE"', config)
    assert swapped != config and len(swapped) == len(config)  # the attack of the issue: same length, labels swapped
    reg.tamper("tiny", CONFIG_NAME, swapped)
    with pytest.raises(IntegrityError, match=r"config\.json of 'lab/tiny' from .* hashes to (git blob sha1|sha256) .* but the "
                                             r"registry (lists|records)|config.json of 'lab/tiny' in .* hashes to sha256"):
        reg.pull("tiny")
    nothing_kept(reg)
    out = capsys.readouterr()
    assert "Revision(s) not found" not in out.out + out.err
    reg.tamper("tiny", CONFIG_NAME, config)  # repaired: pulls again
    assert json.loads((Path(reg.pull("tiny").path) / CONFIG_NAME).read_text())["model"]["labels"] == ["CE", "LAA"]


def test_an_edited_model_card_metric_is_refused(reg, run):
    reg.push(run)
    card = stored(reg, "tiny", "README.md")
    edited = re.sub(rb"value: 0\.[0-8]\d*", lambda m: b"value: 0." + b"9" * (len(m.group(0)) - 9), card, count=1)
    assert edited != card and len(edited) == len(card)
    reg.tamper("tiny", "README.md", edited)
    with pytest.raises(IntegrityError, match="README.md of 'lab/tiny'"):
        reg.pull("tiny")
    nothing_kept(reg)


def test_only_the_verified_file_list_is_downloaded(hub_reg, run, tmp_path):
    hub_reg.push(run)
    hub_reg.hub.tree_only(f"{NS}/tiny", "plots/evil.pkl", b"\x80\x04cos\nsystem\n.")  # in the tree listing only
    hub_reg.raw_push("extra", model_files(run, **{"pytorch_model.bin": b"\x80\x04pickle", "LICENSE": b"MIT"}))
    hub_reg.hub.requests.clear()
    result = hub_reg.pull("tiny")
    assert not [p for p in downloads(hub_reg) if "evil" in p] and not (Path(result.path) / "plots" / "evil.pkl").exists()
    extra = hub_reg.pull("extra")
    assert extra.ignored == ["LICENSE", "pytorch_model.bin"] and not any("pytorch_model" in p for p in downloads(hub_reg))
    assert sorted(extra.files) == [CONFIG_NAME, "metrics.json", WEIGHTS_NAME]


def test_a_pickle_under_plots_is_refused_before_or_after_download(reg, run):
    reg.raw_push("pickled-plot", model_files(run, **{"plots/model.pkl": b"\x80\x04cos\nsystem\n."}))
    with pytest.raises(NotAModelError, match=r"plots/model\.pkl under plots/, which may hold pictures only.*nothing was downloaded"):
        reg.pull("pickled-plot")
    reg.raw_push("disguised", model_files(run, **{"plots/loss.png": b"\x80\x04cos\nsystem\n." + b"\x00" * 64}))
    with pytest.raises(NotAModelError, match=r"plots/loss\.png of 'lab/disguised' is not a PNG picture.*nothing was kept"):
        reg.pull("disguised")
    nothing_kept(reg)


def test_oversized_files_are_refused_before_they_are_downloaded(reg, run, monkeypatch):
    monkeypatch.setitem(layout.MAX_BYTES, "plots", 1000)
    reg.raw_push("big", model_files(run, **{"plots/big.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000}))
    if reg.kind == "hub":
        reg.hub.requests.clear()
    with pytest.raises(NotAModelError, match=r"lists plots/big\.png at 5008 bytes, more than clotclf accepts for it \(1000 bytes\)"):
        reg.pull("big")
    if reg.kind == "hub":
        assert downloads(reg) == []
    nothing_kept(reg)


def test_a_hub_announcing_a_huge_plot_or_serving_more_than_it_lists_is_refused(hub_reg, run):
    hub_reg.push(run)
    hub_reg.hub.misreport_size(f"{NS}/tiny", "plots/loss.png", 2 * 2**30)  # "a 2 GiB plot"
    hub_reg.hub.requests.clear()
    with pytest.raises(NotAModelError, match=r"lists plots/loss\.png at 2\.0 GiB, more than clotclf accepts"):
        hub_reg.pull("tiny")
    assert downloads(hub_reg) == []
    hub_reg.hub.misreport_size(f"{NS}/tiny", "plots/loss.png", 10)  # listed small, served bigger
    with pytest.raises(IntegrityError, match=r"lists plots/loss\.png of 'lab/tiny' at 10 bytes but serves 72"):
        hub_reg.pull("tiny")
    assert not [p for p in downloads(hub_reg) if p.endswith("loss.png")]
    nothing_kept(hub_reg)


def test_traversal_and_control_character_names_are_refused(hub_reg, run, tmp_path):
    good = {WEIGHTS_NAME: (run / WEIGHTS_NAME).read_bytes(), CONFIG_NAME: (run / CONFIG_NAME).read_bytes()}
    for i, name in enumerate(["../../escaped.txt", "plots/../../x.png", "/etc/x", "plots/\x1b[2Jx.png", "C:\\x"]):
        hub_reg.escaping_commit(f"evil{i}", good | {name: b"owned"})
        with pytest.raises(NotAModelError, match="escape the download folder or holds control characters") as info:
            hub_reg.pull(f"evil{i}", out=tmp_path / "out")
        assert "\x1b" not in str(info.value)
    assert not list(tmp_path.rglob("escaped.txt")) and not (tmp_path / "out").exists()


def test_a_malformed_safetensors_header_is_refused(reg, run):
    bad = b"\x40\x00\x00\x00\x00\x00\x00\x00" + b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 99]}}'.ljust(64) + b"\x00" * 16
    reg.raw_push("bad-header", {WEIGHTS_NAME: bad, CONFIG_NAME: config_with(run, weights=bad)})
    with pytest.raises(IntegrityError, match=r"model\.safetensors of 'lab/bad-header' is not a readable safetensors file .*"
                                             r"points outside the file.*nothing was kept"):
        reg.pull("bad-header")
    huge = b"\xff" * 8 + b"{}"  # a header length of 2**64 - 1
    reg.raw_push("huge-header", {WEIGHTS_NAME: huge, CONFIG_NAME: config_with(run, weights=huge)})
    with pytest.raises(IntegrityError, match="its header claims"):
        reg.pull("huge-header")
    nothing_kept(reg)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"backbone_options": {"variant": "cct_2_3x2_32", "num_layers": 10**6}}, "far more than its weights"),
        ({"backbone_options": {"variant": "cct_2_3x2_32", "embed_dim": 2**16, "num_heads": 2}}, "far more than its weights"),
        ({"input_size": 10**6}, "option 'input_size'"),
        ({"backbone_options": {"variant": "cct_2_3x2_32", "num_layers": "two"}}, "option 'num_layers'"),
        ({"labels": "CE"}, "option 'labels'"),
    ],
)
def test_absurd_options_in_a_pulled_config_are_refused(reg, run, change, pattern):
    reg.raw_push("absurd", {WEIGHTS_NAME: run / WEIGHTS_NAME, CONFIG_NAME: config_with(run, **change)})
    with pytest.raises(ModelLoadError, match=f"'lab/absurd' from .* was downloaded but cannot be used here, so nothing was kept.*{pattern}"):
        reg.pull("absurd")
    nothing_kept(reg)


# ----------------------------------------------------------------------------- tags, remote text, credentials


def test_a_tag_that_moved_since_the_last_pull_is_reported(reg, run, tmp_path, capsys):
    first = reg.push(run, tag="v1")
    other = make_run(tmp_path / "other", seed=12)
    second = reg.push(other, tag="v2")
    assert reg.pull("tiny@v1").moved_from is None and reg.pull("tiny@v1", out=tmp_path / "pinned").moved_from is None
    if reg.kind == "hub":
        reg.hub.move_tag(f"{NS}/tiny", "v1", second.commit)
    else:
        refs_path = reg.root / NS / "tiny" / "refs.json"
        refs = json.loads(refs_path.read_text())
        refs["tags"]["v1"]["commit"] = second.commit
        refs_path.write_text(json.dumps(refs))
    capsys.readouterr()
    for kw in ({}, {"out": tmp_path / "pinned"}):
        moved = reg.pull("tiny@v1", **kw)
        assert moved.commit == second.commit and moved.moved_from == first.commit
        err = capsys.readouterr().err
        assert (f"warning: tag 'v1' of 'lab/tiny' at {reg.backend().label} now points to commit {second.commit[:12]}, but it "
                f"pointed to {first.commit[:12]} when it was last pulled here") in err and f"lab/tiny@{second.commit}" in err
    assert reg.pull("tiny").moved_from is None  # main moving is what branches do


def test_text_from_a_remote_config_is_printed_with_control_characters_escaped(run, tmp_path):
    from badinput import assert_clean_error, invoke

    reg = Registry("local", tmp_path)
    cfg = json.loads((run / CONFIG_NAME).read_text())
    cfg["model"]["backbone"] = "resnet-x"
    cfg["plugins"]["backbone"] = {"name": "resnet-x", "plugin": "rx", "distribution": "evil\x1b]0;pwned\x07\x1b[2J", "version": "1\u202e0"}
    reg.raw_push("ansi", {WEIGHTS_NAME: run / WEIGHTS_NAME, CONFIG_NAME: json.dumps(cfg).encode()})
    env = {"CLOTCLF_REGISTRY": reg.settings.registry, "CLOTCLF_NAMESPACE": NS, "CLOTCLF_CACHE_DIR": str(reg.cache)}
    outcome = invoke(["pull", "ansi"], env=env)
    line = assert_clean_error(outcome, 2, ["resnet-x", "not installed", "not a valid package name"])
    assert "pip install" not in line
    assert "\x1b" not in outcome.stderr and "\x07" not in outcome.stderr and "\u202e" not in outcome.stderr
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J" in line and "1\\u202e0" in line
    cfg["model"]["backbone"] = "cct\x1b[31m"
    reg.raw_push("ansi2", {WEIGHTS_NAME: run / WEIGHTS_NAME, CONFIG_NAME: json.dumps(cfg).encode()})
    outcome = invoke(["pull", "ansi2"], env=env)
    assert_clean_error(outcome, 2, ["is not a component name"])
    assert "\x1b" not in outcome.stderr


def test_credentials_written_into_the_endpoint_are_never_echoed(run, tmp_path):
    from badinput import invoke
    from test_registry_hub import free_port

    hub = start_hub()
    secret = "s3cretPassw0rd"
    try:
        port = hub.url.rsplit(":", 1)[1]
        env = {"HF_TOKEN": WRITE_TOKEN, "CLOTCLF_NAMESPACE": NS, "CLOTCLF_CACHE_DIR": str(tmp_path / "cache"),
               "CLOTCLF_REGISTRY": None, "HF_ENDPOINT": None, "CLOTCLF_HUB_XET": None}
        outcomes = [
            invoke(["push", str(run), "--repo", "tiny", "--endpoint", f"http://alice:{secret}@127.0.0.1:{port}"], env=env),
            invoke(["pull", "tiny", "--endpoint", f"http://alice:{secret}@127.0.0.1:{port}"], env=env),
            invoke(["pull", "tiny", "--endpoint", f"http://alice:{secret}@127.0.0.1:{free_port()}"], env=env),
            invoke(["pull", "tiny", "--endpoint", f"ftp://alice:{secret}@127.0.0.1"], env=env),
            invoke(["list-models", "--endpoint", f"http://127.0.0.1:{port}/?token={secret}"], env=env),
            invoke(["push", str(run), "--repo", "tiny", "--endpoint", f"http://127.0.0.1:{port}/?token={secret}"], env=env),
        ]
        for outcome in outcomes:
            assert secret not in outcome.stdout + outcome.stderr, outcome.stdout + outcome.stderr
        assert "127.0.0.1" in outcomes[2].stderr and "alice" not in outcomes[2].stderr
    finally:
        hub.stop()


# ----------------------------------------------------------------------------- a damaged or shared local store


@pytest.fixture
def local(tmp_path, run):
    reg = Registry("local", tmp_path)
    reg.push(run, tag="v1")
    return reg


@pytest.mark.parametrize(
    ("target", "content", "pattern"),
    [
        ("repo.json", b"\x00garbage", "repo.json' in .* is not valid JSON"),
        ("repo.json", b"[1, 2]", "is not a clotclf-local-registry/1 repo description"),
        ("refs.json", b"[]", "refs.json' in .* holds list, not an object of branches and tags"),
        ("refs.json", b'{"branches": ["main"]}', "has branches that are not names mapped to commit ids"),
        ("refs.json", b'{"branches": {}, "tags": {"v1": "abc"}}', "has tags that are not names mapped to"),
    ],
)
def test_damaged_store_files_are_one_clear_error(local, target, content, pattern):
    (local.root / NS / "tiny" / target).write_bytes(content)
    with pytest.raises(IntegrityError, match=pattern + ".*the registry is damaged"):
        local.pull("tiny@v1")
    with pytest.raises(IntegrityError, match="the registry is damaged"):
        api.list_models(settings=local.settings)


@pytest.mark.parametrize(
    "files",
    [["not", "a", "dict"], {"model.safetensors": "deadbeef"}, {"model.safetensors": {"sha256": "../../../../etc/passwd", "size": 4}},
     {"model.safetensors": {"sha256": "a" * 64, "size": "big"}}],
)
def test_a_crafted_manifest_cannot_point_outside_the_store(local, files):
    folder = local.root / NS / "tiny"
    refs = json.loads((folder / "refs.json").read_text())
    manifest = {"parent": None, "message": "crafted", "created": "now", "files": files}
    evil = commit_id(manifest)  # consistent: its name is its hash
    (folder / "commits" / f"{evil}.json").write_text(json.dumps(manifest))
    refs["branches"]["main"] = evil
    (folder / "refs.json").write_text(json.dumps(refs))
    with pytest.raises(IntegrityError, match="is not a commit manifest|without a sha256 and a size"):
        local.pull("tiny")


def test_a_first_push_under_way_elsewhere_is_not_mistaken_for_a_foreign_folder(tmp_path, run):
    reg = Registry("local", tmp_path)
    half = reg.root / NS / "tiny"
    half.mkdir(parents=True)
    (half / ".lock").touch()  # what another first push has made before it holds the lock
    assert reg.push(run).commit
    errors: list[BaseException] = []

    def push(repo: str) -> None:
        try:
            reg.push(run, repo=repo)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=push, args=("race",)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and reg.pull("race").commit


def test_pulled_folders_get_normal_permissions(local, tmp_path):
    old = os.umask(0o022)
    try:
        cached = Path(local.pull("tiny@v1").path)
        out = Path(local.pull("tiny@v1", out=tmp_path / "mine").path)
    finally:
        os.umask(old)
    for folder in (cached, out):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
        assert stat.S_IMODE((folder / WEIGHTS_NAME).stat().st_mode) == 0o644


def test_a_re_pull_into_out_keeps_files_the_user_added_unless_forced(reg, run, tmp_path):
    reg.push(run)
    out = tmp_path / "models" / "tiny"
    reg.pull("tiny", out=out)
    reg.pull("tiny", out=out)  # an earlier pull, untouched: replaced
    (out / "my-notes.txt").write_text("keep me")
    with pytest.raises(RegistryError, match=r"holds files the earlier pull did not put there \(my-notes\.txt\).*--force"):
        reg.pull("tiny", out=out)
    assert (out / "my-notes.txt").read_text() == "keep me" and (out / WEIGHTS_NAME).is_file()
    reg.pull("tiny", out=out, force=True)
    assert not (out / "my-notes.txt").exists() and (out / WEIGHTS_NAME).is_file()

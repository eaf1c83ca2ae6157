"""Local-directory registry specifics: the content-addressed layout on disk, tampering with it,
a registry that is missing or unmounted, private repos, and interrupted copies."""

from __future__ import annotations

import hashlib
import json
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_registry import NS, Registry, make_run  # noqa: E402

from clotclf_core.plugin import CONFIG_NAME, WEIGHTS_NAME  # noqa: E402
from clotclf_registry import api  # noqa: E402
from clotclf_registry.errors import IntegrityError, NotAModelError, NotFoundError, RegistryError, UnreachableError  # noqa: E402
from clotclf_registry.local import commit_id  # noqa: E402
from clotclf_registry.settings import load_settings  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("localrun") / "run", seed=6)


@pytest.fixture
def reg(tmp_path):
    return Registry("local", tmp_path)


def test_the_layout_is_content_addressed_so_a_commit_always_means_the_same_bytes(reg, run):
    pushed = reg.push(run, tag="v1")
    folder = reg.root / NS / "tiny"
    refs = json.loads((folder / "refs.json").read_text())
    assert refs["branches"] == {"main": pushed.commit} and refs["tags"]["v1"]["commit"] == pushed.commit
    manifest = json.loads((folder / "commits" / f"{pushed.commit}.json").read_text())
    assert commit_id(manifest) == pushed.commit and manifest["parent"] is None
    for name, entry in manifest["files"].items():
        data = (folder / "objects" / entry["sha256"][:2] / entry["sha256"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"], name
    assert manifest["files"][WEIGHTS_NAME]["sha256"] == json.loads((run / CONFIG_NAME).read_text())["weights_sha256"]
    assert reg.push(run).unchanged  # same files: main does not move
    short = reg.pull(f"tiny@{pushed.commit[:8]}")  # an unambiguous commit prefix works too
    assert short.commit == pushed.commit


def test_a_modified_commit_manifest_is_detected(reg, run):
    pushed = reg.push(run)
    path = reg.root / NS / "tiny" / "commits" / f"{pushed.commit}.json"
    manifest = json.loads(path.read_text())
    manifest["message"] = "rewritten history"
    path.write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="was modified after it was written.*nothing was downloaded"):
        reg.pull("tiny")
    assert not list(reg.cache.rglob(WEIGHTS_NAME))


def test_a_missing_or_remote_registry_is_a_clear_error(tmp_path, run):
    missing = load_settings(registry=(tmp_path / "nowhere").as_uri(), namespace=NS, cache_dir=str(tmp_path / "c"))
    with pytest.raises(UnreachableError, match="does not exist or is not mounted: create it \\(mkdir -p"):
        api.pull("tiny", settings=missing, quiet=True)
    with pytest.raises(UnreachableError, match="does not exist: create it first"):
        api.push(run, "tiny", settings=missing, quiet=True)
    with pytest.raises(UnreachableError, match="does not exist or is not mounted"):
        api.list_models(settings=missing)
    remote = load_settings(registry="file://fileserver/share", namespace=NS)
    with pytest.raises(RegistryError, match="names a remote host.*mount the share"):
        api.pull("tiny", settings=remote, quiet=True)
    plain = load_settings(registry=str(tmp_path / "plain"), namespace=NS)
    assert plain.registry == (tmp_path / "plain").as_uri()  # a plain path is a local registry


def test_an_unmounted_registry_falls_back_to_pulled_copies(reg, run, capsys):
    reg.push(run, tag="v1")
    first = reg.pull("tiny@v1")
    reg.root.rename(reg.root.with_name("unmounted"))
    again = reg.pull("tiny@v1")
    assert again.from_cache and again.path == first.path
    assert "is not reachable; using the cached copy of 'lab/tiny@v1'" in capsys.readouterr().err
    with pytest.raises(UnreachableError, match="does not exist or is not mounted"):
        reg.pull("tiny@v2")  # not cached: the registry itself is the problem


def test_private_repos_are_readable_by_their_owner_only(reg, run):
    reg.push(run, repo="secret", private=True)
    mode = stat.S_IMODE((reg.root / NS / "secret").stat().st_mode)
    assert mode == 0o700
    assert api.list_models(settings=reg.settings)[0]["private"] is True
    reg.push(run, repo="open")
    with pytest.raises(RegistryError, match="is not private, but --private was given; nothing was pushed"):
        reg.push(run, repo="open", private=True)


def test_a_folder_that_is_not_a_registry_repo_is_left_alone(reg, run):
    stranger = reg.root / NS / "stranger"
    stranger.mkdir(parents=True)
    (stranger / "data.csv").write_text("a,b\n")
    with pytest.raises(NotAModelError, match="is not a clotclf registry repo; nothing was pushed"):
        reg.push(run, repo="stranger")
    assert sorted(p.name for p in stranger.iterdir()) == ["data.csv"]
    with pytest.raises(NotFoundError, match="'lab/stranger' was not found"):
        reg.pull("stranger")
    reg.push(run, repo="tiny")
    with pytest.raises(NotFoundError, match="did you mean lab/tiny"):
        reg.pull("tinny")


def test_an_interrupted_copy_leaves_no_partial_snapshot(reg, run, monkeypatch):
    import clotclf_registry.local as local

    reg.push(run)
    real, calls = local.copy_hashing, []

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return real(src, dst)

    monkeypatch.setattr(local, "copy_hashing", failing)
    with pytest.raises(RegistryError, match="out of disk space while writing the files of 'lab/tiny'.*MiB needed.*pull again"):
        reg.pull("tiny")
    assert not list(reg.cache.rglob("snapshots/*")), "a partial copy was left where the model goes"
    monkeypatch.setattr(local, "copy_hashing", real)
    assert (Path(reg.pull("tiny").path) / WEIGHTS_NAME).read_bytes() == (run / WEIGHTS_NAME).read_bytes()

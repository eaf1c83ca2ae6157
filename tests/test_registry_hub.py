"""Hub-only behaviour, against the stand-in server: tokens and private repos, 401 / 403, no network,
a server that is not a Hub, interrupted downloads, Xet, and the HF_* environment variables read
by a real `clotclf` process."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub

from test_registry import NS, READ_TOKEN, WRITE_TOKEN, Registry, make_run, start_hub  # noqa: E402

from clotclf_core.plugin import WEIGHTS_NAME  # noqa: E402
from clotclf_registry import api  # noqa: E402
from clotclf_registry.errors import AuthError, NotFoundError, RegistryError, UnreachableError  # noqa: E402
from clotclf_registry.settings import load_settings  # noqa: E402

CLOTCLF = str(Path(sys.executable).parent / "clotclf")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("hubrun") / "run", seed=3)


@pytest.fixture
def reg(tmp_path):
    server = start_hub()
    yield Registry("hub", tmp_path, server)
    server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_private_model_needs_a_token_that_can_read_it(reg, run):
    reg.push(run, repo="secret", private=True)
    for token in (False, READ_TOKEN):  # anonymous, and a user outside the namespace
        with pytest.raises(NotFoundError, match="'lab/secret' was not found.*list-models --namespace lab.*if it is private or gated, use a token that can read it"):
            api.pull("secret", settings=reg.settings, token=token, quiet=True)
        assert api.list_models(settings=reg.settings, token=token) == []
    assert api.pull("secret", settings=reg.settings, token=WRITE_TOKEN, quiet=True).commit
    assert [(r["name"], r["private"]) for r in api.list_models(settings=reg.settings, token=WRITE_TOKEN)] == [("lab/secret", True)]

    reg.push(run, repo="open")
    with pytest.raises(RegistryError, match="exists .* and is public, but --private was given; nothing was pushed"):
        reg.push(run, repo="open", private=True)


def test_401_and_403_are_clear_and_never_show_the_token(reg, run):
    bogus = "hf_bogus_SECRET_never_print_me"
    cases = [
        (bogus, r"refused the credentials \(HTTP 401\).*HF_TOKEN.*write access"),
        (False, r"refused the credentials \(HTTP 401\)"),
        (READ_TOKEN, r"forbids this token to push to 'lab/tiny' \(HTTP 403\).*write access to the namespace 'lab'"),
    ]
    for token, pattern in cases:
        with pytest.raises(AuthError, match=pattern) as info:
            api.push(run, "tiny", settings=reg.settings, token=token, quiet=True)
        for secret in (bogus, READ_TOKEN, WRITE_TOKEN):
            assert secret not in str(info.value)
    assert "lab/tiny" not in reg.hub.repos


def test_no_network_is_one_clear_error_unless_the_model_is_cached(reg, run, capsys):
    dead = load_settings(endpoint=f"http://127.0.0.1:{free_port()}", namespace=NS, cache_dir=str(reg.cache))
    with pytest.raises(UnreachableError, match=r"cannot reach http://127\.0\.0\.1:\d+ to pull 'lab/tiny'.*HF_ENDPOINT"):
        api.pull("tiny", settings=dead, token=WRITE_TOKEN, quiet=True)
    with pytest.raises(UnreachableError, match="cannot reach .* to push to 'lab/tiny'.*check the network"):
        api.push(run, "tiny", settings=dead, token=WRITE_TOKEN, quiet=True)
    with pytest.raises(UnreachableError, match=r"cannot reach .* to list models of 'lab/\*'"):
        api.list_models(settings=dead, token=False)

    reg.push(run, tag="v1")
    cached = reg.pull("tiny@v1")
    reg.hub.stop()  # the network goes away
    again = reg.pull("tiny@v1")
    assert again.from_cache and again.path == cached.path
    err = capsys.readouterr().err
    assert "cannot reach" in err and "using the cached copy of 'lab/tiny@v1'" in err


def test_a_server_that_is_not_a_hub_is_named_as_the_problem(tmp_path):
    class NotAHub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(404)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"not found")

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotAHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = load_settings(endpoint=f"http://127.0.0.1:{server.server_address[1]}", namespace=NS, cache_dir=str(tmp_path))
        with pytest.raises(RegistryError, match=r"answered HTTP 404 to pull 'lab/tiny'.*Is http://127.0.0.1:\d+ a Hugging Face Hub"):
            api.pull("tiny", settings=settings, token=False, quiet=True)
        with pytest.raises(RegistryError, match="answered HTTP 404 to list models of 'lab/\\*'.*a Hugging Face Hub"):
            api.list_models(settings=settings, token=False)
    finally:
        server.shutdown()
        server.server_close()


def test_an_interrupted_download_leaves_no_half_file_and_the_next_pull_resumes(reg, run, tmp_path):
    reg.push(run)
    weights = (run / WEIGHTS_NAME).read_bytes()
    # the connection drops mid-file once: huggingface_hub resumes with a Range request
    reg.hub.cut_downloads(f"{NS}/tiny", WEIGHTS_NAME, times=1, then_down=False)
    assert (Path(reg.pull("tiny").path) / WEIGHTS_NAME).read_bytes() == weights

    other = make_run(tmp_path / "other", seed=4)
    reg.push(other, repo="tiny2")
    reg.hub.cut_downloads(f"{NS}/tiny2", WEIGHTS_NAME, times=1, then_down=True)  # and the network stays down
    with pytest.raises(UnreachableError, match="download of 'lab/tiny2' .* was interrupted.*no partial file.*Run the same pull again"):
        reg.pull("tiny2")
    assert not list(reg.cache.rglob(f"models--{NS}--tiny2/snapshots/*/{WEIGHTS_NAME}"))
    reg.hub.down = False  # the network is back
    result = reg.pull("tiny2")
    assert (Path(result.path) / WEIGHTS_NAME).read_bytes() == (other / WEIGHTS_NAME).read_bytes()


def test_an_interrupted_pull_into_an_out_folder_leaves_nothing_there(reg, run, tmp_path, monkeypatch):
    from clotclf_registry.hub import HubRegistry

    reg.push(run)

    def cut(self, repo_id, revision, *, staging, offline):
        staging.mkdir()
        (staging / WEIGHTS_NAME).write_bytes(b"half a file")
        raise UnreachableError("the download was interrupted")

    monkeypatch.setattr(HubRegistry, "fetch", cut)
    out = tmp_path / "models" / "tiny"
    with pytest.raises(UnreachableError, match="interrupted"):
        reg.pull("tiny", out=out)
    assert not (tmp_path / "models").exists()  # nothing, not even the folder made for it


def test_pushes_use_plain_lfs_toward_servers_without_xet(reg, run):
    reg.push(run)
    assert not [p for _, p in reg.hub.requests if "xet" in p]
    assert any(p.endswith("/info/lfs/objects/batch") for _, p in reg.hub.requests)
    forced = reg.settings.model_copy(update={"xet": "on"})
    import huggingface_hub

    if int(huggingface_hub.__version__.split(".")[0]) >= 2:  # 2.x uploads through Xet whenever asked to, with no fallback
        with pytest.raises(RegistryError, match="did not accept a Xet upload.*CLOTCLF_HUB_XET=off"):
            api.push(make_run(reg.cache.parent / "x", seed=5), "tiny", settings=forced, token=WRITE_TOKEN, quiet=True)
    else:  # 1.x asks the server first and falls back to LFS by itself
        assert api.push(make_run(reg.cache.parent / "x", seed=5), "tiny", settings=forced, token=WRITE_TOKEN, quiet=True).commit
    assert load_settings(endpoint="https://huggingface.co").use_xet()
    assert not load_settings(endpoint="https://hub.example.org").use_xet()


def test_the_cli_reads_hf_endpoint_token_home_and_offline_mode_from_the_environment(reg, run, tmp_path):
    reg.push(run, tag="v1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CLOTCLF_"))}
    env |= {"HF_ENDPOINT": reg.hub.url, "HF_TOKEN": WRITE_TOKEN, "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "CLOTCLF_NAMESPACE": NS, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}

    def clotclf(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([CLOTCLF, *args], env=env | (extra or {}), capture_output=True, text=True, timeout=120)

    pulled = clotclf("pull", "tiny@v1")
    assert pulled.returncode == 0, pulled.stderr
    path = Path(pulled.stdout.split("path: ")[1].splitlines()[0])
    assert path.is_relative_to(tmp_path / "hf" / "hub")  # the huggingface_hub cache under HF_HOME
    assert "needs: backbone 'cct' from clotclf 0.1.0: installed" in pulled.stdout
    assert (path / WEIGHTS_NAME).read_bytes() == (run / WEIGHTS_NAME).read_bytes()

    pushed = clotclf("push", str(run), "--repo", "tiny-cli")
    assert pushed.returncode == 0, pushed.stderr
    assert "Upload" not in pushed.stderr and "it/s" not in pushed.stderr, pushed.stderr  # no terminal: no upload bars

    reg.hub.stop()
    offline = clotclf("pull", "tiny@v1", extra={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert "from the cache" in offline.stdout and str(path) in offline.stdout
    for out in (pulled, pushed, offline):
        assert WRITE_TOKEN not in out.stdout + out.stderr

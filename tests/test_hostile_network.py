"""The hostile battery, network half: a Hub (or a proxy in front of it) that echoes the token,
never answers, trickles, redirects forever or serves other bytes than it lists. Each case runs the
real ``clotclf`` in a child process under a hard timeout (the harness's bound, not a timing
assertion) and checks one ``Error:`` line, exit code 2, the setting or the cause named, no token in
any output or file, and nothing half-written (no --out folder, no cached snapshot, no empty repo a
failed push created). The transfer limits are set short (2 s) where a hang is the point, so each case takes seconds.

Servers: tests/hostile_hub.py (a working stand-in Hub whose chosen endpoints misbehave).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside huggingface_hub

from badinput import Outcome, assert_clean_error, invoke, run  # noqa: E402
from hostile_hub import HostileHub  # noqa: E402
from hub_server import Token  # noqa: E402
from test_registry import NS, make_run  # noqa: E402

from clotclf_core.plugin import CONFIG_NAME, WEIGHTS_NAME  # noqa: E402

#: not shaped like a Hugging Face token: only clotclf knowing it keeps it out of text
TOKEN = "s3cr3t-Pass-4-the-hub-0123456789"
#: what the harness allows one command (the bound is the test's, not a timing assertion)
BOUND = 60
#: short limits, so a hang or a trickle fails in seconds (the other cases keep the defaults: a
#: loaded machine must not turn an echo or a tampering case into a timeout)
FAST = {"CLOTCLF_HUB_TIMEOUT": "2", "CLOTCLF_HUB_DEADLINE": "40"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("hostile-net") / "run", seed=7)


@pytest.fixture
def hub(run_dir):
    """A Hub holding ``lab/tiny`` (the run's weights, config and metrics), with nothing hostile yet."""
    server = HostileHub({TOKEN: Token("alice", write=True, orgs=(NS,))}).start()
    server.create_repo(f"{NS}/tiny")
    server.raw_commit(f"{NS}/tiny", {name: (run_dir / name).read_bytes() for name in (WEIGHTS_NAME, CONFIG_NAME, "metrics.json")},
                      keep=True)
    yield server
    server.stop()


def env_for(hub: HostileHub, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "CLOTCLF_NAMESPACE": NS,
            "CLOTCLF_CACHE_DIR": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"), **extra}


def in_process(args: list, env: dict[str, str], bound: float = BOUND) -> Outcome:
    """``clotclf ARGS`` in this process (torch already imported: a second instead of ten), on a
    thread the harness gives ``bound`` seconds to finish."""
    done: list[Outcome] = []
    worker = threading.Thread(target=lambda: done.append(invoke(args, env=env)), daemon=True)
    worker.start()
    worker.join(bound)
    assert done, f"clotclf {' '.join(map(str, args))} did not finish within {bound} s"
    return done[0]


def no_token_anywhere(outcome, tmp_path: Path) -> None:
    assert TOKEN not in outcome.stdout + outcome.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert TOKEN.encode() not in path.read_bytes(), f"the token was written to {path}"


def nothing_pulled(tmp_path: Path) -> None:
    assert not (tmp_path / "models").exists()  # no --out folder, not even the one made for it
    assert not [p for p in (tmp_path / "cache").rglob("*") if "snapshots" in p.parts and p.is_file()]


def pull(hub: HostileHub, tmp_path: Path, **extra: str):
    return run(["pull", f"{NS}/tiny", "--out", tmp_path / "models" / "tiny"], env=env_for(hub, tmp_path, **extra),
               timeout=BOUND)


# ----------------------------------------------------------------------------- the token, whatever is echoed

ENDPOINTS = {
    "every endpoint": (None, ""),
    "file metadata": ("HEAD", r"/resolve/"),
    "download": ("GET", r"/resolve/"),
}


@pytest.mark.parametrize("how", ["echo_500", "echo_4xx", "echo_redirect"])
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_a_pull_never_shows_the_token_a_server_echoes(hub, tmp_path, how, endpoint):
    """In a child process (the real CLI, its own stderr and logging) for every endpoint; the
    in-process cases below cover push and predict the same way."""
    method, path = ENDPOINTS[endpoint]
    hub.misbehave(how, method, path)
    outcome = pull(hub, tmp_path) if endpoint != "file metadata" else in_process(
        ["pull", f"{NS}/tiny", "--out", tmp_path / "models" / "tiny"], env_for(hub, tmp_path))
    assert_clean_error(outcome, 2, ["lab/tiny"])
    assert hub.hits, "the hostile rule was never reached"
    no_token_anywhere(outcome, tmp_path)
    nothing_pulled(tmp_path)


@pytest.mark.parametrize(("how", "method", "path"), [
    ("echo_500", "POST", r"/api/repos/create$"),
    ("echo_500", "POST", r"/commit/"),
    ("echo_4xx", "POST", r"/preupload/"),
    ("echo_redirect", "POST", r"/commit/"),
])
def test_a_push_never_shows_the_token_and_leaves_no_empty_repo(hub, run_dir, tmp_path, capsys, how, method, path):
    hub.misbehave(how, method, path)
    outcome = in_process(["push", run_dir, "--repo", f"{NS}/fresh"], env_for(hub, tmp_path))
    assert_clean_error(outcome, 2, ["lab/fresh"])
    no_token_anywhere(outcome, tmp_path)
    logged = capsys.readouterr()
    assert TOKEN not in logged.out + logged.err  # huggingface_hub's own log lines included
    assert f"{NS}/fresh" not in hub.repos  # created, then removed when the push failed


@pytest.mark.parametrize("how", ["echo_500", "echo_4xx", "echo_redirect"])
def test_predict_with_a_registry_model_never_shows_the_token(hub, tmp_path, how):
    hub.misbehave(how)
    slides = tmp_path / "slides"
    slides.mkdir()
    outcome = in_process(["predict", slides, "--model", f"{NS}/tiny", "--out", tmp_path / "preds"], env_for(hub, tmp_path))
    assert_clean_error(outcome, 2, ["lab/tiny", "not a local folder"])
    no_token_anywhere(outcome, tmp_path)
    assert not (tmp_path / "preds").exists()


def test_a_downloaded_file_holding_the_token_is_refused(hub, run_dir, tmp_path):
    """A server that writes the request's token into a file it serves (with a matching hash)."""
    config = (run_dir / CONFIG_NAME).read_text().replace('"CE"', f'"CE", "{TOKEN}"', 1)
    hub.raw_commit(f"{NS}/tiny", {CONFIG_NAME: config.encode()}, keep=True)
    outcome = pull(hub, tmp_path)
    assert_clean_error(outcome, 2, ["config.json", "holds the token", "nothing was kept"])
    no_token_anywhere(outcome, tmp_path)
    nothing_pulled(tmp_path)


# ----------------------------------------------------------------------------- never a hang

HANGS = {
    # name: (rule, command, what the line names)
    "no answer to the model info": (("hang", "GET", r"^/api/models/"), "pull", ["sent no answer", "CLOTCLF_HUB_TIMEOUT"]),
    "no answer to a download": (("hang", "GET", r"/resolve/"), "pull", ["sent no answer", "CLOTCLF_HUB_TIMEOUT"]),
    "headers a byte at a time": (("trickle_headers", "GET", r"^/api/models/"), "pull",
                                 ["sent no answer", "CLOTCLF_HUB_TIMEOUT"]),
    "weights at 1 byte / 0.5 s": (("trickle", "GET", r"model\.safetensors$"), "pull",
                                  ["below the minimum transfer rate of 4096 bytes/s", "CLOTCLF_HUB_MIN_RATE"]),
    "no answer to the commit": (("hang", "POST", r"/commit/"), "push", ["sent no answer", "CLOTCLF_HUB_TIMEOUT"]),
    "no answer to predict's pull": (("hang", "GET", r"^/api/models/"), "predict", ["sent no answer", "CLOTCLF_HUB_TIMEOUT"]),
}


@pytest.mark.parametrize("case", list(HANGS))
def test_a_server_that_never_answers_or_trickles_is_one_line_naming_the_setting(hub, run_dir, tmp_path, case):
    """Pulls in a child process (the real CLI under the harness's timeout); push and predict in this
    process (their model check would cost ten seconds of torch import each), on a bounded thread."""
    (how, method, path), command, mentions = HANGS[case]
    hub.misbehave(how, method, path, interval=0.5)
    env = env_for(hub, tmp_path, **FAST)
    if command == "pull":
        outcome = pull(hub, tmp_path, **FAST)
    elif command == "push":
        outcome = in_process(["push", run_dir, "--repo", f"{NS}/fresh"], env)
    else:
        (tmp_path / "slides").mkdir()
        outcome = in_process(["predict", tmp_path / "slides", "--model", f"{NS}/tiny", "--out", tmp_path / "preds"], env)
    assert_clean_error(outcome, 2, mentions)
    no_token_anywhere(outcome, tmp_path)
    nothing_pulled(tmp_path)
    assert f"{NS}/fresh" not in hub.repos  # a push that hung leaves no empty repo behind
    assert not (tmp_path / "preds").exists()


def test_a_server_that_stops_answering_is_as_good_as_unreachable_when_the_model_is_cached(hub, tmp_path):
    env = env_for(hub, tmp_path, **FAST)
    assert in_process(["pull", f"{NS}/tiny"], env).exit_code == 0
    hub.misbehave("hang", "GET", r"^/api/models/")
    outcome = in_process(["pull", f"{NS}/tiny"], env)
    assert outcome.exit_code == 0, outcome.stderr
    assert "sent no answer to GET /api/models/lab/tiny within 2 s" in outcome.stderr and "using the cached copy" in outcome.stderr


def test_the_deadline_bounds_a_whole_pull_and_is_read_from_the_settings_file(hub, tmp_path):
    hub.misbehave("trickle", "GET", r"model\.safetensors$", interval=0.05)  # 20 bytes/s: fast enough for the rate below
    settings = tmp_path / "registry.yaml"
    settings.write_text("hub_deadline: 2\nhub_min_rate: 1\n")
    outcome = pull(hub, tmp_path, CLOTCLF_CONFIG=str(settings), CLOTCLF_HUB_TIMEOUT="", CLOTCLF_HUB_DEADLINE="")
    assert_clean_error(outcome, 2, ["the pull of 'lab/tiny' did not finish within its deadline of 2 s",
                                    "hub_deadline: in the registry settings file"])
    nothing_pulled(tmp_path)


def test_a_redirect_loop_is_one_line(hub, tmp_path):
    hub.misbehave("echo_redirect")  # every answer redirects, to a URL holding the token
    outcome = pull(hub, tmp_path)
    assert_clean_error(outcome, 2, ["redirected the request", "not a working Hugging Face Hub"])
    no_token_anywhere(outcome, tmp_path)


# ----------------------------------------------------------------------------- tampering is not an interruption


@pytest.mark.parametrize("served", ["lfs pointer", "too short", "too long"])
def test_a_hub_serving_other_bytes_than_it_lists_is_tampering_not_an_interruption(hub, run_dir, tmp_path, served):
    weights = (run_dir / WEIGHTS_NAME).read_bytes()
    if served == "lfs pointer":
        hub.misbehave("lfs_pointer", "GET", r"model\.safetensors$")
    else:
        hub.misbehave("serve", "GET", r"model\.safetensors$", body=weights[:1000] if served == "too short" else weights + b"x" * 99)
    outcome = pull(hub, tmp_path)
    line = assert_clean_error(outcome, 2, ["model.safetensors", "tampering", "would fail the same way", "nothing was kept"])
    assert "again: it resumes" not in line and "interrupted" not in line
    if served == "lfs pointer":
        assert "Git LFS pointer" in line
    nothing_pulled(tmp_path)


# ----------------------------------------------------------------------------- in-process: the pieces


def test_every_echoed_form_of_the_token_is_scrubbed():
    from clotclf_core.plugin.hub import scrub
    from clotclf_core.plugin.secrets import add_secret, scrub_secrets

    add_secret(TOKEN)
    for text in (f"Authorization: Bearer {TOKEN}", f"authorization=bearer%20{TOKEN}", f"token={TOKEN}", f"/echo/{TOKEN}",
                 "Proxy-Authorization: Basic dXNlcjpwYXNzd29yZA==", "x Bearer anything.else y"):
        assert TOKEN not in scrub_secrets(text) and "dXNlcjpwYXNzd29yZA" not in scrub_secrets(text)
        assert TOKEN not in scrub(text)
    assert scrub_secrets("this token may not write to lab; Basic usage") == "this token may not write to lab; Basic usage"


def test_protected_output_scrubs_every_line_a_command_prints(capsys):
    import logging
    import sys

    from clotclf_core.plugin.secrets import add_secret, protect_output

    add_secret(TOKEN)
    saved = sys.stdout, sys.stderr
    try:
        protect_output()
        protect_output()  # twice changes nothing
        print(f"out {TOKEN}")
        print(f"err Authorization: Bearer {TOKEN}", file=sys.stderr)
        logging.getLogger("clotclf.test").addHandler(handler := logging.StreamHandler(sys.stderr))
        logging.getLogger("clotclf.test").warning("logged %s", TOKEN)
        logging.getLogger("clotclf.test").removeHandler(handler)
    finally:
        sys.stdout, sys.stderr = saved
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err and "out ***" in out.out and "logged ***" in out.err


def test_limits_are_validated_and_name_where_they_come_from(monkeypatch):
    from clotclf_core.plugin import ConfigError
    from clotclf_core.plugin.transfer import limits_from_env

    monkeypatch.setenv("CLOTCLF_HUB_MIN_RATE", "fast")
    with pytest.raises(ConfigError, match=r"CLOTCLF_HUB_MIN_RATE must be a positive number \(bytes/s\), not 'fast'"):
        limits_from_env()
    monkeypatch.setenv("CLOTCLF_HUB_MIN_RATE", "10")
    assert limits_from_env(hub_timeout=5).hub_min_rate == 10 and limits_from_env(hub_timeout=5).hub_timeout == 5

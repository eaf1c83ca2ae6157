"""clotclf_core.plugin.hub: the one ORG/NAME@REV parser and the one Hub-error translator, shared by
the registry and the timm plugin. Each Hub failure is built here as huggingface_hub raises it; the
end-to-end cases (a real client against tests/hub_server.py) are in test_registry_hub.py,
test_timm_backbone.py and test_bad_inputs_mil.py."""

from __future__ import annotations

import socket

import pytest
from huggingface_hub import errors as hf

try:  # the HTTP client huggingface_hub uses: httpx2 from huggingface_hub 2.x on, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

from clotclf_core.plugin.errors import ConfigError
from clotclf_core.plugin.hub import hub_problem, looks_like_repo_ref, parse_repo_ref, scrub
from clotclf_core.plugin.secrets import shown_url

TOKEN = "hf_SECRETsecretSECRETsecret123"
ENDPOINT = "https://hub.example.org"


# ----------------------------------------------------------------------------- references


def test_references_with_a_default_namespace():
    assert parse_repo_ref("mayo-poolformer", "clotclf").repo_id == "clotclf/mayo-poolformer"
    ref = parse_repo_ref("org/m.v2@v1.0", "clotclf")
    assert (ref.namespace, ref.name, ref.revision, str(ref)) == ("org", "m.v2", "v1.0", "org/m.v2@v1.0")
    assert parse_repo_ref("m@" + "a" * 40, "ns").revision == "a" * 40
    for bad in ("", "@v1", "a/b/c", "a--b", "a..b", "x@../y", "x@", "-a", "a b", "x@v 1", "é"):
        with pytest.raises(ConfigError):
            parse_repo_ref(bad, "ns")
    with pytest.raises(ConfigError, match=r"'a/b/c' is not of the form \[ORG/\]NAME\[@REVISION\]: one '/' at most"):
        parse_repo_ref("a/b/c", "ns")


def test_references_with_a_prefix_and_no_default_namespace():
    ref = parse_repo_ref("hf-hub:lab/tiny-vit@v2", prefix="hf-hub:")
    assert (ref.repo_id, ref.revision) == ("lab/tiny-vit", "v2")
    assert parse_repo_ref("timm/convnext_atto.d2_in1k").repo_id == "timm/convnext_atto.d2_in1k"
    with pytest.raises(ConfigError, match=r"'hf-hub:lab' is not of the form hf-hub:ORG/NAME\[@REVISION\]: the ORG/ is missing"):
        parse_repo_ref("hf-hub:lab", prefix="hf-hub:")
    with pytest.raises(ConfigError, match="revision 'v 1' is not valid"):
        parse_repo_ref("lab/x@v 1")


def test_what_looks_like_a_reference():
    assert looks_like_repo_ref("mayo-poolformer") and looks_like_repo_ref("org/name@v1")
    for path in ("./run", "/abs/run", "~/run", "runs/a/b", "C:\\run", "run.safetensors:x", ""):
        assert not looks_like_repo_ref(path), path


def test_credentials_never_survive_scrub():
    assert shown_url("https://alice:pw@hub.example.org/x?token=abc&a=1") == "https://hub.example.org/x?token=***&a=1"
    text = f"401 for https://bob:pw@h/x with Authorization: Bearer {TOKEN} and {TOKEN}"
    out = scrub(text, "other-secret")
    assert TOKEN not in out and "pw" not in out and "Bearer ***" in out
    assert scrub("leak other-secret here", "other-secret") == "leak *** here"


# ----------------------------------------------------------------------------- Hub errors


def _http(cls, status: int, url: str = f"{ENDPOINT}/api/models/lab/tiny", message: str = "", **kw):
    response = httpx.Response(status, request=httpx.Request("GET", url), headers={"X-Error-Message": message})
    return cls(message or f"{status} error for {url}", response=response, **kw)


def _problem(exc, **kw):
    return hub_problem(exc, repo_id="lab/tiny", endpoint=ENDPOINT, **kw)


CASES = {
    "gated, no token": (lambda: _http(hf.GatedRepoError, 401), {"token": False}, "gated",
                        ["'lab/tiny' is gated", "accept its licence", f"{ENDPOINT}/lab/tiny", "HF_TOKEN", "hf auth login"]),
    "gated, licence not accepted": (lambda: _http(hf.GatedRepoError, 403), {"token": TOKEN}, "gated",
                                    ["is gated", "has no access", "request access", "accept its licence"]),
    "repo not found": (lambda: _http(hf.RepositoryNotFoundError, 404), {"token": False}, "not_found",
                       ["'lab/tiny' was not found at https://hub.example.org (HTTP 404)", "check ORG/NAME", "HF_TOKEN"]),
    "revision not found": (lambda: _http(hf.RevisionNotFoundError, 404), {"revision": "v9"}, "no_revision",
                           ["has no revision 'v9'", "branch, tag or commit"]),
    "file not found": (lambda: _http(hf.RemoteEntryNotFoundError, 404, f"{ENDPOINT}/lab/tiny/resolve/main/config.json"),
                       {}, "no_file", ["has no config.json at revision main"]),
    "not cached, no network": (lambda: hf.LocalEntryNotFoundError("cannot find the requested files"),
                               {"filename": "model.safetensors"}, "unreachable",
                               ["cannot reach https://hub.example.org to download model.safetensors of 'lab/tiny'",
                                "not in the Hugging Face cache", "HF_HUB_OFFLINE=1"]),
    "offline mode": (lambda: hf.OfflineModeIsEnabled("offline"), {"action": "push to"}, "offline",
                     ["offline mode is on", "to push to 'lab/tiny'", "unset HF_HUB_OFFLINE"]),
    "no network": (lambda: httpx.ConnectError("[Errno 111] Connection refused"), {"action": "pull"}, "unreachable",
                   ["cannot reach https://hub.example.org to pull 'lab/tiny'", "Connection refused", "HF_ENDPOINT"]),
    "DNS": (lambda: socket.gaierror(-2, "Name or service not known"), {}, "unreachable", ["cannot reach", "Name or service"]),
    "timeout": (lambda: httpx.ReadTimeout("The read operation timed out"), {}, "timeout",
                ["did not answer in time to download 'lab/tiny'", "CLOTCLF_HUB_TIMEOUT"]),
    "401": (lambda: _http(hf.HfHubHTTPError, 401), {"action": "push to", "write": True}, "auth",
            ["refused the credentials (HTTP 401) to push to 'lab/tiny'", "HF_TOKEN", "write access"]),
    "403": (lambda: _http(hf.HfHubHTTPError, 403), {"action": "pull"}, "forbidden",
            ["forbids this token to pull 'lab/tiny' (HTTP 403)", "read access to the namespace 'lab'"]),
    "429": (lambda: _http(hf.HfHubHTTPError, 429), {}, "rate_limited", ["HTTP 429", "wait a few minutes"]),
    "502": (lambda: _http(hf.HfHubHTTPError, 502, server_message="bad gateway"), {}, "server",
            ["server error (HTTP 502)", "(bad gateway)", "run again later"]),
    "not a Hub": (lambda: _http(hf.HfHubHTTPError, 404), {"action": "list models of"}, "http",
                  ["answered HTTP 404 to list models of 'lab/tiny'", "Is https://hub.example.org a Hugging Face Hub"]),
    "bad repo id": (lambda: hf.HFValidationError("Repo id must use alphanumeric chars"), {}, "invalid",
                    ["not a valid Hub repo id", "ORG/NAME"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_hub_failure_is_one_line_that_names_the_fix(case):
    make, kw, kind, mentions = CASES[case]
    problem = _problem(make(), **kw)
    assert problem is not None and problem.kind == kind
    assert "\n" not in problem.message
    for words in mentions:
        assert words in problem.message, (words, problem.message)


def test_a_token_is_never_in_a_message(monkeypatch):
    """Neither the token the call used, nor one huggingface_hub found itself, nor one a server echoes."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    url = f"https://user:pw@hub.example.org/api/models/lab/tiny?token={TOKEN}"
    echoed = [
        _http(hf.HfHubHTTPError, 400, url, server_message=f"token {TOKEN} is invalid"),
        _http(hf.HfHubHTTPError, 500, url, server_message=f"Bearer {TOKEN}"),
        httpx.ConnectError(f"cannot connect to {url} (Authorization: Bearer {TOKEN})"),
        httpx.ReadTimeout(f"timed out: {url}"),
    ]
    for exc in echoed:
        for token in (None, TOKEN, False):
            message = hub_problem(exc, repo_id="lab/tiny", endpoint="https://user:pw@hub.example.org", token=token).message
            assert TOKEN not in message and "pw@" not in message, message
    # with a token from HF_TOKEN the gated message speaks of access, without one of the licence and HF_TOKEN
    assert "has no access" in _problem(_http(hf.GatedRepoError, 403)).message
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert "set HF_TOKEN" in _problem(_http(hf.GatedRepoError, 401)).message


def test_anything_else_is_not_a_hub_problem():
    assert _problem(ValueError("a bug")) is None
    assert _problem(KeyError("x")) is None


def test_importing_the_module_stays_light():
    import subprocess
    import sys

    code = "import sys, clotclf_core.plugin.hub; print(sorted(m for m in ('huggingface_hub', 'numpy', 'torch') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"

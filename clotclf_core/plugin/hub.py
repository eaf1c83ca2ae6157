"""The Hugging Face Hub, written once for every plugin and the registry: references, credentials
kept out of text, and every Hub failure in one line.

- :func:`parse_repo_ref` reads ``ORG/NAME[@REVISION]`` (and, given a default organisation, a short
  ``NAME[@REVISION]``) by the Hub's own repo-name rules, into a :class:`RepoRef`; a bad one is one
  :class:`~clotclf_core.plugin.errors.ConfigError` saying what is wrong. :func:`looks_like_repo_ref`
  is the cheap test a model-name resolver runs before going to the network.
- :func:`hub_problem` turns an exception raised by ``huggingface_hub`` (or its HTTP client) into a
  :class:`HubProblem`: a ``kind`` a caller can branch on and a ``message`` a user can act on —
  gated repo without a token, a licence not accepted, repo / revision / file not found, offline and
  not cached, no network, a timeout, refused credentials (401), a forbidden token (403), rate
  limits, server errors, an endpoint that is not a Hub. ``None`` for anything else (re-raise it).
- :func:`shown_url` / :func:`scrub`: a URL or a text without credentials. A token is never part
  of a message: messages are built from names, URLs without credentials and status codes, and any
  text quoted from an exception is scrubbed of URL credentials, token-like strings and the token
  ``huggingface_hub`` would send.

Importing this module imports no ``huggingface_hub`` (it is imported by :func:`hub_problem` when a
Hub call has failed), so plugin spec modules and CLI start-up stay light.

At about 435 lines this module is over the project's ~400: it is one concern (the Hub as plugins see
it: fetching a model's files only wraps the references and the one-line failures above), and a plugin
author finds every Hub helper in this one module.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from clotclf_core.plugin.errors import ClotclfError, ConfigError, printable
from clotclf_core.plugin.secrets import add_secret, scrub_secrets, shown_url
from clotclf_core.plugin.transfer import operation

# ----------------------------------------------------------------------------- references

_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
#: a full git commit id, as the Hub (and clotclf's local registry) names commits
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class RepoRef:
    """A parsed ``ORG/NAME[@REVISION]``: ``repo_id`` is always ``ORG/NAME``; ``revision`` may be None."""

    namespace: str
    name: str
    revision: str | None = None

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def valid_repo_part(text: str) -> bool:
    """Whether ``text`` may be an organisation or a repo name on the Hub: letters, digits, ``-``,
    ``_``, ``.``; starting and ending with a letter or digit; no ``--`` or ``..``; at most 96 characters."""
    return bool(_PART.match(text)) and "--" not in text and ".." not in text and not text.endswith(".git")


def check_repo_part(text: str, what: str, example: str = "e.g. clotclf/mayo-poolformer@v1") -> str:
    """``text`` if :func:`valid_repo_part`, else one :class:`ConfigError` naming ``what`` (``"namespace"``)."""
    if not valid_repo_part(text):
        raise ConfigError(
            f"{what} '{printable(text, 120)}' is not valid: use letters, digits, '-', '_' and '.', starting and ending "
            f"with a letter or digit, without '--' or '..', at most 96 characters ({example})"
        )
    return text


def check_revision(text: str) -> str:
    """``text`` if it can be a branch, a tag or a commit sha, else one :class:`ConfigError`."""
    if not _REVISION.match(text) or ".." in text or text.endswith("/") or "//" in text:
        raise ConfigError(
            f"revision '{printable(text, 120)}' is not valid: give a branch, a tag or a 40-character commit sha "
            "(e.g. @main, @v1)"
        )
    return text


def parse_repo_ref(text: str, default_namespace: str | None = None, *, prefix: str = "",
                   example: str | None = None) -> RepoRef:
    """Parse ``[PREFIX]ORG/NAME[@REVISION]``; with ``default_namespace`` a short ``NAME`` means
    ``default_namespace/NAME``. ``prefix`` (e.g. ``"hf-hub:"``) is removed when present and shown in
    messages. Raises :class:`ConfigError` with what is wrong and the form to use."""
    form = f"{prefix}{'[ORG/]' if default_namespace else 'ORG/'}NAME[@REVISION]"
    example = example or (f"e.g. {prefix}timm/vit_small_patch16_224.augreg_in21k or {prefix}ORG/NAME@v1")
    shown = printable(text, 120)
    raw = text.strip().removeprefix(prefix) if prefix else text.strip()
    name, sep, revision = raw.partition("@")
    parts = name.split("/")

    def bad(why: str) -> ConfigError:
        return ConfigError(f"'{shown}' is not of the form {form}: {why} ({example})")

    if not name or (sep and not revision):
        raise bad("the name is empty" if not name else "nothing follows '@'")
    if len(parts) > 2:
        raise bad("one '/' at most, between ORG and NAME")
    if len(parts) == 1 and not default_namespace:
        raise bad("the ORG/ is missing")
    namespace, short = parts if len(parts) == 2 else (default_namespace, parts[0])
    check_repo_part(namespace, "namespace", example)
    check_repo_part(short, "model name", example)
    return RepoRef(namespace, short, check_revision(revision) if sep else None)


#: suffixes of files a user may name as a model: a reference ending in one is a path
_FILE_SUFFIXES = (".safetensors", ".json", ".yaml", ".yml", ".pt", ".pth", ".bin", ".ckpt", ".csv", ".zip", ".tar", ".gz")


def path_reason(text: str, cwd: str | None = None) -> str | None:
    """Why ``text`` (a ``--model`` value that is no existing folder) may be a path the user meant,
    or None when it can only be a registry name. The rule (docs/registry.md, "Names and paths"):

    - written as a path: it starts with ``.``, ``/`` or ``~``, holds ``\\`` or ``:``, ends with ``/``, or
      has more than one ``/`` before its ``@``;
    - it ends with a file suffix (``.safetensors``, ``.json``, ``.pt``…);
    - it is ``A/B`` and ``A`` exists here (relative to ``cwd``, default the working folder): a path
      into that folder, which has no ``B``;
    - it cannot be a ``[ORG/]NAME[@REVISION]`` at all.

    A reference this returns a reason for is never sent to a registry: a typo in a run folder's
    name is "does not exist", never a download of someone's model of that name."""
    import os

    if not text:
        return "it is empty"
    if text.startswith((".", "/", "~")) or "\\" in text or ":" in text or text.endswith("/"):
        return "it is written as a path"
    name = text.partition("@")[0]
    parts = name.split("/")
    if len(parts) > 2:
        return "it has more than one '/'"
    if name.lower().endswith(_FILE_SUFFIXES):
        return "it names a file"
    if len(parts) == 2 and os.path.lexists(os.path.join(cwd or os.getcwd(), parts[0])):
        return f"'{printable(parts[0], 60)}' exists here"
    if not all(valid_repo_part(p) for p in parts):
        return "it is not of the form [ORG/]NAME[@REVISION]"
    return None


def looks_like_repo_ref(text: str) -> bool:
    """Could ``text`` be a ``[ORG/]NAME[@REVISION]`` the user meant as one? Not when
    :func:`path_reason` finds it may be a path (``./run``, ``/abs``, ``~/x``, ``a/b/c``, ``C:\\x``,
    ``runs/x`` beside a ``runs`` folder), so an unknown local path gets a "does not exist" message
    rather than a network call."""
    return path_reason(text) is None


# ----------------------------------------------------------------------------- credentials out of text

_TOKEN_LIKE = re.compile(r"\b(?:hf_[A-Za-z0-9]{8,}|api_org_[A-Za-z0-9]{8,})\b")


def add_token(token: str | bool | None) -> None:
    """Remember the token a Hub call will use, as huggingface_hub takes it (``None``: its own —
    ``HF_TOKEN``, then the one ``hf auth login`` stored; ``False``: anonymous), as a secret that
    :func:`clotclf_core.plugin.secrets.scrub_secrets` removes from any text."""
    add_secret(_token(token))


def scrub(text: str, *secrets: str) -> str:
    """``text`` with credentials in URLs, Hugging Face token-like strings (``hf_…``, ``Bearer …``),
    every known credential (:func:`clotclf_core.plugin.secrets.known_secrets`) and each of ``secrets`` (a token, a raw endpoint)
    removed."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, shown_url(secret) if "://" in secret else "***")
    return _TOKEN_LIKE.sub("***", scrub_secrets(shown_url(text)))


# ----------------------------------------------------------------------------- Hub errors in one line


@dataclass(frozen=True)
class HubProblem:
    """What went wrong with a Hub call, in one line.

    ``kind``: ``gated`` | ``not_found`` | ``no_revision`` | ``no_file`` | ``offline`` |
    ``unreachable`` | ``timeout`` | ``auth`` (401) | ``forbidden`` (403) | ``rate_limited`` (429) |
    ``server`` (5xx) | ``http`` (any other status: probably not a Hub) | ``invalid`` (a bad repo id).
    ``status``: the HTTP status when there was one.
    """

    kind: str
    message: str
    status: int | None = None


def _token(token: str | bool | None) -> str | None:
    """The token a Hub call used: ``False`` anonymous, a string itself, ``None`` huggingface_hub's own
    (``HF_TOKEN``, then the one ``hf auth login`` stored)."""
    if token is False:
        return None
    if isinstance(token, str):
        return token or None
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - an unreadable token file: treat as anonymous
        return None


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def exception_text(exc: BaseException, *secrets: str) -> str:
    """``TypeName: first line of the message`` for quoting an exception in a message: at most 200
    characters, control characters escaped, credentials scrubbed (:func:`scrub`, with ``secrets``)."""
    lines = str(exc).strip().splitlines()
    text = printable(scrub(lines[0], *secrets), 200) if lines else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def is_transport_error(exc: BaseException) -> bool:
    """No connection, DNS failure, timeout, dropped connection: httpx's TransportError family
    (huggingface_hub 1.x / 2.x), requests' ConnectionError / Timeout (0.x), the socket's own."""
    return bool({"TransportError", "ConnectionError", "Timeout", "ProtocolError"} & _names(exc)) or isinstance(
        exc, (socket.gaierror, TimeoutError, ConnectionError))


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, socket.timeout)) or any("Timeout" in n for n in _names(exc))


def hub_problem(exc: BaseException, *, repo_id: str, shown: str | None = None, revision: str | None = None,
                filename: str | None = None, action: str = "download", write: bool = False,
                endpoint: str | None = None, endpoint_hint: str = "HF_ENDPOINT", names_hint: str = "",
                token: str | bool | None = None) -> HubProblem | None:
    """One line for ``exc``, raised by a Hub call about ``repo_id``; ``None`` if it is no Hub failure.

    - ``shown``: how messages name the repo (default ``repo_id``; the timm plugin shows ``hf-hub:ORG/NAME``).
    - ``revision`` / ``filename``: what was asked for, when the call was about one.
    - ``action``: the verb of the call (``download``, ``pull``, ``push to``, ``list models of``);
      ``write``: it needed write access (a push), which 401 / 403 messages say.
    - ``endpoint``: the server (default: huggingface_hub's ``HF_ENDPOINT``), shown without credentials;
      ``endpoint_hint``: where the user sets it (``HF_ENDPOINT``, ``--endpoint / HF_ENDPOINT``).
    - ``names_hint``: where to find the right name when a repo is not found (a command that lists them).
    - ``token``: the token the call used, as huggingface_hub takes it (``None``: its own; ``False``:
      anonymous). Only whether there was one shapes the message; its text is scrubbed from quotes.
    """
    from huggingface_hub import constants
    from huggingface_hub import errors as hf

    where = shown_url(endpoint or constants.ENDPOINT).rstrip("/")
    secret = _token(token)
    add_secret(secret)
    name = f"'{printable(shown or repo_id, 200)}'"
    page = f"{where}/{repo_id}"
    status = _status(exc)
    namespace = repo_id.split("/")[0]

    secrets = [s for s in (secret, endpoint) if s]

    def quote(text: object) -> str:
        lines = str(text).strip().splitlines()
        return printable(scrub(lines[0], *secrets), 200) if lines else ""

    def reason() -> str:
        return exception_text(exc, *secrets)

    from clotclf_core.plugin.transfer import TransferTimeout, failure

    if isinstance(exc, TransferTimeout):
        return HubProblem("timeout", str(exc))
    stopped = failure()
    if stopped is not None and (is_transport_error(exc) or "TransferTimeout" in _names(exc)):
        return HubProblem("timeout", stopped)  # the limit that ran out, not the closed connection it left
    remote_missing = getattr(hf, "RemoteEntryNotFoundError", None) or hf.EntryNotFoundError
    if isinstance(exc, hf.GatedRepoError):
        if secret:
            return HubProblem("gated", (
                f"the Hub repo {name} is gated and the account of this token has no access to it: request access on "
                f"{page} (accept its licence), wait for the owner's approval, then run again"), status)
        return HubProblem("gated", (
            f"the Hub repo {name} is gated: accept its licence on {page} with your account, then set HF_TOKEN to a "
            "read token of that account (or run `hf auth login`)"), status)
    if isinstance(exc, hf.RepositoryNotFoundError):
        how = ("this token's account cannot: set HF_TOKEN to a token of one that can (or run `hf auth login`)" if secret else
               "set HF_TOKEN to a read token of an account with access (or run `hf auth login`)")
        return HubProblem("not_found", (
            f"the Hub repo {name} was not found at {where} (HTTP {status or 404}): check ORG/NAME"
            + (f" ({names_hint})" if names_hint else "") + f"; if it is private or gated, use a token that can read it: {how}"),
            status)
    if isinstance(exc, hf.RevisionNotFoundError):
        return HubProblem("no_revision", (
            f"the Hub repo {name} at {where} has no revision '{printable(revision or '?', 120)}': give an existing "
            "branch, tag or commit after '@'"), status)
    if isinstance(exc, remote_missing) and not isinstance(exc, hf.LocalEntryNotFoundError):
        missing = filename or str(getattr(getattr(exc, "response", None), "url", "") or "").rsplit("/", 1)[-1] or "a file"
        return HubProblem("no_file", f"the Hub repo {name} has no {printable(missing, 120)} at revision "
                                     f"{printable(revision or 'main', 120)}", status)
    what = f"{printable(filename, 120)} of {name}" if filename else name
    if "OfflineModeIsEnabled" in _names(exc):  # a call that needs the network, made in offline mode
        return HubProblem("offline", (
            f"offline mode is on (HF_HUB_OFFLINE=1), and to {action} {what} needs {where}: unset HF_HUB_OFFLINE, or "
            "use a copy already in the Hugging Face cache"))
    if isinstance(exc, hf.LocalEntryNotFoundError):  # not in the cache, and the Hub was not asked or not reached
        if constants.HF_HUB_OFFLINE:
            return HubProblem("offline", (
                f"HF_HUB_OFFLINE=1 and {what} is not in the Hugging Face cache: run once with network access (without "
                "HF_HUB_OFFLINE) to download it, or point HF_HOME / HF_HUB_CACHE at the cache that has it"))
        return HubProblem("unreachable", (
            f"cannot reach {where} to {action} {what}, and it is not in the Hugging Face cache: check the network "
            f"connection and the endpoint ({endpoint_hint}), or set HF_HUB_OFFLINE=1 to use a cache that has it"))
    if isinstance(exc, hf.HFValidationError):
        return HubProblem("invalid", f"{name} is not a valid Hub repo id ({quote(exc)}): use ORG/NAME[@REVISION]")
    if isinstance(exc, hf.HfHubHTTPError):
        if status == 401:
            return HubProblem("auth", (
                f"{where} refused the credentials (HTTP 401) to {action} {name}: set HF_TOKEN to a valid token or run "
                "`hf auth login`" + (" (a token with write access)" if write else "")), status)
        if status == 403:
            return HubProblem("forbidden", (
                f"{where} forbids this token to {action} {name} (HTTP 403): use a token with "
                f"{'write' if write else 'read'} access to the namespace '{printable(namespace, 120)}'"), status)
        if status == 429:
            return HubProblem("rate_limited", (
                f"{where} is limiting this client's requests (HTTP 429) to {action} {name}: wait a few minutes and run "
                "again (requests with a token, HF_TOKEN, get higher limits)"), status)
        said = quote(getattr(exc, "server_message", None) or "")
        if status is not None and status >= 500:
            return HubProblem("server", (
                f"{where} failed with a server error (HTTP {status}) to {action} {name}" + (f" ({said})" if said else "")
                + ": the Hub is having trouble; run again later"), status)
        return HubProblem("http", (
            f"{where} answered HTTP {status if status is not None else '?'} to {action} {name}"
            + (f" ({said})" if said else "") + f". Is {where} a Hugging Face Hub? Check {endpoint_hint}"), status)
    if "TooManyRedirects" in _names(exc):
        return HubProblem("http", (
            f"{where} redirected the request to {action} {name} again and again (more than 20 redirects): it is not "
            f"a working Hugging Face Hub. Check {endpoint_hint}"))
    if is_transport_error(exc):
        if _is_timeout(exc):
            return HubProblem("timeout", (
                f"{where} did not answer in time to {action} {what} ({reason()}): the network or the server is slow; "
                "run again later (CLOTCLF_HUB_TIMEOUT raises the limit)"))
        return HubProblem("unreachable", (
            f"cannot reach {where} to {action} {what} ({reason()}): check the network connection and the endpoint "
            f"({endpoint_hint})"))
    return None


# ----------------------------------------------------------------------------- fetching a model's files
#
# What the timm plugin and the transformers plugin share when they load a published model: one file
# (or a filtered snapshot) fetched from the Hub or its cache with every failure in one line, the commit
# the cache says it came from, and the sha256 recorded beside the repo and that commit.


class HubFileError(ClotclfError):
    """A file of a Hub repo could not be had: ``problem`` says why (:class:`HubProblem`)."""

    def __init__(self, message: str, problem: HubProblem | None = None):
        super().__init__(message)
        self.problem = problem


def _raise_problem(exc: BaseException, *, repo_id: str, shown: str | None, revision: str | None,
                   filename: str | None, no_file_hint: str = "") -> None:
    problem = hub_problem(exc, repo_id=repo_id, shown=shown, revision=revision, filename=filename)
    if problem is None:
        raise exc
    hint = no_file_hint if problem.kind == "no_file" else ""
    raise HubFileError(problem.message + hint, problem) from None


def fetch_file(repo_id: str, filename: str, revision: str | None = None, *, shown: str | None = None,
               missing_ok: bool = False, no_file_hint: str = "") -> str | None:
    """Local path of ``filename`` in ``repo_id`` at ``revision`` (downloaded, or from the Hugging Face
    cache when offline), through ``huggingface_hub.hf_hub_download`` (``HF_TOKEN``, ``HF_ENDPOINT``,
    ``HF_HUB_OFFLINE`` as it reads them). ``missing_ok``: ``None`` when the repo exists but lacks the
    file. Every failure is one :class:`HubFileError` (:func:`hub_problem`'s words; ``no_file_hint``
    is appended to a missing file's message). ``shown``: how messages name the repo."""
    from huggingface_hub import hf_hub_download

    try:
        with operation(what=f"the download of {filename} of '{shown or repo_id}'"):  # the Hub limits: never a hang
            return hf_hub_download(repo_id, filename, revision=revision)
    except Exception as exc:  # noqa: BLE001 - translated, or re-raised as it was
        problem = hub_problem(exc, repo_id=repo_id, shown=shown, revision=revision, filename=filename)
        if problem is not None and problem.kind == "no_file" and missing_ok:
            return None
        _raise_problem(exc, repo_id=repo_id, shown=shown, revision=revision, filename=filename, no_file_hint=no_file_hint)
    return None  # pragma: no cover - _raise_problem always raises


def fetch_snapshot(repo_id: str, revision: str | None, patterns: list[str], *, shown: str | None = None) -> str:
    """Local folder of the files of ``repo_id`` at ``revision`` that match ``patterns`` (fnmatch;
    ``huggingface_hub.snapshot_download``'s ``allow_patterns``): only those are downloaded, so a
    repo's pickle weights are never fetched. Failures as :func:`fetch_file`'s."""
    from huggingface_hub import snapshot_download

    try:
        with operation(what=f"the download of '{shown or repo_id}'"):  # the Hub limits: never a hang
            return snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns))
    except Exception as exc:  # noqa: BLE001 - translated, or re-raised as it was
        _raise_problem(exc, repo_id=repo_id, shown=shown, revision=revision, filename=None)
    return ""  # pragma: no cover


def cache_commit(path: str) -> str | None:
    """The commit a file (or snapshot folder) of the Hugging Face cache belongs to
    (``…/snapshots/<commit>/…``); ``None`` for a path outside the cache."""
    from pathlib import Path

    parts = Path(path).parts
    if "snapshots" in parts[:-1]:
        commit = parts[len(parts) - 1 - parts[::-1].index("snapshots") + 1]
        if all(c in "0123456789abcdef" for c in commit) and 7 <= len(commit) <= 64:
            return commit
    return None


def hub_record(repo_id: str, commit: str | None, weights_path: str | None, **more: object) -> dict[str, object]:
    """What a run records about a published model it loaded: ``repo``, ``commit`` and the sha256 of
    the weights file (``weights_file_sha256``), plus ``more`` (the loader's config…). Never the
    weights themselves: most pathology encoders' licences forbid redistributing them."""
    from clotclf_core.plugin.weights import sha256_file

    record: dict[str, object] = {"repo": repo_id, "commit": commit}
    if weights_path:
        record["weights_file_sha256"] = sha256_file(weights_path)
    return record | dict(more)

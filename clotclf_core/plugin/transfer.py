"""Every Hub call under limits, so that a server can slow clotclf down but never hang it.

Three limits, each a setting (:class:`TransferLimits`; the environment variable, or the registry's
settings file, see docs/registry.md):

=============  ======================  ========  =================================================================
setting        environment             default   meaning
=============  ======================  ========  =================================================================
hub_timeout    CLOTCLF_HUB_TIMEOUT     60 s      the longest wait for a connection, for the answer to a request,
                                                 and the window over which ``hub_min_rate`` is measured
hub_min_rate   CLOTCLF_HUB_MIN_RATE    4096 B/s  during a transfer (a download, an upload), every ``hub_timeout``
                                                 window must move at least ``hub_min_rate x hub_timeout`` bytes
                                                 (a server trickling 1 byte every 2 s fails after one window)
hub_deadline   CLOTCLF_HUB_DEADLINE    3600 s    one whole operation (a pull, a push, a model listing: every
                                                 request, retry, redirect and back-off sleep in it)
=============  ======================  ========  =================================================================

A limit that runs out is one :class:`TransferTimeout` (a :class:`ClotclfError`: one line, exit
code 2) naming the server, the request, what ran out and the setting that would change it.

How: :func:`install` gives ``huggingface_hub``'s HTTP client (``huggingface_hub.set_client_factory``)
an httpx request hook and response hook. The request hook refuses a request once the operation has
failed or its deadline has passed, sets the request's connect / read / write / pool timeouts (a
backstop a little above ``hub_timeout``, never past the deadline; huggingface_hub's own are None or
10 s per read, which a trickle defeats), counts upload bytes and, through httpcore's ``trace``
extension, learns the request's socket. The response hook counts download bytes. A watchdog thread
looks at every transfer four times a second; when one breaks a limit it records why and shuts the
transfer's socket down, so a read or write blocked inside httpcore returns at once, and the next
thing clotclf sees — a byte of the body, the next request of a retry, or
:func:`clotclf_core.plugin.hub.hub_problem` translating the transport error — raises that one line.
Back-off warnings huggingface_hub logs after a transfer was stopped this way are dropped.

:func:`operation` marks one operation (the registry wraps each pull, push and listing in one, with
its settings); calls outside any operation (a plugin's own downloads) get the limits from the
environment, the deadline counted per request. Transfers that ``hf_xet`` makes itself (Xet storage,
huggingface.co only) do not go through this client: their own timeouts apply, and the deadline is
checked before and after each.

Importing this module imports neither huggingface_hub nor httpx. It is long for one module because
the limits, the hooks that measure them and the watchdog that enforces them share their state
(the current operation, the watched transfers) and are never used apart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from clotclf_core.plugin.errors import ClotclfError, ConfigError, printable
from clotclf_core.plugin.secrets import shown_url

#: setting -> (environment variable, default, unit shown in messages)
SETTINGS = {
    "hub_timeout": ("CLOTCLF_HUB_TIMEOUT", 60.0, "s"),
    "hub_min_rate": ("CLOTCLF_HUB_MIN_RATE", 4096.0, "bytes/s"),
    "hub_deadline": ("CLOTCLF_HUB_DEADLINE", 3600.0, "s"),
}
#: how long past ``hub_timeout`` httpcore's own timeouts wait, so the watchdog's message comes first
_BACKSTOP = 2.0


class TransferTimeout(ClotclfError):
    """A Hub transfer broke a limit (no answer, too slow, past the deadline): one line naming the setting."""


@dataclass(frozen=True)
class TransferLimits:
    """The three limits (module docstring). ``where`` says, per setting, where a user changes it
    (default: its environment variable; the registry adds its settings file)."""

    hub_timeout: float = SETTINGS["hub_timeout"][1]
    hub_min_rate: float = SETTINGS["hub_min_rate"][1]
    hub_deadline: float = SETTINGS["hub_deadline"][1]
    where: dict[str, str] = field(default_factory=dict, compare=False)

    def hint(self, name: str) -> str:
        return self.where.get(name) or SETTINGS[name][0]


def check_limit(name: str, value: Any, source: str) -> float:
    """``value`` as a positive number of seconds (or bytes/s), else one :class:`ConfigError` naming ``source``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or number == float("inf"):
        unit = SETTINGS[name][2]
        raise ConfigError(f"{source} must be a positive number ({unit}), not {printable(repr(value), 60)}; "
                          f"the default is {SETTINGS[name][1]:g}")
    return number


def limits_from_env(**given: Any) -> TransferLimits:
    """The limits from the environment; ``given`` (a setting -> value, None = not given) wins."""
    values: dict[str, float] = {}
    for name, (env, _, _) in SETTINGS.items():
        if given.get(name) is not None:
            values[name] = check_limit(name, given[name], name)
        elif os.environ.get(env, "").strip():
            values[name] = check_limit(name, os.environ[env].strip(), env)
    return TransferLimits(**values)


# ----------------------------------------------------------------------------- operations and transfers


@dataclass(eq=False)
class _Operation:
    limits: TransferLimits
    what: str
    start: float = field(default_factory=time.monotonic)
    failure: str | None = None  # the one line, once a limit ran out

    def left(self, now: float) -> float:
        return self.start + self.limits.hub_deadline - now


@dataclass(eq=False)
class _Transfer:
    """One HTTP request and its answer, watched."""

    op: _Operation
    label: str  # ``GET /lab/tiny/resolve/…`` (no query: it may carry what a hostile server put there)
    server: str
    phase: str = "connect"  # connect | upload | answer | download | done
    since: float = field(default_factory=time.monotonic)  # start of the current phase / rate window
    moved: int = 0  # bytes moved in the current rate window
    sockets: list[Any] = field(default_factory=list)
    expired: str | None = None
    checked: float = 0.0  # when the watchdog last looked


_LOCK = threading.RLock()
_CURRENT: _Operation | None = None
#: the transfers being watched (each lives as long as its request: held by the request's extensions)
_TRANSFERS: "weakref.WeakSet[_Transfer]" = weakref.WeakSet()
#: the last limit that ran out outside any operation, and when: the next request within
#: :data:`_RETRY_WINDOW` seconds (huggingface_hub's back-off retry of it) is refused with it
_LAST_FAILURE: list[tuple[str, float]] = []
_RETRY_WINDOW = 10.0
#: every socket the client opened (to unblock a transfer on a pooled connection whose socket it never saw)
_SOCKETS: "weakref.WeakSet[Any]" = weakref.WeakSet()
_WATCHDOG: threading.Thread | None = None
_INSTALLED = False


@contextlib.contextmanager
def operation(limits: TransferLimits | None = None, what: str = "the Hub call") -> Iterator[None]:
    """Run one operation (``what``: ``"the pull of 'lab/tiny'"``) under ``limits`` (default: from the
    environment). Nested operations run under the outermost one."""
    global _CURRENT
    install()
    with _LOCK:
        if _CURRENT is not None:
            outer = True
        else:
            outer = False
            _CURRENT = _Operation(limits or limits_from_env(), what)
    try:
        yield
    finally:
        if not outer:
            with _LOCK:
                _CURRENT = None


def failure() -> str | None:
    """The line of the limit that ran out in the current operation (or, outside one, in the last
    :data:`_RETRY_WINDOW` seconds), if any."""
    with _LOCK:
        if _CURRENT is not None:
            return _CURRENT.failure
        recent = _LAST_FAILURE and time.monotonic() - _LAST_FAILURE[-1][1] < _RETRY_WINDOW
        return _LAST_FAILURE[-1][0] if recent else None


def extend(seconds: float) -> None:
    """Give the current operation ``seconds`` more and forget its failure: for cleaning up after one
    (e.g. deleting the empty repo a failed push created), which must not hang either."""
    with _LOCK:
        if _CURRENT is not None:
            _CURRENT.failure = None
            _CURRENT.start = time.monotonic() - _CURRENT.limits.hub_deadline + seconds


def _fail(transfer: _Transfer | None, op: _Operation, line: str) -> str:
    with _LOCK:
        if op.failure is None:
            op.failure = line
        if _CURRENT is not op:
            _LAST_FAILURE[:] = [(line, time.monotonic())]
        if transfer is not None and transfer.expired is None:
            transfer.expired = line
        return op.failure


def _deadline_line(op: _Operation, t: _Transfer | None) -> str:
    during = f" (during {t.label} to {t.server})" if t is not None else ""
    return (f"{op.what} did not finish within its deadline of {op.limits.hub_deadline:g} s{during}: the server or the "
            f"network is too slow for it; run again later, or raise the deadline ({op.limits.hint('hub_deadline')})")


def _check(t: _Transfer, now: float) -> str | None:
    """Why ``t`` must stop now, or None."""
    op, lim = t.op, t.op.limits
    if op.left(now) <= 0:
        return _deadline_line(op, t)
    waited = now - t.since
    if waited < lim.hub_timeout:
        return None
    if t.phase in ("connect", "answer"):
        doing = "did not accept the connection" if t.phase == "connect" else "sent no answer"
        return (f"{t.server} {doing} to {t.label} within {lim.hub_timeout:g} s: the server or the network is stuck; "
                f"run again later, or raise the limit ({lim.hint('hub_timeout')})")
    if t.phase in ("upload", "download") and t.moved < lim.hub_min_rate * waited:
        verb = "took" if t.phase == "upload" else "sent"
        return (f"{t.server} {verb} {t.moved} bytes in {waited:.0f} s for {t.label} ({t.moved / waited:.0f} bytes/s), below "
                f"the minimum transfer rate of {lim.hub_min_rate:g} bytes/s: the server or the network is too slow; run "
                f"again later, or lower the minimum ({lim.hint('hub_min_rate')}) or lengthen its window "
                f"({lim.hint('hub_timeout')})")
    if t.phase in ("upload", "download"):
        t.since, t.moved = now, 0  # a new window
    return None


def _watch() -> None:
    while True:
        time.sleep(0.05)
        now = time.monotonic()
        with _LOCK:
            live = list(_TRANSFERS)
        for t in live:
            if t.expired is not None or t.phase in ("done", "failed"):
                continue
            period = min(0.25, t.op.limits.hub_timeout / 4)
            if now - t.checked < period:
                continue
            t.checked = now
            line = _check(t, now)
            if line is not None:
                _fail(t, t.op, line)
                _shut(t)


def _shut(t: _Transfer) -> None:
    """Unblock whatever waits on ``t``'s connection (every open socket of the client when it is not known)."""
    for sock in list(t.sockets) or list(_SOCKETS):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


# ----------------------------------------------------------------------------- the httpx hooks


def _server(url: Any) -> str:
    return shown_url(f"{url.scheme}://{url.netloc.decode('ascii', 'replace') if isinstance(url.netloc, bytes) else url.netloc}")


def _label(request: Any) -> str:
    path = request.url.path
    return printable(f"{request.method} {path if len(path) <= 120 else path[:100] + '…' + path[-19:]}", 160)


def _refuse(op: _Operation) -> None:
    """Raise the operation's failure, or the deadline's when it has passed."""
    if op.failure is None and op.left(time.monotonic()) <= 0:
        _fail(None, op, _deadline_line(op, None))
    if op.failure is not None:
        raise TransferTimeout(op.failure)


def _on_request(request: Any) -> None:
    with _LOCK:
        op, stale = _CURRENT, None
        if op is None:
            op = _Operation(limits_from_env(), "the Hub call")
            if _LAST_FAILURE:
                line, when = _LAST_FAILURE.pop()
                stale = line if time.monotonic() - when < _RETRY_WINDOW else None
    if stale is not None:
        raise TransferTimeout(stale)
    _refuse(op)
    now = time.monotonic()
    backstop = min(op.limits.hub_timeout + _BACKSTOP, max(op.left(now), 0.0) + _BACKSTOP)
    request.extensions["timeout"] = {"connect": backstop, "read": backstop, "write": backstop, "pool": backstop}
    t = _Transfer(op, _label(request), _server(request.url))
    previous = request.extensions.get("trace")

    def trace(event: str, info: dict[str, Any]) -> Any:
        step, _, state = event.rpartition(".")
        step = step.rpartition(".")[2]
        now = time.monotonic()
        if state == "complete" and step in ("connect_tcp", "start_tls", "connect_unix_socket"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                t.sockets.append(sock)
                _SOCKETS.add(sock)
        elif state == "started" and step == "send_request_headers":
            t.phase, t.since, t.moved = "upload", now, 0
        elif state == "complete" and step == "send_request_body":
            t.phase, t.since, t.moved = "answer", now, 0
        elif state == "started" and t.phase == "failed":  # httpcore tries again (another connection)
            t.phase, t.since = "connect", now
        elif state == "failed" and t.expired is None:
            t.phase = "failed"  # an error of its own (refused, reset): not the watchdog's to report
        if t.expired is not None:
            raise TransferTimeout(t.expired)
        return previous(event, info) if previous is not None else None

    request.extensions["trace"] = trace
    if request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers:
        request.stream = _counted(request.stream, t, upload=True)
    request.extensions["clotclf_transfer"] = t
    with _LOCK:
        _TRANSFERS.add(t)
    _ensure_watchdog()


def _on_response(response: Any) -> None:
    t = response.request.extensions.get("clotclf_transfer")
    if t is None:
        return
    if t.expired is not None:
        _forget(t)
        raise TransferTimeout(t.expired)
    if not t.sockets:  # a connection from the pool: its socket is the response's
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            t.sockets.append(sock)
    t.phase, t.since, t.moved = "download", time.monotonic(), 0
    response.stream = _counted(response.stream, t, upload=False)


def _forget(t: _Transfer) -> None:
    t.phase = "done"
    with _LOCK:
        _TRANSFERS.discard(t)


def _counted(stream: Any, t: _Transfer, upload: bool) -> Any:
    """``stream`` (an httpx ``SyncByteStream``) counting its bytes into ``t``, raising its failure."""
    global _COUNTED
    if _COUNTED is None:
        _COUNTED = type("CountedStream", (_httpx().SyncByteStream,), {
            "__init__": _counted_init, "__iter__": _counted_iter, "close": _counted_close,
            "elapsed": property(lambda self: getattr(self.inner, "elapsed", None))})
    return _COUNTED(stream, t, upload)


_COUNTED: Any = None


def _counted_init(self: Any, inner: Any, t: _Transfer, upload: bool) -> None:
    self.inner, self.t, self.upload = inner, t, upload


def _counted_iter(self: Any) -> Iterator[bytes]:
    t = self.t
    try:
        for chunk in self.inner:
            if t.expired is not None:
                raise TransferTimeout(t.expired)
            t.moved += len(chunk)
            yield chunk
    except TransferTimeout:
        _forget(t)
        raise
    except Exception:
        if t.expired is not None:  # the watchdog shut the socket: say why
            _forget(t)
            raise TransferTimeout(t.expired) from None
        raise
    if not self.upload:
        _forget(t)


def _counted_close(self: Any) -> None:
    if not self.upload:
        _forget(self.t)
    self.inner.close()


def _httpx() -> Any:
    """The httpx huggingface_hub uses (``httpx`` in 1.x, ``httpx2`` in 2.x)."""
    from huggingface_hub import get_session

    module = type(get_session()).__module__.split(".")[0]
    import importlib

    return importlib.import_module(module)


def _ensure_watchdog() -> None:
    global _WATCHDOG
    with _LOCK:
        if _WATCHDOG is None or not _WATCHDOG.is_alive():
            _WATCHDOG = threading.Thread(target=_watch, name="clotclf-transfer-watchdog", daemon=True)
            _WATCHDOG.start()


class _AfterFailure(logging.Filter):
    """Drops huggingface_hub's retry warnings about a transfer clotclf stopped (one line, not three);
    scrubs credentials from the others."""

    def filter(self, record: logging.LogRecord) -> bool:
        if failure() is not None and record.levelno < logging.ERROR:
            return False
        from clotclf_core.plugin.secrets import scrub_secrets

        text = record.getMessage()
        clean = scrub_secrets(text)
        if clean != text:
            record.msg, record.args = clean, ()
        return True


def install() -> None:
    """Give huggingface_hub's HTTP client the hooks (once per process; every later client it makes too)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        _INSTALLED = True
    import huggingface_hub

    try:  # the factory huggingface_hub would use itself (its request hook, redirects, no timeout)
        from huggingface_hub.utils._http import default_client_factory
    except ImportError:  # pragma: no cover - a release without it: the client as it is now
        default_client_factory = huggingface_hub.get_session

    def factory() -> Any:
        client = default_client_factory()
        hooks = client.event_hooks
        client.event_hooks = {"request": [*hooks.get("request", []), _on_request],
                              "response": [*hooks.get("response", []), _on_response]}
        return client

    huggingface_hub.set_client_factory(factory)
    library = logging.getLogger("huggingface_hub")
    for target in (library, *library.handlers):
        if not any(isinstance(f, _AfterFailure) for f in target.filters):
            target.addFilter(_AfterFailure())


def with_hints(limits: TransferLimits, **where: str) -> TransferLimits:
    """``limits`` whose messages name ``where`` (setting -> text) as the place to change each setting."""
    return replace(limits, where={**limits.where, **where})

"""A Hub stand-in that misbehaves on purpose: :class:`HostileHub` is :class:`hub_server.HubServer`
(a working Hub) plus rules that make chosen endpoints hostile, for the hostile battery
(tests/test_hostile_network.py).

    hub = HostileHub(tokens).start()
    hub.misbehave("echo_500")                                   # every endpoint
    hub.misbehave("hang", "GET", r"/resolve/")                  # downloads only
    hub.misbehave("trickle", "GET", r"model\\.safetensors$", interval=0.5)

What a rule can do (``how``):

- ``echo_500`` / ``echo_4xx``: answer 500 (or ``status``) with the request's ``Authorization``
  header quoted in ``X-Error-Message``, in the JSON body, and (``echo_4xx``) in a second header:
  a proxy or a server that reflects what it was sent.
- ``echo_redirect``: redirect (302) to a URL carrying the header's value in its path and query.
- ``hang``: read the request, then never answer (until the server stops).
- ``trickle``: answer normally, but send the body one byte every ``interval`` seconds.
- ``trickle_headers``: send the status line and headers themselves one byte every ``interval`` seconds.
- ``serve``: a download (``GET …/resolve/…``) answers with ``body`` instead of the stored bytes
  (the ``HEAD`` before it still tells the truth): wrong sizes, an LFS pointer instead of the blob.
- ``lfs_pointer``: ``serve`` with the Git LFS pointer of the requested file.

A rule matches ``method`` (None: any) and the regular expression ``path`` (searched in the URL
path); ``times`` limits how often it applies (None: always). Rules are tried in order.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlparse

from hub_server import HubServer, _Handler, lfs_pointer


@dataclass
class Rule:
    how: str
    method: str | None
    path: re.Pattern[str]
    times: int | None
    params: dict[str, Any] = field(default_factory=dict)


class HostileHub(HubServer):
    """A working Hub stand-in whose endpoints can be made hostile with :meth:`misbehave`."""

    def __init__(self, tokens: dict[str, Any] | None = None):
        super().__init__(tokens)
        self.rules: list[Rule] = []
        self.released = threading.Event()  # set by stop(): hanging and trickling handlers give up
        self.hits: list[tuple[str, str, str]] = []  # (how, method, path) of every hostile answer

    def misbehave(self, how: str, method: str | None = None, path: str = "", times: int | None = None, **params: Any) -> None:
        with self.lock:
            self.rules.append(Rule(how, method, re.compile(path), times, params))

    def start(self) -> "HostileHub":
        handler = type("Handler", (_HostileHandler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        super().stop()

    def rule_for(self, method: str, path: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if (rule.method is None or rule.method == method) and rule.path.search(path):
                    if rule.times is not None:
                        if rule.times <= 0:
                            continue
                        rule.times -= 1
                    self.hits.append((rule.how, method, path))
                    return rule
        return None


class _HostileHandler(_Handler):
    hub: HostileHub
    _rule: Rule | None = None

    def _dispatch(self, method: str) -> None:
        path = urlparse(self.path).path
        self._rule = rule = self.hub.rule_for(method, path)
        if rule is None or rule.how in ("trickle", "trickle_headers", "serve", "lfs_pointer"):
            super()._dispatch(method)  # a normal answer, sent slowly or with another body by _send
            return
        auth = self.headers.get("Authorization", "")
        head = method == "HEAD"
        self._read_body()  # (left unread, it would be taken for the next request on this connection)
        if rule.how == "hang":
            self.hub.released.wait()
            self.close_connection = True
        elif rule.how in ("echo_500", "echo_4xx"):
            status = rule.params.get("status", 500 if rule.how == "echo_500" else 400)
            headers = {"X-Error-Message": f"request refused: Authorization: {auth}"}
            if rule.how == "echo_4xx":
                headers["X-Debug-Auth"] = auth
            body = json.dumps({"error": f"you sent {auth}", "token": auth.partition(' ')[2]}).encode()
            self._send_raw(status, body, {"Content-Type": "application/json", **headers}, head)
        elif rule.how == "echo_redirect":
            secret = auth.partition(" ")[2]
            self._send_raw(302, b"", {"Location": f"/echo/{quote(secret)}?token={quote(secret)}&auth={quote(auth)}"}, head)
        else:  # pragma: no cover - a typo in a test
            raise ValueError(f"unknown rule {rule.how!r}")

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False) -> None:
        rule = self._rule
        if rule is not None and rule.how in ("serve", "lfs_pointer") and not head and "/resolve/" in self.path:
            if rule.how == "lfs_pointer":
                body = lfs_pointer(hashlib.sha256(body).hexdigest(), len(body))
            else:
                body = rule.params["body"]
            headers = {k: v for k, v in (headers or {}).items() if k != "Content-Range"}
            status = 200
        self._send_raw(status, body, headers, head)

    def _send_raw(self, status: int, body: bytes, headers: dict[str, str] | None, head: bool) -> None:
        rule = self._rule
        lines = [f"HTTP/1.1 {status} {'OK' if status < 300 else 'Found' if status < 400 else 'Error'}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines += [f"Content-Length: {len(body)}", "", ""]
        raw_head = "\r\n".join(lines).encode("latin-1", "replace")
        interval = rule.params.get("interval", 2.0) if rule is not None else 0.0
        try:
            if rule is not None and rule.how == "trickle_headers":
                self._slowly(raw_head, interval)
            else:
                self.wfile.write(raw_head)
                self.wfile.flush()
            if head:
                return
            if rule is not None and rule.how == "trickle":
                self._slowly(body, interval)
            else:
                self.wfile.write(body)
                self.wfile.flush()
        except OSError:  # the client gave up: what a hostile server does not care about
            self.close_connection = True

    def _slowly(self, data: bytes, interval: float) -> None:
        for i in range(len(data)):
            if self.hub.released.is_set():
                self.close_connection = True
                return
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            time.sleep(interval)

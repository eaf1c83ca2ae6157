"""Credentials out of every output: whatever a server echoes, a token this process uses never
leaves it in a message, a log line, a traceback or a file clotclf writes.

- :func:`add_secret` remembers a credential (the registry adds the Hub token it uses:
  :func:`clotclf_core.plugin.hub.add_token`); ``HF_TOKEN`` is always known (:func:`known_secrets`).
- :func:`shown_url`: a URL without the credentials it may carry (user info, ``?token=``).
- :func:`scrub_secrets` removes from a text every known credential (as given or URL-quoted),
  ``Authorization:`` header values and ``Bearer …`` / ``Basic …`` credentials. It leaves other text
  alone (no guessing at what looks like a token: ``clotclf_core.plugin.hub.scrub`` does that for the
  exception text it quotes), so it can run over everything printed.
- :func:`protect_output` makes every line written to ``sys.stdout`` / ``sys.stderr`` go through it:
  messages, warnings, progress, library log lines, a bug's traceback. The CLI calls it when a
  command starts.

Importing this module imports nothing beyond the standard library.
"""

from __future__ import annotations

import os
import re
import sys
from urllib.parse import quote

#: an HTTP credential as it travels: ``Bearer <anything>``, ``Basic <base64>`` (spaces may be URL-quoted)
_CREDENTIAL = re.compile(r"\b([Bb]earer(?:\s+|%20|\+))[^\s\"',;&)\]}>]+|\b(Basic(?:\s+|%20|\+))[A-Za-z0-9+/]{8,}={0,2}")
_AUTH_HEADER = re.compile(r"((?:Proxy-)?Authorization\s*[:=]\s*(?:[A-Za-z]+(?:\s+|%20|\+))?)[^\s\"',;)\]}]+",
                          re.IGNORECASE)
#: tokens this process has been given (:func:`add_secret`); ``HF_TOKEN`` is read from the environment each time
_SECRETS: set[str] = set()
#: credentials a URL may carry: user info, and query parameters that hold tokens
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@")
_SECRET_QUERY = re.compile(r"([?&;](?:token|access_token|auth|api_key|apikey|key|sig|signature|password)=)[^&;#\s]*",
                           re.IGNORECASE)


def shown_url(url: str) -> str:
    """``url`` without credentials: ``https://user:secret@hub/x?token=t`` -> ``https://hub/x?token=***``.
    Every message, table and JSON field that names an endpoint goes through this
    (:mod:`clotclf_core.plugin.hub`, the transfer limits, the registry's settings)."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1", str(url)))


def add_secret(value: str | None) -> None:
    """Remember a credential so that :func:`scrub_secrets` (and
    :func:`clotclf_core.plugin.hub.scrub`) remove it from any text,
    wherever that text comes from (a server may echo it in an error, a redirect, a body)."""
    if value and isinstance(value, str) and len(value) >= 4:
        _SECRETS.add(value)


def known_secrets() -> list[str]:
    """Every credential to keep out of text: :func:`add_secret`'s and ``HF_TOKEN``'s, longest first."""
    found = set(_SECRETS)
    env = os.environ.get("HF_TOKEN", "").strip()
    if len(env) >= 4:
        found.add(env)
    return sorted(found, key=len, reverse=True)


def scrub_secrets(text: str) -> str:
    """``text`` without any known credential (as given or URL-quoted), ``Authorization:`` header
    values, ``Bearer …`` and ``Basic …`` credentials: what every line clotclf prints goes through
    (:func:`protect_output`)."""
    if not text:
        return text
    for secret in known_secrets():
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            if form in text:
                text = text.replace(form, "***")
    text = _AUTH_HEADER.sub(r"\1***", text)
    return _CREDENTIAL.sub(lambda m: (m.group(1) or m.group(2) or "") + "***", text)


class _ScrubbedStream:
    """A text stream that writes through :func:`scrub_secrets`; everything else is the wrapped stream's."""

    def __init__(self, stream: object):
        self._stream = stream

    def write(self, text: str) -> int:
        if isinstance(text, str):
            self._stream.write(scrub_secrets(text))  # type: ignore[attr-defined]
            return len(text)
        return self._stream.write(text)  # type: ignore[attr-defined, no-any-return]

    def writelines(self, lines: object) -> None:
        for line in lines:  # type: ignore[attr-defined]
            self.write(line)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def protect_output() -> None:
    """From now on, every line written to ``sys.stdout`` / ``sys.stderr`` (messages, warnings, logs,
    progress, a bug's traceback) is scrubbed of known credentials (:func:`scrub_secrets`). The CLI
    calls it when a command starts; calling it again changes nothing."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _ScrubbedStream):
            setattr(sys, name, _ScrubbedStream(stream))

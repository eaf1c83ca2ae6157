"""Model references: ``NAME[@REVISION]`` where NAME is ``org/name`` or a short ``name``.

A short name is looked up in the default namespace (see :mod:`.settings`), so
``mayo-poolformer`` means ``clotclf/mayo-poolformer`` unless configured otherwise. REVISION is
a branch, a tag or a commit sha; a commit sha always names the same bytes.

The rules follow the Hugging Face Hub's repo-name rules (letters, digits, ``-``, ``_``, ``.``;
no ``--`` or ``..``; at most 96 characters), so a name valid here is valid on the Hub and in a
local registry, whose folders are named after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import RegistryError

_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
EXAMPLE = "e.g. mayo-poolformer, clotclf/mayo-poolformer or clotclf/mayo-poolformer@v1"


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: ``repo_id`` is always ``org/name``; ``revision`` may be None."""

    namespace: str
    name: str
    revision: str | None = None

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def valid_part(text: str) -> bool:
    """Whether ``text`` may be a namespace or a model name."""
    return bool(_PART.match(text)) and "--" not in text and ".." not in text and not text.endswith(".git")


def check_part(text: str, what: str) -> str:
    if not valid_part(text):
        raise RegistryError(
            f"{what} '{text}' is not valid: use letters, digits, '-', '_' and '.', starting and ending with a letter "
            f"or digit, without '--' or '..', at most 96 characters ({EXAMPLE})"
        )
    return text


def check_revision(text: str) -> str:
    if not _REVISION.match(text) or ".." in text or text.endswith("/") or "//" in text:
        raise RegistryError(
            f"revision '{text}' is not valid: give a branch, a tag or a 40-character commit sha (e.g. @main, @v1)"
        )
    return text


def parse_ref(text: str, namespace: str) -> ModelRef:
    """Parse ``NAME[@REVISION]``; a short NAME gets ``namespace``. Raises :class:`RegistryError`."""
    raw = text.strip()
    name, sep, revision = raw.partition("@")
    if not name or (sep and not revision):
        raise RegistryError(f"'{text}' is not a model name ({EXAMPLE})")
    parts = name.split("/")
    if len(parts) > 2:
        raise RegistryError(f"'{text}' is not a model name: use NAME or ORG/NAME, with one '/' at most ({EXAMPLE})")
    if len(parts) == 2:
        ns, short = parts
        check_part(ns, "namespace")
    else:
        ns, short = namespace, parts[0]
    check_part(short, "model name")
    return ModelRef(ns, short, check_revision(revision) if sep else None)


def looks_like_ref(text: str) -> bool:
    """A cheap test used by the name-resolving hook: could ``text`` be a registry reference at all?

    Paths (``./run``, ``/abs``, ``~/x``, ``a/b/c``, ``C:\\x``) and file names are not, so an
    unknown local path still gets the core's "not a run directory" message, not a network call.
    """
    if not text or text.startswith((".", "/", "~", "\\")) or "\\" in text or ":" in text:
        return False
    name = text.partition("@")[0]
    parts = name.split("/")
    return len(parts) <= 2 and all(valid_part(p) for p in parts)

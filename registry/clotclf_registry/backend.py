"""The registry backend interface: the small contract a place to keep models must meet.

Two backends are built in: the Hugging Face Hub (:mod:`.hub`, any Hub-compatible server) and a
local directory (:mod:`.local`, for sites that cannot reach the Hub). Another one (S3, MLflow...)
is a class implementing :class:`RegistryBackend`, found by its URL scheme (:mod:`.factory`). A
backend moves files and answers questions; naming, verification and the CLI are shared
(:mod:`.api`), so every backend gets the same checks for free.

This module imports no backend: the backends import it, and :mod:`.factory` imports them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clotclf_core.plugin.hub import COMMIT_SHA

from .layout import Plan


@dataclass
class PushResult:
    repo_id: str
    url: str
    commit: str
    tag: str | None
    files: list[str]
    unchanged: bool = False  # the files were already at the head of main: no new commit


@dataclass
class Fetched:
    """A revision's files on local disk, not yet verified."""

    path: Path
    commit: str
    #: sha256 of model.safetensors as the registry lists it (None: not an LFS file on the Hub)
    registry_sha256: str | None
    from_cache: bool = False
    #: the files fetched, with the size and hash the registry listed for each (see .layout.plan_download)
    plan: Plan | None = None
    #: the commit this revision pointed to when it was last pulled here (None: never, or a commit sha)
    previous_commit: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelEntry:
    repo_id: str
    private: bool
    card: dict[str, Any]  # the model card's front matter
    updated: str | None = None


class RegistryBackend(ABC):
    """Where models live. Files are ``(repo path, local path or bytes)`` pairs of the layout."""

    #: how messages name this registry, e.g. ``https://huggingface.co`` or ``file:///srv/models``
    label: str

    @abstractmethod
    def push(self, repo_id: str, files: list[tuple[str, Path | bytes]], *, private: bool, tag: str | None,
             message: str) -> PushResult:
        """Create the repo if needed and commit ``files`` to its main branch in one commit; tag it.
        Refuse an existing tag before committing anything."""

    @abstractmethod
    def fetch(self, repo_id: str, revision: str | None, *, staging: Path | None, offline: bool) -> Fetched:
        """Bring the files of ``revision`` (None: main) to disk: into the backend's cache, or into
        the empty folder ``staging``. Plan the download with :func:`.layout.plan_download` from the
        registry's own list of sizes and hashes, fetch exactly the planned files, and return the
        plan (the caller verifies every file against it). ``offline``: use the cache only."""

    def remember(self, fetched: Fetched) -> None:
        """Called once ``fetched`` is verified (e.g. to record what a revision pointed to)."""

    def is_tag(self, repo_id: str, revision: str | None) -> bool:
        """Whether ``revision`` is a tag of ``repo_id`` (tags should never move)."""
        return False

    @abstractmethod
    def discard(self, fetched: Fetched) -> None:
        """Remove a fetched copy that failed verification, so it is never used later."""

    @abstractmethod
    def list_models(self, namespace: str) -> list[ModelEntry]:
        """The clotclf models in ``namespace`` this caller can see."""

    def url_of(self, repo_id: str) -> str:
        return f"{self.label.rstrip('/')}/{repo_id}"


def read_ref(path: Path) -> str | None:
    """The commit id a cache's ref file holds (``refs/<revision>``), or None."""
    try:
        commit = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return commit if COMMIT_SHA.match(commit) else None

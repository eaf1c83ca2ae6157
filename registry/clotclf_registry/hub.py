"""The Hugging Face Hub backend (huggingface.co, an enterprise hub, a mirror, or any server
speaking the Hub's HTTP API), through ``huggingface_hub`` — never a re-implemented client.

- Every call gets ``endpoint=`` explicitly: huggingface_hub reads ``HF_ENDPOINT`` once at import,
  and clotclf reads it when a command runs (see :mod:`.settings`).
- Push: ``create_repo`` + one ``create_commit`` (adds the layout files, deletes layout files the
  new run no longer has) + ``create_tag``. Xet uploads only toward huggingface.co by default
  (``xet`` setting); elsewhere the plain Git-LFS protocol every Hub-compatible server implements.
- Pull: ``model_info(revision, files_metadata=True)`` gives the commit and, for every file, its
  size and hash (LFS sha256, or git blob sha1); :func:`.layout.plan_download` decides from that
  list what to fetch (refusing unsafe names, non-images under ``plots/``, oversized files), and
  exactly those files are fetched with ``hf_hub_download`` at that commit — after a ``HEAD`` that
  must announce the listed size — never the tree listing's. :func:`.verify.verify_download` then
  checks each one. A failure removes what this pull added to the cache (its snapshot and blobs no
  other snapshot uses), so nothing half-verified is ever used. When the server cannot be reached, a
  copy already in the cache is used (with a note on stderr) — re-verified file by file against the
  blob names huggingface_hub gave it (each blob is named by its LFS sha256 or git blob sha1);
  ``offline`` uses the cache only.
- Tokens: passed to huggingface_hub only; no message here is built from a token, and endpoints
  are shown without credentials (:func:`clotclf_core.plugin.hub.shown_url`).
- Only long-standing huggingface_hub API is used (``HfApi.model_info``, ``list_repo_refs``,
  ``create_repo``, ``create_commit``, ``create_tag``, ``hf_hub_download``,
  ``get_hf_file_metadata``), so the ``huggingface-hub`` floor in pyproject.toml is the oldest
  release the tests were run with.

At about 450 lines this module is over the project's ~400: it is one concern (the one
:class:`~.backend.RegistryBackend` for the Hub, whose push, verified pull, cache fallback and clean-up share
the same huggingface_hub calls, error mapping and cache layout), like :mod:`.local` for a folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

from clotclf_core import __version__
from clotclf_core.plugin import CONFIG_NAME, WEIGHTS_NAME, ClotclfError, printable
from clotclf_core.plugin.errors import os_error_message
from clotclf_core.plugin.hub import COMMIT_SHA, add_token, exception_text, hub_problem, is_transport_error
from clotclf_core.plugin.transfer import TransferTimeout, extend, operation

from .backend import Fetched, ModelEntry, PushResult, RegistryBackend, read_ref
from .errors import AuthError, IntegrityError, NotAModelError, NotFoundError, RegistryError, UnreachableError
from .layout import Entry, is_layout_file, plan_download
from .settings import RegistrySettings

#: tries per file when the connection drops mid-download (each resumes where the last one stopped)
DOWNLOAD_ATTEMPTS = 3
OFFLINE_HINT = "to use models already downloaded, set HF_HUB_OFFLINE=1 (or pass --offline)"
#: huggingface_hub's words when a complete answer had another size than announced
_SIZE_MISMATCH = re.compile(r"should be of size (\d+) but has size (\d+)")
_LFS_SPEC = "https://git-lfs.github.com/spec/v1"
#: the registry's error class for each kind of Hub failure (clotclf_core.plugin.hub.HubProblem.kind)
_ERROR_OF_KIND = {
    "gated": AuthError, "auth": AuthError, "forbidden": AuthError,
    "not_found": NotFoundError, "no_revision": NotFoundError, "no_file": NotFoundError,
    "offline": UnreachableError, "unreachable": UnreachableError, "timeout": UnreachableError,
}


@contextlib.contextmanager
def _xet(enabled: bool) -> Iterator[None]:
    """Turn huggingface_hub's Xet uploads off for the duration of a call when ``enabled`` is False.

    huggingface_hub 2.x reads ``HF_HUB_DISABLE_XET`` into ``constants.HF_HUB_DISABLE_XET`` at import
    and consults that constant each time it picks an upload protocol (``is_xet_available()``).
    """
    from huggingface_hub import constants

    if not hasattr(constants, "HF_HUB_DISABLE_XET"):  # a release without Xet: always plain LFS
        yield
        return
    saved = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = saved or not enabled
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = saved


class HubRegistry(RegistryBackend):
    def __init__(self, settings: RegistrySettings, token: str | bool | None = None):
        self.settings = settings
        self.endpoint = settings.endpoint
        self.label = settings.endpoint_shown  # never with credentials
        #: None: huggingface_hub's own (HF_TOKEN, then `hf auth login`); False: anonymous
        self.token = token
        self.cache_dir = settings.cache_dir
        add_token(token)  # whatever a server echoes, this token is scrubbed from every message and output line

    def _limited(self, what: str) -> Any:
        """One operation under the transfer limits (clotclf_core.plugin.transfer): no hang, one line."""
        return operation(self.settings.limits(), what)

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token, library_name="clotclf", library_version=__version__)

    # ------------------------------------------------------------------ errors
    @contextlib.contextmanager
    def _errors(self, action: str, repo_id: str, revision: str | None = None) -> Iterator[None]:
        """Turn huggingface_hub / httpx exceptions into one clear :class:`RegistryError`: the words are
        :func:`clotclf_core.plugin.hub.hub_problem`'s (shared with the timm plugin), the registry adds
        where to look next."""
        try:
            yield
        except ClotclfError:
            raise
        except Exception as exc:
            problem = hub_problem(exc, repo_id=repo_id, revision=revision, action=action, write=action.startswith("push"),
                                  endpoint=self.endpoint, endpoint_hint="--endpoint / HF_ENDPOINT", token=self.token,
                                  names_hint=f"`clotclf list-models --namespace {repo_id.split('/')[0]}` lists the models there")
            xet = "xet" in str(exc).lower() and action.startswith("push")
            if xet and (problem is None or problem.kind in ("unreachable", "timeout")):  # not an HTTP answer
                raise RegistryError(
                    f"{self.label} did not accept a Xet upload of '{repo_id}' ({exception_text(exc, self.endpoint)}): this server does not "
                    "speak Xet; push with CLOTCLF_HUB_XET=off (or `xet: off` in the config file)"
                ) from None
            if problem is None:
                if isinstance(exc, ValueError):  # the client's own validation (e.g. README metadata)
                    raise RegistryError(f"cannot {action} '{repo_id}': {exception_text(exc)}") from None
                raise
            message = problem.message
            if problem.kind == "no_revision":
                message += self._refs_hint(repo_id)
            elif problem.kind in ("unreachable", "timeout") and action == "pull":
                message += f"; {OFFLINE_HINT}"
            raise _ERROR_OF_KIND.get(problem.kind, RegistryError)(message) from None

    def _refs_hint(self, repo_id: str) -> str:
        try:
            refs = self._api().list_repo_refs(repo_id)
        except Exception:  # noqa: BLE001 - only a hint
            return ""
        names = [b.name for b in refs.branches] + [t.name for t in refs.tags]
        return f"; it has: {', '.join(sorted(names))}" if names else ""

    # ------------------------------------------------------------------ push
    def push(self, repo_id: str, files: list[tuple[str, Path | bytes]], *, private: bool, tag: str | None,
             message: str) -> PushResult:
        if self.settings.offline:
            raise UnreachableError(f"cannot push '{repo_id}': offline mode is on (HF_HUB_OFFLINE / --offline)")
        api = self._api()
        created = [False]
        with self._limited(f"the push to '{repo_id}'"):
            try:
                return self._push(api, repo_id, files, private, tag, message, created)
            except BaseException as exc:
                if not created[0]:
                    raise
                left = self._remove_if_empty(api, repo_id)  # a failed first push leaves no empty repo behind
                if left and isinstance(exc, ClotclfError):
                    raise type(exc)(f"{exc}. {left}") from None
                raise

    def _push(self, api: Any, repo_id: str, files: list[tuple[str, Path | bytes]], private: bool, tag: str | None,
              message: str, created: list[bool]) -> PushResult:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        with self._errors("push to", repo_id), _xet(self.settings.use_xet()):
            if tag:
                try:
                    tags = {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags}
                except RepositoryNotFoundError:
                    tags = {}
                if tag in tags:
                    raise RegistryError(
                        f"'{repo_id}' at {self.label} already has a tag '{tag}' (commit {tags[tag][:12]}); tags never move: "
                        "choose another --tag. Nothing was pushed"
                    )
            try:  # exist_ok=False: a 409 tells an existing repo from one this push creates (and removes if it fails)
                api.create_repo(repo_id, private=private, exist_ok=False)
                created[0] = True
            except HfHubHTTPError as exc:
                if getattr(getattr(exc, "response", None), "status_code", None) != 409:
                    raise
            head = api.model_info(repo_id)
            if private and not head.private:
                raise RegistryError(
                    f"'{repo_id}' already exists at {self.label} and is public, but --private was given; nothing was "
                    "pushed. Make the repo private on the Hub first, or push without --private"
                )
            existing = [s.rfilename for s in head.siblings or []]
            foreign = [n for n in existing if n not in (".gitattributes", "README.md") and not is_layout_file(n)]
            if foreign and CONFIG_NAME not in existing:
                raise NotAModelError(
                    f"'{repo_id}' at {self.label} already holds files that are not a clotclf model ({', '.join(foreign[:3])}); "
                    "nothing was pushed. Choose another repo name"
                )
            new_names = {name for name, _ in files}
            ops: list[Any] = [
                CommitOperationAdd(path_in_repo=name, path_or_fileobj=src if isinstance(src, bytes) else str(src))
                for name, src in files
            ]
            ops += [CommitOperationDelete(path_in_repo=n) for n in existing if is_layout_file(n) and n not in new_names]
            commit = api.create_commit(repo_id, ops, commit_message=message)
            created[0] = False  # it holds the model now: never removed
            if tag:
                api.create_tag(repo_id, tag=tag, revision=commit.oid, tag_message=message)
            stored = api.model_info(repo_id, revision=commit.oid, files_metadata=True)
        weights = {s.rfilename: s for s in stored.siblings or []}.get(WEIGHTS_NAME)
        local = dict(files).get(WEIGHTS_NAME)
        if weights is not None and weights.lfs is not None and isinstance(local, Path):
            from clotclf_core.plugin import sha256_file

            if weights.lfs.sha256 != sha256_file(local):
                raise IntegrityError(
                    f"{self.label} stored {WEIGHTS_NAME} of '{repo_id}' (commit {commit.oid[:12]}) with sha256 "
                    f"{weights.lfs.sha256[:16]}…, not the pushed file's: the upload was corrupted; push again"
                )
        return PushResult(repo_id, self.url_of(repo_id), commit.oid, tag, sorted(new_names), unchanged=commit.oid == head.sha)

    def _remove_if_empty(self, api: Any, repo_id: str) -> str | None:
        """Delete ``repo_id`` (created by a push that then failed) if it still holds nothing but
        ``.gitattributes``; None when done, else a sentence saying what is left and how to remove it.
        Gets a short deadline of its own: a server that hung the push must not hang this too."""
        extend(2 * self.settings.hub_timeout)
        try:
            names = {s.rfilename for s in api.model_info(repo_id).siblings or []}
            if names - {".gitattributes"}:
                return None  # something was committed after all (by another push?): not ours to delete
            api.delete_repo(repo_id)
            return None
        except BaseException as exc:  # only a note on the push's own error (Ctrl-C goes on)
            if not isinstance(exc, Exception):
                raise
            return (f"The empty repo '{repo_id}' this push created could not be removed ({exception_text(exc, self.endpoint)}): "
                    f"delete it at {self.url_of(repo_id)}/settings")

    # ------------------------------------------------------------------ pull
    def _repo_cache(self, repo_id: str) -> Path:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        root = Path(self.cache_dir).expanduser() if self.cache_dir else Path(constants.HF_HUB_CACHE)
        return root / repo_folder_name(repo_id=repo_id, repo_type="model")

    def cached_commit(self, repo_id: str, revision: str | None) -> str | None:
        """The commit ``revision`` pointed to when it was last pulled into the cache (None: never)."""
        return read_ref(self._repo_cache(repo_id) / "refs" / (revision or "main"))

    def is_tag(self, repo_id: str, revision: str | None) -> bool:
        if not revision or COMMIT_SHA.match(revision):
            return False
        try:
            return revision in {t.name for t in self._api().list_repo_refs(repo_id).tags}
        except Exception:  # noqa: BLE001 - only to word a warning
            return False

    def fetch(self, repo_id: str, revision: str | None, *, staging: Path | None, offline: bool) -> Fetched:
        label = f"{repo_id}@{revision}" if revision else repo_id
        if offline:
            return self._from_cache(repo_id, revision, staging, "offline mode is on (HF_HUB_OFFLINE=1 or --offline)")
        with self._limited(f"the pull of '{label}'"):
            return self._fetch(repo_id, revision, staging, label)

    def _fetch(self, repo_id: str, revision: str | None, staging: Path | None, label: str) -> Fetched:
        api = self._api()
        with self._errors("pull", repo_id, revision):
            try:
                info = api.model_info(repo_id, revision=revision, files_metadata=True)
            except Exception as exc:
                stopped = isinstance(exc, TransferTimeout)  # a server that never answers is as good as unreachable
                if not (stopped or is_transport_error(exc)):
                    raise
                reason = str(exc) if stopped else exception_text(exc, self.endpoint)
                try:
                    fetched = self._from_cache(repo_id, revision, staging, f"{self.label} cannot be reached ({reason})")
                except UnreachableError:
                    if stopped:
                        raise
                    raise UnreachableError(
                        f"cannot reach {self.label} to pull '{label}' ({reason}), and it is not in the cache: check the "
                        "network connection and the endpoint (--endpoint / HF_ENDPOINT)"
                    ) from None
                print(f"note: cannot reach {self.label} ({reason}); using the cached copy of '{label}'", file=sys.stderr)
                return fetched
            commit = str(info.sha or "")
            if not COMMIT_SHA.match(commit):
                raise IntegrityError(f"{self.label} named no commit for '{label}' (got {printable(repr(commit), 60)}); "
                                     "is it a Hugging Face Hub? Check --endpoint / HF_ENDPOINT")
            entries = [Entry(str(sib.rfilename), sib.size, sib.lfs.sha256 if sib.lfs else None, sib.blob_id)
                       for sib in info.siblings or []]
            plan = plan_download(f"{repo_id}@{revision or 'main'}", entries)
            previous = self.cached_commit(repo_id, revision) if revision is None or not COMMIT_SHA.match(revision) else None
            downloaded: list[Path] = []
            try:
                for entry in plan.files:
                    downloaded.append(self._download(repo_id, entry, commit, staging, label))
            except BaseException:
                if staging is None:
                    self._discard_snapshot(repo_id, commit)
                raise
        path = staging if staging is not None else next(p.parent for p, e in zip(downloaded, plan.files) if e.name == CONFIG_NAME)
        return Fetched(path, commit, plan.weights_sha256, plan=plan, previous_commit=previous,
                       extra={"staging": staging, "revision": revision, "repo_id": repo_id})

    def _download(self, repo_id: str, entry: Entry, commit: str, staging: Path | None, label: str) -> Path:
        """One listed file at ``commit``: its HEAD must announce the listed size, then huggingface_hub fetches it."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError

        shown = printable(entry.name, 120)
        try:
            meta = get_hf_file_metadata(hf_hub_url(repo_id, entry.name, revision=commit, endpoint=self.endpoint), token=self.token)
            if meta.size is not None and entry.size is not None and int(meta.size) != int(entry.size):
                raise IntegrityError(
                    f"{self.label} lists {shown} of '{label}' at {entry.size} bytes but serves {meta.size}: the repository is "
                    "inconsistent or the server is tampering with it; nothing was kept. Tell the registry's administrator"
                )
            for attempt in range(DOWNLOAD_ATTEMPTS):
                try:
                    return Path(hf_hub_download(
                        repo_id, entry.name, revision=commit, cache_dir=self.cache_dir,
                        local_dir=str(staging) if staging is not None else None, endpoint=self.endpoint, token=self.token,
                        library_name="clotclf", library_version=__version__,
                    ))
                except Exception as exc:  # a dropped connection: huggingface_hub resumes from the partial file
                    served = _SIZE_MISMATCH.search(str(exc)) if isinstance(exc, OSError) else None
                    if served:  # the whole answer came, at another size than the listing's: not the network
                        raise self._tampered(entry, label, int(served.group(2))) from None
                    cut = is_transport_error(exc) or (isinstance(exc, OSError) and exc.errno is None
                                                       and not isinstance(exc, HfHubHTTPError))
                    if not cut or attempt == DOWNLOAD_ATTEMPTS - 1:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        except ClotclfError:
            raise
        except OSError as exc:
            if isinstance(exc, HfHubHTTPError) or getattr(exc, "response", None) is not None:
                raise
            where = staging if staging is not None else self._repo_cache(repo_id)
            message = os_error_message(exc, f"{shown} of '{label}'", where, int(entry.size or 0), "pull again")
            if message:  # a full disk or a read-only cache: the user's to fix, not the network
                raise RegistryError(message) from None
            raise UnreachableError(
                f"the download of '{label}' (commit {commit[:12]}) from {self.label} was interrupted ({exception_text(exc, self.endpoint)}); "
                "no partial file was left where the model goes. Run the same pull again: it resumes"
            ) from None
        except Exception as exc:
            if not is_transport_error(exc):
                raise
            raise UnreachableError(
                f"the download of '{label}' (commit {commit[:12]}) from {self.label} was interrupted ({exception_text(exc, self.endpoint)}); "
                "no partial file was left where the model goes. Run the same pull again: it resumes"
            ) from None

    def _tampered(self, entry: Entry, label: str, served: int) -> IntegrityError:
        """A download whose body had another size than the registry lists (and its HEAD announced):
        what a broken mirror or a tampering server does; the same pull would fail the same way."""
        pointer = served == len(f"version {_LFS_SPEC}\noid sha256:{'0' * 64}\nsize {entry.size}\n")
        what = f"{served} bytes" + (" (the size of a Git LFS pointer to it: the server hands out pointer files, not the "
                                     "files)" if pointer else "")
        return IntegrityError(
            f"{self.label} lists {printable(entry.name, 120)} of '{label}' at {entry.size} bytes but served {what}. The "
            "server is broken or tampering with downloads, and pulling again would fail the same way; nothing was kept. "
            "Tell the registry's administrator"
        )

    def remember(self, fetched: Fetched) -> None:
        """After verification: record in the cache what the revision pointed to (for offline pulls
        and for noticing a tag that moved), as huggingface_hub itself does for branch names."""
        revision = fetched.extra.get("revision")
        if fetched.from_cache or fetched.extra.get("staging") is not None or (revision and COMMIT_SHA.match(revision)):
            return
        from clotclf_core.plugin import write_text

        with contextlib.suppress(OSError):
            write_text(self._repo_cache(fetched.extra["repo_id"]) / "refs" / (revision or "main"), fetched.commit)

    def _from_cache(self, repo_id: str, revision: str | None, staging: Path | None, why: str) -> Fetched:
        label = f"{repo_id}@{revision}" if revision else repo_id
        where = self.cache_dir or "the huggingface_hub cache"
        rev = revision or "main"
        commit = rev if COMMIT_SHA.match(rev) else self.cached_commit(repo_id, revision)
        snapshot = self._repo_cache(repo_id) / "snapshots" / str(commit)
        if commit is None or not snapshot.is_dir():
            raise UnreachableError(
                f"'{label}' is not in {where}, and {why}: pull it once while online (unset HF_HUB_OFFLINE), or copy a "
                "pulled model folder here and give its path"
            )
        if not (snapshot / CONFIG_NAME).is_file():  # the weights (root, or a fold ensemble's) are checked by the plan
            raise UnreachableError(f"the cached copy of '{label}' in {where} is incomplete, and {why}: pull it again online")
        entries = []
        for item in sorted(snapshot.rglob("*")):
            if item.is_dir():
                continue
            name = item.relative_to(snapshot).as_posix()
            blob = os.path.basename(os.readlink(item)) if item.is_symlink() else ""
            entries.append(Entry(name, item.stat().st_size if item.exists() else None,
                                 blob if len(blob) == 64 else None, blob if len(blob) == 40 else None))
        plan = plan_download(f"{label} (cached)", entries)
        if staging is not None:
            staging.mkdir(parents=True, exist_ok=True)
            for entry in plan.files:
                target = staging / entry.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(snapshot / entry.name, target)  # follows the cache's symlinks
            snapshot = staging
        return Fetched(snapshot, commit, None, from_cache=True, plan=plan,
                       extra={"staging": staging, "revision": revision, "repo_id": repo_id})

    def _discard_snapshot(self, repo_id: str, commit: str) -> None:
        """Remove a snapshot and the blobs only it links to (blobs are named by hash and shared)."""
        repo = self._repo_cache(repo_id)
        snapshot = repo / "snapshots" / commit
        if not snapshot.is_dir():
            return
        elsewhere = set()
        for other in (repo / "snapshots").iterdir() if (repo / "snapshots").is_dir() else []:
            if other != snapshot:
                elsewhere |= {p.resolve() for p in other.rglob("*") if p.is_symlink()}
        for link in snapshot.rglob("*"):
            if link.is_symlink():
                blob = link.resolve()
                if blob not in elsewhere and blob.is_file() and blob.parent.name == "blobs":
                    blob.unlink()
        shutil.rmtree(snapshot, ignore_errors=True)
        for ref in (repo / "refs").rglob("*") if (repo / "refs").is_dir() else []:
            with contextlib.suppress(OSError):
                if ref.is_file() and ref.read_text(encoding="utf-8").strip() == commit:
                    ref.unlink()

    def discard(self, fetched: Fetched) -> None:
        staging = fetched.extra.get("staging")
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return
        self._discard_snapshot(fetched.extra["repo_id"], fetched.commit)

    # ------------------------------------------------------------------ list
    def list_models(self, namespace: str) -> list[ModelEntry]:
        if self.settings.offline:
            raise UnreachableError("cannot list models: offline mode is on (HF_HUB_OFFLINE / --offline)")
        api = self._api()
        with self._limited(f"the listing of '{namespace}'"), self._errors("list models of", f"{namespace}/*"):
            # listing retries network errors for ~25 s; one plain request first fails fast when the host is unreachable
            from huggingface_hub.utils import get_session

            get_session().head(self.endpoint, timeout=10)
            infos = list(api.list_models(author=namespace, filter="clotclf", cardData=True))
        return [
            ModelEntry(
                i.id,
                bool(i.private),
                i.card_data.to_dict() if i.card_data is not None else {},
                i.last_modified.isoformat() if i.last_modified else None,
            )
            for i in infos
        ]

"""The Hugging Face Hub backend (huggingface.co, an enterprise hub, a mirror, or any server
speaking the Hub's HTTP API), through ``huggingface_hub`` — never a re-implemented client.

- Every call gets ``endpoint=`` explicitly: huggingface_hub reads ``HF_ENDPOINT`` once at import,
  and clotclf reads it when a command runs (see :mod:`.settings`).
- Push: ``create_repo`` + one ``create_commit`` (adds the layout files, deletes layout files the
  new run no longer has) + ``create_tag``. Xet uploads only toward huggingface.co by default
  (``xet`` setting); elsewhere the plain Git-LFS protocol every Hub-compatible server implements.
- Pull: resolve the revision to a commit, list its files (refusing unsafe or non-clotclf repos
  before downloading), ``snapshot_download`` that commit, and read the weights' ETag (the LFS
  sha256) for :func:`.verify.verify_download`. When the server cannot be reached, a copy already
  in the cache is used (with a note on stderr); ``offline`` uses the cache only.
- Tokens: passed to huggingface_hub only; no message here is built from a token.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Iterator

from clotclf_core import __version__
from clotclf_core.errors import ClotclfError
from clotclf_core.runs import CONFIG_NAME, WEIGHTS_NAME

from .backend import Fetched, ModelEntry, PushResult, RegistryBackend
from .errors import AuthError, IntegrityError, NotAModelError, NotFoundError, RegistryError, UnreachableError
from .layout import PULL_PATTERNS, check_listing, is_layout_file
from .settings import RegistrySettings

OFFLINE_HINT = "to use models already downloaded, set HF_HUB_OFFLINE=1 (or pass --offline)"


def _is_transport_error(exc: BaseException) -> bool:
    """No connection, DNS failure, timeout, dropped connection: httpx's TransportError family."""
    names = {c.__name__ for c in type(exc).__mro__}
    return "TransportError" in names or isinstance(exc, (socket.gaierror, TimeoutError, ConnectionError))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


@contextlib.contextmanager
def _xet(enabled: bool) -> Iterator[None]:
    """Turn huggingface_hub's Xet uploads off for the duration of a call when ``enabled`` is False.

    huggingface_hub 2.x reads ``HF_HUB_DISABLE_XET`` into ``constants.HF_HUB_DISABLE_XET`` at import
    and consults that constant each time it picks an upload protocol (``is_xet_available()``).
    """
    from huggingface_hub import constants

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
        self.label = settings.endpoint
        #: None: huggingface_hub's own (HF_TOKEN, then `hf auth login`); False: anonymous
        self.token = token
        self.cache_dir = settings.cache_dir

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token, library_name="clotclf", library_version=__version__)

    # ------------------------------------------------------------------ errors
    @contextlib.contextmanager
    def _errors(self, action: str, repo_id: str, revision: str | None = None) -> Iterator[None]:
        """Turn huggingface_hub / httpx exceptions into one clear :class:`RegistryError`."""
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        namespace = repo_id.split("/")[0]
        try:
            yield
        except ClotclfError:
            raise
        except RevisionNotFoundError:
            raise NotFoundError(
                f"model '{repo_id}' at {self.label} has no revision '{revision}'{self._refs_hint(repo_id)}"
            ) from None
        except GatedRepoError:
            raise AuthError(f"model '{repo_id}' at {self.label} is gated: request access on its page, then retry") from None
        except RepositoryNotFoundError as exc:
            raise NotFoundError(
                f"model '{repo_id}' was not found at {self.label} (HTTP {exc.response.status_code}). Check the name "
                f"(`clotclf list-models --namespace {namespace}`); if it is private, use a token that can read it "
                "(HF_TOKEN or `hf auth login`)"
            ) from None
        except RemoteEntryNotFoundError as exc:
            missing = str(exc.response.url).rsplit("/", 1)[-1] if exc.response is not None else "a file"
            raise NotFoundError(f"'{repo_id}@{revision or 'main'}' at {self.label} has no file '{missing}'") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 401:
                raise AuthError(
                    f"{self.label} refused the credentials (HTTP 401) to {action} '{repo_id}': set HF_TOKEN to a valid "
                    "token or run `hf auth login`" + (" (a token with write access)" if action.startswith("push") else "")
                ) from None
            if status == 403:
                raise AuthError(
                    f"{self.label} forbids this token to {action} '{repo_id}' (HTTP 403): use a token with "
                    f"{'write' if action.startswith('push') else 'read'} access to the namespace '{namespace}'"
                ) from None
            said = (getattr(exc, "server_message", None) or "").strip().splitlines()
            raise RegistryError(
                f"{self.label} answered HTTP {status} to {action} '{repo_id}'" + (f" ({said[0][:200]})" if said else "")
                + f". Is {self.label} a Hugging Face Hub? Check --endpoint / HF_ENDPOINT"
            ) from None
        except Exception as exc:
            if "xet" in str(exc).lower() and action.startswith("push"):
                raise RegistryError(
                    f"{self.label} did not accept a Xet upload of '{repo_id}' ({_reason(exc)}): this server does not "
                    "speak Xet; push with CLOTCLF_HUB_XET=off (or `xet: off` in the config file)"
                ) from None
            if _is_transport_error(exc):
                hint = f"; {OFFLINE_HINT}" if action == "pull" else ""
                raise UnreachableError(
                    f"cannot reach {self.label} to {action} '{repo_id}' ({_reason(exc)}): check the network connection and "
                    f"the endpoint (--endpoint / HF_ENDPOINT){hint}"
                ) from None
            if isinstance(exc, ValueError):  # the client's own validation (e.g. README metadata)
                raise RegistryError(f"cannot {action} '{repo_id}': {_reason(exc)}") from None
            raise

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
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.errors import RepositoryNotFoundError

        if self.settings.offline:
            raise UnreachableError(f"cannot push '{repo_id}': offline mode is on (HF_HUB_OFFLINE / --offline)")
        api = self._api()
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
            api.create_repo(repo_id, private=private, exist_ok=True)
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
            if tag:
                api.create_tag(repo_id, tag=tag, revision=commit.oid, tag_message=message)
            stored = api.model_info(repo_id, revision=commit.oid, files_metadata=True)
        weights = {s.rfilename: s for s in stored.siblings or []}.get(WEIGHTS_NAME)
        local = dict(files).get(WEIGHTS_NAME)
        if weights is not None and weights.lfs is not None and isinstance(local, Path):
            from clotclf_core.runs import sha256_file

            if weights.lfs.sha256 != sha256_file(local):
                raise IntegrityError(
                    f"{self.label} stored {WEIGHTS_NAME} of '{repo_id}' (commit {commit.oid[:12]}) with sha256 "
                    f"{weights.lfs.sha256[:16]}…, not the pushed file's: the upload was corrupted; push again"
                )
        return PushResult(repo_id, self.url_of(repo_id), commit.oid, tag, sorted(new_names), unchanged=commit.oid == head.sha)

    # ------------------------------------------------------------------ pull
    def fetch(self, repo_id: str, revision: str | None, *, staging: Path | None, offline: bool) -> Fetched:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url, snapshot_download
        from huggingface_hub.errors import RevisionResolutionError

        label = f"{repo_id}@{revision}" if revision else repo_id
        if offline:
            return self._from_cache(repo_id, revision, staging, "offline mode is on (HF_HUB_OFFLINE=1 or --offline)")
        api = self._api()
        with self._errors("pull", repo_id, revision):
            try:
                resolved = api.resolve_revision(repo_id, revision=revision, cache_dir=self.cache_dir)
                info = api.model_info(repo_id, revision=resolved.resolved, files_metadata=True)
            except RevisionResolutionError as exc:
                cause = exc.__cause__ or exc
                raise UnreachableError(
                    f"cannot reach {self.label} to pull '{label}' ({_reason(cause)}), and it is not in the cache: check the "
                    "network connection and the endpoint (--endpoint / HF_ENDPOINT)"
                ) from None
            except Exception as exc:
                if not _is_transport_error(exc):
                    raise
                print(f"note: cannot reach {self.label} ({_reason(exc)}); using the cached copy of '{label}'", file=sys.stderr)
                return self._from_cache(repo_id, revision, staging, f"{self.label} cannot be reached ({_reason(exc)})")
            commit = resolved.resolved
            siblings = {s.rfilename: s for s in info.siblings or []}
            check_listing(f"{repo_id}@{revision or 'main'}", list(siblings))
            try:
                path = snapshot_download(
                    repo_id,
                    revision=resolved,
                    cache_dir=self.cache_dir,
                    local_dir=str(staging) if staging is not None else None,
                    allow_patterns=PULL_PATTERNS,
                    endpoint=self.endpoint,
                    token=self.token,
                    library_name="clotclf",
                    library_version=__version__,
                )
            except Exception as exc:
                from huggingface_hub.errors import HfHubHTTPError

                cut = isinstance(exc, OSError) and not isinstance(exc, HfHubHTTPError)  # e.g. the size check of a cut file
                if not (_is_transport_error(exc) or cut):
                    raise
                raise UnreachableError(
                    f"the download of '{label}' (commit {commit[:12]}) from {self.label} was interrupted ({_reason(exc)}); "
                    "no partial file was left where the model goes. Run the same pull again: it resumes"
                ) from None
            etag = get_hf_file_metadata(
                hf_hub_url(repo_id, WEIGHTS_NAME, revision=commit, endpoint=self.endpoint), token=self.token
            ).etag
        lfs = siblings[WEIGHTS_NAME].lfs
        served = {h for h in (etag, lfs.sha256 if lfs else None) if h}
        fetched = Fetched(Path(path), commit, etag, extra={"staging": staging})
        if len(served) != 1 or len(etag or "") != 64:
            self.discard(fetched)
            raise IntegrityError(
                f"{self.label} does not serve one sha256 for {WEIGHTS_NAME} of '{label}' (ETag {etag!r}, LFS "
                f"{lfs.sha256 if lfs else None!r}), so the download cannot be verified; nothing was kept. A Hub stores "
                "safetensors as LFS files: ask the server's administrator"
            )
        return fetched

    def _from_cache(self, repo_id: str, revision: str | None, staging: Path | None, why: str) -> Fetched:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RevisionResolutionError

        label = f"{repo_id}@{revision}" if revision else repo_id
        where = self.cache_dir or "the huggingface_hub cache"
        try:
            resolved = self._api().resolve_revision(repo_id, revision=revision, cache_dir=self.cache_dir, local_files_only=True)
            path = Path(
                snapshot_download(repo_id, revision=resolved, cache_dir=self.cache_dir, local_files_only=True,
                                  allow_patterns=PULL_PATTERNS)
            )
        except (RevisionResolutionError, LocalEntryNotFoundError, FileNotFoundError):
            raise UnreachableError(
                f"'{label}' is not in {where}, and {why}: pull it once while online (unset HF_HUB_OFFLINE), or copy a "
                "pulled model folder here and give its path"
            ) from None
        if not (path / WEIGHTS_NAME).is_file() or not (path / CONFIG_NAME).is_file():
            raise UnreachableError(f"the cached copy of '{label}' in {where} is incomplete, and {why}: pull it again online")
        if staging is not None:
            staging.mkdir(parents=True, exist_ok=True)
            for item in path.rglob("*"):
                if item.is_file():
                    target = staging / item.relative_to(path)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(item, target)  # follows the cache's symlinks
            path = staging
        return Fetched(path, resolved.resolved, None, from_cache=True, extra={"staging": staging})

    def discard(self, fetched: Fetched) -> None:
        staging = fetched.extra.get("staging")
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return
        from huggingface_hub import scan_cache_dir

        snapshot = fetched.path
        weights = (snapshot / WEIGHTS_NAME).resolve()  # the blob behind the snapshot's symlink: its bytes are bad
        if weights.is_file() and weights != snapshot / WEIGHTS_NAME:
            weights.unlink()
        repo_folder = snapshot.parent.parent  # <cache>/models--org--name/snapshots/<commit>
        try:
            cache = scan_cache_dir(str(repo_folder.parent))
            cache.delete_revisions(fetched.commit).execute()
        except Exception:  # noqa: BLE001 - fall back to removing the snapshot by hand
            shutil.rmtree(snapshot, ignore_errors=True)

    # ------------------------------------------------------------------ list
    def list_models(self, namespace: str) -> list[ModelEntry]:
        if self.settings.offline:
            raise UnreachableError("cannot list models: offline mode is on (HF_HUB_OFFLINE / --offline)")
        api = self._api()
        with self._errors("list models of", f"{namespace}/*"):
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

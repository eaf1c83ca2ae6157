"""A registry in a plain directory (``--registry file:///srv/clotclf-models``), for sites whose
machines cannot reach the Hub. Same names, revisions and checks as the Hub; layout on disk::

    <root>/<org>/<name>/
        repo.json                 {"format", "id", "private", "created"}
        refs.json                 {"branches": {"main": <commit>}, "tags": {"v1": {"commit", "message", "created"}}}
        commits/<commit>.json     {"parent", "message", "created", "files": {path: {"sha256", "size"}}}
        objects/<ab>/<sha256>     file contents, named by their sha256 (shared by all commits)

A commit id is the first 40 hex digits of the sha256 of its manifest (canonical JSON), and every
object is named by the sha256 of its bytes: a commit sha always means the same bytes, and any
change to a manifest or an object is detected when it is read. Writes are atomic and ``refs.json``
is updated last, under a lock, so a crashed push leaves only unreferenced objects behind.

Every file read from the store is checked for its type and shape first (``repo.json``, ``refs.json``
and manifests that are not what they should be are one clear "the registry is damaged" error, and
object names must be sha256 hex, so a crafted manifest cannot point outside ``objects/``).

Pulled revisions are copied to ``<cache>/<registry key>/<org>/<name>/snapshots/<commit>/`` with
normal permissions (the commit's manifest beside it in ``manifests/``, so an offline pull checks
every file again), and ``refs/<revision>`` remembers what a branch or tag pointed to.
Access control is the filesystem's: ``--private`` makes the repo folder readable by its owner only.
A store this user cannot write to can still be pulled from; a push to it is one clear error.

At about 430 lines this module is over the project's ~400: it is one concern (the one
:class:`~.backend.RegistryBackend` for a folder: push and pull read and write the same store layout above,
with the same checks of every file read), like :mod:`.hub` for the Hub.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

from clotclf_core.plugin import CONFIG_NAME, atomic_path, write_json, write_text
from clotclf_core.plugin.errors import os_error_message, printable
from clotclf_core.plugin.hub import COMMIT_SHA
from clotclf_core.plugin.io import staged_dir

from .backend import Fetched, ModelEntry, PushResult, RegistryBackend, read_ref
from .errors import AuthError, IntegrityError, NotAModelError, NotFoundError, RegistryError, UnreachableError
from .layout import CARD_NAME, Entry, Plan, plan_download
from .settings import RegistrySettings

FORMAT = "clotclf-local-registry/1"
CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: what may be in a repo folder besides the registry's own files while a first push is under way
_TRANSIENT = (".lock",)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def commit_id(manifest: dict[str, Any]) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:40]


def copy_hashing(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` (atomically), returning the sha256 and size of the bytes copied."""
    h, size = hashlib.sha256(), 0
    with atomic_path(dst) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        while block := fin.read(CHUNK):
            h.update(block)
            size += len(block)
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest(), size


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (POSIX flock); concurrent pushes to one repo take turns."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, pushes must not overlap
        yield
        return
    with open(folder / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class LocalRegistry(RegistryBackend):
    def __init__(self, settings: RegistrySettings, token: str | bool | None = None):
        parsed = urlparse(settings.registry)
        if parsed.netloc not in ("", "localhost"):
            raise RegistryError(
                f"registry '{settings.registry}' names a remote host; a local registry is file:///absolute/path "
                "(mount the share and give its path)"
            )
        self.root = Path(unquote(parsed.path))
        self.label = self.root.as_uri()
        self.settings = settings
        base = Path(settings.cache_dir).expanduser() / "clotclf-local" if settings.cache_dir else (
            Path.home() / ".cache" / "clotclf" / "registries")
        key = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        self.cache = base / f"{self.root.name or 'root'}-{key}"

    # ------------------------------------------------------------------ reading
    def _damaged(self, path: Path, what: str) -> IntegrityError:
        return IntegrityError(f"'{path}' in {self.label} {what}: the registry is damaged; restore it from a backup, "
                              "or push the model again")

    def _json(self, path: Path, what: str) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except PermissionError:
            raise AuthError(f"'{path.parent}' is private and this user may not read it (filesystem permissions)") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._damaged(path, f"is not valid JSON ({printable(exc, 100)})") from None
        except IsADirectoryError:
            raise self._damaged(path, f"is a folder, not {what}") from None

    def _info(self, folder: Path) -> dict[str, Any]:
        info = self._json(folder / "repo.json", "a repo description")
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise self._damaged(folder / "repo.json", f"is not a {FORMAT} repo description")
        return info

    def _repo(self, repo_id: str, must_exist: bool = True) -> Path:
        if not self.root.is_dir():
            raise UnreachableError(
                f"local registry {self.label} does not exist or is not mounted: create it (mkdir -p {self.root}) or "
                "fix --registry / CLOTCLF_REGISTRY"
            )
        folder = self.root / repo_id
        if must_exist and not (folder / "repo.json").is_file():
            if folder.is_dir() and not os.access(folder, os.R_OK | os.X_OK):
                raise AuthError(f"model '{repo_id}' in {self.label} is private and this user may not read it (filesystem permissions)")
            ns = folder.parent
            known = sorted(p.name for p in ns.iterdir() if (p / "repo.json").is_file()) if ns.is_dir() else []
            close = difflib.get_close_matches(repo_id.split("/")[1], known, n=3)
            hint = f"; did you mean {', '.join(f'{ns.name}/{c}' for c in close)}?" if close else (
                f"; '{ns.name}' has: {', '.join(known)}" if known else "")
            raise NotFoundError(f"model '{repo_id}' was not found in {self.label}{hint}")
        if must_exist:
            self._info(folder)
        return folder

    def _refs(self, folder: Path) -> dict[str, Any]:
        path = folder / "refs.json"
        if not path.is_file():
            return {"branches": {}, "tags": {}}
        refs = self._json(path, "a list of refs")
        if not isinstance(refs, dict):
            raise self._damaged(path, f"holds {type(refs).__name__}, not an object of branches and tags")
        branches, tags = refs.get("branches", {}), refs.get("tags", {})
        if not isinstance(branches, dict) or not all(isinstance(k, str) and isinstance(v, str) and COMMIT_SHA.match(v)
                                                     for k, v in branches.items()):
            raise self._damaged(path, "has branches that are not names mapped to commit ids")
        if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("commit"), str)
                                                 and COMMIT_SHA.match(v["commit"]) for k, v in tags.items()):
            raise self._damaged(path, "has tags that are not names mapped to {commit, ...}")
        return {"branches": branches, "tags": tags}

    def _check_manifest(self, path: Path, manifest: Any) -> dict[str, Any]:
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise self._damaged(path, "is not a commit manifest (an object with files)")
        parent = manifest.get("parent")
        if parent is not None and not (isinstance(parent, str) and COMMIT_SHA.match(parent)):
            raise self._damaged(path, "names a parent that is not a commit id")
        for name, entry in manifest["files"].items():
            ok = isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"]) \
                and isinstance(entry.get("size"), int) and not isinstance(entry["size"], bool) and entry["size"] >= 0
            if not ok:
                raise self._damaged(path, f"lists {printable(repr(name), 80)} without a sha256 and a size")
        return manifest

    def _commit(self, folder: Path, commit: str) -> dict[str, Any]:
        path = folder / "commits" / f"{commit}.json"
        if not path.is_file():
            raise IntegrityError(f"commit {commit} of '{folder.relative_to(self.root)}' is missing in {self.label}: the registry is damaged")
        manifest = self._check_manifest(path, self._json(path, "a commit manifest"))
        if commit_id(manifest) != commit:
            raise IntegrityError(
                f"commit {commit[:12]} of '{folder.relative_to(self.root).as_posix()}' in {self.label} was modified after it "
                "was written (its content no longer hashes to its name); nothing was downloaded. Restore the registry "
                "from a backup or push the model again"
            )
        return manifest

    def _resolve(self, repo_id: str, folder: Path, revision: str | None) -> str:
        refs = self._refs(folder)
        rev = revision or "main"
        if rev in refs["branches"]:
            return refs["branches"][rev]
        if rev in refs["tags"]:
            return refs["tags"][rev]["commit"]
        commits = folder / "commits"
        if COMMIT_SHA.match(rev) and (commits / f"{rev}.json").is_file():
            return rev
        if 7 <= len(rev) < 40 and all(c in "0123456789abcdef" for c in rev):
            matches = [p.stem for p in commits.glob(f"{rev}*.json")]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise NotFoundError(f"revision '{rev}' of '{repo_id}' is ambiguous ({len(matches)} commits); give more digits")
        names = sorted([*refs["branches"], *refs["tags"]])
        raise NotFoundError(
            f"model '{repo_id}' in {self.label} has no revision '{rev}'"
            + (f"; it has: {', '.join(printable(n, 60) for n in names)}" if names else "")
        )

    def _object(self, folder: Path, sha256: str) -> Path:
        return folder / "objects" / sha256[:2] / sha256

    # ------------------------------------------------------------------ push
    def push(self, repo_id: str, files: list[tuple[str, Path | bytes]], *, private: bool, tag: str | None,
             message: str) -> PushResult:
        if not self.root.is_dir():
            raise UnreachableError(
                f"local registry {self.label} does not exist: create it first (mkdir -p {self.root}), or fix --registry"
            )
        folder = self.root / repo_id
        try:
            return self._push(repo_id, folder, files, private=private, tag=tag, message=message)
        except OSError as exc:
            why = os_error_message(exc)
            if why is None:
                raise
            raise RegistryError(
                f"cannot push '{repo_id}' to {self.label}: {why}. A crashed push leaves only unreferenced objects "
                "behind: nothing it wrote is used. Pushes need write access to the registry; pulls work without it"
            ) from None

    def _push(self, repo_id: str, folder: Path, files: list[tuple[str, Path | bytes]], *, private: bool, tag: str | None,
              message: str) -> PushResult:
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder):
            info_path = folder / "repo.json"
            # checked under the lock: a first push under way elsewhere has made the folder and its lock already
            strangers = [p.name for p in folder.iterdir() if p.name not in _TRANSIENT] if not info_path.exists() else []
            if strangers:
                (folder / ".lock").unlink(missing_ok=True)  # leave the stranger's folder as it was
                raise NotAModelError(f"'{folder}' exists and is not a clotclf registry repo; nothing was pushed. Choose another name")
            if info_path.exists():
                info = self._info(folder)
                if private and not info.get("private"):
                    raise RegistryError(
                        f"'{repo_id}' already exists in {self.label} and is not private, but --private was given; nothing "
                        "was pushed. Restrict its folder's permissions first, or push without --private"
                    )
            else:
                info = {"format": FORMAT, "id": repo_id, "private": bool(private), "created": _now()}
                write_json(info_path, info)
            refs = self._refs(folder)
            if tag and tag in refs["tags"]:
                raise RegistryError(
                    f"'{repo_id}' in {self.label} already has a tag '{tag}' (commit {refs['tags'][tag]['commit'][:12]}); "
                    "tags never move: choose another --tag. Nothing was pushed"
                )
            entries: dict[str, dict[str, Any]] = {}
            for name, src in files:
                entries[name] = self._store(folder, src)
            parent = refs["branches"].get("main")
            unchanged = parent is not None and self._commit(folder, parent)["files"] == entries
            if unchanged:
                commit = parent
            else:
                manifest = {"parent": parent, "message": message, "created": _now(), "files": entries}
                commit = commit_id(manifest)
                write_json(folder / "commits" / f"{commit}.json", manifest)
                refs["branches"]["main"] = commit
            if tag:
                refs["tags"][tag] = {"commit": commit, "message": message, "created": _now()}
            write_json(folder / "refs.json", refs)
        if private:
            folder.chmod(0o700)
        return PushResult(repo_id, self.url_of(repo_id), commit, tag, sorted(entries), unchanged=unchanged)

    def _store(self, folder: Path, src: Path | bytes) -> dict[str, Any]:
        """Put one file's bytes in the object store (once per content); return its manifest entry."""
        from clotclf_core.plugin import sha256_file, write_bytes

        if isinstance(src, bytes):
            digest, size = hashlib.sha256(src).hexdigest(), len(src)
            if not self._object(folder, digest).is_file():
                write_bytes(self._object(folder, digest), src)
            return {"sha256": digest, "size": size}
        digest = sha256_file(src)
        target = self._object(folder, digest)
        if not target.is_file():
            copied, _ = copy_hashing(src, target)
            if copied != digest:  # the file changed between hashing and copying
                target.unlink()
                raise RegistryError(f"'{src}' changed while it was being pushed; nothing was pushed. Push again")
        return {"sha256": digest, "size": target.stat().st_size}

    # ------------------------------------------------------------------ pull
    def _snapshots(self, repo_id: str) -> Path:
        return self.cache / repo_id / "snapshots"

    def cached_commit(self, repo_id: str, revision: str | None) -> str | None:
        return read_ref(self.cache / repo_id / "refs" / (revision or "main"))

    def is_tag(self, repo_id: str, revision: str | None) -> bool:
        if not revision or COMMIT_SHA.match(revision):
            return False
        try:
            return revision in self._refs(self._repo(repo_id))["tags"]
        except RegistryError:
            return False

    def fetch(self, repo_id: str, revision: str | None, *, staging: Path | None, offline: bool) -> Fetched:
        label = f"{repo_id}@{revision}" if revision else repo_id
        if offline:
            return self._from_cache(repo_id, revision, staging, "offline mode is on (HF_HUB_OFFLINE=1 or --offline)")
        if not self.root.is_dir():
            with contextlib.suppress(UnreachableError):
                fetched = self._from_cache(repo_id, revision, staging, "")
                print(f"note: {self.label} is not reachable; using the cached copy of '{label}'", file=sys.stderr)
                return fetched
        folder = self._repo(repo_id)
        commit = self._resolve(repo_id, folder, revision)
        manifest = self._commit(folder, commit)
        plan = _plan(f"{repo_id}@{revision or 'main'}", manifest)
        previous = self.cached_commit(repo_id, revision) if revision is None or not COMMIT_SHA.match(revision) else None
        cached = self._snapshots(repo_id) / commit
        target = staging if staging is not None else cached
        if staging is not None or not cached.is_dir():  # a cached copy is checked file by file after the fetch
            try:
                self._materialize(folder, plan, target, label)
            except OSError as exc:
                why = os_error_message(exc, f"the files of '{label}'", target.parent, sum(e.size or 0 for e in plan.files), "pull again")
                if why is None:
                    raise
                raise RegistryError(why) from None
        if staging is None:
            write_json(self.cache / repo_id / "manifests" / f"{commit}.json", manifest)
        return Fetched(target, commit, plan.weights_sha256, plan=plan, previous_commit=previous,
                       extra={"staging": staging, "revision": revision, "repo_id": repo_id})

    def remember(self, fetched: Fetched) -> None:
        revision = fetched.extra.get("revision")
        if fetched.from_cache or (revision and COMMIT_SHA.match(revision)):
            return
        with contextlib.suppress(OSError):
            write_text(self.cache / fetched.extra["repo_id"] / "refs" / (revision or "main"), fetched.commit)

    def _materialize(self, folder: Path, plan: Plan, target: Path, label: str) -> None:
        """Copy the planned objects into ``target`` through a temporary sibling folder that replaces
        it only once every hash has been checked (:func:`clotclf_core.plugin.io.staged_dir`)."""
        with staged_dir(target) as partial:
            for entry in plan.files:
                src = self._object(folder, str(entry.sha256))
                if not src.is_file():
                    raise IntegrityError(f"'{label}': the object of {printable(entry.name, 120)} is missing from {self.label}: "
                                         "the registry is damaged")
                dst = partial / entry.name
                if dst.parent != partial:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                digest, size = copy_hashing(src, dst)
                if digest != entry.sha256 or size != entry.size:
                    raise IntegrityError(
                        f"{printable(entry.name, 120)} of '{label}' in {self.label} hashes to sha256 {digest[:16]}…, but the "
                        f"registry records {str(entry.sha256)[:16]}…: the file was modified or corrupted in the registry. "
                        "Nothing was kept; restore it from a backup or push the model again"
                    )

    def _from_cache(self, repo_id: str, revision: str | None, staging: Path | None, why: str) -> Fetched:
        label = f"{repo_id}@{revision}" if revision else repo_id
        rev = revision or "main"
        commit = rev if COMMIT_SHA.match(rev) else self.cached_commit(repo_id, revision)
        snapshot = self._snapshots(repo_id) / str(commit)
        manifest_path = self.cache / repo_id / "manifests" / f"{commit}.json"
        if commit is None or not (snapshot / CONFIG_NAME).is_file() or not manifest_path.is_file():
            raise UnreachableError(
                f"'{label}' from {self.label} is not in the cache ({self.cache}){', and ' + why if why else ''}: pull it once "
                "while the registry is reachable (unset HF_HUB_OFFLINE)"
            )
        manifest = self._check_manifest(manifest_path, self._json(manifest_path, "a commit manifest"))
        if commit_id(manifest) != commit:
            raise IntegrityError(f"the cached manifest of '{label}' ({manifest_path}) was modified; pull it again online")
        plan = _plan(f"{label} (cached)", manifest)
        if staging is not None:
            shutil.copytree(snapshot, staging, dirs_exist_ok=True)
            snapshot = staging
        return Fetched(snapshot, commit, None, from_cache=True, plan=plan,
                       extra={"staging": staging, "revision": revision, "repo_id": repo_id})

    def discard(self, fetched: Fetched) -> None:
        shutil.rmtree(fetched.path, ignore_errors=True)

    # ------------------------------------------------------------------ list
    def list_models(self, namespace: str) -> list[ModelEntry]:
        if not self.root.is_dir():
            raise UnreachableError(f"local registry {self.label} does not exist or is not mounted: fix --registry / CLOTCLF_REGISTRY")
        from clotclf_core.models.card import read_model_card
        from clotclf_core.plugin import ClotclfError

        out = []
        ns = self.root / namespace
        for folder in sorted(ns.iterdir()) if ns.is_dir() else []:
            if not (folder / "repo.json").is_file() or not os.access(folder, os.R_OK | os.X_OK):
                continue
            info = self._info(folder)
            head = self._refs(folder)["branches"].get("main")
            meta: dict[str, Any] = {}
            updated = None
            if head:
                manifest = self._commit(folder, head)
                updated = manifest.get("created")
                card = manifest["files"].get(CARD_NAME)
                if card:
                    with contextlib.suppress(ClotclfError, OSError, UnicodeDecodeError):
                        # lenient like the Hub's listing: a model-index it cannot read is left out, the model still listed
                        meta, _ = read_model_card(self._object(folder, card["sha256"]).read_text(encoding="utf-8"), lenient=True)
            if meta.get("library_name") == "clotclf":
                out.append(ModelEntry(f"{namespace}/{folder.name}", bool(info.get("private")), meta, updated))
        return out


def _plan(label: str, manifest: dict[str, Any]) -> Plan:
    return plan_download(label, [Entry(name, e["size"], e["sha256"]) for name, e in manifest["files"].items()])

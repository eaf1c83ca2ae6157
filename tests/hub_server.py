"""A Hugging Face Hub stand-in for tests: the endpoints huggingface_hub 2.x really calls for
``clotclf push / pull / list-models``, served from memory on 127.0.0.1 (standard library only).

    with HubServer(tokens={"tok-w": Token("alice", write=True, orgs=("lab",))}) as hub:
        HfApi(endpoint=hub.url, token="tok-w").create_repo("lab/m")

Implemented (model repos only, ids ``ns/name``):

- ``POST /api/repos/create`` (409 if it exists) · ``DELETE /api/repos/delete`` · ``POST /api/validate-yaml``
- ``GET /api/models`` (``author``, ``filter`` tags, ``cardData``) · ``GET /api/whoami-v2``
- ``GET /api/models/{id}`` and ``/revision/{rev}`` (``blobs=1`` adds sizes and LFS hashes)
- ``GET /api/models/{id}/tree/{rev}[/{path}]`` · ``GET /api/models/{id}/refs``
- ``POST /api/models/{id}/tag/{rev}`` (409 if the tag exists)
- ``POST /api/models/{id}/preupload/{rev}`` → ``lfs`` for *.safetensors, binary or >= 10 MiB files
- ``POST /{id}.git/info/lfs/objects/batch`` → basic-transfer upload URL ``PUT /_lfs/{oid}``
- ``POST /api/models/{id}/commit/{rev}``: NDJSON ``header`` / ``file`` / ``lfsFile`` / ``deletedFile``
- ``HEAD`` / ``GET /{id}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (sha256 of LFS
  files, git blob sha1 of others), ``X-Linked-Etag`` / ``X-Linked-Size``, ``Content-Length``, ``Range``
- no Xet: ``/xet-write-token`` answers 404, so an upload through Xet fails as it would against
  any server without it

Errors are 4xx only (huggingface_hub retries 5xx for over a minute) and carry the
``X-Error-Code`` header the client maps: ``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``. Auth is ``Authorization: Bearer <token>``: writes need a token with write
access to the namespace (401 without a valid token, 403 without the right); a private repo is
``401 RepoNotFound`` to anonymous readers and ``404 RepoNotFound`` to other users, as on the Hub.

Test controls (Python methods, not HTTP) — the stand-in can serve hostile content:
:meth:`HubServer.tamper` (change stored bytes without changing their recorded hash: a swapped
config, an edited card), :meth:`HubServer.raw_commit` (commit anything: ``../x``, a pickle under
``plots/``, a malformed safetensors file), :meth:`HubServer.cut_downloads` (truncate the next
download of a file, then drop connections), :meth:`HubServer.hide` (list a file but fail its
download), :meth:`HubServer.tree_only` (a file the tree listing and downloads offer but the model
info does not list), :meth:`HubServer.misreport_size` (list a file at another size than it has —
a "2 GiB plot", or a file bigger than announced), :meth:`HubServer.move_tag` (re-point a tag),
``requests`` (a log of ``(method, path)``).

Gated repos (``create_repo(id, gated=True, granted=("alice",))``), as on the Hub: listed and
described to anyone (``"gated": "manual"``), but their files answer ``401 GatedRepo`` to anonymous
readers and ``403 GatedRepo`` to users not granted access.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".png", ".jpg", ".jpeg", ".pdf", ".npy")
LFS_MIN_SIZE = 10 * 1024 * 1024
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def front_matter(text: str) -> dict[str, Any] | None:
    """The YAML front matter of a README (None if absent); raises yaml.YAMLError if invalid."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            data = yaml.safe_load("\n".join(lines[1:i])) or {}
            if not isinstance(data, dict):
                raise yaml.YAMLError("front matter is not a mapping")
            return data
    raise yaml.YAMLError("front matter has no closing ---")


@dataclass
class Token:
    user: str
    write: bool = False
    orgs: tuple[str, ...] = ()

    def may_write(self, namespace: str) -> bool:
        return self.write and (namespace == self.user or namespace in self.orgs)

    def may_read(self, namespace: str) -> bool:
        return namespace == self.user or namespace in self.orgs


@dataclass
class FileEntry:
    sha256: str  # key into the blob store
    size: int
    lfs: bool
    git_oid: str  # git blob sha1 of the content (regular) or of the LFS pointer


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, FileEntry]
    date: str


@dataclass
class Repo:
    id: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    granted: set[str] = field(default_factory=set)  # users allowed to download a gated repo's files


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit
        self.extra = extra or {}


class HubServer:
    """The stand-in: start with ``with HubServer(...) as hub`` (or :meth:`start` / :meth:`stop`)."""

    def __init__(self, tokens: dict[str, Token] | None = None):
        self.tokens = dict(tokens or {})
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> bytes (regular and LFS content alike)
        self.pending_lfs: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.cut: dict[tuple[str, str], int] = {}  # (repo_id, path) -> downloads left to truncate
        self.down = False  # after a cut: drop every connection, like a network that went away
        self.hidden: set[tuple[str, str]] = set()  # (repo_id, path) listed but answering 404 on download
        self.extra_tree: dict[tuple[str, str], bytes] = {}  # (repo_id, path) in the tree listing only
        self.listed_size: dict[tuple[str, str], int] = {}  # (repo_id, path) -> the size the listings announce
        self.lock = threading.RLock()
        self._counter = 0
        self.httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HubServer":
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening, and drop the keep-alive connections clients still hold (``down``)."""
        self.down = True
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self.httpd is not None, "server not started"
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    # ------------------------------------------------------------------ test controls
    def tamper(self, repo_id: str, path: str, data: bytes, revision: str = "main") -> None:
        """Replace the stored bytes of ``path`` (in every commit sharing them) but keep the hash the
        server announces: what a corrupted store or a tampering mirror would serve."""
        with self.lock:
            entry = self._resolve_commit(self._repo(repo_id), revision).files[path]
            self.blobs[entry.sha256] = data

    def raw_commit(self, repo_id: str, files: dict[str, bytes], message: str = "raw", keep: bool = False) -> str:
        """Commit ``files`` to main with no validation at all (for unsafe names etc.). Returns the oid."""
        with self.lock:
            repo = self._repo(repo_id)
            parent = repo.branches.get("main")
            tree = dict(repo.commits[parent].files) if keep and parent else {}
            for path, data in files.items():
                tree[path] = self._store(path, data)
            return self._commit(repo, parent, message, tree)

    def cut_downloads(self, repo_id: str, path: str, times: int = 1, then_down: bool = True) -> None:
        """Send only half of the next ``times`` downloads of ``path``, then (``then_down``) drop every
        later connection without answering, as when the network goes away mid-download."""
        with self.lock:
            self.cut[(repo_id, path)] = times
            self._then_down = then_down

    def hide(self, repo_id: str, path: str) -> None:
        """Keep listing ``path`` but answer 404 ``EntryNotFound`` when it is downloaded (a store that
        lost a file)."""
        with self.lock:
            self.hidden.add((repo_id, path))

    def tree_only(self, repo_id: str, path: str, data: bytes) -> None:
        """Offer ``path`` in the tree listing (and for download) without listing it in the model
        info: what a client that downloads "the tree" instead of what it checked would fetch."""
        with self.lock:
            self.extra_tree[(repo_id, path)] = data

    def misreport_size(self, repo_id: str, path: str, size: int) -> None:
        """Announce ``size`` bytes for ``path`` in the model info and tree listings (the download's
        headers still tell the truth)."""
        with self.lock:
            self.listed_size[(repo_id, path)] = size

    def move_tag(self, repo_id: str, tag: str, commit: str) -> None:
        """Re-point ``tag`` (which the Hub's API never does by itself)."""
        with self.lock:
            self._repo(repo_id).tags[tag] = commit

    def create_repo(self, repo_id: str, private: bool = False, gated: bool = False, granted: tuple[str, ...] = ()) -> Repo:
        with self.lock:
            repo = Repo(repo_id, private, _now(), gated=gated, granted=set(granted))
            self.repos[repo_id] = repo
            attributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            self._commit(repo, None, "initial commit", {".gitattributes": self._store(".gitattributes", attributes)})
            return repo

    # ------------------------------------------------------------------ storage
    def _store(self, path: str, data: bytes, lfs: bool | None = None) -> FileEntry:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs.setdefault(sha, data)
        if lfs is None:
            lfs = _is_lfs(path, len(data), data[:512])
        git_oid = git_blob_sha1(lfs_pointer(sha, len(data))) if lfs else git_blob_sha1(data)
        return FileEntry(sha, len(data), lfs, git_oid)

    def _commit(self, repo: Repo, parent: str | None, message: str, files: dict[str, FileEntry]) -> str:
        self._counter += 1
        digest = hashlib.sha1(
            json.dumps([repo.id, parent, message, self._counter, sorted((p, f.sha256) for p, f in files.items())]).encode()
        ).hexdigest()
        repo.commits[digest] = Commit(digest, parent, message, files, _now())
        repo.branches["main"] = digest
        return digest

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _resolve_commit(self, repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision) or repo.tags.get(revision)
        if oid is None and COMMIT_RE.match(revision) and revision in repo.commits:
            oid = revision
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _card(self, commit: Commit) -> dict[str, Any]:
        entry = commit.files.get("README.md")
        if entry is None:
            return {}
        try:
            return front_matter(self.blobs[entry.sha256].decode("utf-8", "replace")) or {}
        except yaml.YAMLError:
            return {}

    def _model_info(self, repo: Repo, commit: Commit, blobs: bool, card: bool = True) -> dict[str, Any]:
        meta = self._card(commit)
        tags = [str(t) for t in meta.get("tags") or []]
        if meta.get("library_name") and meta["library_name"] not in tags:
            tags.append(str(meta["library_name"]))
        siblings = []
        for path, f in sorted(commit.files.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                size = self.listed_size.get((repo.id, path), f.size)
                sib |= {"blobId": f.git_oid, "size": size}
                if f.lfs:
                    sib["lfs"] = {"sha256": f.sha256, "size": size, "pointerSize": len(lfs_pointer(f.sha256, f.size))}
            siblings.append(sib)
        info = {
            "_id": hashlib.md5(repo.id.encode()).hexdigest()[:24],
            "id": repo.id,
            "modelId": repo.id,
            "author": repo.id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": repo.private,
            "disabled": False,
            "gated": "manual" if repo.gated else False,
            "downloads": 0,
            "likes": 0,
            "library_name": meta.get("library_name"),
            "tags": tags,
            "siblings": siblings,
        }
        if card and meta:
            info["cardData"] = meta
        return info

    # ------------------------------------------------------------------ auth
    def token_of(self, header: str | None) -> Token | None:
        """None when anonymous; raises 401 for a token the server does not know."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        token = self.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def check_read(self, repo: Repo, token: Token | None) -> None:
        if repo.private and (token is None or not token.may_read(repo.id.split("/")[0])):
            raise HubError(401 if token is None else 404, f"Repository {repo.id} not found", "RepoNotFound")

    def check_gated(self, repo: Repo, token: Token | None) -> None:
        """Files of a gated repo: 401 to anonymous readers, 403 to users without access (X-Error-Code GatedRepo)."""
        if not repo.gated or (token is not None and (token.user in repo.granted or token.may_read(repo.id.split("/")[0]))):
            return
        if token is None:
            raise HubError(401, f"Access to model {repo.id} is restricted. You must have access to it and be authenticated "
                                "to access it. Please log in.", "GatedRepo")
        raise HubError(403, f"Access to model {repo.id} is restricted and you are not in the authorized list. Visit the "
                            "repo's page to ask for access.", "GatedRepo")

    def check_write(self, namespace: str, token: Token | None) -> None:
        if token is None:
            raise HubError(401, "You must be authenticated to do this (set a token with write access)")
        if not token.may_write(namespace):
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _is_lfs(path: str, size: int, sample: bytes) -> bool:
    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\x00" in sample


# ---------------------------------------------------------------------------- HTTP

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("DELETE", re.compile(r"^/api/repos/delete$"), "delete_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("GET", re.compile(r"^/api/models$"), "list_models"),
    ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree"),
    ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/refs$"), "refs"),
    ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)$"), "model_info"),
    ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)$"), "model_info"),
    ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tag/(?P<rev>[^/]+)$"), "create_tag"),
    ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/xet-(?:write|read)-token/.*$"), "no_xet"),
    ("POST", re.compile(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})$"), "lfs_put"),
    ("HEAD", re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle + delayed ACK add 40 ms a request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        if hub.down:  # the network "went away": close without a response
            self.close_connection = True
            return
        url = urlparse(self.path)
        hub.requests.append((method, url.path))
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._read_body()
        try:
            for route_method, pattern, name in _ROUTES:
                m = pattern.match(url.path)
                if m and route_method == method:
                    params = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                    with hub.lock:
                        token = hub.token_of(self.headers.get("Authorization"))
                    getattr(self, "_" + name)(token=token, query=query, body=body, **params)
                    return
            raise HubError(404, f"no route for {method} {url.path}")
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            self._json(err.status, {"error": err.message, **err.extra}, headers, head=method == "HEAD")

    def _read_body(self) -> bytes:
        if "Content-Length" in self.headers:
            return self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ responses
    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}, head)

    # ------------------------------------------------------------------ endpoints
    def _create_repo(self, token: Token | None, body: bytes, **_: Any) -> None:
        payload = json.loads(body or b"{}")
        namespace = payload.get("organization") or (token.user if token else "")
        repo_id = f"{namespace}/{payload.get('name')}"
        hub = self.hub
        with hub.lock:
            hub.check_write(namespace, token)
            if payload.get("type", "model") != "model":
                raise HubError(400, "this stand-in serves model repos only")
            if repo_id in hub.repos:
                # like the Hub, the conflict still says where the repo is (huggingface_hub reads "url")
                raise HubError(409, "You already created this model repo", extra={"url": f"{hub.url}/{repo_id}"})
            hub.create_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _delete_repo(self, token: Token | None, body: bytes, **_: Any) -> None:
        payload = json.loads(body or b"{}")
        repo_id = f"{payload.get('organization') or (token.user if token else '')}/{payload.get('name')}"
        hub = self.hub
        with hub.lock:
            hub._repo(repo_id)
            hub.check_write(repo_id.split("/")[0], token)
            del hub.repos[repo_id]
        self._json(200, {})

    def _validate_yaml(self, body: bytes, **_: Any) -> None:
        content = json.loads(body or b"{}").get("content", "")
        try:
            front_matter(content)
        except yaml.YAMLError as exc:
            self._json(400, {"errors": [{"message": f"Invalid YAML: {exc}"}], "warnings": []})
            return
        self._json(200, {"errors": [], "warnings": []})

    def _whoami(self, token: Token | None, **_: Any) -> None:
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._json(200, {"type": "user", "name": token.user, "orgs": [{"name": o} for o in token.orgs]})

    def _list_models(self, token: Token | None, query: dict[str, str], **_: Any) -> None:
        hub = self.hub
        wanted = set(parse_qs(urlparse(self.path).query).get("filter", []))
        out = []
        with hub.lock:
            for repo in hub.repos.values():
                if query.get("author") and repo.id.split("/")[0] != query["author"]:
                    continue
                if repo.private and (token is None or not token.may_read(repo.id.split("/")[0])):
                    continue
                info = hub._model_info(repo, repo.commits[repo.branches["main"]], blobs=False,
                                       card=query.get("cardData", "").lower() in ("1", "true"))
                if wanted and not wanted <= set(info["tags"]):
                    continue
                info.pop("siblings")
                out.append(info)
        self._json(200, out)

    def _model_info(self, token: Token | None, query: dict[str, str], repo: str, rev: str = "main", **_: Any) -> None:
        hub = self.hub
        with hub.lock:
            r = hub._repo(repo)
            hub.check_read(r, token)
            commit = hub._resolve_commit(r, rev)
            info = hub._model_info(r, commit, blobs=query.get("blobs", "").lower() in ("1", "true"))
        self._json(200, info)

    def _tree(self, token: Token | None, query: dict[str, str], repo: str, rev: str, path: str = "", **_: Any) -> None:
        hub = self.hub
        recursive = query.get("recursive", "").lower() in ("1", "true")
        with hub.lock:
            r = hub._repo(repo)
            hub.check_read(r, token)
            commit = hub._resolve_commit(r, rev)
            prefix = path.strip("/") + "/" if path else ""
            entries, folders = [], set()
            offered = dict(commit.files)
            for (rid, extra_path), data in hub.extra_tree.items():
                if rid == repo:
                    offered[extra_path] = hub._store(extra_path, data)
            for name, f in sorted(offered.items()):
                if not name.startswith(prefix):
                    continue
                rest = name[len(prefix):]
                if "/" in rest and not recursive:
                    folders.add(prefix + rest.split("/")[0])
                    continue
                for i in range(rest.count("/")):
                    folders.add(prefix + "/".join(rest.split("/")[: i + 1]))
                item: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": hub.listed_size.get((repo, name), f.size), "path": name}
                if f.lfs:
                    item["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f.sha256, f.size))}
                entries.append(item)
            if path and not entries and not folders:
                raise HubError(404, f"{path} does not exist at {rev}", "EntryNotFound")
        dirs = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d} for d in sorted(folders)]
        self._json(200, dirs + entries)

    def _refs(self, token: Token | None, repo: str, **_: Any) -> None:
        hub = self.hub
        with hub.lock:
            r = hub._repo(repo)
            hub.check_read(r, token)
            data = {
                "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in sorted(r.branches.items())],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in sorted(r.tags.items())],
                "converts": [],
            }
        self._json(200, data)

    def _create_tag(self, token: Token | None, body: bytes, repo: str, rev: str, **_: Any) -> None:
        hub = self.hub
        payload = json.loads(body or b"{}")
        with hub.lock:
            r = hub._repo(repo)
            hub.check_write(repo.split("/")[0], token)
            commit = hub._resolve_commit(r, rev)
            tag = str(payload.get("tag", ""))
            if not tag:
                raise HubError(400, "tag name missing")
            if tag in r.tags:
                raise HubError(409, f"Tag {tag} already exists")
            r.tags[tag] = commit.oid
        self._json(200, {})

    def _preupload(self, token: Token | None, body: bytes, repo: str, rev: str, **_: Any) -> None:
        hub = self.hub
        payload = json.loads(body or b"{}")
        with hub.lock:
            r = hub._repo(repo)
            hub.check_write(repo.split("/")[0], token)
            head = r.commits.get(r.branches.get(rev, "")) if rev in r.branches else None
            files = []
            for f in payload.get("files", []):
                sample = base64.b64decode(f.get("sample", ""))
                lfs = _is_lfs(f["path"], int(f.get("size", 0)), sample)
                item = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
                old = head.files.get(f["path"]) if head else None
                if old is not None:
                    item["oid"] = old.sha256 if old.lfs else old.git_oid
                files.append(item)
        self._json(200, {"files": files, "commitOid": head.oid if head else None})

    def _no_xet(self, **_: Any) -> None:
        raise HubError(404, "This server does not support Xet storage: upload through Git LFS (HF_HUB_DISABLE_XET=1)")

    def _lfs_batch(self, token: Token | None, body: bytes, repo: str, **_: Any) -> None:
        hub = self.hub
        payload = json.loads(body or b"{}")
        with hub.lock:
            hub._repo(repo)
            hub.check_write(repo.split("/")[0], token)
            objects = []
            for obj in payload.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if oid not in hub.blobs:
                    hub.pending_lfs.add(oid)
                    item["actions"] = {"upload": {"href": f"{hub.url}/_lfs/{oid}", "header": {}}}
                objects.append(item)
        self._json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, body: bytes, oid: str, **_: Any) -> None:
        hub = self.hub
        with hub.lock:
            if oid not in hub.pending_lfs:
                raise HubError(403, "upload not announced through the LFS batch API")
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, "uploaded content does not match its oid")
            hub.blobs[oid] = body
            hub.pending_lfs.discard(oid)
        self._send(200, b"")

    def _commit(self, token: Token | None, body: bytes, repo: str, rev: str, **_: Any) -> None:
        hub = self.hub
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        with hub.lock:
            r = hub._repo(repo)
            hub.check_write(repo.split("/")[0], token)
            if rev not in r.branches:
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            parent = r.branches[rev]
            tree = dict(r.commits[parent].files)
            header = {}
            for item in lines:
                key, value = item.get("key"), item.get("value", {})
                path = value.get("path", "")
                if key != "header" and (not path or path.startswith("/") or ".." in path.split("/")):
                    raise HubError(400, f"Invalid path in commit: {path!r}")
                if key == "header":
                    header = value
                elif key == "file":
                    data = base64.b64decode(value["content"])
                    tree[path] = hub._store(path, data, lfs=False)
                elif key == "lfsFile":
                    oid = value["oid"]
                    if oid not in hub.blobs:
                        raise HubError(400, f"LFS object {oid} of {path} was never uploaded")
                    size = len(hub.blobs[oid])
                    tree[path] = FileEntry(oid, size, True, git_blob_sha1(lfs_pointer(oid, size)))
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                else:
                    raise HubError(400, f"unsupported commit operation {key!r}")
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            oid = hub._commit(r, parent, header.get("summary") or "commit", tree)
            r.branches[rev] = oid
        self._json(200, {"success": True, "commitOid": oid, "commitUrl": f"{hub.url}/{repo}/commit/{oid}",
                         "pullRequestUrl": None})

    def _resolve(self, token: Token | None, repo: str, rev: str, path: str, **_: Any) -> None:
        hub = self.hub
        head = self.command == "HEAD"
        with hub.lock:
            r = hub._repo(repo)
            hub.check_read(r, token)
            hub.check_gated(r, token)
            commit = hub._resolve_commit(r, rev)
            entry = commit.files.get(path)
            if entry is None and (repo, path) in hub.extra_tree:
                entry = hub._store(path, hub.extra_tree[(repo, path)])
            if entry is None or (repo, path) in hub.hidden:
                raise HubError(404, f"{path} does not exist at {rev}", "EntryNotFound", commit.oid)
            data = hub.blobs[entry.sha256]
            cut = 0
            if not head and hub.cut.get((repo, path), 0) > 0:
                hub.cut[(repo, path)] -= 1
                cut = max(1, len(data) // 2)
        etag = entry.sha256 if entry.lfs else entry.git_oid
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        }
        if entry.lfs:
            headers |= {"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)}
        status, body = 200, data
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if match and int(match.group(1)) < len(data):
            start = int(match.group(1))
            status, body = 206, data[start:]
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if cut:  # announce the whole body, send part of it, hang up
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            if getattr(hub, "_then_down", True):
                hub.down = True
            return
        self._send(status, body, headers, head=head)

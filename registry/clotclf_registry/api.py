"""push / pull / list-models / name resolution: what the CLI commands and the core's
``clotclf_resolve_model`` hook call. Each function resolves the settings, opens the backend
(:func:`.backend.open_backend`) and applies the same checks whatever the backend is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from clotclf_core.errors import ModelLoadError
from clotclf_core.io import write_json
from clotclf_core.runs import CONFIG_NAME

from .backend import PushResult, open_backend
from .card import card_for_push, summarize
from .errors import RegistryError
from .layout import CARD_NAME, METRICS_NAME, run_files
from .names import COMMIT_SHA, ModelRef, check_part, check_revision, parse_ref
from .settings import RegistrySettings, load_settings
from .verify import check_requirements, check_run_dir, requirements, verify_download

PULL_RECORD = ".clotclf-pull.json"


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[None]:
    """huggingface_hub's progress bars on or off for the duration of a command."""
    if enabled:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


# ----------------------------------------------------------------------------- push


def push(run_dir: str | os.PathLike, repo: str, *, private: bool = False, tag: str | None = None,
         message: str | None = None, require_metrics: bool = True, settings: RegistrySettings | None = None,
         token: str | bool | None = None, quiet: bool = False) -> PushResult:
    """Check ``run_dir`` is complete and loads, then upload it to ``repo`` in one commit (and tag it)."""
    settings = settings or load_settings()
    ref = parse_ref(repo, settings.namespace)
    if ref.revision:
        raise RegistryError(f"push to '{repo}': a push always goes to the main branch; drop '@{ref.revision}' (use --tag to name it)")
    if tag is not None and (COMMIT_SHA.match(check_revision(tag)) or "/" in tag):
        raise RegistryError(f"tag '{tag}' could be mistaken for a commit sha or a path; choose a name such as v1")
    run = Path(run_dir)
    config = check_run_dir(run, require_metrics=require_metrics)
    metrics_path = run / METRICS_NAME
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    files: list[tuple[str, Path | bytes]] = [(n, p) for n, p in run_files(run) if n != CARD_NAME]
    files.append((CARD_NAME, card_for_push(run, config, metrics, ref.repo_id).encode("utf-8")))
    backend = open_backend(settings, token)
    note = f"clotclf push of {run.resolve().name}" + (f" ({tag})" if tag else "")
    with progress(not quiet):
        return backend.push(ref.repo_id, files, private=private, tag=tag, message=message or note)


# ----------------------------------------------------------------------------- pull


@dataclass
class PullResult:
    ref: str
    repo_id: str
    commit: str
    path: str
    registry: str
    weights_sha256: str
    verified_against: list[str]
    from_cache: bool
    needs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prepare_out(out: Path) -> Path:
    """Refuse an --out folder holding anything but an earlier pull; return the staging folder."""
    if out.exists() and not out.is_dir():
        raise RegistryError(f"--out '{out}' is a file; give a folder to put the model in")
    if out.is_dir() and any(out.iterdir()) and not (out / PULL_RECORD).is_file():
        raise RegistryError(
            f"--out '{out}' exists and holds other files; give a new or empty folder (a folder from an earlier "
            "`clotclf pull --out` is replaced)"
        )
    staging = out.parent / f".{out.name}.pulling"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    return staging


def _swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` with ``staging`` with two renames, so ``out`` is never half-written."""
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping in local_dir
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def pull(name: str, *, out: str | os.PathLike | None = None, settings: RegistrySettings | None = None,
         token: str | bool | None = None, check_plugins: bool = True, quiet: bool = False) -> PullResult:
    """Download ``NAME[@REVISION]`` into the cache (or ``out``), verify it, and report what it needs."""
    settings = settings or load_settings()
    ref: ModelRef = parse_ref(name, settings.namespace)
    backend = open_backend(settings, token)
    out_dir = Path(out).expanduser().resolve() if out is not None else None
    staging = _prepare_out(out_dir) if out_dir is not None else None
    try:
        with progress(not quiet):
            fetched = backend.fetch(ref.repo_id, ref.revision, staging=staging, offline=settings.offline)
    except BaseException:
        if staging is not None:  # never leave half a model next to --out
            shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        config = verify_download(fetched.path, fetched.registry_sha256, str(ref), backend.label)
    except RegistryError:
        backend.discard(fetched)
        raise
    path = fetched.path
    if out_dir is not None:
        write_json(fetched.path / PULL_RECORD, {"ref": str(ref), "repo_id": ref.repo_id, "commit": fetched.commit,
                                                "registry": backend.label, "weights_sha256": config["weights_sha256"]})
        _swap_in(fetched.path, out_dir)
        path = out_dir
    against = (["registry", CONFIG_NAME] if fetched.registry_sha256 else [CONFIG_NAME])
    result = PullResult(str(ref), ref.repo_id, fetched.commit, str(path), backend.label, config["weights_sha256"],
                        against, fetched.from_cache, requirements(config))
    if check_plugins:
        try:
            check_requirements(config, str(ref))
        except ModelLoadError as exc:
            raise ModelLoadError(f"{exc}. The model itself was downloaded and verified: {path}") from None
    return result


# ----------------------------------------------------------------------------- list


def list_models(namespace: str | None = None, *, settings: RegistrySettings | None = None,
                token: str | bool | None = None) -> list[dict[str, Any]]:
    """The clotclf models in ``namespace`` (default: the configured one), with card summaries."""
    settings = settings or load_settings()
    namespace = check_part(namespace or settings.namespace, "namespace")
    backend = open_backend(settings, token)
    rows = []
    for entry in sorted(backend.list_models(namespace), key=lambda e: e.repo_id):
        rows.append({"name": entry.repo_id, "private": entry.private, **summarize(entry.card), "updated": entry.updated})
    return rows


# ----------------------------------------------------------------------------- resolution hook


def resolve(name: str) -> Path | None:
    """For ``--model NAME`` anywhere: a pulled (cached, verified) run directory, or None when
    ``name`` cannot be a registry reference. Settings come from the environment and config file."""
    from .names import looks_like_ref

    if not looks_like_ref(name):
        return None
    settings = load_settings()
    try:
        result = pull(name, settings=settings, quiet=not sys.stderr.isatty())
    except RegistryError as exc:
        raise type(exc)(f"'{name}' is not a local folder, and the registry could not provide it: {exc}") from None
    return Path(result.path)

"""push / pull / list-models / name resolution: what the CLI commands and the core's
``clotclf_resolve_model`` hook call. Each function resolves the settings, opens the backend
(:func:`.factory.open_backend`) and applies the same checks whatever the backend is.
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

from clotclf_core.models.requirements import requirements
from clotclf_core.models.runs import FOLD_ENSEMBLE_KIND, fold_runs, read_config
from clotclf_core.plugin import CONFIG_NAME, write_json
from clotclf_core.plugin.errors import ConfigError, ModelLoadError, os_error_message, printable, warn
from clotclf_core.plugin.hub import (
    COMMIT_SHA,
    RepoRef,
    check_repo_part,
    check_revision,
    looks_like_repo_ref,
    parse_repo_ref,
)
from clotclf_core.plugin.lock import output_lock

from .backend import Fetched, PushResult
from .card import card_for_push, summarize
from .ensemble import publishable_ensemble
from .errors import RegistryError
from .factory import open_backend
from .layout import CARD_NAME, METRICS_NAME, SPLIT_NAME, run_files
from .redact import anonymise_centre_rows, anonymise_centres, redact_run
from .settings import EXAMPLE, RegistrySettings, config_path, load_settings
from .timm_export import timm_export
from .verify import check_run_dir, verify_download

PULL_RECORD = ".clotclf-pull.json"


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[None]:
    """huggingface_hub's progress bars on or off for the duration of a command: off when asked, and
    off without a terminal (a log file, CI: its per-file byte bars would each print many lines)."""
    from clotclf_core.progress import mode

    if enabled and mode() == "tty":
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


def publishable(run: Path, config: dict[str, Any], repo_id: str, include_split: bool = False, model: Any = None
                ) -> tuple[list[tuple[str, Path | bytes]], Any]:
    """The files a push uploads: the layout files of ``run`` with config.json, metrics.json and the
    model card redacted (:mod:`.redact`), and the redaction report; with the loaded ``model``, what
    timm needs to load its trunk when timm built its backbone (:mod:`.timm_export`)."""
    files = dict(run_files(run, include_split=include_split))
    texts = {name: files[name].read_bytes() for name in (METRICS_NAME, "history.csv") if name in files}
    try:
        metrics = json.loads(texts.get(METRICS_NAME, b"{}"))
    except ValueError:
        metrics = {}
    metrics = metrics if isinstance(metrics, dict) else {}
    recorded = metrics
    if not include_split and (anonymous := anonymise_centres(metrics)) != metrics:  # centres by letter, not identifier
        metrics = anonymous
        texts[METRICS_NAME] = (json.dumps(metrics, indent=2) + "\n").encode("utf-8")

    def card(redacted: dict[str, Any]) -> dict[str, bytes]:  # a card rendered by push shows the redacted config
        text = card_for_push(run, redacted, metrics, repo_id)
        return {CARD_NAME: (text if include_split else anonymise_centre_rows(text, recorded)).encode("utf-8")}

    redaction = redact_run(run, config, texts, include_split=include_split, more_texts=card)
    out: list[tuple[str, Path | bytes]] = [(CARD_NAME, redaction.texts[CARD_NAME])]
    exported = timm_export(model, config) if model is not None else None
    published = dict(redaction.config)
    if exported is not None:  # timm reads these keys of the root config.json; clotclf reads its own
        published |= exported[0]
        out += sorted(exported[1].items())
    for name, path in sorted(files.items()):
        if name == CARD_NAME:
            continue
        if name == CONFIG_NAME:
            out.append((name, (json.dumps(published, indent=2) + "\n").encode("utf-8")))
        else:
            out.append((name, redaction.texts.get(name, path)))
    return sorted(out, key=lambda f: f[0]), redaction


def push(run_dir: str | os.PathLike, repo: str, *, private: bool = False, tag: str | None = None,
         message: str | None = None, require_metrics: bool = True, settings: RegistrySettings | None = None,
         token: str | bool | None = None, quiet: bool = False, include_split: bool = False) -> PushResult:
    """Check ``run_dir`` is complete and loads, then upload it to ``repo`` in one commit (and tag
    it). config.json, metrics.json and the card are redacted (no identifiers, no local paths)
    unless ``include_split``; the run directory itself is never changed."""
    settings = settings or load_settings()
    ref = parse_repo_ref(repo, settings.namespace, example=EXAMPLE)
    if ref.revision:
        raise RegistryError(f"push to '{repo}': a push always goes to the main branch; drop '@{ref.revision}' (use --tag to name it)")
    if tag is not None and (COMMIT_SHA.match(check_revision(tag)) or "/" in tag):
        raise RegistryError(f"tag '{tag}' could be mistaken for a commit sha or a path; choose a name such as v1")
    run = Path(run_dir)
    try:
        members = fold_runs(run)  # a --fold all folder is pushed as the ensemble of its folds
    except ModelLoadError as exc:
        raise RegistryError(f"cannot push '{run}': {exc}") from None
    if members is not None:
        files, redaction, _ = publishable_ensemble(run, members, ref.repo_id, include_split, require_metrics)
    else:
        config, model = check_run_dir(run, require_metrics=require_metrics, return_model=True)
        files, redaction = publishable(run, config, ref.repo_id, include_split, model)
    if include_split:
        warn(f"--include-split: the push publishes the run's split with {redaction.kept_identifiers} patient / slide / "
             f"centre identifier(s){' and ' + SPLIT_NAME if (run / SPLIT_NAME).is_file() else ''}; anyone who can read "
             f"'{ref.repo_id}' will see them")
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
    #: every file pulled and checked against the registry's hash
    files: list[str] = field(default_factory=list)
    #: files the registry has that are not part of a model: never downloaded
    ignored: list[str] = field(default_factory=list)
    #: the commit a tag pointed to at the last pull here, when it has moved since
    moved_from: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pull_record(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out / PULL_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _prepare_out(out: Path, force: bool) -> Path:
    """Refuse an --out folder holding anything but an earlier pull (or files the user added to
    one, unless ``force``); return the staging folder."""
    if out.exists() and not out.is_dir():
        raise RegistryError(f"--out '{out}' is a file; give a folder to put the model in")
    if out.is_dir() and any(out.iterdir()):
        record = _pull_record(out)
        if record is None and not force:
            raise RegistryError(
                f"--out '{out}' exists and holds other files; give a new or empty folder (a folder from an earlier "
                "`clotclf pull --out` is replaced), or pass --force to replace it anyway"
            )
        pulled = set(record.get("files") or []) | {PULL_RECORD} if record else set()
        added = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                       and p.relative_to(out).as_posix() not in pulled and ".cache" not in p.relative_to(out).parts)
        if added and not force:
            shown = ", ".join(added[:3]) + (f" and {len(added) - 3} more" if len(added) > 3 else "")
            raise RegistryError(
                f"--out '{out}' holds files the earlier pull did not put there ({shown}); a new pull replaces the whole "
                "folder. Move them elsewhere, or pass --force to replace the folder with them"
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


def _moved(backend: Any, ref: RepoRef, fetched: Fetched, before: str | None) -> str | None:
    """The earlier commit, if ``ref``'s revision is a tag that now points elsewhere."""
    if before is None or before == fetched.commit or fetched.from_cache or not ref.revision:
        return None
    if not backend.is_tag(ref.repo_id, ref.revision):
        return None  # a branch: moving is what branches do
    warn(f"tag '{printable(ref.revision, 60)}' of '{ref.repo_id}' at {backend.label} now points to commit "
         f"{fetched.commit[:12]}, but it pointed to {before[:12]} when it was last pulled here: tags should never "
         f"move, so its owner re-tagged it. Pin a commit to be sure of what you get ({ref.repo_id}@{fetched.commit})")
    return before


def pull(name: str, *, out: str | os.PathLike | None = None, settings: RegistrySettings | None = None,
         token: str | bool | None = None, check_plugins: bool = True, quiet: bool = False, force: bool = False) -> PullResult:
    """Download ``NAME[@REVISION]`` into the cache (or ``out``) and verify it: every file against
    the registry's hash, the weights against config.json, the layout, and (``check_plugins``) that
    its config builds here. Anything that fails keeps nothing. ``force`` replaces an ``out`` holding
    other files."""
    settings = settings or load_settings()
    ref: RepoRef = parse_repo_ref(name, settings.namespace, example=EXAMPLE)
    backend = open_backend(settings, token)
    out_dir = Path(out).expanduser().resolve() if out is not None else None
    with output_lock(out_dir, "--out") if out_dir is not None else contextlib.nullcontext():  # one pull per --out
        return _pull(ref, backend, settings, out_dir, check_plugins, quiet, force)


def _pull(ref: RepoRef, backend: Any, settings: RegistrySettings, out_dir: Path | None, check_plugins: bool, quiet: bool,
          force: bool) -> PullResult:
    record = _pull_record(out_dir) if out_dir is not None and out_dir.is_dir() else None
    created = [p for p in (out_dir.parent, *out_dir.parent.parents) if not p.exists()] if out_dir is not None else []

    def clean_out() -> None:  # never leave half a model, or folders made for it, next to --out
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()

    try:
        staging = _prepare_out(out_dir, force) if out_dir is not None else None
    except OSError as exc:
        why = os_error_message(exc)
        if why is None:
            raise
        raise RegistryError(f"cannot pull into --out '{out_dir}': {why}. Nothing was written") from None
    try:
        with progress(not quiet):
            fetched = backend.fetch(ref.repo_id, ref.revision, staging=staging, offline=settings.offline)
    except BaseException:
        clean_out()
        raise
    try:
        config = verify_download(fetched.path, fetched.plan, str(ref), backend.label, check_builds=check_plugins)
    except BaseException:
        backend.discard(fetched)
        clean_out()
        raise
    before = fetched.previous_commit
    if out_dir is not None and record and record.get("ref") == str(ref) and COMMIT_SHA.match(str(record.get("commit"))):
        before = str(record["commit"])
    moved = _moved(backend, ref, fetched, before)
    files = [e.name for e in fetched.plan.files] if fetched.plan else []
    path = fetched.path
    if out_dir is not None:
        try:
            write_json(fetched.path / PULL_RECORD, {"ref": str(ref), "repo_id": ref.repo_id, "commit": fetched.commit,
                                                    "registry": backend.label, "weights_sha256": config["weights_sha256"],
                                                    "files": files})
            _swap_in(fetched.path, out_dir)
        except OSError as exc:
            clean_out()
            why = os_error_message(exc)
            if why is None:
                raise
            raise RegistryError(f"cannot pull into --out '{out_dir}': {why}. Nothing was left half-written") from None
        path = out_dir
    backend.remember(fetched)
    against = ["registry", CONFIG_NAME] if not fetched.from_cache else ["cache", CONFIG_NAME]
    folds = config.get("folds") if config.get("kind") == FOLD_ENSEMBLE_KIND else None
    # a fold ensemble: what its folds need; names from elsewhere: no pip command for an unknown one
    needs = requirements(read_config(path / folds[0]) if folds else config, trusted=False)
    return PullResult(str(ref), ref.repo_id, fetched.commit, str(path), backend.label, str(config["weights_sha256"]),
                      against, fetched.from_cache, needs, files, list(fetched.plan.ignored) if fetched.plan else [], moved)


# ----------------------------------------------------------------------------- list


def list_models(namespace: str | None = None, *, settings: RegistrySettings | None = None,
                token: str | bool | None = None) -> list[dict[str, Any]]:
    """The clotclf models in ``namespace`` (default: the configured one), with card summaries."""
    settings = settings or load_settings()
    namespace = check_repo_part(namespace or settings.namespace, "namespace", EXAMPLE)
    backend = open_backend(settings, token)
    rows = []
    for entry in sorted(backend.list_models(namespace), key=lambda e: e.repo_id):
        rows.append({"name": entry.repo_id, "private": entry.private, **summarize(entry.card), "updated": entry.updated})
    return rows


# ----------------------------------------------------------------------------- resolution hook


def resolve(name: str) -> Path | None:
    """For ``--model NAME`` anywhere: a pulled (cached, verified) run directory, or None when
    ``name`` cannot be a registry reference. Settings come from the environment and config file.

    The rule (docs/registry.md, "Names and paths"): a reference that may be a path the user meant
    (:func:`clotclf_core.plugin.hub.path_reason`) is never looked up; a short ``NAME`` only in a
    namespace or registry the user chose (``CLOTCLF_NAMESPACE`` / ``CLOTCLF_REGISTRY`` or the
    settings file), never in the default one, where a typo'd folder name would fetch whatever
    someone published under it. Every model that does come from a registry is announced on stderr
    with its repo, revision and commit."""
    if not looks_like_repo_ref(name):
        return None
    settings = load_settings()
    ref = parse_repo_ref(name, settings.namespace, example=EXAMPLE)
    if "/" not in name.partition("@")[0] and not {"namespace", "registry"} & settings.chosen:
        raise RegistryError(
            f"model '{printable(name, 120)}' is not a folder here, and a short name is looked up in a registry only in a "
            f"namespace you chose (CLOTCLF_NAMESPACE or CLOTCLF_REGISTRY, or namespace: / registry: in "
            f"{config_path()}): give the path of a run directory, or the full name ({ref}) to pull it from "
            f"{settings.endpoint_shown if settings.registry == 'hub' else settings.registry}"
        )
    try:
        result = pull(name, settings=settings, quiet=not sys.stderr.isatty())
    except (RegistryError, ConfigError) as exc:  # ConfigError: a revision that is not one
        raise type(exc)(f"'{name}' is not a local folder, and the registry could not provide it: {exc}") from None
    where = "the cache of " + result.registry if result.from_cache else result.registry
    print(f"note: model '{printable(name, 120)}' is {ref.repo_id}@{printable(ref.revision or 'main', 60)} (commit "
          f"{result.commit[:12]}) from {where}, verified", file=sys.stderr)
    return Path(result.path)

"""Checks on both ends of a transfer.

- Before a push: the run directory is complete and its model loads, so a broken model is never
  published (:func:`check_run_dir`).
- After a pull: ``model.safetensors`` hashes to what the registry served it as (the Hub's LFS
  sha256, i.e. its ETag; the local registry's object name) *and* to the ``weights_sha256`` that
  ``config.json`` recorded when the model was saved (:func:`verify_download`). Any mismatch is an
  error, never a warning.
- The plugins a model needs, with the distribution that provides each and whether it is
  installed here (:func:`requirements`, :func:`check_requirements`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clotclf_core.errors import ModelLoadError
from clotclf_core.runs import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, read_config, sha256_file

from .errors import IntegrityError, NotAModelError, RegistryError
from .layout import METRICS_NAME

FILTER_KIND = "patch_filter"


def model_kind(config: dict[str, Any]) -> str:
    """``classifier`` (backbone + head) or ``patch_filter`` (e.g. the mobilenetv3 background filter)."""
    return FILTER_KIND if config.get("kind") == FILTER_KIND else "classifier"


# ----------------------------------------------------------------------------- before a push


def check_run_dir(run_dir: Path, require_metrics: bool = True) -> dict[str, Any]:
    """Refuse an incomplete or unloadable run directory; return its config.json content."""
    if not run_dir.is_dir():
        raise RegistryError(f"run directory '{run_dir}' does not exist; give the folder `clotclf train` wrote")
    weights = run_dir / WEIGHTS_NAME
    if not weights.is_file():
        pickles = sorted(p.name for p in run_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        extra = f" (it has {', '.join(pickles)}: clotclf publishes safetensors only)" if pickles else ""
        raise RegistryError(
            f"cannot push '{run_dir}': it has no {WEIGHTS_NAME}{extra}; the run did not finish saving. Push the run "
            "directory `clotclf train` completed"
        )
    config = read_config(run_dir)
    recorded = config.get("weights_sha256")
    if not recorded:
        raise RegistryError(
            f"cannot push '{run_dir}': {CONFIG_NAME} records no weights_sha256, so a download could not be verified; "
            "re-save the model with clotclf_core.model.save_model"
        )
    actual = sha256_file(weights)
    if actual != recorded:
        raise RegistryError(
            f"cannot push '{run_dir}': {WEIGHTS_NAME} (sha256 {actual[:12]}…) is not the file {CONFIG_NAME} describes "
            f"({recorded[:12]}…); the weights were replaced or the save was interrupted. Re-save the model"
        )
    if require_metrics:
        metrics = run_dir / METRICS_NAME
        if not metrics.is_file():
            raise RegistryError(
                f"cannot push '{run_dir}': it has no {METRICS_NAME}, so the model card would have no results. "
                "Evaluate it first (`clotclf evaluate`), or pass --no-metrics to publish it without"
            )
        try:
            if not isinstance(json.loads(metrics.read_text(encoding="utf-8")), dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise RegistryError(f"cannot push '{run_dir}': {METRICS_NAME} is not a JSON object ({exc}); re-run the evaluation") from None
    try:
        load_run(run_dir, config)
    except ModelLoadError as exc:
        raise RegistryError(f"cannot push '{run_dir}': the model does not load: {exc}") from None
    return config


def load_run(run_dir: Path, config: dict[str, Any]) -> Any:
    """Build the run's model and load its weights: a classifier through the core, a filter through
    its plugin's ``weights`` option (the registry never imports another plugin)."""
    check_requirements(config, str(run_dir))
    if model_kind(config) == "classifier":
        from clotclf_core.model import load_model

        return load_model(run_dir)
    from clotclf_core.plugins import get_manager

    spec = get_manager().get("filter", str(config.get("filter")))
    if "weights" not in spec.options.model_fields:
        raise ModelLoadError(f"filter '{spec.name}' takes no weights option, so '{run_dir}' cannot be checked")
    return spec.factory(spec.validate_options({"weights": str(run_dir)}))


# ----------------------------------------------------------------------------- plugins


def requirements(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per component the model needs: role, name, distribution, recorded version, installed?"""
    from clotclf_core.plugins import get_manager

    mgr = get_manager()
    recorded = config.get("plugins") if isinstance(config.get("plugins"), dict) else {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    roles = ["filter"] if model_kind(config) == FILTER_KIND else ["backbone", "head"]
    rows = []
    for role in roles:
        info = recorded.get(role) if isinstance(recorded.get(role), dict) else {}
        name = (info.get("name") or model.get(role) or config.get(role) or "?") if role != "filter" else (
            info.get("name") or config.get("filter") or "?")
        name = str(name).split("/")[-1]
        installed = [s for s in mgr.components(role) if s.name == name]
        rows.append(
            {
                "role": role,
                "name": name,
                "distribution": info.get("distribution") or "?",
                "version": info.get("version") or "?",
                "installed": bool(installed),
                "installed_version": installed[0].version if installed else None,
            }
        )
    return rows


def check_requirements(config: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """:func:`requirements`, raising one error naming every missing distribution and how to install it."""
    rows = requirements(config)
    missing = [r for r in rows if not r["installed"]]
    if missing:
        what = "; ".join(f"{r['role']} '{r['name']}' from distribution {r['distribution']} {r['version']}" for r in missing)
        pins = " ".join(
            f"'{r['distribution']}=={r['version']}'" if r["version"] != "?" else f"'{r['distribution']}'"
            for r in missing if r["distribution"] != "?"
        )
        how = f"pip install {pins}" if pins else "install the plugin that provides it"
        raise ModelLoadError(f"model '{label}' needs {what}, which is not installed: {how} (then check `clotclf list-plugins`)")
    return rows


# ----------------------------------------------------------------------------- after a pull


def verify_download(run_dir: Path, registry_sha256: str | None, label: str, registry: str) -> dict[str, Any]:
    """Check the pulled weights against the registry's hash and config.json's; return the config.

    ``registry_sha256`` is None only for an offline pull from the cache, where config.json's record
    is the reference (the cached bytes were checked against the registry when they were fetched).
    """
    weights = run_dir / WEIGHTS_NAME
    try:
        config = read_config(run_dir)
    except ModelLoadError as exc:
        raise NotAModelError(f"'{label}' from {registry} is not a clotclf model: {exc}") from None
    digest = sha256_file(weights)
    if registry_sha256 is not None and digest != registry_sha256:
        raise IntegrityError(
            f"{WEIGHTS_NAME} of '{label}' from {registry} hashes to sha256 {digest[:16]}…, but the registry serves it as "
            f"{registry_sha256[:16]}…: the download is corrupt or was tampered with. Nothing was kept; pull again, and "
            "if it persists tell the registry's administrator"
        )
    recorded = config.get("weights_sha256")
    if not recorded:
        raise NotAModelError(
            f"'{label}' from {registry}: {CONFIG_NAME} records no weights_sha256, so its weights cannot be verified; "
            "ask the owner to push it again with `clotclf push`"
        )
    if digest != recorded:
        raise IntegrityError(
            f"{WEIGHTS_NAME} of '{label}' from {registry} (sha256 {digest[:16]}…) is not the file its {CONFIG_NAME} "
            f"describes ({str(recorded)[:16]}…): the weights were replaced without their config. Nothing was kept; "
            "pull a revision pushed with `clotclf push`, or ask the owner to fix the repository"
        )
    _check_header(weights, label)
    return config


def _check_header(weights: Path, label: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            fh.keys()
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not safetensors"
        raise IntegrityError(f"{WEIGHTS_NAME} of '{label}' is not a readable safetensors file ({exc}); nothing was kept") from None

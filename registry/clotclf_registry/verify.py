"""Checks on both ends of a transfer.

- Before a push: the run directory is complete and its model loads, so a broken model is never
  published (:func:`check_run_dir`).
- After a pull (:func:`verify_download`), **every** downloaded file must have the size and the hash
  the registry listed for it (the Hub's LFS sha256 or git blob sha1; a local registry's object
  sha256) and be what its name says (:func:`.layout.check_content`); ``model.safetensors`` must also
  hash to the ``weights_sha256`` that ``config.json`` recorded when the model was saved, and its
  header must parse. Then the config must *build*: the core's ``ModelConfig`` and bounds, every
  component installed from its recorded distribution, every component's options model, and the
  model those options describe must have exactly the weights' tensor names and shapes — checked
  on the meta device, without allocating it (:func:`clotclf_core.models.saved.check_buildable`). Any
  failure is an error, never a warning, and the caller keeps nothing.
- What a model needs installed is the core's check (:func:`clotclf_core.models.requirements.check_requirements`):
  one check, one message.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from clotclf_core.models.backbones import BACKBONE_KIND, check_backbone_run, load_backbone_run
from clotclf_core.models.requirements import check_requirements, requirements
from clotclf_core.models.runs import fold_runs, read_config, read_safetensors_header
from clotclf_core.plugin import (
    CONFIG_NAME,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    ClotclfError,
    ModelLoadError,
    printable,
    sha256_file,
)
from clotclf_core.plugin.encoders import encoder_info
from clotclf_core.plugin.secrets import known_secrets
from clotclf_core.plugin.weights import read_run_config

from .errors import IntegrityError, NotAModelError, RegistryError
from .layout import METRICS_NAME, Plan, check_content

FILTER_KIND = "patch_filter"

__all__ = [
    "check_redistribution",
    "check_requirements",
    "check_run_dir",
    "load_run",
    "model_kind",
    "requirements",
    "verify_download",
]


def model_kind(config: dict[str, Any]) -> str:
    """``classifier`` (backbone + head, or a MIL model), ``patch_filter`` (e.g. the mobilenetv3
    background filter) or ``backbone`` (a backbone of ``clotclf pretrain``)."""
    return config.get("kind") if config.get("kind") in (FILTER_KIND, BACKBONE_KIND) else "classifier"


def _restricted(name: Any, options: Any) -> Any:
    """The EncoderInfo of backbone ``name`` when its options load published weights whose licence
    forbids publishing them (``redistribution: no``), else None."""
    from clotclf_core.plugin_manager import get_manager

    if not isinstance(name, str) or not isinstance(options, dict) or not options.get("pretrained"):
        return None
    try:
        info = encoder_info(get_manager().get("backbone", name).extra)
    except (ClotclfError, ValueError):
        return None
    return info if info is not None and info.redistribution == "no" else None


def check_redistribution(run_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to publish weights trained from an encoder whose licence forbids redistributing them
    (most pathology foundation models: CC-BY-NC-ND and the like): a model that fine-tuned one, or a
    backbone pre-trained on from one. A MIL model on features carries no encoder weights (only the
    encoder's record), so it is never refused here."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    if model_kind(config) == BACKBONE_KIND:
        encoder = config.get("encoder") if isinstance(config.get("encoder"), dict) else {}
        found = (config.get("backbone"), encoder.get("licence")) if encoder.get("redistribution") == "no" else None
    else:
        info = _restricted(model.get("backbone"), model.get("backbone_options"))
        found = (model.get("backbone"), f"{info.licence}, {info.repo}") if info is not None else None
    if found:
        raise RegistryError(
            f"cannot push '{run_dir}': its weights were trained from the published encoder '{printable(found[0], 80)}' "
            f"({printable(found[1], 200)}), whose licence does not allow publishing them. A MIL model on that encoder's "
            "features carries no encoder weights and can be pushed (`clotclf embed` + `clotclf train --features`)")


# ----------------------------------------------------------------------------- before a push


def check_run_dir(run_dir: Path, require_metrics: bool = True, return_model: bool = False) -> Any:
    """Refuse an incomplete or unloadable run directory; return its config.json content (and the
    loaded model, with ``return_model``)."""
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
            "re-save the model with clotclf_core.models.saved.save_model"
        )
    actual = sha256_file(weights)
    if actual != recorded:
        raise RegistryError(
            f"cannot push '{run_dir}': {WEIGHTS_NAME} (sha256 {actual[:12]}…) is not the file {CONFIG_NAME} describes "
            f"({str(recorded)[:12]}…); the weights were replaced or the save was interrupted. Re-save the model"
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
    check_redistribution(run_dir, config)
    try:
        model = load_run(run_dir, config)
    except ModelLoadError as exc:
        raise RegistryError(f"cannot push '{run_dir}': the model does not load: {exc}") from None
    return (config, model) if return_model else config


def load_run(run_dir: Path, config: dict[str, Any]) -> Any:
    """Build the run's model and load its weights: a classifier through the core, a filter through
    its plugin's ``weights`` option (the registry never imports another plugin)."""
    check_requirements(config, str(run_dir))
    if model_kind(config) == "classifier":
        from clotclf_core.models.saved import load_model

        return load_model(run_dir)
    if model_kind(config) == BACKBONE_KIND:
        return load_backbone_run(run_dir)
    return _load_filter(run_dir, config)


def _load_filter(run_dir: Path, config: dict[str, Any], trusted: bool = True) -> Any:
    from clotclf_core.plugin_manager import get_manager

    recorded = config.get("plugins") if isinstance(config.get("plugins"), dict) else {}
    row = get_manager().requirement("filter", str(config.get("filter")), recorded.get("filter"), trusted)
    spec = row["spec"]
    if spec is None:  # pragma: no cover - check_requirements raised already
        raise ModelLoadError(f"'{run_dir}' needs filter '{printable(config.get('filter'))}': {row['fix']}")
    if "weights" not in spec.options.model_fields:
        raise ModelLoadError(f"filter '{spec.name}' takes no weights option, so '{run_dir}' cannot be checked")
    try:
        return spec.factory(spec.validate_options({"weights": str(run_dir), "device": "cpu"}
                                                  if "device" in spec.options.model_fields else {"weights": str(run_dir)}))
    except ClotclfError as exc:
        raise ModelLoadError(str(exc)) from None


# ----------------------------------------------------------------------------- after a pull


def git_blob_sha1(path: Path, size: int) -> str:
    """The git object id of a file's content (what the Hub lists for files not in LFS)."""
    h = hashlib.sha1(b"blob %d\x00" % size)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_files(run_dir: Path, plan: Plan, label: str, registry: str) -> None:
    """Every planned file is in ``run_dir`` with the listed size and hash, and is what its name says."""
    for entry in plan.files:
        path = run_dir / entry.name
        shown = printable(entry.name, 120)
        if not path.is_file():
            raise IntegrityError(f"{shown} of '{label}' from {registry} did not arrive; nothing was kept. Pull again")
        size = path.stat().st_size
        if entry.size is not None and size != entry.size:
            raise IntegrityError(
                f"{shown} of '{label}' from {registry} is {size} bytes, but the registry lists {entry.size}: the download is "
                "corrupt or was tampered with. Nothing was kept; pull again, and if it persists tell the registry's administrator"
            )
        if entry.sha256:
            digest, expected, kind = sha256_file(path), entry.sha256, "sha256"
        elif entry.git_oid:
            digest, expected, kind = git_blob_sha1(path, size), entry.git_oid, "git blob sha1"
        else:
            raise IntegrityError(f"{shown} of '{label}': {registry} lists no hash for it, so it cannot be verified; nothing was kept")
        if digest != expected:
            raise IntegrityError(
                f"{shown} of '{label}' from {registry} hashes to {kind} {digest[:16]}…, but the registry lists "
                f"{printable(expected, 17)}: the download is corrupt or was tampered with. Nothing was kept; pull again, "
                "and if it persists tell the registry's administrator"
            )
        check_content(label, entry.name, path)
        if entry.name != WEIGHTS_NAME and _holds_a_secret(path):
            raise IntegrityError(
                f"{shown} of '{label}' from {registry} holds the token this pull was made with: the server wrote it into "
                "a file it serves, so it is hostile or broken. Nothing was kept; tell the registry's administrator, and "
                "consider revoking that token"
            )


def _holds_a_secret(path: Path) -> bool:
    """Whether a (small: every file but the weights is capped at 64 MiB) downloaded file contains a
    credential this process knows (:func:`clotclf_core.plugin.hub.known_secrets`)."""
    secrets = [s.encode() for s in known_secrets()]
    if not secrets:
        return False
    data = path.read_bytes()
    return any(s in data for s in secrets)


def verify_download(run_dir: Path, plan: Plan | None, label: str, registry: str, *, check_builds: bool = True) -> dict[str, Any]:
    """Check a pulled revision (see the module docstring); return its config.

    ``plan`` is None only for an offline pull from the cache, whose files were checked when they
    were fetched; config.json's record of the weights is checked again then.
    """
    if plan is not None:
        check_files(run_dir, plan, label, registry)
    members = _fold_members(run_dir, label, registry)
    if members is not None:  # a fold ensemble: every fold is a run directory, checked like one
        for fold in members:
            verify_download(fold, None, f"{label} ({fold.name})", registry, check_builds=check_builds)
        return read_run_config(run_dir)
    weights = run_dir / WEIGHTS_NAME
    try:
        config = read_config(run_dir)
    except ModelLoadError as exc:
        raise NotAModelError(f"'{label}' from {registry} is not a clotclf model: {exc}") from None
    recorded = config.get("weights_sha256")
    if not recorded:
        raise NotAModelError(
            f"'{label}' from {registry}: {CONFIG_NAME} records no weights_sha256, so its weights cannot be verified; "
            "ask the owner to push it again with `clotclf push`"
        )
    digest = sha256_file(weights)
    if digest != recorded:
        raise IntegrityError(
            f"{WEIGHTS_NAME} of '{label}' from {registry} (sha256 {digest[:16]}…) is not the file its {CONFIG_NAME} "
            f"describes ({printable(recorded, 17)}): the weights were replaced without their config. Nothing was kept; "
            "pull a revision pushed with `clotclf push`, or ask the owner to fix the repository"
        )
    try:
        read_safetensors_header(weights)
    except ModelLoadError as exc:
        raise IntegrityError(f"{WEIGHTS_NAME} of '{label}' is not a readable safetensors file "
                             f"({_named(str(exc), run_dir, label)}); nothing was kept") from None
    if check_builds:
        check_config_builds(run_dir, config, label, registry)
    return config


def _fold_members(run_dir: Path, label: str, registry: str) -> list[Path] | None:
    try:
        return fold_runs(run_dir)
    except ModelLoadError as exc:
        raise NotAModelError(f"'{label}' from {registry} is not a usable fold ensemble: {_named(str(exc), run_dir, label)}") from None


def check_config_builds(run_dir: Path, config: dict[str, Any], label: str, registry: str) -> None:
    """The model config.json describes can be built here and fits its weights (no memory spent).
    Its distribution names come from elsewhere: a missing one gets no ``pip install`` unless
    clotclf knows it (``trusted=False``)."""
    try:
        if model_kind(config) == "classifier":
            from clotclf_core.models.saved import check_buildable

            check_buildable(run_dir, trusted=False)
        elif model_kind(config) == BACKBONE_KIND:
            check_backbone_run(run_dir)
        else:
            check_requirements(config, label, trusted=False)
            _load_filter(run_dir, config, trusted=False)
    except ModelLoadError as exc:
        text = _named(str(exc), run_dir, label)
        raise ModelLoadError(f"'{label}' from {registry} was downloaded but cannot be used here, so nothing was kept: {text}") from None


def _named(text: str, run_dir: Path, label: str) -> str:
    """A message about the (temporary) download folder, told of the model: ``'/tmp/x/config.json'``
    becomes ``its config.json``, the folder itself ``'label'``."""
    text = re.sub(re.escape(f"'{run_dir}") + r"/([^']+)'", r"its \1", text)
    return text.replace(f"'{run_dir}'", f"'{label}'").replace(str(run_dir), label)

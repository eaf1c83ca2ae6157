"""Fetching a timm-layout repo from the Hugging Face Hub (or its cache), every failure one clear line.

timm reads ``config.json`` and the weights through ``huggingface_hub.hf_hub_download``. We fetch
the same two files first, with the same client and the same cache, so that (1) a gated, absent,
offline-and-not-cached or non-timm repo is refused with a message saying what to do, and (2) timm
then finds safetensors weights in the cache and never falls back to unpickling a ``.bin`` file.
The token (``HF_TOKEN``) is read by ``huggingface_hub`` itself and never printed.
"""

from __future__ import annotations

import json
from typing import Any

from clotclf_core.plugin import ClotclfError
from clotclf_core.plugin.hub import hub_problem
from clotclf_core.plugin.transfer import operation

LAYOUT_HINT = ("a timm-layout repo holds config.json (with 'architecture' and 'pretrained_cfg') and "
               "model.safetensors, as timm.models.push_to_hf_hub writes them")


class HubModelError(ClotclfError):
    pass


def download(repo_id: str, filename: str, revision: str | None, missing_ok: bool = False) -> str | None:
    """Local path of ``filename`` in ``repo_id`` (downloaded, or from the cache when offline).

    ``missing_ok``: return None when the repo exists but lacks the file. Every failure is one line
    (:func:`clotclf_core.plugin.hub.hub_problem`, the same words as the registry's).
    """
    from huggingface_hub import hf_hub_download

    try:
        with operation(what=f"the download of {filename} of 'hf-hub:{repo_id}'"):  # the Hub limits: never a hang
            return hf_hub_download(repo_id, filename, revision=revision)
    except Exception as exc:
        problem = hub_problem(exc, repo_id=repo_id, shown=f"hf-hub:{repo_id}", revision=revision, filename=filename)
        if problem is None:
            raise
        if problem.kind == "no_file":
            if missing_ok:
                return None
            raise HubModelError(f"{problem.message}: it is not in timm's layout ({LAYOUT_HINT})") from None
        raise HubModelError(problem.message) from None


def commit_of(path: str) -> str | None:
    """The commit a file of the Hugging Face cache belongs to (``…/snapshots/<commit>/<file>``)."""
    from pathlib import Path

    parts = Path(path).parts
    if "snapshots" in parts[:-1]:
        commit = parts[len(parts) - 1 - parts[::-1].index("snapshots") + 1]
        if all(c in "0123456789abcdef" for c in commit) and 7 <= len(commit) <= 64:
            return commit
    return None


def read_timm_config(repo_id: str, revision: str | None) -> tuple[dict[str, Any], str | None]:
    """The repo's ``config.json``, checked to be timm's layout with an architecture this timm knows,
    and the commit it resolved to (``None`` if the cache does not say)."""
    path = download(repo_id, "config.json", revision)
    what = f"'hf-hub:{repo_id}'"
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise HubModelError(f"config.json of {what} is not valid JSON ({exc}): it is not in timm's layout ({LAYOUT_HINT})") from None
    check_timm_config(config, what)
    return config, commit_of(path)


def check_timm_config(config: Any, what: str) -> None:
    """``config`` is a timm-layout config.json whose architecture this timm has."""
    import timm

    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        keys = ", ".join(sorted(config)[:6]) if isinstance(config, dict) else type(config).__name__
        raise HubModelError(
            f"config.json of {what} has no 'architecture' (it has: {keys}): the repo is not in timm's layout "
            f"({LAYOUT_HINT}); a transformers-format model needs its own plugin")
    arch = config["architecture"]
    if not timm.is_model(arch):
        raise HubModelError(
            f"{what} needs the timm architecture '{arch}', which timm {timm.__version__} does not have: "
            "upgrade timm (pip install -U timm), or check the repo's model card")


def safetensors_weights(repo_id: str, revision: str | None, filename: str | None) -> str:
    """Fetch the safetensors file timm will load for this repo (timm prefers it over pickles); refuse
    a repo that has only pickle weights."""
    candidates: list[str] = []
    if filename and filename.endswith(".safetensors"):
        candidates.append(filename)
    else:
        try:
            from timm.models._hub import _get_safe_alternatives  # timm's own order of safe names
            candidates += list(_get_safe_alternatives(filename or "pytorch_model.bin"))
        except ImportError:  # pragma: no cover - older / newer timm
            candidates.append("model.safetensors")
    for name in dict.fromkeys(candidates):
        path = download(repo_id, name, revision, missing_ok=True)
        if path is not None:
            return path
    raise HubModelError(
        f"'hf-hub:{repo_id}' has no safetensors weights ({' or '.join(dict.fromkeys(candidates))}); clotclf does not "
        "load pickle checkpoints (.bin/.pth), which can run code. Ask the repo's owner for model.safetensors, or "
        "convert weights you trust yourself and push them with timm.models.push_to_hf_hub")

"""Fetching a timm-layout repo from the Hugging Face Hub (or its cache), every failure one clear line.

timm reads ``config.json`` and the weights through ``huggingface_hub.hf_hub_download``. We fetch
the same two files first, with the same client and the same cache, so that (1) a gated, absent,
offline-and-not-cached or non-timm repo is refused with a message saying what to do, and (2) timm
then finds safetensors weights in the cache and never falls back to unpickling a ``.bin`` file.
The token (``HF_TOKEN``) is read by ``huggingface_hub`` itself and never printed.
"""

from __future__ import annotations

import json
import os
from typing import Any

from clotclf_core.plugin import ClotclfError

LAYOUT_HINT = ("a timm-layout repo holds config.json (with 'architecture' and 'pretrained_cfg') and "
               "model.safetensors, as timm.models.push_to_hf_hub writes them")


class HubModelError(ClotclfError):
    pass


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def split_ref(model_id: str) -> tuple[str, str | None]:
    """``ORG/NAME@REV`` -> ``("ORG/NAME", "REV")``."""
    repo_id, _, revision = model_id.partition("@")
    return repo_id, (revision or None)


def download(repo_id: str, filename: str, revision: str | None, missing_ok: bool = False) -> str | None:
    """Local path of ``filename`` in ``repo_id`` (downloaded, or from the cache when offline).

    ``missing_ok``: return None when the repo exists but lacks the file.
    """
    from huggingface_hub import errors, hf_hub_download

    what = f"'hf-hub:{repo_id}{'@' + revision if revision else ''}'"
    has_token = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    try:
        return hf_hub_download(repo_id, filename, revision=revision)
    except errors.GatedRepoError:
        if has_token:
            raise HubModelError(
                f"the Hub repo {what} is gated and the account of HF_TOKEN has no access to it: request access on the "
                "repo's page (accept its licence), wait for approval, then run again") from None
        raise HubModelError(
            f"the Hub repo {what} is gated: accept its licence on the repo's page, then set HF_TOKEN to a read token "
            "of that account (export HF_TOKEN=...)") from None
    except errors.RepositoryNotFoundError:
        hint = "" if has_token else "; if it is private or gated, set HF_TOKEN to a read token of an account with access"
        raise HubModelError(f"there is no Hub repo {what} at {_endpoint()} (check ORG/NAME){hint}") from None
    except errors.RevisionNotFoundError:
        raise HubModelError(f"the Hub repo '{repo_id}' has no revision '{revision}': give an existing branch, tag or commit after '@'") from None
    except errors.RemoteEntryNotFoundError:
        if missing_ok:
            return None
        raise HubModelError(f"the Hub repo {what} has no {filename}: it is not in timm's layout ({LAYOUT_HINT})") from None
    except errors.LocalEntryNotFoundError:
        if _offline():
            raise HubModelError(
                f"HF_HUB_OFFLINE=1 and {filename} of {what} is not in the Hugging Face cache: run once with network "
                "access (without HF_HUB_OFFLINE) to download it, or point HF_HOME / HF_HUB_CACHE at the cache that has it") from None
        raise HubModelError(
            f"cannot reach the Hugging Face Hub ({_endpoint()}) to fetch {filename} of {what}, and it is not in the "
            "cache: check the network (or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use a cache that has it") from None
    except errors.HFValidationError as exc:
        raise HubModelError(f"{what} is not a valid Hub repo id ({str(exc).splitlines()[0]}): use hf-hub:ORG/NAME[@REVISION]") from None
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise HubModelError(f"the Hub answered HTTP {status} for {filename} of {what}: {str(exc).splitlines()[0][:200]}") from None


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

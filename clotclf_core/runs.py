"""Run directories without torch: file names, reading config.json, hashing weights.

Kept apart from :mod:`clotclf_core.model` (which imports torch) so that commands which only look
at run directories — the registry's pull and list-models, say — start fast.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .plugins import get_manager

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"'{run_dir}' has no {CONFIG_NAME}: it is not a clotclf run directory (train one with `clotclf train`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"'{path}' is not valid JSON ({exc}); re-create the run directory") from None
    if not isinstance(data, dict) or "model" not in data:
        raise ModelLoadError(f"'{path}' has no 'model' section: it is not a clotclf model config")
    return data


def resolve_run_dir(ref: str | Path) -> Path:
    """A local run directory for ``ref``: an existing folder, or a name a plugin (the registry)
    resolves (``mayo-poolformer``, ``org/name@v1``)."""
    p = Path(ref)
    if p.is_dir():
        return p
    mgr = get_manager()
    resolved = mgr.resolve_model(str(ref))
    if resolved is not None:
        return Path(resolved)
    from .inputs import why_unusable

    why = why_unusable(p) or ("is a file, not a run directory" if p.exists() else "does not exist")
    if mgr.pm.hook.clotclf_resolve_model.get_hookimpls():  # a resolver (the registry) is installed: it did not know it
        hint = ("give the path of a run directory (from `clotclf train`), or a registry name such as org/name[@revision] "
                "(`clotclf list-models` lists them)")
    else:
        hint = "give the path of a run directory (from `clotclf train`), or install clotclf's registry to pull models by name"
    raise ModelLoadError(f"model '{ref}' is neither a run directory nor a name an installed plugin knows: the path {why}; {hint}")

"""Weights as safetensors and run directories, for the core's runs and a plugin's own: save, hash,
check, load.

A run directory is ``model.safetensors`` (weights only) + ``config.json`` (how to rebuild the model,
with ``weights_sha256``, the hash of the weights it describes). :func:`save_run` writes one,
:func:`read_run_config`, :func:`run_weights` and :func:`check_weights_hash` are the checks a loader
makes before it trusts one; the core's own runs go through the same three.

Nothing here unpickles anything: a pickle-based checkpoint (``.pt``, ``.pth``, ``.bin``...) or a file
that only pretends to be safetensors is refused with one line that says how to convert a file the
user made and trusts. Writes are atomic (:func:`clotclf_core.plugin.io.atomic_path`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clotclf_core.plugin.errors import ModelLoadError, printable
from clotclf_core.plugin.io import atomic_path, write_json

if TYPE_CHECKING:  # pragma: no cover - torch is imported by the functions that need it
    import torch
    from torch import nn

#: the file names of a run directory (the core's runs, and the plugin runs that follow the same layout)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: file name endings of pickle-based checkpoints, which clotclf refuses to load
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_weights(model: "nn.Module", path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write the model's state dict as safetensors, atomically, with ``metadata`` (a few strings) in
    its header beside the clotclf version. Returns the file's sha256."""
    from safetensors.torch import save_file

    from clotclf_core import __version__

    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "clotclf_version": __version__} | (metadata or {})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return sha256_file(path)


def check_safetensors(path: Path) -> None:
    """Refuse (one :class:`ModelLoadError`) a file that is not safetensors: a pickle, whatever its name."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"'{path}' is a pickle-based checkpoint ({path.suffix}); clotclf only loads safetensors, because "
            "unpickling can run arbitrary code. If you made this file yourself and trust it, convert it: "
            "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')"
        )
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors = 8-byte little-endian header length, then the JSON header: its first byte can be
    # anything (0x80 when the length is 128 more than a multiple of 256), so the "{" decides first
    if len(head) == 9 and head[8:9] == b"{":
        return
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise ModelLoadError(
            f"'{path}' is a pickle / torch.save file despite its name; clotclf only loads safetensors "
            "(convert it with safetensors.torch.save_file if you made it yourself)"
        )
    if len(head) < 9 or head[8:9] != b"{":
        raise ModelLoadError(f"'{path}' is not a safetensors file (bad header); re-save the weights")


def load_state(path: str | Path) -> "dict[str, torch.Tensor]":
    """Read a safetensors file into a state dict, refusing anything else."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file '{path}' does not exist")
    check_safetensors(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelLoadError(f"'{path}' could not be read as safetensors ({exc}); the file may be truncated") from None


def _shape_problems(own: dict[str, tuple[int, ...]], theirs: dict[str, tuple[int, ...]]) -> list[str]:
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    wrong = sorted(k for k in set(own) & set(theirs) if tuple(own[k]) != tuple(theirs[k]))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(printable(k, 80) for k in missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(printable(k, 80) for k in unexpected[:3])})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} with other shapes (e.g. {printable(k, 80)}: file {tuple(theirs[k])} vs model {tuple(own[k])})")
    return parts


def load_state_into(model: "nn.Module", state: "dict[str, torch.Tensor]", source: str, hint: str = "") -> None:
    """Load ``state`` with strict keys and shapes; one error listing what does not match."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    parts = _shape_problems(own, {k: tuple(v.shape) for k, v in state.items()})
    if parts:
        raise ModelLoadError(
            f"weights in '{source}' do not fit the model described by its config.json: " + "; ".join(parts)
            + ". The weights and config.json come from different models; use the config.json saved with these weights"
            + hint
        )
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- run directories


def save_run(model: "nn.Module", run_dir: str | Path, config: dict[str, Any],
             metadata: dict[str, str] | None = None) -> str:
    """Write ``run_dir/model.safetensors`` (``metadata``: a few strings in its header), then
    ``run_dir/config.json``: ``config`` with ``weights_sha256`` (the weights' hash, checked when the
    run is loaded) and, unless it has one, ``clotclf_version``. Weights first, so a crash in
    between never leaves a config.json describing other weights. Returns the sha256."""
    from clotclf_core import __version__

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    digest = save_weights(model, run_dir / WEIGHTS_NAME, metadata)
    write_json(run_dir / CONFIG_NAME, {"clotclf_version": __version__, **config, "weights_sha256": digest})
    return digest


def read_run_config(run_dir: str | Path, what: str = "a clotclf run directory",
                    fix: str = "train one with `clotclf train`") -> dict[str, Any]:
    """``run_dir/config.json`` as a dict; one :class:`ModelLoadError` when it is missing, not JSON,
    or not a JSON object. ``what`` names the kind of run expected, ``fix`` how to get one."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"'{run_dir}' has no {CONFIG_NAME}: it is not {what} ({fix})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"'{path}' is not valid JSON ({exc}); re-create the run directory ({fix})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"'{path}' holds {type(data).__name__}, not a JSON object: it is not {what} ({fix})")
    return data


def run_weights(run_dir: str | Path) -> Path:
    """``run_dir/model.safetensors``; a folder with only pickle weights is refused with the reason
    (never unpickled), a folder with none says the run did not finish saving."""
    run_dir = Path(run_dir)
    weights = run_dir / WEIGHTS_NAME
    if not weights.is_file():
        pickles = sorted(p for p in run_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES) if run_dir.is_dir() else []
        if pickles:
            check_safetensors(pickles[0])
        raise ModelLoadError(f"'{run_dir}' has no {WEIGHTS_NAME}; the run did not finish saving, or the folder is incomplete")
    return weights


def check_weights_hash(config: dict[str, Any], weights: Path) -> None:
    """``weights`` must hash to the ``weights_sha256`` that config.json recorded when it was saved."""
    recorded = config.get("weights_sha256")
    if not recorded:
        return
    actual = sha256_file(weights)
    if actual != recorded:
        raise ModelLoadError(
            f"'{weights}' is not the file its {CONFIG_NAME} describes (sha256 {actual[:12]}…, recorded "
            f"{printable(recorded, 16)[:12]}…): it was changed or damaged after the model was saved, so clotclf will not "
            "use it. Restore it (pull the model again, or copy it from where it was trained)"
        )

"""Checkpoints, safetensors only.

``last.safetensors`` holds model weights, optimizer tensors and the trainer state (JSON in the
safetensors metadata) in one file, written atomically, so it is always self-consistent;
``best-epochNNN.safetensors`` holds the best weights so far, named in that state. Nothing is
pickled: the optimizer's state_dict is split into tensors and JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.io import write_bytes, write_guard
from clotclf_core.plugin.weights import check_safetensors

if TYPE_CHECKING:  # pragma: no cover
    import torch

LAST = "last.safetensors"
#: what to do after a full disk during training: the previous checkpoint is still complete
RESUME_HINT = "continue with the same command plus --resume (the previous checkpoint is intact)"


def _optimizer_tensors(opt) -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
    """An optimizer state_dict split into tensors (for safetensors) and JSON (the rest)."""
    import torch

    sd = opt.state_dict()
    tensors, extra = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                extra.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": extra}


def _optimizer_state(tensors: dict[str, "torch.Tensor"], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def write_checkpoint(path: Path, model, opt, state: dict[str, Any]) -> None:
    """One safetensors file: ``model.*`` weights, ``optim.*`` tensors, JSON trainer state in metadata."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    meta = {"format": "pt", "clotclf_trainer_state": json.dumps(state), "clotclf_optimizer": json.dumps(opt_meta)}
    with write_guard("the last checkpoint", path.parent, after=RESUME_HINT):
        write_bytes(path, save(tensors, metadata=meta))


def write_weights(path: Path, model, epoch: int) -> None:
    """The best-so-far weights alone (what :func:`clotclf_core.plugin.weights.load_state` reads)."""
    from safetensors.torch import save

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with write_guard("the best checkpoint", path.parent, after=RESUME_HINT):
        write_bytes(path, save(weights, metadata={"format": "pt", "epoch": str(epoch)}))


def read_checkpoint(path: Path) -> tuple[dict[str, "torch.Tensor"], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model state, optimizer state_dict, trainer state, raw metadata) of a :func:`write_checkpoint` file."""
    from safetensors import safe_open

    check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        state = json.loads(meta["clotclf_trainer_state"])
        opt_meta = json.loads(meta["clotclf_optimizer"])
    except Exception as exc:
        raise ClotclfError(
            f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}); start the run again without --resume"
        ) from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_state = _optimizer_state({k: v for k, v in tensors.items() if k.startswith("optim.")}, opt_meta)
    return model_state, opt_state, state, meta


def state_digest(state: dict[str, "torch.Tensor"]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in name order: equal digests mean
    bit-identical weights. (A safetensors file's own hash is not that: it writes its metadata from a
    hash map, so two files of the same tensors can differ in their header.)"""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        t = tensor.detach().cpu().contiguous()
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def checkpoint_state(path: Path) -> dict[str, Any] | None:
    """The trainer state of a checkpoint without reading its tensors; None if absent or unreadable."""
    from safetensors import safe_open

    if not Path(path).is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return json.loads((fh.metadata() or {})["clotclf_trainer_state"])
    except Exception:
        return None

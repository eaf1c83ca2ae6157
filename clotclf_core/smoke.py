"""Build every installed backbone x head and run one training step on random input."""

from __future__ import annotations

import time
from typing import Any

from .config import ModelConfig
from .plugins import get_manager


def smoke_one(backbone: str, head: str, input_size: int = 64, batch_size: int = 2, seed: int = 0) -> dict[str, Any]:
    import torch

    from .model import build_model

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = build_model(ModelConfig(backbone=backbone, head=head, input_size=input_size))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch_size, 3, input_size, input_size)
    y = torch.arange(batch_size) % model.config.num_classes
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {
        "backbone": backbone,
        "head": head,
        "params_m": round(params, 2),
        "loss": round(float(loss.detach()), 4),
        "seconds": round(time.perf_counter() - t0, 2),
        "status": "ok" if torch.isfinite(loss) else "error: non-finite loss",
    }


def smoke_all(input_size: int = 64, batch_size: int = 2) -> list[dict[str, Any]]:
    mgr = get_manager()
    rows = []
    for b in mgr.components("backbone"):
        for h in mgr.components("head"):
            try:
                row = smoke_one(f"{b.plugin}/{b.name}", f"{h.plugin}/{h.name}", input_size, batch_size)
                rows.append(row | {"backbone": b.name, "head": h.name})
            except Exception as exc:  # report, keep going: this is a diagnostic
                rows.append({"backbone": b.name, "head": h.name, "params_m": "-", "loss": "-", "seconds": "-",
                             "status": f"error: {type(exc).__name__}: {str(exc)[:120]}"})
    return rows

"""Aggregator compute per epoch: forward + backward + AdamW over STRIP-AI-sized bags of features.

754 bags (the Kaggle training slides) x 64 tiles x 1,024 features (a ViT-L-class encoder), float16
in memory as a feature store holds them, a share of the bags padded (masked) to mimic slides with
fewer tiles. For each aggregator (``mean``, ``abmil`` by default), one epoch is:

- ``train``: shuffled mini-batches of ``--bags`` bags: float16 -> float32 on the device, forward
  through :func:`clotclf_core.aggregate.run_aggregator` (the contract checks included), cross
  entropy, backward, AdamW step;
- ``eval``: every bag once, forward only, with attention (``inference_mode``).

This is the aggregator's share of a MIL epoch; the whole epoch of `clotclf train --features …`
(reading the store, metrics, checkpoints) is measured once the MIL trainer exists (phase 2; the
target there is < 2 s per epoch on this CPU). The data are random: only the time means anything.

Usage::

    .venv/bin/python benchmarks/aggregator.py                   # CPU, ~1 min on 2 cores
    .venv/bin/python benchmarks/aggregator.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--aggregators", default="mean,abmil", help="comma-separated aggregator names")
    p.add_argument("--n-bags", type=int, default=754)
    p.add_argument("--tiles", type=int, default=64, help="tiles per bag (N)")
    p.add_argument("--features", type=int, default=1024, help="features per tile (F)")
    p.add_argument("--bags", type=int, default=32, help="bags per mini-batch")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per aggregator (after one warm-up); the best is reported")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    args = parse_args()
    import torch

    from clotclf_core.aggregate import build_aggregator, run_aggregator
    from clotclf_core.evaluate import pick_runtime

    rt = pick_runtime(args.device)
    dev = rt.device
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((args.n_bags, args.tiles, args.features), dtype=np.float32).astype(np.float16)
    lengths = np.where(rng.random(args.n_bags) < 0.3, rng.integers(8, args.tiles, args.n_bags), args.tiles)
    mask_np = np.arange(args.tiles)[None, :] < lengths[:, None]
    labels_np = rng.integers(0, 2, args.n_bags)
    store = torch.from_numpy(feats)
    mask_all = torch.from_numpy(mask_np)
    labels = torch.from_numpy(labels_np)
    if dev.type == "cuda":  # a feature store this size fits on the GPU; keep it there as float16
        store, mask_all, labels = store.to(dev), mask_all.to(dev), labels.to(dev)
    rows = []
    for name in args.aggregators.split(","):
        torch.manual_seed(0)
        agg = build_aggregator(name, {}, args.features, 2).to(dev)
        opt = torch.optim.AdamW(agg.parameters(), lr=1e-4)
        params = sum(p.numel() for p in agg.parameters())

        def train_epoch(epoch: int) -> float:
            agg.train()
            order = torch.from_numpy(np.random.default_rng(epoch).permutation(args.n_bags)).to(store.device)
            sync(dev)
            t0 = time.perf_counter()
            for start in range(0, args.n_bags, args.bags):
                idx = order[start:start + args.bags]
                bags = store[idx].to(dev, non_blocking=True).float()
                with rt.autocast():
                    logits, _ = run_aggregator(agg, bags, mask_all[idx].to(dev))
                loss = torch.nn.functional.cross_entropy(logits.float(), labels[idx].to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sync(dev)
            return time.perf_counter() - t0

        def eval_epoch() -> float:
            agg.eval()
            sync(dev)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for start in range(0, args.n_bags, 4 * args.bags):
                    bags = store[start:start + 4 * args.bags].to(dev).float()
                    with rt.autocast():
                        run_aggregator(agg, bags, mask_all[start:start + 4 * args.bags].to(dev), return_attention=True)
            sync(dev)
            return time.perf_counter() - t0

        train_epoch(0), eval_epoch()  # warm-up
        trains = [train_epoch(e + 1) for e in range(args.epochs)]
        evals = [eval_epoch() for _ in range(args.epochs)]
        rows.append({"aggregator": name, "params": params, "train_s": min(trains), "eval_s": min(evals),
                     "train_all": [round(t, 3) for t in trains]})
        print(f"{name}: train epoch {min(trains):.3f} s, eval {min(evals):.3f} s", file=sys.stderr)
    info = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "n_bags": args.n_bags, "tiles": args.tiles,
        "features": args.features, "bags_per_batch": args.bags, "precision": rt.precision,
        "masked_bags": int((lengths < args.tiles).sum()),
    }
    if args.json:
        print(json.dumps({"info": info, "rows": rows}, indent=2))
        return
    print(f"\n{info['device']}, torch {info['torch']} ({info['torch_threads']} threads), {rt.precision}; {args.n_bags} bags x "
          f"{args.tiles} tiles x {args.features} features (float16 in memory; {info['masked_bags']} bags padded), "
          f"{args.bags} bags per step\n")
    print("| aggregator | parameters | train epoch (fwd + bwd + AdamW), s | eval pass with attention, s | every train epoch |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['aggregator']} | {r['params']:,} | {r['train_s']:.3f} | {r['eval_s']:.3f} | {', '.join(map(str, r['train_all']))} |")


if __name__ == "__main__":
    main()

"""Aggregator compute per epoch: forward + backward + AdamW over STRIP-AI-sized bags of features.

754 bags (the Kaggle training slides) x 64 tiles x 1,024 features (a ViT-L-class encoder), float16
in memory as a feature store holds them, a share of the bags padded (masked) to mimic slides with
fewer tiles. For each aggregator (``mean``, ``abmil``, and the torchmil plugin's ``transmil``,
``dsmil``, ``clam-sb`` by default), one epoch is:

- ``train``: shuffled mini-batches of ``--bags`` bags: float16 -> float32 on the device, forward
  through :func:`clotclf_core.models.aggregate.run_for_training` (the contract checks included; CLAM's
  and DSMIL's own loss terms too), cross entropy, backward, AdamW step;
- ``eval``: every bag once, forward only, with attention (``inference_mode``).

That is the aggregator's share of a MIL epoch (the floor). ``--trainer`` also times the whole
epoch of ``clotclf train --features … --aggregator NAME`` on the same bags, written as a real
feature store (754 slides of 632 patients, float16, memory-mapped): the shared training loop,
the seeded bag loader, AdamW, validation on the fold's slides with the metrics, checkpoints and
history — 5-fold, fold 0 (about 600 training and 150 validation bags; target < 2 s per epoch on
this CPU). The data are random: only the time means anything.

Usage::

    .venv/bin/python benchmarks/aggregator.py                   # CPU, ~1 min on 2 cores
    .venv/bin/python benchmarks/aggregator.py --trainer --threads 1
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
    p.add_argument("--aggregators", default="mean,abmil,transmil,dsmil,clam-sb", help="comma-separated aggregator names")
    p.add_argument("--n-bags", type=int, default=754)
    p.add_argument("--tiles", type=int, default=64, help="tiles per bag (N)")
    p.add_argument("--features", type=int, default=1024, help="features per tile (F)")
    p.add_argument("--bags", type=int, default=32, help="bags per mini-batch")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per aggregator (after one warm-up); the best is reported")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--trainer", action="store_true", help="also time the whole `clotclf train --features` epoch")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    args = parse_args()
    import torch

    from clotclf_core.models.aggregate import build_aggregator, run_aggregator, run_for_training
    from clotclf_core.models.runtime import pick_runtime

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
                with rt.autocast():  # the training step's call: with an aggregator's own loss term where it has one
                    logits, extra = run_for_training(agg, bags, mask_all[idx].to(dev), labels[idx].to(dev))
                loss = torch.nn.functional.cross_entropy(logits.float(), labels[idx].to(dev))
                if extra is not None:
                    loss = loss + extra.float()
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
    trainer_rows = [time_trainer(name, feats, lengths, labels_np, args) for name in args.aggregators.split(",")] \
        if args.trainer else []
    if args.json:
        print(json.dumps({"info": info, "rows": rows, "trainer": trainer_rows}, indent=2))
        return
    print(f"\n{info['device']}, torch {info['torch']} ({info['torch_threads']} threads), {rt.precision}; {args.n_bags} bags x "
          f"{args.tiles} tiles x {args.features} features (float16 in memory; {info['masked_bags']} bags padded), "
          f"{args.bags} bags per step\n")
    print("| aggregator | parameters | train epoch (fwd + bwd + AdamW), s | eval pass with attention, s | every train epoch |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['aggregator']} | {r['params']:,} | {r['train_s']:.3f} | {r['eval_s']:.3f} | {', '.join(map(str, r['train_all']))} |")
    if trainer_rows:
        bare = {r["aggregator"]: r for r in rows}
        print(f"\nclotclf train --features (a feature store of the same bags), fold 0 of 5, {args.bags} bags per step, "
              f"best of {args.epochs} epochs; floor = the bare loop above on as many bags:\n")
        print("| aggregator | train bags | val bags | train, s | validate, s | whole epoch, s | floor, s | epoch / floor | every epoch, s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in trainer_rows:
            b_ = bare[r["aggregator"]]
            floor = b_["train_s"] * r["train_bags"] / args.n_bags + b_["eval_s"] * r["val_bags"] / args.n_bags
            print(f"| {r['aggregator']} | {r['train_bags']} | {r['val_bags']} | {r['train_s']:.3f} | {r['validate_s']:.3f} | "
                  f"{r['epoch_s']:.3f} | {floor:.3f} | {r['epoch_s'] / floor:.2f} | {', '.join(map(str, r['epochs']))} |")


def write_store(root: Path, feats: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> Path:
    """The bags as a real feature store (features.json + float16 slides/*.npy + tile rows): 754
    slides of 632 patients (the first 122 patients have two slides), every bag ``lengths[i]`` tiles."""
    import pandas as pd

    from clotclf_core.features.embed import FeatureStoreWriter

    n = len(feats)
    patients = [f"p{min(i, n - 1 - i) if i >= n - 122 else i}" for i in range(n)]
    patient_label = {}
    encoder = {"backbone": "timm", "options": {"model": "benchmark"}, "weights_sha256": "0" * 64,
               "num_features": int(feats.shape[2]), "mean": [0.5] * 3, "std": [0.5] * 3, "input_size": 224}
    writer = FeatureStoreWriter(root, encoder, {"fingerprint": "benchmark", "tile_pixels": 224, "settings": {},
                                                "synthetic": True}, feats.shape[2])
    for i in range(n):
        label = patient_label.setdefault(patients[i], "CE" if labels[i] == 0 else "LAA")
        k = int(lengths[i])
        centre = str(int(patients[i][1:]) % 11)  # a patient's slides come from one centre
        rows = pd.DataFrame({"image_id": f"s{i:04d}", "patient_id": patients[i], "center_id": centre, "label": label,
                             "row": np.arange(k), "x": np.arange(k) * 224, "y": 0, "size": 224, "downsample": 4.0})
        with writer.slide(f"s{i:04d}", rows) as matrix:
            matrix[:] = feats[i, :k]
    return root


def time_trainer(name: str, feats: np.ndarray, lengths: np.ndarray, labels: np.ndarray, args) -> dict:
    """Seconds per epoch of `clotclf train --features STORE --aggregator NAME` (fold 0 of 5)."""
    import tempfile

    import pandas as pd

    from clotclf_core.training.run import train
    from clotclf_core.training.settings import resolve_settings

    with tempfile.TemporaryDirectory(prefix="clotclf-mil-bench-") as tmp:
        store = write_store(Path(tmp) / "features", feats, lengths, labels)
        s = resolve_settings(None, {"features": str(store), "aggregator": name, "out": str(Path(tmp) / "run"),
                                    "epochs": args.epochs + 1, "batch_size": args.bags, "patience": 0, "folds": 5,
                                    "workers": 0, "device": args.device, "threads": args.threads})
        summary = train(s, progress=False)
        history = pd.read_csv(Path(tmp) / "run" / "history.csv").iloc[1:]  # the first epoch warms up
        split = summary["folds"][0]
        config = __import__("json").loads((Path(tmp) / "run" / "config.json").read_text())["split"]
        whole = history["seconds"].to_numpy()
        best = int(np.argmin(whole))
        n_train = config["n_train_slides"]
        seen = (n_train // args.bags) * args.bags if n_train > args.bags else n_train  # the loader drops a short last batch
        train_s = seen / float(history["images_per_s"].iloc[best])  # history: samples (bags) per second of training
        row = {"aggregator": name, "train_bags": config["n_train_slides"], "val_bags": config["n_val_slides"],
               "epoch_s": float(whole[best]), "train_s": train_s, "validate_s": float(whole[best]) - train_s,
               "epochs": [round(float(x), 3) for x in whole], "best_epoch": split["best_epoch"]}
    print(f"clotclf train --aggregator {name}: epoch {row['epoch_s']:.3f} s (train {row['train_s']:.3f} s)", file=sys.stderr)
    return row


if __name__ == "__main__":
    main()

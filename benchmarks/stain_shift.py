"""Stain normalisation against a per-centre stain shift, leave-centre-out, on a synthetic cohort.

The protocol, fixed before any result was looked at:

1. ``clotclf demo-data --signal S --stain-shift X --patients N --seed 0``: a **synthetic** cohort whose
   4 centres' stains are pushed apart (the same for both labels: a confounder of the centre only);
2. ``clotclf tile`` at the demo geometry (cached at 64 px), then ``clotclf embed`` with the encoder
   (default the built-in ``composition``) twice: without normalisation, and with
   ``--stain-normalise macenko`` (each slide's stain estimated once, mapped onto Macenko's reference);
3. for each store, aggregator and seed: ``clotclf train --features F --aggregator A --group-by center
   --folds 4 --fold all --test-fraction 0 --seed S`` with the command's default settings: each fold
   validates on one whole centre, so the out-of-fold result scores every centre with the model that
   never saw it (leave-centre-out);
4. reported: the out-of-fold patient-level weighted log loss (equal probabilities: 0.693) with its
   bootstrap 95 % interval where the run reports one, balanced accuracy and ROC AUC; means over seeds.

Usage::

    .venv/bin/python benchmarks/stain_shift.py --work /tmp/stain-shift            # 120 patients, 3 seeds
    .venv/bin/python benchmarks/stain_shift.py --work /tmp/stain-shift --stain-shift 0   # the control: no shift

Results: docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CLOTCLF = [sys.executable, "-m", "clotclf_core.cli"]
LEAVE_CENTRE_OUT = ["--group-by", "center", "--folds", "4", "--fold", "all", "--test-fraction", "0", "--workers", "0",
                    "--threads", "1", "--device", "cpu", "-q"]


def sh(args: list) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{done.stderr[-3000:]}")


def prepare(work: Path, signal: str, shift: float, patients: int, encoder: str, normalise: str | None) -> Path:
    stem = f"{signal}-shift{shift:g}"
    cohort, tiles = work / f"{stem}-cohort", work / f"{stem}-tiles"
    feats = work / f"{stem}-features{'-' + normalise if normalise else ''}"
    if not (cohort / "train.csv").is_file():
        sh([*CLOTCLF, "demo-data", cohort, "--signal", signal, "--patients", patients, "--seed", 0,
            "--stain-shift", shift, "-q"])
    if not (tiles / "tiles.csv").is_file():
        sh([*CLOTCLF, "tile", cohort / "slides", "--manifest", cohort / "train.csv", "--out", tiles, "--downsample", 2,
            "--tile-size", 224, "--stride", 112, "--train-size", 64, "--workers", 2])
    norm = ["--stain-normalise", normalise] if normalise else []
    sh([*CLOTCLF, "embed", "--tiles", tiles, "--backbone", encoder, "--out", feats, "--device", "cpu", "--seed", 0,
        *norm, "-q"])
    return feats


def train(out: Path, feats: Path, aggregator: str, seed: int) -> dict:
    if not (out / "metrics.json").is_file():
        t0 = time.perf_counter()
        sh([*CLOTCLF, "train", "--features", feats, "--aggregator", aggregator, "--seed", seed, "--out", out,
            *LEAVE_CENTRE_OUT])
        print(f"{out.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    m = json.loads((out / "metrics.json").read_text())
    oof = m["oof"]["patient"]
    head = m["headline"] if m["headline"].get("on") == "oof" else {}  # the run's headline is its out-of-fold result
    return {"n": oof["n"], "wll": oof["weighted_log_loss"], "ci": head.get("weighted_log_loss_ci95"),
            "bacc": oof["balanced_accuracy"], "auc": oof.get("roc_auc"), "synthetic": m["headline"].get("synthetic")}


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the cohort, tiles, features and runs (reused)")
    p.add_argument("--signal", default="sparse", choices=["sparse", "texture"])
    p.add_argument("--stain-shift", type=float, default=1.0)
    p.add_argument("--patients", type=int, default=120)
    p.add_argument("--encoder", default="composition")
    p.add_argument("--normalise", default="none,macenko", help="comma list of none and --stain-normalise values")
    p.add_argument("--aggregators", default="abmil,mean")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each on one thread)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = []
    for normalise in args.normalise.split(","):
        norm = None if normalise == "none" else normalise
        feats = prepare(args.work, args.signal, args.stain_shift, args.patients, args.encoder, norm)
        for seed in map(int, args.seeds.split(",")):
            for agg in args.aggregators.split(","):
                out = args.work / "runs" / f"{feats.name}-{agg}-seed{seed}"
                jobs.append(({"normalise": normalise, "aggregator": agg, "seed": seed}, out, feats))
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda j: {**j[0], **train(j[1], j[2], j[0]["aggregator"], j[0]["seed"])}, jobs))
    (args.work / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\nSynthetic cohort `--signal {args.signal} --stain-shift {args.stain_shift:g}` ({args.patients} patients, "
          f"4 centres), encoder {args.encoder}, leave-centre-out: out-of-fold patient-level weighted log loss over "
          f"{rows[0]['n']} patients, each centre scored by the model that never saw it (equal probabilities 0.693)\n")
    print("| stain normalisation | aggregator | seed | OOF weighted log loss (95 % CI) | balanced accuracy | ROC AUC |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        ci = f" ({r['ci'][0]:.3f}-{r['ci'][1]:.3f})" if r["ci"] else ""
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.3f}"
        print(f"| {r['normalise']} | {r['aggregator']} | {r['seed']} | {r['wll']:.3f}{ci} | {r['bacc']:.3f} | {auc} |")
    print("\n| stain normalisation | aggregator | OOF weighted log loss, mean ± sd over seeds | balanced accuracy |")
    print("|---|---|---:|---:|")
    for key in dict.fromkeys((r["normalise"], r["aggregator"]) for r in rows):
        mine = [r for r in rows if (r["normalise"], r["aggregator"]) == key]
        print(f"| {key[0]} | {key[1]} | {mean_sd([r['wll'] for r in mine])} | {mean_sd([r['bacc'] for r in mine])} |")


if __name__ == "__main__":
    main()

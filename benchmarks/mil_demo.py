"""abmil against mean on the synthetic demo cohorts, on held-out patients: does attention find a
class that shows in a few tiles only?

The protocol, fixed before any result was looked at (and not tuned on the test patients since):

1. ``clotclf demo-data`` writes a **synthetic** cohort of ``--patients`` patients (seed 0): the
   ``sparse`` signal (the class in 1-2 small spots of cholesterol clefts per LAA slide, the bulk of
   the tissue independent of the label) and the standard ``texture`` signal (the class in the
   texture of the whole clot);
2. ``clotclf tile`` at the demo geometry (``--downsample 2 --tile-size 224 --stride 112``, cached
   at 64 px), ``clotclf embed`` with a frozen **random-init** timm ``resnet18`` at the tiles' own
   64 px (``--input-size 64``; seed 0; no pretrained weights can be downloaded here, so the
   encoder knows nothing about tissue);
3. for each split seed (default 0 only; ``--seeds 0,1,2`` for three): ``clotclf train --features … --fold all --folds 5
   --test-fraction 0.25 --seed S`` with ``--aggregator abmil`` and ``--aggregator mean`` (same
   settings: every tile of a slide in its bag, ``--loss weighted_log_loss``, lr 1e-3, batch 8,
   up to 40 epochs, early stopping with patience 8 on the validation patients);
4. reported: each run's headline — the held-out test patients scored by the mean of its 5 fold
   models (patient-level weighted log loss; n = the test patients; equal probabilities score
   0.693) — and the out-of-fold result over the other patients, per seed and averaged.

Usage::

    .venv/bin/python benchmarks/mil_demo.py --work /tmp/mil-demo          # ~15 min on 2 busy cores

The protocol was changed once, after its first version (60 patients, tiles enlarged to the
encoder's 224 px) gave equal-probability results for both aggregators on the sparse cohort: to
200 patients (50 held out) and the tiles' own 64 px (3x faster). The results and what was tried
besides are in docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOTCLF = [sys.executable, "-m", "clotclf_core.cli"]
TRAIN = ["--loss", "weighted_log_loss", "--lr", "0.001", "--batch-size", "8", "--epochs", "40", "--patience", "8",
         "--fold", "all", "--folds", "5", "--test-fraction", "0.25", "--workers", "0", "--threads", "1", "--device", "cpu"]


def sh(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, **kw)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{done.stderr[-3000:]}")
    return done


def prepare(work: Path, signal: str, patients: int, encoder: str, input_size: int | None, train_size: int) -> Path:
    cohort, tiles, feats = work / f"{signal}-cohort", work / f"{signal}-tiles", work / f"{signal}-features"
    if not (cohort / "train.csv").is_file():
        sh([*CLOTCLF, "demo-data", cohort, "--signal", signal, "--patients", patients, "--seed", 0, "-q"])
    if not (tiles / "tiles.csv").is_file():
        sh([*CLOTCLF, "tile", cohort / "slides", "--manifest", cohort / "train.csv", "--out", tiles, "--downsample", 2,
            "--tile-size", 224, "--stride", 112, "--train-size", train_size, "--workers", 2])
    size = ["--input-size", input_size] if input_size else []
    sh([*CLOTCLF, "embed", "--tiles", tiles, "--backbone", encoder, *size, "--out", feats, "--device", "auto",
        "--seed", 0, "-q"])
    return feats


def run(work: Path, feats: Path, signal: str, aggregator: str, seed: int) -> dict:
    out = work / f"{signal}-{aggregator}-seed{seed}"
    if not (out / "metrics.json").is_file():
        t0 = time.perf_counter()
        sh([*CLOTCLF, "train", "--features", feats, "--aggregator", aggregator, "--seed", seed, "--out", out, "-q", *TRAIN])
        print(f"{signal} {aggregator} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    metrics = json.loads((out / "metrics.json").read_text())
    head, oof = metrics["headline"], metrics["oof"]["patient"]
    return {"signal": signal, "aggregator": aggregator, "seed": seed, "test_n": head["n_patients"],
            "test_wll": head["weighted_log_loss"], "test_bacc": head["balanced_accuracy"], "test_auc": head["roc_auc"],
            "oof_n": oof["n"], "oof_wll": oof["weighted_log_loss"], "oof_bacc": oof["balanced_accuracy"],
            "synthetic": head.get("synthetic")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the cohorts, tiles, features and runs (reused)")
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--seeds", default="0")
    p.add_argument("--signals", default="sparse,texture")
    p.add_argument("--encoder", default="timm:model=resnet18",
                   help="the frozen encoder of `clotclf embed` (e.g. timm:model=hf-hub:ORG/NAME with its weights)")
    p.add_argument("--input-size", type=int, default=64, help="encoder input side; 0: what the encoder declares")
    p.add_argument("--train-size", type=int, default=64, help="side of the cached tiles (`clotclf tile --train-size`)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for signal in args.signals.split(","):
        feats = prepare(args.work, signal, args.patients, args.encoder, args.input_size or None, args.train_size)
        for seed in map(int, args.seeds.split(",")):
            for aggregator in ("abmil", "mean"):
                rows.append(run(args.work, feats, signal, aggregator, seed))
    (args.work / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n| cohort (synthetic) | aggregator | seed | test patients | test weighted log loss | test balanced acc. | "
          "test ROC AUC | out-of-fold patients | OOF weighted log loss |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['signal']} | {r['aggregator']} | {r['seed']} | {r['test_n']} | {r['test_wll']:.3f} | {r['test_bacc']:.3f} | "
              f"{r['test_auc'] if r['test_auc'] is None else round(r['test_auc'], 3)} | {r['oof_n']} | {r['oof_wll']:.3f} |")
    print("\n| cohort (synthetic) | aggregator | mean test weighted log loss over the seeds | mean OOF weighted log loss | baseline |")
    print("|---|---|---:|---:|---:|")
    for signal in args.signals.split(","):
        for aggregator in ("abmil", "mean"):
            mine = [r for r in rows if r["signal"] == signal and r["aggregator"] == aggregator]
            test = sum(r["test_wll"] for r in mine) / len(mine)
            oof = sum(r["oof_wll"] for r in mine) / len(mine)
            print(f"| {signal} | {aggregator} | {test:.3f} | {oof:.3f} | 0.693 |")


if __name__ == "__main__":
    main()

"""Does `clotclf pretrain` on a cohort's own tiles give a MIL model better features than the same
backbone random-init? On the **synthetic** sparse demo cohort, held-out patients.

The protocol, fixed before any result was looked at:

1. ``clotclf demo-data --signal sparse --patients 200 --seed 0`` (synthetic: the class in 1-2 small
   spots of cholesterol clefts per LAA slide), tiled at the demo geometry of ``mil_demo.py``
   (``--downsample 2 --tile-size 224 --stride 112``, cached at 64 px);
2. ``clotclf pretrain --method mocov3`` (MoCo v3, the STRIP AI winners' method) of a random-init
   timm ``resnet18`` on those tiles (at most ``--tiles-per-slide`` per slide, every patient's:
   no labels are read, but the held-out patients' tiles are among them — transductive, see
   docs/training.md), ``--epochs`` epochs at 64 px;
3. ``clotclf embed`` of every tile with (a) the same resnet18 random-init (seed 0) and (b) the
   pre-trained run (``--backbone run:PATH``), both at 64 px;
4. ``clotclf train --features … --aggregator abmil|mean`` on each, with the settings given
   explicitly (``--loss weighted_log_loss --lr 1e-3 --batch-size 8 --epochs 40 --patience 8
   --fold all --folds 5 --test-fraction 0.25 --seed 0``), the same for all four;
5. reported: the 50 held-out test patients scored by the mean of the 5 fold models (patient-level
   weighted log loss with the run's own bootstrap 95% interval over patients, its headline; equal
   probabilities score 0.693) and out of fold over the other 150.

Usage::

    .venv/bin/python benchmarks/pretrain_demo.py --work /tmp/pretrain-demo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLOTCLF = [sys.executable, "-m", "clotclf_core.cli"]
TRAIN = ["--loss", "weighted_log_loss", "--lr", "0.001", "--batch-size", "8", "--epochs", "40", "--patience", "8",
         "--fold", "all", "--folds", "5", "--test-fraction", "0.25", "--workers", "0", "--threads", "1", "--device", "cpu"]
ENCODER = "timm:model=resnet18"


def sh(args: list, **kw) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{done.stderr[-3000:]}")
    print(f"{time.perf_counter() - t0:7.0f} s  {' '.join(map(str, args[3:6]))}", file=sys.stderr)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=3, help="pre-training epochs")
    ap.add_argument("--tiles-per-slide", type=int, default=12, help="pre-training tiles per slide")
    ap.add_argument("--method", default="mocov3")
    args = ap.parse_args()
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    cohort, tiles = w / "sparse-cohort", w / "sparse-tiles"
    if not (cohort / "train.csv").is_file():
        sh([*CLOTCLF, "demo-data", cohort, "--signal", "sparse", "--patients", args.patients, "--seed", 0, "-q"])
    if not (tiles / "tiles.csv").is_file():
        sh([*CLOTCLF, "tile", cohort / "slides", "--manifest", cohort / "train.csv", "--out", tiles, "--downsample", 2,
            "--tile-size", 224, "--stride", 112, "--train-size", 64, "--workers", 2, "-q"])
    ssl = w / f"pretrain-{args.method}"
    if not (ssl / "model.safetensors").is_file():
        resume = ["--resume"] if (ssl / "training.yaml").is_file() else []
        sh([*CLOTCLF, "pretrain", "--tiles", tiles, "--method", args.method, "--backbone", ENCODER, "--out", ssl,
            "--epochs", args.epochs, "--batch-size", 64, "--max-tiles-per-slide", args.tiles_per_slide,
            "--head-hidden-dim", 1024, "--head-output-dim", 128, "--workers", 1, "--device", "cpu", "-q", *resume])
    encoders = {"random-init": ENCODER, f"{args.method}-pretrained": f"run:{ssl}"}
    rows = []
    for label, encoder in encoders.items():
        feats = w / f"features-{label}"
        if not (feats / "features.json").is_file() or '"done"' not in (feats / "features.json").read_text():
            sh([*CLOTCLF, "embed", "--tiles", tiles, "--backbone", encoder, "--input-size", 64, "--out", feats,
                "--device", "cpu", "--seed", 0, "-q"])
        for aggregator in ("abmil", "mean"):
            out = w / f"{label}-{aggregator}"
            if not (out / "metrics.json").is_file():
                sh([*CLOTCLF, "train", "--features", feats, "--aggregator", aggregator, "--seed", 0, "--out", out, "-q",
                    *TRAIN], env={**os.environ, "OMP_NUM_THREADS": "1"})
            metrics = json.loads((out / "metrics.json").read_text())
            head, oof = metrics["headline"], metrics["oof"]["patient"]
            rows.append({"encoder": label, "aggregator": aggregator, "test_n": head["n_patients"],
                         "test_wll": head["weighted_log_loss"],
                         "interval": head.get("weighted_log_loss_ci95") or (float("nan"), float("nan")),
                         "test_bacc": head["balanced_accuracy"], "test_auc": head["roc_auc"],
                         "oof_n": oof["n"], "oof_wll": oof["weighted_log_loss"]})
    (w / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n| encoder (resnet18, 64 px) | aggregator | test patients | test weighted log loss (95% CI) | "
          "test balanced acc. | test ROC AUC | OOF patients | OOF weighted log loss | baseline |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lo, hi = r["interval"]
        auc = "-" if r["test_auc"] is None else f"{r['test_auc']:.3f}"
        print(f"| {r['encoder']} | {r['aggregator']} | {r['test_n']} | {r['test_wll']:.3f} ({lo:.3f}-{hi:.3f}) | "
              f"{r['test_bacc']:.3f} | {auc} | {r['oof_n']} | {r['oof_wll']:.3f} | 0.693 |")


if __name__ == "__main__":
    main()

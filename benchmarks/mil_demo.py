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

Issue 15's rows (same protocol, same settings):

- ``--encoder composition --input-size 0``: the built-in composition encoder (named stain, colour,
  area-fraction and texture features) instead of the random-init network;
- ``--aggregators abmil,mean,transmil,dsmil,clam-sb``: the torchmil plugin's aggregators beside them;
- ``--stain-shift 1.0``: also a cohort whose centres' stains are pushed apart (``demo-data
  --stain-shift``), trained leave-centre-out (``--group-by center``, one fold per centre, no test
  set: the headline is the out-of-fold result, each centre scored by the model that never saw it),
  on features embedded without and with ``--stain-normalise macenko``.

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


def prepare(work: Path, signal: str, patients: int, encoder: str, input_size: int | None, train_size: int,
            shift: float = 0.0, normalise: str | None = None) -> Path:
    stem = f"{signal}-shift{shift:g}" if shift else signal
    cohort, tiles = work / f"{stem}-cohort", work / f"{stem}-tiles"
    feats = work / f"{stem}-features{'-' + normalise if normalise else ''}"
    if not (cohort / "train.csv").is_file():
        shifted = ["--stain-shift", shift] if shift else []
        sh([*CLOTCLF, "demo-data", cohort, "--signal", signal, "--patients", patients, "--seed", 0, *shifted, "-q"])
    if not (tiles / "tiles.csv").is_file():
        sh([*CLOTCLF, "tile", cohort / "slides", "--manifest", cohort / "train.csv", "--out", tiles, "--downsample", 2,
            "--tile-size", 224, "--stride", 112, "--train-size", train_size, "--workers", 2])
    size = ["--input-size", input_size] if input_size else []
    norm = ["--stain-normalise", normalise] if normalise else []
    sh([*CLOTCLF, "embed", "--tiles", tiles, "--backbone", encoder, *size, "--out", feats, "--device", "auto",
        "--seed", 0, *norm, "-q"])
    return feats


def run(work: Path, feats: Path, signal: str, aggregator: str, seed: int, split: list[str] | None = None,
        tag: str = "") -> dict:
    out = work / f"{signal}{tag}-{feats.name}-{aggregator}-seed{seed}"
    if not (out / "metrics.json").is_file():
        t0 = time.perf_counter()
        sh([*CLOTCLF, "train", "--features", feats, "--aggregator", aggregator, "--seed", seed, "--out", out, "-q",
            *TRAIN, *(split or [])])
        print(f"{signal}{tag} {feats.name} {aggregator} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    metrics = json.loads((out / "metrics.json").read_text())
    oof = metrics["oof"]["patient"]
    head = metrics["headline"] if metrics["headline"].get("on") == "test" else {**oof, "n_patients": oof["n"]}
    return {"signal": signal + tag, "features": feats.name, "aggregator": aggregator, "seed": seed, "test_n": head["n_patients"],
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
    p.add_argument("--aggregators", default="abmil,mean", help="aggregators to train, each a row (e.g. abmil,mean,transmil,dsmil,clam-sb)")
    p.add_argument("--stain-shift", type=float, default=0.0,
                   help="also a cohort with this --stain-shift, leave-centre-out, without and with --stain-normalise")
    p.add_argument("--stain-signal", default="sparse", help="the signal of the stain-shifted cohort")
    p.add_argument("--stain-aggregators", default="abmil,mean", help="aggregators of the stain-shifted rows")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    aggregators = args.aggregators.split(",")
    for signal in filter(None, args.signals.split(",")):
        feats = prepare(args.work, signal, args.patients, args.encoder, args.input_size or None, args.train_size)
        for seed in map(int, args.seeds.split(",")):
            for aggregator in aggregators:
                rows.append(run(args.work, feats, signal, aggregator, seed))
    if args.stain_shift:
        centre_split = ["--group-by", "center", "--folds", "4", "--test-fraction", "0"]  # the 4 demo centres
        for normalise in (None, "macenko"):
            feats = prepare(args.work, args.stain_signal, args.patients, args.encoder, args.input_size or None,
                            args.train_size, args.stain_shift, normalise)
            for seed in map(int, args.seeds.split(",")):
                for aggregator in args.stain_aggregators.split(","):
                    rows.append(run(args.work, feats, args.stain_signal, aggregator, seed, centre_split,
                                    f"-shift{args.stain_shift:g}-leave-centre-out"))
    aggregators = list(dict.fromkeys(r["aggregator"] for r in rows))
    (args.work / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n| cohort (synthetic) | features | aggregator | seed | test patients | test weighted log loss | test balanced acc. | "
          "test ROC AUC | out-of-fold patients | OOF weighted log loss |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['signal']} | {r['features']} | {r['aggregator']} | {r['seed']} | {r['test_n']} | {r['test_wll']:.3f} | "
              f"{r['test_bacc']:.3f} | {r['test_auc'] if r['test_auc'] is None else round(r['test_auc'], 3)} | {r['oof_n']} | "
              f"{r['oof_wll']:.3f} |")
    print("\n(leave-centre-out rows: 'test' is the out-of-fold result, each centre scored by the fold model that never saw it)")
    print("\n| cohort (synthetic) | features | aggregator | seeds | mean test weighted log loss (min-max) | mean OOF weighted log loss | baseline |")
    print("|---|---|---|---:|---:|---:|---:|")
    for key in dict.fromkeys((r["signal"], r["features"]) for r in rows):
        for aggregator in aggregators:
            mine = [r for r in rows if (r["signal"], r["features"]) == key and r["aggregator"] == aggregator]
            if not mine:
                continue
            test = [r["test_wll"] for r in mine]
            oof = sum(r["oof_wll"] for r in mine) / len(mine)
            print(f"| {key[0]} | {key[1]} | {aggregator} | {len(mine)} | {sum(test) / len(test):.3f} ({min(test):.3f}-{max(test):.3f}) | "
                  f"{oof:.3f} | 0.693 |")


if __name__ == "__main__":
    main()

"""Slide-level (MIL) learning on synthetic cohorts, on held-out patients: what the multiple-instance
defaults, feature standardisation, the encoder, the aggregator and calibration each change.

Cohorts (all **synthetic**; ``--cohorts``):

- ``planted``: a feature store written directly (:mod:`clotclf_core.features.synthetic`, 200
  patients, 64 features, 40-90 tiles a slide): the class in 2-6 tiles of each LAA slide, +4
  standard deviations along one direction; one store per seed;
- ``planted-small``: the same features multiplied by 0.01 (the scale of a random-init encoder's);
- ``sparse`` / ``texture``: ``clotclf demo-data --signal sparse|texture`` slide cohorts (200
  patients, seed 0: the class in 1-2 small spots per LAA slide, or in the texture of the whole
  clot), tiled at the demo geometry (cached at 64 px) and embedded by each ``--encoders`` entry
  (default a frozen random-init timm ``resnet18`` at 64 px; e.g. ``composition`` once installed).

Variants (``--variants``), each ``clotclf train --features … --aggregator A --fold all --folds 5
--test-fraction 0.25 --seed S`` (run in-process without pictures and cards, as
``benchmarks/mil_defaults.py`` runs them: they change no number) with:

- ``before``: what ``--features F --aggregator A`` ran with before this version — the tile-level
  defaults (batch 32, lr 3e-4, 20 epochs, patience 3, weight decay 1e-5) and raw features;
- ``raw``: the multiple-instance defaults (``MIL_DEFAULTS``), ``--standardise off``;
- ``default``: what the command does now — the multiple-instance defaults, standardised features;
- ``temperature`` / ``platt``: ``default`` plus ``--calibrate temperature|platt`` (fitted on the
  out-of-fold patients); the table shows the test loss before -> after.

Reported per run: the headline (the 50 held-out test patients scored by the mean of the 5 fold
models: patient-level weighted log loss with its bootstrap 95 % interval; equal probabilities
score 0.693) and the out-of-fold loss of the other 150 patients; then means over the seeds.
Nothing was chosen on the test patients.

Usage::

    .venv/bin/python benchmarks/mil_demo.py --work /tmp/mil-demo                       # planted cohorts, 3 seeds
    .venv/bin/python benchmarks/mil_demo.py --work /tmp/mil-demo --cohorts sparse,texture \\
        --encoders timm:model=resnet18,composition --aggregators abmil,mean --variants default --seeds 0

Results: docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from mil_defaults import mean_sd, run_all  # the in-process runner of the defaults sweep (same folder)

CLOTCLF = [sys.executable, "-m", "clotclf_core.cli"]
#: the settings each variant gives `clotclf train` beyond --features, --aggregator, --seed and mil_defaults.COMMON
VARIANTS = {
    "before": {"batch_size": 32, "lr": 3e-4, "epochs": 20, "patience": 3, "weight_decay": 1e-5, "standardise": "off"},
    "raw": {"standardise": "off"},
    "default": {},
    "temperature": {"calibrate": "temperature"},
    "platt": {"calibrate": "platt"},
}
IMAGE_COHORTS = ("sparse", "texture")
PLANTED = {"planted": 1.0, "planted-small": 0.01}


def sh(args: list) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{done.stderr[-3000:]}")


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text)


def image_features(work: Path, cohort: str, encoder: str, patients: int, input_size: int | None) -> Path:
    """The demo-data cohort ``cohort`` tiled once, embedded by ``encoder`` (each made once, reused)."""
    slides, tiles, feats = work / f"{cohort}-cohort", work / f"{cohort}-tiles", work / f"{cohort}-{slug(encoder)}"
    if not (slides / "train.csv").is_file():
        sh([*CLOTCLF, "demo-data", slides, "--signal", cohort, "--patients", patients, "--seed", 0, "-q"])
    if not (tiles / "tiles.csv").is_file():
        sh([*CLOTCLF, "tile", slides / "slides", "--manifest", slides / "train.csv", "--out", tiles, "--downsample", 2,
            "--tile-size", 224, "--stride", 112, "--train-size", 64, "--workers", 2])
    size = ["--input-size", input_size] if input_size else []
    sh([*CLOTCLF, "embed", "--tiles", tiles, "--backbone", encoder, *size, "--out", feats, "--device", "auto",
        "--seed", 0, "-q"])
    return feats


def planted_features(work: Path, cohort: str, seed: int, patients: int) -> Path:
    from clotclf_core.features.synthetic import write_planted_store

    out = work / f"{cohort}-seed{seed}"
    if not (out / "features.json").is_file():
        write_planted_store(out, seed=seed, patients=patients, scale=PLANTED[cohort])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the cohorts, features and runs (reused)")
    p.add_argument("--cohorts", default="planted,planted-small", help=f"of {', '.join([*PLANTED, *IMAGE_COHORTS])}")
    p.add_argument("--encoders", default="timm:model=resnet18",
                   help="comma-separated `clotclf embed --backbone` values for the slide cohorts (sparse, texture)")
    p.add_argument("--aggregators", default="abmil,mean")
    p.add_argument("--variants", default="before,raw,default,temperature,platt", help=f"of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2", help="split seeds (planted cohorts: the cohort's seed too)")
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--input-size", type=int, default=64, help="encoder input side for the slide cohorts; 0: the encoder's own")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each on one thread)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    keys, jobs = [], []
    for cohort in args.cohorts.split(","):
        encoders = args.encoders.split(",") if cohort in IMAGE_COHORTS else ["planted"]
        for encoder in encoders:
            for seed in seeds:
                feats = (image_features(args.work, cohort, encoder, args.patients, args.input_size or None)
                         if cohort in IMAGE_COHORTS else planted_features(args.work, cohort, seed, args.patients))
                for variant in args.variants.split(","):
                    for agg in args.aggregators.split(","):
                        keys.append({"cohort": cohort, "encoder": encoder, "variant": variant, "aggregator": agg,
                                     "seed": seed})
                        jobs.append((args.work / "runs" / f"{cohort}-{slug(encoder)}-{variant}-{agg}-seed{seed}",
                                     {"features": str(feats), "aggregator": agg, "seed": seed, **VARIANTS[variant]}))
    rows = [{**k, **r} for k, r in zip(keys, run_all(jobs, args.jobs))]
    (args.work / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\nSynthetic cohorts, held-out patients: test = {rows[0]['test_n']} patients scored by the mean of 5 fold "
          f"models (bootstrap 95 % interval), OOF = {rows[0]['oof_n']} out-of-fold patients; patient-level weighted "
          "log loss, equal probabilities 0.693\n")
    print("| cohort | encoder | variant | aggregator | seed | test (95 % CI) | test before calibration | OOF | ROC AUC |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ci = f" ({r['ci'][0]:.3f}-{r['ci'][1]:.3f})" if r["ci"] else ""
        raw = f"{r['test_raw']:.3f}" if r["test_raw"] is not None else ""
        auc = "n/a" if r["test_auc"] is None else f"{r['test_auc']:.3f}"
        print(f"| {r['cohort']} | {r['encoder']} | {r['variant']} | {r['aggregator']} | {r['seed']} | {r['test']:.3f}{ci} | "
              f"{raw} | {r['oof']:.3f} | {auc} |")
    print("\n| cohort | encoder | variant | aggregator | test, mean ± sd over seeds | before calibration | OOF |")
    print("|---|---|---|---|---:|---:|---:|")
    keys = list(dict.fromkeys((r["cohort"], r["encoder"], r["variant"], r["aggregator"]) for r in rows))
    for key in keys:
        mine = [r for r in rows if (r["cohort"], r["encoder"], r["variant"], r["aggregator"]) == key]
        raw = mean_sd([r["test_raw"] for r in mine]) if mine[0]["test_raw"] is not None else ""
        print(f"| {' | '.join(key)} | {mean_sd([r['test'] for r in mine])} | {raw} | {mean_sd([r['oof'] for r in mine])} |")


if __name__ == "__main__":
    main()

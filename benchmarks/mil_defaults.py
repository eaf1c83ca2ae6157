"""The sweep behind the multiple-instance defaults (``MIL_DEFAULTS`` in clotclf_core/training/settings.py):
bags per batch, learning rate, epochs and patience, weight decay, one at a time around a centre.

The protocol, fixed before any result was looked at:

1. two **synthetic** planted feature stores per seed (:mod:`clotclf_core.features.synthetic`, 200
   patients, 64 features, 40-90 tiles a slide): ``sparse`` (the class in 2-6 tiles of an LAA
   slide, +4 standard deviations along one direction) and ``dense`` (every tile of an LAA slide,
   +0.6 along it); cohort seed = split seed;
2. for each setting, aggregator (abmil, mean) and seed: ``clotclf train --features … --fold all
   --folds 5 --test-fraction 0.25 --seed S`` with the run's defaults (feature standardisation on)
   except the setting swept (run in-process, without the pictures and model cards: they change
   no number);
3. the defaults are chosen on the **out-of-fold** patients (150 per run; mean patient-level weighted
   log loss over cohorts, seeds and both aggregators); the 50 held-out test patients of each run are
   reported beside it and never used to choose.

Usage::

    .venv/bin/python benchmarks/mil_defaults.py --work /tmp/mil-sweep --seeds 0,1,2 --jobs 2   # ~1 h on 2 idle cores

Prints one table per cohort (mean ± std over seeds) and the overall ranking. The results are in
docs/training.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

#: every run: ``clotclf train --features F --aggregator A --seed S --fold all --folds 5 --test-fraction 0.25``
COMMON = {"fold": "all", "folds": 5, "test_fraction": 0.25, "workers": 0, "threads": 1, "device": "cpu"}
#: the centre of the sweep, then each setting moved alone; "tile defaults" is what a MIL run got before
CENTRE = {"batch_size": 8, "lr": 1e-3, "epochs": 40, "patience": 8, "weight_decay": 1e-5}
GRID = {  # slug: (what the table calls it, the settings changed from the centre)
    "centre": ("centre: batch 8, lr 1e-3, 40 epochs, patience 8, wd 1e-5", {}),
    "tile": ("tile defaults: batch 32, lr 3e-4, 20 epochs, patience 3", {"batch_size": 32, "lr": 3e-4, "epochs": 20,
                                                                        "patience": 3}),
    "batch4": ("batch 4", {"batch_size": 4}),
    "batch16": ("batch 16", {"batch_size": 16}),
    "lr3e-4": ("lr 3e-4", {"lr": 3e-4}),
    "lr3e-3": ("lr 3e-3", {"lr": 3e-3}),
    "ep20": ("20 epochs, patience 3", {"epochs": 20, "patience": 3}),
    "ep60": ("60 epochs, patience 12", {"epochs": 60, "patience": 12}),
    "wd1e-2": ("weight decay 1e-2", {"weight_decay": 1e-2}),
}
COHORTS = {"sparse": {"signal": "sparse"}, "dense": {"signal": "dense", "shift": 0.6}}


@contextlib.contextmanager
def no_pictures():
    """Training without its pictures and model cards (half a run's time on a busy CPU; they change no
    number). Patched by name: a renamed function fails here, loudly."""
    from unittest import mock

    names = ["clotclf_core.training.report." + n for n in ("write_pictures", "write_reliability", "_plot_history", "write_card")]
    names += ["clotclf_core.training.crossval." + n for n in ("write_pictures", "write_reliability", "write_card")]
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(mock.patch(name, lambda *a, **k: None))
        yield


def _train_one(job: tuple[str, dict]) -> str:
    """One ``clotclf train`` run (what the command does, in this process: one import for many runs)."""
    out, values = job
    if not (Path(out) / "metrics.json").is_file():
        import torch

        from clotclf_core.training.run import train
        from clotclf_core.training.settings import resolve_settings

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        with no_pictures():
            train(resolve_settings(None, {**COMMON, **values, "out": out}), progress=False)
        print(f"{Path(out).name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


def run_all(jobs: list[tuple[Path, dict]], n_jobs: int) -> list[dict]:
    """Run every ``(out, settings)`` not run yet, ``n_jobs`` at a time (one thread each); each run's
    headline and out-of-fold numbers."""
    todo = [(str(out), values) for out, values in jobs if not (out / "metrics.json").is_file()]
    if todo:
        with multiprocessing.get_context("spawn").Pool(n_jobs, maxtasksperchild=8) as pool:
            for _ in pool.imap_unordered(_train_one, todo):
                pass
    return [read_run(out) for out, _ in jobs]


def read_run(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    head = m["headline"]
    return {"test": head["weighted_log_loss"], "test_n": head["n_patients"], "ci": head.get("weighted_log_loss_ci95"),
            "test_raw": head.get("uncalibrated_weighted_log_loss"), "test_auc": head["roc_auc"],
            "oof": m["oof"]["patient"]["weighted_log_loss"], "oof_n": m["oof"]["patient"]["n"],
            "synthetic": head.get("synthetic"), "disagreement": bool(m.get("disagreement"))}


def planted(work: Path, cohort: str, seed: int, **extra) -> Path:
    """The planted store of ``cohort`` for ``seed`` (made once, reused)."""
    from clotclf_core.features.synthetic import write_planted_store

    name = f"{cohort}-seed{seed}" + "".join(f"-{k}{v}" for k, v in sorted(extra.items()))
    out = work / "stores" / name
    if not (out / "features.json").is_file():
        write_planted_store(out, seed=seed, **COHORTS[cohort], **extra)
    return out


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the stores and runs (reused)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--aggregators", default="abmil,mean")
    p.add_argument("--cohorts", default="sparse,dense")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each on one thread)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    aggregators, cohorts = args.aggregators.split(","), args.cohorts.split(",")
    stores = {(c, s): planted(args.work, c, s) for c in cohorts for s in seeds}
    keys, jobs = [], []
    for slug, (name, change) in GRID.items():
        for c in cohorts:
            for s in seeds:
                for a in aggregators:
                    keys.append({"setting": name, "cohort": c, "aggregator": a, "seed": s})
                    jobs.append((args.work / "runs" / f"{slug}-{c}-{a}-seed{s}",
                                 {"features": str(stores[(c, s)]), "aggregator": a, "seed": s, **CENTRE, **change}))
    results = [{**k, **r} for k, r in zip(keys, run_all(jobs, args.jobs))]
    (args.work / "sweep.json").write_text(json.dumps(results, indent=2))
    n_test, n_oof = results[0]["test_n"], results[0]["oof_n"]
    print(f"\nSynthetic planted feature stores, {len(seeds)} seed(s); patient-level weighted log loss, mean ± std over "
          f"seeds (out-of-fold: {n_oof} patients a run, chooses; test: {n_test} held-out patients, reported only; "
          "equal probabilities 0.693)\n")
    for c in cohorts:
        print(f"| {c} cohort: setting | " + " | ".join(f"{a} OOF | {a} test" for a in aggregators) + " |")
        print("|---|" + "---:|---:|" * len(aggregators))
        for name, _ in GRID.values():
            cells = []
            for a in aggregators:
                mine = [r for r in results if r["setting"] == name and r["cohort"] == c and r["aggregator"] == a]
                cells += [mean_sd([r["oof"] for r in mine]), mean_sd([r["test"] for r in mine])]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()
    print("| setting (ranked by the mean OOF loss over cohorts, seeds and aggregators) | mean OOF | mean test |")
    print("|---|---:|---:|")
    ranked = sorted((name for name, _ in GRID.values()),
                    key=lambda n: statistics.mean(r["oof"] for r in results if r["setting"] == n))
    for name in ranked:
        mine = [r for r in results if r["setting"] == name]
        print(f"| {name} | {statistics.mean(r['oof'] for r in mine):.3f} | {statistics.mean(r['test'] for r in mine):.3f} |")


if __name__ == "__main__":
    main()

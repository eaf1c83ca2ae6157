"""The ``composition`` encoder against a timm ResNet-18 embed: tiles per CPU-second on the same tiles.

Both are built the way ``clotclf embed`` builds an encoder (:func:`clotclf_core.features.encoder.build_encoder`,
frozen, eval mode, on the CPU; ResNet-18 random-init, ``pretrained=False``: the weights do not change
the cost) and called on the same uint8 tiles in batches of ``--batch-size``: to float, normalised
with each one's declared mean / std, forward, float16 features back. The tiles are cut from synthetic
demo slides (:mod:`clotclf_core.demo.cohort`: fibrin, red cells, nuclei, glass), ``--size`` px.

Reported per encoder, best of ``--repeats`` rounds (run alternately): tiles per CPU-second (process
CPU time, all threads: what a CPU-bound ``clotclf embed`` pays), tiles per wall-second, and the
ratio composition / ResNet-18. With ``--stain-normalise macenko`` the per-slide normalisation is
timed too (fitted once per slide on 16 of its tiles, then applied to each batch).

Usage::

    .venv/bin/python benchmarks/composition.py                       # 224 px, 256 tiles, ~2 min on 2 cores
    .venv/bin/python benchmarks/composition.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def demo_tiles(n: int, size: int) -> np.ndarray:
    from clotclf_core.demo.cohort import plan_cohort
    from clotclf_core.demo.paint import render_slide

    tiles = []
    for slide in plan_cohort(0, 8):
        img = render_slide(slide)
        h, w = img.shape[:2]
        for y in range(h // 4, 3 * h // 4 - size, size):
            for x in range(w // 4, 3 * w // 4 - size, size):
                tiles.append(img[y:y + size, x:x + size])
        if len(tiles) >= n:
            break
    return np.stack(tiles[:n])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--tiles", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--stain-normalise", default=None, help="also time this normalisation (e.g. macenko)")
    args = p.parse_args()
    import torch

    from clotclf_core.features.encoder import build_encoder
    from clotclf_core.tiling.stain import SlideNormaliser, parse_stain_normalise, sample_rows

    if args.threads:
        torch.set_num_threads(args.threads)
    tiles = demo_tiles(args.tiles, args.size)
    encoders = {
        "composition": build_encoder("composition", {}, tile_size=args.size, device="cpu"),
        "timm resnet18": build_encoder("timm", {"model": "resnet18", "pretrained": False}, tile_size=args.size, device="cpu"),
    }
    stages = dict(encoders)
    target = parse_stain_normalise(args.stain_normalise)
    if target is not None:
        stages[f"{target.method} normalisation"] = None

    def run(name: str) -> tuple[float, float]:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if stages[name] is None:  # per-slide normalisation: one fit per 64 tiles (a small slide), then the batches
            for start in range(0, len(tiles), 64):
                slide = tiles[start:start + 64]
                norm = SlideNormaliser.fit(target, slide[sample_rows(len(slide))])
                for b in range(0, len(slide), args.batch_size):
                    norm(slide[b:b + args.batch_size])
        else:
            for start in range(0, len(tiles), args.batch_size):
                stages[name](tiles[start:start + args.batch_size])
        return time.process_time() - cpu0, time.perf_counter() - wall0

    for name, stage in stages.items():  # warm-up
        run(name) if stage is None else stage(tiles[:2])
    best: dict[str, tuple[float, float]] = {}
    for r in range(args.repeats):
        for name in (list(stages) if r % 2 == 0 else list(reversed(stages))):
            cpu, wall = run(name)
            old = best.get(name)
            best[name] = (min(cpu, old[0]), min(wall, old[1])) if old else (cpu, wall)
            print(f"round {r}: {name}: {cpu:.2f} CPU-s, {wall:.2f} s", file=sys.stderr)
    n = len(tiles)
    ref = n / best["timm resnet18"][0]
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); {n} synthetic tiles of {args.size} px, batches of {args.batch_size}, "
          f"best of {args.repeats}\n")
    print("| stage | features | tiles per CPU-second | tiles per second (wall) | CPU-s per tile vs ResNet-18 |")
    print("|---|---:|---:|---:|---:|")
    for name, (cpu, wall) in best.items():
        feats = stages[name].num_features if stages[name] is not None else "-"
        print(f"| {name} | {feats} | {n / cpu:.1f} | {n / wall:.1f} | {ref / (n / cpu):.2f} |")


if __name__ == "__main__":
    main()

"""Embedding throughput: `clotclf embed` against a bare torch.inference_mode loop, same encoder, same tiles.

Two measurements, in one run, alternating:

- ``bare``: the encoder module alone over the TileSet's memory-mapped tiles, in batches of
  ``--batch-size`` that run across slides: read a batch, to the device, normalise, forward under
  ``torch.inference_mode`` (bf16 autocast + channels-last on CUDA, like clotclf), features to the
  host as float16. Nothing is written. The ceiling.
- ``clotclf``: :func:`clotclf_core.features.embed.embed_tileset` — what `clotclf embed` runs — with the same
  built encoder: read-ahead thread, batches that never cross a slide (so a resumed run writes the
  same bytes), one float16 matrix + rows + features.json committed atomically per slide, into a
  fresh folder each round.

Building the encoder and hashing its weights happen once per command and are reported on their
own line (not in images/s). The TileSet is synthetic (random pixels; slides of 20 to 140 tiles).

Each round runs both, in alternating order; the headline ratio is the median over rounds of
``clotclf / bare`` within a round, which a shared machine's load disturbs far less than comparing
the best of each (also printed). CPU time (all threads of the process, ``time.process_time``)
per image is printed too: on a busy machine it moves less than wall time.

Usage::

    .venv/bin/python benchmarks/embed.py                              # CPU: convnext_atto at 224 px, ~2 min on 2 cores
    .venv/bin/python benchmarks/embed.py --device cuda --tiles 20000  # GPU
    .venv/bin/python benchmarks/embed.py --backbone timm --opt model=vit_small_patch16_224

Prints a markdown table (paste it into docs/performance.md); ``--json`` prints the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backbone", default="timm", help="backbone plugin of the encoder")
    p.add_argument("--opt", action="append", default=None, metavar="KEY=VALUE", help="encoder option (default: model=convnext_atto)")
    p.add_argument("--size", type=int, default=224, help="tile side in pixels (the TileSet's cache size)")
    p.add_argument("--tiles", type=int, default=None, help="tiles in the synthetic TileSet (default: 20000 on CUDA, 160 on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    p.add_argument("--input-size", type=int, default=None, help="encoder input side (default: what it declares, else the tile size)")
    p.add_argument("--repeats", type=int, default=9, help="timed rounds, each running both (in alternating order)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p.parse_args()


def make_tiles(root: Path, n: int, size: int) -> Path:
    """A TileSet of ``n`` random tiles in slides of 20-140 tiles (the demo cohort's range and more)."""
    from clotclf_core.tiling.writer import TileSetWriter

    rng = np.random.default_rng(0)
    writer = TileSetWriter(root, {"benchmark": True}, size)
    left, s = n, 0
    while left > 0:
        k = min(left, int(rng.integers(20, 141)))
        pixels = rng.integers(0, 256, (k, size, size, 3), dtype=np.uint8)
        rows = [{"patient_id": f"p{s // 2}", "center_id": "c0", "label": "CE" if s % 2 else "LAA", "x": 0, "y": i,
                 "size": size, "downsample": 1.0} for i in range(k)]
        writer.add_slide(f"s{s:03d}", pixels, rows, {})
        left -= k
        s += 1
    return root


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(enc, ts, batch: int) -> tuple[float, float]:
    """(images/s, CPU s per image) of the encoder module over every tile, batches across slides, nothing written."""
    import torch

    from clotclf_core.models.inputs import to_input

    module, device = enc.module, enc.device
    mean, std = enc.spec.mean, enc.spec.std
    arrays = [ts.pixels(i) for i in sorted(ts.index["image_id"].unique())]
    n = sum(len(a) for a in arrays)
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if enc.precision == "bf16" else torch.autocast("cpu", enabled=False)
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    pending: list[np.ndarray] = []
    have = 0

    def run(chunk: np.ndarray) -> None:
        x = to_input(torch.from_numpy(chunk), mean, std, device, channels_last=device.type == "cuda",
                     size=enc.input_size, nhwc=True)
        with torch.inference_mode(), cast:
            out = module(x)
        out.to(torch.float16).cpu().numpy()

    for arr in arrays:
        for start in range(0, len(arr), batch):
            part = np.array(arr[start:start + batch])
            pending.append(part)
            have += len(part)
            while have >= batch:
                chunk = np.concatenate(pending)
                run(chunk[:batch])
                rest = chunk[batch:]
                pending, have = ([rest] if len(rest) else []), len(rest)
    if have:
        run(np.concatenate(pending))
    sync(device)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n


def clotclf_embed(enc, tiles: Path, out: Path, batch: int) -> tuple[float, float]:
    """(images/s, CPU s per image) of embed_tileset (the `clotclf embed` command's work) into a fresh folder."""
    from clotclf_core.features.embed import embed_tileset

    shutil.rmtree(out, ignore_errors=True)
    sync(enc.device)
    t0, c0 = time.perf_counter(), time.process_time()
    summary = embed_tileset(tiles, out, enc.backbone, encoder=enc, batch_size=batch, progress=False)
    sync(enc.device)
    return summary["tiles"] / (time.perf_counter() - t0), (time.process_time() - c0) / summary["tiles"]


def main() -> None:
    args = parse_args()
    import torch

    from clotclf_core.config import parse_key_values
    from clotclf_core.features.encoder import build_encoder
    from clotclf_core.models.runtime import pick_runtime
    from clotclf_core.tiling.tileset import TileSet

    rt = pick_runtime(args.device)
    cuda = rt.device.type == "cuda"
    batch = args.batch_size or (256 if cuda else 32)
    n = args.tiles or (20000 if cuda else 160)
    options = parse_key_values(args.opt or ["model=convnext_atto"], "--opt")
    with tempfile.TemporaryDirectory(prefix="clotclf-bench-embed-") as tmp:
        t0 = time.perf_counter()
        tiles = make_tiles(Path(tmp) / "tiles", n, args.size)
        ts = TileSet(tiles)
        n_slides = ts.index["image_id"].nunique()
        print(f"synthetic TileSet: {n} tiles of {args.size} px in {n_slides} slides ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        t0 = time.perf_counter()
        enc = build_encoder(args.backbone, options, tile_size=ts.tile_size, input_size=args.input_size, device=args.device)
        build_s = time.perf_counter() - t0
        params = sum(p.numel() for p in enc.module.parameters()) / 1e6
        bare_loop(enc, ts, batch)  # warm-up: allocator, cudnn autotune, page cache
        bares, ours, bare_cpu, our_cpu = [], [], [], []
        for r in range(args.repeats):  # both in each round, order alternating: paired under the same load
            runs = [("bare", lambda: bare_loop(enc, ts, batch)),
                    ("ours", lambda: clotclf_embed(enc, tiles, Path(tmp) / "features", batch))]
            for which, fn in (runs[::-1] if r % 2 else runs):
                speed, cpu = fn()
                (bares if which == "bare" else ours).append(speed)
                (bare_cpu if which == "bare" else our_cpu).append(cpu)
            print(f"round {r + 1}: bare {bares[-1]:.1f}, clotclf embed {ours[-1]:.1f} images/s", file=sys.stderr)
    bare, mine = max(bares), max(ours)
    ratio = float(np.median(np.array(ours) / np.array(bares)))
    cpu_ratio = float(np.median(np.array(bare_cpu) / np.array(our_cpu)))
    info = {
        "device": torch.cuda.get_device_name(rt.device) if cuda else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "encoder": f"{args.backbone} {options}",
        "params_m": round(params, 2), "input_size": enc.input_size, "tile_size": args.size, "tiles": n, "slides": int(n_slides),
        "batch": batch, "precision": enc.precision, "build_and_hash_s": round(build_s, 2),
        "ratio_median_of_rounds": ratio, "ratio_of_bests": mine / bare, "cpu_ratio_median_of_rounds": cpu_ratio,
        "cpu_s_per_image": {"bare": float(np.median(bare_cpu)), "clotclf": float(np.median(our_cpu))},
    }
    rows = [{"what": "bare torch.inference_mode loop (batches across slides, nothing written)", "images_per_s": bare,
             "all": [round(b, 1) for b in bares]},
            {"what": "clotclf embed (embed_tileset: read-ahead, per-slide batches, atomic commits)", "images_per_s": mine,
             "vs_bare": mine / bare, "all": [round(o, 1) for o in ours]}]
    if args.json:
        print(json.dumps({"info": info, "rows": rows}, indent=2))
        return
    print(f"\n{info['device']}, torch {info['torch']} ({info['torch_threads']} threads); encoder {info['encoder']} "
          f"({params:.1f} M parameters) at {enc.input_size} px, {n} tiles of {args.size} px in {n_slides} slides, "
          f"batch {batch}, {enc.precision}\n")
    print("| measurement | images/s | vs bare | every round |")
    print("|---|---:|---:|---|")
    for r in rows:
        vs = f"{r['vs_bare']:.2f}" if "vs_bare" in r else "1.00"
        print(f"| {r['what']} | {r['images_per_s']:.1f} | {vs} | {', '.join(map(str, r['all']))} |")
    print(f"\nclotclf embed / bare: median over rounds {ratio:.2f}, best / best {mine / bare:.2f} (target >= 0.9); "
          f"CPU time per image (median): bare {1000 * np.median(bare_cpu):.0f} ms, clotclf {1000 * np.median(our_cpu):.0f} ms "
          f"(ratio {cpu_ratio:.2f}); "
          f"building the encoder and hashing its weights: {build_s:.1f} s once per command")


if __name__ == "__main__":
    main()

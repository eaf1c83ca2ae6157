"""`clotclf pretrain` images/s against a bare loop of the same self-supervised method.

Both sides train the same network (``clotclf_core.training.ssl.build_method`` on the same backbone
and heads) on the same tiles with the same lightly transform, AdamW, batch size, DataLoader worker
count and thread count, for the same number of steps; the second epoch of each is timed (the first
warms up the workers and the allocator). The bare loop is lightly's own example loop: a Dataset
that returns ``transform(image)``, ``for views in loader: loss = model(views); loss.backward();
opt.step(); opt.zero_grad()`` plus the momentum update — no per-tile seeding, no schedule, no
clipping, no checkpoints, no history. clotclf's side is :func:`clotclf_core.training.pretrain.pretrain`
itself (its ``images_per_s`` of epoch 2 in the history, which times the training steps and their
loader, not the checkpoint written after them). Each round runs both; the ratio reported is the
median over rounds of clotclf / bare within a round (a shared machine disturbs both alike).
Target: ratio >= 0.9.

    .venv/bin/python benchmarks/pretrain.py                      # CPU
    .venv/bin/python benchmarks/pretrain.py --device cuda --tiles 4096 --size 224 --batch-size 128 --workers 8
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_tiles(root: Path, n: int, size: int) -> Path:
    from tilesets import make_tileset

    per = 64
    sizes = [per] * (n // per) + ([n % per] if n % per else [])
    return make_tileset(root, sizes=tuple(sizes), tile=size, empty={})


def clotclf_side(tiles: Path, out: Path, args, method: str) -> float:
    from clotclf_core.training.pretrain import pretrain
    from clotclf_core.training.pretrain_settings import resolve_pretrain_settings

    s = resolve_pretrain_settings(overrides={
        "tilesets": [str(tiles)], "out": str(out), "method": method, "backbone": "timm",
        "backbone_options": {"model": args.model}, "epochs": 2, "batch_size": args.batch_size, "val_tiles": 0,
        "workers": args.workers, "threads": args.threads, "device": args.device,
        "head_hidden_dim": args.head, "head_output_dim": args.head_out, "head_bottleneck_dim": 64})
    history = pretrain(s, progress=False)["history"]
    return float(history[-1]["images_per_s"])


class _Plain:
    """lightly's example Dataset: an image -> its views (nothing seeded)."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i]))


def bare_side(tiles: Path, args, method: str) -> float:
    import torch

    from clotclf_core.models.runtime import pick_runtime
    from clotclf_core.tiling.tileset import TileSet
    from clotclf_core.training.pretrain import build_backbone, local_crop_size
    from clotclf_core.training.pretrain_settings import resolve_pretrain_settings
    from clotclf_core.training.ssl import build_method
    from clotclf_core.training.ssl_data import collate_views, make_transform

    torch.set_num_threads(args.threads)
    s = resolve_pretrain_settings(overrides={
        "tilesets": [str(tiles)], "method": method, "backbone": "timm", "backbone_options": {"model": args.model},
        "batch_size": args.batch_size, "head_hidden_dim": args.head, "head_output_dim": args.head_out,
        "head_bottleneck_dim": 64})
    ts = TileSet(tiles)
    images = np.concatenate([np.asarray(ts.pixels(i)) for i in sorted(ts.index["image_id"].unique())])
    rt = pick_runtime(args.device)
    torch.manual_seed(0)
    _, backbone, _ = build_backbone(s, ts.tile_size)
    model = build_method(method, backbone, backbone.num_features, s).to(rt.device)
    transform = make_transform(s, ts.tile_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                               local_crop_size(ts.tile_size, backbone))
    loader = torch.utils.data.DataLoader(_Plain(images, transform), batch_size=args.batch_size, shuffle=True,
                                         drop_last=True, num_workers=args.workers, collate_fn=collate_views,
                                         persistent_workers=args.workers > 0, pin_memory=rt.device.type == "cuda")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr)
    steps, seen, seconds = len(loader), 0, 0.0
    for epoch in range(2):
        model.train()
        model.epoch = epoch
        t0, n = time.perf_counter(), 0
        for i, views in enumerate(loader):
            model.update_teacher(epoch * steps + i, 2 * steps)
            views = [v.to(rt.device, non_blocking=True) for v in views]
            with rt.autocast():
                loss = model(views)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            n += views[0].shape[0]
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        seen, seconds = n, time.perf_counter() - t0
    return seen / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="simclr,mocov3,dino")
    ap.add_argument("--model", default="resnet18", help="timm backbone")
    ap.add_argument("--tiles", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--head", type=int, default=512, help="projection head width")
    ap.add_argument("--head-out", type=int, default=128, help="projection head output")
    ap.add_argument("--repeats", type=int, default=3, help="rounds, each running both sides; the median ratio is reported")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clotclf-bench-pretrain-"))
    try:
        tiles = make_tiles(work / "tiles", args.tiles, args.size)
        print("| method | device | backbone | tiles x px | batch | clotclf pretrain img/s | bare loop img/s | ratio |")
        print("|---|---|---|---|---:|---:|---:|---:|")
        for method in args.methods.split(","):
            ours, bare = [], []
            for r in range(args.repeats):  # alternating, so other jobs on a shared machine disturb both alike
                bare.append(bare_side(tiles, args, method))
                ours.append(clotclf_side(tiles, work / f"run-{method}-{r}", args, method))
            ratio = float(np.median([o / b for o, b in zip(ours, bare)]))  # within a round, then the median
            print(f"| {method} | {args.device} | {args.model} | {args.tiles} x {args.size} | {args.batch_size} | "
                  f"{np.median(ours):.1f} | {np.median(bare):.1f} | {ratio:.2f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""``clotclf pretrain``: self-supervised pre-training of a backbone on a cohort's own tiles,
labelled or not, on the shared training loop.

    pretrain(resolve_pretrain_settings(overrides={"tiles": ["tiles/", "other-tiles/"], "method": "dino",
                                                  "backbone": "timm", "backbone_options": {"model": "resnet18"}}))

1. Everything that can refuse the run, before anything is written: the TileSets (one geometry),
   the backbone (it must give one feature vector per tile, and take the views' sizes), lightly.
2. The method (:mod:`clotclf_core.training.ssl`) on the views (:mod:`clotclf_core.training.ssl_data`),
   trained by :class:`~clotclf_core.training.loop.Trainer` — AdamW, cosine schedule, clipping,
   AMP (bf16) and channels-last on CUDA, DDP under ``torchrun`` / ``--nproc``, checkpoints every
   epoch and a bit-identical ``--resume`` — keeping the last epoch.
3. The run directory (what ``--backbone run:PATH`` and the registry take): ``model.safetensors``
   (the student backbone's weights alone), ``config.json`` (``kind: backbone``: the component,
   its options and provider, the input size and normalisation, the scale of the tiles, the
   method and its settings, the TileSets), ``metrics.json``, ``history.csv``, ``training.yaml``,
   ``README.md``, ``checkpoints/``.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from clotclf_core import __version__
from clotclf_core.plugin.errors import ClotclfError, Interrupted
from clotclf_core.plugin.io import write_guard, write_json, write_text
from clotclf_core.training.checkpoints import LAST, RESUME_HINT, checkpoint_state
from clotclf_core.training.pretrain_settings import PretrainSettings

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.tiling.tileset import TileSet

#: the tiling settings that decide what a tile shows (its scale and side): one value per pre-training run
GEOMETRY = ("downsample", "tile_size", "tile_um")


def settings_record(s: PretrainSettings) -> dict[str, Any]:
    return s.model_dump(mode="json")


def default_out(s: PretrainSettings) -> str:
    name = s.backbone.removeprefix("run:").rstrip("/").split("/")[-1]
    return str(Path("runs") / f"pretrain-{s.method}-{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def _um_per_px(ts: "TileSet") -> float | None:
    values = [float(v["um_per_pixel"]) for v in ts.slides.values()
              if v.get("status") == "done" and isinstance(v.get("um_per_pixel"), (int, float)) and v["um_per_pixel"] > 0]
    return statistics.median(values) if values else None


def open_tilesets(paths: list[str]) -> list["TileSet"]:
    """The TileSets, refused in one line when one is empty or they are not cut the same way."""
    from clotclf_core.tiling.tileset import open_tileset

    tilesets = [open_tileset(p, "--tiles") for p in paths]
    first = tilesets[0]
    for ts in tilesets:
        if len(ts) == 0:
            raise ClotclfError(f"--tiles '{ts.root}' holds no tiles; check `clotclf tile`'s summary")
    want = _geometry(first)
    for ts in tilesets[1:]:
        got = _geometry(ts)
        um_a, um_b = _um_per_px(first), _um_per_px(ts)
        other_scale = um_a and um_b and abs(math.log(um_a / um_b)) > math.log(1.05)
        if got != want or other_scale:
            raise ClotclfError(
                f"--tiles '{ts.root}' was cut with another geometry ({_shown(got, um_b)}) than '{first.root}' "
                f"({_shown(want, um_a)}): one pre-training run learns from tiles of one size and scale. Tile the slides "
                f"again with the same `clotclf tile` settings (--downsample / --tile-size or --tile-um, --train-size)")
    return tilesets


def _geometry(ts: "TileSet") -> dict[str, Any]:
    return {"train_size": ts.tile_size, **{k: ts.settings.get(k) for k in GEOMETRY}}


def _shown(geometry: dict[str, Any], um: float | None) -> str:
    parts = [f"{k} {v}" for k, v in geometry.items() if v is not None]
    return ", ".join(parts + ([f"{um:.3g} um/px"] if um else []))


def check_out(run_dir: Path, resume: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ClotclfError(f"--out '{run_dir}' is a file, not a folder: choose a folder for the run directory")
    started = (run_dir / "training.yaml").is_file()
    if resume and not started:
        raise ClotclfError(f"--resume: '{run_dir}' holds no pre-training run to resume (no training.yaml); start it "
                           "without --resume")
    if not resume and started:
        raise ClotclfError(f"--out '{run_dir}' already holds a pre-training run: add --resume to continue it, or choose "
                           "another --out")


def build_backbone(s: PretrainSettings, size: int):
    """The backbone to pre-train (a plugin's, or a run to continue), seeded, with the spec it came from."""
    from clotclf_core.models.backbones import backbone_spec

    spec = backbone_spec(s.backbone)
    values = dict(s.backbone_options)
    if "img_size" in spec.options.model_fields and values.get("img_size") is None:
        values["img_size"] = size  # as `clotclf train` does: built for the views' size
    opts = spec.validate_options(values)
    try:
        module = spec.factory(opts)
    except ClotclfError:
        raise
    except Exception as exc:  # a factory's own error: name the options, not a traceback
        raise ClotclfError(f"backbone '{s.backbone}' cannot be built from these options ({type(exc).__name__}: "
                           f"{str(exc)[:200]}); check them with `clotclf show-plugin {s.backbone}`") from None
    recorded = getattr(module, "clotclf_record_options", None)
    return spec, module, opts.model_dump(mode="json") | (recorded if isinstance(recorded, dict) else {})


def local_crop_size(size: int, backbone) -> int:
    """DINO's local crop side: 96/224 of the global one (the paper's), a multiple of the backbone's
    patch size when it has one (a ViT's tokens must tile the crop)."""
    patch = 1
    for module in backbone.modules():
        found = getattr(module, "patch_size", None)
        found = found[0] if isinstance(found, (tuple, list)) and found else found
        if isinstance(found, int) and found > 1:
            patch = found
            break
    return max(patch, round(size * 96 / 224 / patch) * patch, 8)


def check_features(name: str, module, sizes: list[int]) -> int:
    """The backbone gives one feature vector per image, ``(B, num_features)``, at every view size."""
    import torch

    num = getattr(module, "num_features", None)
    if not isinstance(num, int) or isinstance(num, bool) or num <= 0:
        raise ClotclfError(f"backbone '{name}' has no feature output (no positive integer num_features): pre-training "
                           "needs a backbone that maps images to one feature vector each (see docs/plugins.md, Backbone)")
    was = module.training
    module.eval()
    try:
        for size in sorted(set(sizes)):
            try:
                with torch.no_grad():
                    out = module(torch.zeros(2, 3, size, size))
            except Exception as exc:
                raise ClotclfError(
                    f"backbone '{name}' cannot take {size}x{size} views ({type(exc).__name__}: {str(exc)[:160]})"
                    + ("; DINO's local crops are that small: give the backbone a dynamic input size (timm ViTs: "
                       "--backbone-opt dynamic_img_size=true) or use --local-views 0" if size != max(sizes) else
                       "; set --input-size to a size it takes")) from None
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ClotclfError(
                    f"backbone '{name}' returns {shape} for 2 images, not pooled features (2, num_features={num}): "
                    "pre-training needs one feature vector per tile (a timm ViT: drop global_pool='', or use "
                    "global_pool=token / avg)")
    finally:
        module.train(was)
    return num


def pretrain(s: PretrainSettings, resume: bool = False, progress: bool = True,
             after_train_epoch: Callable[[int, Any], None] | None = None) -> dict[str, Any]:
    """Run the pre-training ``s`` describes; returns the summary (what ``--json`` prints)."""
    import numpy as np
    import torch
    import yaml

    from clotclf_core.models.inputs import input_spec
    from clotclf_core.models.runtime import pick_runtime
    from clotclf_core.seeds import seed_model_init
    from clotclf_core.training.distributed import barrier, broadcast, init_distributed
    from clotclf_core.training.loop import Trainer
    from clotclf_core.training.settings import settings_dict
    from clotclf_core.training.ssl import _lightly, build_method
    from clotclf_core.training.ssl_data import PretrainTask, SSLTiles, make_transform, split_refs, tile_refs

    _lightly()
    if s.threads:
        torch.set_num_threads(s.threads)
    rank, world, local_rank = init_distributed(s.device)
    rt = pick_runtime(s.device, s.precision, s.channels_last, rank, world, local_rank)
    t0 = time.perf_counter()
    tilesets = open_tilesets(s.tilesets)
    size = s.input_size or tilesets[0].tile_size
    if not s.out:
        s = s.model_copy(update={"out": broadcast(rt, default_out(s))})
    run_dir = Path(s.out)
    check_out(run_dir, resume)
    seed_model_init(s.seed, 0)
    spec, backbone, options = build_backbone(s, size)
    local = local_crop_size(size, backbone)
    dim = check_features(s.backbone, backbone, [size] + ([local] if s.method == "dino" and s.local_views else []))
    declared = input_spec(backbone, spec.name)
    model = build_method(s.method, backbone, dim, s, distributed=rt.distributed)
    refs, slides = tile_refs(tilesets, s.max_tiles_per_slide, s.seed)
    train_refs, val_refs = split_refs(refs, s.val_tiles, s.seed)
    transform = make_transform(s, size, declared.mean, declared.std, local)
    train_set = SSLTiles(tilesets, train_refs, slides, transform)
    val_set = SSLTiles(tilesets, val_refs, slides, transform, fixed_seed=s.seed) if len(val_refs) else None
    task = PretrainTask(s, model, train_set, val_set, rt)
    if task.steps == 0:
        raise ClotclfError(f"--tiles hold {len(train_refs)} training tile(s), fewer than --batch-size {s.batch_size} "
                           f"per process: lower --batch-size (at least 2) or add tiles")
    if rt.is_main:
        with write_guard("the pre-training run", run_dir, after=RESUME_HINT):
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "training.yaml", yaml.safe_dump(settings_dict(s), sort_keys=False))
    barrier(rt)
    trainer = Trainer(s, model, task, 0, run_dir, rt, progress, keep_last=True)
    try:
        if resume and not trainer.resume(settings_dict(s)):
            raise ClotclfError(f"--resume: '{run_dir}' has no checkpoint yet ({run_dir / 'checkpoints' / LAST}); start "
                               "it again without --resume")
        trainer.fit(after_train_epoch)
    except KeyboardInterrupt:
        state = checkpoint_state(run_dir / "checkpoints" / LAST)
        kept = f"up to epoch {int(state['epoch']) + 1}" if state else "nothing (no epoch had finished)"
        raise Interrupted(f"pre-training interrupted (Ctrl-C). Kept in '{run_dir}': {kept}. Continue with the same "
                          "command plus --resume; it gives the result the uninterrupted run would have given") from None
    summary = {"run_dir": str(run_dir), "method": s.method, "backbone": spec.name, "num_features": dim,
               "input_size": size, "tiles": int(len(train_refs)), "val_tiles": int(len(val_refs)),
               "epochs": len(trainer.history), "history": trainer.history}
    if rt.is_main:
        record = {"tilesets": [_tileset_record(ts) for ts in tilesets], "input": {"input_size": size,
                  "mean": list(declared.mean), "std": list(declared.std)}}
        um = _um_per_px(tilesets[0])
        info = _encoder_info(spec, options, dim, size, declared, um * tilesets[0].tile_size / size if um else None)
        summary["weights_sha256"] = write_run(run_dir, s, spec, model.backbone, options, record, info, trainer.history,
                                              np.mean([h["images_per_s"] for h in trainer.history]) if trainer.history else 0.0)
    barrier(rt)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def _tileset_record(ts: "TileSet") -> dict[str, Any]:
    from clotclf_core.features.store import tileset_fingerprint
    from clotclf_core.tiling.tileset import tileset_is_synthetic

    return {"path": str(Path(ts.root).resolve()), "fingerprint": tileset_fingerprint(ts.settings, ts.tile_size),
            "tiles": int(len(ts)), "slides": int(ts.index["image_id"].nunique()), "tile_pixels": int(ts.tile_size),
            "um_per_pixel": _um_per_px(ts), "synthetic": bool(tileset_is_synthetic(ts))}


def _encoder_info(spec, options: dict[str, Any], dim: int, size: int, declared, um: float | None) -> dict[str, Any]:
    """The run's :class:`~clotclf_core.plugin.encoders.EncoderInfo`: its own input and scale; the
    licence of the weights it started from (a preset's terms carry over to weights trained from them)."""
    from clotclf_core.plugin.encoders import encoder_info

    base = encoder_info(spec.extra)
    started = bool(options.get("pretrained")) or "backbone_run" in spec.extra
    if base is not None and started:
        licence, redistribution, gated = f"{base.licence} (trained on from {base.repo})", base.redistribution, base.gated
    elif started:
        licence, redistribution, gated = f"that of the weights '{spec.name}' started from", "unknown", None
    else:
        licence, redistribution, gated = "none: trained from a random initialisation by clotclf pretrain", "yes", False
    pooling = base.pooling if base is not None else "mean"
    return {"repo": "(local run)", "loader": "clotclf pretrain", "embedding_dim": dim, "input_size": size,
            "mean": list(declared.mean), "std": list(declared.std), "um_per_px": round(um, 4) if um else None,
            "licence": licence, "gated": gated, "redistribution": redistribution, "pooling": pooling,
            "poolings": [pooling], "source": "this run's config.json", "notes": "the scale of the tiles it learnt from"}


def write_run(run_dir: Path, s: PretrainSettings, spec, backbone, options: dict[str, Any], record: dict[str, Any],
              info: dict[str, Any], history: list[dict[str, Any]], images_per_s: float) -> str:
    """model.safetensors (the student backbone), then config.json naming it, metrics.json, README.md."""
    from huggingface_hub import ModelCardData

    from clotclf_core.models.backbones import BACKBONE_KIND
    from clotclf_core.models.card import BASE_TAGS, assemble
    from clotclf_core.plugin.hookspecs import PLUGIN_API_VERSION
    from clotclf_core.plugin.weights import save_weights

    digest = save_weights(backbone, run_dir / "model.safetensors",
                          {"kind": BACKBONE_KIND, "backbone": spec.name, "method": s.method})
    synthetic = any(t["synthetic"] for t in record["tilesets"])
    provider = {"name": spec.name, "plugin": spec.plugin, "distribution": spec.distribution, "version": spec.version}
    if isinstance(spec.extra.get("backbone_run"), dict):
        provider["backbone_run"] = dict(spec.extra["backbone_run"])
    last = history[-1] if history else {}
    config = {"kind": BACKBONE_KIND, "clotclf_version": __version__, "plugin_api": PLUGIN_API_VERSION,
              "backbone": spec.name, "backbone_options": options, "plugins": {"backbone": provider},
              # what the weights are, for the registry and the card (the fields above rebuild them)
              "model": {"kind": BACKBONE_KIND, "backbone": spec.name, "num_features": int(backbone.num_features),
                        **record["input"]},
              "num_features": int(backbone.num_features), **record, "encoder": info,
              "pretrain": {"method": s.method, "settings": settings_record(s), "epochs": len(history)},
              "synthetic": synthetic, "weights_sha256": digest}
    metrics = {"pretrain": {"method": s.method, "epochs": len(history), "train_loss": last.get("train_loss"),
                            "val_ssl_loss": last.get("val_ssl_loss"), "images_per_s": round(float(images_per_s), 1)}}
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "metrics.json", metrics)
    data = ModelCardData(library_name="clotclf", tags=BASE_TAGS + ["self-supervised", s.method, spec.name]
                         + (["synthetic-data"] if synthetic else []))
    body = (f"# {run_dir.name}\n\nA {spec.name} backbone pre-trained with {s.method} by `clotclf pretrain` on "
            f"{sum(t['tiles'] for t in record['tilesets'])} tiles of {len(record['tilesets'])} TileSet(s)"
            + (" (**synthetic** data)" if synthetic else "") + f", {len(history)} epochs. No labels were used.\n\n"
            f"Use it as a backbone: `clotclf embed --tiles TILES --backbone run:PATH --out FEATURES`, or "
            f"`clotclf train --backbone run:PATH`. Licence of the weights: {info['licence']}.\n")
    write_text(run_dir / "README.md", str(assemble(data, body)))
    return digest


def launch_pretrain(s: PretrainSettings, nproc: int, resume: bool, quiet: bool, as_json: bool = False) -> None:
    """``clotclf pretrain --nproc N``: the run's own checks here, then N processes started by torch's
    launcher (``torchrun --standalone``) on the resolved settings (written to RUN/launch.yaml)."""
    import os
    import subprocess

    import yaml

    from clotclf_core.training.settings import settings_dict

    if nproc < 2:
        raise ClotclfError(f"--nproc must be at least 2 for data-parallel pre-training (got {nproc}); leave it out for one process")
    open_tilesets(s.tilesets)
    s = s if s.out else s.model_copy(update={"out": default_out(s)})
    run_dir = Path(s.out)
    check_out(run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    launch = run_dir / "launch.yaml"
    write_text(launch, yaml.safe_dump(settings_dict(s), sort_keys=False))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "clotclf_core.cli", "pretrain", "--config", str(launch)]
    cmd += (["--resume"] if resume else []) + (["--json"] if as_json else ["--quiet"] if quiet else [])
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    code = subprocess.run(cmd, env=env).returncode
    launch.unlink(missing_ok=True)
    if code != 0:
        raise ClotclfError(f"data-parallel pre-training failed (exit code {code}); the first error is printed above")


def format_summary(summary: dict[str, Any]) -> str:
    last = summary["history"][-1] if summary["history"] else {}
    return (f"pre-trained {summary['backbone']} with {summary['method']} for {summary['epochs']} epoch(s) on "
            f"{summary['tiles']} tiles ({summary['val_tiles']} held out): train loss {last.get('train_loss', float('nan')):.4f}, "
            f"held-out loss {last.get('val_ssl_loss', float('nan')):.4f}, {last.get('images_per_s', 0):.0f} images/s\n"
            f"run directory: {summary['run_dir']}\nuse it: clotclf embed --tiles TILES --backbone run:{summary['run_dir']} "
            "--out FEATURES")


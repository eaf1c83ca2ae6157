"""``clotclf embed`` (and the embedding step of ``predict``) at scale: one task per slide, on the
engines ``clotclf tile`` uses (:mod:`clotclf_core.tiling.execution`), or one process per device.

- ``--devices cuda:0,cuda:1`` (or ``all``: every visible GPU): one worker process per device, each
  building the encoder once and embedding whole slides, a slide to whichever is free;
- ``--workers N``: N worker processes on ``--device`` (CPU processes, say);
- ``--dask local|ADDRESS``: one task per slide on a Dask cluster (SLURM: docs/performance.md);
  each Dask worker builds the encoder once and uses its own GPU when it has one. The TileSet and
  the store must be on a file system the workers see.

A worker writes the slide's float16 matrix into the store (atomically, under its final name) and
returns its size; this process then commits the slide's rows and ``features.json``, in the order
slides finish — a slide belongs to the store only once ``features.json`` says ``done``, so an
interrupted run keeps every finished slide and the next run embeds the rest. Batches never cross
a slide, so the store is the same, byte for byte, whatever the engine or the worker count (each
worker checks that its encoder has the weights this process recorded).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clotclf_core.plugin.errors import ClotclfError, Interrupted

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from clotclf_core.features.encoder import Encoder
    from clotclf_core.tiling.tileset import TileSet

#: per worker process: encoders and TileSets already opened (built once, used for every slide)
_ENCODERS: dict[str, Any] = {}
_TILESETS: dict[str, Any] = {}


def check_engine(workers: int, devices: Sequence[str] | None, dask: str | None, device: str) -> list[str] | None:
    """The devices of ``--devices`` (``all``: every visible GPU), checked; one line for a bad mix."""
    if workers < 1:
        raise ClotclfError(f"--workers must be at least 1 (got {workers})")
    if dask and devices:
        raise ClotclfError("--dask and --devices both say where slides are embedded: a Dask worker uses its own GPU; give one")
    if not devices:
        return None
    import torch

    names = list(devices)
    if names == ["all"]:
        names = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if not names:
            raise ClotclfError("--devices all: no CUDA device is visible here; give --devices cpu,cpu for CPU processes")
    for name in names:
        if name != "cpu" and not (name.startswith("cuda:") and name[5:].isdigit()):
            raise ClotclfError(f"--devices {name!r}: give cpu or cuda:N, comma-separated (e.g. cuda:0,cuda:1), or all")
        if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
            raise ClotclfError(f"--devices {name}: this machine has {torch.cuda.device_count()} visible CUDA device(s)")
    return names


def worker_precision(devices: Sequence[str] | None, dask: str | None, device: str) -> str:
    """What the workers compute in (recorded): bf16 autocast on CUDA, fp32 on the CPU."""
    from clotclf_core.models.runtime import pick_runtime

    if devices:
        return "bf16" if any(d.startswith("cuda") for d in devices) else "fp32"
    return pick_runtime(device).precision


def _encoder_for(job: dict[str, Any]) -> "Encoder":
    from clotclf_core.features.encoder import build_encoder

    key = repr((job["backbone"], sorted(job["options"].items(), key=str), job["input_size"], job["seed"], job["device"],
                job.get("stain")))
    enc = _ENCODERS.get(key)
    if enc is None:
        enc = _ENCODERS[key] = build_encoder(job["backbone"], job["options"], input_size=job["input_size"],
                                             device=job["device"], seed=job["seed"], stain_normalise=job.get("stain"))
    return enc


def embed_slide(job: dict[str, Any], bar: Any = None) -> dict[str, Any]:
    """The task: one slide's tiles through the encoder into ``slides/<image_id>.npy`` (renamed into
    place when complete). Returns ``{"image_id", "status", "reason", "fatal"}``, never pixels."""
    import torch

    from clotclf_core.features.store import matrix_file
    from clotclf_core.tiling.fill import SlideBatches
    from clotclf_core.tiling.tileset import TileSet

    out = {"image_id": job["image_id"], "status": "failed", "reason": "", "fatal": None, "info": {}}
    try:
        enc = _encoder_for(job)
        if enc.weights_sha256 != job["weights_sha256"]:
            out["fatal"] = (f"a worker built the encoder with other weights (sha256 {enc.weights_sha256[:12]}…) than this "
                            f"process ({job['weights_sha256'][:12]}…): the workers must see the same plugin versions and "
                            "Hugging Face cache")
            return out
        key = (job["tiles"], job.get("slides_dir"))
        ts = _TILESETS.get(key) or _TILESETS.setdefault(key, TileSet(job["tiles"], job.get("slides_dir")))
        slide = SlideBatches(ts, job["image_id"], job["batch_size"], enc.stain)  # cached or coords-only, as in process
        n = len(slide)
        with matrix_file(Path(job["matrix"]), n, enc.num_features) as matrix:
            for start, tiles in slide:
                matrix[start:start + len(tiles)] = enc.forward_tensor(torch.from_numpy(tiles)).cpu().numpy()
        out.update(status="done", info={"device": str(enc.device), "n": n, "stain_unfitted": slide.unfitted})
    except (KeyboardInterrupt, SystemExit):
        raise
    except torch.cuda.OutOfMemoryError:
        out["fatal"] = f"the GPU ran out of memory at --batch-size {job['batch_size']}: use a smaller --batch-size"
    except Exception as exc:  # recorded for this slide, the others go on
        out["reason"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return out


class DevicePool:
    """One spawned worker process per device, each with its device set; a slide goes to whichever is free."""

    name = "one process per device"

    def __init__(self, devices: Sequence[str]):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from clotclf_core.tiling.execution import _worker_init

        self.devices = list(devices)
        self.pools = [ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"), initializer=_worker_init)
                      for _ in self.devices]

    def run(self, jobs: Sequence[dict[str, Any]], commit, task=embed_slide) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        queue = list(jobs)
        busy: dict[Any, int] = {}
        free = list(range(len(self.devices)))
        while queue or busy:
            while queue and free:
                slot = free.pop(0)
                job = {**queue.pop(0), "device": self.devices[slot]}
                busy[self.pools[slot].submit(task, job)] = slot
            done, _ = wait(list(busy), return_when=FIRST_COMPLETED)
            for fut in done:
                free.append(busy.pop(fut))
                commit(fut.result())

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)


def embed_in_workers(ts: "TileSet", writer: Any, by_slide: dict[str, "pd.DataFrame"], todo: list[str],
                     encoder: "Encoder", *, batch_size: int, device: str, workers: int, devices: list[str] | None,
                     dask: str | None, progress: bool, out: str | Path, kept: int) -> tuple[list[str], str, list[str]]:
    """Embed the slides ``todo`` in workers, committing each as it finishes through ``writer`` (the
    :class:`~clotclf_core.features.writer.FeatureStoreWriter`); ``(embedded, where, unfitted)``:
    ``unfitted``, the slides whose stain could not be estimated (``--stain-normalise``), as a serial run says."""
    from clotclf_core.progress import bar
    from clotclf_core.tiling.execution import DaskCluster

    run = encoder.backbone_run  # a `clotclf pretrain` backbone: the workers load the same run
    base = {"tiles": str(Path(ts.root).resolve()), "backbone": f"run:{run['run']}" if run else encoder.backbone,
            "options": {} if run else dict(encoder.options), "input_size": encoder.input_size, "seed": encoder.seed,
            "weights_sha256": encoder.weights_sha256, "batch_size": batch_size, "device": device,
            "stain": encoder.stain.record() if encoder.stain is not None else None,
            "slides_dir": str(ts.slides_dir) if ts.slides_dir is not None else None}
    jobs = [{**base, "image_id": i, "matrix": str(Path(writer.root).resolve() / "slides" / f"{i}.npy")} for i in todo]
    if dask:
        engine: Any = DaskCluster(dask, max(workers, 1))
        where = f"dask ({dask})"
    else:
        engine = DevicePool(devices or [device] * workers)
        where = f"{len(engine.devices)} process(es) on {', '.join(dict.fromkeys(engine.devices))}"
    embedded: list[str] = []
    unfitted: list[str] = []  #: slides with too little stain to estimate: passed unchanged (said in the summary)
    failed: dict[str, str] = {}
    used: set[str] = set()
    bar_ = bar(total=len(jobs), unit="slide", desc="embed", disable=not progress or not jobs)

    def commit(res: dict[str, Any]) -> None:
        used.add(str(res.get("info", {}).get("device", "")))
        if res.get("fatal"):
            raise ClotclfError(f"slide '{res['image_id']}': {res['fatal']} ({len(embedded)} slide(s) were embedded and kept; "
                               "run again to continue)")
        if res["status"] == "done":
            writer.commit(res["image_id"], by_slide[res["image_id"]])
            embedded.append(res["image_id"])
            if res["info"].get("stain_unfitted"):
                unfitted.append(res["image_id"])
        else:
            failed[res["image_id"]] = res["reason"]
        bar_.update(1)

    try:
        engine.run(jobs, commit, embed_slide)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted: {kept + len(embedded)} slide(s) have features in '{out}' ({len(embedded)} embedded in this run) "
            "and are kept; run the same command again to embed the rest") from None
    finally:
        bar_.close()
        engine.close()
        for job in jobs:  # a matrix whose slide was never committed is not part of the store
            if job["image_id"] not in embedded:
                Path(job["matrix"]).unlink(missing_ok=True)
        with contextlib.suppress(Exception):  # the journal folded into features.json (should this fail: again
            writer.finish()                    # just below; on an error, readers apply the journal left)
    precisions = {"bf16" if d.startswith("cuda") else "fp32" for d in used if d}
    if precisions and precisions != {writer.meta["encoder"].get("precision")}:  # what the workers really ran in
        writer.meta["encoder"]["precision"] = precisions.pop() if len(precisions) == 1 else "bf16 on CUDA workers, fp32 on CPU ones"
        writer._write_meta()
    writer.finish()
    if failed:
        shown = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:5])
        raise ClotclfError(f"{len(failed)} slide(s) could not be embedded ({shown}); {len(embedded)} were embedded and "
                           "kept: fix the cause and run the same command again")
    return sorted(embedded), where, sorted(unfitted)

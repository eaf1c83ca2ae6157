"""``clotclf embed``: every tile of a TileSet through a frozen encoder, once, into a feature store.

    embed_tileset("tiles/", "features/", "timm", {"model": "hf-hub:ORG/NAME"})

- Reads the TileSet only through its API (``index``, ``pixels``, ``slides``, ``settings``,
  ``tile_size``) and writes the feature store of :mod:`clotclf_core.features.store` through its one
  writer, :class:`clotclf_core.features.writer.FeatureStoreWriter`.
- Batched, on the GPU when there is one (bf16 autocast on CUDA), with the next batch read from
  the memory-mapped pixel cache (and pinned) while the current one runs. Memory stays bounded: a
  couple of batches, the encoder, and the slide's output matrix, which is memory-mapped too.
- Batches never cross a slide, so a slide's features do not depend on which other slides were
  embedded in the same run: an interrupted and resumed embed gives the same bytes as one run.
- Resumable per slide: a slide is committed (matrix, rows, ``features.json``) as soon as its last
  tile is done. Running again embeds only what is missing: new slides, slides tiled again (other
  tiles), broken files. Slides whose manifest values changed (label, patient, centre) get their
  rows rewritten without re-embedding; slides gone from the TileSet are dropped.
- Refused before anything is written: another encoder than the store's (naming both), a TileSet cut
  with other settings than the store's, a non-empty folder that is not a feature store.
- Slides with no tile are listed as ``no_tiles`` with the TileSet's reason (no matrix).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from clotclf_core.features.bags import FeatureBags
from clotclf_core.features.encoder import Encoder, build_encoder
from clotclf_core.features.store import (
    FeatureStore,
    tileset_fingerprint,
)
from clotclf_core.features.writer import FeatureStoreWriter
from clotclf_core.models.config import describe_encoder
from clotclf_core.plugin.errors import ClotclfError, Interrupted, warn
from clotclf_core.progress import bar
from clotclf_core.tiling.fill import SlideBatches
from clotclf_core.tiling.stain import StainTarget
from clotclf_core.tiling.tileset import TileSet

# ----------------------------------------------------------------------------- reading ahead


def _batches(tileset: TileSet, ids: list[str], batch_size: int, pin: bool, stain: StainTarget | None = None,
             unfitted: list[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """``(image_id, start, uint8 tensor (b, S, S, 3))`` for every batch of every slide, in order
    (:class:`clotclf_core.tiling.fill.SlideBatches`: from the pixel cache, or from the slides of a
    coordinates-only TileSet); with ``stain``, each slide's tiles normalised with its own estimate
    (slides without enough stain to estimate are appended to ``unfitted`` and pass unchanged)."""
    for image_id in ids:
        slide = SlideBatches(tileset, image_id, batch_size, stain)
        for start, tiles in slide:  # read here, in the read-ahead thread
            batch = torch.from_numpy(tiles)
            yield image_id, start, (batch.pin_memory() if pin else batch)
        if slide.unfitted and unfitted is not None:
            unfitted.append(image_id)


def read_ahead(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate ``items`` with up to ``depth`` of them produced ahead by a background thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # hand the reader's error to the consumer
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="embed-read-ahead")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        thread.join(timeout=5)


# ----------------------------------------------------------------------------- the command


def _tileset_record(ts: TileSet) -> dict[str, Any]:
    """features.json's ``tileset``: its identity (fingerprint), how it was cut (settings, the filters'
    and sources' providers: what a MIL run records as its tiling recipe), where it is, synthetic or not."""
    record = {"fingerprint": tileset_fingerprint(ts.settings, ts.tile_size), "tile_pixels": int(ts.tile_size),
              "settings": ts.settings, "clotclf_version": ts.meta.get("clotclf_version"),
              "format_version": ts.meta.get("format_version"), "path": str(Path(ts.root).resolve()),
              "synthetic": bool(ts.meta.get("synthetic"))}
    if isinstance(ts.meta.get("components"), dict):
        record["components"] = ts.meta["components"]
    return record


def embed_tileset(tiles: str | Path, out: str | Path, backbone: str, options: dict[str, Any] | None = None, *,
                  input_size: int | None = None, batch_size: int = 64, device: str = "auto", seed: int = 0,
                  overwrite: bool = False, progress: bool = True, encoder: Encoder | None = None,
                  stain_normalise: str | None = None, workers: int = 1, devices: Sequence[str] | None = None,
                  dask: str | None = None, slides_dir: str | Path | None = None) -> dict[str, Any]:
    """Embed every tile of the TileSet ``tiles`` into the feature store ``out``; return a summary.

    ``encoder`` (already built, e.g. rebuilt from a MIL run's record) replaces ``backbone`` /
    ``options`` / ``input_size`` / ``seed`` / ``stain_normalise`` (``--stain-normalise``: every
    slide's tiles mapped onto one stain target before the encoder, recorded in ``features.json``).
    ``workers`` > 1, ``devices`` (one process per device) or ``dask`` (a scheduler address, or
    ``local``) embed one slide per task in other processes (:mod:`clotclf_core.features.parallel`);
    the store is the same, byte for byte. A coordinates-only TileSet's tiles are read from its
    slides (where it recorded them, or ``slides_dir``).
    """
    if batch_size < 1:
        raise ClotclfError(f"--batch-size must be at least 1, got {batch_size}")
    parallel = workers > 1 or bool(devices) or bool(dask)
    if parallel:
        from clotclf_core.features.parallel import check_engine, worker_precision

        devices = check_engine(workers, devices, dask, device)
    ts = TileSet(tiles, slides_dir)
    if len(ts) == 0:
        raise ClotclfError(
            f"TileSet '{tiles}' holds no tiles: no slide of it was tiled (see the statuses in its tileset.json); "
            "tile the slides again, e.g. with a lower --min-tissue"
        )
    if encoder is None:  # in workers' runs this one only describes the encoder: on the CPU, the GPUs are theirs
        encoder = build_encoder(backbone, options, tile_size=ts.tile_size, input_size=input_size,
                                device="cpu" if parallel else device, seed=seed, stain_normalise=stain_normalise)
    scale = scale_problem(ts, encoder)
    if scale:  # on stderr whatever --quiet / --json say; the summary keeps it too
        warn(f"{encoder.backbone}: {scale}")
    record = encoder.record()
    if parallel:
        record["precision"] = worker_precision(devices, dask, device)
    writer = FeatureStoreWriter(out, record, _tileset_record(ts), encoder.num_features, overwrite=overwrite)
    index = ts.index
    by_slide = {k: v.reset_index(drop=True) for k, v in index.groupby("image_id", sort=True)} if len(index) else {}
    plan = writer.sync(ts, by_slide)
    todo = plan["todo"]
    total = sum(len(by_slide[i]) for i in todo)
    t0 = time.perf_counter()
    if parallel:
        from clotclf_core.features.parallel import embed_in_workers

        embedded, where, unfitted = embed_in_workers(ts, writer, by_slide, todo, encoder, batch_size=batch_size,
                                                     device=device, workers=workers, devices=devices, dask=dask,
                                                     progress=progress, out=out, kept=len(plan["kept"]))
        return _summary(out, record, encoder, writer, plan, embedded, total, time.perf_counter() - t0, where,
                        record["precision"], unfitted, scale)
    embedded: list[str] = []
    pin = encoder.device.type == "cuda"
    bar_ = bar(total=total, unit="tile", desc="embed", disable=not progress or total == 0)
    unfitted: list[str] = []
    stream = read_ahead(_batches(ts, todo, batch_size, pin, encoder.stain, unfitted))
    try:
        current: tuple[str, Any] | None = None  # (image_id, the slide context manager)
        matrix = None
        for image_id, start, batch in stream:
            if current is None or current[0] != image_id:
                if current is not None:
                    current[1].__exit__(None, None, None)
                    embedded.append(current[0])
                cm = writer.slide(image_id, by_slide[image_id])
                matrix = cm.__enter__()
                current = (image_id, cm)
            feats = encoder.forward_tensor(batch).cpu().numpy()
            matrix[start:start + len(feats)] = feats
            bar_.update(len(feats))
        if current is not None:
            current[1].__exit__(None, None, None)
            embedded.append(current[0])
            current = None
    except BaseException as exc:
        if current is not None:  # the open slide's temporary matrix is removed; committed slides stay
            with contextlib.suppress(BaseException):
                current[1].__exit__(type(exc), exc, exc.__traceback__)
        with contextlib.suppress(Exception):  # (what fails here leaves the journal, which readers apply)
            writer.finish()
        if isinstance(exc, KeyboardInterrupt):
            done = len(plan["kept"]) + len(embedded)
            raise Interrupted(
                f"interrupted: {done} slide(s) have features in '{out}' ({len(embedded)} embedded in this run) and are kept; "
                "run the same command again to embed the rest") from None
        if _is_cuda_oom(exc):
            raise ClotclfError(f"the GPU ran out of memory at --batch-size {batch_size}: use a smaller --batch-size "
                               f"({len(embedded)} slide(s) were embedded and kept; run again to continue)") from None
        raise
    finally:
        stream.close()
        bar_.close()
    writer.finish()  # the journal folded into features.json: written a fixed number of times per run
    return _summary(out, record, encoder, writer, plan, embedded, total, time.perf_counter() - t0, str(encoder.device),
                    encoder.precision, unfitted, scale)


def _summary(out, record, encoder, writer, plan, embedded, total, seconds, device, precision, unfitted,
             scale) -> dict[str, Any]:
    return {
        "out": str(out),
        "encoder": describe_encoder(record),
        "weights_sha256": record["weights_sha256"],
        "num_features": encoder.num_features,
        "input_size": encoder.input_size,
        "normalisation": {"mean": record["mean"], "std": record["std"], "from": record["normalisation_from"]},
        "device": device,
        "precision": precision,
        "slides": len(writer.meta["slides"]),
        "embedded": len(embedded),
        "kept": len(plan["kept"]),
        "redone": plan["redo"],
        "relabelled": plan["relabelled"],
        "removed": plan["removed"],
        "no_tiles": {k: writer.meta["slides"][k]["reason"] for k in plan["empty"]},
        "tiles": total,
        "seconds": round(seconds, 2),
        "tiles_per_second": round(total / seconds, 1) if seconds > 0 and total else None,
        "stain_normalise": record.get("stain_normalise"),
        "stain_unfitted": unfitted,
        "scale_warning": scale,
    }


def embed_bags(tiles: str | Path, out: str | Path, encoder: Encoder, *, batch_size: int = 64,
               progress: bool = False, **engine: Any) -> FeatureBags:
    """A MIL model on features scoring a TileSet: every tile of ``tiles`` embedded with the model's
    own ``encoder`` (rebuilt from its record: :func:`clotclf_core.features.encoder.encoder_from_record`)
    into the feature store ``out`` (resumable: slides already there are kept), opened as bags. The one
    "embed, then bag" of ``clotclf evaluate`` and ``clotclf predict``. ``engine``: ``workers`` /
    ``devices`` / ``dask``, as :func:`embed_tileset`."""
    embed_tileset(tiles, out, encoder.backbone, encoder=encoder, batch_size=batch_size, progress=progress, **engine)
    return FeatureBags(FeatureStore(out))


def tileset_um_per_px(ts: "TileSet") -> float | None:
    """Microns per cached pixel of the TileSet's tiled slides (their median; None without mpp)."""
    import statistics

    values = [float(v["um_per_pixel"]) for v in ts.slides.values()
              if v.get("status") == "done" and isinstance(v.get("um_per_pixel"), (int, float)) and v["um_per_pixel"] > 0]
    return statistics.median(values) if values else None


def scale_problem(ts: "TileSet", encoder: "Encoder") -> str | None:
    """Why the TileSet's tiles are at another scale than the encoder was trained at (beyond
    :data:`~clotclf_core.plugin.encoders.SCALE_TOLERANCE`), with the ``clotclf tile`` command that
    matches it; None when they agree, or when either scale is unknown. The scale is the one the
    encoder sees: a cached pixel's microns, times the cache side over the encoder's input side."""
    cached = tileset_um_per_px(ts)
    if encoder.info is None or cached is None:
        return None
    return encoder.info.scale_problem(cached * ts.tile_size / encoder.input_size)


def _is_cuda_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['embedded']} slide(s) embedded ({s['tiles']} tiles in {s['seconds']} s"
        + (f", {s['tiles_per_second']} tiles/s" if s["tiles_per_second"] else "") + f", {s['device']} {s['precision']}), "
        f"{s['kept']} already done; {s['slides']} slide(s) in {s['out']}",
        f"encoder: {s['encoder']}, {s['num_features']} features",
    ]
    for key, what in (("redone", "embedded again"), ("relabelled", "rows updated from the TileSet"), ("removed", "no longer in the TileSet, removed")):
        for image_id, why in s[key].items():
            lines.append(f"{image_id}: {what} ({why})")
    for image_id in s.get("stain_unfitted") or []:
        lines.append(f"{image_id}: too little stained tissue to estimate its stain: its tiles were not normalised")
    for image_id, reason in s["no_tiles"].items():
        lines.append(f"{image_id}: no tiles, no features ({reason})")
    return "\n".join(lines)

"""Running slides: one slide in a worker (:func:`process_slide`), and the engines that run many —
this process, a local process pool (the default with ``workers`` > 1), or a Dask cluster. The
engines run any per-slide task (``run(jobs, commit, task)``; default: tiling): ``clotclf embed``
and ``predict`` hand them theirs (:mod:`clotclf_core.features.parallel`).

Every engine runs the same task per slide: open it, tile it, stream its tiles into
``pixels/<image_id>.npy``, write its index shard and QC picture into the TileSet folder, close it,
and send back a *summary* (status, reason, facts) — never pixels. The client commits each
summary into ``tileset.json`` as it arrives; slides are listed there in manifest order, so the
TileSet does not depend on the engine, the number of workers or the order slides finish in.

A Dask cluster's workers write into the TileSet folder themselves, so ``--out`` must be on a file
system they all see (the same path on every node).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.tiling.settings import SlideSkip, TileSettings, TilingError

#: OS errors that mean "the TileSet folder cannot be written": the whole run stops on them
OUTPUT_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EROFS, errno.EACCES, errno.EPERM}


def file_fingerprint(path: str | os.PathLike) -> str:
    """Size + SHA-256 of the first and last 64 KiB: tells a replaced slide file from the one that
    was tiled (a copy keeps it; ``mtime`` alone would not)."""
    from clotclf_core.slides.guard import open_regular

    with open_regular(path) as fh:  # a FIFO put in a slide's place must not block here
        size = os.fstat(fh.fileno()).st_size
        h = hashlib.sha256(str(size).encode())
        h.update(fh.read(65536))
        if size > 65536:
            fh.seek(max(65536, size - 65536))
            h.update(fh.read(65536))
    return f"{size}:{h.hexdigest()[:16]}"


def open_for_job(path: str, source: str | None, trust_declared_size: bool = False) -> Any:
    from clotclf_core.config import parse_component_ref
    from clotclf_core.slides.open import open_slide

    if source:
        name, options = parse_component_ref(source, "--source")
        return open_slide(path, source=name, options=options, trust_declared_size=trust_declared_size)
    return open_slide(path, trust_declared_size=trust_declared_size)


def locate(job: dict[str, Any]) -> str:
    if job.get("path"):
        return job["path"]
    from clotclf_core.slides.open import find_slide

    return str(find_slide(job["folder"], job["image_id"]))


def _by_product(out: dict[str, Any], what: str, write: Any, *args: Any) -> None:
    """Write a QC picture or a tissue mask: a by-product, so a failure is recorded, never loses the tiles
    (a full or read-only disk still stops the run)."""
    try:
        write(*args)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded in the slide's info
        out["info"][f"{what}_error"] = f"{type(exc).__name__}: {exc}"[:200]


def process_slide(job: dict[str, Any], bar: Any = None) -> dict[str, Any]:
    """Open, tile, write (pixels, index shard, QC picture) and close one slide. Never raises for a
    bad slide: returns ``{"image_id", "status", "reason", "info", "fatal"}``; ``fatal`` is set when
    the TileSet folder itself cannot be written (full disk, read-only), which stops the run. BLAS
    and OpenCV run on the job's ``threads`` meanwhile (:func:`clotclf_core.tiling.pipeline.compute_threads`)."""
    from clotclf_core.tiling.pipeline import compute_threads

    with compute_threads(int(job.get("threads", 1))):
        return _process_slide(job, bar)


def _process_slide(job: dict[str, Any], bar: Any) -> dict[str, Any]:
    from clotclf_core.plugin.errors import SlideReadError
    from clotclf_core.slides.guard import regular_file_problem
    from clotclf_core.tiling.filters import filters_for
    from clotclf_core.tiling.pipeline import tile_one
    from clotclf_core.tiling.qc import write_mask, write_qc
    from clotclf_core.tiling.writer import slide_pixels, write_shard

    settings = TileSettings(**job["settings"])
    root = Path(job["out"])
    out: dict[str, Any] = {"image_id": job["image_id"], "status": "failed", "reason": "", "info": {}, "fatal": None}
    slide = None
    try:
        filters = filters_for(job["filters"])
        path = locate(job)
        out["info"]["file"] = Path(path).name
        problem = regular_file_problem(path)  # before anything opens it: a FIFO would block open()
        if problem:
            raise SlideReadError(f"slide '{path}' {problem}" + ("" if ";" in problem else ": give the slide file itself"))
        out["info"]["fingerprint"] = file_fingerprint(path)
        slide = open_for_job(path, job.get("source"), bool(job.get("trust_declared_size")))
        used = getattr(slide, "source_name", None)
        if isinstance(used, str):
            out["info"]["source"] = used
        if settings.coords_only:  # no pixel cache: record where the slide is, for whoever reads its tiles later
            out["info"]["path"] = str(Path(path).resolve())
            res = tile_one(slide, settings, filters, None, int(job.get("threads", 1)), job.get("scratch"), bar)
        else:
            with slide_pixels(root, job["image_id"], settings.train_size) as sink:
                res = tile_one(slide, settings, filters, sink, int(job.get("threads", 1)), job.get("scratch"), bar)
        write_shard(root, job["image_id"], res.rows)
        out["info"].update(res.info)
        out.update(status=res.status, reason=res.reason)
        if job.get("qc", True):
            _by_product(out, "qc", write_qc, root / "qc" / f"{job['image_id']}.png", res, [f.name for f in filters],
                        job["image_id"])
        _by_product(out, "mask", write_mask, root / "masks" / f"{job['image_id']}.png", res)
    except SlideSkip as skip:
        out.update(status=skip.status, reason=skip.reason)
    except ClotclfError as exc:
        out["reason"] = str(exc)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except OSError as exc:
        if exc.errno in OUTPUT_ERRNOS and _under(exc, root):
            out["fatal"] = _output_error(exc, root, job)
        elif exc.errno == errno.ENOSPC:  # the scratch folder (TMPDIR) is full
            out["reason"] = f"out of scratch space in '{job.get('scratch') or os.environ.get('TMPDIR', '/tmp')}' ({exc.strerror}); set TMPDIR to a bigger disk"
        else:
            out["reason"] = f"{type(exc).__name__}: {exc}".strip()[:500]
    except Exception as exc:  # a corrupt file can fail anywhere inside a reader: record, go on
        out["reason"] = f"{type(exc).__name__}: {exc}".strip()[:500]
    finally:
        if slide is not None:
            try:
                slide.close()
            except Exception:
                pass
    return out


def _under(exc: OSError, root: Path) -> bool:
    name = exc.filename if exc.filename is not None else exc.filename2
    if name is None:
        return True  # a write without a file name (e.g. the pixel stream): ours
    try:
        return Path(os.fsdecode(name)).resolve().is_relative_to(root.resolve())
    except (OSError, ValueError):
        return False


def _output_error(exc: OSError, root: Path, job: dict[str, Any]) -> str:
    from clotclf_core.plugin.errors import os_error_message

    return os_error_message(exc, f"slide '{job['image_id']}' of the TileSet", root, estimate_slide_bytes(job), "run the same command to resume") or f"cannot write the TileSet folder '{root}': {exc}"


def estimate_slide_bytes(job: dict[str, Any]) -> int:
    """A generous size of one slide's files: its pixel file if 500 tiles are kept."""
    s = int(job["settings"].get("train_size", 224))
    return 500 * s * s * 3


def _worker_init() -> None:
    """Worker processes: one thread each for BLAS / OpenMP (the pool is the parallelism)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


# ----------------------------------------------------------------------------- engines


Commit = Callable[[dict[str, Any]], None]


class InProcess:
    """Slides one after the other in this process (with a per-slide bar of segment rows)."""

    name = "in-process"

    def __init__(self, inner_bar: Any = None):
        self.inner = inner_bar

    def run(self, jobs: Sequence[dict[str, Any]], commit: Commit, task: Callable[..., dict[str, Any]] | None = None) -> None:
        task = task or process_slide  # looked up when run (tests replace it)
        for job in jobs:
            if self.inner is not None:
                self.inner.set_description(job["image_id"][:24])
            commit(task(job, self.inner))

    def close(self) -> None:
        pass


class LocalPool:
    """``workers`` spawned processes; results committed as they finish, a few jobs in flight."""

    name = "local processes"

    def __init__(self, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.workers = workers
        # fork after torch/openslide threads start can deadlock
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)

    def run(self, jobs: Sequence[dict[str, Any]], commit: Commit, task: Callable[..., dict[str, Any]] | None = None) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        task = task or process_slide
        it = iter(jobs)
        pending = set()
        for job in it:
            pending.add(self.pool.submit(task, job))
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(self.pool.submit(task, nxt))
                commit(fut.result())

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class DaskCluster:
    """One task per slide on a Dask distributed cluster (``address``), or on a local one (``local``)."""

    name = "dask"

    def __init__(self, address: str, workers: int, timeout: float | None = None):
        timeout = float(os.environ.get("CLOTCLF_DASK_TIMEOUT", "10")) if timeout is None else timeout
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise TilingError("--dask needs Dask's distributed scheduler: pip install 'dask[distributed]'") from None
        self.cluster = None
        self.address = address
        try:
            if address == "local":
                with _sigint_ignored():  # its worker processes inherit this: Ctrl-C reaches this client only
                    self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                dashboard_address=None, silence_logs=40)
                self.client = Client(self.cluster, timeout=timeout)
            else:
                self.client = Client(address, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            if self.cluster is not None:
                self.cluster.close()
            raise TilingError(
                f"cannot reach the Dask scheduler at '{address}' ({type(exc).__name__}: {str(exc)[:160]}); "
                "start one (`dask scheduler`, or dask-jobqueue on SLURM, see docs/performance.md), check the address, "
                "or use --dask local / --workers N. Nothing was written"
            ) from None

    def run(self, jobs: Sequence[dict[str, Any]], commit: Commit, task: Callable[..., dict[str, Any]] | None = None) -> None:
        import uuid

        from dask.distributed import as_completed

        run = uuid.uuid4().hex[:8]  # keys of this run only: a scheduler may still hold an earlier run's
        what = "tile" if task is None else getattr(task, "__name__", "task")
        task = task or process_slide
        futures = {self.client.submit(task, job, pure=False, key=f"clotclf-{what}-{run}-{i}-{job['image_id']}"): job
                   for i, job in enumerate(jobs)}
        for fut in as_completed(list(futures)):
            job = futures[fut]
            try:
                res = fut.result()
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # the worker died (KilledWorker), or the task could not run
                res = {"image_id": job["image_id"], "status": "failed", "fatal": None, "info": {},
                       "reason": f"Dask task failed: {type(exc).__name__}: {str(exc)[:300]}"}
            commit(res)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the block runs (main thread only). Processes started meanwhile keep
    ignoring it: a local Dask cluster's workers then leave Ctrl-C in a terminal to the client, which
    says what was kept, instead of each printing a KeyboardInterrupt traceback."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def make_engine(workers: int, n_jobs: int, inner_bar: Any = None) -> Any:
    """A local pool when it helps (several workers and slides), else this process."""
    if workers > 1 and n_jobs > 1:
        return LocalPool(workers)
    return InProcess(inner_bar)

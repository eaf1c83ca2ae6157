"""Experiment tracking: ``clotclf train --track mlflow`` and ``--track tensorboard`` (both: repeat).

What a tracked run records, the same for both (rank 0 only, under ``torchrun`` too):

- **parameters**: the resolved training settings (nested ones as ``augment.hflip``…), the
  clotclf version, whether the data are synthetic;
- **per-epoch metrics**: every ``history.csv`` column of every fold, step = epoch (``fold_<k>/``
  prefixed under ``--fold all``); after a ``--resume`` the epochs done before are logged again
  first, so a tracked run is always complete;
- **the held-out headline**: its numbers as ``headline/<key>`` (``headline/weighted_log_loss``…),
  what it was measured on and whether the data are synthetic as tags / text;
- **plots and the run directory**: MLflow gets the run directory as artifacts (``run/``: models,
  metrics, plots, card; not ``checkpoints/``, which only ``--resume`` needs); TensorBoard gets the
  plots as images and writes its event files into ``RUN/tensorboard/``, in the run directory.

**Nothing that names this machine or its user**: every parameter and text artifact has its local
absolute paths cut to their last component (and the home folder to ``~``), path settings such as
``out`` keep only their last component; MLflow runs are created without its context tags (no
``mlflow.user`` from the OS user, no ``mlflow.source.name`` script path, no git remote), so the
user shows as ``unknown``; TensorBoard event files are renamed without the hostname and process
id TensorBoard's writer puts in their names. What stays is what the tracker itself must know: a local
MLflow file store records where it is (its own ``meta.yaml``).

Where: MLflow follows ``MLFLOW_TRACKING_URI`` (a server, a database, a folder) and
``MLFLOW_EXPERIMENT_NAME`` (default ``clotclf``); without them, a file store ``mlruns/`` in the
current folder (MLflow 3 keeps file stores in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``,
which clotclf sets for the file stores it opens). The libraries are optional extras:
``pip install 'clotclf[mlflow]'`` (mlflow-skinny, the client without the server) and
``'clotclf[tensorboard]'``; a missing one is refused before training starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path, PurePath
from typing import Any, Protocol

from clotclf_core.plugin.errors import ClotclfError

TRACKERS = ("mlflow", "tensorboard")
EXTRA = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("tensorboard", "tensorboard")}  # kind -> (module, extra)
#: settings that name local files or folders: logged as their last component only
PATH_SETTINGS = ("tiles", "features", "out", "demo_dir", "split_file", "config")
#: folders of a run directory that are not published as artifacts
NOT_ARTIFACTS = ("checkpoints", "tensorboard")
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".csv", ".md", ".txt")


class Tracker(Protocol):
    def epoch(self, fold: str, row: dict[str, Any]) -> None: ...

    def finish(self, run_dir: Path, summary: dict[str, Any] | None, status: str = "FINISHED") -> None: ...


# ----------------------------------------------------------------------------- no local paths


def _is_local_path(text: str) -> bool:
    return (PurePath(text).is_absolute() and "\n" not in text and len(text) > 1) or bool(re.match(r"^[A-Za-z]:[\\/]", text)) \
        or text.startswith("~/") or text.startswith("file:///")


def public(obj: Any, found: dict[str, str] | None = None) -> Any:
    """A copy of ``obj`` (JSON-like) with every local absolute path cut to its last component;
    ``found`` collects the replacements (to apply to free text too)."""
    if isinstance(obj, dict):
        return {k: public(v, found) for k, v in obj.items()}
    if isinstance(obj, list):
        return [public(v, found) for v in obj]
    if isinstance(obj, str) and _is_local_path(obj):
        name = PurePath(obj.removeprefix("file://")).name or "(path)"
        if found is not None:
            found[obj] = name
        return name
    return obj


def _public_text(text: str, found: dict[str, str]) -> str:
    for old in sorted(found, key=len, reverse=True):
        text = text.replace(old, found[old])
    for folder, shown in ((str(Path.home()), "~"), (os.getcwd(), ".")):
        if len(folder) > 1:
            text = re.sub(re.escape(folder.rstrip("/")) + r"(?=/|\b)", shown, text)
    return text


def params_of(settings: dict[str, Any]) -> dict[str, str]:
    """Flat ``{name: value as text}`` of the training settings, paths cut to their last component."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        if prefix in PATH_SETTINGS and isinstance(value, str):
            value = PurePath(value).name or value
        value = public(value)
        flat[prefix] = value if isinstance(value, str) else json.dumps(value)

    walk("", settings)
    return flat


def headline_metrics(headline: dict[str, Any]) -> dict[str, float]:
    """The headline's numbers as ``headline/<key>`` (nested ones, e.g. an interval, as ``headline/<key>/<part>``)."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix] = float(value)

    for key, value in headline.items():
        walk(f"headline/{key}", value)
    return out


def summary_headline(summary: dict[str, Any]) -> dict[str, Any]:
    return summary.get("headline") or (summary.get("folds") or [{}])[0].get("headline") or {}


def staged_run_dir(run_dir: Path, into: Path) -> Path:
    """A copy of ``run_dir`` for publishing to a tracker: no checkpoints, local paths cut from the texts."""
    target = into / "run"
    found: dict[str, str] = {}
    texts: list[tuple[Path, Path]] = []
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if path.is_dir() or rel.parts[0] in NOT_ARTIFACTS or path.name.startswith("."):
            continue
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in (".json", ".yaml", ".yml"):
            import yaml

            try:
                data = json.loads(path.read_text(encoding="utf-8")) if path.suffix == ".json" else \
                    yaml.safe_load(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError, yaml.YAMLError):
                texts.append((path, dest))
                continue
            data = public(data, found)
            dest.write_text(json.dumps(data, indent=2, default=str) + "\n" if path.suffix == ".json"
                            else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        elif path.suffix.lower() in TEXT_SUFFIXES:
            texts.append((path, dest))
        else:
            shutil.copyfile(path, dest)
    for path, dest in texts:
        try:
            dest.write_text(_public_text(path.read_text(encoding="utf-8"), found), encoding="utf-8")
        except UnicodeDecodeError:
            shutil.copyfile(path, dest)
    return target


# ----------------------------------------------------------------------------- the trackers


class MlflowTracker:
    def __init__(self, name: str, params: dict[str, str], tags: dict[str, str]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: file stores are opt-in
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "clotclf"
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        # the client API, not mlflow.start_run: no context tags (OS user, script path, git remote) are added
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def epoch(self, fold: str, row: dict[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        step, now = int(row.get("epoch", 0)), int(time.time() * 1000)
        metrics = [Metric(f"{fold}{k}", float(v), now, step) for k, v in row.items()
                   if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, run_dir: Path, summary: dict[str, Any] | None, status: str = "FINISHED") -> None:
        try:
            if summary is not None:
                head = summary_headline(summary)
                for key, value in headline_metrics(head).items():
                    self.client.log_metric(self.run_id, key, value)
                for key in ("on", "what", "synthetic"):
                    if key in head:
                        self.client.set_tag(self.run_id, f"clotclf.headline.{key}", str(head[key]))
                with tempfile.TemporaryDirectory(prefix="clotclf-track-") as tmp:
                    self.client.log_artifacts(self.run_id, str(staged_run_dir(run_dir, Path(tmp))), "run")
        finally:
            self.client.set_terminated(self.run_id, status)


class TensorBoardTracker:
    def __init__(self, run_dir: Path, params: dict[str, str]):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.folder))
        self.params = params
        self.writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in params.items()))

    def epoch(self, fold: str, row: dict[str, Any]) -> None:
        step = int(row.get("epoch", 0))
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{fold}{key}", float(value), step)

    def finish(self, run_dir: Path, summary: dict[str, Any] | None, status: str = "FINISHED") -> None:
        try:
            if summary is not None:
                head = summary_headline(summary)
                metrics = headline_metrics(head)
                if metrics:
                    self.writer.add_hparams({k: v for k, v in self.params.items()}, metrics, run_name=".")
                if head.get("what"):
                    self.writer.add_text("headline", f"{head['what']}{' (SYNTHETIC data)' if head.get('synthetic') else ''}")
                self._plots(run_dir)
            self.writer.add_text("status", status)
        finally:
            self.writer.close()
            anonymise_event_files(self.folder)

    def _plots(self, run_dir: Path) -> None:
        import numpy as np
        from PIL import Image

        for png in sorted(run_dir.rglob("plots/*.png")):
            if png.relative_to(run_dir).parts[0] in NOT_ARTIFACTS:
                continue
            with Image.open(png) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(png.relative_to(run_dir).with_suffix("").as_posix(), pixels, dataformats="HWC")


def anonymise_event_files(folder: Path) -> None:
    """TensorBoard names event files ``events.out.tfevents.<time>.<hostname>.<pid>.<n>``: the
    hostname and pid go (TensorBoard reads any file with ``tfevents`` in its name)."""
    host = socket.gethostname()
    for path in folder.rglob("events.out.tfevents.*"):
        parts = path.name.split(".")
        if len(parts) >= 6 and host and host in path.name:
            keep = f"events.out.tfevents.{parts[3]}.clotclf.{parts[-1]}"
            os.replace(path, path.with_name(keep))


# ----------------------------------------------------------------------------- opening


def check_trackers(kinds: tuple[str, ...] | list[str] | str | None) -> tuple[str, ...]:
    """The trackers asked for, each installed: an unknown one or a missing extra is one line."""
    if not kinds:
        return ()
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    import importlib.util

    for kind in kinds:
        if kind not in TRACKERS:
            raise ClotclfError(f"--track {kind!r}: clotclf tracks to {' or '.join(TRACKERS)}")
        module, extra = EXTRA[kind]
        if importlib.util.find_spec(module) is None:
            raise ClotclfError(f"--track {kind} needs {module}, which is not installed: pip install 'clotclf[{extra}]'")
    return tuple(dict.fromkeys(kinds))


class Trackers:
    """The trackers of one training run (rank 0), called by training as one."""

    def __init__(self, kinds: tuple[str, ...], run_dir: Path, settings: dict[str, Any], synthetic: bool | None):
        from clotclf_core import __version__

        params = params_of(settings) | {"clotclf_version": __version__}
        tags = {"clotclf.version": __version__, "mlflow.source.name": "clotclf train", "mlflow.source.type": "LOCAL"}
        if synthetic is not None:
            params["synthetic"] = str(bool(synthetic))
            tags["clotclf.synthetic"] = str(bool(synthetic))
        self.all: list[Any] = []
        for kind in kinds:
            self.all.append(MlflowTracker(run_dir.name, params, tags) if kind == "mlflow" else TensorBoardTracker(run_dir, params))

    def epoch(self, fold: str, row: dict[str, Any]) -> None:
        for t in self.all:
            t.epoch(fold, row)

    def finish(self, run_dir: Path, summary: dict[str, Any] | None, status: str = "FINISHED") -> None:
        for t in self.all:
            t.finish(run_dir, summary, status)

"""clotclf's Python API: one function per command, the settings objects the CLI builds, result objects.

    import clotclf

    tiles = clotclf.tile("slides/", "tiles/", manifest="train.csv", downsample=4, tile_size=224)   # a TileSet
    run = clotclf.train(tiles="tiles/", backbone="cct", epochs=5, out="runs/cct")                 # a Run
    report = clotclf.evaluate(run, tiles="tiles-test/")                                             # an Evaluation
    frame = clotclf.predict("test-slides/", [run], out="predictions/")                              # a DataFrame

Each function does what its ``clotclf`` command does, through the same code: a settings object
(:class:`clotclf_core.tiling.settings.TileSettings`, :class:`clotclf_core.training.settings.TrainSettings`)
or the command's option values as keywords (checked the same way, one :class:`ClotclfError` per bad
value), and it returns what the command wrote, opened: a TileSet, a feature store, a :class:`Run`,
an :class:`Evaluation`, a predictions frame. Progress bars are off unless ``progress=True``.
Nothing here imports torch until a function runs. See docs/api.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from clotclf_core.features.store import FeatureStore
    from clotclf_core.tiling.settings import TileSettings
    from clotclf_core.tiling.tileset import TileSet
    from clotclf_core.training.settings import TrainSettings

__all__ = ["Run", "Evaluation", "demo_data", "tile", "embed", "import_features", "train", "evaluate", "predict", "push",
           "pull"]

PathLike = str | Path


@dataclass
class Run:
    """A run directory (``clotclf train``, or a pulled model): where it is and what it says.

    ``summary`` is what ``clotclf train --json`` prints (empty for a pulled model). A cross-validation
    run (``--fold all``) is the ensemble of its ``folds``."""

    path: Path
    summary: dict[str, Any] = field(default_factory=dict)

    def __fspath__(self) -> str:  # a Run goes wherever a run directory path does
        return str(self.path)

    @property
    def folds(self) -> list[Path]:
        """The fold run directories of a cross-validation run; ``[]`` for a single model."""
        from clotclf_core.models.runs import fold_runs

        return fold_runs(self.path) or []

    @property
    def config(self) -> dict[str, Any]:
        """config.json (of the first fold, for a cross-validation run)."""
        from clotclf_core.models.runs import read_config

        return read_config(self.folds[0] if self.folds else self.path)

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: the held-out headline first (see docs/evaluation.md)."""
        return json.loads((self.path / "metrics.json").read_text(encoding="utf-8"))

    @property
    def headline(self) -> dict[str, Any]:
        return self.metrics.get("headline", {})

    def load_model(self, fold: int | None = None):
        """The trained model (a ``torch.nn.Module`` in eval mode); ``fold`` picks a fold model of a
        cross-validation run (one is needed there)."""
        from clotclf_core.models.saved import load_model
        from clotclf_core.plugin.errors import ClotclfError

        folds = self.folds
        if folds and fold is None:
            raise ClotclfError(f"'{self.path}' is a cross-validation run of {len(folds)} fold models: pass fold=0..{len(folds) - 1}")
        return load_model(folds[fold] if folds else self.path)


@dataclass
class Evaluation:
    """What ``clotclf evaluate`` wrote: ``report`` (metrics.json's content, the headline first),
    ``predictions`` (predictions.csv) and ``out``, the folder."""

    out: Path
    report: dict[str, Any]
    predictions: "pd.DataFrame"

    @property
    def headline(self) -> dict[str, Any]:
        return self.report.get("headline", {})


def _run_path(run: "Run | PathLike") -> str:
    return str(run.path if isinstance(run, Run) else run)


def demo_data(out: PathLike, *, patients: int = 22, seed: int = 0, signal: str = "texture", overwrite: bool = False,
              progress: bool = False) -> Path:
    """``clotclf demo-data``: a small SYNTHETIC STRIP-AI-like cohort in ``out``; returns its manifest
    (``out/train.csv``; the slides are in ``out/slides``). For demos and tests only."""
    from clotclf_core.demo.cohort import timed_write

    return Path(timed_write(out, seed=seed, n_patients=patients, overwrite=overwrite, progress=progress, signal=signal)["manifest"])


def tile(slides: PathLike, out: PathLike, *, manifest: PathLike | None = None, settings: "TileSettings | None" = None,
         filters: Sequence[str] = ("otsu",), source: str | None = None, workers: int = 1, dask: str | None = None,
         labels: Sequence[str] = ("CE", "LAA"), require_labels: bool = False, overwrite: bool = False,
         progress: bool = False, **values: Any) -> "TileSet":
    """``clotclf tile``: cut the slides into a TileSet and open it. ``settings`` is a
    :class:`~clotclf_core.tiling.settings.TileSettings`, or give its fields as keywords
    (``downsample=4, tile_size=224, min_tissue=0.1``…). ``filters`` are ``NAME[:k=v,...]`` as on the
    command line. Failed slides are in ``tileset.slides`` with their reason (the command exits 3)."""
    from clotclf_core.config import parse_component_ref
    from clotclf_core.plugin.errors import ConfigError
    from clotclf_core.tiling.run import tile_slides
    from clotclf_core.tiling.settings import TileSettings
    from clotclf_core.tiling.tileset import TileSet

    if settings is not None and values:
        raise ConfigError(f"give settings= or the settings' fields ({', '.join(values)}), not both")
    settings = settings or TileSettings.from_values(**values)
    refs = [parse_component_ref(f, "filters") for f in filters]
    tile_slides(slides, out, manifest=manifest, settings=settings, filters=refs, source=source, workers=workers,
                overwrite=overwrite, progress=progress, labels=labels, require_labels=require_labels, dask=dask)
    return TileSet(out)


def embed(tiles: "TileSet | PathLike", out: PathLike, backbone: str, *, input_size: int | None = None,
          batch_size: int = 64, device: str = "auto", seed: int = 0, overwrite: bool = False, progress: bool = False,
          dask: str | None = None, workers: int = 1, devices: Sequence[str] | None = None) -> "FeatureStore":
    """``clotclf embed``: every tile through a frozen encoder (``backbone`` is ``NAME[:k=v,...]``)
    into a feature store, opened. ``dask`` / ``workers`` / ``devices``: one task per slide (see
    docs/performance.md)."""
    from clotclf_core.config import parse_component_ref
    from clotclf_core.features.embed import embed_tileset
    from clotclf_core.features.store import FeatureStore

    name, options = parse_component_ref(backbone, "backbone")
    root = tiles.root if hasattr(tiles, "root") else tiles
    embed_tileset(root, out, name, options, input_size=input_size, batch_size=batch_size, device=device, seed=seed,
                  overwrite=overwrite, progress=progress, dask=dask, workers=workers, devices=devices)
    return FeatureStore(out)


def import_features(h5_dir: PathLike, out: PathLike, encoder_name: str, *, manifest: PathLike | None = None,
                    progress: bool = False, **options: Any) -> "FeatureStore":
    """``clotclf import-features``: TRIDENT / CLAM ``.h5`` patch features into a feature store, opened."""
    from clotclf_core.features.imported import import_features as run_import
    from clotclf_core.features.store import FeatureStore

    run_import(h5_dir, out, encoder_name, manifest=manifest, progress=progress, **options)
    return FeatureStore(out)


def train(settings: "TrainSettings | None" = None, *, config: PathLike | None = None, resume: bool = False,
          progress: bool = False, track: str | None = None, **values: Any) -> Run:
    """``clotclf train``: a :class:`~clotclf_core.training.settings.TrainSettings`, or its fields as
    keywords (``tiles="tiles/", backbone="cct", epochs=5``…) over an optional YAML ``config``,
    resolved like the command line (with no tiles and no features: the demo). ``track``:
    ``"mlflow"`` or ``"tensorboard"`` (docs/training.md, Experiment tracking)."""
    from clotclf_core.plugin.errors import ConfigError
    from clotclf_core.training.run import train as run_training
    from clotclf_core.training.settings import resolve_settings

    if settings is not None and (values or config):
        raise ConfigError("give settings= or the settings' fields (and config=), not both")
    settings = settings or resolve_settings(config, values)
    summary = run_training(settings, resume=resume, progress=progress, track=track)
    return Run(Path(summary["run_dir"]), summary)


def evaluate(run: "Run | PathLike", *, tiles: "TileSet | PathLike | None" = None, features: PathLike | None = None,
             out: PathLike | None = None, patients: str = "unseen", batch_size: int = 64, workers: int = 0,
             device: str = "auto", progress: bool = False) -> Evaluation:
    """``clotclf evaluate``: the model on a TileSet (or a MIL model on a feature store), by default
    on the patients it never trained on."""
    import pandas as pd

    from clotclf_core.scoring.evaluate import evaluate_run

    root = tiles.root if hasattr(tiles, "root") else tiles
    report = evaluate_run(_run_path(run), None if root is None else str(root), None if out is None else str(out), patients,
                          batch_size, workers, device, progress=progress, features=None if features is None else str(features))
    folder = Path(report["out"])
    return Evaluation(folder, report, pd.read_csv(folder / "predictions.csv", dtype={"image_id": str, "patient_id": str}))


def predict(slides: PathLike | None, models: Sequence["Run | PathLike"], out: PathLike, *,
            manifest: PathLike | None = None, features: PathLike | None = None, weights: Sequence[float] | None = None,
            heatmaps: bool = True, progress: bool = False, **options: Any) -> "pd.DataFrame":
    """``clotclf predict``: slides (or a feature store, ``features=``) scored by one model or an
    ensemble; returns predictions.csv as a frame (``level`` slide / patient rows), with the summary
    (``--json``'s) in ``frame.attrs["summary"]``; submission.csv is beside it in ``out``."""
    import pandas as pd

    from clotclf_core.predict.run import predict as run_predict

    summary = run_predict(slides, [_run_path(m) for m in models], out, manifest=manifest, weights=weights,
                          heatmaps=heatmaps, progress=progress, features=features, **options)
    frame = pd.read_csv(summary["predictions"], dtype={"image_id": str, "patient_id": str})
    frame.attrs["summary"] = summary
    return frame


def _registry():
    """The registry plugin's API and settings loader (it ships with clotclf; it is still a plugin)."""
    from clotclf_core.plugin.errors import ClotclfError

    try:
        from clotclf_registry import api
        from clotclf_registry.settings import load_settings
    except ImportError:  # pragma: no cover - the registry is part of clotclf's own distribution
        raise ClotclfError("push and pull need clotclf's registry plugin (clotclf_registry), which is not installed") from None
    return api, load_settings


def push(run: "Run | PathLike", repo: str, *, registry: str | None = None, private: bool = False, tag: str | None = None,
         include_split: bool = False, quiet: bool = True, **settings: Any):
    """``clotclf push``: upload a run directory (or a ``--fold all`` folder, as the ensemble of its
    folds), redacted; returns the registry's result (``repo_id``, ``commit``, ``url``, ``files``)."""
    api, load_settings = _registry()
    return api.push(_run_path(run), repo, private=private, tag=tag, include_split=include_split, quiet=quiet,
                    settings=load_settings(registry=registry, **settings))


def pull(name: str, *, out: PathLike | None = None, registry: str | None = None, quiet: bool = True, **settings: Any) -> Run:
    """``clotclf pull``: download and verify a model; returns it as a :class:`Run` (``summary`` holds
    the pull's result: commit, files, what it needs installed)."""
    api, load_settings = _registry()
    result = api.pull(name, out=out, quiet=quiet, settings=load_settings(registry=registry, **settings))
    return Run(Path(result.path), result.as_dict())

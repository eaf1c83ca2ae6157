"""Inference, written once: where tensors run (:class:`Runtime`) and tiles -> probabilities.

Training's validation and test scoring, ``clotclf evaluate`` and ``clotclf predict`` all score
tiles through :class:`TileScorer` (one loader over some rows of a TileSet, kept between calls so
loader workers start once) and :func:`predict_probs` (batched, inference mode, bf16 on CUDA,
gathered over DDP ranks). So a number printed by ``clotclf train`` and one from ``clotclf
evaluate`` on the same patients come from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from clotclf_core.features.bags import pad_to
from clotclf_core.models.config import ModelConfig
from clotclf_core.models.runtime import Runtime
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.progress import bar
from clotclf_core.tiling.dataset import ShardSampler, TileDataset, build_transform, make_loader

if TYPE_CHECKING:  # pragma: no cover
    from clotclf_core.tiling.tileset import TileSet


def eval_loader(dataset, batch_size: int, workers: int, rt: Runtime):
    """A loader over this rank's share of ``dataset`` (in order) and the positions it covers."""
    sampler = ShardSampler(len(dataset), rt.rank, rt.world_size)
    loader = make_loader(dataset, sampler, batch_size, workers, pin_memory=rt.device.type == "cuda")
    return loader, np.asarray(sampler.positions, dtype=np.int64)


def predict_probs(model, loader, positions: np.ndarray, n: int, rt: Runtime, progress: bool = False,
                  desc: str = "predict") -> np.ndarray:
    """Softmax probabilities (n, C) for every position of the dataset; under DDP each rank scores
    its share and the shares are gathered, so every rank returns the full array."""
    cfg = model.config
    was_training = model.training
    model.eval()
    chunks = []
    with torch.inference_mode():
        for images, _targets, _rows in bar(loader, inner=True, desc=desc, leave=False,
                                           disable=not (progress and rt.is_main), unit="batch"):
            with rt.autocast():
                logits = model(rt.to_input(images, cfg.mean, cfg.std))
            chunks.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    model.train(was_training)
    mine = np.concatenate(chunks) if chunks else np.zeros((0, cfg.num_classes), dtype=np.float32)
    return gather_rows(rt, positions, mine, n)


def gather_rows(rt: Runtime, positions: np.ndarray, mine: np.ndarray, n: int) -> np.ndarray:
    """Under DDP each rank computed the rows ``positions`` of an (n, …) array: every rank gets all of it."""
    if not rt.distributed:
        return mine
    # numpy arrays, gathered as objects: on CUDA the process group has a gloo backend for CPU data
    # beside NCCL (clotclf_core.training.distributed.init_distributed), so this never needs a GPU copy
    shares: list[Any] = [None] * rt.world_size
    dist.all_gather_object(shares, (positions, mine))
    out = np.zeros((n, *mine.shape[1:]), dtype=mine.dtype)
    for pos, rows in shares:
        out[pos] = rows
    return out


class TileScorer:
    """Scores ``rows`` (positions in ``tileset.index``) with any model taking ``input_size`` px.

    The loader is made once, so loader workers start once however often :meth:`probs` is called
    (training validates every epoch). ``frame`` is the index rows scored, in the order of the
    probabilities.
    """

    def __init__(self, tileset: "TileSet", rows: Sequence[int], labels: list[str], input_size: int,
                 batch_size: int, workers: int, rt: Runtime, stain: dict | None = None):
        if batch_size < 1:
            raise ClotclfError(f"--batch-size must be at least 1 (got {batch_size})")
        self.rt = rt
        self.dataset = TileDataset(tileset, rows, labels, build_transform(input_size, tileset.tile_size, None), stain=stain)
        self.loader, self.positions = eval_loader(self.dataset, batch_size, workers, rt)
        self.frame = tileset.index.iloc[list(rows)].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.dataset)

    def probs(self, model, progress: bool = False, desc: str = "predict") -> np.ndarray:
        return predict_probs(model, self.loader, self.positions, len(self.dataset), self.rt, progress, desc)


def score_tiles(model, tileset: "TileSet", rows: Sequence[int], batch_size: int, workers: int, rt: Runtime,
                progress: bool = False, desc: str = "predict") -> tuple["Any", np.ndarray]:
    """(index rows, tile probabilities) of ``rows`` under ``model``: :class:`TileScorer`, once."""
    scorer = TileScorer(tileset, rows, list(model.config.labels), model.config.input_size, batch_size, workers, rt,
                        stain=model.config.stain_normalise)
    return scorer.frame, scorer.probs(model, progress, desc)


# ----------------------------------------------------------------------------- bags (MIL)


@dataclass
class BagScores:
    """A MIL model on some slides: ``probs`` (slides, C); with details, per slide the attention of
    each of its tiles (None for an aggregator without attention) and each tile's class
    probabilities on its own (the tile as a bag of one), in the order of the slide's tile rows."""

    probs: np.ndarray
    attention: list[np.ndarray | None] | None = None
    tile_probs: list[np.ndarray] | None = None


class BagScorer:
    """Scores slides (:class:`clotclf_core.features.bags.Slides`, every tile of each) with a MIL model.

    ``config`` is the model's: on features (its :attr:`~clotclf_core.models.config.ModelConfig.form`),
    ``data`` is a :class:`clotclf_core.features.bags.FeatureBags` (the bags are its stored features);
    end to end a TileSet (every tile goes through the model's backbone once, at the model's input
    size, in batches of ``batch_size`` tiles, sharded over DDP ranks, then each slide's features are
    pooled). ``frame`` has one row per slide (image_id, patient_id, center_id, label, n_tiles)."""

    def __init__(self, data: Any, slides: Any, batch_size: int, workers: int, rt: Runtime, config: ModelConfig):
        if batch_size < 1:
            raise ClotclfError(f"--batch-size must be at least 1 (got {batch_size})")
        self.data, self.slides, self.batch_size, self.workers, self.rt = data, slides, batch_size, workers, rt
        self.frame = slides.frame
        self.on_features = config.form.on_features
        self._loader = None
        if not self.on_features:
            rows = np.concatenate(slides.rows) if len(slides) else np.zeros(0, dtype=np.int64)
            size = int(config.input_size)
            self.dataset = TileDataset(data, rows, [], build_transform(size, data.tile_size, None),
                                       stain=config.stain_normalise)
            self._loader, self._positions = eval_loader(self.dataset, batch_size, workers, rt)

    def __len__(self) -> int:
        return len(self.slides)

    def _tile_features(self, model, progress: bool, desc: str) -> list[np.ndarray]:
        """End to end: every tile's backbone features, split per slide."""
        cfg = model.config
        chunks = []
        with torch.inference_mode():
            for images, _t, _r in bar(self._loader, inner=True, desc=f"{desc} (tiles)", leave=False,
                                      disable=not (progress and self.rt.is_main), unit="batch"):
                with self.rt.autocast():
                    feats = model.tile_features(self.rt.to_input(images, cfg.mean, cfg.std))
                chunks.append(feats.float().cpu().numpy())
        mine = np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=np.float32)
        allf = gather_rows(self.rt, self._positions, mine, len(self.dataset))
        bounds = np.cumsum([0] + [len(r) for r in self.slides.rows])
        return [allf[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _stored_features(self, i: int) -> np.ndarray:
        fr = self.data.index["feature_row"].to_numpy()[self.slides.rows[i]]
        return np.asarray(self.data.features(self.slides.ids[i])[fr], dtype=np.float32)

    def score(self, model, progress: bool = False, desc: str = "predict", details: bool = False) -> BagScores:
        """Probabilities of every slide (and, with ``details``, attention and per-tile probabilities)."""
        was_training = model.training
        model.eval()
        n = len(self.slides)
        feats = None if self.on_features else self._tile_features(model, progress, desc)
        get = (lambda i: feats[i]) if feats is not None else self._stored_features
        order = np.argsort([len(r) for r in self.slides.rows], kind="stable")  # similar lengths pad little
        probs = np.zeros((n, model.config.num_classes), dtype=np.float32)
        attention: list[Any] = [None] * n
        tile_probs: list[Any] = [None] * n
        batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        with torch.inference_mode():
            for idx in bar(batches, inner=True, desc=desc, leave=False, disable=not (progress and self.rt.is_main),
                           unit="batch"):
                arrays = [get(int(i)) for i in idx]
                bags, mask = pad_to(arrays, max(len(a) for a in arrays))
                x = torch.from_numpy(bags).to(self.rt.device)
                m = torch.from_numpy(mask).to(self.rt.device)
                with self.rt.autocast():
                    logits, att = _pool(model, x, m)
                p = torch.softmax(logits.float(), dim=1).cpu().numpy()
                for j, i in enumerate(idx.tolist()):
                    probs[i] = p[j]
                    k = len(arrays[j])
                    if details:
                        attention[i] = None if att is None else att[j, :k].float().cpu().numpy()
                        with self.rt.autocast():
                            tl = model.instance_logits(x[j, :k])
                        tile_probs[i] = torch.softmax(tl.float(), dim=1).cpu().numpy()
        model.train(was_training)
        return BagScores(probs, attention if details else None, tile_probs if details else None)

    def probs(self, model, progress: bool = False, desc: str = "predict") -> np.ndarray:
        return self.score(model, progress, desc).probs


def _pool(model, bags, mask):
    """A MIL model on (B, N, F) features (the backbone, if any, already applied): its standardisation,
    if it stores one, then its aggregator (:meth:`clotclf_core.models.mil.MILClassifier.pool`)."""
    return model.pool(bags, mask, return_attention=True)


def score_bags(model, data: Any, slides: Any, batch_size: int, workers: int, rt: Runtime, progress: bool = False,
               desc: str = "predict", details: bool = False) -> tuple["Any", BagScores]:
    """(one row per slide, :class:`BagScores`) of ``slides`` under the MIL ``model``: :class:`BagScorer`, once."""
    scorer = BagScorer(data, slides, batch_size, workers, rt, model.config)
    return scorer.frame, scorer.score(model, progress, desc, details)

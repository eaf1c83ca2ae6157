"""``clotclf smoke-test``: quick checks that installed components work.

- :func:`smoke_all`: every installed backbone x head, built with default options, one training step (the
  zoo's published encoders, `extra["encoder"]`, are left out: see :data:`ZOO_SKIP`).
- :func:`smoke_plugins`: every component of the named plugins (the test kit a plugin author runs
  in CI): for each kind, the check in :data:`SMOKE_BY_KIND` —

  * backbone: build with default options, ``num_features``, one training step (forward, backward,
    optimiser step) through a linear probe, a batch of one in training and eval mode, and a
    safetensors save / strict load round trip into a second build giving the same outputs;
  * head: the same on random features of width 32;
  * aggregator: build for features of width 32, logits on random bags with padding, padded
    positions changing nothing, attention (when it has any) >= 0, 0 where padded and summing to 1,
    an empty bag giving finite logits, a training step, a bag batch of one, a round trip;
  * filter: build, ``threshold``, ``score`` on generated tiles (glass, noise, stained tissue-like
    texture) — one finite score per tile, the same scores twice, a batch of one;
  * source: a generated tiled TIFF (written here): ``can_open``, ``open``, ``dimensions``,
    ``read_region`` (exact pixels, downsampled shape, white outside the slide), ``thumbnail``.

  A new kind is one entry in :data:`SMOKE_BY_KIND` (a function ``(spec, input_size, batch_size,
  seed) -> list of check names``); a kind without one is reported as skipped. A component whose
  defaults cannot be built (a filter that needs ``weights=``) is skipped with the reason.

At about 410 lines this module is over the project's ~400: it is one concern (the smoke checks, one
short function per component kind sharing the build, training-step and round-trip helpers), and a
plugin author finds every check their CI runs in this one module.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from clotclf_core.models.config import ModelConfig
from clotclf_core.plugin.errors import ClotclfError, ConfigError
from clotclf_core.plugin.spec import ComponentSpec
from clotclf_core.plugin_manager import get_manager


class SmokeSkip(Exception):
    """A check that cannot run for this component (not a failure)."""


class SmokeFailure(AssertionError):
    """A component broke its contract."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def _check_batch_size(batch_size: int, input_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size}): a training step needs images")
    if input_size < 8:
        raise ConfigError(f"--input-size must be at least 8 pixels (got {input_size})")


# ----------------------------------------------------------------------------- backbone x head


def smoke_one(backbone: str, head: str, input_size: int = 64, batch_size: int = 2, seed: int = 0) -> dict[str, Any]:
    import torch

    from clotclf_core.models.build import build_model

    _check_batch_size(batch_size, input_size)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = build_model(ModelConfig(backbone=backbone, head=head, input_size=input_size))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch_size, 3, input_size, input_size)
    y = torch.arange(batch_size) % model.config.num_classes
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {
        "backbone": backbone,
        "head": head,
        "params_m": round(params, 2),
        "loss": round(float(loss.detach()), 4),
        "seconds": round(time.perf_counter() - t0, 2),
        "status": "ok" if torch.isfinite(loss) else "error: non-finite loss",
    }


def smoke_all(input_size: int = 64, batch_size: int = 2) -> list[dict[str, Any]]:
    _check_batch_size(batch_size, input_size)
    mgr = get_manager()
    rows = []
    for b in mgr.components("backbone"):
        if "encoder" in b.extra:  # the zoo's published encoders: see ZOO_SKIP
            continue
        required = [n for n, f in b.options.model_fields.items() if f.is_required()]
        if required:  # e.g. transformers needs model=ORG/NAME: nothing to build without the user's choice
            rows.append({"backbone": b.name, "head": "-", "params_m": "-", "loss": "-", "seconds": "-",
                         "status": f"skipped: needs options without defaults: {', '.join(required)}"})
            continue
        for h in mgr.components("head"):
            try:
                row = smoke_one(f"{b.plugin}/{b.name}", f"{h.plugin}/{h.name}", input_size, batch_size)
                rows.append(row | {"backbone": b.name, "head": h.name})
            except Exception as exc:  # report, keep going: this is a diagnostic
                rows.append({"backbone": b.name, "head": h.name, "params_m": "-", "loss": "-", "seconds": "-",
                             "status": f"error: {type(exc).__name__}: {str(exc)[:160]}"})
    return rows


# ----------------------------------------------------------------------------- per component


def _defaults(spec: ComponentSpec, **fill: Any) -> Any:
    values = {k: v for k, v in fill.items() if k in spec.options.model_fields}
    required = [n for n, f in spec.options.model_fields.items() if f.is_required() and n not in values]
    if required:
        raise SmokeSkip(f"needs options without defaults: {', '.join(required)}")
    return spec.validate_options(values)


def _build(spec: ComponentSpec, *args: Any) -> Any:
    try:
        return spec.factory(*args)
    except ClotclfError as exc:
        if exc.__cause__ is not None and not isinstance(exc.__cause__, ClotclfError):
            raise SmokeFailure(str(exc)) from exc  # the factory itself raised: a bug in the plugin
        # the plugin said what is missing (e.g. a filter that needs weights=): a setting, not a bug
        raise SmokeSkip(f"does not build with default options ({exc})") from None


def _train_step(torch: Any, model: Any, x: Any, y: Any, what: str) -> float:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    _check(bool(params), f"{what} has no trainable parameters")
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    value = float(loss.detach())
    _check(bool(torch.isfinite(loss.detach())), f"{what}: non-finite loss {value} on random input")
    loss.backward()
    _check(any(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in params), f"{what}: no finite gradients")
    opt.step()
    _check(any(not torch.equal(a, p.detach()) for a, p in zip(before, params)), f"{what}: the optimiser step changed nothing")
    return value


def _round_trip(torch: Any, first: Any, second: Any, x: Any, what: str) -> None:
    from safetensors.torch import load, save

    from clotclf_core.plugin.weights import load_state_into

    first.eval()
    state = {k: v.detach().cpu().clone().contiguous() for k, v in first.state_dict().items()}
    load_state_into(second, load(save(state)), f"{what} (round trip)")
    second.eval()
    with torch.no_grad():
        a, b = first(x), second(x)
    _check(a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-4),
           f"{what}: a second build loaded with the first one's weights gives other outputs (max diff "
           f"{float((a - b).abs().max()):.3g}); is part of the state outside state_dict()?")


def smoke_backbone(spec: ComponentSpec, input_size: int, batch_size: int, seed: int) -> list[str]:
    import torch
    from torch import nn

    opts = _defaults(spec, img_size=input_size)
    torch.manual_seed(seed)
    backbone = _build(spec, opts)
    nf = getattr(backbone, "num_features", None)
    _check(isinstance(nf, int) and nf > 0, f"num_features is {nf!r}, not a positive int")
    x = torch.randn(batch_size, 3, input_size, input_size)
    with torch.no_grad():
        feats = backbone.eval()(x)
    _check(tuple(feats.shape) == (batch_size, nf), f"features of shape {tuple(feats.shape)}, expected ({batch_size}, {nf})")
    probe = nn.Sequential(backbone, nn.Linear(nf, 2))
    _train_step(torch, probe, x, torch.arange(batch_size) % 2, "training step")
    probe.train()
    one = probe(x[:1])
    one.sum().backward()
    _check(tuple(one.shape) == (1, 2), f"a batch of one gives shape {tuple(one.shape)}")
    torch.manual_seed(seed + 1)
    _round_trip(torch, backbone, _build(spec, opts), x, "backbone")
    return ["build", "features", "train step", "batch of 1", "save/load"]


def smoke_head(spec: ComponentSpec, input_size: int, batch_size: int, seed: int) -> list[str]:
    import torch

    opts = _defaults(spec)
    torch.manual_seed(seed)
    width = 32
    head = _build(spec, opts, width, 2)
    x = torch.randn(batch_size, width)
    with torch.no_grad():
        out = head.eval()(x)
    _check(tuple(out.shape) == (batch_size, 2), f"logits of shape {tuple(out.shape)}, expected ({batch_size}, 2)")
    _train_step(torch, head, x, torch.arange(batch_size) % 2, "training step")
    head.train()
    one = head(x[:1])
    one.sum().backward()
    _check(tuple(one.shape) == (1, 2), f"a batch of one gives shape {tuple(one.shape)}")
    torch.manual_seed(seed + 1)
    _round_trip(torch, head, _build(spec, opts, width, 2), x, "head")
    return ["build", "logits", "train step", "batch of 1", "save/load"]


def generated_tiles(size: int, seed: int = 0) -> Any:
    """uint8 (4, size, size, 3): glass, noise, and two stained tissue-like tiles (synthetic)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    glass = np.full((size, size, 3), (238, 236, 240), np.uint8)
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    wave = (np.sin(xx / 3.0) * np.cos(yy / 4.0) + 1) / 2
    tissue = np.stack([150 + 80 * wave, 60 + 60 * wave, 120 + 60 * wave], -1).astype(np.uint8)
    half = tissue.copy()
    half[:, : size // 2] = glass[:, : size // 2]
    return np.stack([glass, noise, tissue, half])


def smoke_filter(spec: ComponentSpec, input_size: int, batch_size: int, seed: int) -> list[str]:
    import numpy as np

    opts = _defaults(spec)
    obj = _build(spec, opts)
    threshold = getattr(obj, "threshold", None)
    _check(isinstance(threshold, (int, float)) and not isinstance(threshold, bool), f"threshold is {threshold!r}, not a number")
    tiles = generated_tiles(input_size, seed)
    scores = np.asarray(obj.score(tiles))
    _check(scores.shape == (len(tiles),), f"score() of {len(tiles)} tiles returned shape {scores.shape}")
    _check(bool(np.isfinite(scores).all()), f"score() returned non-finite scores {scores.tolist()}")
    again = np.asarray(obj.score(tiles.copy()))
    _check(np.allclose(scores, again), "score() gave other scores for the same tiles")
    one = np.asarray(obj.score(tiles[2:3]))
    _check(one.shape == (1,) and bool(np.isfinite(one).all()), f"score() of a batch of one returned {one!r}")
    return ["build", "threshold", "score", "deterministic", "batch of 1"]


def smoke_source(spec: ComponentSpec, input_size: int, batch_size: int, seed: int) -> list[str]:
    import numpy as np
    import tifffile

    opts = _defaults(spec)
    obj = _build(spec, opts)
    width, height = 640, 480
    pixels = generated_tiles(160, seed)[2]
    pixels = np.tile(pixels, (3, 4, 1))[:height, :width].copy()
    pixels[::37] = 255 - pixels[::37]  # no two regions alike
    exts = {str(e).lower() for e in spec.extra.get("extensions", ())}
    what = "PNG" if ".png" in exts and not exts & {".tif", ".tiff"} else "tiled TIFF"  # a lossless file it declares
    with tempfile.TemporaryDirectory(prefix="clotclf-smoke-") as tmp:
        path = str(Path(tmp) / ("synthetic.png" if what == "PNG" else "synthetic.tif"))
        if what == "PNG":
            from PIL import Image

            Image.fromarray(pixels).save(path)
        else:
            tifffile.imwrite(path, pixels, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None)
        if not obj.can_open(path):
            raise SmokeSkip(f"can_open() is False for a generated {what}, so it cannot be checked here")
        slide = obj.open(path)
        try:
            _check(tuple(slide.dimensions) == (width, height), f"dimensions {tuple(slide.dimensions)}, expected {(width, height)}")
            region = np.asarray(slide.read_region(100, 60, 50, 40, 1.0))
            _check(region.shape == (40, 50, 3) and region.dtype == np.uint8, f"read_region gave {region.shape} {region.dtype}")
            _check(np.array_equal(region, pixels[60:100, 100:150]), "read_region(100, 60, 50, 40) returned other pixels than the file's")
            small = np.asarray(slide.read_region(0, 0, 200, 100, 2.0))
            _check(small.shape == (50, 100, 3), f"read_region with downsample 2 gave shape {small.shape}, expected (50, 100, 3)")
            outside = np.asarray(slide.read_region(width - 10, height - 10, 20, 20, 1.0))
            _check(outside.shape == (20, 20, 3) and bool((outside[15:, 15:] == 255).all()),
                   "pixels outside the slide are not white")
            thumb = np.asarray(slide.thumbnail(64))
            _check(thumb.ndim == 3 and thumb.shape[2] == 3 and max(thumb.shape[:2]) <= 64,
                   f"thumbnail(64) gave shape {thumb.shape}")
        finally:
            slide.close()
    return ["build", "can_open", "open", "dimensions", "read_region", "downsample", "outside", "thumbnail"]


def smoke_aggregator(spec: ComponentSpec, input_size: int, batch_size: int, seed: int) -> list[str]:
    import torch

    from clotclf_core.models.aggregate import has_auxiliary_loss, run_aggregator, run_for_training

    opts = _defaults(spec)
    torch.manual_seed(seed)
    width, n = 32, 6
    agg = _build(spec, opts, width, 2)
    _check(hasattr(agg, "has_attention"), "the module does not set has_attention (True or False)")
    bags = torch.randn(batch_size, n, width)
    mask = torch.ones(batch_size, n, dtype=torch.bool)
    mask[0, n // 2:] = False  # the first bag is half padding
    agg.eval()
    with torch.no_grad():
        logits, att = run_aggregator(agg, bags, mask, return_attention=True)
        changed = bags.clone()
        changed[0, n // 2:] = 1e3 * torch.randn(n - n // 2, width)
        again, _ = run_aggregator(agg, changed, mask, return_attention=True)
        empty, _ = run_aggregator(agg, bags[:1], torch.zeros(1, n, dtype=torch.bool))
    _check(tuple(logits.shape) == (batch_size, 2), f"logits of shape {tuple(logits.shape)}, expected ({batch_size}, 2)")
    _check(torch.allclose(logits, again, atol=1e-5), "changing the features at padded positions changed the logits")
    _check(bool(torch.isfinite(empty).all()), "a bag with no real tile gave non-finite logits")
    checks = ["build", "logits", "padding ignored", "empty bag"]
    if agg.has_attention:
        _check(att is not None, "has_attention is True but no attention was returned")
        _check(bool((att >= 0).all()) and bool((att[0, n // 2:] == 0).all()), "attention is negative, or not 0 at padded positions")
        _check(torch.allclose(att.sum(1), torch.ones(batch_size), atol=1e-4), f"attention sums to {att.sum(1).tolist()}, not 1 per bag")
        checks.append("attention")

    class Probe(torch.nn.Module):  # the shared step / round-trip helpers call module(x) -> logits; x = (bags, mask)
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return run_aggregator(self.inner, x[0], x[1])[0]

    _train_step(torch, Probe(agg), (bags, mask), torch.arange(batch_size) % 2, "training step")
    agg.train()
    if has_auxiliary_loss(agg):  # plugin API 2.1: the training step's call, with the aggregator's own loss term
        targets = torch.arange(batch_size) % 2
        _, extra = run_for_training(agg, bags, mask, targets)
        _check(bool(torch.isfinite(extra.detach())), f"the auxiliary loss is {float(extra.detach())}, not finite")
        torch.manual_seed(seed)
        _, extra_again = run_for_training(agg.eval(), changed, mask, targets)
        torch.manual_seed(seed)
        _, extra_first = run_for_training(agg, bags, mask, targets)
        agg.train()
        _check(torch.allclose(extra_first.detach(), extra_again.detach(), atol=1e-4),
               "changing the features at padded positions changed the auxiliary loss")
        checks.append("auxiliary loss")
    one, _ = run_aggregator(agg, bags[:1], mask[:1])
    one.sum().backward()
    _check(tuple(one.shape) == (1, 2), f"a batch of one bag gives shape {tuple(one.shape)}")
    torch.manual_seed(seed + 1)
    _round_trip(torch, Probe(agg), Probe(_build(spec, opts, width, 2)), (bags, mask), "aggregator")
    return checks + ["train step", "batch of 1", "save/load"]


#: kind -> check; see the module docstring
SMOKE_BY_KIND: dict[str, Callable[[ComponentSpec, int, int, int], list[str]]] = {
    "backbone": smoke_backbone,
    "head": smoke_head,
    "filter": smoke_filter,
    "source": smoke_source,
    "aggregator": smoke_aggregator,
}


#: why a published encoder (a spec with ``extra["encoder"]``: the zoo) is left out unless named
ZOO_SKIP = ("a published encoder (weights from the Hub, up to a billion parameters): its architecture is checked on the "
            "meta device by clotclf's tests; name it (`clotclf smoke-test NAME`) to check it with its weights")


def _targets(names: list[str]) -> list[tuple[str, list[ComponentSpec], str, bool]]:
    """``(plugin, its specs, status, named)`` per name: a plugin (entry-point or distribution name) or a component
    name (``named``: the user asked for that component itself)."""
    mgr = get_manager()
    out = []
    for name in names:
        info = mgr.plugin_info(name)
        if info is not None:
            specs = [s for s in mgr.components() if s.plugin == info.name]
            status = "ok" if info.ok else info.status
            out.append((info.name, specs, status, False))
            continue
        base = name.split("/")[-1]
        specs = [s for s in mgr.components() if s.name == base and ("/" not in name or s.plugin == name.split("/")[0])]
        if not specs:
            plugins = ", ".join(p.name for p in mgr.plugins)
            raise ClotclfError(f"no plugin or component called '{name}'; installed plugins: {plugins} (see `clotclf list-plugins`)")
        out.append((specs[0].plugin, specs, "ok", True))
    return out


def smoke_plugins(names: list[str], input_size: int = 64, batch_size: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """Check every component of the plugins (or components) ``names``; one row per component."""
    _check_batch_size(batch_size, input_size)
    rows = []
    for plugin, specs, status, named in _targets(names):
        if status != "ok":
            rows.append({"plugin": plugin, "kind": "-", "name": "-", "checks": "", "seconds": 0.0, "status": status})
            continue
        if not specs:
            rows.append({"plugin": plugin, "kind": "-", "name": "-", "checks": "", "seconds": 0.0,
                         "status": "skipped: provides no components (commands or hooks only)"})
        for spec in specs:
            row = {"plugin": plugin, "kind": spec.kind, "name": spec.name, "checks": "", "seconds": 0.0}
            check = SMOKE_BY_KIND.get(spec.kind)
            t0 = time.perf_counter()
            try:
                if not named and "encoder" in spec.extra:
                    raise SmokeSkip(ZOO_SKIP)
                if check is None:
                    raise SmokeSkip(f"no smoke test for kind '{spec.kind}' in this clotclf")
                row["checks"] = ", ".join(check(spec, input_size, batch_size, seed))
                row["status"] = "ok"
            except SmokeSkip as exc:
                row["status"] = f"skipped: {exc}"
            except SmokeFailure as exc:
                row["status"] = f"error: {exc}"
            except Exception as exc:  # noqa: BLE001 - report, keep going: this is a diagnostic
                row["status"] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
    return rows

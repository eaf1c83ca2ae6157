"""Which backbone a name means: a plugin's component (``cct``, ``timm``, ``uni2-h``), or a backbone
that ``clotclf pretrain`` wrote (``run:PATH``, ``run:ORG/NAME@REV`` from the registry).

    --backbone run:runs/ssl-dino                # any command that takes a backbone

A pre-training run directory holds the backbone's weights (``model.safetensors``) and a
``config.json`` of ``kind: backbone`` recording which component it is (name, options, provider)
and what it expects (input size, normalisation, the scale of the tiles it learnt from).
:func:`backbone_spec` turns ``run:REF`` into a :class:`~clotclf_core.plugin.spec.ComponentSpec`
that looks like the recorded component (same name, provider and recorded options, so a model
trained on it saves and rebuilds like any other and never needs the run again) and whose factory
builds that component without downloading anything (:func:`rebuild_overrides`) and loads the
run's weights, checked against the sha256 its config.json records. The run a backbone came from
travels with it: ``module.clotclf_backbone_run`` (what an encoder record keeps, so features made
with it can be embedded again) and the spec's ``extra["backbone_run"]``.

Only reads: the writing side is :mod:`clotclf_core.training.pretrain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clotclf_core.plugin.encoders import EncoderInfo
from clotclf_core.plugin.errors import ModelLoadError, PluginError, printable
from clotclf_core.plugin.spec import ComponentSpec, NoOptions
from clotclf_core.plugin.weights import CONFIG_NAME, check_weights_hash, read_run_config, run_weights
from clotclf_core.plugin_manager import get_manager

RUN_PREFIX = "run:"
#: config.json's ``kind`` of a pre-trained backbone
BACKBONE_KIND = "backbone"
HOW = "pre-train one with `clotclf pretrain --tiles TILES --method dino --backbone NAME --out RUN`"


def is_run_ref(name: str | None) -> bool:
    return isinstance(name, str) and name.startswith(RUN_PREFIX)


def rebuild_overrides(spec: ComponentSpec) -> dict[str, Any]:
    """Options set when saved weights replace what a component's factory would load:
    ``spec.extra['rebuild_options']``, or ``pretrained=False`` when the options model has a
    ``pretrained`` field (a rebuild never downloads)."""
    given = spec.extra.get("rebuild_options")
    if isinstance(given, dict):
        return dict(given)
    return {"pretrained": False} if "pretrained" in spec.options.model_fields else {}


@dataclass(frozen=True)
class BackboneRun:
    """A pre-trained backbone's run directory, read and checked (not built)."""

    ref: str  #: as the user gave it, without ``run:``
    path: Path
    config: dict[str, Any]
    weights: Path

    @property
    def backbone(self) -> str:
        return str(self.config["backbone"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.config.get("backbone_options") or {})

    @property
    def provider(self) -> dict[str, Any] | None:
        plugins = self.config.get("plugins") if isinstance(self.config.get("plugins"), dict) else {}
        return plugins.get("backbone") if isinstance(plugins.get("backbone"), dict) else None

    def record(self) -> dict[str, Any]:
        """What a model or an encoder record keeps about where its backbone's weights came from."""
        pretrain = self.config.get("pretrain") if isinstance(self.config.get("pretrain"), dict) else {}
        return {"run": self.ref, "weights_sha256": self.config.get("weights_sha256"), "method": pretrain.get("method")}


def read_backbone_run(ref: str) -> BackboneRun:
    """The run directory ``ref`` names (a folder, or a registry name the resolve hook knows), checked:
    a ``kind: backbone`` config.json that names its component, and the weights it records."""
    from clotclf_core.models.runs import resolve_run_dir

    ref = ref.removeprefix(RUN_PREFIX)
    if not ref:
        raise ModelLoadError(f"--backbone run: needs a run directory after 'run:' (run:PATH or run:ORG/NAME); {HOW}")
    path = resolve_run_dir(ref)
    config = read_run_config(path, "a pre-trained backbone's run directory", HOW)
    if config.get("kind") != BACKBONE_KIND:
        what = printable(config.get("kind") or ("clot classifier" if "model" in config else "something else"), 80)
        raise ModelLoadError(
            f"'{ref}' holds a {what}, not a pre-trained backbone (config.json kind 'backbone'): give a run directory "
            f"of `clotclf pretrain`; a trained model is used with --model, not --backbone")
    if not isinstance(config.get("backbone"), str) or not isinstance(config.get("backbone_options", {}), dict):
        raise ModelLoadError(f"'{path / CONFIG_NAME}' names no backbone component: it was edited or is damaged; {HOW}")
    weights = run_weights(path)
    check_weights_hash(config, weights)
    # a folder is recorded by its absolute path (a push redacts it to the folder's name), a registry name as given
    shown = str(Path(path).resolve()) if Path(ref).expanduser().is_dir() else ref
    return BackboneRun(shown, Path(path), config, weights)


def _run_info(run: BackboneRun) -> EncoderInfo | None:
    """The run's own EncoderInfo: its input, normalisation and the scale of its tiles; the licence
    of the weights it started from (a preset's) where it had any."""
    recorded = run.config.get("encoder")
    if not isinstance(recorded, dict):
        return None
    try:
        return EncoderInfo.model_validate(recorded)
    except ValueError:
        return None


def run_spec(ref: str) -> ComponentSpec:
    """A spec for the pre-trained backbone in ``ref`` (see the module docstring)."""
    from clotclf_core.plugin.weights import load_state, load_state_into

    run = read_backbone_run(ref)
    row = get_manager().requirement("backbone", run.backbone, run.provider)
    base = row["spec"]
    if base is None:
        raise PluginError(f"the pre-trained backbone '{run.ref}' is a '{printable(run.backbone, 80)}' backbone: {row['fix']}")
    inputs = run.config.get("input") if isinstance(run.config.get("input"), dict) else {}
    origin = run.record()

    def build(opts: NoOptions):
        options = base.validate_options(run.options | rebuild_overrides(base))
        module = base.factory(options)
        load_state_into(module, load_state(run.weights), f"{run.ref} ({run.weights.name})")
        if inputs.get("mean") and inputs.get("std") and inputs.get("input_size"):
            side = int(inputs["input_size"])
            module.pretrained_cfg = {**dict(getattr(module, "pretrained_cfg", None) or {}), "mean": tuple(inputs["mean"]),
                                     "std": tuple(inputs["std"]), "input_size": (3, side, side)}
        recorded = getattr(module, "clotclf_record_options", None)
        # what a model built on it records as this backbone's options: the run's, as it was trained
        module.clotclf_record_options = {**run.options, **(recorded if isinstance(recorded, dict) else {})}
        module.clotclf_backbone_run = dict(origin)
        return module

    info = _run_info(run)
    extra: dict[str, Any] = {"backbone_run": origin, "rebuild_options": {}}
    if info is not None:
        extra["encoder"] = info
    return ComponentSpec("backbone", base.name, f"{base.name} pre-trained by clotclf pretrain ({origin['method']}) in "
                         f"{printable(run.ref, 120)}", NoOptions, build, extra=extra, plugin=base.plugin,
                         distribution=base.distribution, version=base.version)


def backbone_spec(name: str) -> ComponentSpec:
    """The spec ``--backbone name`` means: ``run:REF`` a pre-trained backbone, else a plugin's."""
    return run_spec(name) if is_run_ref(name) else get_manager().get("backbone", name)


def load_backbone_run(path: str | Path) -> Any:
    """The backbone of a pre-training run directory, built and loaded (what the registry checks
    before a push)."""
    return run_spec(str(path)).factory(NoOptions())


def check_backbone_run(path: str | Path) -> dict[str, Any]:
    """Everything :func:`load_backbone_run` checks, without allocating the backbone: its component is
    built on the meta device and its parameter names and shapes compared with the weights' header
    (what a pull checks before it keeps a run). Returns ``{"parameters", "needs"}``."""
    import torch

    from clotclf_core.models.requirements import check_requirements
    from clotclf_core.models.runs import read_safetensors_header
    from clotclf_core.plugin.weights import _shape_problems

    run = read_backbone_run(str(path))
    needs = check_requirements(run.config, str(path))
    base = get_manager().requirement("backbone", run.backbone, run.provider)["spec"]
    options = base.validate_options(run.options | rebuild_overrides(base))
    with torch.device("meta"):
        module = base.factory(options)
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    header = read_safetensors_header(run.weights)
    problems = _shape_problems(own, {k: shape for k, (_, shape) in header.items()})
    if problems:
        raise ModelLoadError(f"weights in '{run.weights}' do not fit the {run.backbone} backbone its config.json describes: "
                             + "; ".join(problems))
    return {"parameters": sum(p.numel() for p in module.parameters()), "needs": needs}

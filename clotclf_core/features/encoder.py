"""A frozen encoder: a backbone plugin in eval mode that turns uint8 tiles into feature vectors.

:func:`build_encoder` builds any backbone plugin (``timm`` with a foundation model from the Hub,
``cct``, a third party's…) the way model building does (options validated first, ``img_size``
filled with the input size), reads the input it declares (:mod:`clotclf_core.models.inputs`)
and hashes its weights. :meth:`Encoder.record` is what a feature store (and later a MIL run)
stores to say which encoder made the features; :func:`encoder_from_record` rebuilds it from that
record and refuses one whose weights came out different.

``Encoder(batch)`` maps uint8 (B, S, S, 3) RGB tiles (what ``TileSet.pixels`` holds) to float16
(B, F): to the device, to float, normalised with the encoder's mean / std, resized to its input
size (bilinear, antialiased) when the tiles are another size, forward under ``inference_mode``
(bf16 autocast on CUDA).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clotclf_core.models.backbones import backbone_spec
from clotclf_core.models.config import describe_encoder
from clotclf_core.models.inputs import InputSpec, input_spec, to_input
from clotclf_core.models.runtime import pick_runtime
from clotclf_core.plugin.encoders import EncoderInfo, encoder_info
from clotclf_core.plugin.errors import ClotclfError, PluginError
from clotclf_core.tiling.stain import StainTarget, parse_stain_normalise


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over the module's state dict: each entry's name, dtype, shape and raw bytes, in name
    order. Equal for equal weights however they were loaded (Hub file, cache, seeded random init)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)  # numpy has no bfloat16: hash the same bytes
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class Encoder:
    """A built, frozen backbone and what it expects. Call it on uint8 NHWC batches."""

    module: torch.nn.Module
    backbone: str
    options: dict[str, Any]
    spec: InputSpec
    input_size: int
    weights_sha256: str
    device: torch.device
    precision: str = "fp32"  # "fp32" | "bf16" (autocast, CUDA)
    seed: int = 0
    provenance: dict[str, str] = field(default_factory=dict)
    #: what each feature means, when the backbone names them (plugin API 2.1 ``feature_names``)
    feature_names: list[str] | None = None
    #: the stain normalisation applied to every slide's tiles before the backbone (``--stain-normalise``)
    stain: StainTarget | None = None
    #: what a published encoder says about itself (its spec's ``extra["encoder"]``), e.g. its microns per pixel
    info: EncoderInfo | None = None
    #: a backbone of `clotclf pretrain`: the run its weights come from (``run``, ``weights_sha256``, ``method``)
    backbone_run: dict[str, Any] | None = None

    @property
    def num_features(self) -> int:
        return int(self.module.num_features)

    def record(self) -> dict[str, Any]:
        """What a feature store records (features.json ``encoder``); see docs/data-formats.md."""
        snapshot = self.options.get("hub_snapshot") if isinstance(self.options.get("hub_snapshot"), dict) else {}
        return {
            "backbone": self.backbone,
            "options": self.options,
            **self.provenance,
            **({"hub_repo": snapshot.get("repo"), "hub_commit": snapshot.get("commit")} if snapshot else {}),
            **({"backbone_run": self.backbone_run} if self.backbone_run else {}),
            "num_features": self.num_features,
            "weights_sha256": self.weights_sha256,
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
            "input_size": self.input_size,
            "declared_input_size": self.spec.input_size,
            "normalisation_from": self.spec.source,
            "seed": self.seed,
            "precision": self.precision,
            "stain_normalise": self.stain.record() if self.stain is not None else None,
            **({"feature_names": list(self.feature_names)} if self.feature_names else {}),
        }

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) on any device -> normalised float32 (B, 3, size, size) on the encoder's
        device (channels-last on CUDA): :func:`clotclf_core.models.inputs.to_input`."""
        return to_input(images, self.spec.mean, self.spec.std, self.device, channels_last=self.device.type == "cuda",
                        size=self.input_size, nhwc=True)

    @torch.inference_mode()
    def forward_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) tensor -> float16 (B, F) tensor on the encoder's device."""
        with self._autocast():
            out = self.module(self.to_input(images))
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape != (images.shape[0], self.num_features):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise PluginError(
                f"backbone '{self.backbone}' returned {shape} for {images.shape[0]} tiles; a backbone must return pooled "
                f"features (B, num_features={self.num_features}) (see docs/plugins.md)")
        return out.to(torch.float16)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, S, S, 3) numpy -> float16 (B, F) numpy."""
        return self.forward_tensor(torch.from_numpy(np.ascontiguousarray(images))).cpu().numpy()


def _values_with_size(spec, values: dict[str, Any], size: int | None) -> dict[str, Any]:
    values = dict(values)
    if size and "img_size" in spec.options.model_fields and "img_size" not in values:
        values["img_size"] = int(size)  # same convention as model building (docs/plugins.md)
    return values


def feature_names_of(module: Any, name: str, num_features: int) -> list[str] | None:
    """The backbone's ``feature_names`` (plugin API 2.1), checked: ``num_features`` distinct
    non-empty strings, or None when it declares none."""
    names = getattr(module, "feature_names", None)
    if names is None:
        return None
    names = list(names) if isinstance(names, (list, tuple)) else None
    if (names is None or len(names) != num_features or not all(isinstance(n, str) and n.strip() for n in names)
            or len(set(names)) != len(names)):
        raise PluginError(f"backbone '{name}' declares feature_names that are not {num_features} distinct non-empty "
                          "strings (one per feature): fix the plugin (see docs/plugins.md, the tensor contract)")
    return names


def build_encoder(backbone: str, options: dict[str, Any] | None = None, *, tile_size: int | None = None,
                  input_size: int | None = None, device: str = "auto", seed: int = 0,
                  stain_normalise: str | dict[str, Any] | None = None) -> Encoder:
    """Build backbone ``backbone`` frozen, in eval mode, on ``device`` (``auto``: CUDA when present).

    The input size is ``input_size`` if given, else the one the backbone declares, else
    ``tile_size``. ``seed`` seeds torch first, so an encoder without pretrained weights is the
    same random network every time (and its ``weights_sha256`` says so). ``stain_normalise``: the
    ``--stain-normalise`` text, or a recorded target (:mod:`clotclf_core.tiling.stain`).
    """
    stain = (StainTarget.from_record(stain_normalise) if isinstance(stain_normalise, dict)
             else parse_stain_normalise(stain_normalise))
    rt = pick_runtime(device)
    spec = backbone_spec(backbone)  # a plugin's backbone, or a pre-training run (run:PATH)
    opts = spec.validate_options(_values_with_size(spec, dict(options or {}), input_size or tile_size))
    torch.manual_seed(seed)
    try:
        module = spec.factory(opts)
    except ClotclfError:
        raise
    except Exception as exc:  # a plugin factory's own error: name the options, not a traceback
        raise ClotclfError(
            f"backbone '{backbone}' cannot be built from these options ({type(exc).__name__}: {str(exc)[:200]}); "
            f"check them with `clotclf show-plugin {backbone}`") from None
    num_features = getattr(module, "num_features", None)
    if not isinstance(num_features, int) or num_features <= 0:
        raise PluginError(f"backbone '{backbone}' (plugin {spec.plugin}) built a module without a positive integer `num_features`")
    declared = input_spec(module, backbone)
    size = int(input_size or declared.input_size or tile_size or 224)
    module.eval().requires_grad_(False).to(rt.device)
    if rt.device.type == "cuda":
        module.to(memory_format=torch.channels_last)
    recorded = getattr(module, "clotclf_record_options", None)  # e.g. the Hub commit an hf-hub: model resolved to
    options = opts.model_dump(mode="json") | (recorded if isinstance(recorded, dict) else {})
    enc = Encoder(
        module=module, backbone=spec.name, options=options, spec=declared, input_size=size,
        weights_sha256=state_sha256(module), device=rt.device, precision=rt.precision, seed=seed,
        provenance={"plugin": spec.plugin, "distribution": spec.distribution, "version": spec.version},
        feature_names=feature_names_of(module, backbone, num_features), stain=stain,
        info=encoder_info(spec.extra), backbone_run=getattr(module, "clotclf_backbone_run", None),
    )
    _check_forward(enc)
    return enc


def _check_forward(enc: Encoder) -> None:
    """One tile through the encoder, so an input size it cannot take fails here with a message."""
    try:
        enc(np.zeros((1, enc.input_size, enc.input_size, 3), dtype=np.uint8))
    except ClotclfError:
        raise
    except Exception as exc:
        raise ClotclfError(
            f"backbone '{enc.backbone}' cannot take {enc.input_size}x{enc.input_size} inputs ({type(exc).__name__}: "
            f"{str(exc)[:200]}); pass --input-size with the size it expects") from None


def encoder_from_record(record: dict[str, Any], device: str = "auto") -> Encoder:
    """Rebuild the encoder a feature store (or a MIL run) recorded, and check that its weights are
    the recorded ones (a Hub repo whose weights changed since, say, is refused). Features imported
    from elsewhere (``clotclf import-features``) cannot be made again here: refused, naming the fix."""
    if isinstance(record.get("imported"), dict):
        raise ClotclfError(
            f"the features were made outside clotclf ({describe_encoder(record)}), so clotclf cannot compute them from "
            "slides: score pre-extracted features of the same encoder instead (`clotclf import-features H5_DIR --encoder-name "
            f"{record.get('backbone')} --out F`, then `--features F`)")
    run = record.get("backbone_run") if isinstance(record.get("backbone_run"), dict) else None
    name, options = (f"run:{run['run']}", {}) if run else (record["backbone"], record.get("options") or {})
    enc = build_encoder(name, options, input_size=record.get("input_size"), device=device, seed=int(record.get("seed", 0)),
                        stain_normalise=record.get("stain_normalise"))
    if enc.weights_sha256 != record.get("weights_sha256"):
        commit = record.get("hub_commit")
        where = (f"the Hub repo {record.get('hub_repo')} at the recorded commit {str(commit)[:12]} now serves other weights "
                 "(a damaged Hugging Face cache: delete that repo from it with `hf cache delete` and run again)" if commit else
                 "its source changed (e.g. a Hub repo updated: pin its revision with model=hf-hub:ORG/NAME@COMMIT), or it "
                 "is not the same plugin version")
        raise ClotclfError(
            f"the encoder {describe_encoder(record)} rebuilt from its record has other weights (sha256 "
            f"{enc.weights_sha256[:12]}…) than the ones recorded ({str(record.get('weights_sha256'))[:12]}…), so its "
            f"features would not be the ones the model learnt from: {where}. Otherwise embed the tiles with the "
            "encoder you have and train a model on those features")
    if (list(enc.spec.mean), list(enc.spec.std)) != (list(record.get("mean", [])), list(record.get("std", []))):
        raise ClotclfError(f"the encoder {record['backbone']} now declares another normalisation than the one recorded; "
                           "install the plugin version that made the features")
    return enc

"""Build a transformers-layout encoder (imports torch and transformers).

The files are fetched by :mod:`clotclf_core.plugin.hub` (the timm plugin's and the registry's
words for every Hub failure), then transformers reads the local snapshot folder: it never reaches
the network itself, never sees a pickle, and runs a repo's own code only when
``trust_remote_code`` was given.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any

import torch

from clotclf_core.plugin import ClotclfError
from clotclf_core.plugin.encoders import pool_tokens
from clotclf_core.plugin.hub import cache_commit, fetch_file, fetch_snapshot, hub_record, parse_repo_ref

from . import INSTALL, PresetOptions, TransformersOptions, TransformersSnapshot

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _transformers(name: str):
    try:
        import transformers
    except ImportError:
        raise ClotclfError(f"backbone '{name}' is loaded by Hugging Face transformers, which is not installed: "
                           f"{INSTALL}") from None
    return transformers


def remote_code_of(config: dict[str, Any]) -> str | None:
    """The repo's own class ``AutoModel`` would run (config.json's ``auto_map``), or None."""
    auto = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    found = auto.get("AutoModel")
    if isinstance(found, (list, tuple)):
        found = found[0] if found else None
    return str(found) if found else None


def _refuse_remote_code(name: str, repo: str, code: str) -> ClotclfError:
    return ClotclfError(
        f"backbone '{name}': the Hub repo '{repo}' defines its model in its own Python code ({code}), which would run on "
        f"this machine. clotclf runs it only when asked: read the repo's code (https://huggingface.co/{repo}/tree/main), "
        f"then pass --backbone-opt trust_remote_code=true (the run records it)")


class HFEncoder(torch.nn.Module):
    """A transformers vision model as a clotclf backbone: images -> pooled tile features."""

    def __init__(self, model: torch.nn.Module, pooling: str, mean, std, input_size: int):
        super().__init__()
        self.model = model
        self.pooling = pooling
        cfg = model.config
        self.num_prefix_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        hidden = int(cfg.hidden_size)
        self.num_features = 2 * hidden if pooling == "cls_mean" else hidden
        self.image_size = int(getattr(cfg, "image_size", input_size) or input_size)
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        self.pretrained_cfg = {"mean": tuple(mean), "std": tuple(std), "input_size": (3, input_size, input_size)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate and x.shape[-1] != self.image_size else {}
        out = self.model(pixel_values=x, **kwargs)
        if self.pooling == "pooler":
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise ClotclfError("this transformers model has no pooler_output: use pooling=cls, cls_mean or mean")
            return pooled
        tokens = getattr(out, "last_hidden_state", None)
        return pool_tokens(out[0] if tokens is None else tokens, self.pooling, self.num_prefix_tokens)


def _fetch(name: str, repo: str, revision: str | None, trust: bool) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(local snapshot folder, config.json, the record) of ``repo`` at ``revision``: config.json,
    model.safetensors and, for a repo with its own model code that the user trusts, its ``*.py``."""
    config_path = fetch_file(repo, "config.json", revision, shown=repo)
    try:
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ClotclfError(f"config.json of the Hub repo '{repo}' is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ClotclfError(f"the Hub repo '{repo}' is not in transformers' layout (its config.json has no model_type); "
                           "a timm-layout repo loads with --backbone timm:model=hf-hub:ORG/NAME")
    commit = cache_commit(config_path)
    code = remote_code_of(config)
    if code and not trust:
        raise _refuse_remote_code(name, repo, code)
    pin = commit or revision
    weights = fetch_file(repo, "model.safetensors", pin, shown=repo, missing_ok=True)
    if weights is None:
        raise ClotclfError(
            f"the Hub repo '{repo}' has no model.safetensors: clotclf loads safetensors only (a pickle checkpoint, "
            ".bin / .pth, can run code when loaded). Ask the repo's owner for model.safetensors")
    if code:
        fetch_snapshot(repo, pin, ["*.py", "config.json"], shown=repo)
    record = hub_record(repo, commit, weights, config=config)
    return os.path.dirname(config_path), config, {k: v for k, v in record.items() if v is not None}


def _check_loaded(name: str, repo: str, info: dict[str, Any]) -> None:
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        shown = ", ".join(str(k) for k in (missing + mismatched)[:4])
        raise ClotclfError(f"backbone '{name}': the weights of '{repo}' do not fit the model its config.json describes "
                           f"({len(missing)} missing, {len(mismatched)} of another shape, e.g. {shown})")


def _from_pretrained(name: str, folder: str, repo: str, model_class: str, kwargs: dict[str, Any], trust: bool):
    transformers = _transformers(name)
    cls = getattr(transformers, model_class)
    model, info = cls.from_pretrained(folder, trust_remote_code=trust, use_safetensors=True, output_loading_info=True,
                                      **kwargs)
    _check_loaded(name, repo, info)
    return model


def _from_config(name: str, config: dict[str, Any], model_class: str, kwargs: dict[str, Any], repo: str | None,
                 commit: str | None, trust: bool):
    """The architecture ``config`` describes, randomly initialised; a repo's own code comes from the
    Hugging Face cache (or the Hub) at the recorded commit."""
    transformers = _transformers(name)
    if remote_code_of(config):
        if not trust:
            raise _refuse_remote_code(name, repo or "?", remote_code_of(config) or "?")
        folder = fetch_snapshot(repo, commit, ["*.py", "config.json"], shown=repo)
        cfg = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
        return transformers.AutoModel.from_config(cfg, trust_remote_code=True)
    values = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "transformers_version")}
    cfg = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    if model_class == "AutoModel":
        return transformers.AutoModel.from_config(cfg, **kwargs)
    return getattr(transformers, model_class)(cfg, **kwargs)


def _normalisation(folder: str | None) -> tuple[tuple, tuple, int | None]:
    """mean, std and size from a repo's preprocessor_config.json (ImageNet when it has none)."""
    path = os.path.join(folder, "preprocessor_config.json") if folder else None
    if not path or not os.path.isfile(path):
        return IMAGENET[0], IMAGENET[1], None
    with open(path, encoding="utf-8") as fh:
        pre = json.load(fh)
    size = pre.get("crop_size") or pre.get("size")
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    return (tuple(pre.get("image_mean") or IMAGENET[0]), tuple(pre.get("image_std") or IMAGENET[1]),
            int(side) if isinstance(side, int) else None)


def _build(name: str, repo: str, revision: str | None, opts, model_class: str, kwargs: dict[str, Any],
           offline: dict[str, Any] | None, norm: tuple | None, input_size: int | None) -> torch.nn.Module:
    recorded: TransformersSnapshot | None = opts.hub_snapshot
    if recorded is not None and recorded.repo != repo:
        raise ClotclfError(f"backbone '{name}': option hub_snapshot records the repo '{recorded.repo}', not '{repo}': "
                           "leave hub_snapshot out (clotclf records it itself)")
    folder, record = None, None
    if opts.pretrained:
        pin = recorded.commit if recorded is not None and recorded.commit else revision
        folder, config, record = _fetch(name, repo, pin, opts.trust_remote_code)
        model = _from_pretrained(name, folder, repo, model_class, kwargs, opts.trust_remote_code)
    elif recorded is not None:
        record = recorded.model_dump(exclude_none=True)
        model = _from_config(name, recorded.config, model_class, kwargs, repo, recorded.commit, opts.trust_remote_code)
    elif offline is not None:
        model = _from_config(name, dict(offline), model_class, kwargs, repo, None, opts.trust_remote_code)
    else:
        config_path = fetch_file(repo, "config.json", revision, shown=repo)
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
        record = {"repo": repo, "commit": cache_commit(config_path), "config": config}
        record = {k: v for k, v in record.items() if v is not None}
        model = _from_config(name, config, model_class, kwargs, repo, record.get("commit"), opts.trust_remote_code)
    if norm is None:
        mean, std, side = _normalisation(folder)
        input_size = input_size or side or int(getattr(model.config, "image_size", 224) or 224)
    else:
        mean, std = norm
    module = HFEncoder(model, opts.pooling, mean, std, int(input_size or 224))
    if record is not None:
        module.clotclf_record_options = {"hub_snapshot": record}
    return module


def build_generic(opts: TransformersOptions) -> torch.nn.Module:
    ref = parse_repo_ref(opts.model, example="e.g. owkin/phikon or ORG/NAME@v1")
    return _build("transformers", ref.repo_id, ref.revision, opts, "AutoModel", {}, None, None, None)


def build_preset(preset, opts: PresetOptions) -> torch.nn.Module:
    info = preset.info
    return _build(preset.name, info.repo, opts.revision, opts, preset.model_class, dict(preset.model_kwargs),
                  preset.offline, (info.mean, info.std), info.input_size)

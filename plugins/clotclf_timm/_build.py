"""Build a timm model as a clotclf backbone (imports timm)."""

from __future__ import annotations

import difflib
import json
from typing import Any

from clotclf_core.plugin import ClotclfError
from clotclf_core.plugin.hub import hub_record, parse_repo_ref

from . import TimmOptions
from ._hub import HubModelError, check_timm_config, read_timm_config, safetensors_weights

HF_PREFIX = "hf-hub:"


def _number(value: Any) -> Any:
    """``"1e-5"`` -> ``1e-05``: YAML 1.1 (how --backbone-opt values are read) keeps exponent
    notation without a dot as a string; constructor arguments want the number."""
    if isinstance(value, str):
        try:
            return int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def _layer(key: str, value: Any) -> Any:
    """A ``*_layer`` option given by name -> the class in timm.layers or torch.nn (nothing is imported by name)."""
    if not (key.endswith("_layer") and isinstance(value, str)):
        return value
    import timm.layers
    import torch.nn

    name = value
    for prefix in ("timm.layers.", "torch.nn.", "nn."):
        name = name.removeprefix(prefix)
    import functools

    for module in (timm.layers, torch.nn):
        found = getattr(module, name, None)
        # a class, or a class with arguments bound (timm.layers.SwiGLUPacked is partial(GluMlp, ...))
        if isinstance(found, type) or (isinstance(found, functools.partial) and isinstance(found.func, type)):
            return found
    if key == "act_layer":
        return value  # timm resolves activation names itself ('gelu', 'silu'...)
    raise ClotclfError(
        f"backbone 'timm': option {key}={value!r} names no class in timm.layers or torch.nn "
        f"(e.g. {key}=SwiGLUPacked, act_layer=SiLU, norm_layer=LayerNorm)")


def _unknown_name(name: str) -> ClotclfError:
    import timm

    base, _, tag = name.partition(".")
    if tag and timm.is_model(base):
        tags = timm.list_pretrained(f"{base}.*")
        return ClotclfError(
            f"timm has no pretrained tag '{tag}' for '{base}'; its tags: {', '.join(tags) or '(none)'}"
            f" (or drop the tag: model={base})")
    names = timm.list_models()
    close = difflib.get_close_matches(base, names, n=5, cutoff=0.6) or difflib.get_close_matches(base, names, n=5, cutoff=0.3)
    hint = f" Closest timm names: {', '.join(close)}." if close else ""
    return ClotclfError(
        f"unknown timm model '{name}'.{hint} List them with python -c \"import timm; print(timm.list_models('*{base.split('_')[0]}*'))\", "
        "or give a Hub repo as model=hf-hub:ORG/NAME")


def _fetch_weights_of_timm_name(name: str) -> None:
    """pretrained=True for a timm name: timm's weights live on the Hub (timm/...); fetch the
    safetensors file first (same cache), refuse weights only reachable as a pickle by URL."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ClotclfError(
            f"timm model '{name}' has no weights on the Hugging Face Hub (only a pickle checkpoint by URL, which clotclf "
            f"does not load): use pretrained=false, or another tag (timm.list_pretrained('{name.split('.')[0]}*'))")
    ref = parse_repo_ref(hub_id)
    safetensors_weights(ref.repo_id, ref.revision, getattr(cfg, "hf_hub_filename", None))


def _hub_source(opts: TimmOptions, name: str) -> tuple[str, bool, dict[str, Any]]:
    """For ``model=hf-hub:…``: (what to hand timm.create_model, pretrained, the snapshot to record).

    A recorded ``hub_snapshot`` without ``pretrained`` (a saved model being rebuilt) builds the
    architecture from the recorded config.json, with no network and no cache; otherwise
    config.json is read from the Hub (or the cache) at the recorded commit, else at the revision
    asked for, and the weights are fetched from that same commit."""
    ref = parse_repo_ref(name, prefix=HF_PREFIX)
    repo_id, revision = ref.repo_id, ref.revision
    pretrained = True if opts.pretrained is None else opts.pretrained
    recorded = opts.hub_snapshot
    if recorded is not None and recorded.repo != repo_id:
        raise ClotclfError(f"option hub_snapshot records the repo '{recorded.repo}', not '{repo_id}' of model={name}: "
                           "it belongs to another model; leave hub_snapshot out (clotclf records it itself)")
    if recorded is not None and not pretrained:
        config, commit = recorded.config, recorded.commit
        check_timm_config(config, f"the config.json recorded for 'hf-hub:{repo_id}'")
        return "local", False, recorded.model_dump(exclude_none=True)
    pin = recorded.commit if recorded is not None and recorded.commit else revision
    config, commit = read_timm_config(repo_id, pin)
    weights = None
    if pretrained:
        cfg = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else config
        weights = safetensors_weights(repo_id, commit or pin, cfg.get("hf_hub_filename"))
    source = f"{HF_PREFIX}{repo_id}@{commit}" if commit else name  # config and weights of one commit
    snapshot = hub_record(repo_id, commit, weights, config=config)  # repo, commit, weights_file_sha256, config.json
    return source, pretrained, {k: v for k, v in snapshot.items() if v is not None}


def _create(source: str, snapshot: dict[str, Any] | None, pretrained: bool, kwargs: dict[str, Any]):
    import tempfile

    import timm

    if source != "local":
        return timm.create_model(source, pretrained=pretrained, num_classes=0, **kwargs)
    with tempfile.TemporaryDirectory(prefix="clotclf-timm-") as folder:  # timm's own reader of a config.json
        with open(f"{folder}/config.json", "w", encoding="utf-8") as fh:
            json.dump(snapshot["config"], fh)
        return timm.create_model(f"local-dir:{folder}", pretrained=False, num_classes=0, **kwargs)


def build_timm(opts: TimmOptions):
    import timm

    name = opts.model
    kwargs = {k: _layer(k, _number(v)) for k, v in opts.constructor_kwargs().items()}
    snapshot = None
    if name.startswith(HF_PREFIX):
        source, pretrained, snapshot = _hub_source(opts, name)
    else:
        if not timm.is_model(name) or ("." in name and name not in timm.list_pretrained(name)):
            raise _unknown_name(name)
        source, pretrained = name, bool(opts.pretrained)
        if pretrained:
            _fetch_weights_of_timm_name(name)
    try:
        model = _create(source, snapshot, pretrained, kwargs)
    except HubModelError:
        raise
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            bad = str(exc).rsplit("argument", 1)[-1].strip(" '\"")
            raise ClotclfError(
                f"timm model '{name}' does not take the option '{bad}': remove --backbone-opt {bad}=... "
                f"(the options are its constructor's arguments; see the model's code or card)") from None
        raise ClotclfError(f"timm could not build '{name}' with these options ({exc}); check the --backbone-opt values") from None
    except (RuntimeError, ValueError, KeyError, AssertionError, OSError) as exc:
        text = str(exc)
        if "Unknown model" in text:
            raise _unknown_name(name) from None
        if "loading state_dict" in text:  # the weights do not fit the architecture built from config + options
            detail = "; ".join(line.strip()[:160] for line in text.splitlines()[1:3] if line.strip())
            raise ClotclfError(
                f"the weights of '{name}' do not fit the model timm built from its config.json and these options "
                f"({detail}): the model card usually names constructor options to add (e.g. --backbone-opt "
                "init_values=1e-5, dynamic_img_size=true, mlp_layer=SwiGLUPacked)") from None
        raise ClotclfError(f"timm could not build '{name}' ({type(exc).__name__}: {text.splitlines()[0][:240] if text else ''}); "
                           "check the options") from None
    if not isinstance(getattr(model, "num_features", None), int):
        raise ClotclfError(f"timm model '{name}' has no integer num_features; it cannot be used as a backbone")
    hidden = getattr(model, "head_hidden_size", None)
    if isinstance(hidden, int) and not isinstance(hidden, bool) and hidden != model.num_features:
        # models with a pre-logits layer (MobileNetV3, GhostNet, ...) output head_hidden_size features
        # with the classifier removed, not num_features (288 against 1024 for mobilenetv3_small_050)
        model.num_features = hidden
    size = kwargs.get("img_size")
    if isinstance(size, int) and isinstance(getattr(model, "pretrained_cfg", None), dict):
        # a model built for another size than its weights' declares the size it was built for
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, size, size)}
    if snapshot is not None:  # saved with the model's options (docs/plugins.md: clotclf_record_options)
        model.clotclf_record_options = {"hub_snapshot": snapshot}
    return model

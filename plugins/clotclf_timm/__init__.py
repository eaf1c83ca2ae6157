"""The ``timm`` backbone: any timm architecture, or any Hugging Face Hub repo in timm's layout.

    clotclf embed  --backbone timm:model=convnext_atto ...
    clotclf train  --backbone timm --backbone-opt model=hf-hub:ORG/NAME --backbone-opt init_values=1e-5

``model`` is a timm name (``timm.list_models()``, optionally with a pretrained tag such as
``vit_small_patch16_224.augreg_in21k``) or ``hf-hub:ORG/NAME[@REVISION]`` — a repo holding timm's
``config.json`` and ``model.safetensors``, as ``timm.models.push_to_hf_hub`` writes them and as
pathology foundation encoders (UNI, Virchow, H-optimus…) are distributed. Every other option is
passed to ``timm.create_model`` as a constructor argument (``init_values``, ``dynamic_img_size``,
``drop_path_rate``, ``global_pool``…); a ``*_layer`` option given as a name is looked up in
``timm.layers`` / ``torch.nn`` (``mlp_layer=SwiGLUPacked``, ``act_layer=SiLU``).

Gated repos read ``HF_TOKEN``; ``HF_HUB_OFFLINE=1`` loads from the Hugging Face cache. An
``hf-hub:`` model records ``hub_snapshot`` (the repo, the commit ``config.json`` resolved to, and
that ``config.json``) in the options clotclf saves, so a saved model is rebuilt with no network
(``pretrained=false``: the architecture from the recorded config, the weights from the run) and an
encoder is fetched again at the same commit. The
encoder's own normalisation and input size (``pretrained_cfg``: mean, std, input_size) travel on
the built module, so clotclf normalises as the weights expect and records it. Only safetensors
weights are loaded: a repo with pickle weights only is refused.

Importing this module imports no torch or timm; the factory does.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator, model_validator

from clotclf_core.plugin import ComponentSpec, Options, hookimpl

#: constructor arguments clotclf decides itself, or that would load files behind its back
RESERVED = {
    "num_classes": "clotclf sets num_classes=0 (pooled features); the head or aggregator classifies",
    "features_only": "a backbone must return pooled features (B, F), not feature maps",
    "pretrained_cfg": "give the weights as model=hf-hub:ORG/NAME instead",
    "pretrained_cfg_overlay": "give the weights as model=hf-hub:ORG/NAME instead",
    "checkpoint_path": "clotclf loads weights from the Hub or its cache (safetensors only), not from a local checkpoint",
}


class HubSnapshot(Options):
    """What an ``hf-hub:`` model was built from: enough to build the same architecture with no network."""

    repo: str = Field(..., min_length=3, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    commit: str | None = Field(None, max_length=64, pattern=r"^[0-9a-f]{7,64}$")
    config: dict = Field(..., description="the repo's config.json (timm's layout) at that commit")
    weights_file_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                            description="sha256 of the safetensors file the weights were loaded from")


class TimmOptions(Options):
    # any further option is a timm constructor argument (checked when the model is built)
    model_config = ConfigDict(extra="allow")

    model: str = Field("convnext_atto", min_length=1, description=(
        "a timm model name (timm.list_models(); a pretrained tag may follow a dot) or hf-hub:ORG/NAME[@REVISION], "
        "a Hub repo in timm's layout (config.json + model.safetensors). Other options go to timm.create_model"))
    pretrained: bool | None = Field(None, description=(
        "load the weights: default true for hf-hub: repos, false for timm names (their weights come from the Hub too)"))
    hub_snapshot: HubSnapshot | None = Field(None, description=(
        "recorded by clotclf when an hf-hub: model is built (the repo, the commit it resolved to, its config.json), "
        "so a saved model rebuilds offline and an encoder is fetched again at the same commit; not set by hand"))

    @field_validator("model")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _no_reserved(self) -> "TimmOptions":
        for key in self.model_extra or {}:
            if key in RESERVED:
                raise ValueError(f"option '{key}' cannot be set: {RESERVED[key]}")
            if not key.isidentifier():
                raise ValueError(f"option '{key}' is not a valid constructor argument name")
        return self

    def constructor_kwargs(self) -> dict:
        """The extra options: timm constructor arguments."""
        return dict(self.model_extra or {})


def build(opts: TimmOptions):
    from ._build import build_timm

    return build_timm(opts)


class PresetOptions(Options):
    """The options of an encoder of the zoo (:mod:`.zoo`); each preset adds ``pooling`` with the choices it offers."""

    pretrained: bool = Field(True, description=(
        "load the published weights from the Hub (most repos are gated: accept the licence, set HF_TOKEN); false: "
        "the same architecture, random init"))
    revision: str | None = Field(None, max_length=200, description=(
        "branch, tag or commit of the Hub repo (default: main); the commit it resolves to is recorded"))
    hub_snapshot: HubSnapshot | None = Field(None, description=(
        "recorded by clotclf (the repo, its commit, config.json, the weights file's sha256); not set by hand"))


def _preset_options(preset) -> type[PresetOptions]:
    from typing import Literal

    from pydantic import create_model

    info = preset.info
    choices = Literal[tuple(info.poolings)]  # type: ignore[valid-type]
    return create_model(
        f"{preset.name.title().replace('-', '')}Options", __base__=PresetOptions,
        pooling=(choices, Field(info.pooling, description=f"tile features: {', '.join(info.poolings)} (see `clotclf "
                                                         f"list-encoders`); {info.pooling} is what the card uses")))


def _preset_factory(name: str):
    def build_preset(opts: PresetOptions):
        from ._zoo_build import build_preset as build_it
        from .zoo import BY_NAME

        return build_it(BY_NAME[name], opts)

    return build_preset


@hookimpl
def clotclf_backbones():
    from .zoo import ALL

    return [
        ComponentSpec(
            "backbone", "timm",
            "Any timm model (model=NAME) or Hub repo in timm's layout (model=hf-hub:ORG/NAME); other options go to timm.create_model",
            TimmOptions, build,
            # every option beyond `model` / `pretrained` is a timm constructor argument (timm checks them when building)
            extra={"open_options": True},
        )
    ] + [
        ComponentSpec("backbone", p.name, p.summary, _preset_options(p), _preset_factory(p.name), extra={"encoder": p.info})
        for p in ALL
    ]

"""Tile encoders in the Hugging Face transformers layout (``AutoModel`` repos): Phikon, Phikon-v2,
Hibou-B / -L by name, and any other repo as ``transformers:model=ORG/NAME``.

    pip install 'clotclf[transformers]'
    clotclf embed --tiles TILES --backbone phikon-v2 --out FEATURES
    clotclf embed --tiles TILES --backbone transformers:model=ORG/NAME,pooling=cls_mean --out FEATURES

The repo's ``config.json`` and ``model.safetensors`` are fetched first (the Hub or its cache, every
failure one line: gated, licence not accepted, offline and not cached…), the commit they resolved
to and the weights file's sha256 are recorded in the options clotclf saves (``hub_snapshot``), and
transformers loads the model from that local snapshot: only safetensors weights, never a pickle.

**Remote code.** A repo whose model class is its own Python code (``auto_map`` in config.json:
Hibou) runs that code on your machine. clotclf never allows it silently: without
``trust_remote_code=true`` such a repo is refused with the page to read first, and the flag, when
given, is an option the run records.

Tile features are pooled from ``last_hidden_state`` as the preset says (``cls``, ``cls_mean``,
``mean`` of the patch tokens after the class and register tokens) or are the model's
``pooler_output`` (``pooler``).

Importing this module imports neither torch nor transformers; the factories do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from clotclf_core.plugin import ComponentSpec, Options, hookimpl

INSTALL = "pip install 'clotclf[transformers]'"


class TransformersSnapshot(Options):
    """What a transformers model was built from: enough to rebuild the same architecture offline."""

    repo: str = Field(..., min_length=3, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    commit: str | None = Field(None, max_length=64, pattern=r"^[0-9a-f]{7,64}$")
    config: dict = Field(..., description="the repo's config.json at that commit")
    weights_file_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class _Common(Options):
    pretrained: bool = Field(True, description=(
        "load the published weights from the Hub (gated repos: accept the licence, set HF_TOKEN); false: the same "
        "architecture, random init"))
    trust_remote_code: bool = Field(False, description=(
        "allow a repo whose model is its own Python code to run it on this machine (read the repo's code first); "
        "recorded in the run"))
    hub_snapshot: TransformersSnapshot | None = Field(None, description=(
        "recorded by clotclf (the repo, its commit, config.json, the weights file's sha256); not set by hand"))


class TransformersOptions(_Common):
    model: str = Field(..., min_length=3, description="the Hub repo, ORG/NAME[@REVISION], in transformers' layout (AutoModel)")
    pooling: Literal["cls", "cls_mean", "mean", "pooler"] = Field(
        "cls", description="tile features: cls (class token), cls_mean (class token + mean of patch tokens), mean, "
                           "or pooler (the model's pooler_output)")

    @field_validator("model")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class PresetOptions(_Common):
    revision: str | None = Field(None, max_length=200, description=(
        "branch, tag or commit of the Hub repo (default: main); the commit it resolves to is recorded"))


def _preset_options(preset) -> type[PresetOptions]:
    from pydantic import create_model

    info = preset.info
    return create_model(
        f"{preset.name.title().replace('-', '')}Options", __base__=PresetOptions,
        pooling=(Literal[tuple(info.poolings)], Field(info.pooling, description=(  # type: ignore[valid-type]
            f"tile features: {', '.join(info.poolings)} (see `clotclf list-encoders`); {info.pooling} is what the card uses"))))


def build(opts: TransformersOptions):
    from ._build import build_generic

    return build_generic(opts)


def _preset_factory(name: str):
    def build_preset(opts: PresetOptions):
        from ._build import build_preset as build_it
        from .zoo import BY_NAME

        return build_it(BY_NAME[name], opts)

    return build_preset


@hookimpl
def clotclf_backbones():
    from .zoo import PRESETS

    return [
        ComponentSpec("backbone", "transformers",
                      "Any Hub repo in transformers' layout (model=ORG/NAME, AutoModel); needs clotclf[transformers]",
                      TransformersOptions, build),
    ] + [
        ComponentSpec("backbone", p.name, p.summary, _preset_options(p), _preset_factory(p.name), extra={"encoder": p.info})
        for p in PRESETS
    ]

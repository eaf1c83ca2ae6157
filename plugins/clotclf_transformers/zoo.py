"""The encoder zoo in transformers' layout: Phikon, Phikon-v2, Hibou-B and Hibou-L.

Each :class:`Preset` is data: the Hub repo, the class and arguments its card loads it with, the
architecture clotclf builds without the weights (``offline``: a transformers ``model_type`` and its
config; a saved model's rebuild, the meta-device test) and its
:class:`~clotclf_core.plugin.encoders.EncoderInfo`. Recipes were read in code that loads them
(TRIDENT ``mahmoodlab/TRIDENT@a91fa84`` ``trident/patch_encoder_models/load.py``, LazySlide
``rendeirolab/lazyslide-models@0127beb``, slide2vec ``clemsgrs/slide2vec@7cfa6bf``) and HistAI's
README; none was run with its real weights here. Sizes marked unverified in ``notes`` come from the
model's name and paper, not from its config.json, which decides when the weights are loaded.

No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clotclf_core.plugin.encoders import EncoderInfo

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: TRIDENT utils/constants.py
HIBOU = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))
SOURCES = ("TRIDENT mahmoodlab/TRIDENT@a91fa84 load.py; LazySlide rendeirolab/lazyslide-models@0127beb; "
           "slide2vec clemsgrs/slide2vec@7cfa6bf (microns per pixel)")
TOKENS = ("cls", "cls_mean", "mean")


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    info: EncoderInfo
    #: the transformers class the card loads it with (``AutoModel`` unless it names one)
    model_class: str
    #: the architecture without the Hub: ``model_type`` and its config arguments
    offline: dict[str, Any]
    #: arguments of ``from_pretrained`` / the model's constructor (``add_pooling_layer=False``)
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def _info(repo: str, dim: int, *, norm=IMAGENET, licence: str, gated: bool | None, redistribution: str, pooling: str,
          poolings=TOKENS, remote_code: bool = False, citation: str, source: str, notes: str = "") -> EncoderInfo:
    return EncoderInfo(repo=repo, loader="transformers", embedding_dim=2 * dim if pooling == "cls_mean" else dim,
                       input_size=224, mean=norm[0], std=norm[1], um_per_px=0.5, licence=licence, gated=gated,
                       redistribution=redistribution, remote_code=remote_code, pooling=pooling, poolings=poolings,
                       citation=citation, source=source, notes=notes)


PRESETS: tuple[Preset, ...] = (
    Preset("phikon", "Phikon (ViT-B/16, iBOT, Owkin): 768 features, 0.5 um/px",
           _info("owkin/phikon", 768, licence="Owkin non-commercial", gated=False, redistribution="no", pooling="cls",
                 citation="Filiot et al., Scaling self-supervised learning for histopathology with masked image modeling, "
                          "medRxiv 2023, doi:10.1101/2023.07.21.23292757",
                 source=f"ViTModel.from_pretrained('owkin/phikon', add_pooling_layer=False), last_hidden_state[:, 0]: {SOURCES}"),
           "ViTModel",
           {"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "image_size": 224, "patch_size": 16},
           {"add_pooling_layer": False}),
    Preset("phikon-v2", "Phikon-v2 (ViT-L/16, DINOv2, Owkin): 1,024 features, 0.5 um/px",
           _info("owkin/phikon-v2", 1024, licence="Owkin non-commercial", gated=False, redistribution="no", pooling="cls",
                 citation="Filiot et al., Phikon-v2, a large and public feature extractor for biomarker prediction, "
                          "arXiv:2409.09173",
                 source=f"AutoModel.from_pretrained('owkin/phikon-v2'), last_hidden_state[:, 0]: {SOURCES}",
                 notes="the architecture built without the weights (DINOv2 ViT-L/16) is from the paper: unverified"),
           "AutoModel",
           {"model_type": "dinov2", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "mlp_ratio": 4, "image_size": 224, "patch_size": 16}),
    Preset("hibou-b", "Hibou-B (ViT-B/14, DINOv2 with registers, HistAI; remote code): 768 features, 0.5 um/px",
           _info("histai/hibou-b", 768, norm=HIBOU, licence="Apache-2.0", gated=True, redistribution="yes",
                 pooling="pooler", poolings=("pooler", *TOKENS), remote_code=True,
                 citation="Nechaev et al., Hibou: A family of foundational vision transformers for pathology, "
                          "arXiv:2406.05074",
                 source=f"AutoModel.from_pretrained('histai/hibou-b', trust_remote_code=True), pooler_output: {SOURCES}; "
                        "HistAI/hibou README ('requires the trust_remote_code=True flag')",
                 notes="its model class is the repo's own code: needs trust_remote_code=true. Without the weights clotclf "
                       "builds transformers' own Dinov2WithRegistersModel of the same size (register count unverified)"),
           "AutoModel",
           {"model_type": "dinov2_with_registers", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "mlp_ratio": 4, "image_size": 224, "patch_size": 14, "num_register_tokens": 4}),
    Preset("hibou-l", "Hibou-L (ViT-L/14, DINOv2 with registers, HistAI; remote code): 1,024 features, 0.5 um/px",
           _info("histai/hibou-L", 1024, norm=HIBOU, licence="Apache-2.0", gated=True, redistribution="yes",
                 pooling="pooler", poolings=("pooler", *TOKENS), remote_code=True,
                 citation="Nechaev et al., Hibou: A family of foundational vision transformers for pathology, "
                          "arXiv:2406.05074",
                 source=f"AutoModel.from_pretrained('histai/hibou-L', trust_remote_code=True), pooler_output: {SOURCES}",
                 notes="needs trust_remote_code=true; access on request (HistAI README). Without the weights clotclf "
                       "builds transformers' own Dinov2WithRegistersModel of the same size (register count unverified)"),
           "AutoModel",
           {"model_type": "dinov2_with_registers", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "mlp_ratio": 4, "image_size": 224, "patch_size": 14, "num_register_tokens": 4}),
)

BY_NAME = {p.name: p for p in PRESETS}

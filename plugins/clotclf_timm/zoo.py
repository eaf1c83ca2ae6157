"""The encoder zoo in timm's layout: the field's pathology foundation models (and two ImageNet
baselines) by name, each a backbone component (``clotclf embed --backbone uni2-h``).

Each :class:`Preset` is data: the Hub repo, the constructor options its model card passes to
``timm.create_model`` (classes by name: ``SwiGLUPacked``, ``SiLU``), the architecture clotclf builds
without the weights (``arch`` + ``offline``: a saved model's rebuild, the meta-device test), how its
tokens are pooled, and its :class:`~clotclf_core.plugin.encoders.EncoderInfo` (sizes,
normalisation, microns per pixel, licence, citation, where each value was read). Every recipe was
read in the model's card or in code that loads it, at the commits named in ``source`` (TRIDENT
``mahmoodlab/TRIDENT@a91fa84``, LazySlide ``rendeirolab/lazyslide-models@0127beb``, slide2vec
``clemsgrs/slide2vec@7cfa6bf``, CLAM ``mahmoodlab/CLAM@53e2409``, eva ``kaiko-ai/eva``); none
was run with its real weights here (they cannot be downloaded on this project's machines), so an
architecture marked ``unverified`` in ``notes`` is the closest timm one, and the Hub's config.json
decides when the weights are loaded.

No torch here: importing it is part of ``clotclf list-plugins``' start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clotclf_core.plugin.encoders import EncoderInfo

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: H-optimus / H0-mini (TRIDENT utils/constants.py; the H-optimus-0 card)
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
#: Lunit's DINO ViT-S/8 training statistics (eva, backbones/pathology/lunit.py docstring)
LUNIT = ((0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

TOKENS = ("cls", "cls_mean", "mean")
TRIDENT = "TRIDENT mahmoodlab/TRIDENT@a91fa84 trident/patch_encoder_models/load.py"
LAZYSLIDE = "LazySlide rendeirolab/lazyslide-models@0127beb"
SLIDE2VEC = "slide2vec clemsgrs/slide2vec@7cfa6bf (microns per pixel: supported_spacing_um)"
SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    #: constructor options the card passes with ``hf-hub:REPO`` (on top of the repo's config.json)
    hub_kwargs: dict[str, Any]
    #: the timm architecture and options that build the same network without the Hub (no weights)
    arch: str
    offline: dict[str, Any]
    info: EncoderInfo
    #: ``model(x)`` is already the pooled embedding (a CNN's average pool): no token pooling
    pooled: bool = False
    extra_kwargs: dict[str, Any] = field(default_factory=dict)


def _vit(name: str, summary: str, repo: str, arch: str, hub_kwargs: dict[str, Any], offline: dict[str, Any], *,
         dim: int, norm=IMAGENET, um: float | None = 0.5, um_range=None, licence: str, gated: bool | None,
         redistribution: str = "no", pooling: str = "cls", citation: str, source: str, notes: str = "",
         input_size: int = 224) -> Preset:
    width = 2 * dim if pooling == "cls_mean" else dim
    info = EncoderInfo(repo=repo, loader="timm", embedding_dim=width, input_size=input_size, mean=norm[0], std=norm[1],
                       um_per_px=um, um_per_px_range=um_range, licence=licence, gated=gated,
                       redistribution=redistribution, pooling=pooling, poolings=TOKENS, citation=citation,
                       source=source, notes=notes)
    return Preset(name, summary, hub_kwargs, arch, offline, info)


PRESETS: tuple[Preset, ...] = (
    _vit("uni", "UNI (ViT-L/16, Mahmood Lab): 1,024 features, 0.5 um/px", "MahmoodLab/UNI", "vit_large_patch16_224",
         {"init_values": 1e-5, "dynamic_img_size": True},
         {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
         dim=1024, licence="CC-BY-NC-ND-4.0", gated=True,
         citation="Chen et al., Towards a general-purpose foundation model for computational pathology, Nat Med 2024, "
                  "doi:10.1038/s41591-024-02857-3",
         source=f"MahmoodLab/UNI model card (init_values=1e-5 'to load LayerScale'); {TRIDENT}; CLAM models/builder.py; "
                f"{SLIDE2VEC}"),
    _vit("uni2-h", "UNI2-h (ViT-H/14, 8 registers, Mahmood Lab): 1,536 features, 0.5 um/px", "MahmoodLab/UNI2-h",
         "vit_giant_patch14_224",
         {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5, "embed_dim": 1536,
          "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8, "dynamic_img_size": True, **SWIGLU},
         {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5, "embed_dim": 1536,
          "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8, "dynamic_img_size": True, **SWIGLU},
         dim=1536, licence="CC-BY-NC-ND-4.0", gated=True,
         citation="Chen et al., Nat Med 2024, doi:10.1038/s41591-024-02857-3 (UNI2: mahmoodlab/UNI README)",
         source=f"{TRIDENT} = {LAZYSLIDE} = {SLIDE2VEC} (same constructor options)",
         notes="trained on H&E and IHC images (UNI README)"),
    _vit("virchow", "Virchow (ViT-H/14, Paige): class token + mean of patch tokens, 2,560 features, 0.5 um/px",
         "paige-ai/Virchow", "vit_huge_patch14_224", dict(SWIGLU),
         {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True, **SWIGLU},
         dim=1280, pooling="cls_mean", licence="Apache-2.0 with additional terms (gated)", gated=True,
         citation="Vorontsov et al., A foundation model for clinical-grade computational pathology and rare cancers "
                  "detection, Nat Med 2024, doi:10.1038/s41591-024-03141-0",
         source=f"paige-ai/Virchow model card; {TRIDENT} (VirchowInferenceEncoder: cat(out[:,0], out[:,1:].mean(1))); "
                f"{LAZYSLIDE}; {SLIDE2VEC}"),
    _vit("virchow2", "Virchow2 (ViT-H/14, 4 registers, Paige): class token + mean of patch tokens, 2,560 features",
         "paige-ai/Virchow2", "vit_huge_patch14_224", dict(SWIGLU),
         {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "reg_tokens": 4, "global_pool": "",
          "dynamic_img_size": True, **SWIGLU},
         dim=1280, pooling="cls_mean", um=0.5, um_range=(0.25, 2.0), licence="CC-BY-NC-ND-4.0", gated=True,
         citation="Zimmermann et al., Virchow2: Scaling self-supervised mixed magnification models in pathology, "
                  "arXiv:2408.00738",
         source=f"paige-ai/Virchow2 config.json (model_args); {TRIDENT} (patch tokens from 5); {LAZYSLIDE}; {SLIDE2VEC} "
                "(spacings 0.25, 0.5, 1, 2)",
         notes="trained at mixed magnifications (0.25-2 um/px)"),
    _vit("h-optimus-0", "H-optimus-0 (ViT-g/14, 4 registers, Bioptimus): 1,536 features, 0.5 um/px",
         "bioptimus/H-optimus-0", "vit_giant_patch14_reg4_dinov2", {"init_values": 1e-5, "dynamic_img_size": False},
         {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
         dim=1536, norm=HOPTIMUS, licence="Apache-2.0", gated=None, redistribution="yes",
         citation="Saillard et al., H-optimus-0, Bioptimus 2024 (github.com/bioptimus/releases)",
         source=f"bioptimus/H-optimus-0 model card ('224x224 ... extracted at 0.5 microns per pixel', mean/std); "
                f"config.json (vit_giant_patch14_reg4_dinov2, global_pool token); {TRIDENT}",
         notes="TRIDENT pins timm 0.9.16 for it; not compared with newer timm here"),
    _vit("h-optimus-1", "H-optimus-1 (ViT-g/14, 4 registers, Bioptimus): 1,536 features, 0.5 um/px",
         "bioptimus/H-optimus-1", "vit_giant_patch14_reg4_dinov2", {"init_values": 1e-5, "dynamic_img_size": False},
         {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
         dim=1536, norm=HOPTIMUS, licence="CC-BY-NC-ND-4.0", gated=True,
         citation="Bioptimus, H-optimus-1, 2025 (huggingface.co/bioptimus/H-optimus-1)",
         source=f"{LAZYSLIDE}; {SLIDE2VEC}; {TRIDENT} (the H-optimus-0 call on bioptimus/H-optimus-1)"),
    _vit("h0-mini", "H0-mini (ViT-B/14, 4 registers, Bioptimus): class token + mean of patch tokens, 1,536 features",
         "bioptimus/H0-mini", "vit_base_patch14_reg4_dinov2", dict(SWIGLU),
         {"img_size": 224, "init_values": 1e-5, **SWIGLU},
         dim=768, norm=HOPTIMUS, pooling="cls_mean", licence="CC-BY-NC-ND-4.0", gated=True,
         citation="Filiot et al., Distilling foundation models for robust and efficient models in digital pathology, "
                  "arXiv:2501.16239",
         source=f"bioptimus/H0-mini model card code (cat CLS, mean of output[:, num_prefix_tokens:]); {LAZYSLIDE}; "
                f"{SLIDE2VEC}; mean/std: Bioptimus SDK docs",
         notes="TRIDENT defaults to the class token (768); the card, LazySlide and slide2vec use cls_mean. The "
               "architecture built without the weights (mlp width) is unverified: the Hub config.json decides"),
    _vit("prov-gigapath", "Prov-GigaPath tile encoder (ViT-g, patch 16): 1,536 features, 0.5 um/px",
         "prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2", {},
         {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
          "init_values": 1e-5, "mlp_ratio": 5.33334},
         dim=1536, licence="Apache-2.0 with conditions (gated)", gated=True,
         citation="Xu et al., A whole-slide foundation model for digital pathology from real-world data, Nature 2024, "
                  "doi:10.1038/s41586-024-07441-w",
         source=f"prov-gigapath config.json (model_args; patch 16 despite the arch name); {TRIDENT}; {LAZYSLIDE}; "
                f"{SLIDE2VEC}",
         notes="the card feeds the centre 224 px of a 256-px tile at 0.5 um/px; clotclf resizes the whole tile to 224"),
    _vit("kaiko-vits16", "kaiko.ai ViT-S/16 (DINO on TCGA): 384 features", "1aurent/vit_small_patch16_224.kaiko_ai_towards_large_pathology_fms",
         "vit_small_patch16_224", {"dynamic_img_size": True}, {"dynamic_img_size": True},
         dim=384, norm=HALF, um=None, licence="Kaiko Non-Commercial Public License v1 (ShareAlike)", gated=False,
         citation="kaiko.ai, Towards large-scale training of pathology foundation models, arXiv:2404.15217",
         source=f"kaiko-ai/towards_large_pathology_fms hubconf.py + README (Normalize(0.5, 0.5)); {TRIDENT} (the HF mirror)",
         notes="trained at several magnifications; which ones is not stated in the sources read, so embed does not "
               "compare scales"),
    _vit("kaiko-vitb8", "kaiko.ai ViT-B/8 (DINO on TCGA): 768 features", "1aurent/vit_base_patch8_224.kaiko_ai_towards_large_pathology_fms",
         "vit_base_patch8_224", {"dynamic_img_size": True}, {"dynamic_img_size": True},
         dim=768, norm=HALF, um=None, licence="Kaiko Non-Commercial Public License v1 (ShareAlike)", gated=False,
         citation="kaiko.ai, Towards large-scale training of pathology foundation models, arXiv:2404.15217",
         source=f"kaiko-ai/towards_large_pathology_fms hubconf.py + README (best linear-probe average); {TRIDENT}",
         notes="trained at several magnifications (not stated which in the sources read)"),
    _vit("lunit-vits8", "Lunit DINO ViT-S/8: 384 features, 0.5 um/px", "1aurent/vit_small_patch8_224.lunit_dino",
         "vit_small_patch8_224", {"img_size": 224, "dynamic_img_size": True}, {"img_size": 224, "dynamic_img_size": True},
         dim=384, norm=LUNIT, licence="Lunit non-commercial", gated=False,
         citation="Kang et al., Benchmarking self-supervised learning on diverse pathology datasets, CVPR 2023, "
                  "arXiv:2212.04690",
         source=f"{LAZYSLIDE}; {TRIDENT}; eva backbones/pathology/lunit.py (mean/std); {SLIDE2VEC}"),
)

CNN_BASELINES = (
    Preset("resnet50-imagenet", "ResNet-50, ImageNet-1k (torchvision weights): 2,048 features", {}, "resnet50", {},
           EncoderInfo(repo="timm/resnet50.tv_in1k", loader="timm", embedding_dim=2048, input_size=224,
                       mean=IMAGENET[0], std=IMAGENET[1], um_per_px=None, licence="BSD-3-Clause (torchvision; unverified here)",
                       gated=False, redistribution="unknown", pooling="mean", poolings=("mean",),
                       citation="He et al., Deep residual learning for image recognition, CVPR 2016",
                       source="timm resnet50.tv_in1k; TRIDENT resnet50 (which truncates after layer 3: 1,024)",
                       notes="an ImageNet baseline: no microns per pixel"),
           pooled=True),
    Preset("convnext-tiny-imagenet", "ConvNeXt-T, ImageNet-1k: 768 features", {}, "convnext_tiny", {},
           EncoderInfo(repo="timm/convnext_tiny.fb_in1k", loader="timm", embedding_dim=768, input_size=224,
                       mean=IMAGENET[0], std=IMAGENET[1], um_per_px=None, licence="Apache-2.0 (timm card; unverified here)",
                       gated=False, redistribution="unknown", pooling="mean", poolings=("mean",),
                       citation="Liu et al., A ConvNet for the 2020s, CVPR 2022",
                       source="timm convnext_tiny.fb_in1k", notes="an ImageNet baseline: no microns per pixel"),
           pooled=True),
)

ALL: tuple[Preset, ...] = PRESETS + CNN_BASELINES
BY_NAME = {p.name: p for p in ALL}

"""Tiny random-init repos in the layouts of the encoder zoo, for the tests' Hub server: a timm repo
laid out like Virchow2 (4 register tokens, ``global_pool=""``, SwiGLU MLP that the card passes as
classes), transformers repos like Phikon (``ViTModel`` without pooler) and like a DINOv2 with
registers, and one whose model class is the repo's own Python code (like Hibou). Each is served
under the real preset's repo id, so ``--backbone virchow2`` loads it through the preset's recipe.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

#: Virchow2's layout at 32 px: 1 class + 4 register tokens, then 16 patch tokens
TINY_VIRCHOW2 = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2, "init_values": 1e-5,
                 "reg_tokens": 4, "global_pool": "", "dynamic_img_size": True, "mlp_ratio": 2.0}


def tiny_virchow2(seed: int = 0):
    import timm
    import torch
    from timm.layers import SwiGLUPacked

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU,
                             **TINY_VIRCHOW2)


def tiny_virchow2_files(seed: int = 0) -> dict[str, bytes]:
    """config.json (timm's layout: the classes are not in model_args, as on the Hub) + model.safetensors."""
    from safetensors.torch import save

    model = tiny_virchow2(seed)
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": 0, "num_features": 16, "global_pool": "",
              "model_args": TINY_VIRCHOW2,
              "pretrained_cfg": {"tag": "tiny_virchow2", "input_size": [3, 32, 32], "interpolation": "bicubic",
                                 "crop_pct": 1.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                 "num_classes": 0}}
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    return {"config.json": json.dumps(config).encode(), "model.safetensors": save(weights)}


def _saved(model) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, safe_serialization=True)
        return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def tiny_phikon(seed: int = 0):
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32,
                    patch_size=8)
    return ViTModel(cfg, add_pooling_layer=False)


def tiny_dinov2_registers(seed: int = 0):
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("dinov2_with_registers", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               mlp_ratio=2, image_size=32, patch_size=8, num_register_tokens=2)
    return AutoModel.from_config(cfg)


REMOTE_CODE = '''from transformers import Dinov2WithRegistersModel


class TinyRemoteModel(Dinov2WithRegistersModel):
    """A model class that lives in the repo (as Hibou's does)."""
'''


def tiny_remote_code_files(seed: int = 0) -> dict[str, bytes]:
    from safetensors.torch import save

    model = tiny_dinov2_registers(seed)
    files = _saved(model)
    # the state dict under the class's own names: transformers renames the native class's keys when it saves
    # (and back when it loads), which it does not do for a class of the repo's own code
    files["model.safetensors"] = save({k: v.contiguous() for k, v in model.state_dict().items()}, metadata={"format": "pt"})
    config = json.loads(files["config.json"])
    config["auto_map"] = {"AutoModel": "modeling_tiny.TinyRemoteModel"}
    files["config.json"] = json.dumps(config).encode()
    files["modeling_tiny.py"] = REMOTE_CODE.encode()
    return files


def populate(hub) -> None:
    """The zoo repos: a timm one under Virchow2's id, transformers ones under Phikon's and Hibou-B's,
    a generic DINOv2-with-registers one, and a gated one under UNI2-h's id (alice has access)."""
    from timm_repos import add_repo, tiny_vit_files

    add_repo(hub, "paige-ai/Virchow2", tiny_virchow2_files())
    add_repo(hub, "owkin/phikon", _saved(tiny_phikon()))
    add_repo(hub, "lab/tiny-dinov2-reg", _saved(tiny_dinov2_registers()))
    add_repo(hub, "histai/hibou-b", tiny_remote_code_files())
    add_repo(hub, "MahmoodLab/UNI2-h", tiny_vit_files(), gated=True, granted=("alice",))
    phikon = _saved(tiny_phikon())
    add_repo(hub, "lab/pickle-transformers", {"config.json": phikon["config.json"], "pytorch_model.bin": b"\x80\x02no"})

"""Tiny random-init timm models written in timm's Hub layout (``timm.models.save_for_hf``: the
``config.json`` + ``model.safetensors`` that ``push_to_hf_hub`` uploads), committed into the test
Hub server, so the timm backbone is tested through timm's real ``hf-hub:`` loading code over HTTP.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

#: a 1-block ViT on 32-px inputs with LayerScale (init_values) and a non-ImageNet normalisation
TINY_VIT = dict(img_size=32, patch_size=8, depth=1, embed_dim=16, num_heads=2, init_values=1e-5)
TINY_MEAN, TINY_STD = (0.6, 0.5, 0.4), (0.2, 0.25, 0.3)


def tiny_vit_files(drop_args: tuple[str, ...] = (), seed: int = 0) -> dict[str, bytes]:
    """config.json + model.safetensors of a tiny ViT; ``drop_args`` removes constructor arguments
    from config.json's ``model_args`` (like repos whose card says to pass ``init_values`` yourself)."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY_VIT,
                              pretrained_cfg_overlay=dict(mean=TINY_MEAN, std=TINY_STD))
    with tempfile.TemporaryDirectory() as d:
        save_for_hf(model, d, safe_serialization=True)
        config = json.loads((Path(d) / "config.json").read_text())
        for key in drop_args:
            config["model_args"].pop(key, None)
        return {"config.json": json.dumps(config).encode(), "model.safetensors": (Path(d) / "model.safetensors").read_bytes()}


def tiny_vit_state(seed: int = 0):
    """The state dict :func:`tiny_vit_files` stores (to compare with what was loaded)."""
    import timm
    import torch

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY_VIT).state_dict()


def add_repo(hub, repo_id: str, files: dict[str, bytes], **kwargs) -> None:
    hub.create_repo(repo_id, **kwargs)
    hub.raw_commit(repo_id, files, message="add model", keep=True)


TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}


def populate(hub) -> None:
    """The repos the timm tests use: a good one, a gated one (alice has access), one needing a
    constructor option, and three that are not usable timm repos."""
    files = tiny_vit_files()
    add_repo(hub, "lab/tiny-vit", files)
    add_repo(hub, "lab/gated", files, gated=True, granted=("alice",))
    add_repo(hub, "lab/needs-init", tiny_vit_files(drop_args=("init_values",)))
    add_repo(hub, "lab/pickle-only", {"config.json": files["config.json"], "pytorch_model.bin": b"\x80\x02not unpickled"})
    add_repo(hub, "lab/no-config", {"model.safetensors": files["model.safetensors"]})
    add_repo(hub, "lab/transformers", {"config.json": b'{"model_type": "vit", "hidden_size": 16}',
                                       "model.safetensors": files["model.safetensors"]})


def start_hub():
    from hub_server import HubServer, Token

    hub = HubServer(tokens={t: Token(user) for t, user in TOKENS.items()}).start()
    populate(hub)
    return hub


def point_client_at(monkeypatch, url: str, cache: Path, offline: bool = False) -> None:
    """In-process equivalent of HF_ENDPOINT=url HF_HUB_CACHE=cache HF_HUB_OFFLINE=offline (those
    variables are read when huggingface_hub is imported; the child-process tests use the real ones)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)

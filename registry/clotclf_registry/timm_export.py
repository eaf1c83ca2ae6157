"""What a push adds so that timm loads the trunk of a clotclf model whose backbone is a timm model.

    timm.create_model("hf-hub:ORG/NAME", pretrained=True)   # the trained backbone, pooled features out

timm reads a Hub repo's root ``config.json`` (``architecture``, ``num_classes``, ``model_args``,
``pretrained_cfg``) and then its weights. The root ``config.json`` is clotclf's too, and its
``model.safetensors`` holds the whole classifier (``backbone.*`` and ``head.*``), so a push of
such a model (the ``poolformer`` and ``timm`` backbones; not ``cct``, which is clotclf's own
architecture) adds:

- timm's keys, written by timm's own exporter (:func:`timm.models.save_for_hf`), beside clotclf's
  keys in the root ``config.json`` (clotclf reads ``model``, ``plugins``, ``weights_sha256``…;
  timm reads its four keys; neither reads the other's), with ``pretrained_cfg.hf_hub_filename``
  pointing timm at the trunk's weights;
- ``timm/model.safetensors``: the backbone's state dict with the ``backbone.`` prefix stripped;
- ``timm/config.json``: timm's config alone, so the ``timm/`` folder of a downloaded snapshot is a
  complete timm model folder too (``timm.create_model("local-dir:<snapshot>/timm", pretrained=True)``).

``num_classes`` is 0 (the trunk gives pooled features; the clotclf head is not timm's), the
normalisation and input size are the ones the model was trained with, ``tag`` is ``clotclf``.
A pull does not download ``timm/`` (clotclf does not need it). A fold ensemble (``--fold all``)
carries none: timm builds one trunk, so push one fold's folder for that.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

TIMM_DIR = "timm"
#: the keys of timm's config.json that go into the root config.json (timm's ``_parse_model_cfg``)
TIMM_KEYS = ("architecture", "num_classes", "num_features", "global_pool", "model_args", "pretrained_cfg")


def is_timm_model(module: Any) -> bool:
    """A module timm built (its class lives in ``timm.models``) and can export."""
    return type(module).__module__.startswith("timm.models.") and isinstance(getattr(module, "pretrained_cfg", None), dict)


def timm_export(model: Any, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """``(the root config.json's timm keys, {repo path: bytes} of timm/)`` for a tile-level model
    whose backbone timm built; None for any other model (CCT, MIL models, filters)."""
    backbone = getattr(model, "backbone", None)
    section = config.get("model") if isinstance(config.get("model"), dict) else {}
    if section.get("kind", "tile") != "tile" or backbone is None or not is_timm_model(backbone):
        return None
    from timm.models import save_for_hf

    size = int(section.get("input_size") or 224)
    data = {"mean": tuple(section.get("mean") or ()), "std": tuple(section.get("std") or ()), "input_size": (3, size, size)}
    data = {k: v for k, v in data.items() if v}
    cfg = {"pretrained_cfg": {"tag": "clotclf", "hf_hub_filename": f"{TIMM_DIR}/model.safetensors"}}
    with tempfile.TemporaryDirectory(prefix="clotclf-timm-") as tmp:
        save_for_hf(backbone, tmp, model_config=cfg, safe_serialization=True, data_config=data)  # safetensors only
        timm_config = json.loads((Path(tmp) / "config.json").read_text(encoding="utf-8"))
        files = {f"{TIMM_DIR}/model.safetensors": (Path(tmp) / "model.safetensors").read_bytes(),
                 f"{TIMM_DIR}/config.json": (json.dumps(timm_config, indent=2) + "\n").encode("utf-8")}
    return {k: timm_config[k] for k in TIMM_KEYS if k in timm_config}, files

"""Settings: pydantic models, option parsing, YAML in / JSON out.

Every step's settings are a pydantic model with ``extra="forbid"`` so a misspelt field is an
error, never silently ignored. Component options (``--backbone-opt depth=7``) are validated
against the component's own options model before anything is built.

Step settings live beside the step (``tiling.TileSettings``, ``train.TrainSettings``); this module
holds what they share and the model description saved in ``config.json``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from clotclf_core.plugin.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    pass


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


#: a number in YAML 1.2 / JSON / Python notation; PyYAML (YAML 1.1) reads ``1e-5`` (no dot) as a string
_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


def parse_value(text: str) -> Any:
    """Parse one ``key=value`` value the way YAML would (numbers, booleans, lists), else a string.

    Numbers in exponent notation without a dot (``1e-5``, ``2E3``), which YAML 1.1 keeps as
    strings, are floats here, inside lists too (``[1e-5, 2]``).
    """
    import yaml

    if _FLOAT.match(text.strip()):
        return float(text) if not re.match(r"^[-+]?\d+$", text.strip()) else int(text)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, list):
        value = [parse_value(v) if isinstance(v, str) and _FLOAT.match(v.strip()) else v for v in value]
    return text if isinstance(value, (dict,)) else value


def parse_key_values(items: tuple[str, ...] | list[str], what: str) -> dict[str, Any]:
    """``("depth=7", "pretrained=true")`` -> ``{"depth": 7, "pretrained": True}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} '{item}' is not of the form key=value (e.g. {what} drop_path_rate=0.1)")
        key, _, value = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"{what} '{item}' has an empty option name")
        out[key] = parse_value(value.strip())
    return out


def parse_component_ref(text: str, what: str = "--filter") -> tuple[str, dict[str, Any]]:
    """``"mobilenetv3:weights=run/,threshold=0.5"`` -> ``("mobilenetv3", {...})``. A backbone
    ``run:PATH`` (a pre-training run, :mod:`clotclf_core.models.backbones`) is a name whole: what
    follows ``run:`` is a path or a registry name, not options."""
    if text.startswith("run:"):
        return text.strip(), {}
    name, _, rest = text.partition(":")
    if not name:
        raise ConfigError(f"{what} '{text}' has no component name (e.g. {what} otsu:threshold=0.3)")
    items = [p for p in rest.split(",") if p.strip()] if rest else []
    return name.strip(), parse_key_values(items, what)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a :class:`ConfigError`."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist: check the path given to --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{p}' is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of settings, not {type(data).__name__}")
    return data



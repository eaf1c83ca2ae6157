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
        value = load_yaml_text(text, f"the value '{text[:60]}'")
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
    """``"mobilenetv3:weights=run/,threshold=0.5"`` -> ``("mobilenetv3", {...})``."""
    name, _, rest = text.partition(":")
    if not name:
        raise ConfigError(f"{what} '{text}' has no component name (e.g. {what} otsu:threshold=0.3)")
    items = [p for p in rest.split(",") if p.strip()] if rest else []
    return name.strip(), parse_key_values(items, what)


#: the largest settings file read (real ones are a few hundred bytes); checked before it is parsed
MAX_YAML_BYTES = 2**20
_NO_ALIASES: Any = None


class _Alias(Exception):
    """An alias met while composing (``anchor``, 1-based ``line``)."""

    def __init__(self, anchor: str, line: int | str):
        super().__init__(anchor)
        self.anchor, self.line = anchor, line


def load_yaml_text(text: str, what: str) -> Any:
    """``yaml.safe_load(text)``, but an alias (``*name``) is one :class:`ConfigError` naming ``what``
    and the line: settings never need them, and a few hundred bytes of nested aliases expand to
    gigabytes in whatever walks the result (a "billion laughs"). Other YAML errors are raised as
    ``yaml.YAMLError``."""
    import yaml

    global _NO_ALIASES
    if _NO_ALIASES is None:
        class NoAliases(yaml.SafeLoader):
            def compose_node(self, parent: Any, index: Any) -> Any:
                if self.check_event(yaml.AliasEvent):
                    event = self.peek_event()
                    raise _Alias(event.anchor, event.start_mark.line + 1 if event.start_mark else "?")
                return super().compose_node(parent, index)

        _NO_ALIASES = NoAliases
    try:
        return yaml.load(text, Loader=_NO_ALIASES)  # a SafeLoader subclass
    except _Alias as alias:
        raise ConfigError(
            f"{what} uses a YAML alias (*{alias.anchor}, line {alias.line}): clotclf reads no YAML anchors or aliases "
            "(a few bytes of them can expand to gigabytes); write the values out"
        ) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, one over :data:`MAX_YAML_BYTES`, aliases or a
    non-mapping are a :class:`ConfigError`."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist: check the path given to --config")
    size = p.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"config file '{p}' is {size:,} bytes, more than a settings file can be ({MAX_YAML_BYTES:,}): "
                          "check the path given to --config")
    try:
        data = load_yaml_text(p.read_text(encoding="utf-8"), f"config file '{p}'")
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{p}' is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of settings, not {type(data).__name__}")
    return data



"""Settings: pydantic models, option parsing, YAML in / JSON out.

Every step's settings are a pydantic model with ``extra="forbid"`` so a misspelt field is an
error, never silently ignored. Component options (``--backbone-opt depth=7``) are validated
against the component's own options model before anything is built.

Step settings live beside the step (``tiling.TileSettings``, ``train.TrainSettings``); this module
holds what they share and the model description saved in ``config.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .interfaces import ComponentSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def format_validation_error(err: ValidationError, what: str) -> str:
    """One readable line per problem: ``what: option 'depth': Input should be a valid integer (got '99x')``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if not loc:  # a check of several options together: its own message names them
            parts.append(e["msg"].removeprefix("Value error, "))
        elif e["type"] == "extra_forbidden":
            parts.append(f"unknown option '{loc}'")
        else:
            got = e.get("input")
            parts.append(f"option '{loc}': {e['msg']} (got {got!r})")
    return f"{what}: " + "; ".join(parts)


def validate_options(spec: "ComponentSpec", values: dict[str, Any]) -> BaseModel:
    """Validate ``values`` against ``spec.options``; raise :class:`ConfigError` naming the option."""
    try:
        return spec.options.model_validate(values)
    except ValidationError as err:
        fields = ", ".join(spec.options.model_fields) or "(none)"
        raise ConfigError(
            format_validation_error(err, f"{spec.kind} '{spec.name}'")
            + f". Its options are: {fields} (see `clotclf show-plugin {spec.name}`)."
        ) from None


def parse_value(text: str) -> Any:
    """Parse one ``key=value`` value the way YAML would (numbers, booleans, lists), else a string."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
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


class ModelConfig(StrictModel):
    """Everything needed to rebuild a :class:`clotclf_core.model.ClotClassifier` (``config.json``'s ``model``)."""

    backbone: str
    backbone_options: dict[str, Any] = Field(default_factory=dict)
    head: str = "linear"
    head_options: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=lambda: ["CE", "LAA"])
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.labels)

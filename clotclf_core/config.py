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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict

from clotclf_core.plugin.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    pass


def closest(name: str, known: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The known name a misspelt one most likely meant (a shared prefix first, then similarity), or None:
    the one did-you-mean of clotclf (plugin names, components, settings fields)."""
    import difflib

    known = sorted(set(known))
    prefixed = [k for k in known if name and (name.startswith(k) or k.startswith(name))]
    if prefixed:
        return max(prefixed, key=len)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(name: str, known: list[str] | tuple[str, ...] | set[str]) -> str:
    """`` Did you mean 'x'?`` for a misspelt ``name`` (empty when nothing known is close)."""
    close = closest(name, known)
    return f" Did you mean '{close}'?" if close and close != name else ""


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




def settings_options(
    model: type[BaseModel], skip: Iterable[str] = (), other_defaults: dict[str, str] | None = None
) -> Callable[[Any], Any]:
    """A click decorator adding one option per field of the settings ``model`` (``--field-name``; a
    ``Literal`` as a choice, a ``bool`` as ``--field/--no-field``), except the fields in ``skip``.

    Every option defaults to None (= not given: the model's default, or a YAML value, applies); the
    help text is the field's description with the default after it. So an option and its settings
    field can never drift apart (``clotclf tile`` from ``TileSettings``, ``clotclf train`` from
    ``TrainSettings``). :func:`given_settings` collects what was given. Light: click is imported when
    the decorator runs. ``other_defaults`` adds a second default to a field's help (``{"lr": "with
    --aggregator: 0.001"}``) where another kind of run has its own.
    """
    skipped = set(skip)
    notes = other_defaults or {}

    def decorate(command: Any) -> Any:
        import typing

        import click

        for name, field in reversed(list(model.model_fields.items())):  # click lists the last-added first
            if name in skipped:
                continue
            flag = "--" + name.replace("_", "-")
            default = field.get_default(call_default_factory=True)
            if isinstance(default, bool):  # the flag that is on: --prescreen, --no-compile
                default = flag if default else f"--no-{flag[2:]}"
            helptext = (field.description or "") + ("" if default is None else f" [default: {default}]")
            if name in notes:
                helptext = helptext[:-1] + f"; {notes[name]}]" if helptext.endswith("]") else f"{helptext} [{notes[name]}]"
            ann = field.annotation
            args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
            if typing.get_origin(ann) is Literal:
                option = click.option(flag, type=click.Choice(typing.get_args(ann)), default=None, help=helptext, show_default=False)
            elif args[0] is bool:
                option = click.option(f"{flag}/--no-{flag[2:]}", default=None, help=helptext, show_default=False)
            else:
                kind = {int: int, float: float}.get(args[0], str)
                option = click.option(flag, type=kind, default=None, help=helptext, show_default=False)
            command = option(command)
        return command

    return decorate


def given_settings(params: dict[str, Any], model: type[BaseModel], skip: Iterable[str] = ()) -> dict[str, Any]:
    """The options :func:`settings_options` added that were given (not None), as settings fields."""
    skipped = set(skip)
    return {k: v for k, v in params.items() if k in model.model_fields and k not in skipped and v is not None}

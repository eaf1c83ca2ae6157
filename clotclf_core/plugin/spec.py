"""What a plugin hands the core: a :class:`ComponentSpec` per component, light metadata plus a
factory, and the options model (:class:`Options`) its users' settings are validated against.

Importing a spec must not import torch, timm or openslide; the factory does the heavy imports when
the component is built. What the factories return is in :mod:`clotclf_core.plugin.protocols`.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError

from clotclf_core.plugin.errors import ConfigError


class _RunDirectoryMarker:
    """The mark :data:`RunDirectory` puts on an option (see there)."""

    def __repr__(self) -> str:
        return "RunDirectory"


_RUN_DIRECTORY = _RunDirectoryMarker()
#: The type of an option naming a run directory (a plugin's own trained weights, say): a folder, or
#: a model name another plugin resolves (the registry's ``org/name@v1``). Before the factory is
#: called, the core hands a value that is not an existing path (and does not look like one:
#: absolute, ``./``, ``~``, or a folder that exists followed by a name) to the
#: ``clotclf_resolve_model`` hook, and the factory gets the local folder it answered; when no plugin
#: knows the name, the factory gets the value unchanged (and says what to do). Use it as a type:
#: ``weights: Optional[RunDirectory] = Field(None, description=...)``.
RunDirectory = Annotated[str, _RUN_DIRECTORY]


def run_directory_options(options: type[BaseModel]) -> list[str]:
    """The names of ``options``' fields typed :data:`RunDirectory` or ``Optional[RunDirectory]``."""

    def marked(hint: Any) -> bool:
        if typing.get_origin(hint) is Annotated:
            return any(m is _RUN_DIRECTORY for m in typing.get_args(hint)[1:])
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[RunDirectory], RunDirectory | None
            return any(marked(arg) for arg in typing.get_args(hint))
        return False

    return [name for name, f in options.model_fields.items()
            if any(m is _RUN_DIRECTORY for m in f.metadata) or marked(f.annotation)]

#: Every component kind and the hook (in :mod:`clotclf_core.plugin.hookspecs`) that provides it. The plugin
#: manager, ``list-plugins``, the name-clash policy and the recorded provenance all read this table:
#: a new kind is one entry here, its hookspec, its protocol in :mod:`clotclf_core.plugin.protocols`, and (for ``clotclf smoke-test``)
#: one entry in :data:`clotclf_core.smoke.SMOKE_BY_KIND`.
KIND_HOOKS: dict[str, str] = {
    "source": "clotclf_patch_sources",
    "filter": "clotclf_patch_filters",
    "backbone": "clotclf_backbones",
    "head": "clotclf_heads",
    "aggregator": "clotclf_aggregators",
}
KINDS: tuple[str, ...] = tuple(KIND_HOOKS)

#: what a component name may look like: lower case letters, digits, ``.``, ``_``, ``-`` (``/`` and
#: ``:`` are taken by qualified names ``plugin/name`` and filter options ``name:k=v``)
NAME_RULE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NAME_RULE_TEXT = "lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters"


class Options(BaseModel):
    """Base class for a component's options. Unknown option names are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoOptions(Options):
    """For a component that takes no options."""


@dataclass(frozen=True)
class ComponentSpec:
    """Light description of one component a plugin provides.

    - ``kind``: ``source`` | ``filter`` | ``backbone`` | ``head`` | ``aggregator``.
    - ``name``: what users type (``--backbone cct``): :data:`NAME_RULE` (lower case, no ``/`` or ``:``).
    - ``summary``: one line for ``clotclf list-plugins``.
    - ``options``: a pydantic model (subclass :class:`Options`) with a default for every field
      that has a sensible one; ``Field(description=...)`` becomes the help text.
    - ``factory``: builds the component. Signatures by kind:

      * source:   ``factory(opts) -> PatchSource``
      * filter:   ``factory(opts) -> PatchFilter``
      * backbone: ``factory(opts) -> torch.nn.Module`` with ``num_features`` (see :class:`Backbone`)
      * head:     ``factory(opts, in_features: int, num_classes: int) -> torch.nn.Module``
      * aggregator: ``factory(opts, in_features: int, num_classes: int) -> torch.nn.Module``
        (see :class:`Aggregator`)

    The plugin manager checks every spec when the plugin loads (kind, name rule, options subclass
    :class:`Options`, defaults valid, factory callable) and wraps ``factory`` so an exception while
    building names the component and its distribution (:class:`clotclf_core.plugin.errors.PluginError`).

    ``extra`` is free-form metadata; keys the core reads: ``extensions`` (sources),
    ``rebuild_options`` (options set when a *saved* model is rebuilt, default
    ``{"pretrained": False}`` for an options model with a ``pretrained`` field: rebuilding never
    downloads pretrained weights, the saved weights replace them anyway).
    """

    kind: str
    name: str
    summary: str
    options: type[Options]
    factory: Callable[..., Any]
    #: filled in by the plugin manager: the plugin (entry point) and distribution providing it
    plugin: str = ""
    distribution: str = ""
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate_options(self, values: dict[str, Any] | None) -> Options:
        """Validate ``values`` against the options model (raises :class:`ConfigError`)."""
        return validate_options(self, values or {})


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
            got = repr(e.get("input"))
            got = got if len(got) <= 120 else got[:119] + "…"
            parts.append(f"option '{loc}': {e['msg'].removeprefix('Value error, ')} (got {got})")
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

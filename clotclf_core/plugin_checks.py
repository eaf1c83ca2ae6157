"""What a plugin must be, checked when it loads (used by :mod:`clotclf_core.plugin_manager`).

- :func:`api_problem`: the contract versions a plugin declares (``CLOTCLF_PLUGIN_API``, a PEP 440
  specifier) must contain :data:`clotclf_core.plugin.hookspecs.PLUGIN_API_VERSION`;
- :func:`hook_problems`: every ``clotclf_*`` function of the module is a hook of
  :mod:`clotclf_core.plugin.hookspecs` marked ``@hookimpl`` (a misspelt ``clotclf_backbone`` is named,
  with the closest hook);
- :func:`check_spec` / :func:`check_options_model`: each spec a hook returns is a
  :class:`ComponentSpec` of its kind whose name follows the rule, whose options subclass
  :class:`Options`, forbid unknown options and have valid defaults;
- :func:`guarded`: the factory the core calls, turning an unexpected exception into one
  :class:`PluginError` naming the component and its distribution.

A broken rule raises :class:`SpecError`; the plugin manager reports it as the plugin's status.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any

import pluggy

from clotclf_core.plugin import hookspecs
from clotclf_core.plugin.errors import ClotclfError, PluginError
from clotclf_core.plugin.spec import NAME_RULE, NAME_RULE_TEXT, ComponentSpec, Options

HOOK_NAMES = frozenset(n for n in dir(hookspecs) if n.startswith("clotclf_"))


class SpecError(TypeError):
    """A plugin breaks a rule of the contract (a bad spec, options model or hook)."""


def short_reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def api_problem(declared: Any) -> str | None:
    """Why a plugin declaring ``CLOTCLF_PLUGIN_API = declared`` cannot load here (None: it can)."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        spec = SpecifierSet(str(declared))
    except InvalidSpecifier:
        return (f"{hookspecs.API_ATTRIBUTE} = {declared!r} is not a version specifier "
                f"(write e.g. '>=2.0,<3'); this clotclf provides plugin API {hookspecs.PLUGIN_API_VERSION}")
    if not spec.contains(hookspecs.PLUGIN_API_VERSION, prereleases=True):
        return (f"written for clotclf plugin API {declared}, but this clotclf provides {hookspecs.PLUGIN_API_VERSION}: "
                "install a release of the plugin made for this clotclf (or the clotclf it was made for)")
    return None


def hook_problems(module: Any, pm: pluggy.PluginManager) -> list[str]:
    """``clotclf_*`` functions of ``module`` that are not hooks, or hooks without ``@hookimpl``."""
    problems = []
    for attr in sorted(dir(module)):
        if not attr.startswith("clotclf_"):
            continue
        fn = getattr(module, attr, None)
        if not inspect.isfunction(fn):
            continue
        if attr not in HOOK_NAMES:
            close = difflib.get_close_matches(attr, sorted(HOOK_NAMES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{attr}() is not a clotclf hook{hint}; the hooks are in clotclf_core/hookspecs.py")
        elif pm.parse_hookimpl_opts(module, attr) is None:
            problems.append(f"{attr}() is not marked @hookimpl (from clotclf_core.plugin.hookspecs import hookimpl)")
    return problems


def check_options_model(options: Any, what: str, open_options: bool = False) -> None:
    """``options`` must be an :class:`Options` subclass that forbids unknown options (unless the
    spec declares ``extra={"open_options": True}``: a component that passes further options on to a
    library constructor, like ``timm``, and checks them itself when it builds) and whose defaults
    validate; raises :class:`SpecError` naming ``what`` otherwise."""
    from pydantic import TypeAdapter, ValidationError

    from clotclf_core.plugin.spec import format_validation_error

    if not (isinstance(options, type) and issubclass(options, Options)):
        shown = options.__name__ if isinstance(options, type) else repr(options)[:60]
        raise SpecError(f"{what}: options is {shown}, not a subclass of clotclf_core.plugin.spec.Options")
    if options.model_config.get("extra") != "forbid" and not (open_options and options.model_config.get("extra") == "allow"):
        raise SpecError(f"{what}: options {options.__name__} allows unknown options (extra={options.model_config.get('extra')!r}); "
                        "keep Options' extra='forbid' so a misspelt option is an error (or declare extra={'open_options': True} on the spec "
                        "if the component passes further options to a constructor and checks them when it builds)")
    fields = options.model_fields
    try:
        if not any(f.is_required() for f in fields.values()):
            # pydantic does not validate defaults by itself: give them as input (model validators run too)
            options.model_validate({n: f.get_default(call_default_factory=True) for n, f in fields.items()})
            return
        from typing import Annotated

        for fname, f in fields.items():  # required fields: check the defaults of the others one by one
            if not f.is_required():
                hint = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
                TypeAdapter(hint).validate_python(f.get_default(call_default_factory=True))
    except ValidationError as err:
        raise SpecError(format_validation_error(err, f"{what}: the defaults of {options.__name__} do not validate")) from None


def guarded(factory: Any, spec: ComponentSpec) -> Any:
    """``factory`` whose unexpected exceptions become one :class:`PluginError` naming the component
    and its distribution (the original is chained: ``CLOTCLF_DEBUG=1`` shows its traceback)."""

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> Any:
        try:
            return factory(*args, **kwargs)
        except ClotclfError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{spec.kind} '{spec.name}' (plugin {spec.plugin}, distribution {spec.distribution} {spec.version}) "
                f"failed to build: {short_reason(exc)}. Check its options (`clotclf show-plugin {spec.plugin}/{spec.name}`); "
                f"if they are right, this is a bug in {spec.distribution} (CLOTCLF_DEBUG=1 shows the traceback)"
            ) from exc

    build.__clotclf_guarded__ = True  # type: ignore[attr-defined]
    return build


def check_spec(spec: Any, kind: str, hook_name: str) -> ComponentSpec:
    """One spec returned by ``hook_name``: raises :class:`SpecError` naming what breaks the contract."""
    if not isinstance(spec, ComponentSpec):
        raise SpecError(f"{hook_name}() returned {type(spec).__name__}, not ComponentSpec")
    if spec.kind != kind:
        raise SpecError(f"{hook_name}() returned a spec of kind '{spec.kind}' (expected '{kind}')")
    if not isinstance(spec.name, str) or not NAME_RULE.match(spec.name):
        raise SpecError(f"{kind} name {spec.name!r} breaks the name rule ({NAME_RULE_TEXT})")
    if not isinstance(spec.summary, str):
        raise SpecError(f"{kind} '{spec.name}': summary must be a string (one line for list-plugins)")
    if not callable(spec.factory):
        raise SpecError(f"{kind} '{spec.name}': factory {spec.factory!r} is not callable")
    if not isinstance(spec.extra, dict):
        raise SpecError(f"{kind} '{spec.name}': extra must be a dict")
    check_options_model(spec.options, f"{kind} '{spec.name}'", open_options=spec.extra.get("open_options") is True)
    return spec

"""Plugin discovery and lookup.

Plugins are found through the ``clotclf.plugins`` entry-point group — the built-in ones too.
We load each entry point ourselves (pluggy's ``load_setuptools_entrypoints`` stops at the first
broken plugin) and register each module with a pluggy ``PluginManager``. Each hook is then called
plugin by plugin, so a plugin that fails to import or whose hook raises is recorded with its
reason and every other plugin keeps working.

Lookups (``get("backbone", "cct")``) fail with one clear message: unknown names list the known
ones (closest first); two plugins providing the same name are a conflict naming both
distributions and how to choose one (``plugin/name``, or disabling one plugin).
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import os
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import PluginError
from .interfaces import KIND_HOOKS, KINDS, ComponentSpec

DISABLE_ENV = "CLOTCLF_DISABLE_PLUGINS"

_HOOK_BY_KIND = KIND_HOOKS  # one table of kinds, in interfaces.py


@dataclass
class PluginInfo:
    """One entry point of the ``clotclf.plugins`` group and what became of it."""

    name: str  # entry-point name
    value: str  # "module.path"
    distribution: str
    version: str
    status: str = "ok"  # "ok" | "disabled" | "error: <reason>"
    module: Any = None
    detail: str = ""  # traceback for --verbose output

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Conflict:
    kind: str
    name: str
    specs: list[ComponentSpec] = field(default_factory=list)

    def message(self) -> str:
        who = " and ".join(f"plugin '{s.plugin}' (distribution {s.distribution} {s.version})" for s in self.specs)
        choices = " or ".join(f"'{s.plugin}/{s.name}'" for s in self.specs)
        plugins = ",".join(s.plugin for s in self.specs[1:])
        return (
            f"{self.kind} '{self.name}' is provided by {who}. Choose one by its qualified name "
            f"({choices}), or disable the other plugin with {DISABLE_ENV}={plugins} "
            f"(or clotclf --disable-plugin {self.specs[-1].plugin})."
        )


def _disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {p.strip() for p in raw.split(",") if p.strip()}


def _short_reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class PluginManager:
    """All plugins of the ``clotclf.plugins`` group, loaded and indexed by kind and name."""

    def __init__(self, disabled: Iterable[str] = (), entry_points: Iterable[md.EntryPoint] | None = None):
        self.disabled = set(disabled) | _disabled_from_env()
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._components: dict[str, list[ComponentSpec]] = {k: [] for k in KINDS}
        eps = list(entry_points) if entry_points is not None else list(md.entry_points(group=hookspecs.ENTRY_POINT_GROUP))
        for ep in sorted(eps, key=lambda e: e.name):
            self._load(ep)
        for kind in KINDS:
            self._collect(kind)

    # ------------------------------------------------------------------ loading
    def _load(self, ep: md.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            value=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else "?",
            version=dist.version if dist is not None else "?",
        )
        self.plugins.append(info)
        if any(d in self.disabled for d in (info.name, info.distribution)):
            info.status = "disabled"
            return
        if any(p.name == ep.name and p is not info and p.status != "disabled" for p in self.plugins):
            info.status = f"error: another plugin is already registered as '{ep.name}' (entry point names must be unique)"
            return
        try:
            module = ep.load()
            self.pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not break the CLI
            info.status = f"error: {_short_reason(exc)}"
            info.detail = traceback.format_exc()
            return
        info.module = module

    def _collect(self, kind: str) -> None:
        hook_name = _HOOK_BY_KIND[kind]
        for info in self.plugins:
            if not info.ok:
                continue
            fn = getattr(info.module, hook_name, None)
            if fn is None:
                continue
            try:
                specs = fn()
                for spec in specs or []:
                    if not isinstance(spec, ComponentSpec):
                        raise TypeError(f"{hook_name}() returned {type(spec).__name__}, not ComponentSpec")
                    if spec.kind != kind:
                        raise TypeError(f"{hook_name}() returned a spec of kind '{spec.kind}' (expected '{kind}')")
                    self._components[kind].append(
                        replace(spec, plugin=info.name, distribution=info.distribution, version=info.version)
                    )
            except Exception as exc:
                info.status = f"error: {hook_name}() raised {_short_reason(exc)}"
                info.detail = traceback.format_exc()
                # drop whatever this plugin had contributed: it is not trustworthy
                for k in KINDS:
                    self._components[k] = [s for s in self._components[k] if s.plugin != info.name]

    # ------------------------------------------------------------------ queries
    @property
    def hook(self) -> Any:
        return self.pm.hook

    def components(self, kind: str | None = None) -> list[ComponentSpec]:
        kinds = [kind] if kind else list(KINDS)
        out = []
        for k in kinds:
            if k not in self._components:
                raise PluginError(f"unknown kind '{k}': choose one of {', '.join(KINDS)}")
            out.extend(sorted(self._components[k], key=lambda s: (s.name, s.plugin)))
        return out

    def conflicts(self) -> list[Conflict]:
        out = []
        for kind in KINDS:
            by_name: dict[str, list[ComponentSpec]] = {}
            for spec in self._components[kind]:
                by_name.setdefault(spec.name, []).append(spec)
            out.extend(Conflict(kind, n, s) for n, s in sorted(by_name.items()) if len(s) > 1)
        return out

    def names(self, kind: str) -> list[str]:
        return sorted({s.name for s in self.components(kind)})

    def get(self, kind: str, name: str) -> ComponentSpec:
        """The spec of ``kind`` called ``name`` (or ``plugin/name`` to pick among conflicting ones)."""
        plugin = None
        if "/" in name:
            plugin, name = name.split("/", 1)
        matches = [s for s in self.components(kind) if s.name == name and (plugin is None or s.plugin == plugin)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            return self._raise_conflict(kind, name, matches)
        known = self.names(kind)
        close = difflib.get_close_matches(name, known, n=len(known), cutoff=0.0)
        broken = [p for p in self.plugins if p.status.startswith("error")]
        hint = ""
        if broken:
            hint = " Some plugins failed to load (see `clotclf list-plugins`): " + ", ".join(p.name for p in broken) + "."
        if plugin is not None:
            return self._raise(
                f"no {kind} '{name}' from plugin '{plugin}'. Known {kind}s: "
                + ", ".join(f"{s.plugin}/{s.name}" for s in self.components(kind))
                + "."
                + hint
            )
        listing = ", ".join(close) if close else "(none installed)"
        return self._raise(f"unknown {kind} '{name}'. Known {kind}s: {listing}.{hint}")

    def _raise_conflict(self, kind: str, name: str, specs: list[ComponentSpec]) -> ComponentSpec:
        raise PluginError(Conflict(kind, name, specs).message())

    def _raise(self, msg: str) -> ComponentSpec:
        raise PluginError(msg)

    def distribution_of(self, spec: ComponentSpec) -> dict[str, str]:
        return {"plugin": spec.plugin, "distribution": spec.distribution, "version": spec.version}

    def add_commands(self, cli: Any) -> None:
        """Let each plugin add its click commands; one that raises is marked ``error`` and skipped."""
        for impl in self.pm.hook.clotclf_add_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except Exception as exc:
                info = next((p for p in self.plugins if p.name == impl.plugin_name), None)
                if info is not None:
                    info.status = f"error: clotclf_add_commands() raised {_short_reason(exc)}"
                    info.detail = traceback.format_exc()

    def resolve_model(self, name: str) -> Any:
        """Ask plugins (e.g. the registry) to turn a model name into a local run directory."""
        return self.pm.hook.clotclf_resolve_model(name=name)


_MANAGER: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = PluginManager()
    return _MANAGER


def reset_manager(disabled: Iterable[str] = ()) -> PluginManager:
    """Rebuild the plugin manager (after installing a plugin, or to disable some)."""
    global _MANAGER
    _MANAGER = PluginManager(disabled=disabled)
    return _MANAGER


def get_component(kind: str, name: str) -> ComponentSpec:
    return get_manager().get(kind, name)

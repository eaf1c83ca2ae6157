"""Plugin discovery, validation and lookup.

Plugins are found through the ``clotclf.plugins`` entry-point group — the built-in ones too.
We load each entry point ourselves (pluggy's ``load_setuptools_entrypoints`` stops at the first
broken plugin) and register each module with a pluggy ``PluginManager``. Each hook is then called
plugin by plugin, so a plugin that fails to import, whose hook raises, or that breaks a rule of the
contract is recorded with its reason (``status`` ``error: …``) and every other plugin keeps working.

Checked when a plugin loads (:mod:`clotclf_core.plugin_checks`): the contract version it declares
(``CLOTCLF_PLUGIN_API``), that every ``clotclf_*`` function is a known hook marked ``@hookimpl``
(pluggy's ``check_pending`` for the rest), and every spec. Importing each module is timed, and
heavy libraries it pulls into start-up are noted (``clotclf list-plugins --verbose``).

Lookups (``get("backbone", "cct")``) fail with one clear message: unknown names list the known
ones (closest first) and say which plugins are broken or disabled. **Name clashes** follow one
policy: a name provided by the built-in distribution (``clotclf``) keeps meaning the built-in one,
and a plugin that registers the same name is reachable only as ``plugin/name``; a clash between
two other plugins is refused until the user picks one (``plugin/name``, or disabling one). A saved
model is rebuilt from the provider its ``config.json`` records (:meth:`PluginManager.requirement`),
so a plugin installed later can neither change nor break it.

At about 470 lines this module is over the project's ~400: it is one concern (the one registry of
installed components: loading, lookup, clash policy and the provider a saved model records all read
and write the same per-plugin records; the per-plugin checks already live in
:mod:`clotclf_core.plugin_checks`).
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata as md
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import pluggy

from clotclf_core.config import did_you_mean
from clotclf_core.plugin import hookspecs
from clotclf_core.plugin.errors import PluginError
from clotclf_core.plugin.spec import KIND_HOOKS, KINDS, ComponentSpec, run_directory_options
from clotclf_core.plugin_checks import SpecError, api_problem, check_spec, guarded, hook_problems, short_reason

DISABLE_ENV = "CLOTCLF_DISABLE_PLUGINS"
#: the distribution of the core and the built-in plugins: its names win a clash
CORE_DISTRIBUTION = "clotclf"
#: libraries that make start-up slow when a plugin module imports them at import time
HEAVY_MODULES = ("torch", "timm", "openslide", "albumentations", "dask", "tensorflow", "jax", "cv2")


def normalise_distribution(name: str | None) -> str:
    """PEP 503 form (``Clotclf_Example.ResNet`` -> ``clotclf-example-resnet``) for comparisons."""
    return re.sub(r"[-_.]+", "-", str(name or "")).lower()


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
    #: seconds ``import`` of the module took (None: not imported)
    import_seconds: float | None = None
    #: heavy libraries (HEAVY_MODULES) first imported by this module
    heavy_imports: list[str] = field(default_factory=list)
    #: the contract versions the plugin declares (``CLOTCLF_PLUGIN_API``), None if it declares none
    api: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def builtin(self) -> bool:
        return normalise_distribution(self.distribution) == CORE_DISTRIBUTION

    def as_row(self) -> dict[str, Any]:
        return {
            "plugin": self.name,
            "module": self.value,
            "distribution": self.distribution,
            "version": self.version,
            "api": self.api or "-",
            "import_ms": None if self.import_seconds is None else round(self.import_seconds * 1000, 1),
            "heavy_imports": list(self.heavy_imports),
            "status": self.status,
        }


@dataclass
class Conflict:
    """Several plugins providing one ``kind``/``name``; ``winner`` is the built-in one, if any."""

    kind: str
    name: str
    specs: list[ComponentSpec] = field(default_factory=list)

    @property
    def winner(self) -> ComponentSpec | None:
        builtin = [s for s in self.specs if normalise_distribution(s.distribution) == CORE_DISTRIBUTION]
        return builtin[0] if len(builtin) == 1 else None

    def message(self) -> str:
        who = " and ".join(f"plugin '{s.plugin}' (distribution {s.distribution} {s.version})" for s in self.specs)
        winner = self.winner
        if winner is not None:
            others = " or ".join(f"'{s.plugin}/{s.name}'" for s in self.specs if s is not winner)
            return (
                f"{self.kind} '{self.name}' is provided by {who}. The plain name '{self.name}' means the built-in one "
                f"({winner.plugin}/{winner.name}); use {others} for the other"
            )
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


class PluginManager:
    """All plugins of the ``clotclf.plugins`` group, loaded, checked and indexed by kind and name."""

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
        known = {p.name for p in self.plugins} | {normalise_distribution(p.distribution) for p in self.plugins}
        #: names asked to be disabled that match no installed plugin (a typo, or an uninstalled one)
        self.unknown_disabled = sorted(d for d in self.disabled if d not in known and normalise_distribution(d) not in known)

    # ------------------------------------------------------------------ loading
    def _is_disabled(self, info: PluginInfo) -> bool:
        wanted = {normalise_distribution(d) for d in self.disabled}
        return info.name in self.disabled or normalise_distribution(info.distribution) in wanted

    def _load(self, ep: md.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            value=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else "?",
            version=dist.version if dist is not None else "?",
        )
        self.plugins.append(info)
        if self._is_disabled(info):
            info.status = "disabled"
            return
        if any(p.name == ep.name and p is not info and p.status != "disabled" for p in self.plugins):
            info.status = f"error: another plugin is already registered as '{ep.name}' (entry point names must be unique)"
            return
        before = set(sys.modules)
        start = time.perf_counter()
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not break the CLI
            info.status = f"error: {short_reason(exc)}"
            info.detail = traceback.format_exc()
            return
        finally:
            info.import_seconds = time.perf_counter() - start
            info.heavy_imports = [m for m in HEAVY_MODULES if m in sys.modules and m not in before]
        declared = getattr(module, hookspecs.API_ATTRIBUTE, None)
        if declared is not None:
            info.api = str(declared)
            problem = api_problem(declared)
            if problem:
                info.status = f"error: {problem}"
                return
        problems = hook_problems(module, self.pm)
        if problems:
            info.status = "error: " + "; ".join(problems)
            return
        try:
            self.pm.register(module, name=ep.name)
            self.pm.check_pending()
        except Exception as exc:
            info.status = f"error: {short_reason(exc)}"
            info.detail = traceback.format_exc()
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            return
        info.module = module

    def _collect(self, kind: str) -> None:
        hook_name = KIND_HOOKS[kind]
        for info in self.plugins:
            if not info.ok:
                continue
            fn = getattr(info.module, hook_name, None)
            if fn is None:
                continue
            try:
                specs = fn()
                if specs is None:
                    specs = []
                if not isinstance(specs, (list, tuple)):
                    raise SpecError(f"{hook_name}() returned {type(specs).__name__}, not a list of ComponentSpec")
                added: list[ComponentSpec] = []
                for spec in specs:
                    check_spec(spec, kind, hook_name)
                    if any(s.name == spec.name for s in added):
                        raise SpecError(f"{hook_name}() returned two {kind}s named '{spec.name}'")
                    spec = replace(spec, plugin=info.name, distribution=info.distribution, version=info.version)
                    added.append(replace(spec, factory=guarded(self._resolving(spec), spec)))
            except Exception as exc:
                info.status = f"error: {exc}" if isinstance(exc, SpecError) else f"error: {hook_name}() raised {short_reason(exc)}"
                info.detail = traceback.format_exc()
                # drop whatever this plugin had contributed: it is not trustworthy
                for k in KINDS:
                    self._components[k] = [s for s in self._components[k] if s.plugin != info.name]
                continue
            self._components[kind].extend(added)

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

    def plugin_info(self, name: str) -> PluginInfo | None:
        """The plugin whose entry-point or distribution name is ``name``."""
        for info in self.plugins:
            if info.name == name:
                return info
        return next((p for p in self.plugins if normalise_distribution(p.distribution) == normalise_distribution(name)), None)

    def _unavailable(self) -> str:
        broken = [p.name for p in self.plugins if p.status.startswith("error")]
        disabled = [p.name for p in self.plugins if p.status == "disabled"]
        hint = ""
        if broken:
            hint += " Some plugins failed to load (see `clotclf list-plugins --verbose`): " + ", ".join(broken) + "."
        if disabled:
            hint += " Disabled: " + ", ".join(disabled) + "."
        return hint

    def get(self, kind: str, name: str) -> ComponentSpec:
        """The spec of ``kind`` called ``name`` (``plugin/name`` picks one provider); see the clash policy above."""
        plugin = None
        if "/" in name:
            plugin, name = name.split("/", 1)
        matches = [s for s in self.components(kind) if s.name == name and (plugin is None or s.plugin == plugin)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            conflict = Conflict(kind, name, matches)
            if conflict.winner is not None:
                return conflict.winner
            raise PluginError(conflict.message())
        known = self.names(kind)
        close = difflib.get_close_matches(name, known, n=len(known), cutoff=0.0)
        shown = _printable(name)
        if plugin is not None:
            raise PluginError(
                f"no {kind} '{shown}' from plugin '{_printable(plugin)}'. Known {kind}s: "
                + ", ".join(f"{s.plugin}/{s.name}" for s in self.components(kind))
                + "." + self._unavailable()
            )
        listing = ", ".join(close) if close else "(none installed)"
        raise PluginError(f"unknown {kind} '{shown}'. Known {kind}s: {listing}.{did_you_mean(name, known)}{self._unavailable()}")

    def requirement(self, kind: str, name: str, record: dict[str, Any] | None, trusted: bool = True) -> dict[str, Any]:
        """Where the component a saved run names comes from now.

        ``record`` is the run's ``{"plugin", "distribution", "version"}`` for it (None for runs
        saved before clotclf recorded it). The provider is the recorded *distribution* (its plugin
        first): never another distribution that happens to use the same name. Returns a row:
        ``role, name, plugin, distribution, version`` (as recorded), ``state`` (``ok``,
        ``version differs``, ``not installed``, ``disabled``, ``broken``), ``installed_version``,
        ``spec`` (the ComponentSpec, or None) and ``fix`` (what to do, for messages).

        ``trusted``: the record is the user's own (a run trained here). A record from elsewhere (a
        pulled model: ``False``) names distributions someone else chose, so ``fix`` gives a
        ``pip install`` only for a distribution clotclf knows (:meth:`known_distribution`) and
        otherwise says, without a command, that the name is untrusted (:func:`install_advice`).
        """
        record = record if isinstance(record, dict) else {}
        base = str(name).split("/")[-1]
        qualifier = str(name).split("/")[0] if "/" in str(name) else None
        dist = str(record.get("distribution") or "") or None
        version = str(record.get("version") or "") or None
        plugin = str(record.get("plugin") or "") or qualifier
        row: dict[str, Any] = {"role": kind, "name": base, "plugin": plugin, "distribution": dist or "?",
                               "version": version or "?", "state": "ok", "installed_version": None, "spec": None, "fix": ""}
        candidates = [s for s in self._components.get(kind, []) if s.name == base]
        if dist:
            same = [s for s in candidates if normalise_distribution(s.distribution) == normalise_distribution(dist)]
            same.sort(key=lambda s: s.plugin != plugin)
        elif plugin:
            same = [s for s in candidates if s.plugin == plugin]
        else:  # nothing recorded: what the plain name means today
            try:
                same = [self.get(kind, base)]
            except PluginError as exc:
                row.update(state="not installed", fix=str(exc))
                return row
        if same:
            spec = same[0]
            row.update(spec=spec, installed_version=spec.version)
            if version and spec.version != version:
                row.update(state="version differs", fix=install_advice(dist, version, True, f"{kind} '{base}'"))
            return row
        info = next((p for p in self.plugins if dist and normalise_distribution(p.distribution) == normalise_distribution(dist)
                     and (not plugin or p.name == plugin)), None) or (self.plugin_info(plugin) if plugin else None)
        known = trusted or (dist is not None and self.known_distribution(dist))
        pin = install_advice(dist, version, known, f"{kind} '{base}'")
        if info is not None and info.status == "disabled":
            row.update(state="disabled", installed_version=info.version,
                       fix=f"plugin '{info.name}' ({info.distribution}) is disabled: drop it from --disable-plugin / {DISABLE_ENV}")
        elif info is not None and info.status.startswith("error"):
            row.update(state="broken", installed_version=info.version,
                       fix=f"plugin '{info.name}' ({info.distribution} {info.version}) is installed but broken "
                           f"({info.status.removeprefix('error: ')}); see `clotclf list-plugins --verbose`, or {pin}")
        else:
            others = sorted({f"{s.distribution} {s.version}" for s in candidates})
            also = (f" (another '{base}' is installed, from {', '.join(others)}, but this model was saved with "
                    f"{dist or 'another plugin'}: it is not used in its place)") if others else ""
            row.update(state="not installed", fix=pin + also)
        return row

    def known_distribution(self, dist: str) -> bool:
        """Whether ``dist`` is clotclf itself or the distribution of a plugin installed here (working,
        disabled or broken): the only names clotclf suggests to ``pip install`` for a model from elsewhere."""
        wanted = normalise_distribution(dist)
        return wanted == "clotclf" or any(normalise_distribution(p.distribution) == wanted for p in self.plugins)

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
                    info.status = f"error: clotclf_add_commands() raised {short_reason(exc)}"
                    info.detail = traceback.format_exc()

    def resolve_model(self, name: str) -> Any:
        """Ask plugins (e.g. the registry) to turn a model name into a local run directory."""
        return self.pm.hook.clotclf_resolve_model(name=name)

    def _resolving(self, spec: ComponentSpec) -> Any:
        """``spec.factory``, handed options whose :data:`~clotclf_core.plugin.spec.RunDirectory`
        values are local folders: a value that is no path is asked of the resolve hook first."""
        fields = run_directory_options(spec.options)
        if not fields:
            return spec.factory
        factory = spec.factory

        @functools.wraps(factory)
        def build(opts: Any, *args: Any, **kwargs: Any) -> Any:
            found = {}
            for name in fields:
                value = getattr(opts, name, None)
                if isinstance(value, str) and value and not _looks_like_path(value):
                    resolved = self.resolve_model(value)
                    if resolved is not None:
                        found[name] = str(resolved)
            return factory(opts.model_copy(update=found) if found else opts, *args, **kwargs)

        return build


_DISTRIBUTION = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")  # PEP 508 names


def install_advice(dist: str | None, version: str | None, known: bool, what: str) -> str:
    """What to install for ``what`` (``"backbone 'x'"``): ``pip install 'dist==version'`` when
    ``known`` (the user's own record, or a distribution clotclf knows), the name marked untrusted
    and no command otherwise, so a config from elsewhere cannot put a command of its choosing in
    front of the user."""
    from clotclf_core.plugin.errors import printable

    if not dist:
        return "install the plugin that provides it"
    shown = printable(dist, 100)
    if not _DISTRIBUTION.match(dist):
        return f"the distribution name it records ('{shown}') is not a valid package name; do not install anything by it"
    if not known:
        return (f"'{shown}' is the name this model's config.json gives, not a distribution clotclf knows: find out who "
                f"publishes the plugin providing {what} before installing anything by that name")
    pin = dist
    if version:
        from packaging.version import InvalidVersion, Version

        try:
            Version(version)
            pin = f"{dist}=={version}"
        except InvalidVersion:  # text that is no version: the plain name
            pass
    return f"pip install '{pin}'"


def _looks_like_path(value: str) -> bool:
    """An existing path, or one that may be a path the user meant
    (:func:`clotclf_core.plugin.hub.path_reason`): never a model name for the resolve hook, so a
    mistyped path is not sent to the network."""
    from clotclf_core.plugin.hub import path_reason

    return Path(value).expanduser().exists() or path_reason(value) is not None


def _printable(text: Any, limit: int = 120) -> str:
    """``text`` safe for a terminal: control characters escaped, long text cut."""
    from clotclf_core.plugin.errors import printable

    return printable(text, limit)


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

"""What a saved run needs installed, read from its ``config.json`` without torch.

``config.json``'s ``plugins`` section records who provided every component of a run: the model's
(``backbone``, ``head``, …: ``{name, plugin, distribution, version}``) and the tiling pipeline's,
copied from the TileSet (``filters``: a list, ``source``). :func:`requirements` turns it into rows
(installed? which version?) and :func:`check_requirements` into the one error that says exactly
what to ``pip install``; the registry and the model card use the same two functions.
:func:`pipeline_provenance` writes the tiling part when a run is saved. Reading the run directory
itself is :mod:`clotclf_core.models.runs`.
"""

from __future__ import annotations

from typing import Any

from clotclf_core.models.config import MODEL_KINDS
from clotclf_core.plugin.errors import ModelLoadError, printable, warn
from clotclf_core.plugin.weights import CONFIG_NAME
from clotclf_core.plugin_manager import get_manager

#: run kinds that are not classifiers: ``kind`` -> the component kind named by the config's key of that name
OTHER_RUN_KINDS = {"patch_filter": "filter", "backbone": "backbone"}


def _plugins_section(config: dict[str, Any]) -> dict[str, Any]:
    recorded = config.get("plugins")
    return recorded if isinstance(recorded, dict) else {}


def component_records(config: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """``(kind, name, recorded provider)`` of each component needed to *rebuild* the model."""
    recorded = _plugins_section(config)
    kind = config.get("kind")
    if kind in OTHER_RUN_KINDS:
        comp = OTHER_RUN_KINDS[kind]
        info = recorded.get(comp) if isinstance(recorded.get(comp), dict) else None
        name = config.get(comp) or (info or {}).get("name")
        return [(comp, str(name), info)] if name else []
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    out = []
    for comp in MODEL_KINDS:
        name = model.get(comp)
        if name:
            info = recorded.get(comp)
            out.append((comp, str(name), info if isinstance(info, dict) else None))
    for comp, info in recorded.items():  # kinds added later that this version does not list
        if comp not in MODEL_KINDS and comp not in ("filters", "source", "sources", "encoder") and isinstance(info, dict) \
                and model.get(comp) and not any(c == comp for c, _, _ in out):
            out.append((comp, str(model[comp]), info))
    return out


def pipeline_records(config: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """``(kind, name, recorded provider)`` of the tiling pipeline the model was trained on (filters,
    source): not needed to load the model, but to tile new slides the way it saw them."""
    recorded = _plugins_section(config)
    out = []
    for entry in recorded.get("filters") or []:
        if isinstance(entry, dict) and entry.get("name"):
            out.append(("filter", str(entry["name"]), entry))
    sources = recorded.get("sources") or ([recorded["source"]] if isinstance(recorded.get("source"), dict) else [])
    for entry in sources:
        if isinstance(entry, dict) and entry.get("name"):
            out.append(("source", str(entry["name"]), entry))
    return out


def encoder_records(config: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """``(kind, name, recorded provider)`` of a MIL model's frozen encoder (a backbone): not part
    of the model's weights, but needed to turn new slides' tiles into the features it takes."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    encoder = model.get("encoder")
    if not isinstance(encoder, dict) or not encoder.get("backbone"):
        return []
    info = _plugins_section(config).get("encoder")
    return [("backbone", str(encoder["backbone"]), info if isinstance(info, dict) else None)]


def recorded_components(config: dict[str, Any], pipeline: bool = True) -> list[dict[str, Any]]:
    """What config.json records about each component, without asking what is installed here:
    ``part`` (``model`` / ``tiling``), ``role``, ``name``, ``plugin``, ``distribution``, ``version``."""
    records = [("model", *r) for r in component_records(config)]
    if pipeline:
        records += [("encoder", *r) for r in encoder_records(config)] + [("tiling", *r) for r in pipeline_records(config)]
    rows = []
    for part, kind, name, info in records:
        info = info or {}
        rows.append({"part": part, "role": kind, "name": printable(name.split("/")[-1], 80),
                     **{k: printable(info.get(k) or "?", 80) for k in ("plugin", "distribution", "version")}})
    return rows


def _row(kind: str, name: str, info: dict[str, Any] | None, part: str, trusted: bool = True) -> dict[str, Any]:
    row = get_manager().requirement(kind, name, info, trusted)
    row.pop("spec", None)
    row["installed"] = row["state"] in ("ok", "version differs")
    row["part"] = part
    row["name"] = printable(row["name"], 80)
    for key in ("plugin", "distribution", "version"):
        row[key] = printable(row[key], 80) if row[key] is not None else None
    row["fix"] = printable(row["fix"], 600)  # quotes the recorded names: text from a config that may come from elsewhere
    return row


def requirements(config: dict[str, Any], pipeline: bool = False, trusted: bool = True) -> list[dict[str, Any]]:
    """One row per component the run needs: ``role, name, plugin, distribution, version`` (as
    recorded), ``installed``, ``installed_version``, ``state`` and ``fix`` (see
    :meth:`clotclf_core.plugin_manager.PluginManager.requirement`); ``part`` is ``model`` or, with
    ``pipeline``, ``encoder`` for a MIL model's frozen encoder and ``tiling`` for the filters and
    source the TileSet was made with. ``trusted``: the config is the user's own; ``False`` for one
    from elsewhere (a pulled model), whose distribution names get no ``pip install`` unless clotclf
    knows them (:func:`clotclf_core.plugin_manager.install_advice`)."""
    rows = [_row(k, n, i, "model", trusted) for k, n, i in component_records(config)]
    if pipeline:
        rows += [_row(k, n, i, "encoder", trusted) for k, n, i in encoder_records(config)]
        rows += [_row(k, n, i, "tiling", trusted) for k, n, i in pipeline_records(config)]
    return rows


def check_requirements(config: dict[str, Any], label: str, warn_versions: bool = True,
                       trusted: bool = True) -> list[dict[str, Any]]:
    """:func:`requirements` of the model part; raises one :class:`ModelLoadError` naming every
    component that is missing (with the exact ``pip install``, for a ``trusted`` config or a
    distribution clotclf knows); warns when a recorded version differs from the installed one."""
    rows = requirements(config, trusted=trusted)
    if not rows:
        raise ModelLoadError(f"model '{printable(label)}': its {CONFIG_NAME} names no components (no model.backbone or model.aggregator)")
    missing = [r for r in rows if not r["installed"]]
    if missing:
        what = "; ".join(
            f"{r['role']} '{r['name']}' from distribution {r['distribution']}"
            + (f" {r['version']}" if r["version"] != "?" else "") + f", which is {r['state']}: {r['fix']}"
            for r in missing
        )
        raise ModelLoadError(f"model '{printable(label)}' needs {what} (then check with `clotclf list-plugins`)")
    if warn_versions:
        for r in rows:
            if r["state"] == "version differs":
                warn(f"model '{printable(label)}' was saved with {r['role']} '{r['name']}' from {r['distribution']} "
                     f"{r['version']}; {r['installed_version']} is installed. If it does not load or behaves differently, "
                     f"{r['fix']}")
    return rows


def install_command(rows: list[dict[str, Any]]) -> str | None:
    """One ``pip install`` line for the distributions in ``rows`` at their recorded versions."""
    pins = []
    for r in rows:
        dist = r.get("distribution")
        if not dist or dist == "?":
            continue
        pin = f"{dist}=={r['version']}" if r.get("version") not in (None, "?") else dist
        if pin not in pins:
            pins.append(pin)
    return "pip install " + " ".join(f"'{p}'" for p in pins) if pins else None


def pipeline_provenance(tileset: dict[str, Any] | None) -> dict[str, Any]:
    """The ``filters`` / ``source`` part of config.json's ``plugins`` from a TileSet's record
    (``train``'s ``tileset`` section: ``plugins`` if the TileSet recorded providers, else its
    ``settings``). Older TileSets name filters without a distribution: the currently installed
    provider is recorded then, marked ``"recorded_by": "train"``."""
    if not isinstance(tileset, dict):
        return {}
    settings = tileset.get("settings") if isinstance(tileset.get("settings"), dict) else {}
    given = tileset.get("plugins") if isinstance(tileset.get("plugins"), dict) else {}
    out: dict[str, Any] = {}
    filters = given.get("filters") if isinstance(given.get("filters"), list) else settings.get("filters")
    if isinstance(filters, list):
        out["filters"] = [_provider_entry("filter", f) for f in filters if isinstance(f, dict) and f.get("name")]
    source = given.get("sources") or given.get("source") or settings.get("sources") or settings.get("source")
    entries = source if isinstance(source, list) else [source]
    sources = [_provider_entry("source", s if isinstance(s, dict) else {"name": s}) for s in entries
               if (isinstance(s, dict) and s.get("name")) or (isinstance(s, str) and s and s != "auto")]
    if sources:
        out["sources"] = sources
    return out


def _provider_entry(kind: str, entry: dict[str, Any]) -> dict[str, Any]:
    keep = {k: entry[k] for k in ("name", "plugin", "distribution", "version") if entry.get(k)}
    if "distribution" in keep:
        return keep
    try:
        spec = get_manager().get(kind, str(entry["name"]))
    except Exception:  # noqa: BLE001 - not installed any more: record the name only
        return keep | {"recorded_by": "train"}
    return {"name": spec.name, "plugin": spec.plugin, "distribution": spec.distribution, "version": spec.version,
            "recorded_by": "train"}

"""``clotclf list-plugins``, ``show-plugin`` and ``smoke-test``: what is installed, and whether it works.

Registered on the group by :mod:`clotclf_core.cli`; start-up stays light (no torch here).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from clotclf_core.config import did_you_mean
from clotclf_core.plugin.errors import ClotclfError
from clotclf_core.plugin.hookspecs import PLUGIN_API_VERSION
from clotclf_core.plugin.spec import KINDS
from clotclf_core.plugin_manager import DISABLE_ENV, get_manager

# ----------------------------------------------------------------------------- plugins


def _status(spec: Any, conflicts: dict[tuple[str, str], Any]) -> str:
    conflict = conflicts.get((spec.kind, spec.name))
    if conflict is None:
        return "ok"
    if conflict.winner is None:
        return f"conflict: use {spec.plugin}/{spec.name} (see `clotclf show-plugin {spec.name}`)"
    if conflict.winner is spec:
        return "ok (built-in; the plain name means this one)"
    return f"name taken by the built-in: use {spec.plugin}/{spec.name}"


def _plugin_rows(kind: str | None) -> list[dict[str, Any]]:
    mgr = get_manager()
    conflicts = {(c.kind, c.name): c for c in mgr.conflicts()}
    infos = {p.name: p for p in mgr.plugins}
    rows = []
    for spec in mgr.components(kind):
        info = infos.get(spec.plugin)
        rows.append(
            {
                "kind": spec.kind,
                "name": spec.name,
                "plugin": spec.plugin,
                "distribution": spec.distribution,
                "version": spec.version,
                "summary": spec.summary,
                "status": _status(spec, conflicts),
                "api": (info.api if info else None) or "-",
                "import_ms": info.as_row()["import_ms"] if info else None,
                "heavy_imports": list(info.heavy_imports) if info else [],
            }
        )
    for info in mgr.plugins:  # plugins that contributed nothing because they are broken or disabled
        if not info.ok:
            rows.append(
                {
                    "kind": "-",
                    "name": "-",
                    "plugin": info.name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "summary": info.value,
                    "status": info.status,
                    "api": info.api or "-",
                    "import_ms": info.as_row()["import_ms"],
                    "heavy_imports": list(info.heavy_imports),
                }
            )
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _options_rows(spec) -> list[dict[str, Any]]:
    rows = []
    for fname, field in spec.options.model_fields.items():
        ann = field.annotation
        typ = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append({"option": fname, "type": typ, "default": default, "help": field.description or ""})
    return rows


def _startup_warnings(mgr: Any) -> list[str]:
    out = []
    for info in mgr.plugins:
        if info.heavy_imports:
            out.append(
                f"plugin '{info.name}' ({info.distribution}) imports {', '.join(info.heavy_imports)} when it loads "
                f"({info.as_row()['import_ms']:.0f} ms): every clotclf command pays for it at start-up. Import heavy "
                "libraries inside the factory (docs/plugins.md)"
            )
    if mgr.unknown_disabled:
        out.append(f"{DISABLE_ENV} names no installed plugin: {', '.join(mgr.unknown_disabled)}")
    return out


@click.command("list-plugins")
@click.option("--kind", type=click.Choice(list(KINDS)), help="Only this kind of component.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--verbose", "-v", is_flag=True,
              help="Also list each plugin's import time, contract version and heavy imports, each component's options, "
                   "and tracebacks of broken plugins.")
def list_plugins(kind: str | None, as_json: bool, verbose: bool) -> None:
    """List every installed component: kind, name, plugin, distribution, version, status."""
    mgr = get_manager()
    rows = _plugin_rows(kind)
    if verbose:
        for row in rows:
            if row["name"] != "-":
                row["options"] = _options_rows(mgr.get(row["kind"], f"{row['plugin']}/{row['name']}"))
    for warning in _startup_warnings(mgr):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(rows, ["kind", "name", "plugin", "distribution", "version", "status", "summary"]))
    if verbose:
        plugins = [info.as_row() for info in mgr.plugins]
        for row in plugins:
            row["import_ms"] = "-" if row["import_ms"] is None else f"{row['import_ms']:.1f}"
            row["heavy_imports"] = ", ".join(row["heavy_imports"]) or "-"
        click.echo(f"\nplugins (clotclf plugin API {PLUGIN_API_VERSION}; API = the range a plugin declares):")
        click.echo(_table(plugins, ["plugin", "distribution", "version", "api", "import_ms", "heavy_imports", "status"]))
        for row in rows:
            if row.get("options"):
                click.echo(f"\n{row['kind']} {row['name']} options:")
                click.echo(_table(row["options"], ["option", "type", "default", "help"]))
        for info in mgr.plugins:
            if info.detail:
                click.echo(f"\nplugin {info.name} failed:\n{info.detail}", err=True)


@click.command("show-plugin")
@click.argument("name")
@click.option("--kind", type=click.Choice(list(KINDS)), help="Kind, when NAME exists in several kinds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show_plugin(name: str, kind: str | None, as_json: bool) -> None:
    """Show a component's summary and options (types, defaults, help)."""
    mgr = get_manager()
    base = name.split("/")[-1]
    kinds = [kind] if kind else [k for k in KINDS if base in mgr.names(k)]
    if not kinds:
        every = sorted({s.name for s in mgr.components()})
        import difflib

        close = difflib.get_close_matches(base, every, n=5, cutoff=0.0)
        raise ClotclfError(f"no component called '{name}'.{did_you_mean(base, every)} Known components: {', '.join(close)} "
                           "(see `clotclf list-plugins`)")
    out = []
    for k in kinds:
        conflict = [c for c in mgr.conflicts() if c.kind == k and c.name == base and "/" not in name]
        specs = conflict[0].specs if conflict else [mgr.get(k, name)]
        for spec in specs:
            out.append(
                {
                    "kind": spec.kind,
                    "name": spec.name,
                    "plugin": spec.plugin,
                    "distribution": f"{spec.distribution} {spec.version}",
                    "summary": spec.summary,
                    "options": _options_rows(spec),
                    "conflict": conflict[0].message() if conflict else None,
                }
            )
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for item in out:
        click.echo(f"{item['kind']} {item['name']}  (plugin {item['plugin']}, {item['distribution']})")
        click.echo(f"  {item['summary']}")
        if item["conflict"]:
            click.echo(f"  NAME CLASH: {item['conflict']}")
        click.echo(_table(item["options"], ["option", "type", "default", "help"]) if item["options"] else "  (no options)")
        click.echo()


# ----------------------------------------------------------------------------- encoders


def _encoder_rows() -> list[dict[str, Any]]:
    """One row per backbone that says it is a published encoder (``extra["encoder"]``)."""
    from clotclf_core.plugin.encoders import encoder_info

    rows = []
    for spec in get_manager().components("backbone"):
        try:
            info = encoder_info(spec.extra)
        except ValueError as exc:  # a third party's malformed declaration: shown, not fatal
            rows.append({"name": spec.name, "plugin": spec.plugin, "error": f"extra['encoder'] is invalid: {exc}"})
            continue
        if info is None:
            continue
        um = (f"{info.um_per_px_range[0]:g}-{info.um_per_px_range[1]:g}" if info.um_per_px_range
              else f"{info.um_per_px:g}" if info.um_per_px else "-")
        rows.append({"name": spec.name, "plugin": spec.plugin, "loader": info.loader, "repo": info.repo,
                     "dim": info.embedding_dim, "input": info.input_size, "um_per_px": um,
                     "pooling": info.pooling, "licence": info.licence,
                     "gated": {True: "yes", False: "no", None: "?"}[info.gated],
                     "remote_code": "yes" if info.remote_code else "no",
                     "tile": info.tile_command() or "-", "details": info.model_dump(mode="json")})
    return rows


@click.command("list-encoders")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every field, citation and sources included).")
@click.option("--verbose", "-v", is_flag=True, help="Also each encoder's poolings, citation, where its recipe was read, notes.")
def list_encoders(as_json: bool, verbose: bool) -> None:
    """List the published tile encoders installed (the zoo): Hub repo, loader, embedding size, input
    size, the microns per pixel it was trained at, pooling, licence and gating, and the `clotclf tile`
    command whose tiles match its scale. Use one with `clotclf embed --backbone NAME`."""
    rows = _encoder_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    ok = [r for r in rows if "error" not in r]
    click.echo(_table(ok, ["name", "loader", "repo", "dim", "input", "um_per_px", "pooling", "gated", "licence"]))
    click.echo("\ntiles at each encoder's scale:")
    click.echo(_table(ok, ["name", "tile"]))
    for r in rows:
        if "error" in r:
            click.echo(f"warning: backbone '{r['name']}' (plugin {r['plugin']}): {r['error']}", err=True)
    if verbose:
        for r in ok:
            d = r["details"]
            click.echo(f"\n{r['name']}: poolings {', '.join(d['poolings'])}; remote code: {r['remote_code']}; "
                       f"redistribution: {d['redistribution']}\n  citation: {d['citation']}\n  recipe from: {d['source']}"
                       + (f"\n  notes: {d['notes']}" if d["notes"] else ""))


# ----------------------------------------------------------------------------- smoke test


@click.command("smoke-test")
@click.argument("names", nargs=-1, metavar="[PLUGIN|COMPONENT]...")
@click.option("--input-size", default=64, type=click.IntRange(min=8), help="Side of the random input images.")
@click.option("--batch-size", default=2, type=click.IntRange(min=1), help="Images per training step (a batch of one is always tried too).")
@click.option("--seed", default=0, type=int, help="Seed for the random inputs and initial weights.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def smoke_test(names: tuple[str, ...], input_size: int, batch_size: int, seed: int, as_json: bool) -> None:
    """Check components on random input; exits 1 if any check failed.

    With PLUGIN names (entry-point or distribution, e.g. `clotclf smoke-test my_plugin`), every
    component the plugin provides is checked the way its kind needs: backbones and heads are built
    with default options, take a training step and a batch of one, and survive a safetensors
    save / load round trip; filters score generated tiles; sources open a generated TIFF. This is
    the test a plugin author runs in CI (docs/plugins.md). Without names, every installed
    backbone x head takes one training step: a quick check of an installation (the published
    encoders of the zoo, `clotclf list-encoders`, only when named: they download their weights).
    """
    from clotclf_core.smoke import smoke_all, smoke_plugins

    if names:
        rows = smoke_plugins(list(names), input_size=input_size, batch_size=batch_size, seed=seed)
        columns = ["plugin", "kind", "name", "seconds", "status", "checks"]
    else:
        rows = smoke_all(input_size=input_size, batch_size=batch_size)
        columns = ["backbone", "head", "params_m", "loss", "seconds", "status"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(_table(rows, columns))
    if any(str(r["status"]).startswith("error") for r in rows):
        sys.exit(1)


COMMANDS = (list_plugins, show_plugin, list_encoders, smoke_test)

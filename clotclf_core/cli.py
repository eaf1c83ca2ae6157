"""The ``clotclf`` command line. Each command is a thin wrapper over one function elsewhere.

Startup stays light: this module imports click, pydantic and pluggy, never torch, timm or
openslide; commands import those inside their bodies. Plugins may add commands through the
``clotclf_add_commands`` hook (the registry adds ``push``, ``pull``, ``list-models``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import __version__
from .errors import ClotclfError
from .plugins import DISABLE_ENV, get_manager, reset_manager


class ClotclfGroup(click.Group):
    """A click group that adds plugin commands on first use and turns ClotclfError into one line."""

    _plugin_commands_added = False

    def _add_plugin_commands(self) -> None:
        if not self._plugin_commands_added:
            self._plugin_commands_added = True
            get_manager().hook.clotclf_add_commands(cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._add_plugin_commands()
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClotclfError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=ClotclfGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="clotclf")
@click.option(
    "--disable-plugin",
    "disable",
    multiple=True,
    metavar="NAME",
    help=f"Skip a plugin (entry-point or distribution name); repeatable. Same as {DISABLE_ENV}=a,b.",
)
def cli(disable: tuple[str, ...]) -> None:
    """clotclf: classify stroke-clot origin (CE vs LAA) from whole-slide images.

    Slides -> tiles (`clotclf tile`) -> trained, patient-level evaluated models (`clotclf train`)
    -> predictions with heatmaps (`clotclf predict`). Components are plugins: `clotclf list-plugins`.
    """
    if disable:
        reset_manager(disabled=disable)


# ----------------------------------------------------------------------------- plugins


def _plugin_rows(kind: str | None) -> list[dict[str, Any]]:
    mgr = get_manager()
    conflicts = {(c.kind, c.name) for c in mgr.conflicts()}
    rows = []
    for spec in mgr.components(kind):
        status = "conflict: see `clotclf show-plugin`" if (spec.kind, spec.name) in conflicts else "ok"
        rows.append(
            {
                "kind": spec.kind,
                "name": spec.name,
                "plugin": spec.plugin,
                "distribution": spec.distribution,
                "version": spec.version,
                "summary": spec.summary,
                "status": status,
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


@cli.command("list-plugins")
@click.option("--kind", type=click.Choice(["source", "filter", "backbone", "head"]), help="Only this kind of component.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--verbose", "-v", is_flag=True, help="Also list each component's options, and tracebacks of broken plugins.")
def list_plugins(kind: str | None, as_json: bool, verbose: bool) -> None:
    """List every installed component: kind, name, plugin, distribution, version, status."""
    rows = _plugin_rows(kind)
    if verbose:
        mgr = get_manager()
        for row in rows:
            if row["name"] != "-":
                row["options"] = _options_rows(mgr.get(row["kind"], f"{row['plugin']}/{row['name']}"))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(rows, ["kind", "name", "plugin", "distribution", "version", "status", "summary"]))
    if verbose:
        for row in rows:
            if row.get("options"):
                click.echo(f"\n{row['kind']} {row['name']} options:")
                click.echo(_table(row["options"], ["option", "type", "default", "help"]))
        for info in get_manager().plugins:
            if info.detail:
                click.echo(f"\nplugin {info.name} failed:\n{info.detail}", err=True)


@cli.command("show-plugin")
@click.argument("name")
@click.option("--kind", type=click.Choice(["source", "filter", "backbone", "head"]), help="Kind, when NAME exists in several kinds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show_plugin(name: str, kind: str | None, as_json: bool) -> None:
    """Show a component's summary and options (types, defaults, help)."""
    mgr = get_manager()
    base = name.split("/")[-1]
    kinds = [kind] if kind else [k for k in ("source", "filter", "backbone", "head") if base in mgr.names(k)]
    if not kinds:
        every = sorted({s.name for s in mgr.components()})
        import difflib

        close = difflib.get_close_matches(base, every, n=5, cutoff=0.0)
        raise ClotclfError(f"no component called '{name}'. Known components: {', '.join(close)} (see `clotclf list-plugins`)")
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
            click.echo(f"  CONFLICT: {item['conflict']}")
        click.echo(_table(item["options"], ["option", "type", "default", "help"]) if item["options"] else "  (no options)")
        click.echo()


# ----------------------------------------------------------------------------- smoke test


@cli.command("smoke-test")
@click.option("--input-size", default=64, help="Side of the random input images.")
@click.option("--batch-size", default=2, help="Images per step.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def smoke_test(input_size: int, batch_size: int, as_json: bool) -> None:
    """Build every installed backbone x head with default options and run one training step
    (forward, backward, optimiser step) on random input: a quick check of an installation."""
    from .smoke import smoke_all

    rows = smoke_all(input_size=input_size, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(_table(rows, ["backbone", "head", "params_m", "loss", "seconds", "status"]))
    if any(r["status"] != "ok" for r in rows):
        sys.exit(1)


def main() -> None:
    cli(prog_name="clotclf")


if __name__ == "__main__":  # pragma: no cover
    main()

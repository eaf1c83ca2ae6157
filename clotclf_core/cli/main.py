"""The ``clotclf`` command line. Each command is a thin wrapper over one function elsewhere.

Startup stays light: this module imports click, pydantic and pluggy, never torch, timm or
openslide; commands import those inside their bodies. Plugins may add commands through the
``clotclf_add_commands`` hook (the registry adds ``push``, ``pull``, ``list-models``).
"""

from __future__ import annotations

import os
import traceback
from typing import Any

import click

from clotclf_core import __version__
from clotclf_core.config import did_you_mean
from clotclf_core.plugin.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, ClotclfError, os_error_message
from clotclf_core.plugin.hookspecs import PLUGIN_API_VERSION
from clotclf_core.plugin.secrets import protect_output
from clotclf_core.plugin_manager import DISABLE_ENV, get_manager, reset_manager


class ClotclfGroup(click.Group):
    """A click group that adds plugin commands on first use and turns ClotclfError into one line."""

    _plugin_commands_added = False

    def _add_plugin_commands(self, ctx: click.Context) -> None:
        if not self._plugin_commands_added:
            self._plugin_commands_added = True
            get_manager().add_commands(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._add_plugin_commands(ctx)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        debug = os.environ.get("CLOTCLF_DEBUG", "") not in ("", "0")
        protect_output()  # no token on the terminal, whatever a server echoes (a traceback's text included)
        try:
            return super().invoke(ctx)
        except ClotclfError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            # commands that can resume catch this themselves and say what was kept (Interrupted)
            click.echo("Error: interrupted (Ctrl-C). Every result is written atomically, so nothing was left half-written", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            message = os_error_message(exc)
            if message is None or debug:
                raise
            click.echo(f"Error: {message}", err=True)
            ctx.exit(EXIT_USER_ERROR)


def _apply_disabled(ctx: click.Context, param: click.Parameter, names: tuple[str, ...]) -> tuple[str, ...]:
    if names:
        mgr = reset_manager(disabled=names)
        unknown = [n for n in names if n in mgr.unknown_disabled]
        if unknown:
            names = {p.name for p in mgr.plugins}
            known = ", ".join(sorted(names))
            hints = "".join(did_you_mean(n, names) for n in unknown)
            raise click.BadParameter(
                f"no installed plugin is called {', '.join(repr(n) for n in unknown)}.{hints} Give an entry-point or "
                f"distribution name from `clotclf list-plugins --verbose` (installed plugins: {known})",
                ctx=ctx, param=param,
            )
    return names


@click.group(cls=ClotclfGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="clotclf", message=f"%(prog)s %(version)s (plugin API {PLUGIN_API_VERSION})")
@click.option(
    "--disable-plugin",
    "disable",
    multiple=True,
    metavar="NAME",
    help=f"Skip a plugin (entry-point or distribution name); repeatable. Same as {DISABLE_ENV}=a,b.",
    is_eager=True,  # applied while parsing, before plugins add their commands (and before --help)
    callback=_apply_disabled,
)
def cli(disable: tuple[str, ...]) -> None:
    """clotclf: classify stroke-clot origin (CE vs LAA) from whole-slide images.

    Slides -> tiles (`clotclf tile`) -> trained, patient-level evaluated models (`clotclf train`)
    -> predictions with heatmaps (`clotclf predict`). Components are plugins: `clotclf list-plugins`.
    """


def _register() -> None:
    """The built-in commands, one module per concern (plugins add theirs through the hook)."""
    from clotclf_core.cli import data as cli_data
    from clotclf_core.cli import models as cli_models
    from clotclf_core.cli import plugins as cli_plugins

    for module in (cli_plugins, cli_data, cli_models):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="clotclf")


if __name__ == "__main__":  # pragma: no cover
    main()

"""``clotclf train``'s command-line options, generated from :class:`TrainSettings` so an option and
its YAML field can never drift apart. Light: click and pydantic only."""

from __future__ import annotations

from typing import Any

import click

from clotclf_core.config import given_settings, parse_key_values, settings_options
from clotclf_core.plugin.errors import ConfigError
from clotclf_core.training.settings import MIL_DEFAULTS, TrainSettings

#: fields given on the command line in another shape than ``--field-name VALUE``
_CLI_SPECIAL = {"backbone_options", "head_options", "aggregator_options", "augment", "labels", "fold", "channels_last"}


def cli_options(command):
    """Decorate the ``train`` click command with one option per :class:`TrainSettings` field
    (:func:`clotclf_core.config.settings_options`), the ones in another shape written here.

    Every option defaults to None (= "not given"), so the YAML value or the model default applies;
    the help text shows that default.
    """
    def add(*args, **kwargs):
        nonlocal command
        command = click.option(*args, **kwargs)(command)

    # added in reverse: click lists the last-added option first
    add("--channels-last", type=click.Choice(["auto", "true", "false"]), default=None, show_default=False,
        help="channels-last memory format [default: auto = on CUDA]")
    add("--fold", default=None, metavar="K|all", show_default=False,
        help="which fold validates (0..folds-1), or 'all' for full cross-validation [default: 0]")
    add("--labels", default=None, metavar="A,B", show_default=False,
        help="class names in output order [default: CE,LAA, else the TileSet's labels sorted]")
    add("--augment/--no-augment", default=None, show_default=False,
        help="augment training tiles (the ranges are YAML fields under `augment:`) [default: on]")
    add("--aggregator-opt", "aggregator_opt", multiple=True, metavar="K=V",
        help="aggregator option, repeatable (`clotclf show-plugin abmil`)")
    add("--head-opt", "head_opt", multiple=True, metavar="K=V", help="head option, repeatable (`clotclf show-plugin mlp`)")
    add("--backbone-opt", "backbone_opt", multiple=True, metavar="K=V",
        help="backbone option, repeatable (`clotclf show-plugin cct`)")
    mil = {name: f"with --aggregator: {value}" for name, value in MIL_DEFAULTS.items()}  # a MIL run's own defaults
    return settings_options(TrainSettings, skip=_CLI_SPECIAL, other_defaults=mil)(command)


def overrides_from_cli(params: dict[str, Any]) -> dict[str, Any]:
    """The click parameters of :func:`cli_options` -> a partial settings dict (given values only)."""
    out = given_settings(params, TrainSettings, skip=_CLI_SPECIAL)
    if params.get("backbone_opt"):
        out["backbone_options"] = parse_key_values(params["backbone_opt"], "--backbone-opt")
    if params.get("head_opt"):
        out["head_options"] = parse_key_values(params["head_opt"], "--head-opt")
    if params.get("aggregator_opt"):
        out["aggregator_options"] = parse_key_values(params["aggregator_opt"], "--aggregator-opt")
    if params.get("labels"):
        out["labels"] = [p.strip() for p in params["labels"].split(",") if p.strip()]
    if params.get("fold") is not None:
        text = str(params["fold"]).strip()
        if text != "all" and not text.lstrip("-").isdigit():
            raise ConfigError(f"--fold '{text}' must be a fold number (0, 1, ...) or 'all'")
        out["fold"] = text if text == "all" else int(text)
    if params.get("channels_last") is not None:
        out["channels_last"] = {"auto": "auto", "true": True, "false": False}[params["channels_last"]]
    if params.get("augment") is not None:
        out["augment"] = {"enabled": params["augment"]}
    return out

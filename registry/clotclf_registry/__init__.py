"""clotclf's model registry: ``clotclf push`` / ``pull`` / ``list-models`` against the Hugging Face
Hub (or any Hub-compatible server) and local-directory registries.

The registry is a plugin of the core like any other: it adds its commands through the
``clotclf_add_commands`` hook and turns model names (``--model mayo-poolformer``) into pulled,
verified run directories through ``clotclf_resolve_model``. The core never imports it.

Modules: :mod:`.settings` (where, from option / env / file), :mod:`.layout` (what a model repo
holds), :mod:`.verify` (checks before push, after pull), :mod:`.redact` (what a push publishes),
:mod:`.card` (model-card metadata), :mod:`.backend` (the backend interface), :mod:`.hub` and
:mod:`.local` (the two backends), :mod:`.factory` (which backend serves a registry URL),
:mod:`.api` (the operations), :mod:`.commands` (the CLI), :mod:`.errors`. Model names
(``[ORG/]NAME[@REVISION]``) and Hub errors are the plugin API's (:mod:`clotclf_core.plugin.hub`),
shared with the timm plugin. Importing this module imports neither torch nor huggingface_hub.

The registry imports the plugin API (``clotclf_core.plugin``) and a short list of core modules it
needs to check a run before a push and after a pull (docs/registry.md, "What the registry imports";
tests/test_public_api.py keeps it to that list).
"""

from __future__ import annotations

from typing import Any

from clotclf_core.plugin import hookimpl


@hookimpl
def clotclf_add_commands(cli: Any) -> None:
    from .commands import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


@hookimpl
def clotclf_resolve_model(name: str) -> Any:
    from .api import resolve

    return resolve(name)

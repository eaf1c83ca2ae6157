"""The whole clotclf plugin contract, on one page.

A plugin is a module named by an entry point in the ``clotclf.plugins`` group::

    [project.entry-points."clotclf.plugins"]
    my_resnet = "my_package.plugin"

The module defines any of the hooks below, each decorated with :data:`hookimpl`::

    from clotclf_core.plugin.hookspecs import hookimpl

    @hookimpl
    def clotclf_backbones():
        return [ComponentSpec(kind="backbone", name="resnet", ...)]

Every hook is optional. The core calls each plugin's hook on its own, so one plugin that raises
is reported (``clotclf list-plugins`` shows ``error: <reason>``) and never breaks the others.

Contract version: :data:`PLUGIN_API_VERSION` (``MAJOR.MINOR``; a minor release only adds hooks,
kinds or optional fields, a major one may break plugins). A plugin module may declare the range it
was written for, as a PEP 440 specifier::

    CLOTCLF_PLUGIN_API = ">=2.0,<3"

A plugin whose range excludes this clotclf's version is not loaded and ``list-plugins`` says why.

Checked when a plugin loads (``list-plugins`` reports a failure as ``error: <reason>``): every
function of the module named ``clotclf_*`` must be one of the hooks below (a misspelt
``clotclf_backbone`` is an error, as are ``@hookimpl`` functions pluggy does not know —
``PluginManager.check_pending``); every spec a hook returns must follow the rules in
:class:`clotclf_core.plugin.spec.ComponentSpec`. Importing the module is timed, and a module that
imports torch, timm, openslide, albumentations or dask at import time is flagged (every command
would pay for it at start-up).
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "clotclf"
ENTRY_POINT_GROUP = "clotclf.plugins"
#: the version of this contract (hooks, kinds, ComponentSpec, the built objects' protocols, the
#: names of clotclf_core.plugin). 1.1: the aggregator kind, backbones may declare pretrained_cfg.
#: 2.0: one public package, clotclf_core.plugin (the 1.x paths clotclf_core.hookspecs, .interfaces,
#: .errors, .io, .aggregate... are gone), RunDirectory options, hub / device / run-directory helpers.
#: 2.1: backbones may name their features (``feature_names``); aggregators may add a term to the training
#: loss (``auxiliary_loss``: CLAM's instance clustering, DSMIL's critical-instance loss).
#: 2.2: extra["encoder"] and clotclf_core.plugin.encoders (published tile encoders), hub fetching helpers.
PLUGIN_API_VERSION = "2.2"
#: the module attribute a plugin declares its supported contract versions in (a PEP 440 specifier)
API_ATTRIBUTE = "CLOTCLF_PLUGIN_API"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def clotclf_patch_sources() -> list[Any]:
    """Return ComponentSpecs of kind ``source``: readers that open slide files.

    Called once when the plugin manager is first used. Must not import openslide or other heavy
    libraries at module level or in this hook; do it in the spec's factory.
    """


@hookspec
def clotclf_patch_filters() -> list[Any]:
    """Return ComponentSpecs of kind ``filter``: scorers deciding which candidate tiles to keep.

    The built filter's ``score`` gets batches of uint8 (N, S, S, 3) RGB tiles at the cache
    resolution (``train_size``); see :class:`clotclf_core.plugin.protocols.PatchFilter`.
    """


@hookspec
def clotclf_backbones() -> list[Any]:
    """Return ComponentSpecs of kind ``backbone``: feature extractors (B,3,H,W) -> (B,F).

    The built module sets ``num_features`` (F) and may declare its input normalisation and size
    as a timm-style ``pretrained_cfg`` (``mean``, ``std``, ``input_size``); clotclf then
    normalises with those values (ImageNet's otherwise) and records them in the run's
    config.json. See :class:`clotclf_core.plugin.protocols.Backbone`.
    """


@hookspec
def clotclf_heads() -> list[Any]:
    """Return ComponentSpecs of kind ``head``: classifiers (B,F) -> (B,num_classes)."""


@hookspec
def clotclf_aggregators() -> list[Any]:
    """Return ComponentSpecs of kind ``aggregator``: multiple-instance pooling of a bag of tile
    features, ``(B, N, F)`` float + ``(B, N)`` bool mask -> ``(B, num_classes)`` logits and, where
    the aggregator has them, ``(B, N)`` attention weights.

    The factory is ``factory(opts, in_features, num_classes) -> torch.nn.Module`` (``in_features``
    is the encoder's ``num_features``); see :class:`clotclf_core.plugin.protocols.Aggregator` for the
    tensor contract. Called once when the plugin manager is first used; import torch only in
    the factory.
    """


@hookspec
def clotclf_add_commands(cli: Any) -> None:
    """Add click commands to the ``clotclf`` group ``cli`` (e.g. the registry's push / pull).

    Called while the CLI is being built, before arguments are parsed.
    """


@hookspec(firstresult=True)
def clotclf_resolve_model(name: str) -> Any:
    """Turn a model reference that is not an existing folder (``mayo-poolformer``,
    ``org/name@v1``) into a local run directory (a ``pathlib.Path``), downloading it if needed.

    Return ``None`` if this plugin does not recognise ``name``; the first non-None answer wins.
    Raise :class:`clotclf_core.plugin.errors.ClotclfError` when it recognises the name but cannot
    fetch it (no network, missing revision...).
    """

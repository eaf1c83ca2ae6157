"""The public plugin API: the one package a plugin (and the registry) imports from clotclf.

A plugin author reads ``docs/plugins.md`` (every public name here, by module) and this package,
never the rest of the core; ``tests/test_public_api.py`` fails on a built-in plugin, an example or
the registry importing anything else (the registry's short allow-list: docs/registry.md)::

    from clotclf_core.plugin import ComponentSpec, Options, hookimpl

Importing this package imports pluggy and pydantic only (no numpy, torch, timm or openslide), so a
plugin's spec module stays light. Its modules, one concern each:

=================  ================================================================================
``hookspecs``      the hooks a plugin implements, :data:`hookimpl`, :data:`PLUGIN_API_VERSION`
``spec``           :class:`ComponentSpec`, :class:`Options` / :class:`NoOptions`, the kinds, the name rule,
                   option validation, ``RunDirectory`` options (registry names resolved by the core)
``protocols``      what each kind's built object must provide (every member the core reads; optional
                   ones with their default), the default ImageNet normalisation
``errors``         the errors a plugin raises (one clear line each), including the slide errors that steer
                   the automatic source choice; OS / disk errors in words; :func:`printable`
``io``             atomic writes (temporary file + rename), a folder of results written whole, CSV cells
                   neutralised for spreadsheets (:func:`write_csv`: every CSV clotclf writes)
``weights``        safetensors save / hash / check / load, run directories (``save_run`` and the checks
                   before one is trusted), for a plugin's own runs as for the core's (never a pickle)
``hub``            Hugging Face Hub references (``ORG/NAME@REV``) and what may be a path instead, Hub errors
                   in one line (the registry's and the timm plugin's), credentials kept out of quoted text,
                   fetching a published model's files
``encoders``       what a published tile encoder says about itself (``EncoderInfo`` in ``extra["encoder"]``:
                   repo, sizes, normalisation, microns per pixel, licence), token pooling
``secrets``        credentials out of every output (known tokens scrubbed from every line printed)
``transfer``       every Hub call under a timeout, a minimum transfer rate and a deadline: never a hang
``lock``           one writer per output folder (``output_lock``)
``device``         ``auto`` | ``cpu`` | ``cuda[:N]`` resolved once (the core's ``--device`` and a plugin's)
``regions``        helpers a slide source needs: ``read_region`` from decoded blocks, request checks, mpp
                   sanity, level layouts, a :class:`~clotclf_core.plugin.regions.RegionSlide` base
                   (imports numpy: import it from the factory's module, not the spec's)
``masked``         masked softmax / mean over padded bags, for aggregators (imports torch: same rule)
=================  ================================================================================

The names below are the light part, importable from ``clotclf_core.plugin`` itself; ``regions``
and ``masked`` are imported by their module name.
"""

from clotclf_core.plugin.errors import (
    ClotclfError,
    ConfigError,
    ModelLoadError,
    PluginError,
    SlideDamaged,
    SlideReadError,
    SlideUnusable,
    printable,
)
from clotclf_core.plugin.hookspecs import API_ATTRIBUTE, ENTRY_POINT_GROUP, PLUGIN_API_VERSION, hookimpl
from clotclf_core.plugin.io import (
    atomic_path,
    csv_rows_text,
    csv_safe,
    csv_text,
    csv_unescape,
    csv_unescape_frame,
    write_bytes,
    write_csv,
    write_json,
    write_text,
)
from clotclf_core.plugin.protocols import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Aggregator,
    Backbone,
    Head,
    PatchFilter,
    PatchSource,
    Slide,
)
from clotclf_core.plugin.spec import KINDS, ComponentSpec, NoOptions, Options
from clotclf_core.plugin.weights import (
    CONFIG_NAME,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    check_safetensors,
    load_state,
    load_state_into,
    save_weights,
    sha256_file,
)

__all__ = [
    "API_ATTRIBUTE", "ENTRY_POINT_GROUP", "PLUGIN_API_VERSION", "hookimpl",
    "KINDS", "ComponentSpec", "NoOptions", "Options",
    "IMAGENET_MEAN", "IMAGENET_STD", "Aggregator", "Backbone", "Head", "PatchFilter", "PatchSource", "Slide",
    "ClotclfError", "ConfigError", "ModelLoadError", "PluginError", "SlideDamaged", "SlideReadError", "SlideUnusable",
    "printable",
    "atomic_path", "write_bytes", "write_json", "write_text",
    "write_csv", "csv_text", "csv_rows_text", "csv_safe", "csv_unescape", "csv_unescape_frame",
    "CONFIG_NAME", "PICKLE_SUFFIXES", "WEIGHTS_NAME", "check_safetensors", "load_state", "load_state_into",
    "save_weights", "sha256_file",
]

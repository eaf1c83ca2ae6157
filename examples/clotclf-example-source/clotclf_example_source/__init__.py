"""Example third-party slide source: ``pil``, PNG and JPEG pictures read as one-level slides.

This module is what the entry point names. It stays light (no numpy or Pillow import): clotclf
imports it at startup to list plugins. The source is built in :func:`build`; the slide itself is
in :mod:`clotclf_example_source._slide`, written from ``clotclf_core.plugin`` alone.
"""

from __future__ import annotations

from pydantic import Field

from clotclf_core.plugin import ComponentSpec, Options, hookimpl

#: the clotclf plugin-API versions this plugin was written for (checked when clotclf loads it)
CLOTCLF_PLUGIN_API = ">=2.0,<3"

#: the files this source reads: `clotclf tile FOLDER` picks them up, `find_slide` finds <image_id><ext>
EXTENSIONS = (".png", ".jpg", ".jpeg")


class PilOptions(Options):
    mpp: float | None = Field(
        None, gt=0, description="microns per pixel of the pictures (PNG / JPEG rarely record it; default: the file's dpi if plausible)"
    )


def build(opts: PilOptions):
    from ._slide import PilSource

    return PilSource(mpp=opts.mpp)


@hookimpl
def clotclf_patch_sources():
    return [
        ComponentSpec(
            "source", "pil", "PNG and JPEG pictures as one-level slides, read with Pillow (example third-party plugin)",
            PilOptions, build, extra={"extensions": EXTENSIONS},
        )
    ]

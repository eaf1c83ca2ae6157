"""The ``openslide`` slide source: every format OpenSlide reads (Aperio SVS, tiled TIFF, Hamamatsu
NDPI/VMS, MIRAX MRXS, Leica SCN, Ventana BIF, Philips TIFF, Sakura, DICOM, Zeiss CZI...).

Reads at the pyramid level closest to (and not coarser than) the requested downsample, using
OpenSlide's ``get_best_level_for_downsample``, and area-averages the rest. OpenSlide refuses
stripped TIFFs, and on a single-level slide it must decode the whole level for a thumbnail: the
``tifffile`` source is preferred for those when both are installed.

Importing this module does not import openslide; :func:`build` does.
"""

from __future__ import annotations

from pydantic import Field

from clotclf_core.plugin import ComponentSpec, Options, hookimpl

#: File extensions OpenSlide reads (``find_slide`` looks for ``<image_id><ext>``).
EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm", ".czi")


class OpenSlideOptions(Options):
    cache_mb: int | None = Field(
        None, ge=0, description="size of OpenSlide's tile cache per slide in MiB (None: OpenSlide's default, 32)"
    )


def build(opts: OpenSlideOptions):
    from ._slide import OpenSlideSource

    return OpenSlideSource(cache_mb=opts.cache_mb)


@hookimpl
def clotclf_patch_sources():
    return [
        ComponentSpec(
            "source",
            "openslide",
            "OpenSlide: pyramidal vendor formats (SVS, NDPI, MRXS, SCN, BIF, tiled TIFF...)",
            OpenSlideOptions,
            build,
            extra={"extensions": EXTENSIONS},
        )
    ]

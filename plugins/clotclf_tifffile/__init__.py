"""The ``tifffile`` slide source: TIFFs read tile by tile (or strip by strip) with tifffile.

Made for huge single-level TIFFs such as the Mayo Clinic STRIP AI slides (deflate, up to
118k x 100k pixels, no pyramid): a thumbnail or a region decodes only the tiles or strips it
touches, one at a time, so memory stays bounded whatever the slide's size. Pyramidal TIFFs
(SubIFDs or consecutive reduced pages), Aperio SVS, and stripped TIFFs (which OpenSlide
refuses) work too. Slides opened with it also offer ``tile_byte_counts()``: the compressed size
of each tile, a decode-free first guess at where tissue is.

Importing this module imports neither tifffile nor numpy; :func:`build` does.
"""

from __future__ import annotations

from clotclf_core.plugin import ComponentSpec, NoOptions, hookimpl

#: File extensions this source reads (``find_slide`` looks for ``<image_id><ext>``).
EXTENSIONS = (".tif", ".tiff", ".svs", ".btf", ".tf2", ".tf8")


def build(opts: NoOptions):
    from ._source import TifffileSource

    return TifffileSource()


@hookimpl
def clotclf_patch_sources():
    return [
        ComponentSpec(
            "source",
            "tifffile",
            "TIFF / BigTIFF / SVS read tile- or strip-wise with bounded memory (best for single-level slides)",
            NoOptions,
            build,
            extra={"extensions": EXTENSIONS},
        )
    ]

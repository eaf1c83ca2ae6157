"""Slides -> TileSet: read each slide once, tissue mask relative to its glass, a grid covering it,
batched filters, tiles streamed into the pixel cache, QC pictures; on local processes or Dask.

Modules, one concern each:

- :mod:`.settings` — :class:`TileSettings` (the geometry and its defaults) and the errors;
- :mod:`.filters` — filter plugins built once and run in order on batches;
- :mod:`.reading` — decode every stored segment at most once into a working-resolution raster;
- :mod:`.levels` — which levels tiling reads (working level, mask level or stored thumbnail), and whether a pyramid's levels can be trusted;
- :mod:`.sparse` — reading a pyramid only where tissue is (mask from a low level, then the segments under the tiles);
- :mod:`.fill` — the tiles of a coordinates-only TileSet read from its slides; one reader of a slide's tiles (cache or slide);
- :mod:`.raster` — that raster, in memory or in a temporary file;
- :mod:`.grid` — working resolution, padded / centred grid, candidates, ``max_tiles`` ranking;
- :mod:`.pipeline` — one slide: scan, grid, cut, filter, stream into a sink;
- :mod:`.views` — coordinates-only tiling's windows, cut from the low-resolution view;
- :mod:`.qc` — the QC picture;
- :mod:`.execution` — one slide in a worker, and the engines (in-process, local pool, Dask);
- :mod:`.summary` — the run summary and its table;
- :mod:`.run` — :func:`tile_slides` (a cohort, resumable) and :func:`tile_slide` (one slide);
- :mod:`.tileset` — the TileSet reader (and the .npy check the feature store shares);
- :mod:`.writer` — the TileSet writer (pixel files streamed, index shards, tileset.json);
- :mod:`.patchset` — ``clotclf export-patches``: a tissue / background patch set;
- :mod:`.dataset` — a torch Dataset over a TileSet;
- :mod:`.stain` — per-slide stain normalisation (Macenko, Reinhard) and HED jitter, applied by datasets and ``embed``.

See docs/data-formats.md (TileSet, geometry) and docs/performance.md (tiling).
"""

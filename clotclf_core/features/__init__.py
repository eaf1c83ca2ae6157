"""Tiles -> features -> bags: the frozen encoder, the feature store, and bags for multiple-instance learning.

- :mod:`.encoder` — a frozen encoder (any backbone plugin, or a ``clotclf pretrain`` run): build, weights sha256, tiles -> features;
- :mod:`.store` — the feature store's format, reader and identity checks (encoder, TileSet);
- :mod:`.writer` — its one writer: checks, the plan of what is left, a slide committed at a time;
- :mod:`.embed` — ``clotclf embed``: a TileSet into a feature store, resumable; ``embed_bags`` for evaluate / predict;
- :mod:`.parallel` — embedding one slide per task: a worker process per device, or Dask;
- :mod:`.imported` — ``clotclf import-features``: TRIDENT / CLAM ``.h5`` patch features -> a feature store;
- :mod:`.bags` — bags of tiles or features, one per slide, padded and masked;
- :mod:`.synthetic` — a synthetic feature store with a planted signal (benchmarks, tests).

Uses tiling (TileSets) and models (backbones, input normalisation); scoring and training use it.
"""

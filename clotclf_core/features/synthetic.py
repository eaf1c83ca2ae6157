"""A **synthetic** feature store with a planted signal: MIL training measured in seconds, without
slides, tiles or an encoder (``benchmarks/mil_defaults.py``, ``benchmarks/mil_demo.py``, tests).

    write_planted_store("planted/", patients=200, seed=0)                    # the class in 2-6 tiles
    write_planted_store("planted-small/", patients=200, seed=0, scale=0.01)  # the same, features x 0.01

Every tile's feature vector is standard normal noise (``num_features`` of them) plus its centre's
offset (each of ``centres`` centres draws one, N(0, ``centre_offset``²) per feature, dealt to
patients independently of their label: a nuisance, like a centre's stain) plus its slide's offset
(N(0, ``slide_offset``²) per feature). The class is planted along one random unit direction ``u``:

- ``signal="sparse"``: in 2-6 (``signal_tiles``) of an LAA slide's 40-90 (``tiles``) tiles, which
  move by ``shift`` (4) standard deviations along ``u``; CE slides and every other tile carry
  none. A slide's *mean* feature moves by about 0.25 noise standard deviations along ``u``: attention
  can find the few tiles, averaging dilutes them;
- ``signal="dense"``: every tile of an LAA slide moves by ``shift`` (``benchmarks/`` use 0.6) along ``u``.

Then everything is multiplied by ``scale`` (0.01 imitates the feature scale of a random-init
encoder). The tile rows record which tiles carry the signal (column ``planted``), so attention can
be checked against the truth. The store is an ordinary feature store (``clotclf train --features``,
``clotclf evaluate --features``); its encoder is recorded as ``synthetic-planted``, which cannot be
rebuilt, so ``clotclf predict`` (which embeds new slides) does not apply. 35 % of the patients are
LAA, a fifth of them have two slides, and the manifest is marked synthetic: nothing learnt from
these numbers says anything about real clots.

Here rather than in :mod:`clotclf_core.demo` (the synthetic slide cohorts) because it writes the
feature store format through :class:`clotclf_core.features.writer.FeatureStoreWriter` (imports torch).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from clotclf_core.features.store import tileset_fingerprint
from clotclf_core.features.writer import FeatureStoreWriter
from clotclf_core.plugin.errors import ClotclfError

#: what the store records as its encoder (not a plugin: these features were never embedded)
ENCODER_NAME = "synthetic-planted"


def planted_recipe(**options: Any) -> dict[str, Any]:
    """The generator's settings with their defaults (what ``features.json`` records)."""
    recipe = {"patients": 200, "seed": 0, "num_features": 64, "tiles": (40, 90), "signal": "sparse",
              "signal_tiles": (2, 6), "shift": 4.0, "scale": 1.0, "laa_share": 0.35, "two_slide_share": 0.2,
              "centres": 4, "centre_offset": 0.5, "slide_offset": 0.3}
    unknown = sorted(set(options) - set(recipe))
    if unknown:
        raise ClotclfError(f"unknown planted-store option(s) {unknown}; known: {', '.join(recipe)}")
    recipe |= options
    recipe["tiles"], recipe["signal_tiles"] = tuple(recipe["tiles"]), tuple(recipe["signal_tiles"])
    if recipe["signal"] not in ("sparse", "dense"):
        raise ClotclfError(f"signal must be 'sparse' or 'dense', got {recipe['signal']!r}")
    if recipe["patients"] < 4 or not 0 < recipe["laa_share"] < 1:
        raise ClotclfError("a planted store needs at least 4 patients and an LAA share between 0 and 1")
    if not 1 <= recipe["signal_tiles"][0] <= recipe["signal_tiles"][1] <= recipe["tiles"][0]:
        raise ClotclfError(f"signal_tiles {recipe['signal_tiles']} must lie within 1..the fewest tiles {recipe['tiles'][0]}")
    return recipe


def write_planted_store(out: str | Path, signal: Literal["sparse", "dense"] = "sparse", **options: Any) -> Path:
    """Write the planted store described in the module docstring into the new folder ``out``."""
    r = planted_recipe(signal=signal, **options)
    rng = np.random.default_rng([int(r["seed"]), 2024])
    n_features = int(r["num_features"])
    direction = rng.normal(size=n_features)
    direction /= np.linalg.norm(direction)
    centre_offsets = rng.normal(scale=r["centre_offset"], size=(int(r["centres"]), n_features))
    n = int(r["patients"])
    n_laa = max(2, round(r["laa_share"] * n))
    labels = np.array(["CE"] * (n - n_laa) + ["LAA"] * n_laa)[rng.permutation(n)]
    centres = rng.integers(int(r["centres"]), size=n)
    settings = {"synthetic_planted": {k: list(v) if isinstance(v, tuple) else v for k, v in r.items()}}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    encoder = {"backbone": ENCODER_NAME, "options": settings["synthetic_planted"], "weights_sha256": digest,
               "num_features": n_features, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "input_size": 224}
    tileset = {"fingerprint": tileset_fingerprint(settings, 224), "tile_pixels": 224, "settings": settings,
               "path": None, "synthetic": True, "format_version": None}
    writer = FeatureStoreWriter(out, encoder, tileset, n_features)
    for p in range(n):
        patient = f"P{p:04d}"
        for s in range(2 if rng.random() < r["two_slide_share"] else 1):
            k = int(rng.integers(r["tiles"][0], r["tiles"][1] + 1))
            x = rng.normal(size=(k, n_features)) + centre_offsets[centres[p]] + rng.normal(scale=r["slide_offset"],
                                                                                           size=n_features)
            planted = np.zeros(k, dtype=bool)
            if labels[p] == "LAA":
                if r["signal"] == "sparse":
                    planted[rng.choice(k, size=int(rng.integers(r["signal_tiles"][0], r["signal_tiles"][1] + 1)),
                                       replace=False)] = True
                else:
                    planted[:] = True
                x[planted] += r["shift"] * direction
            rows = pd.DataFrame({"image_id": f"{patient}_{s}", "patient_id": patient, "center_id": str(centres[p] + 1),
                                 "label": labels[p], "row": np.arange(k), "x": 224 * np.arange(k), "y": 0, "size": 224,
                                 "downsample": 1.0, "planted": planted.astype(int)})
            with writer.slide(f"{patient}_{s}", rows) as matrix:
                matrix[:] = (x * r["scale"]).astype(np.float16)
    return Path(out)

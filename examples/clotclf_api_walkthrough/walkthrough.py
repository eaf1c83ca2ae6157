"""clotclf from Python, cell by cell (run it as a script, or cell by cell in an editor that knows
``# %%``): a tiny SYNTHETIC cohort tiled, a model trained with a patient-level split and a held-out
test set, evaluated, used for a Kaggle-style submission, and pushed to / pulled from a registry
that is a local folder. Every step is one ``clotclf`` function; see docs/api.md.

    python examples/clotclf_api_walkthrough/walkthrough.py WORKDIR [SLIDES MANIFEST]

Without SLIDES and MANIFEST it makes a synthetic cohort first (``clotclf.demo_data``).

The numbers it prints are on SYNTHETIC slides with a tiny model trained for one epoch: they show
that the steps connect, not how well anything classifies clots.
"""

# %% setup
import sys
from pathlib import Path

import clotclf

work = Path(sys.argv[1] if len(sys.argv) > 1 else "clotclf-walkthrough").resolve()
work.mkdir(parents=True, exist_ok=True)

# %% the slides: yours (a folder and a Kaggle-style train.csv), or a synthetic cohort
if len(sys.argv) > 3:
    slides, manifest = Path(sys.argv[2]), Path(sys.argv[3])
else:
    manifest = clotclf.demo_data(work / "cohort", patients=10, overwrite=True)
    slides = manifest.parent / "slides"

# %% tile: a TileSet (the same settings as `clotclf tile --downsample 8 --tile-size 64 --train-size 32`)
tiles = clotclf.tile(slides, work / "tiles", manifest=manifest, downsample=8, tile_size=64,
                     train_size=32)
print(f"{len(tiles)} tiles of {tiles.index['image_id'].nunique()} slides")

# %% train: the TrainSettings fields as keywords, as `clotclf train` takes them
run = clotclf.train(tiles=str(tiles.root), out=str(work / "runs" / "cct"), backbone="cct",
                    backbone_options={"variant": "cct_2_3x2_32", "num_layers": 1, "embed_dim": 32, "num_heads": 2},
                    epochs=1, folds=2, batch_size=16, workers=0, device="cpu", test_fraction=0.25)
print("held-out:", run.headline["what"], "- weighted log loss", round(run.headline["weighted_log_loss"], 3),
      "(SYNTHETIC data)" if run.headline.get("synthetic") else "")

# %% evaluate: every patient of the TileSet, each group reported on its own
report = clotclf.evaluate(run, tiles=tiles, patients="all", out=work / "eval")
print("evaluated", report.report["patients_scored"], "patients into", report.out)

# %% predict: slides -> predictions.csv (returned as a frame) and submission.csv
frame = clotclf.predict(slides, [run], work / "predictions", manifest=manifest, heatmaps=False)
print(frame[frame["level"] == "patient"][["patient_id", "p_CE", "p_LAA"]].to_string(index=False))
print((work / "predictions" / "submission.csv").read_text().splitlines()[0])

# %% push to a registry that is a local folder, and pull it back
(work / "registry").mkdir(exist_ok=True)
registry = (work / "registry").as_uri()
pushed = clotclf.push(run, "lab/walkthrough-cct", registry=registry, cache_dir=str(work / "cache"))
pulled = clotclf.pull("lab/walkthrough-cct", registry=registry, cache_dir=str(work / "cache"))
print("pushed", pushed.repo_id, "commit", pushed.commit[:12], "-> pulled into", pulled.path)

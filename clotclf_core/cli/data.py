"""The data commands: ``clotclf tile``, ``export-patches``, ``embed``, ``import-features`` and ``demo-data``.

Registered on the group by :mod:`clotclf_core.cli`; each is a thin wrapper over one function
elsewhere, imported inside its body so that start-up stays light.
"""

from __future__ import annotations

import json

import click

from clotclf_core.config import settings_options
from clotclf_core.tiling.settings import TileSettings

# ----------------------------------------------------------------------------- tile


@click.command("tile")
@click.argument("slides", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="TileSet folder to write (resumed if it exists)")
@click.option("--manifest", type=click.Path(dir_okay=False), help="CSV with image_id[, patient_id, center_id, label]; default: every slide file, id = file stem")
@click.option("--source", metavar="NAME[:k=v,...]", help="slide source plugin (default: the best one for each file)")
@click.option("--filter", "filters", multiple=True, default=("otsu",), show_default=True, metavar="NAME[:k=v,...]", help="patch filter, repeatable, run in order (e.g. mobilenetv3:weights=RUN,threshold=0.5)")
@settings_options(TileSettings)
@click.option("--workers", type=int, default=1, show_default=True, help="slides tiled in parallel (local processes, or Dask workers with --dask local)")
@click.option("--threads", type=int, default=None, help="decoding threads per worker [default: CPU cores / workers, at most 8]")
@click.option("--dask", "dask_address", metavar="ADDRESS", default=None, help="run on a Dask cluster: a scheduler address (tcp://host:8786) or 'local'. --out must be on a file system every worker sees")
@click.option("--scratch-dir", type=click.Path(file_okay=False), default=None, help="folder for large working rasters of huge slides [default: TMPDIR]")
@click.option("--trust-declared-size", is_flag=True, help="read TIFFs whose header declares a tile/strip over 512 MiB decoded, or over 500x its bytes (refused by default: a few bytes could take the machine's memory)")
@click.option("--label", "labels", multiple=True, default=("CE", "LAA"), show_default=True, help="allowed label, repeatable")
@click.option("--require-labels", is_flag=True, help="fail on manifest rows without a label (for a training set)")
@click.option("--overwrite", is_flag=True, help="replace a TileSet made with different settings")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars and no per-slide table (failures are still listed)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def tile(slides, out, manifest, source, filters, workers, threads, dask_address, scratch_dir, trust_declared_size, labels,
         require_labels, overwrite, quiet, as_json, **settings_given) -> None:
    """Cut the slides in SLIDES into a TileSet: each slide read once, tissue mask relative to its glass,
    a grid covering it, filters, pixel cache, QC pictures. Exit 3 when some slides failed (listed).
    The geometry options are TileSettings' fields (recorded in tileset.json)."""
    from clotclf_core.config import given_settings, parse_component_ref
    from clotclf_core.plugin.errors import ConfigError, PartialFailure
    from clotclf_core.tiling.run import tile_slides
    from clotclf_core.tiling.summary import failure_message, format_summary

    given = given_settings(settings_given, TileSettings)
    if "tile_um" in given and "tile_size" in given:
        raise ConfigError(
            f"--tile-um {given['tile_um']:g} and --tile-size {given['tile_size']} both set the tile side: give one "
            "(--tile-um needs the slides' mpp)"
        )
    settings = TileSettings.from_values(**given)
    refs = [parse_component_ref(f, "--filter") for f in filters]
    summary = tile_slides(
        slides, out, manifest=manifest, settings=settings, filters=refs, source=source, workers=workers, threads=threads,
        overwrite=overwrite, progress=not (quiet or as_json), labels=labels, require_labels=require_labels,
        dask=dask_address, scratch_dir=scratch_dir, trust_declared_size=trust_declared_size,
    )
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        text = format_summary(summary)
        click.echo("\n".join(text.splitlines()[:2]) if quiet else text)
    if summary["failed"]:
        raise PartialFailure(failure_message(summary))


# ----------------------------------------------------------------------------- export-patches


@click.command("export-patches")
@click.argument("slides", type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write tissue/ and background/ PNG patches into.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="CSV whose image_id column selects the slides of the SLIDES folder.")
@click.option("--per-slide", type=int, default=20, help="At most this many patches of each class per slide.")
@click.option("--size", type=int, default=224, help="Side of the saved patches in pixels (the TileSet's --train-size).")
@click.option("--tile-size", type=int, default=224, help="Patch side in pixels of the 1/downsample view (as in `clotclf tile`).")
@click.option("--downsample", type=float, default=4.0, help="View the slide at 1/downsample (as in `clotclf tile`).")
@click.option("--min-tissue", type=float, default=0.75, help="Share of a patch inside the tissue mask for it to count as tissue.")
@click.option("--thumbnail-size", type=int, default=2048, help="Longer side of the view the tissue mask is computed on.")
@click.option("--tissue-method", type=click.Choice(["saturation", "od", "either", "both"]), default="either", help="Tissue mask method (see clotclf_core.slides.tissue).")
@click.option("--seed", type=int, default=0, help="Seed for the choice of patches.")
@click.option("--overwrite", is_flag=True, help="Replace a patch set already in --out.")
@click.option("--trust-declared-size", is_flag=True, help="Read TIFFs whose header declares a tile/strip over 512 MiB decoded, or over 500x its bytes (refused by default).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print patchset.json's content as JSON.")
def export_patches_command(slides, out, manifest, per_slide, size, tile_size, downsample, min_tissue, thumbnail_size,
                           tissue_method, seed, overwrite, trust_declared_size, quiet, as_json) -> None:
    """Cut a balanced tissue / background patch set from the slide(s) SLIDES, labelled by the
    tissue mask: the training data of `clotclf train-filter`."""
    from clotclf_core.tiling.patchset import export_patches

    summary = export_patches(
        slides, out, manifest=manifest, per_slide=per_slide, size=size, tile_size=tile_size, downsample=downsample,
        min_tissue=min_tissue, thumbnail_size=thumbnail_size, tissue_method=tissue_method, seed=seed,
        overwrite=overwrite, progress=not (quiet or as_json), trust_declared_size=trust_declared_size,
    )
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"wrote {summary['n_tissue']} tissue + {summary['n_background']} background patches from "
        f"{summary['slides_used']} slide(s) to {out}"
    )
    for image_id, reason in summary["slides_skipped"].items():
        click.echo(f"skipped {image_id}: {reason}")


# ----------------------------------------------------------------------------- embed


@click.command("embed")
@click.option("--tiles", required=True, type=click.Path(file_okay=False), help="TileSet to embed (from `clotclf tile`).")
@click.option("--backbone", required=True, metavar="NAME[:k=v,...]", help="Encoder: any backbone plugin with its options, e.g. timm:model=hf-hub:ORG/NAME.")
@click.option("--backbone-opt", "backbone_opts", multiple=True, metavar="KEY=VALUE", help="Encoder option, repeatable (added to those after NAME:).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Feature store folder (created; an existing one is resumed).")
@click.option("--input-size", type=int, default=None, help="Encoder input side in pixels [default: what the encoder declares, else the tile size].")
@click.option("--batch-size", type=int, default=64, help="Tiles per forward pass (batches never cross slides).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto: CUDA (bf16) if available.")
@click.option("--seed", type=int, default=0, help="Seeds an encoder without pretrained weights (recorded).")
@click.option("--stain-normalise", "stain_normalise", default=None, metavar="METHOD[:target=REF.png]",
              help="Map every slide's stain onto one target before the encoder: macenko (the Macenko reference), "
                   "macenko:target=REF.png or reinhard:target=REF.png; estimated once per slide, recorded in "
                   "features.json (predict applies the same) [default: none].")
@click.option("--overwrite", is_flag=True, help="Replace a feature store made with another encoder or TileSet.")
@click.option("--workers", type=click.IntRange(min=1), default=1, help="Slides embedded in parallel by N worker processes on --device.")
@click.option("--devices", default=None, metavar="cuda:0,cuda:1|all", help="One worker process per device (comma-separated; all: every visible GPU; cpu,cpu for CPU processes).")
@click.option("--dask", "dask_address", metavar="ADDRESS", default=None, help="One task per slide on a Dask cluster: a scheduler address (tcp://host:8786) or 'local'. TILES and --out on a file system every worker sees.")
@click.option("--slides", "slides_dir", type=click.Path(file_okay=False), default=None,
              help="A TileSet tiled with --coords-only: the folder its slide files are in now [default: where they were tiled from].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def embed_command(tiles, backbone, backbone_opts, out, input_size, batch_size, device, seed, stain_normalise, overwrite,
                  workers, devices, dask_address, slides_dir, quiet, as_json) -> None:
    """Turn every tile of a TileSet into a feature vector with a frozen encoder, once, into a feature
    store (per slide: float16 matrix + tile rows; features.json records the encoder). Resumable:
    run it again to embed what is missing. See docs/data-formats.md, Feature store."""
    from clotclf_core.config import parse_component_ref, parse_key_values
    from clotclf_core.features.embed import embed_tileset, format_summary

    name, options = parse_component_ref(backbone, "--backbone")
    options |= parse_key_values(backbone_opts, "--backbone-opt")
    summary = embed_tileset(tiles, out, name, options, input_size=input_size, batch_size=batch_size, device=device,
                            seed=seed, overwrite=overwrite, progress=not (quiet or as_json), stain_normalise=stain_normalise,
                            workers=workers, devices=[d.strip() for d in devices.split(",") if d.strip()] if devices else None,
                            dask=dask_address, slides_dir=slides_dir)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif quiet:
        click.echo(summary["out"])
    else:
        click.echo(format_summary(summary))


# ----------------------------------------------------------------------------- import-features


@click.command("import-features")
@click.argument("h5_dir", type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Feature store folder to write (resumed if it holds the same encoder's features).")
@click.option("--encoder-name", required=True, metavar="NAME", help="The encoder that made the features (e.g. uni2-h, conch_v15): recorded, and checked against the files' own record.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="CSV with image_id[, patient_id, center_id, label]; default: every .h5 file, id = file stem.")
@click.option("--weights-sha256", default=None, metavar="HEX", help="sha256 of the encoder's weights, if known [default: unknown, and said].")
@click.option("--patch-size-level0", type=click.IntRange(min=1), default=None, help="A patch's side in level-0 pixels, for files that do not say it (CLAM).")
@click.option("--patch-size", type=click.IntRange(min=8, max=2048), default=None, help="The side the encoder saw, for files that do not say it [default: --patch-size-level0].")
@click.option("--label", "labels", multiple=True, default=("CE", "LAA"), show_default=True, help="Allowed label, repeatable.")
@click.option("--overwrite", is_flag=True, help="Replace a feature store of another encoder or patching in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def import_features_command(h5_dir, out, encoder_name, manifest, weights_sha256, patch_size_level0, patch_size, labels,
                            overwrite, quiet, as_json) -> None:
    """Turn TRIDENT / CLAM patch-feature files (H5_DIR/<image_id>.h5: features + coords) into a
    clotclf feature store, for `train --features`, `evaluate --features` and `predict --features`.
    See docs/data-formats.md, "Features from elsewhere"."""
    from clotclf_core.features.imported import format_summary, import_features

    summary = import_features(h5_dir, out, encoder_name, manifest=manifest, labels=tuple(labels),
                              weights_sha256=weights_sha256, patch_size_level0=patch_size_level0, patch_size=patch_size,
                              overwrite=overwrite, progress=not (quiet or as_json))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif quiet:
        click.echo(summary["out"])
    else:
        click.echo(format_summary(summary))


# ----------------------------------------------------------------------------- demo data


@click.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=str))
@click.option("--seed", type=int, default=0, help="Seed: the same seed writes the same pixels.")
@click.option("--patients", type=int, default=22, help="Number of patients (about 1.4 slides each, ~65% CE).")
@click.option("--signal", type=click.Choice(["texture", "sparse"]), default="texture",
              help="Where the label shows: the texture of the whole clot, or (sparse) a few small spots per LAA slide, listed in OUT/markers.csv.")
@click.option("--stain-shift", type=float, default=0.0, show_default=True,
              help="Push each centre's stain further from the reference (0: the standard tints; 1: strong; at most 2), "
                   "the same for both labels: a centre confounder for testing stain normalisation.")
@click.option("--overwrite", is_flag=True, help="Replace the demo cohort in a non-empty OUT (slides/, train.csv, README.md).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the manifest path.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo_data_command(out, seed, patients, signal, stain_shift, overwrite, quiet, as_json) -> None:
    """Write a small synthetic STRIP-AI-like cohort to OUT: train.csv (Kaggle columns), slides/*.tif
    (tiled, pyramidal and stripped TIFFs) and a README. Synthetic: for demos and tests only."""
    from clotclf_core.demo.cohort import timed_write

    summary = timed_write(out, seed=seed, n_patients=patients, overwrite=overwrite, progress=not (quiet or as_json),
                          signal=signal, stain_shift=stain_shift)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    if quiet:
        click.echo(summary["manifest"])
        return
    labels = ", ".join(f"{n} {k}" for k, n in summary["slides_per_label"].items())
    tiling = summary["tiling"]
    click.echo(
        f"{summary['slides']} synthetic slides ({labels}) of {summary['patients']} patients "
        f"({summary['patients_with_several_slides']} with several slides) from centres "
        f"{', '.join(map(str, summary['centres']))}: {summary['megabytes']} MB in {summary['seconds']} s\n"
        f"manifest: {summary['manifest']}\nslides:   {summary['slides_dir']}\n"
        f"tile them with: clotclf tile {summary['slides_dir']} --manifest {summary['manifest']} --out TILES "
        f"--downsample {tiling['downsample']:g} --tile-size {tiling['tile_size']} --stride {tiling['stride']}"
    )


COMMANDS = (tile, export_patches_command, embed_command, import_features_command, demo_data_command)

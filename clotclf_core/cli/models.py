"""The model commands: ``clotclf train``, ``evaluate``, ``predict`` and ``pretrain``.

Registered on the group by :mod:`clotclf_core.cli`; each is a thin wrapper over one function
elsewhere, imported inside its body so that start-up stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from clotclf_core.training.options import cli_options as _train_options

#: where model resolvers (the registry plugin) read the registry a model name is pulled from
REGISTRY_ENV = "CLOTCLF_REGISTRY"


def _set_registry(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:  # the resolve hook reads its settings from the environment: this command's only
        import os

        os.environ[REGISTRY_ENV] = value


def registry_option(fn):
    """``--registry URL`` on every command that takes a model: where a model *name* is pulled from."""
    return click.option("--registry", metavar="URL", default=None, expose_value=False, callback=_set_registry,
                        is_eager=True, help=f"Registry that model names are pulled from: 'hub', or file:///path for a "
                        f"local registry (same as {REGISTRY_ENV}=URL). [default: ${REGISTRY_ENV}, the registry config file, or hub]")(fn)

# ----------------------------------------------------------------------------- train / evaluate

#: evaluate's and predict's --standardise: an assertion about the model, which applies what it stores
_STANDARDISE_HELP = ("What a MIL model on features must do with its features: on = standardise them with the statistics "
                     "it stores (refused if it stores none), off = use them as they are (refused if it stores some), "
                     "auto = whatever it was trained with.")


@click.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML of training settings; options given here override it.")
@_train_options
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (same settings).")
@click.option("--nproc", type=int, default=None, help="Train data-parallel in N processes (torch.distributed launcher); or start under torchrun yourself.")
@click.option("--track", "track", multiple=True, type=click.Choice(["mlflow", "tensorboard"]),
              help="Log parameters, per-epoch metrics, the held-out headline, plots and the run directory to MLflow (MLFLOW_TRACKING_URI, else ./mlruns) or TensorBoard (RUN/tensorboard); repeatable. Needs clotclf[mlflow] / clotclf[tensorboard].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no metrics table.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary (metrics per fold) as JSON.")
def train_command(config_path, resume, nproc, track, quiet, as_json, **params) -> None:
    """Train a classifier on a TileSet (--tiles) with a patient-level split; with no --tiles, on the
    built-in demo cohort (generated and tiled once under --demo-dir). Writes a run directory:
    model.safetensors, config.json, metrics.json, history.csv, plots/, README.md. See docs/training.md."""
    import os

    from clotclf_core.training.launch import launch_distributed
    from clotclf_core.training.options import overrides_from_cli
    from clotclf_core.training.report import report_table
    from clotclf_core.training.run import train
    from clotclf_core.training.settings import resolve_settings

    settings = resolve_settings(config_path, overrides_from_cli(params))
    if nproc:
        launch_distributed(settings, nproc, resume, quiet, as_json, track)
        return
    summary = train(settings, resume=resume, progress=not (quiet or as_json), track=track)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    elif not quiet:
        click.echo(report_table(summary))
    else:
        click.echo(summary["run_dir"])
    note = summary.get("disagreement") or next((f["disagreement"] for f in summary["folds"] if f.get("disagreement")), None)
    if note and (quiet or as_json):  # the table leads with it otherwise
        click.echo(f"Warning: {note}.", err=True)


@click.command("evaluate")
@click.argument("run")
@click.option("--tiles", type=click.Path(file_okay=False), help="TileSet to score (from `clotclf tile`); a MIL model on features embeds it with the run's encoder first.")
@click.option("--features", type=click.Path(file_okay=False), help="Feature store to score (MIL models on features; made with the run's encoder, else refused).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for metrics.json, predictions.csv and plots/ [default: RUN/eval-<tileset name>].")
@click.option("--patients", type=click.Choice(["unseen", "val", "test", "all"]), default="unseen",
              help="Which patients to score: those the model never trained on, the run's validation / test patients, or all (optimistic). Each group is reported on its own.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Tiles per inference batch.")
@click.option("--workers", type=click.IntRange(min=0), default=2, help="Data-loader worker processes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto: CUDA if available.")
@click.option("--standardise", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help=_STANDARDISE_HELP)
@click.option("--no-qupath", is_flag=True, help="Skip the per-slide QuPath GeoJSON (qupath/<image_id>.geojson).")
@registry_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json's content as JSON.")
def evaluate_command(run, tiles, features, out, patients, batch_size, workers, device, standardise, no_qupath, quiet,
                     as_json) -> None:
    """Re-evaluate the model RUN (a run directory, a cross-validation run folder — the ensemble of its
    folds — or a registry name) on a TileSet, at tile, slide and patient level (a MIL model: slide and
    patient level, on --tiles or --features); by default only on patients the model never trained on,
    with the run's test patients, other patients and validation patients reported separately. Writes
    metrics.json, predictions.csv, plots/, qupath/ (GeoJSON for QuPath), heatmaps/ and report.html."""
    from clotclf_core.scoring.evaluate import evaluate_run
    from clotclf_core.scoring.headline import headline_sentence
    from clotclf_core.scoring.intervals import format_centres
    from clotclf_core.scoring.metrics import format_table

    if tiles is None and features is None:
        raise click.UsageError("give --tiles (a TileSet) or, for a MIL model on features, --features (a feature store)")
    report = evaluate_run(run, tiles, out, patients, batch_size, workers, device, progress=not (quiet or as_json),
                          features=features, standardise=standardise, qupath=not no_qupath)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    elif not quiet:
        slides = f"{report['n_slides']} slides, " if "n_slides" in report else ""
        click.echo(f"{report['patients_scored']} patient(s), {slides}{report['n_tiles']} tiles ({report['subset']}; "
                   f"{report['seen_in_training']} of the TileSet's patients were in the model's training split)")
        if report["note"]:
            click.echo(report["note"])
        click.echo(headline_sentence(report["headline"]))
        for name, group in report["groups"].items():
            click.echo(f"\n{name} (n = {group['n_patients']} patients): {group['what']}")
            click.echo(format_table(group["metrics"]))
            if "calibration" in group:
                c = group["calibration"]
                click.echo(f"after {c['how']}: weighted log loss {c['weighted_log_loss_before']:.3f} -> "
                           f"{c['weighted_log_loss_after']:.3f}, ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f}"
                           + (f" ({c['note']})" if c.get("note") else ""))
            if group["per_center"]:
                click.echo("per centre:\n" + format_centres(group["per_center"]))
        click.echo(f"\nwritten to {report['out']} (report.html: the page to open)")
    if report.get("disagreement"):
        click.echo(f"Warning: {report['disagreement']}.", err=True)


def _predict_warnings(summary: dict[str, Any]) -> None:
    """Printed on stderr whatever --quiet / --json say: patients without a number of their own."""
    missing = summary["patients_without_tiles"]
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        click.echo(f"Warning: {len(missing)} PATIENT(S) HAVE NO USABLE TILE and get equal probabilities (0.5 each for "
                   f"CE / LAA) in submission.csv: {shown}. Their slides' reasons are in predictions.csv", err=True)
    seen = summary["patients_in_model_split"]
    if seen.get("train"):
        click.echo(f"Warning: {seen['train']} patient(s) were TRAINING patients of the model(s) (in_model_split = train "
                   "in predictions.csv): their predictions are optimistic", err=True)


@click.command("predict")
@click.argument("slides", type=click.Path(path_type=str), required=False)
@click.option("--features", type=click.Path(file_okay=False), default=None,
              help="Score the slides of this feature store (clotclf embed / import-features) instead of SLIDES: MIL models on features of its encoder; no slide is opened, no heatmaps.")
@click.option("--model", "models", multiple=True, required=True, metavar="RUN",
              help="Run directory, cross-validation run folder (its folds' ensemble) or registry name (org/name[@rev]); repeat for an ensemble.")
@click.option("--weight", "weights", multiple=True, type=float, help="Ensemble weight per --model, in order [default: equal].")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for predictions.csv, submission.csv, heatmaps/.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="CSV with image_id[, patient_id, label] (Kaggle's test.csv and other.csv read as is; labels are optional, any value accepted); every patient in it gets a submission row.")
@click.option("--slide-is-patient", is_flag=True, help="Without a patient_id, make each slide its own patient [default: the STRIP AI image-id convention <patient>_<n>, else refused].")
@click.option("--workers", type=click.IntRange(min=1), default=1, help="Slides tiled in parallel (processes).")
@click.option("--dask", "dask_address", metavar="ADDRESS", default=None, help="Tile (and, for a MIL model on features, embed) one slide per task on a Dask cluster: a scheduler address or 'local'. SLIDES and --out on a file system every worker sees.")
@click.option("--devices", default=None, metavar="cuda:0,cuda:1|all", help="A MIL model's encoder embeds the slides in one process per device (comma-separated; all: every visible GPU).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Tiles per inference batch.")
@click.option("--loader-workers", type=click.IntRange(min=0), default=0, help="Data-loader worker processes for inference.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto: CUDA if available.")
@click.option("--no-heatmaps", is_flag=True, help="Skip the heatmap pictures.")
@click.option("--standardise", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help=_STANDARDISE_HELP)
@click.option("--attention-heatmaps", "attention", is_flag=True,
              help="Heatmaps must show each tile's attention weight beside its probability: refused at once unless a model has attention (a MIL model with e.g. abmil; such a model adds the panel anyway).")
@click.option("--no-qupath", is_flag=True, help="Skip the per-slide QuPath GeoJSON (qupath/<image_id>.geojson).")
@click.option("--trust-declared-size", is_flag=True, help="Read TIFFs whose header declares a tile/strip over 512 MiB decoded, or over 500x its bytes (refused by default: a few bytes could take the machine's memory).")
@registry_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars; print only the output folder (warnings and failures still).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def predict_command(slides, features, models, weights, out, manifest, slide_is_patient, workers, dask_address, devices,
                    batch_size, loader_workers, device, no_heatmaps, standardise, attention, no_qupath, trust_declared_size,
                    quiet, as_json) -> None:
    """Classify the slides in SLIDES with one model or an ensemble (tile-level and MIL models mixed):
    tiles them with each model's own tiling settings (a MIL model on features: embeds the tiles with
    its recorded encoder), writes per-slide and per-patient probabilities (predictions.csv), a
    Kaggle-style submission.csv (patient_id,CE,LAA; one row per patient) and one heatmap per slide
    (with attention weights for a model that has them). Exit code 3 when some slides could not be
    read (listed; everything else is written)."""
    from clotclf_core.plugin.errors import PartialFailure
    from clotclf_core.predict.run import predict

    if (slides is None) == (features is None):
        raise click.UsageError("give the slides (SLIDES) or, for MIL models on features, a feature store (--features F): one of the two")
    if features is not None and attention:
        raise click.UsageError("--attention-heatmaps needs slide images: with --features no heatmap is drawn")
    summary = predict(slides, models, out, manifest=manifest, weights=weights or None, workers=workers,
                      batch_size=batch_size, loader_workers=loader_workers, device=device,
                      heatmaps=not no_heatmaps, progress=not (quiet or as_json), slide_is_patient=slide_is_patient,
                      attention=attention, standardise=standardise, qupath=not no_qupath, features=features,
                      dask=dask_address, devices=[d.strip() for d in devices.split(",") if d.strip()] if devices else None,
                      trust_declared_size=trust_declared_size)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    elif quiet:
        click.echo(summary["out"])
    else:
        filled = len(summary["patients_without_tiles"])
        click.echo(f"{summary['n_slides']} slide(s) scored by {len(summary['models'])} model(s) in {summary['seconds']} s; "
                   f"{summary['n_patients']} patient(s) in submission.csv"
                   + (f" ({filled} with equal probabilities)" if filled else "")
                   + f" (patients from the {summary['patient_ids_from']})")
        # slides that could not be read are not "without tissue": they are the Error line below
        no_tissue = [k for k in summary["slides_without_tiles"] if k not in summary["failed_slides"]]
        if no_tissue:
            click.echo(f"no tissue tiles (not scored): {', '.join(no_tissue)}")
        for m in summary["models"]:
            if m.get("calibration"):
                click.echo(f"{m['ref']}: probabilities post-processed ({m['calibration']})")
        for level, m in summary.get("metrics", {}).items():
            click.echo(f"{level:>8}: accuracy {m['accuracy']:.3f}  balanced accuracy {m['balanced_accuracy']:.3f}  "
                       f"weighted log loss {m['weighted_log_loss']:.3f}")
        click.echo(f"predictions: {summary['predictions']}\nsubmission:  {summary['submission']}\n"
                   + (f"heatmaps:    {Path(summary['out']) / 'heatmaps'}\n" if summary.get("heatmaps") else "")
                   + (f"QuPath:      {Path(summary['out']) / 'qupath'} (File > Import objects)\n" if summary["qupath"] else "")
                   + f"report:      {summary['report']}")
        if summary.get("note"):
            click.echo(summary["note"])
        if summary.get("labels_note"):
            click.echo(f"labels: {summary['labels_note']}")
    _predict_warnings(summary)
    failed = summary["failed_slides"]
    if failed:
        listed = "; ".join(f"{k} ({v[:240]})" for k, v in list(failed.items())[:10])
        raise PartialFailure(
            f"{len(failed)} of {summary['n_slides_in_job']} slide(s) could not be read and were not scored: {listed}"
            + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
            + f". Everything else is written to {summary['out']} (their patients are in submission.csv, with equal "
            "probabilities if no other slide of theirs was scored); fix those slides and run the command again")


# ----------------------------------------------------------------------------- pretrain


@click.command("pretrain")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML of pre-training settings; options given here override it.")
@click.option("--tiles", "tilesets", multiple=True, type=click.Path(file_okay=False), help="TileSet to pre-train on, repeatable (labelled or not: e.g. STRIP AI's other.csv slides too); all cut with the same geometry.")
@click.option("--method", type=click.Choice(["dino", "mocov3", "simclr"]), default=None, help="Self-supervised method (lightly) [default: dino].")
@click.option("--backbone", default=None, metavar="NAME[:k=v,...]", help="Backbone to pre-train: any backbone plugin with its options, or run:PATH to continue a pre-training [default: timm].")
@click.option("--backbone-opt", "backbone_opts", multiple=True, metavar="KEY=VALUE", help="Backbone option, repeatable.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory [default: runs/pretrain-<method>-<backbone>-<date>-<time>].")
@click.option("--epochs", type=int, default=None, help="Epochs over the tiles [default: 10].")
@click.option("--batch-size", type=int, default=None, help="Tiles per step, per process [default: 64].")
@click.option("--lr", type=float, default=None, help="AdamW peak learning rate [default: the method's].")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay [default: the method's].")
@click.option("--input-size", type=int, default=None, help="Side of the views [default: the tiles' side].")
@click.option("--head-hidden-dim", type=int, default=None, help="Width of the projection head [default: the method's].")
@click.option("--head-output-dim", type=int, default=None, help="Output of the projection head [default: the method's].")
@click.option("--local-views", type=int, default=None, help="DINO: local crops per tile besides the 2 global ones [default: 2].")
@click.option("--max-tiles-per-slide", type=int, default=None, help="Use at most this many tiles of each slide (seeded).")
@click.option("--val-tiles", type=int, default=None, help="Tiles held out for the held-out loss each epoch [default: 256; 0: none].")
@click.option("--seed", type=int, default=None, help="The one seed (views, initialisation, order) [default: 0].")
@click.option("--workers", type=int, default=None, help="Data-loader worker processes; results do not depend on it [default: 2].")
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's choice].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="auto: CUDA (bf16, channels-last) if available.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (same settings): the result is the uninterrupted run's.")
@click.option("--nproc", type=int, default=None, help="Pre-train data-parallel in N processes (torch.distributed launcher); or start under torchrun yourself.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars; print only the run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def pretrain_command(config_path, tilesets, backbone, backbone_opts, resume, nproc, quiet, as_json, **params) -> None:
    """Pre-train a backbone self-supervised (DINO, MoCo v3 or SimCLR, with lightly) on the tiles of one
    or more TileSets, no labels used; writes a run directory that any command takes as a backbone
    (`--backbone run:PATH`) and the registry pushes and pulls. See docs/training.md, Pre-training."""
    import os

    from clotclf_core.config import parse_component_ref, parse_key_values
    from clotclf_core.training.pretrain import format_summary, launch_pretrain, pretrain
    from clotclf_core.training.pretrain_settings import resolve_pretrain_settings

    overrides = dict(params, tilesets=list(tilesets) or None)
    if backbone is not None or backbone_opts:
        name, options = parse_component_ref(backbone, "--backbone") if backbone else (None, {})
        overrides |= {"backbone": name, "backbone_options": options | parse_key_values(backbone_opts, "--backbone-opt")}
    settings = resolve_pretrain_settings(config_path, overrides)
    if nproc:
        launch_pretrain(settings, nproc, resume, quiet, as_json)
        return
    summary = pretrain(settings, resume=resume, progress=not (quiet or as_json))
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(summary["run_dir"] if quiet else format_summary(summary))


COMMANDS = (train_command, evaluate_command, predict_command, pretrain_command)

"""The model commands: ``clotclf train``, ``evaluate`` and ``predict``.

Registered on the group by :mod:`clotclf_core.cli`; each is a thin wrapper over one function
elsewhere, imported inside its body so that start-up stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from clotclf_core.training.options import cli_options as _train_options

# ----------------------------------------------------------------------------- train / evaluate


@click.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML of training settings; options given here override it.")
@_train_options
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (same settings).")
@click.option("--nproc", type=int, default=None, help="Train data-parallel in N processes (torch.distributed launcher); or start under torchrun yourself.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no metrics table.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary (metrics per fold) as JSON.")
def train_command(config_path, resume, nproc, quiet, as_json, **params) -> None:
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
        launch_distributed(settings, nproc, resume, quiet, as_json)
        return
    summary = train(settings, resume=resume, progress=not (quiet or as_json))
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    elif not quiet:
        click.echo(report_table(summary))
    else:
        click.echo(summary["run_dir"])


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
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json's content as JSON.")
def evaluate_command(run, tiles, features, out, patients, batch_size, workers, device, quiet, as_json) -> None:
    """Re-evaluate the model RUN (a run directory, or a registry name) on a TileSet, at tile, slide
    and patient level (a MIL model: slide and patient level, on --tiles or --features); by default
    only on patients the model never trained on, with the run's test patients, other patients and
    validation patients reported separately."""
    from clotclf_core.scoring.evaluate import evaluate_run
    from clotclf_core.scoring.headline import headline_sentence
    from clotclf_core.scoring.metrics import format_table

    if tiles is None and features is None:
        raise click.UsageError("give --tiles (a TileSet) or, for a MIL model on features, --features (a feature store)")
    report = evaluate_run(run, tiles, out, patients, batch_size, workers, device, progress=not (quiet or as_json),
                          features=features)
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
        click.echo(f"\nwritten to {report['out']}")


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
@click.argument("slides", type=click.Path(path_type=str))
@click.option("--model", "models", multiple=True, required=True, metavar="RUN",
              help="Run directory or registry name (org/name[@rev]); repeat for an ensemble.")
@click.option("--weight", "weights", multiple=True, type=float, help="Ensemble weight per --model, in order [default: equal].")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for predictions.csv, submission.csv, heatmaps/.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="CSV with image_id[, patient_id, label] (Kaggle's test.csv reads as is); every patient in it gets a submission row.")
@click.option("--slide-is-patient", is_flag=True, help="Without a patient_id, make each slide its own patient [default: the STRIP AI image-id convention <patient>_<n>, else refused].")
@click.option("--workers", type=click.IntRange(min=1), default=1, help="Slides tiled in parallel (processes).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Tiles per inference batch.")
@click.option("--loader-workers", type=click.IntRange(min=0), default=0, help="Data-loader worker processes for inference.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto: CUDA if available.")
@click.option("--no-heatmaps", is_flag=True, help="Skip the heatmap pictures.")
@click.option("--attention-heatmaps", "attention", is_flag=True,
              help="Heatmaps must show each tile's attention weight beside its probability: refused at once unless a model has attention (a MIL model with e.g. abmil; such a model adds the panel anyway).")
@click.option("--trust-declared-size", is_flag=True, help="Read TIFFs whose header declares a tile/strip over 512 MiB decoded, or over 500x its bytes (refused by default: a few bytes could take the machine's memory).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars; print only the output folder (warnings and failures still).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def predict_command(slides, models, weights, out, manifest, slide_is_patient, workers, batch_size, loader_workers, device,
                    no_heatmaps, attention, trust_declared_size, quiet, as_json) -> None:
    """Classify the slides in SLIDES with one model or an ensemble (tile-level and MIL models mixed):
    tiles them with each model's own tiling settings (a MIL model on features: embeds the tiles with
    its recorded encoder), writes per-slide and per-patient probabilities (predictions.csv), a
    Kaggle-style submission.csv (patient_id,CE,LAA; one row per patient) and one heatmap per slide
    (with attention weights for a model that has them). Exit code 3 when some slides could not be
    read (listed; everything else is written)."""
    from clotclf_core.plugin.errors import PartialFailure
    from clotclf_core.predict.run import predict

    summary = predict(slides, models, out, manifest=manifest, weights=weights or None, workers=workers,
                      batch_size=batch_size, loader_workers=loader_workers, device=device,
                      heatmaps=not no_heatmaps, progress=not (quiet or as_json), slide_is_patient=slide_is_patient,
                      attention=attention, trust_declared_size=trust_declared_size)
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
        for level, m in summary.get("metrics", {}).items():
            click.echo(f"{level:>8}: accuracy {m['accuracy']:.3f}  balanced accuracy {m['balanced_accuracy']:.3f}  "
                       f"weighted log loss {m['weighted_log_loss']:.3f}")
        click.echo(f"predictions: {summary['predictions']}\nsubmission:  {summary['submission']}\n"
                   f"heatmaps:    {Path(summary['out']) / 'heatmaps'}")
    _predict_warnings(summary)
    failed = summary["failed_slides"]
    if failed:
        listed = "; ".join(f"{k} ({v[:240]})" for k, v in list(failed.items())[:10])
        raise PartialFailure(
            f"{len(failed)} of {summary['n_slides_in_job']} slide(s) could not be read and were not scored: {listed}"
            + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
            + f". Everything else is written to {summary['out']} (their patients are in submission.csv, with equal "
            "probabilities if no other slide of theirs was scored); fix those slides and run the command again")


COMMANDS = (train_command, evaluate_command, predict_command)

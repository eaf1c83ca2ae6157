"""The ``clotclf train-filter`` command (added to the CLI through ``clotclf_add_commands``).

A thin wrapper over :func:`clotclf_mobilenet_bg._train.train_filter`; torch is imported only
when the command runs, so ``clotclf --help`` stays fast.
"""

from __future__ import annotations

import json

import click

from . import ARCHES, DEFAULT_ARCH


@click.command("train-filter")
@click.argument("data", type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(path_type=str), help="Run directory to write (model.safetensors, config.json, metrics.json, ...).")
@click.option("--arch", type=click.Choice(ARCHES), default=DEFAULT_ARCH, show_default=True, help="timm MobileNetV3 variant.")
@click.option("--epochs", type=int, default=5, show_default=True, help="Passes over the training patches.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Patches per optimisation step.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate (cosine-decayed to 0).")
@click.option("--weight-decay", type=float, default=0.01, show_default=True, help="AdamW weight decay.")
@click.option("--input-size", type=int, default=224, show_default=True, help="Side patches are resized to: the TileSet's --train-size.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Fraction of each class held out for validation (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the split, initialisation, order and augmentation.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda when available), cpu, cuda or cuda:N.")
@click.option("--pretrained/--no-pretrained", default=False, show_default=True, help="Start from timm's ImageNet weights (needs the Hub once).")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json's content as JSON (implies --quiet).")
def train_filter_command(data: str, out: str, quiet: bool, as_json: bool, overwrite: bool, **values) -> None:
    """Train the `mobilenetv3` background filter on DATA/tissue and DATA/background patches.

    DATA holds PNG/JPEG patches in tissue/ and background/ subfolders (the public STRIP AI
    background set, or `clotclf export-patches`). Writes a run directory usable as
    `--filter mobilenetv3:weights=RUN`.
    """
    from ._train import make_settings, train_filter

    settings = make_settings(**values)
    metrics = train_filter(data, out, settings, progress=not (quiet or as_json), overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    val = metrics["validation"]
    if val:
        auc = "n/a" if val["auc"] is None else f"{val['auc']:.4f}"
        click.echo(
            f"validation ({val['n']} patches, epoch {val['epoch']}): accuracy {val['accuracy']:.4f}, "
            f"balanced accuracy {val['balanced_accuracy']:.4f}, AUC {auc}"
        )
    else:
        click.echo("no validation set (--val-fraction 0)")
    click.echo(f"wrote {out}  (use it as --filter mobilenetv3:weights={out})")

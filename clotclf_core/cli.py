"""The ``clotclf`` command line. Each command is a thin wrapper over one function elsewhere.

Startup stays light: this module imports click, pydantic and pluggy, never torch, timm or
openslide; commands import those inside their bodies. Plugins may add commands through the
``clotclf_add_commands`` hook (the registry adds ``push``, ``pull``, ``list-models``).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, ClotclfError, os_error_message
from .hookspecs import PLUGIN_API_VERSION
from .interfaces import KINDS
from .plugins import DISABLE_ENV, get_manager, reset_manager


class ClotclfGroup(click.Group):
    """A click group that adds plugin commands on first use and turns ClotclfError into one line."""

    _plugin_commands_added = False

    def _add_plugin_commands(self, ctx: click.Context) -> None:
        if not self._plugin_commands_added:
            self._plugin_commands_added = True
            get_manager().add_commands(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._add_plugin_commands(ctx)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        debug = os.environ.get("CLOTCLF_DEBUG", "") not in ("", "0")
        try:
            return super().invoke(ctx)
        except ClotclfError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            # commands that can resume catch this themselves and say what was kept (Interrupted)
            click.echo("Error: interrupted (Ctrl-C). Every result is written atomically, so nothing was left half-written", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            message = os_error_message(exc)
            if message is None or debug:
                raise
            click.echo(f"Error: {message}", err=True)
            ctx.exit(EXIT_USER_ERROR)


def _apply_disabled(ctx: click.Context, param: click.Parameter, names: tuple[str, ...]) -> tuple[str, ...]:
    if names:
        mgr = reset_manager(disabled=names)
        unknown = [n for n in names if n in mgr.unknown_disabled]
        if unknown:
            known = ", ".join(sorted({p.name for p in mgr.plugins}))
            raise click.BadParameter(
                f"no installed plugin is called {', '.join(repr(n) for n in unknown)}; give an entry-point or distribution "
                f"name from `clotclf list-plugins --verbose` (installed plugins: {known})",
                ctx=ctx, param=param,
            )
    return names


@click.group(cls=ClotclfGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="clotclf", message=f"%(prog)s %(version)s (plugin API {PLUGIN_API_VERSION})")
@click.option(
    "--disable-plugin",
    "disable",
    multiple=True,
    metavar="NAME",
    help=f"Skip a plugin (entry-point or distribution name); repeatable. Same as {DISABLE_ENV}=a,b.",
    is_eager=True,  # applied while parsing, before plugins add their commands (and before --help)
    callback=_apply_disabled,
)
def cli(disable: tuple[str, ...]) -> None:
    """clotclf: classify stroke-clot origin (CE vs LAA) from whole-slide images.

    Slides -> tiles (`clotclf tile`) -> trained, patient-level evaluated models (`clotclf train`)
    -> predictions with heatmaps (`clotclf predict`). Components are plugins: `clotclf list-plugins`.
    """


# ----------------------------------------------------------------------------- plugins


def _status(spec: Any, conflicts: dict[tuple[str, str], Any]) -> str:
    conflict = conflicts.get((spec.kind, spec.name))
    if conflict is None:
        return "ok"
    if conflict.winner is None:
        return f"conflict: use {spec.plugin}/{spec.name} (see `clotclf show-plugin {spec.name}`)"
    if conflict.winner is spec:
        return "ok (built-in; the plain name means this one)"
    return f"name taken by the built-in: use {spec.plugin}/{spec.name}"


def _plugin_rows(kind: str | None) -> list[dict[str, Any]]:
    mgr = get_manager()
    conflicts = {(c.kind, c.name): c for c in mgr.conflicts()}
    infos = {p.name: p for p in mgr.plugins}
    rows = []
    for spec in mgr.components(kind):
        info = infos.get(spec.plugin)
        rows.append(
            {
                "kind": spec.kind,
                "name": spec.name,
                "plugin": spec.plugin,
                "distribution": spec.distribution,
                "version": spec.version,
                "summary": spec.summary,
                "status": _status(spec, conflicts),
                "api": (info.api if info else None) or "-",
                "import_ms": info.as_row()["import_ms"] if info else None,
                "heavy_imports": list(info.heavy_imports) if info else [],
            }
        )
    for info in mgr.plugins:  # plugins that contributed nothing because they are broken or disabled
        if not info.ok:
            rows.append(
                {
                    "kind": "-",
                    "name": "-",
                    "plugin": info.name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "summary": info.value,
                    "status": info.status,
                    "api": info.api or "-",
                    "import_ms": info.as_row()["import_ms"],
                    "heavy_imports": list(info.heavy_imports),
                }
            )
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _options_rows(spec) -> list[dict[str, Any]]:
    rows = []
    for fname, field in spec.options.model_fields.items():
        ann = field.annotation
        typ = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append({"option": fname, "type": typ, "default": default, "help": field.description or ""})
    return rows


def _startup_warnings(mgr: Any) -> list[str]:
    out = []
    for info in mgr.plugins:
        if info.heavy_imports:
            out.append(
                f"plugin '{info.name}' ({info.distribution}) imports {', '.join(info.heavy_imports)} when it loads "
                f"({info.as_row()['import_ms']:.0f} ms): every clotclf command pays for it at start-up. Import heavy "
                "libraries inside the factory (docs/plugins.md)"
            )
    if mgr.unknown_disabled:
        out.append(f"{DISABLE_ENV} names no installed plugin: {', '.join(mgr.unknown_disabled)}")
    return out


@cli.command("list-plugins")
@click.option("--kind", type=click.Choice(list(KINDS)), help="Only this kind of component.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--verbose", "-v", is_flag=True,
              help="Also list each plugin's import time, contract version and heavy imports, each component's options, "
                   "and tracebacks of broken plugins.")
def list_plugins(kind: str | None, as_json: bool, verbose: bool) -> None:
    """List every installed component: kind, name, plugin, distribution, version, status."""
    mgr = get_manager()
    rows = _plugin_rows(kind)
    if verbose:
        for row in rows:
            if row["name"] != "-":
                row["options"] = _options_rows(mgr.get(row["kind"], f"{row['plugin']}/{row['name']}"))
    for warning in _startup_warnings(mgr):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(rows, ["kind", "name", "plugin", "distribution", "version", "status", "summary"]))
    if verbose:
        plugins = [info.as_row() for info in mgr.plugins]
        for row in plugins:
            row["import_ms"] = "-" if row["import_ms"] is None else f"{row['import_ms']:.1f}"
            row["heavy_imports"] = ", ".join(row["heavy_imports"]) or "-"
        click.echo(f"\nplugins (clotclf plugin API {PLUGIN_API_VERSION}; API = the range a plugin declares):")
        click.echo(_table(plugins, ["plugin", "distribution", "version", "api", "import_ms", "heavy_imports", "status"]))
        for row in rows:
            if row.get("options"):
                click.echo(f"\n{row['kind']} {row['name']} options:")
                click.echo(_table(row["options"], ["option", "type", "default", "help"]))
        for info in mgr.plugins:
            if info.detail:
                click.echo(f"\nplugin {info.name} failed:\n{info.detail}", err=True)


@cli.command("show-plugin")
@click.argument("name")
@click.option("--kind", type=click.Choice(list(KINDS)), help="Kind, when NAME exists in several kinds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show_plugin(name: str, kind: str | None, as_json: bool) -> None:
    """Show a component's summary and options (types, defaults, help)."""
    mgr = get_manager()
    base = name.split("/")[-1]
    kinds = [kind] if kind else [k for k in KINDS if base in mgr.names(k)]
    if not kinds:
        every = sorted({s.name for s in mgr.components()})
        import difflib

        close = difflib.get_close_matches(base, every, n=5, cutoff=0.0)
        raise ClotclfError(f"no component called '{name}'. Known components: {', '.join(close)} (see `clotclf list-plugins`)")
    out = []
    for k in kinds:
        conflict = [c for c in mgr.conflicts() if c.kind == k and c.name == base and "/" not in name]
        specs = conflict[0].specs if conflict else [mgr.get(k, name)]
        for spec in specs:
            out.append(
                {
                    "kind": spec.kind,
                    "name": spec.name,
                    "plugin": spec.plugin,
                    "distribution": f"{spec.distribution} {spec.version}",
                    "summary": spec.summary,
                    "options": _options_rows(spec),
                    "conflict": conflict[0].message() if conflict else None,
                }
            )
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for item in out:
        click.echo(f"{item['kind']} {item['name']}  (plugin {item['plugin']}, {item['distribution']})")
        click.echo(f"  {item['summary']}")
        if item["conflict"]:
            click.echo(f"  NAME CLASH: {item['conflict']}")
        click.echo(_table(item["options"], ["option", "type", "default", "help"]) if item["options"] else "  (no options)")
        click.echo()


# ----------------------------------------------------------------------------- smoke test


@cli.command("smoke-test")
@click.argument("names", nargs=-1, metavar="[PLUGIN|COMPONENT]...")
@click.option("--input-size", default=64, type=click.IntRange(min=8), help="Side of the random input images.")
@click.option("--batch-size", default=2, type=click.IntRange(min=1), help="Images per training step (a batch of one is always tried too).")
@click.option("--seed", default=0, type=int, help="Seed for the random inputs and initial weights.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def smoke_test(names: tuple[str, ...], input_size: int, batch_size: int, seed: int, as_json: bool) -> None:
    """Check components on random input; exits 1 if any check failed.

    With PLUGIN names (entry-point or distribution, e.g. `clotclf smoke-test my_plugin`), every
    component the plugin provides is checked the way its kind needs: backbones and heads are built
    with default options, take a training step and a batch of one, and survive a safetensors
    save / load round trip; filters score generated tiles; sources open a generated TIFF. This is
    the test a plugin author runs in CI (docs/plugins.md). Without names, every installed
    backbone x head takes one training step: a quick check of an installation.
    """
    from .smoke import smoke_all, smoke_plugins

    if names:
        rows = smoke_plugins(list(names), input_size=input_size, batch_size=batch_size, seed=seed)
        columns = ["plugin", "kind", "name", "seconds", "status", "checks"]
    else:
        rows = smoke_all(input_size=input_size, batch_size=batch_size)
        columns = ["backbone", "head", "params_m", "loss", "seconds", "status"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(_table(rows, columns))
    if any(str(r["status"]).startswith("error") for r in rows):
        sys.exit(1)


# ----------------------------------------------------------------------------- tile


@cli.command("tile")
@click.argument("slides", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="TileSet folder to write (resumed if it exists).")
@click.option("--manifest", type=click.Path(dir_okay=False), help="CSV with image_id[, patient_id, center_id, label]; default: every slide file, id = file stem.")
@click.option("--source", metavar="NAME[:k=v,...]", help="Slide source plugin (default: the best one for each file).")
@click.option("--filter", "filters", multiple=True, default=("otsu",), show_default=True, metavar="NAME[:k=v,...]", help="Patch filter, repeatable, run in order (e.g. mobilenetv3:weights=RUN,threshold=0.5).")
@click.option("--downsample", type=float, default=4.0, show_default=True, help="View the slide at 1/downsample (--tile-size and --stride are pixels of that view).")
@click.option("--tile-size", type=int, default=None, help="Tile side in pixels of that view [default: 224, i.e. 896 level-0 px]. Not with --tile-um.")
@click.option("--stride", type=int, default=None, help="Step between tiles in pixels of that view [default: tile size, no overlap].")
@click.option("--tile-um", type=float, default=None, help="Tile side in microns (needs the slide's mpp), instead of --tile-size.")
@click.option("--train-size", type=int, default=224, show_default=True, help="Side of the cached tiles (training input size).")
@click.option("--min-tissue", type=float, default=0.1, show_default=True, help="Share of a tile that must be in the tissue mask for it to be a candidate.")
@click.option("--max-tiles", type=int, default=None, help="Keep at most N tiles per slide, the best by --max-tiles-by [default: all].")
@click.option("--max-tiles-by", type=click.Choice(["tissue", "dark"]), default="tissue", show_default=True, help="Rank for --max-tiles: tissue share (ties: darker first), or darkness alone.")
@click.option("--edges", type=click.Choice(["pad", "drop"]), default="pad", show_default=True, help="pad: the grid covers the whole slide (tiles past the edge padded with its glass colour); drop: whole tiles only.")
@click.option("--background", type=click.Choice(["slide", "white"]), default="slide", show_default=True, help="Glass colour for the tissue mask, padding and filters: estimated per slide, or white.")
@click.option("--thumbnail-size", type=int, default=1024, show_default=True, help="Longer side of the view the tissue mask is computed on.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Tiles filtered together.")
@click.option("--prescreen/--no-prescreen", default=True, show_default=True, help="Tiled TIFFs: skip decoding TIFF tiles whose compressed size says glass, away from tissue (checked on a lattice).")
@click.option("--workers", type=int, default=1, show_default=True, help="Slides tiled in parallel (local processes, or Dask workers with --dask local).")
@click.option("--threads", type=int, default=None, help="Decoding threads per worker [default: CPU cores / workers, at most 8].")
@click.option("--dask", "dask_address", metavar="ADDRESS", default=None, help="Run on a Dask cluster: a scheduler address (tcp://host:8786) or 'local'. --out must be on a file system every worker sees.")
@click.option("--scratch-dir", type=click.Path(file_okay=False), default=None, help="Folder for large working rasters of huge slides [default: TMPDIR].")
@click.option("--label", "labels", multiple=True, default=("CE", "LAA"), show_default=True, help="Allowed label, repeatable.")
@click.option("--require-labels", is_flag=True, help="Fail on manifest rows without a label (for a training set).")
@click.option("--overwrite", is_flag=True, help="Replace a TileSet made with different settings.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no per-slide table (failures are still listed).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def tile(slides, out, manifest, source, filters, downsample, tile_size, stride, tile_um, train_size, min_tissue, max_tiles,
         max_tiles_by, edges, background, thumbnail_size, batch_size, prescreen, workers, threads, dask_address, scratch_dir,
         labels, require_labels, overwrite, quiet, as_json) -> None:
    """Cut the slides in SLIDES into a TileSet: each slide read once, tissue mask relative to its glass,
    a grid covering it, filters, pixel cache, QC pictures. Exit 3 when some slides failed (listed)."""
    from .config import parse_component_ref
    from .errors import ConfigError, PartialFailure
    from .tiling import TileSettings, failure_message, format_summary, tile_slides

    if tile_um is not None and tile_size is not None:
        raise ConfigError(
            f"--tile-um {tile_um:g} and --tile-size {tile_size} both set the tile side: give one (--tile-um needs the slides' mpp)"
        )
    settings = TileSettings.from_values(
        downsample=downsample, tile_size=224 if tile_size is None else tile_size, stride=stride, tile_um=tile_um,
        train_size=train_size, min_tissue=min_tissue, thumbnail_size=thumbnail_size, batch_size=batch_size,
        prescreen=prescreen, edges=edges, max_tiles=max_tiles, max_tiles_by=max_tiles_by, background=background,
    )
    refs = [parse_component_ref(f, "--filter") for f in filters]
    summary = tile_slides(
        slides, out, manifest=manifest, settings=settings, filters=refs, source=source, workers=workers, threads=threads,
        overwrite=overwrite, progress=not (quiet or as_json), labels=labels, require_labels=require_labels,
        dask=dask_address, scratch_dir=scratch_dir,
    )
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        text = format_summary(summary)
        click.echo("\n".join(text.splitlines()[:2]) if quiet else text)
    if summary["failed"]:
        raise PartialFailure(failure_message(summary))


# ----------------------------------------------------------------------------- export-patches


@cli.command("export-patches")
@click.argument("slides", type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write tissue/ and background/ PNG patches into.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="CSV whose image_id column selects the slides of the SLIDES folder.")
@click.option("--per-slide", type=int, default=20, help="At most this many patches of each class per slide.")
@click.option("--size", type=int, default=224, help="Side of the saved patches in pixels (the TileSet's --train-size).")
@click.option("--tile-size", type=int, default=224, help="Patch side in pixels of the 1/downsample view (as in `clotclf tile`).")
@click.option("--downsample", type=float, default=4.0, help="View the slide at 1/downsample (as in `clotclf tile`).")
@click.option("--min-tissue", type=float, default=0.75, help="Share of a patch inside the tissue mask for it to count as tissue.")
@click.option("--thumbnail-size", type=int, default=2048, help="Longer side of the view the tissue mask is computed on.")
@click.option("--tissue-method", type=click.Choice(["saturation", "od", "either", "both"]), default="either", help="Tissue mask method (see clotclf_core.tissue).")
@click.option("--seed", type=int, default=0, help="Seed for the choice of patches.")
@click.option("--overwrite", is_flag=True, help="Replace a patch set already in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print patchset.json's content as JSON.")
def export_patches_command(slides, out, manifest, per_slide, size, tile_size, downsample, min_tissue, thumbnail_size,
                           tissue_method, seed, overwrite, quiet, as_json) -> None:
    """Cut a balanced tissue / background patch set from the slide(s) SLIDES, labelled by the
    tissue mask: the training data of `clotclf train-filter`."""
    from .patchset import export_patches

    summary = export_patches(
        slides, out, manifest=manifest, per_slide=per_slide, size=size, tile_size=tile_size, downsample=downsample,
        min_tissue=min_tissue, thumbnail_size=thumbnail_size, tissue_method=tissue_method, seed=seed,
        overwrite=overwrite, progress=not (quiet or as_json),
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


# ----------------------------------------------------------------------------- train / evaluate

from .training import cli_options as _train_options  # noqa: E402  (pydantic only: keeps start-up light)


@cli.command("train")
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

    from .training import launch_distributed, overrides_from_cli, report_table, resolve_settings, train

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


@cli.command("evaluate")
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
    from .evaluate import evaluate_run
    from .metrics import format_table
    from .training.report import headline_sentence

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


@cli.command("predict")
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
@click.option("--quiet", "-q", is_flag=True, help="No progress bars; print only the output folder (warnings and failures still).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def predict_command(slides, models, weights, out, manifest, slide_is_patient, workers, batch_size, loader_workers, device,
                    no_heatmaps, attention, quiet, as_json) -> None:
    """Classify the slides in SLIDES with one model or an ensemble (tile-level and MIL models mixed):
    tiles them with each model's own tiling settings (a MIL model on features: embeds the tiles with
    its recorded encoder), writes per-slide and per-patient probabilities (predictions.csv), a
    Kaggle-style submission.csv (patient_id,CE,LAA; one row per patient) and one heatmap per slide
    (with attention weights for a model that has them). Exit code 3 when some slides could not be
    read (listed; everything else is written)."""
    from .errors import PartialFailure
    from .predict import predict

    summary = predict(slides, models, out, manifest=manifest, weights=weights or None, workers=workers,
                      batch_size=batch_size, loader_workers=loader_workers, device=device,
                      heatmaps=not no_heatmaps, progress=not (quiet or as_json), slide_is_patient=slide_is_patient,
                      attention=attention)
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


# ----------------------------------------------------------------------------- embed


@cli.command("embed")
@click.option("--tiles", required=True, type=click.Path(file_okay=False), help="TileSet to embed (from `clotclf tile`).")
@click.option("--backbone", required=True, metavar="NAME[:k=v,...]", help="Encoder: any backbone plugin with its options, e.g. timm:model=hf-hub:ORG/NAME.")
@click.option("--backbone-opt", "backbone_opts", multiple=True, metavar="KEY=VALUE", help="Encoder option, repeatable (added to those after NAME:).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Feature store folder (created; an existing one is resumed).")
@click.option("--input-size", type=int, default=None, help="Encoder input side in pixels [default: what the encoder declares, else the tile size].")
@click.option("--batch-size", type=int, default=64, help="Tiles per forward pass (batches never cross slides).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto: CUDA (bf16) if available.")
@click.option("--seed", type=int, default=0, help="Seeds an encoder without pretrained weights (recorded).")
@click.option("--overwrite", is_flag=True, help="Replace a feature store made with another encoder or TileSet.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def embed_command(tiles, backbone, backbone_opts, out, input_size, batch_size, device, seed, overwrite, quiet, as_json) -> None:
    """Turn every tile of a TileSet into a feature vector with a frozen encoder, once, into a feature
    store (per slide: float16 matrix + tile rows; features.json records the encoder). Resumable:
    run it again to embed what is missing. See docs/data-formats.md, Feature store."""
    from .config import parse_component_ref, parse_key_values
    from .embed import embed_tileset, format_summary

    name, options = parse_component_ref(backbone, "--backbone")
    options |= parse_key_values(backbone_opts, "--backbone-opt")
    summary = embed_tileset(tiles, out, name, options, input_size=input_size, batch_size=batch_size, device=device,
                            seed=seed, overwrite=overwrite, progress=not (quiet or as_json))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif quiet:
        click.echo(summary["out"])
    else:
        click.echo(format_summary(summary))


# ----------------------------------------------------------------------------- demo data


@cli.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=str))
@click.option("--seed", type=int, default=0, help="Seed: the same seed writes the same pixels.")
@click.option("--patients", type=int, default=22, help="Number of patients (about 1.4 slides each, ~65% CE).")
@click.option("--signal", type=click.Choice(["texture", "sparse"]), default="texture",
              help="Where the label shows: the texture of the whole clot, or (sparse) a few small spots per LAA slide, listed in OUT/markers.csv.")
@click.option("--overwrite", is_flag=True, help="Replace the demo cohort in a non-empty OUT (slides/, train.csv, README.md).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the manifest path.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo_data_command(out, seed, patients, signal, overwrite, quiet, as_json) -> None:
    """Write a small synthetic STRIP-AI-like cohort to OUT: train.csv (Kaggle columns), slides/*.tif
    (tiled, pyramidal and stripped TIFFs) and a README. Synthetic: for demos and tests only."""
    from .demo_data import timed_write

    summary = timed_write(out, seed=seed, n_patients=patients, overwrite=overwrite, progress=not (quiet or as_json),
                          signal=signal)
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


def main() -> None:
    cli(prog_name="clotclf")


if __name__ == "__main__":  # pragma: no cover
    main()

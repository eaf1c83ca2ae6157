"""``clotclf push``, ``clotclf pull`` and ``clotclf list-models``: thin click wrappers over
:mod:`.api`. Heavy modules (torch, huggingface_hub) are imported inside the command bodies."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Callable

import click


def registry_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--registry / --endpoint / --namespace, shared by the three commands."""
    fn = click.option(
        "--namespace", metavar="ORG", default=None,
        help="Namespace short names live in. [default: $CLOTCLF_NAMESPACE, the config file, or 'clotclf']",
    )(fn)
    fn = click.option(
        "--endpoint", metavar="URL", default=None,
        help="Hugging Face Hub URL (enterprise hub, mirror). [default: $HF_ENDPOINT or https://huggingface.co]",
    )(fn)
    fn = click.option(
        "--registry", metavar="URL", default=None,
        help="'hub', or file:///path for a local-directory registry. [default: $CLOTCLF_REGISTRY, the config file, or hub]",
    )(fn)
    return fn


def _settings(registry: str | None, endpoint: str | None, namespace: str | None, **extra: Any):
    from .settings import load_settings

    return load_settings(registry=registry, endpoint=endpoint, namespace=namespace, **extra)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


@click.command("push")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--repo", required=True, metavar="[ORG/]NAME", help="Repository to push to; NAME alone is in the default namespace.")
@click.option("--private", is_flag=True, help="Create the repository private (pushing to an existing public one is refused).")
@click.option("--tag", metavar="TAG", default=None, help="Also tag the new commit (e.g. v1). An existing tag is an error: tags never move.")
@click.option("--message", "-m", default=None, help="Commit message. [default: 'clotclf push of RUN']")
@click.option("--no-metrics", is_flag=True, help="Publish a run that has no metrics.json (its card will show no results).")
@click.option("--include-split", is_flag=True,
              help="Also publish the split's patient identifiers (config.json's lists and split.csv). Off: counts and a salted hash only.")
@registry_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def push_command(run: str, repo: str, private: bool, tag: str | None, message: str | None, no_metrics: bool,
                 include_split: bool, registry: str | None, endpoint: str | None, namespace: str | None, as_json: bool,
                 quiet: bool) -> None:
    """Upload a run directory (weights, config, metrics, plots, model card) as one commit.

    The run is checked first: complete, weights matching config.json, and the model loads.
    What is published is redacted: no patient, slide or centre identifiers (the split is kept as
    counts and a salted hash) and no local paths, unless --include-split; the run directory itself
    keeps everything. The token comes from HF_TOKEN or `hf auth login` and is never printed.
    """
    from .api import push

    settings = _settings(registry, endpoint, namespace)
    result = push(run, repo, private=private, tag=tag, message=message, require_metrics=not no_metrics,
                  settings=settings, quiet=quiet or as_json, include_split=include_split)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
        return
    click.echo(f"pushed {run} to {result.url}")
    click.echo(f"commit {result.commit}" + (f"  (tag {result.tag})" if result.tag else "")
               + ("  (unchanged: main already had these files)" if result.unchanged else ""))
    click.echo(f"files: {', '.join(result.files)}")
    ref = f"{result.repo_id}@{result.tag or result.commit}"
    where = f" --registry {settings.registry}" if settings.registry != "hub" else (
        f" --endpoint {settings.endpoint_shown}" if endpoint else "")  # never the credentials in a URL
    click.echo(f"pull it with: clotclf pull {ref}{where}")


@click.command("pull")
@click.argument("name", metavar="NAME[@REVISION]")
@click.option("--out", type=click.Path(path_type=str), default=None,
              help="Put the model in this folder (replacing an earlier pull there) instead of the cache.")
@click.option("--force", is_flag=True, help="With --out: replace the folder even if it holds files the earlier pull did not put there.")
@click.option("--offline", is_flag=True, help="Use the cache only (same as HF_HUB_OFFLINE=1).")
@click.option("--cache-dir", metavar="DIR", default=None,
              help="Cache for pulled models. [default: $CLOTCLF_CACHE_DIR, else the huggingface_hub cache]")
@registry_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def pull_command(name: str, out: str | None, force: bool, offline: bool, cache_dir: str | None, registry: str | None,
                 endpoint: str | None, namespace: str | None, as_json: bool, quiet: bool) -> None:
    """Download a model, verify every file, check that it builds here, and say where it is.

    Every file is checked against the registry's hash (and the weights against config.json),
    only the documented layout is accepted, and config.json must build with the plugins installed
    here; otherwise nothing is kept. NAME is ORG/NAME or a short name in the default namespace;
    REVISION is a branch, a tag or a commit sha (a commit sha always gives the same bytes).
    """
    from clotclf_core.plugin import printable

    from .api import pull

    settings = _settings(registry, endpoint, namespace, cache_dir=cache_dir, offline=True if offline else None)
    result = pull(name, out=out, settings=settings, quiet=quiet or as_json, force=force)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    source = "the cache" if result.from_cache else result.registry
    click.echo(f"pulled {result.ref} (commit {result.commit}) from {source}")
    click.echo(f"path: {result.path}")
    against = "the hashes huggingface_hub named the cached files by" if result.from_cache else "the registry's hashes"
    click.echo(f"verified: {len(result.files)} files against {against}, model.safetensors (sha256 "
               f"{result.weights_sha256[:16]}…) against config.json, and config.json builds with the plugins installed here")
    if result.ignored:
        click.echo(f"not downloaded (not part of a clotclf model): {', '.join(printable(n, 80) for n in result.ignored[:5])}"
                   + (f" and {len(result.ignored) - 5} more" if len(result.ignored) > 5 else ""))
    for need in result.needs:
        state = f"installed ({need['installed_version']})" if need["installed"] else "NOT installed"
        if need["state"] == "version differs":
            state += f", saved with {need['version']}"
        click.echo(f"needs: {need['role']} '{need['name']}' from {need['distribution']} {need['version']}: {state}")
    # a name resolves with the settings of the environment, or predict's --registry; an endpoint given as an option needs the path
    use = result.path if endpoint else f"{result.repo_id}@{result.commit}" + (f" --registry {settings.registry}" if registry else "")
    click.echo(f"use it: clotclf predict SLIDES --model {use}")


@click.command("list-models")
@click.option("--namespace", metavar="ORG", default=None,
              help="Whose models to list. [default: $CLOTCLF_NAMESPACE, the config file, or 'clotclf']")
@click.option("--registry", metavar="URL", default=None, help="'hub', or file:///path. [default: $CLOTCLF_REGISTRY or hub]")
@click.option("--endpoint", metavar="URL", default=None, help="Hugging Face Hub URL. [default: $HF_ENDPOINT or https://huggingface.co]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_models_command(namespace: str | None, registry: str | None, endpoint: str | None, as_json: bool) -> None:
    """List the clotclf models of a namespace: backbone, head and the headline patient-level metric
    from each model card."""
    from .api import list_models

    settings = _settings(registry, endpoint, None)
    rows = list_models(namespace, settings=settings)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from clotclf_core.plugin import printable

    for row in rows:  # card metadata comes from the registry: shown with control characters escaped
        row["headline"] = f"{printable(row['metric'], 40)}={row['value']:.3f}" if isinstance(row["value"], (int, float)) else None
        if row.get("synthetic") and row["headline"]:
            row["headline"] += " (SYNTHETIC data)"
        row["private"] = "yes" if row["private"] else "no"
        for key in ("name", "kind", "backbone", "head", "updated"):
            row[key] = None if row.get(key) is None else printable(row[key], 60)
    if not rows:
        click.echo(f"no clotclf models in '{namespace or settings.namespace}' at {settings.registry if settings.registry != 'hub' else settings.endpoint_shown}")
        return
    click.echo(_table(rows, ["name", "kind", "backbone", "head", "headline", "private", "updated"]))


COMMANDS = (push_command, pull_command, list_models_command)

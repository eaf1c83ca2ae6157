"""Run directories without torch: file names, reading config.json, hashing weights, the
safetensors header, and what a saved model needs installed.

Kept apart from :mod:`clotclf_core.models.build` (which imports torch) so that commands which only look
at run directories — the registry's pull and list-models, say — start fast.

``config.json``'s ``plugins`` section records who provided every component of a run: the model's
(``backbone``, ``head``, …: ``{name, plugin, distribution, version}``) and the tiling pipeline's,
copied from the TileSet (``filters``: a list, ``source``). :func:`requirements` turns it into rows
(installed? which version?) and :func:`check_requirements` into the one error that says exactly
what to ``pip install``; the registry and the model card use the same two functions.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from clotclf_core.inputs import why_unusable
from clotclf_core.models.config import MODEL_KINDS
from clotclf_core.plugin.errors import ModelLoadError, printable, warn
from clotclf_core.plugin.weights import CONFIG_NAME, WEIGHTS_NAME, read_run_config
from clotclf_core.plugin_manager import get_manager

#: run kinds that are not classifiers: ``kind`` -> the component kind named by the config's key of that name
OTHER_RUN_KINDS = {"patch_filter": "filter", "backbone": "backbone"}
#: a safetensors header larger than this is refused (real ones are kilobytes)
MAX_HEADER_BYTES = 64 * 2**20
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's config.json, with its ``model`` section an object (:func:`~clotclf_core.plugin.weights.read_run_config`)."""
    data = read_run_config(run_dir)
    path = Path(run_dir) / CONFIG_NAME
    if "model" not in data:
        raise ModelLoadError(f"'{path}' has no 'model' section: it is not a clotclf model config")
    if not isinstance(data["model"], dict):
        raise ModelLoadError(f"'{path}': its 'model' section is {type(data['model']).__name__}, not an object; re-create the run directory")
    return data


def resolve_run_dir(ref: str | Path) -> Path:
    """A local run directory for ``ref``: an existing folder, or a name a plugin (the registry)
    resolves (``org/name@v1``). A reference that may be a path the user meant
    (:func:`clotclf_core.plugin.hub.path_reason`: ``runs/cct-final`` beside a ``runs`` folder,
    ``./x``, ``a/b/c``…) is never asked of a plugin: it is a folder that does not exist."""
    from clotclf_core.plugin.hub import path_reason

    p = Path(ref)
    if p.is_dir():
        return p
    mgr = get_manager()
    reason = path_reason(str(ref))
    if reason is None:
        resolved = mgr.resolve_model(str(ref))
        if resolved is not None:
            return Path(resolved)

    why = why_unusable(p) or ("is a file, not a run directory" if p.exists() else "does not exist")
    if reason is not None:
        raise ModelLoadError(
            f"model '{printable(ref)}' is not a run directory: the path {why}{_nearby(p)}. It is read as a path ({reason}), "
            "never as a registry name: give the path of a run directory (from `clotclf train`), or a registry name "
            "ORG/NAME[@REVISION]"
        )
    if mgr.pm.hook.clotclf_resolve_model.get_hookimpls():  # a resolver (the registry) is installed: it did not know it
        hint = ("give the path of a run directory (from `clotclf train`), or a registry name such as org/name[@revision] "
                "(`clotclf list-models` lists them)")
    else:
        hint = "give the path of a run directory (from `clotclf train`), or install clotclf's registry to pull models by name"
    raise ModelLoadError(f"model '{printable(ref)}' is neither a run directory nor a name an installed plugin knows: the path "
                         f"{why}{_nearby(p)}; {hint}")


def _nearby(path: Path) -> str:
    """`` (did you mean 'runs/cct-final2'?)`` when the folder ``path`` would be in has one of a close name."""
    import difflib

    folder = path.parent
    try:
        names = [e.name for e, _ in zip(folder.iterdir(), range(2000)) if e.is_dir()] if folder.is_dir() else []
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(str(folder / c)) for c in close)}?)" if close else ""


# ----------------------------------------------------------------------------- fold ensembles

#: what ``clotclf train --fold all`` writes beside its ``fold_<k>/`` run directories when every fold is done
CV_NAME = "cv.json"
#: ``config.json``'s ``kind`` of a pushed (or pulled) cross-validation run: ``{"kind": "fold_ensemble", "folds": [...]}``
FOLD_ENSEMBLE_KIND = "fold_ensemble"
_FOLD_NAME = re.compile(r"^fold_(\d+)$")


def _listed_folds(run_dir: Path) -> tuple[Any, Path] | None:
    """``(the fold list, the file listing it)`` of a cross-validation folder, or None when it lists none."""
    config = run_dir / CONFIG_NAME
    if config.is_file():
        data = read_run_config(run_dir)
        return (data.get("folds"), config) if data.get("kind") == FOLD_ENSEMBLE_KIND else None
    cv = run_dir / CV_NAME
    if not cv.is_file():
        return None
    try:
        return json.loads(cv.read_text(encoding="utf-8")).get("folds"), cv
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise ModelLoadError(f"'{cv}' is not the JSON object `clotclf train --fold all` writes ({exc}); "
                             "re-run that training with --resume") from None


def fold_runs(run_dir: str | Path) -> list[Path] | None:
    """The fold run directories of a cross-validation run folder (``clotclf train --fold all``), in
    fold order — the **fold ensemble** that ``predict``, ``evaluate`` and ``push`` take as one model
    (the mean of the folds' probabilities, as the run's own test-ensemble headline) — or ``None``
    when ``run_dir`` is a single model's run directory (or not a run at all).

    The one reader of that layout: the folds are the ones listed — by ``cv.json`` (what training
    writes once every fold is done) or, in a pushed / pulled copy, by a ``config.json`` of kind
    ``fold_ensemble`` (:mod:`clotclf_registry.ensemble`) — ``fold_<k>`` folders directly inside
    ``run_dir``, nothing else, each a complete run directory. A folder with ``fold_<k>/`` but no
    list is a cross-validation that did not finish, refused with the fix, as is a listed fold
    without its weights."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or (run_dir / WEIGHTS_NAME).is_file():
        return None
    found = _listed_folds(run_dir)
    if found is None:
        present = sorted((p for p in run_dir.iterdir() if _FOLD_NAME.match(p.name) and p.is_dir()),
                         key=lambda p: int(_FOLD_NAME.match(p.name)[1]))
        if not present:
            return None
        raise ModelLoadError(
            f"'{run_dir}' is a cross-validation run that did not finish ({', '.join(p.name for p in present)} but no "
            f"{CV_NAME}): finish it with the same `clotclf train ... --fold all --resume`, or name one finished fold "
            f"folder, e.g. {present[0]}")
    listed, source = found
    if not isinstance(listed, list) or not listed or not all(isinstance(n, str) and _FOLD_NAME.match(n) for n in listed):
        raise ModelLoadError(f"'{source}' lists no fold folders (its 'folds' must be names like fold_0): it does not come "
                             "from `clotclf train --fold all`; name the fold folders themselves")
    folds = [run_dir / name for name in listed]
    unfinished = [p.name for p in folds if not ((p / WEIGHTS_NAME).is_file() and (p / CONFIG_NAME).is_file())]
    if unfinished:
        raise ModelLoadError(
            f"the cross-validation run '{run_dir}' lists {', '.join(unfinished)}, which "
            f"{'has' if len(unfinished) == 1 else 'have'} no {WEIGHTS_NAME} and {CONFIG_NAME}: finish the run with "
            "`clotclf train ... --fold all --resume`, or name the finished fold folders")
    return folds


def fold_ensemble_split(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The split of a fold ensemble, from its folds' config.json: a patient is ``train`` when any fold
    trained on it, ``val`` when a fold chose its epoch on it and none trained on it, ``test`` when it
    is every fold's test patient; so "unseen" patients of the ensemble are ones no fold ever learnt."""
    splits = [c.get("split") if isinstance(c.get("split"), dict) else {} for c in configs]
    if any(s.get("redacted") for s in splits):
        return {"redacted": True, "strategy": "fold ensemble"}

    def side(s: dict[str, Any], name: str) -> set[str]:
        return {str(p) for p in s.get(name) or []}

    train = set().union(*(side(s, "train") for s in splits)) if splits else set()
    val = set().union(*(side(s, "val") for s in splits)) - train if splits else set()
    test = set.intersection(*(side(s, "test") for s in splits)) - train - val if splits else set()
    return {"strategy": "fold ensemble", "n_folds": len(configs), "train": sorted(train), "val": sorted(val),
            "test": sorted(test)}


# ----------------------------------------------------------------------------- safetensors header


def read_safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{tensor name: (dtype, shape)}`` from a safetensors file's header, without torch and
    without reading the tensors. Every entry is checked (dtype known, offsets inside the file and
    matching dtype x shape, no overlap); anything else raises :class:`ModelLoadError`."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelLoadError(f"'{path}' is not a safetensors file (it is {size} bytes long)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise ModelLoadError(f"'{path}' is not a valid safetensors file: its header claims {length} bytes (the file has {size})")
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"'{path}' is not a valid safetensors file: its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"'{path}' is not a valid safetensors file: its header is not a JSON object")
    data_size = size - 8 - length
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in entry.items()):
                raise ModelLoadError(f"'{path}': __metadata__ must map strings to strings")
            continue
        ok = isinstance(entry, dict) and entry.get("dtype") in _DTYPE_BYTES and isinstance(entry.get("shape"), list) \
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"]) \
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2 \
            and all(isinstance(o, int) and not isinstance(o, bool) for o in entry["data_offsets"])
        if not ok:
            raise ModelLoadError(f"'{path}' is not a valid safetensors file: tensor {printable(name, 80)!r} has a malformed entry")
        start, end = entry["data_offsets"]
        numel = 1
        for d in entry["shape"]:
            numel *= d
        if not 0 <= start <= end <= data_size or end - start != numel * _DTYPE_BYTES[entry["dtype"]]:
            raise ModelLoadError(
                f"'{path}' is not a valid safetensors file: tensor {printable(name, 80)!r} points outside the file or does "
                "not match its shape (truncated or corrupted)"
            )
        spans.append((start, end))
        out[name] = (entry["dtype"], tuple(entry["shape"]))
    spans.sort()
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
        raise ModelLoadError(f"'{path}' is not a valid safetensors file: two tensors share bytes")
    return out


def header_numel(header: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    total = 0
    for _, shape in header.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


# ----------------------------------------------------------------------------- what a run needs


def _plugins_section(config: dict[str, Any]) -> dict[str, Any]:
    recorded = config.get("plugins")
    return recorded if isinstance(recorded, dict) else {}


def component_records(config: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """``(kind, name, recorded provider)`` of each component needed to *rebuild* the model."""
    recorded = _plugins_section(config)
    kind = config.get("kind")
    if kind in OTHER_RUN_KINDS:
        comp = OTHER_RUN_KINDS[kind]
        info = recorded.get(comp) if isinstance(recorded.get(comp), dict) else None
        name = config.get(comp) or (info or {}).get("name")
        return [(comp, str(name), info)] if name else []
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    out = []
    for comp in MODEL_KINDS:
        name = model.get(comp)
        if name:
            info = recorded.get(comp)
            out.append((comp, str(name), info if isinstance(info, dict) else None))
    for comp, info in recorded.items():  # kinds added later that this version does not list
        if comp not in MODEL_KINDS and comp not in ("filters", "source", "sources", "encoder") and isinstance(info, dict) \
                and model.get(comp) and not any(c == comp for c, _, _ in out):
            out.append((comp, str(model[comp]), info))
    return out


def pipeline_records(config: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """``(kind, name, recorded provider)`` of the tiling pipeline the model was trained on (filters,
    source): not needed to load the model, but to tile new slides the way it saw them."""
    recorded = _plugins_section(config)
    out = []
    for entry in recorded.get("filters") or []:
        if isinstance(entry, dict) and entry.get("name"):
            out.append(("filter", str(entry["name"]), entry))
    sources = recorded.get("sources") or ([recorded["source"]] if isinstance(recorded.get("source"), dict) else [])
    for entry in sources:
        if isinstance(entry, dict) and entry.get("name"):
            out.append(("source", str(entry["name"]), entry))
    return out


def encoder_records(config: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """``(kind, name, recorded provider)`` of a MIL model's frozen encoder (a backbone): not part
    of the model's weights, but needed to turn new slides' tiles into the features it takes."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    encoder = model.get("encoder")
    if not isinstance(encoder, dict) or not encoder.get("backbone"):
        return []
    info = _plugins_section(config).get("encoder")
    return [("backbone", str(encoder["backbone"]), info if isinstance(info, dict) else None)]


def recorded_components(config: dict[str, Any], pipeline: bool = True) -> list[dict[str, Any]]:
    """What config.json records about each component, without asking what is installed here:
    ``part`` (``model`` / ``tiling``), ``role``, ``name``, ``plugin``, ``distribution``, ``version``."""
    records = [("model", *r) for r in component_records(config)]
    if pipeline:
        records += [("encoder", *r) for r in encoder_records(config)] + [("tiling", *r) for r in pipeline_records(config)]
    rows = []
    for part, kind, name, info in records:
        info = info or {}
        rows.append({"part": part, "role": kind, "name": printable(name.split("/")[-1], 80),
                     **{k: printable(info.get(k) or "?", 80) for k in ("plugin", "distribution", "version")}})
    return rows


def _row(kind: str, name: str, info: dict[str, Any] | None, part: str, trusted: bool = True) -> dict[str, Any]:
    row = get_manager().requirement(kind, name, info, trusted)
    row.pop("spec", None)
    row["installed"] = row["state"] in ("ok", "version differs")
    row["part"] = part
    row["name"] = printable(row["name"], 80)
    for key in ("plugin", "distribution", "version"):
        row[key] = printable(row[key], 80) if row[key] is not None else None
    row["fix"] = printable(row["fix"], 600)  # quotes the recorded names: text from a config that may come from elsewhere
    return row


def requirements(config: dict[str, Any], pipeline: bool = False, trusted: bool = True) -> list[dict[str, Any]]:
    """One row per component the run needs: ``role, name, plugin, distribution, version`` (as
    recorded), ``installed``, ``installed_version``, ``state`` and ``fix`` (see
    :meth:`clotclf_core.plugin_manager.PluginManager.requirement`); ``part`` is ``model`` or, with
    ``pipeline``, ``encoder`` for a MIL model's frozen encoder and ``tiling`` for the filters and
    source the TileSet was made with. ``trusted``: the config is the user's own; ``False`` for one
    from elsewhere (a pulled model), whose distribution names get no ``pip install`` unless clotclf
    knows them (:func:`clotclf_core.plugin_manager.install_advice`)."""
    rows = [_row(k, n, i, "model", trusted) for k, n, i in component_records(config)]
    if pipeline:
        rows += [_row(k, n, i, "encoder", trusted) for k, n, i in encoder_records(config)]
        rows += [_row(k, n, i, "tiling", trusted) for k, n, i in pipeline_records(config)]
    return rows


def check_requirements(config: dict[str, Any], label: str, warn_versions: bool = True,
                       trusted: bool = True) -> list[dict[str, Any]]:
    """:func:`requirements` of the model part; raises one :class:`ModelLoadError` naming every
    component that is missing (with the exact ``pip install``, for a ``trusted`` config or a
    distribution clotclf knows); warns when a recorded version differs from the installed one."""
    rows = requirements(config, trusted=trusted)
    if not rows:
        raise ModelLoadError(f"model '{printable(label)}': its {CONFIG_NAME} names no components (no model.backbone or model.aggregator)")
    missing = [r for r in rows if not r["installed"]]
    if missing:
        what = "; ".join(
            f"{r['role']} '{r['name']}' from distribution {r['distribution']}"
            + (f" {r['version']}" if r["version"] != "?" else "") + f", which is {r['state']}: {r['fix']}"
            for r in missing
        )
        raise ModelLoadError(f"model '{printable(label)}' needs {what} (then check with `clotclf list-plugins`)")
    if warn_versions:
        for r in rows:
            if r["state"] == "version differs":
                warn(f"model '{printable(label)}' was saved with {r['role']} '{r['name']}' from {r['distribution']} "
                     f"{r['version']}; {r['installed_version']} is installed. If it does not load or behaves differently, "
                     f"{r['fix']}")
    return rows


def install_command(rows: list[dict[str, Any]]) -> str | None:
    """One ``pip install`` line for the distributions in ``rows`` at their recorded versions."""
    pins = []
    for r in rows:
        dist = r.get("distribution")
        if not dist or dist == "?":
            continue
        pin = f"{dist}=={r['version']}" if r.get("version") not in (None, "?") else dist
        if pin not in pins:
            pins.append(pin)
    return "pip install " + " ".join(f"'{p}'" for p in pins) if pins else None


def pipeline_provenance(tileset: dict[str, Any] | None) -> dict[str, Any]:
    """The ``filters`` / ``source`` part of config.json's ``plugins`` from a TileSet's record
    (``train``'s ``tileset`` section: ``plugins`` if the TileSet recorded providers, else its
    ``settings``). Older TileSets name filters without a distribution: the currently installed
    provider is recorded then, marked ``"recorded_by": "train"``."""
    if not isinstance(tileset, dict):
        return {}
    settings = tileset.get("settings") if isinstance(tileset.get("settings"), dict) else {}
    given = tileset.get("plugins") if isinstance(tileset.get("plugins"), dict) else {}
    out: dict[str, Any] = {}
    filters = given.get("filters") if isinstance(given.get("filters"), list) else settings.get("filters")
    if isinstance(filters, list):
        out["filters"] = [_provider_entry("filter", f) for f in filters if isinstance(f, dict) and f.get("name")]
    source = given.get("sources") or given.get("source") or settings.get("sources") or settings.get("source")
    entries = source if isinstance(source, list) else [source]
    sources = [_provider_entry("source", s if isinstance(s, dict) else {"name": s}) for s in entries
               if (isinstance(s, dict) and s.get("name")) or (isinstance(s, str) and s and s != "auto")]
    if sources:
        out["sources"] = sources
    return out


def _provider_entry(kind: str, entry: dict[str, Any]) -> dict[str, Any]:
    keep = {k: entry[k] for k in ("name", "plugin", "distribution", "version") if entry.get(k)}
    if "distribution" in keep:
        return keep
    try:
        spec = get_manager().get(kind, str(entry["name"]))
    except Exception:  # noqa: BLE001 - not installed any more: record the name only
        return keep | {"recorded_by": "train"}
    return {"name": spec.name, "plugin": spec.plugin, "distribution": spec.distribution, "version": spec.version,
            "recorded_by": "train"}

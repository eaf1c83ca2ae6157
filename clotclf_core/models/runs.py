"""Run directories without torch: file names, reading config.json, fold ensembles and the
safetensors header.

Kept apart from :mod:`clotclf_core.models.build` (which imports torch) so that commands which only look
at run directories — the registry's pull and list-models, say — start fast.

What a run needs installed (the ``plugins`` section of its config.json) is
:mod:`clotclf_core.models.requirements`.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from clotclf_core.inputs import why_unusable
from clotclf_core.plugin.errors import ModelLoadError, printable
from clotclf_core.plugin.weights import CONFIG_NAME, WEIGHTS_NAME, read_run_config
from clotclf_core.plugin_manager import get_manager

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

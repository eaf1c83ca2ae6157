"""What a push publishes: no patient, slide or centre identifiers and no local paths, unless asked.

A run directory keeps everything (training needs the split; a user reads their own paths). A push
uploads a redacted copy of the text files instead (:func:`redact_run`):

- ``config.json``'s ``split`` keeps its counts and strategy, and each patient list (``train``,
  ``val``, ``test``) becomes ``patients_sha256``: the sha256 of ``salt + "\\n".join(sorted(ids))``,
  with the salt (the first 32 hex digits of the weights' sha256) beside it, so the owner can
  check a split file against a published model without anyone learning who was in it;
- every absolute path (``tileset.path``, ``training.out``, ``training.tiles``, a filter's
  ``weights=``…) becomes its last component, in config.json and metrics.json, and in the card's
  text; a path under the home folder loses the home folder; so do the relative paths of the
  run's own path settings (``training.out = runs/study-x/r1`` becomes ``r1``);
- ``split.csv`` is not pushed;
- the per-centre tables of ``metrics.json`` (and so of the card) name the centres ``centre A``,
  ``centre B``… (in the order of their identifiers) instead of by their identifiers
  (:func:`anonymise_centres`).

``--include-split`` keeps the split lists and ``split.csv`` (paths are still redacted), with a
warning. Then every identifier the run knows of — its split, the ``image_id`` / ``patient_id`` /
``center_id`` columns of its ``predictions_*.csv`` and of its TileSet's ``tiles.csv`` (a MIL run:
its feature store's ``features.json``) when that is still there — is looked for in what would be published; one left anywhere refuses the push
(:class:`IdentifierLeft`), naming where.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Iterator

from clotclf_core.plugin import printable

from .errors import RegistryError

SPLIT_KEYS = ("train", "val", "test")
ID_COLUMNS = ("image_id", "patient_id", "center_id")
#: identifiers shorter than this are only matched as a whole value, never inside text
MIN_TOKEN = 4
_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")


class IdentifierLeft(RegistryError):
    """What would be published still holds patient, slide or centre identifiers."""


@dataclass
class Redaction:
    """The redacted texts and what was done."""

    config: dict[str, Any]
    texts: dict[str, bytes] = field(default_factory=dict)  #: repo name -> redacted bytes (config.json, metrics.json, README.md)
    paths: int = 0  #: absolute paths replaced
    split_patients: int = 0  #: patient identifiers kept out (0 with include_split)
    kept_identifiers: int = 0  #: identifiers published knowingly (include_split)


def is_absolute_path(text: str) -> bool:
    return (len(text) > 1 and PurePosixPath(text).is_absolute() and "\n" not in text) or bool(_WINDOWS_ABS.match(text)) \
        or text.startswith("~/") or text.startswith("file:///")


def _redacted_path(text: str, home: str) -> str:
    if text.startswith("file://"):
        text = text[len("file://"):]
    if home and (text == home or text.startswith(home.rstrip("/") + "/")):
        return "~" + text[len(home.rstrip("/")):]
    name = PureWindowsPath(text).name if _WINDOWS_ABS.match(text) else PurePosixPath(text).name
    return name or "(path)"


def _walk(obj: Any, where: str = "") -> Iterator[tuple[str, Any, Any, Any]]:
    """``(where, container, key, value)`` of every value in ``obj`` (dict keys included as values)."""
    if isinstance(obj, dict):
        for key, value in list(obj.items()):
            yield (f"{where}.{key}" if where else str(key)), obj, key, value
            yield from _walk(value, f"{where}.{key}" if where else str(key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield f"{where}[{i}]", obj, i, value
            yield from _walk(value, f"{where}[{i}]")


def redact_paths(obj: Any, home: str) -> tuple[Any, dict[str, str]]:
    """A copy of ``obj`` with every absolute-path string replaced; also the replacements made."""
    out = copy.deepcopy(obj)
    done: dict[str, str] = {}
    for _, container, key, value in list(_walk(out)):
        if isinstance(value, str) and is_absolute_path(value):
            container[key] = done.setdefault(value, _redacted_path(value, home))
    return out, done


#: settings that name local folders or files even when relative (``runs/study-x/r1``): published
#: as their last component, like absolute paths
PATH_FIELDS = (("training", "tiles"), ("training", "out"), ("training", "demo_dir"), ("training", "split_file"),
               ("tileset", "path"))


def redact_relative_paths(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``config`` with the relative paths of :data:`PATH_FIELDS` cut to their last component."""
    out, done = copy.deepcopy(config), {}
    for section, key in PATH_FIELDS:
        value = out.get(section, {}).get(key) if isinstance(out.get(section), dict) else None
        if isinstance(value, str) and ("/" in value.strip("/") or "\\" in value) and not is_absolute_path(value):
            out[section][key] = done.setdefault(value, PureWindowsPath(value).name or "(path)")
    return out, done


def split_hash(ids: list[str], salt: str) -> str:
    return hashlib.sha256((salt + "\n" + "\n".join(sorted(str(i) for i in ids))).encode("utf-8")).hexdigest()


def redact_split(config: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``config`` with the split's patient lists replaced by counts and salted hashes."""
    split = config.get("split")
    if not isinstance(split, dict) or not any(isinstance(split.get(k), list) for k in SPLIT_KEYS):
        return config, 0
    salt = str(config.get("weights_sha256") or "")[:32]
    redacted = {k: v for k, v in split.items() if k not in SPLIT_KEYS}
    hashes, n = {}, 0
    for key in SPLIT_KEYS:
        if isinstance(split.get(key), list):
            hashes[key] = split_hash(split[key], salt)
            redacted.setdefault(f"n_{key}_patients", len(split[key]))
            n += len(split[key])
    redacted |= {"redacted": True, "patients_sha256": hashes, "salt": salt,
                 "hash_rule": "sha256(salt + '\\n' + '\\n'.join(sorted(patient_ids)))"}
    return {**config, "split": redacted}, n


# ----------------------------------------------------------------------------- identifiers


def known_identifiers(run_dir: Path, config: dict[str, Any]) -> set[str]:
    """Every patient, slide and centre identifier the run directory knows of."""
    ids: set[str] = set()
    split = config.get("split") if isinstance(config.get("split"), dict) else {}
    for key in SPLIT_KEYS:
        if isinstance(split.get(key), list):
            ids |= {str(i) for i in split[key]}
    split_json = run_dir / "split.json"
    if split_json.is_file():
        try:
            # the identifiers are the members of its lists (test, folds[].train / val); settings such
            # as "group_by": "patient" are not identifiers
            ids |= {str(v) for _, container, _, v in _walk(json.loads(split_json.read_text(encoding="utf-8")))
                    if isinstance(container, list) and isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip()}
        except (ValueError, UnicodeDecodeError):
            pass
    tables = sorted(run_dir.glob("predictions*.csv"))
    tileset = config.get("tileset") if isinstance(config.get("tileset"), dict) else {}
    if isinstance(tileset.get("path"), str) and (Path(tileset["path"]) / "tiles.csv").is_file():
        tables.append(Path(tileset["path"]) / "tiles.csv")
    features = config.get("features") if isinstance(config.get("features"), dict) else {}
    store = Path(features["path"]) / "features.json" if isinstance(features.get("path"), str) else None
    if store is not None and store.is_file():  # a MIL run's feature store lists every slide (ids, patients, centres)
        try:
            slides = json.loads(store.read_text(encoding="utf-8")).get("slides") or {}
            for image_id, entry in slides.items():
                ids.add(str(image_id))
                ids |= {str(entry[c]) for c in ID_COLUMNS if isinstance(entry, dict) and entry.get(c) not in (None, "")}
        except (OSError, ValueError, AttributeError):
            pass
    for table in tables:
        try:
            with open(table, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    ids |= {str(row[c]).strip() for c in ID_COLUMNS if row.get(c) not in (None, "")}
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
    return {i for i in ids if i and i.lower() not in ("nan", "none", "null", "-", "?")}


def _centre_rows(obj: Any) -> Iterator[dict[str, Any]]:
    """Every row of every ``per_center`` table in a metrics.json (a list, or a dict of lists), at any depth."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "per_center":
                for table in (value.values() if isinstance(value, dict) else [value]):
                    yield from (r for r in (table if isinstance(table, list) else []) if isinstance(r, dict) and "center_id" in r)
            else:
                yield from _centre_rows(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _centre_rows(value)


def anonymise_centres(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` (metrics.json) with every per-centre table's ``center_id`` replaced by ``centre A``,
    ``centre B``… — one letter per identifier (in their sorted order), the same in every table."""
    out = copy.deepcopy(metrics)
    rows = list(_centre_rows(out))
    names = sorted({str(r["center_id"]) for r in rows})
    letter = {n: "centre " + (chr(65 + i) if i < 26 else str(i + 1)) for i, n in enumerate(names)}
    for r in rows:
        r["center_id"] = letter[str(r["center_id"])]
    return out


def anonymise_centre_rows(card: str, metrics: dict[str, Any]) -> str:
    """The card's per-centre table rows (``| <center_id> | <patients> |``, as clotclf writes them)
    with the letters :func:`anonymise_centres` gives ``metrics``' centres."""
    anonymous = list(_centre_rows(anonymise_centres(metrics)))
    for row, anon in zip(_centre_rows(metrics), anonymous):
        n = row.get("n_patients")
        card = card.replace(f"| {row['center_id']} | {n} |", f"| {anon['center_id']} | {n} |")
    return card


def _scannable(ident: str) -> bool:
    """Identifiers worth looking for: not a one- or two-character value, not a number under 1000
    (centre ``3`` or slide ``12`` would match every count)."""
    return len(ident) >= 3 and not (ident.isdigit() and len(ident) < 4)


class _Finder:
    def __init__(self, ids: set[str]):
        self.exact = {i for i in ids if _scannable(i)}
        long = sorted((i for i in self.exact if len(i) >= MIN_TOKEN), key=len, reverse=True)
        self.pattern = re.compile("(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, long)) + ")(?![A-Za-z0-9])") if long else None

    def in_value(self, text: str) -> str | None:
        """An identifier that is ``text``, or (4+ characters) a word of it."""
        if text.strip() in self.exact:
            return text.strip()
        if self.pattern is not None and (m := self.pattern.search(text)):
            return m.group(0)
        return None

    def in_line(self, line: str) -> str | None:
        """Also a table cell or list item that is an identifier (short ones only match whole)."""
        for cell in re.split(r"[|,;\t]", line):
            if (hit := self.in_value(cell.strip().strip("`*_'\"[]() "))):
                return hit
        return None


def find_identifier(obj: Any, ids: set[str], text: str | None = None) -> tuple[str, str] | None:
    """The first ``(identifier, where)`` of ``ids`` in ``obj`` (a JSON value: keys and strings) or
    in ``text`` (line by line)."""
    finder = _Finder(ids)
    if not finder.exact:
        return None
    if text is not None:
        for n, line in enumerate(text.splitlines(), start=1):
            if (hit := finder.in_line(line)):
                return hit, f"line {n}"
        return None
    for where, container, key, value in _walk(obj):
        candidates = ([key] if isinstance(container, dict) else []) + ([value] if isinstance(value, str) else [])
        for candidate in candidates:
            if isinstance(candidate, str) and (hit := finder.in_value(candidate)):
                return hit, where
    return None


# ----------------------------------------------------------------------------- the whole run


def _replace_all(text: str, replacements: dict[str, str]) -> str:
    for old in sorted(replacements, key=len, reverse=True):
        text = text.replace(old, replacements[old])
    return text


def redact_run(run_dir: Path, config: dict[str, Any], texts: dict[str, bytes], include_split: bool = False,
               more_texts: Callable[[dict[str, Any]], dict[str, bytes]] | None = None) -> Redaction:
    """Redact ``config`` and the other published ``texts`` (repo name -> bytes: metrics.json,
    history.csv…); ``more_texts(redacted config)`` adds texts made from the redacted config (the
    model card). Refuses (:class:`IdentifierLeft`) if identifiers remain."""
    home = str(Path.home())
    ids = known_identifiers(run_dir, config)
    redacted, n_split = (config, 0) if include_split else redact_split(config)
    redacted, paths = redact_paths(redacted, home)
    redacted, relative = redact_relative_paths(redacted)
    paths |= relative
    replacements = dict(paths)
    texts = dict(texts) | (more_texts(redacted) if more_texts else {})
    out: dict[str, bytes] = {}
    for name, data in texts.items():
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            out[name] = data
            continue
        if name.endswith(".json"):
            try:
                obj, more = redact_paths(json.loads(text), home)
            except ValueError:
                obj, more = None, {}
            if obj is not None:
                replacements |= more
                out[name] = (json.dumps(obj, indent=2) + "\n").encode("utf-8")
                continue
        out[name] = _replace_all(text, replacements).encode("utf-8")
    # what the card or the metrics quote of the paths (even inside longer text) goes too
    for name, data in list(out.items()):
        text = data.decode("utf-8", "replace")
        replaced = _replace_all(text, replacements)
        if home and len(home) > 1:
            replaced = re.sub(re.escape(home.rstrip("/")) + r"(?=/|\b)", "~", replaced)
        if replaced != text:
            out[name] = replaced.encode("utf-8")
    result = Redaction(redacted, out, len(paths), n_split, len(ids) if include_split else 0)
    if include_split:
        return result
    hit = find_identifier(redacted, ids)
    if hit:
        raise IdentifierLeft(
            f"cannot push '{run_dir}': its config.json would still hold the identifier {printable(repr(hit[0]), 60)} at "
            f"{printable(hit[1], 80)} after redaction (patient, slide and centre identifiers are never published by "
            "default); nothing was pushed. Remove it from that field, or publish identifiers knowingly with --include-split"
        )
    for name, data in out.items():
        text = data.decode("utf-8", "replace")
        hit = find_identifier(None, ids, text) if not name.endswith(".json") else find_identifier(json.loads(text), ids)
        if hit:
            raise IdentifierLeft(
                f"cannot push '{run_dir}': its {name} holds the identifier {printable(repr(hit[0]), 60)} ({printable(hit[1], 80)}), "
                "and patient, slide and centre identifiers are never published by default; nothing was pushed. Remove it "
                "there, or publish identifiers knowingly with --include-split"
            )
    return result

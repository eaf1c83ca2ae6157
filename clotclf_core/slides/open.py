"""Opening slides: pick a source plugin for a file, and find a slide file by image id.

- :func:`open_slide` opens a slide with a named source (``source="openslide"``) or, by default,
  with the best installed source for that file: every source whose ``can_open`` says yes is
  ranked by its optional ``priority(path)`` (higher first; the built-in ``tifffile`` source ranks
  single-level TIFFs above ``openslide``, which must decode a whole level for a thumbnail, and
  generic pyramidal TIFFs too, whose tiles it decodes straight to RGB; ``openslide`` ranks SVS and
  the other vendor pyramids highest); if the best one fails, the next is tried.
- :func:`find_slide` turns a manifest's ``image_id`` into ``<folder>/<image_id>.<ext>`` for any
  extension an installed source declares (``ComponentSpec.extra["extensions"]``); :func:`slide_files`
  lists a folder's slide files by the same extensions; :class:`SlideFolder` finds many ids with
  one listing of the folder (a manifest of 1,000,000 rows). A slide that is not found is said in
  words: a name that differs only in its Unicode form (NFC / NFD), a symlink loop, a folder.

The region engine sources share (``read_region`` from decoded blocks) is part of the plugin API:
:mod:`clotclf_core.plugin.regions`.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

from clotclf_core.plugin.errors import ClotclfError, SlideReadError, SlideUnusable

#: file suffixes picked up when a folder is listed, if no installed source declares any
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")

# ----------------------------------------------------------------------------- choosing a source


def _source_label(spec: Any, duplicated: set[str]) -> str:
    return f"{spec.plugin}/{spec.name}" if spec.name in duplicated else spec.name


def open_slide(path: str | os.PathLike, source: str | None = None, options: dict[str, Any] | None = None,
               trust_declared_size: bool = False):
    """Open ``path`` as a :class:`clotclf_core.plugin.protocols.Slide`.

    ``source``: a source name (``openslide``, ``tifffile``, or ``plugin/name``) or None to choose
    automatically. ``options``: that source's options (validated against its options model);
    options need an explicit ``source``, since they differ from source to source. Whichever source
    reads it, the file is checked first (:func:`clotclf_core.slides.guard.check_slide_file`: a
    regular file, a TIFF header its bytes can hold, declared sizes within the memory caps unless
    ``trust_declared_size``).
    """
    from clotclf_core.plugin_manager import get_manager
    from clotclf_core.slides.guard import check_slide_file

    p = Path(path)
    check_slide_file(p, trust_declared_size)
    mgr = get_manager()
    if source is not None:
        spec = mgr.get("source", source)
        reader = spec.factory(spec.validate_options(options))
        return _open_with(reader, spec.name, p)
    if options:
        raise ClotclfError(
            f"source options {sorted(options)} were given without a source: name the source they belong to "
            "(e.g. --source openslide:cache_mb=128)"
        )
    specs = mgr.components("source")
    if not specs:
        raise SlideReadError("no slide source plugin is installed: see `clotclf list-plugins --kind source`")
    names = [s.name for s in specs]
    duplicated = {n for n in names if names.count(n) > 1}
    reasons: dict[str, str] = {}
    ranked: list[tuple[float, str, Any]] = []
    for spec in specs:
        label = _source_label(spec, duplicated)
        try:
            reader = spec.factory(spec.validate_options({}))
            if not reader.can_open(str(p)):
                reasons[label] = "does not recognise this file format"
                continue
            rank_fn = getattr(reader, "priority", None)
            rank = float(rank_fn(str(p))) if rank_fn is not None else 0.0
        except SlideUnusable as exc:  # broken (or a stack) for every reader: say so now, do not try the others
            raise type(exc)(str(exc)) from None
        except Exception as exc:  # a broken third-party source must not hide the others
            reasons[label] = f"{type(exc).__name__}: {exc}"
            continue
        ranked.append((rank, label, reader))
    ranked.sort(key=lambda item: (-item[0], item[1]))
    for _, label, reader in ranked:
        try:
            return _open_with(reader, label, p)
        except ClotclfError as exc:
            reasons[label] = str(exc)
    why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
    raise SlideReadError(
        f"no installed source can read slide '{p}' (tried {why}). If the file was copied, check it is "
        "complete (a truncated copy fails like this); otherwise convert it to a tiled TIFF "
        "(e.g. `vips tiffsave in out.tif --tile --pyramid`)."
    )


def _open_with(reader: Any, label: str, path: Path):
    try:
        return reader.open(str(path))
    except ClotclfError:
        raise
    except Exception as exc:  # a third-party source that raised something else
        raise SlideReadError(f"source '{label}' failed to open slide '{path}': {type(exc).__name__}: {exc}") from exc


def slide_extensions() -> list[str]:
    """File extensions (lower case, with the dot) that installed sources declare they read."""
    from clotclf_core.plugin_manager import get_manager

    exts: set[str] = set()
    for spec in get_manager().components("source"):
        exts.update(str(e).lower() for e in spec.extra.get("extensions", ()))
    return sorted(exts)


def slide_files(folder: str | os.PathLike) -> list[Path]:
    """Slide files directly in ``folder``, sorted: the extensions installed sources declare (else
    :data:`SLIDE_SUFFIXES`)."""
    exts = set(slide_extensions()) or set(SLIDE_SUFFIXES)
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in exts)


def find_slide(folder: str | os.PathLike, image_id: str) -> Path:
    """The slide file ``<folder>/<image_id>.<ext>`` for ``image_id`` (a manifest row).

    ``ext`` is any extension an installed source reads, in any letter case. Raises
    :class:`SlideReadError` when the folder or the slide is missing, or when two files match.
    """
    root = Path(folder)
    if not root.is_dir():
        raise SlideReadError(f"slide folder '{root}' does not exist or is not a folder: check --slides")
    image_id = str(image_id)
    if not image_id or "/" in image_id or "\\" in image_id or image_id in (".", ".."):
        raise SlideReadError(f"image_id {image_id!r} is not a file name: fix that manifest row")
    exts = set(slide_extensions())
    matches = []
    for ext in sorted(exts):
        for variant in {ext, ext.upper()}:
            candidate = root / f"{image_id}{variant}"
            try:
                if candidate.exists() or candidate.is_symlink():  # (a broken link or a loop: the guard says which)
                    matches.append(candidate)
            except OSError:  # a name too long for the file system: not_found_message says so
                continue
    if not matches:  # mixed-case extensions (".Tif"): one scan of the folder
        matches = [c for c in root.iterdir() if c.name.startswith(image_id) and c.name[len(image_id):].lower() in exts]
    matches = sorted(set(matches))
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise _several(image_id, root, [m.name for m in matches])
    raise SlideReadError(not_found_message(root, image_id, exts))


def _several(image_id: str, root: Path, names: list[str]) -> SlideReadError:
    return SlideReadError(
        f"image_id '{image_id}' matches several slide files in '{root}': " + ", ".join(sorted(names))
        + ". Keep one (move the others out of the folder)."
    )


def not_found_message(root: Path, image_id: str, exts: set[str]) -> str:
    """Why no file of ``root`` is the slide ``image_id``, in words: a name that differs only in its
    Unicode normalisation, a name too long for the file system, or what files start with the id."""
    wanted = unicodedata.normalize("NFC", image_id)
    same_text = []
    similar = []
    try:
        names = [c.name for c in root.iterdir()]
    except OSError:
        names = []
    for name in names:
        nfc = unicodedata.normalize("NFC", name)
        if nfc != name or wanted != image_id:
            if nfc.startswith(wanted) and nfc[len(wanted):].lower() in exts and not name.startswith(image_id):
                same_text.append(name)
        if name.startswith(image_id):
            similar.append(name)
    if same_text:
        form = "NFD (decomposed: accents stored as separate marks, as macOS writes names)" if unicodedata.is_normalized(
            "NFD", same_text[0]) else "another Unicode form"
        return (f"no slide file named exactly '{image_id}' in '{root}', but '{same_text[0]}' differs from it only in its "
                f"Unicode normalisation: the file name is {form} and the manifest's id is "
                f"{'NFC (composed)' if unicodedata.is_normalized('NFC', image_id) else 'not NFC'}. They look the same "
                "but are different names: rename the file (e.g. `convmv -f utf8 -t utf8 --nfc --notest FILE`) or the id")
    if len((image_id + ".tiff").encode("utf-8", "surrogatepass")) > 255:
        return (f"image_id '{image_id[:40]}…' is too long to be a file name ({len(image_id.encode('utf-8', 'surrogatepass'))} "
                "bytes; names hold 255): shorten it in the manifest and the slide file's name")
    hint = f" Files starting with that id: {', '.join(sorted(similar)[:5])}." if similar else ""
    return (f"no slide file for image_id '{image_id}' in '{root}' (looked for {image_id}.<ext> with ext one of "
            f"{', '.join(sorted(exts)) or '(no source installed)'}).{hint} Check the manifest and the slide folder.")


class SlideFolder:
    """One listing of a slide folder, for finding many slides by ``image_id``: :func:`find_slide`
    semantics (any installed source's extension, in any letter case; several matches refused) at
    one dictionary look-up per id, so a manifest of 1,000,000 rows is matched in seconds."""

    def __init__(self, folder: str | os.PathLike):
        self.root = Path(folder)
        self.exts = set(slide_extensions()) or {e.lower() for e in SLIDE_SUFFIXES}
        self.by_id: dict[str, list[str]] = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                lower = entry.name.lower()
                for ext in self.exts:
                    if lower.endswith(ext) and len(lower) > len(ext):
                        self.by_id.setdefault(entry.name[: -len(ext)], []).append(entry.name)

    def find(self, image_id: str) -> Path | None:
        """The slide file of ``image_id``, or ``None`` when the folder has none (:meth:`why_missing`
        says why); raises :class:`SlideReadError` when several files match."""
        names = self.by_id.get(str(image_id))
        if not names:
            return None
        if len(names) > 1:
            raise _several(image_id, self.root, names)
        return self.root / names[0]

    def why_missing(self, image_id: str) -> str:
        return not_found_message(self.root, str(image_id), self.exts)



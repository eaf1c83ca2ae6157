"""What a model repository holds, and the checks on its file list before anything is downloaded.

A model repo (Hub or local registry) is a run directory, file for file (docs/registry.md)::

    model.safetensors   weights (the only weights file ever loaded)
    config.json         how to rebuild the model; its weights_sha256 is checked after download
    README.md           model card (YAML front matter with library_name: clotclf)
    metrics.json        evaluation results
    history.csv         per-epoch training log            (optional)
    split.csv           the train / validation split       (optional; pushed only with --include-split)
    plots/*             training and evaluation pictures: PNG / JPEG / WebP images only (optional)

A pull plans its download from the registry's own file list (:func:`plan_download`): every name
must stay inside the target folder, ``plots/`` may hold images only, every file has a size cap
(:data:`MAX_BYTES`), and files outside the layout (``.gitattributes``, a ``LICENSE``, someone's
``pytorch_model.bin``) are never downloaded. Exactly the planned files are fetched, and each is
then checked against the hash the registry listed for it and against its kind
(:func:`check_content`: images must be images, JSON must be a JSON object).
"""

from __future__ import annotations

import fnmatch
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from clotclf_core.plugin import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, printable

from .errors import NotAModelError

CARD_NAME = "README.md"
METRICS_NAME = "metrics.json"
SPLIT_NAME = "split.csv"
OPTIONAL_FILES = ("history.csv", SPLIT_NAME)
PLOTS_DIR = "plots"
TOP_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, METRICS_NAME, *OPTIONAL_FILES)
#: the only files ``plots/`` may hold (checked by name, then by content after download)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: fnmatch patterns of the files a pull fetches (``*`` also matches ``/``, so plots/ may nest)
PULL_PATTERNS = [*TOP_FILES, f"{PLOTS_DIR}/*"]
MiB, GiB = 2**20, 2**30
#: the largest size each file may have (``plots/*`` per picture); a repo listing a larger one is refused
MAX_BYTES = {
    WEIGHTS_NAME: 16 * GiB,
    CONFIG_NAME: 4 * MiB,
    CARD_NAME: 4 * MiB,
    METRICS_NAME: 16 * MiB,
    "history.csv": 16 * MiB,
    SPLIT_NAME: 64 * MiB,
    PLOTS_DIR: 32 * MiB,
}
#: at most this many pictures, and this many bytes of them in all
MAX_PLOTS = 500
MAX_PLOTS_BYTES = 512 * MiB
#: files a Hub repository has that are not part of the model and are expected there
EXPECTED_EXTRA = (".gitattributes",)
#: files a push writes that a pull leaves on the server: the trunk in timm's layout (see .timm_export)
NOT_PULLED = ("timm/config.json", "timm/model.safetensors")


#: a fold model of a pushed cross-validation run (``--fold all``: the ensemble of its folds, see
#: :func:`clotclf_core.models.runs.fold_runs`): ``fold_<k>/`` holds a run directory's three files
FOLD_FILE = re.compile(r"^fold_[0-9]{1,4}/(model\.safetensors|config\.json|metrics\.json)$")


def is_layout_file(name: str) -> bool:
    """Whether a repo-relative POSIX path is part of the model layout (what a push may replace)."""
    return any(fnmatch.fnmatchcase(name, p) for p in PULL_PATTERNS) or name in NOT_PULLED or bool(FOLD_FILE.match(name))


def is_safe_name(name: str) -> bool:
    """A repo file name that stays inside the folder it is downloaded to, on POSIX and Windows,
    and holds no control characters."""
    if not name or not isinstance(name, str) or "\\" in name or len(name) > 1000:
        return False
    if any(unicodedata.category(ch)[0] == "C" for ch in name):
        return False
    posix = PurePosixPath(name)
    if posix.is_absolute() or any(part in ("..", ".", "") or len(part) > 255 for part in name.split("/")):
        return False
    return not any(PureWindowsPath(part).drive or PureWindowsPath(part).root for part in name.split("/"))


def cap_of(name: str) -> int:
    if FOLD_FILE.match(name):
        name = name.split("/", 1)[1]
    return MAX_BYTES[PLOTS_DIR] if name.startswith(PLOTS_DIR + "/") else MAX_BYTES.get(name, MAX_BYTES[PLOTS_DIR])


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


@dataclass(frozen=True)
class Entry:
    """One file as the registry lists it: its size and the hash it must have."""

    name: str
    size: int | None
    sha256: str | None = None  #: content sha256 (LFS files on the Hub; every file of a local registry)
    git_oid: str | None = None  #: git blob sha1 of the content (regular files on the Hub)


@dataclass
class Plan:
    """What a pull downloads (exactly these files) and what it leaves on the server."""

    files: list[Entry]
    ignored: list[str] = field(default_factory=list)

    def entry(self, name: str) -> Entry:
        return next(e for e in self.files if e.name == name)

    @property
    def weights_sha256(self) -> str | None:
        """The listed sha256 of the root model.safetensors (None: none listed, or a fold ensemble)."""
        return next((e.sha256 for e in self.files if e.name == WEIGHTS_NAME), None)


def plan_download(label: str, entries: list[Entry]) -> Plan:
    """Refuse a repository whose file list is unsafe, is not a clotclf model, or breaks the layout;
    return the files to download. ``label`` names the repo (and revision) in messages."""
    names = [e.name for e in entries]
    unsafe = [n for n in names if not is_safe_name(n)]
    if unsafe:
        raise NotAModelError(
            f"'{label}' contains a file name that would escape the download folder or holds control characters "
            f"({printable(repr(unsafe[0]), 120)}); nothing was downloaded. The repository is broken or malicious: tell its "
            "owner, and do not fetch it with other tools"
        )
    ensemble = WEIGHTS_NAME not in names and any(n.endswith("/" + WEIGHTS_NAME) and FOLD_FILE.match(n) for n in names)
    if WEIGHTS_NAME not in names and not ensemble:
        pickles = sorted(n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise NotAModelError(
                f"'{label}' offers only pickle-based weights ({', '.join(printable(p, 80) for p in pickles[:3])}) and no "
                f"{WEIGHTS_NAME}. clotclf loads safetensors only, because unpickling a downloaded file can run arbitrary "
                f"code. Ask the owner to push a {WEIGHTS_NAME} (e.g. with `clotclf push`)"
            )
        shown = ", ".join(printable(n, 60) for n in sorted(names)[:6]) or "no files"
        raise NotAModelError(f"'{label}' has no {WEIGHTS_NAME} ({shown}): it is not a clotclf model")
    if CONFIG_NAME not in names:
        raise NotAModelError(
            f"'{label}' has {WEIGHTS_NAME} but no {CONFIG_NAME}: it is not a clotclf model (perhaps a timm or "
            "transformers repo); clotclf needs the config.json that `clotclf push` uploads"
        )
    files, ignored = [], []
    for entry in entries:
        name = entry.name
        if name in NOT_PULLED:
            continue
        if name.startswith(PLOTS_DIR + "/"):
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                raise NotAModelError(
                    f"'{label}' has {printable(name, 120)} under {PLOTS_DIR}/, which may hold pictures only "
                    f"({', '.join(IMAGE_SUFFIXES)}); nothing was downloaded. A model repository carrying other files "
                    "there is broken or malicious: tell its owner"
                )
        elif not is_layout_file(name):
            ignored.append(name)
            continue
        if entry.size is None or entry.size < 0:
            raise NotAModelError(f"'{label}': the registry lists no size for {printable(name, 120)}, so its download "
                                 "cannot be bounded; nothing was downloaded")
        if entry.size > cap_of(name):
            raise NotAModelError(
                f"'{label}' lists {printable(name, 120)} at {_size(entry.size)}, more than clotclf accepts for it "
                f"({_size(cap_of(name))}); nothing was downloaded. The repository is broken or malicious: tell its owner"
            )
        files.append(entry)
    plots = [e for e in files if e.name.startswith(PLOTS_DIR + "/")]
    if len(plots) > MAX_PLOTS or sum(e.size or 0 for e in plots) > MAX_PLOTS_BYTES:
        raise NotAModelError(
            f"'{label}' has {len(plots)} pictures ({_size(sum(e.size or 0 for e in plots))}) under {PLOTS_DIR}/, more than "
            f"clotclf accepts ({MAX_PLOTS}, {_size(MAX_PLOTS_BYTES)}); nothing was downloaded"
        )
    return Plan(sorted(files, key=lambda e: e.name), sorted(n for n in ignored if n not in EXPECTED_EXTRA))


_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",)}


def check_content(label: str, name: str, path: Path) -> None:
    """A downloaded file is what its name says: a picture under ``plots/``, a JSON object for
    config.json / metrics.json, UTF-8 text for the card and the CSVs."""
    suffix = Path(name).suffix.lower()
    with open(path, "rb") as fh:
        head = fh.read(16)
    if FOLD_FILE.match(name):
        name = name.split("/", 1)[1]
    if name.startswith(PLOTS_DIR + "/"):
        ok = head.startswith(_MAGIC[suffix]) if suffix in _MAGIC else (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        if not ok:
            raise NotAModelError(
                f"{printable(name, 120)} of '{label}' is not a {suffix[1:].upper()} picture (its first bytes are "
                f"{head[:8]!r}); nothing was kept. A model repository carrying disguised files is broken or malicious"
            )
        return
    if name in (CONFIG_NAME, METRICS_NAME):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise NotAModelError(f"{name} of '{label}' is not valid JSON ({printable(exc, 120)}); nothing was kept") from None
        if not isinstance(data, dict):
            raise NotAModelError(f"{name} of '{label}' is not a JSON object; nothing was kept")
    elif name in (CARD_NAME, *OPTIONAL_FILES):
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise NotAModelError(f"{name} of '{label}' is not UTF-8 text; nothing was kept") from None


def run_files(run_dir: Path, include_split: bool = False) -> list[tuple[str, Path]]:
    """``(repo path, local path)`` of the layout files present in ``run_dir``, sorted; symlinks
    are followed (a pulled model in the huggingface_hub cache is a folder of symlinks).
    ``split.csv`` (patient or slide identifiers) only with ``include_split``; ``plots/`` pictures only."""
    tops = [n for n in TOP_FILES if include_split or n != SPLIT_NAME]
    out = [(name, run_dir / name) for name in tops if (run_dir / name).is_file()]
    plots = run_dir / PLOTS_DIR
    if plots.is_dir():
        for path in sorted(plots.rglob("*")):
            rel = path.relative_to(run_dir).as_posix()
            if path.is_file() and not path.name.startswith(".") and is_safe_name(rel) \
                    and path.suffix.lower() in IMAGE_SUFFIXES:
                out.append((rel, path))
    return sorted(out)

"""What a model repository holds, and the checks on its file list before anything is downloaded.

A model repo (Hub or local registry) is a run directory, file for file (docs/registry.md)::

    model.safetensors   weights (the only weights file ever loaded)
    config.json         how to rebuild the model; its weights_sha256 is checked after download
    README.md           model card (YAML front matter with library_name: clotclf)
    metrics.json        evaluation results
    history.csv         per-epoch training log            (optional)
    split.csv           the train / validation split       (optional)
    plots/*             training and evaluation pictures   (optional)

Nothing else is pushed or pulled: no checkpoints, no pickles, no caches.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path, PurePosixPath, PureWindowsPath

from clotclf_core.runs import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME

from .errors import NotAModelError

CARD_NAME = "README.md"
METRICS_NAME = "metrics.json"
OPTIONAL_FILES = ("history.csv", "split.csv")
PLOTS_DIR = "plots"
TOP_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, METRICS_NAME, *OPTIONAL_FILES)
#: fnmatch patterns of the files a pull fetches (``*`` also matches ``/``, so plots/ may nest)
PULL_PATTERNS = [*TOP_FILES, f"{PLOTS_DIR}/*"]


def is_layout_file(name: str) -> bool:
    """Whether a repo-relative POSIX path is part of the model layout."""
    return any(fnmatch.fnmatchcase(name, p) for p in PULL_PATTERNS)


def is_safe_name(name: str) -> bool:
    """A repo file name that stays inside the folder it is downloaded to, on POSIX and Windows."""
    if not name or "\\" in name or "\x00" in name:
        return False
    posix = PurePosixPath(name)
    if posix.is_absolute() or any(part in ("..", ".", "") for part in name.split("/")):
        return False
    return not any(PureWindowsPath(part).drive or PureWindowsPath(part).root for part in name.split("/"))


def check_listing(label: str, names: list[str]) -> None:
    """Refuse a repository whose file list is unsafe or is not a clotclf model, before downloading.

    ``label`` names the repo (and revision) in messages.
    """
    unsafe = [n for n in names if not is_safe_name(n)]
    if unsafe:
        raise NotAModelError(
            f"'{label}' contains a file name that would escape the download folder ({unsafe[0]!r}); nothing was "
            "downloaded. The repository is broken or malicious: tell its owner, and do not fetch it with other tools"
        )
    if WEIGHTS_NAME not in names:
        pickles = sorted(n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise NotAModelError(
                f"'{label}' offers only pickle-based weights ({', '.join(pickles[:3])}) and no {WEIGHTS_NAME}. clotclf "
                "loads safetensors only, because unpickling a downloaded file can run arbitrary code. Ask the owner to "
                f"push a {WEIGHTS_NAME} (e.g. with `clotclf push`)"
            )
        shown = ", ".join(sorted(names)[:6]) or "no files"
        raise NotAModelError(f"'{label}' has no {WEIGHTS_NAME} ({shown}): it is not a clotclf model")
    if CONFIG_NAME not in names:
        raise NotAModelError(
            f"'{label}' has {WEIGHTS_NAME} but no {CONFIG_NAME}: it is not a clotclf model (perhaps a timm or "
            "transformers repo); clotclf needs the config.json that `clotclf push` uploads"
        )


def run_files(run_dir: Path) -> list[tuple[str, Path]]:
    """``(repo path, local path)`` of the layout files present in ``run_dir``, sorted; symlinks
    are followed (a pulled model in the huggingface_hub cache is a folder of symlinks)."""
    out = [(name, run_dir / name) for name in TOP_FILES if (run_dir / name).is_file()]
    plots = run_dir / PLOTS_DIR
    if plots.is_dir():
        for path in sorted(plots.rglob("*")):
            rel = path.relative_to(run_dir).as_posix()
            if path.is_file() and not path.name.startswith(".") and is_safe_name(rel):
                out.append((rel, path))
    return sorted(out)

"""Install an example plugin distribution from examples/ the way a user would (real wheel build,
real entry point) into its own folder, and run Python with that folder on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def install_example(name: str, tmp_path_factory) -> Path:
    """pip-install ``examples/<name>`` into a fresh folder; returns the folder."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(EXAMPLES / name)],
        check=True, capture_output=True, text=True, cwd=build,
    )
    return target


def env_with(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}

"""Shared fixtures. Tests run offline, on the CPU, with tiny models and images."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "0")

DATA = Path(__file__).parent / "data"
REAL_SLIDE = DATA / "cmu_small_region.svs"


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Create an installed-looking distribution in a temp dir on sys.path.

    ``fake_dist("dist-name", "module_name", "python source", entry_point_name)`` writes the
    module and a ``.dist-info`` with an entry point in ``clotclf.plugins``, so
    ``importlib.metadata`` discovers it exactly like a pip-installed plugin.
    """
    from clotclf_core.plugin_manager import reset_manager

    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def make(dist: str, module: str, source: str, ep_name: str | None = None, version: str = "0.1.0") -> Path:
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[clotclf.plugins]\n{ep_name or module} = {module}\n")
        return root

    yield make
    import sys

    for name in list(sys.modules):
        if name.startswith("fake_"):
            del sys.modules[name]
    monkeypatch.undo()
    reset_manager()

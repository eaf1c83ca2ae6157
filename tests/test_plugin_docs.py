"""docs/plugins.md is enough to write a plugin: its Python examples parse, import only the plugin
API, and the worked filter example (5.2), installed as a plugin from the page's own text, tiles
with weights given by path and by registry name."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from test_public_api import _problems

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
BLOCKS = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", DOC, flags=re.S)]  # (some sit in a list: indented)
#: a block whose first line is ``# package/module.py: ...`` is a file of a plugin
FILE_HEADER = re.compile(r"^# (\w+/\w+\.py)\b")


def test_the_page_has_its_examples():
    files = [FILE_HEADER.match(b).group(1) for b in BLOCKS if FILE_HEADER.match(b)]
    assert {"my_stain_filter/__init__.py", "my_stain_filter/_scorer.py", "my_max/__init__.py"} <= set(files)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_python_example_parses_and_imports_only_the_plugin_api(index, tmp_path):
    source = textwrap.dedent(BLOCKS[index])  # (a block inside a list item is indented with it)
    ast.parse(source)
    path = tmp_path / "plugins" / "clotclf_doc_example" / "example.py"  # checked like a plugin module
    path.parent.mkdir(parents=True)
    path.write_text(source)
    import test_public_api

    saved, test_public_api.REPO = test_public_api.REPO, tmp_path
    try:
        problems = _problems(path)
    finally:
        test_public_api.REPO = saved
    assert not problems, problems


def test_the_worked_filter_example_runs_as_written(fake_dist, tmp_path):
    site = fake_dist("my-doc-resolver", "fake_doc_resolver", f"""
        from clotclf_core.plugin import hookimpl
        @hookimpl
        def clotclf_resolve_model(name):
            return {str(tmp_path / "runs" / "stain")!r} if name == "lab/stain@v1" else None
    """)
    package = site / "my_stain_filter"
    package.mkdir()
    for block in BLOCKS:
        header = FILE_HEADER.match(block)
        if header and header.group(1).startswith("my_stain_filter/"):
            (site / header.group(1)).write_text(block)
    info = site / "my_stain_filter-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-stain-filter\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[clotclf.plugins]\nmy_stain = my_stain_filter\n")

    import torch

    from clotclf_core.plugin import ClotclfError
    from clotclf_core.plugin_manager import reset_manager

    try:
        from my_stain_filter._scorer import StainNet, save

        torch.manual_seed(0)
        digest = save(StainNet(), tmp_path / "runs" / "stain")
        mgr = reset_manager(disabled=["registry"])
        info_row = mgr.plugin_info("my_stain")
        assert info_row.ok and info_row.api == ">=2.0,<3", info_row.status
        spec = mgr.get("filter", "stain")
        tiles = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
        by_path = spec.factory(spec.validate_options({"weights": str(tmp_path / "runs" / "stain"), "device": "cpu"}))
        by_name = spec.factory(spec.validate_options({"weights": "lab/stain@v1", "device": "cpu"}))
        scores = by_path.score(tiles)
        assert scores.shape == (5,) and scores.dtype == np.float32 and ((scores > 0) & (scores < 1)).all()
        assert np.array_equal(scores, by_name.score(tiles)) and by_path.describe() == {"weights_sha256": digest}
        with pytest.raises(ClotclfError, match="needs weights=RUN"):
            spec.factory(spec.validate_options({}))
        with pytest.raises(ClotclfError, match="has no config.json.*my-stain-train"):
            spec.factory(spec.validate_options({"weights": "unknown-name"}))
        with open(tmp_path / "runs" / "stain" / "model.safetensors", "ab") as fh:
            fh.write(b"\0")
        with pytest.raises(ClotclfError, match="not the file its config.json describes"):
            spec.factory(spec.validate_options({"weights": str(tmp_path / "runs" / "stain")}))
    finally:
        import sys

        for name in [m for m in sys.modules if m.startswith("my_stain_filter")]:
            del sys.modules[name]
        reset_manager()

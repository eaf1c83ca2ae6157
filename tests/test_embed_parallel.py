"""`clotclf embed` at scale (issue 17): one slide per task in worker processes — one per device
(`--devices`, tested with CPU processes on this GPU-less machine) or on a Dask cluster — gives the
feature store an in-process run gives, byte for byte, and resumes like it."""

from __future__ import annotations

import numpy as np
import pytest
from badinput import assert_clean_error, invoke
from tilesets import TINY_TIMM, make_tileset

from clotclf_core.features.embed import embed_tileset
from clotclf_core.features.store import FeatureStore


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    d = tmp_path_factory.mktemp("par")
    tiles = make_tileset(d / "tiles")
    embed_tileset(tiles, d / "one", "timm", dict(TINY_TIMM), device="cpu", progress=False)
    return {"dir": d, "tiles": tiles, "store": d / "one"}


def _same_store(a, b) -> None:
    sa, sb = FeatureStore(a), FeatureStore(b)
    assert sa.done == sb.done and sa.meta["slides"] == sb.meta["slides"] and sa.encoder == sb.encoder
    for image_id in sa.done:
        assert np.array_equal(sa.features(image_id), sb.features(image_id))
        assert sa.rows_path(image_id).read_bytes() == sb.rows_path(image_id).read_bytes()


def test_one_process_per_device_gives_the_same_bytes_and_resumes(baseline, tmp_path):
    import shutil

    out = tmp_path / "two"
    shutil.copytree(baseline["store"], out)
    for image_id in ("s1", "s2"):  # lost slides: the next run embeds these two only, one per worker process
        (out / "slides" / f"{image_id}.npy").unlink()
    summary = embed_tileset(baseline["tiles"], out, "timm", dict(TINY_TIMM), device="cpu", progress=False,
                            devices=["cpu", "cpu"])
    assert summary["embedded"] == 2 and summary["kept"] == 2 and summary["device"] == "2 process(es) on cpu"
    _same_store(baseline["store"], out)


@pytest.mark.slow
def test_a_dask_cluster_gives_the_same_store(baseline, tmp_path):
    """A whole store made by Dask workers (a local cluster; the engine is tile's, tested there too)."""
    out = invoke(["embed", "--tiles", baseline["tiles"], "--backbone", "timm:" + ",".join(f"{k}={v}" for k, v in TINY_TIMM.items()),
                  "--out", tmp_path / "dask", "--device", "cpu", "--dask", "local", "--workers", "2", "-q"])
    assert out.exit_code == 0, out.stderr
    _same_store(baseline["store"], tmp_path / "dask")


@pytest.mark.parametrize("args,mentions", [
    (["--devices", "cuda:7"], ["--devices cuda:7", "visible CUDA device"]),
    (["--devices", "gpu0"], ["--devices 'gpu0'", "cpu or cuda:N"]),
    (["--devices", "cpu", "--dask", "local"], ["--dask and --devices", "give one"]),
])
def test_bad_engine_options_are_one_line(baseline, tmp_path, args, mentions):
    out = invoke(["embed", "--tiles", baseline["tiles"], "--backbone", "timm", "--out", tmp_path / "f", *args])
    assert_clean_error(out, 2, mentions)
    assert not (tmp_path / "f").exists()


def test_stain_normalised_features_are_the_same_in_worker_processes(baseline, tmp_path):
    """--stain-normalise: each worker estimates a slide's stain as the in-process run does."""
    one, two = tmp_path / "one", tmp_path / "two"
    serial = embed_tileset(baseline["tiles"], one, "timm", dict(TINY_TIMM), device="cpu", progress=False,
                           stain_normalise="macenko")
    summary = embed_tileset(baseline["tiles"], two, "timm", dict(TINY_TIMM), device="cpu", progress=False,
                            stain_normalise="macenko", devices=["cpu", "cpu"])
    _same_store(one, two)
    assert FeatureStore(two).encoder["stain_normalise"]["method"] == "macenko"
    assert summary["stain_unfitted"] == serial["stain_unfitted"]  # the slides too pale to estimate, as said serially
    plain = FeatureStore(baseline["store"])  # the normalisation changed the features (it was applied)
    assert not all(np.array_equal(plain.features(i), FeatureStore(two).features(i)) for i in plain.done)

"""The third-party slide source in examples/ installs as its own distribution, follows the Slide
contract (`clotclf smoke-test`) and tiles pictures through `clotclf tile`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from example_site import env_with, install_example
from PIL import Image


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """pip-install the example distribution into its own folder (real wheel build, real entry point)."""
    target = install_example("clotclf-example-source", tmp_path_factory)
    assert list(target.glob("clotclf_example_source-*.dist-info"))
    return target


def _clotclf(site, *args):
    return subprocess.run([sys.executable, "-m", "clotclf_core.cli", *args], env=env_with(site), capture_output=True, text=True)


def _picture(h: int = 300, w: int = 420) -> np.ndarray:
    """Pale glass with stained, textured blobs (synthetic)."""
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 236, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for cy, cx, r in ((90, 110, 70), (200, 300, 80)):
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[blob] = np.clip(rng.normal((170, 80, 150), 25, (int(blob.sum()), 3)), 0, 255).astype(np.uint8)
    return img


def test_listed_and_passes_the_smoke_test(site):
    res = _clotclf(site, "list-plugins", "--kind", "source", "--json")
    row = next(r for r in json.loads(res.stdout) if r["name"] == "pil")
    assert row["distribution"] == "clotclf-example-source" and row["version"] == "0.1.0" and row["status"] == "ok"
    res = _clotclf(site, "smoke-test", "example_pil", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    (report,) = json.loads(res.stdout)  # checked on a generated PNG (the extension it declares)
    assert report["name"] == "pil" and report["status"] == "ok", report
    assert {"read_region", "outside", "thumbnail"} <= set(report["checks"].split(", "))


def test_tiles_pictures_and_reads_exact_pixels(site, tmp_path):
    img = _picture()
    slides = tmp_path / "pictures"
    slides.mkdir()
    Image.fromarray(img).save(slides / "clot1.png")
    Image.fromarray(np.ascontiguousarray(img[::-1])).save(slides / "clot2.jpg", quality=95)
    (slides / "broken.png").write_text("not a picture\n")
    res = _clotclf(site, "tile", str(slides), "--out", str(tmp_path / "tiles"), "--downsample", "2", "--tile-size", "32",
                   "--train-size", "32", "--json")
    assert res.returncode == 3, res.stdout + res.stderr  # two tiled, one failed: listed, the others kept
    error = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "broken" in error[0] and "Traceback" not in res.stderr
    meta = json.loads((tmp_path / "tiles" / "tileset.json").read_text())["slides"]
    assert {k: v["status"] for k, v in meta.items()} == {"broken": "failed", "clot1": "done", "clot2": "done"}
    assert meta["clot1"]["source"] == "pil" and meta["clot1"]["n_tiles"] > 10
    code = f"""
import numpy as np
from PIL import Image
from clotclf_core.slides.open import open_slide
from clotclf_core.tiling.tileset import TileSet
img = np.asarray(Image.open({str(slides / 'clot1.png')!r}))
with open_slide({str(slides / 'clot1.png')!r}) as slide:
    assert type(slide).__name__ == "PilSlide" and slide.dimensions == (420, 300) and slide.mpp is None
    assert np.array_equal(slide.read_region(13, 7, 100, 50), img[7:57, 13:113])
    assert (slide.read_region(400, 290, 40, 20)[10:] == 255).all()  # outside the picture: white
    assert slide.thumbnail(105).shape == (75, 105, 3)
ts = TileSet({str(tmp_path / 'tiles')!r})
idx = ts.index[ts.index["image_id"] == "clot1"]
inside = (idx["x"] >= 0) & (idx["y"] >= 0) & (idx["x"] + idx["size"] <= 420) & (idx["y"] + idx["size"] <= 300)
row = idx[inside].iloc[0]  # a tile inside the picture (edge tiles are padded with the glass colour)
x, y, size = int(row["x"]), int(row["y"]), int(row["size"])
with open_slide({str(slides / 'clot1.png')!r}) as slide:
    want = slide.read_region(x, y, size, size, size / 32)
assert np.array_equal(ts.pixels("clot1")[int(row["row"])], want)  # tiling cut the picture's pixels
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], env=env_with(site), capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]

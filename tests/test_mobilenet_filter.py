"""The `mobilenetv3` background filter, `clotclf train-filter` and `clotclf export-patches`.

Tiny everything: 32-64 px inputs, a few dozen patches, 2-4 epochs, CPU. The end-to-end test
trains on patches from the top half of the real slide tests/data/cmu_small_region.svs and
measures the filter on patches from its bottom half, which it has never seen.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clotclf_core.cli.main import cli
from clotclf_core.plugin import ClotclfError, ConfigError, ModelLoadError
from clotclf_core.plugin_manager import get_manager

REAL_SLIDE = Path(__file__).parent / "data" / "cmu_small_region.svs"
SMALL = dict(input_size=32, epochs=2, batch_size=16, device="cpu")


# ----------------------------------------------------------------------------- helpers


def synthetic_tile(kind: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """Tissue: pink/purple stain with nuclei-like dark blobs; background: near-white glass noise."""
    if kind == "tissue":
        base = np.array([205, 120, 175]) * rng.uniform(0.65, 1.0)
        img = base + rng.normal(0, 25, (size, size, 3))
        for _ in range(rng.integers(3, 9)):
            cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(2, 5))]
            yy, xx = np.ogrid[:size, :size]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (90, 50, 120)
    else:
        img = np.full((size, size, 3), rng.uniform(225, 245)) + rng.normal(0, 5, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_patch_folder(root: Path, n: int, seed: int, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    for kind in ("tissue", "background"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(synthetic_tile(kind, rng, size)).save(root / kind / f"{kind}_{i:03d}.png")
    return root


def build_filter(**options):
    spec = get_manager().get("filter", "mobilenetv3")
    return spec.factory(spec.validate_options(options))




@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy shared machine OpenMP threads that
    spin-wait for each other made these tests 10x slower (measured: 25 s vs 2.5 s per run)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    return write_patch_folder(tmp_path_factory.mktemp("patches"), n=24, seed=1)


@pytest.fixture(scope="module")
def synthetic_run(synthetic_data, tmp_path_factory) -> Path:
    from clotclf_mobilenet_bg._train import make_settings, train_filter

    out = tmp_path_factory.mktemp("runs") / "bg"
    train_filter(synthetic_data, out, make_settings(**SMALL), progress=False)
    return out


# ----------------------------------------------------------------------------- plugin shape


def test_spec_module_imports_no_torch():
    code = "import sys, clotclf_mobilenet_bg; print(sorted(m for m in ('torch', 'timm', 'openslide') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_registered_as_filter_and_command():
    spec = get_manager().get("filter", "mobilenetv3")
    assert spec.plugin == "mobilenetv3"
    assert set(spec.options.model_fields) >= {"weights", "threshold", "device", "batch_size", "input_size", "arch"}
    result = CliRunner().invoke(cli, ["train-filter", "--help"])
    assert result.exit_code == 0 and "--val-fraction" in result.output


# ----------------------------------------------------------------------------- training


def test_train_filter_writes_a_complete_run(synthetic_run, synthetic_data):
    from safetensors import safe_open

    from clotclf_core.plugin import sha256_file

    names = {p.name for p in synthetic_run.iterdir()}
    assert {"model.safetensors", "config.json", "metrics.json", "history.csv", "README.md", "split.csv"} <= names
    config = json.loads((synthetic_run / "config.json").read_text())
    assert config["kind"] == "patch_filter" and config["filter"] == "mobilenetv3"
    assert config["model"]["labels"] == ["background", "tissue"]
    assert config["model"]["arch"] == "mobilenetv3_small_100" and config["model"]["input_size"] == 32
    assert config["model"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert config["weights_sha256"] == sha256_file(synthetic_run / "model.safetensors")
    with safe_open(str(synthetic_run / "model.safetensors"), "pt") as fh:
        assert fh.metadata()["kind"] == "patch_filter"

    metrics = json.loads((synthetic_run / "metrics.json").read_text())
    val = metrics["validation"]
    assert metrics["n_train"] + metrics["n_val"] == 48 and val["n"] == metrics["n_val"] == 10
    assert val["n_tissue"] == val["n_background"] == 5
    assert 0.0 <= val["accuracy"] <= 1.0 and 0.0 <= val["auc"] <= 1.0

    history = (synthetic_run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss") and len(history) == 1 + SMALL["epochs"]

    split = [line.split(",") for line in (synthetic_run / "split.csv").read_text().splitlines()[1:]]
    train = {p for p, _, s in split if s == "train"}
    val_files = {p for p, _, s in split if s == "val"}
    assert len(train) == 38 and len(val_files) == 10 and not train & val_files
    assert all((synthetic_data / p).is_file() and p.split("/")[0] == label for p, label, _ in split)
    assert "Not a clot" in (synthetic_run / "README.md").read_text()


def test_same_seed_same_weights(tmp_path):
    import torch
    from safetensors.torch import load_file

    from clotclf_mobilenet_bg._train import make_settings, train_filter

    data = write_patch_folder(tmp_path / "data", n=6, seed=3, size=32)
    settings = make_settings(**(SMALL | {"epochs": 1}))
    train_filter(data, tmp_path / "a", settings, progress=False)
    train_filter(data, tmp_path / "b", settings, progress=False)
    # compare tensors, not file hashes: safetensors writes __metadata__ in a random order
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_no_validation_set(tmp_path):
    from clotclf_mobilenet_bg._train import make_settings, train_filter

    data = write_patch_folder(tmp_path / "data", n=3, seed=4, size=32)
    metrics = train_filter(data, tmp_path / "run", make_settings(**(SMALL | {"epochs": 1, "val_fraction": 0})), progress=False)
    assert metrics["validation"] is None and metrics["n_train"] == 6
    assert "No validation set" in (tmp_path / "run" / "README.md").read_text()


# ----------------------------------------------------------------------------- the filter


def test_filter_separates_unseen_synthetic_tiles(synthetic_run):
    flt = build_filter(weights=str(synthetic_run), device="cpu")
    rng = np.random.default_rng(99)  # tiles the filter has never seen
    tissue = np.stack([synthetic_tile("tissue", rng) for _ in range(20)])
    glass = np.stack([synthetic_tile("background", rng) for _ in range(20)])
    s_t, s_g = flt.score(tissue), flt.score(glass)
    assert s_t.dtype == np.float32 and s_t.shape == (20,)
    assert ((s_t >= 0) & (s_t <= 1)).all() and ((s_g >= 0) & (s_g <= 1)).all()
    accuracy = ((s_t >= flt.threshold).sum() + (s_g < flt.threshold).sum()) / 40
    assert accuracy >= 0.9, (s_t, s_g)


def test_filter_batching_resizing_and_empty_input(synthetic_run):
    rng = np.random.default_rng(5)
    tiles = np.stack([synthetic_tile(k, rng, 64) for k in ("tissue", "background") * 5])
    a = build_filter(weights=str(synthetic_run), batch_size=3, device="cpu").score(tiles)
    b = build_filter(weights=str(synthetic_run), batch_size=128, device="cpu").score(tiles)
    np.testing.assert_allclose(a, b, atol=1e-5)
    flt = build_filter(weights=str(synthetic_run / "model.safetensors"), threshold=0.7, device="cpu")
    assert flt.threshold == 0.7 and flt.net.input_size == 32
    assert flt.score(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0,)
    with pytest.raises(ValueError, match="uint8"):
        flt.score(tiles.astype(np.float32))
    assert build_filter(weights=str(synthetic_run), input_size=48, device="cpu").net.input_size == 48


def test_filter_resolves_registry_names(synthetic_run, fake_dist):
    from clotclf_core.plugin_manager import reset_manager

    fake_dist(
        "fake-registry",
        "fake_bg_registry",
        f"""
        from clotclf_core.plugin import hookimpl

        @hookimpl
        def clotclf_resolve_model(name):
            return {str(synthetic_run)!r} if name == "mayo-background" else None
        """,
    )
    reset_manager(disabled=["registry"])  # the real registry would answer first (and try the network)
    assert build_filter(weights="mayo-background", device="cpu").run_dir == synthetic_run
    with pytest.raises(ModelLoadError, match="train-filter"):
        build_filter(weights="no-such-model")


def test_filter_pulls_weights_from_a_local_registry(synthetic_run, tmp_path, monkeypatch):
    """push the filter run to a file:// registry, then weights=NAME pulls, verifies and loads it."""
    from clotclf_core.plugin_manager import reset_manager

    monkeypatch.setenv("CLOTCLF_REGISTRY", (tmp_path / "registry").as_uri())
    monkeypatch.setenv("CLOTCLF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CLOTCLF_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no user registry.yaml
    (tmp_path / "registry").mkdir()
    reset_manager()
    try:
        pushed = CliRunner().invoke(cli, ["push", str(synthetic_run), "--repo", "bg-filter", "--quiet"])
        assert pushed.exit_code == 0, pushed.output
        flt = build_filter(weights="bg-filter", device="cpu")
        assert flt.run_dir != synthetic_run and flt.config["weights_sha256"] == json.loads(
            (synthetic_run / "config.json").read_text())["weights_sha256"]
        tiles = np.stack([synthetic_tile(k, np.random.default_rng(7)) for k in ("tissue", "background")])
        np.testing.assert_allclose(flt.score(tiles), build_filter(weights=str(synthetic_run), device="cpu").score(tiles))
    finally:
        monkeypatch.undo()
        reset_manager()


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_filter_refuses_bad_weights(synthetic_run, tmp_path):
    import torch

    with pytest.raises(ClotclfError, match="train-filter"):
        build_filter()
    with pytest.raises(ModelLoadError, match="does not exist"):
        build_filter(weights=str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        build_filter(weights=str(tmp_path))

    # a run whose weights are a pickle (torch.save), under either name
    pickled = _copy_run(synthetic_run, tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, pickled / "model.pth")
    with pytest.raises(ModelLoadError, match="pickle"):
        build_filter(weights=str(pickled))
    with pytest.raises(ModelLoadError, match="pickle"):
        build_filter(weights=str(pickled / "model.pth"))
    torch.save({"w": torch.zeros(2)}, pickled / "model.safetensors")
    with pytest.raises(ModelLoadError, match="pickle"):
        build_filter(weights=str(pickled))

    # weights changed after training
    tampered = _copy_run(synthetic_run, tmp_path / "tampered")
    with open(tampered / "model.safetensors", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelLoadError, match="sha256"):
        build_filter(weights=str(tampered))

    # a config that is not this filter's
    relabelled = _copy_run(synthetic_run, tmp_path / "relabelled")
    cfg = json.loads((relabelled / "config.json").read_text())
    cfg["model"]["labels"] = ["tissue", "background"]
    (relabelled / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="labels"):
        build_filter(weights=str(relabelled))
    cfg["model"]["labels"], cfg["filter"] = ["background", "tissue"], "other"
    (relabelled / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="'other'"):
        build_filter(weights=str(relabelled))

    with pytest.raises(ConfigError, match="arch"):
        build_filter(weights=str(synthetic_run), arch="mobilenetv3_large_100")


def test_filter_refuses_a_clot_classifier_run(tmp_path):
    from torch import nn

    from clotclf_core.models.build import ClotClassifier
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.saved import save_model

    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))  # any module: only the run's config matters
    save_model(ClotClassifier(backbone, nn.Linear(4, 2), ModelConfig(backbone="poolformer")), tmp_path / "clot")
    with pytest.raises(ModelLoadError, match="clot classifier"):
        build_filter(weights=str(tmp_path / "clot"))


@pytest.mark.parametrize(
    "options, bad",
    [({"threshold": 1.5}, "threshold"), ({"batch_size": 0}, "batch_size"), ({"colour": 1}, "colour"), ({"arch": "resnet50"}, "arch")],
)
def test_filter_options_are_validated(options, bad):
    with pytest.raises(ConfigError, match=bad):
        get_manager().get("filter", "mobilenetv3").validate_options(options)


def test_filter_refuses_a_missing_gpu(synthetic_run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ClotclfError, match="no CUDA GPU"):
        build_filter(weights=str(synthetic_run), device="cuda")
    with pytest.raises(ClotclfError, match="not a torch device"):
        build_filter(weights=str(synthetic_run), device="gpu0")


# ----------------------------------------------------------------------------- train-filter errors and CLI


def test_train_filter_bad_data(tmp_path, synthetic_data):
    from clotclf_mobilenet_bg._train import make_settings, train_filter

    s = make_settings(**SMALL)
    with pytest.raises(ClotclfError, match="does not exist"):
        train_filter(tmp_path / "missing", tmp_path / "r1", s, progress=False)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ClotclfError, match="is a file"):
        train_filter(tmp_path / "file.png", tmp_path / "r1", s, progress=False)

    half = tmp_path / "half"
    (half / "tissue").mkdir(parents=True)
    with pytest.raises(ClotclfError, match="no background/"):
        train_filter(half, tmp_path / "r1", s, progress=False)
    (half / "background").mkdir()
    (half / "background" / "notes.txt").write_text("not an image")
    (half / "background" / "._b.png").write_bytes(b"macOS metadata, not a PNG")  # hidden: skipped
    Image.fromarray(synthetic_tile("tissue", np.random.default_rng(0))).save(half / "tissue" / "a.png")
    with pytest.raises(ClotclfError, match="background.*no PNG/JPEG"):
        train_filter(half, tmp_path / "r1", s, progress=False)

    Image.fromarray(synthetic_tile("background", np.random.default_rng(0))).save(half / "background" / "b.png")
    with pytest.raises(ClotclfError, match="at least 2 per class"):
        train_filter(half, tmp_path / "r1", s, progress=False)

    broken = _copy_run(synthetic_data, tmp_path / "broken")
    (broken / "tissue" / "tissue_005.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ClotclfError, match="tissue_005.png"):
        train_filter(broken, tmp_path / "r1", s, progress=False)
    assert not (tmp_path / "r1").exists()


@pytest.mark.parametrize("values, bad", [({"epochs": 0}, "epochs"), ({"val_fraction": 1.0}, "val_fraction"),
                                          ({"arch": "resnet18"}, "arch"), ({"lr": -1}, "lr"), ({"input_size": 8}, "input_size")])
def test_train_filter_bad_settings(values, bad):
    from clotclf_mobilenet_bg._train import make_settings

    with pytest.raises(ConfigError, match=bad):
        make_settings(**values)


def test_cli_train_filter(synthetic_data, synthetic_run, tmp_path):
    runner = CliRunner()
    args = ["train-filter", str(synthetic_data), "--input-size", "32", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]
    result = runner.invoke(cli, args + ["--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_val"] == 10 and set(metrics["validation"]) >= {"accuracy", "balanced_accuracy", "auc"}

    again = runner.invoke(cli, args + ["--out", str(tmp_path / "run"), "--quiet"])
    assert again.exit_code == 2 and "already holds a run" in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.output and len(again.stderr.strip().splitlines()) == 1

    missing = runner.invoke(cli, ["train-filter", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and missing.stderr.startswith("Error: patch folder")
    bad = runner.invoke(cli, args + ["--out", str(tmp_path / "y"), "--val-fraction", "1.5"])
    assert bad.exit_code == 2 and "val_fraction" in bad.stderr
    gpu = runner.invoke(cli, ["train-filter", str(synthetic_data), "--out", str(tmp_path / "z"), "--device", "nonsense"])
    assert gpu.exit_code == 2 and "nonsense" in gpu.stderr


# ----------------------------------------------------------------------------- export-patches


def test_patch_candidates_respect_the_mask():
    from clotclf_core.tiling.patchset import labelled_cells

    mask = np.zeros((100, 80), bool)
    mask[20:60, 10:50] = True  # slide 800 x 1000 px: 10 level-0 px per mask px
    c = labelled_cells(mask, (800, 1000), side=100, min_tissue=0.75)
    for x, y in c["tissue"][0]:
        assert mask[y // 10:(y + 100) // 10, x // 10:(x + 100) // 10].mean() >= 0.75
    grown = np.zeros_like(mask)
    grown[19:61, 9:51] = True
    for x, y in c["background"][0]:
        assert not grown[y // 10:(y + 100) // 10, x // 10:(x + 100) // 10].any()
    assert len(c["tissue"][0]) == 16 and len(c["background"][0]) > 30


def test_export_patches_bad_inputs(tmp_path):
    from clotclf_core.tiling.patchset import export_patches

    with pytest.raises(ClotclfError, match="does not exist"):
        export_patches(tmp_path / "none", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClotclfError, match="no slide files"):
        export_patches(tmp_path / "empty", tmp_path / "out", progress=False)
    for kwargs, bad in [({"per_slide": 0}, "--per-slide"), ({"size": 4}, "--size"), ({"downsample": 0.5}, "--downsample"),
                        ({"min_tissue": 0}, "--min-tissue"), ({"tissue_method": "magic"}, "--tissue-method")]:
        with pytest.raises(ClotclfError, match=bad):
            export_patches(REAL_SLIDE, tmp_path / "out", progress=False, **kwargs)
    with pytest.raises(ClotclfError, match="--manifest"):
        export_patches(REAL_SLIDE, tmp_path / "out", manifest=tmp_path / "m.csv", progress=False)
    garbage = tmp_path / "slides" / "broken.svs"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a slide at all")
    with pytest.raises(ClotclfError, match="no slide could be read.*broken"):
        export_patches(garbage.parent, tmp_path / "out", progress=False)
    (tmp_path / "taken" / "tissue").mkdir(parents=True)
    with pytest.raises(ClotclfError, match="--overwrite"):
        export_patches(REAL_SLIDE, tmp_path / "taken", progress=False)


def test_export_patches_from_the_real_slide(tmp_path):
    result = CliRunner().invoke(cli, ["export-patches", str(REAL_SLIDE), "--out", str(tmp_path / "p"), "--per-slide", "15",
                                      "--size", "48", "--tile-size", "64", "--downsample", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_tissue"] == summary["n_background"] == 15
    tissue = sorted((tmp_path / "p" / "tissue").glob("*.png"))
    glass = sorted((tmp_path / "p" / "background").glob("*.png"))
    assert len(tissue) == len(glass) == 15
    t = np.stack([np.asarray(Image.open(p)) for p in tissue])
    g = np.stack([np.asarray(Image.open(p)) for p in glass])
    assert t.shape == (15, 48, 48, 3)
    assert g.mean() > 200 and t.mean() < g.mean() - 30  # glass is bright, stained tissue is not
    lines = (tmp_path / "p" / "patches.csv").read_text().splitlines()
    assert lines[0].startswith("file,label,image_id,x,y") and len(lines) == 31

    small = CliRunner().invoke(cli, ["export-patches", str(REAL_SLIDE), "--out", str(tmp_path / "q"), "--tile-size", "600",
                                     "--downsample", "10"])  # the published geometry: 6000-px patches
    assert small.exit_code == 2 and "no slide could be read" in small.stderr and "smaller than one patch" in small.stderr


def test_real_slide_end_to_end(tmp_path):
    """export-patches -> train on the top half of the real slide -> filter the unseen bottom half -> tiling."""
    from clotclf_core.tiling.patchset import export_patches
    from clotclf_mobilenet_bg._train import make_settings, train_filter

    export_patches(REAL_SLIDE, tmp_path / "all", per_slide=150, size=64, tile_size=64, downsample=2, progress=False)
    height = 2967
    train, test = tmp_path / "train", {"tissue": [], "background": []}
    for label in ("tissue", "background"):
        (train / label).mkdir(parents=True)
        for p in sorted((tmp_path / "all" / label).glob("*.png")):
            y = int(p.stem.rsplit("_y", 1)[1])
            if y + 128 <= height // 2:
                shutil.copy(p, train / label / p.name)
            elif y >= height // 2:
                test[label].append(np.asarray(Image.open(p)))
    assert min(len(v) for v in test.values()) >= 20
    run = tmp_path / "run"
    train_filter(train, run, make_settings(input_size=64, epochs=3, batch_size=16, device="cpu"), progress=False)

    flt = build_filter(weights=str(run), device="cpu")
    s_t, s_g = flt.score(np.stack(test["tissue"])), flt.score(np.stack(test["background"]))
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    y = np.r_[np.ones(len(s_t)), np.zeros(len(s_g))]
    scores = np.r_[s_t, s_g]
    auc = roc_auc_score(y, scores)
    bal = balanced_accuracy_score(y, scores >= 0.5)
    print(f"held-out bottom half: {len(s_t)} tissue / {len(s_g)} background, AUC {auc:.3f}, balanced accuracy {bal:.3f}")
    assert auc >= 0.95 and bal >= 0.85

    # the trained filter as the second filter of `clotclf tile`
    from clotclf_core.tiling.run import tile_slides
    from clotclf_core.tiling.settings import TileSettings
    from clotclf_core.tiling.tileset import TileSet

    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(REAL_SLIDE, slides / REAL_SLIDE.name)
    settings = TileSettings(downsample=2, tile_size=64, train_size=64, min_tissue=0.1)
    summary = tile_slides(slides, tmp_path / "tiles", settings=settings,
                          filters=[("otsu", {}), ("mobilenetv3", {"weights": str(run), "device": "cpu"})], progress=False)
    ts = TileSet(tmp_path / "tiles")
    assert summary["tiles_kept"] == len(ts) > 0
    assert (ts.index["score_mobilenetv3"] >= 0.5).all()
    described = ts.settings["filters"][1]
    assert described["name"] == "mobilenetv3" and described["describe"]["weights_sha256"] == flt.config["weights_sha256"]


def test_export_patches_from_the_demo_cohort(tmp_path):
    """A manifest selects the slides; every TIFF layout of the demo cohort is read; the set is balanced."""
    from clotclf_core.demo.cohort import DEMO_TILING, write_demo_cohort

    manifest = write_demo_cohort(tmp_path / "demo", seed=0, n_patients=4)
    result = CliRunner().invoke(cli, ["export-patches", str(tmp_path / "demo" / "slides"), "--manifest", str(manifest),
                                      "--out", str(tmp_path / "p"), "--per-slide", "6", "--size", "32",
                                      "--tile-size", str(DEMO_TILING["tile_size"]), "--downsample", str(DEMO_TILING["downsample"]),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "p" / "patchset.json").read_text())
    n_slides = len(list((tmp_path / "demo" / "slides").iterdir()))
    assert summary["slides_used"] == n_slides and not summary["slides_skipped"]
    assert summary["n_tissue"] == summary["n_background"] >= 10
    assert all(c["tissue"] <= 6 and c["background"] <= 6 for c in summary["per_slide_counts"].values())
    t = np.stack([np.asarray(Image.open(p)) for p in (tmp_path / "p" / "tissue").glob("*.png")])
    g = np.stack([np.asarray(Image.open(p)) for p in (tmp_path / "p" / "background").glob("*.png")])
    assert t.shape[1:] == (32, 32, 3) and g.mean() > 200 and t.mean() < g.mean() - 30


def test_core_load_model_refuses_a_filter_run(synthetic_run):
    from clotclf_core.models.saved import load_model

    with pytest.raises(ModelLoadError, match="not a clot classifier.*--filter mobilenetv3:weights="):
        load_model(synthetic_run)

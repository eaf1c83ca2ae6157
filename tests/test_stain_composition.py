"""The composition encoder (named features, raw pixels, blank tiles), stain normalisation and HED
jitter (exactness, records, what predict re-applies, bad specs), demo-data --stain-shift, and a MIL
run whose aggregator adds its own loss (CLAM) end to end on the composition encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tilesets import make_mil_tileset

from clotclf_core.features.embed import embed_tileset
from clotclf_core.features.encoder import build_encoder, encoder_from_record
from clotclf_core.plugin import ClotclfError
from clotclf_core.tiling import stain as st


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return make_mil_tileset(tmp_path_factory.mktemp("comp") / "tiles")


def _tissue_tile(seed=0, side=48, base=(235, 180, 205)):
    """Pink 'fibrin' with red discs and a few purple nuclei: something every feature group measures."""
    rng = np.random.default_rng(seed)
    tile = np.full((side, side, 3), base, np.uint8)
    yy, xx = np.mgrid[:side, :side]
    for _ in range(6):
        cy, cx = rng.integers(0, side, 2)
        tile[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = (205, 50, 70)
    for _ in range(3):
        cy, cx = rng.integers(0, side, 2)
        tile[(yy - cy) ** 2 + (xx - cx) ** 2 < 6] = (85, 50, 130)
    return tile


# ----------------------------------------------------------------------------- composition encoder


def test_composition_features_are_named_measured_on_raw_pixels_and_recorded(tiles, tmp_path):
    enc = build_encoder("composition", {}, tile_size=32, device="cpu")
    rec = enc.record()
    assert rec["mean"] == [0.0, 0.0, 0.0] and rec["std"] == [1.0, 1.0, 1.0]  # identity: it gets x / 255
    names = rec["feature_names"]
    assert len(names) == enc.num_features == len(set(names))
    assert {"red_cell_fraction", "fibrin_platelet_fraction", "nucleated_fraction", "haematoxylin_mean",
            "lab_l_mean", "glcm_contrast_d1", "lbp_uniform_0"} <= set(names)
    feats = dict(zip(names, enc(_tissue_tile()[None]).astype(np.float32)[0]))
    assert feats["tissue_fraction"] == pytest.approx(1.0)
    assert feats["red_cell_fraction"] > 0.05 and feats["nucleated_fraction"] > 0.01 and feats["fibrin_platelet_fraction"] > 0.5
    red = np.full((32, 32, 3), (205, 50, 70), np.uint8)[None]
    assert dict(zip(names, enc(red)[0]))["red_cell_fraction"] == pytest.approx(1.0)
    assert dict(zip(names, enc(red)[0]))["rgb_r_mean"] == pytest.approx(205 / 255, abs=2e-3)  # raw pixels, undone nothing
    # a blank tile has a defined result: statistics of the glass, no area fractions, tissue fraction 0
    blank = enc(np.full((2, 32, 32, 3), 243, np.uint8))
    b = dict(zip(names, blank[0]))
    assert np.isfinite(blank).all() and b["tissue_fraction"] == 0 and b["red_cell_fraction"] == 0
    summary = embed_tileset(tiles, tmp_path / "feats", "composition", progress=False, device="cpu")
    meta = json.loads((tmp_path / "feats" / "features.json").read_text())
    assert meta["encoder"]["feature_names"] == names and summary["num_features"] == len(names)


def test_bad_feature_names_are_refused(fake_dist):
    src = '''
from clotclf_core.plugin import hookimpl, ComponentSpec, NoOptions

def build(opts):
    import torch
    class B(torch.nn.Module):
        num_features = 3
        feature_names = ["a", "a", "b"]
        def forward(self, x):
            return x.mean((2, 3))
    return B()

@hookimpl
def clotclf_backbones():
    return [ComponentSpec("backbone", "dupnames", "repeats a feature name", NoOptions, build)]
'''
    from clotclf_core.plugin import PluginError
    from clotclf_core.plugin_manager import reset_manager

    fake_dist("fake-dupnames", "fake_dupnames", src, "fake_dupnames")
    reset_manager()
    with pytest.raises(PluginError, match="'dupnames' declares feature_names that are not 3 distinct"):
        build_encoder("dupnames", {}, tile_size=16, device="cpu")


def test_end_to_end_mil_with_composition_and_clam_trains_its_instance_branch():
    """End to end on the composition encoder: it has no parameters, so only the aggregator learns; the
    training step's call (targets given) returns CLAM's instance loss, whose gradient reaches the
    instance classifiers. (The smoke test of every backbone x head covers the tile-level build.)"""
    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mil", backbone="composition", aggregator="clam-sb", input_size=48,
                                    aggregator_options={"hidden": 8, "attention_dim": 4, "k_sample": 2}))
    assert model.config.mean == (0.0, 0.0, 0.0) and model.config.std == (1.0, 1.0, 1.0)  # the declared identity
    assert not list(model.backbone.parameters()) and list(model.aggregator.parameters())
    bags = torch.from_numpy(np.stack([np.stack([_tissue_tile(s + 4 * b) for s in range(4)]) for b in range(2)]))
    x = bags.permute(0, 1, 4, 2, 3).float() / 255.0  # (B, N, 3, S, S) as the core hands it over
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    model.train()
    logits, extra = model(x, mask, targets=torch.tensor([0, 1]))
    assert logits.shape == (2, 2) and extra.dim() == 0 and float(extra.detach()) > 0
    (torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])) + extra).backward()
    assert all(p.grad is not None for p in model.aggregator.net.inst_classifiers.parameters())
    model.eval()
    plain = model(x, mask)  # scoring never passes targets: logits only
    assert plain.shape == (2, 2)


# ----------------------------------------------------------------------------- stain normalisation


def test_stain_specs_and_their_errors(tmp_path):
    target = st.parse_stain_normalise("macenko")
    assert target.method == "macenko" and np.asarray(target.params["he"]).shape == (3, 2)
    assert st.parse_stain_normalise(None) is None and st.parse_stain_normalise("none") is None
    for bad, why in (("vahadane", "unknown method 'vahadane'"), ("reinhard", "needs a reference image"),
                     ("macenko:tgt=x.png", "'tgt=x.png' is not an option"),
                     (f"macenko:target={tmp_path / 'missing.png'}", "is not a file")):
        with pytest.raises(ClotclfError, match=why):
            st.parse_stain_normalise(bad)
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 245, np.uint8)).save(tmp_path / "glass.png")
    with pytest.raises(ClotclfError, match="fewer than 2000 stained pixels"):
        st.parse_stain_normalise(f"reinhard:target={tmp_path / 'glass.png'}")
    Image.fromarray(np.concatenate([_tissue_tile(s, 64, (200, 110, 160)) for s in range(3)])).save(tmp_path / "ref.png")
    rein = st.parse_stain_normalise(f"reinhard:target={tmp_path / 'ref.png'}")
    assert rein.source.startswith("image sha256 ") and str(tmp_path) not in json.dumps(rein.record())
    assert st.StainTarget.from_record(rein.record()) == rein
    with pytest.raises(ClotclfError, match="damaged"):
        st.StainTarget.from_record({"method": "macenko", "he": [1, 2], "max_c": [1, 1]})


def test_macenko_per_slide_maps_a_stain_shift_back_and_leaves_blank_slides_alone():
    target = st.parse_stain_normalise("macenko")
    slide = np.stack([_tissue_tile(s, 48, (200, 110, 160)) for s in range(8)])
    od = -np.log((slide.astype(np.float64) + 1) / 256)
    shifted = np.clip(256 * np.exp(-od * np.array([1.3, 1.1, 0.8])) - 1, 0, 255).astype(np.uint8)  # another lab's stain
    a = st.SlideNormaliser.fit(target, slide)(slide).astype(float)
    b = st.SlideNormaliser.fit(target, shifted)(shifted).astype(float)
    assert np.abs(a - b).mean() < 0.1 * np.abs(slide.astype(float) - shifted).mean()  # measured 0.29 vs 13.2
    glass = np.full((4, 32, 32, 3), 244, np.uint8)
    norm = st.SlideNormaliser.fit(target, glass)
    assert not norm.fitted and np.array_equal(norm(glass), glass)


def test_hed_jitter_is_exact_at_zero_and_seeded():
    from clotclf_core.tiling.dataset import build_transform
    from clotclf_core.training.settings import AugmentSettings

    tile = _tissue_tile()
    assert np.array_equal(st.hed_jitter(tile, np.ones(3), np.zeros(3)), tile)  # no skimage clamp: lossless
    off = {"hflip": 0, "vflip": 0, "rot90": 0, "brightness_contrast_p": 0, "shift_scale_rotate_p": 0}
    t = build_transform(48, 48, AugmentSettings(hed_sigma=0.05, hed_bias=0.005, hed_p=1.0, **off))
    outs = []
    for seed in (3, 3, 4):
        t.set_random_seed(seed)
        outs.append(t(image=tile)["image"])
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    assert 0 < np.abs(outs[0].astype(float) - tile).mean() < 20
    assert len(build_transform(48, 48, AugmentSettings()).transforms) == 5  # off by default: the pipeline as before


def test_embed_with_stain_normalisation_is_recorded_and_reapplied(tiles, tmp_path):
    from badinput import invoke

    out = tmp_path / "feats"
    res = invoke(["embed", "--tiles", str(tiles), "--backbone", "composition", "--out", str(out),
                  "--stain-normalise", "macenko", "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.stderr
    rec = json.loads((out / "features.json").read_text())["encoder"]
    assert rec["stain_normalise"]["method"] == "macenko" and rec["stain_normalise"]["per"] == "slide"
    again = encoder_from_record(rec, device="cpu")  # what predict rebuilds: the same normalisation
    assert again.stain == st.StainTarget.from_record(rec["stain_normalise"])
    plain = invoke(["embed", "--tiles", str(tiles), "--backbone", "composition", "--out", str(out), "--device", "cpu", "-q"])
    assert plain.exit_code == 2 and "macenko stain normalisation" in plain.stderr  # another encoder: refused, named
    bad = invoke(["embed", "--tiles", str(tiles), "--backbone", "composition", "--out", str(tmp_path / "x"),
                  "--stain-normalise", "vahadane", "-q"])
    assert bad.exit_code == 2 and "unknown method 'vahadane'" in bad.stderr and not (tmp_path / "x").exists()


def test_train_refuses_stain_normalisation_on_features():
    from clotclf_core.training.settings import resolve_settings

    with pytest.raises(ClotclfError, match="clotclf embed --stain-normalise"):
        resolve_settings(None, {"features": "F", "aggregator": "abmil", "stain_normalise": "macenko"})


# ----------------------------------------------------------------------------- demo stain shift


def test_demo_stain_shift_moves_each_centre_and_is_bounded():
    from clotclf_core.demo.cohort import plan_cohort, shift_stains

    slides = plan_cohort(0, 12)
    shifted = shift_stains(slides, 1.0)
    by_centre = {}
    for a, b in zip(slides, shifted):
        assert a.label == b.label and a.center_id == b.center_id and a.stain != b.stain
        by_centre.setdefault(a.center_id, set()).add(tuple(round(x / y, 6) for x, y in zip(b.stain, a.stain)))
    assert all(len(v) == 1 for v in by_centre.values()) and len({next(iter(v)) for v in by_centre.values()}) == len(by_centre)
    assert shift_stains(slides, 0.0) == slides
    with pytest.raises(ClotclfError, match="--stain-shift must be between 0 and 2"):
        shift_stains(slides, 3.0)

"""CCT backbone plugin: the paper's parameter counts, shapes, sequence pooling, position
embeddings, option validation, and training / save / load inside a ClotClassifier.

Everything trains or runs forward on 32-px (or smaller-than-published) inputs; the large
variants are only counted, built on the meta device (shapes without memory or init time).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clotclf_cct import VARIANTS, CCTOptions, build
from clotclf_cct.model import DropPath, drop_path_rates
from clotclf_cct.options import token_grid
from clotclf_core.models.build import build_model
from clotclf_core.models.config import ModelConfig
from clotclf_core.models.saved import load_model, save_model
from clotclf_core.plugin import ConfigError
from clotclf_core.plugin_manager import get_manager


def _cct(**opts):
    return build(CCTOptions(**opts))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- the paper's numbers

# Parameter counts published in the README of SHI-Labs/Compact-Transformers (the paper's code):
# CIFAR-10 table (10 classes, 3 decimals) and ImageNet table (1000 classes, 2 decimals). Some rows
# are rounded, some truncated (CCT-14/7x2: 22,367,273 is listed as 22.36M), so a count must agree
# to within one unit of the last published digit. The CIFAR-10 CCT-6/3x1 row (3.168M) is exactly
# the model without a position embedding.
PAPER_COUNTS = [
    ("cct_2_3x2_32", {}, 10, 0.284, 3),
    ("cct_4_3x2_32", {}, 10, 0.482, 3),
    ("cct_6_3x2_32", {}, 10, 3.327, 3),
    ("cct_7_3x2_32", {}, 10, 3.853, 3),
    ("cct_7_3x1_32", {}, 10, 3.760, 3),
    ("cct_6_3x1_32", {"positional_embedding": "none"}, 10, 3.168, 3),
    ("cct_14_7x2_224", {}, 1000, 22.36, 2),
    ("cct_14_7x2_384", {}, 1000, 22.51, 2),
]


@pytest.mark.parametrize("variant, extra, classes, millions, digits", PAPER_COUNTS)
def test_parameter_counts_match_the_paper(variant, extra, classes, millions, digits):
    with torch.device("meta"):
        backbone = _cct(variant=variant, **extra)
    total = _count(backbone) + backbone.num_features * classes + classes  # + a Linear classifier
    assert abs(total / 1e6 - millions) < 10**-digits


def test_classifier_parameter_count_through_the_plugin_manager():
    labels = [f"c{i}" for i in range(10)]
    cfg = ModelConfig(backbone="cct", backbone_options={"variant": "cct_7_3x1_32"}, head="linear", labels=labels, input_size=32)
    model = build_model(cfg)
    assert model.plugins["backbone"]["plugin"] == "cct"
    assert abs(_count(model) / 1e6 - 3.760) < 1e-3


def test_spec_module_imports_no_torch():
    code = "import sys, clotclf_cct; print(sorted(m for m in ('torch', 'timm', 'openslide') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert get_manager().get("backbone", "cct").plugin == "cct"


# --------------------------------------------------------------------------- shapes and pooling


@pytest.mark.parametrize(
    "opts, side, grid",
    [
        ({"variant": "cct_2_3x2_32"}, 32, (8, 8)),
        ({"variant": "cct_7_3x1_32", "num_layers": 1}, 32, (16, 16)),
        ({"variant": "cct_7_7x2_224", "img_size": 64, "num_layers": 1}, 64, (4, 4)),
        ({"variant": "cct_14_7x2_224", "img_size": 32, "num_layers": 1}, 32, (2, 2)),
        ({"variant": "cct_4_3x2_32", "n_conv_layers": 3, "kernel_size": 5, "num_layers": 1}, 32, (4, 4)),
    ],
)
def test_output_shapes(opts, side, grid):
    torch.manual_seed(0)
    model = _cct(**opts).eval()
    with torch.no_grad():
        features, weights = model.forward_with_weights(torch.randn(2, 3, side, side))
    assert model.num_features == VARIANTS[opts["variant"]].embed_dim
    assert features.shape == (2, model.num_features) and torch.isfinite(features).all()
    assert model.grid_size == grid and weights.shape == (2, *grid)


def test_sequence_pooling_is_a_softmax_weighted_sum_of_the_normalised_tokens():
    torch.manual_seed(0)
    model = _cct(variant="cct_2_3x2_32").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features, weights = model.forward_with_weights(x)
        tokens, _ = model.tokenizer(x)
        tokens = tokens + model.pos_embed
        for block in model.blocks:
            tokens = block(tokens)
        tokens = model.norm(tokens)
        assert torch.equal(model(x), features)
    assert torch.allclose(weights.sum(dim=(1, 2)), torch.ones(3)) and (weights > 0).all()
    manual = (weights.flatten(1).unsqueeze(-1) * tokens).sum(dim=1)
    assert torch.allclose(features, manual, atol=1e-5)
    assert not hasattr(model, "cls_token")


# --------------------------------------------------------------------------- position embeddings


def test_learnable_sine_and_no_position_embedding():
    torch.manual_seed(0)
    learn = _cct(variant="cct_2_3x2_32")
    sine = _cct(variant="cct_2_3x2_32", positional_embedding="sine")
    none = _cct(variant="cct_2_3x2_32", positional_embedding="none")
    n, d = 64, 128
    assert isinstance(learn.pos_embed, nn.Parameter) and learn.pos_embed.shape == (1, n, d)
    assert 0.1 < float(learn.pos_embed.detach().std()) < 0.3  # trunc-normal, std 0.2 before truncation at +-2
    assert "pos_embed" in learn.state_dict()
    # sine is fixed: not trained, not saved (rebuilt from the config), so it costs no parameters
    assert sine.pos_embed.shape == (1, n, d) and not sine.pos_embed.requires_grad
    assert "pos_embed" not in sine.state_dict()
    assert _count(learn) - _count(sine) == n * d and _count(sine) == _count(none)
    pe, pos = sine.pos_embed[0], torch.arange(n, dtype=torch.float32)
    assert torch.allclose(pe[:, 0], torch.sin(pos)) and torch.allclose(pe[:, 1], torch.cos(pos))
    assert torch.allclose(pe[:, 2], torch.sin(pos / 10000 ** (2 / d)))
    assert torch.allclose(pe[:, d - 1], torch.cos(pos / 10000 ** ((d - 2) / d)))
    assert none.pos_embed is None
    x = torch.randn(1, 3, 32, 32)
    outs = [m.eval()(x) for m in (learn, sine, none)]
    assert all(o.shape == (1, d) for o in outs)


def test_img_size_sets_the_sequence_length_the_arithmetic_predicts():
    for variant, arch in VARIANTS.items():
        for img in sorted({arch.img_size, 48, 100}):
            with torch.device("meta"):
                model = _cct(variant=variant, img_size=img, num_layers=1)
            side = token_grid(CCTOptions(variant=variant, img_size=img).resolve())
            assert model.grid_size == (side, side), (variant, img)
            assert model.sequence_length == side * side == model.pos_embed.shape[1]
    assert _cct(variant="cct_7_3x1_32", num_layers=1).sequence_length == 256
    assert _cct(variant="cct_7_3x1_32", img_size=64, num_layers=1).sequence_length == 1024


def test_other_input_size_resamples_the_learnable_embedding_with_a_warning():
    model = _cct(variant="cct_2_3x2_32", num_layers=1).eval()
    gh, gw = model.grid_size
    with torch.no_grad():  # channel 0 = row index, channel 1 = column index
        ramp = torch.zeros_like(model.pos_embed).reshape(gh, gw, -1)
        ramp[..., 0] = torch.arange(gh, dtype=torch.float32).unsqueeze(1)
        ramp[..., 1] = torch.arange(gw, dtype=torch.float32).unsqueeze(0)
        model.pos_embed.copy_(ramp.reshape(1, gh * gw, -1))
        with pytest.warns(UserWarning, match="img_size"):
            _, weights = model.forward_with_weights(torch.randn(1, 3, 64, 48))
        resampled = model._pos_embed_for((16, 12), model.pos_embed).reshape(16, 12, -1)
    assert weights.shape == (1, 16, 12)
    rows, cols = resampled[..., 0], resampled[..., 1]
    assert torch.allclose(rows, rows[:, :1].expand_as(rows)) and (rows[1:, 0] >= rows[:-1, 0]).all()
    assert torch.allclose(cols, cols[:1, :].expand_as(cols)) and (cols[0, 1:] >= cols[0, :-1]).all()
    assert rows[-1, 0] > rows[0, 0] + 5 and cols[0, -1] > cols[0, 0] + 5

    none = _cct(variant="cct_2_3x2_32", num_layers=1, positional_embedding="none").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert none(torch.randn(1, 3, 64, 48)).shape == (1, 128)


# --------------------------------------------------------------------------- options


def test_overrides_resolve_on_top_of_the_variant():
    arch = CCTOptions(variant="cct_7_3x1_32", kernel_size=5, num_layers=2).resolve()
    assert (arch.kernel_size, arch.padding, arch.stride, arch.num_layers, arch.embed_dim) == (5, 2, 1, 2, 256)
    assert CCTOptions(variant="cct_14_7x2_224", padding=1).resolve().padding == 1
    default = CCTOptions().resolve()
    assert CCTOptions().variant == "cct_7_7x2_224" and default.img_size == 224 and default.embed_dim == 256
    assert (default.dropout, default.attention_dropout, default.drop_path_rate) == (0.0, 0.1, 0.1)


def test_stochastic_depth_rises_linearly_over_layers():
    model = _cct(variant="cct_4_3x2_32", drop_path_rate=0.3)
    assert [round(b.drop_path.p, 6) for b in model.blocks] == [0.0, 0.1, 0.2, 0.3]
    assert drop_path_rates(CCTOptions(num_layers=1).resolve()) == [0.0]
    drop = DropPath(0.5).train()
    out = drop(torch.ones(400, 3))
    kept = out[:, 0] > 0
    assert torch.equal(out[kept], torch.full_like(out[kept], 2.0)) and (out[~kept] == 0).all()
    assert 100 < int(kept.sum()) < 300
    assert torch.equal(drop.eval()(torch.ones(4, 3)), torch.ones(4, 3))


@pytest.mark.parametrize(
    "opts, words",
    [
        ({"embed_dim": 130}, ["embed_dim 130 is not divisible by num_heads 4 (from cct_7_7x2_224)"]),
        ({"variant": "cct_7_3x1_32", "num_heads": 5}, ["embed_dim 256 (from cct_7_3x1_32)", "num_heads 5"]),
        ({"variant": "cct_15_7x2_224"}, ["option 'variant'", "'cct_14_7x2_224'", "cct_15_7x2_224"]),
        ({"pretrained": True}, ["no 'pretrained' option", "trains from scratch"]),
        ({"img_size": 4, "padding": 0}, ["img_size 4 is too small", "conv layer 1 of 2"]),
        ({"img_size": 16, "padding": 0}, ["img_size 16 is too small", "conv layer 2 of 2"]),
        ({"num_layers": 0}, ["option 'num_layers'", "greater than or equal to 1"]),
        ({"positional_embedding": "rope"}, ["option 'positional_embedding'", "'learnable'", "rope"]),
        ({"drop_path_rate": 1.0}, ["option 'drop_path_rate'"]),
        ({"mlp_ratio": 0.001}, ["mlp_ratio 0.001", "empty MLP"]),
        ({"depth": 7}, ["unknown option 'depth'"]),
        ({"img_size": "99x"}, ["option 'img_size'", "99x"]),
    ],
)
def test_bad_options_fail_with_one_clear_message(opts, words):
    with pytest.raises(ConfigError) as err:
        get_manager().get("backbone", "cct").validate_options(opts)
    message = str(err.value)
    assert message.startswith("backbone 'cct': ") and "\n" not in message and "(value)" not in message
    for word in words:
        assert word in message
    assert "show-plugin cct" in message


def test_bad_options_fail_before_build_model_builds_anything():
    cfg = ModelConfig(backbone="cct", backbone_options={"variant": "cct_2_3x2_32", "num_heads": 3})
    with pytest.raises(ConfigError, match="embed_dim 128 .* not divisible by num_heads 3"):
        build_model(cfg)


# --------------------------------------------------------------------------- training and run directories


def test_same_seed_builds_the_same_model():
    states = []
    for _ in range(2):
        torch.manual_seed(7)
        states.append(_cct(variant="cct_2_3x2_32").state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("head, head_options, position", [("linear", {}, "learnable"), ("mlp", {"hidden": 16}, "sine")])
def test_classifier_trains_one_step_and_round_trips(tmp_path, head, head_options, position):
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="cct",
        backbone_options={"variant": "cct_2_3x2_32", "positional_embedding": position},
        head=head,
        head_options=head_options,
        input_size=32,
    )
    model = build_model(cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for key in ("backbone.tokenizer.conv_layers.0.0.weight", "backbone.blocks.1.self_attn.qkv.weight", "backbone.attention_pool.weight"):
        assert key in changed
    assert ("backbone.pos_embed" in changed) == (position == "learnable")

    model.eval()
    with torch.no_grad():
        expected = model(x)
    save_model(model, tmp_path / "run")
    loaded = load_model(tmp_path / "run")
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    # config.json records the resolved options: those given, and every default beside them
    assert loaded.config.backbone_options == model.config.backbone_options
    assert loaded.config.backbone_options.items() >= {"variant": "cct_2_3x2_32", "positional_embedding": position}.items()

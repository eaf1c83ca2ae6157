"""The aggregator kind: contract, the built-in mean and abmil, discovery, third-party aggregators."""

from __future__ import annotations

import json

import pytest
import torch

from clotclf_core.models.aggregate import build_aggregator, require_attention, run_aggregator
from clotclf_core.plugin import ClotclfError, PluginError
from clotclf_core.plugin.masked import masked_mean, masked_softmax
from clotclf_core.plugin_manager import PluginManager

F, C = 12, 2
#: every built-in aggregator, with options small enough for tests
BUILT_IN = {"mean": {}, "abmil": {}, "transmil": {"dim": 16, "heads": 2}, "dsmil": {"attention_dim": 8},
            "clam-sb": {"hidden": 16, "attention_dim": 8, "k_sample": 2}}
ATTENTION = ["abmil", "transmil", "dsmil", "clam-sb"]


def _bags(seed=0, b=3, n=6):
    g = torch.Generator().manual_seed(seed)
    bags = torch.randn(b, n, F, generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 4:] = False  # bag 0: 4 real tiles
    mask[1, 1:] = False  # bag 1: one real tile
    return bags, mask


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_padding_changes_nothing(name):
    torch.manual_seed(0)
    agg = build_aggregator(name, BUILT_IN[name], F, C).eval()
    bags, mask = _bags()
    logits, _ = run_aggregator(agg, bags, mask)
    garbage = bags.clone()
    garbage[~mask] = 1e4  # whatever sits in padded positions must not matter
    logits2, _ = run_aggregator(agg, garbage, mask)
    assert torch.allclose(logits, logits2, atol=1e-5)
    # each bag alone, unpadded, gives the same logits: padding is invisible and bags are independent
    for i in range(2):
        alone, _ = run_aggregator(agg, bags[i:i + 1, mask[i]], None)
        assert torch.allclose(alone, logits[i:i + 1], atol=1e-5)


@pytest.mark.parametrize("name", ATTENTION)
def test_attention_contract(name):
    torch.manual_seed(0)
    agg = build_aggregator(name, BUILT_IN[name], F, C).eval()
    assert agg.has_attention is True
    bags, mask = _bags()
    logits, att = run_aggregator(agg, bags, mask, return_attention=True)
    assert logits.shape == (3, C) and att.shape == (3, 6)
    assert torch.all(att[~mask] == 0)
    assert torch.allclose(att.sum(1), torch.ones(3), atol=1e-6)
    assert torch.all(att >= 0)
    garbage = bags.clone()
    garbage[~mask] = 1e4
    assert torch.allclose(run_aggregator(agg, garbage, mask, return_attention=True)[1], att, atol=1e-6)
    assert torch.allclose(att[1], torch.tensor([1.0, 0, 0, 0, 0, 0]))  # one tile: all the attention


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread. With two on a busy 2-core machine every op waits for the second
    (150 steps took 12.6 s instead of 0.3 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_abmil_attention_follows_the_evidence(one_thread):
    """After a few steps on bags where one tile carries the class, attention lands on that tile."""
    torch.manual_seed(0)
    agg = build_aggregator("abmil", {"dropout": 0.0}, F, C)
    opt = torch.optim.Adam(agg.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        bags = torch.randn(16, 8, F, generator=g)
        y = torch.randint(0, 2, (16,), generator=g)
        pos = torch.randint(0, 8, (16,), generator=g)
        bags[torch.arange(16), pos, 0] += 4.0 * (2 * y - 1)  # the one informative tile
        loss = torch.nn.functional.cross_entropy(run_aggregator(agg, bags, None)[0], y)
        opt.zero_grad(); loss.backward(); opt.step()
    agg.eval()
    bags = torch.randn(64, 8, F, generator=g)
    y = torch.randint(0, 2, (64,), generator=g)
    pos = torch.randint(0, 8, (64,), generator=g)
    bags[torch.arange(64), pos, 0] += 4.0 * (2 * y - 1)
    logits, att = run_aggregator(agg, bags, None, return_attention=True)
    assert (logits.argmax(1) == y).float().mean() > 0.9
    assert (att.argmax(1) == pos).float().mean() > 0.8


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_batch_of_one_empty_bags_and_gradients(name):
    torch.manual_seed(0)
    agg = build_aggregator(name, BUILT_IN[name], F, C).train()
    bags = torch.randn(1, 5, F, requires_grad=True)
    mask = torch.zeros(1, 5, dtype=torch.bool)  # a bag with no real tile: finite, no NaN anywhere
    logits, att = run_aggregator(agg, bags, mask, return_attention=True)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in agg.parameters() if p.grad is not None)
    if att is not None:
        assert torch.all(att == 0)
    single, _ = run_aggregator(agg, torch.randn(1, 1, F), None)
    assert single.shape == (1, C)


def test_mean_is_the_mean_of_embeddings():
    agg = build_aggregator("mean", {"hidden": 0, "dropout": 0.0}, F, C).eval()
    bags, mask = _bags()
    logits, att = run_aggregator(agg, bags, mask, return_attention=True)
    assert att is None and agg.has_attention is False
    expected = agg.classifier(bags[0, :4].mean(0, keepdim=True))
    assert torch.allclose(logits[0:1], expected, atol=1e-6)


def test_bf16_autocast_forward():
    agg = build_aggregator("abmil", {}, F, C).eval()
    bags, mask = _bags()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, att = run_aggregator(agg, bags, mask, return_attention=True)
    assert torch.isfinite(logits.float()).all() and torch.all(att[~mask] == 0)


def test_masked_helpers():
    scores = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    w = masked_softmax(scores, mask)
    assert torch.allclose(w[0, :2], torch.softmax(torch.tensor([1.0, 2.0]), 0)) and w[0, 2] == 0 and torch.all(w[1] == 0)
    x = torch.arange(12.0).view(2, 3, 2)
    assert torch.allclose(masked_mean(x, mask)[0], x[0, :2].mean(0)) and torch.all(masked_mean(x, mask)[1] == 0)


def test_options_are_validated():
    with pytest.raises(ClotclfError, match="hidden"):
        build_aggregator("abmil", {"hidden": "wide"}, F, C)
    with pytest.raises(ClotclfError, match="unknown option 'heads'"):
        build_aggregator("abmil", {"heads": 2}, F, C)
    with pytest.raises(PluginError, match="unknown aggregator 'abmi'.*abmil"):
        build_aggregator("abmi", {}, F, C)


def test_require_attention():
    require_attention(build_aggregator("abmil", {}, F, C))
    with pytest.raises(ClotclfError, match="'mean' has no attention weights.*abmil"):
        require_attention(build_aggregator("mean", {}, F, C))


def test_recorded_for_rebuilding():
    agg = build_aggregator("abmil", {"hidden": 32}, F, C)
    rec = agg.clotclf_record
    assert rec["name"] == "abmil" and rec["options"]["hidden"] == 32 and rec["distribution"] == "clotclf"


def test_listed_by_list_plugins():
    from badinput import invoke

    out = invoke(["list-plugins", "--kind", "aggregator", "--json"])
    assert out.exit_code == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["name"] for r in rows} == set(BUILT_IN) and all(r["kind"] == "aggregator" and r["status"] == "ok" for r in rows)
    shown = invoke(["show-plugin", "abmil"])
    assert shown.exit_code == 0 and "attention_dim" in shown.stdout


BROKEN = """
from clotclf_core.plugin import hookimpl
from clotclf_core.plugin import ComponentSpec, NoOptions

def build(opts, in_features, num_classes):
    import torch
    class Bad(torch.nn.Module):
        has_attention = True
        def forward(self, bags, mask, return_attention=False):
            out = bags.mean(1)  # (B, F): not (B, C)
            return (out, None) if return_attention else out
    return Bad()

def build_untyped(opts, in_features, num_classes):
    import torch
    return torch.nn.Linear(in_features, num_classes)

@hookimpl
def clotclf_aggregators():
    return [ComponentSpec("aggregator", "bad", "wrong shapes", NoOptions, build),
            ComponentSpec("aggregator", "untyped", "no has_attention", NoOptions, build_untyped)]
"""


def test_third_party_aggregator_contract_checked(fake_dist):
    fake_dist("fake-agg", "fake_agg", BROKEN, "fake_agg")
    from clotclf_core.plugin_manager import reset_manager

    reset_manager()
    mgr = PluginManager()
    assert {"bad", "untyped", "mean", "abmil"} <= set(mgr.names("aggregator"))
    bad = build_aggregator("bad", {}, F, C)
    with pytest.raises(PluginError, match="aggregator 'bad' returned logits of shape \\(3, 12\\)"):
        run_aggregator(bad, *_bags())
    with pytest.raises(PluginError, match="has_attention"):
        build_aggregator("untyped", {}, F, C)


def test_new_kind_is_one_table_entry():
    from clotclf_core.plugin import KINDS, hookspecs
    from clotclf_core.plugin.spec import KIND_HOOKS

    assert KINDS == tuple(KIND_HOOKS) and KIND_HOOKS["aggregator"] == "clotclf_aggregators"
    assert all(hasattr(hookspecs, hook) and getattr(hookspecs, hook).__doc__ for hook in KIND_HOOKS.values())


LEAKY = """
from clotclf_core.plugin import hookimpl
from clotclf_core.plugin import ComponentSpec, NoOptions

def build(opts, in_features, num_classes):
    import torch

    class Leaky(torch.nn.Module):  # averages padded positions too: breaks the mask contract
        has_attention = False
        def __init__(self):
            super().__init__()
            self.out = torch.nn.Linear(in_features, num_classes)
        def forward(self, bags, mask, return_attention=False):
            logits = self.out(bags.mean(1))
            return (logits, None) if return_attention else logits
    return Leaky()

@hookimpl
def clotclf_aggregators():
    return [ComponentSpec("aggregator", "leaky", "ignores the mask", NoOptions, build)]
"""


def test_smoke_test_checks_aggregators(fake_dist):
    from clotclf_core.plugin_manager import reset_manager
    from clotclf_core.smoke import SMOKE_BY_KIND, SmokeFailure

    fake_dist("fake-leaky", "fake_leaky", LEAKY, "fake_leaky")
    mgr = reset_manager()
    checks = SMOKE_BY_KIND["aggregator"](mgr.get("aggregator", "abmil"), 64, 3, 0)
    assert "attention" in checks and "save/load" in checks
    with pytest.raises(SmokeFailure, match="padded positions"):
        SMOKE_BY_KIND["aggregator"](mgr.get("aggregator", "leaky"), 64, 3, 0)


# ----------------------------------------------------------------------------- torchmil aggregators, auxiliary losses


@pytest.mark.parametrize("name, options, problem", [
    ("transmil", {"dim": 30, "heads": 4}, "heads \\(4\\) must divide dim \\(30\\)"),
    ("transmil", {"layers": 1}, "option 'layers'"),
    ("dsmil", {"max_instance_weight": -1}, "option 'max_instance_weight'"),
    ("clam-sb", {"k_sample": 0}, "option 'k_sample'"),
    ("clam-sb", {"bag_weight": 0}, "option 'bag_weight'"),
])
def test_torchmil_options_out_of_range(name, options, problem):
    with pytest.raises(ClotclfError, match=f"aggregator '{name}': .*{problem}"):
        build_aggregator(name, options, F, C)


def test_torchmil_aggregators_are_binary():
    with pytest.raises(ClotclfError, match="'dsmil' \\(torchmil\\) predicts two classes.*3 labels"):
        build_aggregator("dsmil", {}, F, 3)


@pytest.mark.parametrize("name", ["dsmil", "clam-sb"])
def test_auxiliary_loss_is_masked_and_trains(name, one_thread):
    """The extra loss ignores padding, is finite for an empty bag, and its gradient reaches the
    aggregator's instance branch (CLAM's instance classifiers, DSMIL's instance classifier)."""
    from clotclf_core.models.aggregate import has_auxiliary_loss, run_for_training

    torch.manual_seed(0)
    agg = build_aggregator(name, {**BUILT_IN[name], "dropout": 0.0}, F, C).train()
    assert has_auxiliary_loss(agg)
    bags, mask = _bags()
    targets = torch.tensor([0, 1, 1])
    logits, extra = run_for_training(agg, bags, mask, targets)
    assert logits.shape == (3, C) and extra.dim() == 0 and float(extra.detach()) > 0
    garbage = bags.clone()
    garbage[~mask] = 50.0  # padded tiles that would win a top-k or an argmax if the mask were ignored
    assert torch.allclose(run_for_training(agg, garbage, mask, targets)[1], extra, atol=1e-5)
    extra.backward()
    inst = agg.net.inst_classifiers if name == "clam-sb" else agg.net.inst_classifier
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in inst.parameters())
    empty_logits, empty_extra = run_for_training(agg, bags[:1], torch.zeros(1, 6, dtype=torch.bool), targets[:1])
    assert torch.isfinite(empty_logits).all() and float(empty_extra) == 0.0


def test_plain_aggregator_has_no_auxiliary_loss():
    from clotclf_core.models.aggregate import run_for_training

    agg = build_aggregator("abmil", {}, F, C).eval()
    bags, mask = _bags()
    logits, extra = run_for_training(agg, bags, mask, torch.tensor([0, 1, 1]))
    assert extra is None and torch.allclose(logits, run_aggregator(agg, bags, mask)[0])


AUX_BAD = """
from clotclf_core.plugin import hookimpl
from clotclf_core.plugin import ComponentSpec, NoOptions

def build(opts, in_features, num_classes):
    import torch
    class Aux(torch.nn.Module):
        has_attention = False
        auxiliary_loss = True
        def __init__(self):
            super().__init__()
            self.out = torch.nn.Linear(in_features, num_classes)
        def forward(self, bags, mask, return_attention=False, targets=None):
            logits = self.out(bags.mean(1))
            if targets is not None:
                return logits, torch.ones(len(bags))  # not a scalar
            return (logits, None) if return_attention else logits
    return Aux()

@hookimpl
def clotclf_aggregators():
    return [ComponentSpec("aggregator", "auxbad", "extra loss of the wrong shape", NoOptions, build)]
"""


def test_auxiliary_loss_contract_checked(fake_dist):
    from clotclf_core.models.aggregate import run_for_training
    from clotclf_core.plugin_manager import reset_manager

    fake_dist("fake-auxbad", "fake_auxbad", AUX_BAD, "fake_auxbad")
    reset_manager()
    agg = build_aggregator("auxbad", {}, F, C)
    with pytest.raises(PluginError, match="'auxbad' returned an extra loss of \\(3,\\); it must be a scalar"):
        run_for_training(agg, *_bags(), torch.tensor([0, 1, 1]))


def test_smoke_test_checks_the_torchmil_aggregators():
    from clotclf_core.plugin_manager import get_manager
    from clotclf_core.smoke import SMOKE_BY_KIND

    for name in ("transmil", "dsmil", "clam-sb"):
        checks = SMOKE_BY_KIND["aggregator"](get_manager().get("aggregator", name), 16, 2, 0)
        assert "attention" in checks and "save/load" in checks
        assert ("auxiliary loss" in checks) == (name != "transmil")

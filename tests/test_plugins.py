"""Plugin discovery, failure isolation, conflicts, disabling, lookups and options validation."""

from __future__ import annotations

import pytest

from clotclf_core.plugin import ConfigError, PluginError
from clotclf_core.plugin_manager import PluginManager, reset_manager

GOOD_BACKBONE = """
from clotclf_core.plugin import hookimpl
from clotclf_core.plugin import ComponentSpec, Options

class O(Options):
    width: int = 8

def build(opts):
    import torch.nn as nn
    m = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, opts.width))
    m.num_features = opts.width
    return m

@hookimpl
def clotclf_backbones():
    return [ComponentSpec("backbone", "{name}", "test backbone", O, build)]
"""


def test_builtins_come_through_entry_points():
    mgr = PluginManager()
    names = {(s.kind, s.name): s for s in mgr.components()}
    assert ("backbone", "poolformer") in names
    assert ("head", "linear") in names and ("head", "mlp") in names
    spec = names[("backbone", "poolformer")]
    assert spec.plugin == "poolformer" and spec.distribution == "clotclf"


def test_spec_modules_do_not_import_torch(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from clotclf_core.plugin_manager import PluginManager\n"
        "m = PluginManager()\n"
        "assert m.components('backbone'), 'no backbones found'\n"
        "heavy = [x for x in ('torch', 'timm', 'openslide', 'albumentations') if x in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"loading plugin specs imported {out.stdout.strip()}"


def test_broken_plugin_at_import_is_isolated(fake_dist):
    fake_dist("fake-broken", "fake_broken", "raise RuntimeError('kaput at import')")
    mgr = PluginManager()
    info = next(p for p in mgr.plugins if p.name == "fake_broken")
    assert info.status.startswith("error:") and "kaput at import" in info.status
    assert "poolformer" in mgr.names("backbone")  # everything else still works


def test_broken_plugin_hook_is_isolated(fake_dist):
    fake_dist(
        "fake-hookfail",
        "fake_hookfail",
        """
        from clotclf_core.plugin import hookimpl
        @hookimpl
        def clotclf_backbones():
            raise ValueError('hook exploded')
        """,
    )
    mgr = PluginManager()
    info = next(p for p in mgr.plugins if p.name == "fake_hookfail")
    assert "hook exploded" in info.status and "clotclf_backbones" in info.status
    assert "poolformer" in mgr.names("backbone")


def test_plugin_returning_garbage_is_an_error(fake_dist):
    fake_dist(
        "fake-garbage",
        "fake_garbage",
        """
        from clotclf_core.plugin import hookimpl
        @hookimpl
        def clotclf_heads():
            return ["not a spec"]
        """,
    )
    mgr = PluginManager()
    info = next(p for p in mgr.plugins if p.name == "fake_garbage")
    assert info.status.startswith("error:") and "ComponentSpec" in info.status


def test_conflict_names_both_distributions_and_how_to_choose(fake_dist):
    fake_dist("fake-dup-one", "fake_dup1", GOOD_BACKBONE.replace("{name}", "twin"))
    fake_dist("fake-dup-two", "fake_dup2", GOOD_BACKBONE.replace("{name}", "twin"))
    mgr = PluginManager()
    with pytest.raises(PluginError) as err:
        mgr.get("backbone", "twin")
    msg = str(err.value)
    assert "fake-dup-one" in msg and "fake-dup-two" in msg
    assert "fake_dup1/twin" in msg and "CLOTCLF_DISABLE_PLUGINS" in msg
    # qualified names pick one; disabling one removes the conflict
    assert mgr.get("backbone", "fake_dup2/twin").distribution == "fake-dup-two"
    assert PluginManager(disabled=["fake_dup2"]).get("backbone", "twin").distribution == "fake-dup-one"
    assert [c.name for c in mgr.conflicts()] == ["twin"]


def test_disable_by_env(fake_dist, monkeypatch):
    fake_dist("fake-env", "fake_env", GOOD_BACKBONE.replace("{name}", "envbb"))
    assert "envbb" in PluginManager().names("backbone")
    monkeypatch.setenv("CLOTCLF_DISABLE_PLUGINS", "fake-env")
    mgr = PluginManager()
    assert "envbb" not in mgr.names("backbone")
    assert next(p for p in mgr.plugins if p.name == "fake_env").status == "disabled"


def test_unknown_name_lists_closest_first():
    mgr = PluginManager()
    with pytest.raises(PluginError) as err:
        mgr.get("head", "mpl")
    msg = str(err.value)
    assert "unknown head 'mpl'" in msg
    assert msg.index("mlp") < msg.index("linear")


def test_a_misspelt_plugin_name_gets_a_did_you_mean_everywhere():
    """One helper (clotclf_core.config.closest) for every lookup of a name: components of every kind,
    show-plugin, --disable-plugin and the training settings' fields."""
    from click.testing import CliRunner

    from clotclf_core.cli.main import cli
    from clotclf_core.config import did_you_mean

    mgr = PluginManager()
    for kind, typo, meant in (("backbone", "cctt", "cct"), ("aggregator", "abmli", "abmil"), ("filter", "otsuu", "otsu"),
                              ("head", "lienar", "linear")):
        with pytest.raises(PluginError) as err:
            mgr.get(kind, typo)
        assert f"Did you mean '{meant}'?" in str(err.value)
    assert did_you_mean("zzzz", ["cct", "timm"]) == ""  # nothing close: no guess
    res = CliRunner().invoke(cli, ["show-plugin", "abmli"])
    assert res.exit_code != 0 and "Did you mean 'abmil'?" in res.output
    res = CliRunner().invoke(cli, ["--disable-plugin", "otsuu", "list-plugins"])
    assert res.exit_code == 2 and "Did you mean 'otsu'?" in res.output
    reset_manager()
    res = CliRunner().invoke(cli, ["train", "--backbone", "poolfromer", "--tiles", "nowhere"])
    assert res.exit_code != 0 and "Did you mean 'poolformer'?" in res.output, res.output


def test_unknown_kind():
    with pytest.raises(PluginError, match="unknown kind"):
        PluginManager().components("wheel")


def test_options_validation_names_the_option():
    spec = PluginManager().get("backbone", "poolformer")
    with pytest.raises(ConfigError) as err:
        spec.validate_options({"drop_path_rate": "lots"})
    assert "drop_path_rate" in str(err.value)
    with pytest.raises(ConfigError) as err:
        spec.validate_options({"depth": 3})
    assert "unknown option 'depth'" in str(err.value) and "variant" in str(err.value)
    with pytest.raises(ConfigError, match="variant"):
        spec.validate_options({"variant": "poolformer_xxl"})
    ok = spec.validate_options({"variant": "poolformerv2_s24", "drop_path_rate": "0.1"})
    assert ok.variant == "poolformerv2_s24" and ok.drop_path_rate == pytest.approx(0.1)


def test_parse_key_values_and_component_refs():
    from clotclf_core.config import parse_component_ref, parse_key_values

    assert parse_key_values(["a=1", "b=true", "c=0.5", "d=hello", "e=[1, 2]"], "--opt") == {
        "a": 1, "b": True, "c": 0.5, "d": "hello", "e": [1, 2]
    }
    # exponent notation without a dot is a float (PyYAML's YAML 1.1 would keep '1e-5' a string)
    assert parse_key_values(["init_values=1e-5", "lr=3E-4", "n=2e3", "l=[1e-5, 0.5]", "s=1e", "m=hf-hub:a/b"], "--opt") == {
        "init_values": 1e-5, "lr": 3e-4, "n": 2000.0, "l": [1e-5, 0.5], "s": "1e", "m": "hf-hub:a/b"
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_key_values(["novalue"], "--backbone-opt")
    assert parse_component_ref("mobilenetv3:weights=runs/bg,threshold=0.7") == (
        "mobilenetv3", {"weights": "runs/bg", "threshold": 0.7}
    )
    assert parse_component_ref("otsu") == ("otsu", {})


def teardown_module():
    reset_manager()

"""The plugin contract checked when plugins load: options models, defaults, names, hooks, the
contract version, import time and heavy imports; build errors that name the component; the
name-clash policy; ``--disable-plugin`` names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clotclf_core.cli.main import cli
from clotclf_core.plugin import PLUGIN_API_VERSION, PluginError
from clotclf_core.plugin_manager import PluginManager, reset_manager

SPEC = """
from pydantic import BaseModel, Field
from clotclf_core.plugin import hookimpl
from clotclf_core.plugin import ComponentSpec, Options

class O(Options):
    width: int = 8

def build(opts):
    import torch.nn as nn
    m = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, opts.width))
    m.num_features = opts.width
    return m

{extra}

@hookimpl
def clotclf_backbones():
    return [ComponentSpec("backbone", {name!r}, "test backbone", {options}, build)]
"""


def plugin(fake_dist, dist: str, *, name: str = "tb", options: str = "O", extra: str = "", version: str = "0.1.0") -> None:
    module = dist.replace("-", "_")
    fake_dist(dist, module, SPEC.format(name=name, options=options, extra=extra), version=version)


def status_of(name: str) -> str:
    return next(p for p in PluginManager().plugins if p.name == name).status


@pytest.mark.parametrize(
    ("options", "extra", "name", "reason"),
    [
        ("dict", "", "tb", "options is dict, not a subclass of clotclf_core.plugin.spec.Options"),
        ("None", "", "tb", "options is None, not a subclass"),
        ("P", "class P(BaseModel):\n    width: int = 8", "tb", "options is P, not a subclass"),
        ("Q", "class Q(Options):\n    width: int = Field(0, ge=1)", "tb", "the defaults of Q do not validate: option 'width'"),
        ("R", "class R(Options):\n    model_config = {'extra': 'allow'}\n    width: int = 8", "tb", "allows unknown options"),
        ("O", "", "Bad/Name:x", "backbone name 'Bad/Name:x' breaks the name rule"),
        ("O", "", "", "backbone name '' breaks the name rule"),
    ],
)
def test_a_spec_breaking_the_contract_is_reported_when_the_plugin_loads(fake_dist, options, extra, name, reason):
    plugin(fake_dist, "fake-spec", name=name, options=options, extra=extra)
    status = status_of("fake_spec")
    assert status.startswith("error:") and reason in status, status
    mgr = PluginManager()
    assert "poolformer" in mgr.names("backbone") and not [s for s in mgr.components() if s.plugin == "fake_spec"]


def test_required_options_are_allowed_but_the_other_defaults_must_validate(fake_dist):
    plugin(fake_dist, "fake-req", options="Q", extra="class Q(Options):\n    weights: str\n    width: int = 8")
    assert status_of("fake_req") == "ok"
    plugin(fake_dist, "fake-req2", options="Q", extra="class Q(Options):\n    weights: str\n    width: int = Field(0, ge=1)")
    assert "the defaults of Q do not validate" in status_of("fake_req2")


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("@hookimpl\ndef clotclf_backbone():\n    return []", "clotclf_backbone() is not a clotclf hook (did you mean clotclf_backbones?)"),
        ("def clotclf_headz():\n    return []", "clotclf_headz() is not a clotclf hook (did you mean clotclf_heads?)"),
        ("def clotclf_heads():\n    return []", "clotclf_heads() is not marked @hookimpl"),
        ("@hookimpl\ndef clotclf_add_commands(cli, extra):\n    pass", "clotclf_add_commands"),
        ("@hookimpl\ndef clotclf_heads():\n    return 'linear'", "clotclf_heads() returned str, not a list of ComponentSpec"),
    ],
)
def test_unknown_or_misspelt_hooks_are_errors_not_silence(fake_dist, source, reason):
    fake_dist("fake-hooks", "fake_hooks", "from clotclf_core.plugin import hookimpl\n" + source)
    status = status_of("fake_hooks")
    assert status.startswith("error:") and reason in status, status


def test_the_contract_version_a_plugin_declares_is_checked_and_shown(fake_dist):
    plugin(fake_dist, "fake-old-api", extra="CLOTCLF_PLUGIN_API = '>=0.1,<1'")
    new_range = f">={PLUGIN_API_VERSION},<{int(PLUGIN_API_VERSION.split('.')[0]) + 1}"  # up to the next major version
    plugin(fake_dist, "fake-new-api", name="tb2", extra=f"CLOTCLF_PLUGIN_API = '{new_range}'")
    plugin(fake_dist, "fake-bad-api", name="tb3", extra="CLOTCLF_PLUGIN_API = 'one point oh'")
    mgr = PluginManager()
    old = mgr.plugin_info("fake_old_api")
    assert old.status == (f"error: written for clotclf plugin API >=0.1,<1, but this clotclf provides {PLUGIN_API_VERSION}: "
                          "install a release of the plugin made for this clotclf (or the clotclf it was made for)")
    assert mgr.plugin_info("fake_new_api").ok and mgr.plugin_info("fake_new_api").api == new_range
    assert "is not a version specifier" in mgr.plugin_info("fake_bad_api").status
    assert "tb2" in mgr.names("backbone") and "tb" not in mgr.names("backbone")
    reset_manager()
    res = CliRunner().invoke(cli, ["list-plugins", "--verbose"])
    assert res.exit_code == 0 and f"clotclf plugin API {PLUGIN_API_VERSION}" in res.stdout
    line = next(line for line in res.stdout.splitlines() if line.startswith("fake_old_api ") and "written for" in line)
    assert ">=0.1,<1" in line
    rows = json.loads(CliRunner().invoke(cli, ["list-plugins", "--json"]).stdout)
    assert next(r for r in rows if r["plugin"] == "fake_new_api")["api"] == new_range


def test_import_time_is_measured_and_heavy_imports_are_flagged(fake_dist, tmp_path):
    root = fake_dist("fake-slow", "fake_slow", "import time\ntime.sleep(0.05)\n")
    plugin(fake_dist, "fake-heavy", name="hb", extra="import torch  # at import time: every command pays for it")
    assert PluginManager().plugin_info("fake_slow").import_seconds >= 0.05
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("CLOTCLF_DISABLE_PLUGINS", None)
    out = subprocess.run([sys.executable, "-m", "clotclf_core.cli", "list-plugins", "--verbose"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "warning: plugin 'fake_heavy' (fake-heavy) imports torch when it loads" in out.stderr
    heavy_row = next(line for line in out.stdout.splitlines() if line.startswith("fake_heavy "))
    slow_row = next(line for line in out.stdout.splitlines() if line.startswith("fake_slow "))
    assert "torch" in heavy_row.split() and "ok" in heavy_row.split()
    assert float(slow_row.split()[4]) >= 50.0  # IMPORT_MS column
    rows = json.loads(subprocess.run([sys.executable, "-m", "clotclf_core.cli", "list-plugins", "--json"], env=env,
                                     capture_output=True, text=True, timeout=120).stdout)
    assert next(r for r in rows if r["plugin"] == "fake_heavy")["heavy_imports"] == ["torch"]


def test_a_component_that_raises_while_built_is_named_with_its_distribution(fake_dist, tmp_path):
    fake_dist("fake-boom", "fake_boom", """
        from clotclf_core.plugin import hookimpl
        from clotclf_core.plugin import ComponentSpec, NoOptions
        def build(opts):
            raise ZeroDivisionError("filter maths went wrong")
        @hookimpl
        def clotclf_patch_filters():
            return [ComponentSpec("filter", "boom", "always fails", NoOptions, build)]
    """)
    spec = PluginManager().get("filter", "boom")
    with pytest.raises(PluginError, match=r"filter 'boom' \(plugin fake_boom, distribution fake-boom 0\.1\.0\) failed to build: "
                                          r"ZeroDivisionError: filter maths went wrong.*CLOTCLF_DEBUG=1") as info:
        spec.factory(spec.validate_options({}))
    assert isinstance(info.value.__cause__, ZeroDivisionError)  # the traceback CLOTCLF_DEBUG=1 prints

    from badinput import assert_clean_error, run

    args = ["tile", "tests/data", "--out", str(tmp_path / "tiles"), "--filter", "boom"]
    env = {"PYTHONPATH": str(tmp_path / "site") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    outcome = run(args, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert_clean_error(outcome, 2, ["filter 'boom'", "fake-boom 0.1.0", "failed to build", "ZeroDivisionError"])
    debug = run(args, env=env | {"CLOTCLF_DEBUG": "1"}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "Traceback" in debug.stderr and "ZeroDivisionError: filter maths went wrong" in debug.stderr


def test_a_run_directory_option_is_resolved_by_the_resolve_hook_before_the_factory(fake_dist, tmp_path):
    """A third-party component typing an option RunDirectory gets registry names as local folders,
    without calling the core: the core asks clotclf_resolve_model; paths are never sent to it."""
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    fake_dist("fake-resolver", "fake_resolver", f"""
        from clotclf_core.plugin import hookimpl
        ASKED = []
        @hookimpl
        def clotclf_resolve_model(name):
            ASKED.append(name)
            return {str(tmp_path / "runs" / "r1")!r} if name == "lab/weights@v1" else None
    """)
    fake_dist("fake-runfilter", "fake_runfilter", """
        from typing import Optional
        from pydantic import Field
        from clotclf_core.plugin import ComponentSpec, Options, hookimpl
        from clotclf_core.plugin.spec import RunDirectory
        class O(Options):
            weights: Optional[RunDirectory] = Field(None, description="a run directory or a model name")
            note: str = "lab/weights@v1"
        def build(opts):
            return opts
        @hookimpl
        def clotclf_patch_filters():
            return [ComponentSpec("filter", "runfilter", "echoes its options", O, build)]
    """)
    import fake_resolver

    mgr = reset_manager(disabled=["registry"])
    spec = mgr.get("filter", "runfilter")
    built = spec.factory(spec.validate_options({"weights": "lab/weights@v1"}))
    assert built.weights == str(tmp_path / "runs" / "r1") and built.note == "lab/weights@v1"  # only RunDirectory fields
    assert spec.factory(spec.validate_options({"weights": "unknown-name"})).weights == "unknown-name"  # the factory says what to do
    assert spec.factory(spec.validate_options({})).weights is None
    for path in (str(tmp_path / "runs" / "r1"), str(tmp_path / "nowhere"), "./missing", "~/missing"):
        assert spec.factory(spec.validate_options({"weights": path})).weights == path
    assert fake_resolver.ASKED == ["lab/weights@v1", "unknown-name"]  # paths, even missing ones, never reach the hook


# ----------------------------------------------------------------------------- name clashes


def test_a_plugin_reusing_a_built_in_name_never_changes_the_default(fake_dist, tmp_path):
    import torch

    from clotclf_core.models.build import build_model
    from clotclf_core.models.config import ModelConfig
    from clotclf_core.models.runs import read_config
    from clotclf_core.models.saved import load_model, save_model

    reset_manager()
    torch.manual_seed(0)
    tiny = {"variant": "cct_2_3x2_32"}
    builtin_run = save_model(build_model(ModelConfig(backbone="cct", backbone_options=tiny, input_size=32)), tmp_path / "old")

    plugin(fake_dist, "fake-cct", name="cct")  # a third party registers 'cct' too
    mgr = reset_manager()
    assert mgr.get("backbone", "cct").distribution == "clotclf"  # the default is untouched
    assert mgr.get("backbone", "fake_cct/cct").distribution == "fake-cct"  # the newcomer by qualified name
    [conflict] = mgr.conflicts()
    assert conflict.winner.plugin == "cct" and "use 'fake_cct/cct' for the other" in conflict.message()
    rows = {(r["plugin"], r["name"]): r["status"] for r in json.loads(CliRunner().invoke(cli, ["list-plugins", "--json"]).stdout)}
    assert rows[("cct", "cct")].startswith("ok") and rows[("fake_cct", "cct")] == "name taken by the built-in: use fake_cct/cct"

    assert build_model(ModelConfig(backbone="cct", backbone_options=tiny, input_size=32)).plugins["backbone"]["distribution"] == "clotclf"
    old = load_model(builtin_run)  # the run saved before the clash still loads, with the built-in
    assert old.plugins["backbone"]["distribution"] == "clotclf"
    theirs = save_model(build_model(ModelConfig(backbone="fake_cct/cct", input_size=32)), tmp_path / "theirs")
    assert read_config(theirs)["model"]["backbone"] == "cct"  # the plain name, and the provider recorded beside it
    assert read_config(theirs)["plugins"]["backbone"]["distribution"] == "fake-cct"
    assert load_model(theirs).plugins["backbone"]["distribution"] == "fake-cct"  # loading uses the recorded provider


def test_disable_plugin_names_must_exist(fake_dist, monkeypatch):
    from badinput import assert_clean_error, invoke

    outcome = invoke(["--disable-plugin", "registri", "list-plugins"])
    line = assert_clean_error(outcome, 2, ["--disable-plugin", "'registri'", "installed plugins:", "registry"])
    assert "Usage:" in outcome.stderr  # click's usage line, then the one error
    assert invoke(["--disable-plugin", "registry", "list-plugins"]).exit_code == 0
    assert invoke(["--disable-plugin", "clotclf", "list-plugins"]).exit_code == 0  # a distribution name
    monkeypatch.setenv("CLOTCLF_DISABLE_PLUGINS", "nosuch")
    res = invoke(["list-plugins"])
    assert res.exit_code == 0 and "warning: CLOTCLF_DISABLE_PLUGINS names no installed plugin: nosuch" in res.stderr
    assert line


def teardown_module():
    reset_manager()

"""The core CLI: --version, --help, list-plugins, show-plugin, errors, and a light start."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from clotclf_core import __version__
from clotclf_core.cli.main import cli
from clotclf_core.plugin_manager import reset_manager


def run(*args, **kw):
    reset_manager()
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kw)


def test_version_and_help():
    assert __version__ in run("--version").output
    out = run("--help").output
    assert "list-plugins" in out and "show-plugin" in out


def test_list_plugins_table_and_json():
    res = run("list-plugins")
    assert res.exit_code == 0
    assert "poolformer" in res.output and "KIND" in res.output
    rows = json.loads(run("list-plugins", "--json").output)
    pf = next(r for r in rows if r["name"] == "poolformer")
    assert pf == pf | {"kind": "backbone", "plugin": "poolformer", "distribution": "clotclf", "status": "ok"}
    heads = json.loads(run("list-plugins", "--kind", "head", "--json").output)
    assert {r["kind"] for r in heads if r["name"] != "-"} == {"head"}


def test_list_plugins_verbose_shows_options():
    out = run("list-plugins", "--kind", "backbone", "--verbose").output
    assert "drop_path_rate" in out and "freeze_stages" in out


def test_show_plugin_and_unknown():
    res = run("show-plugin", "poolformer")
    assert res.exit_code == 0 and "variant" in res.output and "poolformer_s12" in res.output
    res = run("show-plugin", "poolformr")
    assert res.exit_code != 0
    assert res.output.strip().startswith("Error: no component called 'poolformr'") and "poolformer" in res.output
    assert "Traceback" not in res.output


def test_broken_plugin_listed_and_cli_keeps_working(fake_dist):
    fake_dist("fake-cli-broken", "fake_cli_broken", "import not_a_real_module_xyz")
    res = run("list-plugins")
    assert res.exit_code == 0
    line = next(line for line in res.output.splitlines() if "fake_cli_broken" in line)
    assert "error: ModuleNotFoundError" in line and "fake-cli-broken" in line
    assert "poolformer" in res.output
    res = run("--disable-plugin", "fake_cli_broken", "list-plugins", "--json")
    row = next(r for r in json.loads(res.output) if r["plugin"] == "fake_cli_broken")
    assert row["status"] == "disabled"


def test_cli_start_imports_no_torch():
    code = (
        "import sys\n"
        "from clotclf_core.cli.main import cli\n"
        "for args in (['--help'], ['list-plugins']):\n"
        "    try:\n"
        "        cli.main(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'timm', 'openslide', 'albumentations', 'huggingface_hub') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY=\n" in out or out.rstrip().endswith("HEAVY="), out[-500:]


def test_smoke_test_command():
    res = run("smoke-test", "--json", "--input-size", "32")
    rows = json.loads(res.output)
    assert res.exit_code == 0
    assert {("poolformer", "linear"), ("poolformer", "mlp")} <= {(r["backbone"], r["head"]) for r in rows}
    assert all(r["status"] == "ok" for r in rows if r["backbone"] != "transformers")
    assert [r["status"] for r in rows if r["backbone"] == "transformers"] == ["skipped: needs options without defaults: model"]
    assert not {"uni2-h", "phikon"} & {r["backbone"] for r in rows}  # the zoo's encoders download: named only


def test_plugin_whose_add_commands_raises_does_not_break_the_cli(fake_dist):
    fake_dist(
        "fake-cmd-broken",
        "fake_cmd_broken",
        """
        from clotclf_core.plugin import hookimpl
        @hookimpl
        def clotclf_add_commands(cli):
            raise RuntimeError('cannot add my command')
        """,
    )
    import clotclf_core.cli.main as cli_mod

    reset_manager()
    group = cli_mod.ClotclfGroup(name="clotclf", commands=dict(cli.commands), params=list(cli.params), callback=cli.callback)
    res = CliRunner().invoke(group, ["list-plugins"], catch_exceptions=False)
    assert res.exit_code == 0
    line = next(line for line in res.output.splitlines() if "fake_cmd_broken" in line)
    assert "cannot add my command" in line and "clotclf_add_commands" in line
    assert "poolformer" in res.output


def test_disable_plugin_option_applies_before_plugin_commands_are_added():
    def commands(*args):
        out = subprocess.run([sys.executable, "-m", "clotclf_core.cli", *args, "--help"], capture_output=True, text=True,
                             check=True).stdout
        return {line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()}

    assert {"pull", "push", "list-models", "train-filter"} <= commands()
    without = commands("--disable-plugin", "registry")
    assert "pull" not in without and "push" not in without and "train-filter" in without

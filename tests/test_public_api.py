"""The public plugin API is the only door into the core.

Every built-in plugin (``plugins/``), the examples (``examples/``) and the registry (``registry/``)
import only ``clotclf_core.plugin`` and its submodules (and ``clotclf_core.__version__``); the
registry may also use the short list of core modules it needs to check a run, documented in
docs/registry.md ("What the registry imports"). No private names, no other plugin. Every import
statement is read from the source (``ast``), inside functions too, so a lazy import cannot slip by.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
API = "clotclf_core.plugin"

#: core modules the registry may import besides the API, and the names it may take from each
#: (keep in step with docs/registry.md, "What the registry imports")
REGISTRY_ALLOWED = {
    "clotclf_core.models.runs": {"read_config", "read_safetensors_header", "fold_runs", "FOLD_ENSEMBLE_KIND"},
    "clotclf_core.models.requirements": {"requirements", "check_requirements"},
    "clotclf_core.models.saved": {"load_model", "check_buildable"},
    "clotclf_core.models.card": {"BASE_TAGS", "ModelCardError", "assemble", "card_results", "load_model_card", "model_card",
                                 "read_model_card"},
    "clotclf_core.models.backbones": {"BACKBONE_KIND", "load_backbone_run", "check_backbone_run"},
    "clotclf_core.plugin_manager": {"get_manager"},
    "clotclf_core.config": {"load_yaml"},
    "clotclf_core.progress": {"mode"},
}


def _sources() -> list[Path]:
    roots = [REPO / "plugins", REPO / "registry", REPO / "examples"]
    return sorted(p for root in roots for p in root.rglob("*.py") if "build" not in p.relative_to(root).parts[:-1])


def _package_of(path: Path) -> str:
    """The top-level package a file belongs to (``clotclf_timm``, ``clotclf_registry``, ``clotclf_example_resnet``)."""
    return next(part for part in path.relative_to(REPO).parts if part.startswith("clotclf_"))


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) for every absolute import in ``path`` (``names`` empty for ``import x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
    return out


def _problems(path: Path) -> list[str]:
    own = _package_of(path)
    registry = own == "clotclf_registry"
    where = path.relative_to(REPO)
    problems = []
    for line, module, names in _imports(path):
        top = module.split(".")[0]
        if top.startswith("clotclf_") and top != "clotclf_core" and top != own:
            problems.append(f"{where}:{line}: imports another plugin ({module}); plugins never import each other")
            continue
        if top != "clotclf_core":
            continue
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        if private or any(part.startswith("_") for part in module.split(".")):
            problems.append(f"{where}:{line}: imports private {module} {private or ''}")
        elif module == API or module.startswith(API + "."):
            continue
        elif module == "clotclf_core" and names == ["__version__"]:
            continue
        elif registry and module in REGISTRY_ALLOWED and names and set(names) <= REGISTRY_ALLOWED[module]:
            continue
        else:
            problems.append(f"{where}:{line}: imports {module} {names or ''}: not the plugin API"
                            + (" nor the registry's allow-list" if registry else ""))
    return problems


def test_the_sources_are_found():
    packages = {_package_of(p) for p in _sources()}
    assert {"clotclf_timm", "clotclf_mobilenet_bg", "clotclf_openslide", "clotclf_tifffile", "clotclf_registry",
            "clotclf_example_resnet", "clotclf_example_aggregator"} <= packages


def test_plugins_examples_and_the_registry_import_only_the_plugin_api():
    problems = [p for path in _sources() for p in _problems(path)]
    assert not problems, "\n".join(problems)


def test_the_check_catches_what_it_must(tmp_path):
    """The rule itself, on a made-up plugin module: internals, private names and other plugins fail."""
    bad = tmp_path / "plugins" / "clotclf_bad" / "__init__.py"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "from clotclf_core.plugin import ComponentSpec\n"          # fine
        "from clotclf_core.plugin.hub import hub_problem\n"         # fine
        "from clotclf_core.models.runs import resolve_run_dir\n"    # internals
        "from clotclf_core.plugin.io import _umask\n"               # private
        "import clotclf_core.training.loop\n"                       # internals
        "def f():\n    from clotclf_timm import build\n"            # another plugin, lazily
    )
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        found = _problems(bad)
    finally:
        REPO = saved
    assert len(found) == 4, found
    assert any("models.runs" in p for p in found) and any("_umask" in p for p in found)
    assert any("training.loop" in p for p in found) and any("another plugin" in p for p in found)


def test_the_registry_allow_list_is_the_documented_one():
    doc = (REPO / "docs" / "registry.md").read_text(encoding="utf-8")
    section = doc.split("## What the registry imports", 1)[1].split("\n## ", 1)[0]
    for module, names in REGISTRY_ALLOWED.items():
        assert f"`{module}`" in section, module
        for name in names:
            assert f"`{name}`" in section, (module, name)


def test_every_public_name_of_the_api_is_documented():
    """docs/plugins.md documents exactly clotclf_core.plugin: each public name of each module is on it."""
    import importlib
    import pkgutil

    import clotclf_core.plugin as api

    doc = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    missing = []
    for info in pkgutil.iter_modules(api.__path__):
        module = importlib.import_module(f"{API}.{info.name}")
        assert f"clotclf_core.plugin.{info.name}" in doc, f"module {info.name} is not on docs/plugins.md"
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", module.__name__) != module.__name__:
                continue  # private, or imported from elsewhere (typing, pydantic...)
            if isinstance(value, type(sys)) or name in ("annotations", "TYPE_CHECKING"):
                continue
            if f"`{name}" not in doc:
                missing.append(f"{info.name}.{name}")
    assert not missing, f"not on docs/plugins.md: {', '.join(missing)}"
    for name in api.__all__:
        assert hasattr(api, name), name


@pytest.mark.parametrize("modules", [
    "clotclf_core.plugin",
    "clotclf_core.plugin.hub, clotclf_core.plugin.device, clotclf_core.plugin.weights, clotclf_core.plugin.io, "
    "clotclf_core.plugin.spec, clotclf_core.plugin.protocols, clotclf_core.plugin.errors, clotclf_core.plugin.hookspecs, "
    "clotclf_core.plugin.secrets, clotclf_core.plugin.transfer, clotclf_core.plugin.lock",
])
def test_importing_the_api_imports_no_heavy_library(modules):
    """A plugin's spec module imports the API at start-up: it must cost no numpy, torch or Hub client."""
    code = (f"import sys, {modules}; "
            "print(sorted(m for m in ('numpy', 'torch', 'timm', 'openslide', 'huggingface_hub', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"

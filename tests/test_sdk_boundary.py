"""The import contract between dermbench's core and its plugins (issue 16.2), checked on the source with ``ast``.

* A plugin (``plugins/``, ``dermino_model/``, the ``examples/`` packages) imports from dermbench only the public
  SDK: ``dermbench.api``, ``dermbench.hookimpl`` (and ``dermbench.__version__``). Everything else in the core is
  internal and may change without notice.
* The core (``dermbench/``) imports no plugin: not ``dermbench_plugins``, not ``dermino_model``, not an example.
  It reaches plugin-specific report sections and demo preparation through hooks.

String imports (``importlib.import_module("dermbench.runner")``) count as imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SDK_MODULES = {"dermbench", "dermbench.api"}
SDK_NAMES = {"api", "hookimpl", "__version__"}
PLUGIN_PACKAGES = ("dermbench_plugins", "dermino_model")


def _imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) for every absolute import, including importlib/__import__ calls with a literal."""
    out: list[tuple[int, str, list[str]]] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out += [(n.lineno, a.name, []) for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            out.append((n.lineno, n.module, [a.name for a in n.names]))
        elif isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant) \
                and isinstance(n.args[0].value, str):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("import_module", "__import__"):
                out.append((n.lineno, n.args[0].value, []))
    return out


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def plugin_violations(folder: Path) -> list[str]:
    """Imports of dermbench internals by the plugin modules under ``folder``, as 'file:line: what (fix)'."""
    bad: list[str] = []
    for path in sorted(folder.rglob("*.py")):
        for line, module, names in _imports(ast.parse(path.read_text(), str(path))):
            if _top(module) != "dermbench":
                continue
            where = f"{path}:{line}"
            if module not in SDK_MODULES and not module.startswith("dermbench.api."):
                bad.append(f"{where}: imports internal module {module!r}; import it from dermbench.api instead")
            elif module == "dermbench":
                for name in names:
                    if name not in SDK_NAMES:
                        bad.append(f"{where}: 'from dermbench import {name}' reaches a core internal; "
                                   f"use dermbench.api (public SDK) or dermbench.hookimpl")
    return bad


def core_violations(folder: Path, forbidden: tuple[str, ...] = PLUGIN_PACKAGES) -> list[str]:
    """Imports of plugin packages by the core modules under ``folder``."""
    bad: list[str] = []
    for path in sorted(folder.rglob("*.py")):
        for line, module, _names in _imports(ast.parse(path.read_text(), str(path))):
            if _top(module) in forbidden:
                bad.append(f"{path}:{line}: the core imports plugin package {module!r}; reach it through a hook "
                           "(dermbench.hookspecs) instead")
    return bad


def _example_sources() -> list[Path]:
    return sorted(p for p in (ROOT / "examples").glob("*/src") if p.is_dir())


def _example_packages() -> tuple[str, ...]:
    return tuple(sorted({d.name for src in _example_sources() for d in src.iterdir() if d.is_dir()}))


@pytest.mark.parametrize("folder", ["plugins", "dermino_model", *[str(p.relative_to(ROOT))
                                                                  for p in _example_sources()]])
def test_plugins_import_only_the_public_sdk(folder):
    assert (ROOT / folder).is_dir()
    bad = plugin_violations(ROOT / folder)
    assert not bad, "plugins must import only dermbench.api / dermbench.hookimpl:\n" + "\n".join(bad)


def test_core_imports_no_plugin():
    forbidden = PLUGIN_PACKAGES + _example_packages()
    bad = core_violations(ROOT / "dermbench", forbidden)
    assert not bad, "\n".join(bad)


def test_checker_reports_each_kind_of_violation(tmp_path):
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "ok.py").write_text(
        "from dermbench import hookimpl, api, __version__\nfrom dermbench.api import Split, TimmBackbone\n"
        "import dermbench.api\nfrom . import sibling\nimport numpy\n")
    (plug / "bad.py").write_text(
        "from dermbench.backbones import TimmBackbone\n"
        "from dermbench import hookimpl, plugins\n"
        "def f():\n    import dermbench.runner\n"
        "    import importlib\n    return importlib.import_module('dermbench.stats')\n")
    bad = plugin_violations(plug)
    assert [b.split(": ", 1)[0].rsplit(":", 1)[1] for b in bad] == ["1", "2", "4", "6"]
    assert all(str(plug / "bad.py") in b for b in bad)
    assert "'dermbench.backbones'" in bad[0] and "dermbench.api instead" in bad[0]
    assert "from dermbench import plugins" in bad[1]
    assert "'dermbench.runner'" in bad[2] and "'dermbench.stats'" in bad[3]

    core = tmp_path / "core"
    core.mkdir()
    (core / "leaderboard.py").write_text(
        "import dermbench_plugins\nimport dermbenchx\n"
        "def plot():\n    from dermbench_plugins.tasks.label_efficiency import curves\n"
        "    from dermino_model import demo\n")
    bad = core_violations(core)
    assert [b.split(": ", 1)[0].rsplit(":", 1)[1] for b in bad] == ["1", "4", "5"]
    assert "'dermino_model'" in bad[2] and "through a hook" in bad[2]

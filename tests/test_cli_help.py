"""`dermbench --help` lists plugin commands without importing plugins, and its cached listing never lies for long.

Plugins here are real: a distribution folder with an entry point on PYTHONPATH, discovered by importlib.metadata
exactly as a pip-installed third-party plugin is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = textwrap.dedent(
    """
    import sys
    from dermbench.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as e:
        code = e.code
    heavy = sorted(m for m in sys.modules if m.split('.')[0] in
                   ('dermbench_plugins', 'dermino_model', 'hello_cmd', 'rich', 'torch', 'numpy'))
    print('IMPORTED', ','.join(sorted({m.split('.')[0] for m in heavy})), file=sys.stderr)
    """
)


def _env(cache: Path, pythonpath: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "DERMBENCH_CACHE": str(cache)}
    env.pop("DERMBENCH_LOAD_PLUGINS", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def help_run(env: dict[str, str], *args: str) -> tuple[str, str, set[str]]:
    r = subprocess.run([sys.executable, "-c", PROBE, *(args or ["--help"])], capture_output=True, text=True,
                       env=env, timeout=300)
    imported = r.stderr.strip().splitlines()[-1].removeprefix("IMPORTED").strip()
    return r.stdout, r.stderr, set(filter(None, imported.split(",")))


def third_party_plugin(root: Path, doc: str = "Say hello from a third-party plugin.") -> Path:
    """A plugin distribution adding `hello` (and trying to take over `run`)."""
    (root / "hello_cmd-0.1.dist-info").mkdir(parents=True, exist_ok=True)
    (root / "hello_cmd-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-cmd\nVersion: 0.1\n")
    (root / "hello_cmd-0.1.dist-info" / "entry_points.txt").write_text("[dermbench]\nhello = hello_cmd\n")
    (root / "hello_cmd.py").write_text(textwrap.dedent(f'''
        from dermbench import hookimpl

        @hookimpl
        def register_commands(app):
            @app.command("hello")
            def hello(name: str = "world"):
                """{doc}"""
                print(f"hello {{name}}")

            @app.command("run")
            def run():
                """A plugin must not replace the core run command."""
                print("plugin run")
        '''))
    return root


def test_help_lists_plugin_commands_and_imports_no_plugin_once_indexed(tmp_path):
    env = _env(tmp_path / "cache")
    first, _, imported_first = help_run(env)
    assert "pretrain" in first and "[plugin dermino]" in first and "Commands from plugins" in first
    assert "dermino_model" in imported_first  # no index yet: plugins were loaded to build it
    second, _, imported = help_run(env)
    assert second == first
    assert imported == set(), f"--help imported {imported}"
    assert list((tmp_path / "cache").glob("cli-commands-*.json"))


def test_the_index_only_feeds_the_listing_a_missing_command_still_runs(tmp_path):
    env = _env(tmp_path / "cache")
    help_run(env)
    (index,) = (tmp_path / "cache").glob("cli-commands-*.json")
    data = json.loads(index.read_text())
    for entry in data["entries"]:
        entry["commands"] = []
    index.write_text(json.dumps(data))
    out, _, imported = help_run(env)
    assert "[plugin dermino]" not in out and imported == set()  # proof that --help read the index
    out, err, _ = help_run(env, "pretrain", "--preset", "paper", "--dry-run")
    assert "total_iterations" in out, err

    index.write_text("{ not json")  # a corrupt index is rebuilt, not trusted
    out, _, imported = help_run(env)
    assert "[plugin dermino]" in out and "dermino_model" in imported
    assert json.loads(index.read_text())["entries"][0]["commands"][0]["name"] == "pretrain"


def test_third_party_command_is_listed_refreshed_when_edited_and_forgotten_when_uninstalled(tmp_path):
    site = third_party_plugin(tmp_path / "site")
    env = _env(tmp_path / "cache", site)
    out, err, _ = help_run(env)
    assert "hello" in out and "Say hello from a third-party plugin. [plugin hello]" in out
    assert "command 'run' is a core command; rename it" in err
    out, err, imported = help_run(env)
    assert "Say hello from a third-party plugin." in out and imported == set()
    assert "command 'run' is a core command" in err  # the warning is kept with the listing

    assert help_run(env, "hello", "--name", "derm")[0].strip() == "hello derm"
    run_help, _, _ = help_run(env, "run", "--help")
    assert "--model" in run_help  # the core run, not the plugin's

    third_party_plugin(site, doc="Greet someone, edited after the first listing.")  # pip install -e style edit
    out, _, imported = help_run(env)
    assert "Greet someone, edited after the first listing." in out and "hello_cmd" in imported

    import shutil

    shutil.rmtree(site / "hello_cmd-0.1.dist-info")  # pip uninstall
    out, _, _ = help_run(env)
    assert "[plugin hello]" not in out and "[plugin dermino]" in out


def test_a_plugin_that_fails_to_import_keeps_the_listing_live(tmp_path):
    site = tmp_path / "site"
    third_party_plugin(site)
    (site / "hello_cmd.py").write_text("raise ImportError('needs an extra')\n")
    env = _env(tmp_path / "cache", site)
    out, _, _ = help_run(env)
    assert "[plugin dermino]" in out and "[plugin hello]" not in out
    assert not list((tmp_path / "cache").glob("cli-commands-*.json"))  # no index while a plugin is broken
    third_party_plugin(site)  # fixed: its command appears at once
    out, _, _ = help_run(env)
    assert "Say hello from a third-party plugin." in out


def test_allow_list_changes_the_listing(tmp_path):
    env = _env(tmp_path / "cache")
    assert "[plugin dermino]" in help_run(env)[0]
    out, _, _ = help_run({**env, "DERMBENCH_LOAD_PLUGINS": "models-timm"})
    assert "Commands from plugins" not in out and "run " in out
    out, _, imported = help_run(env)  # back to all plugins: the first listing is still valid
    assert "[plugin dermino]" in out and imported == set()

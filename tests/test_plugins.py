"""The plugin system: entry points, runtime (un)registration, isolation, allow-list, listing, hook coverage."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dermbench import hookimpl, hookspecs, plugins
from dermbench.api import DatasetInfo, DermbenchError, ModelInfo, Preprocess, TaskInfo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    plugins.reset_all()
    yield
    plugins.reset_all()


def test_first_party_plugins_come_from_entry_points():
    from importlib import metadata

    eps = {ep.name: ep.value for ep in metadata.entry_points(group="dermbench")}
    assert eps["tasks-retrieval"] == "dermbench_plugins.tasks.retrieval"
    rows = {r["name"]: r for r in plugins.plugin_rows()}
    # every first-party entry point is loaded through the same path a third party uses
    for name in eps:
        if name in rows:
            assert rows[name]["dist"] in ("dermbench",) or rows[name]["dist"] != "(runtime)"
    reg = plugins.registry()
    assert reg.tasks["retrieval"].plugin == "tasks-retrieval"
    assert reg.tasks["probe"].plugin == "tasks-probe"
    assert "register_tasks" in rows["tasks-retrieval"]["hooks"]


class _RuntimePlugin:
    @hookimpl
    def register_models(self, register):
        register(ModelInfo(name="rt-model", family="test", source="custom", embed_dim=3, preprocess=Preprocess()),
                 lambda **kw: None)

    @hookimpl
    def register_datasets(self, register):
        register(DatasetInfo(name="rt-data", needs_root=False), lambda root, **kw: None)


def test_register_and_unregister_at_runtime():
    plugins.register_plugin(_RuntimePlugin(), name="rt")
    reg = plugins.registry()
    assert "rt-model" in reg.models and "rt-data" in reg.datasets
    assert reg.models["rt-model"].info.weights_env == "DERMBENCH_WEIGHTS_RT_MODEL"
    plugins.unregister_plugin("rt")
    assert "rt-model" not in plugins.registry().models


class _Broken:
    @hookimpl
    def register_tasks(self, register):
        raise RuntimeError("boom in register_tasks")


def test_failing_hook_is_isolated_and_reported():
    plugins.register_plugin(_Broken(), name="broken")
    reg = plugins.registry()
    assert "retrieval" in reg.tasks  # the others still registered
    errs = [e for e in reg.errors if e.plugin == "broken"]
    assert errs and errs[0].stage == "register_tasks" and "boom" in errs[0].error


def test_duplicate_names_keep_the_first_and_report():
    class Dup:
        @hookimpl
        def register_tasks(self, register):
            register(TaskInfo(name="retrieval"), object)

    plugins.register_plugin(Dup(), name="dup")
    reg = plugins.registry()
    assert reg.tasks["retrieval"].plugin == "tasks-retrieval"
    assert any("already registered" in e.error for e in reg.errors if e.plugin == "dup")


def test_register_rejects_wrong_types():
    class Wrong:
        @hookimpl
        def register_models(self, register):
            register({"name": "x"}, None)

    plugins.register_plugin(Wrong(), name="wrong")
    errs = [e for e in plugins.registry().errors if e.plugin == "wrong"]
    assert errs and "expects a ModelInfo" in errs[0].error


def _fake_dist(tmp_path: Path, module_src: str, ep_name: str = "badplug") -> Path:
    """A real installed-distribution layout on sys.path whose entry point imports a module that raises."""
    (tmp_path / "badplug_mod.py").write_text(module_src)
    di = tmp_path / "badplug-0.1.dist-info"
    di.mkdir()
    (di / "METADATA").write_text("Metadata-Version: 2.1\nName: badplug\nVersion: 0.1\n")
    (di / "entry_points.txt").write_text(f"[dermbench]\n{ep_name} = badplug_mod\n")
    return tmp_path


def test_plugin_that_fails_to_import_is_skipped(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_fake_dist(tmp_path, "raise ImportError('needs a missing library')\n")))
    reg = plugins.registry()
    err = [e for e in reg.errors if e.plugin == "badplug"]
    assert err and err[0].stage == "import" and "missing library" in err[0].error
    assert "retrieval" in reg.tasks
    with pytest.raises(DermbenchError, match="failed to load: badplug"):
        reg.model("nope")


def test_allow_list_env(monkeypatch):
    monkeypatch.setenv(plugins.ALLOW_ENV, "tasks-probe")
    reg = plugins.registry()
    assert set(reg.tasks) == {"probe"}
    assert not reg.models
    monkeypatch.setenv(plugins.ALLOW_ENV, "")
    plugins.reset_all()
    assert not plugins.registry().tasks


def test_unknown_name_lists_valid_ones():
    with pytest.raises(DermbenchError) as e:
        plugins.registry().task("retreival")
    assert "Did you mean retrieval" in str(e.value) and "probe" in str(e.value)


def test_plugin_modules_do_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        from dermbench import plugins
        reg = plugins.registry()
        assert reg.models and reg.tasks and reg.datasets, (reg.models, reg.errors)
        heavy = [m for m in ("torch", "timm", "open_clip", "transformers", "pandas", "sklearn") if m in sys.modules]
        print(",".join(heavy))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", f"plugin registration imported heavy modules: {r.stdout}"


def test_cli_help_does_not_import_torch():
    code = "import sys; from dermbench.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().endswith("False")


def test_every_hook_is_documented_and_tested():
    specs = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "dermbench_spec")]
    assert set(specs) == {"register_models", "register_tasks", "register_datasets", "register_metrics",
                          "register_commands"}
    tests_text = "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    docs = (REPO / "docs" / "plugins.md").read_text() if (REPO / "docs" / "plugins.md").exists() else ""
    for name in specs:
        assert inspect.getdoc(getattr(hookspecs, name)), f"hookspec {name} has no docstring"
        assert f"def {name}(" in tests_text, f"no test implements hook {name}"
        assert name in docs, f"docs/plugins.md does not document hook {name}"


def test_register_commands_hook_adds_a_cli_command(capsys):
    class Cmd:
        @hookimpl
        def register_commands(self, app):
            @app.command("hello-plugin")
            def hello():
                print("hello from a plugin")

    plugins.register_plugin(Cmd(), name="cmd")
    from typer.testing import CliRunner

    import dermbench.cli as cli

    typer_app = cli.app
    plugins.add_commands(typer_app)
    res = CliRunner().invoke(typer_app, ["hello-plugin"])
    assert res.exit_code == 0 and "hello from a plugin" in res.output
    # leave the global app as it was
    typer_app.registered_commands = [c for c in typer_app.registered_commands if c.name != "hello-plugin"]


def test_register_metrics_hook_makes_a_plugin_metric_scorable():
    import numpy as np

    from dermbench import stats

    class MetricPlugin:
        @hookimpl
        def register_metrics(self, register):
            def resolve(name):
                if name != "top_score_mean":
                    return None
                base = stats.get_metric("mean:top")
                return base

            register(resolve)

    plugins.register_plugin(MetricPlugin(), name="metricplug")
    pred = {"ids": ["a", "b", "c", "d"], "top": np.array([0.1, 0.2, 0.3, 0.4])}
    res = stats.score(pred, ["top_score_mean"], split_hash="h", seed=0, n_boot=50)
    assert res["top_score_mean"]["value"] == pytest.approx(0.25)
    plugins.unregister_plugin("metricplug")
    with pytest.raises(DermbenchError, match="unknown metric 'top_score_mean'"):
        stats.get_metric("top_score_mean")

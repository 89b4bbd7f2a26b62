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
    # every first-party entry point is loaded through the same path a third party uses: from the installed
    # dermbench distribution, with its version, and never as a runtime registration
    first_party = [n for n, v in eps.items() if v.split(".")[0] in ("dermbench_plugins", "dermino_model")]
    assert len(first_party) >= 20
    version = metadata.version("dermbench")
    for name in first_party:
        assert name in rows, f"entry point {name} was not loaded: {plugins.registry().errors}"
        assert (rows[name]["dist"], rows[name]["version"]) == ("dermbench", version), rows[name]
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
                          "register_commands", "register_report_sections", "register_demo"}
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


# ------------------------------------------------------------------------------------------ validation (16, bad input)


def test_invalid_declarations_are_refused_naming_plugin_field_and_fix():
    good = TaskInfo(name="rt-good-task", metrics=("accuracy",), primary_metric="accuracy")

    class Sloppy:
        @hookimpl
        def register_tasks(self, register):
            register(TaskInfo(name="rt-typo", requires=frozenset({"label"})), object)
            register(TaskInfo(name="rt-prim", metrics=("accuracy",), primary_metric="auroc_macro"), object)
            register(good, object)

        @hookimpl
        def register_models(self, register):
            pre = Preprocess()
            register(ModelInfo(name="rt-zero", family="t", source="custom", embed_dim=0, preprocess=pre), None)
            register(ModelInfo(name="rt-cap", family="t", source="custom", embed_dim=8, preprocess=pre,
                               capabilities=frozenset({"cls", "patch_token"})), None)

        @hookimpl
        def register_datasets(self, register):
            register(DatasetInfo(name="rt-nolicence", license=" ", needs_root=False), None)
            register(DatasetInfo(name="rt-field", fields=frozenset({"labels", "fitzpatrik"})), None)

    plugins.register_plugin(Sloppy(), name="sloppy")
    reg = plugins.registry()
    errs = {e.error.split(":")[0]: e for e in reg.errors if e.plugin == "sloppy"}
    assert set(errs) == {"task 'rt-typo'", "task 'rt-prim'", "model 'rt-zero'", "model 'rt-cap'",
                         "dataset 'rt-nolicence'", "dataset 'rt-field'"}
    assert "requires has unknown 'label'; did you mean 'labels'?" in errs["task 'rt-typo'"].error
    assert errs["task 'rt-typo'"].stage == "register_tasks" and "other registrations" in errs["task 'rt-typo'"].hint
    assert "primary_metric 'auroc_macro' is not in metrics ['accuracy']" in errs["task 'rt-prim'"].error
    assert "embed_dim must be a positive int" in errs["model 'rt-zero'"].error and "got 0" in errs["model 'rt-zero'"].error
    assert "did you mean 'patch_tokens'?" in errs["model 'rt-cap'"].error
    assert "license is missing" in errs["dataset 'rt-nolicence'"].error
    assert "did you mean 'fitzpatrick'?" in errs["dataset 'rt-field'"].error
    # the refused names are absent, the plugin's valid registration and every other plugin's are kept
    assert "rt-good-task" in reg.tasks and "retrieval" in reg.tasks
    assert not {"rt-typo", "rt-prim"} & set(reg.tasks) and not {"rt-zero", "rt-cap"} & set(reg.models)
    # the first-party declarations are all valid
    from dermbench.api import info_problems

    for kind in ("models", "tasks", "datasets"):
        for name, entry in getattr(reg, kind).items():
            assert info_problems(entry.info) == [], (kind, name)


def _split(n: int = 4):
    from dermbench.api import Dataset, Sample

    samples = [Sample(id=f"s{i}", image=f"/nonexistent/{i}.png", label=i % 2) for i in range(n)]
    return Dataset(DatasetInfo(name="rt-data", needs_root=False), samples, {"test": list(range(n))}).split("test")


def test_validate_task_output_names_task_key_and_fix():
    import numpy as np

    from dermbench.api import TaskOutput, validate_task_output

    split = _split()
    y = np.array([0, 1, 0, 1])
    s = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    ok = {"ids": split.ids, "y_true": y, "scores": s, "y_pred": s.argmax(1)}
    validate_task_output(TaskOutput(ok, ["auroc_macro", "accuracy"], split), task="mytask")  # valid: no error

    def err(preds, metrics=("auroc_macro",), out=None):
        with pytest.raises(DermbenchError) as e:
            validate_task_output(out or TaskOutput(preds, list(metrics), split), task="mytask")
        assert "task 'mytask'" in str(e.value)
        return str(e.value)

    assert "needs predictions['scores']" in err({"ids": split.ids, "y_true": y}) and "add it or drop" in err(
        {"ids": split.ids, "y_true": y})
    assert "predictions['scores'] has 3 entries but the split 'test' has 4" in err({**ok, "scores": s[:3]})
    assert "predictions['ids'] has 5 entries" in err({**ok, "ids": split.ids + ["x"]})
    nan = s.copy()
    nan[2, 1] = np.nan
    msg = err({**ok, "scores": nan})
    assert "NaN/inf for 1 of 4 samples (ids: s2)" in msg
    assert "unknown metric 'auroc'" in err(ok, metrics=("auroc",))
    assert "expected dermbench.api.TaskOutput" in err(ok, out=ok)
    assert "no 'ids'" in err({"y_true": y, "scores": s})


class _Sections:
    def __init__(self, calls):
        self.calls = calls

    @hookimpl
    def register_report_sections(self, register):
        def write(records, out_dir):
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / "rt_section.txt"
            path.write_text(f"{len(records)} records")
            return [path]

        def broken(records, out_dir):
            raise ValueError("cannot plot")

        register("a-broken", broken)
        register("b-writes", write)

    @hookimpl
    def register_demo(self, register):
        register("a-fails", lambda log: 1 / 0)
        register("b-runs", lambda log: (self.calls.append("prepared"), log("rt prepared")))


def test_report_section_and_demo_hooks_run_isolated(tmp_path):
    calls: list[str] = []
    plugins.register_plugin(_Sections(calls), name="sections")
    with pytest.warns(RuntimeWarning, match="report section 'a-broken' of plugin 'sections' failed: ValueError"):
        files = plugins.report_sections([], tmp_path / "plots")  # no records: first-party sections write nothing
    assert files == [tmp_path / "plots" / "rt_section.txt"] and files[0].read_text() == "0 records"
    # the first-party sections (fairness, label efficiency) are registered through the same hook
    names = {name for _p, name, _f in plugins.registry().report_sections}
    assert {"fairness", "label-efficiency", "a-broken", "b-writes"} <= names
    try:
        reg = plugins.registry()
        # dermino's preparation (pretraining the demo checkpoint) is registered through the same hook; it is left
        # out here because it really pretrains (minutes), which the demo test covers
        assert "dermino" in {p for p, _n, _f in reg.demo_preparers}
        reg.demo_preparers = [t for t in reg.demo_preparers if t[0] != "dermino"]
        logged: list[str] = []
        plugins.prepare_demo(log=logged.append)
        assert calls == ["prepared"] and "rt prepared" in logged
        assert any("'a-fails' of plugin 'sections' failed: ZeroDivisionError" in m for m in logged)
    finally:
        plugins.unregister_plugin("sections")


def test_sdk_is_light_and_keeps_old_names():
    code = ("import sys, dermbench.api as a\n"
            "print(','.join(m for m in ('numpy', 'torch', 'pandas', 'scipy', 'PIL') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", f"import dermbench.api imported {r.stdout}"
    import dermbench.api as api
    from dermbench import backbones, datasets_common, stats, weights

    assert api.API_VERSION == "2" and "iter_chunks" in api.API_CHANGES["2"]
    assert api.TimmBackbone is backbones.TimmBackbone and api.Row is datasets_common.Row
    assert api.resolve_weights is weights.resolve_weights and api.Prepared is stats.Prepared
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        api.not_a_name  # noqa: B018
    with pytest.warns(DeprecationWarning, match="iter_chunks is deprecated"):
        assert [list(c) for c in api.iter_chunks([1, 2, 3], 2)] == [[1, 2], [3]]


def test_every_first_party_task_option_is_declared_and_accepted():
    """--task-opt can set exactly what the constructor takes (a subclass passing **options to its parent counts)."""
    reg = plugins.registry()
    tasks = {n: e for n, e in reg.tasks.items() if e.plugin.startswith("tasks-")}
    assert {"federated", "federated-datasets", "probe", "segmentation"} <= set(tasks)
    for name, entry in tasks.items():
        inits = [vars(c)["__init__"] for c in entry.obj.__mro__ if c is not object and "__init__" in vars(c)]
        params = {n: p for f in inits for n, p in inspect.signature(f).parameters.items()}
        named = {n for n, p in params.items() if n != "self" and not n.startswith("_")
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        base_takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(inits[-1]).parameters.values())
        assert named <= set(entry.info.defaults), (name, "not settable", sorted(named - set(entry.info.defaults)))
        if not base_takes_any:  # options the constructors would refuse
            assert set(entry.info.defaults) <= named, (name, "refused", sorted(set(entry.info.defaults) - named))

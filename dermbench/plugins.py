"""Plugin loading and the registry of models, tasks and datasets.

First-party plugins are found through the entry-point group ``dermbench`` exactly like third-party ones.
Loading is lazy (first use) and idempotent; a plugin that fails to import or whose hook raises is
recorded in ``registry().errors`` and skipped, so one broken plugin never takes the CLI down.
``DERMBENCH_LOAD_PLUGINS=name1,name2`` restricts loading to those entry points (an empty value loads none).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Callable

import pluggy

from dermbench import hookspecs
from dermbench.api import DatasetInfo, DermbenchError, ModelInfo, TaskInfo, info_problems

GROUP = "dermbench"
ALLOW_ENV = "DERMBENCH_LOAD_PLUGINS"


@dataclass
class PluginError:
    plugin: str
    stage: str  # import | register_models | register_tasks | ...
    error: str
    hint: str = ""
    traceback: str = ""


@dataclass
class Entry:
    info: Any
    obj: Any  # loader or task class
    plugin: str


@dataclass
class Registry:
    models: dict[str, Entry] = field(default_factory=dict)
    tasks: dict[str, Entry] = field(default_factory=dict)
    datasets: dict[str, Entry] = field(default_factory=dict)
    metric_resolvers: list[tuple[str, Callable[[str], Any]]] = field(default_factory=list)  # (plugin, resolver)
    report_sections: list[tuple[str, str, Callable[..., Any]]] = field(default_factory=list)  # (plugin, name, make)
    demo_preparers: list[tuple[str, str, Callable[..., Any]]] = field(default_factory=list)  # (plugin, name, prepare)
    errors: list[PluginError] = field(default_factory=list)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {version, hooks, dist}

    def _get(self, kind: str, name: str) -> Entry:
        table: dict[str, Entry] = getattr(self, kind)
        if name in table:
            return table[name]
        import difflib

        close = difflib.get_close_matches(name, table, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        failed = [e for e in self.errors if e.stage == "import"]
        extra = (
            f" ({len(failed)} plugin(s) failed to load: {', '.join(e.plugin for e in failed)}; see `dermbench plugins`)"
            if failed
            else ""
        )
        raise DermbenchError(
            f"unknown {kind[:-1]} {name!r}.{hint} Valid {kind}: {', '.join(sorted(table)) or '(none)'}{extra}"
        )

    def model(self, name: str) -> Entry:
        return self._get("models", name)

    def task(self, name: str) -> Entry:
        return self._get("tasks", name)

    def dataset(self, name: str) -> Entry:
        if ":" in name and name not in self.datasets:  # derived view <dataset>:<view> (dermbench.views)
            from dermbench import views

            return views.view_entry(self, name)
        return self._get("datasets", name)


_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None


def _allowed() -> set[str] | None:
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager with every allowed entry point loaded (once)."""
    global _pm
    if _pm is None:
        _pm = pluggy.PluginManager(GROUP)
        _pm.add_hookspecs(hookspecs)
        _load_entry_points(_pm, _errors_sink)
    return _pm


_errors_sink: list[PluginError] = []


def load_errors() -> list[PluginError]:
    """Entry points that failed to import (each is tried once per process)."""
    get_plugin_manager()
    return list(_errors_sink)


def _load_entry_points(pm: pluggy.PluginManager, errors: list[PluginError]) -> None:
    allowed = _allowed()
    seen: set[str] = set()
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        if ep.name in seen or (allowed is not None and ep.name not in allowed):
            continue
        seen.add(ep.name)
        dist = getattr(ep, "dist", None)
        try:
            module = ep.load()
        except Exception as e:  # isolation: report and go on
            errors.append(
                PluginError(
                    ep.name,
                    "import",
                    f"{type(e).__name__}: {e}",
                    hint=f"check that {ep.value!r} imports (pip install its extras?)",
                    traceback=traceback.format_exc(),
                )
            )
            continue
        pm.register(module, name=ep.name)
        name, version = _dist_name_version(dist)
        pm_meta[ep.name] = {"dist": name, "version": version, "module": ep.value}


def _dist_name_version(dist: Any) -> tuple[str, str]:
    """(name, version) of a distribution, its METADATA parsed once (``dist.name``/``.version`` re-parse it on every
    access: 64 parses for the first-party plugins cost ~60 ms of every command)."""
    if dist is None:
        return "?", "?"
    key = str(getattr(dist, "_path", id(dist)))
    if key not in _dist_meta:
        md = dist.metadata
        _dist_meta[key] = (md["Name"] or "?", md["Version"] or "?")
    return _dist_meta[key]


_dist_meta: dict[str, tuple[str, str]] = {}


pm_meta: dict[str, dict[str, str]] = {}


def register_plugin(module: Any, name: str | None = None) -> None:
    """Register a plugin object at run time (tests, notebooks) and rebuild the registry."""
    pm = get_plugin_manager()
    pm.register(module, name=name)
    pm_meta[name or pm.get_name(module)] = {"dist": "(runtime)", "version": "-", "module": repr(module)}
    reset_registry()


def unregister_plugin(name: str) -> None:
    pm = get_plugin_manager()
    pm.unregister(name=name)
    pm_meta.pop(name, None)
    reset_registry()


def reset_registry() -> None:
    global _registry
    _registry = None


def reset_all() -> None:
    """Forget loaded plugins (tests use this after changing DERMBENCH_LOAD_PLUGINS)."""
    global _pm, _registry
    _pm = None
    _registry = None
    _errors_sink.clear()
    pm_meta.clear()


def _call_each(pm: pluggy.PluginManager, hook: str, errors: list[PluginError], make_register: Callable) -> None:
    """Call one hook per plugin so that a failing implementation is isolated."""
    for impl in getattr(pm.hook, hook).get_hookimpls():
        plugin = impl.plugin_name
        register = make_register(plugin)
        try:
            impl.function(register)
        except Exception as e:
            errors.append(
                PluginError(plugin, hook, f"{type(e).__name__}: {e}", hint="fix or uninstall the plugin",
                            traceback=traceback.format_exc())
            )


def registry() -> Registry:
    """The registry, built on first use from every loaded plugin."""
    global _registry
    if _registry is not None:
        return _registry
    pm = get_plugin_manager()
    reg = Registry(errors=list(_errors_sink))

    def maker(kind: str, info_type: type) -> Callable[[str], Callable]:
        def make(plugin: str) -> Callable:
            def register(info: Any, obj: Any) -> None:
                if not isinstance(info, info_type):
                    raise TypeError(f"register() expects a {info_type.__name__}, got {type(info).__name__}")
                problems = info_problems(info)
                if problems:
                    reg.errors.append(PluginError(plugin, f"register_{kind}", "; ".join(problems),
                                                  hint="fix this declaration in the plugin; its other registrations "
                                                       "are kept"))
                    return
                from dermbench.results import check_name  # names become folder names: refuse escaping ones

                try:
                    check_name(info.name, f"{kind[:-1]} name")
                except DermbenchError as e:
                    reg.errors.append(PluginError(plugin, f"register_{kind}", str(e), hint="rename it"))
                    return
                if kind == "models" and not info.weights_env:
                    env = "DERMBENCH_WEIGHTS_" + "".join(c if c.isalnum() else "_" for c in info.name.upper())
                    info = replace(info, weights_env=env)
                table = getattr(reg, kind)
                if info.name in table:
                    reg.errors.append(
                        PluginError(plugin, f"register_{kind}",
                                    f"{kind[:-1]} {info.name!r} already registered by {table[info.name].plugin!r}",
                                    hint="rename it; the first registration is kept")
                    )
                    return
                table[info.name] = Entry(info, obj, plugin)
                reg.plugins.setdefault(plugin, {}).setdefault(kind, []).append(info.name)

            return register

        return make

    _call_each(pm, "register_models", reg.errors, maker("models", ModelInfo))
    _call_each(pm, "register_tasks", reg.errors, maker("tasks", TaskInfo))
    _call_each(pm, "register_datasets", reg.errors, maker("datasets", DatasetInfo))

    def make_metric_register(plugin: str) -> Callable:
        def register(resolver: Callable[[str], Any]) -> None:
            if not callable(resolver):
                raise TypeError(f"register() expects a resolver function name -> Metric | None, got {resolver!r}")
            reg.metric_resolvers.append((plugin, resolver))
            reg.plugins.setdefault(plugin, {}).setdefault("metrics", []).append(getattr(resolver, "__name__", "?"))

        return register

    _call_each(pm, "register_metrics", reg.errors, make_metric_register)

    def named_maker(table: list[tuple[str, str, Callable[..., Any]]], what: str) -> Callable[[str], Callable]:
        def make(plugin: str) -> Callable:
            def register(name: str, fn: Callable[..., Any]) -> None:
                if not isinstance(name, str) or not name or not callable(fn):
                    raise TypeError(f"register() expects (name: str, function) for {what}, got ({name!r}, {fn!r})")
                table.append((plugin, name, fn))
                reg.plugins.setdefault(plugin, {}).setdefault(what, []).append(name)

            return register

        return make

    _call_each(pm, "register_report_sections", reg.errors, named_maker(reg.report_sections, "report_sections"))
    _call_each(pm, "register_demo", reg.errors, named_maker(reg.demo_preparers, "demo"))
    _registry = reg
    return reg


def report_sections(records: list[Any], out_dir: Any) -> list[Any]:
    """Files written by every plugin's report section (hook ``register_report_sections``), in section-name
    order. A section that raises is reported as a warning naming the plugin; the others still run."""
    import warnings
    from pathlib import Path

    files: list[Path] = []
    for plugin, name, make in sorted(registry().report_sections, key=lambda t: (t[1], t[0])):
        try:
            files += [Path(f) for f in make(records, Path(out_dir)) or []]
        except Exception as e:  # isolation: one plugin's plot never costs the leaderboard
            warnings.warn(f"report section {name!r} of plugin {plugin!r} failed: {type(e).__name__}: {e}",
                          RuntimeWarning, stacklevel=2)
    return files


def prepare_demo(log: Callable[[str], None] = print) -> None:
    """Run every plugin's demo preparation (hook ``register_demo``); a failure is logged and skipped."""
    for plugin, name, prepare in sorted(registry().demo_preparers, key=lambda t: (t[1], t[0])):
        try:
            prepare(log)
        except Exception as e:
            log(f"demo: preparation {name!r} of plugin {plugin!r} failed: {type(e).__name__}: {e}")


def plugin_rows() -> list[dict[str, Any]]:
    """One row per loaded plugin: name, distribution, version, hooks it implements, what it registered."""
    pm = get_plugin_manager()
    reg = registry()
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda t: t[0]):
        if plugin is None:
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        meta = pm_meta.get(name, {})
        rows.append(
            {
                "name": name,
                "dist": meta.get("dist", "?"),
                "version": meta.get("version", "?"),
                "hooks": hooks,
                "registered": reg.plugins.get(name, {}),
            }
        )
    return rows


def add_commands(app: Any) -> list[PluginError]:
    """Let plugins add Typer commands; failures are reported, not raised.

    Each command or sub-app a plugin adds is tagged ``dermbench_plugin`` (the plugin's name) and
    ``dermbench_files`` (the files of its hook and callback), so ``--help`` can say where it came from
    and :mod:`dermbench.command_index` knows which files to watch."""
    import inspect

    pm = get_plugin_manager()
    errors: list[PluginError] = []
    for impl in pm.hook.register_commands.get_hookimpls():
        n_cmds, n_groups = len(app.registered_commands), len(app.registered_groups)
        try:
            impl.function(app)
        except Exception as e:
            errors.append(PluginError(impl.plugin_name, "register_commands", f"{type(e).__name__}: {e}"))
            continue
        for info in app.registered_commands[n_cmds:] + app.registered_groups[n_groups:]:
            files = set()
            for fn in (impl.function, getattr(info, "callback", None)):
                try:
                    files.add(inspect.getsourcefile(fn))
                except TypeError:
                    pass
            info.dermbench_plugin = impl.plugin_name
            info.dermbench_files = sorted(f for f in files if f)
    return errors

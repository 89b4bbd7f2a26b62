"""The plugin contract (public API, versioned by ``dermbench.api.API_VERSION``).

Every hook receives a ``register`` callback, in the style of simonw/llm and datasette, so a plugin
can register any number of things and the core controls validation and bookkeeping.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("dermbench")
hookimpl = pluggy.HookimplMarker("dermbench")


@hookspec
def register_models(register):
    """Register backbones: ``register(ModelInfo, loader)``; ``loader(weights=None, device="cpu", **opts)``
    returns a ``Backbone``. Import heavy libraries inside the loader, not at module level."""


@hookspec
def register_tasks(register):
    """Register protocols: ``register(TaskInfo, TaskClass)``; ``TaskClass(**params).run(ctx)`` returns
    a ``TaskOutput``."""


@hookspec
def register_datasets(register):
    """Register datasets (one name per task variant): ``register(DatasetInfo, loader)``;
    ``loader(root, **opts)`` returns a ``Dataset``."""


@hookspec
def register_metrics(register):
    """Register metric resolvers: ``register(resolver)`` with ``resolver(name) -> dermbench.stats.Metric | None``.

    A resolver is asked only for names the core does not know (``corpus_bleu4``, ``gap:auroc_macro@sex``), so
    records written by a task are scored, compared and tabulated in any later process. Keep the resolver cheap
    to define: import numpy/stats inside it."""


@hookspec
def register_commands(app):
    """Add Typer sub-commands to the ``dermbench`` app (``dermino_model`` adds ``pretrain``).

    Called when a command that is not a core one is run (and when ``dermbench --help`` finds its cached listing
    stale), so ``--help`` stays instant; a command may not take a core command's name."""


@hookspec
def register_report_sections(register):
    """Add plugin-specific leaderboard output: ``register(name, make)`` with ``make(records, out_dir)`` writing
    plots or files for the records it understands into ``out_dir`` and returning their paths (records of other
    tasks are ignored). The fairness task adds per-group curves, label efficiency its curves. Called by
    ``dermbench leaderboard`` when plots are on, sections in name order; one that raises is reported as a
    warning and the others are still written. Import matplotlib inside ``make``."""


@hookspec
def register_demo(register):
    """Prepare ``dermbench demo``: ``register(name, prepare)`` with ``prepare(log)`` run once before the demo
    chooses its models (``dermino_model`` pretrains its small demo checkpoint). ``log(message)`` prints to the
    console; a ``prepare`` that raises is logged and the demo goes on without it."""

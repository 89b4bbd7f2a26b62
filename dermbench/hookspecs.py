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
    """Add Typer sub-commands to the ``dermbench`` app (``dermino_model`` adds ``pretrain``)."""

"""Registers the clinical operating-point metrics (sens@spec90/95, spec@sens90/95, auprc, sens@thr, spec@thr).

A plugin of its own (entry point ``metrics-operating-points``) so that records of any task that lists them
(probe and retrieval on binary datasets, transfer, ...) are scored, compared and tabulated in any process.
The implementation is ``dermbench.api.operating_point_metric`` (core: dermbench/operating_points.py).
"""

from __future__ import annotations

from dermbench import hookimpl

NAMES = ("sens@spec90", "sens@spec95", "spec@sens90", "spec@sens95", "auprc", "sens@thr", "spec@thr")


def resolve_operating_point(name: str):
    if name not in NAMES:
        return None
    from dermbench.api import operating_point_metric

    return operating_point_metric(name)


@hookimpl
def register_metrics(register):
    register(resolve_operating_point)

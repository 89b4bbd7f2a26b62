"""Label efficiency: the curve helpers ``probe``/``retrieval``/``finetune`` use (:mod:`.curves`) and, as a plugin
entry module (``tasks-label-efficiency``), the leaderboard section that plots those curves. No task of its own."""

from __future__ import annotations

from dermbench import hookimpl


@hookimpl
def register_report_sections(register):
    """Leaderboard plots: label-efficiency curves of probe/retrieval/finetune records that carry them."""

    def make(records, out_dir):
        from dermbench_plugins.tasks.label_efficiency.curves import label_efficiency_plot

        return label_efficiency_plot(records, out_dir)

    register("label-efficiency", make)

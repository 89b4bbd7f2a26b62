"""Hook for ``dermbench demo``: make sure a ``dermino`` checkpoint exists (pretrain ``--preset demo`` if not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def ensure_demo_checkpoint(log: Callable[[str], Any] = print, progress: bool = True, **overrides: Any) -> Path:
    """The newest ``$DERMBENCH_CACHE/checkpoints/dermino-demo/ckpt-*``; runs the demo pretraining when there is none."""
    from dermino_model.trainer import default_output_dir, ensure_demo_checkpoint as ensure, list_checkpoints

    if not list_checkpoints(default_output_dir("demo")):
        log(f"demo: no DermINO checkpoint yet; pretraining `--preset demo` on dermsynth into {default_output_dir('demo')}")
    path = ensure(progress=progress, **overrides)
    log(f"demo: dermino = {path}")
    return path

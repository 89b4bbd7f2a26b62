"""Progress of long steps that also shows in logs: a rich bar on a terminal, a plain line every ~10 s otherwise.

Rich's live bar prints nothing when stdout is piped (CI logs, ``make demo | tee``), so minutes of extraction or
pretraining looked like a hang. :class:`LineProgress` is the one non-terminal reporter (the runner's
``ctx.progress`` and DermINO's pretraining use it): ``<what>: 120/400 (30%), 12.3/s, ETA 23s``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

#: seconds between two progress lines when stdout is not a terminal (DERMBENCH_PROGRESS_EVERY overrides)
EVERY_S = 10.0


def _every() -> float:
    try:
        return float(os.environ.get("DERMBENCH_PROGRESS_EVERY", EVERY_S))
    except ValueError:
        return EVERY_S


def fmt_seconds(s: float) -> str:
    s = max(0.0, float(s))
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"


class LineProgress:
    """Counts work and prints one line per ``every`` seconds (never more often), with rate and ETA.

    ``advance(n)`` counts n units; ``info`` (a string set by the caller) is appended to the line, e.g. a loss.
    ``write`` defaults to printing on stdout (flushed); a console's ``print`` fits too.
    """

    def __init__(self, description: str, total: int | None = None, unit: str = "it", every: float | None = None,
                 write: Callable[[str], Any] | None = None, clock: Callable[[], float] = time.monotonic):
        self.description, self.total, self.unit = description, total, unit
        self.every = _every() if every is None else every
        self.write = write or (lambda line: print(line, flush=True))
        self.clock = clock
        self.t0 = self.last = clock()
        self.done = 0
        self.info = ""

    def line(self) -> str:
        dt = self.clock() - self.t0
        rate = self.done / dt if dt > 0 else 0.0
        head = f"{self.description}: {self.done}"
        if self.total:
            head += f"/{self.total} ({100 * self.done / self.total:.0f}%)"
        tail = (f", {rate:.1f} {self.unit}/s" if rate >= 1 else f", {1 / rate:.1f} s/{self.unit}") if rate else ""
        if self.total and rate:
            tail += f", ETA {fmt_seconds((self.total - self.done) / rate)}"
        return head + tail + (f", {self.info}" if self.info else "")

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.write(self.line())

    __call__ = advance


def is_terminal(stream: Any = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

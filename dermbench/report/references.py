"""Published reference numbers beside measured ones, with a reproduction verdict.

The table ships with the package (``references.json``, versioned by its ``version`` field); a user can pass
another file with the same fields (``dermbench leaderboard --references FILE``). Verdict: the published value
lies inside the measured 95% CI ("reproduced") or not; where the split definition differs, the reader is told.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dermbench.api import DermbenchError

FIELDS = ("model", "task", "dataset", "split", "n", "metric", "value", "source")
OPTIONAL = ("ci_low", "ci_high", "note")
DEFAULT = Path(__file__).with_name("references.json")


def load(path: Path | str | None = None) -> dict[str, Any]:
    """The reference table, validated: every entry has the required fields with the right types."""
    p = Path(path) if path is not None else DEFAULT
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise DermbenchError(f"reference table {p} does not exist; pass an existing JSON file") from None
    except json.JSONDecodeError as e:
        raise DermbenchError(f"reference table {p} is not valid JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise DermbenchError(f"reference table {p} needs an object with an 'entries' list")
    for i, e in enumerate(doc["entries"]):
        missing = [k for k in FIELDS if k not in e]
        if missing:
            raise DermbenchError(f"reference table {p}, entry #{i}: missing {missing} (needs {', '.join(FIELDS)})")
        for k in ("value", "ci_low", "ci_high"):
            v = e.get(k)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise DermbenchError(f"reference table {p}, entry #{i}: {k}={v!r} is not a finite number")
        if not isinstance(e["n"], int) or e["n"] <= 0:
            raise DermbenchError(f"reference table {p}, entry #{i}: n={e['n']!r} must be the positive test-set size")
    doc.setdefault("version", "unversioned")
    doc["path"] = str(p)
    return doc


def verdict(ref: dict[str, Any], measured: dict[str, Any] | None) -> tuple[str, str]:
    """(short verdict, explanation) for one published number against a measured cell (value + CI)."""
    if measured is None or measured.get("value") is None:
        return "not measured", "no matching record on this board (model, task, dataset and metric must match)"
    lo, hi = measured.get("ci_low"), measured.get("ci_high")
    v = float(ref["value"])
    if lo is None or hi is None:
        return "no CI", f"measured {measured['value']:.3f} has no interval; cannot judge"
    if lo <= v <= hi:
        return "reproduced", f"published {v:.3f} lies inside the measured 95% CI [{lo:.3f}, {hi:.3f}]"
    side = "above" if v > hi else "below"
    extra = ""
    if ref.get("ci_low") is not None and ref.get("ci_high") is not None and not (ref["ci_high"] < lo or ref["ci_low"] > hi):
        extra = "; the published CI overlaps the measured one"
    return "not reproduced", f"published {v:.3f} lies {side} the measured 95% CI [{lo:.3f}, {hi:.3f}]{extra}"


def match(doc: dict[str, Any], cells: dict[tuple[str, str, str, str], dict[str, Any]],
          split_names: dict[tuple[str, str, str], str] | None = None) -> list[dict[str, Any]]:
    """One row per reference entry with the measured cell (keyed (model, task, dataset, metric)) and verdict."""
    rows = []
    for e in doc["entries"]:
        m = cells.get((e["model"], e["task"], e["dataset"], e["metric"]))
        short, why = verdict(e, m)
        split_here = (split_names or {}).get((e["model"], e["task"], e["dataset"]))
        if m is not None and split_here is not None and split_here != e["split"]:
            why += f"; note: the source's split is '{e['split']}', this board's is '{split_here}'"
        rows.append({**{k: e.get(k) for k in FIELDS + OPTIONAL}, "measured": None if m is None else m.get("value"),
                     "measured_ci": None if m is None else [m.get("ci_low"), m.get("ci_high")],
                     "verdict": short, "why": why})
    return rows

"""Plugin commands shown by ``dermbench --help`` without importing every plugin.

Importing all plugin modules to call ``register_commands`` cost more than the rest of ``--help`` put together
(~0.17 s of 0.35 s without bytecode caches). So the names and help texts of plugin commands are kept in
``<cache>/cli-commands-<venv>.json``, valid while a fingerprint matches: the ``dermbench`` entry points (name,
target, distribution folder), the ``DERMBENCH_LOAD_PLUGINS`` allow-list, and the size and mtime of every file
that defined a listed command (an edited plugin under ``pip install -e`` refreshes its help). A missing or
stale index is rebuilt by loading plugins the normal way. The index only ever feeds the help listing: running
any command that is not a core one loads the plugins themselves, so a command missing from the index still runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

FORMAT = 2
KEEP = 8  # listings kept per venv: `python -m dermbench` in a source tree can see other entry points than `dermbench`


def index_path() -> Path:
    from dermbench.weights import cache_dir

    venv = hashlib.sha256(sys.prefix.encode()).hexdigest()[:10]
    return cache_dir() / f"cli-commands-{venv}.json"


def _file_stamp(path: str) -> list[Any]:
    try:
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]
    except OSError:
        return [path, None, None]


_entry_points: list[tuple[str, str, str]] | None = None


def fingerprint(files: list[str]) -> str:
    """What a listing depends on; cheap enough for every ``--help`` (~10 ms, no plugin imported)."""
    global _entry_points
    from dermbench.plugins import ALLOW_ENV, GROUP

    if _entry_points is None:
        from importlib import metadata

        _entry_points = sorted(
            (ep.name, ep.value, str(getattr(getattr(ep, "dist", None), "_path", "")))
            for ep in metadata.entry_points(group=GROUP)
        )
    parts = {"format": FORMAT, "entry_points": _entry_points, "allow": os.environ.get(ALLOW_ENV),
             "files": [_file_stamp(f) for f in sorted(set(files))]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _entries() -> list[dict[str, Any]]:
    try:
        data = json.loads(index_path().read_text())
        entries = data["entries"] if data.get("format") == FORMAT else []
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("files"), list)]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []


def read() -> dict[str, Any] | None:
    """The stored listing that is still valid here, else None (missing, unreadable, stale)."""
    for entry in _entries():
        try:
            if entry.get("fingerprint") == fingerprint(entry["files"]):
                return entry
        except TypeError:
            continue
    return None


def write(commands: list[dict[str, Any]], errors: list[list[str]], files: list[str]) -> None:
    """Store a listing; a cache that cannot be written only costs the next ``--help`` its speed."""
    files = sorted(set(files))
    entry = {"fingerprint": fingerprint(files), "files": files, "commands": commands, "errors": errors}
    others = [e for e in _entries() if e.get("fingerprint") != entry["fingerprint"]]
    path = index_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "entries": [entry, *others][:KEEP]}, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass

"""`dermbench --help` must stay instant (≤ 0.3 s): time it against a bare `python -c pass` in the same run.

Also times `--help` with no command index (every plugin imported to rebuild it: what each `--help` cost before
the index) and `list models` (which must import every plugin). Prints medians of 7 runs and ratios; exits 1 if
`--help` is over the target or imports torch (or timm/open_clip/transformers/pandas) or any plugin module.
Set PYTHONDONTWRITEBYTECODE=1 and delete __pycache__ folders first to time a fresh checkout.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.3


def median_time(cmd: list[str], n: int = 7, env: dict | None = None, fresh_cache: bool = False) -> float:
    ts = []
    for _ in range(n):
        run_env = dict(env or os.environ)
        with tempfile.TemporaryDirectory() as cache:
            if fresh_cache:
                run_env["DERMBENCH_CACHE"] = cache
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=run_env)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    script = Path(sys.executable).parent / "dermbench"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "dermbench"]
    env = {**os.environ, "DERMBENCH_CACHE": tempfile.mkdtemp(prefix="dermbench-cli-bench-")}
    subprocess.run([*cli, "--help"], check=True, capture_output=True, env=env)  # build the index once
    base = median_time([sys.executable, "-c", "pass"])
    helptime = median_time([*cli, "--help"], env=env)
    cold = median_time([*cli, "--help"], env=env, fresh_cache=True)
    listtime = median_time([*cli, "list", "models"], env=env)
    torch_time = median_time([sys.executable, "-c", "import torch"], n=3)
    probe = ("import sys\nfrom dermbench.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n"
             "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('torch','timm','open_clip',"
             "'transformers','pandas','rich','dermbench_plugins','dermino_model')}))")
    subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)  # index for `-c` too
    heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                           env=env).stdout.strip().splitlines()[-1]
    print(f"python -c pass: {base*1000:.0f} ms (median of 7)")
    print(f"dermbench --help: {helptime*1000:.0f} ms (target {TARGET_S*1000:.0f} ms); without an index (imports "
          f"every plugin, as every --help did before): {cold*1000:.0f} ms; dermbench list models: {listtime*1000:.0f} ms")
    print(f"import torch alone: {torch_time*1000:.0f} ms")
    print(f"modules imported by --help: {heavy}")
    print(f"ratio --help / bare python: {helptime/base:.1f}x; --help / --help without index: {helptime/cold:.2f}x; "
          f"--help / import torch: {helptime/torch_time:.2f}x")
    if heavy != "[]":
        sys.exit("FAIL: --help imports heavy or plugin modules")
    if helptime > TARGET_S:
        sys.exit(f"FAIL: --help {helptime:.3f} s > {TARGET_S} s")


if __name__ == "__main__":
    main()

"""`dermbench --help` must stay instant: time it against a bare `python -c pass` in the same run.

Prints the median of 7 runs of each and the ratio; fails if torch (or timm/open_clip/transformers) is imported.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def median_time(cmd: list[str], n: int = 7) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    base = median_time([sys.executable, "-c", "pass"])
    helptime = median_time([sys.executable, "-m", "dermbench", "--help"])
    listtime = median_time([sys.executable, "-m", "dermbench", "list", "models"])
    torch_time = median_time([sys.executable, "-c", "import torch"], n=3)
    probe = ("import sys\nfrom dermbench.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n"
             "print(sorted(m for m in ('torch','timm','open_clip','transformers','pandas') if m in sys.modules))")
    heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    print(f"python -c pass: {base*1000:.0f} ms (median of 7)")
    print(f"dermbench --help: {helptime*1000:.0f} ms; dermbench list models: {listtime*1000:.0f} ms")
    print(f"import torch alone: {torch_time*1000:.0f} ms")
    print(f"heavy modules imported by --help: {heavy}")
    print(f"ratio --help / bare python: {helptime/base:.1f}x; --help / import torch: {helptime/torch_time:.2f}x")
    if heavy != "[]":
        sys.exit("FAIL: --help imports heavy modules")


if __name__ == "__main__":
    main()

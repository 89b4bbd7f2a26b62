"""The path an outside author takes: pip-install examples/dermbench-colour-hist (its own pyproject with a
``dermbench`` entry point) and run it end to end through the ``dermbench`` CLI in a fresh process.
The task and dataset examples: tests/test_examples_task.py, tests/test_examples_dataset.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from examples_util import BIN, EXAMPLES, example_run, installed_examples, records
from examples_util import env as _env

PKG = EXAMPLES / "dermbench-colour-hist"


@pytest.fixture(scope="module")
def site() -> Path:
    """All three examples installed once per session (examples_util); this module uses the model."""
    target = installed_examples()
    assert (target / "dermbench_colour_hist" / "plugin.py").exists()
    assert list(target.glob("dermbench_colour_hist-*.dist-info/entry_points.txt"))
    return target


def test_installed_plugin_registers_through_entry_point(site, tmp_path):
    code = (
        "from dermbench.plugins import registry, plugin_rows\n"
        "r = registry(); e = r.model('colour-hist')\n"
        "row = [p for p in plugin_rows() if p['name'] == 'colour-hist'][0]\n"
        "print(e.plugin, e.info.embed_dim, e.info.weights_env, row['dist'], row['version'], row['hooks'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(site, tmp_path), capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out[:5] == ["colour-hist", "30", "DERMBENCH_WEIGHTS_COLOUR_HIST", "dermbench-colour-hist", "0.1.0"]
    assert "register_models" in " ".join(out[5:])


def test_installed_plugin_runs_end_to_end():
    """The session's shared run (examples_util.example_run) includes colour-hist x retrieval on 36 images."""
    run = example_run()
    (rec,) = [r for r in records(run["results"], "retrieval") if r["model"] == "colour-hist"]
    assert rec["model_info"]["weights_id"] == "handcrafted:colour-hist-v1"
    assert rec["model_info"]["embed_dim"] == 30 and rec["model_info"]["license"] == "Apache-2.0"
    auroc = rec["metrics"]["auroc_macro"]
    assert 0.0 <= auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"] <= 1.0
    assert len(rec["predictions"]["ids"]) == auroc["n"] == 18  # the official half of 36 images


def test_plugins_check_passes_for_the_example(site, tmp_path):
    p = subprocess.run([str(BIN / "dermbench"), "plugins", "check", "colour-hist", "--n-images", "3"],
                       env=_env(site, tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def test_colour_hist_features_are_right():
    """The example's numbers, checked by hand: a pure red image fills the top R bin and the bottom G/B bins."""
    import torch

    sys.path.insert(0, str(PKG / "src"))
    try:
        from dermbench_colour_hist.plugin import BINS, load
    finally:
        sys.path.remove(str(PKG / "src"))
    bb = load()
    x = torch.zeros(1, 3, 8, 8)
    x[:, 0] = 1.0
    f = bb.embed(x)[0]
    hist = f[: 3 * BINS].reshape(3, BINS)
    assert hist[0, -1] == 1 and hist[1, 0] == 1 and hist[2, 0] == 1 and hist.sum() == 3
    assert torch.allclose(f[3 * BINS : 3 * BINS + 3], torch.tensor([1.0, 0.5, 1 / 3]))  # opponent means
    assert torch.allclose(f[-3:], torch.zeros(3))  # uniform image: zero std

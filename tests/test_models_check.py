"""check_model: runs a model on dermsynth images and catches metadata that lies."""

from __future__ import annotations

import types
from dataclasses import replace

import torch

import models_util  # noqa: F401  (HF_HUB_OFFLINE)

from dermbench import hookimpl
from dermbench.check import check_model, format_report
from dermbench.plugins import register_plugin, unregister_plugin

torch.set_num_threads(2)


def test_check_random_vit_on_dermsynth():
    r = check_model("random-vit", n_images=2)
    assert r["ok"], format_report(r)
    assert r["images"] == "dermsynth" and r["embed_shape"] == [2, 384]
    assert r["patch_shapes"] == [[1, 384, 14, 14], [1, 384, 14, 14]]
    assert r["weights_id"] == "random:0" and r["img_per_s"] > 0


def test_check_reports_lies_and_missing_weights(monkeypatch, tmp_path):
    from dermbench_plugins.models.timm_models import SPECS, load_timm

    info, spec = SPECS["random-vit"]
    liar = replace(info, name="liar-vit", embed_dim=768, patch_size=8, license="unknown")

    def load(weights=None, device="cpu", **opts):
        bb = load_timm(info, spec, device=device, **opts)
        bb.info = liar
        return bb

    plugin = types.SimpleNamespace(register_models=hookimpl(lambda register: register(liar, load)))
    register_plugin(plugin, name="test-liar")
    try:
        r = check_model("liar-vit", n_images=2)
    finally:
        unregister_plugin("test-liar")
    failed = {c["check"]: c["detail"] for c in r["checks"] if not c["ok"]}
    assert not r["ok"]
    assert "(2, 384) vs (N, 768)" in failed["embed shape == (N, ModelInfo.embed_dim)"]
    assert "vs grid 28x28" in failed["patch_tokens -> (N, D, h, w)"]
    assert "metadata: license declared" in failed
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    r = check_model("dinov2-s")
    assert not r["ok"] and "DERMBENCH_WEIGHTS_DINOV2_S" in r["checks"][-1]["detail"]
    assert "FAIL] load" in format_report(r)


def test_model_plugins_import_without_heavy_libraries():
    """Registration must stay instant: importing the model plugins and building the registry pulls in
    none of torch / timm / open_clip / transformers."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, DERMBENCH_LOAD_PLUGINS="models-timm,models-panderm,models-openclip,models-hf")
    code = (
        "import sys\n"
        "import dermbench_plugins.models.timm_models, dermbench_plugins.models.panderm\n"
        "import dermbench_plugins.models.openclip_models, dermbench_plugins.models.hf_models\n"
        "from dermbench.plugins import registry\n"
        "assert {'dinov2-b', 'panderm-l', 'clip-b16', 'medsiglip'} <= set(registry().models)\n"
        "print(sorted(m for m in ('torch', 'timm', 'open_clip', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, env=env)
    assert out.stdout.strip() == "[]"

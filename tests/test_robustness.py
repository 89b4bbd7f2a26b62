"""The ``robustness`` task on real PH2 images: corruptions are deterministic, cached like clean features, and the
report's drops, consistency and curve are the numbers the predictions give."""

from __future__ import annotations

import numpy as np
import pytest

from dermbench import plugins, runner
from dermbench.api import DermbenchError
from dermbench.results import read_record

from conftest import SHARED_DATA
from test_transfer import tiny  # noqa: F401  (the shared tiny-backbone fixture)


def _opts(tmp_path, **params):
    base = {"corruptions": "blur,hair,vignette", "severities": [1, 5]}
    return runner.RunOptions(out=tmp_path / "res", cache_dir=tmp_path / "cache", data_root=SHARED_DATA, n_boot=200,
                             task_params={"robustness": {**base, **params}})


def test_robustness_on_ph2(tmp_path, tiny):
    s = runner.run(["tiny-conv"], ["robustness"], ["ph2"], _opts(tmp_path), quiet=True)
    assert s.ok, s.failed
    rec = read_record(s.done[0][1])
    n_test = rec.split["n"]
    # train + clean test + 3 corruptions x 2 severities of the test split, each through the backbone once
    assert tiny.images == 45 + 6 * n_test
    r = rec.extra["robustness"]
    assert r["corruptions"] == ["blur", "hair", "vignette"] and r["severities"] == [1, 5]
    clean = r["clean"]["auroc_macro"]["value"]
    assert rec.metrics["auroc_macro"]["value"] == pytest.approx(clean)
    rels = []
    for c in r["corruptions"]:
        for sev in ("1", "5"):
            cell = r["grid"][c][sev]
            v = cell["auroc_macro"]["value"]
            assert cell["drop"]["diff"] == pytest.approx(clean - v, abs=1e-9)
            assert cell["relative_drop"] == pytest.approx((clean - v) / clean)
            assert 0 <= cell["consistency"]["value"] <= 1
            rels.append(cell["relative_drop"])
        assert r["grid"][c]["mean_relative_drop"] == pytest.approx(np.mean([r["grid"][c][k]["relative_drop"]
                                                                             for k in ("1", "5")]))
    assert r["mean_relative_drop"] == pytest.approx(np.mean(rels))
    # per-sample robustness arrays: the record scores them with CIs like any metric
    cons = np.asarray(rec.predictions["consistency"])
    assert cons.shape == (n_test,) and ((cons * 6) % 1 == 0).all()
    assert rec.metrics["mean:consistency"]["value"] == pytest.approx(cons.mean())
    mean_cells = np.mean([r["grid"][c][k]["consistency"]["value"] for c in r["corruptions"] for k in ("1", "5")])
    assert cons.mean() == pytest.approx(mean_cells)
    assert 0 <= rec.metrics["mean:corrupted_accuracy"]["value"] <= 1
    assert any(a.endswith("robustness_curve.png") for a in rec.artifacts)

    # corrupted features are cached like clean ones: another head recomputes nothing
    tiny.images = 0
    s2 = runner.run(["tiny-conv"], ["robustness"], ["ph2"], _opts(tmp_path, head="knn"), quiet=True)
    assert s2.ok and tiny.images == 0


def test_corruptions_deterministic_and_fingerprinted():
    from dermbench_plugins.tasks.robustness import corrupted_dataset
    from dermbench_plugins.tasks.robustness.corruptions import CORRUPTIONS, apply

    ds = runner.Runner(runner.RunOptions(data_root=SHARED_DATA), quiet=True).dataset("ph2")
    s = ds.samples[0]
    im = s.load_image()
    for c in CORRUPTIONS:
        a = np.asarray(apply(im, c, 3, 0, s.id))
        assert a.shape == np.asarray(im).shape, c
        assert np.array_equal(a, np.asarray(apply(im, c, 3, 0, s.id))), c  # same seed: same pixels
        assert not np.array_equal(a, np.asarray(im)), c
    assert not np.array_equal(np.asarray(apply(im, "hair", 3, 0, s.id)), np.asarray(apply(im, "hair", 3, 1, s.id)))
    v = np.asarray(apply(im, "vignette", 5, 0, s.id))
    assert v[0, 0].max() == 0 and v[v.shape[0] // 2, v.shape[1] // 2].max() > 0  # dark border, lit centre
    g = np.asarray(im.convert("L"), float)
    b = np.asarray(apply(im, "blur", 5, 0, s.id).convert("L"), float)
    assert np.abs(np.diff(b, axis=1)).mean() < 0.5 * np.abs(np.diff(g, axis=1)).mean()
    h = {corrupted_dataset(ds, c, sev, seed, None).split("test").hash
         for c, sev, seed in [("blur", 1, 0), ("blur", 3, 0), ("blur", 1, 1), ("hair", 1, 0)]}
    assert len(h | {ds.split("test").hash}) == 5


def test_bad_options():
    cls = plugins.registry().task("robustness").obj
    with pytest.raises(DermbenchError, match=r"unknown corruption\(s\) \['fog'\]; valid: blur, jpeg, illumination"):
        cls(corruptions="blur,fog")
    with pytest.raises(DermbenchError, match="severities between 1 and 5"):
        cls(severities=[0, 3])
    with pytest.raises(DermbenchError, match="robustness.head='svm'"):
        cls(head="svm")
    assert cls(corruptions="all").corruptions[-1] == "vignette" and cls(severities="2,4").severities == [2, 4]

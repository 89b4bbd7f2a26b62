"""The ``transfer`` task end to end on the real HAM10000, PH2 and PAD-UFES-20 subsets in ../shared/data.

The backbone is a tiny random-init conv net at 64 px (real torch forward passes, counted) so the test stays
fast on two cores; `dermbench run --model random-vit` gives the same kind of numbers (see README).
"""

from __future__ import annotations

import numpy as np
import pytest

from dermbench import hookimpl, plugins, runner
from dermbench.api import DermbenchError, ModelInfo, Preprocess
from dermbench.results import read_record

from conftest import SHARED_DATA


class TinyConv:
    """Random-init 2-layer conv net (seeded): real features, cheap enough for a unit test."""

    images = 0

    def __init__(self, device="cpu", **_):
        import torch

        g = torch.Generator().manual_seed(0)
        self.w1 = torch.randn(16, 3, 5, 5, generator=g) * 0.2
        self.w2 = torch.randn(32, 16, 3, 3, generator=g) * 0.2
        self.info = INFO
        self.weights_id = "random:0"
        self.transform = INFO.preprocess.build()

    def embed(self, x):
        import torch.nn.functional as F

        TinyConv.images += len(x)
        h = F.relu(F.conv2d(x, self.w1, stride=2))
        h = F.relu(F.conv2d(h, self.w2, stride=2))
        return torch_cat_pool(h)

    def patch_tokens(self, x, layers):
        raise NotImplementedError

    def to(self, device):
        return self


def torch_cat_pool(h):
    import torch

    return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)


INFO = ModelInfo(name="tiny-conv", family="test", source="custom", embed_dim=64, preprocess=Preprocess(crop=64),
                 random_init=True)


class TinyPlugin:
    @hookimpl
    def register_models(self, register):
        register(INFO, TinyConv)


@pytest.fixture
def tiny():
    plugins.registry()
    plugins.register_plugin(TinyPlugin(), name="tiny-conv")
    TinyConv.images = 0
    yield TinyConv
    plugins.unregister_plugin("tiny-conv")


def _opts(tmp_path, **params):
    return runner.RunOptions(out=tmp_path / "res", cache_dir=tmp_path / "cache", data_root=SHARED_DATA, n_boot=200,
                             task_params={"transfer": {"source": "ham10000", **params}})


def test_ham10000_to_ph2_and_pad_ufes(tmp_path, tiny):
    s = runner.run(["tiny-conv"], ["transfer"], ["ph2", "pad-ufes-20"], _opts(tmp_path), quiet=True)
    assert s.ok, s.failed
    recs = {c.dataset: read_record(p) for c, p in s.done}
    # every split of every dataset went through the backbone exactly once (HAM10000 features shared by both cells)
    sizes = {"ham10000": 75, "ph2": 45, "pad-ufes-20": 46}
    assert tiny.images == sum(sizes.values())

    ph2 = recs["ph2"]
    assert ph2.extra["shared_classes"] == ["melanoma", "nevus"]
    assert ph2.extra["dropped_classes"]["source"] == ["ak", "bcc", "df", "sk", "vascular"]
    assert ph2.split["n"] == ph2.extra["n"]["target_test"] == len(ph2.predictions["ids"]) > 10
    for head in ("probe", "knn"):
        e = ph2.extra["transfer"][head]
        t, d = e["transferred"]["auroc_macro"], e["in_domain"]["auroc_macro"]
        drop = e["drop"]["auroc_macro"]
        assert drop["diff"] == pytest.approx(d["value"] - t["value"], abs=1e-9)
        assert drop["ci_low"] <= drop["diff"] <= drop["ci_high"] and 0 <= drop["p_value"] <= 1
        assert 0 <= e["source_in_domain"]["auroc_macro"]["value"] <= 1
        assert e["threshold"] is not None
    # the record's predictions are the probe's, transferred: the record's AUROC equals extra's (same resamples)
    assert ph2.metrics["auroc_macro"]["value"] == pytest.approx(ph2.extra["transfer"]["probe"]["transferred"]["auroc_macro"]["value"])
    assert ph2.metrics["auroc_macro"]["ci_low"] == pytest.approx(
        ph2.extra["transfer"]["probe"]["transferred"]["auroc_macro"]["ci_low"])
    # operating points on melanoma (malignant) vs nevus: op_y is 1 exactly for melanoma
    y, opy = np.asarray(ph2.predictions["y_true"]), np.asarray(ph2.predictions["op_y"])
    assert ((y == 0) == (opy == 1)).all()
    for m in ("sens@spec95", "spec@sens95", "auprc", "sens@thr", "spec@thr"):
        v = ph2.metrics[m]
        assert v["value"] is not None and 0 <= v["value"] <= 1 and v["ci_low"] <= v["value"] <= v["ci_high"], (m, v)
    assert any(a.endswith("decision_curve.png") for a in ph2.artifacts)

    pad = recs["pad-ufes-20"]
    # PAD-UFES-20's SCC has no HAM10000 counterpart; ACK is 'ak' in both (HAM's akiec)
    assert pad.extra["shared_classes"] == ["melanoma", "nevus", "bcc", "ak", "sk"]
    assert pad.extra["dropped_classes"]["target"] == ["scc"]
    # malignant axis on the target's mapping: melanoma, bcc malignant; nevus, sk benign; ak (PAD: uncertain) ignored
    y, opy = np.asarray(pad.predictions["y_true"]), np.asarray(pad.predictions["op_y"])
    assert set(opy[np.isin(y, [0, 2])]) == {1} and set(opy[np.isin(y, [1, 4])]) == {0} and set(opy[y == 3]) <= {-1}

    # a second target reuses everything: rerun with a new head, no forward pass at all
    tiny.images = 0
    s2 = runner.run(["tiny-conv"], ["transfer"], ["ph2"], _opts(tmp_path, head="knn"), quiet=True)
    assert s2.ok and tiny.images == 0
    rec = read_record(s2.done[0][1])
    assert rec.metrics["auroc_macro"]["value"] == pytest.approx(
        rec.extra["transfer"]["knn"]["transferred"]["auroc_macro"]["value"])


def test_malignant_axis_transfer(tmp_path, tiny):
    s = runner.run(["tiny-conv"], ["transfer"], ["pad-ufes-20"], _opts(tmp_path, labels="malignant"), quiet=True)
    assert s.ok, s.failed
    rec = read_record(s.done[0][1])
    assert rec.extra["shared_classes"] == ["benign", "malignant"]
    # PAD's ACK (uncertain) is dropped from the target, HAM's akiec counts as malignant in the source
    assert rec.split["n"] == sum(1 for _ in rec.predictions["ids"]) and rec.metrics["sens@spec95"]["value"] is not None


def test_transfer_errors(tmp_path, tiny):
    with pytest.raises(DermbenchError, match=r"transfer.source=<dataset>"):
        plugins.registry().task("transfer").obj()
    with pytest.raises(DermbenchError, match="transfer.labels='diagnosis' is not one of vocab"):
        plugins.registry().task("transfer").obj(source="ham10000", labels="diagnosis")
    s = runner.run(["tiny-conv"], ["transfer"], ["ph2"], _opts(tmp_path, min_train_per_class=1000), quiet=True)
    assert not s.ok
    msg = s.failed[0][1]
    assert "share fewer than two classes" in msg and "'ham10000'" in msg and "'ph2'" in msg and "labels=malignant" in msg
    s = runner.run(["tiny-conv"], ["transfer"], ["ham10000"], _opts(tmp_path), quiet=True)
    assert not s.ok and "transfer needs two datasets" in s.failed[0][1]


def test_transfer_to_a_view(tmp_path, tiny):
    s = runner.run(["tiny-conv"], ["transfer"], ["ph2:mel-vs-nev"], _opts(tmp_path), quiet=True)
    assert s.ok, s.failed
    rec = read_record(s.done[0][1])
    assert rec.dataset == "ph2:mel-vs-nev" and rec.extra["shared_classes"] == ["melanoma", "nevus"]
    assert rec.metrics["sens@spec95"]["value"] is not None

"""Weights resolution order, hashing with its memo, safe reading, state-dict helpers."""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest
import torch

from models_util import fake_hub_file

from dermbench.api import DermbenchError, ModelInfo, Preprocess, WeightsUnavailable
from dermbench.weights import (
    HubSource, dinov2_backbone_state_dict, dir_hash, extract_state_dict, file_sha256, load_into, read_checkpoint,
    resolve_weights, select_prefix, strip_prefixes, unchunk_blocks,
)

INFO = ModelInfo(name="toy-net", family="toy", source="timm", embed_dim=4, preprocess=Preprocess(),
                 weights_env="DERMBENCH_WEIGHTS_TOY_NET")
HUB = HubSource("org/toy-net", files=("model.safetensors", "pytorch_model.bin"))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "dbcache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("DERMBENCH_WEIGHTS_TOY_NET", raising=False)


def _file(path, content=b"weights"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_resolution_order_explicit_env_hub(tmp_path, monkeypatch):
    explicit = _file(tmp_path / "a.pth", b"explicit")
    env = _file(tmp_path / "b.pth", b"env")
    hub = _file(fake_hub_file(tmp_path / "hub", "org/toy-net", "pytorch_model.bin", revision="c" * 40), b"hub")
    monkeypatch.setenv("DERMBENCH_WEIGHTS_TOY_NET", str(env))
    r = resolve_weights(INFO, explicit, hub=HUB)
    assert (r.path, r.origin, r.weights_id) == (explicit, "explicit", "sha256:" + hashlib.sha256(b"explicit").hexdigest())
    r = resolve_weights(INFO, None, hub=HUB)
    assert (r.path, r.origin) == (env, "env")
    monkeypatch.delenv("DERMBENCH_WEIGHTS_TOY_NET")
    r = resolve_weights(INFO, None, hub=HUB)  # the second alternative file name is found in the cache
    assert (r.path, r.origin, r.weights_id) == (hub, "hub-cache", "hub:org/toy-net@" + "c" * 40)


def test_offline_miss_never_touches_the_network(monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(a))
    with pytest.raises(WeightsUnavailable) as e:
        resolve_weights(INFO, None, hub=HUB, how_to_get="")
    assert calls == []
    msg = str(e.value)
    assert msg.count("\n") == 0
    for part in ("'toy-net'", "'org/toy-net'", "HF_HUB_OFFLINE", "`hf download org/toy-net model.safetensors`",
                 "https://huggingface.co/org/toy-net", "DERMBENCH_WEIGHTS_TOY_NET"):
        assert part in msg


def _endpoint(monkeypatch, listening: bool):
    """Point the hub endpoint at a loopback port that accepts (or refuses) TCP connections."""
    import socket

    from dermbench import weights

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    if listening:
        srv.listen(4)
    else:
        srv.close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(weights, "_REACHABLE", None)
    return srv


def test_unreachable_hub_is_detected_quickly_and_named(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    _endpoint(monkeypatch, listening=False)
    tried = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: tried.append(a))
    with pytest.raises(WeightsUnavailable, match="hub is unreachable from here"):
        resolve_weights(INFO, None, hub=HUB)
    assert tried == []  # no client retry loop against a dead endpoint


def test_online_download_is_tried_once_per_candidate(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    srv = _endpoint(monkeypatch, listening=True)
    tried = []

    def fake(repo, filename, cache_dir=None):
        tried.append(filename)
        if filename == "pytorch_model.bin":
            return str(_file(fake_hub_file(tmp_path / "dl", repo, filename, revision="d" * 40)))
        raise OSError("404")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    r = resolve_weights(INFO, None, hub=HUB)
    srv.close()
    assert tried == ["model.safetensors", "pytorch_model.bin"] and r.origin == "hub-download"
    assert r.weights_id == "hub:org/toy-net@" + "d" * 40


def test_missing_explicit_path_and_gated_hint(tmp_path):
    with pytest.raises(WeightsUnavailable, match=r"given by --weights do not exist: .*nope\.pth"):
        resolve_weights(INFO, tmp_path / "nope.pth", hub=HUB)
    with pytest.raises(WeightsUnavailable, match="gated: accept the licence"):
        resolve_weights(INFO, None, hub=HubSource("org/gated", gated=True))
    with pytest.raises(WeightsUnavailable, match="download it from the drive"):
        resolve_weights(INFO, None, hub=None, how_to_get="download it from the drive")


def test_hash_memo_is_keyed_by_path_size_mtime(tmp_path):
    f = _file(tmp_path / "w.bin", b"abc")
    assert file_sha256(f) == hashlib.sha256(b"abc").hexdigest()
    store = tmp_path / "dbcache" / "weights_hashes.json"
    memo = json.loads(store.read_text())
    assert len(memo) == 1
    key = next(iter(memo))
    memo[key] = "memoised"  # prove the memo is read instead of re-hashing
    store.write_text(json.dumps(memo))
    assert file_sha256(f) == "memoised"
    f.write_bytes(b"abcd")  # new size -> new key -> real hash again, old entry replaced
    assert file_sha256(f) == hashlib.sha256(b"abcd").hexdigest()
    assert len(json.loads(store.read_text())) == 1


def test_dir_hash_covers_weights_and_config(tmp_path):
    d = tmp_path / "model"
    _file(d / "config.json", b'{"a": 1}')
    _file(d / "model.safetensors", b"w")
    h1 = dir_hash(d)
    _file(d / "config.json", b'{"a": 2}')
    assert dir_hash(d) != h1 and h1.startswith("sha256:")
    with pytest.raises(DermbenchError, match="holds no weights file"):
        dir_hash(_file(tmp_path / "empty" / "x.json").parent)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_safe_reading(tmp_path):
    ok = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1), "epoch": 3}, ok)
    obj = read_checkpoint(ok)
    assert obj["args"].lr == 0.1 and extract_state_dict(obj) == {"w": obj["model"]["w"]}
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.ones(1), "x": Evil()}, bad)
    with pytest.raises(DermbenchError, match=r"cannot be loaded safely.*safetensors"):
        read_checkpoint(bad)
    junk = _file(tmp_path / "junk.safetensors", b"not a safetensors file")
    with pytest.raises(DermbenchError, match="cannot read safetensors file"):
        read_checkpoint(junk)


def test_state_dict_helpers():
    t = torch.zeros(1)
    sd = {"module.backbone.blocks.0.1.norm1.weight": t, "module.backbone.blocks.1.3.mlp.fc1.weight": t,
          "module.backbone.cls_token": t, "module.dino_head.last_layer.weight": t}
    assert strip_prefixes(sd, ("module.",)).keys() >= {"backbone.cls_token"}
    assert set(select_prefix(strip_prefixes(sd, ("module.",)), "backbone.")) == {
        "blocks.0.1.norm1.weight", "blocks.1.3.mlp.fc1.weight", "cls_token"}
    assert set(unchunk_blocks({"blocks.0.1.norm1.weight": t, "blocks.1.3.attn.qkv.bias": t})) == {
        "blocks.1.norm1.weight", "blocks.3.attn.qkv.bias"}
    assert set(dinov2_backbone_state_dict({"teacher": sd, "iteration": 5})) == {
        "blocks.1.norm1.weight", "blocks.3.mlp.fc1.weight", "cls_token"}
    with pytest.raises(DermbenchError, match="has no tensors"):
        extract_state_dict({"epoch": 3})


def test_load_into_lists_keys():
    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    sd = dict(m.state_dict())
    sd.pop("1.bias")
    sd["2.weight"] = torch.zeros(1)
    sd["0.weight"] = torch.zeros(4, 2)
    with pytest.raises(DermbenchError) as e:
        load_into(m, sd, "toy.pth")
    msg = str(e.value)
    assert "missing keys (1): 1.bias" in msg and "unexpected keys (1): 2.weight" in msg
    assert "0.weight: checkpoint (4, 2) vs model (3, 2)" in msg and "toy.pth" in msg
    ok = dict(m.state_dict())
    ok["extra.thing"] = torch.zeros(1)
    load_into(m, ok, "toy.pth", ignore_unexpected=[r"^extra\."])  # declared-ignorable keys pass


def test_refused_pickle_never_advises_unpickling_and_text_weights_are_named(tmp_path):
    """15.8: the refusal must not suggest weights_only=False (that would run the payload); a text file given
    as weights names the file instead of failing with KeyError: 101."""
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.ones(1), "x": Evil()}, bad)
    with pytest.raises(DermbenchError) as e:
        read_checkpoint(bad)
    assert "weights_only=False" not in str(e.value) and "state dict" in str(e.value)
    txt = _file(tmp_path / "notes.pth", b"these are my notes, not weights\n")
    with pytest.raises(DermbenchError, match=r"notes\.pth is not a checkpoint \(it is a text file"):
        read_checkpoint(txt)
    empty = _file(tmp_path / "empty.pt", b"")
    with pytest.raises(DermbenchError, match="it is empty"):
        read_checkpoint(empty)

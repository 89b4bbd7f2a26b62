"""Captioning (issue 9): offline metrics equal pycocoevalcap's own computation; tiny-LM and LoRA paths end to end.

The METEOR JVM is started once per process and shared (its start-up dominates the run time on 2 cores).
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from dermbench import runner
from dermbench.api import DermbenchError
from dermbench.results import read_record
from dermbench_plugins.tasks.captioning import lm as L
from dermbench_plugins.tasks.captioning import metrics as M

os.environ["HF_HUB_OFFLINE"] = "1"

REFS = [
    "A pink, dome-shaped nodule on the back.",
    ["Brown irregular macule on the arm", "An irregular brown macule on the left arm."],
    "A scaly red plaque on the scalp of an older man; likely psoriasis.",
    "Blue-gray papule with arborizing vessels.",
    "Uniformly brown lesion, about 6.2 mm, neck.",
    "Vascular lesion on the chest: round, red and purple.",
]
HYPS = [
    "pink nodule on the back",
    "a brown macule on the left arm",
    "red plaque on the scalp, psoriasis",
    "",  # an empty generation scores 0 and must not break alignment
    "uniformly brown lesion about 6 mm on the neck",
    "red and purple vascular lesion on the chest",
]
SYNTH = {"n": 24, "size": 64}


def _reference_scores():
    """pycocoevalcap's documented pipeline (tokenize gts and res, then each scorer) + rouge-score, called directly."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from rouge_score import rouge_scorer

    refs = [[r] if isinstance(r, str) else r for r in REFS]
    gts = PTBTokenizer().tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(refs)})
    res = PTBTokenizer().tokenize({i: [{"caption": h}] for i, h in enumerate(HYPS)})
    out = {"gts": gts, "res": res}
    (b_corpus, b_sent) = Bleu(4).compute_score(gts, res, verbose=0)
    out["bleu"] = (b_corpus, b_sent)
    # the METEOR jar is pycocoevalcap's; we reuse the already started process to avoid a second ~10-40 s JVM start
    out["meteor"] = M._meteor().compute_score(gts, res)
    out["rougeL"] = Rouge().compute_score(gts, res)
    out["cider"] = Cider().compute_score(gts, res)
    rs = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=True)
    s = [rs.score_multi(r, h) for r, h in zip(refs, HYPS)]
    out["rouge1"] = [x["rouge1"].fmeasure for x in s]
    out["rouge2"] = [x["rouge2"].fmeasure for x in s]
    return out


def _resampled(d, positions):
    return [d[int(i)] for i in positions]


def test_metrics_equal_pycocoevalcap_reference():
    from pycocoevalcap.bleu.bleu import Bleu

    got = M.score_caption_sets(REFS, {"a": HYPS, "b": list(reversed(HYPS))}, ids=[f"x{i}" for i in range(6)])
    a = got["a"]
    ref = _reference_scores()
    b_corpus, b_sent = ref["bleu"]
    for j, key in ((0, "bleu1"), (1, "bleu2"), (3, "bleu4")):
        np.testing.assert_allclose(a.per_caption[key], b_sent[j], rtol=0, atol=1e-12)
        assert a.corpus[key] == pytest.approx(b_corpus[j], abs=1e-12)
    np.testing.assert_allclose(a.per_caption["meteor"], ref["meteor"][1], atol=1e-12)
    assert a.corpus["meteor"] == pytest.approx(ref["meteor"][0], abs=1e-12)
    np.testing.assert_allclose(a.per_caption["rougeL"], ref["rougeL"][1], atol=1e-12)
    np.testing.assert_allclose(a.per_caption["cider"], ref["cider"][1], atol=1e-12)
    assert a.corpus["cider"] == pytest.approx(ref["cider"][0], abs=1e-12)
    np.testing.assert_allclose(a.per_caption["rouge1"], ref["rouge1"], atol=1e-12)
    np.testing.assert_allclose(a.per_caption["rouge2"], ref["rouge2"], atol=1e-12)
    # values that could be wrong: the empty hypothesis scores 0, a near-copy scores high, corpus != mean for BLEU
    assert all(a.per_caption[k][3] == 0 for k in a.per_caption)
    assert a.per_caption["rouge1"][4] > 0.7 and a.per_caption["cider"][4] > 1.0
    assert a.corpus["bleu4"] != pytest.approx(float(a.per_caption["bleu4"].mean()), rel=1e-3)
    # corpus BLEU-n from per-caption sufficient statistics equals pycocoevalcap's corpus BLEU-n
    for n in (1, 2, 3, 4):
        assert float(M.corpus_bleu_from_stats(a.bleu_stats.sum(0), n)) == pytest.approx(b_corpus[n - 1], abs=1e-12)
    # scoring a second set in the same call gives that set's own scores (positional, not shared state)
    alone = M.score_captions(REFS, list(reversed(HYPS)))
    for k in M.PER_CAPTION_KEYS:
        np.testing.assert_allclose(got["b"].per_caption[k], alone.per_caption[k], atol=1e-12)
    assert got["b"].per_caption["cider"][2] != a.per_caption["cider"][2]
    # ... and as a statistics-engine metric: point = pycocoevalcap, replicates = corpus BLEU of resampled captions
    from dermbench import stats

    pred = {"ids": [f"x{i}" for i in range(6)], "bleu_stats": a.bleu_stats}
    res = stats.score(pred, ["corpus_bleu4", "corpus_bleu1"], split_hash="abc", seed=0, n_boot=300)
    assert res["corpus_bleu4"]["value"] == pytest.approx(b_corpus[3], abs=1e-12)
    assert res["corpus_bleu1"]["value"] == pytest.approx(b_corpus[0], abs=1e-12)
    idx = stats.bootstrap_indices("abc", 0, 6, 300)
    reps = stats.replicates(pred, "corpus_bleu4", idx)
    b = 7  # one replicate recomputed by pycocoevalcap itself on the resampled captions
    g7 = {j: gts_j for j, gts_j in enumerate(_resampled(ref["gts"], idx[b]))}
    r7 = {j: res_j for j, res_j in enumerate(_resampled(ref["res"], idx[b]))}
    assert reps[b] == pytest.approx(Bleu(4).compute_score(g7, r7, verbose=0)[0][3], abs=1e-12)
    lo, hi = res["corpus_bleu4"]["ci_low"], res["corpus_bleu4"]["ci_high"]
    assert lo <= res["corpus_bleu4"]["value"] <= hi and lo < hi


def test_bad_captions_name_the_sample():
    with pytest.raises(DermbenchError, match=r"empty.*s2"):
        M.check_captions(["s1", "s2"], ["a lesion", "   "], "refs")
    with pytest.raises(DermbenchError, match=r"not text.*s1 \(float"):
        M.check_captions(["s1", "s2"], [float("nan"), "ok"], "refs")
    with pytest.raises(DermbenchError, match=r"not text.*s9 \(NoneType"):
        M.score_captions(["ok", None], ["a", "b"], ids=["s8", "s9"], meteor=False)


def test_word_tokenizer_pool_tokens_and_detokenize():
    tok = L.word_tokenizer(["A 6.2 mm, well-defined lesion.", "Pink nodule on the back."])
    ids = tok("a pink lesion on the arm", add_special_tokens=False)["input_ids"]
    assert ids.count(tok.unk_token_id) == 1  # 'arm' was never seen
    assert tok.pad_token == "[PAD]" and tok.eos_token_id != tok.pad_token_id
    text = tok.decode(tok("A 6.2 mm, well-defined lesion.", add_special_tokens=False)["input_ids"])
    assert L.detokenize(text) == "a 6.2 mm, well-defined lesion."
    maps = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    tok8 = L.pool_tokens(maps, 8)  # 2 x 4 grid: each token averages a 2 x 1 block
    assert tok8.shape == (2, 8, 3)
    np.testing.assert_allclose(tok8[1, 5, 2], maps[1, 2, 2:4, 1].mean())
    np.testing.assert_allclose(L.pool_tokens(maps, 1)[:, 0, :], maps.mean(axis=(2, 3)))


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    """One feature cache for the module: random-vit features of dermsynth are extracted once, not per test."""
    return tmp_path_factory.mktemp("caption-features")


def _opts(tmp_path, cache, **task):
    return runner.RunOptions(out=tmp_path / "r", cache_dir=cache, dataset_opts=SYNTH, n_boot=200,
                             task_params={"captioning": task})


@pytest.mark.slow
def test_tiny_lm_end_to_end_on_dermsynth(tmp_path, feature_cache):
    opts = _opts(tmp_path, feature_cache, epochs=40, batch_size=12)
    s = runner.run(["random-vit"], ["captioning"], ["dermsynth"], opts, quiet=True)
    assert s.ok, s.failed
    rec = read_record(s.done[0][1])
    n = rec.split["n"]
    pred = rec.predictions
    assert len(pred["generated"]) == len(pred["reference"]) == len(pred["retrieved"]) == n == 12
    for key in M.PER_CAPTION_KEYS:
        m = rec.metrics[f"mean:{key}"]
        assert m["value"] == pytest.approx(float(np.mean(pred[key])), abs=1e-12)
        assert m["ci_low"] <= m["value"] <= m["ci_high"]
    e = rec.extra
    loss = e["train"]["loss_per_epoch"]
    assert len(loss) == 40 and loss[-1] < 0.5 * loss[0]  # it really learns the training captions
    # the LM learned the caption language: generations are non-empty and use dermsynth's words
    assert all(g.strip() for g in pred["generated"]) and np.mean(pred["rouge1"]) > 0.2
    base = e["retrieval_baseline"]
    assert set(base["paired_generated_minus_retrieved"]) == set(rec.metrics)
    for name, r in base["paired_generated_minus_retrieved"].items():
        assert r["value_a"] == pytest.approx(rec.metrics[name]["value"], abs=1e-12)
        key = name.split(":")[-1] if name.startswith("mean:") else None
        if key:
            assert r["value_b"] == pytest.approx(base["mean"][key], abs=1e-12)
    assert base["paired_generated_minus_retrieved"]["corpus_bleu4"]["value_b"] == pytest.approx(
        base["corpus"]["bleu4"], abs=1e-12)
    assert e["corpus"]["cider"] == pytest.approx(rec.metrics["mean:cider"]["value"], abs=1e-9)
    assert rec.metrics["corpus_bleu4"]["value"] == pytest.approx(e["corpus"]["bleu4"], abs=1e-12)
    assert e["lm_kind"] == "tiny" and e["resolved"]["lora"] is None
    rows = list(csv.DictReader(open(rec.artifacts[0], encoding="utf-8")))
    assert [r["id"] for r in rows] == pred["ids"] and rows[0]["generated"] == pred["generated"][0]
    json.dumps(rec.extra)  # JSON-able


@pytest.mark.slow
def test_hf_lm_with_lora_pad_and_visual_tokens(tmp_path, feature_cache):
    """Any HF causal LM from a local folder: LoRA on q/v, pad=eos when missing, 8 visual tokens from patch maps."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from dermbench_plugins.datasets.dermsynth import generator as synth

    caps = [synth.plan(synth.SynthConfig(), i).caption for i in range(24)]
    base = L.word_tokenizer(caps)
    tok = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, bos_token="[BOS]", eos_token="[EOS]",
                                  unk_token="[UNK]")
    assert tok.pad_token is None
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    lm_dir = tmp_path / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)

    opts = _opts(tmp_path, feature_cache, lm=str(lm_dir), epochs=1, visual_tokens=8, meteor=False, max_len=12,
                 num_beams=2)
    s = runner.run(["random-vit"], ["captioning"], ["dermsynth"], opts, quiet=True)
    assert s.ok, s.failed
    rec = read_record(s.done[0][1])
    e = rec.extra
    assert e["lm_kind"] == "hf" and e["resolved"]["lora"] == {"r": 8, "alpha": 16, "dropout": 0.05,
                                                              "targets": ["q_proj", "v_proj"]}
    assert e["resolved"]["lr_proj"] == 4e-4 and e["resolved"]["lr_lm"] == 8e-5
    assert any("no pad token" in note and "eos" in note for note in e["notes"])
    assert e["visual_tokens"] == 8 and "layer -1" in e["visual"] and e["resolved"]["num_beams"] == 2
    # beam search stops at max_len + 1 new tokens: a generation never has more words than that
    assert all(len(g.split()) <= 13 for g in rec.predictions["generated"])
    # LoRA: projection + adapters train, the base LM stays frozen
    n_lora = 2 * 8 * (32 + 32)  # q_proj and v_proj (32x32 each): A (8x32) + B (32x8)
    n_proj = 384 * 32 + 32
    assert e["params"]["trainable"] == n_lora + n_proj
    assert "mean:meteor" not in rec.metrics and "mean:cider" in rec.metrics
    with pytest.raises(DermbenchError, match=r"c_attn.*not found.*q_proj"):
        L.load_hf_lm(str(lm_dir), device="cpu", lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_targets=["c_attn"])


def test_unloadable_lm_fails_its_cell_only(tmp_path, feature_cache):
    s = runner.run(["random-vit"], ["captioning", "retrieval"], ["dermsynth"],
                   _opts(tmp_path, feature_cache, lm="no-such-org/no-such-model", meteor=False), quiet=True)
    assert [c.task for c, _ in s.done] == ["retrieval"]
    (cell, msg), = s.failed
    assert cell.task == "captioning"
    assert "no-such-org/no-such-model" in msg and "HF_HUB_OFFLINE" in msg and "lm=tiny" in msg


def test_bad_options_are_refused():
    from dermbench_plugins.tasks.captioning import Captioning

    with pytest.raises(DermbenchError, match="num_beams >= 1"):
        Captioning(num_beams=0)
    with pytest.raises(DermbenchError, match="non-numeric"):
        Captioning(epochs="many")
    with pytest.raises(DermbenchError, match=r"no option.*visual_tokens"):
        runner.task_params(Captioning.info, {"beams": 3})


def test_empty_and_non_text_captions_fail_naming_the_sample(tmp_path, feature_cache):
    """dermsynth with one caption blanked and one replaced by a number: the cell fails naming both ids."""
    from dermbench import hookimpl, plugins
    from dermbench.api import DatasetInfo
    from dermbench_plugins.datasets import dermsynth

    def load(root, **opts):
        ds = dermsynth.load_diagnosis(root, **opts)
        ds.samples[ds.splits["train"][1]].caption = "   "
        ds.samples[ds.splits["test"][2]].caption = 42  # e.g. a numeric cell read from a CSV
        return ds

    class BadCaptions:
        @hookimpl
        def register_datasets(self, register):
            register(DatasetInfo(name="dermsynth-badcap", fields=frozenset({"labels", "captions"}), needs_root=False),
                     load)

    plugins.register_plugin(BadCaptions(), name="badcap")
    try:
        s = runner.run(["random-vit"], ["captioning"], ["dermsynth-badcap"], _opts(tmp_path, feature_cache),
                       quiet=True)
        ds = load(None, **SYNTH)
    finally:
        plugins.unregister_plugin("badcap")
    (cell, msg), = s.failed
    assert "empty" in msg and ds.samples[ds.splits["train"][1]].id in msg and "training captions" in msg
    err = json.loads(next((tmp_path / "r").rglob("*.error.json")).read_text())
    assert err["error"] == msg
    with pytest.raises(DermbenchError, match=rf"not text: {ds.samples[ds.splits['test'][2]].id} \(int: 42\)"):
        from dermbench_plugins.tasks.captioning import _split_captions

        _split_captions(ds.split("test"), "reference captions")

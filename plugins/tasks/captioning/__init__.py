"""Dermatology image captioning: frozen features -> trainable projection -> causal LM (DermINO's SkinCAP protocol).

Image side: the pooled embedding from the feature store (``visual_tokens=0``, default, any model) or k visual
tokens pooled from the last-layer patch map (``visual_tokens=8`` as in DermINO; needs ``patch_tokens``).
Language side (:mod:`.lm`): ``lm=tiny`` (offline default: small GPT-2 + word tokenizer trained on the
training captions, fully trained) or any Hugging Face causal LM id / local path with LoRA (DermINO:
``lm=BioMistral/BioMistral-7B``, r=8, alpha=16 on q_proj/v_proj, projection lr 4e-4, LoRA lr 8e-5, AdamW,
2 epochs, bf16 on GPU). Decoding is greedy (``num_beams=1``) or beam search.

Scoring (:mod:`.metrics`) is offline: pycocoevalcap's PTB tokenizer, BLEU, METEOR (Java), ROUGE-L and
CIDEr, plus rouge-score's ROUGE-1/2. Hugging Face ``evaluate`` is deliberately not used: it downloads its
metric scripts from the hub at run time, so it fails offline and its numbers depend on the script version
served that day. Per-caption scores go into the predictions (``bleu1`` ... ``rouge2``) and are scored by the
runner as ``mean:<key>`` metrics with bootstrap CIs (paired across models). Corpus BLEU-4 is
the metric ``corpus_bleu4`` (``corpus_bleu1..4`` resolve through this plugin's ``register_metrics`` hook),
resampled over captions through per-caption n-gram statistics (``predictions["bleu_stats"]``). pycocoevalcap's own
corpus-level values (corpus BLEU-1..4, METEOR's aggregate, CIDEr) go to ``extra["corpus"]``. Mean sentence
BLEU (``mean:bleu4``) is not corpus BLEU-4, nor is ``mean:meteor`` METEOR's aggregate; ``mean:cider`` and
``mean:rougeL`` equal their corpus values.

Baseline: every test image gets the caption of its nearest training image (cosine on the same features), scored
the same way; ``extra["retrieval_baseline"]`` holds its scores and paired bootstrap differences
(generated - retrieved), so a reader sees whether generation beats copying.
Predictions also store ``generated``, ``reference`` and ``retrieved`` captions side by side.
"""

from __future__ import annotations

import importlib.util
import shutil
import time

from dermbench import hookimpl
from dermbench.api import DermbenchError, TaskInfo, TaskOutput

PER_CAPTION_KEYS = ("bleu1", "bleu2", "bleu4", "meteor", "rougeL", "cider", "rouge1", "rouge2")
METRICS = tuple(f"mean:{k}" for k in PER_CAPTION_KEYS) + ("corpus_bleu4",)
_NEEDS = ("transformers", "tokenizers", "pycocoevalcap", "rouge_score")
_MISSING = [m for m in _NEEDS if importlib.util.find_spec(m) is None]

#: values used when an option is left at None, by LM kind (tiny: trained from scratch; hf: LoRA as DermINO)
AUTO = {
    "tiny": {"epochs": 60, "lr_proj": 1e-3, "lr_lm": 1e-3, "batch_size": 16},
    "hf": {"epochs": 2, "lr_proj": 4e-4, "lr_lm": 8e-5, "batch_size": 8},
}

DEFAULTS = {
    "lm": "tiny",
    "visual_tokens": 0,
    "visual_layer": -1,
    "standardize": True,
    "epochs": None,
    "batch_size": None,
    "lr_proj": None,
    "lr_lm": None,
    "weight_decay": 0.01,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_targets": "q_proj,v_proj",
    "tiny_dim": 128,
    "tiny_layers": 2,
    "prompt": "",
    "pre_prompt": "",
    "visual_expand": 1,
    "max_len": 96,
    "num_beams": 1,
    "meteor": True,
    "metrics": "coco",
    "train_split": "train",
    "test_split": "test",
}
#: declarative checks applied by the runner before any work (dermbench.api.TaskInfo.option_ranges)
OPTION_RANGES = {"epochs": (1, None), "batch_size": (1, None), "max_len": (1, None), "num_beams": (1, None),
                 "lora_r": (1, None), "visual_tokens": (0, None), "metrics": frozenset({"coco", "dermino"}),
                 "visual_expand": (1, None)}

INFO = TaskInfo(
    name="captioning",
    description="frozen features -> linear projection -> causal LM (lm=tiny offline, or an HF id with LoRA); "
    "BLEU/METEOR/ROUGE/CIDEr via pycocoevalcap + rouge-score; nearest-neighbour caption baseline; "
    "metrics=coco|dermino (dermino: the DermINO authors' scoring first: nltk corpus BLEU on whitespace tokens, "
    "nltk METEOR with offline WordNet, rouge-score, CIDEr on raw strings); visual_expand=N (each visual token -> "
    "N LM tokens by one linear map, the authors' 8 from CLS); pre_prompt / prompt: text before / after the "
    "visual tokens",
    requires=frozenset({"captions"}),
    capabilities=frozenset({"cls"}),
    metrics=METRICS,
    primary_metric="mean:cider",
    defaults=DEFAULTS,
    option_ranges=OPTION_RANGES,
    # DermINO's mytrain.py / model.py: CLS -> Linear(D, 8*H) = 8 tokens between "<s>[INST] " and the instruction,
    # greedy decoding of up to 256 tokens, captions truncated at 256, AdamW wd 0.05, batch 4; its scoring
    protocols={"dermino": {"metrics": "dermino", "visual_tokens": 0, "visual_expand": 8, "pre_prompt": "<s>[INST] ",
                           "prompt": " Please descript this dermatology image: [/INST]", "max_len": 256,
                           "num_beams": 1, "weight_decay": 0.05, "batch_size": 4},
               "panderm": {}},
    available=not _MISSING,
    unavailable_reason=f"missing {', '.join(_MISSING)}: pip install 'dermbench[caption]'" if _MISSING else "",
)


def _split_captions(split, what: str) -> list[str]:
    from dermbench_plugins.tasks.captioning.metrics import check_captions

    return check_captions(split.ids, [s.caption for s in split.samples],
                          f"dataset {split.dataset.name!r} split {split.name!r} ({what})")


def nearest_captions(train_x, test_x, train_captions: list[str]) -> tuple[list[str], list[int]]:
    """Caption of the most cosine-similar training image (ties: lowest training index)."""
    import numpy as np

    def norm(a):
        a = np.asarray(a, dtype=np.float32).reshape(len(a), -1)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    sims = norm(test_x) @ norm(train_x).T
    nn = np.argmax(sims, axis=1)  # argmax returns the first maximum: deterministic ties
    return [train_captions[i] for i in nn], nn.tolist()


class Captioning:
    info = INFO

    def __init__(self, **params):
        p = {**DEFAULTS, **params}
        self.p = p
        self.lm_name = str(p["lm"]).strip()
        self.kind = "tiny" if self.lm_name == "tiny" else "hf"
        auto = AUTO[self.kind]
        try:
            self.visual_tokens = int(p["visual_tokens"])
            self.epochs = int(p["epochs"] if p["epochs"] is not None else auto["epochs"])
            self.batch_size = int(p["batch_size"] if p["batch_size"] is not None else auto["batch_size"])
            self.lr_proj = float(p["lr_proj"] if p["lr_proj"] is not None else auto["lr_proj"])
            self.lr_lm = float(p["lr_lm"] if p["lr_lm"] is not None else auto["lr_lm"])
            self.num_beams, self.max_len = int(p["num_beams"]), int(p["max_len"])
        except (TypeError, ValueError) as e:
            raise DermbenchError(f"captioning option has a non-numeric value: {e}") from e
        if self.visual_tokens < 0 or self.epochs < 0 or self.num_beams < 1 or self.max_len < 1 or self.batch_size < 1:
            raise DermbenchError(
                "captioning options out of range: need visual_tokens >= 0, epochs >= 0, num_beams >= 1, "
                f"max_len >= 1, batch_size >= 1 (got {self.visual_tokens}, {self.epochs}, {self.num_beams}, "
                f"{self.max_len}, {self.batch_size})"
            )
        if isinstance(p["lora_targets"], str):
            self.lora_targets = [t.strip() for t in p["lora_targets"].split(",") if t.strip()]
        else:
            self.lora_targets = list(p["lora_targets"])
        self.meteor = str(p["meteor"]).lower() not in ("false", "0", "no")
        self.metric_set = str(p["metrics"]).lower()
        if self.metric_set not in ("coco", "dermino"):
            raise DermbenchError(f"captioning metrics={p['metrics']!r}: choose coco (pycocoevalcap, default) or "
                                 "dermino (the DermINO authors' nltk/rouge-score/CIDEr scoring)")
        self.standardize = str(p["standardize"]).lower() not in ("false", "0", "no")

    # ---------------------------------------------------------------- features
    def _visual(self, ctx, train, test):
        """(n, k, D) arrays for train and test; k=1 for pooled embeddings."""
        import numpy as np

        if self.visual_tokens == 0:
            xtr, xte = ctx.features(train), ctx.features(test)
            return np.asarray(xtr, np.float32)[:, None, :], np.asarray(xte, np.float32)[:, None, :], "pooled embedding"
        from dermbench_plugins.tasks.captioning.lm import pool_tokens

        if "patch_tokens" not in ctx.model_info.capabilities:
            raise DermbenchError(
                f"captioning.visual_tokens={self.visual_tokens} needs patch tokens, but model "
                f"{ctx.model_info.name!r} has none; use --task-opt captioning.visual_tokens=0 (pooled embedding)"
            )
        layer = int(self.p["visual_layer"])
        mtr = ctx.patch_features(train, [layer])[0]
        mte = ctx.patch_features(test, [layer])[0]
        src = f"{self.visual_tokens} tokens pooled from layer {layer} patch map {tuple(mtr.shape[1:])}"
        return pool_tokens(mtr, self.visual_tokens), pool_tokens(mte, self.visual_tokens), src

    # ---------------------------------------------------------------- main
    def run(self, ctx) -> TaskOutput:
        import numpy as np
        import torch

        from dermbench import api
        from dermbench_plugins.tasks.captioning import lm as L
        from dermbench_plugins.tasks.captioning import metrics as M

        if shutil.which("java") is None:
            raise DermbenchError(
                "captioning metrics need a Java runtime (pycocoevalcap's PTB tokenizer and METEOR are Java): "
                "install one, e.g. `apt-get install default-jre-headless`, and make `java` available on PATH"
            )
        train, test = ctx.split(self.p["train_split"]), ctx.split(self.p["test_split"])
        cap_tr = _split_captions(train, "training captions")
        cap_te = _split_captions(test, "reference captions")
        if self.meteor:  # start the METEOR JVM now: it loads its tables (~8-40 s) while features and training run
            M.start_meteor()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        torch.manual_seed(ctx.seed)
        # the LM first: a bad LM id or tokenizer fails before any feature extraction
        lm = self._language_model(ctx, cap_tr, max(1, self.visual_tokens))
        timings["lm_load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        vtr, vte, vis_src = self._visual(ctx, train, test)
        timings["features_s"] = time.perf_counter() - t0
        if not (np.isfinite(vtr).all() and np.isfinite(vte).all()):
            raise DermbenchError(f"model {ctx.model_info.name!r} produced NaN/inf features; captioning cannot train")

        # nearest-neighbour caption copy (raw features, cosine, like the retrieval task)
        retrieved, nn_idx = nearest_captions(vtr, vte, cap_tr)

        if self.standardize:
            mu = vtr.reshape(-1, vtr.shape[-1]).mean(0)
            sd = vtr.reshape(-1, vtr.shape[-1]).std(0) + 1e-6
            vtr, vte = (vtr - mu) / sd, (vte - mu) / sd

        t0 = time.perf_counter()
        cap = L.PrefixCaptioner(lm, vtr.shape[-1], prompt=str(self.p["prompt"]), max_len=self.max_len,
                                seed=ctx.seed, device=ctx.device, expand=int(self.p["visual_expand"]),
                                pre_prompt=str(self.p["pre_prompt"]))
        lm.n_trainable, lm.n_total = L.count_params(lm.model)
        lm.n_trainable += sum(p.numel() for p in cap.proj.parameters())
        with ctx.progress(f"captioning train ({lm.name})", self.epochs) as adv:
            fit = cap.fit(vtr, cap_tr, epochs=self.epochs, batch_size=self.batch_size, lr_proj=self.lr_proj,
                          lr_lm=self.lr_lm, weight_decay=float(self.p["weight_decay"]), seed=ctx.seed, progress=adv)
        timings["train_s"] = time.perf_counter() - t0
        if fit["captions_truncated"]:
            ctx.log(f"captioning: {fit['captions_truncated']} training captions longer than max_len={self.max_len} "
                    "tokens were truncated")
        t0 = time.perf_counter()
        generated = cap.generate(vte, num_beams=self.num_beams, max_new_tokens=self.max_len + 1)
        timings["generate_s"] = time.perf_counter() - t0
        ctx.log(f"captioning: e.g. {test.ids[0]}: generated {generated[0]!r} | reference {cap_te[0]!r}")

        t0 = time.perf_counter()
        scored = M.score_caption_sets(cap_te, {"generated": generated, "retrieved": retrieved}, test.ids,
                                      meteor=self.meteor)
        gen, base = scored["generated"], scored["retrieved"]
        timings["metrics_s"] = time.perf_counter() - t0

        ids = list(test.ids)
        preds = {"ids": ids, "generated": generated, "reference": cap_te, "retrieved": retrieved,
                 "retrieved_from": [train.ids[i] for i in nn_idx],
                 **{k: v for k, v in gen.per_caption.items()}, "bleu_stats": gen.bleu_stats}
        metrics = [f"mean:{k}" for k in gen.per_caption] + ["corpus_bleu4"]
        base_preds = {"ids": ids, **base.per_caption, "bleu_stats": base.bleu_stats}
        dermino_corpus = None
        if self.metric_set == "dermino":  # the authors' scoring first (primary column), COCO metrics after it
            from dermbench_plugins.tasks.protocols import captions as DC

            t1 = time.perf_counter()
            dermino_corpus = {}
            for name, target in (("generated", preds), ("retrieved", base_preds)):
                corpus, per = DC.score(cap_te, generated if name == "generated" else retrieved, meteor=self.meteor)
                target["dermino_bleu_stats"] = per.pop("bleu_stats")
                target.update({f"dermino_{k}": v for k, v in per.items()})
                dermino_corpus[name] = corpus
            dm = ["dermino_bleu1", "dermino_bleu2", "dermino_bleu4"]
            dm += [f"mean:dermino_{k}" for k in ("meteor", "rougeL", "cider", "rouge1", "rouge2")
                   if f"dermino_{k}" in preds]
            metrics = dm + metrics
            timings["dermino_metrics_s"] = time.perf_counter() - t1
        paired = {}
        for name in metrics:
            r = api.paired_test(preds, base_preds, name, split_hash=test.hash, n_boot=ctx.n_boot)
            paired[name] = {key: r[key] for key in ("diff", "value_a", "value_b", "ci_low", "ci_high", "p_value")}
        corpus_gen = dict(gen.corpus)
        corpus_base = dict(base.corpus)
        better = [k for k, r in paired.items() if r["diff"] > 0 and r["ci_low"] > 0]
        worse = [k for k, r in paired.items() if r["diff"] < 0 and r["ci_high"] < 0]
        verdict = (f"generation beats nearest-neighbour retrieval on {', '.join(better) or 'no metric'} "
                   f"(95% paired bootstrap CI of the difference above 0); retrieval beats generation on "
                   f"{', '.join(worse) or 'no metric'}; the rest are not distinguishable on {len(ids)} test captions")
        ctx.log(f"captioning: {verdict}")

        artifacts = self._write_table(ctx, preds, base.per_caption)
        extra = {
            "lm": lm.name, "lm_kind": lm.kind, "visual": vis_src,
            "visual_tokens": max(1, self.visual_tokens) * max(1, int(self.p["visual_expand"])),
            "visual_expand": int(self.p["visual_expand"]),
            "template": [str(self.p["pre_prompt"]), "<visual>", str(self.p["prompt"])],
            "resolved": {"epochs": self.epochs, "batch_size": self.batch_size, "lr_proj": self.lr_proj,
                         "lr_lm": self.lr_lm, "num_beams": self.num_beams, "max_len": self.max_len,
                         "lora": ({"r": int(self.p["lora_r"]), "alpha": int(self.p["lora_alpha"]),
                                   "dropout": float(self.p["lora_dropout"]), "targets": self.lora_targets}
                                  if lm.kind == "hf" else None),
                         "dtype": str(lm.dtype).replace("torch.", ""), "device": str(ctx.device)},
            "params": {"trainable": lm.n_trainable, "lm_total": lm.n_total},
            "vocab_size": len(lm.tokenizer),
            "n_train": len(train), "n_test": len(test),
            "train": fit, "notes": lm.notes,
            "corpus": corpus_gen,
            "metrics_set": self.metric_set,
            "dermino_corpus": dermino_corpus,
            "score_kinds": {
                "per_caption": "predictions[<key>] -> metrics mean:<key> (bootstrap CIs, paired across models); "
                "bleuN = pycocoevalcap sentence BLEU, meteor = METEOR 1.5 segment score, rougeL/cider = "
                "pycocoevalcap, rouge1/rouge2 = rouge-score F (Porter stemmer)",
                "corpus": "extra.corpus: pycocoevalcap corpus BLEU-1..4 and METEOR aggregate (not means of "
                "per-caption scores); rougeL/cider/rouge1/rouge2 corpus = per-caption means; metric "
                "corpus_bleu4 = corpus BLEU-4 with a CI from resampling captions",
            },
            "retrieval_baseline": {
                "description": "caption of the nearest training image (cosine on the same raw features)",
                "mean": {k: float(v.mean()) for k, v in base.per_caption.items()},
                "corpus": corpus_base,
                "paired_generated_minus_retrieved": paired,
                "generation_better_on": better,
                "retrieval_better_on": worse,
                "verdict": verdict,
            },
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        return TaskOutput(preds, metrics, test, extra=extra, artifacts=artifacts)

    def _language_model(self, ctx, cap_tr: list[str], k: int):
        from dermbench_plugins.tasks.captioning import lm as L

        if self.kind == "tiny":
            tok = L.word_tokenizer(cap_tr)
            k = k * max(1, int(self.p["visual_expand"]))
            words = len(str(self.p["prompt"]).split()) + len(str(self.p["pre_prompt"]).split())
            model = L.tiny_lm(tok, n_positions=k + self.max_len + 8 + words * 2,
                              dim=int(self.p["tiny_dim"]), layers=int(self.p["tiny_layers"]), seed=ctx.seed)
            import torch

            return L.LanguageModel(model, tok, "tiny", "tiny", model.config.n_embd, torch.float32,
                                   [f"tiny GPT-2 ({self.p['tiny_layers']} layers, dim {self.p['tiny_dim']}) and a "
                                    f"{len(tok)}-word tokenizer trained on the {len(cap_tr)} training captions"])
        return L.load_hf_lm(self.lm_name, device=ctx.device, lora_r=int(self.p["lora_r"]),
                            lora_alpha=int(self.p["lora_alpha"]), lora_dropout=float(self.p["lora_dropout"]),
                            lora_targets=self.lora_targets, log=ctx.log)

    @staticmethod
    def _write_table(ctx, preds, base_per) -> list[str]:
        import csv

        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        path = ctx.out_dir / "captions.csv"
        keys = [k for k in PER_CAPTION_KEYS if k in preds]
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "reference", "generated", "retrieved", "retrieved_from", *keys,
                        *[f"retrieved_{k}" for k in keys]])
            for i, sid in enumerate(preds["ids"]):
                w.writerow([sid, preds["reference"][i], preds["generated"][i], preds["retrieved"][i],
                            preds["retrieved_from"][i], *[f"{preds[k][i]:.6g}" for k in keys],
                            *[f"{base_per[k][i]:.6g}" for k in keys]])
        return [str(path)]


@hookimpl
def register_tasks(register):
    register(INFO, Captioning)


def _resolve_metric(name: str):
    """corpus_bleu1..4 for the statistics engine; imports the metric module only when asked."""
    if name.startswith("dermino_bleu"):  # the DermINO authors' nltk BLEU (metrics=dermino)
        from dermbench_plugins.tasks.protocols.captions import resolve_metric as resolve_dermino

        return resolve_dermino(name)
    if not name.startswith("corpus_bleu"):
        return None
    from dermbench_plugins.tasks.captioning.metrics import resolve_metric

    return resolve_metric(name)


@hookimpl
def register_metrics(register):
    register(_resolve_metric)

"""Caption metrics computed offline: pycocoevalcap (PTB tokenizer, BLEU, METEOR, ROUGE-L, CIDEr) + rouge-score.

Why not Hugging Face ``evaluate``: ``evaluate.load("bleu" | "rouge" | "meteor")`` fetches the metric scripts
from the hub at run time, so it fails offline and its numbers depend on whatever script version the hub
serves that day. pycocoevalcap ships its Java tokenizer and METEOR jar inside the wheel and is the reference
implementation of the COCO caption metrics, so the numbers here are comparable with captioning papers.
SPICE is never imported (``pycocoevalcap.spice`` downloads Stanford CoreNLP models).

Two kinds of number come out, and they are not interchangeable:

* **per-caption** scores (``bleu1``, ``bleu2``, ``bleu4``, ``meteor``, ``rougeL``, ``cider``, ``rouge1``,
  ``rouge2``): one value per test image, the input of the statistics engine (``mean:<key>`` metrics, bootstrap
  CIs, paired tests between models). BLEU here is pycocoevalcap's *sentence* BLEU (its tiny-count smoothing),
  METEOR the segment score of the METEOR 1.5 jar, ROUGE-1/2 rouge-score's F-measure (Porter stemmer).
* **corpus** scores (:attr:`CaptionScores.corpus`), pycocoevalcap's own aggregates as captioning papers report
  them: corpus BLEU-n (clipped n-gram counts and lengths summed over the corpus *before* the ratio, so it is
  not the mean of sentence BLEU), METEOR's own aggregate (also not the mean of segment scores). For ROUGE-L and
  CIDEr the corpus value *is* the mean of the per-caption values (CIDEr's IDF is computed once on the test
  references and kept fixed when resampling captions). ROUGE-1/2 corpus values are means of per-caption F.

Corpus BLEU gets a CI by bootstrap over captions: it is a function of per-caption sufficient statistics
(hypothesis length, closest reference length, n-gram guesses and clipped matches), see :func:`corpus_bleu_from_stats`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from dermbench.api import DermbenchError

#: per-caption score keys, in the order they are reported
PER_CAPTION_KEYS = ("bleu1", "bleu2", "bleu4", "meteor", "rougeL", "cider", "rouge1", "rouge2")
#: columns of the per-caption BLEU sufficient statistics
BLEU_STAT_COLUMNS = ("testlen", "reflen", "guess1", "guess2", "guess3", "guess4",
                     "correct1", "correct2", "correct3", "correct4")
# pycocoevalcap's smoothing constants (bleu_scorer.compute_score), kept so corpus values match it exactly
_TINY, _SMALL = 1e-15, 1e-9

_METEOR_LOCK = threading.Lock()
_METEOR: Any = None


@dataclass
class CaptionScores:
    per_caption: dict[str, Any]  # key -> (n,) float64 array
    corpus: dict[str, float]
    bleu_stats: Any  # (n, 10) float64, columns BLEU_STAT_COLUMNS
    tokenized_hyp: list[str] = field(default_factory=list)
    tokenized_ref: list[list[str]] = field(default_factory=list)


def check_captions(ids: Sequence[str], captions: Sequence[Any], where: str) -> list[str]:
    """Refuse missing, non-text and empty captions, naming the sample ids (a caption task cannot score them)."""
    bad_type = [(i, c) for i, c in zip(ids, captions) if not isinstance(c, str)]
    if bad_type:
        shown = ", ".join(f"{i} ({type(c).__name__}: {c!r})" for i, c in bad_type[:5])
        raise DermbenchError(
            f"{where}: {len(bad_type)} caption(s) are not text: {shown}{', ...' if len(bad_type) > 5 else ''}. "
            "Every sample needs a caption string: fill the caption column or drop those rows."
        )
    empty = [i for i, c in zip(ids, captions) if not c.strip()]
    if empty:
        raise DermbenchError(
            f"{where}: {len(empty)} caption(s) are empty: samples {', '.join(map(str, empty[:5]))}"
            f"{', ...' if len(empty) > 5 else ''}. Fill the caption column or drop those rows."
        )
    return [str(c) for c in captions]


def _ptb_tokenize(groups: dict[str, list[str]]) -> dict[str, list[str]]:
    """pycocoevalcap's PTB tokenizer (Stanford CoreNLP 3.4.1, lower-cased, punctuation removed)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    flat = {k: [{"caption": c.replace("\n", " ").replace("\r", " ")} for c in v] for k, v in groups.items()}
    out = PTBTokenizer().tokenize(flat)
    missing = [k for k in groups if k not in out or len(out[k]) != len(groups[k])]
    if missing:  # the jar drops lines only on malformed input; never score misaligned captions
        raise DermbenchError(
            f"PTB tokenizer lost caption entries {missing[:5]} (r<i>: reference, h<set>_<i>: hypothesis); "
            "check those captions for control characters"
        )
    return out


def _meteor() -> Any:
    """One METEOR 1.5 Java process per Python process: starting it costs ~8 s (paraphrase tables)."""
    global _METEOR
    if _METEOR is None or _METEOR.meteor_p.poll() is not None:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR = Meteor()
    return _METEOR


def start_meteor() -> None:
    """Start the METEOR process early (non-blocking) so its start-up overlaps with other work."""
    with _METEOR_LOCK:
        _meteor()


def bleu_stats(gts: dict[str, list[str]], res: dict[str, list[str]], keys: Sequence[str]):
    """Per-caption BLEU-4 sufficient statistics and pycocoevalcap's (corpus, sentence) BLEU-1..4 ('closest')."""
    import numpy as np
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    scorer = BleuScorer(n=4)
    for k in keys:
        scorer += (res[k][0], gts[k])
    corpus, sentence = scorer.compute_score(option="closest", verbose=0)
    rows = []
    for comps in scorer.ctest:
        reflen = scorer._single_reflen(comps["reflen"], "closest", comps["testlen"])
        rows.append([comps["testlen"], reflen, *comps["guess"], *comps["correct"]])
    return np.asarray(rows, dtype=np.float64).reshape(len(keys), 10), [float(c) for c in corpus], sentence


def corpus_bleu_from_stats(S: Any, n: int = 4) -> Any:
    """Corpus BLEU-n from summed sufficient statistics S (..., 10), exactly as pycocoevalcap computes it.

    With S = W @ stats for bootstrap multiplicities W this gives corpus BLEU for every replicate at once.
    """
    import numpy as np

    S = np.asarray(S, dtype=np.float64)
    testlen, reflen = S[..., 0], S[..., 1]
    guess, correct = S[..., 2:6], S[..., 6:10]
    logb = np.zeros(S.shape[:-1])
    for k in range(n):
        logb = logb + np.log((correct[..., k] + _TINY) / (guess[..., k] + _SMALL))
    bleu = np.exp(logb / n)
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    bp = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, 1e-300)), 1.0)
    return bleu * bp


def score_captions(references: Sequence[str | Sequence[str]], hypotheses: Sequence[str],
                   ids: Sequence[str] | None = None, *, meteor: bool = True) -> CaptionScores:
    """Score hypotheses against references (one or several per image). Empty hypotheses score 0, never fail."""
    return score_caption_sets(references, {"h": hypotheses}, ids, meteor=meteor)["h"]


def score_caption_sets(references: Sequence[str | Sequence[str]], hypothesis_sets: dict[str, Sequence[str]],
                       ids: Sequence[str] | None = None, *, meteor: bool = True) -> dict[str, CaptionScores]:
    """Score several hypothesis sets (generated, retrieved, ...) against the same references.

    All texts go through one PTB-tokenizer call (one JVM start) and one METEOR process; the scores of each set
    are exactly those of scoring it alone (CIDEr's IDF comes from the references only).
    """
    import numpy as np

    n = len(references)
    if n == 0:
        raise DermbenchError("no captions to score: the test split is empty")
    for name, hyps in hypothesis_sets.items():
        if len(hyps) != n:
            raise DermbenchError(f"{len(hyps)} {name} captions for {n} references; need one per image")
    refs = [list(r) if isinstance(r, (list, tuple)) else [r] for r in references]
    keys = [str(i) for i in range(n)]  # positional keys: ids may repeat or be odd strings
    label_ids = [str(i) for i in ids] if ids is not None else keys
    check_captions([i for i, r in zip(label_ids, refs) for _ in r], [c for r in refs for c in r], "references")

    groups: dict[str, list[str]] = {f"r{k}": r for k, r in zip(keys, refs)}
    for j, hyps in enumerate(hypothesis_sets.values()):
        groups.update({f"h{j}_{k}": ["" if h is None else str(h)] for k, h in zip(keys, hyps)})
    tok = _ptb_tokenize(groups)
    # METEOR's stdio protocol splits on '|||' and lines: keep both out of the text
    tok = {k: [c.replace("|||", " ") for c in v] for k, v in tok.items()}
    gts = {k: tok[f"r{k}"] for k in keys}
    out = {}
    for j, (name, hyps) in enumerate(hypothesis_sets.items()):
        res = {k: tok[f"h{j}_{k}"] for k in keys}
        out[name] = _score_tokenized(gts, res, keys, refs, ["" if h is None else str(h) for h in hyps], meteor)
    return out


def _score_tokenized(gts, res, keys, refs, raw_hyps, meteor: bool) -> CaptionScores:
    import numpy as np
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from rouge_score import rouge_scorer

    n = len(keys)
    per: dict[str, Any] = {}
    corpus: dict[str, float] = {}
    stats, bleu_corpus, bleu_sent = bleu_stats(gts, res, keys)
    for j, name in ((0, "bleu1"), (1, "bleu2"), (3, "bleu4")):
        per[name] = np.asarray(bleu_sent[j], dtype=np.float64)
        corpus[name] = bleu_corpus[j]
    corpus["bleu3"] = bleu_corpus[2]
    if meteor:
        with _METEOR_LOCK:
            m_corpus, m_per = _meteor().compute_score(gts, res)
        per["meteor"], corpus["meteor"] = np.asarray(m_per, dtype=np.float64), float(m_corpus)
    r_mean, r_per = Rouge().compute_score(gts, res)
    per["rougeL"], corpus["rougeL"] = np.asarray(r_per, dtype=np.float64), float(r_mean)
    c_mean, c_per = Cider().compute_score(gts, res)
    per["cider"], corpus["cider"] = np.asarray(c_per, dtype=np.float64), float(c_mean)
    rs = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=True)
    r1, r2 = np.zeros(n), np.zeros(n)
    for i, (h, rr) in enumerate(zip(raw_hyps, refs)):
        s = rs.score_multi(rr, h)
        r1[i], r2[i] = s["rouge1"].fmeasure, s["rouge2"].fmeasure
    per["rouge1"], per["rouge2"] = r1, r2
    corpus["rouge1"], corpus["rouge2"] = float(r1.mean()), float(r2.mean())
    per = {k: per[k] for k in PER_CAPTION_KEYS if k in per}
    return CaptionScores(per, corpus, stats, [res[k][0] for k in keys], [gts[k] for k in keys])


def corpus_bleu_metrics() -> list[Any]:
    """``corpus_bleu1`` ... ``corpus_bleu4`` as statistics-engine metrics (bootstrap CIs, paired tests, BCa).

    Each is a function of the summed per-caption sufficient statistics ``predictions["bleu_stats"]`` (n, 10),
    so a replicate is one matrix product (``W @ stats``), exactly like the engine's count metrics.
    """
    import numpy as np

    from dermbench import api

    def features(p: Any, m: str) -> Any:
        x = p.array("bleu_stats", m)
        if x.ndim != 2 or x.shape[1] != len(BLEU_STAT_COLUMNS):
            raise DermbenchError(
                f"predictions['bleu_stats'] must be (n, {len(BLEU_STAT_COLUMNS)}) with columns "
                f"{', '.join(BLEU_STAT_COLUMNS)}; got shape {x.shape}"
            )
        return np.concatenate([np.ones((p.n, 1)), x], axis=1)

    out = []
    for n in (1, 2, 3, 4):
        def finalize(p: Any, S: Any, n: int = n) -> tuple[Any, None]:
            return corpus_bleu_from_stats(np.asarray(S)[:, 1:], n), None

        out.append(api.linear_metric(
            f"corpus_bleu{n}", ("bleu_stats",), features, finalize,
            description=f"corpus BLEU-{n} (pycocoevalcap, 'closest' reference length) from per-caption n-gram "
            "statistics; resampled over captions",
            reference=f"pycocoevalcap Bleu(4).compute_score(gts, res)[0][{n - 1}]",
        ))
    return out


def resolve_metric(name: str):
    """``corpus_bleu1..4`` for dermbench.stats (registered through the ``register_metrics`` hook)."""
    if not (name.startswith("corpus_bleu") and name[11:] in ("1", "2", "3", "4")):
        return None
    return corpus_bleu_metrics()[int(name[11:]) - 1]

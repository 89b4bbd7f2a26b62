"""The DermINO authors' caption scoring (``downstreams/caption/mytrain.py``), re-implemented offline.

* BLEU-1/2/4: nltk ``corpus_bleu`` on **whitespace** tokens (no lower-casing, punctuation stays attached),
  one reference per image, no smoothing; weights (1,0,0,0), (.5,.5,0,0), (.25,.25,.25,.25).
  Computed here from per-caption n-gram statistics so it can be bootstrapped; equal to nltk (tested).
* METEOR: nltk ``meteor_score([ref_tokens], hyp_tokens)`` per caption on ``word_tokenize`` tokens, mean.
  WordNet comes from Debian's ``wordnet-base`` (+ ``wordnet-sense-index``) files, read offline
  (:func:`wordnet_reader`); ``word_tokenize`` uses NLTK's English Punkt model when installed, otherwise an
  untrained Punkt sentence splitter (same Treebank word rules; differs only around abbreviations).
* ROUGE-1/2/L: rouge-score F-measure with the Porter stemmer, mean over captions.
* CIDEr: pycocoevalcap ``Cider`` on the **raw** strings (no PTB tokenisation), refs ``{i: [ref]}``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

#: Debian's WordNet 3.0 dictionary folder (packages wordnet-base, wordnet-sense-index)
WORDNET_DIRS = ("/usr/share/wordnet",)
#: lexicographer file names of WordNet 3.0, in file-number order (WordNet's lexnames(5WN)); Debian ships
#: them only in the man page, and NLTK's reader needs them as a file
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation "
    "noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception "
    "verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUM = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
BLEU_WEIGHTS = {1: (1.0, 0, 0, 0), 2: (0.5, 0.5, 0, 0), 3: (0.33, 0.33, 0.33, 0), 4: (0.25, 0.25, 0.25, 0.25)}
PER_CAPTION = ("meteor", "rouge1", "rouge2", "rougeL", "cider")

_WN: Any = None


class WordNetMissing(RuntimeError):
    pass


def wordnet_reader() -> Any:
    """NLTK's WordNet reader over Debian's dictionary files (no download)."""
    global _WN
    if _WN is not None:
        return _WN
    src = os.environ.get("DERMBENCH_WORDNET")
    cands = [src] if src else list(WORDNET_DIRS)
    found = next((Path(d) for d in cands if d and (Path(d) / "data.noun").is_file()), None)
    if found is None:
        raise WordNetMissing(
            f"WordNet dictionary files not found in {', '.join(c for c in cands if c)}: METEOR (dermino caption "
            "scoring) needs them offline; install them with `apt-get install wordnet-base wordnet-sense-index` "
            "or point DERMBENCH_WORDNET at a folder holding WordNet 3.0's data.* / index.* files")
    from dermbench.api import cache_dir

    root = cache_dir() / "wordnet"
    root.mkdir(parents=True, exist_ok=True)
    for f in found.iterdir():  # a copy (36 MB once): NLTK refuses symlinked or hard-linked corpus files
        dst = root / f.name
        if f.is_file() and not dst.exists():
            import shutil

            tmp = root / f".{f.name}.{os.getpid()}"
            shutil.copyfile(f, tmp)
            tmp.replace(dst)
    lex = root / "lexnames"
    if not lex.exists():
        tmp = root / f".lexnames.{os.getpid()}"
        tmp.write_text("".join(f"{i:02d}\t{n}\t{_POS_NUM[n.split('.')[0]]}\n" for i, n in enumerate(_LEXNAMES)))
        tmp.replace(lex)
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if str(root.resolve()) not in nltk.data.path:  # NLTK only opens files under its data path
        nltk.data.path.append(str(root.resolve()))
    class _WordNet30(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:  # already WordNet 3.0: no cross-version map
            return None

    _WN = _WordNet30(str(root), None)
    return _WN


def word_tokenize(text: str) -> list[str]:
    """nltk ``word_tokenize`` (Punkt sentences, then Treebank words) without downloading anything."""
    from nltk.tokenize import TreebankWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    try:
        import nltk

        return nltk.word_tokenize(text)
    except LookupError:  # no punkt data installed: an untrained Punkt splitter
        tb = TreebankWordTokenizer()
        return [t for s in PunktSentenceTokenizer().tokenize(text) for t in tb.tokenize(s)]


def bleu_stats(refs: Sequence[str], hyps: Sequence[str]) -> Any:
    """Per-caption (n, 10) statistics on whitespace tokens: clipped matches and hypothesis n-gram counts for
    n = 1..4, hypothesis length, reference length (one reference, so it is also the closest)."""
    import numpy as np

    out = np.zeros((len(hyps), 10))
    for i, (r, h) in enumerate(zip(refs, hyps)):
        rt, ht = r.split(), h.split()
        for n in range(1, 5):
            hc = Counter(tuple(ht[k : k + n]) for k in range(len(ht) - n + 1))
            rc = Counter(tuple(rt[k : k + n]) for k in range(len(rt) - n + 1))
            out[i, n - 1] = sum(min(c, rc[g]) for g, c in hc.items())
            out[i, 3 + n] = max(0, len(ht) - n + 1)
        out[i, 8], out[i, 9] = len(ht), len(rt)
    return out


def bleu_from_stats(S: Any, n: int) -> Any:
    """nltk ``corpus_bleu`` (no smoothing) from summed statistics S (..., 10), for BLEU-n (n in 1, 2, 3, 4)."""
    import numpy as np

    S = np.atleast_2d(np.asarray(S, dtype=np.float64))
    w = BLEU_WEIGHTS[n]
    num, den, c, r = S[:, 0:4], S[:, 4:8], S[:, 8], S[:, 9]
    tiny = 2.2250738585072014e-308  # nltk's method0 replaces a zero precision by sys.float_info.min
    logs = np.zeros(len(S))
    for k in range(4):
        p = np.where(num[:, k] > 0, num[:, k] / np.maximum(den[:, k], 1), tiny)
        logs += w[k] * np.log(p)
    bp = np.where(c > r, 1.0, np.exp(1 - r / np.maximum(c, 1e-300)))
    return np.where((num[:, 0] > 0) & (c > 0), bp * np.exp(logs), 0.0)


def score(refs: Sequence[str], hyps: Sequence[str], *, meteor: bool = True) -> tuple[dict[str, float], dict]:
    """Corpus values as the authors report them, and per-caption arrays (meteor, rouge*, cider, bleu_stats)."""
    import numpy as np
    from pycocoevalcap.cider.cider import Cider
    from rouge_score import rouge_scorer

    if len(refs) != len(hyps) or not hyps:
        raise ValueError(f"need one reference per hypothesis, got {len(refs)} references and {len(hyps)} hypotheses")
    per: dict[str, Any] = {"bleu_stats": bleu_stats(refs, hyps)}
    S = per["bleu_stats"].sum(axis=0)
    corpus = {f"bleu{n}": float(bleu_from_stats(S, n)[0]) for n in (1, 2, 4)}
    if meteor:
        from nltk.translate.meteor_score import meteor_score

        wn = wordnet_reader()
        per["meteor"] = np.array([meteor_score([word_tokenize(r)], word_tokenize(h), wordnet=wn)
                                  for r, h in zip(refs, hyps)])
        corpus["meteor"] = float(per["meteor"].mean())
    rs = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rows = [rs.score(r, h) for r, h in zip(refs, hyps)]
    for k in ("rouge1", "rouge2", "rougeL"):
        per[k] = np.array([s[k].fmeasure for s in rows])
        corpus[k] = float(per[k].mean())
    c_mean, c_per = Cider().compute_score({i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)})
    per["cider"], corpus["cider"] = np.asarray(c_per, dtype=np.float64), float(c_mean)
    return corpus, per


def resolve_metric(name: str) -> Any:
    """``dermino_bleu1|2|3|4``: the authors' nltk corpus BLEU from per-caption ``dermino_bleu_stats``,
    resampled over captions."""
    if not (name.startswith("dermino_bleu") and name[12:] in ("1", "2", "3", "4")):
        return None
    import numpy as np

    from dermbench import api

    n = int(name[12:])

    def features(p: Any, m: str) -> Any:
        s = p.array("dermino_bleu_stats", m)
        return np.concatenate([np.ones((p.n, 1)), s], axis=1)

    def finalize(p: Any, S: Any) -> tuple[Any, None]:
        return bleu_from_stats(np.asarray(S)[:, 1:], n), None

    return api.linear_metric(
        name, ("dermino_bleu_stats",), features, finalize,
        description=f"DermINO authors' BLEU-{n}: nltk corpus_bleu on whitespace tokens, no smoothing; "
        "resampled over captions",
        reference=f"nltk.translate.bleu_score.corpus_bleu(weights={BLEU_WEIGHTS[n]})",
    )


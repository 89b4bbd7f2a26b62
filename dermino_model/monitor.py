"""Monitoring: JSONL log, rich progress bar, and a kNN probe of the teacher on a held-out labelled split.

Collapse shows up as teacher entropy -> log K with the DINO loss stuck at log K (uniform), or prototypes used
per batch -> 1 and ``teacher_feat_std`` -> 0 (constant); the kNN probe is the ground truth for "it learns".
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


class JsonlLog:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(rec, default=float) + "\n")


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool = True, console: Any = None) -> Iterator[Callable[[dict], None]]:
    if not enabled or total <= 0:
        yield lambda rec: None
        return
    from dermbench.api import LineProgress, is_terminal

    if not (getattr(console, "is_terminal", False) if console is not None else is_terminal()):
        # piped (CI logs, `make demo | tee`): a line every ~10 s with rate, ETA and the loss
        lp = LineProgress("pretrain", total, unit="step")

        def update_line(rec: dict) -> None:
            lp.info = " ".join(f"{k} {rec[k]:.3f}" for k in ("total", "dino", "sup") if k in rec)
            lp.advance(1)

        yield update_line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=False) as prog:
        task = prog.add_task("pretrain", total=total, info="")

        def update(rec: dict) -> None:
            info = " ".join(f"{k} {rec[k]:.3f}" for k in ("total", "dino", "ibot", "koleo", "sup") if k in rec)
            if "teacher_entropy" in rec:
                info += f" H_t {rec['teacher_entropy']:.2f} protos {int(rec.get('prototypes_used', 0))}"
            prog.update(task, advance=1, info=info)

        yield update


def knn_scores(bank: np.ndarray, bank_y: np.ndarray, query: np.ndarray, n_classes: int, k: int = 20,
               temperature: float = 0.07) -> np.ndarray:
    """Weighted cosine kNN (DINO's evaluation): class scores ``sum exp(sim/T)`` over the k nearest, normalised."""
    b = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    sim = q @ b.T
    k = min(k, len(b))
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    w = np.exp(np.take_along_axis(sim, top, 1) / temperature)
    scores = np.zeros((len(q), n_classes))
    for c in range(n_classes):
        scores[:, c] = (w * (bank_y[top] == c)).sum(1)
    return scores / np.maximum(scores.sum(1, keepdims=True), 1e-12)


def macro_auroc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    present = [c for c in range(scores.shape[1]) if 0 < (y == c).sum() < len(y)]
    return float(np.mean([roc_auc_score(y == c, scores[:, c]) for c in present])) if present else float("nan")


def embed_split(vit: Any, samples: list, size: int, device: Any, batch: int = 64) -> np.ndarray:
    import torch

    from dermbench.api import Preprocess

    tf = Preprocess(crop=size, resize=size).build()
    was_training = vit.training
    vit.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(samples), batch):
            x = torch.stack([tf(s.load_image()) for s in samples[i : i + batch]]).to(device)
            out.append(vit.forward_head(vit.forward_features(x), pre_logits=True).float().cpu().numpy())
    vit.train(was_training)
    return np.concatenate(out)


def knn_probe(vit: Any, dataset: str, size: int, device: Any, max_images: int = 400, k: int = 20,
              bank_split: str = "train", query_split: str = "test") -> dict[str, float]:
    """kNN macro AUROC / accuracy of a ViT on ``dataset`` (bank = its train split, queries = its test split)."""
    from dermbench.api import dataset_info, load_dataset

    if dataset_info(dataset).needs_root:
        return {"knn_note": f"{dataset} needs a data root; probe skipped"}  # type: ignore[dict-item]
    ds = load_dataset(dataset)
    bank = ds.split(bank_split).samples[:max_images]
    query = ds.split(query_split).samples[:max_images]
    fb, fq = embed_split(vit, bank, size, device), embed_split(vit, query, size, device)
    yb = np.array([s.label for s in bank])
    yq = np.array([s.label for s in query])
    n_classes = int(max(yb.max(), yq.max())) + 1
    scores = knn_scores(fb, yb, fq, n_classes, k)
    return {"knn_auroc": macro_auroc(yq, scores), "knn_acc": float((scores.argmax(1) == yq).mean()),
            "n_bank": len(bank), "n_query": len(query)}

"""Does pretraining help? kNN macro AUROC of teacher checkpoints vs the same architecture at random init.

    python -m dermino_model.evidence CKPT [CKPT ...] [--dataset dermsynth] [--n-boot N] [--seed 0]

Bank = the dataset's train split, queries = its test split (held out from pretraining). Every model is
scored on the same bootstrap resamples of the queries (paired), and each checkpoint is compared with the
random-init baseline of its architecture: AUROC difference, 95% percentile CI, and the two-sided bootstrap
p-value with the +1 correction. The benchmark proper (``dermbench run --model dermino,dermino-random``)
gives the same comparison through the toolkit's statistics; this module is the quick, self-contained check.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np


class _Img:
    """A sample stand-in holding its decoded image (dermsynth renders on every access)."""

    def __init__(self, img: Any) -> None:
        self.img = img

    def load_image(self) -> Any:
        return self.img


def _splits(dataset: str, max_images: int) -> tuple[list[_Img], np.ndarray, list[_Img], np.ndarray]:
    from dermbench.api import load_dataset

    ds = load_dataset(dataset)
    bank, query = ds.split("train").samples[:max_images], ds.split("test").samples[:max_images]
    return ([_Img(s.load_image()) for s in bank], np.array([s.label for s in bank]),
            [_Img(s.load_image()) for s in query], np.array([s.label for s in query]))


def paired_bootstrap(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, n_boot: int | None = None,
                     seed: int = 0, split_hash: str = "dermino-evidence") -> dict[str, float]:
    """AUROC(a) - AUROC(b) on identical resamples of the queries, through the toolkit's own paired test."""
    from dermbench import api

    ids = [str(i) for i in range(len(y))]
    pred = lambda s: {"ids": ids, "y_true": y, "scores": s, "y_pred": s.argmax(1)}  # noqa: E731
    r = api.paired_test(pred(scores_a), pred(scores_b), "auroc_macro", split_hash=f"{split_hash}:{seed}",
                        n_boot=n_boot or api.N_BOOT)
    return {"diff": float(r["diff"]), "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]),
            "p": float(r["p_value"]), "n_boot": int(r["n_used"])}


def evaluate(checkpoints: list[str], dataset: str = "dermsynth", n_boot: int | None = None, seed: int = 0,
             max_images: int = 400, k: int = 20) -> dict[str, Any]:
    import torch

    from dermino_model.backbone import build_vit, load_vit, resolve
    from dermino_model.monitor import embed_split, knn_scores, macro_auroc

    out: dict[str, Any] = {"dataset": dataset, "k": k, "models": {}, "comparisons": {}}
    baselines: dict[str, np.ndarray] = {}
    bank, yb, query, yq = _splits(dataset, max_images)
    n_classes = int(max(yb.max(), yq.max())) + 1
    for ck in checkpoints:
        path = resolve(ck)
        vit, arch, _ = load_vit(path)
        size = int(arch["img_size"])
        fb, fq = embed_split(vit, bank, size, "cpu"), embed_split(vit, query, size, "cpu")
        s = knn_scores(fb, yb, fq, n_classes, k)
        out["models"][str(path)] = {"knn_auroc": macro_auroc(yq, s), "knn_acc": float((s.argmax(1) == yq).mean())}
        key = json.dumps(arch, sort_keys=True)
        if key not in baselines:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                rnd = build_vit(arch)
            rb, rq = embed_split(rnd, bank, size, "cpu"), embed_split(rnd, query, size, "cpu")
            baselines[key] = knn_scores(rb, yb, rq, n_classes, k)
            out["models"][f"random-init {arch['arch']} d{arch['depth']} w{arch['embed_dim']}"] = {
                "knn_auroc": macro_auroc(yq, baselines[key]), "knn_acc": float((baselines[key].argmax(1) == yq).mean())}
        out["comparisons"][f"{path} vs random-init"] = paired_bootstrap(yq, s, baselines[key], n_boot, seed)
        out.setdefault("_scores", {})[str(path)] = s
        out["_y"] = yq
    paths = [p for p in out.get("_scores", {})]
    if len(paths) == 2:
        a, b = (out["_scores"][p] for p in paths)
        out["comparisons"][f"{paths[0]} vs {paths[1]}"] = paired_bootstrap(out["_y"], a, b, n_boot, seed)
    out.pop("_scores", None)
    out.pop("_y", None)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--dataset", default="dermsynth")
    ap.add_argument("--n-boot", type=int, default=None, help="bootstrap replicates (default: dermbench's N_BOOT)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-images", type=int, default=400)
    args = ap.parse_args(argv)
    res = evaluate(args.checkpoints, args.dataset, args.n_boot, args.seed, args.max_images)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


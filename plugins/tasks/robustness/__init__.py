"""Robustness: a head fit on clean training features, tested on corrupted copies of the test split.

Why: dermoscopic and clinical photographs carry blur, compression, colour casts, hair, rulers, ink and the
dermoscope's dark border; a backbone whose features move under them misleads whatever head sits on top.
For each corruption x severity (see corruptions.py) the task builds a derived dataset whose images are the
corrupted originals and whose ``content_fingerprint`` holds (corruption, severity, seed), then asks
``ctx.features`` for its test split: corrupted features are cached exactly like clean ones (the store key
includes the split hash), so a rerun or a second head extracts nothing. Images are first shrunk to a shorter
side of ``max_side`` (default 512; 0 = off) -- the clean reference too -- so full-resolution dermoscopy (ISIC's
6000x4000) stays cheap to corrupt; corruption parameters scale with the image, not with its pixel count.

Reported (``extra['robustness']``): the metric per corruption and severity with its CI, the paired difference
clean - corrupted on identical resamples (CI, p), the relative drop, prediction consistency (agreement with
the clean prediction) with its CI, the mean relative drop per corruption and overall, and a curve PNG.
The record's predictions are the clean ones plus two per-sample arrays, so robustness is scored, compared and
ranked like any metric: ``mean:corrupted_accuracy`` (fraction of a sample's corrupted versions classified
correctly; the primary metric) and ``mean:consistency`` (fraction agreeing with the clean prediction).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dermbench import hookimpl
from dermbench.api import DermbenchError, TaskInfo, TaskOutput, stable_hash

from dermbench_plugins.tasks._shared.classification import (
    CLASSIFICATION_METRICS, check_train_classes, labelled, n_classes,
)

ROBUST_METRICS = ("mean:corrupted_accuracy", "mean:consistency")
HEADS = ("probe", "knn")
CURVE_METRICS = ("auroc_macro", "balanced_accuracy", "accuracy", "f1_macro")

INFO = TaskInfo(
    name="robustness",
    description="head fit on clean train features, tested on test images under dermatology corruptions (blur, jpeg, "
    "illumination, colour_cast, contrast, rotation, scale_crop, hair, ruler_ink, vignette) x severities 1-5; metric "
    "per cell, paired drop vs clean, relative drop, consistency; corrupted features cached",
    requires=frozenset({"labels"}),
    capabilities=frozenset({"cls"}),
    metrics=CLASSIFICATION_METRICS + ROBUST_METRICS,
    primary_metric="mean:corrupted_accuracy",
    defaults={"corruptions": "default", "severities": [1, 3, 5], "head": "probe", "metric": "auroc_macro", "k": 5,
              "epochs": 50, "lr": 5e-3, "batch_size": 256, "max_side": 512, "train_split": "train",
              "test_split": "test"},
    in_all=False,
)


def parse_corruptions(value: Any) -> list[str]:
    from dermbench_plugins.tasks.robustness.corruptions import CORRUPTIONS, DEFAULT

    if value in (None, "default"):
        return list(DEFAULT)
    if value == "all":
        return list(CORRUPTIONS)
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    bad = [n for n in names if n not in CORRUPTIONS]
    if bad or not names:
        raise DermbenchError(
            f"robustness.corruptions: unknown corruption(s) {bad or names}; valid: {', '.join(CORRUPTIONS)} "
            "(or 'default', 'all')"
        )
    return list(dict.fromkeys(names))


def parse_severities(value: Any) -> list[int]:
    vals = [value] if isinstance(value, (int, str)) and not (isinstance(value, str) and "," in value) else value
    if isinstance(vals, str):
        vals = vals.split(",")
    try:
        out = sorted({int(v) for v in vals})
    except (TypeError, ValueError):
        out = []
    if not out or any(v < 1 or v > 5 for v in out):
        raise DermbenchError(f"robustness.severities={value!r}: give severities between 1 and 5, e.g. 1,3,5")
    return out


def _derived(ds, suffix: str, image_for, fingerprint: dict[str, Any]):
    """``ds`` with every sample's image replaced by ``image_for(sample)`` (a lazy callable), own fingerprint."""
    from dermbench.api import Dataset

    samples = [replace(s, image=image_for(s)) for s in ds.samples]
    fp = stable_hash({"base": ds.content_fingerprint, **fingerprint})
    return Dataset(info=replace(ds.info, name=f"{ds.name}~{suffix}"), samples=samples, splits=ds.splits,
                   label_names=ds.label_names, split_source=ds.split_source, content_fingerprint=fp,
                   skipped=ds.skipped, root=ds.root)


def corrupted_dataset(ds, corruption: str, severity: int, seed: int, max_side: int | None):
    """The dataset with every image replaced by its corrupted version (lazy), fingerprinted by the corruption."""
    from dermbench_plugins.tasks.robustness.corruptions import apply

    def image_for(s):
        return lambda: apply(s.load_image(), corruption, severity, seed, s.id, max_side)

    return _derived(ds, f"{corruption}@{severity}", image_for,
                    {"robustness": 1, "corruption": corruption, "severity": severity, "seed": seed,
                     "max_side": max_side})


class _Head:
    """A head fit once on clean training features and applied to many feature sets."""

    def __init__(self, kind: str, xtr, ytr, C: int, *, k: int, epochs: int, lr: float, batch_size: int, seed: int):
        import numpy as np

        self.kind, self.C, self.k = kind, C, k
        if kind == "knn":
            self.xtr, self.ytr = xtr, ytr
            return
        from dermbench_plugins.tasks.probe import train_linear

        self.mu, self.sd = xtr.mean(0, keepdims=True), xtr.std(0, keepdims=True) + 1e-6
        self.head = train_linear((xtr - self.mu) / self.sd, ytr, C, epochs=epochs, lr=lr, batch_size=batch_size,
                                 weight_decay=0.0, seed=seed)
        self._np = np

    def predict(self, x):
        import numpy as np

        if self.kind == "knn":
            from dermbench_plugins.tasks.retrieval import knn_predict

            return knn_predict(self.xtr, self.ytr, x, self.k, self.C)
        import torch

        with torch.no_grad():
            logits = self.head(torch.as_tensor((x - self.mu) / self.sd, dtype=torch.float32))
            scores = torch.softmax(logits.double(), dim=1).numpy()
        return scores, np.argmax(scores, axis=1)


def _api():
    """Scoring functions (score, paired_test, ...) from the public SDK."""
    import dermbench.api as api

    return api


class Robustness:
    info = INFO

    def __init__(self, corruptions="default", severities=(1, 3, 5), head="probe", metric="auroc_macro", k=5,
                 epochs=50, lr=5e-3, batch_size=256, max_side=512, train_split="train", test_split="test"):
        self.corruptions = parse_corruptions(corruptions)
        self.severities = parse_severities(severities)
        if head not in HEADS:
            raise DermbenchError(f"robustness.head={head!r} is not one of {', '.join(HEADS)}")
        if metric not in CURVE_METRICS:
            raise DermbenchError(f"robustness.metric={metric!r} is not one of {', '.join(CURVE_METRICS)}")
        self.head, self.metric, self.k = head, metric, int(k)
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.max_side = int(max_side) if max_side else None
        self.train_split, self.test_split = train_split, test_split

    def run(self, ctx) -> TaskOutput:
        import numpy as np

        train, test = ctx.split(self.train_split), ctx.split(self.test_split)
        ytr, yte = labelled(train), labelled(test)
        C = n_classes(test)
        check_train_classes(ytr, C, train)
        head = _Head(self.head, ctx.features(train), ytr, C, k=self.k, epochs=self.epochs, lr=self.lr,
                     batch_size=self.batch_size, seed=ctx.seed)
        if self.max_side:  # the clean reference goes through the same shrink as the corrupted images
            clean_ds = _derived(ctx.dataset, f"clean@{self.max_side}", lambda s: _shrunk(s, self.max_side),
                                {"robustness": 1, "shrink": self.max_side})
            x_clean = ctx.features(clean_ds.split(self.test_split))
        else:
            x_clean = ctx.features(test)
        sc0, yp0 = head.predict(x_clean)
        ids = test.ids
        clean = {"ids": ids, "y_true": yte, "scores": sc0, "y_pred": yp0}
        sapi = _api()
        m = self.metric
        h = test.hash
        clean_scored = sapi.score(clean, [m, "accuracy"], split_hash=h, n_boot=ctx.n_boot)
        v0 = clean_scored[m]["value"]
        grid: dict[str, dict[str, Any]] = {}
        correct = np.zeros(len(ids))
        agree = np.zeros(len(ids))
        n_cells = 0
        for c in self.corruptions:
            grid[c] = {}
            for s in self.severities:
                cds = corrupted_dataset(ctx.dataset, c, s, ctx.seed, self.max_side)
                x = ctx.features(cds.split(self.test_split))
                sc, yp = head.predict(x)
                pred = {"ids": ids, "y_true": yte, "scores": sc, "y_pred": yp}
                cell = sapi.score(pred, [m, "accuracy"], split_hash=h, n_boot=ctx.n_boot)
                same = (yp == yp0).astype(float)
                cons = sapi.score({"ids": ids, "agree": same}, ["mean:agree"], split_hash=h, n_boot=ctx.n_boot,
                                  strata=None)["mean:agree"]
                try:
                    drop = _plain(sapi.paired_test(clean, pred, m, split_hash=h, n_boot=ctx.n_boot))
                except DermbenchError as e:
                    drop = {"note": str(e)}
                v = cell[m]["value"]
                grid[c][str(s)] = {
                    m: cell[m], "accuracy": cell["accuracy"], "drop": drop, "consistency": cons,
                    "relative_drop": (v0 - v) / v0 if v is not None and v0 else None,
                }
                correct += (yp == yte)
                agree += same
                n_cells += 1
            rel = [g["relative_drop"] for g in grid[c].values() if g["relative_drop"] is not None]
            ctx.log(f"robustness {c}: {m} " + ", ".join(
                f"s{s}={_fmt(grid[c][str(s)][m]['value'])}" for s in self.severities) + f" (clean {_fmt(v0)})")
            grid[c]["mean_relative_drop"] = float(np.mean(rel)) if rel else None
        rels = [grid[c]["mean_relative_drop"] for c in grid if grid[c]["mean_relative_drop"] is not None]
        preds = dict(clean, corrupted_accuracy=correct / max(n_cells, 1), consistency=agree / max(n_cells, 1))
        arts = self._plot(ctx, grid, v0)
        extra = {"robustness": {
            "metric": m, "clean": clean_scored, "grid": grid, "severities": self.severities,
            "corruptions": self.corruptions, "head": self.head, "seed": ctx.seed, "max_side": self.max_side,
            "mean_relative_drop": float(np.mean(rels)) if rels else None,
            "definitions": {
                "drop": "paired bootstrap on identical resamples of the test split: diff = clean - corrupted",
                "relative_drop": "(clean - corrupted) / clean of the metric",
                "consistency": "fraction of test images whose corrupted prediction equals the clean prediction",
                "mean:corrupted_accuracy": "per image: fraction of its corrupted versions (all cells) classified "
                                           "correctly; averaged over images",
            },
        }}
        return TaskOutput(preds, list(CLASSIFICATION_METRICS) + list(ROBUST_METRICS), test, extra=extra,
                          artifacts=arts)

    def _plot(self, ctx, grid, v0) -> list[str]:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 4))
            xs = [0, *self.severities]
            for c in self.corruptions:
                ys = [v0] + [grid[c][str(s)][self.metric]["value"] for s in self.severities]
                ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=c)
            ax.set(xlabel="severity (0 = clean)", ylabel=self.metric, xticks=xs,
                   title=f"{getattr(ctx, 'model_name', ctx.model_info.name)} / {ctx.dataset.name}: robustness")
            ax.legend(fontsize=7, ncol=2)
            fig.tight_layout()
            path = ctx.out_dir / "robustness_curve.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)
            plt.close(fig)
            return [str(path)]
        except Exception as e:  # a plotting problem never loses the cell
            ctx.log(f"robustness curve not written: {type(e).__name__}: {e}")
            return []


def _shrunk(s, max_side):
    def load():
        from PIL import Image

        img = s.load_image()
        if min(img.size) > max_side:
            f = max_side / min(img.size)
            img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BILINEAR)
        return img

    return load


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items() if not isinstance(v, np.ndarray)}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


@hookimpl
def register_tasks(register):
    register(INFO, Robustness)

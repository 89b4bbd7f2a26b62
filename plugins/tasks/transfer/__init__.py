"""Cross-dataset transfer: a head fit on one dataset's training split, tested on another dataset's test split.

Why: a head trained at one clinic and used at another is the deployment question; in-distribution protocols
never ask it. Labels of both datasets go through the shared vocabulary (dermbench.vocabulary) and only the
classes both datasets have (and the source's training split holds) are kept, so "melanoma" means the same
thing on both sides. ``labels=malignant`` / ``labels=mel-vs-nev`` transfer on a binary axis instead.

The record's predictions are the transferred head's (source train -> target test). ``extra['transfer']`` holds,
for the probe and the kNN head: the transferred value, the in-domain value on the same target test samples
(a head fit on the target's own training split, same shared classes), the drop = in-domain - transferred with
a paired bootstrap CI and p-value on identical resamples of the target test split, and the source's own
in-domain value (source train -> source test) for reference. Features come from the feature store: every
split goes through the backbone once whatever the number of heads and datasets.
"""

from __future__ import annotations

from typing import Any

from dermbench import hookimpl
from dermbench.api import DermbenchError, Split, TaskInfo, TaskOutput

from dermbench_plugins.tasks._shared.classification import CLASSIFICATION_METRICS, labelled

OP_METRICS = ("sens@spec90", "sens@spec95", "spec@sens90", "spec@sens95", "auprc", "sens@thr", "spec@thr")
LABEL_MODES = ("vocab", "malignant", "mel-vs-nev")
HEADS = ("probe", "knn")

INFO = TaskInfo(
    name="transfer",
    description="head fit on source=<dataset> train split (probe and kNN), tested on the run's dataset over shared "
    "vocabulary classes; reports in-domain vs transferred value, the drop with a paired CI, operating points",
    requires=frozenset({"labels"}),
    capabilities=frozenset({"cls"}),
    metrics=CLASSIFICATION_METRICS + OP_METRICS,
    primary_metric="auroc_macro",
    defaults={"source": None, "head": "probe", "labels": "vocab", "k": 5, "epochs": 50, "lr": 5e-3,
              "batch_size": 256, "train_split": "train", "test_split": "test", "threshold_rule": "youden",
              "threshold_folds": 5, "min_train_per_class": 2},
    in_all=False,
)


def _api():
    """Scoring functions (score, paired_test, ...) from the public SDK."""
    import dermbench.api as api

    return api


def _relabel(dataset, mode: str) -> tuple[list[str], list[int | None], list[str | None]]:
    """(shared-space class names, new index per dataset class, malignancy axis per new class) for one dataset."""
    from dermbench.api import vocabulary_mapping, view_labels

    vocab = vocabulary_mapping(dataset.name)
    if vocab is None:
        raise DermbenchError(
            f"dataset {dataset.name!r} has no vocabulary mapping, so transfer cannot match its classes; "
            "its plugin must ship vocab/<file>.json (see dermbench.vocabulary)"
        )
    names = list(dataset.label_names or dataset.info.label_names)
    new, idx = view_labels(vocab, names, mode, dataset.name)
    axis: list[str | None] = []
    for j, nm in enumerate(new):
        olds = [names[i] for i, v in enumerate(idx) if v == j]
        axes = {vocab.lookup(o).axis for o in olds}
        axis.append(axes.pop() if len(axes) == 1 else "uncertain")
    if mode == "malignant":
        axis = ["benign", "malignant"]
    elif mode == "mel-vs-nev":
        axis = ["benign", "malignant"]
    return new, idx, axis


def _rows(split, idx: list[int | None], names: list[str], keep: list[str]):
    """Positions in the split whose class is among ``keep``, and their labels in ``keep`` order."""
    import numpy as np

    y = labelled(split)
    lab = [idx[c] if c < len(idx) else None for c in y]
    pos = [i for i, v in enumerate(lab) if v is not None and names[v] in keep]
    return np.array(pos, dtype=np.int64), np.array([keep.index(names[lab[i]]) for i in pos], dtype=np.int64)


class Transfer:
    info = INFO

    def __init__(self, source=None, head="probe", labels="vocab", k=5, epochs=50, lr=5e-3, batch_size=256,
                 train_split="train", test_split="test", threshold_rule="youden", threshold_folds=5,
                 min_train_per_class=2):
        from dermbench.api import THRESHOLD_RULES

        if not source:
            raise DermbenchError(
                "task 'transfer' needs a source dataset: --task-opt transfer.source=<dataset> (e.g. ham10000); "
                "the run's --dataset is the target"
            )
        if head not in HEADS:
            raise DermbenchError(f"transfer.head={head!r} is not one of {', '.join(HEADS)}")
        if labels not in LABEL_MODES:
            raise DermbenchError(f"transfer.labels={labels!r} is not one of {', '.join(LABEL_MODES)}")
        if threshold_rule not in THRESHOLD_RULES:
            raise DermbenchError(f"transfer.threshold_rule={threshold_rule!r} is not one of {', '.join(THRESHOLD_RULES)}")
        self.source, self.head, self.labels = str(source), head, labels
        self.k, self.epochs, self.lr, self.batch_size = int(k), int(epochs), float(lr), int(batch_size)
        self.train_split, self.test_split = train_split, test_split
        self.threshold_rule, self.threshold_folds = threshold_rule, int(threshold_folds)
        self.min_train_per_class = int(min_train_per_class)

    # ---------------------------------------------------------------- heads
    def _fit_predict(self, head: str, xtr, ytr, xte, C: int, seed: int):
        if head == "knn":
            from dermbench_plugins.tasks.retrieval import knn_predict

            return knn_predict(xtr, ytr, xte, self.k, C)
        from dermbench_plugins.tasks.probe import Probe

        return Probe(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size).fit_predict(xtr, ytr, xte, C, seed)

    # ---------------------------------------------------------------- run
    def run(self, ctx) -> TaskOutput:
        import numpy as np

        target = ctx.dataset
        if self.source == target.name:
            raise DermbenchError(
                f"transfer.source={self.source!r} is the run's --dataset too; transfer needs two datasets "
                "(use probe/retrieval for in-domain numbers)"
            )
        source = ctx.load_dataset(self.source)
        s_names, s_idx, _ = _relabel(source, self.labels)
        t_names, t_idx, t_axis = _relabel(target, self.labels)
        s_train, s_test = source.split(self.train_split), source.split(self.test_split)
        t_train, t_test = target.split(self.train_split), target.split(self.test_split)
        # shared classes: in both mappings, with enough source training samples, present in the target test split
        ys_tr = labelled(s_train)
        src_counts = {n: int(sum(1 for c in ys_tr if c < len(s_idx) and s_idx[c] is not None
                                 and s_names[s_idx[c]] == n)) for n in s_names}
        yt_te = labelled(t_test)
        tgt_present = {t_names[t_idx[c]] for c in yt_te if c < len(t_idx) and t_idx[c] is not None}
        shared = [n for n in t_names if n in s_names and src_counts.get(n, 0) >= self.min_train_per_class
                  and n in tgt_present]
        if len(shared) < 2:
            raise DermbenchError(
                f"source {self.source!r} and target {target.name!r} share fewer than two classes "
                f"(labels={self.labels}): source training classes {sorted(n for n, c in src_counts.items() if c)}, "
                f"target test classes {sorted(tgt_present)}, shared {shared}. Pick datasets with common diagnoses, "
                "or transfer on the malignancy axis: --task-opt transfer.labels=malignant"
            )
        C = len(shared)
        s_tr_pos, s_tr_y = _rows(s_train, s_idx, s_names, shared)
        s_te_pos, s_te_y = _rows(s_test, s_idx, s_names, shared)
        t_tr_pos, t_tr_y = _rows(t_train, t_idx, t_names, shared)
        t_te_pos, t_te_y = _rows(t_test, t_idx, t_names, shared)
        for nm, y in (("source training split", s_tr_y),):
            if len(np.unique(y)) < 2:
                raise DermbenchError(f"the {nm} of {self.source!r} holds a single shared class; need two")
        X_s_tr = ctx.features(s_train)[s_tr_pos]
        X_s_te = ctx.features(s_test)[s_te_pos]
        X_t_te = ctx.features(t_test)[t_te_pos]
        X_t_tr = ctx.features(t_train)[t_tr_pos] if len(t_tr_pos) else None
        ids = [t_test.ids[i] for i in t_te_pos]
        malignant = [j for j, n in enumerate(shared) if t_axis[t_names.index(n)] == "malignant"]
        benign = [j for j, n in enumerate(shared) if t_axis[t_names.index(n)] == "benign"]
        op_ok = bool(malignant) and bool(benign)
        op_y_t = np.where(np.isin(t_te_y, malignant), 1, np.where(np.isin(t_te_y, benign), 0, -1))
        sapi = _api()
        # the record's split: the target test split restricted to the shared classes (its own hash, which also
        # drives the resamples of every target-side number below, so they are paired with the record's metrics)
        rec_split = Split(t_test.dataset, f"{t_test.name}[{'+'.join(shared)}]",
                          tuple(t_test.indices[i] for i in t_te_pos))
        t_hash = rec_split.hash
        s_hash = f"{s_test.hash}:transfer:{'-'.join(shared)}"
        report: dict[str, Any] = {}
        main_pred: dict[str, Any] | None = None
        arts: list[str] = []
        for head in HEADS:
            sc, yp = self._fit_predict(head, X_s_tr, s_tr_y, X_t_te, C, ctx.seed)
            pred = {"ids": ids, "y_true": t_te_y, "scores": sc, "y_pred": yp}
            thr = None
            if op_ok:
                thr = self._threshold(head, X_s_tr, s_tr_y, malignant, benign, C, ctx.seed)
                self._add_op(pred, sc, op_y_t, malignant, thr)
            entry: dict[str, Any] = {"threshold": thr, "threshold_rule": self.threshold_rule}
            prim = "auroc_macro"
            entry["transferred"] = sapi.score(pred, [prim, "balanced_accuracy"], split_hash=t_hash, n_boot=ctx.n_boot)
            # source in-domain (source train -> source test), for reference
            if len(s_te_pos) and len(np.unique(s_te_y)) >= 2:
                sc_s, yp_s = self._fit_predict(head, X_s_tr, s_tr_y, X_s_te, C, ctx.seed)
                ps = {"ids": [s_test.ids[i] for i in s_te_pos], "y_true": s_te_y, "scores": sc_s, "y_pred": yp_s}
                entry["source_in_domain"] = sapi.score(ps, [prim, "balanced_accuracy"], split_hash=s_hash,
                                                       n_boot=ctx.n_boot)
            # target in-domain on the same target test samples (paired with the transferred head)
            if X_t_tr is not None and len(np.unique(t_tr_y)) >= 2:
                sc_t, yp_t = self._fit_predict(head, X_t_tr, t_tr_y, X_t_te, C, ctx.seed)
                pt = {"ids": ids, "y_true": t_te_y, "scores": sc_t, "y_pred": yp_t}
                entry["in_domain"] = sapi.score(pt, [prim, "balanced_accuracy"], split_hash=t_hash, n_boot=ctx.n_boot)
                drop = {}
                for m in (prim, "balanced_accuracy"):
                    try:
                        drop[m] = _jsonable(sapi.paired_test(pt, pred, m, split_hash=t_hash, n_boot=ctx.n_boot))
                    except DermbenchError as e:
                        drop[m] = {"note": str(e)}
                entry["drop"] = drop
            else:
                entry["in_domain"] = None
                entry["note"] = (f"target {target.name!r} training split holds fewer than two shared classes: "
                                 "no in-domain counterpart")
            report[head] = entry
            if head == self.head:
                main_pred = pred
                if op_ok:
                    arts += self._decision_curve(ctx, pred, head)
            ctx.log(_summary_line(head, entry))
        assert main_pred is not None
        extra = {
            "transfer": report, "source": self.source, "target": target.name, "labels": self.labels,
            "shared_classes": shared, "head": self.head,
            "n": {"source_train": int(len(s_tr_pos)), "source_test": int(len(s_te_pos)),
                  "target_train": int(len(t_tr_pos)), "target_test": int(len(t_te_pos))},
            "dropped_classes": {"source": sorted(set(s_names) - set(shared)), "target": sorted(set(t_names) - set(shared))},
            "operating_points": ("malignant axis: " + ", ".join(shared[j] for j in malignant) + " vs "
                                 + ", ".join(shared[j] for j in benign)) if op_ok else
                                "not defined: the shared classes are not both malignant and benign",
            "definitions": {
                "transferred": "head fit on the source training split, scored on the target test split",
                "in_domain": "the same head fit on the target training split, scored on the same target test samples",
                "drop": "paired bootstrap on identical target-test resamples: diff = in_domain - transferred",
                "source_in_domain": "head fit and scored on the source dataset (reference, not paired)",
            },
        }
        metrics = list(CLASSIFICATION_METRICS) + (list(OP_METRICS) if op_ok else [])
        return TaskOutput(main_pred, metrics, rec_split, extra=extra, artifacts=arts)

    def _threshold(self, head, X, y, malignant, benign, C, seed) -> float:
        """Threshold on out-of-fold source-training scores (never on memorised training predictions)."""
        import numpy as np

        from dermbench.api import choose_threshold, out_of_fold

        yb = np.where(np.isin(y, malignant), 1, np.where(np.isin(y, benign), 0, -1))
        keep = yb >= 0

        def fp(xtr, ytr, xte):
            if len(np.unique(ytr)) < 2:
                raise DermbenchError("a fold of the source training split holds one class")
            sc, _ = self._fit_predict(head, xtr, ytr, xte, C, seed)
            return sc[:, malignant].sum(axis=1)

        folds = max(2, min(self.threshold_folds, int(np.bincount(y).min()) if len(y) else 2))
        oof = out_of_fold(fp, X, y, folds=folds, seed=seed)
        return choose_threshold(yb[keep], oof[keep], self.threshold_rule,
                                where=f"the source training split of {self.source!r} (out-of-fold scores)")

    @staticmethod
    def _add_op(pred, scores, op_y, malignant, thr):
        from dermbench.api import add_operating_points

        add_operating_points(pred, op_y, scores[:, malignant].sum(axis=1), thr)

    def _decision_curve(self, ctx, pred, head) -> list[str]:
        from dermbench.api import decision_curve_plot

        try:
            title = f"{getattr(ctx, 'model_name', ctx.model_info.name)}: {self.source} -> {ctx.dataset.name} ({head})"
            return [decision_curve_plot(pred["op_y"], pred["op_score"], ctx.out_dir / "decision_curve.png", title)]
        except Exception as e:  # a plotting problem never loses the cell
            ctx.log(f"decision curve not written: {type(e).__name__}: {e}")
            return []


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()
            if not isinstance(v, np.ndarray)}


def _summary_line(head: str, e: dict[str, Any]) -> str:
    def v(d):
        return "n/a" if not d else f"{d['auroc_macro']['value']:.3f}" if d["auroc_macro"].get("value") is not None \
            else "undef"

    drop = (e.get("drop") or {}).get("auroc_macro") or {}
    d = drop.get("diff")
    lo, hi = drop.get("ci_low"), drop.get("ci_high")
    dtxt = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" if d is not None and lo is not None else "n/a"
    return (f"transfer {head}: AUROC transferred {v(e.get('transferred'))}, in-domain {v(e.get('in_domain'))}, "
            f"drop {dtxt}, source in-domain {v(e.get('source_in_domain'))}")


@hookimpl
def register_tasks(register):
    register(INFO, Transfer)

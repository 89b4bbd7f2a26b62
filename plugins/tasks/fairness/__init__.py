"""Fairness: wrap a task (probe, retrieval, segmentation, ...) and score it per skin type, sex, age, site.

The base task runs unchanged on the cell's cached features; this task adds one group label per test sample
(``predictions["group:<attribute>"]``) and scores, on the runner's bootstrap resamples, the gap (max - min),
worst-group value and equalized-odds difference per attribute (FairMedFM's vocabulary), so the leaderboard
shows them with CIs and compares models' gaps with paired tests. Per-group metrics with CIs, group sizes
("too small" below ``min_group_size``), TPR/FPR per group and permutation p-values of "no gap" go to ``extra``.
Statistics live in :mod:`.stats`.
"""

from __future__ import annotations

from typing import Any

from dermbench import hookimpl
from dermbench.api import DermbenchError, Sample, TaskInfo, TaskOutput

#: sensitive attributes a dataset may declare (DatasetInfo.fields); ``attributes=auto`` uses these
SENSITIVE = ("fitzpatrick", "monk", "sex", "age", "site")
CLS_GROUP_METRICS = ("auroc_macro", "f1_macro", "accuracy", "ece")
CLS_GAP_METRICS = ("auroc_macro", "ece")
CLS_WORST_METRICS = ("auroc_macro",)

INFO = TaskInfo(
    name="fairness",
    description=(
        "subgroup metrics of a base task (default probe) per Fitzpatrick type / Monk tone / sex / age bin / site "
        "and intersections: per-group CIs, gap (max-min), worst group, equalized odds, paired gap tests"
    ),
    requires=frozenset({"labels"}),
    requires_any=frozenset({"fitzpatrick", "monk", "sex", "age", "site"}),  # datasets without any are skipped
    capabilities=frozenset({"cls"}),
    metrics=("auroc_macro", "f1_macro", "accuracy", "balanced_accuracy", "ece"),
    primary_metric="auroc_macro",
    defaults={
        "base": "probe",
        "base_opts": "",
        "attributes": "auto",
        "intersections": "auto",
        "fitzpatrick": "types",
        "age_bins": "40,60",
        "min_group_size": 20,
        "group_metrics": "auto",
        "gap_metrics": "auto",
        "worst_metrics": "auto",
        "n_perm": 1000,
    },
    option_ranges={"min_group_size": (1, None), "n_perm": (0, None)},
)


# --------------------------------------------------------------------------------------------------
# Option parsing


def _csv(v: Any) -> list[str]:
    if isinstance(v, (list, tuple)):
        return [str(x).strip() for x in v if str(x).strip()]
    return [x.strip() for x in str(v).split(",") if x.strip()]


def parse_base_opts(text: Any) -> dict[str, Any]:
    """``"epochs=20,lr=0.01"`` (or ``;``-separated) -> {"epochs": 20, "lr": 0.01}; values parsed as JSON if possible."""
    import json

    if isinstance(text, dict):
        return dict(text)
    out: dict[str, Any] = {}
    for part in str(text or "").replace(";", ",").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise DermbenchError(f"fairness base_opts item {part!r} is not key=value (e.g. base_opts='epochs=20,k=10')")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = json.loads(v.strip())
        except json.JSONDecodeError:
            out[k.strip()] = v.strip()
    return out


def parse_age_bins(text: Any) -> list[float]:
    edges = []
    for x in _csv(text):
        try:
            edges.append(float(x))
        except ValueError:
            raise DermbenchError(
                f"fairness age_bins={text!r}: {x!r} is not a number; use ascending ages, e.g. '40,60'"
            ) from None
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise DermbenchError(f"fairness age_bins={text!r}: give one or more strictly ascending ages, e.g. '40,60'")
    return edges


def _fmt_age(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def age_bin(age: Any, edges: list[float]) -> str | None:
    """'<40', '40-<60', '>=60' for edges (40, 60): bins are [lower, upper)."""
    if age is None:
        return None
    try:
        a = float(age)
    except (TypeError, ValueError):
        return None
    if a != a:  # NaN
        return None
    if a < edges[0]:
        return f"<{_fmt_age(edges[0])}"
    for lo, hi in zip(edges, edges[1:]):
        if lo <= a < hi:
            return f"{_fmt_age(lo)}-<{_fmt_age(hi)}"
    return f">={_fmt_age(edges[-1])}"


_FST_GROUP = {1: "12", 2: "12", 3: "34", 4: "34", 5: "56", 6: "56"}


def _label(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def attribute_labels(samples: list[Sample], attribute: str, *, fitzpatrick: str = "types",
                     age_edges: list[float] | None = None) -> tuple[list[str | None], str]:
    """One group label per sample (None: unknown) and a note on how it was derived.

    ``fitzpatrick``: types 1-6, or the grouping 12/34/56 with ``fitzpatrick='grouped'`` (also used when a
    dataset only gives groups, like DDI). ``age``: bins from ``age_edges``. Other attributes: the meta value.
    """
    note = ""
    if attribute == "fitzpatrick":
        types = [s.meta.get("fitzpatrick") for s in samples]
        groups = [s.meta.get("fitzpatrick_group") or (_FST_GROUP.get(int(t)) if t is not None else None)
                  for s, t in zip(samples, types)]
        if fitzpatrick == "grouped":
            return [_label(g) for g in groups], "Fitzpatrick grouped I-II / III-IV / V-VI as 12 / 34 / 56"
        if all(t is None for t in types) and any(g is not None for g in groups):
            return [_label(g) for g in groups], "only Fitzpatrick groups (12/34/56) are given: grouped labels used"
        return [_label(t) for t in types], "Fitzpatrick type I-VI as 1-6"
    if attribute == "age":
        edges = age_edges or [40.0, 60.0]
        return [age_bin(s.meta.get("age"), edges) for s in samples], f"age bins [lower, upper) at {edges}"
    return [_label(s.meta.get(attribute)) for s in samples], note


def intersect(a: list[str | None], b: list[str | None]) -> list[str | None]:
    from dermbench_plugins.tasks.fairness.stats import SEP

    return [None if x is None or y is None else f"{x}{SEP}{y}" for x, y in zip(a, b)]


# --------------------------------------------------------------------------------------------------
# Task


class Fairness:
    info = INFO

    def __init__(self, base="probe", base_opts="", attributes="auto", intersections="auto", fitzpatrick="types",
                 age_bins="40,60", min_group_size=20, group_metrics="auto", gap_metrics="auto", worst_metrics="auto",
                 n_perm=1000):
        self.base = str(base)
        self.base_opts = parse_base_opts(base_opts)
        self.attributes = _csv(attributes)
        self.intersections = _csv(intersections)
        if fitzpatrick not in ("types", "grouped"):
            raise DermbenchError(f"fairness fitzpatrick={fitzpatrick!r}: use 'types' (I-VI) or 'grouped' (12/34/56)")
        self.fitzpatrick = fitzpatrick
        self.age_edges = parse_age_bins(age_bins)
        self.min_group_size = int(min_group_size)
        if self.min_group_size < 1:
            raise DermbenchError(f"fairness min_group_size={min_group_size}: use a positive number (default 20)")
        self.group_metrics = _csv(group_metrics)
        self.gap_metrics = _csv(gap_metrics)
        self.worst_metrics = _csv(worst_metrics)
        self.n_perm = int(n_perm)
        if self.base == "fairness":
            raise DermbenchError("fairness base=fairness: the base must be another task (probe, retrieval, ...)")

    # ---------------------------------------------------------------- attributes
    def _choose_attributes(self, ctx, test) -> tuple[dict[str, list[str | None]], dict[str, str], dict[str, str]]:
        ds = ctx.dataset
        fields = set(ds.info.fields)
        samples = test.samples
        meta_keys = sorted({k for s in samples for k, v in s.meta.items() if v is not None})
        auto = self.attributes in ([], ["auto"])
        wanted = [a for a in SENSITIVE if a in fields] if auto else self.attributes
        if not wanted:
            raise DermbenchError(
                f"dataset {ds.name!r} declares none of the sensitive attributes {', '.join(SENSITIVE)} "
                f"(its fields: {', '.join(sorted(fields))}; its samples' metadata: {', '.join(meta_keys) or 'none'}); "
                "the fairness task needs at least one -- pass attributes=<meta key> to use another metadata field"
            )
        labels: dict[str, list[str | None]] = {}
        notes: dict[str, str] = {}
        skipped: dict[str, str] = {}
        for a in wanted:
            if not auto and a not in SENSITIVE and a not in meta_keys:
                raise DermbenchError(
                    f"fairness attributes: {a!r} is not in the metadata of {ds.name!r} test samples; "
                    f"available: {', '.join(meta_keys) or 'none'}"
                )
            lab, note = attribute_labels(samples, a, fitzpatrick=self.fitzpatrick, age_edges=self.age_edges)
            if all(v is None for v in lab):
                skipped[a] = f"no {ds.name} test sample has a known {a}"
                continue
            labels[a], notes[a] = lab, note
        if not labels:
            raise DermbenchError(
                f"dataset {ds.name!r}: none of {', '.join(wanted)} is known for any test sample "
                f"({'; '.join(skipped.values())}); its samples' metadata has {', '.join(meta_keys) or 'nothing'}"
            )
        inter = self.intersections
        if inter in ([], ["auto"]):
            inter = ["fitzpatrick+sex"] if {"fitzpatrick", "sex"} <= set(labels) else []
        elif inter == ["none"]:
            inter = []
        for spec in inter:
            parts = [p.strip() for p in spec.split("+")]
            if len(parts) < 2:
                raise DermbenchError(f"fairness intersections item {spec!r}: join two or more attributes with '+'")
            missing = [p for p in parts if p not in labels]
            if missing:
                skipped[spec] = f"needs {', '.join(missing)}, not available here"
                continue
            lab = labels[parts[0]]
            for p in parts[1:]:
                lab = intersect(lab, labels[p])
            labels["+".join(parts)], notes["+".join(parts)] = lab, "intersection " + " x ".join(parts)
        return labels, notes, skipped

    # ---------------------------------------------------------------- run
    def _run_base(self, ctx) -> tuple[TaskOutput, TaskInfo]:
        from dermbench.api import run_task, task_info

        info = task_info(self.base)
        why = info.incompatibility(ctx.model_info, ctx.dataset.info)
        if why:
            raise DermbenchError(f"fairness base task {self.base!r} cannot run here: {why}")
        return run_task(self.base, ctx, self.base_opts), info

    def run(self, ctx) -> TaskOutput:
        from dermbench_plugins.tasks.fairness import stats as fs
        from dermbench import api

        base_out, base_info = self._run_base(ctx)
        test = base_out.split
        labels, notes, skipped = self._choose_attributes(ctx, test)
        preds = dict(base_out.predictions)
        if list(map(str, preds["ids"])) != list(test.ids):
            raise DermbenchError(f"base task {self.base!r} returned predictions not in test-split order")
        classification = "y_true" in preds and "scores" in preds
        if classification:
            group_metrics = self.group_metrics if self.group_metrics != ["auto"] else list(CLS_GROUP_METRICS)
            gap_metrics = self.gap_metrics if self.gap_metrics != ["auto"] else list(CLS_GAP_METRICS)
            worst_metrics = self.worst_metrics if self.worst_metrics != ["auto"] else list(CLS_WORST_METRICS)
            base_metrics = list(dict.fromkeys(list(base_out.metrics) + ["ece"]))
        else:
            per_sample = [m for m in base_out.metrics if not m.startswith("mean:")] or list(base_out.metrics)
            group_metrics = self.group_metrics if self.group_metrics != ["auto"] else per_sample
            gap_metrics = self.gap_metrics if self.gap_metrics != ["auto"] else per_sample[:1]
            worst_metrics = self.worst_metrics if self.worst_metrics != ["auto"] else per_sample[:1]
            base_metrics = list(base_out.metrics)
        group_metrics = list(dict.fromkeys(group_metrics + gap_metrics + worst_metrics))
        for m in group_metrics:
            api.get_metric(m)  # unknown names fail here, with the list of known ones
        for a, lab in labels.items():
            preds[fs.group_key(a)] = lab
        preds[fs.MIN_SIZE_KEY] = self.min_group_size

        n_boot, ci = _scoring_options(ctx)
        prepared = api.prepare(preds)
        strata = base_out.strata
        if isinstance(strata, str):
            strata = prepared.array(strata, "strata")
        report: dict[str, Any] = {}
        metrics = list(base_metrics)
        for a in labels:
            tab = fs.group_table(prepared, a, group_metrics, split_hash=test.hash, seed=ctx.seed, n_boot=n_boot,
                                 strata=strata, ci=ci, n_perm=self.n_perm, eod=classification)
            tab["derived"] = notes[a]
            report[a] = tab
            if len(tab["scored"]) < 2:
                skipped[a] = (f"{len(tab['scored'])} group(s) with >= {self.min_group_size} test samples "
                              f"(sizes {tab['groups']}); no gap")
                continue
            metrics += [fs.metric_name("gap", a, m) for m in gap_metrics]
            metrics += [fs.metric_name("worst", a, m) for m in worst_metrics]
            if classification:
                metrics.append(fs.metric_name("eod", a))
            gaps = ", ".join(f"{m} gap {v['value']:.3f} (p={v.get('p_value', float('nan')):.3g})"
                             for m, v in tab["gaps"].items() if v.get("value") is not None)
            ctx.log(f"fairness {a}: groups {tab['scored']}; {gaps}")
        _holm(report)
        extra = {
            "base": self.base,
            "base_params": {k: v for k, v in self.base_opts.items()},
            "base_extra": base_out.extra,
            "min_group_size": self.min_group_size,
            "n_boot": n_boot,
            "attributes": report,
            "skipped_attributes": skipped,
            "definitions": {
                "gap": "max - min over scored groups; bootstrap replicates on the runner's resamples (a max-min is "
                       "biased upward, so its CI can sit above the point value; use p_value / paired tests)",
                "worst": "min over groups (max for lower-is-better metrics such as ECE)",
                "eod": "equalized-odds difference: max(TPR gap, FPR gap); binary: positive class; multiclass: "
                       "macro mean over classes one-vs-rest",
                "p_value": "permutation test of group labels, H0: the metric does not depend on the group",
                "p_holm": "p_value Holm-adjusted over every gap test of this record (all attributes x metrics)",
            },
        }
        return TaskOutput(preds, metrics, test, extra=extra, artifacts=list(base_out.artifacts), strata=base_out.strata)


def _holm(report: dict[str, Any]) -> None:
    """Add ``p_holm`` to every gap: many attributes x metrics are tested at once, so control the family."""
    from dermbench import api

    entries = [g for tab in report.values() for g in tab.get("gaps", {}).values() if g.get("p_value") is not None]
    for g, p in zip(entries, api.correct([g["p_value"] for g in entries], "holm")):
        g["p_holm"] = p


def _scoring_options(ctx) -> tuple[int, str]:
    """The run's n_boot and CI method, so the per-group CIs use the record's resamples."""
    return int(ctx.n_boot), str(ctx.ci)


@hookimpl
def register_tasks(register):
    register(INFO, Fairness)


def _resolve_metric(name: str):
    """``gap:<metric>@<attr>``, ``worst:<metric>@<attr>``, ``eod@<attr>`` (see .stats)."""
    if not (name.startswith(("gap:", "worst:", "eod@")) and "@" in name):
        return None
    from dermbench_plugins.tasks.fairness.stats import fairness_metric

    return fairness_metric(name)


@hookimpl
def register_metrics(register):
    register(_resolve_metric)


@hookimpl
def register_report_sections(register):
    """Leaderboard plots: per-group metric curves of fairness records, one line per model."""

    def make(records, out_dir):
        from dermbench_plugins.tasks.fairness.plot import fairness_plot

        return fairness_plot(records, out_dir)

    register("fairness", make)

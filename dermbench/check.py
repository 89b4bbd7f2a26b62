"""``dermbench plugins check NAME``: the first command a plugin author runs, for a model, a task or a dataset.

* a **model** is loaded and run on a handful of dermsynth images, then compared with its own ``ModelInfo``;
* a **task** is run once on a small dermsynth with a random-init backbone, and its ``TaskOutput`` is checked
  the way the runner and the leaderboard will use it (prediction keys each metric needs, metric names,
  lengths equal to the split, ids in split order, no NaN, probabilities where ECE/Brier need them, scoring);
* a **dataset** is loaded (``--data-root`` when it reads files), counted, and its declared fields, masks and
  splits are checked against what the samples really carry.

Every check is a row ``{"check", "ok", "detail", "fix"}``: a failure says what to change. Plugin and task
exceptions are reported in one line; ``debug=True`` (``--debug`` or ``DERMBENCH_DEBUG=1``) keeps the full
traceback in ``result["tracebacks"]``. Nothing here raises for a plugin problem: it is reported.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from dermbench.api import CAPABILITIES, FIELDS, Backbone, DermbenchError

DEBUG_ENV = "DERMBENCH_DEBUG"
#: dataset field -> the ``Sample.meta`` key that carries it (the other fields are Sample attributes)
META_KEYS = {"fitzpatrick": "fitzpatrick", "monk": "monk", "sex": "sex", "age": "age", "site": "site",
             "groups": "group"}
#: the backbone a task is checked with when none is named: random init, so no download is ever needed
DEFAULT_TASK_MODEL = "random-vit"


def debug_enabled(flag: bool | None = None) -> bool:
    """``--debug`` wins; otherwise ``DERMBENCH_DEBUG=1`` (or true/yes) turns full tracebacks on."""
    if flag:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class _Report:
    """Collects check rows and tracebacks for one plugin object."""

    def __init__(self, kind: str, name: str, plugin: str, debug: bool) -> None:
        self.out: dict[str, Any] = {"kind": kind, "name": name, kind: name, "plugin": plugin, "checks": [],
                                    "ok": False, "tracebacks": []}
        self.debug = debug

    def check(self, what: str, ok: bool, detail: str = "", fix: str = "", warn: bool = False) -> bool:
        """``warn``: reported but never failing (e.g. an informative count)."""
        self.out["checks"].append({"check": what, "ok": bool(ok) or warn, "warn": bool(warn and not ok),
                                   "detail": detail, "fix": "" if ok else fix})
        return bool(ok)

    def error(self, what: str, e: BaseException, fix: str) -> None:
        """One line for the user; the traceback only when debugging (a DermbenchError is already a message)."""
        msg = str(e) if isinstance(e, DermbenchError) else f"{type(e).__name__}: {e}"
        if self.debug:
            self.out["tracebacks"].append(f"{what}:\n{traceback.format_exc()}")
        elif not isinstance(e, DermbenchError):
            fix = (fix + " " if fix else "") + f"(full traceback: --debug or {DEBUG_ENV}=1)"
        self.check(what, False, msg, fix)

    def done(self) -> dict[str, Any]:
        self.out["ok"] = all(c["ok"] for c in self.out["checks"])
        return self.out


def check(name: str, *, kind: str | None = None, debug: bool | None = None, **opts: Any) -> list[dict[str, Any]]:
    """Check every registered object called ``name`` (a model, a task and/or a dataset; ``kind`` picks one).

    ``opts`` go to the matching checker (``n_images``/``weights`` for models, ``model``/``dataset``/``n``/
    ``task_opts`` for tasks, ``data_root``/``dataset_opts`` for datasets); unknown names raise with the lists.
    """
    from dermbench.plugins import registry

    reg = registry()
    dbg = debug_enabled(debug)
    kinds = [k for k in ("model", "task", "dataset") if (kind in (None, k)) and name in getattr(reg, k + "s")]
    if not kinds:
        if kind is not None:
            getattr(reg, kind)(name)  # raises with the valid names
        raise DermbenchError(
            f"no model, task or dataset is called {name!r}. Models: {', '.join(sorted(reg.models))}; "
            f"tasks: {', '.join(sorted(reg.tasks))}; datasets: {', '.join(sorted(reg.datasets))}"
        )
    out = []
    for k in kinds:
        if k == "model":
            out.append(check_model(name, debug=dbg, **{o: opts[o] for o in ("n_images", "weights", "device")
                                                         if opts.get(o) is not None}))
        elif k == "task":
            out.append(check_task(name, debug=dbg, **{o: opts[o] for o in ("model", "dataset", "n", "task_opts",
                                                                            "device", "weights", "data_root",
                                                                            "dataset_opts") if opts.get(o) is not None}))
        else:
            out.append(check_dataset(name, debug=dbg, **{o: opts[o] for o in ("data_root", "dataset_opts", "n_images")
                                                          if opts.get(o) is not None}))
    return out


# --------------------------------------------------------------------------------------------------
# Models


def _images(info: Any, n: int) -> tuple[list[Any], str]:
    """n dermsynth images when the dermsynth plugin is loaded, else random RGB images (said so)."""
    from PIL import Image

    try:
        from dermbench.plugins import registry

        entry = registry().dataset("dermsynth")
        ds = entry.obj(None, n=max(n, 12), size=max(info.image_size, 64))
        return [s.load_image() for s in ds.samples[:n]], "dermsynth"
    except Exception:  # no dermsynth plugin (DERMBENCH_LOAD_PLUGINS, third-party install): random images
        import numpy as np

        rng = np.random.default_rng(0)
        size = info.image_size
        imgs = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
        return imgs, "random"


def check_model(name: str, n_images: int = 4, weights: str | None = None, device: str = "cpu",
                debug: bool | None = None, **load_opts: Any) -> dict[str, Any]:
    """Load ``name``, run embed/patch_tokens/text on ``n_images`` images and compare with its ModelInfo.

    Returns ``{"model", "ok", "checks": [{"check", "ok", "detail", "fix"}], "embed_shape", "patch_shapes",
    "img_per_s", "load_s", "weights_id", "images"}``; never raises for a model problem (it is reported).
    """
    import torch

    from dermbench.plugins import registry

    entry = registry().model(name)  # unknown names raise with the valid list
    info = entry.info
    r = _Report("model", name, entry.plugin, debug_enabled(debug))
    out = r.out
    check = r.check

    check("metadata: license declared", info.license not in ("", "unknown"), info.license,
          "set ModelInfo.license to the licence of the weights (e.g. 'Apache-2.0', 'CC-BY-NC-4.0')")
    check("metadata: embed_note says which feature embed returns", bool(info.embed_note), info.embed_note[:80],
          "set ModelInfo.embed_note (e.g. 'CLS token after the final norm')")
    check("metadata: citation", bool(info.citation) or info.random_init, info.citation[:80],
          "set ModelInfo.citation (one line)")
    bad = sorted(set(info.capabilities) - set(CAPABILITIES))
    check("metadata: capabilities known", not bad, ",".join(sorted(info.capabilities)),
          f"unknown {bad}; use only {', '.join(CAPABILITIES)}")

    t0 = time.perf_counter()
    try:
        bb = entry.obj(weights=weights, device=device, **load_opts)
    except Exception as e:  # a plugin bug or missing weights: report it, do not crash the CLI
        r.error("load", e, "" if isinstance(e, DermbenchError) else "fix the model loader")
        return r.done()
    out["load_s"] = round(time.perf_counter() - t0, 3)
    check("load", True, f"{out['load_s']} s")
    out["weights_id"] = getattr(bb, "weights_id", "")
    check("Backbone protocol (info, weights_id, transform, embed, patch_tokens, to)", isinstance(bb, Backbone),
          type(bb).__name__, "give the loaded object all of these attributes (docs/reference.md, Backbone)")
    check("weights_id set", bool(out["weights_id"]), out["weights_id"],
          "set weights_id to the weights' content hash, 'random:<seed>' or a version string")
    check("backbone.info is the registered ModelInfo", getattr(bb, "info", None) is not None
          and bb.info.name == name and bb.info.embed_dim == info.embed_dim, "",
          "set backbone.info to the ModelInfo passed to register()")

    imgs, source = _images(info, n_images)
    out["images"] = source
    try:
        x = torch.stack([bb.transform(im) for im in imgs])
    except Exception as e:
        r.error("transform", e, "transform must map a PIL RGB image to a (3, S, S) tensor")
        return r.done()
    check("transform gives (3, S, S) at the native size", tuple(x.shape[1:]) == (3, info.image_size, info.image_size),
          f"{tuple(x.shape[1:])} vs native {info.image_size}",
          "make Preprocess.crop equal the model's input size (transform = info.preprocess.build())")

    try:
        e = bb.embed(x)  # first call also warms up lazy initialisation: time the second one
        t1 = time.perf_counter()
        e2 = bb.embed(x)
        dt = time.perf_counter() - t1
    except Exception as ex:
        r.error("embed", ex, "embed must map (N, 3, S, S) to (N, embed_dim)")
        return r.done()
    out["embed_shape"] = list(e.shape)
    out["img_per_s"] = round(len(imgs) / dt, 2) if dt > 0 else math.inf
    check("embed shape == (N, ModelInfo.embed_dim)", tuple(e.shape) == (len(imgs), info.embed_dim),
          f"{tuple(e.shape)} vs (N, {info.embed_dim})", "set ModelInfo.embed_dim to the width embed returns")
    check("embed finite", bool(torch.isfinite(e).all()), "", "embed returns NaN/inf: check the weights and dtype")
    check("embed deterministic", bool(torch.equal(e, e2)), "",
          "put the model in eval mode and run embed under torch.inference_mode()")
    check("embed distinguishes images", len(imgs) < 2 or not torch.allclose(e[0], e[1]), "",
          "embed returns the same vector for different images: wrong layer or collapsed weights")

    if "patch_tokens" in info.capabilities:
        try:
            maps = bb.patch_tokens(x[:1], [0, -1])
            out["patch_shapes"] = [list(m.shape) for m in maps]
            last = maps[-1]
            ok = last.ndim == 4 and last.shape[0] == 1
            detail = f"{tuple(last.shape)}"
            if ok and info.patch_size:
                g = info.image_size // info.patch_size
                ok = tuple(last.shape[2:]) == (g, g)
                detail += f" vs grid {g}x{g} (size {info.image_size} / patch {info.patch_size})"
            check("patch_tokens -> (N, D, h, w)", ok, detail,
                  "return one (N, D, h, w) map per requested layer; set ModelInfo.patch_size to the token stride")
        except Exception as ex:
            r.error("patch_tokens", ex, "implement patch_tokens or drop 'patch_tokens' from capabilities")
    else:
        check("no patch_tokens capability: segmentation will skip this model", True)

    if "text" in info.capabilities:
        try:
            t = bb.encode_text(["a dermoscopic image of a melanoma", "a benign naevus"])  # type: ignore[attr-defined]
            zi = bb.embed_image_for_text(x)  # type: ignore[attr-defined]
            check("text: encode_text and embed_image_for_text share a space", t.shape[1] == zi.shape[1],
                  f"text {tuple(t.shape)} image {tuple(zi.shape)}", "project both towers into the shared space")
        except Exception as ex:
            r.error("text tower", ex, "implement encode_text and embed_image_for_text or drop 'text'")
    return r.done()


# --------------------------------------------------------------------------------------------------
# Tasks


def _close(word: str, vocab: Any) -> str:
    near = difflib.get_close_matches(word, list(vocab), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _metric(name: str) -> tuple[Any, str]:
    """(Metric, "") or (None, why) for a metric name, through the public registry of dermbench.stats."""
    from dermbench import stats

    try:
        return stats.get_metric(name), ""
    except DermbenchError as e:
        return None, str(e)


def _as_array(v: Any) -> Any:
    import numpy as np

    try:
        return np.asarray(v)
    except Exception:  # ragged lists etc.
        return None


def check_task_info(info: Any, cls: Any, r: _Report) -> None:
    """Metadata checks that need no run: vocabularies, metric names, options."""
    import inspect

    bad = sorted(set(info.requires) - set(FIELDS))
    r.check("metadata: requires are dataset fields", not bad, ",".join(sorted(info.requires)) or "-",
            "; ".join(f"{b!r} is no field{_close(b, FIELDS)}" for b in bad) + f". Fields: {', '.join(FIELDS)}")
    bad = sorted(set(info.requires_any) - set(FIELDS))
    r.check("metadata: requires_any are dataset fields", not bad, ",".join(sorted(info.requires_any)) or "-",
            "; ".join(f"{b!r} is no field{_close(b, FIELDS)}" for b in bad) + f". Fields: {', '.join(FIELDS)}")
    bad = sorted(set(info.capabilities) - set(CAPABILITIES))
    r.check("metadata: capabilities known", not bad, ",".join(sorted(info.capabilities)) or "-",
            f"unknown {bad}; use only {', '.join(CAPABILITIES)}")
    r.check("metadata: description", bool(info.description), info.description[:60],
            "set TaskInfo.description (one line: protocol and what scores mean)")
    unknown = {m: why for m in info.metrics for _, why in [_metric(m)] if why}
    r.check("metadata: metrics declared and known", bool(info.metrics) and not unknown, ",".join(info.metrics) or "-",
            ("; ".join(unknown.values()) or "declare TaskInfo.metrics (names in docs/reference.md)")
            + " (a task's own metric needs a register_metrics resolver)" * bool(unknown))
    r.check("metadata: primary_metric is one of metrics", info.primary_metric in info.metrics, info.primary_metric,
            "set TaskInfo.primary_metric to the metric the leaderboard ranks by (one of TaskInfo.metrics)")
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        ps = sig.parameters.values()
        named = {p.name for p in ps if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and not p.name.startswith("_")}
        takes_any = any(p.kind == p.VAR_KEYWORD for p in ps)
        missing = sorted(named - set(info.defaults))
        extra = sorted(set(info.defaults) - named) if not takes_any else []
        r.check("options: every TaskInfo.defaults key is a constructor parameter", not extra,
                ", ".join(f"{k}={v!r}" for k, v in sorted(info.defaults.items())) or "(none)",
                f"the constructor takes no {extra}: add them as parameters or drop them from TaskInfo.defaults")
        r.check("options: every constructor parameter is in TaskInfo.defaults", not missing,
                f"not settable with --task-opt: {missing}" if missing else "",
                f"add {missing} to TaskInfo.defaults (--task-opt can only set declared options)", warn=True)
    r.check("task class has run(ctx)", callable(getattr(cls, "run", None)), "", "define run(self, ctx) -> TaskOutput")


def _pick_model(info: Any, reg: Any) -> str | None:
    """random-vit when it fits, else any random-init model with the task's capabilities."""
    fits = [n for n, e in sorted(reg.models.items())
            if e.info.random_init and set(info.capabilities) <= set(e.info.capabilities)]
    return DEFAULT_TASK_MODEL if DEFAULT_TASK_MODEL in fits else (fits[0] if fits else None)


def check_task_output(output: Any, dataset: Any, info: Any, r: _Report, out_dir: Path, n_boot: int = 50) -> None:
    """What the runner and leaderboard rely on in a TaskOutput; one row per property."""
    import numpy as np

    from dermbench.api import Split, TaskOutput

    if not r.check("returns a TaskOutput", isinstance(output, TaskOutput), type(output).__name__,
                   "return dermbench.api.TaskOutput(predictions=..., metrics=[...], split=<the scored Split>)"):
        return
    split = output.split
    if not r.check("output.split is a Split of the dataset", isinstance(split, Split) and split.dataset is dataset,
                   type(split).__name__, "pass the Split you predicted on (ctx.split('test')), not its name"):
        return
    n = len(split)
    preds = output.predictions
    if not r.check("predictions is a dict with 'ids'", isinstance(preds, dict) and "ids" in preds,
                   type(preds).__name__, "predictions = {'ids': split.ids, ...}"):
        return
    ids = list(preds["ids"])
    r.check("predictions['ids'] == split.ids (same samples, same order)", ids == split.ids,
            f"{len(ids)} ids, split {split.name} has {n}",
            "use split.ids and keep every other array in the same order")
    metrics = list(output.metrics)
    known, needs_missing, scored_keys = [], [], set()
    unknown = {}
    for m in metrics:
        met, why = _metric(m)
        if met is None:
            unknown[m] = why
            continue
        known.append(m)
        scored_keys |= set(met.needs)
        needs_missing += [f"{m} needs predictions[{k!r}]" for k in met.needs if k not in preds]
    lengths = {}
    nonfinite = []
    for k, v in preds.items():
        a = _as_array(v)
        if a is None or a.ndim == 0:  # a scalar a metric resolver reads (e.g. a minimum group size)
            continue
        lengths[k] = a.shape[0]
        # only what is scored must be finite (a group label may be NaN for an unknown group)
        if k in scored_keys and a.dtype.kind in "fc" and not np.isfinite(a).all():
            nonfinite.append(f"{k} ({int((~np.isfinite(a)).sum())} values)")
    wrong = {k: v for k, v in lengths.items() if v != n}
    r.check(f"every prediction array has len(split) = {n} rows", not wrong, ", ".join(f"{k}:{v}" for k, v in
            lengths.items()), f"make {sorted(wrong)} per-sample arrays of length {n}, in split order")
    r.check("no NaN/inf in the scored predictions", not nonfinite, ", ".join(nonfinite),
            "replace undefined values (e.g. an empty mask's Dice) by a defined value, or drop the sample")
    r.check("output metrics are known", bool(metrics) and not unknown, ",".join(metrics) or "-",
            "; ".join(unknown.values()) or "list metric names in TaskOutput.metrics")
    r.check("prediction keys each metric needs are present", not needs_missing, ", ".join(sorted(preds)),
            "; ".join(needs_missing))
    r.check("primary_metric is scored", info.primary_metric in metrics, info.primary_metric,
            f"add {info.primary_metric!r} to TaskOutput.metrics (the leaderboard ranks by it)")
    if "y_true" in preds and split.dataset.samples and all(s.label is not None for s in split.samples):
        yt = _as_array(preds["y_true"])
        r.check("y_true == the split's labels", yt is not None and yt.shape == (n,) and
                np.array_equal(yt.astype(np.int64), split.labels), "",
                "set y_true = split.labels (same order as split.ids)")
    if "scores" in preds and {"ece", "brier"} & set(metrics):
        s = _as_array(preds["scores"])
        ok = s is not None and s.ndim == 2 and s.shape[0] == n and bool(np.isfinite(s).all())
        ok = ok and bool((s >= -1e-6).all()) and bool(np.allclose(s.sum(axis=1), 1.0, atol=1e-4))
        C = len(dataset.label_names or dataset.info.label_names)
        ok = ok and (not C or s.shape[1] == C)
        r.check("scores are (n, C) probabilities (ECE/Brier need them)", ok,
                f"shape {None if s is None else s.shape}, C={C}", "softmax the scores: rows >= 0 summing to 1")
    try:
        json.dumps(_plain(output.extra), allow_nan=True)
        r.check("extra is JSON-able", True)
    except Exception as e:
        r.check("extra is JSON-able", False, f"{type(e).__name__}: {e}",
                "keep TaskOutput.extra to dicts, lists, numbers, strings (numpy arrays are converted)")
    # absolute, or relative to the record's folder (the parent of ctx.out_dir) as the runner stores them
    missing_art = [a for a in output.artifacts if not any(p.exists() for p in (Path(a), out_dir.parent / a))]
    r.check("artifacts exist", not missing_art, f"{len(output.artifacts)} file(s)",
            f"write {missing_art} under ctx.out_dir before returning them (absolute, or relative to its parent)")
    from dermbench import api

    validate = getattr(api, "validate_task_output", None)
    if validate is not None:  # the runner's own validation, where the SDK provides it
        try:
            validate(output, info.name)
            r.check("dermbench.api.validate_task_output", True)
        except Exception as e:
            r.error("dermbench.api.validate_task_output", e, "")
    if known and not needs_missing and not wrong and not nonfinite:
        from dermbench import stats

        try:
            scored = stats.score(preds, known, split_hash=split.hash, n_boot=n_boot,
                                 strata=output.strata if output.strata is not None else "auto")
            vals = {m: d.get("value") for m, d in scored.items()}
            undefined = [m for m, v in vals.items() if v is None or not math.isfinite(v)]
            r.out["metrics"] = {m: (round(v, 4) if isinstance(v, float) else v) for m, v in vals.items()}
            r.check(f"scored with {n_boot} bootstrap replicates", not undefined,
                    ", ".join(f"{m}={_fmt(v)}" for m, v in vals.items()),
                    f"{undefined} undefined on this split (e.g. a class absent): check the predictions")
        except Exception as e:
            r.error("scoring (dermbench.stats.score)", e, "")


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def check_task(name: str, model: str | None = None, dataset: str = "dermsynth", n: int = 48,
               task_opts: dict[str, Any] | None = None, device: str = "cpu", weights: str | None = None,
               data_root: str | Path | None = None, dataset_opts: dict[str, Any] | None = None,
               debug: bool | None = None, n_boot: int = 50) -> dict[str, Any]:
    """Run task ``name`` once on ``n`` dermsynth images with a random-init backbone and check its output.

    Features go through the normal feature cache (``DERMBENCH_CACHE``); artifacts go to a temporary
    folder. ``model``/``dataset`` pick another cell (e.g. a text model for zero-shot tasks).
    """
    from dermbench import runner as rn
    from dermbench.plugins import registry

    reg = registry()
    entry = reg.task(name)
    info, cls = entry.info, entry.obj
    r = _Report("task", name, entry.plugin, debug_enabled(debug))
    check_task_info(info, cls, r)

    model = model or _pick_model(info, reg)
    if not r.check("a backbone to run it with", model is not None, model or "",
                   f"no random-init model has {sorted(info.capabilities)}: pass --model NAME"):
        return r.done()
    r.out["model"], r.out["dataset"] = model, dataset
    try:
        minfo, dinfo = reg.model(model).info, reg.dataset(dataset).info
    except DermbenchError as e:
        r.error("model and dataset exist", e, "")
        return r.done()
    why = info.incompatibility(minfo, dinfo)
    if not r.check(f"runs on {model} / {dataset}", why is None, why or "",
                   "pass --model / --dataset that fit the task's requires and capabilities"):
        return r.done()
    try:  # the runner's own option handling: defaults, typed --task-opt values, declared ranges
        params = rn.resolve_task_params(info, dict(task_opts or {}))
        r.check("task options valid", True, ", ".join(f"{k}={v!r}" for k, v in (task_opts or {}).items()))
    except Exception as e:
        r.error("task options valid", e, "")
        return r.done()
    try:
        task = cls(**params)
        r.check("constructs from TaskInfo.defaults", True)
    except Exception as e:
        r.error("constructs from TaskInfo.defaults", e, "TaskClass(**TaskInfo.defaults) must work")
        return r.done()

    with tempfile.TemporaryDirectory(prefix="dermbench-check-") as tmp:
        dopts = {"n": n, **(dataset_opts or {})} if dataset.startswith("dermsynth") else dict(dataset_opts or {})
        opts = rn.RunOptions(out=Path(tmp) / "results", device=device, n_boot=n_boot, dataset_opts=dopts,
                             data_root=Path(data_root) if data_root is not None else None,
                             weights={model: weights} if weights else {})
        runner = rn.Runner(opts, quiet=True)
        try:
            ds = runner.dataset(dataset)
        except Exception as e:
            r.error(f"load {dataset}", e, "")
            return r.done()
        r.out["split_sizes"] = {k: len(v) for k, v in ds.splits.items()}
        out_dir = Path(tmp) / "artifacts"
        try:
            ctx = rn.CellContext(runner, model, ds, 0, params, out_dir)
            t0 = time.perf_counter()
            output = task.run(ctx)
            r.out["run_s"] = round(time.perf_counter() - t0, 2)
            r.check(f"run on {len(ds)} {dataset} images", True, f"{r.out['run_s']} s")
        except Exception as e:
            r.error(f"run on {len(ds)} {dataset} images", e,
                    "" if isinstance(e, DermbenchError) else "fix the task's run(ctx)")
            return r.done()
        check_task_output(output, ds, info, r, out_dir, n_boot=n_boot)
        r.out["split"] = getattr(getattr(output, "split", None), "name", None)
    return r.done()


# --------------------------------------------------------------------------------------------------
# Datasets


def check_dataset(name: str, data_root: str | Path | None = None, dataset_opts: dict[str, Any] | None = None,
                  n_images: int = 4, debug: bool | None = None) -> dict[str, Any]:
    """Load dataset ``name`` and check it against its DatasetInfo: counts, fields, masks, splits."""
    import numpy as np

    from dermbench.api import Dataset
    from dermbench.plugins import registry

    entry = registry().dataset(name)
    info = entry.info
    r = _Report("dataset", name, entry.plugin, debug_enabled(debug))
    bad = sorted(set(info.fields) - set(FIELDS))
    r.check("metadata: fields known", not bad, ",".join(sorted(info.fields)),
            "; ".join(f"{b!r} is no field{_close(b, FIELDS)}" for b in bad) + f". Fields: {', '.join(FIELDS)}")
    r.check("metadata: license declared", info.license not in ("", "unknown"), info.license,
            "set DatasetInfo.license (e.g. 'CC-BY-NC-4.0')")
    r.check("metadata: how_to_obtain", bool(info.how_to_obtain) or not info.needs_root, info.how_to_obtain[:60],
            "set DatasetInfo.how_to_obtain: where to download it and which folder --data-root points at")
    if info.needs_root and data_root is None:
        r.check("--data-root given", False, "this dataset reads files from disk",
                f"pass --data-root PATH. {info.how_to_obtain}".strip())
        return r.done()
    kwargs = dict(dataset_opts or {})
    kwargs.setdefault("split_seed", 0)
    t0 = time.perf_counter()
    try:
        ds = entry.obj(str(data_root) if data_root is not None else None, **kwargs)
    except Exception as e:
        r.error("load", e, "" if isinstance(e, DermbenchError) else "fix the dataset loader")
        return r.done()
    r.out["load_s"] = round(time.perf_counter() - t0, 2)
    if not r.check("loader returns a Dataset", isinstance(ds, Dataset), type(ds).__name__,
                   "return dermbench.api.Dataset(info, samples, splits, ...) (or build_dataset(...))"):
        return r.done()
    r.check("load", True, f"{r.out['load_s']} s")
    r.check("Dataset.info.name is the registered name", ds.info.name == name, ds.info.name,
            "return the DatasetInfo passed to register() (or dataclasses.replace of it)")
    n = len(ds.samples)
    r.out["n"], r.out["skipped"] = n, dict(ds.skipped)
    r.check("samples", n > 0, f"{n} samples" + (f", skipped {ds.skipped}" if ds.skipped else ""),
            "no sample loaded: check --data-root and the layout in how_to_obtain")
    if n == 0:
        return r.done()
    ids = [s.id for s in ds.samples]
    dup = len(ids) - len(set(ids))
    r.check("sample ids unique", dup == 0, f"{dup} duplicate(s)" if dup else "", "give every sample its own id")
    fields = set(ds.info.fields)
    if "labels" in fields:
        names = list(ds.label_names or ds.info.label_names)
        labels = [s.label for s in ds.samples]
        bad_l = [s.id for s, y in zip(ds.samples, labels) if not (isinstance(y, (int, np.integer)) and
                                                                    0 <= int(y) < len(names))]
        r.check("labels: every sample has an int label in [0, len(label_names))", bool(names) and not bad_l,
                f"{len(names)} classes" + (f"; bad: {bad_l[:3]}" if bad_l else ""),
                "set Dataset.label_names and give each sample label = its class index")
        counts = np.bincount([int(y) for y in labels if isinstance(y, (int, np.integer)) and y >= 0],
                             minlength=len(names))
        r.out["class_counts"] = {str(names[i]) if i < len(names) else str(i): int(c) for i, c in enumerate(counts)}
    if "masks" in fields:
        no_mask = [s.id for s in ds.samples if s.mask is None]
        r.check("masks: every sample has one", not no_mask, f"{len(no_mask)} without" if no_mask else "",
                "skip samples without a mask, or drop 'masks' from the fields")
        bad_m = []
        for s in [s for s in ds.samples if s.mask is not None][:n_images]:
            try:
                m = s.load_mask()
                w, h = s.load_image().size
                if m.shape != (h, w):
                    bad_m.append(f"{s.id}: mask {m.shape[1]}x{m.shape[0]} vs image {w}x{h}")
                elif not m.any():
                    bad_m.append(f"{s.id}: empty mask")
            except Exception as e:
                bad_m.append(f"{s.id}: {e}")
        r.check(f"masks: first {n_images} readable, binary, image-sized, non-empty", not bad_m, "; ".join(bad_m[:3]),
                "masks must be single-channel {0,1} or {0,255} images of the image's size")
    if "captions" in fields:
        no_cap = [s.id for s in ds.samples if not (isinstance(s.caption, str) and s.caption.strip())]
        r.check("captions: every sample has one", not no_cap, f"{len(no_cap)} without" if no_cap else "",
                "skip samples without a caption, or drop 'captions' from the fields")
    for f, key in META_KEYS.items():
        if f in fields:
            have = sum(s.meta.get(key) is not None for s in ds.samples)
            r.check(f"{f}: samples carry meta[{key!r}]", have > 0, f"{have}/{n}",
                    f"put the value in Sample.meta[{key!r}] or drop {f!r} from the fields")
    bad_i = []
    for s in ds.samples[:n_images]:
        try:
            s.load_image()
        except Exception as e:
            bad_i.append(f"{s.id}: {e}")
    r.check(f"images: first {min(n_images, n)} readable", not bad_i, "; ".join(bad_i[:3]),
            "check the image paths (or pass --skip-bad-images when loading)")
    sizes = {k: len(v) for k, v in ds.splits.items()}
    r.out["splits"] = sizes
    r.check("splits: at least one, none empty", bool(sizes) and all(sizes.values()), str(sizes),
            "return splits={'train': [...], 'test': [...]} with indices into samples")
    out_of_range = {k for k, v in ds.splits.items() if any(not 0 <= i < n for i in v)}
    r.check("splits: indices within samples", not out_of_range, ",".join(sorted(out_of_range)),
            "split indices are positions in Dataset.samples")
    seen: dict[int, str] = {}
    overlap = []
    for k, v in ds.splits.items():
        for i in v:
            if i in seen and seen[i] != k:
                overlap.append(f"{ids[i] if 0 <= i < n else i} in {seen[i]} and {k}")
            seen.setdefault(i, k)
        if len(set(v)) < len(v):
            overlap.append(f"{k} repeats samples")
    r.check("splits: disjoint", not overlap, "; ".join(overlap[:3]), "put each sample in exactly one split")
    r.check("splits: 'train' and 'test' (every first-party task's defaults)", {"train", "test"} <= set(sizes),
            ",".join(sizes), "name the splits train and test, or tell users to set --task-opt X.train_split=...",
            warn=True)
    if "labels" in fields and {"train", "test"} <= set(sizes):
        tr = {ds.samples[i].label for i in ds.splits["train"]}
        te = {ds.samples[i].label for i in ds.splits["test"]}
        r.check("splits: every test class appears in train", te <= tr, f"absent from train: {sorted(te - tr)}" * (not te <= tr),
                "a classifier cannot learn a class it never sees: rebalance the split", warn=True)
    try:
        r.out["split_hashes"] = {k: ds.split(k).hash for k in ds.splits}
    except Exception as e:
        r.error("split hashes", e, "")
    return r.done()


# --------------------------------------------------------------------------------------------------
# Rendering


def format_report(result: dict[str, Any]) -> str:
    """Plain-text rendering (the CLI renders a table instead)."""
    kind = result.get("kind", "model")
    name = result.get("name", result.get(kind))
    lines = [f"{kind} {name} ({result.get('plugin', '?')}): {'OK' if result['ok'] else 'FAILED'}"]
    for c in result["checks"]:
        tag = "FAIL" if not c["ok"] else ("warn" if c.get("warn") else "ok")
        lines.append(f"  [{tag}] {c['check']}" + (f": {c['detail']}" if c["detail"] else "")
                     + (f" -> fix: {c['fix']}" if c.get("fix") else ""))
    for k in _MEASURES:
        if k in result and k != kind:
            lines.append(f"  {k}: {result[k]}")
    return "\n".join(lines)


_MEASURES = ("images", "embed_shape", "patch_shapes", "img_per_s", "load_s", "weights_id", "model", "dataset",
             "split_sizes", "run_s", "metrics", "n", "skipped", "class_counts", "splits")


def report_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """One table row per check (with the fix for each failure), then the measurements."""
    rows = []
    for c in result["checks"]:
        status = "FAIL" if not c["ok"] else ("warn" if c.get("warn") else "ok")
        rows.append({"check": c["check"], "result": status + (f": {c['detail']}" if c["detail"] else ""),
                     "fix": c.get("fix", "")})
    for k in _MEASURES:
        if k in result and k != result.get("kind"):
            rows.append({"check": k, "result": str(result[k]), "fix": ""})
    rows.append({"check": "overall", "result": "OK" if result["ok"] else "FAILED", "fix": ""})
    if not any(r["fix"] for r in rows):  # all passed: no empty column
        for r in rows:
            del r["fix"]
    return rows

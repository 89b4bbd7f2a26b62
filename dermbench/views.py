"""Derived dataset views, ``<dataset>:<view>``, built from the vocabulary mapping without a plugin per view.

Why: "melanoma vs nevus" and "malignant vs benign" are the questions asked of every dataset, and each dataset
names its classes differently. A view relabels the samples through the dataset's vocabulary mapping
(dermbench.vocabulary) and drops the classes that do not belong to it. The view is part of the dataset name,
so split hashes, feature-cache keys and result records differ from the base dataset's; the train/test
assignment of the kept samples is the base dataset's (a view never re-splits).

The registry resolves a name with a colon through :func:`view_entry` (the one place datasets are looked up
by name), so ``dermbench run --dataset ham10000:mel-vs-nev`` and ``ctx.load_dataset('ph2:malignant')`` work.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dermbench.api import Dataset, DatasetInfo, DermbenchError, stable_hash
from dermbench.vocabulary import AXIS, TERMS, VIEWS, DatasetVocabulary, require_mapping


def split_name(name: str) -> tuple[str, str | None]:
    """``'ham10000:malignant'`` -> ``('ham10000', 'malignant')``; no colon -> ``(name, None)``."""
    if ":" not in name:
        return name, None
    base, view = name.split(":", 1)
    return base, view


def _check_view(dataset: str, view: str) -> None:
    if view not in VIEWS:
        raise DermbenchError(
            f"unknown view {view!r} in dataset name {dataset!r}; valid views: "
            + "; ".join(f"{k} ({v})" for k, v in VIEWS.items())
        )


def view_labels(vocab: DatasetVocabulary, label_names: list[str] | tuple[str, ...], view: str,
                dataset: str) -> tuple[list[str], list[int | None]]:
    """(new label names, new label index per old class index or None = dropped) for a view."""
    _check_view(dataset, view)
    names = list(label_names)
    if not names:
        raise DermbenchError(f"dataset {dataset!r} declares no class names, so view {view!r} cannot map its labels")
    maps = [vocab.lookup(n) for n in names]
    if vocab.granularity == "none":
        raise DermbenchError(
            f"dataset {dataset!r}: its labels are not diagnoses (vocabulary granularity 'none': {vocab.note}); "
            f"no view applies"
        )
    if view == "mel-vs-nev":
        if vocab.granularity != "diagnosis":
            raise DermbenchError(
                f"dataset {dataset!r} has coarse labels ({', '.join(names)}; {vocab.note}); view 'mel-vs-nev' needs "
                f"diagnosis-level labels. Use '{dataset.split(':')[0]}:malignant' instead"
            )
        new = ["nevus", "melanoma"]
        idx = [1 if m.term == "melanoma" else 0 if m.term == "nevus" else None for m in maps]
    elif view == "malignant":
        new = ["benign", "malignant"]
        idx = [1 if m.axis == "malignant" else 0 if m.axis == "benign" else None for m in maps]
    else:  # vocab
        present = [t for t in TERMS if any(m.term == t for m in maps)]
        new = present
        idx = [present.index(m.term) if m.term in present else None for m in maps]
    kept = {i for i in idx if i is not None}
    if len(kept) < 2:
        have = ", ".join(f"{n}->{m.term or m.axis or 'excluded'}" for n, m in zip(names, maps))
        raise DermbenchError(
            f"view {view!r} of dataset {dataset!r} would keep fewer than two classes (its mapping: {have}); "
            f"pick another view ({', '.join(VIEWS)}) or another dataset"
        )
    return new, idx


def apply_view(dataset: Dataset, view: str) -> Dataset:
    """A new Dataset: samples relabelled for ``view``, dropped classes removed, splits re-indexed."""
    base = dataset.info.name
    full = f"{base}:{view}"
    vocab = require_mapping(base)
    old_names = list(dataset.label_names or dataset.info.label_names)
    new_names, idx = view_labels(vocab, old_names, view, full)
    keep: list[int] = []
    samples = []
    for i, s in enumerate(dataset.samples):
        if s.label is None or s.label >= len(idx) or idx[s.label] is None:
            continue
        keep.append(i)
        samples.append(replace(s, label=idx[s.label]))
    pos = {old: new for new, old in enumerate(keep)}
    splits = {k: [pos[i] for i in v if i in pos] for k, v in dataset.splits.items()}
    dropped = {old_names[c]: 0 for c, v in enumerate(idx) if v is None}
    for s in dataset.samples:
        if s.label is not None and s.label < len(idx) and idx[s.label] is None:
            dropped[old_names[s.label]] += 1
    info = replace(
        dataset.info, name=full, label_names=tuple(new_names),
        description=f"{dataset.info.description} -- view {view}: {VIEWS[view]}",
        aliases=tuple(dict.fromkeys((*dataset.info.aliases, base))),
    )
    fp = stable_hash({"base": dataset.content_fingerprint, "view": view,
                      "map": [(n, m) for n, m in zip(old_names, idx)]})
    skipped = dict(dataset.skipped)
    skipped.update({f"view dropped {k}": v for k, v in dropped.items() if v})
    return Dataset(info=info, samples=samples, splits=splits, label_names=new_names,
                   split_source=f"{dataset.split_source} (view {view} of {base})", content_fingerprint=fp,
                   skipped=skipped, root=dataset.root)


def view_info(info: DatasetInfo, view: str) -> DatasetInfo:
    """The registry-level info of a view (label names from the declared classes, before loading)."""
    full = f"{info.name}:{view}"
    _check_view(full, view)
    names: tuple[str, ...] = info.label_names
    if names:
        vocab = require_mapping(info.name)
        names = tuple(view_labels(vocab, names, view, full)[0])
    return replace(info, name=full, label_names=names, description=f"{info.description} -- view {view}",
                   aliases=tuple(dict.fromkeys((*info.aliases, info.name))))


def view_entry(registry: Any, name: str) -> Any:
    """The registry entry of ``<dataset>:<view>``: the base loader followed by :func:`apply_view`."""
    from dermbench.plugins import Entry

    base, view = split_name(name)
    entry = registry._get("datasets", base)
    if view is None:
        return entry
    info = view_info(entry.info, view)
    base_loader = entry.obj

    def load_view(root: Any, **opts: Any) -> Dataset:
        return apply_view(base_loader(root, **opts), view)

    load_view.__module__ = getattr(base_loader, "__module__", __name__)
    load_view.__doc__ = f"{base} seen through view {view!r}: {VIEWS[view]}"
    return Entry(info, load_view, entry.plugin)


__all__ = ["apply_view", "view_entry", "view_info", "view_labels", "split_name", "VIEWS", "AXIS"]

"""Reproducible, verifiable dataset splits.

A dataset with an official split uses it. Otherwise dermbench draws a seeded stratified 50/50 split (the
DermINO protocol), grouped by patient or lesion where the data has them, and saves it as a JSON split file
under ``$DERMBENCH_CACHE/splits/`` (default ``~/.cache/dermbench``). The file's content hash goes into
``Dataset.split_source`` and so into every result record. On reuse the file is checked against the split the
data would produce now: if they disagree (an image folder changed, a metadata file was edited), loading stops
with a message saying what changed, instead of silently evaluating on a different split.

The draw uses only ``numpy.random.default_rng`` seeded from (dataset name, split seed), over samples sorted
by id, so it does not depend on file-system listing order or on library versions of sklearn.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Hashable, Sequence

from dermbench.api import DermbenchError

#: bump when the drawing algorithm changes: old split files then get new names instead of clashing
SPLIT_ALGORITHM_VERSION = 1
CACHE_ENV = "DERMBENCH_CACHE"


def cache_dir() -> Path:
    """Root of dermbench's cache: ``$DERMBENCH_CACHE`` or ``~/.cache/dermbench`` (one definition, in weights)."""
    from dermbench.weights import cache_dir as root

    return root()


def derive_seed(dataset: str, split_seed: int) -> int:
    """A 64-bit RNG seed from the dataset name and the user's split seed (stable across runs and machines)."""
    digest = hashlib.sha256(f"dermbench-split\0{dataset}\0{int(split_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def splits_sha(split_ids: dict[str, Sequence[str]]) -> str:
    """Content hash of a split (names and id lists, order-independent within a split)."""
    canon = {name: sorted(map(str, ids)) for name, ids in split_ids.items()}
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


def stratified_group_assign(
    ids: Sequence[str],
    labels: Sequence[Hashable],
    groups: Sequence[Hashable] | None,
    seed: int,
    fractions: Sequence[float] = (0.5, 0.5),
) -> list[int]:
    """Assign each sample to a split index, stratified by label, never splitting a group.

    A group (patient, lesion) is stratified by its most frequent label. Within each stratum the groups are
    shuffled, then each goes to the split furthest below its target sample count, so the split sizes track
    ``fractions`` even when groups have different sizes.
    """
    import numpy as np

    n = len(ids)
    if groups is None:
        groups = list(ids)
    if not (len(labels) == len(groups) == n):
        raise ValueError("ids, labels and groups must have the same length")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(str(g), []).append(i)
    strata: dict[str, list[str]] = {}
    for g, idx in members.items():
        counts: dict[str, int] = {}
        for i in idx:
            counts[str(labels[i])] = counts.get(str(labels[i]), 0) + 1
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        strata.setdefault(top, []).append(g)
    rng = np.random.default_rng(seed)
    frac = np.asarray(fractions, dtype=float) / float(sum(fractions))
    out = [-1] * n
    for stratum in sorted(strata):
        gs = sorted(strata[stratum])
        total = sum(len(members[g]) for g in gs)
        target = frac * total
        have = np.zeros(len(frac))
        for j in rng.permutation(len(gs)):
            g = gs[int(j)]
            k = int(np.argmax(target - have))  # ties go to the first split
            have[k] += len(members[g])
            for i in members[g]:
                out[i] = k
    return out


def seeded_split(
    dataset: str,
    ids: Sequence[str],
    labels: Sequence[Hashable],
    groups: Sequence[Hashable] | None,
    split_seed: int = 0,
    names: Sequence[str] = ("train", "test"),
    fractions: Sequence[float] = (0.5, 0.5),
    split_file: str | Path | None = None,
    source: str = "",
) -> tuple[dict[str, list[int]], str]:
    """The seeded stratified split of ``ids`` (indices per split name) and its provenance string.

    ``source`` identifies the copy of the data (resolved root, metadata file, class subset): it is part of
    the split file's name, so two private collections loaded as ``folder`` never share a file, while the
    same folder loaded again is checked against its file. ``split_file`` names a split file to use instead
    of the cached one (e.g. one shipped with a paper); it must list exactly the ids present.
    """
    if len(set(ids)) != len(ids):
        from collections import Counter

        dup = sorted(i for i, c in Counter(ids).items() if c > 1)[:5]
        raise DermbenchError(f"{dataset}: duplicate sample ids {dup}; ids must be unique to split the data")
    order = sorted(range(len(ids)), key=lambda i: str(ids[i]))
    s_ids = [str(ids[i]) for i in order]
    s_labels = [labels[i] for i in order]
    s_groups = None if groups is None else [groups[i] for i in order]
    assign = stratified_group_assign(s_ids, s_labels, s_groups, derive_seed(dataset, split_seed), fractions)
    computed = {name: [s_ids[i] for i in range(len(s_ids)) if assign[i] == k] for k, name in enumerate(names)}
    empty = [name for name, v in computed.items() if not v]
    if empty:
        raise DermbenchError(
            f"{dataset}: split {empty} would be empty ({len(ids)} samples in {len(set(map(str, s_groups or s_ids)))} "
            "groups); add more images or use a dataset with an official split"
        )
    config = {
        "dataset": dataset,
        "method": "seeded-stratified-grouped" if groups is not None else "seeded-stratified",
        "names": list(names),
        "fractions": [float(f) for f in fractions],
        "algorithm_version": SPLIT_ALGORITHM_VERSION,
        "source": source,
    }
    cfg_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    pct = "/".join(str(round(100 * f / sum(fractions))) for f in fractions)
    if split_file is not None:
        path = Path(split_file).expanduser()
        stored = read_split_file(path, dataset)
        _compare(dataset, path, stored, computed, user_file=True)
        used = stored
    else:
        from dermbench.results import encode_name

        # the name may come from a user option (generic loaders): encoded, so it never leaves the cache folder
        path = cache_dir() / "splits" / f"{encode_name(dataset)}-seed{int(split_seed)}-{cfg_hash}.json"
        if path.exists():
            stored = read_split_file(path, dataset)
            _compare(dataset, path, stored, computed, user_file=False)
        else:
            write_split_file(path, {**config, "split_seed": int(split_seed), "n": len(ids)}, computed)
        used = computed
    index = {str(i): k for k, i in enumerate(ids)}
    splits = {name: sorted(index[i] for i in used[name]) for name in names}
    source = (
        f"seeded-stratified-{pct} seed={int(split_seed)}{' grouped' if groups is not None else ''} "
        f"file={path} sha={splits_sha(used)[:16]}"
    )
    return splits, source


def official_split(
    dataset: str, ids: Sequence[str], assignment: Sequence[str], description: str
) -> tuple[dict[str, list[int]], str]:
    """Indices per split name from an official per-sample assignment, with a provenance string and hash."""
    splits: dict[str, list[int]] = {}
    for i, name in enumerate(assignment):
        splits.setdefault(name, []).append(i)
    empty = [n for n in splits if not splits[n]]
    if empty or not splits:
        raise DermbenchError(f"{dataset}: official split has no samples in {empty or 'any split'}")
    sha = splits_sha({n: [str(ids[i]) for i in idx] for n, idx in splits.items()})
    return splits, f"official ({description}) sha={sha[:16]}"


def write_split_file(path: Path, config: dict, split_ids: dict[str, list[str]]) -> None:
    """Write a split file atomically (a crash never leaves half a file that later reads as a split)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**config, "sha256": splits_sha(split_ids), "splits": {k: sorted(v) for k, v in split_ids.items()}}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_split_file(path: Path, dataset: str) -> dict[str, list[str]]:
    """Read a split file and check its recorded hash against its id lists."""
    try:
        body = json.loads(Path(path).read_text())
        stored = {str(k): [str(i) for i in v] for k, v in body["splits"].items()}
    except FileNotFoundError:
        raise DermbenchError(f"{dataset}: split file {path} does not exist") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DermbenchError(
            f"{dataset}: split file {path} is not a dermbench split file ({e}); expected JSON with a 'splits' "
            "object mapping split names to id lists. Delete it to draw the split again."
        ) from None
    recorded = body.get("sha256")
    if recorded is not None and recorded != splits_sha(stored):
        raise DermbenchError(
            f"{dataset}: split file {path} was modified: its recorded sha256 {str(recorded)[:16]} does not match "
            f"its id lists ({splits_sha(stored)[:16]}). Restore it, or delete it to draw the split again "
            "(results computed on the old split will not be comparable)."
        )
    return stored


def _compare(
    dataset: str, path: Path, stored: dict[str, list[str]], computed: dict[str, list[str]], user_file: bool
) -> None:
    """Refuse a split file whose ids or sides disagree with the data, saying exactly how."""
    if user_file:
        have = {i for v in computed.values() for i in v}
        listed = {i for v in stored.values() for i in v}
        if set(stored) != set(computed):
            raise DermbenchError(
                f"{dataset}: split file {path} has splits {sorted(stored)}; expected {sorted(computed)}"
            )
        missing, extra = sorted(listed - have), sorted(have - listed)
        if missing or extra:
            raise DermbenchError(
                f"{dataset}: split file {path} does not match the data: {len(missing)} listed id(s) have no image "
                f"(e.g. {missing[:5]}), {len(extra)} image(s) are not listed (e.g. {extra[:5]}). "
                "Use a split file made for this copy of the dataset."
            )
        return
    if {k: sorted(v) for k, v in stored.items()} == {k: sorted(v) for k, v in computed.items()}:
        return
    listed = {i: k for k, v in stored.items() for i in v}
    now = {i: k for k, v in computed.items() for i in v}
    gone = sorted(set(listed) - set(now))
    new = sorted(set(now) - set(listed))
    moved = sorted(i for i in set(listed) & set(now) if listed[i] != now[i])
    raise DermbenchError(
        f"{dataset}: the stored split {path} no longer matches the data: {len(gone)} id(s) in the file are gone "
        f"(e.g. {gone[:5]}), {len(new)} new id(s) (e.g. {new[:5]}), {len(moved)} would change sides "
        f"(e.g. {moved[:5]}). The image folder or metadata changed since the split was drawn. Restore the data, "
        "or delete that file to draw a new split (results on the old split will not be comparable), or pass "
        "--dataset-opt split_file=<path> to use a specific split file."
    )

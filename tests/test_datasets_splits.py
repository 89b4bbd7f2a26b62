"""The seeded stratified (grouped) split and its split files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dermbench.api import DermbenchError
from dermbench.splits import derive_seed, seeded_split, splits_sha, stratified_group_assign


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _toy(n=400, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"img{i:04d}" for i in range(n)]
    labels = rng.choice(["a", "b", "c"], size=n, p=[0.6, 0.3, 0.1]).tolist()
    groups = [f"p{i // 3}" for i in range(n)]  # 3 images per patient, labels may differ inside a patient
    return ids, labels, groups


def test_ungrouped_split_is_stratified_to_within_one_per_class():
    ids, labels, _ = _toy()
    a = stratified_group_assign(ids, labels, None, seed=1)
    for cls in "abc":
        n0 = sum(1 for x, y in zip(a, labels) if y == cls and x == 0)
        n1 = sum(1 for x, y in zip(a, labels) if y == cls and x == 1)
        assert abs(n0 - n1) <= 1 and n0 + n1 == labels.count(cls)


def test_grouped_split_keeps_groups_together_and_stays_balanced():
    ids, labels, groups = _toy()
    a = stratified_group_assign(ids, labels, groups, seed=2)
    side: dict[str, set[int]] = {}
    for g, x in zip(groups, a):
        side.setdefault(g, set()).add(x)
    assert all(len(v) == 1 for v in side.values())
    assert abs(a.count(0) - a.count(1)) <= 6  # groups of 3: within two groups of perfect
    for cls in "ab":
        per = Counter(x for x, y in zip(a, labels) if y == cls)
        assert abs(per[0] - per[1]) <= 0.2 * labels.count(cls)


def test_fractions_other_than_half():
    ids, labels, _ = _toy(1000)
    a = stratified_group_assign(ids, labels, None, seed=3, fractions=(0.8, 0.2))
    assert a.count(1) == pytest.approx(200, abs=3)


def test_seeded_split_independent_of_input_order_and_seed_dependent():
    ids, labels, groups = _toy(120)
    s1, src1 = seeded_split("toy", ids, labels, groups, split_seed=0)
    perm = np.random.default_rng(5).permutation(len(ids))
    ids2, labels2, groups2 = [ids[i] for i in perm], [labels[i] for i in perm], [groups[i] for i in perm]
    s2, src2 = seeded_split("toy", ids2, labels2, groups2, split_seed=0)
    assert {ids[i] for i in s1["test"]} == {ids2[i] for i in s2["test"]}
    assert src1 == src2
    s3, src3 = seeded_split("toy", ids, labels, groups, split_seed=1)
    assert s3 != s1 and src3 != src1
    assert derive_seed("toy", 0) != derive_seed("toy2", 0)


def test_user_split_file_is_used_and_checked(tmp_path):
    ids, labels, _ = _toy(40)
    mine = {"train": ids[:30], "test": ids[30:]}
    f = tmp_path / "paper_split.json"
    f.write_text(json.dumps({"splits": mine, "sha256": splits_sha(mine)}))
    splits, src = seeded_split("toy", ids, labels, None, split_file=f)
    assert [ids[i] for i in splits["test"]] == ids[30:] and f"file={f}" in src
    with pytest.raises(DermbenchError, match=r"1 image\(s\) are not listed.*img0040"):
        seeded_split("toy", ids + ["img0040"], labels + ["a"], None, split_file=f)
    f.write_text("not json")
    with pytest.raises(DermbenchError, match="not a dermbench split file"):
        seeded_split("toy", ids, labels, None, split_file=f)


def test_sources_get_separate_files_and_duplicates_are_refused(cache):
    ids, labels, _ = _toy(20)
    seeded_split("folder", ids, labels, None, source="/data/a")
    seeded_split("folder", ids[:10], labels[:10], None, source="/data/b")  # another collection: no clash
    assert len(list((cache / "splits").glob("folder-seed0-*.json"))) == 2
    with pytest.raises(DermbenchError, match=r"duplicate sample ids \['img0000'\]"):
        seeded_split("toy", ids + ["img0000"], labels + ["a"], None)
    with pytest.raises(DermbenchError, match="would be empty"):
        seeded_split("toy", ["x"], ["a"], None)

"""Pretraining data: a mix of dataset plugins and image folders, the merged label space, step-indexed batches.

Sources (``cfg.sources``) are ``{"dataset": NAME, "split": "train", "root": PATH, "labels": "full"|"none",
"options": {...}}`` resolved through ``dermbench.api.load_dataset``, or ``{"folder": PATH}`` (unlabelled).
Labelled sources contribute their label names to the merged label space; an image knows exactly the
classes of its own source's label set (``n_ij = 1``), unlabelled images know none.

Batches are a pure function of (seed, step): the epoch permutation, every crop's augmentation seed and the
iBOT masks are derived from them, so resuming at step s reproduces the run exactly and a rank of a DDP job
holds exactly its slice of the single-process global batch.

The leakage guard compares a 64-bit DCT perceptual hash of every pretraining image with the test splits of
the evaluation datasets (the sources' own datasets plus ``leakage_against``): DermINO mixed downstream
training sets into pretraining, so a near-duplicate of a test image would inflate later benchmarks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dermbench.api import DermbenchError

log = logging.getLogger("dermino.data")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class PretrainItem:
    id: str
    load: Callable[[], Any]  # -> PIL RGB image
    source: str
    label: str | None = None
    where: str = ""  # file path or sample id, for messages


@dataclass
class PretrainSet:
    items: list[PretrainItem]
    label_sources: dict[str, list[str]]  # labelled source -> its label names
    notes: list[str] = field(default_factory=list)


def _load_path(path: Path) -> Callable[[], Any]:
    def load() -> Any:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except Exception as e:
            raise DermbenchError(
                f"cannot read image {path}: {type(e).__name__}: {e}. Remove the file, or set "
                "skip_bad_images: true to drop unreadable images before training."
            ) from e

    return load


def load_sources(sources: Sequence[dict[str, Any]]) -> PretrainSet:
    from dermbench.api import load_dataset

    items: list[PretrainItem] = []
    label_sources: dict[str, list[str]] = {}
    notes: list[str] = []
    for spec in sources:
        spec = dict(spec)
        if "folder" in spec:
            folder = Path(spec["folder"]).expanduser()
            if not folder.is_dir():
                raise DermbenchError(f"pretraining source folder {folder} does not exist")
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
            if not files:
                raise DermbenchError(f"pretraining source folder {folder} holds no images ({', '.join(IMAGE_EXTS)})")
            name = f"folder:{folder.name}"
            items += [PretrainItem(f"{name}/{p.relative_to(folder)}", _load_path(p), name, None, str(p)) for p in files]
            notes.append(f"{name}: {len(files)} unlabelled images")
            continue
        if "dataset" not in spec:
            raise DermbenchError(f"pretraining source {spec!r} needs 'dataset: NAME' or 'folder: PATH'")
        name = spec["dataset"]
        ds = load_dataset(name, spec.get("root"), **spec.get("options", {}))
        split = spec.get("split", "train")
        idx = list(range(len(ds.samples))) if split in ("", "all") else list(ds.split(split).indices)
        mode = spec.get("labels", "full")
        if mode not in ("full", "none"):
            raise DermbenchError(f"source {name}: labels={mode!r}; use full or none")
        names = list(ds.label_names or ds.info.label_names)
        has_labels = bool(names) and any(ds.samples[i].label is not None for i in idx)
        if mode == "full" and not has_labels:
            raise DermbenchError(
                f"pretraining source {name!r} (split {split!r}) has no labels; add labels: none to its entry "
                "to use it as unlabelled data."
            )
        src = f"{name}:{split}"
        if mode == "full":
            label_sources[src] = names
        for i in idx:
            s = ds.samples[i]
            lab = names[s.label] if mode == "full" and s.label is not None else None
            items.append(PretrainItem(f"{name}/{s.id}", s.load_image, src, lab, str(s.image) if not callable(s.image) else s.id))
        notes.append(f"{src}: {len(idx)} images, {'labelled' if mode == 'full' else 'unlabelled'}")
    if not items:
        raise DermbenchError("the pretraining sources hold no images")
    return PretrainSet(items, label_sources, notes)


def drop_unreadable(pset: PretrainSet, skip: bool) -> list[str]:
    """Open every image once; unreadable ones are an error naming them, or dropped with ``skip``."""
    bad: list[tuple[int, str]] = []
    for i, it in enumerate(pset.items):
        try:
            it.load()
        except DermbenchError as e:
            bad.append((i, str(e)))
    if bad and not skip:
        raise DermbenchError(
            f"{len(bad)} pretraining image(s) cannot be read, e.g. {bad[0][1]}. Fix them or set skip_bad_images: true."
        )
    drop = {i for i, _ in bad}
    pset.items = [it for i, it in enumerate(pset.items) if i not in drop]
    return [m for _, m in bad]


def cache_images(pset: PretrainSet) -> None:
    """Decode every image once and keep it in memory (small or generated sets: dermsynth renders on demand)."""
    for it in pset.items:
        img = it.load()
        it.load = (lambda im=img: im)


# --------------------------------------------------------------------------------------------------
# Perceptual hash leakage guard


def phash(image: Any) -> int:
    """64-bit DCT perceptual hash: the one ``dermbench audit`` uses (``dermbench.api.phash``), so both agree."""
    from dermbench.api import phash as shared_phash

    return shared_phash(image)


def thumbnail(image: Any) -> np.ndarray:
    """24x24 RGB thumbnail confirming a pHash candidate pair (``dermbench.api.thumbnail``, shared with the audit)."""
    from dermbench.api import thumbnail as shared_thumbnail

    return shared_thumbnail(image)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between uint64 hash arrays: (len(a), len(b)) (``dermbench.api.hamming``)."""
    from dermbench.api import hamming as shared_hamming

    return shared_hamming(a, b)


def eval_test_hashes(datasets: Sequence[str], roots: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """pHashes and thumbnails of the ``test`` split of every named evaluation dataset that can be loaded here."""
    from dermbench.api import dataset_info, load_dataset

    hashes: list[int] = []
    thumbs: list[np.ndarray] = []
    ids: list[str] = []
    notes: list[str] = []
    for name in dict.fromkeys(datasets):
        root = roots.get(name)
        if dataset_info(name).needs_root and root is None:
            notes.append(f"leakage guard: {name} not checked (no root given)")
            continue
        ds = load_dataset(name, root)
        if "test" not in ds.splits:
            notes.append(f"leakage guard: {name} has no test split")
            continue
        for s in ds.split("test").samples:
            try:
                img = s.load_image()
            except DermbenchError:
                continue
            hashes.append(phash(img))
            thumbs.append(thumbnail(img))
            ids.append(f"{name}/{s.id}")
    th = np.stack(thumbs) if thumbs else np.zeros((0, 24, 24, 3), np.uint8)
    return np.array(hashes, dtype=np.uint64), th, ids, notes


def leakage_guard(pset: PretrainSet, policy: str, against: Sequence[str], roots: dict[str, Any],
                  max_distance: int = 4, pixel_tol: float = 0.03) -> list[str]:
    """Refuse (default), warn about, or drop pretraining images that near-duplicate an evaluation test image.

    Two tests, both required: pHash Hamming distance <= ``max_distance`` (finds resized/recompressed copies
    fast), then mean absolute difference of 24x24 RGB thumbnails <= ``pixel_tol`` (of 255). The second test
    is needed because a 64-bit grey pHash of "dark blob centred on skin" collides between different lesions.
    """
    from dermbench.api import near_duplicates

    if policy == "off":
        return ["leakage guard off"]
    test_h, test_t, test_ids, notes = eval_test_hashes(against, roots)
    if not len(test_h):
        return notes + ["leakage guard: no evaluation test images to compare with"]
    test_t = test_t.astype(np.float32)
    hits: list[tuple[int, int, int, float]] = []
    chunk = 2048
    for start in range(0, len(pset.items), chunk):
        imgs = [it.load() for it in pset.items[start : start + chunk]]
        h = np.array([phash(im) for im in imgs], dtype=np.uint64)
        th = np.stack([thumbnail(im) for im in imgs])
        # the audit's matcher (dermbench.api.near_duplicates): pHash distance, then thumbnail confirmation
        for i, j, d, mad in near_duplicates(h, th, test_h, test_t, max_distance, pixel_tol):
            hits.append((start + i, j, d, mad))
    n_pre = len(pset.items)
    if not hits:
        return notes + [f"leakage guard: {n_pre} pretraining vs {len(test_h)} test images, no near-duplicates "
                        f"(pHash Hamming <= {max_distance} and thumbnail difference <= {pixel_tol})"]
    pairs = "; ".join(f"{pset.items[i].where} ~ {test_ids[j]} (d={d}, diff={m:.3f})" for i, j, d, m in hits[:5])
    msg = f"{len(hits)} pretraining image(s) are near-duplicates of evaluation test images: {pairs}"
    if policy == "refuse":
        raise DermbenchError(msg + ". Remove them from the pretraining sources, or set leakage: drop (drop them) "
                             "or leakage: warn (keep them; benchmark numbers on those test sets become optimistic).")
    if policy == "drop":
        drop = {i for i, _, _, _ in hits}
        pset.items = [it for k, it in enumerate(pset.items) if k not in drop]
        return notes + [msg + f"; dropped {len(drop)}"]
    log.warning(msg)
    return notes + [msg + "; kept (leakage: warn)"]


# --------------------------------------------------------------------------------------------------
# Step-indexed batches


class StepBatches:
    """``batches[step]`` is this rank's share of global batch ``step`` (a dict from ``collate_multicrop``)."""

    def __init__(self, items: list[PretrainItem], targets: np.ndarray, known: np.ndarray, augment: Any,
                 batch_per_rank: int, seed: int, patch_size: int, rank: int = 0, world: int = 1,
                 mask_probability: float = 0.5, mask_ratio: tuple[float, float] = (0.1, 0.5)) -> None:
        self.items, self.targets, self.known = items, targets, known
        self.augment, self.b, self.seed = augment, batch_per_rank, seed
        self.rank, self.world, self.patch = rank, world, patch_size
        self.mask_probability, self.mask_ratio = mask_probability, tuple(mask_ratio)
        self.global_batch = batch_per_rank * world
        self.steps_per_epoch = len(items) // self.global_batch
        if self.steps_per_epoch == 0:
            raise DermbenchError(
                f"{len(items)} pretraining images are fewer than one global batch ({self.global_batch} = "
                f"{batch_per_rank}/process x {world}); lower batch_size_per_gpu or add data"
            )

    def global_indices(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.items))
        return perm[pos * self.global_batch : (pos + 1) * self.global_batch]

    def __len__(self) -> int:  # DataLoader needs it; steps are unbounded in practice
        return 1 << 40

    def __getitem__(self, step: int) -> dict:
        import torch

        from dermino_model.masking import collate_multicrop, sample_masks

        idx = self.global_indices(step)
        mine = range(self.rank * self.b, (self.rank + 1) * self.b)
        out = []
        for j in mine:
            i = int(idx[j])
            crops = self.augment(self.items[i].load(), seed=int(np.random.default_rng([self.seed, step, j]).integers(1 << 62)))
            out.append({**crops, "targets": torch.from_numpy(self.targets[i]), "known": torch.from_numpy(self.known[i]),
                        "index": i})
        g = self.augment.global_size // self.patch
        n_glob = len(out[0]["global"])
        masks = sample_masks(n_glob * self.global_batch, (g, g), np.random.default_rng([self.seed, step, 7]),
                             self.mask_probability, self.mask_ratio)
        masks = masks.reshape(n_glob, self.global_batch, -1)[:, self.rank * self.b : (self.rank + 1) * self.b]
        batch = collate_multicrop(out, self.patch, masks=torch.from_numpy(masks.reshape(n_glob * self.b, -1).copy()))
        batch["step"] = step
        return batch


def label_matrices(items: Sequence[PretrainItem], space: Any) -> tuple[np.ndarray, np.ndarray]:
    """targets y (n, C) and known n (n, C): a labelled image knows its source's classes; others know none."""
    c = len(space.classes)
    y = np.zeros((len(items), c), np.float32)
    known = np.zeros((len(items), c), bool)
    for k, it in enumerate(items):
        if it.label is None or it.source not in space.source_maps:
            continue
        known[k, space.known_classes(it.source)] = True
        y[k, space.source_maps[it.source][it.label]] = 1.0
    return y, known

"""Leakage audit: near-duplicate images within a dataset (train vs test), across datasets, and between a
pretraining image folder and the evaluation sets.

Why: ISIC contains HAM10000, PH2 images reappear in ISIC archives, and foundation models are pretrained on
scraped dermatology images; a test image seen in training inflates every number. Declaring datasets by name
(``ModelInfo.trained_on``) is a weak flag; this audit looks at the pixels.

Two passes:

1. **Perceptual hash** (always): a 64-bit DCT pHash of every image (32x32 grey, 2-D DCT-II, the 8x8 lowest
   frequencies thresholded at their median, DC excluded from the median). Candidate pairs have Hamming distance
   <= ``max_distance`` (default 4 of 64 bits: survives resizing and JPEG recompression); a candidate counts only
   if the mean absolute difference of 24x24 RGB thumbnails is <= ``pixel_tol`` (default 0.03 of 255), because a
   64-bit grey pHash of "dark blob centred on skin" collides between different lesions.
2. **Embedding similarity** (with ``--model``): cosine similarity of the backbone's embeddings (from the
   feature store, so nothing is extracted twice) >= ``sim_threshold`` (default 0.95). This finds crops, flips
   and colour-shifted copies that pHash misses; the threshold is model-specific, so the report names the model.

DermINO pretraining's leakage guard (``dermino_model.data``) uses :func:`phash`, :func:`thumbnail` and
:func:`near_duplicates` from here (through ``dermbench.api``): one implementation.

Output (documented for the leaderboard, which uses it as overlap evidence): ``<out>/audit.json``::

    {"version": 1, "settings": {...}, "seconds": t,
     "datasets": {"ham10000": {"images": 75, "splits": {"train": 38, "test": 37}, "within_pairs": 0}, ...},
     "across": [{"a": "ham10000", "b": "ph2", "pairs": 0}, ...],
     "pretraining": [{"name": "dermino", "folder": "...", "images": N, "dataset": "ph2", "pairs": k,
                      "test_pairs": k_test}],
     "pairs": [{"kind": "within|across|pretraining", "a": "pretrain:dermino/all/img1.jpg", "b": "ham10000/test/ISIC_2",
                "hamming": 2, "pixel_diff": 0.01, "cosine": 0.99 or null, "method": "phash|embedding|both"}]}

plus ``audit.md`` (counts, how to read them) and ``contact_sheet.png`` (thumbnails of the first pairs).
The leaderboard reads ``results/audit/audit.json`` by default (``pretraining[].name`` = a model name).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from dermbench.api import Dataset, DatasetInfo, DermbenchError, Sample

AUDIT_VERSION = 1
DEFAULT_MAX_DISTANCE = 4
DEFAULT_PIXEL_TOL = 0.03
DEFAULT_SIM_THRESHOLD = 0.95
HASH_SIZE = 32  # the pHash grid: smaller images cannot be hashed reliably
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------------------------------
# The shared primitives (public through dermbench.api)


def phash(image: Any) -> int:
    """64-bit DCT perceptual hash: 32x32 grey (Lanczos), 2-D DCT-II, 8x8 lowest frequencies > their median
    (median over the 63 AC terms). Bit i = coefficient i in row-major order."""
    from PIL import Image
    from scipy.fft import dctn

    g = np.asarray(image.convert("L").resize((HASH_SIZE, HASH_SIZE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(g, norm="ortho")[:8, :8].reshape(-1)
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def thumbnail(image: Any) -> np.ndarray:
    """24x24 RGB box-filtered thumbnail (uint8): the pixel-level confirmation of a pHash candidate pair."""
    from PIL import Image

    return np.asarray(image.convert("RGB").resize((24, 24), Image.Resampling.BOX), dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between uint64 hash arrays: (len(a), len(b))."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    x = a[:, None] ^ b[None, :]
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int32)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1).astype(np.int32)


def hamming_pairs(a: np.ndarray, b: np.ndarray, max_distance: int, *, same: bool = False,
                  chunk: int = 2048) -> list[tuple[int, int, int]]:
    """(i, j, distance) with distance <= max_distance; ``same``: a is b, keep i < j only."""
    out: list[tuple[int, int, int]] = []
    for lo in range(0, len(a), chunk):
        d = hamming(a[lo : lo + chunk], b)
        for i, j in zip(*np.nonzero(d <= max_distance)):
            i = int(i) + lo
            if same and j <= i:
                continue
            out.append((i, int(j), int(d[i - lo, j])))
    return out


def near_duplicates(hash_a: np.ndarray, thumb_a: np.ndarray, hash_b: np.ndarray, thumb_b: np.ndarray,
                    max_distance: int = DEFAULT_MAX_DISTANCE, pixel_tol: float = DEFAULT_PIXEL_TOL,
                    same: bool = False) -> list[tuple[int, int, int, float]]:
    """Confirmed near-duplicate pairs (i, j, Hamming distance, thumbnail mean |diff| / 255) between two sets.

    Both tests are required: pHash distance <= ``max_distance`` and thumbnail difference <= ``pixel_tol``.
    """
    hits = []
    for i, j, d in hamming_pairs(hash_a, hash_b, max_distance, same=same):
        mad = float(np.abs(thumb_a[i].astype(np.float32) - thumb_b[j].astype(np.float32)).mean() / 255.0)
        if mad <= pixel_tol:
            hits.append((i, j, d, mad))
    return hits


@dataclass
class HashedSet:
    """pHashes and thumbnails of a set of images, with ids and where each came from (split / folder)."""

    name: str
    ids: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # split name or "pretraining"
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    thumbs: np.ndarray = field(default_factory=lambda: np.zeros((0, 24, 24, 3), np.uint8))
    modes: set = field(default_factory=set)
    min_side: int = 1 << 30
    unreadable: int = 0
    samples: list[Sample] = field(default_factory=list)


def phash_images(name: str, samples: Iterable[Sample], where: Sequence[str] | None = None,
                 progress: Callable[[int], None] | None = None) -> HashedSet:
    """Hash every readable image; unreadable ones are counted (never silently dropped from the counts)."""
    out = HashedSet(name)
    hashes, thumbs = [], []
    samples = list(samples)
    where = list(where) if where is not None else ["all"] * len(samples)
    for s, w in zip(samples, where):
        try:
            img = _raw_image(s)
        except DermbenchError:
            out.unreadable += 1
            continue
        out.modes.add(img.mode)
        out.min_side = min(out.min_side, min(img.size))
        hashes.append(phash(img))
        thumbs.append(thumbnail(img))
        out.ids.append(s.id)
        out.where.append(w)
        out.samples.append(s)
        if progress:
            progress(1)
    out.hashes = np.array(hashes, dtype=np.uint64)
    out.thumbs = np.stack(thumbs) if thumbs else np.zeros((0, 24, 24, 3), np.uint8)
    return out


def _raw_image(s: Sample) -> Any:
    """The image in its stored mode (for the mode check); Sample.load_image converts to RGB."""
    from PIL import Image

    if callable(s.image):
        return s.image()
    try:
        with Image.open(s.image) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise DermbenchError(f"image file missing: {s.image}") from None
    except Exception as e:
        raise DermbenchError(f"cannot read image {s.image}: {e}") from e


def _colour(modes: set) -> str:
    grey = {m for m in modes if m in ("1", "L", "LA", "I", "I;16", "F")}
    if grey and grey == modes:
        return "grey"
    return "colour" if not grey else "mixed"


def check_compatible(sets: Sequence[HashedSet], min_side: int = HASH_SIZE, allow_mixed_modes: bool = False) -> None:
    """Refuse comparisons the hash cannot support: images below the hash grid, grey vs colour sets."""
    for s in sets:
        if s.ids and s.min_side < min_side:
            raise DermbenchError(
                f"audit: images of {s.name.removeprefix('pretrain:')!r} are as small as {s.min_side} px, below the {HASH_SIZE}x{HASH_SIZE} "
                f"pHash grid, so near-duplicate detection would be unreliable (e.g. DermaMNIST's 28x28 images). "
                f"Leave {s.name.removeprefix('pretrain:')!r} out of the audit, or pass --min-size {s.min_side} to accept it knowingly"
            )
    kinds = {s.name: _colour(s.modes) for s in sets if s.ids}
    if not allow_mixed_modes and len(set(kinds.values()) - {"mixed"}) > 1:
        raise DermbenchError(
            "audit: the image sets mix greyscale and colour images ("
            + ", ".join(f"{k}: {v}" for k, v in kinds.items())
            + "); the pHash is computed on grey levels, but the thumbnail check compares RGB, so a colour copy of a "
            "grey image is never confirmed. Audit them separately, or pass --allow-mixed-modes to compare anyway"
        )


def folder_dataset(folder: Path, name: str = "pretraining") -> Dataset:
    """Every image under ``folder`` (recursive) as a one-split Dataset (split 'all')."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DermbenchError(f"audit: --pretrain {folder} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise DermbenchError(f"audit: --pretrain {folder} holds no images ({', '.join(IMAGE_EXTS)})")
    samples = [Sample(id=str(p.relative_to(folder)), image=p) for p in files]
    info = DatasetInfo(name=name, description=f"pretraining images under {folder}", fields=frozenset(),
                       needs_root=True)
    from dermbench.api import stable_hash

    fp = stable_hash([(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in files])
    return Dataset(info=info, samples=samples, splits={"all": list(range(len(samples)))}, split_source="folder",
                   content_fingerprint=fp, root=str(folder))


# --------------------------------------------------------------------------------------------------
# The audit


def _dataset_hashes(ds: Dataset, progress=None) -> HashedSet:
    where: dict[int, str] = {}
    for split, idx in ds.splits.items():
        for i in idx:
            where.setdefault(i, split)
    order = sorted(where)
    return phash_images(ds.name, [ds.samples[i] for i in order], [where[i] for i in order], progress)


def _embedding_pairs(embed: Callable[[Dataset], np.ndarray], a: tuple[Dataset, HashedSet],
                     b: tuple[Dataset, HashedSet], thr: float, same: bool) -> dict[tuple[int, int], float]:
    """(i, j) -> cosine for pairs above ``thr``, indices into the HashedSets' ids."""
    fa, fb = _aligned(embed, *a), _aligned(embed, *b)
    fa = fa / np.maximum(np.linalg.norm(fa, axis=1, keepdims=True), 1e-12)
    fb = fb / np.maximum(np.linalg.norm(fb, axis=1, keepdims=True), 1e-12)
    out = {}
    for lo in range(0, len(fa), 1024):
        sims = fa[lo : lo + 1024] @ fb.T
        for i, j in zip(*np.nonzero(sims >= thr)):
            i = int(i) + lo
            if same and j <= i:
                continue
            out[(i, int(j))] = float(sims[i - lo, j])
    return out


def _aligned(embed, ds: Dataset, hs: HashedSet) -> np.ndarray:
    feats = embed(ds)  # (len(ds.samples), D) in sample order
    pos = {s.id: k for k, s in enumerate(ds.samples)}
    return np.asarray(feats, dtype=np.float32)[[pos[i] for i in hs.ids]]


def run_audit(datasets: dict[str, Dataset], *, pretrain: dict[str, Dataset] | None = None,
              embed: Callable[[Dataset], np.ndarray] | None = None, model: str | None = None,
              max_distance: int = DEFAULT_MAX_DISTANCE, pixel_tol: float = DEFAULT_PIXEL_TOL,
              sim_threshold: float = DEFAULT_SIM_THRESHOLD, min_side: int = HASH_SIZE,
              allow_mixed_modes: bool = False, out: Path | None = None, sheet_pairs: int = 24,
              log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Audit the datasets (and pretraining folders) and write audit.json / audit.md / contact_sheet.png."""
    t0 = time.perf_counter()
    pretrain = pretrain or {}
    if not datasets:
        raise DermbenchError("audit: name at least one dataset (--dataset a,b)")
    hashed: dict[str, tuple[Dataset, HashedSet]] = {}
    for name, ds in list(datasets.items()) + list(pretrain.items()):
        hs = _dataset_hashes(ds)
        hs.name = name
        hashed[name] = (ds, hs)
        log(f"hashed {name}: {len(hs.ids)} images" + (f" ({hs.unreadable} unreadable)" if hs.unreadable else ""))
    check_compatible([h for _, h in hashed.values()], min_side, allow_mixed_modes)
    pairs: list[dict[str, Any]] = []

    def add(kind: str, a: str, b: str, same: bool, keep: Callable[[int, int], bool] = lambda i, j: True) -> int:
        (da, ha), (db, hb) = hashed[a], hashed[b]
        found: dict[tuple[int, int], dict[str, Any]] = {}
        for i, j, d, mad in near_duplicates(ha.hashes, ha.thumbs, hb.hashes, hb.thumbs, max_distance, pixel_tol, same):
            if keep(i, j):
                found[(i, j)] = {"hamming": d, "pixel_diff": round(mad, 5), "cosine": None, "method": "phash"}
        if embed is not None:
            for (i, j), c in _embedding_pairs(embed, (da, ha), (db, hb), sim_threshold, same).items():
                if not keep(i, j):
                    continue
                if (i, j) in found:
                    found[(i, j)].update(cosine=round(c, 5), method="both")
                else:
                    d = int(hamming(ha.hashes[i : i + 1], hb.hashes[j : j + 1])[0, 0])
                    found[(i, j)] = {"hamming": d, "pixel_diff": None, "cosine": round(c, 5), "method": "embedding"}
        for (i, j), v in sorted(found.items()):
            pairs.append({"kind": kind, "a": f"{a}/{ha.where[i]}/{ha.ids[i]}", "b": f"{b}/{hb.where[j]}/{hb.ids[j]}",
                          "_ref": (a, i, b, j), **v})
        return len(found)

    report: dict[str, Any] = {"version": AUDIT_VERSION, "datasets": {}, "across": [], "pretraining": []}
    names = list(datasets)
    for name in names:
        _, hs = hashed[name]
        w = np.array(hs.where)
        # within: train vs test (and any two different splits), the leak that inflates in-domain numbers
        n_within = add("within", name, name, same=True, keep=lambda i, j, w=w: w[i] != w[j])
        report["datasets"][name] = {"images": len(hs.ids), "unreadable": hs.unreadable,
                                    "splits": {k: int((w == k).sum()) for k in sorted(set(hs.where))},
                                    "within_pairs": n_within}
    for x in range(len(names)):
        for y in range(x + 1, len(names)):
            report["across"].append({"a": names[x], "b": names[y], "pairs": add("across", names[x], names[y], False)})
    for pname, pds in pretrain.items():
        for name in names:
            _, hs = hashed[name]
            k0 = len(pairs)
            n = add("pretraining", pname, name, False)
            test_n = sum(1 for p in pairs[k0:] if p["b"].split("/")[1] == "test")
            report["pretraining"].append({"name": pname.removeprefix("pretrain:"), "folder": str(pds.root), "dataset": name,
                                          "images": len(hashed[pname][1].ids), "pairs": n, "test_pairs": test_n})
    report["settings"] = {"max_distance": max_distance, "pixel_tol": pixel_tol, "hash": "64-bit DCT pHash",
                          "model": model, "sim_threshold": sim_threshold if embed is not None else None,
                          "min_side": min_side}
    report["seconds"] = round(time.perf_counter() - t0, 2)
    refs = [p.pop("_ref") for p in pairs]
    report["pairs"] = pairs
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "audit.json").write_text(json.dumps(report, indent=1))
        sheet = contact_sheet([(hashed[a][1].samples[i], hashed[b][1].samples[j], p)
                               for (a, i, b, j), p in zip(refs, pairs)][:sheet_pairs], out / "contact_sheet.png")
        (out / "audit.md").write_text(markdown(report, sheet))
        report["files"] = [str(out / "audit.json"), str(out / "audit.md")] + ([sheet] if sheet else [])
    return report


def contact_sheet(items: list[tuple[Sample, Sample, dict[str, Any]]], path: Path, size: int = 112) -> str | None:
    """PNG: one row per pair (thumbnail A, thumbnail B, caption). None when there is no pair."""
    if not items:
        return None
    from PIL import Image, ImageDraw

    cap_w = 420
    sheet = Image.new("RGB", (2 * size + cap_w, size * len(items)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (sa, sb, p) in enumerate(items):
        for c, s in enumerate((sa, sb)):
            try:
                im = s.load_image()
                im.thumbnail((size, size))
                sheet.paste(im, (c * size, r * size))
            except DermbenchError:
                pass
        txt = (f"{p['kind']} [{p['method']}] hamming={p['hamming']}"
               + (f" diff={p['pixel_diff']:.3f}" if p["pixel_diff"] is not None else "")
               + (f" cos={p['cosine']:.3f}" if p["cosine"] is not None else ""))
        draw.text((2 * size + 6, r * size + 8), p["a"][:60], fill="black")
        draw.text((2 * size + 6, r * size + 28), p["b"][:60], fill="black")
        draw.text((2 * size + 6, r * size + 48), txt, fill="darkred")
    sheet.save(path)
    return str(path)


def markdown(report: dict[str, Any], sheet: str | None) -> str:
    s = report["settings"]
    lines = ["# dermbench leakage audit", "",
             f"pHash Hamming <= {s['max_distance']} of 64 bits and 24x24 thumbnail difference <= {s['pixel_tol']}"
             + (f"; or embedding cosine >= {s['sim_threshold']} ({s['model']})" if s["sim_threshold"] else
                "; no embedding pass (pass --model to add one)")
             + f". Time: {report['seconds']} s.", "",
             "## Within datasets (an image in one split near-duplicates one in another split)", "",
             "| dataset | images | splits | pairs |", "|---|---|---|---|"]
    for k, v in report["datasets"].items():
        lines.append(f"| {k} | {v['images']} | {', '.join(f'{a}={b}' for a, b in v['splits'].items())} | "
                     f"{v['within_pairs']} |")
    lines += ["", "## Across datasets", "", "| a | b | pairs |", "|---|---|---|"]
    lines += [f"| {a['a']} | {a['b']} | {a['pairs']} |" for a in report["across"]] or ["| - | - | - |"]
    if report["pretraining"]:
        lines += ["", "## Pretraining images vs evaluation sets", "",
                  "| pretraining | images | dataset | pairs | in test split |", "|---|---|---|---|---|"]
        lines += [f"| {p['name']} | {p['images']} | {p['dataset']} | {p['pairs']} | {p['test_pairs']} |"
                  for p in report["pretraining"]]
    lines += ["", "How to read: any within-dataset pair means the same lesion image sits in train and test (in-domain "
              "numbers are optimistic); across-dataset pairs mean transfer numbers are not out-of-distribution for "
              "those images; pretraining pairs in a test split mean the model saw that test image.", ""]
    if sheet:
        lines.append(f"Contact sheet of the first pairs: {Path(sheet).name}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Command-line entry (dermbench audit)


def main(datasets: Sequence[str], *, data_root: Path | None = None, data_roots: dict[str, Path] | None = None,
         pretrain: dict[str, Path] | None = None, model: str | None = None, out: Path = Path("results/audit"),
         cache_dir: Path | None = None, device: str = "cpu", console: Any = None, **settings: Any) -> dict[str, Any]:
    """Load the datasets with the run's root rules, hash them (and embed them with ``model``), write the report."""
    from dermbench.runner import RunOptions, Runner

    say = (lambda m: console.print(m, highlight=False)) if console is not None else (lambda m: None)
    r = Runner(RunOptions(data_root=data_root, data_roots=dict(data_roots or {}), cache_dir=cache_dir, device=device,
                          out=Path(out)), console=console, quiet=console is None)
    loaded = {name: r.dataset(name) for name in dict.fromkeys(datasets)}
    pre = {f"pretrain:{k}": folder_dataset(Path(v), k) for k, v in (pretrain or {}).items()}
    embed = None
    if model:
        from dermbench import plugins

        if plugins.registry().model(model).info.random_init:
            raise DermbenchError(
                f"audit --model {model}: a random-init backbone's embeddings do not measure image similarity (its "
                f"cosines crowd near 1 for unrelated images, so any threshold flags hundreds of false pairs); use a "
                "trained backbone whose weights are available here (e.g. --model dinov2-s), or drop --model"
            )

        def embed(ds: Dataset) -> np.ndarray:
            bb = r.backbone(model)
            feats: np.ndarray | None = None
            for split in sorted(ds.splits):
                sp = ds.split(split)
                f = r.store.embeddings(bb, sp, device=device)
                if feats is None:
                    feats = np.zeros((len(ds.samples), f.shape[1]), np.float32)
                feats[list(sp.indices)] = f
            assert feats is not None
            return feats
    rep = run_audit(loaded, pretrain=pre, embed=embed, model=model, out=Path(out), log=say, **settings)
    say(f"audit: {sum(v['within_pairs'] for v in rep['datasets'].values())} within-dataset, "
        f"{sum(a['pairs'] for a in rep['across'])} across-dataset, "
        f"{sum(p['pairs'] for p in rep['pretraining'])} pretraining pairs in {rep['seconds']} s -> {out}/audit.json")
    return rep


# --------------------------------------------------------------------------------------------------
# Evidence for the leaderboard's overlap column


def overlap_evidence(path: Path | str = Path("results/audit")) -> dict[tuple[str, str], dict[str, Any]]:
    """(model name, dataset) -> {"pairs", "test_pairs", "images", "source"} from an audit.json (or its folder).

    The leaderboard marks a (model, dataset) cell with audited overlap when ``test_pairs > 0`` (the model's
    pretraining images near-duplicate that dataset's test images) and "audited clean" when an entry exists
    with 0 pairs; a name-only ``ModelInfo.trained_on`` declaration stays the weaker flag. Missing file: {}.
    """
    p = Path(path)
    p = p / "audit.json" if p.is_dir() else p
    if not p.exists():
        return {}
    try:
        rep = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DermbenchError(f"audit evidence {p} is unreadable ({e}); rerun `dermbench audit` or delete it") from None
    if rep.get("version") != AUDIT_VERSION:
        raise DermbenchError(f"audit evidence {p} has version {rep.get('version')!r}, expected {AUDIT_VERSION}; "
                             "rerun `dermbench audit`")
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for e in rep.get("pretraining", []):
        key = (e["name"], e["dataset"])
        prev = out.get(key, {"pairs": 0, "test_pairs": 0, "images": 0})
        out[key] = {"pairs": prev["pairs"] + e["pairs"], "test_pairs": prev["test_pairs"] + e["test_pairs"],
                    "images": prev["images"] + e["images"], "source": str(p)}
    return out

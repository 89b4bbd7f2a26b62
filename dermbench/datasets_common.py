"""Shared helpers for dataset loaders: finding files, validating tables, and turning rows into a Dataset.

Every loader reads a dataset exactly as its authors distribute it, then hands a list of ``Row``s to
``build_dataset``, which does what all datasets share: skip (and count, and say so once) rows whose image is
absent, check mask sizes, optionally decode every image (``skip_bad_images``), and attach the split.

Image verification is lazy by default: ``Sample.load_image`` names the file when it cannot be decoded.
Decoding every image at load time would cost minutes on large datasets, so it happens only when the user
opts into ``skip_bad_images`` (then bad files are skipped and counted). Masks are cheaper to trust-but-check:
for segmentation variants the image and mask *headers* are read at load time (no pixel decode) so that a
size mismatch is reported before any model runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from dermbench.api import Dataset, DatasetInfo, DermbenchError, Sample
from dermbench.splits import official_split, seeded_split

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger("dermbench.datasets")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


# --------------------------------------------------------------------------------------------------
# Finding things on disk


def describe_dir(path: Path, limit: int = 15) -> str:
    """A short listing of what IS in a folder (for 'wrong root' messages)."""
    try:
        entries = sorted(os.listdir(path))
    except OSError as e:
        return f"(cannot list: {e.strerror})"
    if not entries:
        return "(empty folder)"
    shown = [e + ("/" if (path / e).is_dir() else "") for e in entries[:limit]]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(shown) + more


def as_root(root: str | Path | None, dataset: str, how_to: str = "") -> Path:
    """The data root as an existing folder, or an error saying how to obtain the dataset."""
    if root is None or str(root) == "":
        raise DermbenchError(f"{dataset} needs --data-root pointing at its folder. {how_to}".strip())
    path = Path(root).expanduser()
    if not path.exists():
        raise DermbenchError(f"{dataset}: data root {path} does not exist. {how_to}".strip())
    if not path.is_dir():
        raise DermbenchError(
            f"{dataset}: data root {path} is a file; pass the folder that contains it. {how_to}".strip()
        )
    return path


def _walk(root: Path, max_depth: int) -> Iterable[tuple[Path, list[str], list[str]]]:
    """os.walk, breadth-limited, sorted, skipping hidden entries (deterministic on every file system)."""
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(here.parts) - base_depth >= max_depth:
            dirnames[:] = []
        yield here, dirnames, sorted(f for f in filenames if not f.startswith("."))


def find_file(root: Path, names: Sequence[str], max_depth: int = 4, want_dir: bool = False) -> Path | None:
    """The shallowest file (or folder) under ``root`` whose name matches one of ``names`` case-insensitively.

    Users point ``--data-root`` at the folder they downloaded, which may be one or two levels above the
    dataset's own top folder (e.g. ``ph2/`` around ``PH2Dataset/``), so a shallow search beats a fixed path.
    """
    wanted = [n.lower() for n in names]
    best: tuple[int, int, Path] | None = None
    for here, dirnames, filenames in _walk(root, max_depth):
        depth = len(here.parts) - len(root.parts)
        for entry in dirnames if want_dir else filenames:
            low = entry.lower()
            if low in wanted:
                cand = (depth, wanted.index(low), here / entry)
                if best is None or cand[:2] < best[:2]:
                    best = cand
    return None if best is None else best[2]


def require_file(
    root: Path, names: Sequence[str], dataset: str, layout: str, max_depth: int = 4, want_dir: bool = False
) -> Path:
    """Like ``find_file`` but a miss is a DermbenchError listing what was expected and what is there."""
    hit = find_file(root, names, max_depth, want_dir)
    if hit is None:
        kind = "folder" if want_dir else "file"
        raise DermbenchError(
            f"{dataset}: cannot find {kind} {' or '.join(names)} under {root} (searched {max_depth} levels deep). "
            f"Expected layout: {layout}. Found in {root}: {describe_dir(root)}. "
            "Point --data-root at the dataset's folder."
        )
    return hit


def index_files(
    folder: Path, exts: Sequence[str] = IMAGE_EXTS, max_depth: int = 6, exclude_suffixes: Sequence[str] = ()
) -> dict[str, Path]:
    """Map file stem -> path for every file with one of ``exts`` under ``folder`` (recursive).

    Official archives split images over several part folders (HAM10000 part_1/part_2, PAD-UFES-20
    imgs_part_1..3); a recursive index finds them wherever the user unpacked them. The first path in
    sorted order wins when a stem appears twice.
    """
    exts_l = tuple(e.lower() for e in exts)
    excl = tuple(s.lower() for s in exclude_suffixes)
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for here, _dirs, files in _walk(folder, max_depth):
        for f in files:
            low = f.lower()
            if not low.endswith(exts_l):
                continue
            stem = f.rsplit(".", 1)[0]
            if excl and stem.lower().endswith(excl):
                continue
            out.setdefault(stem, here / f)
    return out


# --------------------------------------------------------------------------------------------------
# Tables


def read_csv(path: Path, dataset: str, required: Sequence[str] = (), **kwargs: Any) -> "pd.DataFrame":
    """Read a CSV with pandas (all columns as strings unless told), checking the required columns exist."""
    import pandas as pd

    kwargs.setdefault("dtype", str)
    kwargs.setdefault("keep_default_na", False)
    try:
        df = pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise DermbenchError(f"{dataset}: file {path} does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise DermbenchError(f"{dataset}: cannot parse {path} as CSV: {e}") from None
    require_columns(df, required, path, dataset)
    return df


def require_columns(df: "pd.DataFrame", required: Sequence[str], path: Path | str, dataset: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DermbenchError(
            f"{dataset}: {path} has no column(s) {missing}; columns found: {list(map(str, df.columns))}. "
            "Use the file as distributed by the dataset's authors (or name the columns with --dataset-opt)."
        )


def bad_value(
    dataset: str, path: Path | str, column: str, row: int, value: Any, allowed: Iterable[Any]
) -> DermbenchError:
    """Error for a value outside the declared set: names file, row (1-based line), column, value, expected."""
    return DermbenchError(
        f"{dataset}: {path} line {row}, column {column!r}: value {value!r} is not one of {sorted(map(str, allowed))}. "
        "Fix the row or remove it."
    )


def map_labels(
    values: Sequence[Any], mapping: Mapping[str, int], dataset: str, path: Path | str, column: str, first_line: int = 2
) -> list[int]:
    """Map raw label strings to class indices; the first value outside ``mapping`` raises ``bad_value``."""
    out = []
    for i, v in enumerate(values):
        key = str(v).strip()
        if key not in mapping:
            raise bad_value(dataset, path, column, first_line + i, v, mapping)
        out.append(mapping[key])
    return out


def is_blank(v: Any) -> bool:
    if v is None:
        return True
    try:
        import math

        if isinstance(v, float) and math.isnan(v):
            return True
    except Exception:  # pragma: no cover
        pass
    return str(v).strip().lower() in ("", "nan", "none", "null", "unknown", "na", "n/a")


def parse_fitzpatrick(v: Any) -> int | None:
    """Fitzpatrick skin type 1-6 from '3', '3.0', 'FST3', 'III'; None for unknown (-1, blank, NONE_...)."""
    if is_blank(v):
        return None
    s = str(v).strip().upper()
    if s.startswith("FST"):
        s = s[3:]
    roman = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6}
    if s in roman:
        return roman[s]
    try:
        f = float(s)
    except ValueError:
        return None
    return int(f) if f.is_integer() and 1 <= f <= 6 else None


def fitzpatrick_group(f: int | None) -> str | None:
    """The DDI-style grouping 12 / 34 / 56 of a Fitzpatrick type."""
    return None if f is None else {1: "12", 2: "12", 3: "34", 4: "34", 5: "56", 6: "56"}[f]


def parse_sex(v: Any) -> str | None:
    s = "" if is_blank(v) else str(v).strip().lower()
    if s in ("male", "m", "man"):
        return "male"
    if s in ("female", "f", "woman"):
        return "female"
    return None


def parse_age(v: Any) -> float | None:
    if is_blank(v):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# Images


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only (no pixel decode)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def decode_error(path: Path) -> str | None:
    """None when the file decodes completely, else the reason (truncated, not an image, ...)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        return f"{type(e).__name__}: {e}"
    return None


# --------------------------------------------------------------------------------------------------
# Rows -> Dataset


@dataclass
class Row:
    """One metadata row as a loader read it; ``image``/``mask`` None when the file is absent."""

    id: str
    image: Path | None
    label: int | None = None
    mask: Path | None = None
    caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    split: str | None = None  # official split name, where the dataset has one


def variant_loader(load: Any, variant: str, doc: str) -> Any:
    """A named ``loader(root, **opts)`` for one registered variant of a multi-variant dataset module
    (``load(variant, root, **opts)`` does the work); one per registered name, so tests and users can import it."""

    def loader(root: Any, **opts: Any) -> Dataset:
        return load(variant, root, **opts)

    loader.__name__ = "load_" + variant.replace("-", "_")
    if getattr(load, "accepted_options", None) is not None:
        loader.accepted_options = load.accepted_options  # type: ignore[attr-defined]
    loader.__doc__ = doc
    return loader


def build_dataset(
    info: DatasetInfo,
    rows: Sequence[Row],
    *,
    root: Path,
    split_seed: int = 0,
    skip_bad_images: bool = False,
    official: str | None = None,
    grouped: bool = False,
    check_masks: bool = False,
    expected_image: str = "",
    what: str = "metadata rows",
    split_file: str | Path | None = None,
    label_names: Sequence[str] | None = None,
    skipped: dict[str, int] | None = None,
) -> Dataset:
    """Turn rows into a Dataset: skip and count absent files, check masks, attach the split.

    ``official`` is a description of the official split (rows then carry ``split``); without it a
    seeded stratified 50/50 split is drawn (grouped by ``meta['group']`` when ``grouped``).
    ``expected_image`` is an example path shown when no image at all is found.
    """
    name = info.name
    from dermbench.results import check_name

    check_name(name, "dataset name")
    rows = check_contained(rows, root, name, allow_outside=_ALLOW_OUTSIDE.get())
    skipped = dict(skipped or {})
    n = len(rows)
    present = [r for r in rows if r.image is not None]
    if len(present) < n:
        k = n - len(present)
        skipped["missing_image"] = skipped.get("missing_image", 0) + k
        log.warning("%s: %d of %d %s have no image under %s; skipped", name, k, n, what, root)
    if not present:
        raise DermbenchError(
            f"{name}: none of the {n} {what} has an image under {root}"
            + (f" (expected e.g. {expected_image})" if expected_image else "")
            + f". Found in {root}: {describe_dir(root)}. {info.how_to_obtain}".rstrip()
        )
    if check_masks:
        with_mask = [r for r in present if r.mask is not None]
        if len(with_mask) < len(present):
            k = len(present) - len(with_mask)
            skipped["missing_mask"] = skipped.get("missing_mask", 0) + k
            log.warning("%s: %d of %d images have no mask under %s; skipped", name, k, len(present), root)
        present = _check_mask_sizes(name, with_mask, skip_bad_images, skipped)
    dropped: list[str] = []
    if skip_bad_images:
        kept = _drop_undecodable(name, present, check_masks, skipped)
        keep_ids = {r.id for r in kept}
        dropped = sorted(r.id for r in present if r.id not in keep_ids)
        present = kept
    if not present:
        raise DermbenchError(f"{name}: no usable sample left under {root} (skipped: {skipped})")
    samples = [
        Sample(id=r.id, image=r.image, label=r.label, mask=r.mask, caption=r.caption, meta=r.meta) for r in present
    ]  # type: ignore[arg-type]
    ids = [s.id for s in samples]
    if official is not None:
        splits, source = official_split(name, ids, [r.split or "train" for r in present], official)
    else:
        labels = [s.label for s in samples]
        groups = [s.meta.get("group", s.id) for s in samples] if grouped else None
        names = list(label_names if label_names is not None else info.label_names)
        key = f"{Path(root).resolve()}|{what}|{names}"
        if dropped:  # the skipped images are part of the split's identity: a split drawn with them is kept apart
            import hashlib

            key += "|skipped:" + hashlib.sha256("\n".join(dropped).encode()).hexdigest()[:16]
        splits, source = seeded_split(name, ids, labels, groups, split_seed, split_file=split_file, source=key)
    return Dataset(
        info=info,
        samples=samples,
        splits=splits,
        label_names=list(label_names if label_names is not None else info.label_names),
        split_source=source,
        content_fingerprint=files_fingerprint(samples),
        skipped=skipped,
        root=str(root),
    )


def files_fingerprint(samples: Sequence[Sample]) -> str:
    """A hash of every sample's image (and mask) file size, for ``Dataset.content_fingerprint``.

    Split hashes key the feature cache and the paired bootstrap. Ids and labels alone would let a
    re-encoded or resized copy of a dataset (same file names, other pixels) reuse stale cached features;
    sizes catch that for the price of one ``stat`` per file, and stay identical for identical copies on
    different machines (no paths or times are hashed), so results on the same data remain paired.
    """
    import hashlib

    h = hashlib.sha256()
    for s in samples:
        parts = [s.id]
        for f in (s.image, s.mask):
            if isinstance(f, (str, Path)):
                try:
                    parts.append(str(os.stat(f).st_size))
                except OSError:
                    parts.append("-")
        h.update(("\0".join(parts) + "\n").encode())
    return "files:" + h.hexdigest()[:16]


def _check_mask_sizes(name: str, rows: list[Row], skip_bad: bool, skipped: dict[str, int]) -> list[Row]:
    keep = []
    for r in rows:
        assert r.image is not None and r.mask is not None
        try:
            isz = image_size(r.image)
        except Exception as e:
            if skip_bad:
                skipped["bad_image"] = skipped.get("bad_image", 0) + 1
                continue
            raise DermbenchError(
                f"{name}: cannot read image {r.image} ({e}). Re-download it or pass --skip-bad-images."
            ) from None
        try:
            msz = image_size(r.mask)
        except Exception as e:
            if skip_bad:
                skipped["bad_mask"] = skipped.get("bad_mask", 0) + 1
                continue
            raise DermbenchError(
                f"{name}: cannot read mask {r.mask} ({e}). Re-download it or pass --skip-bad-images."
            ) from None
        if isz != msz:
            if skip_bad:
                skipped["mask_size_mismatch"] = skipped.get("mask_size_mismatch", 0) + 1
                continue
            raise DermbenchError(
                f"{name}: mask {r.mask} is {msz[0]}x{msz[1]} but its image {r.image} is {isz[0]}x{isz[1]} "
                "(width x height). Use the mask released with this image, or pass --skip-bad-images to skip it."
            )
        keep.append(r)
    if len(keep) < len(rows):
        log.warning(
            "%s: %d image/mask pair(s) unreadable or of different sizes; skipped (--skip-bad-images)",
            name,
            len(rows) - len(keep),
        )
    return keep


def _drop_undecodable(name: str, rows: list[Row], masks: bool, skipped: dict[str, int]) -> list[Row]:
    keep, bad = [], []
    for r in rows:
        assert r.image is not None
        err = decode_error(r.image)
        if err is None and masks and r.mask is not None:
            err = decode_error(r.mask)
        if err is None:
            keep.append(r)
        else:
            bad.append(f"{r.image.name} ({err})")
    if bad:
        skipped["bad_image"] = skipped.get("bad_image", 0) + len(bad)
        log.warning(
            "%s: %d unreadable image(s) skipped (--skip-bad-images): %s",
            name,
            len(bad),
            "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""),
        )
    return keep


class UnknownDatasetOption(DermbenchError):
    """A --dataset-opt key the dataset does not accept (a usage error, reported before any work)."""


#: (dataset name, keys that may be ignored) of the loader call in progress; see ``option_scope``
_SCOPE: contextvars.ContextVar[tuple[str, frozenset[str]] | None] = contextvars.ContextVar("dermbench_opt_scope",
                                                                                         default=None)
#: dataset name -> {ignored key: the options that dataset accepts}
_IGNORED: dict[str, dict[str, list[str]]] = {}
_ALLOW_OUTSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("dermbench_allow_outside", default=False)
#: options every loader decorated with ``dataset_options`` accepts (handled here, not by the loader)
COMMON_OPTIONS = ("allow_outside_root",)


@contextlib.contextmanager
def option_scope(dataset: str, lenient: frozenset[str] = frozenset()):
    """The runner loads each dataset inside this scope: unknown option keys are an error, except ``lenient``
    ones (bare options of a multi-dataset run meant for another dataset), which are dropped and recorded."""
    tok = _SCOPE.set((dataset, frozenset(lenient)))
    try:
        yield
    finally:
        _SCOPE.reset(tok)


def ignored_options() -> dict[str, dict[str, list[str]]]:
    """Which lenient keys each dataset loaded so far ignored, with the options it accepts instead."""
    return {k: dict(v) for k, v in _IGNORED.items()}


def dataset_options(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
    """Decorator for loaders: an unknown ``--dataset-opt`` key is an error listing the valid ones.

    In a multi-dataset run the runner marks bare keys as lenient (each may be meant for another dataset of
    the run); they are dropped here and the runner checks that some dataset used each. The common option
    ``allow_outside_root=true`` (image paths in a CSV may point outside ``--data-root``) is handled here.
    """
    import functools
    import inspect

    params = inspect.signature(fn).parameters
    known = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    valid = sorted((known - {"root", "variant", "name", "split_seed", "skip_bad_images"}) | set(COMMON_OPTIONS))

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Dataset:
        allow = opt_bool(kwargs.pop("allow_outside_root", False))
        unknown = sorted(set(kwargs) - known)
        if unknown:
            scope = _SCOPE.get()
            label = scope[0] if scope else fn.__module__.rsplit(".", 1)[-1]
            lenient = scope[1] if scope else frozenset()
            hard = [k for k in unknown if k not in lenient]
            if hard:
                raise UnknownDatasetOption(
                    f"dataset {label!r} has no option(s) {hard}; it accepts {', '.join(valid) or 'none'} "
                    f"(--dataset-opt key=value, or {label}.key=value in a run over several datasets)"
                )
            for k in unknown:
                _IGNORED.setdefault(label, {})[k] = valid
            kwargs = {k: v for k, v in kwargs.items() if k in known}
        tok = _ALLOW_OUTSIDE.set(allow)
        try:
            return fn(*args, **kwargs)
        finally:
            _ALLOW_OUTSIDE.reset(tok)

    wrapper.accepted_options = tuple(valid)  # type: ignore[attr-defined]
    return wrapper


def check_contained(rows: Sequence[Row], root: Path | str, dataset: str, allow_outside: bool = False) -> list[Row]:
    """Refuse image/mask paths from metadata that lead outside the data root.

    A metadata file naming ``../x.jpg`` or an absolute path would otherwise make a benchmark read files the
    user never pointed it at. Paths must stay inside the root lexically; a path with a ``..`` component is
    also resolved with its symlinks (``imgs/link/../../x`` cannot climb out through a linked folder). A
    symlink that the root's owner placed inside the root is followed: a folder of links into a shared copy of
    a dataset is a normal layout. ``--dataset-opt allow_outside_root=true`` opts out explicitly.
    """
    rows = list(rows)
    if allow_outside:
        return rows
    base_lex = os.path.abspath(os.path.expanduser(str(root)))
    base_real = os.path.realpath(base_lex)

    def inside(path: str, base: str) -> bool:
        return path == base or path.startswith(base.rstrip(os.sep) + os.sep)

    for r in rows:
        for kind, f in (("image", r.image), ("mask", r.mask)):
            if not isinstance(f, (str, Path)):
                continue
            raw = os.path.expanduser(str(f))
            full = raw if os.path.isabs(raw) else os.path.join(base_lex, raw)
            lex = os.path.normpath(full)
            ok = inside(lex, base_lex)
            if ok and ".." in Path(full).parts:
                real = os.path.realpath(full)
                ok = inside(real, base_real) or inside(real, base_lex)
                lex = real
            if not ok:
                raise DermbenchError(
                    f"{dataset}: the {kind} of sample {r.id!r} ({f}) leads to {lex}, outside the data root "
                    f"{base_lex} (a '..' or absolute path in the metadata). Fix the path, or pass "
                    "--dataset-opt allow_outside_root=true if reading outside the root is intended."
                )
    return rows


def opt_bool(v: Any) -> bool:
    """A boolean from a ``--dataset-opt key=value`` string (or a real bool)."""
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "true", "yes", "y", "on")

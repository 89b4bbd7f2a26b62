"""Dataset plugin for dermsynth, the embedded generated benchmark (see ``dermbench.synth``).

Two datasets: ``dermsynth`` (six diagnostic classes) and ``dermsynth-severity`` (acne-like grade 0-3).
Nothing is downloaded or stored: samples carry callables that draw the image / mask on demand.
``dermbench.synth`` (numpy + PIL) is imported inside the loader so that ``dermbench --help`` stays instant.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from dermbench import hookimpl
from dermbench.api import Dataset, DatasetInfo, DermbenchError, Sample

FIELDS = frozenset({"labels", "masks", "captions", "fitzpatrick", "sex", "age", "site"})
_COMMON = dict(
    fields=FIELDS,
    license="CC0-1.0 (generated)",
    commercial_use=True,
    how_to_obtain="Nothing to obtain: images are generated from (seed, index) on demand.",
    needs_root=False,
    official_split=True,
)
# label names are repeated here (not imported from dermbench.synth) to keep registration import-free
DIAGNOSIS_INFO = DatasetInfo(
    name="dermsynth",
    description=(
        "Generated dermoscopy-like images of 6 diagnoses (nevus, melanoma, BCC, seborrheic keratosis, vascular "
        "lesion, dermatofibroma) on Fitzpatrick I-VI skin from 4 clinics; masks, captions, skin type, sex, age, "
        "site. Lesion contrast falls on darker tones (tone_contrast_gap)."
    ),
    label_names=(
        "nevus",
        "melanoma",
        "basal cell carcinoma",
        "seborrheic keratosis",
        "vascular lesion",
        "dermatofibroma",
    ),
    **_COMMON,
)
SEVERITY_INFO = DatasetInfo(
    name="dermsynth-severity",
    description=(
        "Generated clinical photos of an acne-like eruption graded 0-3 (clear/mild/moderate/severe) by number "
        "and size of papules, pustules and nodules; masks, captions, skin type, sex, age, site."
    ),
    label_names=("clear", "mild", "moderate", "severe"),
    **_COMMON,
)

#: loader keyword -> type; everything else is refused with this list
OPTIONS: dict[str, type] = {
    "n": int,
    "size": int,
    "seed": int,
    "split_seed": int,
    "tone_contrast_gap": float,
    "hair": float,
    "sites": int,
    "exposure_compensation": float,
}


def _coerce(name: str, value: Any) -> Any:
    """Options may arrive as strings from the command line; convert them or say what is expected."""
    typ = OPTIONS[name]
    try:
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return typ(value)
    except (TypeError, ValueError):
        raise DermbenchError(f"dermsynth option {name}={value!r} is not a valid {typ.__name__}") from None


def stratified_halves(labels: list[int], split_seed: int) -> dict[str, list[int]]:
    """Deterministic stratified 50/50 split; odd class counts alternate their extra image between halves."""
    import numpy as np

    labels_arr = np.asarray(labels)
    train: list[int] = []
    test: list[int] = []
    for c in sorted(set(labels)):
        idx = np.flatnonzero(labels_arr == c)
        perm = idx[np.random.default_rng(np.random.SeedSequence([split_seed, int(c)])).permutation(len(idx))]
        half = len(idx) // 2 + (len(idx) % 2 if c % 2 == 0 else 0)
        train += perm[:half].tolist()
        test += perm[half:].tolist()
    return {"train": sorted(train), "test": sorted(test)}


def load(kind: str, root: Any = None, **opts: Any) -> Dataset:
    """Build the dataset: plans (metadata + captions) now, pixels on demand. ``root`` is ignored."""
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise DermbenchError(
            f"unknown dermsynth option(s) {', '.join(unknown)}; valid options: {', '.join(OPTIONS)}"
        )
    o = {k: _coerce(k, v) for k, v in opts.items()}
    n = o.pop("n", 400)
    split_seed = o.pop("split_seed", 0)

    from dermbench_plugins.datasets.dermsynth import generator as synth

    cfg = synth.SynthConfig(kind=kind, **o).validate()
    info = DIAGNOSIS_INFO if kind == "diagnosis" else SEVERITY_INFO
    n_classes = len(cfg.label_names)
    if n < 2 * n_classes:
        raise DermbenchError(
            f"{info.name} n={n} is too small: use n >= {2 * n_classes} so that every class is in train and test"
        )
    samples = []
    for i in range(n):
        pl = synth.plan(cfg, i)
        samples.append(
            Sample(
                id=f"s{cfg.seed}-{i:05d}",
                image=partial(synth.render, pl),
                label=pl.label,
                mask=partial(synth.lesion_mask, pl),
                caption=pl.caption,
                meta=pl.meta,
            )
        )
    return Dataset(
        info=info,
        samples=samples,
        splits=stratified_halves([s.label for s in samples], split_seed),  # type: ignore[misc]
        label_names=list(cfg.label_names),
        split_source=f"generated stratified 50/50 split_seed={split_seed}",
        content_fingerprint=cfg.fingerprint(n=n),
    )


def load_diagnosis(root: Any = None, *, n: int = 400, size: int = 224, seed: int = 0, split_seed: int = 0,
                   **opts: Any) -> Dataset:
    """``dermsynth``: options tone_contrast_gap (0-1, default 0.5), hair (probability), sites (1-4),
    exposure_compensation (0-1; default 1 - tone_contrast_gap, so that gap 0 is a no-gap null)."""
    return load("diagnosis", root, n=n, size=size, seed=seed, split_seed=split_seed, **opts)


def load_severity(root: Any = None, *, n: int = 400, size: int = 224, seed: int = 0, split_seed: int = 0,
                  **opts: Any) -> Dataset:
    """``dermsynth-severity``: same options as ``dermsynth``."""
    return load("severity", root, n=n, size=size, seed=seed, split_seed=split_seed, **opts)


#: declared so the runner checks --dataset-opt keys before loading anything
load_diagnosis.accepted_options = load_severity.accepted_options = tuple(OPTIONS)  # type: ignore[attr-defined]


@hookimpl
def register_datasets(register):
    register(DIAGNOSIS_INFO, load_diagnosis)
    register(SEVERITY_INFO, load_severity)

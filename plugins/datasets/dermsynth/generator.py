"""dermsynth: the embedded, procedurally generated dermatology benchmark (no files, seeded).

Why it exists: a fresh checkout must be able to run every task offline, and fairness / federated /
captioning code needs ground truth (masks, captions, skin type, acquisition site) that no small real
subset provides together. Every image is a pure function of (config, index), so nothing is stored.

Design choices (see DESIGN.md):

* **Determinism across machines.** Randomness comes from ``numpy.random.default_rng`` seeded with a
  ``SeedSequence`` of (seed, kind, index, stream). Pixel maths uses only +, -, *, /, sqrt, floor and
  comparisons (no exp/sin/log ufuncs, whose SIMD variants differ by an ulp between CPUs) and no BLAS
  reductions; rasterisation (lines) and resampling (upsample, blur) go through Pillow on 8-bit images,
  which uses fixed-point arithmetic.
* **Any resolution.** Every random field is drawn on a grid whose size depends only on its spatial
  frequency in normalised coordinates ([-1, 1] across the image), never on the pixel count, so the
  same scene is rendered at 64 px or 1024 px; only sensor noise is per pixel.
* **Multiplicative image formation.** Skin = tone x texture x lighting; lesions multiply the skin by a
  transmission map (pigment absorbs light, Beer-Lambert style). Weber contrast of a lesion is therefore
  the same on every skin tone, *unless* ``tone_contrast_gap`` > 0, which shrinks the transmission map
  towards 1 on Fitzpatrick III-VI (strongest on VI). That is the planted fairness gap; 0 removes it.
  Dark skin is also photographed darker (``exposure_compensation``, camera auto-exposure, by default
  ``1 - tone_contrast_gap``), so at ``tone_contrast_gap=0`` every tone is exposed alike and skin type
  changes only the skin's hue: a no-gap null, for the data and for models.
* **Cheap metadata.** :func:`plan` draws all scene parameters, metadata and the caption without
  drawing pixels, so a dataset of thousands lists labels/captions instantly; :func:`render` and
  :func:`lesion_mask` draw on demand.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: bump whenever any image, mask, caption or metadata for a given config could change
GENERATOR_VERSION = "1.0"

DIAGNOSES: tuple[str, ...] = (
    "nevus",
    "melanoma",
    "basal cell carcinoma",
    "seborrheic keratosis",
    "vascular lesion",
    "dermatofibroma",
)
SEVERITY_GRADES: tuple[str, ...] = ("clear", "mild", "moderate", "severe")
KINDS = ("diagnosis", "severity")

#: mean skin reflectance (sRGB 0-255) per Fitzpatrick type, ITA-consistent (I very light .. VI dark)
SKIN_TONES: dict[int, tuple[int, int, int]] = {
    1: (236, 206, 186),
    2: (225, 184, 156),
    3: (204, 156, 120),
    4: (170, 118, 84),
    5: (120, 80, 56),
    6: (74, 48, 36),
}
FITZPATRICK_P = (0.14, 0.19, 0.19, 0.16, 0.16, 0.16)
#: share of the contrast reduction applied per type (times ``tone_contrast_gap``)
TONE_GAP_WEIGHT = {1: 0.0, 2: 0.0, 3: 0.15, 4: 0.4, 5: 0.8, 6: 1.0}

#: named lesion colours as they look on reference skin (type II); used as transmission ratios
COLOURS: dict[str, tuple[int, int, int]] = {
    "tan": (200, 152, 112),
    "light brown": (170, 114, 78),
    "brown": (132, 80, 50),
    "dark brown": (86, 48, 28),
    "black": (40, 30, 30),
    "blue-gray": (92, 102, 128),
    "white": (238, 226, 220),
    "pink": (228, 150, 148),
    "red": (200, 62, 62),
    "purple": (118, 52, 96),
    "maroon": (112, 30, 42),
    "yellow": (222, 190, 128),
}
_REF = np.array(SKIN_TONES[2], dtype=np.float32)


def _ratio(name: str) -> np.ndarray:
    return np.array(COLOURS[name], dtype=np.float32) / _REF


#: field of view of the full image width, for caption sizes
FOV_MM = 15.0


@dataclass(frozen=True)
class AcquisitionSite:
    """A clinic: colour cast, exposure, focus, sensor resolution and noise differ per site (domain shift)."""

    name: str
    cast: tuple[float, float, float]
    exposure: float
    blur: float  # Gaussian sigma in pixels at 224 px output
    scale: float  # render at this fraction of the output size, then upsample (a low-resolution sensor)
    noise: float  # multiplicative sensor noise, relative SD
    scope: bool  # circular dermatoscope field with dark corners


SITES: tuple[AcquisitionSite, ...] = (
    AcquisitionSite("clinic-A", (1.00, 1.00, 1.00), 1.00, 0.0, 1.00, 0.012, False),
    AcquisitionSite("clinic-B", (1.05, 0.99, 0.86), 1.02, 1.1, 1.00, 0.008, False),
    AcquisitionSite("clinic-C", (0.92, 0.99, 1.07), 0.94, 0.0, 0.45, 0.020, False),
    AcquisitionSite("clinic-D", (1.03, 0.94, 1.01), 1.04, 0.5, 0.70, 0.025, True),
)
#: mild label skew per site (rows: class, cols: site), so federated clients are non-IID
_SITE_P_DIAG = (
    (0.40, 0.25, 0.20, 0.15),
    (0.15, 0.20, 0.25, 0.40),
    (0.20, 0.35, 0.25, 0.20),
    (0.25, 0.20, 0.35, 0.20),
    (0.25, 0.25, 0.25, 0.25),
    (0.30, 0.20, 0.20, 0.30),
)
_SITE_P_SEV = ((0.35, 0.25, 0.25, 0.15), (0.25, 0.30, 0.25, 0.20), (0.20, 0.25, 0.30, 0.25), (0.15, 0.20, 0.25, 0.40))

BODY_SITES = ("face", "scalp", "neck", "chest", "back", "abdomen", "upper extremity", "lower extremity")
_BODY_P = {
    "nevus": (0.05, 0.0, 0.05, 0.10, 0.30, 0.15, 0.15, 0.20),
    "melanoma": (0.10, 0.05, 0.0, 0.10, 0.30, 0.10, 0.15, 0.20),
    "basal cell carcinoma": (0.45, 0.10, 0.15, 0.10, 0.15, 0.0, 0.05, 0.0),
    "seborrheic keratosis": (0.15, 0.0, 0.10, 0.20, 0.30, 0.15, 0.10, 0.0),
    "vascular lesion": (0.15, 0.0, 0.0, 0.15, 0.15, 0.15, 0.15, 0.25),
    "dermatofibroma": (0.0, 0.0, 0.0, 0.0, 0.10, 0.05, 0.25, 0.60),
}
_SEV_BODY = ("face", "back", "chest")
_AGE = {  # mean, sd
    "nevus": (32, 14),
    "melanoma": (58, 15),
    "basal cell carcinoma": (66, 12),
    "seborrheic keratosis": (62, 12),
    "vascular lesion": (45, 18),
    "dermatofibroma": (40, 13),
}
_P_FEMALE = {
    "nevus": 0.55,
    "melanoma": 0.45,
    "basal cell carcinoma": 0.45,
    "seborrheic keratosis": 0.5,
    "vascular lesion": 0.5,
    "dermatofibroma": 0.65,
}


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter that changes pixels, masks, captions or metadata (all hashed into the fingerprint)."""

    kind: str = "diagnosis"  # diagnosis | severity
    seed: int = 0
    size: int = 224
    tone_contrast_gap: float = 0.5  # 0: lesion contrast independent of skin type; 1: none left on type VI
    hair: float = 0.3  # probability that an image has hair strands
    sites: int = 4  # number of acquisition sites (clinics) used, 1-4
    # camera auto-exposure towards the brightness of type III skin: 0 none (dark skin photographed dark),
    # 1 full (all tones equally bright); None: 1 - tone_contrast_gap, so that gap 0 means no gap at all
    exposure_compensation: float | None = None

    def validate(self) -> "SynthConfig":
        from dermbench.api import DermbenchError

        if self.kind not in KINDS:
            raise DermbenchError(f"dermsynth kind={self.kind!r} is not one of {KINDS}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise DermbenchError(f"dermsynth seed={self.seed!r}: use a non-negative integer")
        if not isinstance(self.size, int) or not 16 <= self.size <= 4096:
            raise DermbenchError(f"dermsynth size={self.size!r}: use an integer between 16 and 4096 pixels")
        if not 0.0 <= float(self.tone_contrast_gap) <= 1.0:
            raise DermbenchError(
                f"dermsynth tone_contrast_gap={self.tone_contrast_gap!r}: use a value in [0, 1] (0 = no gap)"
            )
        if not 0.0 <= float(self.hair) <= 1.0:
            raise DermbenchError(f"dermsynth hair={self.hair!r}: use a probability in [0, 1]")
        if self.exposure_compensation is not None and not 0.0 <= float(self.exposure_compensation) <= 1.0:
            raise DermbenchError(
                f"dermsynth exposure_compensation={self.exposure_compensation!r}: use a value in [0, 1] "
                "(or leave it unset: 1 - tone_contrast_gap)"
            )
        if not isinstance(self.sites, int) or not 1 <= self.sites <= len(SITES):
            raise DermbenchError(f"dermsynth sites={self.sites!r}: use an integer between 1 and {len(SITES)}")
        return self

    @property
    def label_names(self) -> tuple[str, ...]:
        return DIAGNOSES if self.kind == "diagnosis" else SEVERITY_GRADES

    def fingerprint(self, **extra: Any) -> str:
        """Hash of the generator version and every parameter: changes whenever the images would."""
        d = {"generator": GENERATOR_VERSION, **asdict(self), **extra}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    """One image's scene, metadata and caption, drawn without rendering pixels."""

    config: SynthConfig
    index: int
    label: int
    label_name: str
    fitzpatrick: int
    sex: str
    age: int
    body_site: str
    site: str
    caption: str
    attributes: dict[str, Any] = field(hash=False)  # visible attributes the caption was built from
    params: dict[str, Any] = field(hash=False, repr=False)  # drawing parameters

    @property
    def meta(self) -> dict[str, Any]:
        return {
            "fitzpatrick": self.fitzpatrick,
            "sex": self.sex,
            "age": self.age,
            "site": self.site,
            "body_site": self.body_site,
        }


# --------------------------------------------------------------------------------------------------
# Random streams


_KIND_CODE = {"diagnosis": 1, "severity": 2}
_STREAM_PLAN, _STREAM_DRAW, _STREAM_NOISE, _STREAM_SHAPE = 0, 1, 2, 3


def _rng(cfg: SynthConfig, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, _KIND_CODE[cfg.kind], index, stream]))


def _unit(rng: np.random.Generator) -> tuple[float, float]:
    """A random direction from uniform draws and sqrt only (portable, unlike cos/sin of a random angle)."""
    while True:
        x, y = rng.random(2).tolist()
        x, y = 2.0 * x - 1.0, 2.0 * y - 1.0
        r2 = x * x + y * y
        if 0.01 < r2 <= 1.0:
            r = math.sqrt(r2)  # IEEE-exact, like every other operation here
            return x / r, y / r


def _choice(rng: np.random.Generator, options: tuple[Any, ...] | list[Any], p: Any = None) -> Any:
    return options[int(rng.choice(len(options), p=p))]


# --------------------------------------------------------------------------------------------------
# Planning (metadata + scene parameters + caption)


def plan(cfg: SynthConfig, index: int) -> Plan:
    """Scene parameters, metadata and caption of image ``index`` (labels cycle, so classes are balanced)."""
    if index < 0:
        raise ValueError("index must be non-negative")
    rng = _rng(cfg, index, _STREAM_PLAN)
    names = cfg.label_names
    label = index % len(names)
    name = names[label]
    fitz = 1 + int(rng.choice(6, p=FITZPATRICK_P))
    site_p = np.array((_SITE_P_DIAG if cfg.kind == "diagnosis" else _SITE_P_SEV)[label][: cfg.sites])
    site = SITES[int(rng.choice(cfg.sites, p=site_p / site_p.sum()))].name
    if cfg.kind == "diagnosis":
        sex = "female" if rng.random() < _P_FEMALE[name] else "male"
        mu, sd = _AGE[name]
        age = int(np.clip(round(mu + sd * rng.standard_normal()), 2, 95))
        body = _choice(rng, BODY_SITES, np.array(_BODY_P[name]))
        params, attrs = _PLANNERS[name](rng)
        params.update(_plan_skin(rng, cfg, body))
        caption = _caption_lesion(rng, name, attrs, body)
    else:
        sex = "female" if rng.random() < 0.5 else "male"
        age = int(np.clip(round(20 + 6 * rng.standard_normal() + 2 * label), 12, 45))
        body = _choice(rng, _SEV_BODY, (0.6, 0.25, 0.15))
        params, attrs = _plan_acne(rng, label)
        params.update(_plan_skin(rng, cfg, body))
        caption = _caption_acne(rng, label, attrs, body)
    return Plan(cfg, index, label, name, fitz, sex, age, body, site, caption, attrs, params)


def _plan_skin(rng: np.random.Generator, cfg: SynthConfig, body: str) -> dict[str, Any]:
    hair = body != "face" and rng.random() < min(1.0, cfg.hair * (2.0 if body == "scalp" else 1.0))
    return {
        "light": (float(rng.normal(0, 0.05)), float(rng.normal(0, 0.05))),
        "vignette": float(rng.uniform(0.02, 0.10)),
        "redness": float(rng.uniform(0.0, 0.08)),
        "texture": float(rng.uniform(0.02, 0.06)),
        "hair": int(rng.integers(2, 14)) if hair else 0,
        "hair_dark": bool(rng.random() < 0.85),
    }


_K_MAX = 8


def _circle(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Points on the unit circle from the rational parametrisation (arithmetic only, portable)."""
    t = np.linspace(-1.0, 1.0, n)
    c, s = (1 - t * t) / (1 + t * t), 2 * t / (1 + t * t)
    return np.concatenate([c, -c]), np.concatenate([s, -s])


def _radius_fn(a: np.ndarray, b: np.ndarray, c: np.ndarray, s: np.ndarray) -> np.ndarray:
    """R(theta) = 1 + sum_k a_k cos(k theta) + b_k sin(k theta), from (cos, sin) by Chebyshev recurrences."""
    big_r = 1.0 + a[0] * c + b[0] * s
    t_prev, t_cur = np.ones_like(c), c  # T_0, T_1
    u_prev, u_cur = np.ones_like(c), 2.0 * c  # U_0, U_1
    for k in range(1, len(a)):
        t_prev, t_cur = t_cur, 2.0 * c * t_cur - t_prev  # T_{k+1}: cos((k+1) theta)
        big_r = big_r + a[k] * t_cur + b[k] * s * u_cur  # sin((k+1) theta) = sin(theta) U_k
        u_prev, u_cur = u_cur, 2.0 * c * u_cur - u_prev
    return big_r


def _shape_params(rng: np.random.Generator, r0: tuple[float, float], asym: float, irr: float, aspect: float,
                  edge: tuple[float, float], warp: float) -> dict[str, Any]:
    """Boundary r(theta) = R0 R(theta), R a low-order Fourier series (asymmetry: k <= 3, border: k > 3),
    further warped by noise at the lesion's own scale; the lesion always fits inside the image."""
    sd = np.array([asym * 0.5, asym, asym] + [irr] * (_K_MAX - 3), dtype=np.float64)
    a = rng.standard_normal(_K_MAX) * sd
    b = rng.standard_normal(_K_MAX) * sd
    c, s = _circle()
    rad = _radius_fn(a, b, c, s)
    if rad.min() < 0.45:  # keep the outline star-shaped and the lesion body convex-ish
        f = (1.0 - 0.45) / (1.0 - float(rad.min()))
        a, b = a * f, b * f
        rad = _radius_fn(a, b, c, s)
    radius = float(rng.uniform(*r0))
    asp = float(1.0 + rng.uniform(0.0, aspect))
    e = float(rng.uniform(*edge))
    reach = float(rad.max()) * (1.0 + e) + 1.5 * warp
    radius = min(radius, 0.9 / reach)
    extent = radius * reach + 0.02
    room = max(0.0, 0.92 - extent)
    cx, cy = (rng.random(2) * 2.0 - 1.0) * min(room, 0.3)
    rot = _unit(rng)
    return {
        "cx": float(cx),
        "cy": float(cy),
        "r0": radius,
        "aspect": asp,
        "rot": rot,
        "a": a.tolist(),
        "b": b.tolist(),
        "edge": e,
        "warp": warp,
        "extent": extent,
        "asym_score": float(np.abs(rad - rad[::-1]).mean() + np.abs(rad - np.roll(rad, len(rad) // 2)).mean())
        + 0.25 * (asp - 1.0),
        "irr_score": float(np.sqrt(a[3:] ** 2 + b[3:] ** 2).sum()) + warp,
    }


def _shape_words(shape: dict[str, Any], sharp: float = 0.06) -> tuple[str, str]:
    asym, irr, edge = shape["asym_score"], shape["irr_score"], shape["edge"]
    if asym > 0.3:
        form = "asymmetric"
    elif shape["aspect"] > 1.25:
        form = "oval"
    else:
        form = "round"
    if irr > 0.25:
        border = "irregular, notched border"
    elif edge > 0.16:
        border = "ill-defined border fading into the surrounding skin"
    elif irr > 0.15:
        border = "slightly irregular border"
    elif edge < sharp:
        border = "sharply demarcated regular border"
    else:
        border = "regular, well-defined border"
    return form, border


def _size_mm(shape: dict[str, Any]) -> float:
    return round(2.0 * shape["r0"] * (1.0 + 1.0 / shape["aspect"]) / 2.0 * FOV_MM / 2.0, 1)


def _plan_nevus(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    atypical = rng.random() < 0.2
    shape = _shape_params(rng, (0.28, 0.62), 0.09 if atypical else 0.035, 0.02 if atypical else 0.006, 0.35,
                          (0.04, 0.12), 0.08 if atypical else 0.03)
    base = _choice(rng, ("tan", "light brown", "brown", "dark brown"), (0.2, 0.35, 0.3, 0.15))
    pattern = _choice(rng, ("reticular", "globular", "homogeneous"), (0.45, 0.25, 0.3))
    colours = [base]
    patch = None
    if atypical:
        patch = _choice(rng, ("dark brown", "brown", "black"), (0.5, 0.3, 0.2))
        if patch != base:
            colours.append(patch)
    structures = {"reticular": ["pigment network"], "globular": ["globules"], "homogeneous": []}[pattern]
    params = {"shape": shape, "base": base, "pattern": pattern, "patch": patch,
              "patch_frac": float(rng.uniform(0.15, 0.35)), "center_dark": float(rng.uniform(0.0, 0.25)),
              "mottle": float(rng.uniform(0.05, 0.15))}
    return params, {"colours": colours, "structures": structures, "atypical": atypical, "shape": shape,
                    "network": "regular"}


def _plan_melanoma(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    featureless = rng.random() < 0.2
    if featureless:
        shape = _shape_params(rng, (0.3, 0.6), 0.06, 0.015, 0.4, (0.06, 0.15), 0.06)
    else:
        shape = _shape_params(rng, (0.45, 0.8), 0.13, 0.03, 0.6, (0.05, 0.22), 0.14)
    base = _choice(rng, ("light brown", "brown", "tan"), (0.4, 0.4, 0.2))
    dark = _choice(rng, ("dark brown", "black"), (0.6, 0.4))
    regions: list[tuple[str, float]] = [(dark, float(rng.uniform(0.15, 0.35)))]
    if not featureless:
        if rng.random() < 0.6:
            regions.append(("blue-gray", float(rng.uniform(0.1, 0.28))))
        if rng.random() < 0.35:
            regions.append(("white", float(rng.uniform(0.05, 0.14))))
        if rng.random() < 0.3:
            regions.append(("red", float(rng.uniform(0.05, 0.14))))
        if rng.random() < 0.35:
            regions.append(("black" if regions[0][0] != "black" else "dark brown", float(rng.uniform(0.05, 0.12))))
    structures = []
    network = rng.random() < 0.5
    dots = rng.random() < (0.3 if featureless else 0.65)
    if network:
        structures.append("pigment network")
    if dots:
        structures.append("globules")
    names = [r[0] for r in regions]
    if "blue-gray" in names:
        structures.append("blue-white veil")
    if "white" in names:
        structures.append("regression")
    colours = [base] + [c for c in dict.fromkeys(names) if c != base]
    params = {"shape": shape, "base": base, "regions": regions, "network": network, "dots": dots,
              "n_dots": int(rng.integers(6, 30)), "mottle": float(rng.uniform(0.1, 0.25))}
    return params, {"colours": colours, "structures": structures, "featureless": featureless, "shape": shape,
                    "network": "atypical"}


def _plan_bcc(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    pigmented = rng.random() < 0.2
    shape = _shape_params(rng, (0.3, 0.65), 0.08, 0.02, 0.4, (0.08, 0.2), 0.08)
    base = "brown" if pigmented else _choice(rng, ("pink", "white"), (0.75, 0.25))
    colours = [base] if base != "white" else ["pearly white"]
    if base != "pink":
        colours.append("pink")
    structures = ["arborizing vessels"]
    nests = pigmented or rng.random() < 0.45
    ulcer = rng.random() < 0.35
    shiny = rng.random() < 0.5
    if nests:
        structures.append("blue-gray ovoid nests")
        colours.append("blue-gray")
    if ulcer:
        structures.append("ulceration")
        colours.append("red")
    if shiny:
        structures.append("shiny white areas")
    params = {"shape": shape, "base": base, "nests": nests, "ulcer": ulcer, "shiny": shiny,
              "n_trees": int(rng.integers(2, 6)), "n_nests": int(rng.integers(2, 7)),
              "strength": float(rng.uniform(0.5, 0.9)), "mottle": float(rng.uniform(0.04, 0.12))}
    return params, {"colours": list(dict.fromkeys(colours)), "structures": structures, "shape": shape}


def _plan_sk(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    shape = _shape_params(rng, (0.38, 0.78), 0.06, 0.015, 0.5, (0.015, 0.05), 0.05)
    base = _choice(rng, ("tan", "light brown", "brown", "dark brown"), (0.25, 0.3, 0.3, 0.15))
    milia = int(rng.integers(0, 14))
    comedo = int(rng.integers(0, 12))
    structures = ["cerebriform surface"]
    colours = [base]
    if milia >= 3:
        structures.append("milia-like cysts")
        colours.append("white")
    if comedo >= 3:
        structures.append("comedo-like openings")
        if base != "dark brown":
            colours.append("dark brown")
    params = {"shape": shape, "base": base, "milia": milia, "comedo": comedo,
              "ridges": float(rng.uniform(0.25, 0.5)), "ridge_cells": float(rng.uniform(8, 16)),
              "mottle": float(rng.uniform(0.08, 0.2))}
    return params, {"colours": colours, "structures": structures, "shape": shape}


def _plan_vascular(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    thrombosed = rng.random() < 0.2
    shape = _shape_params(rng, (0.22, 0.55), 0.05, 0.01, 0.35, (0.02, 0.06), 0.03)
    pairs = (("red", "purple"), ("red", "maroon"), ("maroon", "purple"))
    lac = ("maroon", "purple") if thrombosed else _choice(rng, pairs)
    colours = ["dark red" if c == "maroon" else c for c in lac]
    if thrombosed:
        colours.append("black")
    params = {"shape": shape, "lacunae": lac, "thrombosed": thrombosed, "n_lac": int(rng.integers(25, 60)),
              "septa": float(rng.uniform(0.45, 0.75)), "mottle": float(rng.uniform(0.05, 0.12))}
    structures = ["lacunae"] + (["thrombosis"] if thrombosed else [])
    return params, {"colours": colours, "structures": structures, "shape": shape}


def _plan_df(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    shape = _shape_params(rng, (0.25, 0.55), 0.04, 0.008, 0.35, (0.18, 0.32), 0.04)
    pink = rng.random() < 0.3
    base = "pink" if pink else _choice(rng, ("tan", "light brown"), (0.5, 0.5))
    params = {"shape": shape, "base": base, "core": float(rng.uniform(0.25, 0.55)),
              "network": bool(rng.random() < 0.7), "mottle": float(rng.uniform(0.04, 0.1))}
    structures = ["central white patch"] + (["peripheral network"] if params["network"] else [])
    return params, {"colours": [base, "white"], "structures": structures, "shape": shape}


_PLANNERS = {
    "nevus": _plan_nevus,
    "melanoma": _plan_melanoma,
    "basal cell carcinoma": _plan_bcc,
    "seborrheic keratosis": _plan_sk,
    "vascular lesion": _plan_vascular,
    "dermatofibroma": _plan_df,
}


def _plan_acne(rng: np.random.Generator, grade: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Acne-like eruption: counts and sizes of papules overlap between neighbouring grades on purpose."""
    lo, hi = ((0, 3), (2, 10), (8, 24), (18, 45))[grade]
    n_pap = int(rng.integers(lo, hi + 1))
    n_pus = int(rng.binomial(n_pap, (0.0, 0.1, 0.25, 0.35)[grade]))
    n_nod = int(rng.integers(1, 5)) if grade == 3 and rng.random() < 0.7 else 0
    n_com = int(rng.integers(2, 12))
    blobs = []  # (x, y, r, kind)
    for i in range(n_pap + n_nod + n_com):
        kind = "papule" if i < n_pap else ("nodule" if i < n_pap + n_nod else "comedo")
        r = {"papule": rng.uniform(0.025, 0.04 + 0.008 * grade), "nodule": rng.uniform(0.07, 0.11),
             "comedo": rng.uniform(0.008, 0.016)}[kind]
        x, y = rng.random(2) * 1.7 - 0.85
        pus = kind == "papule" and i < n_pus
        blobs.append((float(x), float(y), float(r), "pustule" if pus else kind))
    erythema = float((0.0, 0.04, 0.09, 0.15)[grade] + rng.uniform(0, 0.04))
    params = {"blobs": blobs, "erythema": erythema}
    attrs = {"papules": n_pap - n_pus, "pustules": n_pus, "nodules": n_nod, "comedones": n_com,
             "erythema": erythema > 0.08}
    return params, attrs


# --------------------------------------------------------------------------------------------------
# Captions


_DX_WORDS = {
    "nevus": ("benign melanocytic nevus", "common nevus", "melanocytic nevus"),
    "melanoma": ("melanoma", "malignant melanoma", "suspected melanoma"),
    "basal cell carcinoma": ("basal cell carcinoma", "basal cell carcinoma (BCC)"),
    "seborrheic keratosis": ("seborrheic keratosis", "benign seborrheic keratosis"),
    "vascular lesion": ("vascular lesion (angioma)", "vascular lesion", "haemangioma-like vascular lesion"),
    "dermatofibroma": ("dermatofibroma", "benign dermatofibroma"),
}
_STRUCT_WORDS = {
    "pigment network": {"regular": "a regular pigment network", "atypical": "an atypical, thickened pigment network"},
    "globules": {"regular": "regular brown globules", "atypical": "irregular dots and globules"},
    "blue-white veil": "a blue-white veil",
    "regression": "white scar-like regression areas",
    "arborizing vessels": "arborizing telangiectatic vessels",
    "blue-gray ovoid nests": "blue-gray ovoid nests",
    "ulceration": "ulceration with a red crust",
    "shiny white areas": "shiny pearly-white areas",
    "cerebriform surface": "a waxy cerebriform surface",
    "milia-like cysts": "milia-like cysts",
    "comedo-like openings": "comedo-like openings",
    "lacunae": "well-demarcated red-purple lacunae",
    "thrombosis": "dark thrombosed lacunae",
    "central white patch": "a central white scar-like patch",
    "peripheral network": "a delicate peripheral pigment network",
}


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _caption_lesion(rng: np.random.Generator, name: str, attrs: dict[str, Any], body: str) -> str:
    shape = attrs["shape"]
    form, border = _shape_words(shape)
    attrs["form"], attrs["border"] = form, border
    mm = _size_mm(shape)
    attrs["size_mm"] = mm
    size_word = "small" if mm < 5 else ("large" if mm > 10 else "medium-sized")
    colours = attrs["colours"]
    if len(colours) == 1:
        colour = _choice(rng, (f"uniformly {colours[0]}", f"homogeneous {colours[0]}", f"{colours[0]}"))
    elif len(colours) == 2:
        colour = f"{colours[0]} and {colours[1]}"
    else:
        colour = f"multicoloured ({_join(colours)})"
    structs = []
    for s in attrs["structures"]:
        w = _STRUCT_WORDS[s]
        structs.append(w[attrs.get("network", "regular")] if isinstance(w, dict) else w)
    struct = f" and {_join(structs)}" if structs else ""
    dx = _choice(rng, _DX_WORDS[name])
    t = int(rng.integers(4))
    if t == 0:
        return f"A {size_word} {form} {colour} lesion on the {body} with {_a(border)}{struct}; consistent with {dx}."
    if t == 1:
        return (f"Dermoscopy of the {body} shows a {mm:g} mm {form} lesion, {colour}, with {_a(border)}{struct}. "
                f"Impression: {dx}.")
    if t == 2:
        with_s = f", showing {_join(structs)}" if structs else ""
        return f"{dx[0].upper() + dx[1:]} on the {body}: {form}, {size_word} ({mm:g} mm), {colour}, {border}{with_s}."
    return f"{form.capitalize()} {colour} lesion, about {mm:g} mm, {body}; {border}{struct}. Likely {dx}."


def _caption_acne(rng: np.random.Generator, grade: int, attrs: dict[str, Any], body: str) -> str:
    word = ("clear", "mild", "moderate", "severe")[grade]
    parts = []
    if attrs["papules"]:
        parts.append(f"{attrs['papules']} inflammatory papule{'s' if attrs['papules'] != 1 else ''}")
    if attrs["pustules"]:
        parts.append(f"{attrs['pustules']} pustule{'s' if attrs['pustules'] != 1 else ''}")
    if attrs["nodules"]:
        parts.append(f"{attrs['nodules']} nodule{'s' if attrs['nodules'] != 1 else ''}")
    parts.append(f"{attrs['comedones']} comedones")
    ery = " on a background of erythema" if attrs["erythema"] else ""
    if grade == 0:
        head = _choice(rng, ("Clear or almost clear skin", "Clear skin, acne grade 0"))
    else:
        w = word.capitalize()
        head = _choice(rng, (f"{w} acne-like eruption", f"Acne, {word} grade", f"{w} acne"))
    return f"{head} on the {body} with {_join(parts)}{ery}."


# --------------------------------------------------------------------------------------------------
# Drawing primitives (arithmetic-only numpy on a normalised grid)


class _Canvas:
    """Pixel-centre coordinates in [-1, 1] of an N x N image, or of a box of it (rows i0:i1, cols j0:j1).

    ``u`` varies along x (shape (1, w)), ``v`` along y (shape (h, 1)); fields evaluated on a box equal
    the same pixels of the full image, so lesions are painted only where they are.
    """

    def __init__(self, n: int, box: tuple[int, int, int, int] | None = None) -> None:
        c = (np.arange(n, dtype=np.float32) + np.float32(0.5)) * np.float32(2.0 / n) - np.float32(1.0)
        i0, i1, j0, j1 = box or (0, n, 0, n)
        self.N = n
        self.i0, self.i1, self.j0, self.j1 = i0, i1, j0, j1
        self.u = c[None, j0:j1]
        self.v = c[i0:i1, None]
        self.shape = (i1 - i0, j1 - j0)
        self.px = 2.0 / n

    def around(self, cx: float, cy: float, ext: float) -> "_Canvas":
        """The sub-canvas covering the square of half-width ``ext`` around (cx, cy), clipped to the image."""
        n = self.N
        j0 = max(0, int((cx - ext + 1.0) / self.px) - 1)
        j1 = min(n, int((cx + ext + 1.0) / self.px) + 2)
        i0 = max(0, int((cy - ext + 1.0) / self.px) - 1)
        i1 = min(n, int((cy + ext + 1.0) / self.px) + 2)
        return _Canvas(n, (i0, i1, j0, j1))

    @property
    def sl(self) -> tuple[slice, slice]:
        return slice(self.i0, self.i1), slice(self.j0, self.j1)


def _noise(rng: np.random.Generator, cv: _Canvas, cells: float, rotate: bool = False) -> np.ndarray:
    """Smooth value noise in [0, 1] with ``cells`` grid cells across the image.

    Axis-aligned noise is separable (two cheap passes); ``rotate=True`` uses a randomly rotated grid
    (four gathers, slower) where grid-aligned artefacts would show, e.g. thin ridge lines.
    """
    if rotate:
        m = int(1.5 * cells) + 4
        g = rng.random(m * m, dtype=np.float32)
        ca, sa = _unit(rng)
        s = np.float32(cells / 2.0)
        half = np.float32(m / 2.0)
        x = (cv.u * np.float32(ca) - cv.v * np.float32(sa)) * s + half
        y = (cv.u * np.float32(sa) + cv.v * np.float32(ca)) * s + half
        xf = np.floor(x)
        yf = np.floor(y)
        fx = x - xf
        fy = y - yf
        ix = xf.astype(np.intp)
        iy = yf.astype(np.intp)
        fx = fx * fx * (np.float32(3.0) - np.float32(2.0) * fx)
        fy = fy * fy * (np.float32(3.0) - np.float32(2.0) * fy)
        idx = iy * m + ix
        a = g[idx]
        top = a + (g[idx + 1] - a) * fx
        c = g[idx + m]
        bot = c + (g[idx + m + 1] - c) * fx
        return top + (bot - top) * fy
    m = int(cells) + 3
    g = rng.random((m, m), dtype=np.float32)
    ox, oy = rng.random(2, dtype=np.float32)
    s = np.float32(cells / 2.0)
    x = (cv.u[0] + np.float32(1.0)) * s + ox
    xf = np.floor(x)
    fx = x - xf
    ix = xf.astype(np.intp)
    fx = fx * fx * (np.float32(3.0) - np.float32(2.0) * fx)
    a = g[:, ix]
    rows = a + (g[:, ix + 1] - a) * fx  # (m, W)
    y = (cv.v[:, 0] + np.float32(1.0)) * s + oy
    yf = np.floor(y)
    fy = y - yf
    iy = yf.astype(np.intp)
    fy = (fy * fy * (np.float32(3.0) - np.float32(2.0) * fy))[:, None]
    top = rows[iy]
    return top + (rows[iy + 1] - top) * fy


def _fbm(rng: np.random.Generator, cv: _Canvas, cells: float, octaves: int = 2, rotate: bool = False) -> np.ndarray:
    out = _noise(rng, cv, cells, rotate)
    amp, tot = 0.5, 1.0
    for o in range(1, octaves):
        out += np.float32(amp) * _noise(rng, cv, cells * (2**o), rotate)
        tot += amp
        amp *= 0.5
    return out * np.float32(1.0 / tot)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (np.float32(3.0) - np.float32(2.0) * x)


def _shape_ratio(cv: _Canvas, shape: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """r / (R0 R(theta)): < 1 inside the lesion; (cos, sin) of theta come from the pixel offsets (no trig)."""
    x = cv.u - np.float32(shape["cx"])
    y = cv.v - np.float32(shape["cy"])
    if shape["warp"] > 0:
        w = np.float32(2.0 * shape["warp"] * shape["r0"])
        cells = 2.4 / shape["r0"]
        x = x + (_noise(rng, cv, cells) - np.float32(0.5)) * w
        y = y + (_noise(rng, cv, cells) - np.float32(0.5)) * w
    ca, sa = (np.float32(t) for t in shape["rot"])
    xr = x * ca + y * sa
    yr = (y * ca - x * sa) * np.float32(shape["aspect"])
    r = np.sqrt(xr * xr + yr * yr) + np.float32(1e-6)
    a = np.array(shape["a"], dtype=np.float32)
    b = np.array(shape["b"], dtype=np.float32)
    big_r = _radius_fn(a, b, xr / r, yr / r)
    return r / (np.maximum(big_r, np.float32(0.25)) * np.float32(shape["r0"]))


def _lesion_canvas(cv: _Canvas, shape: dict[str, Any]) -> _Canvas:
    return cv.around(shape["cx"], shape["cy"], shape["extent"] + 2 * cv.px)


def _alpha(f: np.ndarray, edge: float) -> np.ndarray:
    """Opacity: 1 inside, 0 outside, 0.5 exactly on the mask boundary f == 1."""
    e = np.float32(max(edge, 1e-3))
    return _smoothstep((np.float32(1.0) + e - f) / (np.float32(2.0) * e))


def _blobs(cv: _Canvas, blobs: list[tuple[float, float, float]], soft: float = 0.0) -> np.ndarray:
    """Max-composite of discs (x, y, r) in normalised units; ``soft`` > 0 gives dome profiles."""
    h, w = cv.shape
    out = np.zeros((h, w), dtype=np.float32)
    aa = np.float32(cv.px)
    for x, y, r in blobs:
        ext = r + 2 * cv.px
        j0 = max(0, int((x - ext + 1.0) / cv.px) - cv.j0)
        j1 = min(w, int((x + ext + 1.0) / cv.px) + 2 - cv.j0)
        i0 = max(0, int((y - ext + 1.0) / cv.px) - cv.i0)
        i1 = min(h, int((y + ext + 1.0) / cv.px) + 2 - cv.i0)
        if j0 >= j1 or i0 >= i1:
            continue
        dx = cv.u[:, j0:j1] - np.float32(x)
        dy = cv.v[i0:i1, :] - np.float32(y)
        d = np.sqrt(dx * dx + dy * dy)
        if soft > 0:
            wgt = np.clip((np.float32(r) - d) / np.float32(soft * r + cv.px), 0.0, 1.0)
        else:
            wgt = np.clip((np.float32(r) - d) / aa + np.float32(0.5), 0.0, 1.0)
        np.maximum(out[i0:i1, j0:j1], wgt, out=out[i0:i1, j0:j1])
    return out


def _lines(cv: _Canvas, polylines: list[tuple[list[tuple[float, float]], float]]) -> np.ndarray:
    """Rasterise polylines (normalised points, width in normalised units) with Pillow; returns (h, w) in [0, 1]."""
    h, w = cv.shape
    ss = 2  # draw at twice the resolution and box-reduce: anti-aliased lines
    im = Image.new("L", (w * ss, h * ss), 0)
    dr = ImageDraw.Draw(im)
    n = cv.N * ss
    for pts, width in polylines:
        pix = [((x + 1.0) * n / 2.0 - cv.j0 * ss, (y + 1.0) * n / 2.0 - cv.i0 * ss) for x, y in pts]
        wpx = width * n / 2.0
        if wpx < 1.0:  # sub-pixel lines: draw 1 px at reduced intensity
            dr.line(pix, fill=max(1, int(round(255 * wpx))), width=1)
        else:
            dr.line(pix, fill=255, width=int(round(wpx)), joint="curve")
    return np.asarray(im.reduce(ss), dtype=np.float32) * np.float32(1.0 / 255.0)


def _region(field_: np.ndarray, inside: np.ndarray, frac: float, soft: float = 0.04) -> np.ndarray:
    """Soft mask of the ``frac`` share of lesion pixels where ``field_`` is highest (so areas match captions)."""
    vals = field_[inside]
    if vals.size == 0 or frac <= 0:
        return np.zeros_like(field_)
    thr = np.float32(np.partition(vals, int((1.0 - frac) * (vals.size - 1)))[int((1.0 - frac) * (vals.size - 1))])
    return _smoothstep((field_ - thr) / np.float32(soft) + np.float32(0.5))


def _layer(t: np.ndarray, w: np.ndarray, colour: np.ndarray) -> None:
    """t <- t + w (colour - t), in place (alpha-composite a transmission colour)."""
    t += w[..., None] * (colour[None, None, :] - t)


# --------------------------------------------------------------------------------------------------
# Painters: each returns the lesion's transmission map (h, w, 3) on its sub-canvas; the shape's opacity
# (from ``f``, the radius ratio) is applied by the caller, so painters only decide colour and structure.


def _base_t(cv: _Canvas, colour: str) -> np.ndarray:
    t = np.empty(cv.shape + (3,), dtype=np.float32)
    t[:] = _ratio(colour)
    return t


def _mottle(t: np.ndarray, rng: np.random.Generator, cv: _Canvas, amp: float, cells: float = 10.0) -> None:
    m = np.float32(1.0) + np.float32(amp) * (_fbm(rng, cv, cells, 2) - np.float32(0.5)) * np.float32(2.0)
    t *= m[..., None]


def _ridges(rng: np.random.Generator, cv: _Canvas, cells: float, rotate: bool = True) -> np.ndarray:
    """Thin ridge lines (a net) where the noise crosses 0.5: 1 on the ridge, 0 away from it."""
    n = _noise(rng, cv, cells, rotate=rotate)
    d = np.abs(n - np.float32(0.5))
    return np.clip(np.float32(1.0) - d * np.float32(9.0), 0.0, 1.0)


def _scatter(rng: np.random.Generator, shape: dict[str, Any], count: int, rmin: float, rmax: float,
             rad: tuple[float, float] = (0.0, 0.85)) -> list[tuple[float, float, float]]:
    """Points inside the lesion's ellipse (ignoring the border wiggle), radius fraction in ``rad``."""
    out = []
    ca, sa = shape["rot"]
    for _ in range(count):
        dx, dy = _unit(rng)
        q = rad[0] + (rad[1] - rad[0]) * math.sqrt(rng.random())
        lx = dx * q * shape["r0"]
        ly = dy * q * shape["r0"] / shape["aspect"]
        x = shape["cx"] + lx * ca - ly * sa
        y = shape["cy"] + lx * sa + ly * ca
        out.append((x, y, float(rng.uniform(rmin, rmax))))
    return out


def _paint_nevus(cv: _Canvas, p: dict[str, Any], rng: np.random.Generator, f: np.ndarray, inside: np.ndarray
                 ) -> np.ndarray:
    t = _base_t(cv, p["base"])
    if p["center_dark"] > 0:
        _layer(t, np.clip(np.float32(1.0) - f, 0, 1) * np.float32(p["center_dark"]), _ratio("dark brown"))
    if p["pattern"] == "reticular":
        net = np.maximum(_ridges(rng, cv, 40.0), _ridges(rng, cv, 40.0))
        _layer(t, net * _smoothstep((np.float32(1.05) - f) * 4) * np.float32(0.55), _ratio("dark brown"))
    elif p["pattern"] == "globular":
        glob = _blobs(cv, _scatter(rng, p["shape"], 30, 0.018, 0.035, (0.1, 0.9)), soft=0.6)
        _layer(t, glob * np.float32(0.7), _ratio("dark brown"))
    if p["patch"]:
        field_ = _fbm(rng, cv, 3.0, 2, rotate=True)
        _layer(t, _region(field_, inside, p["patch_frac"], 0.08), _ratio(p["patch"]))
    _mottle(t, rng, cv, p["mottle"])
    return t


def _paint_melanoma(cv: _Canvas, p: dict[str, Any], rng: np.random.Generator, f: np.ndarray, inside: np.ndarray
                    ) -> np.ndarray:
    t = _base_t(cv, p["base"])
    for colour, frac in p["regions"]:
        field_ = _fbm(rng, cv, 4.0, 3, rotate=True)
        soft = 0.14 if colour in ("blue-gray", "white") else 0.08
        w = _region(field_, inside, frac, soft)
        if colour == "blue-gray":  # veil: blue-gray with a whitish, ground-glass haze
            _layer(t, w, _ratio("blue-gray"))
            _layer(t, w * np.float32(0.12), _ratio("white"))
        else:
            _layer(t, w * np.float32(0.9), _ratio(colour))
    if p["network"]:
        net = np.maximum(_ridges(rng, cv, 28.0), _ridges(rng, cv, 22.0))
        net *= np.clip(_noise(rng, cv, 4.0) * 2 - np.float32(0.3), 0, 1)
        _layer(t, net * np.float32(0.75), _ratio("black"))
    if p["dots"]:  # irregular dots/globules, crowded near the periphery
        dots = _blobs(cv, _scatter(rng, p["shape"], p["n_dots"], 0.008, 0.03, (0.5, 1.05)), soft=0.3)
        _layer(t, dots * np.clip(np.float32(1.2) - f, 0, 1), _ratio("black"))
    _mottle(t, rng, cv, p["mottle"], 7.0)
    return t


def _tree(rng: np.random.Generator, x: float, y: float, dx: float, dy: float, length: float, width: float,
          depth: int, out: list[tuple[list[tuple[float, float]], float]]) -> None:
    """Arborizing vessel: a wiggly trunk that forks into thinner branches."""
    pts = [(x, y)]
    for _ in range(6):
        jx, jy = _unit(rng)
        dx, dy = dx + 0.45 * jx, dy + 0.45 * jy
        nrm = math.sqrt(dx * dx + dy * dy) or 1.0
        dx, dy = dx / nrm, dy / nrm
        x, y = x + dx * length / 6, y + dy * length / 6
        pts.append((x, y))
    out.append((pts, width))
    if depth > 0:
        for _ in range(2):
            k = int(rng.integers(2, 6))
            bx, by = pts[k]
            jx, jy = _unit(rng)
            _tree(rng, bx, by, dx + jx, dy + jy, length * 0.55, width * 0.6, depth - 1, out)


def _paint_bcc(cv: _Canvas, p: dict[str, Any], rng: np.random.Generator, f: np.ndarray, inside: np.ndarray
               ) -> np.ndarray:
    t = _base_t(cv, p["base"])
    # translucent: pull the colour towards the skin's own (t=1) near the rim
    _layer(t, _smoothstep((f - np.float32(0.4)) * np.float32(1.6)) * np.float32(0.5), np.ones(3, np.float32))
    if p["shiny"]:
        w = _region(_fbm(rng, cv, 6.0, 2, rotate=True), inside, 0.15, 0.25)
        _layer(t, w * np.float32(0.55), _ratio("white"))
    if p["nests"]:
        nests = _blobs(cv, _scatter(rng, p["shape"], p["n_nests"], 0.03, 0.07, (0.0, 0.75)), soft=0.7)
        _layer(t, nests * np.float32(0.85), _ratio("blue-gray"))
    if p["ulcer"]:
        sh = p["shape"]
        ulc = _blobs(cv, [(sh["cx"], sh["cy"], sh["r0"] * float(rng.uniform(0.15, 0.35)))], soft=0.5)
        ulc *= _noise(rng, cv, 12.0) * np.float32(0.5) + np.float32(0.6)
        _layer(t, np.clip(ulc, 0, 1), _ratio("red"))
        _layer(t, np.clip(ulc - np.float32(0.5), 0, 1), _ratio("maroon"))
    trees: list[tuple[list[tuple[float, float]], float]] = []
    sh = p["shape"]
    for x, y, _ in _scatter(rng, sh, p["n_trees"], 0, 0, (0.0, 0.6)):
        dx, dy = _unit(rng)
        _tree(rng, x, y, dx, dy, sh["r0"] * float(rng.uniform(0.5, 0.9)), 0.012, 2, trees)
    ves = _lines(cv, trees) * np.clip((np.float32(1.05) - f) * 6, 0, 1)
    _layer(t, ves * np.float32(p["strength"]), _ratio("red"))
    _mottle(t, rng, cv, p["mottle"])
    return t


def _paint_sk(cv: _Canvas, p: dict[str, Any], rng: np.random.Generator, f: np.ndarray, inside: np.ndarray
              ) -> np.ndarray:
    t = _base_t(cv, p["base"])
    ridges = _ridges(rng, cv, p["ridge_cells"]) * np.float32(0.7)
    ridges += _ridges(rng, cv, p["ridge_cells"] * 1.7) * np.float32(0.3)
    # waxy cerebriform surface: light gyri with darker fissures
    t *= (np.float32(1.0) + np.float32(p["ridges"]) * (ridges - np.float32(0.35)))[..., None]
    sh = p["shape"]
    if p["milia"]:
        _layer(t, _blobs(cv, _scatter(rng, sh, p["milia"], 0.01, 0.022), soft=0.5), _ratio("white"))
    if p["comedo"]:
        _layer(t, _blobs(cv, _scatter(rng, sh, p["comedo"], 0.01, 0.025), soft=0.3) * np.float32(0.85),
               _ratio("black"))
    _mottle(t, rng, cv, p["mottle"], 12.0)
    return t


def _paint_vascular(cv: _Canvas, p: dict[str, Any], rng: np.random.Generator, f: np.ndarray, inside: np.ndarray
                    ) -> np.ndarray:
    # red-purple lacunae packed in a lobulated lesion, separated by pale pinkish septa
    t = _base_t(cv, "pink")
    _layer(t, np.full(f.shape, np.float32(1.0 - p["septa"])), _ratio("red"))
    sh = p["shape"]
    big = 0.07 * max(0.6, sh["r0"] / 0.35)
    lac = _scatter(rng, sh, p["n_lac"], 0.4 * big, big, (0.0, 0.98))
    c1, c2 = p["lacunae"]
    shade = _noise(rng, cv, 10.0)
    w1 = _blobs(cv, lac[0::2], soft=0.35)
    w2 = _blobs(cv, lac[1::2], soft=0.35)
    _layer(t, w1 * (np.float32(0.7) + np.float32(0.3) * shade), _ratio(c1))
    _layer(t, w2 * (np.float32(0.7) + np.float32(0.3) * shade), _ratio(c2))
    if p["thrombosed"]:
        thr = _blobs(cv, _scatter(rng, sh, 4, 0.03, 0.07, (0.0, 0.6)), soft=0.4)
        _layer(t, thr * np.float32(0.85), _ratio("black"))
    # darker, denser towards the centre
    _layer(t, np.clip(np.float32(0.8) - f, 0, 1) * np.float32(0.3), _ratio("maroon"))
    _mottle(t, rng, cv, p["mottle"])
    return t


def _paint_df(cv: _Canvas, p: dict[str, Any], rng: np.random.Generator, f: np.ndarray, inside: np.ndarray
              ) -> np.ndarray:
    t = _base_t(cv, p["base"])
    if p["network"]:
        net = np.maximum(_ridges(rng, cv, 45.0), _ridges(rng, cv, 45.0)) * _smoothstep((f - np.float32(0.3)) * 3)
        _layer(t, net * np.float32(0.5), _ratio("brown"))
    core = _smoothstep((np.float32(p["core"]) - f) / np.float32(0.15) + np.float32(0.5))
    core *= _noise(rng, cv, 6.0) * np.float32(0.6) + np.float32(0.55)
    _layer(t, np.clip(core, 0, 1), _ratio("white"))
    _mottle(t, rng, cv, p["mottle"])
    return t


_PAINTERS = {
    "nevus": _paint_nevus,
    "melanoma": _paint_melanoma,
    "basal cell carcinoma": _paint_bcc,
    "seborrheic keratosis": _paint_sk,
    "vascular lesion": _paint_vascular,
    "dermatofibroma": _paint_df,
}


# --------------------------------------------------------------------------------------------------
# Rendering


def _contrast_k(cfg: SynthConfig, fitz: int) -> np.float32:
    return np.float32(1.0 - cfg.tone_contrast_gap * TONE_GAP_WEIGHT[fitz])


def _exposure_gain(cfg: SynthConfig, fitz: int) -> float:
    """Auto-exposure gain (L_III / L_type) ** compensation, rounded to 1e-4 so that a libm pow differing
    by an ulp between machines cannot change a pixel. Type III is the target so that brightened type VI
    skin does not clip."""
    def luma(rgb: tuple[int, int, int]) -> float:
        return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]

    comp = cfg.exposure_compensation
    comp = 1.0 - float(cfg.tone_contrast_gap) if comp is None else float(comp)
    ratio = luma(SKIN_TONES[3]) / luma(SKIN_TONES[fitz])
    return round(ratio**comp, 4)


def _skin(cv: _Canvas, pl: Plan, rng: np.random.Generator) -> np.ndarray:
    p = pl.params
    tone = np.array(SKIN_TONES[pl.fitzpatrick], dtype=np.float32) / np.float32(255.0)
    tex = np.float32(1.0) + np.float32(p["texture"]) * (_fbm(rng, cv, 8.0, 3) - np.float32(0.5)) * np.float32(2.0)
    pores = np.clip(_noise(rng, cv, 70.0) * np.float32(6.0) - np.float32(5.0), 0, 1) * np.float32(0.08)
    furrows = _ridges(rng, cv, 12.0, rotate=False)
    tex = tex - pores - furrows * np.float32(p["texture"] * 0.35)
    lx, ly = p["light"]
    light = (np.float32(1.0) + np.float32(lx) * cv.u + np.float32(ly) * cv.v
             - np.float32(p["vignette"]) * (cv.u * cv.u + cv.v * cv.v) * np.float32(0.5))
    red = np.float32(p["redness"]) * _noise(rng, cv, 3.0)
    img = np.empty(cv.shape + (3,), dtype=np.float32)
    shade = tex * light
    img[..., 0] = shade * tone[0] * (np.float32(1.0) + red * np.float32(0.3))
    img[..., 1] = shade * tone[1] * (np.float32(1.0) - red)
    img[..., 2] = shade * tone[2] * (np.float32(1.0) - red * np.float32(0.8))
    return img


def _hair(cv: _Canvas, pl: Plan, rng: np.random.Generator) -> list[tuple[list[tuple[float, float]], float]]:
    out = []
    for _ in range(pl.params["hair"]):
        x, y = rng.random(2) * 2.4 - 1.2
        dx, dy = _unit(rng)
        bx, by = _unit(rng)
        bend = float(rng.uniform(-0.9, 0.9))
        length = float(rng.uniform(0.6, 1.8))
        pts = []
        for i in range(13):
            s = i / 12.0
            q = bend * s * s
            pts.append((x + dx * length * s + bx * q, y + dy * length * s + by * q))
        out.append((pts, float(rng.uniform(0.008, 0.02))))
    return out


def _composite(img: np.ndarray, t: np.ndarray, alpha: np.ndarray, k: np.float32) -> None:
    """img <- img * (1 + alpha (T_k - 1)) with T_k = 1 + k (T - 1): lesion absorbs/reflects, contrast k."""
    img *= np.float32(1.0) + (alpha * k)[..., None] * (t - np.float32(1.0))


def render_array(pl: Plan, size: int | None = None) -> np.ndarray:
    """The image of ``pl`` as a (size, size, 3) uint8 array."""
    cfg = pl.config
    size = size or cfg.size
    site = next(s for s in SITES if s.name == pl.site)
    rs = size if size < 48 else max(16, int(round(size * site.scale)))
    cv = _Canvas(rs)
    rng = _rng(cfg, pl.index, _STREAM_DRAW)
    img = _skin(cv, pl, rng)
    k = _contrast_k(cfg, pl.fitzpatrick)
    if cfg.kind == "diagnosis":
        shape = pl.params["shape"]
        lc = _lesion_canvas(cv, shape)
        f = _shape_ratio(lc, shape, _rng(cfg, pl.index, _STREAM_SHAPE))
        t = _PAINTERS[pl.label_name](lc, pl.params, rng, f, f <= 1.0)
        np.clip(t, 0.05, 1.6, out=t)
        _composite(img[lc.sl], t, _alpha(f, shape["edge"]), k)
    else:
        _paint_acne(img, cv, pl, rng, k)
    if pl.params["hair"]:
        h = _lines(cv, _hair(cv, pl, rng))
        hc = np.array((0.28, 0.25, 0.24) if pl.params["hair_dark"] else (1.15, 1.1, 1.05), dtype=np.float32)
        _composite(img, np.broadcast_to(hc, img.shape), h * np.float32(0.9), np.float32(1.0))
    gain = np.array(site.cast, dtype=np.float32) * np.float32(site.exposure * _exposure_gain(cfg, pl.fitzpatrick))
    img *= gain
    if site.scope and cfg.kind == "diagnosis":  # dermatoscope field; severity images are clinical photos
        d2 = cv.u * cv.u + cv.v * cv.v
        img *= _smoothstep((np.float32(1.06) - d2) * np.float32(8.0))[..., None]
    nrng = _rng(cfg, pl.index, _STREAM_NOISE + 10 * rs)
    grain = nrng.random(img.shape, dtype=np.float32) - np.float32(0.5)  # uniform, SD = site.noise
    img *= np.float32(1.0) + np.float32(site.noise * 3.4641) * grain
    arr = np.clip(img * np.float32(255.0) + np.float32(0.5), 0, 255).astype(np.uint8)
    if rs != size or site.blur > 0:
        im = Image.fromarray(arr, "RGB")
        if rs != size:
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        if site.blur > 0:
            im = im.filter(ImageFilter.GaussianBlur(site.blur * size / 224.0))
        arr = np.asarray(im)
    return arr


def _paint_acne(img: np.ndarray, cv: _Canvas, pl: Plan, rng: np.random.Generator, k: np.float32) -> None:
    p = pl.params
    ery = _fbm(rng, cv, 3.0, 2) * np.float32(p["erythema"] * 2.0)
    _composite(img, np.broadcast_to(_ratio("pink"), img.shape), np.clip(ery, 0, 1), k)
    groups: dict[str, list[tuple[float, float, float]]] = {}
    for x, y, r, kind in p["blobs"]:
        groups.setdefault(kind, []).append((x, y, r))
    for kind in ("comedo", "papule", "nodule", "pustule"):
        bl = groups.get(kind, [])
        if not bl:
            continue
        if kind == "comedo":
            _composite(img, np.broadcast_to(_ratio("dark brown"), img.shape), _blobs(cv, bl, soft=0.4), k)
            continue
        halo = _blobs(cv, [(x, y, r * 2.0) for x, y, r in bl], soft=1.0)  # inflamed rim, fades out
        w = np.maximum(_blobs(cv, bl, soft=0.35), halo * np.float32(0.6))
        base = _ratio("maroon" if kind == "nodule" else "red")
        t = np.empty_like(img)
        t[:] = base + np.float32(0.45) * (np.float32(1.0) - base)  # lighter than pure red
        # highlight on the dome (light from top-left)
        hl = _blobs(cv, [(x - r * 0.35, y - r * 0.35, r * 0.3) for x, y, r in bl], soft=1.0)
        _layer(t, hl * np.float32(0.6), _ratio("white") * np.float32(1.1))
        if kind == "pustule":
            head = _blobs(cv, [(x, y, r * 0.45) for x, y, r in bl], soft=0.5)
            _layer(t, head, _ratio("yellow") * np.float32(1.08))
        _composite(img, t, w, k)


def render(pl: Plan, size: int | None = None) -> Image.Image:
    """The image of ``pl`` as a PIL RGB image (``size`` overrides the config's resolution)."""
    return Image.fromarray(render_array(pl, size), "RGB")


def lesion_mask(pl: Plan, size: int | None = None) -> np.ndarray:
    """Binary (size, size) mask of exactly the drawn lesion (diagnosis) or papules/nodules/comedones (severity).

    Computed analytically at the output resolution (the image itself may be rendered smaller and upsampled),
    at the 50 %-opacity contour of the drawn shape.
    """
    cfg = pl.config
    size = size or cfg.size
    cv = _Canvas(size)
    if cfg.kind == "diagnosis":
        shape = pl.params["shape"]
        lc = _lesion_canvas(cv, shape)
        mask = np.zeros((size, size), dtype=bool)
        mask[lc.sl] = _shape_ratio(lc, shape, _rng(cfg, pl.index, _STREAM_SHAPE)) <= 1.0
        return mask
    w = _blobs(cv, [(x, y, r) for x, y, r, _ in pl.params["blobs"]], soft=0.0)
    return w >= 0.5


def generate(cfg: SynthConfig, n: int, size: int | None = None) -> list[tuple[Plan, np.ndarray, np.ndarray]]:
    """Convenience: plans, images (uint8) and masks of indices 0..n-1."""
    cfg.validate()
    out = []
    for i in range(n):
        pl = plan(cfg, i)
        out.append((pl, render_array(pl, size), lesion_mask(pl, size)))
    return out

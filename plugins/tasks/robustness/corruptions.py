"""Dermatology-specific image corruptions at five severities, seeded and deterministic (PIL + numpy only).

Why these: they are what real dermoscopic and clinical photographs carry -- defocus, compression, uneven
illumination and white balance, low contrast, arbitrary orientation and framing, hair, rulers and ink marks,
the dark circular border of a dermoscope -- rather than ImageNet-C's weather effects. Each function takes an
RGB PIL image, a severity 1..5 and a numpy Generator seeded from (seed, corruption, severity, sample id), so a
corrupted image is identical on every run and machine; parameters scale with the image's shorter side.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)


def _arr(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


def _img(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "RGB")


def blur(img, s: int, rng) -> Any:
    """Defocus: Gaussian blur, radius 0.4 % .. 3 % of the shorter side."""
    from PIL import ImageFilter

    r = (0.004, 0.008, 0.013, 0.02, 0.03)[s - 1] * min(img.size)
    return img.filter(ImageFilter.GaussianBlur(radius=max(r, 0.5)))


def jpeg(img, s: int, rng) -> Any:
    """JPEG re-compression at quality 50, 30, 18, 10, 5."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=(50, 30, 18, 10, 5)[s - 1])
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def illumination(img, s: int, rng) -> Any:
    """Uneven illumination: a brightness ramp in a seeded direction (one side up to 15-60 % darker)."""
    a = _arr(img)
    h, w = a.shape[:2]
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = ((xx - w / 2) * np.cos(ang) + (yy - h / 2) * np.sin(ang)) / (0.5 * np.hypot(h, w))  # -1..1
    depth = (0.15, 0.25, 0.35, 0.47, 0.6)[s - 1]
    return _img(a * (1 - depth * (t + 1) / 2)[..., None])


def colour_cast(img, s: int, rng) -> Any:
    """White-balance error: red up and blue down (warm) or the reverse (cool), seeded, 5-30 % per channel."""
    g = (0.05, 0.1, 0.15, 0.22, 0.3)[s - 1] * (1 if rng.random() < 0.5 else -1)
    return _img(_arr(img) * np.array([1 + g, 1.0, 1 - g], dtype=np.float32))


def contrast(img, s: int, rng) -> Any:
    """Low contrast: pixels pulled towards the image mean, factor 0.75 .. 0.25."""
    a = _arr(img)
    m = a.mean(axis=(0, 1), keepdims=True)
    return _img(m + (a - m) * (0.75, 0.6, 0.45, 0.35, 0.25)[s - 1])


def rotation(img, s: int, rng) -> Any:
    """Orientation: a seeded flip, then rotation by 10-90 degrees (seeded sign), corners filled with the mean."""
    from PIL import Image

    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    ang = (10, 25, 45, 65, 90)[s - 1] * (1 if rng.random() < 0.5 else -1)
    fill = tuple(int(v) for v in _arr(img).mean(axis=(0, 1)))
    return img.rotate(ang, resample=Image.Resampling.BILINEAR, fillcolor=fill)


def scale_crop(img, s: int, rng) -> Any:
    """Framing: a crop keeping 90 .. 50 % of each side at a seeded offset, resized back (zoom in)."""
    from PIL import Image

    w, h = img.size
    f = (0.9, 0.8, 0.7, 0.6, 0.5)[s - 1]
    cw, ch = max(1, int(w * f)), max(1, int(h * f))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BILINEAR)


def hair(img, s: int, rng) -> Any:
    """Synthetic hair: 4 .. 30 dark curved strands (quadratic Bezier), 0.4-0.9 % of the side thick."""
    from PIL import ImageDraw

    img = img.copy()
    d = ImageDraw.Draw(img)
    w, h = img.size
    side = min(w, h)
    for _ in range((4, 8, 14, 21, 30)[s - 1]):
        p0, p1, p2 = (rng.uniform([0, 0], [w, h]) for _ in range(3))
        t = np.linspace(0, 1, 40)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        shade = int(rng.integers(10, 60))
        width = max(1, int(round(side * rng.uniform(0.004, 0.009))))
        d.line([tuple(p) for p in pts], fill=(shade, shade // 2 + 5, 5), width=width, joint="curve")
    return img


def ruler_ink(img, s: int, rng) -> Any:
    """A ruler with ticks along a seeded edge plus 0-4 purple ink marks (circles, dots) of a surgical marker."""
    from PIL import ImageDraw

    img = img.copy()
    d = ImageDraw.Draw(img)
    w, h = img.size
    side = min(w, h)
    band = int(side * (0.04, 0.06, 0.08, 0.1, 0.12)[s - 1])
    edge = int(rng.integers(0, 4))
    box = [(0, 0, w, band), (0, h - band, w, h), (0, 0, band, h), (w - band, 0, w, h)][edge]
    d.rectangle(box, fill=(235, 235, 225))
    step = max(4, side // 25)
    for k, pos in enumerate(range(0, max(w, h), step)):
        tick = band * (0.8 if k % 5 == 0 else 0.45)
        if edge == 0:
            d.line([(pos, 0), (pos, tick)], fill=(20, 20, 20), width=1)
        elif edge == 1:
            d.line([(pos, h), (pos, h - tick)], fill=(20, 20, 20), width=1)
        elif edge == 2:
            d.line([(0, pos), (tick, pos)], fill=(20, 20, 20), width=1)
        else:
            d.line([(w, pos), (w - tick, pos)], fill=(20, 20, 20), width=1)
    for _ in range(s - 1):
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        r = side * rng.uniform(0.03, 0.1)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(110, 40, 150), width=max(2, side // 80))
    return img


def vignette(img, s: int, rng) -> Any:
    """Dermoscope border: black outside a centred circle of radius 0.95 .. 0.55 of the half-diagonal, soft edge."""
    a = _arr(img)
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - w / 2, yy - h / 2) / (0.5 * np.hypot(h, w))
    r0 = (0.95, 0.85, 0.75, 0.65, 0.55)[s - 1]
    mask = np.clip((r0 + 0.05 - r) / 0.05, 0, 1)
    return _img(a * mask[..., None])


CORRUPTIONS: dict[str, Callable[[Any, int, Any], Any]] = {
    "blur": blur, "jpeg": jpeg, "illumination": illumination, "colour_cast": colour_cast, "contrast": contrast,
    "rotation": rotation, "scale_crop": scale_crop, "hair": hair, "ruler_ink": ruler_ink, "vignette": vignette,
}
#: the CPU-affordable default grid (x severities 1, 3, 5)
DEFAULT = ("blur", "jpeg", "colour_cast", "contrast", "hair", "vignette")


def rng_for(seed: int, corruption: str, severity: int, sample_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{corruption}\0{severity}\0{sample_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def apply(img, corruption: str, severity: int, seed: int, sample_id: str, max_side: int | None = None):
    """The corrupted RGB image; ``max_side``: first shrink so the shorter side is at most this (speed)."""
    from PIL import Image

    img = img.convert("RGB")
    if max_side and min(img.size) > max_side:
        f = max_side / min(img.size)
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BILINEAR)
    return CORRUPTIONS[corruption](img, int(severity), rng_for(seed, corruption, severity, sample_id))

"""``dermbench plugins check NAME``: load a model, run it on a handful of images, check it against its
own metadata. The first command a plugin author runs, so every failure names what to fix."""

from __future__ import annotations

import math
import time
from typing import Any

from dermbench.api import Backbone, DermbenchError


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
                **load_opts: Any) -> dict[str, Any]:
    """Load ``name``, run embed/patch_tokens/text on ``n_images`` images and compare with its ModelInfo.

    Returns ``{"model", "ok", "checks": [{"check", "ok", "detail"}], "embed_shape", "patch_shapes",
    "img_per_s", "load_s", "weights_id", "images"}``; never raises for a model problem (it is reported).
    """
    import torch

    from dermbench.plugins import registry

    entry = registry().model(name)  # unknown names raise with the valid list
    info = entry.info
    out: dict[str, Any] = {"model": name, "plugin": entry.plugin, "checks": [], "ok": False}
    checks: list[dict[str, Any]] = out["checks"]

    def check(what: str, ok: bool, detail: str = "") -> bool:
        checks.append({"check": what, "ok": bool(ok), "detail": detail})
        return bool(ok)

    check("metadata: license declared", info.license not in ("", "unknown"), info.license)
    check("metadata: embed_note says which feature embed returns", bool(info.embed_note), info.embed_note[:80])
    check("metadata: citation", bool(info.citation) or info.random_init, info.citation[:80])
    check("metadata: capabilities known", set(info.capabilities) <= {"cls", "patch_tokens", "text"},
          ",".join(sorted(info.capabilities)))

    t0 = time.perf_counter()
    try:
        bb = entry.obj(weights=weights, device=device, **load_opts)
    except DermbenchError as e:
        check("load", False, str(e))
        return out
    except Exception as e:  # a plugin bug: report it, do not crash the CLI
        check("load", False, f"{type(e).__name__}: {e}")
        return out
    out["load_s"] = round(time.perf_counter() - t0, 3)
    check("load", True, f"{out['load_s']} s")
    out["weights_id"] = getattr(bb, "weights_id", "")
    check("Backbone protocol (info, weights_id, transform, embed, patch_tokens, to)", isinstance(bb, Backbone),
          type(bb).__name__)
    check("weights_id set", bool(out["weights_id"]), out["weights_id"])
    check("backbone.info is the registered ModelInfo", getattr(bb, "info", None) is not None
          and bb.info.name == name and bb.info.embed_dim == info.embed_dim)

    imgs, source = _images(info, n_images)
    out["images"] = source
    try:
        x = torch.stack([bb.transform(im) for im in imgs])
    except Exception as e:
        check("transform", False, f"{type(e).__name__}: {e}")
        return out
    check("transform gives (3, S, S) at the native size", tuple(x.shape[1:]) == (3, info.image_size, info.image_size),
          f"{tuple(x.shape[1:])} vs native {info.image_size}")

    try:
        e = bb.embed(x)  # first call also warms up lazy initialisation: time the second one
        t1 = time.perf_counter()
        e2 = bb.embed(x)
        dt = time.perf_counter() - t1
    except Exception as ex:
        check("embed", False, f"{type(ex).__name__}: {ex}")
        return out
    out["embed_shape"] = list(e.shape)
    out["img_per_s"] = round(len(imgs) / dt, 2) if dt > 0 else math.inf
    check("embed shape == (N, ModelInfo.embed_dim)", tuple(e.shape) == (len(imgs), info.embed_dim),
          f"{tuple(e.shape)} vs (N, {info.embed_dim})")
    check("embed finite", bool(torch.isfinite(e).all()))
    check("embed deterministic", bool(torch.equal(e, e2)))
    check("embed distinguishes images", len(imgs) < 2 or not torch.allclose(e[0], e[1]))

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
            check("patch_tokens -> (N, D, h, w)", ok, detail)
        except Exception as ex:
            check("patch_tokens", False, f"{type(ex).__name__}: {ex}")
    else:
        check("no patch_tokens capability: segmentation will skip this model", True)

    if "text" in info.capabilities:
        try:
            t = bb.encode_text(["a dermoscopic image of a melanoma", "a benign naevus"])  # type: ignore[attr-defined]
            zi = bb.embed_image_for_text(x)  # type: ignore[attr-defined]
            check("text: encode_text and embed_image_for_text share a space", t.shape[1] == zi.shape[1],
                  f"text {tuple(t.shape)} image {tuple(zi.shape)}")
        except Exception as ex:
            check("text tower", False, f"{type(ex).__name__}: {ex}")
    out["ok"] = all(c["ok"] for c in checks)
    return out


def format_report(result: dict[str, Any]) -> str:
    """Plain-text rendering (the CLI may render with rich instead)."""
    lines = [f"model {result['model']} ({result.get('plugin', '?')}): {'OK' if result['ok'] else 'FAILED'}"]
    for c in result["checks"]:
        lines.append(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}" + (f": {c['detail']}" if c["detail"] else ""))
    for k in ("images", "embed_shape", "patch_shapes", "img_per_s", "load_s", "weights_id"):
        if k in result:
            lines.append(f"  {k}: {result[k]}")
    return "\n".join(lines)


def report_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """One table row per check, then the measurements: what ``dermbench plugins check`` prints."""
    rows = [{"check": c["check"], "result": ("ok" if c["ok"] else "FAIL") + (f": {c['detail']}" if c["detail"] else "")}
            for c in result["checks"]]
    for k in ("images", "embed_shape", "patch_shapes", "img_per_s", "load_s", "weights_id"):
        if k in result:
            rows.append({"check": k, "result": str(result[k])})
    rows.append({"check": "overall", "result": "OK" if result["ok"] else "FAILED"})
    return rows

"""Load a DermINO teacher as a dermbench Backbone: our pretraining checkpoints or the released ViT-B/14.

Where the weights come from (first hit wins):
1. ``weights=PATH`` (``--weights``): a checkpoint directory (``ckpt-*`` with ``dermino.json``), an output
   directory of ``dermbench pretrain`` (its newest checkpoint), our ``teacher_backbone.safetensors``, or the
   released DermINO ``teacher_checkpoint.pth`` (DINOv2 layout, ``teacher.``/``backbone.``/``module.``
   prefixes, chunked blocks);
2. ``DERMBENCH_WEIGHTS_DERMINO``;
3. the newest checkpoint of ``dermbench pretrain --preset demo`` in
   ``$DERMBENCH_CACHE/checkpoints/dermino-demo/`` (default ``~/.cache/dermbench``; ``DERMBENCH_HOME`` is a
   deprecated alias).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from dermbench.api import DermbenchError, ModelInfo, Preprocess, WeightsUnavailable

#: what the released DermINO ViT-B/14 was pretrained on, in dermbench's dataset names (aliases match variants:
#: isic2016 -> isic2016-seg, fitzpatrick17k -> fitzpatrick17k-2/3/9, derm7pt -> derm7pt-clinic/-derm, ham10000 ->
#: ham10000-seg/dermamnist). The authors used the train splits of each with labels, but published no split
#: lists, so any of dermbench's test images may have been seen: the leaderboard flags every one as overlap.
#: SkinCAP is listed because its images are Fitzpatrick17k's and DDI's. The authors' label map
#: (ssl_meta_arch.get_mask_dict) also has SD-198 and DermNet label sets, listed for completeness.
RELEASE_TRAINED_ON = ("isic2016", "isic2017", "isic2018", "ham10000", "scin", "pad-ufes-20", "fitzpatrick17k",
                      "ddi", "derm7pt", "ph2", "acne04", "mednode", "skincap", "sd-198", "dermnet")
RELEASE_ENV = "DERMBENCH_WEIGHTS_DERMINO_RELEASE"
RELEASE_URL = "https://drive.google.com/file/d/1-v8N6LNISdcF7SGYpTNq5W9szoiyZGRJ/view"
META_FILE = "dermino.json"
EXPORT_FILE = "teacher_backbone.safetensors"
ENV = "DERMBENCH_WEIGHTS_DERMINO"


def dermino_home() -> Path:
    """dermbench's cache folder (``$DERMBENCH_CACHE``, else ``~/.cache/dermbench``); demo checkpoints go to
    ``<cache>/checkpoints/dermino-demo``. ``DERMBENCH_HOME`` is a deprecated alias, read only when
    ``DERMBENCH_CACHE`` is unset, so that one variable names dermbench's home everywhere."""
    if not os.environ.get("DERMBENCH_CACHE") and os.environ.get("DERMBENCH_HOME"):
        import warnings

        warnings.warn("DERMBENCH_HOME is deprecated: set DERMBENCH_CACHE (dermbench's one cache/home variable)",
                      DeprecationWarning, stacklevel=2)
        return Path(os.environ["DERMBENCH_HOME"]).expanduser()
    from dermbench.api import cache_dir

    return cache_dir()


_home = dermino_home


def demo_dir() -> Path:
    return _home() / "checkpoints" / "dermino-demo"


def _newest_ckpt(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob("ckpt-*") if (p / "state.json").is_file() and (p / EXPORT_FILE).is_file())
    return found[-1] if found else None


def resolve(weights: str | os.PathLike[str] | None = None) -> Path:
    """A checkpoint directory (ours) or a weights file, following the documented order."""
    candidates: list[tuple[str, str]] = []
    if weights:
        candidates.append((str(weights), "--weights"))
    elif os.environ.get(ENV):
        candidates.append((os.environ[ENV], ENV))
    if candidates:
        raw, via = candidates[0]
        p = Path(raw).expanduser()
        if p.is_file():
            return p
        if p.is_dir():
            if (p / META_FILE).is_file() and (p / EXPORT_FILE).is_file():
                return p
            newest = _newest_ckpt(p)
            if newest:
                return newest
            raise DermbenchError(f"{via} {p} holds no DermINO checkpoint ({META_FILE} + {EXPORT_FILE}, or ckpt-*/)")
        raise DermbenchError(f"{via} {p} does not exist")
    newest = _newest_ckpt(demo_dir()) if demo_dir().is_dir() else None
    if newest:
        return newest
    raise WeightsUnavailable(
        f"no DermINO weights: no checkpoint in {demo_dir()}. Run `dermbench pretrain --preset demo` (about 2-3 min on 2 idle CPU cores; `make demo` runs it too) "
        f"to create one, or pass --weights PATH / set {ENV} to a `dermbench pretrain` checkpoint or to the released "
        "DermINO teacher_checkpoint.pth."
    )


def read_meta(ckpt: Path) -> dict[str, Any] | None:
    f = ckpt / META_FILE if ckpt.is_dir() else ckpt.parent / META_FILE
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def peek_info(info: ModelInfo) -> ModelInfo:
    """Registration-time metadata from the newest demo checkpoint's JSON (no torch), else ``info`` as is."""
    try:
        path = resolve(None)
    except DermbenchError:
        return info
    meta = read_meta(path)
    if meta:
        return info_from_meta(info, meta)
    return replace(info, trained_on=RELEASE_TRAINED_ON)  # DERMBENCH_WEIGHTS_DERMINO names a foreign/released file


def resolve_release(weights: str | os.PathLike[str] | None = None) -> Path:
    """The released DermINO ``teacher_checkpoint.pth``: ``--weights`` or ``DERMBENCH_WEIGHTS_DERMINO_RELEASE``."""
    raw, via = (str(weights), "--weights") if weights else (os.environ.get(RELEASE_ENV, ""), RELEASE_ENV)
    if raw:
        p = Path(raw).expanduser()
        if p.is_file():
            return p
        raise DermbenchError(f"{via} {p} is not a file (expected the released DermINO teacher_checkpoint.pth)")
    raise WeightsUnavailable(
        f"dermino-release needs the authors' DermINO_Base ViT-B/14 weights (CC BY-NC-ND 4.0): download them from "
        f"{RELEASE_URL} (linked from github.com/zxq-kd/DermINO), then pass --weights PATH or set {RELEASE_ENV}=PATH."
    )


def info_from_meta(info: ModelInfo, meta: dict[str, Any]) -> ModelInfo:
    arch = meta["arch"]
    trained = tuple(dict.fromkeys(s.get("dataset", s.get("folder", "?")) for s in meta["config"].get("sources", [])))
    return replace(info, embed_dim=int(arch["embed_dim"]), patch_size=int(arch["patch_size"]),
                   preprocess=replace(info.preprocess, crop=int(arch["img_size"]),  # the authors' 256/224 ratio
                                      resize=int(round(int(arch["img_size"]) * 256 / 224))),
                   trained_on=trained or info.trained_on,
                   description=f"{info.description} [checkpoint: {arch['arch']} depth {arch['depth']} "
                               f"dim {arch['embed_dim']}, step {meta.get('step')}]")


def build_vit(arch: dict[str, Any]) -> Any:
    from dermino_model.vit import create_vit

    return create_vit("custom", int(arch["patch_size"]), int(arch["img_size"]), 0.0,
                      arch.get("layerscale") or None, int(arch["embed_dim"]), int(arch["depth"]), int(arch["num_heads"]))


def load_vit(path: Path, img_size: int = 224) -> tuple[Any, dict[str, Any], Path]:
    """(timm ViT with weights, arch dict, weights file)."""
    from dermino_model.vit import infer_geometry, load_into_vit, read_state_dict

    meta = read_meta(path)
    if path.is_dir() or (meta and path.name == EXPORT_FILE):
        if meta is None:
            raise DermbenchError(f"{path} has no readable {META_FILE}; re-export the checkpoint")
        file = path / EXPORT_FILE if path.is_dir() else path
        vit = build_vit(meta["arch"])
        load_into_vit(vit, read_state_dict(file))
        return vit, meta["arch"], file
    sd = read_state_dict(path)  # released DINOv2-layout teacher checkpoint or a bare backbone file
    g = infer_geometry(sd)
    arch = {"arch": "vit", "embed_dim": g["embed_dim"], "depth": g["depth"], "num_heads": g["num_heads"],
            "patch_size": g["patch_size"], "img_size": img_size, "layerscale": 1e-5 if g["layerscale"] else None}
    vit = build_vit(arch)
    load_into_vit(vit, sd)
    return vit, arch, path


def load_dermino(info: ModelInfo, weights: Any = None, device: str = "cpu", **_: Any) -> Any:
    from dermbench.api import TimmBackbone
    from dermbench.api import file_sha256

    path = resolve(weights)
    vit, arch, file = load_vit(path, info.image_size)
    meta = read_meta(path) if path.is_dir() else None
    info2 = info_from_meta(info, meta) if meta else replace(  # a released/foreign checkpoint
        info, embed_dim=arch["embed_dim"], patch_size=arch["patch_size"], trained_on=RELEASE_TRAINED_ON,
        description=f"{info.description} [weights: {path.name}; pretrained on {len(RELEASE_TRAINED_ON)} public sets]")
    return TimmBackbone(info2, vit, "sha256:" + file_sha256(file)).to(device)


def load_dermino_random(info: ModelInfo, weights: Any = None, device: str = "cpu", seed: int = 0, **_: Any) -> Any:
    """The dermino checkpoint's architecture with seeded random weights: the paired "did pretraining help" baseline."""
    import torch

    from dermbench.api import TimmBackbone

    if weights:
        raise DermbenchError("dermino-random is a random-init baseline; it takes no --weights")
    try:
        meta = read_meta(resolve(None))
    except DermbenchError:
        meta = None
    arch = meta["arch"] if meta else {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 14,
                                      "img_size": 224, "layerscale": 1e-5}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = build_vit(arch)
    info2 = info_from_meta(info, meta) if meta else info
    return TimmBackbone(replace(info2, random_init=True, trained_on=()), vit, f"random:{seed}").to(device)


def load_release(info: ModelInfo, weights: Any = None, device: str = "cpu", **_: Any) -> Any:
    """The released DermINO ViT-B/14 teacher (DINOv2 layout), position table resampled to ``info.image_size``."""
    from dermbench.api import TimmBackbone, file_sha256

    path = resolve_release(weights)
    vit, arch, file = load_vit(path, info.image_size)
    info2 = replace(info, embed_dim=arch["embed_dim"], patch_size=arch["patch_size"])
    return TimmBackbone(info2, vit, "sha256:" + file_sha256(file)).to(device)

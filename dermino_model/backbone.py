"""Load a DermINO teacher as a dermbench Backbone: our pretraining checkpoints or the released ViT-B/14.

Where the weights come from (first hit wins):
1. ``weights=PATH`` (``--weights``): a checkpoint directory (``ckpt-*`` with ``dermino.json``), an output
   directory of ``dermbench pretrain`` (its newest checkpoint), our ``teacher_backbone.safetensors``, or the
   released DermINO ``teacher_checkpoint.pth`` (DINOv2 layout, ``teacher.``/``backbone.``/``module.``
   prefixes, chunked blocks);
2. ``DERMBENCH_WEIGHTS_DERMINO``;
3. the newest checkpoint of ``dermbench pretrain --preset demo`` in
   ``$DERMBENCH_HOME/checkpoints/dermino-demo/`` (``DERMBENCH_HOME`` defaults to dermbench's cache folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from dermbench.api import DermbenchError, ModelInfo, Preprocess, WeightsUnavailable

META_FILE = "dermino.json"
EXPORT_FILE = "teacher_backbone.safetensors"
ENV = "DERMBENCH_WEIGHTS_DERMINO"


def _home() -> Path:
    if os.environ.get("DERMBENCH_HOME"):
        return Path(os.environ["DERMBENCH_HOME"]).expanduser()
    from dermbench.api import cache_dir

    return cache_dir()


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
        f"no DermINO weights: no checkpoint in {demo_dir()}. Run `dermbench pretrain --preset demo` (CPU, minutes) "
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
    return info_from_meta(info, meta) if meta else info


def info_from_meta(info: ModelInfo, meta: dict[str, Any]) -> ModelInfo:
    arch = meta["arch"]
    trained = tuple(dict.fromkeys(s.get("dataset", s.get("folder", "?")) for s in meta["config"].get("sources", [])))
    return replace(info, embed_dim=int(arch["embed_dim"]), patch_size=int(arch["patch_size"]),
                   preprocess=replace(info.preprocess, crop=int(arch["img_size"]), resize=int(arch["img_size"])),
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
        info, embed_dim=arch["embed_dim"], patch_size=arch["patch_size"], trained_on=("dermino-release",),
        description=f"{info.description} [weights: {path.name}; pretraining data not itemised by the release]")
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

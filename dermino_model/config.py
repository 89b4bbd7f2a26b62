"""Pretraining configuration: one flat dataclass, three presets, YAML/JSON files and ``key=value`` overrides.

Defaults are DINOv2's (``ssl_default_config.yaml``) except where DermINO states otherwise. Two things the
paper leaves ambiguous are explicit options: ``epoch_length`` (0 = one full pass over the data; DINOv2's
"epoch" is a fixed 1250 iterations) and ``lr_scaling`` (``none`` reads DermINO's 2e-3 literally as the peak
lr; ``sqrt_wrt_1024`` is DINOv2's rule).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dermbench.api import DermbenchError


@dataclass
class PretrainConfig:
    # model ---------------------------------------------------------------------------------------
    arch: str = "vit_base"
    patch_size: int = 16
    embed_dim: int = 0  # 0: from arch
    depth: int = 0
    num_heads: int = 0
    drop_path_rate: float = 0.3
    layerscale: float = 1e-5
    init_weights: str = ""  # DINO/DINOv2 backbone file; random init when empty
    # heads ---------------------------------------------------------------------------------------
    n_prototypes: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_nlayers: int = 3
    separate_ibot_head: bool = False
    # losses --------------------------------------------------------------------------------------
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    sup_weight: float = 1.0  # DermINO's supervised term; 0 = the paper's ablation
    centering: str = "sinkhorn_knopp"  # sinkhorn_knopp | centering
    sk_iterations: int = 3
    student_temp: float = 0.1
    # teacher -------------------------------------------------------------------------------------
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30
    momentum_teacher: float = 0.992
    final_momentum_teacher: float = 1.0
    # optimisation --------------------------------------------------------------------------------
    lr: float = 2e-3
    lr_scaling: str = "none"  # none | sqrt_wrt_1024 | linear_wrt_256
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    freeze_last_layer_epochs: float = 1
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    adamw_beta1: float = 0.9
    adamw_beta2: float = 0.999
    epochs: float = 100
    epoch_length: int = 0  # iterations per "epoch"; 0 = one full pass over the data
    max_steps: int = 0  # 0 = epochs * epoch_length
    batch_size_per_gpu: int = 256
    # crops and masks -----------------------------------------------------------------------------
    global_size: int = 224
    local_size: int = 96
    n_local_crops: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    blur: Any = "dinov2"  # dinov2 (effective 0.0/0.9/0.5) | intended (1.0/0.1/0.5) | [p1, p2, p_local]
    mask_sample_probability: float = 0.5
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5)
    # prototypes ----------------------------------------------------------------------------------
    text_encoder: str = "coder"  # coder | minilm | hash | auto (coder if local, else minilm)
    merge_threshold: float = 0.9
    prototype_projection: str = "orthogonal"  # orthogonal | pca
    prototype_norm: float = 0.0  # row norm of W at init; 0 = that of a trunc_normal(0.02) row
    # data ----------------------------------------------------------------------------------------
    sources: list[dict[str, Any]] = field(default_factory=lambda: [{"dataset": "dermsynth", "split": "train"}])
    leakage: str = "refuse"  # refuse | warn | drop | off
    leakage_against: list[str] = field(default_factory=list)  # extra eval datasets (sources' test splits always)
    leakage_hamming: int = 4
    leakage_pixel_tol: float = 0.03  # mean |diff| of 24x24 RGB thumbnails (fraction of 255) confirming a pHash hit
    skip_bad_images: bool = False
    cache_images: bool = False  # decode every image once and keep it in RAM (small/generated sets)
    probe_dataset: str = "dermsynth"  # "" disables the kNN probe
    probe_every: int = 0  # steps; 0 = only at the end
    probe_max_images: int = 400
    # runtime -------------------------------------------------------------------------------------
    output_dir: str = ""  # default $DERMBENCH_HOME/checkpoints/dermino-<preset>
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 (autocast; losses stay fp32)
    sdpa: bool = True
    grad_checkpointing: bool = False
    channels_last: bool = False
    num_workers: int = 0
    checkpoint_every: int = 0  # steps; 0 = end of every epoch
    keep_checkpoints: int = 2
    log_every: int = 1
    nan_policy: str = "raise"  # raise | skip (skips up to 5 consecutive bad steps, then raises)
    preset: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def validate(self) -> "PretrainConfig":
        problems = []
        if self.centering not in ("sinkhorn_knopp", "centering"):
            problems.append(f"centering={self.centering!r} (use sinkhorn_knopp or centering)")
        if self.global_size % self.patch_size or self.local_size % self.patch_size:
            problems.append(f"global_size {self.global_size} / local_size {self.local_size} must be multiples of "
                            f"patch_size {self.patch_size} (patch 14 uses 98-px local crops)")
        if self.koleo_weight and self.batch_size_per_gpu < 2:
            problems.append("batch_size_per_gpu must be >= 2 for KoLeo (or set koleo_weight=0)")
        if not 0.02 <= self.teacher_temp <= 0.1 or not 0.02 <= self.warmup_teacher_temp <= 0.1:
            problems.append("teacher temperatures must lie in [0.02, 0.1] (higher destabilises early training)")
        if self.precision not in ("fp32", "bf16"):
            problems.append(f"precision={self.precision!r} (use fp32 or bf16)")
        if self.leakage not in ("refuse", "warn", "drop", "off"):
            problems.append(f"leakage={self.leakage!r} (use refuse, warn, drop or off)")
        if self.nan_policy not in ("raise", "skip"):
            problems.append(f"nan_policy={self.nan_policy!r} (use raise or skip)")
        if not self.sources:
            problems.append("sources is empty: give at least one {dataset: NAME} or {folder: PATH}")
        if problems:
            raise DermbenchError("invalid pretraining config: " + "; ".join(problems))
        return self


PRESETS: dict[str, dict[str, Any]] = {
    # every loss term and schedule branch in a few seconds on CPU (tests)
    "smoke": dict(
        arch="vit_micro", patch_size=8, drop_path_rate=0.1, n_prototypes=128, head_hidden_dim=128,
        head_bottleneck_dim=32, global_size=64, local_size=32, n_local_crops=2, batch_size_per_gpu=4,
        epochs=3, epoch_length=1, warmup_epochs=1, warmup_teacher_temp_epochs=2, freeze_last_layer_epochs=1,
        text_encoder="hash", lr=1e-3, probe_dataset="",
        sources=[{"dataset": "dermsynth", "split": "train", "options": {"n": 24, "size": 64}}],
        leakage="off", checkpoint_every=0, keep_checkpoints=2, dino_weight=1.0,
    ),
    # CPU, minutes: a small ViT on dermsynth that visibly learns (README demo)
    "demo": dict(
        arch="vit_tiny", depth=4, patch_size=16, drop_path_rate=0.0, layerscale=0.1, n_prototypes=512,
        head_hidden_dim=256, head_bottleneck_dim=128, global_size=96, local_size=48, n_local_crops=2,
        global_scale=(0.4, 1.0), local_scale=(0.1, 0.4), batch_size_per_gpu=32, epochs=4, epoch_length=0,
        warmup_epochs=0.5, warmup_teacher_temp_epochs=1, freeze_last_layer_epochs=0.25, lr=1e-3,
        layerwise_decay=1.0, momentum_teacher=0.98, text_encoder="auto", cache_images=True, num_workers=1,
        # labelled pretraining images from another dermsynth seed: no overlap with the evaluation split by
        # construction, and the leakage guard checks it against dermsynth's test split anyway
        sources=[{"dataset": "dermsynth", "split": "all", "options": {"seed": 1, "n": 1200, "size": 128}}],
        probe_dataset="dermsynth", leakage="refuse",
    ),
    # DermINO as published: ViT-B, 224 px, lr 2e-3, 256/GPU, 100 epochs (one epoch = one pass, explicit)
    "paper": dict(
        arch="vit_base", patch_size=14, local_size=98, batch_size_per_gpu=256, epochs=100, epoch_length=0,
        lr=2e-3, lr_scaling="none", precision="bf16", text_encoder="coder", separate_ibot_head=False,
        sources=[], num_workers=10, checkpoint_every=2000, probe_every=2000,
    ),
}


def _coerce(name: str, value: Any) -> Any:
    f = {f.name: f for f in fields(PretrainConfig)}.get(name)
    if f is None:
        import difflib

        close = difflib.get_close_matches(name, [x.name for x in fields(PretrainConfig)], n=3)
        raise DermbenchError(f"unknown pretraining option {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    default = getattr(PretrainConfig(), name)
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(default, bool) and isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    return value


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DermbenchError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:
        raise DermbenchError(f"cannot parse config {path}: {e}") from e
    if not isinstance(data, dict):
        raise DermbenchError(f"config {path} must hold a mapping of option: value, got {type(data).__name__}")
    return data


def build_config(preset: str | None = "smoke", file: str | Path | None = None,
                 overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """Defaults < preset < file (which may name its own ``preset``) < overrides."""
    values: dict[str, Any] = {}
    file_values = read_config_file(file) if file else {}
    preset = file_values.pop("preset", None) if preset is None else preset
    if preset:
        if preset not in PRESETS:
            raise DermbenchError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        values["preset"] = preset
    values.update(file_values)
    values.update(overrides or {})
    return PretrainConfig(**{k: _coerce(k, v) for k, v in values.items()}).validate()

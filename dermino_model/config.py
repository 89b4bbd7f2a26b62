"""Pretraining configuration: one flat dataclass, three presets, YAML/JSON files and ``key=value`` overrides.

Defaults are DINOv2's (``ssl_default_config.yaml``) except for the DermINO-specific supervised term, whose
defaults follow the authors' code (frozen unit-norm prototypes, per-crop BCE, CODER ``coder_all``). The
``paper`` preset is the authors' effective configuration (their ``run.sh`` + ``configs/train/DermINO.yaml``
over DINOv2's defaults), item by item; ``AUTHORS`` records each value with where it comes from, and
``describe`` prints both side by side (``dermbench pretrain --preset paper --dry-run``). Where the paper's
text reads differently, ``PAPER_READING`` holds the paper's reading (preset ``paper-literal``).
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
    drop_path_uniform: bool = True  # DINOv2: the same rate in every block (timm's default is a 0 -> rate ramp)
    layerscale: float = 1e-5
    init_weights: str = ""  # DINO/DINOv2 backbone: a file, a torch.hub name (dinov2_vitb14) or an HF repo id; "" = random
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
    sup_normalisation: str = "per_crop"  # per_crop (authors' code) | per_entry (sum n*BCE / sum n)
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
    text_encoder: str = "coder_all"  # coder_all | coder (coder_eng) | minilm | hash | auto (first of those found locally)
    merge_threshold: float = 0.9
    prototype_projection: str = "orthogonal"  # orthogonal | pca
    prototype_norm: float = 1.0  # row norm of W at init (authors: unit rows); 0 = that of a trunc_normal(0.02) row
    prototype_vector: str = "canonical"  # canonical (one name per class, authors) | mean (of the merged names)
    prototype_trainable: bool = False  # authors' code: W outside the optimiser (no grad, no wd); paper: "initialisation"
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
    output_dir: str = ""  # default $DERMBENCH_CACHE/checkpoints/dermino-<preset>
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

    def validate(self, require_sources: bool = True) -> "PretrainConfig":
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
        if self.sup_normalisation not in ("per_crop", "per_entry"):
            problems.append(f"sup_normalisation={self.sup_normalisation!r} (use per_crop or per_entry)")
        if self.prototype_vector not in ("canonical", "mean"):
            problems.append(f"prototype_vector={self.prototype_vector!r} (use canonical or mean)")
        if self.lr_scaling not in ("none", "sqrt_wrt_1024", "linear_wrt_256"):
            problems.append(f"lr_scaling={self.lr_scaling!r} (use none, sqrt_wrt_1024 or linear_wrt_256)")
        if self.nan_policy not in ("raise", "skip"):
            problems.append(f"nan_policy={self.nan_policy!r} (use raise or skip)")
        if require_sources and not self.sources:
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
    # the authors' effective configuration: DINOv2 defaults < configs/train/DermINO.yaml < run.sh overrides
    "paper": dict(
        arch="vit_base", patch_size=14, init_weights="dinov2_vitb14", drop_path_rate=0.4, drop_path_uniform=True,
        layerscale=1e-5, n_prototypes=65536, head_hidden_dim=2048, head_bottleneck_dim=256, head_nlayers=3,
        separate_ibot_head=True, dino_weight=1.0, ibot_weight=1.0, koleo_weight=0.1, sup_weight=1.0,
        sup_normalisation="per_crop", centering="sinkhorn_knopp", teacher_temp=0.07, warmup_teacher_temp=0.04,
        warmup_teacher_temp_epochs=30, momentum_teacher=0.992, final_momentum_teacher=1.0, lr=2e-3,
        lr_scaling="sqrt_wrt_1024", min_lr=1e-6, warmup_epochs=10, weight_decay=0.04, weight_decay_end=0.2,
        clip_grad=3.0, freeze_last_layer_epochs=1, layerwise_decay=1.0, patch_embed_lr_mult=0.2, epochs=100,
        epoch_length=400, batch_size_per_gpu=256, global_size=224, local_size=98, n_local_crops=8,
        global_scale=(0.32, 1.0), local_scale=(0.05, 0.32), blur="dinov2", mask_sample_probability=0.5,
        mask_ratio_min_max=(0.1, 0.5), text_encoder="coder_all", prototype_norm=1.0, prototype_vector="canonical",
        prototype_trainable=False, precision="bf16", sources=[], num_workers=10, checkpoint_every=2000,
        probe_every=2000,
    ),
}

#: where the paper's text (as quoted in issue 22 and the notes) reads differently from the authors' code;
#: ``--preset paper-literal`` applies these over ``paper``
PAPER_READING: dict[str, Any] = {
    "epoch_length": 0,  # "100 epochs" as 100 passes over the data (432,776 / 2048 = 211 iterations each)
    "lr_scaling": "none",  # "lr 2e-3" as the peak lr
    "prototype_trainable": True,  # "knowledge-guided prototype *initialization*": W trained afterwards
}
PRESETS["paper-literal"] = {**PRESETS["paper"], **PAPER_READING}

#: the authors' value of every option ``paper`` sets, with its source (zxq-kd/DermINO, pretrain/)
AUTHORS: dict[str, tuple[Any, str]] = {
    "arch": ("vit_base", "run.sh student.arch"),
    "patch_size": (14, "run.sh student.patch_size"),
    "init_weights": ("dinov2_vitb14_resize.pth", "run.sh student.pretrained_weights (DINOv2 ViT-B/14, pos-embed resized)"),
    "drop_path_rate": (0.4, "DermINO.yaml student.drop_path_rate"),
    "drop_path_uniform": (True, "DINOv2 default student.drop_path_uniform"),
    "layerscale": (1e-5, "DINOv2 default (overwritten by the init's gammas)"),
    "n_prototypes": (65536, "DermINO.yaml dino/ibot.head_n_prototypes"),
    "head_hidden_dim": (2048, "DINOv2 default"),
    "head_bottleneck_dim": (256, "DermINO.yaml"),
    "head_nlayers": (3, "DINOv2 default"),
    "separate_ibot_head": (True, "DermINO.yaml ibot.separate_head"),
    "dino_weight": (1.0, "DINOv2 default"),
    "ibot_weight": (1.0, "DINOv2 default"),
    "koleo_weight": (0.1, "DINOv2 default"),
    "sup_weight": (1.0, "run.sh train.class_weight"),
    "sup_normalisation": ("per_crop", "ssl_meta_arch.py: mean over known classes, then over labelled crops"),
    "centering": ("sinkhorn_knopp", "DermINO.yaml train.centering"),
    "sk_iterations": (3, "DINOv2 code (sinkhorn_knopp_teacher n_iterations=3)"),
    "student_temp": (0.1, "DINOv2 code (DINOLoss/iBOTPatchLoss student_temp)"),
    "teacher_temp": (0.07, "DINOv2 default"),
    "warmup_teacher_temp": (0.04, "DINOv2 default"),
    "warmup_teacher_temp_epochs": (30, "DINOv2 default"),
    "momentum_teacher": (0.992, "run.sh (DermINO.yaml says 0.994)"),
    "final_momentum_teacher": (1.0, "DINOv2 default"),
    "lr": (2e-3, "run.sh optim.base_lr (for batch 1024)"),
    "lr_scaling": ("sqrt_wrt_1024", "DINOv2 default optim.scaling_rule"),
    "min_lr": (1e-6, "DINOv2 default"),
    "warmup_epochs": (10, "run.sh optim.warmup_epochs"),
    "weight_decay": (0.04, "DINOv2 default"),
    "weight_decay_end": (0.2, "DermINO.yaml optim.weight_decay_end"),
    "clip_grad": (3.0, "DINOv2 default"),
    "freeze_last_layer_epochs": (1, "DINOv2 default"),
    "layerwise_decay": (1.0, "run.sh optim.layerwise_decay"),
    "patch_embed_lr_mult": (0.2, "run.sh optim.patch_embed_lr_mult"),
    "adamw_beta1": (0.9, "DINOv2 default"),
    "adamw_beta2": (0.999, "DINOv2 default"),
    "epochs": (100, "run.sh optim.epochs"),
    "epoch_length": (400, "run.sh train.OFFICIAL_EPOCH_LENGTH"),
    "batch_size_per_gpu": (256, "run.sh train.batch_size_per_gpu (x 8 GPUs)"),
    "global_size": (224, "run.sh crops.global_crops_size"),
    "local_size": (98, "run.sh crops.local_crops_size"),
    "n_local_crops": (8, "DINOv2 default"),
    "global_scale": ((0.32, 1.0), "DINOv2 default"),
    "local_scale": ((0.05, 0.32), "DINOv2 default"),
    "blur": ("dinov2", "DINOv2 augmentations (inverted-p GaussianBlur: effective 0.0/0.9/0.5)"),
    "mask_sample_probability": (0.5, "DINOv2 default"),
    "mask_ratio_min_max": ((0.1, 0.5), "DINOv2 default"),
    "text_encoder": ("coder_all", "ssl_meta_arch.py: coder_all pooler output, max_length 32, input_ids only"),
    "merge_threshold": ("manual", "labels_mapping.xlsx: 602 classes merged by hand; here by text cosine"),
    "prototype_norm": (1.0, "ssl_meta_arch.py get_bert_embed(normalize=True)"),
    "prototype_vector": ("canonical", "ssl_meta_arch.py: one disease name per class (vector.csv)"),
    "prototype_trainable": (False, "ssl_meta_arch.py: self.linear lives outside the student -> not optimised"),
    "precision": ("fp16", "DINOv2 default compute_precision (fp16 params + grad scaler); bf16 here"),
}
AUTHORS_GPUS = 8  # run.sh: torchrun --nproc_per_node 8


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
                 overrides: dict[str, Any] | None = None, require_sources: bool = True) -> PretrainConfig:
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
    return PretrainConfig(**{k: _coerce(k, v) for k, v in values.items()}).validate(require_sources)


# --------------------------------------------------------------------------------------------------
# the effective configuration, printed before spending GPU days


def schedule_lengths(cfg: PretrainConfig, world_size: int, iters_per_epoch: int | None = None) -> dict[str, Any]:
    """Iteration counts and the peak lr that ``build_schedules`` will use (``iters_per_epoch`` when known)."""
    from dermino_model.schedules import peak_lr

    ipe = iters_per_epoch or cfg.epoch_length
    batch = cfg.batch_size_per_gpu * world_size
    out: dict[str, Any] = {"world_size": world_size, "global_batch": batch,
                           "peak_lr": peak_lr(cfg.lr, cfg.lr_scaling, batch), "iters_per_epoch": ipe or None}
    if ipe:
        total = cfg.max_steps or max(1, int(round(cfg.epochs * ipe)))
        out.update(total_iterations=total, lr_warmup_iterations=int(cfg.warmup_epochs * ipe),
                   teacher_temp_ramp_iterations=int(cfg.warmup_teacher_temp_epochs * ipe),
                   last_layer_frozen_iterations=int(cfg.freeze_last_layer_epochs * ipe),
                   images_seen=total * batch)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def describe(cfg: PretrainConfig, world_size: int | None = None) -> str:
    """The full effective configuration, the schedule lengths in iterations, and the authors' values beside them.

    Touches no data and no GPU. ``world_size`` (the number of processes) sets the global batch and hence the
    scaled lr: default ``WORLD_SIZE`` from the environment, else the authors' 8 GPUs for the paper presets.
    """
    import os

    if world_size is None:
        env = os.environ.get("WORLD_SIZE")
        world_size = int(env) if env else (AUTHORS_GPUS if cfg.preset.startswith("paper") else 1)
    lines = [f"DermINO pretraining, preset {cfg.preset!r}: effective configuration "
             f"(authors = zxq-kd/DermINO pretrain/run.sh + configs/train/DermINO.yaml over DINOv2 defaults)"]
    w = max(len(f.name) for f in fields(PretrainConfig))
    lines.append(f"{'option':<{w}}  {'value':<28} {'authors':<28} source of the authors' value")
    differ = 0
    for f in fields(PretrainConfig):
        v = getattr(cfg, f.name)
        a = AUTHORS.get(f.name)
        mark = ""
        if a is not None:
            same = _fmt(v) == _fmt(a[0]) or (f.name == "init_weights" and bool(v))
            mark = "" if same else "  <-- differs"
            differ += not same
        a_txt = _fmt(a[0]) if a else ""
        src = a[1] if a else ""
        lines.append(f"{f.name:<{w}}  {_fmt(v):<28} {a_txt:<28} {src}{mark}")
    sched = schedule_lengths(cfg, world_size)
    a_ipe = AUTHORS["epoch_length"][0]
    a_batch = AUTHORS["batch_size_per_gpu"][0] * AUTHORS_GPUS
    from dermino_model.schedules import peak_lr

    authors = {"world_size": AUTHORS_GPUS, "global_batch": a_batch, "peak_lr": peak_lr(2e-3, "sqrt_wrt_1024", a_batch),
               "iters_per_epoch": a_ipe, "total_iterations": 100 * a_ipe, "lr_warmup_iterations": 10 * a_ipe,
               "teacher_temp_ramp_iterations": 30 * a_ipe, "last_layer_frozen_iterations": 1 * a_ipe,
               "images_seen": 100 * a_ipe * a_batch}
    lines.append("")
    lines.append(f"schedule (assuming {world_size} process(es) x {cfg.batch_size_per_gpu} images; --gpus N to change)")
    for k, a in authors.items():
        v = sched.get(k)
        if v is None and k != "iters_per_epoch":
            v = "after loading the data (epoch = one pass)"
        elif v is None:
            v = "one pass over the data"
        lines.append(f"  {k:<30} {_fmt(v):<28} {_fmt(a)}")
    if cfg.init_weights:
        try:
            from dermino_model.vit import resolve_init_weights

            lines.append(f"init_weights {cfg.init_weights!r}: found at {resolve_init_weights(cfg.init_weights)}")
        except DermbenchError as e:
            lines.append(f"init_weights: NOT FOUND here. {e}")
    lines.append("")
    lines.append(f"{differ} option(s) differ from the authors' values" if differ
                 else "every option the authors set matches")
    return "\n".join(lines)

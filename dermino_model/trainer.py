"""The pretraining loop: single process on CPU, or one process per GPU under ``torchrun`` (DDP).

Per step: apply schedules -> teacher forward (no grad) -> student forward -> 4 losses -> backward ->
clip each student sub-module at ``clip_grad`` -> AdamW step -> EMA teacher update (post-step student) ->
NaN guard -> log. Only the student is DDP-wrapped; the teacher stays identical across ranks because it is an
EMA of identical parameters. Checkpoints (safetensors) are written atomically: a crash or a NaN never
destroys the last good one. Each checkpoint also exports the teacher backbone with timm key names, its
config and the label/prototype metadata, which is what the ``dermino`` backbone loads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermbench.api import DermbenchError
from dermino_model import losses as L
from dermino_model.config import PretrainConfig
from dermino_model.dist import all_reduce_mean, is_dist, rank, world_size
from dermino_model.model import SSLModel, build_models, ema_update, unwrap
from dermino_model.schedules import apply_schedules, build_schedules, param_groups

log = logging.getLogger("dermino.trainer")
EXPORT_FILE = "teacher_backbone.safetensors"
META_FILE = "dermino.json"
_SUMMED = ("masked_tokens", "known_labels")  # counts over the global batch; other stats are rank means


def dermino_home() -> Path:
    """dermbench's cache folder; see :func:`dermino_model.backbone.dermino_home`."""
    from dermino_model.backbone import dermino_home as home

    return home()


def default_output_dir(preset: str) -> Path:
    return dermino_home() / "checkpoints" / f"dermino-{preset}"


# --------------------------------------------------------------------------------------------------
# one step


def step_losses(student: Any, teacher: SSLModel, batch: dict, cfg: PretrainConfig, temp: float,
                centers: dict[str, L.MeanCentering] | None) -> tuple[torch.Tensor, dict[str, float]]:
    glob, loc, masks = batch["global"], batch["local"], batch["masks"]
    n_global = batch["n_global"]
    t_out = teacher.teacher_forward(glob, masks)
    if cfg.centering == "sinkhorn_knopp":
        t_cls = L.sinkhorn_knopp(t_out["cls_logits"], temp, cfg.sk_iterations)
        t_patch = L.sinkhorn_knopp(t_out["patch_logits"], temp, cfg.sk_iterations)
    else:
        assert centers is not None
        t_cls = centers["dino"].targets(t_out["cls_logits"], temp)
        t_patch = centers["ibot"].targets(t_out["patch_logits"], temp)
        centers["dino"].update(t_out["cls_logits"])
        centers["ibot"].update(t_out["patch_logits"])
    s_out = student(glob, loc, masks)
    dino = L.dino_cls_loss(s_out["cls_logits"], s_out.get("local_logits"), t_cls, n_global, cfg.student_temp)
    ibot = L.ibot_patch_loss(s_out["patch_logits"], t_patch, batch["masks_weight"], glob.shape[0], cfg.student_temp)
    koleo = sum(L.koleo_loss(c) for c in s_out["cls"].chunk(n_global)) if cfg.koleo_weight else glob.new_zeros(())
    if "sup_logits" in s_out:
        sup = L.masked_bce(s_out["sup_logits"], batch["targets"], batch["known"], global_count=True,
                           per_crop=getattr(cfg, "sup_normalisation", "per_entry") == "per_crop")
    else:
        sup = glob.new_zeros(())
    total = cfg.dino_weight * dino + cfg.ibot_weight * ibot + cfg.koleo_weight * koleo + cfg.sup_weight * sup
    with torch.no_grad():
        feats = torch.nn.functional.normalize(t_out["cls"].float(), dim=-1)
        stats = {
            "dino": dino.detach(), "ibot": ibot.detach(), "koleo": torch.as_tensor(koleo).detach().float(),
            "sup": sup.detach(), "total": total.detach(),
            "teacher_entropy": L.entropy(t_cls),
            "teacher_batch_entropy": L.entropy(t_cls.mean(0, keepdim=True)),
            "prototypes_used": torch.tensor(float(t_out["cls_logits"].argmax(-1).unique().numel())),
            "teacher_feat_std": feats.std(0).mean(),
            "masked_tokens": torch.tensor(float(masks.sum())),
            "known_labels": batch["known"].float().sum(),
        }
    return total, stats


def clip_per_module(student: SSLModel, max_norm: float) -> float:
    """Clip backbone / heads / prototypes separately (DINOv2 clips each FSDP module); returns the total pre-clip norm."""
    sq = 0.0
    for mod in (student.backbone, student.dino_head, student.ibot_head, student.prototypes):
        if mod is None:
            continue
        params = [p for p in mod.parameters() if p.grad is not None]
        if not params:
            continue
        n = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        sq += float(n) ** 2
    return math.sqrt(sq)


# --------------------------------------------------------------------------------------------------
# checkpoints


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"state.{idx}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints (``state.json`` present), oldest first."""
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.glob("ckpt-*") if (p / "state.json").is_file() and not p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, cfg: PretrainConfig, output_dir: str | Path | None = None, pset: Any = None,
                 console: Any = None) -> None:
        self.cfg = cfg
        self.out = Path(output_dir or cfg.output_dir or default_output_dir(cfg.preset))
        self.rank, self.world = rank(), world_size()
        self.console = console
        self.notes: list[str] = []
        self._pset = pset
        self.device = self._device()

    def _device(self) -> torch.device:
        want = self.cfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device(want)

    # -- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        from dermino_model.augment import MultiCrop
        from dermino_model.data import (StepBatches, cache_images, drop_unreadable, label_matrices, leakage_guard,
                                        load_sources)
        from dermino_model.prototypes import merge_labels, prototype_init

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        try:  # fused scaled_dot_product_attention (flash/mem-efficient kernels on GPU) or timm's eager path
            from timm.layers import set_fused_attn

            set_fused_attn(cfg.sdpa)
        except Exception:  # older timm
            pass
        pset = self._pset or load_sources(cfg.sources)
        self.notes += pset.notes
        if cfg.skip_bad_images:
            bad = drop_unreadable(pset, skip=True)
            if bad:
                self.notes.append(f"dropped {len(bad)} unreadable image(s), e.g. {bad[0]}")
        if cfg.cache_images:
            cache_images(pset)
        against = [s["dataset"] for s in cfg.sources if "dataset" in s] + list(cfg.leakage_against)
        roots = {s["dataset"]: s.get("root") for s in cfg.sources if "dataset" in s}
        self.notes += leakage_guard(pset, cfg.leakage, against, roots, cfg.leakage_hamming,
                                    cfg.leakage_pixel_tol)
        self.pset = pset
        self.space = merge_labels(pset.label_sources, cfg.text_encoder, cfg.merge_threshold, cfg.prototype_vector)
        fallback = self.space.meta.get("provenance", {}).get("fallback")
        if fallback:
            self.notes.append(f"text encoder: {fallback}")
            log.info("prototype text encoder: %s", fallback)  # auto asked for a fallback; recorded in dermino.json
        y, known = label_matrices(pset.items, self.space)
        n_classes = len(self.space.classes)
        self.notes.append(f"{len(pset.items)} images, {n_classes} merged classes "
                          f"({int(known.any(1).sum())} labelled) via {self.space.encoder}")
        from dermino_model.vit import arch_dims

        dim = arch_dims(cfg.arch, cfg.embed_dim, cfg.depth, cfg.num_heads)[0]
        w0 = prototype_init(self.space, dim, cfg.prototype_projection, cfg.prototype_norm, cfg.seed) if n_classes else None
        student, teacher, notes = build_models(cfg, n_classes, torch.from_numpy(w0) if w0 is not None else None)
        self.notes += notes
        student.backbone.checkpointing = cfg.grad_checkpointing
        student.to(self.device)
        teacher.to(self.device)
        if cfg.channels_last:
            student.to(memory_format=torch.channels_last)
            teacher.to(memory_format=torch.channels_last)
        self.student_raw, self.teacher = student, teacher
        self.centers = None
        if cfg.centering == "centering":
            self.centers = {"dino": L.MeanCentering(cfg.n_prototypes).to(self.device),
                            "ibot": L.MeanCentering(cfg.n_prototypes).to(self.device)}
        if is_dist():
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student: Any = DDP(student, device_ids=ids, broadcast_buffers=False)
        else:
            self.student = student
        depth = student.backbone.depth
        groups = param_groups(list(student.named_parameters()), depth, cfg.layerwise_decay, cfg.patch_embed_lr_mult)
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(cfg.adamw_beta1, cfg.adamw_beta2))
        aug = MultiCrop(cfg.global_size, cfg.local_size, cfg.n_local_crops, tuple(cfg.global_scale),
                        tuple(cfg.local_scale), cfg.blur)
        self.batches = StepBatches(pset.items, y, known, aug, cfg.batch_size_per_gpu, cfg.seed, cfg.patch_size,
                                   self.rank, self.world, cfg.mask_sample_probability, tuple(cfg.mask_ratio_min_max))
        self.iters_per_epoch = cfg.epoch_length or self.batches.steps_per_epoch
        self.total_steps = cfg.max_steps or max(1, int(round(cfg.epochs * self.iters_per_epoch)))
        self.sched = build_schedules(cfg, self.total_steps, self.iters_per_epoch,
                                     cfg.batch_size_per_gpu * self.world)
        self.step = 0
        self.bad_steps = 0

    # -- checkpoints ----------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        vit = self.teacher.backbone.vit
        return {
            "format": "dermino-teacher/1",
            "step": self.step,
            "total_steps": self.total_steps,
            "config": self.cfg.to_dict(),
            "arch": {"arch": self.cfg.arch, "embed_dim": vit.embed_dim, "depth": len(vit.blocks),
                     "num_heads": vit.blocks[0].attn.num_heads, "patch_size": self.cfg.patch_size,
                     "img_size": self.cfg.global_size, "layerscale": self.cfg.layerscale},
            "labels": self.space.to_json(),
            "world_size": self.world,
        }

    def save(self) -> Path | None:
        """Write ``ckpt-<step>`` atomically (tmp dir + rename), then prune old ones. Rank 0 only."""
        if self.rank != 0:
            return None
        from safetensors.torch import save_file

        self.out.mkdir(parents=True, exist_ok=True)
        final = self.out / f"ckpt-{self.step:07d}"
        tmp = self.out / f"ckpt-{self.step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model = {f"student.{k}": v.detach().cpu().contiguous() for k, v in self.student_raw.state_dict().items()}
        model.update({f"teacher.{k}": v.detach().cpu().contiguous() for k, v in self.teacher.state_dict().items()})
        if self.centers:
            model.update({f"center.{k}": c.center.cpu() for k, c in self.centers.items()})
        save_file(model, str(tmp / "model.safetensors"))
        opt_t, opt_meta = _flatten_optimizer(self.optimizer)
        save_file({k: v.cpu().contiguous() for k, v in opt_t.items()}, str(tmp / "optim.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        save_file(rng, str(tmp / "rng.safetensors"))
        from dermino_model.vit import export_state_dict

        save_file(export_state_dict(self.teacher.backbone), str(tmp / EXPORT_FILE),
                  metadata={"format": "timm-vit+mask_token", "step": str(self.step)})
        if self.student_raw.prototypes is not None:
            save_file({"weight": self.student_raw.prototypes.weight.detach().cpu().contiguous()},
                      str(tmp / "prototypes.safetensors"))
        (tmp / META_FILE).write_text(json.dumps(self.meta(), indent=1))
        (tmp / "state.json").write_text(json.dumps({"step": self.step, "optimizer": opt_meta,
                                                    "bad_steps": self.bad_steps}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(self.out)[: -max(self.cfg.keep_checkpoints, 1)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def resume(self, path: Path | None = None) -> bool:
        """Restore the newest (or given) checkpoint; False when there is none."""
        from safetensors.torch import load_file

        if path is None:
            found = list_checkpoints(self.out)
            if not found:
                return False
            path = found[-1]
        model = load_file(str(path / "model.safetensors"))
        s = {k[len("student."):]: v for k, v in model.items() if k.startswith("student.")}
        t = {k[len("teacher."):]: v for k, v in model.items() if k.startswith("teacher.")}
        try:
            self.student_raw.load_state_dict(s)
            self.teacher.load_state_dict(t)
        except RuntimeError as e:
            raise DermbenchError(
                f"checkpoint {path} does not match this config ({str(e).splitlines()[0]}); use the config it was "
                f"trained with ({path / META_FILE}) or another --out directory"
            ) from None
        if self.centers:
            for k, c in self.centers.items():
                c.center.copy_(model[f"center.{k}"])
        state = json.loads((path / "state.json").read_text())
        self.optimizer.load_state_dict(_unflatten_optimizer(load_file(str(path / "optim.safetensors")),
                                                            state["optimizer"]))
        rng = load_file(str(path / "rng.safetensors"))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = int(state["step"])
        self.bad_steps = int(state.get("bad_steps", 0))
        self.notes.append(f"resumed from {path} at step {self.step}")
        return True

    # -- loop -----------------------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True)
                if self.cfg.channels_last and v.ndim == 4:
                    v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def train_step(self, batch: dict) -> dict[str, float]:
        cfg = self.cfg
        values = self.sched.at(self.step)
        apply_schedules(self.optimizer, values)
        self.optimizer.zero_grad(set_to_none=True)
        batch = self._to_device(batch)
        amp = self.device.type == "cuda" and cfg.precision == "bf16"
        self.student.train()
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=amp):
            total, stats = step_losses(self.student, self.teacher, batch, cfg, values["teacher_temp"], self.centers)
        finite = torch.isfinite(total.detach()).float()
        if is_dist():
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() < 1:
            terms = {k: float(v) for k, v in stats.items() if k in ("dino", "ibot", "koleo", "sup")}
            self.bad_steps += 1
            last = list_checkpoints(self.out)
            where = f"the last checkpoint {last[-1]} is intact" if last else "no checkpoint was written yet"
            msg = (f"NaN/inf loss at step {self.step} (terms {terms}); {where}. Lower lr, check the data for "
                   "duplicate/constant images (KoLeo), or set nan_policy: skip.")
            if cfg.nan_policy == "raise" or self.bad_steps > 5:
                raise DermbenchError(msg)
            log.warning(msg + " Step skipped.")
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            return {"step": self.step - 1, "skipped": True, **terms}
        self.bad_steps = 0
        total.backward()
        grad_norm = clip_per_module(self.student_raw, cfg.clip_grad)
        self.optimizer.step()
        ema_update(self.student_raw, self.teacher, values["momentum"])
        rec = {"step": self.step, "epoch": self.step / self.iters_per_epoch, **values, "grad_norm": grad_norm}
        rec.update({k: float(all_reduce_mean(v.to(self.device))) * (self.world if k in _SUMMED else 1)
                    for k, v in stats.items()})
        self.step += 1
        return rec

    def _loader(self, start: int, stop: int) -> Any:
        from torch.utils.data import DataLoader

        # own generator: creating a DataLoader iterator draws a base seed, which must not consume the global
        # RNG (drop-path) or a resumed run would diverge from an uninterrupted one
        gen = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(self.batches, batch_size=None, sampler=range(start, stop), num_workers=self.cfg.num_workers,
                          generator=gen,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=2 if self.cfg.num_workers else None)

    def train(self, stop_at: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Run until ``total_steps`` (or ``stop_at``); returns a summary with the last record and the probe."""
        from dermino_model.monitor import JsonlLog, progress_bar

        cfg = self.cfg
        stop = min(stop_at or self.total_steps, self.total_steps)
        every = cfg.checkpoint_every or self.iters_per_epoch
        logf = JsonlLog(self.out / "train_log.jsonl", enabled=self.rank == 0)
        logf.write({"event": "start", "step": self.step, "total_steps": self.total_steps, "world": self.world,
                    "notes": self.notes, "config": cfg.to_dict()})
        last: dict[str, Any] = {}
        t0 = time.perf_counter()
        n_imgs = 0
        with progress_bar(stop - self.step, enabled=progress and self.rank == 0, console=self.console) as bar:
            for batch in self._loader(self.step, stop):
                rec = self.train_step(batch)
                n_imgs += cfg.batch_size_per_gpu * self.world
                rec["img_per_s"] = n_imgs / max(time.perf_counter() - t0, 1e-9)
                last = rec
                if self.step % max(cfg.log_every, 1) == 0 or self.step == stop:
                    logf.write(rec)
                bar(rec)
                if cfg.probe_every and cfg.probe_dataset and self.step % cfg.probe_every == 0 and self.step < stop:
                    logf.write({"event": "probe", "step": self.step, **self.probe()})
                if self.step % every == 0 or self.step == stop:
                    self.save()
        summary: dict[str, Any] = {"step": self.step, "last": last, "output_dir": str(self.out),
                                   "seconds": time.perf_counter() - t0}
        if cfg.probe_dataset and self.step >= self.total_steps:
            summary["probe"] = self.probe()
            logf.write({"event": "probe", "step": self.step, **summary["probe"]})
        ckpts = list_checkpoints(self.out)
        summary["checkpoint"] = str(ckpts[-1]) if ckpts else None
        logf.write({"event": "end", **{k: v for k, v in summary.items() if k != "last"}})
        return summary

    def probe(self) -> dict[str, float]:
        from dermino_model.monitor import knn_probe

        if self.rank != 0:
            return {}
        return knn_probe(self.teacher.backbone.vit, self.cfg.probe_dataset, self.cfg.global_size, self.device,
                         max_images=self.cfg.probe_max_images)


def init_distributed() -> None:
    """Join the torchrun process group when launched with WORLD_SIZE > 1 (nccl on GPU, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_dist():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)


def run_pretraining(cfg: PretrainConfig, output_dir: str | Path | None = None, resume: bool = True,
                    stop_at: int | None = None, progress: bool = True, console: Any = None) -> dict[str, Any]:
    init_distributed()
    tr = Trainer(cfg, output_dir, console=console)
    tr.setup()
    if resume:
        tr.resume()
    return tr.train(stop_at=stop_at, progress=progress)


def ensure_demo_checkpoint(console: Any = None, progress: bool = True, **overrides: Any) -> Path:
    """The newest ``dermino-demo`` checkpoint, running ``--preset demo`` pretraining first when none exists.

    For ``dermbench demo``: ``dermino`` then loads it by default (``$DERMBENCH_CACHE/checkpoints/dermino-demo``).
    """
    from dermino_model.config import build_config

    out = default_output_dir("demo")
    found = [p for p in list_checkpoints(out) if (p / EXPORT_FILE).is_file()]
    if found:
        return found[-1]
    summary = run_pretraining(build_config("demo", overrides=overrides), out, resume=True, progress=progress,
                              console=console)
    if not summary.get("checkpoint"):
        raise DermbenchError(f"demo pretraining wrote no checkpoint in {out}")
    return Path(summary["checkpoint"])

"""Entry-point module of the DermINO plugin: backbones ``dermino`` / ``dermino-random`` and ``dermbench pretrain``.

Imports nothing heavy at module level (``dermbench --help`` stays instant).
"""

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import List, Optional

from dermbench import hookimpl
from dermbench.api import IMAGENET, ModelInfo, Preprocess

CITATION = ("DermINO: hybrid pretraining for a versatile dermatology foundation model, arXiv:2508.12190 (2025); "
            "DINOv2, Oquab et al., TMLR 2024")

DERMINO = ModelInfo(
    name="dermino",
    family="DermINO",
    source="custom",
    embed_dim=768,
    patch_size=14,
    preprocess=Preprocess(crop=224, resize=256, **IMAGENET),  # the authors' eval: resize 256 bicubic -> crop 224
    capabilities=frozenset({"cls", "patch_tokens"}),
    weights=("dermbench pretrain --preset demo", "teacher_checkpoint.pth (DermINO release, ViT-B/14)"),
    license="unknown",
    commercial_use=False,
    trained_on=("dermsynth",),
    citation=CITATION,
    description="DermINO teacher ViT from `dermbench pretrain` (DINOv2 + iBOT + KoLeo + masked-BCE prototypes), "
                "or the released ViT-B/14",
    embed_note="CLS token of the EMA teacher after the final LayerNorm (what DINOv2 evaluates)",
)

DERMINO_RANDOM = ModelInfo(
    name="dermino-random",
    family="random",
    source="custom",
    embed_dim=768,
    patch_size=14,
    preprocess=Preprocess(crop=224, resize=256, **IMAGENET),  # the authors' eval: resize 256 bicubic -> crop 224
    capabilities=frozenset({"cls", "patch_tokens"}),
    license="Apache-2.0",
    commercial_use=True,
    description="the dermino checkpoint's architecture with seeded random weights (paired baseline for pretraining)",
    embed_note="CLS token after the final LayerNorm of an untrained ViT (seeded: random:<seed>)",
    random_init=True,
)


def _release_info() -> ModelInfo:
    from dermino_model.backbone import RELEASE_TRAINED_ON, RELEASE_URL

    return replace(  # the same architecture and eval preprocessing as `dermino`; its own weights, licence, data
        DERMINO,
        name="dermino-release",
        weights=(f"teacher_checkpoint.pth (DermINO_Base, {RELEASE_URL}); --weights or DERMBENCH_WEIGHTS_DERMINO_RELEASE",),
        license="CC-BY-NC-ND-4.0",
        trained_on=RELEASE_TRAINED_ON,
        description="the authors' released DermINO ViT-B/14 teacher; pretrained with labels on the train splits "
                    "of 13 public dermatology sets (no split lists published), so every overlapping test set is flagged",
        embed_note="CLS token of the released teacher after the final LayerNorm",
    )


def _load(info: ModelInfo, weights=None, device: str = "cpu", **opts):
    from dermino_model.backbone import load_dermino

    return load_dermino(info, weights=weights, device=device, **opts)


def _load_release(info: ModelInfo, weights=None, device: str = "cpu", **opts):
    from dermino_model.backbone import load_release

    return load_release(info, weights=weights, device=device, **opts)


def _load_random(info: ModelInfo, weights=None, device: str = "cpu", **opts):
    from dermino_model.backbone import load_dermino_random

    return load_dermino_random(info, weights=weights, device=device, **opts)


@hookimpl
def register_models(register):
    from dermino_model.backbone import peek_info

    info = peek_info(DERMINO)
    register(info, partial(_load, info))
    rnd = peek_info(DERMINO_RANDOM)
    from dataclasses import replace

    rnd = replace(rnd, trained_on=(), random_init=True, description=DERMINO_RANDOM.description)
    register(rnd, partial(_load_random, rnd))
    rel = _release_info()
    register(rel, partial(_load_release, rel))


@hookimpl
def register_demo(register):
    """``dermbench demo`` pretrains the small demo checkpoint on dermsynth when none exists yet."""

    def prepare(log):
        from dermino_model.demo import ensure_demo_checkpoint

        ensure_demo_checkpoint(log=log)

    register("dermino-demo-checkpoint", prepare)


@hookimpl
def register_commands(app):
    import typer

    @app.command("pretrain")
    def pretrain(
        preset: Optional[str] = typer.Option(None, "--preset", help="smoke | demo | paper (default demo, or the "
                                                                   "config file's preset)"),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of options (overrides preset)"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="checkpoint folder (default "
                                           "$DERMBENCH_CACHE/checkpoints/dermino-<preset>)"),
        output: Optional[Path] = typer.Option(None, "--output", hidden=True, help="deprecated alias of --out"),
        set_: List[str] = typer.Option([], "--set", help="option=value overrides, e.g. --set sup_weight=0"),
        max_steps: int = typer.Option(0, "--max-steps", help="override the schedule length in steps"),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from the newest checkpoint"),
        device: str = typer.Option("auto", "--device"),
        leakage: Optional[str] = typer.Option(None, "--leakage", help="refuse | warn | drop | off"),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
        dry_run: bool = typer.Option(False, "--dry-run", "--print-config",
                                     help="print the effective configuration and schedule lengths (iterations) "
                                          "beside the authors' values, then exit: no data, no GPU"),
        gpus: Optional[int] = typer.Option(None, "--gpus", help="processes assumed by --dry-run for the global "
                                           "batch and scaled lr (default $WORLD_SIZE, or 8 for the paper presets)"),
    ) -> None:
        """DermINO hybrid pretraining (DINOv2 + iBOT + KoLeo + supervised prototypes). Multi-GPU:
        `torchrun --nproc_per_node N $(which dermbench) pretrain --preset paper --config data.yaml`."""
        import json

        from dermbench.api import parse_options as parse_kv
        from dermino_model.config import build_config
        from dermino_model.trainer import run_pretraining

        overrides = parse_kv(set_, "--set")
        if max_steps:
            overrides["max_steps"] = max_steps
        if device != "auto":
            overrides["device"] = device
        if leakage:
            overrides["leakage"] = leakage
        cfg = build_config(preset if preset or config else "demo", config, overrides, require_sources=not dry_run)
        if dry_run:
            from dermino_model.config import describe

            print(describe(cfg, gpus))
            return
        if output is not None:
            import warnings

            warnings.warn("`dermbench pretrain --output` is deprecated: use --out", DeprecationWarning, stacklevel=1)
            out = out or output
        summary = run_pretraining(cfg, out, resume=resume, progress=not quiet)
        last = summary.get("last", {})
        short = {k: round(v, 4) for k, v in last.items() if isinstance(v, float)}
        print(json.dumps({"checkpoint": summary.get("checkpoint"), "step": summary["step"],
                          "probe": summary.get("probe"), "last": short}, indent=1))
        if summary.get("checkpoint"):
            print(f"use it: dermbench run --model dermino --weights {summary['checkpoint']} --task all --dataset dermsynth")

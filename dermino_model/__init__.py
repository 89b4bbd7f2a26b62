"""DermINO hybrid pretraining, a first-party dermbench plugin (entry point ``dermino = dermino_model.plugin``).

DINOv2 self-distillation (DINO CLS loss with Sinkhorn-Knopp targets, iBOT masked-patch loss, KoLeo) plus
DermINO's supervised masked-BCE against text-initialised disease prototypes, re-implemented from the papers
and ``shared/DERMINO_PRETRAINING_NOTES.md``. Modules:

- ``losses``      the four losses, Sinkhorn-Knopp (fp32, max-subtracted, all-reduced) and mean-centering
- ``vit`` / ``heads`` / ``model``   timm ViT with a mask token, DINO head, prototypes, EMA teacher
- ``augment`` / ``masking``         multi-crop (DINOv2 defaults, blur semantics explicit), block masks, collate
- ``prototypes``  label normalisation, union-find merge by text similarity, text-encoder registry
- ``schedules`` / ``config``        per-iteration schedules, layer-wise lr decay; presets smoke | demo | paper
- ``data``        dataset-plugin mix, step-indexed batches, perceptual-hash leakage guard
- ``trainer`` / ``monitor``         single-process or torchrun DDP loop, atomic safetensors checkpoints, JSONL, kNN probe
- ``backbone`` / ``plugin``         checkpoint -> Backbone (``dermino``, ``dermino-random``), ``dermbench pretrain``
- ``evidence``    kNN AUROC of checkpoints vs random init with a paired bootstrap

Nothing heavy is imported here: ``dermbench --help`` stays instant.
"""

"""Helpers for the model tests: a fake Hugging Face cache laid out exactly like the real one."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"


def fake_hub_file(cache: Path, repo: str, filename: str, revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Where ``hf_hub_download(repo, filename)`` would have put the file: models--org--name/snapshots/<rev>/."""
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(revision)
    snap = base / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    return snap / filename


def images(n: int = 2, size: int = 224, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)

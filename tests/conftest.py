"""Test-wide settings: offline hubs, an isolated cache, few threads, the real shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Feature cache and split files go to a per-session temp dir, never the user's ~/.cache."""
    d = tmp_path_factory.mktemp("dermbench-cache")
    old = os.environ.get("DERMBENCH_CACHE")
    os.environ["DERMBENCH_CACHE"] = str(d)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    yield d
    if old is None:
        os.environ.pop("DERMBENCH_CACHE", None)
    else:
        os.environ["DERMBENCH_CACHE"] = old


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"real test data not found at {SHARED_DATA}: check out ../shared beside the repo")
    return SHARED_DATA

"""Where a model's weights come from, how they are read safely, and how they are identified.

Resolution order (first hit wins):

1. an explicit ``--weights PATH`` (a checkpoint file, or a Hugging Face-style directory);
2. the environment variable ``ModelInfo.weights_env`` (``DERMBENCH_WEIGHTS_<NAME>``);
3. the hub: the local Hugging Face cache first (no network at all), then one download attempt unless
   ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set — offline, a cache miss fails at once instead of
   burning ~47 s in retries;
4. otherwise :class:`~dermbench.api.WeightsUnavailable` with one message naming the model, the hub id,
   the environment variable and the exact command or URL that gets the weights.

``weights_id`` identifies the weights in cache keys and result records: ``sha256:<hex>`` of a file's
content (memoised in ``<cache>/weights_hashes.json`` keyed by path, size and mtime, so a 1 GB checkpoint
is hashed once), or ``hub:<repo>@<revision>`` for hub snapshots.

Only safe formats are read: safetensors, or ``torch.load(weights_only=True)`` (which refuses arbitrary
pickled objects; ``argparse.Namespace``, stored by many training scripts next to the weights, is allowed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from dermbench.api import DermbenchError, ModelInfo, WeightsUnavailable

if TYPE_CHECKING:  # pragma: no cover
    import torch

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
#: keys under which training scripts nest the state dict, tried in this order
NESTING_KEYS = ("state_dict", "model", "model_state", "module", "teacher", "model_ema")


def cache_dir() -> Path:
    """dermbench's one cache/home folder: ``DERMBENCH_CACHE``, else the deprecated ``DERMBENCH_HOME`` (with a
    warning), else ``$XDG_CACHE_HOME/dermbench`` (``~/.cache/dermbench``). Every reader of the cache uses this."""
    root = os.environ.get("DERMBENCH_CACHE")
    if not root and os.environ.get("DERMBENCH_HOME"):
        import warnings

        warnings.warn("DERMBENCH_HOME is deprecated: set DERMBENCH_CACHE (dermbench's one cache/home variable)",
                      DeprecationWarning, stacklevel=2)
        root = os.environ["DERMBENCH_HOME"]
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dermbench")
    return Path(root).expanduser()


def hf_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE > HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def hub_offline() -> bool:
    """True when the user asked the Hugging Face libraries not to touch the network."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


# --------------------------------------------------------------------------------------------------
# Resolution


@dataclass(frozen=True)
class HubSource:
    """Where the hub keeps a model: ``repo`` on huggingface.co and its weights ``files``.

    ``kind='file'``: ``files`` are alternatives in order of preference (safetensors before pickles); the
    first one found is the weights file. ``kind='dir'``: a transformers snapshot; ``files[0]`` is a file
    inside it (``config.json``) used to find it, and the directory is the result.
    """

    repo: str
    files: tuple[str, ...] = ("model.safetensors",)
    kind: str = "file"
    gated: bool = False

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}"


@dataclass(frozen=True)
class ResolvedWeights:
    """A local file or directory holding the weights, where it came from, and its identity."""

    path: Path
    origin: str  # explicit | env | hub-cache | hub-download
    weights_id: str

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()


def resolve_weights(
    info: ModelInfo,
    weights: str | os.PathLike[str] | None = None,
    hub: HubSource | None = None,
    how_to_get: str = "",
) -> ResolvedWeights:
    """Find the weights of ``info`` following the documented order, or raise WeightsUnavailable.

    ``how_to_get`` is the exact download hint for models without a hub copy (Google Drive releases).
    """
    if weights is not None and str(weights) != "":
        return _local(Path(weights).expanduser(), "explicit", info, "--weights")
    env = info.weights_env or env_var_for(info.name)
    if os.environ.get(env):
        return _local(Path(os.environ[env]).expanduser(), "env", info, env)
    if hub is not None:
        found = _from_hub(hub)
        if found is not None:
            return found
    raise WeightsUnavailable(unavailable_message(info, hub, env, how_to_get))


def env_var_for(name: str) -> str:
    """``DERMBENCH_WEIGHTS_<NAME>`` with every non-alphanumeric character as ``_`` (the registry's rule)."""
    return "DERMBENCH_WEIGHTS_" + "".join(c if c.isalnum() else "_" for c in name.upper())


def unavailable_message(info: ModelInfo, hub: HubSource | None, env: str, how_to_get: str = "") -> str:
    parts = [f"no weights for model {info.name!r}."]
    if hub is not None:
        state = "HF_HUB_OFFLINE is set and they are not in the Hugging Face cache" if hub_offline() else (
            "they are not in the Hugging Face cache and the hub is unreachable from here" if _REACHABLE is False
            else "they are not in the Hugging Face cache and the download failed"
        )
        parts.append(f"Hub id {hub.repo!r}: {state}.")
        files = hub.files[0] if hub.kind == "file" else ""
        get = f"hf download {hub.repo} {files}".rstrip()
        parts.append(f"Get them on a machine with internet access: `{get}` ({hub.url}"
                     + (", gated: accept the licence there and `hf auth login` first" if hub.gated else "")
                     + "), then copy the cache (~/.cache/huggingface) here or point to the files.")
    if how_to_get:
        parts.append(how_to_get)
    parts.append(f"Then pass `--weights PATH` or set {env}=PATH.")
    return " ".join(parts)


def _local(path: Path, origin: str, info: ModelInfo, via: str) -> ResolvedWeights:
    if not path.exists():
        raise WeightsUnavailable(
            f"weights for model {info.name!r} given by {via} do not exist: {path}. "
            "Fix the path (a checkpoint file or a Hugging Face-style directory)."
        )
    if path.is_dir():
        return ResolvedWeights(path, origin, dir_hash(path))
    return ResolvedWeights(path, origin, "sha256:" + file_sha256(path))


def _from_hub(hub: HubSource) -> ResolvedWeights | None:
    try:
        import huggingface_hub as hf
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm
        return None
    cache = hf_cache_dir()
    for f in hub.files:  # local cache first: no network at all
        c = hf.try_to_load_from_cache(hub.repo, f, cache_dir=cache)
        if isinstance(c, str):
            return _hub_resolved(hub, Path(c), "hub-cache")
    if hub_offline() or not hub_reachable():
        return None
    for f in hub.files:  # one attempt per candidate file, never a retry loop of our own
        try:
            if hub.kind == "dir":
                snap = Path(hf.snapshot_download(hub.repo, cache_dir=cache))
                return _hub_resolved(hub, snap / f, "hub-download")
            return _hub_resolved(hub, Path(hf.hf_hub_download(hub.repo, f, cache_dir=cache)), "hub-download")
        except Exception:  # network, gating, missing file: all mean "not available here"
            continue
    return None


_REACHABLE: bool | None = None


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub per process: an unreachable hub costs 3 s, not ~47 s of client retries."""
    global _REACHABLE
    if _REACHABLE is None:
        import socket
        from urllib.parse import urlparse

        url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        try:
            with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
                _REACHABLE = True
        except OSError:
            _REACHABLE = False
    return _REACHABLE


def _hub_resolved(hub: HubSource, first: Path, origin: str) -> ResolvedWeights:
    # cache layout: .../models--org--name/snapshots/<revision>/<file>
    rev = first.parent.name if first.parent.parent.name == "snapshots" else "local"
    path = first.parent if hub.kind == "dir" else first
    return ResolvedWeights(path, origin, f"hub:{hub.repo}@{rev}")


# --------------------------------------------------------------------------------------------------
# Hashing


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's content, memoised by (absolute path, size, mtime) in the dermbench cache."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    store = cache_dir() / "weights_hashes.json"
    memo: dict[str, str] = {}
    try:
        memo = json.loads(store.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    memo = {k: v for k, v in memo.items() if not k.startswith(f"{p}|")}
    memo[key] = digest
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo, indent=0, sort_keys=True))
        os.replace(tmp, store)
    except OSError:  # a read-only cache must not stop a run
        pass
    return digest


def dir_hash(path: Path) -> str:
    """Identity of a Hugging Face-style directory: hash over its weight and config files' hashes."""
    files = sorted(
        f for f in path.rglob("*") if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or f.suffix == ".json")
    )
    if not any(f.suffix in WEIGHT_SUFFIXES for f in files):
        raise DermbenchError(
            f"directory {path} holds no weights file ({', '.join(WEIGHT_SUFFIXES)}); "
            "pass the checkpoint file itself or a directory saved with save_pretrained()."
        )
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path)}\0{file_sha256(f)}\n".encode())
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Safe reading


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a checkpoint without executing pickled code: safetensors, or torch.load(weights_only=True)."""
    import torch

    p = Path(path)
    if p.is_dir():
        cands = sorted(p.glob("*.safetensors")) or sorted(f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES)
        if len(cands) != 1:
            raise DermbenchError(
                f"directory {p} holds {len(cands)} weight files ({[c.name for c in cands]}); pass one file."
            )
        p = cands[0]
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:
            raise DermbenchError(f"cannot read safetensors file {p}: {e}. Re-download it.") from e
    import argparse

    kind = _sniff(p)
    if kind is not None:
        raise DermbenchError(
            f"weights file {p} is not a checkpoint ({kind}): dermbench reads safetensors files or PyTorch "
            "state dicts saved with torch.save. Pass the checkpoint file itself."
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg or "UnpicklingError" in type(e).__name__:
            glob = re.search(r"GLOBAL ([\w.]+)", msg)
            what = f" (it pickles {glob.group(1)})" if glob else ""
            # never advise unpickling it here: that would run whatever code the file carries
            raise DermbenchError(
                f"checkpoint {p} cannot be loaded safely{what}: dermbench only reads tensors (a plain state dict "
                "saved with torch.save) or safetensors, and never unpickles other objects. Ask the publisher for a "
                "safetensors file or a plain state dict (torch.save(model.state_dict(), 'OUT.pth')), or export one "
                "yourself from a copy of the model you trust."
            ) from e
        raise DermbenchError(
            f"cannot read checkpoint {p}: {type(e).__name__}: {e}. It is not a PyTorch or safetensors checkpoint, "
            "or it is damaged: re-download it."
        ) from e


def _sniff(p: Path) -> str | None:
    """Why ``p`` is obviously not a checkpoint (empty, text), or None (zip/pickle: let torch.load decide)."""
    try:
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if not head:
        return "it is empty"
    if head[:2] == b"PK" or head[:1] == b"\x80":  # zip (torch.save) or a legacy pickle
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it is a text file starting with {text[:40]!r}"
    return None


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any, prefer: Sequence[str] = (), source: str = "checkpoint") -> dict[str, "torch.Tensor"]:
    """The tensor dict inside a checkpoint: the object itself, or the first nested key that holds one
    (``prefer`` first, then :data:`NESTING_KEYS`). Non-tensor entries (epoch, args) are dropped."""
    import torch

    if _is_state_dict(obj):
        return dict(obj)
    if not isinstance(obj, Mapping):
        raise DermbenchError(f"{source} holds a {type(obj).__name__}, not a state dict")
    for key in (*prefer, *NESTING_KEYS):
        if key in obj and isinstance(obj[key], Mapping):
            inner = {k: v for k, v in obj[key].items() if isinstance(v, torch.Tensor)}
            if inner:
                return inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors:
        return tensors
    raise DermbenchError(
        f"{source} has no tensors at the top level nor under {list(prefer) + list(NESTING_KEYS)}; "
        f"its keys are {sorted(map(str, obj))[:12]}"
    )


def strip_prefixes(sd: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """Remove each prefix from every key that carries it (DDP ``module.``, PanDerm ``encoder.``, ...)."""
    out = dict(sd)
    for pre in prefixes:
        out = {(k[len(pre):] if k.startswith(pre) else k): v for k, v in out.items()}
    return out


def select_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keep only keys under ``prefix`` (stripped) when any key has it, e.g. ``backbone.`` of a DINO
    teacher, which also holds ``dino_head.*``/``ibot_head.*`` that a backbone must not receive."""
    if not any(k.startswith(prefix) for k in sd):
        return dict(sd)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


_CHUNK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def unchunk_blocks(sd: Mapping[str, Any]) -> dict[str, Any]:
    """DINOv2 ``block_chunks`` layout ``blocks.<chunk>.<i>.*`` -> ``blocks.<i>.*`` (``i`` is global there)."""
    if not any(_CHUNK.match(k) for k in sd):
        return dict(sd)
    return {_CHUNK.sub(lambda m: f"blocks.{m.group(2)}.", k): v for k, v in sd.items()}


def dinov2_backbone_state_dict(obj: Any, key: str = "teacher") -> dict[str, "torch.Tensor"]:
    """The backbone weights of an original DINOv2-style training checkpoint (``teacher_checkpoint.pth``:
    ``{"teacher": {"backbone.*", "dino_head.*", ...}}``, optionally with ``module.`` prefixes and chunked
    blocks), in the original DINOv2 key layout that timm's ViT checkpoint filter converts."""
    sd = extract_state_dict(obj, prefer=(key,), source="DINOv2 checkpoint")
    sd = strip_prefixes(sd, ("module.",))
    sd = select_prefix(sd, "backbone.")
    return unchunk_blocks(sd)


def load_into(
    module: "torch.nn.Module",
    sd: Mapping[str, "torch.Tensor"],
    source: str,
    ignore_missing: Sequence[str] = (),
    ignore_unexpected: Sequence[str] = (),
) -> None:
    """``load_state_dict`` that fails with the missing/unexpected key lists (patterns are regexes).

    Shape mismatches are reported per key with both shapes, instead of torch's wall of text.
    """
    own = module.state_dict()
    bad_shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in sd and not any(re.search(p, k) for p in ignore_missing)]
    unexpected = [k for k in sd if k not in own and not any(re.search(p, k) for p in ignore_unexpected)]
    if bad_shapes or missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else "")

        lines = [f"checkpoint {source} does not match the architecture:"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if bad_shapes:
            lines.append(f"shape mismatches ({len(bad_shapes)}): {show(bad_shapes)}")
        lines.append("Is it the checkpoint of this model (right size/variant)? ")
        raise DermbenchError(" ".join(lines))
    module.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)

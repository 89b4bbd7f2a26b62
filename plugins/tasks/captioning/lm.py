"""Language-model side of captioning: a visual prefix (trainable projection) in front of a causal LM.

Two language models:

* ``tiny``: a 2-layer GPT-2-style decoder built from a config with a word-level tokenizer trained on the task's
  training captions (``tokenizers`` WordLevel, wrapped as ``PreTrainedTokenizerFast``). Everything is trained
  (projection and LM), so it learns a caption distribution on CPU in seconds and needs nothing from a hub.
* any Hugging Face causal LM (hub id or local directory, e.g. BioMistral/BioMistral-7B as in DermINO): frozen,
  with LoRA adapters through peft (default r=8, alpha=16 on q_proj/v_proj); bf16 on GPU.

The image side is a (n, k, D) array of k visual tokens (k=1: the pooled embedding); a linear projection maps
each token into the LM's input-embedding space. Training uses teacher forcing on
``[visual tokens][bos][prompt][caption][eos]`` with the loss on caption and eos only.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from dermbench.api import DermbenchError

SPECIALS = {"pad_token": "[PAD]", "bos_token": "[BOS]", "eos_token": "[EOS]", "unk_token": "[UNK]"}


@dataclass
class LanguageModel:
    model: Any  # transformers PreTrainedModel (possibly a peft wrapper)
    tokenizer: Any
    kind: str  # "tiny" | "hf"
    name: str
    hidden: int
    dtype: Any
    notes: list[str] = field(default_factory=list)
    n_trainable: int = 0
    n_total: int = 0


# --------------------------------------------------------------------------------------------------
# tokenizer + tiny LM


def word_tokenizer(captions: Sequence[str]) -> Any:
    """Word-level tokenizer (lower-cased, punctuation split off) trained on the given captions only."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=SPECIALS["unk_token"]))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIALS.values()), min_frequency=1)
    tok.train_from_iterator(list(captions), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)


def tiny_lm(tokenizer: Any, *, n_positions: int, dim: int, layers: int, seed: int) -> Any:
    """A small GPT-2 decoder with seeded random init (the whole model is trained)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    heads = max(1, dim // 32)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=dim, n_layer=layers, n_head=heads,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    model.loss_type = "ForCausalLM"  # the standard shifted cross-entropy, named so transformers does not warn
    return model


def detokenize(text: str) -> str:
    """Undo the word tokenizer's spaces around punctuation ('a , b .' -> 'a, b.')."""
    text = re.sub(r"(\d)\s+\.\s+(\d)", r"\1.\2", text)
    text = re.sub(r"\s+([.,;:!?)])", r"\1", text)
    text = re.sub(r"([(])\s+", r"\1", text)
    text = re.sub(r"(\w)\s+([-/])\s+(\w)", r"\1\2\3", text)
    return re.sub(r"\s+", " ", text).strip()


# --------------------------------------------------------------------------------------------------
# Hugging Face LM + LoRA


def _offline_hint(name: str, err: Exception) -> DermbenchError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    return DermbenchError(
        f"cannot load language model {name!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
        + ("HF_HUB_OFFLINE=1 is set, so only local files and the local hub cache are used. " if offline else
           "Without network access set HF_HUB_OFFLINE=1 (avoids ~47 s of retries) and use local files. ")
        + f"Pass a local directory with config.json, weights and tokenizer files (--task-opt captioning.lm=/path), "
        f"download it once where the hub is reachable (huggingface-cli download {name}), "
        "or use --task-opt captioning.lm=tiny for the offline model."
    )


def load_hf_lm(name: str, *, device: str, lora_r: int, lora_alpha: int, lora_dropout: float,
               lora_targets: Sequence[str], log: Any = print) -> LanguageModel:
    """Frozen causal LM + LoRA adapters (peft); bf16 on CUDA, float32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError, EnvironmentError, ImportError) as e:
        raise _offline_hint(name, e) from e
    except Exception as e:  # hub errors come in many types (HfHubHTTPError, LocalEntryNotFoundError, ...)
        if "huggingface_hub" in type(e).__module__ or "requests" in type(e).__module__:
            raise _offline_hint(name, e) from e
        raise
    notes: list[str] = []
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise DermbenchError(
                f"tokenizer of {name!r} has neither a pad nor an eos token: captions cannot be batched or ended. "
                "Use a tokenizer that defines eos_token (add it to tokenizer_config.json)."
            )
        tokenizer.pad_token = tokenizer.eos_token
        notes.append(f"tokenizer of {name!r} has no pad token: using its eos token {tokenizer.eos_token!r} as pad "
                     "(padding is masked out of attention and loss, so this is safe)")
        log(notes[-1])
    if tokenizer.eos_token_id is None:
        raise DermbenchError(f"tokenizer of {name!r} has no eos token: generation could never stop. "
                             "Use a tokenizer that defines eos_token.")
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora_targets if t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"})
        raise DermbenchError(
            f"LoRA target module(s) {missing} not found in {name!r}; its linear layers are {linear[:12]}. "
            "Set --task-opt captioning.lora_targets=NAME1,NAME2 (Llama/Mistral: q_proj,v_proj; GPT-2: c_attn)."
        )
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(lora_targets),
                     bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    hidden = model.get_input_embeddings().weight.shape[1]
    return LanguageModel(model, tokenizer, "hf", name, hidden, dtype, notes)


# --------------------------------------------------------------------------------------------------
# Prefix captioner


class PrefixCaptioner:
    """Projection (visual tokens -> LM embedding space) + causal LM; teacher-forced training, beam/greedy decoding."""

    def __init__(self, lm: LanguageModel, in_dim: int, *, prompt: str, max_len: int, seed: int, device: str,
                 expand: int = 1, pre_prompt: str = ""):
        """``expand``: each visual token becomes ``expand`` LM tokens through one Linear(D, expand*H) (the DermINO
        authors map CLS to 8 tokens this way); ``pre_prompt``: text placed before the visual tokens (their
        ``<s>[INST] ``), ``prompt`` after them (without ``pre_prompt``, a BOS token leads ``prompt``)."""
        import torch

        self.lm, self.device, self.max_len = lm, device, max_len
        self.expand = max(1, int(expand))
        tok = lm.tokenizer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.proj = torch.nn.Linear(in_dim, lm.hidden * self.expand)
        self.proj.to(device)
        lm.model.to(device)
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        self.pre_ids = tok(pre_prompt, add_special_tokens=False)["input_ids"] if pre_prompt else []
        self.head_ids = ([] if self.pre_ids else bos) + (tok(prompt, add_special_tokens=False)["input_ids"]
                                                          if prompt else [])
        self.eos = tok.eos_token_id

    # ---------------------------------------------------------------- encoding
    def _embed_tokens(self, ids):
        return self.lm.model.get_input_embeddings()(ids)

    def encode_captions(self, captions: Sequence[str]) -> tuple[list[list[int]], int]:
        ids = self.lm.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        truncated = sum(len(x) > self.max_len for x in ids)
        return [x[: self.max_len] + [self.eos] for x in ids], truncated

    def _prefix(self, vis):
        """(B, k, D) float tensor -> (B, k + len(head), H) input embeddings."""
        import torch

        v = self.proj(vis.to(self.device, torch.float32)).to(self.lm.dtype)
        if self.expand > 1:  # (B, k, expand*H) -> (B, k*expand, H)
            v = v.reshape(v.shape[0], v.shape[1] * self.expand, -1)
        parts = [v]
        for ids, at_end in ((self.pre_ids, False), (self.head_ids, True)):
            if ids:
                t = torch.tensor(ids, device=self.device).unsqueeze(0).expand(v.shape[0], -1)
                e = self._embed_tokens(t).to(self.lm.dtype)
                parts = parts + [e] if at_end else [e] + parts
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def loss(self, vis, cap_ids: list[list[int]]):
        import torch

        pad = self.lm.tokenizer.pad_token_id
        B, L = len(cap_ids), max(len(x) for x in cap_ids)
        ids = torch.full((B, L), pad, dtype=torch.long)
        for i, x in enumerate(cap_ids):
            ids[i, : len(x)] = torch.tensor(x)
        ids = ids.to(self.device)
        cap_mask = (torch.arange(L, device=self.device)[None, :] < torch.tensor([len(x) for x in cap_ids],
                                                                                  device=self.device)[:, None])
        prefix = self._prefix(vis)
        P = prefix.shape[1]
        emb = torch.cat([prefix, self._embed_tokens(ids).to(self.lm.dtype)], dim=1)
        attn = torch.cat([torch.ones(B, P, dtype=torch.long, device=self.device), cap_mask.long()], dim=1)
        labels = torch.cat([torch.full((B, P), -100, dtype=torch.long, device=self.device),
                            ids.masked_fill(~cap_mask, -100)], dim=1)
        return self.lm.model(inputs_embeds=emb, attention_mask=attn, labels=labels).loss

    # ---------------------------------------------------------------- training
    def trainable(self) -> tuple[list[Any], list[Any]]:
        lm_params = [p for p in self.lm.model.parameters() if p.requires_grad]
        return list(self.proj.parameters()), lm_params

    def fit(self, vis_train, captions: Sequence[str], *, epochs: int, batch_size: int, lr_proj: float, lr_lm: float,
            weight_decay: float, seed: int, progress: Any = None) -> dict[str, Any]:
        """AdamW on two parameter groups (projection, LM/LoRA); returns the loss curve per epoch."""
        import torch

        cap_ids, truncated = self.encode_captions(captions)
        proj_p, lm_p = self.trainable()
        groups = [{"params": proj_p, "lr": lr_proj}]
        if lm_p:
            groups.append({"params": lm_p, "lr": lr_lm})
        opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
        X = torch.as_tensor(vis_train, dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        self.lm.model.train()
        self.proj.train()
        curve = []
        n = len(X)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g).tolist()
            total, count = 0.0, 0
            for lo in range(0, n, batch_size):
                idx = perm[lo : lo + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = self.loss(X[idx], [cap_ids[i] for i in idx])
                if not torch.isfinite(loss):
                    raise DermbenchError(
                        f"captioning loss became {loss.item()} (lr_proj={lr_proj}, lr_lm={lr_lm}); "
                        "lower the learning rates (--task-opt captioning.lr_lm=...) or check the features for NaN"
                    )
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            curve.append(round(total / max(count, 1), 5))
            if progress is not None:
                progress(1)
        self.lm.model.eval()
        self.proj.eval()
        return {"loss_per_epoch": curve, "captions_truncated": truncated}

    # ---------------------------------------------------------------- generation
    def generate(self, vis, *, num_beams: int, max_new_tokens: int, batch_size: int = 32) -> list[str]:
        """Deterministic decoding (greedy when num_beams=1, else beam search) from the visual prefix."""
        import torch

        tok = self.lm.tokenizer
        X = torch.as_tensor(vis, dtype=torch.float32)
        out: list[str] = []
        self.lm.model.eval()
        with torch.no_grad():
            for lo in range(0, len(X), batch_size):
                emb = self._prefix(X[lo : lo + batch_size])
                attn = torch.ones(emb.shape[:2], dtype=torch.long, device=self.device)
                gen = self.lm.model.generate(
                    inputs_embeds=emb, attention_mask=attn, max_new_tokens=max_new_tokens, num_beams=num_beams,
                    do_sample=False, eos_token_id=self.eos, pad_token_id=tok.pad_token_id,
                    bos_token_id=tok.bos_token_id, early_stopping=num_beams > 1,
                )
                for row in gen.tolist():
                    if self.eos in row:
                        row = row[: row.index(self.eos)]
                    text = tok.decode(row, skip_special_tokens=True)
                    out.append(detokenize(text) if self.lm.kind == "tiny" else text.strip())
        return out


def count_params(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def pool_tokens(maps: Any, k: int) -> Any:
    """(n, D, h, w) patch maps -> (n, k, D) visual tokens by adaptive average pooling to an a x b grid (a*b=k).

    The grid is the most square factorisation of k (8 -> 2x4) so tokens keep a coarse spatial layout.
    """
    import numpy as np
    import torch

    a = max(d for d in range(1, int(math.isqrt(k)) + 1) if k % d == 0)
    b = k // a
    x = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    h, w = x.shape[-2:]
    if (a, b) > (h, w) and (b, a) <= (h, w):
        a, b = b, a
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, (a, b))  # (n, D, a, b)
    return pooled.flatten(2).transpose(1, 2).contiguous().numpy()  # (n, k, D)

"""Tiny versions of the Transformers people train today, built from their libraries' own configs (chapter 20).

GPT-2, Llama, Qwen3 and OLMo 2 come from Hugging Face ``transformers`` (``pip install 'elr[hf]'``), ViT from
torchvision; nothing is downloaded. They are small enough for a CPU (two blocks of width 64 by default) but keep
each architecture's layer order, which is all the audit's verdicts depend on: GPT-2 and ViT normalise with
LayerNorm, Llama with RMSNorm, all three *before* each residual branch (pre-norm); Qwen3 adds an RMSNorm on every
head's queries and keys (QK-norm); OLMo 2 normalises the queries and keys and, instead of each branch's input, its
output, before the residual addition.

:func:`train_sequence` trains the language models on :func:`elr.transformer.sorting_task` with plain SGD and an
:class:`elr.measure.ELRMonitor` attached to the optimizer (``monitor.attach``), the way a user's loop would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from elr import measure
from elr.transformer import SequenceTask, sequence_loss

FAMILIES = ("gpt2", "llama", "qwen3", "olmo2", "vit")
LANGUAGE_MODELS = ("gpt2", "llama", "qwen3", "olmo2")
LABELS = {"gpt2": "GPT-2", "llama": "Llama", "qwen3": "Qwen3 (QK-norm)", "olmo2": "OLMo 2 (QK-norm, norm after each branch)",
          "vit": "ViT"}


def _transformers():
    import warnings

    try:
        with warnings.catch_warnings():
            # transformers imports huggingface_hub, which imports tqdm.auto: in a Jupyter kernel without
            # ipywidgets that warns "IProgress not found" onto the chapter's page, about a progress bar nothing
            # here shows
            try:
                from tqdm import TqdmWarning

                warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
            except ImportError:
                pass
            import transformers
    except ImportError:
        raise ImportError("the tiny GPT-2, Llama and Qwen3 need Hugging Face transformers: "
                          "pip install 'elr[hf]'") from None
    return transformers


def build(family: str, width: int = 64, n_layers: int = 2, heads: int = 4, vocab: int = 16, seq_len: int = 8,
          image_size: int = 32, patch_size: int = 8, norm_eps: float = 1e-6, seed: int = 0,
          dtype: torch.dtype = torch.float32) -> nn.Module:
    """A randomly initialised ``family`` model (one of :data:`FAMILIES`) of ``n_layers`` blocks of ``width``.

    ``norm_eps`` is every normalisation's ε (LayerNorm's and RMSNorm's); ε breaks exact scale invariance, so
    float64 checks of the identities of invariant weights use a tiny one. Dropout is off, and so is the key-value
    cache (training needs none, and its concatenation onto an empty cache would be the first non-homogeneous
    step the audit meets on the way from a key or value projection to the output). ViT's classification
    head, which torchvision initialises to zero (so that at initialisation the output depends on no other
    weight, chapter 8), is drawn like the other weights instead (normal, std 0.02)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    for name, value, low in (("width", width, 1), ("n_layers", n_layers, 1), ("heads", heads, 1),
                             ("vocab", vocab, 2), ("seq_len", seq_len, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if width % heads:
        raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
    if not 0 < norm_eps < 1:
        raise ValueError(f"norm_eps must be in (0, 1), got {norm_eps!r}")
    torch.manual_seed(seed)
    if family == "vit":
        from torchvision.models.vision_transformer import VisionTransformer

        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
        model = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=n_layers, num_heads=heads,
                                  hidden_dim=width, mlp_dim=2 * width, num_classes=10,
                                  norm_layer=lambda d: nn.LayerNorm(d, eps=norm_eps))
        nn.init.normal_(model.heads.head.weight, std=0.02)
        return model.to(dtype)
    tf = _transformers()
    # no padding token: Hugging Face zeroes the padding row of the embedding, and a zero vector before an RMSNorm
    # of tiny ε gets a gradient of order 1/√ε
    common = dict(vocab_size=vocab, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if family == "gpt2":
        config = tf.GPT2Config(n_layer=n_layers, n_embd=width, n_head=heads, n_positions=seq_len,
                               layer_norm_epsilon=norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                               use_cache=False, **common)
        model = tf.GPT2LMHeadModel(config)
    else:
        kind = dict(llama=(tf.LlamaConfig, tf.LlamaForCausalLM), qwen3=(tf.Qwen3Config, tf.Qwen3ForCausalLM),
                    olmo2=(tf.Olmo2Config, tf.Olmo2ForCausalLM))[family]
        head_dim = {} if family == "olmo2" else {"head_dim": width // heads}  # OLMo 2's is width // heads
        config = kind[0](hidden_size=width, intermediate_size=2 * width, num_hidden_layers=n_layers,
                         num_attention_heads=heads, num_key_value_heads=heads, **head_dim,
                         max_position_embeddings=seq_len, rms_norm_eps=norm_eps, attention_dropout=0.0,
                         tie_word_embeddings=False, use_cache=False, **common)
        model = kind[1](config)
    return model.to(dtype)


def example_inputs(family: str, batch: int = 4, vocab: int = 16, seq_len: int = 8, image_size: int = 32,
                   seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of one forward pass: token ids for the language models, images for ViT."""
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return (torch.randn(batch, 3, image_size, image_size, generator=g, dtype=dtype),), {}
    return (), {"input_ids": torch.randint(0, vocab, (batch, seq_len), generator=g)}


@dataclass
class SequenceRun:
    records: measure.Records
    losses: np.ndarray  # training loss per step (NaN after a divergence)
    layers: list[str]   # the weights the monitor watched
    diverged_at: int | None


def train_sequence(model: nn.Module, task: SequenceTask, steps: int, lr: float, batch_size: int = 32, seed: int = 0,
                   layers: Any = None) -> SequenceRun:
    """Plain SGD on ``task`` (next-token logits of a Hugging Face causal LM against the task's per-position
    targets) with :class:`elr.measure.ELRMonitor` attached to the optimizer, logging every step.

    ``layers=None`` lets the monitor choose the weights the audit finds scale-invariant, at the first forward
    pass; a model with none is refused there, with the cause (ValueError). A list of weight names watches exactly
    those (the caller vouches for their invariance)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not lr > 0 or not np.isfinite(lr):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}")
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = measure.ELRMonitor(model, layers=layers)
    handle = monitor.attach(opt)
    g = torch.Generator().manual_seed(seed)
    losses = np.full(steps, np.nan)
    diverged_at = None
    try:
        for step in range(steps):
            idx = torch.randint(0, len(task.inputs), (batch_size,), generator=g)
            loss = sequence_loss(model(input_ids=task.inputs[idx]).logits, task.targets[idx])
            if not torch.isfinite(loss):
                diverged_at = step
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[step] = loss.item()
    finally:
        handle.remove()
    return SequenceRun(monitor.records, losses, list(monitor.names), diverged_at)

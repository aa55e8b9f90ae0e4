"""A small pre-LN Transformer, an offline sequence task, and its ELRs (Part III).

The paper's closing discussion: in attention blocks the weights are not
scale-invariant, so the auto-rate-tuning of Eqs. (1)-(2) does not hold, and
base gradients fluctuate more than in ReLU networks. This module provides the
pieces to look at both: :class:`PreLNTransformer` (optionally with QK-norm,
Henry et al. 2020), :func:`sorting_task` (generated, no download), and
:func:`train_sequence` (plain SGD with the ELR monitor on every weight matrix).

Every linear layer is bias-free, so with QK-norm the query and key weights are
exactly scale-invariant (a bias before a LayerNorm would break it, see
chapter 7).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from elr import measure


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.qk_norm = qk_norm
        if qk_norm:  # per head, over the head dimension
            self.q_norm = nn.LayerNorm(self.d_head, eps=eps, elementwise_affine=False)
            self.k_norm = nn.LayerNorm(self.d_head, eps=eps, elementwise_affine=False)

    def forward(self, x):
        b, t, d = x.shape
        q = self.q(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)
        k = self.k(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)
        v = self.v(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_head)
        mixed = torch.matmul(scores.softmax(dim=-1), v)
        return self.o(mixed.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LN: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, qk_norm: bool, eps: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, eps=eps)
        self.attn = Attention(d_model, n_heads, qk_norm, eps)
        self.ln2 = nn.LayerNorm(d_model, eps=eps)
        self.ff1 = nn.Linear(d_model, d_ff, bias=False)
        self.act = nn.GELU()
        self.ff2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ff2(self.act(self.ff1(self.ln2(x))))


class PreLNTransformer(nn.Module):
    """Token and position embeddings, ``n_layers`` pre-LN blocks, a final LayerNorm and a per-position head."""

    def __init__(self, vocab: int = 10, seq_len: int = 8, d_model: int = 64, n_heads: int = 4, n_layers: int = 2,
                 d_ff: int = 128, qk_norm: bool = False, eps: float = 1e-5):
        super().__init__()
        if min(vocab, seq_len, d_model, n_heads, n_layers, d_ff) < 1:
            raise ValueError("vocab, seq_len, d_model, n_heads, n_layers and d_ff must all be >= 1")
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, qk_norm, eps) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, eps=eps)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.qk_norm = qk_norm

    def forward(self, tokens):
        x = self.tok(tokens) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def weight_layers(self) -> list[tuple[str, nn.Module]]:
        """Every weight matrix inside the blocks, block by block (q, k, v, o, ff1, ff2)."""
        return [(f"blocks.{i}.{n}", m) for i, b in enumerate(self.blocks)
                for n, m in [("attn.q", b.attn.q), ("attn.k", b.attn.k), ("attn.v", b.attn.v),
                             ("attn.o", b.attn.o), ("ff1", b.ff1), ("ff2", b.ff2)]]

    def scale_invariant_layers(self) -> list[tuple[str, nn.Module]]:
        """With QK-norm: the query and key weights. Without: none (``elr.audit`` confirms both)."""
        return [(n, m) for n, m in self.weight_layers() if self.qk_norm and n.endswith(("attn.q", "attn.k"))]


@dataclass
class SequenceTask:
    """Token sequences and per-position targets, with a description for captions and records."""

    inputs: torch.Tensor   # (N, T) int64
    targets: torch.Tensor  # (N, T) int64
    vocab: int
    description: str

    def split(self, n_test: int) -> tuple["SequenceTask", "SequenceTask"]:
        if not 0 < n_test < len(self.inputs):
            raise ValueError(f"n_test must be between 1 and {len(self.inputs) - 1}, got {n_test}")
        part = lambda sl, what: SequenceTask(self.inputs[sl], self.targets[sl], self.vocab,  # noqa: E731
                                             f"{self.description}, {what}")
        return part(slice(n_test, None), "train part"), part(slice(None, n_test), "test part")


def sorting_task(n: int = 4096, seq_len: int = 8, vocab: int = 10, seed: int = 0) -> SequenceTask:
    """Sort a sequence of ``seq_len`` digits drawn uniformly from ``vocab``: position i must output the i-th smallest."""
    if n < 2 or seq_len < 2 or vocab < 2:
        raise ValueError(f"n, seq_len and vocab must be >= 2, got n={n}, seq_len={seq_len}, vocab={vocab}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, seq_len), generator=g)
    return SequenceTask(x, x.sort(dim=1).values, vocab,
                        f"generated sorting task: {n:,} sequences of {seq_len} tokens from {vocab} symbols (seed {seed})")


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@dataclass
class SequenceRun:
    records: measure.Records
    losses: np.ndarray      # training loss per step (NaN after a divergence)
    test_acc: float         # per-token accuracy on the test part (NaN if diverged)
    diverged_at: int | None


def train_sequence(qk_norm: bool, task: SequenceTask, steps: int, lr: float, batch_size: int = 64,
                   n_test: int = 512, seed: int = 0, momentum: float = 0.0, wd: float = 0.0,
                   **model_kwargs) -> SequenceRun:
    """Plain SGD on ``task``; the ELR monitor logs every weight matrix of the blocks at every step."""
    if steps < 1 or lr <= 0 or batch_size < 1:
        raise ValueError(f"need steps >= 1, lr > 0, batch_size >= 1; got {steps}, {lr}, {batch_size}")
    train, test = task.split(n_test)
    torch.manual_seed(seed)
    model = PreLNTransformer(vocab=task.vocab, seq_len=task.inputs.shape[1], qk_norm=qk_norm, **model_kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    monitor = measure.ELRMonitor(model.weight_layers())
    g = torch.Generator().manual_seed(seed + 1)
    losses = np.full(steps, np.nan)
    diverged_at = None
    for step in range(steps):
        idx = torch.randint(0, len(train.inputs), (batch_size,), generator=g)
        loss = sequence_loss(model(train.inputs[idx]), train.targets[idx])
        if not torch.isfinite(loss):
            diverged_at = step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        monitor.observe_gradients(step)
        opt.step()
        monitor.observe_update(step)
        losses[step] = loss.item()
    acc = float("nan")
    if diverged_at is None:
        with torch.no_grad():
            acc = float((model(test.inputs).argmax(-1) == test.targets).float().mean())
    return SequenceRun(monitor.records, losses, acc, diverged_at)

"""Gradient transforms applied between ``backward()`` and ``optimizer.step()``.

The random walk (the paper's Definition 4.2 and Algorithm 1) replaces a
gradient by a random direction orthogonal to the weight, with the norm of the
real gradient. The paper's printed Algorithm 1 does something else (it keeps
the component *parallel* to W and scales the noise by 1/e instead of
1/√e); :func:`random_walk_as_printed` reproduces it so the book's errata
chapter can measure the difference.
"""
from __future__ import annotations

import numpy as np
import torch


def _rows(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """View a weight as (units, elements): one row per output channel, or one row for the layer."""
    return t.reshape(t.shape[0], -1) if per_channel and t.dim() > 1 else t.reshape(1, -1)


def random_walk_direction(grad: torch.Tensor, weight: torch.Tensor, generator: torch.Generator | None = None,
                          per_channel: bool = True) -> torch.Tensor:
    """A random vector orthogonal to ``weight`` with the norm of ``grad`` (Def. 4.2, as intended).

    With ``per_channel`` (the default) orthogonality and norm hold for each
    output channel separately, which is how BatchNorm makes each channel's
    weights scale-invariant; otherwise for the layer as a whole. A row whose
    weight is zero keeps a plain random direction (there is nothing to be
    orthogonal to).
    """
    w = _rows(weight.detach(), per_channel).to(torch.float64)
    g = _rows(grad.detach(), per_channel).to(torch.float64)
    # drawn in float32 (a sixth of the cost of float64 samples on a CPU); the projection is in float64
    r = torch.randn(w.shape, generator=generator, dtype=torch.float32, device="cpu").to(w.device, torch.float64)
    ww = (w * w).sum(dim=1, keepdim=True)
    coef = torch.where(ww > 0, (r * w).sum(dim=1, keepdim=True) / ww.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    r = r - coef * w  # remove the component along W
    rn = r.norm(dim=1, keepdim=True)
    r = r * torch.where(rn > 0, g.norm(dim=1, keepdim=True) / rn.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return r.reshape(grad.shape).to(grad.dtype)


def random_walk_as_printed(grad: torch.Tensor, weight: torch.Tensor,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's Algorithm 1 exactly as printed, for the errata only.

    σ ← ‖∇W‖₂ / e;  R ~ N(0, σ²)^e;  ∇W ← (<R, V>/<V, V>) V  with V = W.
    The result is parallel to W and its norm is of order ‖∇W‖ / e.
    """
    e = weight.numel()
    sigma = grad.detach().norm() / e
    r = torch.randn(weight.shape, generator=generator, dtype=torch.float64) * sigma.to(torch.float64)
    v = weight.detach().to(torch.float64)
    return ((r * v).sum() / (v * v).sum() * v).to(grad.dtype)


def _layer_weights(model_or_weights) -> list[torch.Tensor]:
    from torch import nn

    from elr.nets import scale_invariant_layers

    if isinstance(model_or_weights, nn.Module):
        return [m.weight for _, m in scale_invariant_layers(model_or_weights)]
    return list(model_or_weights)


@torch.no_grad()
def channel_max_elrs(weights) -> np.ndarray:
    """Per layer, the largest ELR ‖∇W_c‖/‖W_c‖ over output channels c (dimension 0) of the current gradients:
    the quantity the ELR monitor records as ``elr_grad_max``, read before a transform changes the gradients.
    A layer without a gradient counts as ELR 0."""
    out = []
    for w in _layer_weights(weights):
        w2 = _rows(w.detach(), per_channel=True).norm(dim=1)
        g2 = _rows(w.grad, per_channel=True).norm(dim=1) if w.grad is not None else torch.zeros_like(w2)
        out.append(float((g2 / w2.clamp_min(torch.finfo(w2.dtype).tiny)).max()))
    return np.array(out)


class RandomWalk:
    """Replace every scale-invariant layer's gradient by :func:`random_walk_direction` (Def. 4.2).

    Call between ``backward()`` and ``optimizer.step()``. Seeded by its own
    generator, so a run with the random walk is reproducible.
    """

    def __init__(self, model_or_weights, seed: int = 0, per_channel: bool = True):
        self.weights = _layer_weights(model_or_weights)
        self.generator = torch.Generator().manual_seed(seed)
        self.per_channel = per_channel

    @torch.no_grad()
    def __call__(self) -> None:
        for w in self.weights:
            if w.grad is not None:
                w.grad.copy_(random_walk_direction(w.grad, w, self.generator, self.per_channel))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class ConstrainELR:
    """The paper's constrained-ELR training, Eq. (33): ∇W ← ∇W · E_goal / (E + ε), E = ‖∇W‖/‖W‖.

    Before each step every layer's weight (and, consistently, its gradient) is
    divided by the largest layer weight norm, so the norms that SGD keeps
    growing never overflow; a scale-invariant network computes the same
    function. After the call every layer's ELR is E_goal·E/(E+ε).
    """

    def __init__(self, model_or_weights, elr_goal: float, eps: float = 1e-5):
        if not elr_goal > 0:
            raise ValueError(f"elr_goal must be > 0, got {elr_goal}")
        self.weights = _layer_weights(model_or_weights)
        self.elr_goal, self.eps = elr_goal, eps

    @torch.no_grad()
    def __call__(self) -> None:
        grads = [w.grad for w in self.weights]
        w_norms = torch.stack([w.detach().norm() for w in self.weights])
        g_norms = torch.stack([g.norm() if g is not None else w_norms.new_zeros(()) for g in grads])
        elr = g_norms / w_norms.clamp_min(torch.finfo(w_norms.dtype).tiny)
        scale = self.elr_goal / (elr + self.eps)
        top = w_norms.max().clamp_min(torch.finfo(w_norms.dtype).tiny)
        for w, g, s in zip(self.weights, grads, scale):
            w.div_(top)
            if g is not None:
                g.mul_(s / top)  # the gradient follows its weight's rescaling: ELR = E_goal·E/(E+ε)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

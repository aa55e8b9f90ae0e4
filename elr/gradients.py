"""Gradient transforms applied between ``backward()`` and ``optimizer.step()``.

The random walk (the paper's Definition 4.2 and Algorithm 1) replaces a
gradient by a random direction orthogonal to the weight, with the norm of the
real gradient. The paper's printed Algorithm 1 does something else (it keeps
the component *parallel* to W and scales the noise by 1/e instead of
1/√e); :func:`random_walk_as_printed` reproduces it so the book's errata
chapter can measure the difference.
"""
from __future__ import annotations

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
    r = torch.randn(w.shape, generator=generator, dtype=torch.float64, device="cpu").to(w.device)
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

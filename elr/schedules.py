"""Learning-rate schedules for torch optimisers, on top of the pure functions of :mod:`elr.dynamics`.

A simulated run (``elr.dynamics.simulate``) and a real run use the same
function of the step, so the two can be compared directly.

``SubcriticalWarmup`` needs the gradients of the current step, so it is
stepped *between* ``backward()`` and ``optimizer.step()``::

    loss.backward()
    warmup.step()        # λ = κ_hh' from the live ELRs, or the following schedule once warm
    optimizer.step()

``PureSchedule`` sets the learning rate of the coming step and follows the
same convention: step it before ``optimizer.step()``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from elr import dynamics


def layer_elrs(weights: Sequence[torch.Tensor], reduce: str = "max") -> np.ndarray:
    """Per-layer gradient ELRs from the live gradients: one batched computation, one transfer.

    ``reduce="max"``: the maximum over output channels (the paper's choice);
    ``"layer"``: ‖∇W‖_F / ‖W‖_F over the whole layer. Zero-norm weights give NaN.
    """
    with torch.no_grad():
        rows = []
        for w in weights:
            g = w.grad if w.grad is not None else torch.zeros_like(w)
            k = w.shape[0] if (w.dim() > 1 and reduce == "max") else 1
            wn = w.detach().reshape(k, -1).double().norm(dim=1)
            gn = g.reshape(k, -1).double().norm(dim=1)
            rows.append(torch.where(wn > 0, gn / wn.clamp_min(1e-38), torch.full_like(wn, float("nan"))).max())
        return torch.stack(rows).cpu().numpy().astype(float)


class _Absolute(LRScheduler):
    """A scheduler that sets an absolute rate from the step index it is about to run."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self._step_index = 0
        super().__init__(optimizer, last_epoch=-1)

    def _initial_step(self) -> None:  # no step at construction: the first step() sets the rate of step 0
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def _set(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = float(lr)
        self._last_lr = [float(lr)] * len(self.optimizer.param_groups)
        self.last_epoch = self._step_index
        self._step_index += 1

    def state_dict(self) -> dict:
        return {"step_index": self._step_index, "last_lr": self._last_lr}

    def load_state_dict(self, state: dict) -> None:
        self._step_index, self._last_lr = state["step_index"], state["last_lr"]


class PureSchedule(_Absolute):
    """λ(step) = fn(step), with ``fn`` any pure schedule of :mod:`elr.dynamics` (partially applied)."""

    def __init__(self, optimizer: torch.optim.Optimizer, fn: Callable[[int], float]):
        self.fn = fn
        super().__init__(optimizer)

    def step(self) -> float:
        lr = float(self.fn(self._step_index))
        self._set(lr)
        return lr


class SubcriticalWarmup(_Absolute):
    """The paper's hyper-parameter-free warm-up (Cor. 3.10), then a following schedule.

    At each warm-up step λ = κ_hh' = 1/√(E_h E_h'), computed from the live
    per-layer ELRs of ``weights`` (max over channels), h' being the highest ELR
    strictly below the top one. The warm-up ends for good, and ``then`` takes
    over, at the first step where the spread S_rel is at most ``tol``, or
    κ_hh' reaches ``then(step)`` (the following schedule is then itself
    subcritical), or ``max_steps`` warm-up steps have run.

    Measured ELRs are never exactly equal: ELRs within a relative
    ``merge_rtol`` of the top one count as merged with it when choosing h'.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, weights: Sequence[torch.Tensor],
                 then: Callable[[int], float], tol: float = 0.05, max_steps: int = 1000,
                 elr_fn: Callable[[], np.ndarray] | None = None, merge_rtol: float = 1e-3):
        self.weights, self.then, self.tol, self.max_steps = list(weights), then, tol, max_steps
        self.merge_rtol = merge_rtol
        self.elr_fn = elr_fn or (lambda: layer_elrs(self.weights))
        self.warm = True
        self.warmup_steps = 0
        super().__init__(optimizer)

    def step(self) -> float:
        i = self._step_index
        target = float(self.then(i))
        if self.warm:
            e = self.elr_fn()
            if not np.all(np.isfinite(e)) or np.any(e <= 0):
                self.warm = False  # no ELR to read (a zero-norm weight or no gradient): hand over
            else:
                kappa = float(dynamics.subcritical_lr(e, rtol=self.merge_rtol))
                if dynamics.relative_spread(e) <= self.tol or kappa >= target or self.warmup_steps >= self.max_steps:
                    self.warm = False
                else:
                    self.warmup_steps += 1
                    self._set(kappa)
                    return kappa
        self._set(target)
        return target

    def state_dict(self) -> dict:
        return {**super().state_dict(), "warm": self.warm, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.warm, self.warmup_steps = state["warm"], state["warmup_steps"]

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

Both set absolute rates: the schedule gives the rate of the param group
with the largest initial rate, and every other group keeps its initial
ratio to it. They replace a torch scheduler rather than compose with one.
To keep your own scheduler (cosine, ``SequentialLR``, ``ChainedScheduler``,
...) and add the subcritical warm-up on top, use
``SubcriticalWarmupFactor``: a factor ω ≤ 1 applied around
``optimizer.step()``, as pytorch_warmup does for its warm-ups::

    loss.backward()
    with warmup.dampening():   # every group's rate × ω for this step only
        optimizer.step()
    scheduler.step()           # your scheduler never sees ω
"""
from __future__ import annotations

from contextlib import contextmanager

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from elr import dynamics


def torch_schedule(make: Callable[[torch.optim.Optimizer], Any], n_steps: int, lr: float, key: str = "lr",
                   momentum: float = 0.0) -> np.ndarray:
    """What a torch scheduler sets, step by step: ``key`` ("lr" or "momentum") of the param group at each of
    ``n_steps`` steps, for SGD on one parameter built with ``lr`` and ``momentum`` and the scheduler
    ``make(optimizer)``. For comparing elr's schedules (and the paper's settings) with torch's own."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr, momentum=momentum)
    sched = make(opt)
    seen = []
    for _ in range(n_steps):
        seen.append(opt.param_groups[0][key])
        opt.step()
        sched.step()
    return np.array(seen)


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


def _group_ratios(optimizer: torch.optim.Optimizer) -> list[float]:
    lrs = [float(g["lr"]) for g in optimizer.param_groups]
    top = max(lrs)
    if not top > 0:
        raise ValueError(f"the optimizer's learning rates must include one > 0 to fix the groups' ratios, got {lrs}")
    return [v / top for v in lrs]


class _Absolute(LRScheduler):
    """A scheduler that sets an absolute rate from the step index it is about to run."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self._step_index = 0
        self._ratios = _group_ratios(optimizer)
        super().__init__(optimizer, last_epoch=-1)

    def _initial_step(self) -> None:  # no step at construction: the first step() sets the rate of step 0
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def _set(self, lr: float) -> None:
        """λ for the group with the largest initial rate; the others keep their initial ratio to it."""
        for g, r in zip(self.optimizer.param_groups, self._ratios):
            g["lr"] = float(lr) * r
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
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


#: Optimizers whose step is normalised per coordinate: the subcritical warm-up is derived for SGD, not for them.
ADAPTIVE = tuple(getattr(torch.optim, n) for n in ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad",
                                                  "Adadelta", "RMSprop", "SparseAdam", "Adafactor")
                 if hasattr(torch.optim, n))


def _adaptive(optimizer: torch.optim.Optimizer) -> str | None:
    """The name of an adaptive optimizer (by type, or by a param group with Adam's ``betas``), else None."""
    if isinstance(optimizer, ADAPTIVE) or any("betas" in g for g in optimizer.param_groups):
        return type(optimizer).__name__
    return None


class SubcriticalWarmupFactor:
    """The subcritical warm-up (Cor. 3.10) as a factor on top of any learning-rate scheduler.

    While warm, :meth:`dampening` scales every param group's rate by the same
    ω = κ_hh' / λ_max ≤ 1 for one optimizer step, where λ_max is the largest
    rate the groups have at that moment (set by your scheduler, or constant)
    and κ_hh' = 1/√(E_h E_h') comes from the live per-layer ELRs. The fastest
    group then runs at κ_hh', every group keeps its ratio to the others, and
    no group runs above κ_hh'. On leaving the context the rates are put back,
    so the scheduler keeps its own state: it composes with chainable and
    closed-form schedulers alike, and ``scheduler.get_last_lr()`` reports the
    undamped rates (the applied ones are :attr:`last_lrs`).

    Why a common factor: the paper's model has one λ for every layer. With
    groups at different rates, choosing ω for the fastest group is the
    conservative reading: each layer's rate is at most κ_hh'.

    The warm-up ends for good (ω = 1 from then on) at the first step where the
    spread S_rel is at most ``tol``, or κ_hh' ≥ λ_max (the schedule is itself
    subcritical; so it never starts when it already is), or ``max_steps``
    warm-up steps have run, or an ELR cannot be read (a zero weight or no
    gradient). ``state_dict``/``load_state_dict`` checkpoint it.

    Which weights: ``model=`` takes the same layers as :class:`elr.measure.ELRMonitor` (by default the weights
    the audit finds scale-invariant, audited from ``example_inputs`` or at the model's first forward pass;
    ``layers="heuristic"`` or a list of weight names on request); ``weights=`` takes the tensors themselves.

    SGD only: κ_hh' is the critical rate of plain SGD, whose step on a scale-invariant weight is λ‖∇W‖ (the
    paper's Cor. 3.10). An adaptive optimizer (Adam, AdamW, RMSprop, Adagrad, …; any param group with
    ``betas``) normalises its step per coordinate, so the same ω has no derived meaning there (in practice
    κ_hh' far exceeds Adam's rates and ω = 1 at once): it is refused unless ``adaptive_ok=True``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, weights: Sequence[torch.Tensor] | None = None,
                 tol: float = 0.05, max_steps: int = 1000, elr_fn: Callable[[], np.ndarray] | None = None,
                 merge_rtol: float = 1e-3, *, model: torch.nn.Module | None = None, layers: Any = None,
                 example_inputs: tuple | None = None, adaptive_ok: bool = False):
        if not tol >= 0:
            raise ValueError(f"tol (the spread S_rel at which the warm-up ends) must be >= 0, got {tol}")
        if int(max_steps) != max_steps or max_steps < 0:
            raise ValueError(f"max_steps must be a non-negative integer, got {max_steps}")
        adaptive = _adaptive(optimizer)
        if adaptive and not adaptive_ok:
            raise ValueError(f"SubcriticalWarmupFactor is derived for SGD (Cor. 3.10: κ_hh' is the critical rate "
                             f"of SGD's step λ‖∇W‖), and {adaptive} normalises its step per coordinate, so the "
                             f"factor has no derived meaning there (and would stay ω = 1). Use torch.optim.SGD, "
                             f"or pass adaptive_ok=True to apply it knowingly")
        if weights is not None and model is not None:
            raise ValueError("pass either weights= (the tensors) or model= (with layers=), not both")
        self._monitor = None
        if weights is None and model is not None:
            from elr.measure import ELRMonitor  # the monitor's notion of which layers, and its lazy audit
            self._monitor = ELRMonitor(model, layers=layers, example_inputs=example_inputs)
            weights = []
        elif weights is None and elr_fn is None:
            raise ValueError("pass model= (the weights the audit finds scale-invariant) or weights=")
        weights = list(weights)
        if not weights and elr_fn is None and self._monitor is None:
            raise ValueError("weights is empty: pass the scale-invariant weights (elr.nets.scale_invariant_layers) "
                             "or an elr_fn")
        self.optimizer, self._weights, self.tol, self.max_steps = optimizer, weights, tol, int(max_steps)
        self.merge_rtol = merge_rtol
        self.elr_fn = elr_fn or (lambda: layer_elrs(self.weights))
        self.warm = True
        self.warmup_steps = 0
        self.last_factor = 1.0
        self.last_lrs = [float(g["lr"]) for g in optimizer.param_groups]

    @property
    def weights(self) -> list[torch.Tensor]:
        return self._monitor.weights if self._monitor is not None else self._weights

    def factor(self) -> float:
        """ω for the coming step, from the live gradients (call after ``backward()``); updates the state."""
        if not self.warm:
            return 1.0
        lr_max = max(float(g["lr"]) for g in self.optimizer.param_groups)
        e = self.elr_fn()
        if lr_max <= 0 or not np.all(np.isfinite(e)) or np.any(e <= 0):
            self.warm = False  # nothing to warm up, or no ELR to read: hand over
            return 1.0
        kappa = float(dynamics.subcritical_lr(e, rtol=self.merge_rtol))
        if dynamics.relative_spread(e) <= self.tol or kappa >= lr_max or self.warmup_steps >= self.max_steps:
            self.warm = False
            return 1.0
        self.warmup_steps += 1
        return kappa / lr_max

    def _dampen(self) -> float:
        omega = self.factor()
        for g, lr in zip(self.optimizer.param_groups, self._undamped):
            g["lr"] = lr * omega
        self.last_factor = omega
        self.last_lrs = [lr * omega for lr in self._undamped]
        return omega

    @contextmanager
    def dampening(self, closure: Callable[[], Any] | None = None):
        """Scale every group's rate by ω for the optimizer step inside the block, then restore it.

        Without ``closure`` (gradients already computed) it yields ω. With the closure a trainer passes to
        ``optimizer.step`` (Lightning's ``optimizer_closure``), the gradients do not exist yet: it yields a
        closure that runs the original one, then sets ω from the fresh gradients::

            def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):   # LightningModule
                with self.warmup.dampening(optimizer_closure) as closure:
                    optimizer.step(closure=closure)
        """
        self._undamped = [float(g["lr"]) for g in self.optimizer.param_groups]
        try:
            if closure is None:
                yield self._dampen()
            else:
                def wrapped():
                    loss = closure()
                    self._dampen()
                    return loss
                yield wrapped
        finally:
            for g, lr in zip(self.optimizer.param_groups, self._undamped):
                g["lr"] = lr

    def state_dict(self) -> dict:
        return {"warm": self.warm, "warmup_steps": self.warmup_steps, "last_factor": self.last_factor}

    def load_state_dict(self, state: dict) -> None:
        self.warm, self.warmup_steps = bool(state["warm"]), int(state["warmup_steps"])
        self.last_factor = float(state.get("last_factor", 1.0))

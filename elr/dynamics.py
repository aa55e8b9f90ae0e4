"""Weight dynamics of normalised layers: the paper's discrete and continuous models.

Pure NumPy. Every function takes arrays whose **last axis is the layer** and
whose leading axes are independent runs (learning rates, seeds, ...), and
returns arrays of the matching shape. Torch appears nowhere in this module;
`elr.schedules` (torch) calls these functions with live ELRs.

Notation (Mehmeti-Göpel & Wand, ICML 2024, Section 3):

=============  ==========================================================
``sigma2``     squared weight norm σ² = E‖W‖²_F of a layer
``c``          base gradient c = E(‖W‖·‖∇W‖), constant in the model (Eq. 4)
``lr``         learning rate λ
``elr``        effective learning rate E = c / σ² (Def. 3.2, Eq. 10)
``kappa``      flipping ratio κ_jk = 1/√(E_j E_k) (Def. 3.8, Eq. 24)
=============  ==========================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np

#: Per-layer growth of BN-ReLU gradient norms at initialisation, Eq. (6):
#: α = √(π/(π−1)) ≈ 1.2112 (Yang et al., 2019).
ALPHA = math.sqrt(math.pi / (math.pi - 1.0))

#: Expected squared norm of one output unit's weights under He initialisation
#: (variance 2/fan_in, fan_in entries). The paper's k0 = SIGMA2_HE**2 = 4.
SIGMA2_HE = 2.0

ArrayLike = Union[float, Sequence[float], np.ndarray]


# ---------------------------------------------------------------- the models


def discrete_step(sigma2: ArrayLike, c: ArrayLike, lr: ArrayLike) -> np.ndarray:
    """Discrete model, Eq. (5): sigma2[i+1] = sigma2[i] + lr**2 c**2 / sigma2[i].

    ``lr`` broadcasts against the run axes, i.e. it has one value per run
    (shape ``sigma2.shape[:-1]``) or is a scalar.
    """
    sigma2 = np.asarray(sigma2, dtype=float)
    c = np.asarray(c, dtype=float)
    lr = _per_run(lr)
    return sigma2 + lr**2 * c**2 / sigma2


def elr_step(elr: ArrayLike, lr: ArrayLike) -> np.ndarray:
    """One step of the discrete model written in ELRs: E[i+1] = E[i] / (1 + lr**2 E[i]**2).

    Follows from Eq. (5) and E = c/σ² (derived in ``elr.symbolic``): a layer's
    next ELR depends only on its own ELR and λ, not on c or σ² separately.
    """
    elr = np.asarray(elr, dtype=float)
    lr = _per_run(lr)
    return elr / (1.0 + lr**2 * elr**2)


def _per_run(lr: ArrayLike) -> np.ndarray:
    """A scalar rate as is; one rate per run gets a trailing layer axis to broadcast against (*runs, L)."""
    lr = np.asarray(lr, dtype=float)
    return lr[..., None] if lr.ndim else lr


def continuous_sigma2(t: ArrayLike, c: ArrayLike, sigma2_0: ArrayLike = SIGMA2_HE) -> np.ndarray:
    """Continuous model (gradient flow), Eqs. (12)/(15): sigma2(t) = sqrt(2 c**2 t + k0).

    ``k0 = sigma2_0**2``; the paper's k0 = 4 is ``sigma2_0 = 2`` (He
    initialisation, per output unit). Time is t = i·λ² after i steps at
    constant λ. ``t`` broadcasts against the layer axis (pass ``t[..., None]``
    for a time series).
    """
    t = np.asarray(t, dtype=float)
    c = np.asarray(c, dtype=float)
    sigma2_0 = np.asarray(sigma2_0, dtype=float)
    return np.sqrt(2.0 * c**2 * t + sigma2_0**2)


# ------------------------------------------------- ELRs, ratios and spreads


def elr(sigma2: ArrayLike, c: ArrayLike) -> np.ndarray:
    """Effective learning rate, Def. 3.2, Eq. (10): E = c / sigma2."""
    return np.asarray(c, dtype=float) / np.asarray(sigma2, dtype=float)


def elr_ratios(elr: ArrayLike) -> np.ndarray:
    """All pairwise ELR ratios, Def. 3.3, Eq. (11): R[..., j, k] = E_j / E_k."""
    e = np.asarray(elr, dtype=float)
    return e[..., :, None] / e[..., None, :]


def flipping_ratio(elr_j: ArrayLike, elr_k: ArrayLike) -> np.ndarray:
    """Flipping ratio, Def. 3.8, Eq. (24): kappa_jk = 1 / sqrt(E_j E_k).

    By Prop. 3.9 the ratio E_j/E_k flips (crosses 1) in the next step iff
    λ > κ_jk, and becomes exactly 1 iff λ = κ_jk.
    """
    return 1.0 / np.sqrt(np.asarray(elr_j, dtype=float) * np.asarray(elr_k, dtype=float))


def critical_lr(elr: ArrayLike) -> np.ndarray:
    """Critical learning rate κ_ℓh = 1/sqrt(E_min E_max) (Section 3.7, after Prop. 3.9).

    Above it the layer with the highest ELR drops below the one with the
    lowest in a single step.
    """
    e = np.asarray(elr, dtype=float)
    return flipping_ratio(e.min(axis=-1), e.max(axis=-1))


def subcritical_lr(elr: ArrayLike, rtol: float = 1e-9, distinct: bool = True) -> np.ndarray:
    """Subcritical learning rate κ_hh' of Cor. 3.10: 1/sqrt(E_h E_h').

    h is the layer with the highest ELR and h' the layer with the highest ELR
    *strictly below* it: layers whose ELRs agree within ``rtol`` form one
    group, since equal ELRs stay equal forever (see :func:`elr_step`). Taking
    h' inside h's own group would give λ = 1/E_h, which merges nothing. When
    all layers already agree, returns 1/E_h.

    ``distinct=False`` is the literal reading of the corollary (h' = the
    second-largest entry, ties included), kept for the errata chapter: after
    the first merge it stalls.
    """
    e = np.sort(np.asarray(elr, dtype=float), axis=-1)[..., ::-1]
    top = e[..., 0]
    if not distinct:
        return flipping_ratio(top, e[..., min(1, e.shape[-1] - 1)])
    below = e < top[..., None] * (1.0 - rtol)
    has_below = below.any(axis=-1)
    second = np.take_along_axis(e, np.argmax(below, axis=-1)[..., None], axis=-1)[..., 0]
    second = np.where(has_below, second, top)
    return flipping_ratio(top, second)


def relative_spread(elr: ArrayLike) -> np.ndarray:
    """Relative logarithmic ELR spread, Def. 4.1, Eq. (32): S_rel = std(ln E) across layers.

    Population standard deviation (ddof = 0) over the last axis.
    """
    return np.std(np.log(np.asarray(elr, dtype=float)), axis=-1)


# -------------------------------------------- base gradients at initialisation


def base_gradients_feedforward(n_layers: int, alpha: float = ALPHA) -> np.ndarray:
    """Initial base gradients of a feed-forward BN-ReLU net, Eq. (6): c_i ∝ alpha**(L-i).

    Layers are numbered i = 1..L from the input; the top layer has c_L = 1.
    """
    _check_layers(n_layers)
    i = np.arange(1, n_layers + 1)
    return alpha ** (n_layers - i).astype(float)


def base_gradients_resnet(n_layers: int, relus_per_block: int = 2, alpha: float = ALPHA) -> np.ndarray:
    """Initial base gradients of a ResNet, Eq. (7): c_i ∝ 1 + floor((L-i)/s) alpha**s.

    ``relus_per_block`` is s, the number of ReLUs in a residual block (2 for a
    basic block). The top layer has c_L = 1.
    """
    _check_layers(n_layers)
    if relus_per_block < 1:
        raise ValueError(f"relus_per_block must be >= 1, got {relus_per_block}")
    i = np.arange(1, n_layers + 1)
    return 1.0 + np.floor((n_layers - i) / relus_per_block) * alpha**relus_per_block


def cifar_resnet_layers(depth: int) -> int:
    """Scale-invariant layers of a CIFAR ResNet v1 of depth 6n+2: every convolution (depth − 1).

    The final linear layer feeds no normalisation and is excluded, as in the paper (Section 4.1.1).
    """
    if int(depth) != depth or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n+2 >= 8 (20, 56, 110, ...), got {depth!r}")
    return int(depth) - 1


def base_gradients_cifar_resnet(depth: int, shortcut: bool = True) -> np.ndarray:
    """Initial base gradients of a CIFAR ResNet v1: Eq. (7) with s = 2 with shortcuts, Eq. (6) without."""
    n_layers = cifar_resnet_layers(depth)
    return base_gradients_resnet(n_layers, 2) if shortcut else base_gradients_feedforward(n_layers)


def _check_layers(n_layers: int) -> None:
    if int(n_layers) != n_layers or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")


# ------------------------------------------------------------------ schedules
# Pure functions of the step (an int or an integer array), nanoGPT-style.


def constant(step: ArrayLike, lr: float) -> np.ndarray:
    """λ(i) = lr."""
    return np.full(np.shape(step), float(lr))


def linear_warmup(step: ArrayLike, lr: float, warmup_steps: int) -> np.ndarray:
    """Linear warm-up from lr/warmup_steps to lr over ``warmup_steps`` steps, then lr."""
    step = np.asarray(step, dtype=float)
    return lr * np.minimum(1.0, (step + 1.0) / max(int(warmup_steps), 1))


def cosine(step: ArrayLike, lr: float, total_steps: int, lr_min: float = 0.0) -> np.ndarray:
    """Cosine annealing from lr (step 0) to lr_min (step total_steps), constant after."""
    s = np.clip(np.asarray(step, dtype=float) / max(int(total_steps), 1), 0.0, 1.0)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + np.cos(np.pi * s))


def one_cycle(step: ArrayLike, max_lr: float, total_steps: int, pct_start: float = 0.3,
              div_factor: float = 25.0, final_div_factor: float = 1e4) -> np.ndarray:
    """OneCycle (Smith & Topin, 2017) with cosine annealing, as ``torch.optim.lr_scheduler.OneCycleLR``.

    Rises from max_lr/div_factor to max_lr over the first ``pct_start`` of
    ``total_steps``, then falls to max_lr/(div_factor·final_div_factor).
    """
    step = np.asarray(step, dtype=float)
    initial = max_lr / div_factor
    final = initial / final_div_factor
    up_end = float(pct_start * total_steps) - 1.0
    down_end = float(total_steps) - 1.0

    def anneal(start, end, frac):
        return end + (start - end) / 2.0 * (1.0 + np.cos(np.pi * np.clip(frac, 0.0, 1.0)))

    up = anneal(initial, max_lr, step / max(up_end, 1e-12))
    down = anneal(max_lr, final, (step - up_end) / max(down_end - up_end, 1e-12))
    return np.where(step <= up_end, up, down)


def exponential(step: ArrayLike, lr: float, gamma: float) -> np.ndarray:
    """λ(i) = lr · gamma**i."""
    return lr * gamma ** np.asarray(step, dtype=float)


def multistep(step: ArrayLike, lr: float, milestones: Sequence[int], gamma: float = 0.1) -> np.ndarray:
    """λ(i) = lr · gamma**(number of milestones <= i) (the paper's Table 2 uses 0.1 at epochs 100, 150)."""
    passed = np.searchsorted(np.sort(np.asarray(milestones)), np.asarray(step), side="right")
    return lr * gamma**passed


def subcritical_warmup(step: ArrayLike, elr: ArrayLike, target: Callable[[np.ndarray], np.ndarray],
                       tol: float = 1e-6, max_steps: int | None = None) -> np.ndarray:
    """Subcritical warm-up (Cor. 3.10), then the ``target`` schedule.

    While warming up, λ = κ_hh'(E) (:func:`subcritical_lr`) from the current
    ELRs. The warm-up ends, per run, as soon as any of these holds, and the
    target schedule takes over:

    * the spread is gone: S_rel(E) <= ``tol``;
    * κ_hh' >= target(step): the target itself is then subcritical, so no
      ratio can flip under it;
    * ``step >= max_steps`` (no cap when None).

    Stateless: the decision is re-made from the ELRs at every step. In the
    model, equal ELRs stay equal under any λ, so a finished warm-up never
    restarts.
    """
    step = np.asarray(step)
    e = np.asarray(elr, dtype=float)
    kappa = subcritical_lr(e)
    lr_target = np.broadcast_to(np.asarray(target(step), dtype=float), kappa.shape)
    done = (relative_spread(e) <= tol) | (kappa >= lr_target)
    if max_steps is not None:
        done = done | (step >= max_steps)
    return np.where(done, lr_target, kappa)


def subcritical_policy(target: Callable[[np.ndarray], np.ndarray] | None = None, tol: float = 1e-6,
                       max_steps: int | None = None) -> Callable[[int, np.ndarray], np.ndarray]:
    """A policy ``lr(step, elr)`` for :func:`simulate`: the subcritical warm-up, then ``target``.

    With ``target=None`` the warm-up never hands over: λ = κ_hh' at every step (Cor. 3.10 as stated).
    """
    if target is None:
        return lambda step, elr: subcritical_lr(elr)
    return lambda step, elr: subcritical_warmup(step, elr, target, tol=tol, max_steps=max_steps)


# ---------------------------------------------------------------- simulation

LrPolicy = Union[ArrayLike, Callable[[int, np.ndarray], ArrayLike]]


class _ELRView:
    """ELRs and their spread from ``sigma2`` and ``c`` (shared by the trajectory classes)."""

    sigma2: np.ndarray
    c: np.ndarray

    @property
    def elr(self) -> np.ndarray:
        return elr(self.sigma2, self.c)

    @property
    def spread(self) -> np.ndarray:
        """S_rel over time, shape (n_steps + 1, *runs)."""
        return relative_spread(self.elr)


@dataclass(frozen=True)
class Trajectory(_ELRView):
    """A simulated run of the discrete model.

    ``sigma2`` and ``elr`` have shape (n_steps + 1, *runs, L): entry i is the
    state before step i. ``lr`` has shape (n_steps, *runs): the rate used in
    step i.
    """

    sigma2: np.ndarray
    c: np.ndarray
    lr: np.ndarray

    @property
    def critical_lr(self) -> np.ndarray:
        """κ_ℓh over time, shape (n_steps + 1, *runs)."""
        return critical_lr(self.elr)

    @property
    def extreme_flips(self) -> np.ndarray:
        """Per step: did the layer with the highest ELR end below the one with the lowest? Shape (n_steps, *runs)."""
        e = self.elr
        top = np.take_along_axis(e[1:], np.argmax(e[:-1], axis=-1)[..., None], -1)[..., 0]
        bottom = np.take_along_axis(e[1:], np.argmin(e[:-1], axis=-1)[..., None], -1)[..., 0]
        return top < bottom

    @property
    def time(self) -> np.ndarray:
        """Gradient-flow time t_i = Σ_{k<i} λ_k², shape (n_steps + 1, *runs)."""
        t = np.cumsum(self.lr**2, axis=0)
        return np.concatenate([np.zeros((1,) + t.shape[1:]), t], axis=0)


def reversal_steps(elr: ArrayLike, rtol: float = 1e-9) -> np.ndarray:
    """Steps i at which some pair of layers with distinct ELRs (to ``rtol``) swaps order by step i + 1.

    ``elr`` has shape (n_steps + 1, L), as :attr:`Trajectory.elr` of one run. Ties (groups the subcritical
    schedule merged) differ only by rounding and are not an order.
    """
    e = np.asarray(elr, dtype=float)
    out = []
    for i in range(e.shape[0] - 1):
        order = np.argsort(e[i], kind="stable")
        before, after = e[i][order], e[i + 1][order]
        if np.any((np.diff(before) > rtol * before[1:]) & (np.diff(after) < -rtol * after[1:])):
            out.append(i)
    return np.array(out, dtype=int)


def simulate(sigma2_0: ArrayLike, c: ArrayLike, lr: LrPolicy, n_steps: int | None = None) -> Trajectory:
    """Iterate the discrete model, Eq. (5), under any learning-rate schedule.

    Parameters
    ----------
    sigma2_0, c:
        Initial squared weight norms and base gradients, shape (*runs, L) or
        broadcastable to it. All must be > 0.
    lr:
        Either the rates themselves, shape (n_steps,) or (n_steps, *runs), or
        a policy ``lr(step, elr) -> rate per run`` called with the current
        ELRs (needed by the subcritical warm-up); then pass ``n_steps``.
    """
    sigma2_0, c = np.broadcast_arrays(np.asarray(sigma2_0, dtype=float), np.asarray(c, dtype=float))
    if np.any(~(sigma2_0 > 0)) or np.any(~(c > 0)):
        raise ValueError("sigma2_0 and c must be strictly positive (the model divides by both)")
    runs = sigma2_0.shape[:-1]
    if callable(lr):
        if n_steps is None or n_steps < 0:
            raise ValueError("n_steps (>= 0) is required when lr is a policy")
        policy = lr
    else:
        rates = np.asarray(lr, dtype=float)
        if rates.ndim == 0:
            raise ValueError("lr must be one rate per step (use np.full(n_steps, lr) for a constant)")
        if n_steps is not None and n_steps != rates.shape[0]:
            raise ValueError(f"n_steps={n_steps} disagrees with len(lr)={rates.shape[0]}")
        n_steps = rates.shape[0]
        if rates.ndim == 1:
            rates = rates.reshape((n_steps,) + (1,) * len(runs))
        try:
            rates = np.broadcast_to(rates, (n_steps,) + runs)
        except ValueError:
            raise ValueError(f"lr has shape {rates.shape}; expected (n_steps,) or (n_steps, *{runs})") from None
        policy = lambda i, _e: rates[i]  # noqa: E731
    sig = np.empty((n_steps + 1,) + sigma2_0.shape)
    used = np.empty((n_steps,) + runs)
    sig[0] = sigma2_0
    for i in range(n_steps):
        lam = np.broadcast_to(np.asarray(policy(i, c / sig[i]), dtype=float), runs)
        if np.any(lam < 0):
            raise ValueError(f"negative learning rate at step {i}")
        used[i] = lam
        sig[i + 1] = discrete_step(sig[i], c, lam)
    return Trajectory(sigma2=sig, c=np.broadcast_to(c, sigma2_0.shape), lr=used)


# ------------------------------------------------- the normalised sequence x_n


def normalised_sequence(x0: ArrayLike, n_steps: int) -> np.ndarray:
    """x_{n+1} = x_n + 1/x_n for n < n_steps, shape (n_steps + 1, *x0.shape).

    With x = σ²/(cλ) every layer of the discrete model at constant λ follows
    this one recurrence (proof of Thm. 3.6, Eq. 37).
    """
    x = np.empty((n_steps + 1,) + np.shape(x0))
    x[0] = x0
    for n in range(n_steps):
        x[n + 1] = x[n] + 1.0 / x[n]
    return x


def normalised_sequence_bounds(x0: ArrayLike, n: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on x_n² for x_{n+1} = x_n + 1/x_n, valid for n >= 1 (our replacement of Eq. 42).

    x0² + 2n <= x_n² <= x0² + 2n + 1/x0² + ½ ln n.

    Proof: squaring gives x_{k+1}² = x_k² + 2 + 1/x_k², so
    x_n² = x0² + 2n + Σ_{k<n} 1/x_k². Every term is positive (lower bound).
    For the upper bound, x_1² = x0² + 1/x0² + 2 >= 4 (a + 1/a >= 2), and each
    later step adds at least 2, so x_k² >= 2k + 2 for k >= 1. Then
    Σ_{k=1}^{n-1} 1/x_k² <= ½ Σ_{k=1}^{n-1} 1/(k+1) = ½ (H_n − 1) <= ½ ln n,
    since H_n <= 1 + ln n. (The cruder x_k² >= 2k gives ½ H_{n−1}, half a unit more.)
    """
    x0 = np.asarray(x0, dtype=float)
    n = np.asarray(n, dtype=float)
    lower = x0**2 + 2.0 * n
    upper = lower + 1.0 / x0**2 + 0.5 * np.log(np.maximum(n, 1.0))
    return lower, upper


# ------------------------------------- long horizons: x_n in closed form (Part III)

#: ``long_horizon`` iterates exactly until x² reaches this value, then uses the closed form.
LONG_HORIZON_Y_MIN = 64.0


def _invariant(y: np.ndarray) -> np.ndarray:
    """F(y) = y/2 − ¼ ln(2y + 1): F(y_{k+1}) = F(y_k) + 1 + δ(y_k) for y = x², 0 <= δ(y) <= 1/(2y²)."""
    return 0.5 * y - 0.25 * np.log1p(2.0 * y)


def _invariant_inverse(v: np.ndarray, y_min: float) -> np.ndarray:
    """Solve F(y) = v for y >= y_min by the fixed point y = 2v + ½ ln(2y + 1).

    The map contracts by 1/(2y + 1) <= 1/129 for y >= 64, so eight iterations
    reach the rounding floor; the cost does not depend on n.
    """
    y = np.maximum(2.0 * v, y_min)
    for _ in range(8):
        y = 2.0 * v + 0.5 * np.log1p(2.0 * y)
    return y


@dataclass(frozen=True)
class LongHorizon:
    """x_n of x_{k+1} = x_k + 1/x_k from the closed form, with guaranteed bounds."""

    x: np.ndarray        # the estimate
    lower: np.ndarray    # x_n >= lower
    upper: np.ndarray    # x_n <= upper
    exact_steps: np.ndarray  # steps iterated exactly before the closed form took over


def long_horizon(x0: ArrayLike, n: ArrayLike, y_min: float = LONG_HORIZON_Y_MIN) -> LongHorizon:
    """x_n for the normalised sequence of Thm. 3.6 in O(1) time, with a bounded error.

    With y = x², y_{k+1} = y_k + 2 + 1/y_k, and F(y) = y/2 − ¼ ln(2y+1) satisfies
    F(y_{k+1}) = F(y_k) + 1 + δ(y_k) with 0 <= δ(y) <= 1/(2y²) (checked in
    ``elr.symbolic``). Iterate exactly for the m <= y_min/2 steps it takes y to
    reach ``y_min``; then, since y_k >= y_m + 2(k − m),

        n − m <= F(y_n) − F(y_m) <= n − m + 1/(2 y_m²) + 1/(4 y_m),

    and inverting the increasing F gives the bounds. The estimate adds the
    integral of 1/(2y²) along y ≈ y_m + 2(k − m), i.e. ¼ (1/y_m − 1/(y_m + 2(n − m))).
    """
    x0, n = np.broadcast_arrays(np.asarray(x0, dtype=float), np.asarray(n))
    if np.any(~(x0 > 0)):
        raise ValueError("x0 must be > 0 (x = σ²/(cλ) of a layer)")
    if np.any(n < 0) or np.any(np.asarray(n) != np.floor(n)):
        raise ValueError("n must be a whole number of steps >= 0")
    if not y_min >= 4:
        raise ValueError(f"y_min must be >= 4, got {y_min}")
    n = n.astype(np.int64)
    y = x0**2
    m = np.zeros(n.shape, dtype=np.int64)
    for _ in range(int(math.ceil(y_min / 2.0)) + 1):  # y grows by more than 2 per step
        active = (y < y_min) & (m < n)
        if not active.any():
            break
        y = np.where(active, y + 2.0 + 1.0 / y, y)
        m += active
    done = m == n  # reached n while iterating exactly
    ym = np.where(done, y_min, y)  # placeholder where unused; keeps the formulas finite
    base = _invariant(ym) + (n - m)
    slack = 1.0 / (2.0 * ym**2) + 1.0 / (4.0 * ym)
    estimate = base + 0.25 * (1.0 / ym - 1.0 / (ym + 2.0 * (n - m)))
    y_lo = _invariant_inverse(base, y_min)
    y_hi = _invariant_inverse(base + slack, y_min)
    y_est = _invariant_inverse(estimate, y_min)
    pick = lambda closed: np.sqrt(np.where(done, y, closed))  # noqa: E731
    return LongHorizon(x=pick(y_est), lower=pick(y_lo), upper=pick(y_hi), exact_steps=m)


def elr_at_step(sigma2_0: ArrayLike, c: ArrayLike, lr: float, n: ArrayLike) -> LongHorizon:
    """ELRs after n steps at constant λ, in O(1): E_n = 1/(λ x_n) with x0 = σ0²/(cλ) (Thm. 3.6).

    Returns a :class:`LongHorizon` of ELRs; ``lower``/``upper`` bound E_n
    (``lower`` comes from the upper bound on x_n).
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    sigma2_0, c = np.broadcast_arrays(np.asarray(sigma2_0, dtype=float), np.asarray(c, dtype=float))
    if np.any(~(sigma2_0 > 0)) or np.any(~(c > 0)):
        raise ValueError("sigma2_0 and c must be strictly positive")
    h = long_horizon(sigma2_0 / (c * lr), n)
    return LongHorizon(x=1.0 / (lr * h.x), lower=1.0 / (lr * h.upper), upper=1.0 / (lr * h.lower),
                       exact_steps=h.exact_steps)


# ------------------------ the model as an ODE solver: explicit vs implicit (Part III)


def implicit_step(sigma2: ArrayLike, c: ArrayLike, lr: ArrayLike) -> np.ndarray:
    """Backward Euler on dσ²/dt = c²/σ² with step h = λ²: s' = s + λ²c²/s', i.e. s' = (s + √(s² + 4λ²c²))/2."""
    sigma2 = np.asarray(sigma2, dtype=float)
    c = np.asarray(c, dtype=float)
    lr = _per_run(lr)
    return 0.5 * (sigma2 + np.sqrt(sigma2**2 + 4.0 * lr**2 * c**2))


def flow_step(sigma2: ArrayLike, c: ArrayLike, lr: ArrayLike) -> np.ndarray:
    """The exact gradient flow over a time λ²: s' = √(s² + 2λ²c²) (Thm. 3.4)."""
    sigma2 = np.asarray(sigma2, dtype=float)
    c = np.asarray(c, dtype=float)
    lr = _per_run(lr)
    return np.sqrt(sigma2**2 + 2.0 * lr**2 * c**2)


SOLVERS = {"explicit": discrete_step, "implicit": implicit_step, "flow": flow_step}


def simulate_solver(sigma2_0: ArrayLike, c: ArrayLike, lr: ArrayLike, method: str = "explicit") -> Trajectory:
    """Like :func:`simulate` with rates per step, but with the step of ``method`` (see ``SOLVERS``)."""
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {sorted(SOLVERS)}, got {method!r}")
    if method == "explicit":
        return simulate(sigma2_0, c, lr)
    sigma2_0, c = np.broadcast_arrays(np.asarray(sigma2_0, dtype=float), np.asarray(c, dtype=float))
    rates = np.asarray(lr, dtype=float)
    if rates.ndim == 0:
        raise ValueError("lr must be one rate per step")
    runs = sigma2_0.shape[:-1]
    rates = np.broadcast_to(rates.reshape(rates.shape + (1,) * (1 + len(runs) - rates.ndim)), (len(rates),) + runs)
    sig = np.empty((len(rates) + 1,) + sigma2_0.shape)
    sig[0] = sigma2_0
    for i, lam in enumerate(rates):
        sig[i + 1] = SOLVERS[method](sig[i], c, lam)
    return Trajectory(sigma2=sig, c=c, lr=rates.copy())


# ------------------------------ weight decay and heavy-ball momentum (Part III)


@dataclass(frozen=True)
class SGDTrajectory(_ELRView):
    """The mean-field model of SGD with weight decay and momentum, see :func:`simulate_sgd`.

    ``sigma2`` (n_steps + 1, *runs, L) as in :class:`Trajectory`; ``angular``
    (n_steps, *runs, L) is ‖W_{i+1} − W_i‖/‖W_i‖, the angular update of step i.
    """

    sigma2: np.ndarray
    c: np.ndarray
    lr: float
    wd: float
    momentum: float
    angular: np.ndarray


def simulate_sgd(sigma2_0: ArrayLike, c: ArrayLike, lr: float, n_steps: int, wd: float = 0.0,
                 momentum: float = 0.0) -> SGDTrajectory:
    """SGD with weight decay ``wd`` and heavy-ball ``momentum`` on scale-invariant layers (torch's convention).

    torch.optim.SGD: v_i = μ v_{i−1} + g_i + wd W_i, W_{i+1} = W_i − λ v_i, v_{−1} = 0.
    The gradient g_i has norm c/σ_i (Eq. 4) and is orthogonal to W_i (Eq. 2);
    the model also takes it orthogonal to the buffer v_{i−1} (a fresh direction,
    as for independent mini-batch gradients in high dimension). Then three
    scalars per layer evolve exactly: σ² = ‖W‖², q = ‖v‖² and a = ⟨W_i, v_{i−1}⟩:

        p_i = ⟨W_i, v_i⟩ = μ a_i + wd σ_i²
        q_i = μ² q_{i−1} + c²/σ_i² + wd² σ_i² + 2 μ wd a_i
        σ_{i+1}² = σ_i² − 2λ p_i + λ² q_i,      a_{i+1} = p_i − λ q_i.

    With μ = wd = 0 this is Eq. (5); with μ = 0 it is
    σ_{i+1}² = (1 − λ wd)² σ_i² + λ² c²/σ_i².
    """
    sigma2_0, c = np.broadcast_arrays(np.asarray(sigma2_0, dtype=float), np.asarray(c, dtype=float))
    if np.any(~(sigma2_0 > 0)) or np.any(~(c > 0)):
        raise ValueError("sigma2_0 and c must be strictly positive")
    if not (lr > 0 and wd >= 0 and 0 <= momentum < 1 and n_steps >= 0):
        raise ValueError(f"need lr > 0, wd >= 0, 0 <= momentum < 1, n_steps >= 0; got lr={lr}, wd={wd}, "
                         f"momentum={momentum}, n_steps={n_steps}")
    sig = np.empty((n_steps + 1,) + sigma2_0.shape)
    ang = np.empty((n_steps,) + sigma2_0.shape)
    sig[0] = sigma2_0
    a = np.zeros(sigma2_0.shape)
    q = np.zeros(sigma2_0.shape)
    for i in range(n_steps):
        s = sig[i]
        p = momentum * a + wd * s
        q = momentum**2 * q + c**2 / s + wd**2 * s + 2.0 * momentum * wd * a
        sig[i + 1] = s - 2.0 * lr * p + lr**2 * q
        a = p - lr * q
        ang[i] = lr * np.sqrt(q / s)
    return SGDTrajectory(sigma2=sig, c=c, lr=lr, wd=wd, momentum=momentum, angular=ang)


@dataclass(frozen=True)
class Equilibrium:
    """The fixed point of :func:`simulate_sgd` (derived in ``elr.symbolic``)."""

    elr: float       # E* = ‖∇W‖/‖W‖, the same for every layer whatever its c
    angular: float   # ‖ΔW‖/‖W‖ per step = √(2 λ wd / (1 + μ)), exact
    tangential: float  # λ E*, the rotation due to the gradient alone

    def sigma2(self, c: ArrayLike) -> np.ndarray:
        """Equilibrium squared norms σ*² = c / E* of layers with base gradients c."""
        return np.asarray(c, dtype=float) / self.elr


def equilibrium(lr: float, wd: float, momentum: float = 0.0) -> Equilibrium:
    """E*² = (1 − μ) wd (2(1 + μ) − λ wd) / (λ (1 + μ)); angular update √(2λ wd/(1 + μ)).

    For μ = 0: E*² = wd (2 − λ wd)/λ, so λE* = √(λ wd (2 − λ wd)) → √(2 λ wd)
    as λ wd → 0, the intrinsic learning rate of Li, Lyu & Arora (2020).
    """
    if not (lr > 0 and wd > 0 and 0 <= momentum < 1):
        raise ValueError(f"an equilibrium needs lr > 0, wd > 0 and 0 <= momentum < 1; got lr={lr}, wd={wd}, "
                         f"momentum={momentum}")
    e2 = (1 - momentum) * wd * (2 * (1 + momentum) - lr * wd) / (lr * (1 + momentum))
    if not e2 > 0:
        raise ValueError(f"no equilibrium: lr*wd = {lr * wd:g} must be < 2(1 + momentum)")
    e = math.sqrt(e2)
    return Equilibrium(elr=e, angular=math.sqrt(2 * lr * wd / (1 + momentum)), tangential=lr * e)


def relaxation_steps(lr: ArrayLike, wd: ArrayLike) -> np.ndarray:
    """SGD + weight decay: e-folding time of the approach to equilibrium, −1/ln(2(1 − λwd)² − 1) ≈ 1/(4 λ wd).

    The derivative of s ↦ (1 − λwd)² s + λ²c²/s at its fixed point is 2(1 − λwd)² − 1,
    whatever c: deviations shrink by that factor per step (linearised).
    """
    iota = np.asarray(lr, dtype=float) * np.asarray(wd, dtype=float)
    rate = 2.0 * (1.0 - iota) ** 2 - 1.0
    if np.any(~((rate > 0) & (rate < 1))):
        raise ValueError("relaxation_steps needs 0 < lr*wd < 1 - 1/sqrt(2)")
    return -1.0 / np.log(rate)


def critical_lr_wd(elr: ArrayLike, wd: float) -> np.ndarray:
    """With weight decay, layers j, k flip iff λ > (1 − λwd) κ_jk, i.e. λ > κ/(1 + wd κ); here for κ_ℓh."""
    kappa = critical_lr(elr)
    return kappa / (1.0 + wd * kappa)

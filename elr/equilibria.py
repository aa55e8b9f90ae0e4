"""Measuring equilibria of weight norms and ELRs in recorded runs (Part III).

The model (``elr.dynamics.simulate_sgd``) says that with weight decay every
scale-invariant layer settles where ‖W‖ stops changing. These helpers turn
records of a real run into the quantities the model predicts: the plateau
of ‖W‖⁴ and how long the approach took, tail averages, and a log-log fit
with its standard error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from elr import dynamics


@dataclass(frozen=True)
class Approach:
    """Per layer: steps until ‖W‖⁴ closed all but ``fraction`` of its gap to the plateau."""

    steps: np.ndarray      # (L,) first logged step with |s − s*| <= fraction·|s0 − s*|
    plateau: np.ndarray    # (L,) s* = mean of ‖W‖⁴ over the tail
    drift: np.ndarray      # (L,) relative change of mean ‖W‖² between the two halves of the tail
    half_steps: int        # steps between the starts of the two halves of the tail (what ``drift`` spans)
    tail_start: int        # the first logged step of the tail (where ``plateau`` is averaged)


def approach(steps: np.ndarray, weight_norm: np.ndarray, tail: float = 0.2,
             fraction: float = float(np.exp(-2.0))) -> Approach:
    """How fast ‖W‖⁴ approaches its final plateau; ``weight_norm`` has shape (T, L), ``steps`` (T,).

    In the model with weight decay, |s_t − s*| shrinks by 2(1 − λwd)² − 1 per step near
    equilibrium and by (1 − λwd)⁴ far above it, so the e⁻² point comes after ≈ 1/(2λwd)
    steps either way (``2 * dynamics.relaxation_steps``).
    """
    if not 0 < tail < 1 or not 0 < fraction < 1:
        raise ValueError(f"tail and fraction must be in (0, 1), got {tail}, {fraction}")
    w = np.asarray(weight_norm, dtype=float)
    n_tail = max(int(round(tail * len(w))), 2)
    s = w**4
    plateau = s[-n_tail:].mean(axis=0)
    gap = np.abs(s - plateau) / np.abs(s[0] - plateau)
    within = gap <= fraction
    first = np.where(within.any(axis=0), np.argmax(within, axis=0), len(w) - 1)
    half = n_tail // 2
    drift = np.abs(np.mean(w[-half:] ** 2, axis=0) / np.mean(w[-n_tail:-half] ** 2, axis=0) - 1)
    steps = np.asarray(steps)
    return Approach(steps=steps[first], plateau=plateau, drift=drift, half_steps=int(steps[-1] - steps[-1 - half]),
                    tail_start=int(steps[-n_tail]))


def tail_rms(values: np.ndarray, tail: float = 0.2) -> np.ndarray:
    """Root mean square over the last ``tail`` fraction of rows, per column."""
    v = np.asarray(values, dtype=float)
    n_tail = max(int(round(tail * len(v))), 1)
    return np.sqrt(np.mean(v[-n_tail:] ** 2, axis=0))


@dataclass(frozen=True)
class LogLogFit:
    slope: float
    slope_se: float      # standard error of the slope (least squares)
    intercept: float     # log10 y at log10 x = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 10 ** (self.intercept + self.slope * np.log10(x))


def loglog_fit(x: np.ndarray, y: np.ndarray) -> LogLogFit:
    """Least-squares line through (log10 x, log10 y), with the slope's standard error."""
    lx, ly = np.log10(np.asarray(x, dtype=float)), np.log10(np.asarray(y, dtype=float))
    if len(lx) < 3:
        raise ValueError("a slope with an uncertainty needs at least 3 points")
    (slope, intercept), cov = np.polyfit(lx, ly, 1, cov="unscaled")
    resid = ly - (intercept + slope * lx)
    sigma2 = np.sum(resid**2) / (len(lx) - 2)
    return LogLogFit(float(slope), float(np.sqrt(cov[0, 0] * sigma2)), float(intercept))


def tail_drift(values: np.ndarray, tail: float = 0.2) -> np.ndarray:
    """Per column, |rms over the second half of the tail / rms over its first half − 1| (the tail: the last
    ``tail`` fraction of rows, at least 2)."""
    v = np.asarray(values, dtype=float)
    n_tail = max(int(round(tail * len(v))), 2)
    half = n_tail // 2
    return np.abs(np.sqrt(np.mean(v[-half:] ** 2, axis=0) / np.mean(v[-n_tail:-half] ** 2, axis=0)) - 1)


def tail_spread(elr: np.ndarray, tail: float = 0.2) -> float:
    """Mean relative spread S_rel of the layers' ELRs (rows: logged steps, columns: layers) over the last
    ``tail`` fraction of rows (at least one)."""
    e = np.asarray(elr, dtype=float)
    if e.ndim != 2 or not len(e) or not 0 < tail <= 1:
        raise ValueError(f"elr must be a non-empty (steps, layers) array and tail in (0, 1], got {e.shape}, {tail}")
    return float(dynamics.relative_spread(e[-max(int(len(e) * tail), 1):]).mean())


def steps_to_settle(lr: float, wd: float, s0: np.ndarray, plateau: np.ndarray) -> np.ndarray:
    """Steps the model needs to bring ‖W‖⁴ from ``s0`` to within e⁻² *of the plateau itself* (not of the gap):
    the gap |s − s*| shrinks by e every :func:`dynamics.relaxation_steps` steps, far above equilibrium (where
    weight decay alone acts, (1 − λwd)⁴ per step) and near it alike, so it takes τ·(ln(|s0 − s*|/s*) + 2)."""
    gap = np.abs(np.asarray(s0, float) - np.asarray(plateau, float)) / np.asarray(plateau, float)
    return float(dynamics.relaxation_steps(lr, wd)) * np.maximum(np.log(np.maximum(gap, 1e-300)) + 2.0, 0.0)


def summary(records, lr: float, wd: float, tail: float = 0.2) -> dict[str, Any]:
    """One run with weight decay against the model's equilibrium (chapter 14): per layer, the root mean squares
    over the last ``tail`` of the run of ‖ΔW‖/‖W‖ (``angular``) and of the ELR (``elr``) beside the predicted
    ``angular_pred`` and ``elr_pred``; ``settled``, with ``t_needed`` (the largest over layers of
    :func:`steps_to_settle`) and ``tail_start``; ``t_eq`` (the median over layers of the steps to equilibrium)
    beside ``t_pred`` (2·relaxation_steps); and ``spread_end`` (:func:`tail_spread`).

    A run is ``settled`` when it ran long enough for its tail to be an equilibrium: by the tail's first step the
    model, started from every layer's own ‖W₀‖⁴ and plateau, has closed its gap to within e⁻² of the plateau, and
    every layer of the run itself came within e⁻² of its plateau before the tail. A test on the norm's or the
    ELR's drift across the tail cannot tell this: the equilibrium norm σ*² = c/E* follows the base gradient c as
    the loss falls, and the ELR of a single layer moves with c from step to step."""
    logged, w = records.matrix("weight_norm")
    e = records.matrix("elr_grad")[1]
    eq, appr = dynamics.equilibrium(lr, wd), approach(logged, w, tail=tail)
    needed = float(np.max(steps_to_settle(lr, wd, w[0] ** 4, appr.plateau)))
    return {"angular": tail_rms(records.matrix("elr_update")[1], tail), "elr": tail_rms(e, tail),
            "angular_pred": eq.angular, "elr_pred": eq.elr, "drift": float(appr.drift.max()),
            "t_needed": needed, "tail_start": appr.tail_start,
            "settled": bool(np.all(appr.steps < appr.tail_start) and needed <= appr.tail_start),
            "t_eq": float(np.median(appr.steps)), "t_pred": 2 * float(dynamics.relaxation_steps(lr, wd)),
            "spread_end": tail_spread(e, tail)}

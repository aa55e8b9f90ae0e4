# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Long horizons in closed form
#
# At a constant learning rate every layer of the discrete model follows the
# same sequence: with $x = \sigma^2/(c\lambda)$, Eq. (5) becomes
# $x_{n+1} = x_n + 1/x_n$ (proof of Thm. 3.6 {cite}`mehmeti2024weight`),
# and the ELR after $n$ steps is $E_n = 1/(\lambda x_n)$. The paper bounds
# $x_n^2$ between $2n$ and $2n + O(\ln n)$. To predict the ELRs of a network
# after a million steps one would still iterate a million times. This
# chapter gives a closed form with a guaranteed error instead.
#
# ## An almost-invariant
#
# Write $y = x^2$, so $y_{n+1} = y_n + 2 + 1/y_n$, and take
# $F(y) = y/2 - \tfrac14\ln(2y+1)$ (the solution of the continuous version
# $\mathrm{d}y/\mathrm{d}n = 2 + 1/y$, written as $n$ in terms of $y$). Then,
# exactly,
#
# $$F(y_{k+1}) = F(y_k) + 1 + \delta(y_k),\qquad
#   \delta(y) = \frac{1}{2y} - \frac14\ln\!\left(1+\frac2y\right),\qquad
#   0 \le \delta(y) \le \frac{1}{2y^2},$$
#
# because $2y_{k+1}+1 = (2y_k+1)(1+2/y_k)$, and
# $u - u^2/2 \le \ln(1+u) \le u$. Iterate exactly for the $m$ steps that
# $y$ needs to reach 64 (at most 32 steps, since $y$ grows by more than 2
# per step); from there $y_k \ge y_m + 2(k-m)$ and the sum of the $\delta$s
# is at most $1/(2y_m^2) + 1/(4y_m)$:
#
# $$n - m \;\le\; F(y_n) - F(y_m) \;\le\; n - m + \frac{1}{2y_m^2} + \frac{1}{4y_m}.$$
#
# $F$ increases, so inverting it (a fixed-point iteration that contracts by
# $1/(2y+1) < 1/129$) bounds $x_n$ from both sides, and the integral of
# $1/(2y^2)$ along $y \approx y_m + 2(k-m)$ gives a point estimate. The cost
# does not depend on $n$. It also yields the expansion behind Thm. 3.6:
# $F(y_n) = n + K + o(1)$ with a constant $K(x_0)$ gives
# $x_n^2 = 2n + \tfrac12\ln n + 2K + \ln 2 + o(1)$.
# `elr.dynamics.long_horizon` implements it and `elr.dynamics.elr_at_step`
# applies it to layers; `elr prove` checks it (Prop. III.6):

# %% tags=["parameters"]
n_max: int = 1000000  # the longest horizon compared with the exact recurrence {>= 100}
depth: int = 110  # NoShort CIFAR ResNet whose layers are predicted (Eq. 6 base gradients) {>= 8, %6==2}
lr: float = 0.1  # constant learning rate of the prediction {> 0}

# %%
import time

import numpy as np
from IPython.display import Markdown, display

from elr import dynamics, plots, symbolic

plots.setup()
result = symbolic.check_long_horizon(n_max)
print(result.report())
assert result.ok, result.ref

# %%
x0 = np.array([0.01, 0.3, 1.0, 3.0, 30.0])
start = time.perf_counter()
exact = dynamics.normalised_sequence(x0, n_max)
t_loop = time.perf_counter() - start
ns = np.unique(np.round(np.logspace(0, np.log10(n_max), 60)).astype(int))
start = time.perf_counter()
closed = [dynamics.long_horizon(x0, n) for n in ns]
t_closed = (time.perf_counter() - start) / len(ns)
err = np.array([np.abs(h.x / exact[n] - 1) for h, n in zip(closed, ns)])
width = np.array([(h.upper - h.lower) / exact[n] for h, n in zip(closed, ns)])
inside = all(np.all((h.lower <= exact[n] * (1 + 1e-14)) & (exact[n] <= h.upper * (1 + 1e-14))) for h, n in zip(closed, ns))
display(Markdown(f"Exact recurrence for {n_max:,} steps (5 sequences at once): {t_loop:.2f} s. Closed form at one n: "
                 f"{t_closed * 1e6:.0f} µs, i.e. {t_loop / t_closed:,.0f} times faster at this horizon (measured in this "
                 f"run on this machine). Largest relative error of the estimate: {err.max():.1e}; "
                 f"the guaranteed bounds held at all {len(ns)} horizons: {inside}."))

# %% tags=["hide-input"]
fig, ax = plots.plt.subplots(figsize=(6, 3.2))
for j, v in enumerate(x0):
    ax.loglog(ns, np.maximum(err[:, j], 1e-17), "-", color=f"C{j}", label=f"$x_0$ = {v:g}: error of the estimate")
    ax.loglog(ns, width[:, j], ":", color=f"C{j}")
ax.set(xlabel="step n", ylabel=r"relative error in $x_n$")
ax.legend(fontsize=7)
plots.glue("ch17-error", fig)

# %% [markdown]
# ```{glue:figure} ch17-error
# :name: fig-ch17-error
#
# Relative error of the closed-form estimate of $x_n$ against the exact recurrence (solid; a value
# at the floor means exact to rounding, which happens while the first steps are iterated exactly),
# and the relative width of the guaranteed bracket (dotted).
# ```
#
# ## Predicting a network at step $10^6$
#
# For a network, every layer gets its own $x_0 = \sigma_0^2/(c\lambda)$.
# The closed form gives all ELRs of ResNet110 without shortcuts after a
# million steps at once; iterating Eq. (5) for all layers confirms them.

# %%
c = dynamics.base_gradients_cifar_resnet(depth, shortcut=False)
sigma2_0 = np.full(c.shape, dynamics.SIGMA2_HE)
start = time.perf_counter()
predicted = dynamics.elr_at_step(sigma2_0, c, lr, n_max)
t_pred = time.perf_counter() - start
start = time.perf_counter()
s = sigma2_0.copy()
for _ in range(n_max):
    s = dynamics.discrete_step(s, c, lr)
t_iter = time.perf_counter() - start
iterated = dynamics.elr(s, c)
net_err = float(np.max(np.abs(predicted.x / iterated - 1)))
spread_n = float(dynamics.relative_spread(predicted.x))
display(Markdown(f"ResNet{depth} NoShort ({len(c)} layers) at λ = {lr:g}, step {n_max:,}: closed form {t_pred * 1e3:.2f} ms, "
                 f"iterating Eq. (5) {t_iter:.1f} s; largest relative difference in an ELR {net_err:.1e}; "
                 f"S_rel = {spread_n:.3g} (at initialisation {float(dynamics.relative_spread(dynamics.elr(sigma2_0, c))):.3g})."))

# %% [markdown]
# Even after a million steps the spread of this network has not gone: the
# layers that the first step pushed far out converge only like
# $x_n \approx \sqrt{2n}$, with a memory of $x_0$ that fades as $x_0^2/(2n)$.
# The closed form makes such statements cheap to explore for any horizon.
#
# ## Checks

# %%
assert inside, "the recurrence stays inside the guaranteed bounds"
assert err.max() < 1e-6, "the point estimate is within 1e-6 of the recurrence at every horizon"
assert net_err < 1e-6, "the network's ELRs at the horizon match iterating Eq. (5)"
rounding = 1e-10  # a million floating-point steps of Eq. (5) carry their own rounding error
assert np.all(predicted.lower <= iterated * (1 + rounding)) and np.all(iterated <= predicted.upper * (1 + rounding)), \
    "the network's iterated ELRs lie inside the predicted bounds, up to the rounding of the iteration"
print("all claims of this chapter hold")

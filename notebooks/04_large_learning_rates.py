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
# # Large learning rates: flipping and the critical rate
#
# Real training does not use infinitesimal learning rates. This chapter
# follows the paper's Section 3.7 {cite}`mehmeti2024weight` through the
# discrete model itself: ratios of ELRs always move towards 1, but a large
# enough step overshoots, and the layer that had the highest ELR ends up
# with the lowest. The threshold is the critical learning rate. Each
# statement is derived with SymPy and checked numerically by `elr prove`;
# this chapter shows the derivations and what they predict for a deep
# network.

# %% tags=["parameters"]
n_layers: int = 109  # layers of the feed-forward profile c_i = α^(L-i) (ResNet110 NoShort has 109) {>= 2}
n_steps: int = 10  # steps after which the spread is measured (10, the horizon of the paper's Figure 2; its ICML text shows no spread after n steps) {>= 1}
lr_decades: float = 3.0  # the λ grid spans κ_ℓh(0)·10^(±lr_decades) {> 0}
n_lrs: int = 121  # points of the λ grid {>= 5}
n_asymptotic: int = 100000  # steps of x_{n+1} = x_n + 1/x_n in the convergence figure {>= 100}

# %%
import numpy as np
import sympy as sp
from IPython.display import Math, display

from elr import dynamics, plots, symbolic

plots.setup()

# %% [markdown]
# ## One step, written in ELRs
#
# Divide the discrete model $\sigma^2 \leftarrow \sigma^2 + \lambda^2c^2/\sigma^2$
# into $c$ and write $E = c/\sigma^2$. The base gradient cancels, and each
# layer's next ELR depends only on its current ELR:
#
# $$
# E_{i+1} = f_\lambda(E_i), \qquad f_\lambda(E) = \frac{E}{1 + \lambda^2 E^2} .
# $$ (ch04-elr-map)
#
# We did not find this form in the paper, but it makes every result of
# Section 3.7 a property of one function. $f_\lambda$ rises for
# $E < 1/\lambda$, peaks at $f_\lambda(1/\lambda) = 1/(2\lambda)$, and falls
# beyond. Two layers keep their order if they sit on the same side of the
# peak, in the sense made exact by the factorisation SymPy finds:

# %%
display(Math(r"f_\lambda(E_j) - f_\lambda(E_k) = " + sp.latex(symbolic.derive_flip_factor())))
elr_map = symbolic.check_elr_map()
print(elr_map.report())

# %% [markdown]
# The sign of $f_\lambda(E_j) - f_\lambda(E_k)$ is that of $E_j - E_k$
# exactly when $\lambda^2 E_j E_k < 1$, that is when
# $\lambda < \kappa_{jk} = 1/\sqrt{E_j E_k}$, the paper's *flipping ratio*
# (Def. 3.8).

# %% tags=["hide-input"]
fig, ax = plots.plt.subplots(figsize=(6.5, 3.0))
lam_demo = 1.0
grid = np.logspace(-2, 2, 400)
ax.loglog(grid, dynamics.elr_step(grid, lam_demo), "k", label=r"$f_\lambda(E)$, $\lambda = 1$")
ax.loglog(grid, grid, color="0.6", lw=0.8, ls=":", label="$E$ (no change)")
for e_j, color in [(0.3, "C0"), (8.0, "C3")]:
    ax.plot([e_j, e_j], [grid[0], float(dynamics.elr_step(e_j, lam_demo))], color=color, lw=1)
    ax.plot(e_j, float(dynamics.elr_step(e_j, lam_demo)), "o", color=color, label=f"$E$ = {e_j:g}")
ax.axvline(1 / lam_demo, color="C2", lw=1, ls="--", label=r"peak at $1/\lambda$")
ax.set(xlabel="ELR before the step", ylabel="ELR after the step")
ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the axes: inside, it covers the curve
plots.glue("ch04-elr-map", fig)

# %% [markdown]
# ```{glue:figure} ch04-elr-map
# :name: fig-ch04-elr-map
#
# The ELR map {eq}`ch04-elr-map` at $\lambda = 1$. A layer at $E = 8$ (red) lands below a layer that
# started at $E = 0.3$ (blue): here $\lambda = 1 > \kappa = 1/\sqrt{8 \cdot 0.3} \approx 0.65$, so their
# ratio flips.
# ```
#
# ## Ratios shrink (Proposition 3.7)
#
# Whatever $\lambda$, a ratio $R_{jk} = E_j/E_k$ above 1 decreases and one
# below 1 increases: $f_\lambda(E)/E = 1/(1+\lambda^2E^2)$ shrinks the larger
# ELR by the larger factor. The paper proves it by expanding
# $\sigma_k^2/\sigma_j^2$ after one step (its Eq. 22); `elr.symbolic`
# re-derives Eq. 22 from the discrete model and shows that Eq. 20 divided by
# $R_{jk} - 1$ is a positive expression. But "decreases" may overshoot: a
# ratio of 10 can become 1/100.

# %%
shrink = symbolic.check_proposition_3_7()
print(shrink.report())

# %% [markdown]
# ## Flipping and the critical learning rate (Proposition 3.9)
#
# The paper's Eq. 29 factorises the condition for $R_{jk}$ to stay on its
# side of 1. In our notation, SymPy finds that
#
# $$
# \frac{R_{jk}(t_{i+1}) - 1}{\bigl(R_{jk}(t_i) - 1\bigr)\bigl(\kappa_{jk}^2 - \lambda^2\bigr)} > 0 ,
# $$ (ch04-flip)
#
# so a ratio flips iff $\lambda > \kappa_{jk}$, keeps its side iff
# $\lambda < \kappa_{jk}$, and lands exactly on 1 iff $\lambda = \kappa_{jk}$.
# The pair that flips first as $\lambda$ grows is the pair with the smallest
# $\kappa$. The **critical learning rate**
# $\kappa_{\ell h} = 1/\sqrt{E_\ell E_h}$ of the lowest and the highest ELR
# marks the point above which the top layer falls below the bottom one in a
# single step.

# %%
flip = symbolic.check_proposition_3_9()
print(flip.report())

# %% [markdown]
# ## A ratio flips at most once, and only in the first step (Proposition A.1)
#
# At constant $\lambda$ the paper shows that a ratio flips at most once. The
# ELR map gives a sharper statement: after any step every ELR is at most the
# peak value $1/(2\lambda)$, so every flipping ratio afterwards is
# $\kappa_{jk} = 1/\sqrt{E_jE_k} \ge 2\lambda > \lambda$. No ratio can flip
# after the first step, whatever happened in it. Equivalently, the paper's
# expansion (its Eq. 50) can be rewritten as
#
# $$
# \kappa_{jk}^2(t_{i+1}) - 4\lambda^2
# = \Bigl(\kappa_{jk} - \frac{\lambda^2}{\kappa_{jk}}\Bigr)^2
# + \lambda^2\Bigl(\sqrt{R_{jk}} - \frac{1}{\sqrt{R_{jk}}}\Bigr)^2 \;\ge\; 0 ,
# $$ (ch04-kappa-bound)
#
# an identity SymPy confirms. The paper's proof needs the assumption
# $\lambda > \kappa_{jk}(t_i)$ at its Eq. 51; this identity does not.

# %%
once = symbolic.check_proposition_a_1()
print(once.report())

# %% [markdown]
# ## Convergence at any constant learning rate (Theorem 3.6)
#
# The proof, credited by the paper to {cite}`szwarc2023quotient`, rescales
# each layer as $x = \sigma^2/(c\lambda)$. Substituting into the discrete
# model gives one recurrence for all layers,
#
# $$
# x_{n+1} = x_n + \frac{1}{x_n} ,
# $$ (ch04-normalised)
#
# which only differs between layers in its starting point
# $x_0 = 1/(\lambda E_0)$. Squaring, $x_{n+1}^2 = x_n^2 + 2 + 1/x_n^2$, so
# $x_n^2 = x_0^2 + 2n + \sum_{k<n} 1/x_k^2$. After the first step
# $x_1^2 = x_0^2 + 1/x_0^2 + 2 \ge 4$ (since $a + 1/a \ge 2$), and every
# later step adds at least 2, so $x_k^2 \ge 2k + 2$ for $k \ge 1$ and
# $\sum_{k=1}^{n-1} 1/x_k^2 \le \tfrac12 (H_n - 1) \le \tfrac12 \ln n$:
#
# $$
# x_0^2 + 2n \;\le\; x_n^2 \;\le\; x_0^2 + 2n + \frac{1}{x_0^2} + \frac12 \ln n
# \qquad (n \ge 1),
# $$ (ch04-bounds)
#
# with equality on the right at $n = 1$ for every $x_0$, so no constant can
# be taken off it. (The cruder $x_k^2 \ge 2k$ gives a needless extra
# $\tfrac12$.)
#
# which replaces the paper's Eq. 42 (see {doc}`06_errata`). Both bounds grow
# like $2n$, so $x_n/\sqrt{2n} \to 1$ for every layer and every ratio of ELRs
# $E_j/E_k = x^{(k)}_n/x^{(j)}_n \to 1$. Numerically the remainder settles:
# $x_n^2 = x_0^2 + 2n + \tfrac12\ln n + O(1)$.

# %%
converge = symbolic.check_theorem_3_6()
print(converge.report())

x0 = np.array([0.1, 1.0, 10.0])
seq = dynamics.normalised_sequence(x0, n_asymptotic)
n = np.arange(1, n_asymptotic + 1)

# %% tags=["hide-input"]
fig, ax = plots.plt.subplots(figsize=(5.5, 3.0))
for value, color, column in zip(x0, ["C0", "C1", "C3"], (seq[1:] ** 2 - x0**2 - 2 * n[:, None]).T):
    lower, upper = dynamics.normalised_sequence_bounds(value, n)
    ax.plot(n, column, color=color, label=f"$x_0$ = {value:g}")
    ax.plot(n, upper - value**2 - 2 * n, color=color, ls=":", lw=0.8)
ax.plot(n, 0.5 * np.log(n), "k--", lw=0.8, label=r"$\frac{1}{2}\ln n$")
ax.set(xscale="log", xlabel="step n", ylabel=r"$x_n^2 - x_0^2 - 2n$")
ax.legend()
plots.glue("ch04-asymptotics", fig)
plots.glue("ch04-n-asymptotic", f"{n_asymptotic:,}")

# %% [markdown]
# ```{glue:figure} ch04-asymptotics
# :name: fig-ch04-asymptotics
#
# The excess $x_n^2 - x_0^2 - 2n$ of the normalised recurrence {eq}`ch04-normalised` over
# {glue:text}`ch04-n-asymptotic` steps (solid), the upper bound of {eq}`ch04-bounds` (dotted; the lower
# bound is 0), and the asymptotic slope $\frac12 \ln n$ (dashed).
# ```
#
# ## The spread after a few steps, against the learning rate
#
# How does one choose $\lambda$ for the first steps? Take the profile of a
# deep network without shortcuts from {doc}`02_discrete_model`, start every
# layer at $\sigma^2 = 2$, run the discrete model for a few steps at a
# constant $\lambda$ and measure the relative spread $S_{rel}$ of the ELRs.

# %%
c = dynamics.base_gradients_feedforward(n_layers)
sigma2_start = np.full(n_layers, dynamics.SIGMA2_HE)
e0 = dynamics.elr(sigma2_start, c)
kappa_crit, kappa_sub = float(dynamics.critical_lr(e0)), float(dynamics.subcritical_lr(e0))
lr_grid = kappa_crit * np.logspace(-lr_decades, lr_decades, n_lrs)
sweep = dynamics.simulate(np.broadcast_to(sigma2_start, (n_lrs, n_layers)), c,
                          np.broadcast_to(lr_grid, (n_steps, n_lrs)))
spread0, spread_n = sweep.spread[0], sweep.spread[-1]
best = int(np.argmin(spread_n))

# %% tags=["hide-input"]
fig = plots.spread_against_lr(
    lr_grid, {f"after {n_steps} steps": spread_n, "at initialisation": spread0},
    {r"critical $\kappa_{\ell h}(0)$": kappa_crit, r"subcritical $\kappa_{hh'}(0)$": kappa_sub},
    xlabel=r"learning rate $\lambda$ (model units, $c_L = 1$)")
plots.glue("ch04-spread", fig)
plots.glue("ch04-setting", f"L = {n_layers} layers with c_i = α^(L−i) and σ²(0) = 2, {n_steps} steps")
print(f"κ_ℓh(0) = {kappa_crit:.3e}, κ_hh'(0) = {kappa_sub:.3e}; the smallest spread, {spread_n[best]:.3f}, "
      f"is at λ = {lr_grid[best]:.3e} = {lr_grid[best] / kappa_crit:.3f} κ_ℓh(0) (model units, c_L = 1)")

# %% [markdown]
# ```{glue:figure} ch04-spread
# :name: fig-ch04-spread
#
# Relative ELR spread of the discrete model after a few constant-λ steps (solid) and at initialisation
# (dotted), with the critical and subcritical rates at initialisation. Model only:
# {glue:text}`ch04-setting`. (The ICML text of the paper has no such figure; a one-page summary of
# the paper lists one, "simulated relative ELR spread after 10 steps", perhaps from another version.)
# ```
#
# Below the critical rate, a larger $\lambda$ always buys a smaller spread.
# Above it, the lowest layers' ELRs overshoot below the rest and the spread
# climbs back. For this profile the minimum sits *at* the critical rate,
# not only near it. The reason is a symmetry. At $\lambda = \kappa_{\ell h}$
# the ELR map, written for $u = \ln E - \tfrac12\ln(E_\ell E_h)$, sends $u$ and
# $-u$ to the same value. The feed-forward profile has $\ln E_i$ evenly
# spaced between the two extremes, so the map folds it onto itself and pairs
# every layer with its mirror image. The subcritical rate $\kappa_{hh'}(0)$
# is far smaller: it equalises only the two top layers per step, but it never
# overshoots (chapter {doc}`05_warmup`).
#
# ## Checks

# %%
for check in (elr_map, shrink, flip, once, converge):
    assert check.ok, f"{check.ref}: {check.detail}"
below = lr_grid < kappa_crit
assert np.all(spread_n[below] < spread0[below]), "every subcritical λ lowers the spread"
assert np.all(np.diff(spread_n[: best + 1]) < 0) and np.all(np.diff(spread_n[best:]) > 0), \
    "the spread falls up to one learning rate and rises beyond it"
grid_step = lr_grid[1] / lr_grid[0]
assert 1 / grid_step <= lr_grid[best] / kappa_crit <= grid_step, "the smallest spread is at κ_ℓh(0), to grid resolution"
assert kappa_sub <= kappa_crit, "the subcritical rate is below the critical rate"
print("all claims of this chapter hold")

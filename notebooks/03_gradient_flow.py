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
# # Gradient flow: the closed form and convergence
#
# For small learning rates the discrete model of
# {doc}`02_discrete_model` becomes an ordinary differential equation that can
# be solved exactly (the paper's Theorem 3.4). Its solution shows that all
# effective learning rates end up equal (Theorem 3.5), however far apart
# they start {cite}`mehmeti2024weight`. This chapter derives both with SymPy
# and compares the discrete model with its limit.

# %% tags=["parameters"]
n_layers: int = 20  # layers of the feed-forward BN-ReLU profile c_i = α^(L-i) {>= 2}
lrs: list[float] = [0.3, 0.1, 0.03]  # learning rates λ of the discrete model, compared with the flow {> 0}
t_max: float = 30.0  # gradient-flow time horizon t = iλ² {> 0}
t_late: float = 1e8  # a late time, at which the flow's ELR ratios are checked to be close to 1 {>= 1e6}

# %%
import numpy as np
import sympy as sp
from IPython.display import Math, display

from elr import dynamics, plots, symbolic

plots.setup()

# %% [markdown]
# ## From steps to a flow
#
# Measure training time by $t_i = i\lambda^2$, so that one step at learning
# rate $\lambda$ advances time by $\lambda^2$. Then the discrete model reads
# $\sigma^2(t + \lambda^2) = \sigma^2(t) + \lambda^2 c^2/\sigma^2(t)$, and its
# difference quotient is exactly
#
# $$
# \frac{\sigma^2(t+\lambda^2) - \sigma^2(t)}{\lambda^2} = \frac{c^2}{\sigma^2(t)} .
# $$
#
# Letting $\lambda \to 0$ turns it into the gradient-flow equation
#
# $$
# \frac{d\sigma^2}{dt} = \frac{c^2}{\sigma^2} .
# $$ (ch03-ode)
#
# `elr.symbolic.derive_closed_form` forms the difference quotient from the
# discrete model, takes this limit and hands the equation to SymPy's `dsolve`
# with the initial value $\sigma^2(0) = \sigma_0^2$:

# %%
ode, solution, sigma2_0 = symbolic.derive_closed_form()
display(Math(sp.latex(ode)))
display(Math(r"\sigma^2(t) = " + sp.latex(solution)))

# %% [markdown]
# The positive solution is
#
# $$
# \sigma^2(t) = \sqrt{2 c^2 t + \sigma_0^4} ,
# $$ (ch03-closed-form)
#
# the paper's Eq. (12) with $k_0 = \sigma_0^4$; He initialisation gives
# $\sigma_0^2 = 2$ per output unit and so $k_0 = 4$. Multiplying
# {eq}`ch03-ode` by $2\sigma^2$ shows why: $d(\sigma^4)/dt = 2c^2$, so the
# *fourth* power of the weight norm grows linearly in time. `elr prove`
# checks this solution against `elr.dynamics.continuous_sigma2`, and against
# the discrete model as $\lambda$ halves:

# %%
closed = symbolic.check_theorem_3_4()
print(closed.report())

# %% [markdown]
# ## All ELRs become equal
#
# With {eq}`ch03-closed-form`, the effective learning rate
# $E = c/\sigma^2 = c/\sqrt{2c^2t + \sigma_0^4}$ tends to $1/\sqrt{2t}$ for
# *every* layer, whatever its base gradient $c$. So every ratio
# $R_{jk} = E_j/E_k$ tends to 1 (Theorem 3.5). Layers with large gradients
# grow their weights faster and catch up with the rest; after a time of
# order $\sigma_0^4/c^2$ a layer has forgotten its initial condition.

# %%
limit = symbolic.check_theorem_3_5()
print(limit.report())

# %% [markdown]
# ## The discrete model against the flow
#
# The discrete model is one explicit Euler step of {eq}`ch03-ode` with step
# size $h = \lambda^2$ (per step, in $\sigma^2$). Below, every layer of a
# feed-forward BN-ReLU profile of $L$ layers starts from $\sigma_0^2 = 2$ with
# the base gradients of {doc}`02_discrete_model`, and the discrete model at
# several learning rates runs to the same time $t_{max}$ as the flow.

# %%
c = dynamics.base_gradients_feedforward(n_layers)
sigma2_start = np.full(n_layers, dynamics.SIGMA2_HE)
kappa0 = float(dynamics.critical_lr(dynamics.elr(sigma2_start, c)))
runs = {lr: dynamics.simulate(sigma2_start, c, np.full(int(round(t_max / lr**2)), lr)) for lr in lrs}
# the flow's ELRs at the discrete model's times, and the model's largest relative errors against it
flows = {lr: dynamics.elr(dynamics.continuous_sigma2(run.time[1:, None], c, sigma2_start), c) for lr, run in runs.items()}
path_error = {lr: float(np.max(np.abs(run.elr[1:] / flows[lr] - 1))) for lr, run in runs.items()}
final_error = {lr: float(np.max(np.abs(run.sigma2[-1] / dynamics.continuous_sigma2(run.time[-1], c, sigma2_start) - 1)))
               for lr, run in runs.items()}

# %% tags=["hide-input"]
fig, axes = plots.plt.subplots(1, len(lrs), figsize=(2.6 * len(lrs) + 0.8, 3.0), sharey=True, squeeze=False)
for ax, (lr, run) in zip(axes[0], runs.items()):
    t = run.time[1:]
    plots.layer_paths(t, run.elr[1:], ax=ax, logx=True, xlabel="time $t = i\\lambda^2$",
                      ylabel="ELR $E_i$" if ax is axes[0, 0] else "")
    plots.layer_paths(t, flows[lr], ax=ax, logx=True, style="k--", lw=0.6, xlabel="time $t = i\\lambda^2$")
    ax.set_title(f"$\\lambda$ = {lr:g} ({run.lr.size:,} steps)")
plots.add_depth_colorbar(fig, axes[0].tolist(), n_layers)
plots.glue("ch03-discrete-vs-flow", fig)
plots.glue("ch03-setting", f"L = {n_layers} layers, c_i = α^(L−i), σ²(0) = 2, t_max = {t_max:g}")
plots.glue("ch03-kappa", f"{kappa0:.3g}")

# %% [markdown]
# ```{glue:figure} ch03-discrete-vs-flow
# :name: fig-ch03-discrete-vs-flow
#
# Per-layer ELRs of the discrete model (coloured, blue = lowest layer) and of the gradient flow
# {eq}`ch03-closed-form` (dashed) against time, for several learning rates. Model only:
# {glue:text}`ch03-setting`. The critical rate at initialisation is κ_ℓh(0) = {glue:text}`ch03-kappa`.
# ```
#
# At the smallest learning rate the two models cannot be told apart. At a
# learning rate near the critical rate $\kappa_{\ell h}(0)$ (chapter
# {doc}`04_large_learning_rates`), the first step already pushes the lowest
# layers' ELRs far below the flow's, and the discrete model needs a long time
# to rejoin it. Euler's method is first-order in its step $h = \lambda^2$,
# so the error at a fixed time should shrink like $\lambda^2$:

# %% tags=["hide-input"]
lr_sorted = sorted(lrs)
fig, ax = plots.plt.subplots(figsize=(4.5, 3.0))
ax.loglog(lr_sorted, [final_error[lr] for lr in lr_sorted], "o-", label="max over layers, at $t_{max}$")
ax.loglog(lr_sorted, [path_error[lr] for lr in lr_sorted], "s--", label="max over layers and time")
ref = final_error[lr_sorted[0]] * (np.array(lr_sorted) / lr_sorted[0]) ** 2
ax.loglog(lr_sorted, ref, "k:", label=r"$\propto \lambda^2$")
ax.set(xlabel=r"learning rate $\lambda$ (model units, $c_L = 1$)", ylabel="relative error of the discrete model")
ax.legend()
plots.glue("ch03-error", fig)
for lr in lr_sorted:
    print(f"λ = {lr:<8g} (model units) error at t_max {final_error[lr]:.2e}   max error along the path {path_error[lr]:.2e}")

# %% [markdown]
# ```{glue:figure} ch03-error
# :name: fig-ch03-error
#
# Relative error of the discrete model against the closed form, in $\sigma^2$ at $t_{max}$ and in the
# ELRs along the whole path. Model only: {glue:text}`ch03-setting`.
# ```
#
# ## Checks

# %%
assert closed.ok, closed.detail
assert limit.ok, limit.detail
errors = [final_error[lr] for lr in lr_sorted]
assert all(a < b for a, b in zip(errors, errors[1:])), "the discrete model approaches the flow as λ decreases"
if len(lr_sorted) >= 2 and lr_sorted[1] < kappa0 / 3:
    # in the smooth regime the error at fixed time is first order in λ²
    order = np.log(errors[1] / errors[0]) / np.log(lr_sorted[1] / lr_sorted[0])
    assert 1.5 < order < 2.5, f"error order in λ is {order:.2f}, expected 2"
e_late = dynamics.elr(dynamics.continuous_sigma2(t_late, c, sigma2_start), c)
assert e_late.max() / e_late.min() < 1.01, "ELR ratios under the flow approach 1"
assert np.all(np.abs(e_late * np.sqrt(2 * t_late) - 1) < 0.01), "every ELR tends to 1/sqrt(2t)"
print("all claims of this chapter hold")

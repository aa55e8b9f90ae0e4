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
# # Large learning rates as a stiff ODE
#
# The paper's first version {cite}`mehmeti2023spreads` put the large-rate
# regime in the language of numerical analysis: training with a large
# learning rate is like solving a stiff ODE with an explicit method, and it
# overshoots. The published version dropped this picture for the flipping
# analysis of its Section 3.7. This chapter makes the picture exact and
# shows that the two are the same statement.
#
# ## Eq. (5) is explicit Euler
#
# Write $t_i = i\lambda^2$. Eq. (5) reads
# $\sigma^2(t_i + \lambda^2) = \sigma^2(t_i) + \lambda^2\,c^2/\sigma^2(t_i)$:
# one explicit (forward) Euler step of size $h = \lambda^2$ on the gradient
# flow $\mathrm{d}\sigma^2/\mathrm{d}t = c^2/\sigma^2$ of {doc}`03_gradient_flow`.
# The learning rate is the square root of the solver's step size.
#
# A perturbation $\delta$ of $\sigma^2$ is multiplied in one step by
# $1 + h\,\partial_{\sigma^2}(c^2/\sigma^2) = 1 - \lambda^2 c^2/\sigma^4 = 1 - \lambda^2E^2$.
# Explicit Euler therefore
#
# * **overshoots** (the perturbation changes sign) when $\lambda E > 1$, and
# * **amplifies** perturbations when $\lambda E > \sqrt 2$.
#
# The ODE is stiff because its layers live on very different time scales:
# a layer relaxes on the time $\sigma^4/c^2 = 1/E^2$, and at initialisation
# the ELRs of a deep network differ by orders of magnitude. A step that is
# small for the slowest layer overshoots in the fastest one.
#
# Compare with the flipping condition of Prop. 3.9: layers $j$ and $k$
# swap order when $\lambda > \kappa_{jk} = 1/\sqrt{E_jE_k}$. For two layers
# with (nearly) equal ELRs this is $\lambda E > 1$: the flip *is* Euler's
# overshoot, seen on a pair of layers. The ELR map
# $E' = E/(1+\lambda^2E^2)$ decreases in $E$ exactly where Euler overshoots
# ($\lambda E > 1$), and a decreasing map is what reverses the order of two
# layers.
#
# For contrast, backward (implicit) Euler solves
# $\sigma_{i+1}^2 = \sigma_i^2 + \lambda^2c^2/\sigma_{i+1}^2$, whose
# positive root gives $E' = 2E/(1+\sqrt{1+4\lambda^2E^2})$, and the exact
# flow over the same time gives $E' = E/\sqrt{1+2\lambda^2E^2}$. Both maps
# increase in $E$ for every $\lambda$: they never reverse two layers, so
# they have no critical learning rate at all. `elr prove` checks all of
# this (Prop. III.5):

# %% tags=["parameters"]
depth: int = 110  # depth of the NoShort CIFAR ResNet whose base gradients (Eq. 6) are used {>= 8, %6==2}
n_steps: int = 10  # steps of each simulation (10, the horizon of the paper's Figure 2; its ICML text shows no spread after n steps) {>= 1}
n_lrs: int = 81  # learning rates on the grid {>= 11}

# %%
import numpy as np
from IPython.display import Markdown, display

from elr import dynamics, plots, symbolic

plots.setup()
result = symbolic.check_explicit_euler()
print(result.report())
assert result.ok, result.ref

# %%
c = dynamics.base_gradients_cifar_resnet(depth, shortcut=False)
sigma2_0 = np.full(c.shape, dynamics.SIGMA2_HE)
e0 = dynamics.elr(sigma2_0, c)
kappa = float(dynamics.critical_lr(e0))
ratios = np.logspace(-2, 2, n_lrs)
spread, order = {}, {}
for method in ("explicit", "implicit", "flow"):
    traj = dynamics.simulate_solver(sigma2_0[None, :].repeat(n_lrs, 0), c, np.tile(ratios * kappa, (n_steps, 1)), method)
    spread[method] = traj.spread[-1]
    order[method] = traj.elr[-1, :, 0] / traj.elr[-1, :, -1]  # lowest layer over highest, after n_steps
display(Markdown(f"κ_ℓh(0) = {kappa:.3g}. Smallest spread after {n_steps} steps: "
                 + ", ".join(f"{m}: {spread[m].min():.3g} at λ/κ = {ratios[np.argmin(spread[m])]:.3g}" for m in spread)))

# %% tags=["hide-input"]
fig, axes = plots.plt.subplots(1, 3, figsize=(10, 3.0))
le = np.logspace(-1.5, 1.5, 300)  # λE
for method, fn in {"explicit (Eq. 5)": lambda z: z / (1 + z**2), "implicit": lambda z: 2 * z / (1 + np.sqrt(1 + 4 * z**2)),
                   "exact flow": lambda z: z / np.sqrt(1 + 2 * z**2)}.items():
    axes[0].plot(le, fn(le), label=method)
axes[0].axvline(1, color="k", ls=":", lw=1)
axes[0].set(xscale="log", yscale="log", xlabel=r"$\lambda E$ before the step", ylabel=r"$\lambda E'$ after it",
            title="one step in ELR")
axes[0].legend()
for method in spread:
    axes[1].plot(ratios, spread[method], label=method)
    axes[2].plot(ratios, order[method], label=method)
for ax in axes[1:]:
    ax.axvline(1, color="C3", lw=1)
    ax.set(xscale="log", xlabel=r"$\lambda/\kappa_{\ell h}(0)$")
axes[1].set(ylabel=f"$S_{{rel}}$ after {n_steps} steps", title="spread")
axes[2].set(yscale="log", ylabel=r"$E_{lowest}/E_{highest}$", title="order of the extreme layers")
axes[2].axhline(1, color="k", ls=":", lw=1)
plots.glue("ch16-solvers", fig)
plots.glue("ch16-setting", f"ResNet{depth} without shortcuts, {len(c)} layers, He initialisation, {n_steps} steps")

# %% [markdown]
# ```{glue:figure} ch16-solvers
# :name: fig-ch16-solvers
#
# Three solvers of the same gradient flow (simulated; {glue:text}`ch16-setting`). Left: the ELR after
# one step as a function of the ELR before it, both times λ: only the explicit step (the discrete
# model) turns back at λE = 1. Middle: relative spread after the steps against the learning rate.
# Right: the lowest layer's ELR over the highest's; below the dotted line their order is reversed.
# ```
#
# Set side by side, the three solvers tell the story of the paper's
# Section 3.7 in one picture. Below $\kappa_{\ell h}$ they agree
# qualitatively: a larger step reduces the spread faster. Above it the
# explicit step overshoots in the layers with the largest ELRs, reverses
# the order of the extreme layers and leaves a spread that grows with
# $\lambda$, while the implicit step and the exact flow keep reducing the
# spread, all the more the larger the step. The spread SGD leaves behind at
# large rates is an artefact of taking explicit steps, not of the flow it
# approximates. (Backward Euler here is a thought experiment: it needs
# $\sigma_{i+1}$ before the step, which SGD does not have. In ELR terms it
# is SGD with the per-layer rate $\lambda\,\sigma_i/\sigma_{i+1}$, a
# warm-up that acts on each layer by itself.)
#
# ## Checks

# %%
rising = np.diff(spread["explicit"][ratios >= 1.2]) >= -1e-12
assert abs(ratios[np.argmin(spread["explicit"])] - 1) < 0.15, "explicit: the spread is smallest at κ_ℓh"
assert np.all(rising), "explicit: above κ_ℓh a larger rate leaves a larger spread"
assert np.all(order["explicit"][ratios > 1.2] < 1) and np.all(order["explicit"][ratios < 0.8] > 1), \
    "explicit: the extreme layers swap order above κ_ℓh and only there"
for m in ("implicit", "flow"):
    assert np.all(np.diff(spread[m]) <= 1e-12), f"{m}: the spread falls monotonically with the step"
    assert np.all(order[m] >= 1), f"{m}: no reversal at any rate"
    assert spread[m][-1] < spread["explicit"][-1], f"{m}: at 100 κ far less spread than the explicit step"
print("all claims of this chapter hold")

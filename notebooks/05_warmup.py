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
# # Warm-up in the model
#
# Chapter {doc}`04_large_learning_rates` showed that a step above the
# critical rate $\kappa_{\ell h}$ flips the ELRs of the extreme layers. At
# initialisation the critical rate of a deep network without shortcuts is
# tiny, so almost any sensible learning rate is super-critical in the first
# step. Warm-up schedules start small; the question is whether they start
# small *enough*, and for how long. This chapter reproduces the paper's
# Figure 1 {cite}`mehmeti2024weight`: the discrete model driven by common
# schedules, and by the paper's subcritical warm-up.

# %% tags=["parameters"]
n_layers: int = 109  # layers of the feed-forward profile c_i = α^(L-i) (ResNet110 NoShort has 109) {>= 3}
n_steps: int = 300  # simulated SGD steps {>= 10}
lr_max: float = 0.01  # peak (target) rate of every schedule, in the model's units where c_L = 1 {> 0}
warmup_steps: int = 50  # length of the linear warm-up {>= 1}
pct_start: float = 0.3  # fraction of the steps OneCycle spends rising {> 0, < 1}

# %%
from functools import partial

import numpy as np
from IPython.display import Markdown, display

from elr import dynamics, plots

plots.setup()

# %% [markdown]
# ## The subcritical warm-up
#
# Corollary 3.10 of the paper chooses, at every step, the learning rate
# $\lambda(t_i) = \kappa_{hh'}(t_i)$, the flipping ratio of the two highest
# ELRs. Since $E_hE_{h'} \ge E_jE_k$ for every other pair, this is the
# smallest flipping ratio of all, so no ratio flips. The top two ELRs become
# equal, and equal ELRs stay equal (the ELR map of
# {doc}`04_large_learning_rates` depends on $E$ alone). Each step therefore
# merges the top group with the next ELR: $L$ distinct ELRs agree after
# $L - 1$ steps. The schedule needs no hyper-parameter: it reads the rate off
# the current ELRs.
#
# In practice the warm-up must hand over to the schedule one wants to train
# with. `elr.dynamics.subcritical_warmup` does so as soon as the spread is
# gone, or as soon as $\kappa_{hh'}$ exceeds the target rate: from then on
# the target itself is below every flipping ratio and cannot flip anything.
#
# ## Five schedules
#
# Every layer starts at $\sigma^2 = 2$ with the base gradients of a network
# without shortcuts; every schedule aims at the same peak rate.

# %%
c = dynamics.base_gradients_feedforward(n_layers)
sigma2_start = np.full(n_layers, dynamics.SIGMA2_HE)
steps = np.arange(n_steps)

target = partial(dynamics.constant, lr=lr_max)

schedules = {
    "constant": dynamics.constant(steps, lr_max),
    "linear warm-up": dynamics.linear_warmup(steps, lr_max, warmup_steps),
    "OneCycle": dynamics.one_cycle(steps, lr_max, n_steps, pct_start=pct_start),
    "cosine": dynamics.cosine(steps, lr_max, n_steps),
    "subcritical": dynamics.subcritical_policy(target),
}
runs = {name: dynamics.simulate(sigma2_start, c, lr, n_steps=n_steps) for name, lr in schedules.items()}
pure = dynamics.simulate(sigma2_start, c, dynamics.subcritical_policy(), n_steps=n_layers)

# %% tags=["hide-input"]
fig = plots.schedule_grid(runs)
plots.glue("ch05-schedules", fig)
plots.glue("ch05-setting", f"L = {n_layers} layers with c_i = α^(L−i) and σ²(0) = 2, {n_steps} steps, "
                           f"peak rate {lr_max:g} (model units, c_L = 1)")

# %% [markdown]
# ```{glue:figure} ch05-schedules
# :name: fig-ch05-schedules
#
# The discrete model under five learning-rate schedules (columns): per-layer ELRs (top, blue = lowest
# layer), squared weight norms (middle), and the learning rate against the critical rate κ_ℓh (bottom).
# Model only: {glue:text}`ch05-setting`. The subcritical warm-up hands over to the constant target.
# ```

# %% tags=["hide-input"]
rows = []
for name, run in runs.items():
    supercritical = run.lr > run.critical_lr[:-1]
    warm = int(np.sum(run.lr != lr_max)) if name == "subcritical" else None
    rows.append(f"| {name} | {int(supercritical.sum())} | {int(run.extreme_flips.sum())} | "
                f"{run.spread[1]:.2f} | {run.spread[-1]:.3f} | {'' if warm is None else warm} |")
display(Markdown("| schedule | steps with λ > κ_ℓh | steps where the top ELR falls below the bottom one | "
                 "S_rel after 1 step | S_rel at the end | warm-up steps |\n|---|---|---|---|---|---|\n"
                 + "\n".join(rows)))

fig, ax = plots.plt.subplots(figsize=(5.5, 3.0))
for name, run in runs.items():
    ax.plot(np.arange(n_steps + 1), run.spread, label=name)
ax.plot(np.arange(n_layers + 1), pure.spread, "k:", label="subcritical, never handing over")
ax.set(xlabel="step", ylabel="$S_{rel}$", yscale="symlog", ylim=(0, None))
ax.set_yscale("symlog", linthresh=1e-3)
ax.legend()
plots.glue("ch05-spread", fig)

# %% [markdown]
# ```{glue:figure} ch05-spread
# :name: fig-ch05-spread
#
# Relative ELR spread over the steps of {numref}`fig-ch05-schedules` (symmetric-log axis, linear below
# $10^{-3}$); dotted: the pure subcritical schedule of Cor. 3.10, which never hands over and drives the
# spread to zero. Model only: {glue:text}`ch05-setting`.
# ```
#
# Every schedule that starts above $\kappa_{\ell h}(0)$ flips the extreme
# layers in its first step, exactly when the bottom row of
# {numref}`fig-ch05-schedules` shows $\lambda > \kappa_{\ell h}$. After the
# first step none of these schedules reverses the order of any pair of
# layers, and that needs a condition on the schedule. One step at rate
# $\lambda_i$ lifts every flipping ratio to at least $2\lambda_i$: by Eq. (50)
# of the paper's proof of Prop. A.1 and $E_j/E_k + E_k/E_j \ge 2$,
# $\kappa_{jk}^2(t_{i+1}) \ge (\kappa_{jk} + \lambda_i^2/\kappa_{jk})^2 \ge
# 4\lambda_i^2$ (chapter {doc}`04_large_learning_rates`). So a schedule that at most doubles from one step to the next,
# $\lambda_{i+1} \le 2\lambda_i$, can reverse a pair only in its first step.
# The four fixed schedules here meet it (the linear warm-up doubles exactly
# once, from its first step to its second); the subcritical one never
# reverses a pair by construction. A faster warm-up need not:
# {glue:text}`ch05-exp-sentence`
#
# Whether a warm-up helps depends on its first value: starting at a fraction
# of the peak rate is not enough when the critical rate is orders of
# magnitude smaller. The subcritical schedule never crosses
# $\kappa_{\ell h}$, and the spread it leaves is the smallest. Run without a
# hand-over, it equalises all layers:

# %%
growth = {name: float(np.max(run.lr[1:] / run.lr[:-1])) for name, run in runs.items() if name != "subcritical"}
reversals = {name: dynamics.reversal_steps(run.elr) for name, run in runs.items()}
exp_steps = 8  # a ×3 exponential warm-up that reaches the peak rate in 8 steps
exp_run = dynamics.simulate(sigma2_start, c, np.minimum(lr_max, dynamics.exponential(steps, lr_max * 3.0**-exp_steps, 3.0)))
exp_reversals = dynamics.reversal_steps(exp_run.elr)
late = exp_reversals[exp_reversals >= 1]

# %% tags=["hide-input"]
plots.glue("ch05-exp-sentence",
           f"an exponential warm-up that multiplies the rate by 3 per step, reaching the same peak in {exp_steps} "
           + (f"steps, reverses pairs of layers again at steps {', '.join(map(str, late))}." if late.size else
              "steps, reverses no pair after its first step in this setting."))
display(Markdown("| schedule | largest λ(i+1)/λ(i) | steps at which a pair of layers reverses order |\n|---|---|---|\n"
                 + "\n".join(f"| {name} | {f'{growth[name]:.3g}' if name in growth else '— (set from the ELRs)'} | "
                              f"{', '.join(map(str, reversals[name])) or 'none'} |" for name in runs)
                 + f"\n| exponential ×3 | 3 | {', '.join(map(str, exp_reversals)) or 'none'} |"))

# %%
done = int(np.argmax(pure.spread < 1e-9))
display(Markdown(f"Pure subcritical schedule: $S_{{rel}} < 10^{{-9}}$ first at step {done} "
                 f"(the corollary promises at most $L - 1$ = {n_layers - 1}); "
                 f"learning rate grows from {pure.lr[0]:.2e} to {pure.lr[done - 1]:.2e}."))

# %% [markdown]
# In floating point the last groups merge a few steps early: when the
# remaining ELRs are close together, $\lambda = \kappa_{hh'}$ puts them near
# the peak of the ELR map, where it is flat, and their differences shrink
# quadratically below the resolution of a double. In exact rational
# arithmetic (`elr prove`, Cor. 3.10) the count of distinct ELRs falls by
# exactly one per step and reaches one after exactly $L - 1$ steps.
#
# ## Checks

# %%
for name, run in runs.items():
    supercritical = run.lr > run.critical_lr[:-1]
    assert np.array_equal(run.extreme_flips, supercritical), f"{name}: flips happen exactly when λ > κ_ℓh"
    assert not supercritical[1:].any(), f"{name}: at most the first step is super-critical"
    assert not np.any(reversals[name] >= 1), f"{name}: no pair of layers reverses order after the first step"
assert all(g <= 2 + 1e-12 for g in growth.values()), "the fixed schedules at most double from one step to the next"
assert late.size > 0, "a ×3 exponential warm-up reverses pairs after its first step: λ(i+1) ≤ 2λ(i) is needed"
sub = runs["subcritical"]
assert np.all(sub.lr <= sub.critical_lr[:-1]), "the subcritical schedule never exceeds the critical rate"
assert all(sub.spread[-1] <= run.spread[-1] + 1e-12 for run in runs.values()), \
    "the subcritical warm-up leaves the smallest spread"
assert np.all(np.diff(sub.spread) <= 1e-12), "under the subcritical warm-up the spread never grows"
assert 0 < done <= n_layers - 1 and pure.spread[n_layers - 1] < 1e-9, "L ELRs agree after at most L − 1 steps"
if lr_max > dynamics.critical_lr(dynamics.elr(sigma2_start, c)):
    assert runs["constant"].spread[-1] > sub.spread[-1], "a super-critical constant rate keeps a larger spread"
print("all claims of this chapter hold")

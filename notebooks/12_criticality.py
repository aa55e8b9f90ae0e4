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
# # Predicting criticality
#
# Part I predicts that training at a constant learning rate lowers the
# spread of ELRs as long as $\lambda$ stays below the critical rate
# $\kappa_{\ell h}$, and lowers it most near $\kappa_{\ell h}$
# ({doc}`05_large_learning_rates`). Both rates can be computed from the ELRs
# measured at initialisation. The paper's Figure 4 {cite}`mehmeti2024weight`
# tests this: it trains a deep network without shortcuts for one pass over
# the data at many constant learning rates, with random-walk and with real
# gradients, and compares the spread before and after. We do the same at
# the quick profile's scale, and set the model's own prediction, computed
# from the measured initial norms, beside the measurements.
#
# ELRs here are whole-layer values $\lVert\nabla W\rVert_F/\lVert W\rVert_F$,
# the quantity the model describes.
#
# ## The claims, stated before the runs
#
# From the paper's Figure 4 and Section 4.2:
#
# 1. with random-walk gradients, one pass at a rate below
#    $\kappa_{\ell h}(0)$ lowers the spread;
# 2. with real gradients too;
# 3. with random-walk gradients the model predicts the spread after one pass
#    within 10%, up to $\lambda = 1$ (the paper notes the walk's break above
#    it);
# 4. with random-walk gradients, the spread after one pass is smallest
#    within one grid step of $\kappa_{\ell h}(0)$, over the whole grid;
# 5. with real gradients, the best rate is smaller than with the random walk;
# 6. at the largest rate, real training ends with more than twice the
#    smallest spread of the sweep: the curve is U-shaped;
# 7. the subcritical rate $\kappa_{hh'}(0)$ and every rate up to one grid
#    step above it lower the spread with real gradients.
#
# Each is a statistic over `n_seeds` seeds with a 95 % bootstrap interval
# ({mod}`elr.evidence`), taken seed by seed; the rates $\kappa$ are each
# seed's own.
#
# We stated all but claim 4 as holding (claim 4 we expected to fail, for
# the reason given below the figure). The robustness build with base seed
# 1000 found claim 3 borderline: its statistic, the worst relative error
# over the rates up to 1 in each seed, averaged about 0.06 to 0.08, and
# its interval cleared the 10 % with seeds 0 to 4 but not with seeds 1000
# to 1004. So we state it as "not fails": the model's 10 % is consistent
# with the measurements but not established at this scale.

# %% tags=["parameters"]
depth: int = 56  # depth of the NoShort CIFAR ResNet (6n+2); the paper uses ResNet110 {>= 8, %6==2}
dataset: str = "digits"  # digits (offline, quick), cifar10 or cifar100 {in digits|cifar10|cifar100}
data_root: str = "data"  # where CIFAR lives
batch_size: int = 128  # examples per step; one pass over the data is len(train set) // batch_size steps {>= 2}
lrs: list[float] = [0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0, 3.16, 10.0]  # constant learning rates, a geometric grid {> 0}
n_seeds: int = 5  # runs per point, seeds seed ... seed + n_seeds - 1 (the paper: 10) {>= 2}
seed: int = 0  # base seed of initialisation and data order {>= 0}
check_claims: bool = True  # assert the claims (the smoke profile only checks that the chapter runs)

# %%
import numpy as np
from IPython.display import Markdown, display

from elr import data, evidence, measure, plots, train

plots.setup()
epoch = max(len(data.load(dataset, True, data_root)) // batch_size, 1)
# Logged at every step, as chapter 10 logs (logging only reads, so training is the same): on digits one pass is
# 10 steps, chapter 10's horizon, so a run here at a rate chapter 10 also runs is the same configuration, and the
# sweep reuses chapter 10's finished run instead of training it again.
configs = {(t, lr): train.TrainConfig(model=f"resnet{depth}", shortcut=False, dataset=dataset, data_root=data_root,
                                      batch_size=batch_size, steps=epoch + 1, lr=lr, transform=t, log_every=1,
                                      eval_batches=1, channels_last=True)
           for t in ("random_walk", "none") for lr in lrs}
runs = train.sweep_seeds(configs, seed, n_seeds)
setting = (f"ResNet{depth} NoShort on {dataset}, one pass = {epoch} steps of batch {batch_size}, "
           f"seeds {seed}–{seed + n_seeds - 1}")
plots.glue("ch12-setting", setting)
display(Markdown(f"{len(configs) * n_seeds} runs: {setting}."))


# %%
res = {t: np.array([[measure.one_pass_spread(run.records, lr, epoch, run.status == "completed")
                     for lr, run in ((lr, runs[(t, lr)][i]) for lr in lrs)] for i in range(n_seeds)])
       for t in ("random_walk", "none")}  # (seeds, rates, 5): S_rel(0), S_rel after, model, κ_ℓh(0), κ_hh'(0)
s0, s1, model1 = ({t: res[t][..., j] for t in res} for j in range(3))
k_crit, k_sub = res["none"][:, 0, 3], res["none"][:, 0, 4]  # each seed's rates at initialisation
diverged = {t: int(np.isnan(s1[t]).sum()) for t in s1}

fig, axes = plots.plt.subplots(1, 2, figsize=(9.0, 3.2), sharey=True)
for ax, t, title in zip(axes, ("random_walk", "none"), ("random-walk gradients", "real gradients")):
    plots.seed_band(lrs, s1[t], ax=ax, label="after one pass", color="C0")
    plots.seed_band(lrs, s0[t], ax=ax, label="at initialisation", color="C7", style=":", show_seeds=False)
    plots.seed_band(lrs, model1[t], ax=ax, label="model, after one pass", color="k", style="--", show_seeds=False)
    ax.axvline(np.mean(k_crit), color="C3", lw=1.2, label=r"critical $\kappa_{\ell h}(0)$")
    ax.axvline(np.mean(k_sub), color="C2", lw=1.2, label=r"subcritical $\kappa_{hh'}(0)$")
    ax.set(xscale="log", xlabel=r"learning rate $\lambda$", title=title)
axes[0].set_ylabel("$S_{rel}$")
axes[0].legend(fontsize=7)
plots.glue("ch12-criticality", fig)
cell = lambda v: f"diverged in {int(np.isnan(v).sum())} seeds" if np.isnan(v).any() else evidence.cell(evidence.mean_interval(v))  # noqa: E731
display(Markdown(
    f"κ_ℓh(0) = {evidence.cell(evidence.mean_interval(k_crit), digits=3)}, κ_hh'(0) = "
    f"{evidence.cell(evidence.mean_interval(k_sub), digits=3)} (mean and interval over seeds). Diverged runs: "
    f"{diverged['random_walk']} random-walk, {diverged['none']} real.\n\n"
    "| λ | random walk: S_rel at 0 | after one pass | model | real: S_rel at 0 | after one pass |\n|---|---|---|---|---|---|\n"
    + "\n".join(f"| {lr:g} | {cell(s0['random_walk'][:, i])} | {cell(s1['random_walk'][:, i])} | "
                f"{cell(model1['random_walk'][:, i])} | {cell(s0['none'][:, i])} | {cell(s1['none'][:, i])} |"
                for i, lr in enumerate(lrs))))

# %% [markdown]
# ```{glue:figure} ch12-criticality
# :name: fig-ch12-criticality
#
# Relative ELR spread at initialisation (dotted) and after one pass over the data (solid: mean over seeds,
# band from the smallest to the largest seed, dots for each seed), against the constant learning rate,
# with the discrete model's prediction from the measured initial norms (dashed) and the mean critical and
# subcritical rates at initialisation. Measured: {glue:text}`ch12-setting`. The paper's Figure 4 shows
# ResNet110 NoShort on CIFAR-10 with 10 runs per point.
# ```
#
# Below the critical rate one pass lowers the spread, with random-walk and
# with real gradients, as the paper reports (at the smallest rates the change
# is small, for the model too). With the random walk the measurement follows
# the model up to $\lambda \approx 1$, including the fall towards
# $\kappa_{\ell h}(0)$. Above $\lambda \approx 1$ our random walk keeps
# lowering the spread where the model says it should rise again, so the
# paper's claim that the walk's spread is smallest near $\kappa_{\ell h}(0)$
# fails here over the whole grid; the gradient norms have left the model
# there ({doc}`10_short_term` shows the measured gradient far above the
# prediction beyond $\lambda = 1$). The paper notes the same break of the
# random walk above $\lambda \approx 1$ and puts it down to numerical
# issues; we have not found its cause.
#
# With real gradients the curve is shifted to smaller rates, as in the
# paper: the base gradients shrink as the network learns, the ELRs drop
# faster than the model predicts, and the best rate falls below
# $\kappa_{\ell h}(0)$. At the largest rates real training ends with a
# spread far above the smallest of the sweep: the curve is U-shaped. Whether
# it also ends above the spread it started with, as the paper's Figure 4
# shows, is not settled at this scale: the sign of that change varied from
# one execution to the next before this chapter had seeds, so we do not
# state it. The paper's conservative choice, the subcritical rate, lies
# well inside the region where every run lowers the spread.
#
# ## Checks

# %%
grid_step = lrs[1] / lrs[0]
lam = np.array(lrs)
below = {t: (lam[None, :] < k_crit[:, None]) & (s0[t] - model1[t] > 0.05) for t in s0}  # a visible predicted change
upto1 = lam <= 1.0
best = {t: lam[np.nanargmin(s1[t], axis=1)] for t in s1}
sub_ok = lam[None, :] <= k_sub[:, None] * grid_step
claims = [
    evidence.Claim.level("1. random walk: one pass below κ_ℓh(0) lowers the spread", evidence.row_means(s0["random_walk"] - s1["random_walk"], below["random_walk"]), 0.0,
                         statistic="mean fall of S_rel"),
    evidence.Claim.level("2. real gradients: the same", evidence.row_means(s0["none"] - s1["none"], below["none"]), 0.0, statistic="mean fall of S_rel"),
    evidence.Claim.level("3. random walk, λ ≤ 1: the model predicts the spread after one pass within 10%",
                         np.max(np.abs(s1["random_walk"][:, upto1] / model1["random_walk"][:, upto1] - 1), axis=1),
                         0.10, "<", statistic="mean of the worst relative error", expect="not fails"),
    evidence.Claim.level("4. random walk: the smallest spread lies within one grid step of κ_ℓh(0)",
                         np.abs(np.log(best["random_walk"] / k_crit)), np.log(grid_step) * 1.01, "<",
                         statistic="mean |ln(best λ / κ_ℓh(0))|", expect="fails"),
    evidence.Claim.compare("5. real gradients: the best rate is smaller than the random walk's",
                           np.log(best["random_walk"]), np.log(best["none"])),
    evidence.Claim.level("6. real, largest rate: more than twice the smallest spread of the sweep (U shape)",
                         np.log(np.nan_to_num(s1["none"][:, -1], nan=np.inf) / np.nanmin(s1["none"], axis=1)),
                         np.log(2.0), statistic="mean ln(S_rel at the largest rate / smallest S_rel)"),
    evidence.Claim.level("7. real: every rate up to one grid step above κ_hh'(0) lowers the spread",
                         np.array([np.min((s0["none"] - s1["none"])[i, sub_ok[i]]) for i in range(n_seeds)]), 0.0,
                         statistic="mean of the smallest fall of S_rel"),
]
display(Markdown(evidence.table(claims)))
if check_claims:
    evidence.check(claims)
print("all claims of this chapter have their stated verdicts" if check_claims else "claims not checked at this profile")

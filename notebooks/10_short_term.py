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
# # Validating the model, short term
#
# The discrete model predicts a layer's weight and gradient norm after any
# number of steps from two numbers measured at initialisation: $\sigma^2(0)
# = \lVert W\rVert^2$ and the base gradient $c = \lVert W\rVert\lVert\nabla
# W\rVert$. Its one assumption is that $c$ stays constant. This chapter
# repeats the paper's Figure 2 {cite}`mehmeti2024weight`: train a network
# without shortcuts for a few steps at a constant learning rate, and compare
# the lowest layer's norms with the prediction, once with *random-walk*
# gradients (the real gradient replaced by a random direction orthogonal to
# $W$ with the same norm, which removes learning but keeps the
# normalisation's dynamics) and once with real gradients.
#
# ## The claims, stated before the runs
#
# From the paper's Figure 2 and Section 4.2, for learning rates up to
# $\lambda = 1$:
#
# 1. with random-walk gradients the model predicts the weight norm: within
#    10% at every such rate;
# 2. ... and the gradient norm within a factor 1.5;
# 3. with real gradients the measured gradient norm falls below the
#    prediction (learning lowers the base gradient $c$, which the model holds
#    constant);
# 4. ... and the gap is larger at $\lambda = 0.1$ than at $\lambda = 0.001$:
#    the model's error grows with the rate, which is why it places the
#    critical rate too high ({doc}`12_criticality`).
#
# Each is a statistic over `n_seeds` seeds with a 95 % bootstrap interval
# ({mod}`elr.evidence`): claims 1 to 3 take, per seed, the worst rate up to
# $\lambda = 1$; claim 4 compares the two rates seed by seed.
#
# We expected all four to hold. With five seeds (0 to 4) claims 1 and 2
# came out inconclusive: the typical error is within the bounds, but in
# some seeds the worst rate misses them (the weight norm by up to about 20%
# near $\lambda = 0.03$). The model starts from $c$ measured on *one*
# mini-batch at step 0, and a single batch's gradient norm scatters by tens
# of percent around the average the model assumes; the random walk then
# grows the norm with each step's actual gradient. We then stated claims 1
# and 2 as "not holds" on ten seeds. The robustness build with base seed
# 1000 put the statistic of claim 1 at 0.10 [0.07, 0.13], right on its
# threshold, and the verdict of both claims can fall either way with the
# seeds drawn. So we state them as "not fails": the measurements are
# consistent with the paper's bounds but do not establish them at this
# scale. The bounds themselves stay as the paper's figure suggests them.
#
# The quick profile runs six seeds per rate. It ran ten while claims 1
# and 2 were being settled; to fit the book's time budget we went to six
# after checking, on runs with base seeds 0, 1000 and 2000, that claims 3
# and 4 hold with six seeds in each (the largest upper end of claim 3's
# interval was −0.21) and that claims 1 and 2 stay "not fails".

# %% tags=["parameters"]
depth: int = 56  # depth of the NoShort CIFAR ResNet (6n+2); the paper uses ResNet56 {>= 8, %6==2}
dataset: str = "digits"  # digits (offline, quick), cifar10 or cifar100 {in digits|cifar10|cifar100}
data_root: str = "data"  # where CIFAR lives
steps: int = 10  # SGD steps before the comparison (the paper: 10) {>= 2}
batch_size: int = 128  # examples per step {>= 2}
lrs: list[float] = [0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0]  # constant learning rates; the claims use those <= 1 (paper profile: up to 10) {> 0}
n_seeds: int = 6  # runs per rate, seeds seed ... seed + n_seeds - 1 {>= 2}
seed: int = 0  # base seed of initialisation and data order {>= 0}
check_claims: bool = True  # assert the claims (the smoke profile only checks that the chapter runs)

# %%
import numpy as np
from IPython.display import Markdown, display

from elr import evidence, measure, plots, train

plots.setup()
configs = {(transform, lr): train.TrainConfig(model=f"resnet{depth}", shortcut=False, dataset=dataset,
                                              data_root=data_root, batch_size=batch_size, steps=steps + 1, lr=lr,
                                              transform=transform, log_every=1, eval_batches=1, channels_last=True)
           for transform in ("random_walk", "none") for lr in lrs}
runs = train.sweep_seeds(configs, seed, n_seeds)
setting = f"ResNet{depth} NoShort on {dataset}, {steps} steps of batch {batch_size}, seeds {seed}–{seed + n_seeds - 1}"
plots.glue("ch10-setting", setting)
plots.glue("ch10-steps", f"{steps}")
display(Markdown(f"{len(configs) * n_seeds} runs: {setting}."))

# %% [markdown]
# For each run we read $\sigma^2(0)$ and $c$ of the lowest convolution at
# step 0, iterate the discrete model for the same number of steps, and
# compare the predicted $\lVert W\rVert$ and $\lVert \nabla W\rVert =
# c/\lVert W\rVert$ with the measurement at step {glue:text}`ch10-steps`.
# The gradient of one mini-batch scatters around the model's expectation
# ($c$ is an average over batches), so the gradient's ratio is the
# geometric mean of measured over predicted over the second half of the
# steps, where the model's prediction is made step by step. A diverged run
# has no ratio; it is shown and counted, never dropped.


# %%
r = {k: np.array([measure.lowest_layer_ratios(run.records, k[1], steps) if run.status == "completed"
                  else (np.nan, np.nan) for run in rs]) for k, rs in runs.items()}  # (seeds, 2) per case
w_ratio = {t: np.array([r[(t, lr)][:, 0] for lr in lrs]).T for t in ("random_walk", "none")}  # (seeds, λ)
g_ratio = {t: np.array([r[(t, lr)][:, 1] for lr in lrs]).T for t in ("random_walk", "none")}
diverged = {t: [lr for i, lr in enumerate(lrs) if np.isnan(w_ratio[t][:, i]).any()] for t in w_ratio}

fig, axes = plots.plt.subplots(1, 2, figsize=(9.0, 3.2), sharey=True)
for ax, t, title in zip(axes, ("random_walk", "none"), ("random-walk gradients", "real gradients")):
    plots.seed_band(lrs, w_ratio[t], ax=ax, label="‖W‖ measured / predicted", color="C0")
    plots.seed_band(lrs, g_ratio[t], ax=ax, label="‖∇W‖ measured / predicted", color="C3")
    for lr in diverged[t]:
        ax.axvline(lr, color="k", ls=":", lw=1)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel=r"learning rate $\lambda$", title=title)
axes[0].set_ylabel(f"lowest layer, after {steps} steps")
axes[0].legend(fontsize=7)
plots.glue("ch10-short-term", fig)
cell = lambda v: "diverged in some seeds" if np.isnan(v).any() else evidence.cell(evidence.mean_interval(v), digits=3)  # noqa: E731
display(Markdown("| λ | random walk: ‖W‖ ratio | ‖∇W‖ ratio | real: ‖W‖ ratio | ‖∇W‖ ratio |\n|---|---|---|---|---|\n"
                 + "\n".join(f"| {lr:g} | " + " | ".join(cell(m[t][:, i]) for t in ("random_walk", "none")
                                                          for m in (w_ratio, g_ratio)) + " |"
                              for i, lr in enumerate(lrs))))

# %% [markdown]
# ```{glue:figure} ch10-short-term
# :name: fig-ch10-short-term
#
# Measured over predicted weight norm (blue) and gradient norm (red) of the lowest scale-invariant layer
# after a few constant-λ steps, against the rate: mean over seeds (line), the range over seeds (band) and
# each seed (dots); dotted vertical lines mark rates at which a seed diverged. The model predicts from the
# norms at initialisation alone. Measured: {glue:text}`ch10-setting`. The paper's Figure 2 shows the same
# experiment on CIFAR-10.
# ```
#
# The table gives the mean and 95 % bootstrap interval over seeds. The
# claims, like the paper's, are about rates up to $\lambda = 1$, and the
# quick profile stops there to keep the book's time; the paper reports that
# above $\lambda \approx 1$ the random walk's prediction becomes "slightly
# inaccurate", which the paper profile's grid (up to $\lambda = 10$) shows.
# With real gradients the weight norm stays close
# to the prediction while the gradient falls below it: the network
# learns, its loss falls and its base gradient shrinks. The model's
# assumption of a constant $c$ is what breaks, not its account of the
# normalisation.
#
# ## Checks

# %%
upto1 = [i for i, lr in enumerate(lrs) if lr <= 1.0]
i_small, i_mid = lrs.index(min(lrs)), int(np.argmin(np.abs(np.log(np.array(lrs) / 0.1))))
claims = [
    evidence.Claim.level("1. random walk, λ ≤ 1: ‖W‖ within 10% of the prediction",
                         np.max(np.abs(w_ratio["random_walk"][:, upto1] - 1), axis=1), 0.10, "<",
                         statistic="mean over seeds of the worst |ratio − 1|", expect="not fails"),
    evidence.Claim.level("2. random walk, λ ≤ 1: ‖∇W‖ within a factor 1.5",
                         np.max(np.abs(np.log(g_ratio["random_walk"][:, upto1])), axis=1), np.log(1.5), "<",
                         statistic="mean of the worst |ln ratio|", expect="not fails"),
    evidence.Claim.level("3. real, λ ≤ 1: ‖∇W‖ below the prediction",
                         np.max(np.log(g_ratio["none"][:, upto1]), axis=1), 0.0, "<",
                         statistic="mean of the largest ln ratio"),
    evidence.Claim.compare(f"4. real: the gap is larger at λ = {lrs[i_mid]:g} than at λ = {lrs[i_small]:g}",
                           np.log(g_ratio["none"][:, i_small]), np.log(g_ratio["none"][:, i_mid])),
]
display(Markdown(evidence.table(claims)))
if check_claims:
    evidence.check(claims)
print("all claims of this chapter have their stated verdicts" if check_claims else "claims not checked at this profile")

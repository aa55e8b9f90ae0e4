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
# ```{glue:md} ch10-verdicts
# :format: myst
# ```
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
# ## The claims
#
# From the paper's Figure 2 and Section 4.2, for learning rates up to
# $\lambda = 1$:
#
# 1. with random-walk gradients the model predicts the weight norm within
#    10 % at every such rate, in every seed;
# 2. ... and the gradient norm within a factor 1.5;
# 3. with real gradients the measured gradient norm falls below the
#    prediction (the paper's explanation, which no claim here tests: learning
#    lowers the base gradient $c$, which the model holds constant);
# 4. ... and the gap is larger at $\lambda \approx 0.1$ than at the
#    smallest rate: the model's error grows with the rate (the paper's
#    reading: which is why it places the critical rate too high,
#    {doc}`12_criticality`);
# 5. (ours) no run at a rate up to $\lambda = 1$ diverges, in any seed.
#
# Each claim is registered, with its statistic, threshold and expected
# verdict, in the book's claims registry before the runs
# ({mod}`elr.claims`). Claims 1 and 2 say "at every rate, in every seed":
# per seed they take the worst rate up to $\lambda = 1$, and the worst seed
# decides them. Claim 3 is a mean over seeds of each seed's largest ratio
# with an interval; claim 4 compares the two rates seed by seed; claim 5
# counts each seed's diverged runs and is decided on the worst seed.
#
# **Diverged runs**, decided before the runs: a run diverges when its loss
# or weights become non-finite, or when its measured norms give no finite,
# positive ratio (at a huge rate the weight norm grows until the gradient
# underflows). A diverged run has no ratio. It is marked in the figure and
# the table, never dropped, and it counts against every claim about its
# rate: the seed's value in that claim is set to the claim's threshold (in
# claim 4 its paired difference is the threshold), so it can never support
# the claim. In claims 1 and 2 (worst seed) that makes the claim fail. In
# claims 3 and 4 (means over seeds) it only pulls the estimate towards the
# threshold and cannot by itself decide them; claim 5 is there so that a
# divergence always fails a claim: a single diverged run at a rate up to
# $\lambda = 1$ fails it.

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
from elr.claims import Chapter

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
# has no ratio (see the rule above).


# %%
with np.errstate(divide="ignore", invalid="ignore"):  # a gradient that underflowed to 0 gives log 0: marked just below
    r = {k: np.array([measure.lowest_layer_ratios(run.records, k[1], steps) if run.status == "completed"
                      else (np.nan, np.nan) for run in rs]) for k, rs in runs.items()}  # (seeds, 2) per case
# the rule above: a run whose ratios are not finite and positive counts as diverged (NaN), like one that stopped
r = {k: np.where(np.isfinite(v).all(axis=1, keepdims=True) & (v > 0).all(axis=1, keepdims=True), v, np.nan)
     for k, v in r.items()}
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
display(Markdown("| λ | random walk: ‖W‖ ratio | ‖∇W‖ ratio | real: ‖W‖ ratio | ‖∇W‖ ratio |\n|---|---|---|---|---|\n"
                 + "\n".join(f"| {lr:g} | " + " | ".join(
                     f"{int(np.isnan(m[t][:, i]).sum())} of {n_seeds} seeds diverged" if np.isnan(m[t][:, i]).any()
                     else evidence.cell(evidence.mean_interval(m[t][:, i]), digits=3)
                     for t in ("random_walk", "none") for m in (w_ratio, g_ratio)) + " |"
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
# The table gives the mean over seeds and its 95 % interval
# ({mod}`elr.evidence`). The claims, like the paper's, are about rates up
# to $\lambda = 1$, and the quick profile stops there to keep the book's
# time; the paper reports that above $\lambda \approx 1$ the random walk's
# prediction becomes "slightly inaccurate", which the paper profile's grid
# (up to $\lambda = 10$) shows.
#
# {glue:text}`ch10-walk-sentence` {glue:text}`ch10-real-sentence`
#
# ## Checks

# %%
upto1 = [i for i, lr in enumerate(lrs) if lr <= 1.0]
i_small, i_mid = lrs.index(min(lrs)), int(np.argmin(np.abs(np.log(np.array(lrs) / 0.1))))
claims = Chapter("10_short_term", seed=seed)
# the rule for diverged runs stated above: a seed with a diverged run at a rate the claim uses gets the threshold
ok = {t: ~np.isnan(w_ratio[t][:, upto1]).any(axis=1) for t in w_ratio}  # per seed: every rate up to 1 completed
limit = {k: claims.entries[k].threshold for k in ("10.walk-weight-norm", "10.walk-grad-norm", "10.real-grad-below")}
with np.errstate(invalid="ignore"):  # NaN of a diverged run, replaced by the threshold just below
    claims.worst("10.walk-weight-norm", np.where(
        ok["random_walk"], np.max(np.abs(w_ratio["random_walk"][:, upto1] - 1), axis=1), limit["10.walk-weight-norm"]))
    claims.worst("10.walk-grad-norm", np.where(
        ok["random_walk"], np.max(np.abs(np.log(g_ratio["random_walk"][:, upto1])), axis=1), limit["10.walk-grad-norm"]))
    claims.mean("10.real-grad-below", np.where(ok["none"], np.max(np.log(g_ratio["none"][:, upto1]), axis=1),
                                               limit["10.real-grad-below"]))
    pair = ~np.isnan(g_ratio["none"][:, [i_small, i_mid]]).any(axis=1)  # per seed: both rates completed
    claims.paired("10.real-gap-grows", np.where(pair, np.log(g_ratio["none"][:, i_small]),
                                                claims.entries["10.real-gap-grows"].threshold),
                  np.where(pair, np.log(g_ratio["none"][:, i_mid]), 0.0),
                  instance=f"λ = {lrs[i_mid]:g} against λ = {lrs[i_small]:g}")
# claim 5: per seed, how many of its runs at the rates up to 1 (both kinds of gradient) diverged; the worst seed decides
claims.worst("10.no-divergence", np.sum([np.isnan(w_ratio[t][:, upto1]).sum(axis=1) for t in w_ratio], axis=0))
display(Markdown(claims.table()))

# the sentences of the discussion, built from the verdicts so that they read right whichever way a claim falls
walk = [claims.get(k) for k in ("10.walk-weight-norm", "10.walk-grad-norm")]
plots.glue("ch10-walk-sentence", (
    "With random-walk gradients the model predicts the lowest layer's norms within the paper's bounds in every "
    "seed, at every rate up to λ = 1." if all(c.verdict == "holds" for c in walk) else
    f"With random-walk gradients the worst seed's error over the rates up to λ = 1 is "
    f"{100 * walk[0].interval.estimate:.0f} % for the weight norm (bound: 10 %) and a factor "
    f"{np.exp(walk[1].interval.estimate):.2f} for the gradient norm (bound: 1.5), so the paper's bounds do not hold "
    "in every seed here. One possible cause, which no claim here tests, is that the model starts from c measured "
    "on one mini-batch at step 0."))
real = claims.get("10.real-grad-below")
gap = claims.get("10.real-gap-grows", f"λ = {lrs[i_mid]:g} against λ = {lrs[i_small]:g}")
plots.glue("ch10-real-sentence", (
    ("With real gradients the gradient falls below the prediction, as the paper's explanation (learning shrinks "
     "the base gradient c, which the model holds constant) would have it; no claim here tests that cause. "
     if real.verdict == "holds" else
     "That the gradient falls below the prediction with real gradients is "
     f"{ {'fails': 'contradicted', 'inconclusive': 'undecided'}[real.verdict]} here "
     f"(mean largest ln ratio {real.interval.estimate:+.2f}). ")
    + {"holds": "The gap grows with the rate (claim 4).",
       "fails": "The gap does not grow with the rate here (claim 4 fails).",
       "inconclusive": "Whether the gap grows with the rate is undecided with these seeds (claim 4)."}[gap.verdict]
    + {"holds": " No run at a rate up to λ = 1 diverged (claim 5).",
       "fails": " A run at a rate up to λ = 1 diverged (claim 5 fails), and it counts against claims 1 to 4 as stated "
                "above."}.get(claims.get("10.no-divergence").verdict, "")))
plots.glue("ch10-verdicts", Markdown(claims.summary()))
claims.finish(check_claims)

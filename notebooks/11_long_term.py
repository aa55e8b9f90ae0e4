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
# # Validating the model, long term
#
# Over many steps the model predicts every layer's ELR from its norms at
# initialisation alone. The paper's Figures 3 and 7 {cite}`mehmeti2024weight`
# compare that prediction with training runs of a network without
# shortcuts, at a small and a large learning rate, with random-walk and with
# real gradients, and with BatchNorm's affine parameters off (as everywhere
# in the paper) and on. We repeat the comparison at the quick profile's
# scale: many fewer steps than the paper's 3,000 epochs, on the offline
# digits data, with `n_seeds` seeds per case.
#
# ## The claims, stated before the runs
#
# The paper's Figures 3 and 7 make these claims, and we add one that its
# text leaves open:
#
# 1. with random-walk gradients at a small rate, the measured spread follows
#    the predicted one (we take "follows" as: the largest gap over the run
#    between measured and predicted $S_{rel}$ is below 0.15);
# 2. ... and the ELRs converge: the spread at the end is below the spread at
#    initialisation;
# 3. with real gradients at $\lambda = 1$, the lowest layers' ELRs fall
#    below the prediction by more than half;
# 4. ... and the lowest layer, which starts with a larger ELR than the
#    highest, ends with a smaller one (a flip of their order);
# 5. ... which the model does not predict;
# 6. with BatchNorm's affine parameters on, even the random walk at
#    $\lambda = 1$ leaves the lowest layers further below the prediction
#    than without them (Figure 7);
# 7. (ours) how much of the flip of claim 4 is learning? The random walk at
#    $\lambda = 1$ has no learning. We state that (a) it too removes the
#    order at initialisation, ending with the lowest and highest ELR within
#    a factor 3 of each other, and (b) real training pushes the lowest
#    layer more than a factor 2 further below the highest than the random
#    walk does. We first stated (a) as "the random walk flips the order
#    too"; in the pilot (seeds 0 to 4) its ratio ended at parity within the
#    interval, neither above nor below, so we restated it as (a) and added
#    (b) before the robustness builds tested both on other seeds.
#
# Every claim is a statistic over seeds with a 95 % bootstrap interval
# ({mod}`elr.evidence`); ratios are compared on a log scale.
#
# We stated every claim as holding. The robustness build with base seed
# 1000 (seeds 1000 to 1004) confirmed them all, but two only narrowly:
# claim 1's interval ended at 0.143 against its threshold of 0.15, and
# claim 5's began at 0.03 against 0 (the model predicts a ratio near
# $e^{0.27} \approx 1.3$, close to parity, so a seed can bring it near 1).
# Since the verdict of a claim that close to its threshold depends on the
# seeds drawn, we state those two as "not fails" (consistent with the
# measurements, not established in every draw of five seeds).
#
# **The setting.** Those builds ran 200 steps per run. To bring the book
# within its time budget we then shortened the runs, first to 120 steps and
# later to 100, without changing any claim. The rate is constant, so a
# 100-step run is the first 100 steps of the 200-step run with the same
# seed, and we could check the change on the recorded runs before making
# it: with seeds 0 to 4 and 1000 to 1004, after 100, 120 and 150 steps,
# every claim had the verdict it has after 200 (the tightest, claim 7a with
# seeds 1000 to 1004, ended below 0.56 against its threshold ln 3 ≈ 1.10
# after 120 steps). The
# quick profile trains the paper's ResNet56, because with ResNet20 real
# training at $\lambda = 1$ flipped the order in none of five pilot seeds.

# %% tags=["parameters"]
model: str = "resnet56"  # network without shortcuts: resnet<6n+2> (NoShort) or bnrelu<depth>; the paper: resnet56
dataset: str = "digits"  # digits (offline, quick), cifar10 or cifar100 {in digits|cifar10|cifar100}
data_root: str = "data"  # where CIFAR lives
steps: int = 100  # SGD steps per run {>= 20}
log_every: int = 10  # steps between ELR measurements {>= 1}
batch_size: int = 128  # examples per step {>= 2}
lr_small: float = 0.05  # the small learning rate (below the critical rate at initialisation) {> 0}
lr_large: float = 1.0  # the large learning rate (the paper's λ = 1) {> 0}
n_seeds: int = 5  # runs per case, seeds seed ... seed + n_seeds - 1 {>= 2}
seed: int = 0  # base seed of initialisation and data order {>= 0}
check_claims: bool = True  # assert the claims (the smoke profile only checks that the chapter runs)

# %%
import numpy as np
from IPython.display import Markdown, display

from elr import evidence, measure, plots, train

plots.setup()
cases = [(False, "random_walk", lr_small), (False, "random_walk", lr_large), (False, "none", lr_small),
         (False, "none", lr_large), (True, "random_walk", lr_large)]
configs = {case: train.TrainConfig(model=model, shortcut=False, bn_affine=case[0], dataset=dataset, data_root=data_root,
                                   batch_size=batch_size, steps=steps, lr=case[2], transform=case[1],
                                   log_every=log_every, eval_batches=1, channels_last=True)
           for case in cases}
runs = train.sweep_seeds(configs, seed, n_seeds)
compare = {case: [measure.compare_with_model(r.records, case[2], steps) for r in rs] for case, rs in runs.items()}
stat = {name: evidence.per_seed(compare, lambda c, name=name: c[name])
        for name in ("gap", "low_ratio", "order_init", "order_meas", "order_pred")}
name = {(a, t, lr): f"{'random walk' if t == 'random_walk' else 'real'}, λ = {lr:g}" + (", affine BN" if a else "")
        for a, t, lr in cases}
setting = f"{model} without shortcuts on {dataset}, {steps} steps of batch {batch_size}, seeds {seed}–{seed + n_seeds - 1}"
plots.glue("ch11-setting", setting)
plots.glue("ch11-seed", f"{seed}")
display(Markdown(f"{len(cases) * n_seeds} runs: {setting}."))

# %% [markdown]
# For each run the model starts from the measured $\sigma_i^2(0)$ and $c_i$
# of every layer and runs the discrete model (Eq. 5) at the run's constant
# learning rate (`elr.measure.compare_with_model`); the measured ELR is
# $\lVert\nabla W_i\rVert/\lVert W_i\rVert$ over the whole layer. The
# figure shows the runs of the base seed; the table and the checks use all
# seeds.

# %%
fig, axes = plots.plt.subplots(2, 3, figsize=(10, 5.5), sharex=True, squeeze=False)
axes[1, 2].set_visible(False)
for ax, case in zip(axes.flat, cases):
    r = compare[case][0]
    plots.layer_paths(r["steps"] + 1, r["measured"], ax=ax, logx=True, lw=0.8, ylabel="ELR" if ax in axes[:, 0] else "")
    plots.layer_paths(r["steps"] + 1, r["predicted"], ax=ax, logx=True, style="k--", lw=0.4, alpha=0.5)
    ax.set_title(name[case], fontsize=8)
for ax in axes[-1]:
    ax.set_xlabel("step + 1")
plots.add_depth_colorbar(fig, axes[0, -1], compare[cases[0]][0]["measured"].shape[1])
plots.glue("ch11-long-term", fig)

fig, axes = plots.plt.subplots(1, 2, figsize=(9.0, 3.0))
for ax, case in zip(axes, [cases[0], cases[3]]):
    steps_logged = compare[case][0]["steps"] + 1
    plots.seed_band(steps_logged, np.array([c["s_meas"] for c in compare[case]]), ax=ax, label="measured", style="-")
    plots.seed_band(steps_logged, np.array([c["s_pred"] for c in compare[case]]), ax=ax, label="model", style="--",
                    color="k", show_seeds=False)
    ax.set(xscale="log", xlabel="step + 1", ylabel="$S_{rel}$", title=name[case])
axes[0].legend()
plots.glue("ch11-spread", fig)

cis = {k: evidence.intervals(v) for k, v in stat.items()}
display(Markdown(
    "| run | largest gap in S_rel | lowest layers' ELR, measured/predicted | E_lowest/E_highest at 0 | at the end, "
    "measured | predicted |\n|---|---|---|---|---|---|\n" + "\n".join(
        f"| {name[c]} | {evidence.cell(cis['gap'][c])} | {evidence.cell(cis['low_ratio'][c], digits=3)} | "
        f"{evidence.cell(cis['order_init'][c])} | {evidence.cell(cis['order_meas'][c], digits=3)} | "
        f"{evidence.cell(cis['order_pred'][c])} |" for c in cases)))

# %% [markdown]
# ```{glue:figure} ch11-long-term
# :name: fig-ch11-long-term
#
# Per-layer ELRs over training (coloured, blue = lowest layer) against the discrete model's prediction
# from the norms at initialisation (dashed), for base seed {glue:text}`ch11-seed`. The first four panels:
# BatchNorm without affine parameters (the paper's Figure 3); the last: with affine parameters and
# random-walk gradients (the paper's Figure 7). Measured: {glue:text}`ch11-setting`.
# ```
#
# ```{glue:figure} ch11-spread
# :name: fig-ch11-spread
#
# Relative spread over training, measured (mean over seeds, band from the smallest to the largest seed,
# dots for each seed) and predicted by the model (dashed), for the random walk at the small rate and
# real training at the large one. Measured: {glue:text}`ch11-setting`.
# ```
#
# The table gives the mean over seeds and its 95 % bootstrap interval.
#
# What matches the paper, in every seed: with random-walk gradients at the
# small rate the measured spread follows the predicted one and the ELRs
# close in on each other; with real gradients at $\lambda = 1$ the lowest
# layers' ELRs fall far below the prediction, and the lowest layer ends
# *below* the highest, the reverse of the order at initialisation, which
# the model does not predict. In the paper's words, the rate the model calls
# critical is super-critical in real training. With BatchNorm's affine
# parameters on, even the random walk at $\lambda = 1$ leaves the lowest
# layers well below the prediction (the paper's Appendix C.3 attributes
# this to the affine parameters moving the ReLUs away from their point of
# maximum curvature).
#
# How much of the flip is learning? The random walk at $\lambda = 1$ also
# wipes out the initial order, from a ratio of {glue:text}`ch11-order0` to
# {glue:text}`ch11-walk-end` (geometric means over seeds),
# so the collapse of the order is the normalisation's own dynamics at a
# large rate, and the model predicts most of it. What the random walk does
# not do is push the lowest layer far *below* the highest: that part
# (claim 7b) comes with learning, which shrinks the lowest layers' base
# gradients. The same happens at the small rate: real training leaves the
# lowest layers' ELRs at {glue:text}`ch11-real-small-low` of the prediction
# (mean over seeds) and the spread far
# from the model's, while the random walk at that rate follows the model.
# The model's error with real gradients is the constant $c$ it assumes
# ({doc}`10_short_term`), not its account of the normalisation.
#
# ## Checks

# %%
log = {k: {c: np.log(v) for c, v in d.items()} for k, d in stat.items() if k != "gap"}
walk_s, walk_l = (False, "random_walk", lr_small), (False, "random_walk", lr_large)
real_l, affine_l = (False, "none", lr_large), (True, "random_walk", lr_large)
s0 = evidence.per_seed(compare, lambda c: c["s_meas"][0])
s_end = evidence.per_seed(compare, lambda c: c["s_meas"][-1])
claims = [
    evidence.Claim.level("1. random walk, small λ: the spread follows the prediction (largest gap < 0.15)",
                         stat["gap"][walk_s], 0.15, "<", statistic="mean largest gap", expect="not fails"),
    evidence.Claim.compare("2. random walk, small λ: the ELRs converge (S_rel at 0 minus at the end)",
                           s0[walk_s], s_end[walk_s]),
    evidence.Claim.level("3. real, λ = 1: the lowest layers fall below half the prediction",
                         log["low_ratio"][real_l], np.log(0.5), "<", statistic="mean ln(measured/predicted)"),
    evidence.Claim.level("4a. real, λ = 1: the lowest layer starts above the highest",
                         log["order_init"][real_l], 0.0, ">", statistic="mean ln(E_low/E_high) at 0"),
    evidence.Claim.level("4b. ... and ends below it", log["order_meas"][real_l], 0.0, "<",
                         statistic="mean ln(E_low/E_high) at the end"),
    evidence.Claim.level("5. the model predicts no flip", log["order_pred"][real_l], 0.0, ">",
                         statistic="mean predicted ln(E_low/E_high)", expect="not fails"),
    evidence.Claim.compare("6. affine BN: the random walk's lowest layers fall further below the prediction",
                           log["low_ratio"][walk_l], log["low_ratio"][affine_l]),
    evidence.Claim.level("7a. random walk, λ = 1: the order at initialisation is gone (within a factor 3 of parity)",
                         np.abs(log["order_meas"][walk_l]), np.log(3.0), "<",
                         statistic="mean |ln(E_low/E_high)| at the end"),
    evidence.Claim.compare("7b. real training pushes the lowest layer more than twice as far below the highest",
                           log["order_meas"][walk_l], log["order_meas"][real_l], threshold=np.log(2.0)),
]
display(Markdown(evidence.table(claims)))
real_s = (False, "none", lr_small)
plots.glue("ch11-order0", f"{np.exp(np.mean(log['order_init'][walk_l])):.0f}")
plots.glue("ch11-walk-end", f"{np.exp(np.mean(log['order_meas'][walk_l])):.2g}")
plots.glue("ch11-real-small-low", f"{np.mean(stat['low_ratio'][real_s]):.1%}")
if check_claims:
    evidence.check(claims)
print("all claims of this chapter have their stated verdicts" if check_claims else "claims not checked at this profile")

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
# # ELR spread and trainability
#
# Does the spread of ELRs matter for training? The paper's Section 4.3
# {cite}`mehmeti2024weight` trains networks with and without shortcuts under
# several protocols and compares accuracy with the spread averaged over the
# run. Its Table 1 (ResNet101 on ImageNet, 50 epochs, peak rate 0.4 and a
# cosine cool-down) is the cleanest statement, and this chapter repeats it:
#
# - **none**: the cosine schedule from the peak rate, no warm-up;
# - **OneCycle**: a linear warm-up over the first 10% of the steps from a
#   twentieth of the peak rate, then the cosine (the paper's Table 3 settings);
# - **subcritical**: the hyper-parameter-free warm-up of Cor. 3.10
#   (`elr.schedules.SubcriticalWarmup`), which sets $\lambda = \kappa_{hh'}$
#   from the live ELRs until the spread is small or $\kappa_{hh'}$ reaches
#   the peak rate, then the cosine;
# - **constrained**: every layer's gradient rescaled so that its ELR equals a
#   goal $E_{goal}$ (Eq. 33, `elr.gradients.ConstrainELR`), with the cosine
#   or with OneCycle.
#
# ## The claims, stated before the runs
#
# From the paper's Table 1 and Section 4.3, for the network without
# shortcuts (NoShort) unless said otherwise:
#
# 1. without warm-up, NoShort's ELRs spread more than those of the same
#    network with shortcuts (Short);
# 2. the subcritical warm-up lowers the spread (Table 1: 3.96 → 0.70);
# 3. OneCycle's warm-up lowers it too (3.96 → 1.96), but
# 4. less than the subcritical warm-up does;
# 5. the constraint lowers it further still;
# 6. the subcritical warm-up raises accuracy (8.50% → 41.83%),
# 7. and more than OneCycle does (22.82%);
# 8. the constraint raises accuracy (47.99%);
# 9. Short trains far better than NoShort without warm-up (72.85% against 8.50%);
# 10. the subcritical warm-up of NoShort takes a handful of steps, and
#     Short, whose initial ELRs already lie close together, needs none at the
#     peak rate (so its accuracy cannot change: 73.06% against 72.85%).
#
# Each claim becomes a statistic over `n_seeds` seeds: runs with the same
# seed share initialisation and data order, so protocols are compared
# *paired*, seed by seed, with a 95 % bootstrap interval of the mean
# difference ({mod}`elr.evidence`). A claim holds when the whole interval
# clears zero in the stated direction. The column "stated" of the claims
# table at the end says what we expect at this chapter's scale; where that
# differs from the paper, the text below says why. We set those
# expectations from a pilot with seeds 0 to 4 on this machine; the
# robustness builds of `make robust` then test them on seeds 1000 to 1004,
# with another number of threads and in a process pool (the
# {doc}`reproducibility page <../reproducibility>` records the outcome).
#
# **The setting.** The quick profile trains the paper's CIFAR ResNet56 with
# and without shortcuts on the offline digits data: 120 steps of batch
# 128, peak rate $\lambda = 1$. That rate is super-critical for NoShort
# ($\kappa_{\ell h}(0)$ = {glue:text}`ch13-kappa0`, the median over this
# chapter's NoShort runs at initialisation; {doc}`12_criticality`), the regime in
# which the paper's warm-up is meant to matter, and each run takes about
# 10 s on this CPU, so five seeds of seven cases (four protocols without
# shortcuts, three with) fit the book's budget. The runs were 150 steps
# long until the book outgrew its 20-minute budget; we shortened them to
# 120 with every claim and its stated verdict unchanged (the warm-ups end
# within the first 15 steps; accuracies are compared at the end of the
# runs and spreads averaged over them, as in Table 1), and the robustness
# builds test the shorter runs on both base seeds and in every process
# layout. Table 1's fifth row, the
# constraint with OneCycle, is in none of the claims above; to keep the
# book's time, the quick profile leaves it out and the paper profile runs
# it (parameter `protocols`). It is far from 50 ImageNet epochs: what it
# can test is the direction of each effect, not its size.

# %% tags=["parameters"]
depth: int = 56  # depth of the CIFAR ResNets (6n+2); the paper's Figure 5 uses ResNet110 {>= 8, %6==2}
dataset: str = "digits"  # digits (offline, quick), cifar10 or cifar100 {in digits|cifar10|cifar100}
data_root: str = "data"  # where CIFAR lives
steps: int = 120  # SGD steps per run, cosine cool-down to zero over them {>= 20}
batch_size: int = 128  # examples per step {>= 2}
lr: float = 1.0  # peak learning rate of every protocol (the paper's Table 1: 0.4) {> 0}
elr_goal: float = 0.03  # goal ELR of the constrained protocols {> 0}
onecycle_pct: float = 0.1  # OneCycle warm-up fraction (the paper's Table 3: 0.1) {> 0, < 1}
protocols: list[str] = ["none", "OneCycle", "subcritical", "constrained"]  # Table 1 rows run (the paper profile runs all five) {in none|OneCycle|subcritical|constrained|constrained + OneCycle}
n_seeds: int = 5  # runs per protocol, seeds seed ... seed + n_seeds - 1 {>= 2}
seed: int = 0  # base seed of initialisation and data order {>= 0}
check_claims: bool = True  # assert the claims (the smoke profile only checks that the chapter runs)

# %%
import numpy as np
from IPython.display import Markdown, display

from elr import dynamics, evidence, plots, train

plots.setup()
onecycle = dict(schedule="onecycle", pct_start=onecycle_pct, div_factor=20.0, final_div_factor=2000.0)
settings = {"none": dict(schedule="cosine"), "OneCycle": onecycle,
            "subcritical": dict(schedule="cosine", warmup="subcritical"),
            "constrained": dict(schedule="cosine", transform="constrain", elr_goal=elr_goal),
            "constrained + OneCycle": dict(onecycle, transform="constrain", elr_goal=elr_goal)}
needed = {"none", "OneCycle", "subcritical", "constrained"}  # the protocols the claims below compare
if not needed <= set(protocols):
    raise ValueError(f"parameter 'protocols' must include {sorted(needed - set(protocols))}: the claims compare "
                     f"them; got {protocols}")
cases = {(shortcut, name): train.TrainConfig(model=f"resnet{depth}", shortcut=shortcut, dataset=dataset,
                                             data_root=data_root, batch_size=batch_size, steps=steps, lr=lr,
                                             log_every=5, channels_last=True, **settings[name])
         for shortcut in (False, True) for name in protocols
         if not (shortcut and name.startswith("constrained"))}  # as in Table 1: no constrained Short rows
runs = train.sweep_seeds(cases, seed, n_seeds)
chance = 1 / 10
acc = evidence.per_seed(runs, lambda r: r.accuracy(diverged=chance))
spread = evidence.per_seed(runs, lambda r: r.mean_spread())
warm = evidence.per_seed(runs, lambda r: r.metrics.get("warmup_steps", 0))
setting = (f"ResNet{depth} (No)Short on {dataset}, {steps} steps of batch {batch_size}, peak λ = {lr:g}, "
           f"seeds {seed}–{seed + n_seeds - 1}")
plots.glue("ch13-setting", setting)
display(Markdown(f"{len(cases) * n_seeds} runs: {setting}. A diverged run counts as chance accuracy "
                 f"({chance:.0%}); diverged runs: {sum(r.status != 'completed' for rs in runs.values() for r in rs)}."))

# %%
label = {(s, p): f"{'Short' if s else 'NoShort'}, {p}" for s, p in cases}
fig, axes = plots.plt.subplots(1, 2, figsize=(9.5, 3.4))
plots.seed_strip({label[k]: v for k, v in acc.items()}, ax=axes[0], ylabel="test accuracy")
plots.seed_strip({label[k]: v for k, v in spread.items()}, ax=axes[1], ylabel="mean $S_{rel}$ over the run",
                 color="C3", logy=True)
plots.glue("ch13-trainability", fig)

paper = {(False, "none"): (8.50, 3.96), (False, "OneCycle"): (22.82, 1.96), (False, "subcritical"): (41.83, 0.70),
         (False, "constrained"): (47.99, None), (False, "constrained + OneCycle"): (45.61, None),
         (True, "none"): (72.85, 0.29), (True, "OneCycle"): (72.83, 0.31), (True, "subcritical"): (73.06, 0.27)}
acc_ci, spread_ci = evidence.intervals(acc), evidence.intervals(spread)
display(Markdown(
    "| shortcuts | protocol | warm-up steps (max) | accuracy, % | mean S_rel | paper: accuracy, % (ImageNet) | "
    "paper: S_rel |\n|---|---|---|---|---|---|---|\n" + "\n".join(
        f"| {'yes' if s else 'no'} | {p} | {int(warm[(s, p)].max()) if p in ('subcritical', 'OneCycle') else '-'} | "
        f"{evidence.cell(acc_ci[(s, p)], 100, 1)} | {evidence.cell(spread_ci[(s, p)])} | {paper[(s, p)][0]:.2f} | "
        f"{'-' if paper[(s, p)][1] is None else paper[(s, p)][1]} |" for s, p in cases)))

# %% [markdown]
# ```{glue:figure} ch13-trainability
# :name: fig-ch13-trainability
#
# Test accuracy (left) and relative ELR spread averaged over the run (right, log scale) of every protocol:
# one dot per seed, the mean as a bar and its 95 % bootstrap interval as a vertical line. Measured:
# {glue:text}`ch13-setting`. The paper's Table 1 shows ResNet101 on ImageNet; its Figures 5 and 6 show
# ResNet110 on CIFAR-10 and CIFAR-100.
# ```
#
# The table above is the analogue of the paper's Table 1: mean and 95 %
# bootstrap interval over seeds per cell, beside the paper's single
# ImageNet numbers, which come from another data set, network and length of
# training and are not expected to match in size. OneCycle's "warm-up
# steps" are its rising phase.
#
# ## What holds at this scale
#
# Every claim about the *spread* is large and consistent from seed to seed,
# and we state that it holds (claims 1, 2, 3, 5 and 10). One detail of the
# paper's ordering does not carry over: here OneCycle's warm-up lowers the
# spread about as much as the subcritical one (claim 4 fails), where the
# paper measured nearly three times as much spread after OneCycle.
#
# The claims about *accuracy* meet a large run-to-run noise: at a
# super-critical peak rate, the accuracy of one protocol varies between
# seeds by {glue:text}`ch13-acc-range` points in this build (the smallest
# and the largest range over the protocols). In the pilot (seeds 0 to 9), the
# subcritical warm-up raised NoShort's accuracy over no warm-up in 9 of 10
# seeds, and we first stated that it holds (claim 6). With runs of 150
# steps it held with seeds 0 to 4 and, with an interval starting at +0.4
# points, with seeds 1000 to 1004: five seeds do not establish it in every
# draw, so we state it as "not fails" (the measurements agree with the
# paper's direction without establishing it; in this build the mean gain is
# {glue:text}`ch13-gain6` points). The shorter runs of 120 steps weakened it
# further: +6.1 points with an interval from −2.0 to +13.7 with seeds 0 to
# 4 (inconclusive), +8.8 points (4.1 to 15.6) with seeds 1000 to 1004. The gaps the paper reports
# between protocols (claims 7, 8 and 9a, 19 to 64 points) are not
# established at this scale: the pilot's differences were near zero for 7
# (subcritical against OneCycle), about 10 points for 8 (the constraint),
# and not consistent in sign for 9a, because a peak rate of 1 also hurts the
# Short network without a warm-up. For these we state "not holds": the
# interval does not clear the paper's gap. Whether the direction of 7 and 8
# holds needs more seeds than this chapter's budget (the `paper` profile
# runs the real setting). With OneCycle's warm-up, which suits both networks,
# Short trained better than NoShort in the pilot (claim 9b; by
# {glue:text}`ch13-gain9b` points on average in this build); that held with seeds 0 to 4 but was inconclusive with seeds 1000 to
# 1004 (one seed went the other way), at 150 steps and again at 120, so it too is stated as "not fails".
#
# ## Checks
#
# The claims in the order of the list above, each paired seed by seed.

# %%
NS, S = False, True
claims = [
    evidence.Claim.compare("1. no warm-up: NoShort spreads more than Short", spread[(NS, "none")], spread[(S, "none")]),
    evidence.Claim.compare("2. subcritical warm-up lowers NoShort's spread", spread[(NS, "none")],
                           spread[(NS, "subcritical")]),
    evidence.Claim.compare("3. OneCycle lowers NoShort's spread", spread[(NS, "none")], spread[(NS, "OneCycle")]),
    evidence.Claim.compare("4. ... but leaves more than twice the subcritical warm-up's (Table 1: 1.96 against 0.70)",
                           spread[(NS, "OneCycle")], 2 * spread[(NS, "subcritical")], expect="fails"),
    evidence.Claim.compare("5. the constraint lowers NoShort's spread below the subcritical warm-up's",
                           spread[(NS, "subcritical")], spread[(NS, "constrained")]),
    evidence.Claim.compare("6. subcritical warm-up raises NoShort's accuracy", acc[(NS, "subcritical")],
                           acc[(NS, "none")], expect="not fails"),
    evidence.Claim.compare("7. ... by 19 points more than OneCycle does (Table 1: 41.83% against 22.82%)",
                           acc[(NS, "subcritical")], acc[(NS, "OneCycle")], threshold=0.19, expect="not holds"),
    evidence.Claim.compare("8. the constraint raises NoShort's accuracy by 39 points (Table 1: 47.99% against 8.50%)",
                           acc[(NS, "constrained")], acc[(NS, "none")], threshold=0.39, expect="not holds"),
    evidence.Claim.compare("9a. no warm-up: Short beats NoShort by 64 points (Table 1: 72.85% against 8.50%)",
                           acc[(S, "none")], acc[(NS, "none")], threshold=0.64, expect="not holds"),
    evidence.Claim.compare("9b. with OneCycle, Short trains better than NoShort", acc[(S, "OneCycle")],
                           acc[(NS, "OneCycle")], expect="not fails"),
    evidence.Claim.level("10a. NoShort's subcritical warm-up takes fewer than 10 steps", warm[(NS, "subcritical")],
                         10, "<", statistic="mean warm-up steps"),
    evidence.Claim.level("10b. Short needs no warm-up at the peak rate", warm[(S, "subcritical")], 0.5, "<",
                         statistic="mean warm-up steps"),
]
display(Markdown(evidence.table(claims)))
acc_range = [100 * (acc[k].max() - acc[k].min()) for k in cases]
plots.glue("ch13-acc-range", f"{min(acc_range):.0f} to {max(acc_range):.0f}")
plots.glue("ch13-gain6", f"{100 * np.mean(acc[(NS, 'subcritical')] - acc[(NS, 'none')]):+.1f}")
plots.glue("ch13-gain9b", f"{100 * np.mean(acc[(S, 'OneCycle')] - acc[(NS, 'OneCycle')]):+.1f}")
plots.glue("ch13-kappa0", f"{np.median([dynamics.critical_lr(r.records.matrix('elr_grad')[1][0]) for r in runs[(NS, 'none')]]):.2f}")
if check_claims:
    evidence.check(claims)
print("all claims of this chapter have their stated verdicts" if check_claims else "claims not checked at this profile")

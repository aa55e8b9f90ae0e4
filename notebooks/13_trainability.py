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
# three protocols and compares accuracy with the spread averaged over the
# run (its Figures 5 and 6 and Table 1):
#
# - **plain**: a constant learning rate with multistep decay;
# - **subcritical warm-up**: the same, preceded by the hyper-parameter-free
#   warm-up of Cor. 3.10 (`elr.schedules.SubcriticalWarmup`), which sets
#   $\lambda = \kappa_{hh'}$ from the live ELRs until the spread is small or
#   $\kappa_{hh'}$ reaches the target rate;
# - **constrained**: every layer's gradient rescaled so that its ELR equals a
#   goal $E_{goal}$ (Eq. 33, `elr.gradients.ConstrainELR`).
#
# The quick profile trains on the offline digits data for a few hundred
# steps, far from the paper's 200 CIFAR epochs; what it can test is the
# direction of each effect, not its size.

# %% tags=["parameters"]
depth: int = 56  # depth of the CIFAR ResNets (6n+2); the paper uses ResNet110 (Figure 5) {>= 8, %6==2}
dataset: str = "digits"  # digits (offline, quick), cifar10 or cifar100 {in digits|cifar10|cifar100}
data_root: str = "data"  # where CIFAR lives
steps: int = 150  # SGD steps per run; multistep decay by 0.1 at 50% and 75% of them {>= 8}
batch_size: int = 128  # examples per step {>= 2}
lrs: list[float] = [0.1, 1.0, 10.0]  # target learning rates of the plain and warm-up protocols {> 0}
elr_goals: list[float] = [0.01, 0.03, 0.1]  # goal ELRs of the constrained protocol (at λ = 1) {> 0}
table_lr: float = 1.0  # peak learning rate of the Table 1 analogue (cosine cool-down) {> 0}
onecycle_pct: float = 0.1  # OneCycle warm-up fraction (the paper's Table 3: 0.1) {> 0, < 1}
check_claims: bool = True  # assert the paper's claims (the smoke profile only checks that the chapter runs)
seed: int = 0  # seed of initialisation and data order {>= 0}

# %%
import numpy as np
from IPython.display import Markdown, display

from elr import plots, train

plots.setup()
milestones = (steps // 2, 3 * steps // 4)
common = dict(model=f"resnet{depth}", dataset=dataset, data_root=data_root, batch_size=batch_size, steps=steps,
              log_every=5, seed=seed, channels_last=True)
cases = {}
for shortcut in (False, True):
    for lr in lrs:
        cases[(shortcut, "plain", lr)] = train.TrainConfig(**common, shortcut=shortcut, lr=lr, schedule="multistep",
                                                           milestones=milestones)
        cases[(shortcut, "warm-up", lr)] = train.TrainConfig(**common, shortcut=shortcut, lr=lr, schedule="multistep",
                                                             milestones=milestones, warmup="subcritical")
    for goal in elr_goals:
        cases[(shortcut, "constrained", goal)] = train.TrainConfig(**common, shortcut=shortcut, lr=1.0,
                                                                   schedule="multistep", milestones=milestones,
                                                                   transform="constrain", elr_goal=goal)
runs = dict(zip(cases, train.sweep(list(cases.values()))))

# %%
summary = {}
for key, run in runs.items():
    _, s_rel = run.records.spread("elr_grad_max")
    summary[key] = {"acc": run.metrics["final"].get("test_acc", np.nan) if run.status == "completed" else np.nan,
                    "spread": float(np.nanmean(s_rel)), "status": run.status,
                    "warmup_steps": run.metrics.get("warmup_steps", 0)}

fig, axes = plots.plt.subplots(2, 2, figsize=(9.0, 5.2), sharex="col", sharey="row")
for col, shortcut in enumerate((False, True)):
    for protocol, marker in (("plain", "o-"), ("warm-up", "s-"), ("constrained", "^--")):
        xs = elr_goals if protocol == "constrained" else lrs
        for row, field in enumerate(("acc", "spread")):
            values = [summary[(shortcut, protocol, x)][field] for x in xs]
            axes[row, col].plot(xs, values, marker, label=protocol + (" (x = E_goal)" if protocol == "constrained" else ""))
            for x, v in zip(xs, values):
                if summary[(shortcut, protocol, x)]["status"] == "diverged":
                    axes[row, col].plot(x, 0, "kx", ms=8)
    axes[0, col].set_title(f"ResNet{depth} {'Short' if shortcut else 'NoShort'}")
    axes[1, col].set(xscale="log", xlabel="target λ (E_goal for constrained)")
axes[0, 0].set_ylabel("test accuracy")
axes[1, 0].set_ylabel("mean $S_{rel}$ over the run")
axes[0, 1].legend(fontsize=7)
plots.glue("ch13-trainability", fig)
plots.glue("ch13-setting", f"ResNet{depth} (No)Short on {dataset}, {steps} steps of batch {batch_size}, multistep "
                           f"decay at steps {milestones[0]} and {milestones[1]}, seed {seed}")
display(Markdown("| network | protocol | target | test accuracy | mean S_rel | warm-up steps |\n|---|---|---|---|---|---|\n"
                 + "\n".join(f"| {'Short' if k[0] else 'NoShort'} | {k[1]} | {k[2]:g} | "
                             + (f"{v['acc']:.3f}" if v["status"] == "completed" else "diverged")
                             + f" | {v['spread']:.2f} | {v['warmup_steps'] if k[1] == 'warm-up' else ''} |"
                             for k, v in summary.items())))

# %% [markdown]
# ```{glue:figure} ch13-trainability
# :name: fig-ch13-trainability
#
# Test accuracy (top) and relative ELR spread averaged over the run (bottom) of networks without (left)
# and with (right) shortcuts, under the three protocols. Measured: {glue:text}`ch13-setting`. The paper's
# Figures 5 and 6 show ResNet110 on CIFAR-10 and CIFAR-100 over 200 epochs.
# ```
#
# ## A Table 1 analogue: warm-up schedules with the same cool-down
#
# The paper's Table 1 trains ResNet101 on ImageNet with no warm-up, a
# OneCycle warm-up and the subcritical warm-up, all followed by the same
# cosine cool-down, and with the ELR constraint. Here the same protocols run
# on the quick profile's networks and data.

# %%
table_cases = {
    (False, False, "none"): dict(shortcut=False, schedule="cosine"),
    (False, False, "OneCycle"): dict(shortcut=False, schedule="onecycle", pct_start=onecycle_pct, div_factor=20.0,
                                     final_div_factor=2000.0),
    (False, False, "subcritical"): dict(shortcut=False, schedule="cosine", warmup="subcritical"),
    (False, True, "none"): dict(shortcut=False, schedule="cosine", transform="constrain", elr_goal=0.03),
    (False, True, "OneCycle"): dict(shortcut=False, schedule="onecycle", pct_start=onecycle_pct, div_factor=20.0,
                                    final_div_factor=2000.0, transform="constrain", elr_goal=0.03),
    (True, False, "none"): dict(shortcut=True, schedule="cosine"),
    (True, False, "OneCycle"): dict(shortcut=True, schedule="onecycle", pct_start=onecycle_pct, div_factor=20.0,
                                    final_div_factor=2000.0),
    (True, False, "subcritical"): dict(shortcut=True, schedule="cosine", warmup="subcritical"),
}
table_runs = dict(zip(table_cases, train.sweep([train.TrainConfig(**common, lr=table_lr, **kw)
                                                for kw in table_cases.values()])))
table = {}
for (res, ctn, wtype), run in table_runs.items():
    _, s_rel = run.records.spread("elr_grad_max")
    warm = run.metrics.get("warmup_steps", 0) if wtype == "subcritical" else (
        int(onecycle_pct * steps) if wtype == "OneCycle" else 0)
    table[(res, ctn, wtype)] = {"acc": run.metrics["final"].get("test_acc", np.nan), "spread": float(np.nanmean(s_rel)),
                                "warm": warm, "status": run.status}
paper_table = {(False, False, "none"): (8.50, 3.96), (False, False, "OneCycle"): (22.82, 1.96),
               (False, False, "subcritical"): (41.83, 0.70), (False, True, "none"): (47.99, None),
               (False, True, "OneCycle"): (45.61, None), (True, False, "none"): (72.85, 0.29),
               (True, False, "OneCycle"): (72.83, 0.31), (True, False, "subcritical"): (73.06, 0.27)}
display(Markdown(
    "| RES | CTN | warm-up | warm-up steps | accuracy | S_rel | paper: accuracy (ImageNet) | paper: S_rel |\n"
    "|---|---|---|---|---|---|---|---|\n" + "\n".join(
        f"| {'yes' if r else 'no'} | {'yes' if c else 'no'} | {w} | {table[(r, c, w)]['warm']} | "
        f"{100 * table[(r, c, w)]['acc']:.2f} | {'-' if c else format(table[(r, c, w)]['spread'], '.2f')} | "
        f"{paper_table[(r, c, w)][0]:.2f} | {'-' if paper_table[(r, c, w)][1] is None else paper_table[(r, c, w)][1]} |"
        for r, c, w in table_cases)))

# %% [markdown]
# How much of this is noise? We executed this chapter twice with identical
# configurations and seeds, once in one process with two torch threads and
# once in a pool of two single-threaded processes, which changes nothing but
# the order of floating-point reductions. The spreads, the warm-up lengths,
# Short against NoShort and the Table 1 analogue came out the same in
# direction. The accuracies of single NoShort runs did not: the plain run at
# $\lambda = 0.1$ reached 28.5% in one execution and 42.1% in the other,
# and the best constrained run 48.8% and 31.0%. So at this scale the
# *best accuracy over* $\lambda$ of a protocol is not a stable statistic,
# and we do not assert the paper's claim that the constraint raises it; what
# held in both executions, with margins of 12 points or more, is that at
# the super-critical $\lambda = 1$ the warm-up trains NoShort better than
# no warm-up, and that is what we check. Settling the rest needs several
# seeds per point, as in the paper's profile.
#
# What the quick profile reproduces, and what it does not, is stated by the
# checks below; the table sets our numbers beside the paper's, which come
# from a different data set, network and training length and are not
# expected to match in size.
#
# ## Checks

# %%
if check_claims:
    for lr in lrs:
        others = [summary[(s, p, lr)]["spread"] for s, p in ((True, "plain"), (True, "warm-up"), (False, "warm-up"))] + \
                 [summary[(s, "constrained", g)]["spread"] for s in (False, True) for g in elr_goals]
        assert summary[(False, "plain", lr)]["spread"] > max(others), f"λ={lr}: NoShort without warm-up spreads most"
        assert summary[(False, "warm-up", lr)]["spread"] < summary[(False, "plain", lr)]["spread"], \
            f"λ={lr}: the subcritical warm-up lowers NoShort's spread"
    super_critical = [lr for lr in lrs if 0.5 <= lr <= 2.0]  # λ = 1: far above NoShort's κ_ℓh, still trainable
    for lr in super_critical:
        assert summary[(False, "warm-up", lr)]["acc"] > summary[(False, "plain", lr)]["acc"] + 0.05, \
            f"λ={lr}: the subcritical warm-up raises NoShort's accuracy by more than 5 points"
    best_plain = max(summary[(False, "plain", x)]["acc"] for x in lrs)
    assert max(summary[(True, "plain", lr)]["acc"] for lr in lrs) > best_plain + 0.2, "Short trains better than NoShort"
    assert all(summary[(False, "constrained", g)]["spread"] < min(summary[(False, "plain", lr)]["spread"] for lr in lrs)
               for g in elr_goals), "the constraint lowers NoShort's spread below every plain run"
    warm_steps = [summary[(False, "warm-up", lr)]["warmup_steps"] for lr in lrs]
    assert max(warm_steps) <= 10 and table[(False, False, "subcritical")]["warm"] <= 10, \
        "the subcritical warm-up of NoShort needs only a handful of steps"
    assert table[(False, False, "subcritical")]["spread"] < table[(False, False, "none")]["spread"], \
        "Table 1: subcritical warm-up lowers NoShort's spread"
    assert table[(False, False, "subcritical")]["acc"] > table[(False, False, "none")]["acc"], \
        "Table 1: subcritical warm-up raises NoShort's accuracy"
print("all claims of this chapter hold" if check_claims else "claims not checked at this profile")

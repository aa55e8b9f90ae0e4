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
# # The ELR constraint and LARS
#
# The paper's constrained training (its Eq. 33, used for Table 1's
# "constrained" rows {cite}`mehmeti2024weight`) rescales every layer's
# gradient so that its effective learning rate equals a goal $E_{goal}$.
# LARS {cite}`you2017lars`, the optimizer of large-batch training, rescales
# every layer's gradient by a "trust ratio" $\eta\,\lVert W\rVert/\lVert\nabla W\rVert$.
# At weight decay 0 that sets every layer's gradient ELR to the trust
# coefficient $\eta$. Are they the same method? This chapter derives where
# they coincide and where they do not, and measures both with timm's `Lars`
# on the same network, data and seeds.
#
# **Verdicts of this build.**
#
# ```{glue:md} ch19-verdicts
# :format: myst
# ```
#
# ## What each does to one step
#
# Write $E = \lVert\nabla W\rVert/\lVert W\rVert$ for a layer's gradient ELR
# and $\lambda$ for the learning rate.
#
# - **The constraint** (`elr.gradients.ConstrainELR`, then SGD) first divides
#   every constrained weight, and its gradient, by the largest of their norms
#   $m$, so that no norm exceeds 1; then it multiplies the gradient by
#   $E_{goal}/(E+\varepsilon)$, $\varepsilon = 10^{-5}$. The step moves $W$ by
#   $\lambda E_{goal}\,E/(E+\varepsilon)$ of its norm.
# - **LARS** (timm's `Lars` with `always_adapt=True`, weight decay 0)
#   multiplies the gradient by $\eta\lVert W\rVert/(\lVert\nabla W\rVert + 10^{-8})$.
#   The step moves $W$ by $\lambda\eta$ of its norm, up to that $10^{-8}$.
#
# With $\eta = E_{goal}$, both move every adapted weight by the same fraction
# $\lambda\eta$ of its norm, in the direction of $-\nabla W$. They differ in the
# division by $m$. For a weight that a normalisation makes scale-invariant,
# dividing all such weights by one number $m$ changes neither the network's
# function nor the direction of any gradient (the gradient scales as $1/m$,
# {doc}`07_scale_invariance`). So in exact arithmetic, with both
# $\varepsilon$'s at zero and LARS adapting exactly the constrained weights,
# the two optimizers visit the same functions: the constraint's weights
# are LARS's divided by one number per step.
#
# **Where they differ**, derived before any run:
#
# 1. *Norms.* The gradient of a scale-invariant weight is orthogonal to it,
#    so each LARS step adds an orthogonal vector of norm
#    $\lambda\eta\lVert W\rVert$, and without momentum
#    $\lVert W_t\rVert = \lVert W_0\rVert\,(1+\lambda^2\eta^2)^{t/2}$: the norms
#    grow geometrically, all at the same rate. The constraint keeps the
#    largest at 1.
# 2. *BatchNorm's ε.* Dividing the weights by $m$ divides each
#    pre-activation's variance by $m^2$, and the normalisation adds its
#    $\epsilon$ (here $10^{-5}$) to that variance. Under the constraint the
#    $\epsilon$ counts for more, so the functions are no longer exactly the
#    same, and training's sensitivity to small differences takes it from
#    there.
# 3. *Which parameters.* The paper constrains the scale-invariant weights
#    only; the rest (here the classifier) train with plain SGD. LARS adapts
#    every parameter of its param groups; used as one group, as is common, it
#    also adapts the classifier and biases, and it gives a parameter of
#    norm zero (a zero-initialised bias) a trust ratio of 1, that is the raw
#    $\lambda$. `elr.audit.param_groups` builds the two groups from an audit
#    for any model; `TrainConfig(optimizer="lars", lars_scope=...)` uses
#    them.
# 4. *Weight decay.* timm's `Lars` adapts a parameter only when its group has
#    weight decay or `always_adapt=True`: at weight decay 0 with the
#    defaults it *is* plain SGD. With weight decay it divides by
#    $\lVert\nabla W\rVert + \mathrm{wd}\lVert W\rVert$, so the relative step is
#    no longer fixed. The paper's constraint has no weight decay.
#
# **Claims.** Each is registered in `notebooks/claims.toml` with its
# statistic, threshold and expected verdict before the runs
# ({mod}`elr.claims`). Claims 1 to 3 are identities, so every seed must
# satisfy them: they are decided on the worst seed, not on a mean.
#
# 1. In float64, with BatchNorm's ε at $10^{-30}$ and both optimizers' ε at
#    zero, the training losses of the two agree to $10^{-9}$ (relative) at
#    every step, for every seed: no difference beyond rounding.
# 2. In the float32 runs with the default ε's, both the constraint and LARS
#    move every constrained weight by $\lambda E_{goal}$ of its norm at every
#    step, within 1 %, in every seed.
# 3. Under LARS every constrained weight's norm follows
#    $(1+\lambda^2\eta^2)^{t/2}$ within 0.1 %; under the constraint the
#    largest norm is 1 within $10^{-6}$ after every rescaling; in every seed.
# 4. Difference 2 is small and has no preferred direction, so the two should
#    reach the same test accuracy: the mean paired difference within ±2
#    points. Training at $\lambda = 1$ amplifies the two runs' small
#    difference into seed-to-seed noise of a few points, so the claim
#    expects only that the data do not refute it ("not fails": the interval
#    does not lie wholly beyond 2 points); it is reported, not asserted.
# 5. LARS on every parameter (one group) instead of the constrained weights
#    only: we have no derivation of the effect of adapting the classifier,
#    so we state the null, "within ±2 points of the constraint", as a claim
#    the data should not refute ("not fails"), reported, not asserted.
#
# **The setting.** A BN-ReLU MLP of 16 layers of width 64 on the digits
# data ({glue:text}`ch19-train-size` training images of 8x8), batches of
# 64, $\lambda = 1$ and $E_{goal} = \eta = 0.03$, so every adapted weight
# moves by 3 % of its norm each step: a few milliseconds per step, so each
# case can carry many seeds ({glue:text}`ch19-n-seeds`), for the power of
# claims 4 and 5. The MLP has exactly one weight that no normalisation
# follows, the classifier, which makes difference 3 a single, visible
# choice. The exact comparison of claim 1 runs at $\lambda = 0.3$ for 60
# steps: at $\lambda = 1$ rounding alone is amplified to order one within a
# few dozen steps, which would test the chaos of training, not the
# optimizers. It runs on fewer seeds ({glue:text}`ch19-exact-seeds`): it is
# an identity, so every seed either agrees to rounding or shows a
# difference the derivation missed. A run that diverges counts as chance
# accuracy (10 %).

# %% tags=["parameters"]
model: str = "bnrelu16"  # network: bnrelu<depth> (BN-ReLU MLP) or resnet<6n+2>
width: int = 64  # width of bnrelu networks {>= 1}
dataset: str = "digits"  # digits (offline, quick), cifar10 or cifar100 {in digits|cifar10|cifar100}
data_root: str = "data"  # where CIFAR lives
batch_size: int = 64  # examples per step {>= 2}
steps: int = 300  # steps per run {>= 10}
lr: float = 1.0  # learning rate λ of every case {> 0}
elr_goal: float = 0.03  # the constraint's E_goal, and LARS's trust coefficient η {> 0}
exact_steps: int = 60  # steps of the float64 comparison of claim 1 (digits, the same network) {>= 2}
exact_lr: float = 0.3  # λ of the float64 comparison {> 0}
exact_seeds: int = 8  # seeds of the float64 comparison, seed ... seed + exact_seeds - 1 {>= 1}
n_seeds: int = 24  # runs per case, seeds seed ... seed + n_seeds - 1 {>= 2}
seed: int = 0  # base seed of initialisation and data order {>= 0}
check_claims: bool = True  # assert the claims (the smoke profile only checks that the chapter runs)

# %%
import numpy as np
from IPython.display import Markdown, display

from elr import claims as claims_mod
from elr import data, evidence, lars, plots, train

plots.setup()
base = dict(model=model, width=width, dataset=dataset, data_root=data_root, batch_size=batch_size, steps=steps,
            lr=lr, log_every=1)
cases = {"SGD": train.TrainConfig(**base),
         "constraint": train.TrainConfig(**base, transform="constrain", elr_goal=elr_goal),
         "LARS, constrained weights": train.TrainConfig(**base, optimizer="lars", trust_coeff=elr_goal),
         "LARS, every parameter": train.TrainConfig(**base, optimizer="lars", lars_scope="all",
                                                    trust_coeff=elr_goal)}
runs = train.sweep_seeds(cases, seed, n_seeds)
gaps = np.array([lars.trajectory_gap(s, model=model if model.startswith("bnrelu") else "bnrelu16", width=width,
                                     steps=exact_steps, lr=exact_lr, elr_goal=elr_goal, batch_size=batch_size)
                 for s in range(seed, seed + exact_seeds)])
acc = evidence.per_seed(runs, lambda r: r.accuracy(diverged=0.1))
setting = (f"{model} on {dataset}, {steps} steps of batch {batch_size}, λ = {lr:g}, E_goal = η = {elr_goal:g}, "
           f"seeds {seed}–{seed + n_seeds - 1}")
plots.glue("ch19-setting", setting)
plots.glue("ch19-train-size", f"{len(data.load(dataset, train=True, root=data_root)):,}")
plots.glue("ch19-n-seeds", str(n_seeds))
plots.glue("ch19-exact-seeds", str(exact_seeds))
display(Markdown(f"{len(cases) * n_seeds} runs: {setting}. Diverged runs (counted at chance, 10 %): "
                 f"{sum(r.status != 'completed' for rs in runs.values() for r in rs)}.\n\n"
                 "| case | test accuracy, mean [95 % interval] |\n|---|---|\n"
                 + "\n".join(f"| {k} | {evidence.cell(v, 100, 1)} % |" for k, v in evidence.intervals(acc).items())))

# %%
fig, axes = plots.plt.subplots(1, 3, figsize=(11, 3.3))
for s, gap in enumerate(gaps):
    axes[0].semilogy(np.arange(len(gap)), np.maximum(gap, 1e-17), ".", ms=2, color="C0", alpha=0.5)
axes[0].set(xlabel="step", ylabel="relative loss gap", title="float64, ε's at zero")
lars_runs = runs["LARS, constrained weights"]
steps_logged = lars_runs[0].records.matrix("weight_norm")[0]
norm_ratio = np.array([(lambda n: (n / n[0]).mean(axis=1))(r.records.matrix("weight_norm")[1]) for r in lars_runs])
plots.seed_band(steps_logged, norm_ratio, ax=axes[1], label="LARS (mean over layers)", style="-", ms=0)
axes[1].plot(steps_logged, lars.norm_law(lr, elr_goal, steps_logged - steps_logged[0]), "k--", lw=1,
             label=r"$(1+\lambda^2\eta^2)^{t/2}$")
axes[1].plot(steps_logged, np.mean([lars.largest_norm(r.records) for r in runs["constraint"]], axis=0), "C1-",
             label="constraint: largest norm")
axes[1].set(xlabel="step", ylabel=r"$\|W_t\|/\|W_0\|$")
axes[1].legend(fontsize=7)
plots.seed_strip(acc, ax=axes[2], ylabel="test accuracy")
plots.glue("ch19-lars", fig)

# %% [markdown]
# ```{glue:figure} ch19-lars
# :name: fig-ch19-lars
#
# Left: the relative gap between the training losses of the constraint and
# LARS at every step of the float64 comparison (every seed, one dot each;
# an exact zero is drawn at $10^{-17}$). Middle: weight norms relative to
# the first step under LARS (mean over layers, band over seeds) against
# $(1+\lambda^2\eta^2)^{t/2}$, and the constraint's largest norm. Right: test
# accuracy per case, one dot per seed, the mean as a bar and its 95 %
# bootstrap interval as a line. Measured: {glue:text}`ch19-setting`.
# ```
#
# The left panel is the derivation's identity: the two optimizers are one
# method written twice. The middle panel is its one structural difference,
# the norms. On the right, the float32 runs of the two no longer share a
# trajectory (difference 2 above, amplified by training), so their
# accuracies differ seed by seed; claim 4 asks whether they differ on
# average.

# %% [markdown]
# ## Accuracy: the same method?
#
# {glue:text}`ch19-claim4`
#
# {glue:text}`ch19-claim5`
#
# ## Checks

# %%
target = lr * elr_goal
claims = claims_mod.Chapter("19_lars", seed=seed)
claims.worst("19.float64-same-losses", gaps.max(axis=1))
claims.worst("19.constraint-step", [lars.update_deviation(r.records, target) for r in runs["constraint"]])
claims.worst("19.lars-step", [lars.update_deviation(r.records, target) for r in lars_runs])
claims.worst("19.lars-norm-law", [lars.norm_law_deviation(r.records, lr, elr_goal) for r in lars_runs])
claims.worst("19.constraint-largest-norm",
             [np.max(np.abs(lars.largest_norm(r.records) - 1)) for r in runs["constraint"]])
claims.paired("19.same-accuracy", acc["constraint"], acc["LARS, constrained weights"])
claims.paired("19.all-parameters-accuracy", acc["LARS, every parameter"], acc["constraint"])
display(Markdown(claims.table()))
plots.glue("ch19-verdicts", Markdown(claims.summary()))
c4, c5 = claims.get("19.same-accuracy"), claims.get("19.all-parameters-accuracy")
m = 100 * c4.threshold
plots.glue("ch19-claim4", (
    f"The mean paired difference of test accuracy, constraint − LARS, is {100 * c4.interval.estimate:+.1f} points, "
    f"{100 * c4.interval.confidence:.3g} % interval {100 * c4.interval.low:+.1f} to {100 * c4.interval.high:+.1f}. " + {
        "holds": f"The whole interval lies within ±{m:g} points: the two reach the same accuracy within {m:g} "
                 "points (claim 4 holds).",
        "fails": f"The whole interval lies beyond {m:g} points: the two differ by more than {m:g} points on "
                 "average (claim 4 fails).",
        "inconclusive": f"The interval reaches beyond ±{m:g} points but does not lie wholly beyond them: the data "
                        f"neither establish that the two are within {m:g} points of each other nor that they "
                        f"differ by {m:g} points or more (claim 4 is inconclusive)."}[c4.verdict]
    + (" It contains 0: no difference between the two is established either." if c4.interval.low <= 0
       <= c4.interval.high else " It excludes 0: " + ("the constraint" if c4.interval.low > 0 else "LARS")
       + " reaches the higher accuracy on average.")))
m = 100 * c5.threshold
plots.glue("ch19-claim5", (
    f"LARS on every parameter against the constraint: {100 * c5.interval.estimate:+.1f} points "
    f"({100 * c5.interval.low:+.1f} to {100 * c5.interval.high:+.1f}), claim 5 " + {
        "holds": f"holds: within ±{m:g} points of the constraint.",
        "fails": f"fails: more than {m:g} points from the constraint on average.",
        "inconclusive": f"is inconclusive: neither within ±{m:g} points nor {m:g} points apart is established."}[
        c5.verdict]))
claims.finish(check_claims)

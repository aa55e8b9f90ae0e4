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
# # Weight decay and the intrinsic learning rate
#
# The paper trains with plain SGD and switches weight decay off
# (its Appendix C.1 {cite}`mehmeti2024weight`). Almost everyone else trains
# with it. Li, Lyu & Arora {cite}`li2020intrinsic` argue that for a
# normalised network what matters is the product $\lambda\cdot\mathrm{wd}$,
# the *intrinsic learning rate*, and conjecture that training reaches an
# equilibrium in a number of steps proportional to $1/(\lambda\,\mathrm{wd})$
# (the Fast Equilibrium Conjecture). This chapter adds weight decay to the
# paper's model, derives the equilibrium and the time to reach it, and
# measures both on a real network.
#
# **Verdicts of this build.**
#
# ```{glue:md} ch14-verdicts
# :format: myst
# ```
#
# ## The claims
#
# None of them is the paper's (it switches weight decay off); the registry
# (`notebooks/claims.toml`) holds each one's statistic, threshold and
# expected verdict. On a BatchNorm-ReLU network trained with weight decay,
# for every $(\lambda, \mathrm{wd})$ pair of the grid:
#
# 1. every hidden layer's relative update $\lVert\Delta W\rVert/\lVert W\rVert$
#    is within 10 % of $\sqrt{2\lambda\,\mathrm{wd}}$, in every seed;
# 2. every hidden layer's gradient ELR is within 10 % of $E_*$, in every seed;
# 3. the steps to equilibrium are within 25 % of the model's, in every seed;
#
# and over the grid:
#
# 4. in every seed, at least three of the grid's pairs settle;
# 5. the slope of the steps to equilibrium against $\lambda\,\mathrm{wd}$
#    on log–log axes is $-1$ within 0.1 (mean over seeds);
# 6. with weight decay the spread of ELRs ends below that of the same
#    network trained without it.
#
# A pair that has not settled in a seed has no time to equilibrium: it fails
# claim 3 in that seed (its error counts as at least 100 %), and the slope
# (claim 5) takes its time as the run's length, a lower bound, which
# flattens the slope. A run that diverges counts as unsettled and as failing
# claims 1 and 2 in its seed (as a layer that does not move at all:
# $|\text{ratio} - 1| = 1$), and its spread counts as larger than any finite
# one (claim 6: $S_{rel} = +\infty$). Claim 6 is therefore decided seed by
# seed, by a sign test (a rank statistic, which orders an infinite spread
# like any other): a seed supports it when its spread without weight decay
# exceeds the largest spread with weight decay at the same rate; a tie
# (both runs diverged) counts against it. No mean ever averages a diverged
# run's spread.
#
# ## The model with weight decay
#
# SGD with weight decay replaces $W$ by $(1-\lambda\,\mathrm{wd})W - \lambda\nabla W$.
# For a scale-invariant layer the gradient is orthogonal to $W$ (Eq. 2), so
# the two parts add in squares and Eq. (5) becomes
#
# $$\sigma_{i+1}^2 = (1-\lambda\,\mathrm{wd})^2\,\sigma_i^2 + \frac{\lambda^2 c^2}{\sigma_i^2}.$$
#
# Weight decay shrinks the norm by a fixed factor, the gradient grows it by
# an amount that is larger the smaller the norm: there is a fixed point.

# %% tags=["parameters"]
model: str = "bnrelu6"  # network: bnrelu<depth> (BN-ReLU MLP) or resnet<6n+2>
width: int = 64  # width of bnrelu networks {>= 1}
dataset: str = "digits"  # digits (offline, quick), cifar10 or cifar100 {in digits|cifar10|cifar100}
data_root: str = "data"  # where CIFAR lives
batch_size: int = 64  # examples per step {>= 2}
steps: int = 1500  # SGD steps per run; the slowest run needs about 12/(4 λ wd) {>= 50}
log_every: int = 1  # steps between ELR measurements {>= 1}
grid: list[str] = ["0.1:0.02", "0.1:0.04", "0.2:0.01", "0.2:0.04", "0.4:0.005", "0.4:0.01", "0.4:0.02", "0.4:0.04"]  # (λ:wd) pairs "lr:wd", at least 3
lr_plain: float = 0.4  # λ of the run without weight decay, for the spread comparison {> 0}
check_claims: bool = True  # assert the measured claims (the smoke profile only runs the code)
n_seeds: int = 6  # runs per (λ, wd), seeds seed ... seed + n_seeds - 1 {>= 2}
seed: int = 0  # base seed of initialisation and data order {>= 0}

# %%
import numpy as np
import sympy as sp
from IPython.display import Markdown, display

from elr import claims as claims_mod
from elr import dynamics, equilibria, evidence, plots, symbolic, train

plots.setup()
pairs = [tuple(float(v) for v in item.split(":")) for item in grid]
if any(len(p) != 2 or p[0] <= 0 or p[1] <= 0 for p in pairs) or len(pairs) < 3:
    raise ValueError("grid: give at least 3 'lr:wd' pairs with both values > 0, e.g. ['0.1:0.02', '0.4:0.01', ...]")
if check_claims and n_seeds < evidence.min_seeds_for_sign_test(0.025):
    raise ValueError(f"n_seeds = {n_seeds}: claim 6 is a one-sided sign test at level 0.025, which needs at least "
                     f"{evidence.min_seeds_for_sign_test(0.025)} seeds to be able to hold; set n_seeds to that or more")
if not any(lr == lr_plain for lr, _ in pairs):
    raise ValueError(f"lr_plain = {lr_plain:g} is the rate of the run without weight decay, compared with the grid's "
                     "pairs at the same rate: put a pair 'lr_plain:wd' in grid, or set lr_plain to a rate of grid")
s_star, e_star = symbolic.derive_wd_fixed_point()
display(Markdown(f"SymPy's fixed point: $\\sigma_*^4 = {sp.latex(sp.factor(s_star**2))}$, so "
                 f"$E_*^2 = c^2/\\sigma_*^4 = {sp.latex(sp.factor(e_star**2))}$."))

# %% [markdown]
# The equilibrium ELR does not contain $c$: **every layer, whatever its
# base gradient, settles at the same ELR**
# $E_*^2 = \mathrm{wd}(2-\lambda\,\mathrm{wd})/\lambda$. Weight decay
# therefore removes the spread of ELRs entirely, and exponentially fast,
# where plain SGD only lets it fade like a power of the step count
# ({doc}`03_gradient_flow`). The step then turns the weight by
# $\lambda E_* = \sqrt{\lambda\,\mathrm{wd}(2-\lambda\,\mathrm{wd})} \to \sqrt{2\lambda\,\mathrm{wd}}$,
# and the whole update, gradient plus decay, has relative size
# $\lVert\Delta W\rVert/\lVert W\rVert = \sqrt{\lambda^2(E_*^2+\mathrm{wd}^2)} = \sqrt{2\lambda\,\mathrm{wd}}$
# *exactly*. Both depend on $\lambda$ and wd only through the intrinsic
# learning rate $\lambda\,\mathrm{wd}$ (and on $\lambda$ alone in the
# correction).
#
# How fast is the fixed point reached? The derivative of the map at its
# fixed point is $2(1-\lambda\,\mathrm{wd})^2-1$, again free of $c$; a
# deviation shrinks by that factor per step, so its e-folding time is
# $-1/\ln(2(1-\lambda\,\mathrm{wd})^2-1) = 1/(4\lambda\,\mathrm{wd}) - 3/8 + O(\lambda\,\mathrm{wd})$.
# Far above the fixed point the decay alone acts, at the same rate
# $(1-\lambda\,\mathrm{wd})^4 \approx 1-4\lambda\,\mathrm{wd}$ on $\sigma^4$.
# Either way, **the steps to equilibrium scale as $1/(\lambda\,\mathrm{wd})$**:
# the Fast Equilibrium Conjecture holds in the model, with the constant:
# $\sigma^4$ closes all but $e^{-2}$ of its gap in about $1/(2\lambda\,\mathrm{wd})$ steps.
# `elr prove` checks these statements (Prop. III.1) and the effect of weight
# decay on the critical rate (Prop. III.2, below):

# %%
for check in (symbolic.check_weight_decay_equilibrium, symbolic.check_weight_decay_flips):
    result = check()
    print(result.report())
    assert result.ok, result.ref

# %% [markdown]
# The model, run on the base gradients of the paper's ResNet110 without
# shortcuts (Eq. 6) at $\lambda = 0.1$, far above its critical rate: with
# weight decay all ELRs meet at $E_*$ and the spread collapses; without it
# the spread stays where the first step left it. The overshoot costs time:
# the first step blows the norms of the lowest layers up by orders of
# magnitude, and decay brings a norm down only by $(1-\lambda\,\mathrm{wd})^2$
# per step, so those layers need about
# $\ln(\sigma^2/\sigma_*^2)/(2\lambda\,\mathrm{wd})$ steps: the
# $1/(\lambda\,\mathrm{wd})$ law with a logarithmic factor for how far
# the state is from equilibrium.

# %%
c = dynamics.base_gradients_cifar_resnet(110, shortcut=False)
n_sim = 30000
sims = {"wd = 0": dynamics.simulate_sgd(np.full(c.shape, dynamics.SIGMA2_HE), c, 0.1, n_sim)}
for wd_sim in (5e-4, 5e-3):
    sims[f"wd = {wd_sim:g}"] = dynamics.simulate_sgd(np.full(c.shape, dynamics.SIGMA2_HE), c, 0.1, n_sim, wd_sim)
fig, axes = plots.plt.subplots(1, 3, figsize=(10, 3.0))
plots.layer_paths(np.arange(n_sim + 1) + 1, sims["wd = 0.005"].elr, ax=axes[0], logx=True, ylabel="ELR",
                  xlabel="step + 1")
axes[0].axhline(dynamics.equilibrium(0.1, 5e-3).elr, color="k", ls="--", lw=1)
axes[0].set_title("λ = 0.1, wd = 0.005 (dashed: $E_*$)")
for name, sim in sims.items():
    axes[1].plot(np.arange(n_sim + 1) + 1, sim.spread, label=name)
axes[1].set(xscale="log", yscale="log", xlabel="step + 1", ylabel="$S_{rel}$", title="spread, λ = 0.1")
axes[1].legend()
iotas = np.logspace(-4, -1.5, 12)
axes[2].loglog(iotas, 2 * dynamics.relaxation_steps(1.0, iotas), "k-", label="model: 2 × e-folding time")
axes[2].loglog(iotas, 1 / (2 * iotas), "C1:", label=r"$1/(2\lambda\,\mathrm{wd})$")
axes[2].set(xlabel=r"intrinsic learning rate $\lambda\,\mathrm{wd}$", ylabel="steps", title="time to equilibrium")
axes[2].legend()
plots.glue("ch14-model", fig)
spread_end = {name: float(sim.spread[-1]) for name, sim in sims.items()}
display(Markdown(f"Spread after {n_sim:,} steps at λ = 0.1: " + ", ".join(f"{k}: {v:.2e}" for k, v in spread_end.items())))

# %% [markdown]
# ```{glue:figure} ch14-model
# :name: fig-ch14-model
#
# The discrete model with weight decay (simulated, not measured), for the 109 layers of ResNet110
# without shortcuts at He initialisation. Left: per-layer ELRs (blue = lowest layer) converge to the
# common equilibrium $E_*$. Middle: the relative spread with and without weight decay. Right: the
# model's time to equilibrium against the intrinsic learning rate.
# ```
#
# ## Measured on a real network
#
# A BatchNorm-ReLU network (every hidden layer `Linear` without bias, then
# `BatchNorm1d` without affine parameters, then ReLU) trains on the digits
# data with SGD and weight decay at several $(\lambda, \mathrm{wd})$. For
# every hidden layer we record $\lVert W\rVert$, the gradient ELR and the
# relative update $\lVert\Delta W\rVert/\lVert W\rVert$ at every step.
# The equilibrium values are root-mean-squares over the last fifth of the
# run (the model predicts mean squares: $c^2 = \mathrm{E}[\lVert W\rVert^2\lVert\nabla W\rVert^2]$).
# The time to equilibrium is the first step at which $\lVert W\rVert^4$
# has closed all but $e^{-2}$ of its gap to the final plateau, the median
# over layers.

# %%
cases = {(lr, wd): train.TrainConfig(model=model, width=width, dataset=dataset, data_root=data_root,
                                     batch_size=batch_size, steps=steps, lr=lr, wd=wd, log_every=log_every,
                                     eval_batches=2) for lr, wd in pairs}
cases["plain"] = train.TrainConfig(model=model, width=width, dataset=dataset, data_root=data_root,
                                   batch_size=batch_size, steps=steps, lr=lr_plain, log_every=log_every, eval_batches=2)
runs = train.sweep_seeds(cases, seed, n_seeds)
rows = [{"lr": lr, "wd": wd, "iota": lr * wd,
         "seeds": [{"status": r.status, **equilibria.summary(r.records, lr, wd)} for r in runs[(lr, wd)]]}
        for lr, wd in pairs]
for r in rows:
    for x in r["seeds"]:  # a run that did not settle (or did not complete) is counted at the run's length
        x["ok"] = bool(x["settled"] and x["status"] == "completed")
        x["t"] = x["t_eq"] if x["ok"] else float(steps)
    r["settled"] = all(x["ok"] for x in r["seeds"])  # settled in every seed
    r["t_eq"] = float(np.median([x["t"] for x in r["seeds"]]))
    r["t_pred"] = r["seeds"][0]["t_pred"]
# a diverged run's spread is +inf, larger than any finite one; only claim 6's sign test (a rank statistic) uses it
spread_plain = np.array([equilibria.tail_spread(r.records.matrix("elr_grad")[1]) if r.status == "completed"
                         else np.inf for r in runs["plain"]])
spread_plain = np.where(np.isfinite(spread_plain), spread_plain, np.inf)
rng = lambda r, key, f: f"{min(x[key].min() for x in r['seeds']):{f}}–{max(x[key].max() for x in r['seeds']):{f}}"  # noqa: E731
display(Markdown(
    f"| λ | wd | λ·wd | settled in every seed (most steps the model needs; the tail starts at step "
    f"{rows[0]['seeds'][0]['tail_start']}) | ‖ΔW‖/‖W‖ measured "
    "(range over layers and seeds) | predicted √(2λwd) | ELR measured (range) | predicted $E_*$ | steps to equilibrium "
    "(median over seeds) | predicted | S_rel, tail (mean over seeds) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(
        f"| {r['lr']:g} | {r['wd']:g} | {r['iota']:.1e} | {'yes' if r['settled'] else 'no'} "
        f"({max(x['t_needed'] for x in r['seeds']):.0f}) | {rng(r, 'angular', '.4f')} | {r['seeds'][0]['angular_pred']:.4f} | "
        f"{rng(r, 'elr', '.3f')} | {r['seeds'][0]['elr_pred']:.3f} | {r['t_eq']:.0f} | {r['t_pred']:.0f} | "
        f"{np.mean([x['spread_end'] for x in r['seeds']]):.3f} |" for r in rows)
    + f"\n\nWithout weight decay (λ = {lr_plain:g}) the spread over the same tail is "
    + (f"{evidence.cell(evidence.mean_interval(spread_plain), digits=3)} (mean [95 % interval] over seeds)"
       if np.isfinite(spread_plain).all() else
       f"not averaged: {int((~np.isfinite(spread_plain)).sum())} of {n_seeds} runs diverged") + ". Data: "
    f"{dataset}, {steps} steps of batch {batch_size}, seeds {seed}–{seed + n_seeds - 1}. A run that did not "
    "settle is counted at the run's length."))

# %% [markdown]
# ## The Fast Equilibrium Conjecture, measured
#
# The conjecture predicts a slope of $-1$ for the steps to equilibrium
# against $\lambda\,\mathrm{wd}$ on log–log axes. In each seed we fit a
# line through all pairs of the grid and report the slope. A pair counts as
# settled in a seed when the run was long enough for its tail to be an
# equilibrium: by the tail's first step the model, started from every
# layer's own $\lVert W_0\rVert^4$ and plateau, has closed its gap to within
# $e^{-2}$ of the plateau itself (the gap shrinks by $e$ every
# $1/(4\lambda\,\mathrm{wd})$ steps or so), and every layer of the run came
# within $e^{-2}$ of its plateau before the tail. A test on the drift of
# the norm or of the ELR across the tail cannot decide this: the
# equilibrium norm $\sigma_*^2 = c/E_*$ follows the base gradient $c$ as the
# loss falls, and a single layer's ELR moves with $c$ from step to step.

# %%
iota_all = np.array([r["iota"] for r in rows])
fit = equilibria.loglog_fit(iota_all, [r["t_eq"] for r in rows])
seed_slopes = np.array([equilibria.loglog_fit(iota_all, [r["seeds"][i]["t"] for r in rows]).slope
                        for i in range(n_seeds)])
plots.glue("ch14-settled", f"{sum(r['settled'] for r in rows)} of {len(rows)}")
plots.glue("ch14-iota-span", f"{iota_all.max() / iota_all.min():.0f}")
fig, axes = plots.plt.subplots(1, 2, figsize=(9, 3.2))
for i in range(n_seeds):
    axes[0].loglog(iota_all, [r["seeds"][i]["t"] for r in rows], ".", color="C0", alpha=0.4, ms=4)
axes[0].loglog(iota_all, [r["t_eq"] for r in rows], "o", color="C0", label="measured (median over layers and seeds)")
axes[0].loglog(np.sort(iota_all), 2 * dynamics.relaxation_steps(1.0, np.sort(iota_all)), "k--", label="model")
axes[0].loglog(np.sort(iota_all), fit.predict(np.sort(iota_all)), "C1-", lw=0.8,
               label=f"fit: slope {fit.slope:.3f} ± {fit.slope_se:.3f}")
axes[0].set(xlabel=r"$\lambda\,\mathrm{wd}$", ylabel="steps to equilibrium")
axes[0].legend()
for r in rows:
    for x in r["seeds"]:
        axes[1].plot(np.full(x["angular"].shape, x["angular_pred"]), x["angular"], ".", color="C0", ms=3, alpha=0.5)
lim = [min(r["seeds"][0]["angular_pred"] for r in rows) * 0.5, max(r["seeds"][0]["angular_pred"] for r in rows) * 1.5]
axes[1].plot(lim, lim, "k--", lw=1)
axes[1].set(xscale="log", yscale="log", xlabel=r"predicted $\sqrt{2\lambda\,\mathrm{wd}}$",
            ylabel=r"measured $\|\Delta W\|/\|W\|$ (per layer)")
plots.glue("ch14-measured", fig)
plots.glue("ch14-setting", f"{model} (width {width}) on {dataset}, {steps} steps of batch {batch_size}, "
                           f"seeds {seed}–{seed + n_seeds - 1}")
plots.glue("ch14-slope", f"{fit.slope:.3f} ± {fit.slope_se:.3f}")
display(Markdown(f"Fitted slope of the medians over seeds: **{fit.slope:.3f} ± {fit.slope_se:.3f}** over the "
                 f"{len(rows)} pairs of the grid; per seed: {evidence.cell(evidence.mean_interval(seed_slopes), digits=3)} "
                 f"(mean [95 % interval]; the conjecture and the model: −1)."))

# %% [markdown]
# ```{glue:figure} ch14-measured
# :name: fig-ch14-measured
#
# Measured: {glue:text}`ch14-setting`. Left: steps until $\lVert W\rVert^4$ closed all but $e^{-2}$ of
# its gap (a run that did not settle at the run's length), against the intrinsic learning rate, with the
# model's prediction (dashed) and a least-squares fit (large dots: median over seeds; small dots: each
# seed). Right: each hidden layer's relative update at equilibrium against $\sqrt{2\lambda\,\mathrm{wd}}$,
# every seed.
# ```
#
# ## Results
#
# Claims 1 to 4 are identities over seeds, decided by the worst seed;
# claim 5 is a mean over seeds of slope + 1 with a bootstrap-t interval,
# which must lie inside ±0.1; claim 6 is an exact sign test over seeds.

# %%
worst = lambda r, key: np.array([np.max(np.abs(x[key] / x[key + "_pred"] - 1)) for x in r["seeds"]])  # noqa: E731
claims = claims_mod.Chapter("14_weight_decay", seed=seed)
for r in rows:
    name = f"λ={r['lr']:g}, wd={r['wd']:g}"
    # a diverged run (non-finite values) counts as |ratio - 1| = 1, as if nothing turned: it fails the 10 %
    claims.worst("14.angular-within-10", np.nan_to_num(worst(r, "angular"), nan=1.0, posinf=1.0), instance=name)
    claims.worst("14.elr-within-10", np.nan_to_num(worst(r, "elr"), nan=1.0, posinf=1.0), instance=name)
    # an unsettled seed fails: its error is at least 1, or the larger lower bound from the run's length
    claims.worst("14.t-eq-within-25", np.array([abs(x["t"] / x["t_pred"] - 1) if x["ok"] else max(1.0, x["t"] / x["t_pred"] - 1)
                                                for x in r["seeds"]]), instance=name)
claims.worst("14.settled", np.array([sum(r["seeds"][i]["ok"] for r in rows) for i in range(n_seeds)]))
claims.mean("14.slope", seed_slopes + 1)
# claim 6 per seed (a sign test): a diverged run's spread (NaN or +inf) is +inf; a tie counts against the claim
claims.sign("14.spread-below-plain", spread_plain,
            np.nan_to_num(np.max([[x["spread_end"] for x in r["seeds"]] for r in rows if r["lr"] == lr_plain], axis=0),
                          nan=np.inf), instance=f"λ = {lr_plain:g}")
display(Markdown(claims.table()))
plots.glue("ch14-verdicts", Markdown(claims.summary()))
for key, cid in [("v-angular", "14.angular-within-10"), ("v-elr", "14.elr-within-10"), ("v-teq", "14.t-eq-within-25")]:
    held = sum(claims.get(cid, f"λ={r['lr']:g}, wd={r['wd']:g}").verdict == "holds" for r in rows)
    plots.glue(f"ch14-{key}", f"{held} of the {len(rows)} pairs")
verdict_words = {"holds": "holds", "fails": "does not hold", "inconclusive": "is undecided at this number of seeds"}
for key, cid, inst in [("v-settled", "14.settled", None), ("v-slope", "14.slope", None),
                       ("v-spread", "14.spread-below-plain", f"λ = {lr_plain:g}")]:
    plots.glue(f"ch14-{key}", f"{verdict_words[claims.get(cid, inst).verdict]} ({evidence.shown(claims.get(cid, inst))})")

# %% [markdown]
# ## Discussion
#
# That every hidden layer turns by the predicted $\sqrt{2\lambda\,\mathrm{wd}}$
# per step in every seed holds for {glue:text}`ch14-v-angular` (claim 1);
# that its gradient ELR sits within 10 % of $E_*$, for
# {glue:text}`ch14-v-elr` (claim 2). The equilibrium is an average identity,
# $\mathrm{E}\lVert W_{i+1}\rVert^2 = \mathrm{E}\lVert W_i\rVert^2$, so the
# model expects it to survive the fluctuations of real base gradients. That
# the steps to equilibrium lie within 25 % of the model's holds for
# {glue:text}`ch14-v-teq` (claim 3). That at least three pairs settle in
# every seed {glue:text}`ch14-v-settled` (claim 4), and that the slope of
# the steps to equilibrium against $\lambda\,\mathrm{wd}$ is $-1$ within
# 0.1 {glue:text}`ch14-v-slope` (claim 5; the fit through the medians gives
# {glue:text}`ch14-slope`).
#
# What this does *not* test is the Fast Equilibrium Conjecture itself. Of
# the grid's pairs, {glue:text}`ch14-settled` settled in every seed, and the
# grid spans a factor of only {glue:text}`ch14-iota-span` in
# $\lambda\,\mathrm{wd}$. Every run starts far above its equilibrium norm,
# so the approach is mostly the decay factor $(1-\lambda\,\mathrm{wd})^{2t}$
# shrinking the norm, which sets a time of order $1/(\lambda\,\mathrm{wd})$
# by construction: the slope of $-1$ measures that decay more than the
# equilibration of training that Li, Lyu & Arora conjecture about. A test of
# the conjecture would start near the equilibrium norm (or from a trained
# network whose rate changes) and span more than a decade of
# $\lambda\,\mathrm{wd}$, and its slowest runs would need many times the
# steps the quick profile affords.
#
# ## What weight decay does to the critical rate and the spread
#
# With weight decay the ELR map of Part I becomes
# $E' = E/((1-\lambda\,\mathrm{wd})^2+\lambda^2E^2)$, and a pair of layers
# reverses its order exactly when $\lambda > (1-\lambda\,\mathrm{wd})\,\kappa_{jk}$,
# that is $\lambda > \kappa_{jk}/(1+\mathrm{wd}\,\kappa_{jk})$ (Prop. III.2).
# Weight decay lowers the critical rate, but negligibly in practice: for the
# ResNet110 profile above, $\kappa_{\ell h}(0)$ moves by the factor printed
# below. What changes qualitatively is the long run: in the model the
# spread no longer fades slowly but disappears, because $E_*$ is the same
# for every layer. On the real network, that with weight decay the spread
# ends below that of the run without it {glue:text}`ch14-v-spread`
# (claim 6).

# %%
e0 = dynamics.elr(dynamics.SIGMA2_HE, c)
kappa0 = float(dynamics.critical_lr(e0))
for wd_show in (5e-4, 5e-3):
    print(f"ResNet110 NoShort at init: κ_ℓh = {kappa0:.4g}; with wd = {wd_show:g}: "
          f"{float(dynamics.critical_lr_wd(e0, wd_show)):.4g} (factor {float(dynamics.critical_lr_wd(e0, wd_show)) / kappa0:.6f})")

# %% [markdown]
# The paper's Appendix C.1 says that shrinking all weights by $\alpha$ is
# the same as raising the learning rate by $\alpha$; it is $\alpha^2$ (the
# {doc}`errata <06_errata>` page shows it).

# %% [markdown]
# ## Checks of the model
#
# The simulation above is deterministic; these are checks of the code, not
# measured claims.

# %%
eq_sim = dynamics.equilibrium(0.1, 5e-3)
assert np.allclose(sims["wd = 0.005"].elr[-1], eq_sim.elr, rtol=1e-6), "model: every layer ends at E_*"
assert spread_end["wd = 0.005"] < 1e-6 < 1 < spread_end["wd = 0"], "model: weight decay removes the spread, plain SGD keeps it"
claims.finish(check_claims)

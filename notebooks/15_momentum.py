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
# # Momentum
#
# The paper leaves heavy-ball momentum {cite}`polyak1964` out of scope
# (Appendix C.2 {cite}`mehmeti2024weight`). The abstract of its first arXiv
# version {cite}`mehmeti2023spreads` names momentum among what must be tuned
# for balance ("careful tuning of LRs, depth, and (optionally) momentum"), and
# a one-page summary of the paper that circulates with it says the spread is
# "further reduced by momentum"; the ICML text makes no such claim. This
# chapter extends the model
# to momentum, derives the equilibrium with weight decay, works out how
# momentum moves the critical learning rate, and measures both.
#
# **Verdicts of this build.**
#
# ```{glue:md} ch15-verdicts
# :format: myst
# ```
#
# ## The claims
#
# None is the paper's (it leaves momentum out); the registry
# (`notebooks/claims.toml`) holds each one's statistic, threshold and
# expected verdict.
#
# 1. At the equilibrium with weight decay and momentum $\mu$, every hidden
#    layer's relative update is within 10 % of
#    $\sqrt{2\lambda\,\mathrm{wd}/(1+\mu)}$, in every seed (one claim per
#    $(\lambda, \mathrm{wd})$ pair). At $\mu = 0.9$ this prediction is
#    $1/\sqrt{1.9}$ times the momentum-free $\sqrt{2\lambda\,\mathrm{wd}}$,
#    so a layer within 10 % of it is more than 20 % from the momentum-free
#    value.
# 2. Measured, with $\mu = 0.9$ the spread after a few dozen steps is
#    smallest at a smaller learning rate than without momentum (per seed, the
#    best rate of the grid: a sign test).
# 3. Measured, well below $(1-\mu)\kappa_{\ell h}(0)$ momentum reduces the
#    spread (per seed, the mean spread over those rates is smaller with
#    momentum: a sign test).
#
# A run that diverges counts as failing claim 1 in its seed (as a layer that
# does not move at all: $|\text{ratio} - 1| = 1$), and its spread counts as
# larger than any finite one (claims 2 and 3: $S_{rel} = +\infty$): it is
# never the best rate, and a seed with a diverged run among the small rates
# of claim 3 has an infinite mean spread there. Both claims are therefore
# decided seed by seed by the exact sign test (a rank statistic); no mean
# over seeds averages a diverged run's spread. **A tie counts against the
# claim**: a seed whose best rates with and without momentum are the same
# grid point (claim 2), or whose runs both diverged (claim 3), is not a
# win.
#
# ## The model with momentum
#
# PyTorch's SGD with momentum $\mu$ and weight decay keeps a buffer
# $v_i = \mu v_{i-1} + \nabla W_i + \mathrm{wd}\,W_i$ and steps
# $W_{i+1} = W_i - \lambda v_i$. The paper's assumptions give the gradient
# the norm $c/\sigma_i$ and make it orthogonal to $W_i$; we add one more: it
# is also orthogonal to the previous buffer (a fresh direction, as
# independent mini-batch gradients in high dimension nearly are). Then three
# numbers per layer, $\sigma_i^2 = \lVert W_i\rVert^2$, $q_i = \lVert v_i\rVert^2$
# and $a_i = \langle W_i, v_{i-1}\rangle$, evolve *exactly*:
#
# $$p_i = \mu a_i + \mathrm{wd}\,\sigma_i^2,\quad
#   q_i = \mu^2 q_{i-1} + \frac{c^2}{\sigma_i^2} + \mathrm{wd}^2\sigma_i^2 + 2\mu\,\mathrm{wd}\,a_i,$$
# $$\sigma_{i+1}^2 = \sigma_i^2 - 2\lambda p_i + \lambda^2 q_i,\qquad a_{i+1} = p_i - \lambda q_i.$$
#
# With $\mu = \mathrm{wd} = 0$ this is Eq. (5). `elr.dynamics.simulate_sgd`
# implements it, and a test runs SGD on explicit vectors with such gradients
# and finds the same norms to $10^{-10}$.

# %% tags=["parameters"]
depth: int = 20  # depth of the NoShort CIFAR ResNet for the spread measurement (6n+2) {>= 8, %6==2}
dataset: str = "digits"  # digits (offline, quick), cifar10 or cifar100 {in digits|cifar10|cifar100}
data_root: str = "data"  # where CIFAR lives
batch_size: int = 128  # examples per step {>= 2}
steps: int = 30  # SGD steps per spread run {>= 5}
lrs: list[float] = [0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0]  # constant learning rates of the spread runs {> 0}
momenta: list[float] = [0.0, 0.9]  # heavy-ball momenta compared {>= 0, < 1}
eq_model: str = "bnrelu6"  # network of the equilibrium runs
eq_steps: int = 1500  # steps of each equilibrium run {>= 50}
eq_grid: list[str] = ["0.04:0.02", "0.1:0.02", "0.1:0.04"]  # (λ:wd) pairs of the equilibrium runs, at μ = eq_momentum
eq_momentum: float = 0.9  # momentum of the equilibrium runs {>= 0, < 1}
eq_batch_size: int = 64  # batch size of the equilibrium runs {>= 2}
sim_steps: int = 100  # steps of the model's spread simulation {>= 10}
check_claims: bool = True  # assert the measured claims (the smoke profile only runs the code)
n_seeds: int = 5  # runs per equilibrium case, seeds seed ... seed + n_seeds - 1 {>= 2}
spread_seeds: int = 10  # runs per (μ, λ) of the spread sweep, seeds seed ... seed + spread_seeds - 1 {>= 2}
seed: int = 0  # base seed of initialisation and data order {>= 0}

# %%
import numpy as np
from IPython.display import Markdown, display

from elr import claims as claims_mod
from elr import dynamics, equilibria, evidence, measure, plots, symbolic, train

plots.setup()
eq_pairs = [tuple(float(v) for v in item.split(":")) for item in eq_grid]
if any(len(p) != 2 or p[0] <= 0 or p[1] <= 0 for p in eq_pairs):
    raise ValueError("eq_grid: give 'lr:wd' pairs with both values > 0, e.g. ['0.1:0.02']")
if 0.0 not in momenta or 0.9 not in momenta:
    raise ValueError(f"momenta must hold 0.0 and 0.9, the two the claims compare; got {momenta}")
for check in (symbolic.check_momentum_equilibrium, symbolic.check_momentum_effective_rate):
    result = check()
    print(result.report())
    assert result.ok, result.ref

# %% [markdown]
# ## The equilibrium with weight decay
#
# Setting $\sigma_{i+1}^2 = \sigma_i^2$, $q_i = q_{i-1}$ and $a_{i+1} = a_i$
# gives four equations that SymPy solves (Prop. III.3, above). The relative
# update at equilibrium is
#
# $$\frac{\lVert\Delta W\rVert}{\lVert W\rVert} = \frac{\lambda\sqrt{q_*}}{\sigma_*} = \sqrt{\frac{2\lambda\,\mathrm{wd}}{1+\mu}},$$
#
# exactly, and the gradient ELR is
# $E_*^2 = (1-\mu)\,\mathrm{wd}\,(2(1+\mu)-\lambda\,\mathrm{wd})/(\lambda(1+\mu))$,
# again the same for every layer. The angular update is the one Wan et al.
# derived for their "spherical motion dynamics" {cite}`wan2021spherical`
# and Kosson et al. call the "rotational equilibrium"
# {cite}`kosson2024rotational`; here it falls out of the paper's model with
# one added assumption, and with no approximation in $\lambda\,\mathrm{wd}$.
#
# We measure it on the BatchNorm-ReLU network of {doc}`14_weight_decay`,
# now with momentum.

# %%
eq_configs = {(lr, wd): train.TrainConfig(model=eq_model, width=64, dataset=dataset, data_root=data_root,
                                           steps=eq_steps, lr=lr, wd=wd, momentum=eq_momentum, eval_batches=2,
                                           batch_size=eq_batch_size)
              for lr, wd in eq_pairs}
eq_runs = train.sweep_seeds(eq_configs, seed, n_seeds)
eq_rows = []
for (lr, wd), rs in eq_runs.items():
    eq = dynamics.equilibrium(lr, wd, eq_momentum)
    u = np.array([equilibria.tail_rms(r.records.matrix("elr_update")[1]) for r in rs])  # (seeds, layers)
    e_grad = np.array([equilibria.tail_rms(r.records.matrix("elr_grad")[1]) for r in rs])
    eq_rows.append({"lr": lr, "wd": wd, "completed": np.array([r.status == "completed" for r in rs]), "angular": u,
                    "angular_pred": eq.angular, "angular_sgd": dynamics.equilibrium(lr, wd).angular,
                    "elr": e_grad, "elr_pred": eq.elr})
display(Markdown(
    f"μ = {eq_momentum:g}, {eq_model} on {dataset}, {eq_steps} steps of batch {eq_batch_size}, seeds {seed}–"
    f"{seed + n_seeds - 1}; values are root-mean-squares over the last fifth of each run, ranges over layers and "
    "seeds.\n\n"
    "| λ | wd | ‖ΔW‖/‖W‖ measured (layer range) | predicted √(2λwd/(1+μ)) | without the 1+μ | "
    "ELR measured (layer range) | predicted $E_*$ |\n|---|---|---|---|---|---|---|\n" + "\n".join(
        f"| {r['lr']:g} | {r['wd']:g} | {r['angular'].min():.4f}–{r['angular'].max():.4f} | {r['angular_pred']:.4f} | "
        f"{r['angular_sgd']:.4f} | {r['elr'].min():.3f}–{r['elr'].max():.3f} | {r['elr_pred']:.3f} |" for r in eq_rows)))
for key, pred in (("angular", "angular_pred"), ("elr", "elr_pred")):  # ratios to the prediction, finite runs only
    ratio = np.concatenate([(r[key] / r[pred]).ravel() for r in eq_rows])
    plots.glue(f"ch15-{key}-range", f"{np.nanmin(ratio):.2f} and {np.nanmax(ratio):.2f}")

# %% [markdown]
# Measured over layers and seeds, the angular update lies between
# {glue:text}`ch15-angular-range` times $\sqrt{2\lambda\,\mathrm{wd}/(1+\mu)}$
# (claim 1 below) and the gradient ELR between {glue:text}`ch15-elr-range`
# times $E_*$. The rotation is fixed by the balance of norms alone; the ELR
# also depends on the added assumption (each gradient orthogonal to the
# buffer): if real gradients partly point against the buffer (the next step
# partly undoing the last, as in oscillation across a valley), the buffer is
# shorter than the model's and larger gradients are needed for the same
# rotation, so the ELR would sit above $E_*$. We have not measured that
# correlation, so this is a hypothesis, and the chapter claims only the
# angular update.
#
# ## How momentum moves the critical rate
#
# Without weight decay, hold $\sigma^2$ fixed and let the buffer become
# stationary: then $q = c^2/(\sigma^2(1-\mu^2))$ and
# $p = -\mu\lambda q/(1-\mu)$, and one step grows the norm by
# $\lambda^2 c^2/((1-\mu)^2\sigma^2)$ (Prop. III.4). Once the buffer has
# filled, momentum at rate $\lambda$ moves norms like plain SGD at
# $\lambda/(1-\mu)$. For flips this suggests the critical rate
# $(1-\mu)\,\kappa$, ten times smaller at $\mu = 0.9$, but the suggestion
# holds only for pairs of layers whose ELRs lie far apart. A run starts
# with an empty buffer, and the buffer has inertia: a layer with a larger
# ELR gathers radial speed faster and can overtake a slightly slower one
# long after the first step. In the momentum model the flip threshold is
# $f\,(1-\mu)\kappa$ with $f$ a function of $\mu$ and of the pair's initial
# ratio $E_j/E_k$ only (after rescaling $\sigma^2$, the buffer and the rate
# together, one step of the model has no $\lambda$ left: `elr prove`, Prop.
# III.4). For far-apart pairs $f \to 1$: the fast layer overshoots as an
# SGD step at $\lambda/(1-\mu)$ would. For close pairs the inertia decides,
# and the threshold falls to about $(1-\mu)^{3/2}/\sqrt{1+\mu}$ in $\lambda E$,
# a factor of about $\sqrt{(1-\mu)/(1+\mu)}$ below $(1-\mu)\kappa$
# ({glue:text}`ch15-close-factor` at $\mu = 0.9$). The constant in front is
# not derived: bisection on the model, for a pair whose ELRs differ by
# 0.1 %, gives {glue:text}`ch15-close-const` at $\mu = 0.9$, and `elr prove`
# (Prop. III.4) checks that it lies between 1.0 and 1.15 at
# $\mu = 0.5$, 0.9 and 0.99. With SGD ($\mu = 0$) the threshold is $\kappa$
# for every ratio.
#
# The pair that sets $\kappa_{\ell h}$, the lowest and the highest layer of a
# deep network without shortcuts, is far apart (a ratio of
# {glue:text}`ch15-ratio0` in the model of ResNet56 at initialisation), so for that pair $(1-\mu)\kappa_{\ell h}$ is
# close to the threshold, and it is the one the model below is compared
# with. Unlike SGD's, the flip does not happen in the first step (the first
# step of a run is a plain SGD step) but several steps later, when the
# buffer has built up.
#
# The model, on the base gradients of ResNet56 without shortcuts:

# %%
c = dynamics.base_gradients_cifar_resnet(56, shortcut=False)
sigma2_0 = np.full(c.shape, dynamics.SIGMA2_HE)
kappa = float(dynamics.critical_lr(dynamics.elr(sigma2_0, c)))
plots.glue("ch15-ratio0", f"{c[0] / c[-1]:.0f}")
mu_close = 0.9  # the close-pair threshold of the prose, by bisection on the model (elr.symbolic)
close = symbolic.momentum_flip_threshold(1.001, mu_close) * (1 - mu_close) / ((1 - mu_close) ** 1.5 / np.sqrt(1 + mu_close))
plots.glue("ch15-close-const", f"{close:.2f}")
plots.glue("ch15-close-factor", f"{np.sqrt((1 - mu_close) / (1 + mu_close)):.2f}")
ratios = np.logspace(-2, 1, 121)
sim = {}
for mu in (0.0, 0.5, 0.9):
    runs_mu = [dynamics.simulate_sgd(sigma2_0, c, r * kappa, sim_steps, 0.0, mu) for r in ratios]
    order = np.array([t.elr[:, 0] / t.elr[:, -1] for t in runs_mu])     # lowest over highest layer, per step
    flipped = order[:, -1] < 1
    sim[mu] = {"spread": np.array([t.spread[-1] for t in runs_mu]),
               "first_flip": float(ratios[np.argmax(flipped)]) if flipped.any() else np.nan,
               "flip_step": int(np.argmax(order[np.argmax(flipped)] < 1)) if flipped.any() else None}
    sim[mu]["argmin"] = float(ratios[np.argmin(sim[mu]["spread"])])
fig, ax = plots.plt.subplots(figsize=(6, 3.2))
for mu, color in zip(sim, ("C0", "C1", "C2")):
    ax.plot(ratios, sim[mu]["spread"], color=color, label=f"μ = {mu:g}")
    ax.axvline(1 - mu, color=color, ls=":", lw=1)
ax.set(xscale="log", xlabel=r"$\lambda / \kappa_{\ell h}(0)$", ylabel=f"$S_{{rel}}$ after {sim_steps} steps")
ax.legend()
plots.glue("ch15-model", fig)
display(Markdown("| μ | λ minimising the spread, / κ | (1−μ) | smallest λ that reverses lowest/highest, / κ | "
                 "step of that flip | smallest spread |\n|---|---|---|---|---|---|\n" + "\n".join(
                     f"| {mu:g} | {s['argmin']:.3f} | {1 - mu:.3f} | {s['first_flip']:.3f} | {s['flip_step']} | "
                     f"{s['spread'].min():.3f} |" for mu, s in sim.items())))

# %% [markdown]
# ```{glue:figure} ch15-model
# :name: fig-ch15-model
#
# The model with momentum (simulated): relative spread after the given number of steps against the
# learning rate, for ResNet56 without shortcuts at He initialisation. Dotted lines: the predicted
# critical rates $(1-\mu)\,\kappa_{\ell h}(0)$.
# ```
#
# So does momentum reduce the spread? In the model, at its best learning
# rate, slightly: the smallest spread is a little lower with momentum. At a
# *fixed* learning rate it depends on which side of $(1-\mu)\kappa$ the rate
# lies: below it, momentum reduces the spread (it is a larger effective
# rate); above it, momentum makes the spread larger. "Momentum reduces the
# spread" is true only together with a learning rate divided by about
# $1/(1-\mu)$.
#
# ## Measured: the spread with and without momentum
#
# ResNet without shortcuts on the offline digits data, trained for a few
# dozen steps at constant rates with and without momentum; the spread is
# measured at the end, from whole-layer gradient ELRs.
#
# Claim 2 compares the learning rate with the smallest spread, an argmin
# over a grid spaced by half a decade: a seed moves it by a whole grid step
# or not at all, so it is decided by the exact sign test over seeds (a seed
# whose best rates tie counts against the claim). The sweep runs `spread_seeds` seeds per
# point (10, as many as the paper's Figure 4 uses).

# %%
cases = {(mu, lr): train.TrainConfig(model=f"resnet{depth}", shortcut=False, dataset=dataset, data_root=data_root,
                                     batch_size=batch_size, steps=steps, lr=lr, momentum=mu,
                                     log_every=max(steps // 5, 1), eval_batches=1, channels_last=True)
         for mu in momenta for lr in lrs}
runs = train.sweep_seeds(cases, seed, spread_seeds)
measured = {mu: np.array([[measure.final_spread(run.records, run.status == "completed")
                           for run in (runs[(mu, lr)][i] for lr in lrs)] for i in range(spread_seeds)])
            for mu in momenta}  # (seeds, rates); NaN = diverged
kappa_seed = np.array([dynamics.critical_lr(runs[(0.0, lrs[0])][i].records.matrix("elr_grad")[1][0])
                       for i in range(spread_seeds)])
kappa_m = float(np.median(kappa_seed))
fig, ax = plots.plt.subplots(figsize=(6, 3.2))
for mu, color in zip(momenta, ("C0", "C2", "C1", "C3")):
    plots.seed_band(lrs, measured[mu], ax=ax, color=color, label=f"μ = {mu:g}")
    ax.axvline((1 - mu) * kappa_m, color=color, ls=":", lw=1)
ax.set(xscale="log", xlabel=r"learning rate $\lambda$", ylabel=f"measured $S_{{rel}}$ after {steps} steps")
ax.legend()
plots.glue("ch15-measured", fig)
plots.glue("ch15-setting", f"ResNet{depth} NoShort on {dataset}, {steps} steps of batch {batch_size}, "
                           f"seeds {seed}–{seed + spread_seeds - 1}")
# a diverged run's spread is +inf, larger than any finite one: the claims use it only in ranks (argmin, sign tests)
measured_c = {mu: np.where(np.isfinite(measured[mu]), measured[mu], np.inf) for mu in momenta}
best = {mu: np.array(lrs)[np.argmin(measured_c[mu], axis=1)] for mu in momenta}  # per seed; never a diverged run
display(Markdown(f"Measured κ_ℓh at initialisation: {kappa_m:.3g} (median over seeds). Learning rate with the "
                 "smallest final spread, per seed: "
                 + "; ".join(f"μ = {mu:g}: λ = {', '.join(f'{b:g}' for b in best[mu])}" for mu in momenta)))

# %% [markdown]
# ```{glue:figure} ch15-measured
# :name: fig-ch15-measured
#
# Measured: {glue:text}`ch15-setting`. Final relative spread against the learning rate, with and
# without momentum (mean over seeds, band from the smallest to the largest seed, dots for each seed);
# dotted lines at $(1-\mu)$ times the critical rate measured at initialisation.
# ```
#
# ## Results
#
# Claim 1 is an identity over layers and seeds, decided by the worst seed;
# claims 2 and 3 by the exact sign test over seeds, a tie counting against
# the claim.

# %%
claims = claims_mod.Chapter("15_momentum", seed=seed)
for r in eq_rows:
    worst = np.max(np.abs(r["angular"] / r["angular_pred"] - 1), axis=1)  # per seed, over layers
    # a run that did not complete, or has non-finite values, counts as |ratio - 1| = 1 (no update at all): it fails
    worst = np.where(r["completed"] & np.isfinite(worst), worst, 1.0)
    claims.worst("15.angular-within-10", worst, instance=f"λ={r['lr']:g}, wd={r['wd']:g}, μ={eq_momentum:g}")
claims.sign("15.best-smaller-with-momentum", np.log(best[0.0]), np.log(best[0.9]))
small = [i for i, lr in enumerate(lrs) if lr < 0.3 * (1 - 0.9) * kappa_m] or [0]  # at least the grid's smallest rate
# per seed, a sign test: a seed's mean over the small rates is +inf if one of its runs diverged; a tie counts against
claims.sign("15.momentum-lowers-spread-small-lr", measured_c[0.0][:, small].mean(axis=1),
            measured_c[0.9][:, small].mean(axis=1))
display(Markdown(claims.table()))
plots.glue("ch15-verdicts", Markdown(claims.summary()))
verdict_words = {"holds": "holds", "fails": "does not hold", "inconclusive": "is undecided at this number of seeds"}
held = sum(claims.get("15.angular-within-10", f"λ={r['lr']:g}, wd={r['wd']:g}, μ={eq_momentum:g}").verdict == "holds"
           for r in eq_rows)
plots.glue("ch15-v-angular", f"{held} of the {len(eq_rows)} (λ, wd) pairs")
for key, cid in [("v-best", "15.best-smaller-with-momentum"), ("v-small", "15.momentum-lowers-spread-small-lr")]:
    plots.glue(f"ch15-{key}", f"{verdict_words[claims.get(cid).verdict]} ({evidence.shown(claims.get(cid))})")
plots.glue("ch15-small-rates", ", ".join(f"{lrs[i]:g}" for i in small))
plots.glue("ch15-kappa", f"{kappa_m:.3g}")

# %% [markdown]
# ## Discussion
#
# That every layer's relative update at equilibrium lies within 10 % of
# $\sqrt{2\lambda\,\mathrm{wd}/(1+\mu)}$ in every seed holds for
# {glue:text}`ch15-v-angular` (claim 1): where it holds, the factor
# $1/\sqrt{1+\mu}$ is resolved, since the momentum-free value lies more than
# 20 % away.
#
# On the spread, the model predicts that momentum moves the best rate down to
# about $(1-\mu)\kappa$ and lowers the spread at rates well below it. Measured
# (median $\kappa_{\ell h}(0)$ over seeds: {glue:text}`ch15-kappa`), that with
# $\mu = 0.9$ the spread is smallest at a smaller rate than without momentum
# {glue:text}`ch15-v-best` (claim 2), and that momentum lowers the spread at
# the rates below $0.3\,(1-\mu)\kappa_{\ell h}(0)$ (here
# {glue:text}`ch15-small-rates`; at least the grid's smallest rate)
# {glue:text}`ch15-v-small` (claim 3).
#
# ## Checks of the model
#
# The simulations of the model above are deterministic; these are checks of
# the code and of the statements made about the model, not measured claims.

# %%
for mu in (0.0, 0.5, 0.9):
    assert abs(sim[mu]["argmin"] / (1 - mu) - 1) < 0.06, f"model, μ={mu}: the spread is smallest at (1−μ)κ"
    assert abs(sim[mu]["first_flip"] / (1 - mu) - 1) < 0.06, f"model, μ={mu}: flips start at (1−μ)κ"
assert sim[0.9]["flip_step"] > 5 and sim[0.0]["flip_step"] <= 1, "model: momentum delays the flip until the buffer fills"
assert sim[0.9]["spread"].min() < sim[0.0]["spread"].min(), "model: at its best rate, momentum leaves less spread"
low = ratios < 0.05
assert np.all(sim[0.9]["spread"][low] < sim[0.0]["spread"][low]), "model: well below (1−μ)κ momentum reduces the spread"
high = ratios > 1.5
assert np.all(sim[0.9]["spread"][high] > sim[0.0]["spread"][high]), "model: above κ momentum increases the spread"
claims.finish(check_claims)

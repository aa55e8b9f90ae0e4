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
# # Effective learning rates at initialisation
#
# ```{glue:md} ch09-verdicts
# :format: myst
# ```
#
# The model of Part I starts from the base gradients of
# {doc}`02_discrete_model`: $c_i \propto \alpha^{L-i}$ in a feed-forward
# BN-ReLU network (the paper's Eq. 6, after {cite}`yang2019meanfield`) and a
# much flatter profile with shortcuts (Eq. 7). This chapter measures them
# on freshly initialised networks with `elr.measure` and checks the norm
# identity that the discrete model is built on, $\lVert W\rVert^2 \leftarrow
# \lVert W\rVert^2 + \lambda^2 \lVert\nabla W\rVert^2$, on real training steps.
#
# ## The claims
#
# Each claim is registered, with its statistic, threshold and expected
# verdict, in the book's claims registry before the runs
# ({mod}`elr.claims`); the table at the end of the chapter decides them.
#
# 1. In a feed-forward BN-ReLU network the base gradient grows by
#    $\alpha = \sqrt{\pi/(\pi-1)}$ per layer towards the input (Eq. 6): the
#    fitted growth is within 5 % of $\alpha$ at every depth.
# 2. Without shortcuts the initial ELRs spread more than with them, at
#    every depth, and without shortcuts the spread grows with depth.
# 3. With shortcuts the base gradients grow towards the input less than
#    Eq. (7) predicts (ours: Eq. 7 leaves out the damping by signal
#    averaging that the paper's Section 3.3 mentions).
# 4. Every SGD step grows the squared weight norm by exactly
#    $\lambda^2\lVert\nabla W\rVert^2$, with real and with random-walk
#    gradients, to float32 rounding, in every seed.
#
# The data is scikit-learn's digits (8x8 grey-scale images, offline), not
# CIFAR; the quantities measured here concern initialisation and the first
# steps, where the data set matters little.

# %% tags=["parameters"]
ff_depths: list[int] = [10, 20, 40]  # depths of the BN-ReLU feed-forward nets {>= 4}
ff_width: int = 512  # width of the feed-forward nets {>= 16}
resnet_depths: list[int] = [20, 56, 110]  # CIFAR ResNet depths 6n+2 for the spread, with and without shortcuts {>= 8, %6==2}
batch_size: int = 512  # images per gradient measurement {>= 16}
n_seeds: int = 5  # initialisations per ResNet, seeds seed ... seed + n_seeds - 1 {>= 2}
ff_seeds: int = 10  # initialisations per feed-forward net, seeds seed ... seed + ff_seeds - 1 {>= 2}
seed: int = 0  # base seed of the initialisations and of the norm-identity runs {>= 0}
walk_steps: int = 10  # SGD steps of the norm-growth check {>= 2}
walk_lr: float = 0.5  # learning rate of the norm-growth check {> 0}
check_claims: bool = True  # assert the measured claims (the smoke profile only checks that the chapter runs)

# %%
from functools import partial

import numpy as np
from IPython.display import Markdown, display

from elr import data, dynamics, evidence, measure, nets, plots, train
from elr.claims import Chapter

plots.setup()
digits = data.digits(train=True)
batch = min(batch_size, len(digits))
display(Markdown(f"Data: {digits.description}; gradients on the first {batch} images."))

# %% [markdown]
# ## Feed-forward BN-ReLU networks: gradients grow by α per layer
#
# For each depth $L$ and seed, one forward and backward pass of an
# untrained `BNReLUNet` (bias-free linear layers, BatchNorm, ReLU) gives
# every layer's $\lVert W_i\rVert$ and $\lVert\nabla W_i\rVert$; their
# product is the base gradient $c_i$. A straight line through
# $\ln c_i$ against $i$ (leaving out the first and last layer, which see the
# input and the classifier) has slope $-\ln\alpha$ if Eq. (6) holds.

# %%
ff = {}
for depth in ff_depths:
    profiles, fits = [], []
    for rec in measure.at_init(partial(nets.bnrelu, depth, width=ff_width, in_features=64),
                               digits.inputs[:batch], digits.labels[:batch], ff_seeds, seed):
        c = rec.model_state(0)[1]  # c_i = ‖W_i‖·‖∇W_i‖
        inner = np.arange(1, depth - 1)
        fits.append(float(np.exp(-np.polyfit(inner, np.log(c[inner]), 1)[0])))
        profiles.append(c / c[-1])
    ff[depth] = {"alpha_fit": float(np.mean(fits)), "alpha_fits": np.array(fits),
                 "profile": np.exp(np.mean(np.log(profiles), 0))}

fig, ax = plots.plt.subplots(figsize=(5.5, 3.2))
for depth, res in ff.items():
    line, = ax.plot(np.arange(1, depth + 1), res["profile"], "o", ms=3, label=f"L = {depth}, fitted α = {res['alpha_fit']:.3f}")
    ax.plot(np.arange(1, depth + 1), dynamics.base_gradients_feedforward(depth), "-", color=line.get_color(), lw=0.8)
ax.set(yscale="log", xlabel="layer i (1 = lowest)", ylabel="$c_i / c_L$")
ax.legend()
plots.glue("ch09-feedforward", fig)
plots.glue("ch09-ff-setting", f"width {ff_width}, seeds {seed}–{seed + ff_seeds - 1}, a batch of {batch} digits images")
display(Markdown("| depth L | fitted α per seed | mean [95 % interval] | vs √(π/(π−1)) = 1.2112 |\n|---|---|---|---|\n"
                 + "\n".join(f"| {d} | {', '.join(f'{a:.4f}' for a in r['alpha_fits'])} | "
                             f"{evidence.cell(evidence.mean_interval(r['alpha_fits']), digits=4)} | "
                             f"{100 * (r['alpha_fit'] / dynamics.ALPHA - 1):+.1f}% |" for d, r in ff.items())))

# %% [markdown]
# ```{glue:figure} ch09-feedforward
# :name: fig-ch09-feedforward
#
# Measured base gradients $c_i = \lVert W_i\rVert\lVert\nabla W_i\rVert$ of untrained BN-ReLU networks
# (dots, geometric mean over seeds, normalised to the top layer) against Eq. (6), $\alpha^{L-i}$ (lines).
# Measured: {glue:text}`ch09-ff-setting`.
# ```
#
# ## ResNets: with and without shortcuts
#
# The same measurement on CIFAR ResNets (1-channel 8x8 inputs), against
# the model's Eq. (6) for NoShort and Eq. (7) for Short. We also measure the
# relative spread $S_{rel}$ of the initial ELRs (the maximum over channels
# of each layer, as in the paper) against depth.

# %%
res = {}
for depth in resnet_depths:
    for shortcut in (True, False):
        spreads, profiles = [], []
        for rec in measure.at_init(partial(nets.resnet, depth, shortcut=shortcut, in_channels=1),
                                   digits.inputs[:batch], digits.labels[:batch], n_seeds, seed):
            c = rec.model_state(0)[1]  # c_i = ‖W_i‖·‖∇W_i‖
            profiles.append(c / c[-1])
            spreads.append(float(rec.spread("elr_grad_max")[1][0]))
        res[(depth, shortcut)] = {"spread": float(np.mean(spreads)), "spreads": np.array(spreads),
                                  "profiles": np.array(profiles), "profile": np.exp(np.mean(np.log(profiles), 0)),
                                  "model_spread": float(dynamics.relative_spread(
                                      dynamics.base_gradients_cifar_resnet(depth, shortcut) / dynamics.SIGMA2_HE))}

deepest = max(resnet_depths)
fig, (ax_a, ax_b) = plots.plt.subplots(1, 2, figsize=(9.0, 3.2))
for shortcut, color in ((False, "C3"), (True, "C0")):
    name = "Short" if shortcut else "NoShort"
    ax_a.plot(res[(deepest, shortcut)]["profile"], ".", ms=3, color=color, label=f"measured, {name}")
    ax_a.plot(dynamics.base_gradients_cifar_resnet(deepest, shortcut), "-", lw=0.8, color=color,
              label=f"Eq. ({7 if shortcut else 6}), {name}")
    plots.seed_band(resnet_depths, np.array([res[(d, shortcut)]["spreads"] for d in resnet_depths]).T, ax=ax_b,
                    color=color, label=f"measured, {name}")
    ax_b.plot(resnet_depths, [res[(d, shortcut)]["model_spread"] for d in resnet_depths], ":", color=color,
              label=f"model, {name}")
ax_a.set(yscale="log", xlabel="layer (0 = lowest)", ylabel="$c_i / c_L$", title=f"ResNet{deepest}")
ax_b.set(xlabel="depth", ylabel="$S_{rel}$ at initialisation", title="spread of initial ELRs")
ax_a.legend(fontsize=7)
ax_b.legend(fontsize=7)
plots.glue("ch09-resnets", fig)
plots.glue("ch09-res-setting", f"depths {', '.join(map(str, resnet_depths))}, seeds {seed}–{seed + n_seeds - 1}, "
                               f"a batch of {batch} digits images")

# %% [markdown]
# ```{glue:figure} ch09-resnets
# :name: fig-ch09-resnets
#
# Left: measured base gradients of the deepest ResNet with and without shortcuts against the model's
# Eqs. (6) and (7). Right: relative spread of the initial ELRs against depth, measured (mean over seeds,
# band from the smallest to the largest seed, dots for each seed) and in the model. Measured:
# {glue:text}`ch09-res-setting`.
# ```
#
# The left panel compares the measured profiles with Eqs. (6) and (7).
# {glue:text}`ch09-order-sentence` {glue:text}`ch09-growth-sentence`
#
# With shortcuts, Eq. (7) makes the base gradients grow linearly towards
# the input, by a factor of
# {glue:text}`ch09-eq7-factor` over the inner layers of ResNet{glue:text}`ch09-deepest`;
# {glue:text}`ch09-eq7-sentence` The paper's Section 3.3 mentions a further
# damping of gradients in residual networks by signal averaging, which
# Eq. (7) leaves out.
#
# ## The norm identity of the discrete model
#
# Orthogonality makes every SGD step grow the squared weight norm by
# exactly $\lambda^2\lVert\nabla W\rVert^2$. We train a NoShort ResNet for a
# few steps with `elr.train`, once with the random walk (gradients replaced
# by random directions orthogonal to $W$ with the real gradient's norm) and
# once with real gradients, and compare
# $\lVert W_{t+1}\rVert^2 - \lVert W_t\rVert^2$ with
# $\lVert \Delta W_t\rVert^2 = \lambda^2\lVert\nabla W_t\rVert^2$ layer by layer.

# %%
walk_cases = {t: train.TrainConfig(model=f"resnet{min(resnet_depths)}", shortcut=False, steps=walk_steps, lr=walk_lr,
                                   batch_size=64, transform=t, log_every=1) for t in ("random_walk", "none")}
growth = {t: np.array([measure.growth_residuals(r.records, walk_lr) for r in rs])
          for t, rs in train.sweep_seeds(walk_cases, seed, n_seeds).items()}
display(Markdown("| gradients | max over layers, steps and seeds of \\|(‖W_{t+1}‖² − ‖W_t‖²)/‖ΔW_t‖² − 1\\| | "
                 "max \\|‖ΔW‖/(λ‖∇W‖) − 1\\| |\n|---|---|---|\n" + "\n".join(
                     f"| {'random walk' if k == 'random_walk' else 'real'} | {v[:, 0].max():.1e} | "
                     f"{v[:, 1].max():.1e} |" for k, v in growth.items())))

# %% [markdown]
# {glue:text}`ch09-identity-sentence` The gradient of a BN network is
# orthogonal to its weight whether it is real or random, up to the
# BatchNorm $\epsilon$ and rounding.
#
# ## Checks
#
# A claim that ranges over depths or over the two kinds of gradients is
# decided at each of them. The norm identity is a statement about every
# run, so its worst seed decides it.

# %%
claims = Chapter("09_elr_at_init", seed=seed)
for d, r in ff.items():
    claims.mean("09.alpha-fit", np.abs(r["alpha_fits"] / dynamics.ALPHA - 1), instance=f"L = {d}")
for d in resnet_depths:
    claims.paired("09.spread-noshort-vs-short", res[(d, False)]["spreads"], res[(d, True)]["spreads"],
                  instance=f"depth {d}")
depths = sorted(resnet_depths)
for a, b in zip(depths, depths[1:]):
    claims.paired("09.spread-grows-with-depth", res[(b, False)]["spreads"], res[(a, False)]["spreads"],
                  instance=f"depth {a} to {b}")
eq7 = dynamics.base_gradients_cifar_resnet(deepest, True)
# second-lowest over second-highest layer: like the fit above, leave out the layers at the edges
eq7_growth = float(np.log(eq7[1] / eq7[-2]))
claims.mean("09.short-flatter-than-eq7", np.log(res[(deepest, True)]["profiles"][:, 1]
                                                / res[(deepest, True)]["profiles"][:, -2]) - eq7_growth,
            instance=f"ResNet{deepest}")
for t, v in growth.items():
    kind = "random-walk gradients" if t == "random_walk" else "real gradients"
    claims.worst("09.norm-growth", v[:, 0], instance=kind)
    claims.worst("09.sgd-step", v[:, 1], instance=kind)
display(Markdown(claims.table()))

# the sentences of the discussion, built from the verdicts so that they read right whichever way a claim falls
spread_holds = [claims.get("09.spread-noshort-vs-short", f"depth {d}").verdict == "holds" for d in resnet_depths]
plots.glue("ch09-order-sentence", (
    "The spread is larger without shortcuts at every depth measured, as the paper relies on."
    if all(spread_holds) else
    f"That the spread is larger without shortcuts is established at {sum(spread_holds)} of the "
    f"{len(spread_holds)} depths measured (claim 2; see the table below)."))
grow_holds = [claims.get("09.spread-grows-with-depth", f"depth {a} to {b}").verdict == "holds"
              for a, b in zip(depths, depths[1:])]
plots.glue("ch09-growth-sentence", (
    "Without shortcuts the spread grows with depth at every step of the depth grid." if all(grow_holds)
    else f"That the spread grows with depth without shortcuts is established for {sum(grow_holds)} of the "
         f"{len(grow_holds)} steps of the depth grid (claim 2)."))
eq7_claim = claims.get("09.short-flatter-than-eq7", f"ResNet{deepest}")
plots.glue("ch09-eq7-factor", f"{np.exp(eq7_growth):.0f}")
plots.glue("ch09-deepest", f"{deepest}")
plots.glue("ch09-eq7-sentence", (
    f"measured, the factor is {np.exp(eq7_growth + eq7_claim.interval.estimate):.2g} (geometric mean over seeds), "
    + {"holds": "so the measurement and Eq. (7) differ in shape.",
       "fails": "so the measurement grows at least as fast as Eq. (7).",
       "inconclusive": "too close to Eq. (7) to tell them apart with these seeds."}[eq7_claim.verdict]))
identity = [claims.get(k, t) for k in ("09.norm-growth", "09.sgd-step")
            for t in ("random-walk gradients", "real gradients")]
worst = max(c.interval.estimate for c in identity[:2])
plots.glue("ch09-identity-sentence", (
    f"In float32 the identity holds in every run, with a largest relative error of {worst:.1e}."
    if all(c.verdict == "holds" for c in identity) else
    f"The identity does not hold to float32 rounding in every run: the largest relative error is {worst:.1e} "
    "(see the table below)."))
plots.glue("ch09-verdicts", Markdown(claims.summary()))
claims.finish(check_claims)

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
# # Auto rate-tuning and the discrete model
#
# This chapter builds the paper's model of weight dynamics
# {cite}`mehmeti2024weight` (its Sections 3.1-3.5) from one observation about
# normalisation layers, and computes what the model starts from: the gradient
# norms of every layer of a deep network at initialisation.

# %% tags=["parameters"]
resnet_depths: list[int] = [56, 110]  # CIFAR ResNet depths 6n+2 whose initial base gradients are plotted {>= 8, %6==2}
max_depth: int = 200  # largest network depth in the spread-versus-depth curve {>= 8}
lr: float = 0.1  # learning rate λ of the one-step illustration {> 0}

# %%
import numpy as np
import sympy as sp
from IPython.display import Markdown, display

from elr import dynamics, plots, symbolic

plots.setup()

# %% [markdown]
# ## Scale invariance
#
# Let a layer compute $z = W x$ and let a normalisation layer $N$ follow it:
# batch normalisation subtracts the mean of $z$ over the batch and divides by
# its standard deviation. Multiplying $W$ by $\gamma > 0$ multiplies $z$, its
# mean and its standard deviation by $\gamma$, so the output does not move:
# $N(\gamma W x) = N(W x)$. Two consequences drive everything that follows
# {cite}`arora2019autorate,vanlaarhoven2017l2`. Differentiating the invariance
# with respect to $W$ gives the **inverse scaling** of the gradient,
#
# $$
# \nabla_W \mathcal{L}\,(\gamma W) = \frac{1}{\gamma}\,\nabla_W \mathcal{L}\,(W),
# $$ (ch02-inverse-scaling)
#
# and differentiating it with respect to $\gamma$ at $\gamma = 1$ (Euler's
# theorem for functions homogeneous of degree zero) gives **orthogonality**,
#
# $$
# \langle \nabla_W \mathcal{L}, W \rangle = 0 .
# $$ (ch02-orthogonality)
#
# These are the paper's Eqs. (1) and (2). `elr.symbolic` checks them with
# SymPy on a batch of three samples and a layer of two weights, then in
# floating point at a random $W$, and then on every layer that `elr.nets`
# calls scale-invariant in three small networks of its own, measured by
# `elr.audit.scaling_checks` (chapter 7 measures the full-size ones):

# %%
invariance = symbolic.check_scale_invariance()
print(invariance.report())

# %% [markdown]
# ## One SGD step grows the weight norm
#
# An SGD step is $W \leftarrow W - \lambda \nabla W$. By
# {eq}`ch02-orthogonality` the two terms are orthogonal, so Pythagoras gives
# $\lVert W_{new}\rVert^2 = \lVert W\rVert^2 + \lambda^2 \lVert\nabla W\rVert^2$:
# the weight norm can only grow. By {eq}`ch02-inverse-scaling` the gradient
# norm falls as the weight norm grows. The paper models this with two
# assumptions: weights and gradients behave like random matrices with
# i.i.d. entries, and the **base gradient**
# $c = \mathbb{E}(\lVert W\rVert\,\lVert\nabla W\rVert)$, the gradient size
# with the normalisation's $1/\lVert W\rVert$ factored out, stays constant.
# With $\sigma^2 = \mathbb{E}\lVert W\rVert^2$ this yields the **discrete
# model** (the paper's Eq. 5):
#
# $$
# \sigma^2(t_{i+1}) = \sigma^2(t_i) + \frac{\lambda^2 c^2}{\sigma^2(t_i)} .
# $$ (ch02-discrete)
#
# The **effective learning rate** of a layer is the relative size of its
# gradient, $E = \lVert \nabla W\rVert/\lVert W\rVert = c/\sigma^2$ (Def. 3.2):
# it says how fast the *direction* of $W$, the only thing the network's
# output depends on, moves per unit of learning rate. Each layer's
# $\sigma^2$ grows fastest when its ELR is large, which lowers that ELR.
# This self-correction is the auto rate-tuning effect.
#
# ## Where the model starts: gradient norms at initialisation
#
# In a feed-forward network of $L$ BN-ReLU layers, gradient norms grow by a
# factor $\alpha = \sqrt{\pi/(\pi-1)} \approx 1.21$ per layer towards the
# input {cite}`yang2019meanfield`:
#
# $$
# c_i \propto \alpha^{L-i}.
# $$ (ch02-feedforward)
#
# In a residual network the gradients of the blocks add instead of multiply
# {cite}`he2016deep`, and with $s$ ReLUs per block the paper's Eq. (7) reads
#
# $$
# c_i \propto 1 + \left\lfloor \frac{L-i}{s} \right\rfloor \alpha^{s} .
# $$ (ch02-resnet)
#
# The paper's experiments use CIFAR ResNet v1 networks of depth 56 and 110,
# with shortcuts ("Short", basic blocks with $s = 2$) and without ("NoShort",
# the same layers as a plain feed-forward stack). Their scale-invariant layers
# are all convolutions: depth $- 1$ of them.

# %%
profiles = {}
for depth in resnet_depths:
    for shortcut in (False, True):
        name = f"ResNet{depth} {'Short' if shortcut else 'NoShort'}"
        profiles[name] = dynamics.base_gradients_cifar_resnet(depth, shortcut=shortcut)
kappa56 = float(dynamics.critical_lr(dynamics.elr(dynamics.SIGMA2_HE,
                                                  dynamics.base_gradients_cifar_resnet(56, shortcut=False))))

# %% tags=["hide-input"]
fig = plots.layer_profiles(profiles, ylabel="initial base gradient $c_i$ (top layer = 1)")
plots.glue("ch02-base-gradients", fig)
plots.glue("ch02-depths", ", ".join(str(d) for d in resnet_depths))
plots.glue("ch02-kappa56", f"{kappa56:.3g}")  # κ_ℓh(0) of ResNet56 NoShort in model units (c_L = 1)

# %% [markdown]
# ```{glue:figure} ch02-base-gradients
# :name: fig-ch02-base-gradients
#
# Initial base gradients $c_i$ of CIFAR ResNets of depth {glue:text}`ch02-depths`, from
# {eq}`ch02-feedforward` (NoShort) and {eq}`ch02-resnet` with $s = 2$ (Short), normalised so
# that the top layer has $c_L = 1$. The model only; no network was trained or measured here.
# ```
#
# Without shortcuts the gradient of the lowest layer of ResNet110 is
# $\alpha^{108} \approx 10^{9}$ times that of the top layer; with shortcuts the
# excursion is linear in depth instead of exponential
# ({numref}`fig-ch02-base-gradients`). All layers start from the same
# per-unit weight norm $\sigma^2(0) = 2$ (He initialisation), so the initial
# ELRs $E_i = c_i/2$ inherit this spread.
#
# **The unit of $\lambda$ in Part I.** Eqs. (6) and (7) give only the ratios
# of base gradients, so Part I measures every $c_i$ in units of the top
# layer's, $c_L = 1$, and every learning rate, ELR and critical rate in the
# matching units. The model makes this harmless: Eq. (5) is unchanged when
# every $c_i$ is multiplied by $k$ and $\lambda$ divided by $k$. Then every
# ELR is multiplied by $k$, every critical rate
# $\kappa = 1/\sqrt{E_\ell E_h}$ divided by $k$, and every ratio, spread and
# $\lambda/\kappa$ stays the same. A learning rate of Part I is therefore
# $\lambda c_L$ in a real network's terms: divide it by the network's own
# top-layer base gradient $c_L = \lVert W_L\rVert\lVert\nabla W_L\rVert$ to
# convert it, or compare rates through $\lambda/\kappa_{\ell h}$, which has
# no unit. This is why Part I's critical rate for ResNet56 without
# shortcuts is {glue:text}`ch02-kappa56`, while the rate measured on a real
# ResNet56 in {doc}`12_criticality` is of order one (the rest of the gap is
# how far the real profile is from Eq. (6)). Part I's figures and tables
# say "model units" where they show $\lambda$.
#
# ## The initial spread grows with depth
#
# The paper measures the spread of ELRs across layers with the **relative
# logarithmic spread** $S_{rel} = \operatorname{std}_i(\ln E_i)$ (Def. 4.1),
# which does not change when all ELRs are multiplied by a common factor. For
# the feed-forward profile {eq}`ch02-feedforward`, $\ln E_i$ is linear in $i$
# with slope $-\ln\alpha$, so the spread has a closed form: the standard
# deviation of $1, \dots, L$ is $\sqrt{(L^2-1)/12}$ and
#
# $$
# S_{rel}^{\text{NoShort}}(0) = \ln\alpha \,\sqrt{\frac{L^2-1}{12}} ,
# $$ (ch02-spread-feedforward)
#
# linear in depth. With shortcuts the spread does not grow without bound: it
# saturates. In {eq}`ch02-resnet` the layers of block $k = 0, \dots, K$
# (counted from the top) have $c \propto 1 + k\alpha^2$, so
# $\ln c = \ln(K\alpha^2) + \ln(k/K) + \ln(1 + 1/(k\alpha^2))$. The first
# term is shared by all layers and leaves the standard deviation unchanged,
# the last matters for a vanishing fraction of layers as $K$ grows, and
# $k/K$ becomes a uniform variable $U$ on $(0, 1]$. Since $-\ln U$ is
# exponential with rate 1,
#
# $$
# \lim_{L\to\infty} S_{rel}^{\text{Short}}(0) = \sqrt{\operatorname{Var}\ln U}
# = \sqrt{\int_0^1 \ln^2 u\,du - \Big(\int_0^1 \ln u\,du\Big)^2} = \sqrt{2 - 1} = 1 ,
# $$ (ch02-spread-short-limit)
#
# whatever $\alpha$ and the number of ReLUs per block
# (`symbolic.derive_short_spread_limit`; SymPy gives the variance
# {glue:text}`ch02-short-limit`). The table below shows the approach from
# below for this profile (for larger $\alpha^s$ it comes from above). (For
# the shallowest networks, depth 8 and 14, {eq}`ch02-resnet` gives the
# larger spread: there $1 + k\alpha^2$ still exceeds $\alpha^{2k}$. From depth 20 on the network without shortcuts spreads more.)

# %%
depths = np.arange(8, max_depth + 1, 6)
spread = {
    "NoShort, Eq. (6)": np.array([dynamics.relative_spread(dynamics.base_gradients_cifar_resnet(d, False) / 2) for d in depths]),
    "Short, Eq. (7)": np.array([dynamics.relative_spread(dynamics.base_gradients_cifar_resnet(d, True) / 2) for d in depths]),
}
n_layers = depths - 1
closed_form = np.log(dynamics.ALPHA) * np.sqrt((n_layers**2 - 1) / 12)
short_limit = symbolic.derive_short_spread_limit()
far = {d: float(dynamics.relative_spread(dynamics.base_gradients_cifar_resnet(d, True))) for d in (110, 1004, 20000)}

# %% tags=["hide-input"]
fig, ax = plots.plt.subplots()
for label, values in spread.items():
    ax.plot(depths, values, label=label)
ax.plot(depths, closed_form, "k:", label="closed form, NoShort")
ax.set(xlabel="network depth (6n+2)", ylabel="$S_{rel}$ at initialisation")
ax.legend()
plots.glue("ch02-spread-depth", fig)
plots.glue("ch02-max-depth", f"{depths[-1]}")
plots.glue("ch02-short-limit", f"{short_limit}")
display(Markdown("| depth | S_rel with shortcuts, Eq. (7) |\n|---|---|\n"
                 + "\n".join(f"| {d} | {v:.4f} |" for d, v in far.items()) + "\n| ∞ | 1 |"))

# %% [markdown]
# ```{glue:figure} ch02-spread-depth
# :name: fig-ch02-spread-depth
#
# Relative ELR spread at initialisation against depth (8 to {glue:text}`ch02-max-depth`), in the model, with
# the closed form {eq}`ch02-spread-feedforward` for the network without shortcuts.
# ```
#
# ## One step of the model
#
# What does one SGD step do to this spread? Every layer's weight norm grows
# by $\lambda^2 c_i^2/\sigma_i^2$, most where the gradient is largest, so the
# largest ELRs fall most. Below are the ELRs of ResNet110 NoShort before and
# after one step of {eq}`ch02-discrete` at the learning rate $\lambda$ of
# this chapter's parameters.

# %%
c110 = dynamics.base_gradients_cifar_resnet(110, shortcut=False)
sigma2_0 = np.full_like(c110, dynamics.SIGMA2_HE)
one_step = dynamics.simulate(sigma2_0, c110, np.array([lr]))

# %% tags=["hide-input"]
fig, ax = plots.plt.subplots()
layers = np.arange(1, c110.size + 1)
ax.plot(layers, one_step.elr[0], label="before the step")
ax.plot(layers, one_step.elr[1], label=f"after one step, $\\lambda$ = {lr:g} (model units)")
ax.axhline(1 / lr, color="C3", ls="--", lw=1, label=r"$1/\lambda$")
ax.set(yscale="log", xlabel="layer i (1 = lowest)", ylabel="ELR $E_i$")
ax.legend()
plots.glue("ch02-one-step", fig)
plots.glue("ch02-lr", f"{lr:g}")
display(Markdown(f"Spread before: {one_step.spread[0]:.2f}; after one step: {one_step.spread[1]:.2f}."))

# %% [markdown]
# ```{glue:figure} ch02-one-step
# :name: fig-ch02-one-step
#
# ELRs of the 109 layers of the ResNet110 NoShort profile before and after one step of the discrete model
# at $\lambda$ = {glue:text}`ch02-lr`.
# ```
#
# Layers whose ELR was above $1/\lambda$ overshoot: their new ELR ends up
# *below* that of layers that started lower. Chapter
# {doc}`04_large_learning_rates` makes this precise.
#
# ## Checks
#
# The claims of this chapter, restated as assertions:

# %%
assert invariance.ok, "Eqs. (1)-(2) fail for BN after a linear layer"
ff = dynamics.base_gradients_feedforward(50)
assert np.allclose(ff[:-1] / ff[1:], dynamics.ALPHA), "feed-forward gradients grow by α per layer"
assert np.allclose(spread["NoShort, Eq. (6)"], closed_form), "closed form of the NoShort spread"
deep = depths >= 20
assert np.all(spread["NoShort, Eq. (6)"][deep] > spread["Short, Eq. (7)"][deep]), "NoShort spreads more from depth 20"
assert np.all(spread["NoShort, Eq. (6)"][~deep] < spread["Short, Eq. (7)"][~deep]), "but not at depths 8 and 14"
assert np.all(np.diff(spread["NoShort, Eq. (6)"]) > 0) and np.all(np.diff(spread["Short, Eq. (7)"]) > 0), \
    "spreads grow with depth"
short_growth = np.diff(spread["Short, Eq. (7)"]) / np.diff(depths)
assert short_growth[-1] < short_growth[0] / 3, "the Short spread grows sub-linearly"
assert short_limit == 1, "Var ln U = 1: the Short spread tends to 1"
assert all(a < b < 1 for a, b in zip(list(far.values()), list(far.values())[1:])) and 1 - far[20000] < 2e-3, \
    "the Short spread approaches 1 from below"
assert np.all(one_step.sigma2[1] > one_step.sigma2[0]), "one step grows every weight norm"
assert one_step.spread[1] < one_step.spread[0], "one step lowers the spread of this profile"
print("all claims of this chapter hold")

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
# # Errata
#
# Reproducing a paper line by line finds its slips. Each entry below states
# what the ICML 2024 version of the paper {cite}`mehmeti2024weight` prints,
# what is meant or true instead, and the computation that shows it. None of
# them changes the paper's conclusions. The book and the `elr` package use
# the corrected versions throughout.

# %% tags=["parameters"]
weight_shape: list[int] = [16, 16, 3, 3]  # a convolution's weight (out, in, kh, kw) for the random-walk and He checks {>= 1}
n_draws: int = 2000  # random draws per Monte-Carlo check {>= 100}
n_check: int = 100000  # steps of x_{n+1} = x_n + 1/x_n when testing the bounds of the proof of Thm. 3.6 {>= 100}
n_layers: int = 8  # layers in the subcritical warm-up checks {>= 3}
seed: int = 0  # seed of every random draw in this chapter {>= 0}

# %%
import math
from functools import partial

import numpy as np
import torch
from IPython.display import Markdown, display

from elr import audit, dynamics, gradients, plots, symbolic

plots.setup()
generator = torch.Generator().manual_seed(seed)
rng = np.random.default_rng(seed)

# %% [markdown]
# ## Algorithm 1 (random walk) keeps the wrong component and the wrong scale
#
# **Printed.** For each layer with $e$ weights: $\sigma \leftarrow
# \lVert\nabla W\rVert_2 / e$, $R \sim \mathcal{N}(0,\sigma^2)^e$, and then
# $\nabla W \leftarrow \frac{\langle R, V\rangle}{\langle V, V\rangle} V$ with
# $V = W$, commented "orthogonalize".
#
# **Meant** (Definition 4.2 and the text): a random direction *orthogonal*
# to $W$ with the norm of the real gradient. The printed update is the
# projection of $R$ *onto* $W$, so it is parallel to $W$, and with the noise
# scaled by $1/e$ instead of $1/\sqrt{e}$ its norm is of order
# $\lVert\nabla W\rVert / e$ rather than $\lVert\nabla W\rVert$. Under a
# scale-invariant loss a step parallel to $W$ does not move the network's
# output at all.
#
# **Check.** Both versions applied to a He-initialised convolution weight and
# a random gradient. `elr.gradients.random_walk_direction` is the corrected
# version, `random_walk_as_printed` the printed one:

# %%
shape = tuple(weight_shape)
n_weights = math.prod(shape)
cos_printed, cos_ours, norm_printed, norm_ours = [], [], [], []
for _ in range(n_draws):
    weight = torch.nn.init.kaiming_normal_(torch.empty(shape, dtype=torch.float64), nonlinearity="relu",
                                           generator=generator)
    grad = torch.randn(shape, dtype=torch.float64, generator=generator)
    for fn, cos, norm in ((gradients.random_walk_as_printed, cos_printed, norm_printed),
                          (partial(gradients.random_walk_direction, per_channel=False), cos_ours, norm_ours)):
        step = fn(grad, weight, generator)
        cos.append(float(torch.dot(step.flatten(), weight.flatten()) / (step.norm() * weight.norm())))
        norm.append(float(step.norm() / grad.norm()))
cos_printed, cos_ours = np.abs(cos_printed), np.abs(cos_ours)
norm_printed, norm_ours = np.array(norm_printed), np.array(norm_ours)
display(Markdown(
    f"| over {n_draws} draws, e = {n_weights} | printed Algorithm 1 | corrected |\n|---|---|---|\n"
    f"| mean \\|cos(update, W)\\| | {cos_printed.mean():.6f} | {cos_ours.mean():.1e} |\n"
    f"| mean ‖update‖ / ‖∇W‖ | {norm_printed.mean():.2e} | {norm_ours.mean():.6f} |\n"
    f"| mean ‖update‖ · e / ‖∇W‖ | {norm_printed.mean() * n_weights:.3f} (√(2/π) = {math.sqrt(2 / math.pi):.3f}) | |"))

# %% [markdown]
# The printed update has $|\cos| = 1$ with $W$, and its norm times $e$
# averages $\sqrt{2/\pi}$, the mean of $|z|$ for a standard normal $z$: the
# projection of $R$ onto the unit vector $W/\lVert W\rVert$ is one normal
# draw of standard deviation $\lVert\nabla W\rVert/e$.
#
# ## Proposition 3.9 (3): the ratio is not stationary at $\lambda = \kappa_{jk}$
#
# **Printed.** "The ratio $E_j/E_k$ has reached a stationary point at a given
# time step $t_i$, i.e. $R_{jk}(t_j) = R_{jk}(t_{j+1})$ for all $j \ge i$, if
# and only if $\lambda(t_i) = \kappa_{jk}(t_i)$" (with $j$ reused as a time
# index).
#
# **True.** Under the proposition's own assumption $R_{jk}(t_i) > 1$, the
# choice $\lambda(t_i) = \kappa_{jk}(t_i)$ makes $R_{jk}(t_{i+1}) = 1$
# exactly: the ratio *jumps* to 1 and stays there at every later step, for
# any later learning rate. So $R_{jk}(t_i) \ne R_{jk}(t_{i+1})$; the
# stationary point is reached one step later. SymPy gives
# $R_{jk}(t_{i+1}) = 1$ at $\lambda = \kappa_{jk}$ (the `elr prove` line
# for Prop. 3.9); numerically:

# %%
e_pair = np.array([4.0, 0.25])
kappa_pair = float(dynamics.flipping_ratio(*e_pair))
pair = dynamics.simulate(1.0 / e_pair, np.ones(2), np.array([kappa_pair, 0.3, 5.0]))
ratios = pair.elr[:, 0] / pair.elr[:, 1]
display(Markdown("R over steps with λ = κ, then 0.3, then 5: " + ", ".join(f"{r:.15g}" for r in ratios)))

# %% [markdown]
# ## The proof of Theorem 3.6 (Appendix A)
#
# **Printed.** Eq. (40) unrolls $x_i^2$ with terms $1/u_k^2$ where $x_k$ is
# meant; the next line says "$x_j \ge 2(j-1)$"; Eq. (41) ends its upper
# bound with "$+\,2(i-2)$" where $1/(2(i-2))$ is meant; Eq. (42) defines
# $\gamma$ from an undefined $u_1$ and adds it *outside* the square root.
#
# **True.** $x_j^2 \ge 2(j-1)$ (from $x_{k+1}^2 = x_k^2 + 2 + 1/x_k^2$), while
# $x_j \ge 2(j-1)$ is false from $j = 3$ on whenever $x_1$ is of order one.
# The book states and proves the bound {eq}`ch05-bounds` of
# {doc}`05_large_learning_rates` instead. We also evaluated the printed
# Eq. (42), reading $u_1$ as $x_1$, on a grid of starting points: it holds
# there, although it does not follow from Eq. (41) as printed.

# %%
x1 = np.logspace(-3, 3, 121)
seq = dynamics.normalised_sequence(x1, n_check)  # seq[j - 1] = x_j in the paper's indexing
j = np.arange(1, n_check + 2)[:, None]
typo_fails = float(np.mean(seq[2:] < 2 * (j[2:] - 1)))
squared_fails = int(np.sum(seq**2 < 2 * (j - 1) * (1 - 1e-12)))
gamma = x1**2 + 1 / x1**2 - 2
printed_upper = np.sqrt(2 * j[1:] + np.log(np.sqrt(j[1:] - 1))) + gamma  # the printed Eq. (42), i >= 2
printed_fails = int(np.sum(seq[1:] > printed_upper * (1 + 1e-12)) + np.sum(seq[1:] < np.sqrt(2 * j[1:] - 2)))
lower, upper = dynamics.normalised_sequence_bounds(x1, j - 1)  # our bound, in steps n = j - 1 from x_1
ours_fails = int(np.sum((seq[1:] ** 2 < lower[1:] * (1 - 1e-12)) | (seq[1:] ** 2 > upper[1:] * (1 + 1e-12))))
display(Markdown(
    f"Over {x1.size} starting values $x_1 \\in [10^{{-3}}, 10^3]$ and {n_check:,} steps: "
    f"'$x_j \\ge 2(j-1)$' fails for {100 * typo_fails:.1f}% of the pairs $(x_1, j \\ge 3)$; "
    f"$x_j^2 \\ge 2(j-1)$ fails {squared_fails} times; the printed Eq. (42) fails {printed_fails} times; "
    f"our bound {{eq}}`ch05-bounds` fails {ours_fails} times."))

fig, (ax_a, ax_b) = plots.plt.subplots(1, 2, figsize=(8.0, 3.0))
first = seq[:40, np.argmin(np.abs(x1 - 1.0))]
ax_a.plot(np.arange(1, 41), first, "k", label="$x_j$, $x_1 = 1$")
ax_a.plot(np.arange(1, 41), 2 * (np.arange(1, 41) - 1), "C3--", label="$2(j-1)$ (printed bound)")
ax_a.plot(np.arange(1, 41), np.sqrt(2 * (np.arange(1, 41) - 1)), "C2:", label=r"$\sqrt{2(j-1)}$ (meant)")
ax_a.set(xlabel="j", ylabel="$x_j$")
ax_a.legend()

# %% [markdown]
# ## Corollary 3.10: $L - 1$ steps, and ties
#
# **Printed.** With $\lambda(t_i) = \kappa_{hh'}(t_i)$, "$h, h'$ the two layers
# with the highest effective learning rates", all ratios "converge to 1 in
# $L$ steps".
#
# **True.** Each step merges the top group with the next ELR, so $L$
# distinct ELRs agree after $L - 1$ steps (exact rational arithmetic in
# `elr prove`). And after the first merge the two highest ELRs are *equal*.
# Read literally, $\kappa_{hh'} = 1/E_h$ then merges nothing more. The
# schedule works only when $h'$ is the highest ELR *strictly below* $E_h$,
# which is how `elr.dynamics.subcritical_lr` reads it.

# %%
cor = symbolic.check_corollary_3_10()
print(cor.report())
c_rand = np.exp(rng.uniform(-3, 3, n_layers))
start = np.full(n_layers, dynamics.SIGMA2_HE)
distinct = dynamics.simulate(start, c_rand, dynamics.subcritical_policy(), n_steps=n_layers + 2)
literal = dynamics.simulate(start, c_rand, lambda i, e: dynamics.subcritical_lr(e, distinct=False),
                            n_steps=n_layers + 2)
groups_distinct = [len(np.unique(np.round(np.log(e), 9))) for e in distinct.elr]
groups_literal = [len(np.unique(np.round(np.log(e), 9))) for e in literal.elr]
ax_b.plot(groups_distinct, "o-", label="h' strictly below h (ours)")
ax_b.plot(groups_literal, "s--", label="h' = second entry (literal)")
ax_b.axvline(n_layers - 1, color="0.5", lw=0.8, ls=":", label="L − 1")
ax_b.set(xlabel="step", ylabel="distinct ELRs")
ax_b.legend()
plots.glue("ch07-checks", fig)
plots.glue("ch07-layers", f"{n_layers}")
display(Markdown(f"Spread after L − 1 = {n_layers - 1} steps: {distinct.spread[n_layers - 1]:.1e} (ours), "
                 f"{literal.spread[n_layers - 1]:.3f} (literal reading)."))

# %% [markdown]
# ```{glue:figure} ch07-checks
# :name: fig-ch07-checks
#
# Left: the normalised sequence of the proof of Theorem 3.6 against the printed bound $x_j \ge 2(j-1)$,
# which it violates, and the intended $x_j \ge \sqrt{2(j-1)}$. Right: distinct ELR values (equal to 9
# decimals in $\ln E$) under the subcritical warm-up for {glue:text}`ch07-layers` random layers, with $h'$
# read as the highest ELR strictly below the top, and read literally.
# ```
#
# ## $k_0 = 4$ is per output unit
#
# **Printed.** "Assuming He initialization, the expected initial squared
# weight norm is 2 for layer width $n$. Thus $k_0 = 4$."
#
# **True.** He initialisation {cite}`he2015delving` draws each weight with
# variance $2/\text{fan-in}$, so the squared norm of one output unit's
# weights (fan-in entries) has expectation 2, and a whole layer with $n$
# outputs has $2n$. $k_0 = \sigma^4(0) = 4$ holds per output unit (per
# channel for a convolution), which is the granularity at which the paper
# measures ELRs. Measured with PyTorch's own initialiser:

# %%
per_unit, per_layer = [], []
for _ in range(n_draws):
    w = torch.nn.init.kaiming_normal_(torch.empty(shape, dtype=torch.float64), nonlinearity="relu", generator=generator)
    per_unit.append(float((w.reshape(shape[0], -1) ** 2).sum(dim=1).mean()))
    per_layer.append(float((w**2).sum()))
display(Markdown(f"Mean squared norm over {n_draws} draws of a {shape} weight: per output channel "
                 f"{np.mean(per_unit):.4f} (expected 2), per layer {np.mean(per_layer):.2f} "
                 f"(expected 2 × {shape[0]} = {2 * shape[0]})."))

# %% [markdown]
# ## Section 3.1: max-pooling keeps auto rate-tuning, and BatchNorm removes biases
#
# **Printed.** The table of Section 3.1 lists max-pooling, and linear layers
# with a bias, among the layers that break auto rate-tuning when placed
# between a linear layer and its normalisation.
#
# **True.** Max-pooling is positively homogeneous of degree 1,
# $\max(\gamma a, \gamma b) = \gamma\max(a, b)$ for $\gamma > 0$, so it keeps
# auto rate-tuning, like ReLU. A bias breaks it before a LayerNorm but not
# before a BatchNorm, whose subtraction of the batch mean removes any
# per-channel constant. The audit of {doc}`08_scale_invariance` measures
# both (float64, $\epsilon = 10^{-12}$):

# %%
table_3_1 = {r["between W and its normalisation"]: r for r in audit.section_3_1_table()}
display(Markdown("| between W and its normalisation | paper | after BatchNorm (max change) | "
                 "after LayerNorm (max change) |\n|---|---|---|---|\n" + "\n".join(
                     f"| {k} | {table_3_1[k]['paper']} | {table_3_1[k]['batchnorm']} ({table_3_1[k]['batchnorm change']:.0e}) | "
                     f"{table_3_1[k]['layernorm']} ({table_3_1[k]['layernorm change']:.0e}) |"
                     for k in ("max-pooling", "linear layer with bias"))))

# %% [markdown]
# ## Checks

# %%
assert cos_printed.min() > 1 - 1e-9, "the printed Algorithm 1 returns a multiple of W"
assert cos_ours.max() < 1e-9 and np.allclose(norm_ours, 1.0), "the corrected walk is orthogonal with the gradient's norm"
assert abs(norm_printed.mean() * n_weights / math.sqrt(2 / math.pi) - 1) < 5 / math.sqrt(n_draws), \
    "the printed walk's norm is ‖∇W‖·|z|/e"
assert abs(ratios[1] - 1) < 1e-12 and abs(ratios[0] - 1) > 0.5, "at λ = κ the ratio jumps to 1 in one step"
assert np.allclose(ratios[1:], 1.0, atol=1e-12), "and stays at 1 for any later λ"
assert typo_fails > 0.5 and squared_fails == 0, "x_j >= 2(j-1) is false; x_j² >= 2(j-1) holds"
assert ours_fails == 0, "the corrected bound holds"
assert cor.ok, cor.detail
assert groups_distinct[n_layers - 1] == 1 and groups_literal[n_layers - 1] > 1, \
    "the literal reading of Cor. 3.10 stalls after the first merge"
assert abs(np.mean(per_unit) / 2 - 1) < 0.02 and abs(np.mean(per_layer) / (2 * shape[0]) - 1) < 0.02, \
    "He initialisation: squared norm 2 per unit, 2n per layer"
assert table_3_1["max-pooling"]["batchnorm"] == table_3_1["max-pooling"]["layernorm"] == "passes", \
    "max-pooling keeps auto rate-tuning"
assert (table_3_1["linear layer with bias"]["batchnorm"], table_3_1["linear layer with bias"]["layernorm"]) == \
    ("passes", "breaks"), "BatchNorm removes a bias, LayerNorm does not"
print("all claims of this chapter hold")

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

from elr import audit, dynamics, gradients, plots, schedules, symbolic

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
# The book states and proves the bound {eq}`ch04-bounds` of
# {doc}`04_large_learning_rates` instead. We also evaluated the printed
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
    f"our bound {{eq}}`ch04-bounds` fails {ours_fails} times."))

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
display(Markdown(f"Spread after L − 1 = {n_layers - 1} steps: {distinct.spread[n_layers - 1]:.1e} (ours), "
                 f"{literal.spread[n_layers - 1]:.3f} (literal reading)."))

# %% tags=["hide-input"]
fig, (ax_a, ax_b) = plots.plt.subplots(1, 2, figsize=(8.0, 3.0))
first = seq[:40, np.argmin(np.abs(x1 - 1.0))]
ax_a.plot(np.arange(1, 41), first, "k", label="$x_j$, $x_1 = 1$")
ax_a.plot(np.arange(1, 41), 2 * (np.arange(1, 41) - 1), "C3--", label="$2(j-1)$ (printed bound)")
ax_a.plot(np.arange(1, 41), np.sqrt(2 * (np.arange(1, 41) - 1)), "C2:", label=r"$\sqrt{2(j-1)}$ (meant)")
ax_a.set(xlabel="j", ylabel="$x_j$")
ax_a.legend()
ax_b.plot(groups_distinct, "o-", label="h' strictly below h (ours)")
ax_b.plot(groups_literal, "s--", label="h' = second entry (literal)")
ax_b.axvline(n_layers - 1, color="0.5", lw=0.8, ls=":", label="L − 1")
ax_b.set(xlabel="step", ylabel="distinct ELRs")
ax_b.legend()
plots.glue("ch06-checks", fig)
plots.glue("ch06-layers", f"{n_layers}")

# %% [markdown]
# ```{glue:figure} ch06-checks
# :name: fig-ch06-checks
#
# Left: the normalised sequence of the proof of Theorem 3.6 against the printed bound $x_j \ge 2(j-1)$,
# which it violates, and the intended $x_j \ge \sqrt{2(j-1)}$. Right: distinct ELR values (equal to 9
# decimals in $\ln E$) under the subcritical warm-up for {glue:text}`ch06-layers` random layers, with $h'$
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
# per-channel constant. The audit of {doc}`07_scale_invariance` measures
# both (float64, $\epsilon = 10^{-30}$):

# %%
table_3_1 = {r["between W and its normalisation"]: r for r in audit.section_3_1_table()}

# %% tags=["hide-input"]
display(Markdown("| between W and its normalisation | paper | after BatchNorm (max change) | "
                 "after LayerNorm (max change) |\n|---|---|---|---|\n" + "\n".join(
                     f"| {k} | {table_3_1[k]['paper']} | {table_3_1[k]['batchnorm']} ({table_3_1[k]['batchnorm change']:.0e}) | "
                     f"{table_3_1[k]['layernorm']} ({table_3_1[k]['layernorm change']:.0e}) |"
                     for k in ("max-pooling", "linear layer with bias"))))

# %% [markdown]
# ## Appendix A: the harmonic bound runs the wrong way
#
# **Printed.** "By the integral test, it is clear that
# $\sum_{k=1}^{n-1} 1/k \le \ln(n)$."
#
# **True.** The inequality is false for every $n \ge 2$: $H_{n-1} - \ln n$
# is $1 - \ln 2 \approx 0.307$ at $n = 2$ and rises towards Euler's constant
# $\gamma \approx 0.577$. The integral test gives $H_{n-1} \le 1 + \ln(n-1)$
# instead (the first term, then $\sum_{k=2}^{n-1} 1/k \le \int_1^{n-1}dx/x$).
# The extra constant is absorbed into the constant of Eq. (42), so the limit
# (43) and Theorem 3.6 stand. {doc}`04_large_learning_rates` derives the
# bound by a route that avoids the slip ($x_k^2 \ge 2k + 2$ after the first
# step) and checks it.

# %%
n_h = np.arange(2, n_check + 1)
harmonic = np.cumsum(1.0 / np.arange(1, n_check))  # H_1 ... H_{n_check - 1}
gap = harmonic[n_h - 2] - np.log(n_h)               # H_{n-1} - ln n
integral_ok = bool(np.all(harmonic[n_h - 2] <= 1 + np.log(n_h - 1) + 1e-12))
n_sym = symbolic.sp.symbols("n", positive=True, integer=True)
gap_limit = symbolic.sp.limit(symbolic.sp.harmonic(n_sym - 1) - symbolic.sp.log(n_sym), n_sym, symbolic.sp.oo)
display(Markdown(f"$H_{{n-1}} - \\ln n$ for $n = 2 \\ldots$ {n_check}: smallest {gap.min():.4f} (at $n$ = "
                 f"{n_h[np.argmin(gap)]}), largest {gap.max():.4f}; its limit (SymPy): {gap_limit} = "
                 f"{float(gap_limit):.4f}. $H_{{n-1}} \\le 1 + \\ln(n-1)$ at every such $n$: {integral_ok}."))

# %% [markdown]
# ## Appendix A, Eq. (45): the limit is $R_{kj}$
#
# **Printed.** $\lim x_i/y_i = \sigma_j^2 c_k/(\sigma_k^2 c_j) = R_{jk}$.
#
# **True.** With $x_i = \sigma_j^2/(c_j\lambda)$, $y_i = \sigma_k^2/(c_k\lambda)$
# and $E = c/\sigma^2$, the quotient $x_i/y_i = E_k/E_j = R_{kj}$, the
# inverse. The proof only needs the limit 1, which is the same for both.
#
# In the same proof and in Section 3.7, "we can rewrite Eq. 4" means Eq. (5):
# Eq. (4) is the assumption of a constant base gradient, and it is Eq. (5)
# that the substitution turns into $x_{i+1} = x_i + 1/x_i$ (checked below).

# %%
sp = symbolic.sp
s_j, s_k, c_j, c_k, lam_, s_ = sp.symbols("sigma_j^2 sigma_k^2 c_j c_k lambda sigma^2", positive=True)
x_i, y_i = s_j / (c_j * lam_), s_k / (c_k * lam_)
R_jk = (c_j / s_j) / (c_k / s_k)
eq45_is_rkj = sp.simplify(x_i / y_i - 1 / R_jk) == 0 and sp.simplify(x_i / y_i - R_jk) != 0
x_ = s_ / (c_j * lam_)
eq5_next = s_ + lam_**2 * c_j**2 / s_                                   # Eq. (5)
eq5_gives_recurrence = sp.simplify(eq5_next / (c_j * lam_) - (x_ + 1 / x_)) == 0
display(Markdown(f"$x_i/y_i = 1/R_{{jk}} = R_{{kj}}$: {eq45_is_rkj}; Eq. (5) becomes $x' = x + 1/x$: "
                 f"{eq5_gives_recurrence}."))

# %% [markdown]
# ## Proof of Proposition 3.1, Eq. (35): $\mathrm{d}L/\mathrm{d}x$, not $\mathrm{d}L/\mathrm{d}W$
#
# **Printed.** Eq. (35) writes $\gamma\,\frac{dL}{dW}(x, W)$ for the
# derivative of the linear layer with respect to its input.
#
# **True.** The chain rule of Eq. (34) needs $\frac{dL}{dx}(x, \gamma W) =
# \gamma\,\frac{dL}{dx}(x, W)$; for $L = Wx$ the derivative with respect to
# $W$ does not scale with $\gamma$ at all.

# %%
w_, xin, g_ = sp.symbols("w x gamma", positive=True)
L_ = lambda w, xx: w * xx  # noqa: E731  a linear layer, one weight and one input
dLdx = lambda w, xx: sp.diff(L_(sp.Symbol("W"), sp.Symbol("X")), sp.Symbol("X")).subs({"W": w, "X": xx})  # noqa: E731
dLdW = lambda w, xx: sp.diff(L_(sp.Symbol("W"), sp.Symbol("X")), sp.Symbol("W")).subs({"W": w, "X": xx})  # noqa: E731
eq35_dx = sp.simplify(dLdx(g_ * w_, xin) - g_ * dLdx(w_, xin)) == 0
eq35_dw = sp.simplify(dLdx(g_ * w_, xin) - g_ * dLdW(w_, xin)) == 0
display(Markdown(f"$dL/dx(x, \\gamma W) = \\gamma\\, dL/dx(x, W)$: {eq35_dx}; "
                 f"$= \\gamma\\, dL/dW(x, W)$ as printed: {eq35_dw}."))

# %% [markdown]
# ## Section 3.2 points to the wrong section
#
# **Printed.** Section 3.2, after assumption (4): "We discuss the
# limitations of this assumption in Section 4.1.2."
#
# **True.** Section 4.1.2 describes how the spread is measured. The
# limitations of a constant base gradient are discussed in Sections 4.1.3
# (the random walk, introduced to separate learning from the
# normalisation's dynamics) and 4.2 ("Model Validation and Limitations").
# Checked by reading; this book treats them in {doc}`10_short_term` and
# {doc}`11_long_term`.
#
# ## Section 4.3.2: Fromage rescales the weights
#
# **Printed.** "one could re-scale the gradients by $1/\sqrt{1+\lambda^2}$
# after every optimization step, as described by Bernstein et al. (2020)."
#
# **True.** Fromage {cite}`bernstein2020distance` divides the *weights* by
# $\sqrt{1+\lambda^2}$ after each step. A step of relative size $\lambda$
# orthogonal to $W$ grows $\lVert W\rVert$ by exactly $\sqrt{1+\lambda^2}$,
# and dividing the new weights undoes it; dividing the gradient instead
# only shortens the step, and the norm still grows.

# %%
w0 = torch.randn(weight_shape, dtype=torch.float64, generator=generator)
grad = gradients.random_walk_direction(torch.randn(weight_shape, dtype=torch.float64, generator=generator), w0,
                                      generator=generator, per_channel=False)
step_dir = grad * (w0.norm() / grad.norm())  # Fromage's step: orthogonal, relative size 1
fromage_lr = 0.5
by_weights = (w0 - fromage_lr * step_dir) / math.sqrt(1 + fromage_lr**2)
by_gradient = w0 - fromage_lr * step_dir / math.sqrt(1 + fromage_lr**2)
growth_weights = float(by_weights.norm() / w0.norm())
growth_gradient = float(by_gradient.norm() / w0.norm())
display(Markdown(f"λ = {fromage_lr}: ‖W‖ after the step, relative to before: weights rescaled {growth_weights:.12f}; "
                 f"gradient rescaled {growth_gradient:.6f} (√(1 + λ²/(1+λ²)) = "
                 f"{math.sqrt(1 + fromage_lr**2 / (1 + fromage_lr**2)):.6f})."))

# %% [markdown]
# ## Eq. (10) holds only up to Jensen's inequality
#
# **Printed.** $E = \mathbb{E}(\lVert\nabla W\rVert/\lVert W\rVert) =
# c/\sigma^2$ with $c = \mathbb{E}(\lVert W\rVert\lVert\nabla W\rVert)$ and
# $\sigma^2 = \mathbb{E}\lVert W\rVert^2$.
#
# **True.** Even when $\lVert W\rVert\lVert\nabla W\rVert = c$ holds exactly
# in every draw, $\mathbb{E}(\lVert\nabla W\rVert/\lVert W\rVert) =
# c\,\mathbb{E}(1/\lVert W\rVert^2) \ge c/\mathbb{E}\lVert W\rVert^2$ by
# Jensen's inequality ($1/x$ is convex), with equality only when
# $\lVert W\rVert$ does not vary. For a weight of many entries the norm
# barely varies and the gap is small; for one output unit of a small fan-in
# it is not (the exact ratio is $k/(k-2)$ for fan-in $k$). The book reads Eq. (10) as the definition $E := c/\sigma^2$ of the
# model's variables and measures ELRs as $\lVert\nabla W\rVert/\lVert W\rVert$
# per layer.

# %%
a_, b_ = sp.symbols("a b", positive=True)
jensen_two_point = sp.factor(sp.Rational(1, 2) * (1 / a_ + 1 / b_) - 1 / ((a_ + b_) / 2))
jensen = {}
for fan_in in (9, 144):  # one output unit of a 1x3x3 and of a 16x3x3 convolution, He-initialised
    norms2 = (torch.randn(n_draws, fan_in, dtype=torch.float64, generator=generator) ** 2).sum(dim=1) * 2 / fan_in
    jensen[fan_in] = float((1 / norms2).mean() * norms2.mean())  # E(1/‖W‖²) E‖W‖², the ratio of the two sides
display(Markdown(f"Two equally likely norms² a, b: $E(1/X) - 1/E(X)$ = ${sp.latex(jensen_two_point)}$ ≥ 0. He "
                 f"initialisation, {n_draws} draws: $E(\\lVert\\nabla W\\rVert/\\lVert W\\rVert)$ over $c/\\sigma^2$ = "
                 + ", ".join(f"{v:.3f} (fan-in {k})" for k, v in jensen.items()) + "."))

# %% [markdown]
# ## Table 3: OneCycle's momentum stays at zero, as printed
#
# **Printed.** Table 3 trains with MOMENTUM 0 and OneCycle with
# CYCLEMOMENTUM TRUE, BASEMOMENTUM 0 and MAXMOMENTUM 0.0.
#
# **What it means.** A review of this book asked whether the OneCycle rows of
# Table 1 trained with momentum, since PyTorch's `OneCycleLR` cycles the
# optimiser's momentum between `base_momentum` and `max_momentum`, whose
# defaults are 0.85 and 0.95, even when the optimiser was built with
# momentum 0. With the values Table 3 prints, the momentum stays at zero;
# with the defaults it would not. So the table as printed shows no
# confound, but a reimplementation that leaves the defaults would add
# momentum to exactly the OneCycle rows. The OneCycle of `elr`
# (`elr.dynamics.one_cycle`) schedules only the learning rate.

# %%
# Table 3's OneCycle on SGD built with momentum 0, with its printed momenta and with torch's defaults
table3_onecycle = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.4, total_steps=100, pct_start=0.1,
                          div_factor=20, final_div_factor=2000, anneal_strategy="cos", cycle_momentum=True)
momenta_table3 = schedules.torch_schedule(partial(table3_onecycle, base_momentum=0.0, max_momentum=0.0), 99,
                                          lr=0.4, key="momentum")
momenta_default = schedules.torch_schedule(table3_onecycle, 99, lr=0.4, key="momentum")
display(Markdown(f"Momentum over the run: with Table 3's values {momenta_table3.min():g} to {momenta_table3.max():g}; "
                 f"with torch's defaults {momenta_default.min():.3f} to {momenta_default.max():.3f}."))

# %% [markdown]
# ## Appendix C.1: shrinking the weights by α raises the learning rate by α²
#
# **Printed.** "if all weights are reduced by a factor $\alpha$, this
# corresponds to an increase of the global learning rate by a factor
# $\alpha$, as per Eq 1."
#
# **True.** By Eq. (1) the gradient grows by $\alpha$ when the weight shrinks
# by $\alpha$, so the relative step $\lambda\lVert\nabla W\rVert/\lVert W\rVert$
# grows by $\alpha^2$: the equivalent learning rate is $\alpha^2\lambda$.
# One step of the model (Eq. 5) from weights divided by α, scaled back,
# against one step at λα² and at λα from the original weights:

# %%
alpha = 3.0
sigma2_a, c_a = np.array([2.0, 5.0]), np.array([0.3, 1.1])
shrunk = dynamics.discrete_step(sigma2_a / alpha**2, c_a, 0.1) * alpha**2   # weights divided by α, λ = 0.1
faster = dynamics.discrete_step(sigma2_a, c_a, 0.1 * alpha**2)             # original weights, λ·α²
as_printed = dynamics.discrete_step(sigma2_a, c_a, 0.1 * alpha)            # original weights, λ·α
display(Markdown(f"Largest relative difference: with λα² {float(np.max(np.abs(shrunk / faster - 1))):.1e}, "
                 f"with λα {float(np.max(np.abs(shrunk / as_printed - 1))):.3f}."))

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
assert abs(gap.min() - (1 - math.log(2))) < 1e-12 and gap.min() > 0.3, "H_{n-1} > ln n for every n >= 2"
assert abs(float(gap_limit) - 0.5772156649) < 1e-9 and integral_ok, "the gap tends to γ; H_{n-1} <= 1 + ln(n-1) holds"
assert eq45_is_rkj and eq5_gives_recurrence, "Eq. (45) is R_kj; Eq. (5), not (4), becomes x' = x + 1/x"
assert eq35_dx and not eq35_dw, "Eq. (35) needs dL/dx"
assert abs(growth_weights - 1) < 1e-12 and growth_gradient > 1 + 0.1 * fromage_lr**2, \
    "Fromage's factor keeps the norm when it rescales the weights, not the gradient"
assert jensen[9] > 1.15 and 1 < jensen[144] < 1.05, "E(‖∇W‖/‖W‖) >= c/σ², far above for small fan-in"
assert np.all(momenta_table3 == 0) and momenta_default.min() >= 0.85 - 1e-9 and momenta_default.max() <= 0.95 + 1e-9, \
    "Table 3's OneCycle keeps momentum 0; torch's defaults would cycle it between 0.85 and 0.95"
assert np.allclose(shrunk, faster, rtol=1e-12) and not np.allclose(shrunk, as_printed, rtol=1e-3), \
    "shrinking weights by α equals raising λ by α², not α"
print("all claims of this chapter hold")

"""SymPy derivations of the paper's statements, each checked by a second, independent route.

Every ``check_*`` function *derives* its result from the discrete model,
Eq. (5), with SymPy (a solved ODE, a factorisation, an identity simplified
to zero) and then confronts it with the numeric implementation in
:mod:`elr.dynamics` on random inputs. A change to a formula in either place
makes the check fail. ``elr prove`` runs :func:`prove_all`.

Symbols: ``s`` is σ² (a squared weight norm), ``c`` a base gradient, ``lam``
the learning rate λ; suffixes ``j``, ``k`` name two layers.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import textwrap
import traceback
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np
import sympy as sp

from elr import dynamics

# Positive symbols: norms, base gradients, rates and time are all > 0 in the model.
s, c, lam, t, h, gamma = sp.symbols("sigma2 c lambda t h gamma", positive=True)
sj, sk, cj, ck = sp.symbols("sigma2_j sigma2_k c_j c_k", positive=True)
E, Ej, Ek = sp.symbols("E E_j E_k", positive=True)
x = sp.symbols("x", positive=True)


@dataclass(frozen=True)
class Check:
    """The outcome of checking one statement of the paper."""

    ref: str        # where the statement is in the paper
    statement: str  # what is claimed, in words
    method: str     # how it was checked
    ok: bool
    detail: str     # the numbers behind the verdict
    implements: tuple[str, ...] = ()  # the elr code whose numbers decide the verdict (see `statement`)

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        checks = f" [checks {', '.join(self.implements)}]" if self.implements else ""
        return f"[{mark}] {self.ref:<14} {self.statement}{checks} -- {self.method}: {self.detail}"

    def report(self, width: int = 88) -> str:
        """The same, wrapped over several lines for a page."""
        wrap = lambda label, text: textwrap.fill(text, width, initial_indent=label,  # noqa: E731
                                                 subsequent_indent=" " * len(label))
        lines = [f"{'verified' if self.ok else 'FAILED'}: {self.ref}, {self.statement}"]
        if self.implements:
            lines.append(wrap("  checks: ", ", ".join(self.implements)))
        return "\n".join(lines + [wrap("  how:    ", self.method), wrap("  result: ", self.detail)])


# ------------------------------------------------------------ the model, symbolically


def step(s_, c_, lam_=lam):
    """Eq. (5) as a SymPy expression: the next squared norm."""
    return s_ + lam_**2 * c_**2 / s_


def ratio(sj_, cj_, sk_, ck_):
    """R_jk = E_j / E_k = c_j σ_k² / (c_k σ_j²), Eq. (11)."""
    return (cj_ / sj_) / (ck_ / sk_)


def kappa2(sj_, cj_, sk_, ck_):
    """κ_jk² = σ_j² σ_k² / (c_j c_k), Eq. (24) squared."""
    return sj_ * sk_ / (cj_ * ck_)


def is_zero(expr) -> bool:
    return sp.simplify(sp.together(expr)) == 0


def _rng() -> np.random.Generator:
    return np.random.default_rng(20240721)


def _log_uniform(rng, lo, hi, size):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


# ------------------------------------------------------------------ derivations


def derive_closed_form():
    """Theorem 3.4: solve the λ → 0 limit of Eq. (5). Returns (ode, σ²(t)).

    With t_i = i λ², Eq. (5) gives the difference quotient
    (σ²(t+λ²) − σ²(t))/λ² = c²/σ²(t) exactly; its limit is dσ²/dt = c²/σ².
    """
    f = sp.Function("f")
    quotient = sp.simplify((step(s, c) - s) / lam**2)
    if quotient != c**2 / s:
        raise AssertionError(f"difference quotient of Eq. 5 is {quotient}, not c**2/sigma2")
    s0 = sp.symbols("sigma2_0", positive=True)
    ode = sp.Eq(f(t).diff(t), quotient.subs(s, f(t)))
    sols = sp.dsolve(ode, f(t), ics={f(0): s0})
    sols = sols if isinstance(sols, list) else [sols]
    positive = [sol.rhs for sol in sols if sp.simplify(sol.rhs.subs(t, 0) - s0) == 0]
    if len(positive) != 1:
        raise AssertionError(f"expected one solution through sigma2(0) > 0, got {sols}")
    return ode, positive[0], s0


def derive_short_spread_limit():
    """The limit of S_rel for Eq. (7) as the depth grows: the standard deviation of ln U, U uniform on (0, 1].

    With s ReLUs per block, c_i ∝ 1 + k α^s with k = floor((L−i)/s) running over 0..K, each value s times.
    ln c_i = ln(K α^s) + ln(k/K) + ln(1 + 1/(k α^s)); the first term is common to all layers and drops out
    of a standard deviation, the last vanishes for all but a vanishing fraction of layers, and k/K tends to
    a uniform variable. So S_rel → sqrt(Var ln U) = sqrt(∫ ln²u du − (∫ ln u du)²) = sqrt(2 − 1) = 1, free
    of α and s. Returns the SymPy value of that variance.
    """
    u = sp.symbols("u", positive=True)
    mean = sp.integrate(sp.log(u), (u, 0, 1))
    return sp.simplify(sp.integrate(sp.log(u) ** 2, (u, 0, 1)) - mean**2)


def derive_elr_map():
    """The ELR form of Eq. (5): E' = E / (1 + λ² E²), with E = c/σ²."""
    e_next = c / step(s, c)
    mapped = (E / (1 + lam**2 * E**2)).subs(E, c / s)
    return e_next, mapped


def derive_flip_factor():
    """f(E_j) − f(E_k) for the ELR map f, factorised: (E_j − E_k)(1 − λ² E_j E_k) / (positive)."""
    f = lambda e: e / (1 + lam**2 * e**2)  # noqa: E731
    return sp.factor(f(Ej) - f(Ek))


# ----------------------------------------------------------------------- checks


def statement(ref: str, *implements: str):
    """Mark a check with the paper reference it verifies and the elr code it verifies.

    ``implements`` names, by dotted path, every function (or constant) of elr whose numbers the check's
    verdict depends on: breaking any of them must make the check fail, and ``tests/test_prove.py`` breaks
    each one in-process to show that it does. The names are printed with the verdict and kept on the
    returned :class:`Check` (and on the function, for a check that raises).
    """
    def mark(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs) -> Check:
            return dataclasses.replace(fn(*args, **kwargs), implements=implements)

        run.ref, run.implements = ref, implements
        return run
    return mark



@statement('Eqs. 1-2', "elr.nets.scale_invariant_layers", "elr.audit.scaling_checks")
def check_scale_invariance() -> Check:
    """Eqs. (1)-(2) for a linear layer followed by batch normalisation (3 samples, 2 weights)."""
    w1, w2 = sp.symbols("w1 w2", real=True)
    data = [(1, 2), (3, -1), (0, 1)]

    def normalised(a, b):
        z = [a * x1 + b * x2 for x1, x2 in data]
        mean = sum(z) / 3
        var = sp.factor(sum((zi - mean) ** 2 for zi in z) / 3)  # factor: pulls γ² out of the sqrt
        return [(zi - mean) / sp.sqrt(var) for zi in z]

    out = normalised(w1, w2)
    scaled = normalised(gamma * w1, gamma * w2)
    invariant = all(is_zero(sp.factor(a - b)) for a, b in zip(scaled, out))
    grads = [[sp.diff(o, w) for w in (w1, w2)] for o in out]
    orthogonal = all(is_zero(w1 * g1 + w2 * g2) for g1, g2 in grads)
    at_scaled = {w1: gamma * w1, w2: gamma * w2}
    inverse = all(is_zero(sp.factor(g.subs(at_scaled, simultaneous=True) - g / gamma))
                  for row in grads for g in row)
    # second route: the same quantities in floating point at a random point
    rng = _rng()
    a, b, g = rng.normal(), rng.normal(), 3.7
    f = sp.lambdify((w1, w2), out[0])
    num_inv = abs(f(g * a, g * b) - f(a, b))
    gf = sp.lambdify((w1, w2), grads[0])
    ga, gs = np.array(gf(a, b)), np.array(gf(g * a, g * b))
    num_orth = abs(ga @ np.array([a, b])) / (np.linalg.norm(ga) * math.hypot(a, b))
    num_scale = np.linalg.norm(gs * g - ga) / np.linalg.norm(ga)
    # elr's own networks: every layer elr.nets calls scale-invariant obeys Eqs. (1)-(2) (and Prop. 3.1: scaling
    # it leaves the other layers' gradients alone), measured by elr.audit in float64 with BN's eps at 1e-30,
    # where what is left is rounding (chapter 7)
    net_worst = _scaling_residuals_of_elr_nets()
    net_ok = max(net_worst.values()) < 1e-10
    ok = (invariant and orthogonal and inverse and num_inv < 1e-12 and num_orth < 1e-12 and num_scale < 1e-12
          and net_ok)
    return Check("Eqs. 1-2", "BN(γW) = BN(W), ∇ at γW is ∇/γ, and <∇W, W> = 0; so for every layer elr.nets "
                             "calls scale-invariant",
                 "SymPy identities on a 3-sample batch, then floats at a random W; elr.audit.scaling_checks "
                 "on a BN-ReLU MLP (with and without shortcuts) and a ResNet8 of elr.nets",
                 ok, f"symbolic {invariant}/{inverse}/{orthogonal}; float residuals "
                     f"{num_inv:.1e}, {num_scale:.1e}, cos={num_orth:.1e}; elr.nets: worst "
                     + ", ".join(f"{k} {v:.0e}" for k, v in net_worst.items()))


def _scaling_residuals_of_elr_nets() -> dict[str, float]:
    """The largest scaling residuals (:func:`elr.audit.worst_scaling_residuals`) over small nets of elr.nets."""
    import torch

    from elr import audit, nets

    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # the nets initialise from torch's global generator; leave it as it was
        torch.manual_seed(0)
        models = [(nets.bnrelu(3, width=16, in_features=8), (16, 8)),
                  (nets.bnrelu(3, width=16, in_features=8, shortcut=True), (16, 8)),
                  (nets.resnet(8, in_channels=1), (8, 1, 8, 8))]
    checks = [audit.scaling_checks(model, torch.randn(shape, generator=gen), torch.randint(0, 10, shape[:1], generator=gen))
              for model, shape in models]
    return audit.worst_scaling_residuals(*checks)


@statement('Thm. 3.4', "elr.dynamics.continuous_sigma2", "elr.dynamics.discrete_step")
def check_theorem_3_4() -> Check:
    """Closed form of the gradient flow, against elr.dynamics and the discrete model as λ → 0."""
    _, sol, s0 = derive_closed_form()
    matches_paper = is_zero(sol - sp.sqrt(2 * c**2 * t + s0**2))
    rng = _rng()
    tt, cc, ss = _log_uniform(rng, 1e-3, 1e3, 200), _log_uniform(rng, 1e-2, 1e2, 200), _log_uniform(rng, 1e-2, 1e2, 200)
    exact = sp.lambdify((t, c, s0), sol, "numpy")(tt, cc, ss)
    impl_err = float(np.max(np.abs(dynamics.continuous_sigma2(tt, cc, ss) / exact - 1)))
    # second route: the discrete model with t_i = i λ² approaches dsolve's solution, error ∝ λ².
    c_layers, s_layers, horizon = np.array([0.5, 2.0, 8.0]), np.full(3, dynamics.SIGMA2_HE), 4.0
    errors = []
    for lr in (0.2, 0.1, 0.05):
        n = int(round(horizon / lr**2))
        traj = dynamics.simulate(s_layers, c_layers, np.full(n, lr))
        target = sp.lambdify((t, c, s0), sol, "numpy")(horizon, c_layers, s_layers)
        errors.append(float(np.max(np.abs(traj.sigma2[-1] / target - 1))))
    orders = [errors[i] / errors[i + 1] for i in range(2)]
    converges = all(3.5 < o < 4.5 for o in orders)
    ok = matches_paper and impl_err < 1e-12 and converges
    return Check("Thm. 3.4", "gradient flow dσ²/dt = c²/σ² has σ²(t) = √(2c²t + σ⁴(0)) (Eqs. 12-15)",
                 "dsolve of the λ→0 limit of Eq. 5 vs elr.dynamics.continuous_sigma2, and the "
                 "discrete model as λ halves",
                 ok, f"implementation rel. err {impl_err:.1e}; discrete error at λ=0.2,0.1,0.05: "
                     + ", ".join(f"{e:.1e}" for e in errors)
                     + f" (shrinks by {orders[0]:.2f}, {orders[1]:.2f}: first order in λ²)")


@statement('Thm. 3.5', "elr.dynamics.continuous_sigma2", "elr.dynamics.elr")
def check_theorem_3_5() -> Check:
    """ELR ratios under the gradient flow tend to 1, along the derived R_jk(t)."""
    _, sol, s0 = derive_closed_form()
    s0j, s0k = sp.symbols("sigma2_0j sigma2_0k", positive=True)
    r = ratio(sol.subs({c: cj, s0: s0j}), cj, sol.subs({c: ck, s0: s0k}), ck)
    lim = sp.limit(r, t, sp.oo)
    rng = _rng()
    cc = _log_uniform(rng, 1e-3, 1e3, (100, 2))
    ss = _log_uniform(rng, 1e-2, 1e2, (100, 2))
    # the whole path, not only the limit: elr.dynamics against the derived R_jk(t) at finite times (a flow
    # σ² = √(a c² t + b) with other a or b has the same limit but another path)
    r_num = sp.lambdify((t, cj, ck, s0j, s0k), r, "numpy")
    path_err = 0.0
    for tt in (1e-2, 1.0, 1e2, 1e4):
        e = dynamics.elr(dynamics.continuous_sigma2(tt, cc, ss), cc)
        path_err = max(path_err, float(np.max(np.abs(e[:, 0] / e[:, 1] / r_num(tt, cc[:, 0], cc[:, 1], ss[:, 0],
                                                                                 ss[:, 1]) - 1))))
    e_late = dynamics.elr(dynamics.continuous_sigma2(1e14, cc, ss), cc)
    e_early = dynamics.elr(ss, cc)
    late = np.abs(np.log(e_late[:, 0] / e_late[:, 1]))
    early = np.abs(np.log(e_early[:, 0] / e_early[:, 1]))
    ok = lim == 1 and path_err < 1e-12 and float(late.max()) < 1e-3 and bool(np.all(late <= early + 1e-12))
    return Check("Thm. 3.5", "under the gradient flow every ratio R_jk(t) → 1 (Eqs. 16-17)",
                 "SymPy limit of R_jk built from the derived σ²(t); elr.dynamics against that R_jk(t) at "
                 "t = 0.01 … 1e4 and at t = 1e14",
                 ok, f"limit = {lim}; path rel. err {path_err:.1e}; max |ln R| from {early.max():.2f} at t=0 "
                     f"to {late.max():.1e}")


@statement('Lemma (ours)', "elr.dynamics.elr_step", "elr.dynamics.discrete_step", "elr.dynamics.elr")
def check_elr_map() -> Check:
    """Our lemma: E' = E/(1+λ²E²); its maximum 1/(2λ) bounds every ELR after one step."""
    e_next, mapped = derive_elr_map()
    identity = is_zero(e_next - mapped)
    f = E / (1 + lam**2 * E**2)
    crit = sp.solve(sp.diff(f, E), E)
    peak = sp.simplify(f.subs(E, crit[0])) if len(crit) == 1 else None
    rng = _rng()
    ss, cc = _log_uniform(rng, 1e-3, 1e3, (50, 6)), _log_uniform(rng, 1e-3, 1e3, (50, 6))
    lr = _log_uniform(rng, 1e-3, 1e3, 50)
    via_sigma = dynamics.elr(dynamics.discrete_step(ss, cc, lr), cc)
    via_map = dynamics.elr_step(dynamics.elr(ss, cc), lr)
    err = float(np.max(np.abs(via_map / via_sigma - 1)))
    bound = bool(np.all(via_sigma <= 1 / (2 * lr[:, None]) * (1 + 1e-12)))
    flip = derive_flip_factor()
    expected = (Ej - Ek) * (1 - lam**2 * Ej * Ek) / ((1 + lam**2 * Ej**2) * (1 + lam**2 * Ek**2))
    flip_ok = is_zero(flip - expected)
    ok = identity and crit == [1 / lam] and peak == 1 / (2 * lam) and err < 1e-12 and bound and flip_ok
    return Check("Lemma (ours)", "E_{i+1} = E_i/(1+λ²E_i²), maximal 1/(2λ) at E = 1/λ; order kept iff λ²E_jE_k < 1",
                 "SymPy identity, stationary point and factorisation; elr.dynamics.elr_step vs Eq. 5",
                 ok, f"identity {identity}, argmax {crit}, max {peak}, f(E_j)−f(E_k) = {flip}; "
                     f"rel. err {err:.1e}; bound holds {bound}")


@statement('Prop. 3.7', "elr.dynamics.discrete_step")
def check_proposition_3_7() -> Check:
    """Ratios shrink: R_{jk} decreases iff R_jk > 1 (Eqs. 19-23)."""
    r_now = ratio(sj, cj, sk, ck)
    d = sk / sj - step(sk, ck) / step(sj, cj)  # Eq. (20): positive iff R shrinks
    eq22 = (sk**2 * cj**2 * lam**2 - sj**2 * ck**2 * lam**2) / (sj * (sj**2 * sk + sk * cj**2 * lam**2))
    matches_eq22 = is_zero(d - eq22)
    factor = sp.simplify(d / (r_now - 1))  # the sign argument: d = (R - 1) · (something > 0)
    positive = bool(factor.is_positive)
    rng = _rng()
    ss, cc = _log_uniform(rng, 1e-2, 1e2, (5000, 2)), _log_uniform(rng, 1e-2, 1e2, (5000, 2))
    lr = _log_uniform(rng, 1e-3, 1e3, 5000)
    r0 = dynamics.elr(ss[:, 0], cc[:, 0]) / dynamics.elr(ss[:, 1], cc[:, 1])
    nxt = dynamics.discrete_step(ss, cc, lr)
    r1 = dynamics.elr(nxt[:, 0], cc[:, 0]) / dynamics.elr(nxt[:, 1], cc[:, 1])
    agree = bool(np.all((r1 < r0) == (r0 > 1)))
    # the signs alone hold for any step of the form σ² + g(λ) c²/σ²: the step itself must be Eq. (5)'s R'
    r_next = sp.lambdify((sj, cj, sk, ck, lam), ratio(step(sj, cj), cj, step(sk, ck), ck), "numpy")
    step_err = float(np.max(np.abs(r1 / r_next(ss[:, 0], cc[:, 0], ss[:, 1], cc[:, 1], lr) - 1)))
    ok = matches_eq22 and positive and agree and step_err < 1e-12
    return Check("Prop. 3.7", "R_jk strictly decreases if R_jk > 1 and increases if R_jk < 1",
                 "Eq. 22 re-derived from Eq. 5; (Eq. 20)/(R−1) is positive; 5000 random steps of "
                 "elr.dynamics.discrete_step against R' of Eq. 5",
                 ok, f"Eq. 22 {matches_eq22}; (Eq.20)/(R-1) = {factor} > 0: {positive}; numeric agreement {agree}; "
                     f"R' rel. err {step_err:.1e}")


@statement('Prop. 3.9', "elr.dynamics.discrete_step", "elr.dynamics.flipping_ratio")
def check_proposition_3_9() -> Check:
    """Flipping conditions: sign(R' − 1) = sign(R − 1) · sign(κ − λ) (Eqs. 25-30)."""
    r_now, r_next = ratio(sj, cj, sk, ck), ratio(step(sj, cj), cj, step(sk, ck), ck)
    k2 = kappa2(sj, cj, sk, ck)
    # Eq. (26) written as LHS - RHS, against the factorised Eq. (29)
    lhs = sj * sk**2 * cj + sj * cj * ck**2 * lam**2
    rhs = sj**2 * sk * ck + sk * cj**2 * ck * lam**2
    eq29 = sp.expand(lhs - rhs - (cj * ck * lam**2 - sj * sk) * (sj * ck - sk * cj)) == 0
    matches_eq25 = is_zero(r_next - lhs / rhs)
    factor = sp.simplify((r_next - 1) / ((r_now - 1) * (k2 - lam**2)))
    positive = bool(factor.is_positive)
    at_kappa = sp.simplify(r_next.subs(lam, sp.sqrt(k2)))
    rng = _rng()
    ss, cc = _log_uniform(rng, 1e-2, 1e2, (5000, 2)), _log_uniform(rng, 1e-2, 1e2, (5000, 2))
    e0 = dynamics.elr(ss, cc)
    kap = dynamics.flipping_ratio(e0[:, 0], e0[:, 1])
    lr = kap * _log_uniform(rng, 1e-2, 1e2, 5000)
    e1 = dynamics.elr(dynamics.discrete_step(ss, cc, lr), cc)
    flipped = (e0[:, 0] > e0[:, 1]) != (e1[:, 0] > e1[:, 1])
    agree = bool(np.all(flipped == (lr > kap)))
    e1k = dynamics.elr(dynamics.discrete_step(ss, cc, kap), cc)
    merge_err = float(np.max(np.abs(e1k[:, 0] / e1k[:, 1] - 1)))
    ok = eq29 and matches_eq25 and positive and at_kappa == 1 and agree and merge_err < 1e-9
    return Check("Prop. 3.9", "R flips iff λ > κ_jk, keeps its side iff λ < κ_jk, and becomes exactly 1 iff λ = κ_jk",
                 "Eq. 29 expanded; (R'−1)/((R−1)(κ²−λ²)) positive; R' at λ=κ; 5000 random steps of elr.dynamics",
                 ok, f"Eq. 25 {matches_eq25}, Eq. 29 {eq29}, factor > 0: {positive}, R'(λ=κ) = {at_kappa}; "
                     f"numeric flips agree {agree}, merge err {merge_err:.1e}")


@statement('Prop. A.1', "elr.dynamics.discrete_step")
def check_proposition_a_1() -> Check:
    """Flip at most once: the expansion of κ²(t+1), Eqs. (47)-(52), and our stronger bound κ' >= 2λ."""
    r_now, k2 = ratio(sj, cj, sk, ck), kappa2(sj, cj, sk, ck)
    k2_next = kappa2(step(sj, cj), cj, step(sk, ck), ck)
    eq50 = k2 + lam**2 / r_now + lam**2 * r_now + lam**4 / k2
    expansion = is_zero(k2_next - eq50)
    # κ'² − 4λ² = (κ − λ²/κ)² + λ² (√R − 1/√R)²  >= 0, so κ' >= 2λ after every step, for any λ.
    kap = sp.sqrt(k2)
    sq = sp.sqrt(r_now)
    stronger = is_zero(k2_next - 4 * lam**2 - (kap - lam**2 / kap) ** 2 - lam**2 * (sq - 1 / sq) ** 2)
    rng = _rng()
    n_runs, n_layers, n_steps = 200, 8, 30
    ss = _log_uniform(rng, 1e-2, 1e2, (n_runs, n_layers))
    cc = _log_uniform(rng, 1e-3, 1e3, (n_runs, n_layers))
    kap0 = dynamics.critical_lr(dynamics.elr(ss, cc))
    lr = kap0 * _log_uniform(rng, 1e-2, 1e2, n_runs)
    traj = dynamics.simulate(ss, cc, np.broadcast_to(lr, (n_steps, n_runs)))
    sign = np.sign(np.log(dynamics.elr_ratios(traj.elr)))
    changes = (sign[1:] != sign[:-1])
    late_flips = int(changes[1:].sum())
    min_kappa_ratio = float(np.min(_pairwise_min_kappa(traj.elr[1:]) / lr))
    ok = expansion and stronger and late_flips == 0 and min_kappa_ratio >= 2 * (1 - 1e-12)
    return Check("Prop. A.1", "at constant λ a ratio flips at most once, and only in the first step",
                 "Eq. 50 re-derived from Eq. 5; identity κ'² − 4λ² = sum of squares; 200 random runs of 30 steps",
                 ok, f"Eq. 50 {expansion}; κ'>=2λ identity {stronger}; flips after step 0: {late_flips}; "
                     f"min κ/λ after step 0: {min_kappa_ratio:.3f}")


def _pairwise_min_kappa(e: np.ndarray) -> np.ndarray:
    """min over pairs j != k of κ_jk, i.e. 1/sqrt(product of the two largest ELRs)."""
    top2 = np.sort(e, axis=-1)[..., -2:]
    return 1 / np.sqrt(top2[..., 0] * top2[..., 1])


@statement('Thm. 3.6', "elr.dynamics.discrete_step", "elr.dynamics.normalised_sequence",
           "elr.dynamics.normalised_sequence_bounds")
def check_theorem_3_6(n_max: int = 1_000_000) -> Check:
    """Substitution x = σ²/(cλ) and the asymptotics x_n² = x0² + 2n + ½ ln n + O(1)."""
    x_next = step(s, c) / (c * lam)
    reduces = is_zero(x_next.subs(s, x * c * lam) - (x + 1 / x))
    rng = _rng()
    lr, cc, ss = 0.3, _log_uniform(rng, 1e-2, 1e2, 5), _log_uniform(rng, 1e-2, 1e2, 5)
    traj = dynamics.simulate(ss, cc, np.full(200, lr))
    xs = dynamics.normalised_sequence(ss / (cc * lr), 200)
    sub_err = float(np.max(np.abs(traj.sigma2 / (cc * lr) / xs - 1)))
    x0 = np.array([1e-2, 0.5, 1.0, 3.0, 1e2])
    seq = dynamics.normalised_sequence(x0, n_max)
    n = np.arange(1, n_max + 1)
    x2 = seq[1:] ** 2
    lower, upper = dynamics.normalised_sequence_bounds(x0, n[:, None])
    in_bounds = bool(np.all((x2 >= lower * (1 - 1e-12)) & (x2 <= upper * (1 + 1e-12))))
    # x_n² − x0² − 2n = Σ_{k<n} 1/x_k² grows like ½ ln n: its slope against ln n over the last decade
    rest = x2 - x0**2 - 2 * n[:, None]
    lo, hi = n_max // 10 - 1, n_max - 1
    slope = (rest[hi] - rest[lo]) / (np.log(n[hi]) - np.log(n[lo]))
    # and the O(1) remainder settles (for x0 of order one; a large x1 = x0 + 1/x0 delays it by ~x1² steps)
    small = (x0 + 1 / x0) <= 4
    drift = rest - 0.5 * np.log(n[:, None])
    settle = float(np.max(np.abs(drift[hi, small] - drift[lo, small])))
    # the theorem's conclusion: R_jk = y_n/x_n → 1 for any two starting points, like 1/n (x_n² − y_n² stays
    # bounded while both grow like 2n)
    ratio_mid = float(np.max(np.abs(seq[n_max // 10] / seq[n_max // 10].mean() - 1)))
    ratio_err = float(np.max(np.abs(seq[-1] / seq[-1].mean() - 1)))
    a_, b_, k_ = sp.symbols("a b k", positive=True)
    lim = sp.limit(sp.sqrt((a_ + 2 * k_ + sp.log(k_) / 2) / (b_ + 2 * k_ + sp.log(k_) / 2)), k_, sp.oo)
    converges = lim == 1 and ratio_err < 1e-2 and 8 < ratio_mid / ratio_err < 12
    ok = (reduces and sub_err < 1e-10 and in_bounds and settle < 1e-3 and bool(np.all(np.abs(slope - 0.5) < 0.03))
          and converges)
    return Check("Thm. 3.6", "at constant λ every R_jk → 1; x = σ²/(cλ) obeys x' = x + 1/x, "
                             "x_n² = x0² + 2n + ½ ln n + O(1)",
                 f"SymPy substitution; elr.dynamics vs the recurrence; {n_max:,} steps from x0 = "
                 + ", ".join(f"{v:g}" for v in x0),
                 ok, f"substitution {reduces} (num. err {sub_err:.1e}); corrected Eq. 42 bounds hold: {in_bounds}; "
                     f"slope of x_n²−x0²−2n vs ln n over the last decade: "
                     + ", ".join(f"{v:.3f}" for v in slope)
                     + f"; remainder moves {settle:.1e} (x0 + 1/x0 <= 4); R → 1: limit {lim}, max |x_n/x̄_n − 1| "
                     f"{ratio_mid:.1e} at n={n_max // 10:,}, {ratio_err:.1e} at n={n_max:,} (like 1/n: {converges})")


@statement('Cor. 3.10', "elr.dynamics.subcritical_lr", "elr.dynamics.simulate")
def check_corollary_3_10() -> Check:
    """Subcritical warm-up: no ratio flips, and L distinct ELRs become equal after exactly L − 1 steps."""
    r_hh = ratio(step(sj, cj), cj, step(sk, ck), ck).subs(lam, sp.sqrt(kappa2(sj, cj, sk, ck)))
    merges = sp.simplify(r_hh) == 1
    # κ_hh' is the smallest flipping ratio: any other pair has E_j = E_h/(1+a), E_k = E_h'/(1+b), a, b >= 0.
    a, b = sp.symbols("a b", nonnegative=True)
    smallest = sp.simplify(kappa2(1, Ej / (1 + a), 1, Ek / (1 + b)) / kappa2(1, Ej, 1, Ek)) == (1 + a) * (1 + b)
    # Exact route: ELRs as fractions; λ² = 1/(E_h E_h') is rational, so E' = E/(1+λ²E²) is exact.
    rng = _rng()
    exact_steps = []
    for n_layers in range(2, 8):
        for _ in range(3):
            e = [Fraction(int(v)) / 64 for v in rng.integers(1, 10_000, n_layers)]
            groups = [len(set(e))]
            while len(set(e)) > 1 and len(groups) < 2 * n_layers:
                top = max(e)
                lam2 = 1 / (top * max(v for v in e if v < top))
                e = [v / (1 + lam2 * v * v) for v in e]
                groups.append(len(set(e)))
            exact_steps.append(groups == list(range(groups[0], 0, -1)) and len(groups) - 1 == groups[0] - 1)
    exact = all(exact_steps)
    # Floating point with elr.dynamics: no flips, and agreement within 1e-9 after at most L − 1 steps.
    # (Often sooner: near λ ≈ 1/E the ELR map is flat, so nearby ELRs are squeezed quadratically.)
    late, flips = 0, 0
    for n_layers in range(2, 16):
        cc = _log_uniform(rng, 1e-3, 1e3, (20, n_layers))
        ss = _log_uniform(rng, 1e-1, 1e1, (20, n_layers))
        traj = dynamics.simulate(ss, cc, lambda i, e: dynamics.subcritical_lr(e), n_steps=n_layers - 1)
        late += int(np.sum(_n_groups(traj.elr[-1]) != 1))
        order = np.argsort(traj.elr[0], axis=-1)
        ranked = np.take_along_axis(traj.elr, np.broadcast_to(order, traj.elr.shape), axis=-1)
        flips += int(np.sum(np.diff(ranked, axis=-1) < -1e-9 * ranked[..., 1:]))
    ok = merges and smallest and exact and late == 0 and flips == 0
    return Check("Cor. 3.10", "with λ = κ_hh' no ratio flips and all L ELRs agree after L − 1 steps (not L)",
                 "R_hh' at λ=κ_hh' simplifies to 1; exact rational runs (L = 2..7); 280 float runs (L = 2..15)",
                 ok, f"merge {merges}; κ_hh' minimal {smallest}; exact: one group fewer per step, equal after "
                     f"L−1 steps in {sum(exact_steps)}/{len(exact_steps)} runs; float: not agreeing after L−1 "
                     f"steps {late}, flips {flips}")


def _n_groups(e: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Number of distinct ELR values per run (values within rtol count as one)."""
    srt = np.sort(e, axis=-1)
    gaps = srt[..., 1:] > srt[..., :-1] * (1 + rtol)
    return 1 + gaps.sum(axis=-1)


# ------------------------------------------------- Part III: beyond the paper

wd, mu, y = sp.symbols("wd mu y", positive=True)


def wd_step(s_, c_, lam_=lam, wd_=wd):
    """SGD with weight decay on a scale-invariant layer: σ'² = (1 − λ wd)² σ² + λ² c²/σ²."""
    return (1 - lam_ * wd_) ** 2 * s_ + lam_**2 * c_**2 / s_


def derive_wd_fixed_point():
    """The positive fixed point σ*² of ``wd_step`` and its ELR E* = c/σ*²."""
    at = {c: 1, lam: sp.Rational(1, 10), wd: sp.Rational(1, 100)}  # any point with λ wd < 2
    roots = [r for r in sp.solve(sp.Eq(wd_step(s, c), s), s) if r.subs(at) > 0]
    if len(roots) != 1:
        raise AssertionError(f"expected one positive fixed point, got {roots}")
    s_star = sp.simplify(roots[0])
    return s_star, sp.simplify(c / s_star)


def derive_momentum_fixed_point():
    """Fixed point of the mean-field momentum model (``dynamics.simulate_sgd``): returns q*/σ² and E*²."""
    a, p, q = sp.symbols("a p q", real=True)
    # p = μ a + wd σ²; q = μ² q + c²/σ² + wd² σ² + 2 μ wd a; 0 = −2λ p + λ² q; a = p − λ q
    eqs = [sp.Eq(p, mu * a + wd * s), sp.Eq(q, mu**2 * q + c**2 / s + wd**2 * s + 2 * mu * wd * a),
           sp.Eq(0, -2 * lam * p + lam**2 * q), sp.Eq(a, p - lam * q)]
    sol = sp.solve(eqs, [a, p, q, c], dict=True)
    sol = [d for d in sol if sp.simplify(d[c]).could_extract_minus_sign() is False] or sol
    if not sol:
        raise AssertionError("the momentum fixed point has no solution")
    d = sol[0]
    e2 = sp.simplify((d[c] / s) ** 2)     # E*² = c²/σ⁴ at the fixed point
    angular2 = sp.simplify(lam**2 * d[q] / s)  # (‖ΔW‖/‖W‖)² = λ² q/σ²
    return angular2, e2


@statement('Prop. III.1', "elr.dynamics.equilibrium", "elr.dynamics.simulate_sgd", "elr.dynamics.relaxation_steps")
def check_weight_decay_equilibrium() -> Check:
    """Weight decay: fixed point, E* independent of c, angular update √(2λwd), relaxation time ~ 1/(4λwd)."""
    s_star, e_star = derive_wd_fixed_point()
    e2_expected = wd * (2 - lam * wd) / lam
    e_ok = is_zero(e_star**2 - e2_expected) and not e_star.has(c)
    iota = sp.symbols("iota", positive=True)  # the intrinsic learning rate λ·wd
    tangential = sp.sqrt(lam * wd * (2 - lam * wd)).subs(wd, iota / lam)
    limit_ok = sp.limit(tangential / sp.sqrt(2 * iota), iota, 0) == 1
    # the full update ΔW = −λ(g + wd W) is orthogonal-plus-radial: (‖ΔW‖/‖W‖)² = λ²(E² + wd²) = 2 λ wd exactly
    angular_ok = is_zero(lam**2 * (e2_expected + wd**2) - 2 * lam * wd)
    slope = sp.simplify(sp.diff(wd_step(s, c), s).subs(s, s_star))
    slope_ok = is_zero(slope - (2 * (1 - lam * wd) ** 2 - 1))
    tau = -1 / sp.log(2 * (1 - iota) ** 2 - 1)
    tau_series = sp.series(tau, iota, 0, 1).removeO()
    tau_ok = is_zero(sp.expand(tau_series - (1 / (4 * iota) - sp.Rational(3, 8))))
    # numbers: elr.dynamics against the formulas, and the measured e-folding time
    rng = _rng()
    errs, tau_errs = [], []
    for lr_, wd_ in [(0.1, 1e-3), (0.5, 5e-4), (1.0, 1e-2), (0.05, 5e-2)]:
        cc = _log_uniform(rng, 1e-2, 1e2, 4)
        eq = dynamics.equilibrium(lr_, wd_)
        steps = int(40 * dynamics.relaxation_steps(lr_, wd_))
        tr = dynamics.simulate_sgd(cc / eq.elr * 1.001, cc, lr_, steps, wd_)  # start 0.1% off equilibrium
        errs.append(float(np.max(np.abs(tr.elr[-1] / eq.elr - 1))))
        errs.append(float(np.max(np.abs(tr.angular[-1] / eq.angular - 1))))
        dev = np.abs(tr.sigma2[:, 0] / eq.sigma2(cc[0]) - 1)
        k = int(dynamics.relaxation_steps(lr_, wd_) * 5)
        measured = k / np.log(dev[0] / dev[k])
        tau_errs.append(abs(measured / dynamics.relaxation_steps(lr_, wd_) - 1))
    # and elr's formulas against the derived ones directly, at 200 random (λ, wd) with λ wd up to 0.25: the
    # simulation above cannot tell a small-λwd approximation (E*² ≈ 2wd/λ, τ ≈ 1/(4λwd)) from the exact value
    lrs, wds = _log_uniform(rng, 1e-2, 1.0, 200), _log_uniform(rng, 1e-4, 0.25, 200)
    e_fn, tau_fn = sp.lambdify((lam, wd), e_star, "numpy"), sp.lambdify(iota, tau, "numpy")
    formula_err = max(max(abs(dynamics.equilibrium(a, b).elr / e_fn(a, b) - 1),
                          abs(dynamics.equilibrium(a, b).angular / math.sqrt(2 * a * b) - 1)) for a, b in zip(lrs, wds))
    formula_err = max(formula_err, float(np.max(np.abs(dynamics.relaxation_steps(lrs, wds) / tau_fn(lrs * wds) - 1))))
    ok = (e_ok and limit_ok and angular_ok and slope_ok and tau_ok and max(errs) < 1e-9 and max(tau_errs) < 0.01
          and formula_err < 1e-12)
    return Check("Prop. III.1", "SGD + weight decay: E*² = wd(2 − λwd)/λ for every layer whatever c; "
                                "λE* → √(2λwd); ‖ΔW‖/‖W‖ = √(2λwd); relaxation 1/(4λwd) − 3/8 + O(λwd) steps",
                 "SymPy fixed point, limit, derivative and series; elr.dynamics.simulate_sgd at 4 (λ, wd) against "
                 "elr.dynamics.equilibrium and relaxation_steps; both against the derived formulas at 200 (λ, wd)",
                 ok, f"E* {e_ok}, limit {limit_ok}, angular {angular_ok}, slope {slope_ok}, τ series {tau_ok}; "
                     f"simulated vs formula max rel. err {max(errs):.1e}; e-folding time vs formula {max(tau_errs):.1e}; "
                     f"elr's E*, angular update and τ vs the derivation {formula_err:.1e}")


@statement('Prop. III.2', "elr.dynamics.critical_lr_wd", "elr.dynamics.simulate_sgd")
def check_weight_decay_flips() -> Check:
    """Weight decay lowers the flipping threshold: R flips iff λ > (1 − λwd) κ_jk."""
    a = (1 - lam * wd) ** 2
    f = lambda e: e / (a + lam**2 * e**2)  # noqa: E731
    mapped = is_zero(c / wd_step(s, c) - f(c / s))
    factor_ok = is_zero(sp.factor(f(Ej) - f(Ek)) * (a + lam**2 * Ej**2) * (a + lam**2 * Ek**2)
                        - (Ej - Ek) * (a - lam**2 * Ej * Ek))
    # λ = (1 − λ wd) κ solved for λ
    kap = sp.symbols("kappa", positive=True)
    lam_c = sp.solve(sp.Eq(lam, (1 - lam * wd) * kap), lam)
    crit_ok = len(lam_c) == 1 and is_zero(lam_c[0] - kap / (1 + wd * kap))
    rng = _rng()
    wrong, map_err, crit_err = 0, 0.0, 0.0
    f_num = sp.lambdify((E, lam, wd), f(E), "numpy")
    crit_num = sp.lambdify((kap, wd), lam_c[0], "numpy") if crit_ok else None
    for _ in range(200):
        e = _log_uniform(rng, 1e-2, 1e2, 2)
        wd_ = float(_log_uniform(rng, 1e-3, 1.0, 1)[0])
        lam_star = float(dynamics.critical_lr_wd(e, wd_))
        if crit_num is not None:
            crit_err = max(crit_err, abs(lam_star / crit_num(1 / math.sqrt(e[0] * e[1]), wd_) - 1))
        for lr_ in (0.97 * lam_star, 1.03 * lam_star):
            tr = dynamics.simulate_sgd(1.0 / e, np.ones(2), lr_, 1, wd_)
            map_err = max(map_err, float(np.max(np.abs(tr.elr[1] / f_num(e, lr_, wd_) - 1))))
            flipped = (tr.elr[1, 0] - tr.elr[1, 1]) * (e[0] - e[1]) < 0
            wrong += int(flipped != (lr_ > lam_star))
    ok = mapped and factor_ok and crit_ok and wrong == 0 and map_err < 1e-12 and crit_err < 1e-12
    return Check("Prop. III.2", "with weight decay E' = E/((1 − λwd)² + λ²E²); a pair flips iff λ > κ/(1 + wd κ)",
                 "SymPy ELR map, factorisation and solve; 200 random pairs 3% either side of "
                 "elr.dynamics.critical_lr_wd, one step of elr.dynamics.simulate_sgd each",
                 ok, f"map {mapped}, factor {factor_ok}, threshold {crit_ok}; misclassified {wrong} of 400; "
                     f"simulated E' vs the map {map_err:.1e}, critical_lr_wd vs the solved threshold {crit_err:.1e}")


@statement('Prop. III.3', "elr.dynamics.equilibrium", "elr.dynamics.simulate_sgd")
def check_momentum_equilibrium() -> Check:
    """Heavy-ball momentum + weight decay: the angular update at equilibrium is √(2λwd/(1+μ)), exactly."""
    angular2, e2 = derive_momentum_fixed_point()
    ang_ok = is_zero(angular2 - 2 * lam * wd / (1 + mu))
    e2_expected = (1 - mu) * wd * (2 * (1 + mu) - lam * wd) / (lam * (1 + mu))
    e_ok = is_zero(e2 - e2_expected)
    reduces = is_zero(e2_expected.subs(mu, 0) - wd * (2 - lam * wd) / lam)
    rng = _rng()
    errs = []
    for lr_, wd_, mu_ in [(0.1, 5e-4, 0.9), (0.3, 1e-2, 0.9), (0.05, 1e-3, 0.5), (1.0, 1e-3, 0.99)]:
        cc = _log_uniform(rng, 1e-2, 1e2, 3)
        eq = dynamics.equilibrium(lr_, wd_, mu_)
        steps = int(60 / (lr_ * wd_ * 4 / (1 + mu_) * (1 - mu_) + 1e-12) ** 0.5 + 200 * 1 / (1 - mu_))
        steps = min(max(steps, 20000), 400000)
        tr = dynamics.simulate_sgd(cc / eq.elr, cc, lr_, steps, wd_, mu_)
        errs.append(float(np.max(np.abs(tr.angular[-1] / eq.angular - 1))))
        errs.append(float(np.max(np.abs(tr.elr[-1] / eq.elr - 1))))
    ok = ang_ok and e_ok and reduces and max(errs) < 1e-6
    return Check("Prop. III.3", "SGD + momentum μ + wd: ‖ΔW‖/‖W‖ → √(2λwd/(1+μ)) and "
                                "E*² = (1−μ) wd (2(1+μ) − λwd)/(λ(1+μ)), the same for every layer",
                 "SymPy solve of the 4-equation fixed point of the mean-field model; "
                 "elr.dynamics.simulate_sgd at 4 (λ, wd, μ)",
                 ok, f"angular {ang_ok}, E* {e_ok}, μ=0 reduces to Prop. III.1 {reduces}; "
                     f"simulated vs formula max rel. err {max(errs):.1e}")


def momentum_flips(e0: np.ndarray, lr: float, momentum: float, n_steps: int = 4000) -> int | None:
    """The first step at which two layers of the momentum model (wd = 0, empty buffer) swap their ELR order,
    or None. ``e0``: the two initial ELRs; the model is :func:`elr.dynamics.simulate_sgd` with c = E·σ²."""
    e0 = np.asarray(e0, dtype=float)
    tr = dynamics.simulate_sgd(np.ones(2), e0, lr, n_steps, 0.0, momentum)
    e = tr.c / tr.sigma2
    sign = np.sign(e[:, 0] - e[:, 1])
    swapped = np.nonzero(sign != sign[0])[0]
    return int(swapped[0]) if swapped.size else None


def momentum_flip_threshold(ratio: float, momentum: float, n_steps: int | None = None, iters: int = 24) -> float:
    """The smallest λ/((1−μ)κ) at which a pair with initial ELR ratio ``ratio`` (> 1) flips, from an empty
    buffer, by bisection (the model depends on λ only through λE, so one pair stands for all with this ratio).
    Near the threshold the flip comes late, after some 10/(1−μ) steps: ``n_steps`` defaults to 40/(1−μ)."""
    n_steps = int(40 / (1 - momentum)) + 10 if n_steps is None else n_steps
    e0 = np.array([ratio, 1.0])
    unit = (1 - momentum) / math.sqrt(ratio)  # (1−μ)κ with κ = 1/√(E_j E_k)
    lo, hi = 1e-4, 4.0
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if momentum_flips(e0, mid * unit, momentum, n_steps) is None:
            lo = mid
        else:
            hi = mid
    return hi


@statement('Prop. III.4', "elr.dynamics.simulate_sgd")
def check_momentum_effective_rate() -> Check:
    """Without weight decay, a stationary buffer makes momentum grow norms like SGD at λ/(1−μ); but the
    flip threshold (1−μ)κ that this suggests holds only for pairs far apart: from an empty buffer, close
    pairs flip already at λE ≈ (1−μ)^{3/2}/√(1+μ), a factor √((1−μ)/(1+μ)) lower (the buffer's inertia)."""
    q, a = sp.symbols("q a", real=True)
    # stationary buffer at frozen σ² (wd = 0): q = μ² q + c²/σ², a = μ (a − λ q) ... with a = ⟨W, v_prev⟩
    sol = sp.solve([sp.Eq(q, mu**2 * q + c**2 / s), sp.Eq(a, mu * a - lam * q)], [q, a], dict=True)[0]
    growth = sp.simplify(-2 * lam * mu * sol[a] + lam**2 * sol[q])  # σ'² − σ² = −2λ p + λ² q with p = μ a
    growth_ok = is_zero(growth - (lam / (1 - mu)) ** 2 * c**2 / s)
    # One step of the model (wd = 0) in the variables X = σ²/(λc), Q = λq/c, A = a/c has no λ left, so whether
    # and when a pair flips depends only on μ and the products λE_j, λE_k: the threshold is a function of μ and
    # the ratio E_j/E_k times κ.
    X, Q, A = sp.symbols("X Q A", positive=True)
    s_, q_, a_ = lam * c * X, c * Q / lam, c * A
    q_next = mu**2 * q_ + c**2 / s_
    s_next = s_ - 2 * lam * mu * a_ + lam**2 * q_next
    a_next = mu * a_ - lam * q_next
    scaled = [sp.simplify(s_next / (lam * c)), sp.simplify(lam * q_next / c), sp.simplify(a_next / c)]
    scale_free = all(not e.has(lam) and not e.has(c) for e in scaled)
    # numbers: σ_n² of the momentum model against plain SGD (Eq. 5) at λ/(1−μ)
    rng = _rng()
    cc = _log_uniform(rng, 1e-1, 1e1, 4)
    errs, shrinks = [], True
    n = 200_000
    for lr_, mu_ in [(0.05, 0.9), (0.2, 0.5), (0.01, 0.99)]:
        tr = dynamics.simulate_sgd(np.full(4, 2.0), cc, lr_, n, 0.0, mu_)
        eff = lr_ / (1 - mu_)
        rel = [np.max(np.abs(tr.sigma2[k] / (dynamics.long_horizon(2.0 / (cc * eff), k).x * cc * eff) - 1))
               for k in (n // 10, n)]
        errs.append(float(rel[1]))
        shrinks &= bool(rel[1] < rel[0] / 2)  # the buffer's start-up lag fades
    # flips: the example of the review (σ² = 2, c = (10, 1), μ = 0.9) at 0.45 (1−μ)κ, then the threshold
    example = momentum_flips(np.array([5.0, 0.5]), 0.45 * 0.1 / math.sqrt(2.5), 0.9)
    near = {mu_: momentum_flip_threshold(1.001, mu_) for mu_ in (0.5, 0.9, 0.99)}
    const = {mu_: v * (1 - mu_) / ((1 - mu_) ** 1.5 / math.sqrt(1 + mu_)) for mu_, v in near.items()}
    far = {mu_: momentum_flip_threshold(1e8, mu_) for mu_ in (0.5, 0.9)}
    ratios = [1.001, 30.0, 1e3, 1e8]
    rising = [near[0.9]] + [momentum_flip_threshold(r, 0.9) for r in ratios[1:-1]] + [far[0.9]]
    sgd = [momentum_flip_threshold(r, 0.0) for r in (1.001, 30.0, 1e5)]
    flips_ok = (example is not None and 10 < example < 100 and all(1.0 <= v <= 1.15 for v in const.values())
                and all(abs(v - 1) < 0.02 for v in far.values()) and all(np.diff(rising) > -1e-9)
                and all(abs(v - 1) < 1e-5 for v in sgd))
    ok = growth_ok and scale_free and shrinks and max(errs) < 1e-2 and flips_ok
    return Check("Prop. III.4", "wd = 0: with a stationary buffer, σ'² − σ² = (λ/(1−μ))² c²/σ² (SGD at λ/(1−μ)); "
                                "from an empty buffer a pair flips at λ/((1−μ)κ) = f(μ, E_j/E_k) ≤ 1, "
                                "→ 1 for far-apart pairs, ≈ (1.0–1.15)·√((1−μ)/(1+μ)) for close ones",
                 "SymPy stationary buffer and λ-free rescaling; simulate_sgd vs Eq. 5 at λ/(1−μ), 200,000 steps; "
                 "flip thresholds by bisection at μ = 0, 0.5, 0.9, 0.99",
                 ok, f"growth {growth_ok}, λ-free {scale_free}; σ_n²/σ_n²(SGD at λ/(1−μ)) − 1 at n = 200,000: max "
                     f"{max(errs):.1e}, shrinking {shrinks}; review's pair at 0.45(1−μ)κ flips at step {example}; "
                     "close pairs: λE/((1−μ)^{3/2}/√(1+μ)) = "
                     + ", ".join(f"{v:.3f} (μ={m:g})" for m, v in const.items())
                     + "; ratio 1e8: f = " + ", ".join(f"{v:.3f}" for v in far.values())
                     + "; f at μ=0.9 for ratios " + "/".join(f"{r:g}" for r in ratios) + ": "
                     + ", ".join(f"{v:.3f}" for v in rising) + f"; μ = 0: f = 1 for every ratio {all(abs(v - 1) < 1e-5 for v in sgd)}")


@statement('Prop. III.5', "elr.dynamics.discrete_step", "elr.dynamics.implicit_step", "elr.dynamics.flow_step")
def check_explicit_euler() -> Check:
    """Eq. (5) is explicit Euler on dσ²/dt = c²/σ² with h = λ²; it reverses ELR order iff λ²E_jE_k > 1."""
    f = c**2 / s
    euler = is_zero(step(s, c) - (s + lam**2 * f))
    amplification = sp.simplify(1 + lam**2 * sp.diff(f, s))  # d s'/d s of the explicit step
    amp_ok = is_zero(amplification.subs(s, c / E) - (1 - lam**2 * E**2))
    g_exp = E / (1 + lam**2 * E**2)
    g_imp = 2 * E / (1 + sp.sqrt(1 + 4 * lam**2 * E**2))
    g_flow = E / sp.sqrt(1 + 2 * lam**2 * E**2)
    # backward Euler: s' = s + λ² c²/s' has the positive root (s + √(s² + 4λ²c²))/2
    sp_ = sp.symbols("s_next", positive=True)
    roots = [r for r in sp.solve(sp.Eq(sp_, s + lam**2 * c**2 / sp_), sp_) if r.subs({s: 1, c: 1, lam: 1}) > 0]
    imp_ok = len(roots) == 1 and is_zero(c / roots[0] - g_imp.subs(E, c / s))
    flow_ok = is_zero(c / sp.sqrt(s**2 + 2 * lam**2 * c**2) - g_flow.subs(E, c / s))
    d_exp = sp.factor(sp.diff(g_exp, E))
    d_imp = sp.simplify(sp.diff(g_imp, E))
    d_flow = sp.simplify(sp.diff(g_flow, E))
    signs = (is_zero(d_exp - (1 - lam**2 * E**2) / (1 + lam**2 * E**2) ** 2)
             and d_imp.is_positive is not False and d_flow.is_positive is not False)
    # numbers: implicit and flow steps never reverse the order of any pair; explicit does iff λ²E_jE_k > 1
    rng = _rng()
    e = _log_uniform(rng, 1e-2, 1e2, (2000, 2))
    lr_ = _log_uniform(rng, 1e-2, 1e2, 2000)
    flips = {m: (dynamics.SOLVERS[m](1.0 / e, 1.0, lr_) ** -1 @ [1, -1]) * (e @ [1, -1]) < 0 for m in dynamics.SOLVERS}
    predicted = lr_**2 * e.prod(axis=1) > 1
    # the order argument holds for any monotone step: each of elr's steps must also be the derived one
    derived = {"explicit": g_exp, "implicit": g_imp, "flow": g_flow}
    step_err = {m: float(np.max(np.abs(dynamics.SOLVERS[m](1.0 / e, 1.0, lr_) ** -1
                                       / sp.lambdify((E, lam), derived[m], "numpy")(e, lr_[:, None]) - 1)))
                for m in dynamics.SOLVERS}
    ok = (euler and amp_ok and imp_ok and flow_ok and signs and not flips["implicit"].any()
          and not flips["flow"].any() and np.array_equal(flips["explicit"], predicted)
          and max(step_err.values()) < 1e-12)
    return Check("Prop. III.5", "Eq. 5 = explicit Euler (h = λ²); its error amplification is 1 − λ²E²; "
                                "backward Euler and the exact flow never reverse ELR order, Euler does iff λ²E_jE_k > 1",
                 "SymPy step, root, derivatives; 2,000 random pairs and rates through the three steps of "
                 "elr.dynamics.SOLVERS, each against its derived ELR map",
                 ok, f"Euler {euler}, amplification {amp_ok}, implicit root {imp_ok}, flow {flow_ok}, "
                     f"monotone maps {signs}; flips explicit {int(flips['explicit'].sum())} (predicted "
                     f"{int(predicted.sum())}), implicit {int(flips['implicit'].sum())}, flow {int(flips['flow'].sum())}; "
                     "steps vs derived maps " + ", ".join(f"{m} {v:.0e}" for m, v in step_err.items()))


@statement('Prop. III.6', "elr.dynamics.long_horizon", "elr.dynamics.normalised_sequence")
def check_long_horizon(n_max: int = 1_000_000) -> Check:
    """F(y) = y/2 − ¼ ln(2y+1) advances by 1 + δ(y), 0 <= δ <= 1/(2y²): x_n in O(1) with bounds."""
    F = lambda v: v / 2 - sp.log(2 * v + 1) / 4  # noqa: E731
    delta = 1 / (2 * y) - sp.log(1 + 2 / y) / 4
    advance = sp.simplify(sp.expand_log(F(y + 2 + 1 / y) - F(y) - 1 - delta, force=True))
    identity = advance == 0 or is_zero(sp.logcombine(advance, force=True))
    if not identity:  # numeric fallback for SymPy's log handling, at exact rationals
        identity = all(abs(float((F(y + 2 + 1 / y) - F(y) - 1 - delta).subs(y, v).evalf(50))) < 1e-40
                       for v in (sp.Rational(1, 3), 2, sp.Rational(71, 7), 1000))
    u = sp.symbols("u", positive=True)
    lower = sp.simplify(sp.diff(u - sp.log(1 + u), u))               # u/(1+u) >= 0: ln(1+u) <= u, δ >= 0
    upper = sp.simplify(sp.diff(sp.log(1 + u) - u + u**2 / 2, u))   # u²/(1+u) >= 0: δ <= 1/(2y²)
    bounds = is_zero(lower - u / (1 + u)) and is_zero(upper - u**2 / (1 + u))
    delta_bound = is_zero(sp.expand(delta.subs(sp.log(1 + 2 / y), 2 / y - 2 / y**2) - 1 / (2 * y**2)))
    x0 = np.array([1e-2, 0.5, 1.0, 3.0, 8.0, 1e2])  # 8: x0² = 64 = LONG_HORIZON_Y_MIN, closed form from n = 1
    seq = dynamics.normalised_sequence(x0, n_max)
    ns = np.unique(np.round(np.logspace(0, np.log10(n_max), 40)).astype(int))
    worst, inside, of_width, iterated = 0.0, True, 0.0, 0.0
    for n in ns:
        h = dynamics.long_horizon(x0, n)
        worst = max(worst, float(np.max(np.abs(h.x / seq[n] - 1))))
        inside &= bool(np.all((h.lower <= seq[n] * (1 + 1e-14)) & (seq[n] <= h.upper * (1 + 1e-14))))
        # The estimate's own error is second order, about 1/y_m of the bracket's width (y_m >= 64): measured
        # <= 0.0025 of it. A 1/200 limit fails an inverse of F that stops early (2 fixed-point steps: 0.016).
        closed = h.exact_steps < n
        width = np.where(closed, h.upper - h.lower, 1.0)
        of_width = max(of_width, float(np.max(np.where(closed, np.abs(h.x - seq[n]) / width, 0.0))))
        iterated = max(iterated, float(np.max(np.where(closed, 0.0, np.abs(h.x / seq[n] - 1)))))
    ok = (identity and bounds and delta_bound and inside and worst < 1e-6 and of_width < 1 / 200
          and iterated < 1e-14)
    return Check("Prop. III.6", "x_n of x' = x + 1/x in closed form: F(x_n²) = F(x_m²) + n − m + [0, 1/(2x_m⁴) "
                                "+ 1/(4x_m²)] with F(y) = y/2 − ¼ ln(2y+1)",
                 f"SymPy identity and the two inequalities; elr.dynamics.long_horizon vs the recurrence "
                 f"(elr.dynamics.normalised_sequence) at {len(ns)} n up to {n_max:,}",
                 ok, f"identity {identity}, inequalities {bounds and delta_bound}; recurrence inside the bounds "
                     f"{inside}; max rel. err of the estimate {worst:.1e}, at most {of_width:.4f} of the bracket's "
                     f"width (limit 0.005)")


@statement('Defs. 3.2-3.8, 4.1', "elr.dynamics.elr", "elr.dynamics.elr_ratios", "elr.dynamics.flipping_ratio",
           "elr.dynamics.critical_lr", "elr.dynamics.subcritical_lr", "elr.dynamics.relative_spread",
           "elr.dynamics.Trajectory.extreme_flips")
def check_rates_and_spread() -> Check:
    """E, R_jk, κ_ℓh, κ_hh', S_rel and the detection of flips as elr implements them, against their definitions."""
    rng = _rng()
    e = _log_uniform(rng, 1e-3, 1e3, (300, 7))
    kap = dynamics.critical_lr(e)
    kap_ok = float(np.max(np.abs(kap * np.sqrt(e.min(axis=1) * e.max(axis=1)) - 1))) < 1e-12
    srt = np.sort(e, axis=1)
    sub_ok = float(np.max(np.abs(dynamics.subcritical_lr(e) * np.sqrt(srt[:, -1] * srt[:, -2]) - 1))) < 1e-12
    # S_rel: the population std of ln E; unchanged by a common factor; |ln(E1/E2)|/2 for two layers
    spread = dynamics.relative_spread(e)
    std_ok = float(np.max(np.abs(spread - np.sqrt(np.mean((np.log(e) - np.log(e).mean(1, keepdims=True)) ** 2, 1))))) < 1e-12
    scale_ok = float(np.max(np.abs(dynamics.relative_spread(e * 37.0) - spread))) < 1e-12
    two = sp.sqrt(((sp.log(Ej) - (sp.log(Ej) + sp.log(Ek)) / 2) ** 2 + (sp.log(Ek) - (sp.log(Ej) + sp.log(Ek)) / 2) ** 2) / 2)
    two_ok = is_zero(sp.expand_log(two**2, force=True) - sp.expand_log((sp.log(Ej / Ek) / 2) ** 2, force=True))
    # E = c/σ² (Def. 3.2) for the same profiles given as norms, and R[..., j, k] = E_j/E_k (Def. 3.3)
    ss = _log_uniform(rng, 1e-2, 1e2, e.shape)
    elr_ok = float(np.max(np.abs(dynamics.elr(ss, e * ss) / e - 1))) < 1e-12
    ratio_ok = float(np.max(np.abs(dynamics.elr_ratios(e) * e[:, None, :] / e[:, :, None] - 1))) < 1e-12
    # flips: one step at (1 ± 1e-6) κ_ℓh from each profile; the extreme pair (ranked before the step) reverses
    # exactly above κ_ℓh, and Trajectory.extreme_flips says so
    s0 = np.ones_like(e)
    wrong = 0
    for factor in (1 - 1e-6, 1 + 1e-6):
        tr = dynamics.simulate(s0, e, (factor * kap)[None, :])
        after = tr.elr[1]
        top = after[np.arange(len(e)), np.argmax(e, axis=1)]
        bottom = after[np.arange(len(e)), np.argmin(e, axis=1)]
        truth = top < bottom
        wrong += int(np.sum(truth != (factor > 1))) + int(np.sum(tr.extreme_flips[0] != truth))
    ok = elr_ok and ratio_ok and kap_ok and sub_ok and std_ok and scale_ok and two_ok and wrong == 0
    return Check("Defs. 3.2-3.8, 4.1", "E = c/σ², R_jk = E_j/E_k, κ_ℓh = 1/√(E_min E_max), κ_hh' = 1/√(E_h E_h'), "
                                       "S_rel = std(ln E) (scale-free); the extreme pair flips in one step iff λ > κ_ℓh",
                 "300 random 7-layer profiles against the definitions; SymPy two-layer S_rel; one step at "
                 "(1 ± 1e-6) κ_ℓh with Trajectory.extreme_flips",
                 ok, f"E {elr_ok}, R {ratio_ok}, κ_ℓh {kap_ok}, κ_hh' {sub_ok}, std {std_ok}, scale-free {scale_ok}, "
                     f"two layers = |ln R|/2 {two_ok}; misjudged flips {wrong} of {4 * len(e)}")


@statement('Eqs. 6-7', "elr.dynamics.ALPHA", "elr.dynamics.base_gradients_feedforward",
           "elr.dynamics.base_gradients_resnet", "elr.dynamics.cifar_resnet_layers",
           "elr.dynamics.base_gradients_cifar_resnet")
def check_base_gradients() -> Check:
    """The initial base gradients of Eqs. (6) and (7), and α = √(π/(π−1))."""
    # α: the gain of the gradient through one BN-ReLU layer at initialisation, α² = π/(π − 1)
    alpha_ok = is_zero(sp.Float(dynamics.ALPHA, 30) ** 2 - sp.pi / (sp.pi - 1)) or \
        abs(dynamics.ALPHA**2 - float(sp.pi / (sp.pi - 1))) < 1e-15
    L, i_, s_ = 9, np.arange(1, 10), 3
    ff = dynamics.base_gradients_feedforward(L)
    ff_ok = np.allclose(ff, dynamics.ALPHA ** (L - i_), rtol=1e-14) and ff[-1] == 1.0
    rn = dynamics.base_gradients_resnet(L, s_)
    rn_ok = np.allclose(rn, 1 + np.floor((L - i_) / s_) * dynamics.ALPHA**s_, rtol=1e-14) and rn[-1] == 1.0
    # CIFAR ResNets: depth 6n+2 has depth − 1 scale-invariant convolutions; basic blocks hold s = 2 ReLUs
    cifar_ok = all(
        np.allclose(dynamics.base_gradients_cifar_resnet(d, True), dynamics.base_gradients_resnet(d - 1, 2))
        and np.allclose(dynamics.base_gradients_cifar_resnet(d, False), dynamics.base_gradients_feedforward(d - 1))
        for d in (8, 20, 56, 110))
    n_l = sp.symbols("L", positive=True, integer=True)
    excursion = sp.simplify(sp.Symbol("alpha") ** (n_l - 1) / sp.Symbol("alpha") ** 0)  # c_1 / c_L for Eq. (6)
    exc_ok = abs(ff[0] / ff[-1] - float(excursion.subs({sp.Symbol("alpha"): dynamics.ALPHA, n_l: L}))) < 1e-12
    ok = alpha_ok and ff_ok and rn_ok and cifar_ok and exc_ok
    return Check("Eqs. 6-7", "c_i = α^(L−i) without shortcuts, c_i = 1 + ⌊(L−i)/s⌋ α^s with s ReLUs per block, "
                             "α = √(π/(π−1)) ≈ 1.2112; CIFAR ResNets: depth − 1 layers, s = 2",
                 "elr.dynamics against the formulas for L = 9, s = 3 and ResNet8/20/56/110",
                 ok, f"α {alpha_ok} ({dynamics.ALPHA:.4f}), Eq. 6 {ff_ok}, Eq. 7 {rn_ok}, CIFAR {cifar_ok}, "
                     f"c_1/c_L = α^(L−1) {exc_ok}")


@statement('Schedules (ours)', "elr.dynamics.one_cycle", "elr.dynamics.cosine", "elr.dynamics.multistep",
           "elr.dynamics.exponential", "elr.dynamics.linear_warmup")
def check_schedules() -> Check:
    """elr's schedules against torch's schedulers, step by step."""
    import torch

    from elr.schedules import torch_schedule

    def torch_lrs(make, n):
        return torch_schedule(make, n, lr=0.4)

    n = 200
    steps = np.arange(n)
    pairs = {
        "OneCycle (Table 3)": (dynamics.one_cycle(steps, 0.4, n, 0.1, 20.0, 2000.0),
                               torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
                                   o, max_lr=0.4, total_steps=n, pct_start=0.1, div_factor=20, final_div_factor=2000,
                                   anneal_strategy="cos", cycle_momentum=False), n)),
        "OneCycle (torch defaults)": (dynamics.one_cycle(steps, 0.4, n),
                                      torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
                                          o, max_lr=0.4, total_steps=n, cycle_momentum=False), n)),
        "cosine": (dynamics.cosine(steps, 0.4, n),
                   torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=n), n)),
        "multistep": (dynamics.multistep(steps, 0.4, [50, 150]),
                      torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [50, 150], 0.1), n)),
        "exponential": (dynamics.exponential(steps, 0.4, 0.99),
                        torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.99), n)),
        # lr·(k+1)/20 for k < 20, then lr: torch's LinearLR from 1/20 over 19 steps
        "linear warm-up": (dynamics.linear_warmup(steps, 0.4, 20),
                           torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, 1 / 20, 1.0, 19), n)),
    }
    errs = {k: float(np.max(np.abs(a / b - 1))) for k, (a, b) in pairs.items()}
    ok = all(v < 1e-9 for v in errs.values())
    return Check("Schedules (ours)", "one_cycle (Table 3's and torch's defaults), cosine, multistep, exponential and "
                                     "the linear warm-up equal torch's schedulers",
                 "elr.dynamics against torch.optim.lr_scheduler over 200 steps",
                 ok, ", ".join(f"{k} {v:.0e}" for k, v in errs.items()))


@statement('Cor. 3.10 warm-up', "elr.dynamics.subcritical_warmup", "elr.dynamics.subcritical_policy",
           "elr.dynamics.simulate")
def check_subcritical_warmup() -> Check:
    """The subcritical warm-up: no ratio flips while it runs, it hands over to the target once the target is
    subcritical (at once if it already is), and the target is used from then on."""
    rng = _rng()
    flips, orders, late, early, handover_ok = 0, 0, 0, 0, True
    for k in range(40):
        L = int(rng.integers(3, 12))
        c_ = _log_uniform(rng, 1e-2, 1e3, L)
        s0_ = np.full(L, 2.0)
        target_lr = float(_log_uniform(rng, 1e-3, 1e1, 1)[0])
        tr = dynamics.simulate(s0_, c_, dynamics.subcritical_policy(lambda st, v=target_lr: np.full(np.shape(st), v)),
                               n_steps=3 * L)
        warming = tr.lr != target_lr
        n_warm = int(np.argmin(warming)) if not warming.all() else len(warming)
        flips += int(tr.extreme_flips[:n_warm].sum())
        rank0 = np.argsort(tr.elr[0])
        orders += int(sum(np.any(np.diff(tr.elr[i][rank0]) < -1e-12 * tr.elr[i].max()) for i in range(n_warm + 1)))
        handover_ok &= bool(np.all(~warming[n_warm:]))  # once handed over, the target stays
        kap0 = float(dynamics.subcritical_lr(tr.elr[0]))
        if kap0 >= target_lr:
            early += int(n_warm != 0)  # an already subcritical target: no warm-up at all
        else:
            late += int(n_warm > L - 1 + 1)  # the warm-up merges a group per step: at most L − 1 steps (+1 handover)
    ok = flips == 0 and orders == 0 and early == 0 and late == 0 and handover_ok
    return Check("Cor. 3.10 warm-up", "elr's subcritical warm-up flips no ratio, ends within L − 1 steps, hands over "
                                      "at step 0 when the target is already subcritical, and keeps the target after",
                 "40 random profiles (3-11 layers, c over 5 decades, targets over 4 decades) in elr.dynamics.simulate",
                 ok, f"extreme flips {flips}, order changes {orders}, warm-ups that should not have run {early}, "
                     f"too long {late}, handover kept {handover_ok}")


@statement('Thm. 3.6, O(1)', "elr.dynamics.elr_at_step")
def check_elr_at_step() -> Check:
    """elr_at_step (the ELRs after n constant-λ steps in O(1) time) brackets the simulated ELRs."""
    rng = _rng()
    c_ = _log_uniform(rng, 1e-2, 1e2, 6)
    s0_ = _log_uniform(rng, 0.5, 8.0, 6)
    lr_ = 0.3
    n_sim = 20_000
    tr = dynamics.simulate(s0_, c_, np.full(n_sim, lr_))
    worst, inside = 0.0, True
    for n_ in (0, 1, 10, 1000, n_sim):
        h = dynamics.elr_at_step(s0_, c_, lr_, n_)
        exact = tr.elr[n_]
        inside &= bool(np.all((h.lower <= exact * (1 + 1e-12)) & (exact <= h.upper * (1 + 1e-12))))
        worst = max(worst, float(np.max(np.abs(h.x / exact - 1))))
    far = dynamics.elr_at_step(s0_, c_, lr_, 10**12)
    far_ok = bool(np.all(np.abs(far.x * lr_ * np.sqrt(2 * 10**12) - 1) < 1e-5))  # E_n ≈ 1/(λ√(2n)) for any layer
    ok = inside and worst < 1e-6 and far_ok
    return Check("Thm. 3.6, O(1)", "elr_at_step brackets the ELRs of the simulated model and tends to 1/(λ√(2n))",
                 f"6 layers at λ = {lr_} against elr.dynamics.simulate up to {n_sim:,} steps; n = 1e12",
                 ok, f"inside the bounds {inside}; max rel. err of the estimate {worst:.1e}; 1/(λ√(2n)) at n = 1e12 "
                     f"{far_ok}")


CHECKS: tuple[Callable[[], Check], ...] = (
    check_scale_invariance,
    check_theorem_3_4,
    check_theorem_3_5,
    check_elr_map,
    check_proposition_3_7,
    check_proposition_3_9,
    check_proposition_a_1,
    check_theorem_3_6,
    check_corollary_3_10,
    check_weight_decay_equilibrium,
    check_weight_decay_flips,
    check_momentum_equilibrium,
    check_momentum_effective_rate,
    check_explicit_euler,
    check_long_horizon,
    check_rates_and_spread,
    check_base_gradients,
    check_schedules,
    check_subcritical_warmup,
    check_elr_at_step,
)


def prove_all(checks=CHECKS) -> list[Check]:
    """Run every check; an exception counts as a failed check, with its message."""
    results = []
    for fn in checks:
        try:
            results.append(fn())
        except Exception as err:  # a crashing derivation is a failed statement, not a crash of `elr prove`
            name = getattr(fn, "ref", fn.__name__)
            results.append(Check(name, "(derivation raised)", "", False,
                                 f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}",
                                 getattr(fn, "implements", ())))
    return results

"""`elr prove` fails when the code it checks is broken.

Every statement of `elr prove` names the elr code its verdict depends on (``Check.implements``, printed with
the verdict). Here each named implementation is broken in-process the way a careless edit would break it (a
term dropped, a constant changed, an off-by-one) and the statements that name it must then fail. That they
pass on the intact code is `tests/test_symbolic.py::test_every_statement_verifies`.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from elr import cli, dynamics, symbolic


@dataclass(frozen=True)
class Mutation:
    implements: str                  # the name a statement gives in Check.implements
    what: str                        # the defect, in words
    breaks: Callable                 # the intact object -> its broken replacement
    target: str = ""                 # the attribute replaced, when it is a helper of `implements`
    refs: tuple[str, ...] = ()       # the statements it must fail; () = every statement naming `implements`


def _resolve(path: str):
    """(owner, attribute name) of a dotted path such as ``elr.dynamics.Trajectory.extreme_flips``."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise ImportError(path)


def _break(monkeypatch, mutation: Mutation) -> None:
    owner, name = _resolve(mutation.target or mutation.implements)
    intact = getattr(owner, name)
    broken = mutation.breaks(intact)
    monkeypatch.setattr(owner, name, broken)
    # SOLVERS holds the step functions themselves; an edit of a step's source would break it there too
    for key, value in list(dynamics.SOLVERS.items()):
        if value is intact:
            monkeypatch.setitem(dynamics.SOLVERS, key, broken)


def _rewrap(make):
    """A mutation given as ``make(intact, *args, **kwargs)``: the broken function calls it with the original."""
    return lambda intact: functools.wraps(intact)(functools.partial(make, intact))


def _stale_policy(simulate, sigma2_0, c, lr, n_steps=None):
    """simulate that shows a policy the ELRs of the first step at every step (they are not refreshed)."""
    if callable(lr):
        e0 = dynamics.elr(*np.broadcast_arrays(np.asarray(sigma2_0, float), np.asarray(c, float)))
        lr = functools.partial(lambda policy, i, _e: policy(i, e0), lr)
    return simulate(sigma2_0, c, lr, n_steps)


def _gradient_off(simulate_sgd, sigma2_0, c, lr, n_steps, wd=0.0, momentum=0.0):
    """simulate_sgd whose gradient norm is 1% off: c enters the buffer as 1.01 c (the trajectory keeps c)."""
    tr = simulate_sgd(sigma2_0, 1.01 * np.asarray(c, float), lr, n_steps, wd, momentum)
    return dataclasses.replace(tr, c=np.broadcast_to(np.asarray(c, float), tr.c.shape))


def _angular_over_sigma2(simulate_sgd, *args, **kwargs):
    """simulate_sgd that divides the update's norm by σ² instead of σ = ‖W‖ (a slip of the square root)."""
    tr = simulate_sgd(*args, **kwargs)
    return dataclasses.replace(tr, angular=tr.angular / np.sqrt(tr.sigma2[:-1]))


def _two_fixed_point_steps(v, y_min):
    y = np.maximum(2.0 * v, y_min)
    for _ in range(2):
        y = 2.0 * v + 0.5 * np.log1p(2.0 * y)
    return y


def _more_layers(model):
    """scale_invariant_layers that also counts the classifier (a linear layer that feeds no normalisation)."""
    import torch

    return [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def _flips_ranked_after_the_step(self):
    e = self.elr
    top = np.take_along_axis(e[1:], np.argmax(e[1:], axis=-1)[..., None], -1)[..., 0]
    bottom = np.take_along_axis(e[1:], np.argmin(e[1:], axis=-1)[..., None], -1)[..., 0]
    return top < bottom


D = "elr.dynamics."
MUTATIONS = [
    # Eqs. 1-2
    Mutation("elr.nets.scale_invariant_layers", "counts the classifier head as scale-invariant",
             lambda f: _more_layers),
    Mutation("elr.audit.scaling_checks", "measures with the model's own BN eps (1e-5) instead of 1e-30",
             _rewrap(lambda f, model, x, y, **kw: f(model, x, y, **{**kw, "eps": 1e-5}))),
    # the discrete model and the gradient flow
    Mutation(D + "discrete_step", "λ instead of λ² in Eq. 5",
             _rewrap(lambda f, sigma2, c, lr: f(sigma2, c, np.sqrt(lr)))),
    Mutation(D + "continuous_sigma2", "σ²(t) = √(c²t + σ⁴(0)): the 2 of Eq. 12 dropped",
             _rewrap(lambda f, t, c, sigma2_0=dynamics.SIGMA2_HE: f(np.asarray(t) / 2, c, sigma2_0))),
    Mutation(D + "elr_step", "E/(1 + λ²E): the square of E dropped",
             _rewrap(lambda f, e, lr: np.asarray(e) / (1 + dynamics._per_run(lr) ** 2 * np.asarray(e)))),
    Mutation(D + "elr", "E = c/σ (σ = √σ²) instead of c/σ²",
             _rewrap(lambda f, sigma2, c: f(np.sqrt(sigma2), c))),
    Mutation(D + "elr_ratios", "R[..., j, k] = E_k/E_j (transposed)",
             _rewrap(lambda f, e: np.swapaxes(f(e), -1, -2))),
    Mutation(D + "flipping_ratio", "κ = 1/(E_j E_k): the square root dropped",
             _rewrap(lambda f, a, b: f(a, b) ** 2)),
    Mutation(D + "critical_lr", "κ_ℓh from the two highest ELRs",
             lambda f: lambda e: dynamics.subcritical_lr(e)),
    Mutation(D + "subcritical_lr", "κ_hh' from the highest and the lowest ELR (κ_ℓh)",
             _rewrap(lambda f, e, rtol=1e-9, distinct=True: dynamics.critical_lr(e))),
    Mutation(D + "relative_spread", "S_rel with ddof = 1",
             _rewrap(lambda f, e: np.std(np.log(np.asarray(e, dtype=float)), axis=-1, ddof=1))),
    Mutation(D + "Trajectory.extreme_flips", "the extreme pair ranked after the step, not before",
             lambda p: property(_flips_ranked_after_the_step)),
    Mutation(D + "simulate", "a policy sees the first step's ELRs at every step", _rewrap(_stale_policy)),
    # Thm. 3.6 and long horizons
    Mutation(D + "normalised_sequence", "starts one step late (from x0 + 1/x0)",
             _rewrap(lambda f, x0, n: f(np.asarray(x0) + 1 / np.asarray(x0), n))),
    Mutation(D + "normalised_sequence_bounds", "upper bound without its ½ ln n",
             _rewrap(lambda f, x0, n: (f(x0, n)[0], f(x0, n)[0] + 1 / np.asarray(x0, float) ** 2))),
    Mutation(D + "long_horizon", "inverts F with 2 fixed-point steps instead of 8",
             lambda f: _two_fixed_point_steps, target=D + "_invariant_inverse"),
    Mutation(D + "elr_at_step", "estimate 0.1 % high",
             _rewrap(lambda f, *a: dataclasses.replace(f(*a), x=f(*a).x * 1.001))),
    # Cor. 3.10 and the warm-up
    Mutation(D + "subcritical_warmup", "never hands over to an already subcritical target",
             _rewrap(lambda f, step, elr, target, tol=1e-6, max_steps=None: np.where(
                 dynamics.relative_spread(np.asarray(elr)) <= tol, np.asarray(target(step), dtype=float),
                 dynamics.subcritical_lr(elr)))),
    Mutation(D + "subcritical_policy", "ignores the target: warms up for ever",
             _rewrap(lambda f, target=None, tol=1e-6, max_steps=None: f(None))),
    # weight decay and momentum
    Mutation(D + "simulate_sgd", "the gradient norm 1 % off in the buffer", _rewrap(_gradient_off)),
    Mutation(D + "simulate_sgd", "angular update λ‖v‖/σ² instead of λ‖v‖/σ", _rewrap(_angular_over_sigma2),
             refs=("Prop. III.1", "Prop. III.3")),  # the only statements about the angular update
    Mutation(D + "equilibrium", "E*² without its −λwd term (the small-λwd limit)",
             _rewrap(lambda f, lr, wd, momentum=0.0: dataclasses.replace(
                 f(lr, wd, momentum), elr=math.sqrt(2 * (1 - momentum) * wd / lr)))),
    Mutation(D + "relaxation_steps", "only the leading term 1/(4λwd)",
             _rewrap(lambda f, lr, wd: 1 / (4 * np.asarray(lr, float) * np.asarray(wd, float)))),
    Mutation(D + "critical_lr_wd", "forgets weight decay: κ_ℓh",
             _rewrap(lambda f, e, wd: dynamics.critical_lr(e))),
    Mutation(D + "implicit_step", "√(s² + 2λ²c²) in backward Euler's root (4 → 2)",
             _rewrap(lambda f, s, c, lr: f(s, c, np.asarray(lr) / math.sqrt(2)))),
    Mutation(D + "flow_step", "the flow over λ²/2 instead of λ²",
             _rewrap(lambda f, s, c, lr: f(s, c, np.asarray(lr) / math.sqrt(2)))),
    # base gradients at initialisation
    Mutation(D + "ALPHA", "α rounded to 1.21", lambda a: 1.21),
    Mutation(D + "base_gradients_feedforward", "c_i = α^(L−i+1)",
             _rewrap(lambda f, n, alpha=dynamics.ALPHA: f(n, alpha) * alpha)),
    Mutation(D + "base_gradients_resnet", "⌈(L−i)/s⌉ instead of ⌊(L−i)/s⌋",
             _rewrap(lambda f, n, s=2, alpha=dynamics.ALPHA: 1 + np.ceil((n - np.arange(1, n + 1)) / s) * alpha**s)),
    Mutation(D + "cifar_resnet_layers", "counts the final linear layer (depth, not depth − 1)",
             _rewrap(lambda f, depth: f(depth) + 1)),
    Mutation(D + "base_gradients_cifar_resnet", "3 ReLUs per block",
             _rewrap(lambda f, depth, shortcut=True: dynamics.base_gradients_resnet(dynamics.cifar_resnet_layers(depth), 3)
                     if shortcut else f(depth, shortcut))),
    # schedules
    Mutation(D + "one_cycle", "default pct_start 0.25 instead of torch's 0.3",
             _rewrap(lambda f, step, max_lr, total, pct_start=0.25, *a: f(step, max_lr, total, pct_start, *a))),
    Mutation(D + "cosine", "anneals over total_steps + 1",
             _rewrap(lambda f, step, lr, total, lr_min=0.0: f(step, lr, total + 1, lr_min))),
    Mutation(D + "multistep", "drops the rate one step after each milestone",
             _rewrap(lambda f, step, lr, milestones, gamma=0.1: f(np.asarray(step) - 1, lr, milestones, gamma))),
    Mutation(D + "exponential", "λ(i) = lr·γ^(i+1)",
             _rewrap(lambda f, step, lr, gamma: f(np.asarray(step) + 1, lr, gamma))),
    Mutation(D + "linear_warmup", "starts from 0: lr·i/k",
             _rewrap(lambda f, step, lr, k: f(np.asarray(step) - 1, lr, k))),
]

CHECKS = {fn.ref: fn for fn in symbolic.CHECKS}
CASES = [(ref, m) for m in MUTATIONS for ref, fn in CHECKS.items()
         if m.implements in fn.implements and (not m.refs or ref in m.refs)]


def test_every_statement_names_the_elr_code_it_checks():
    for fn in symbolic.CHECKS:
        assert fn.implements, f"{fn.ref} names no implementation"
        for name in fn.implements:
            owner, attr = _resolve(name)
            assert hasattr(owner, attr), f"{fn.ref} names {name}, which does not exist"


def test_every_named_implementation_is_broken_by_a_test():
    covered = {(ref, m.implements) for ref, m in CASES}
    missing = [(fn.ref, name) for fn in symbolic.CHECKS for name in fn.implements if (fn.ref, name) not in covered]
    assert not missing, f"no mutation breaks these (statement, implementation) pairs: {missing}"
    unused = [m.what for m in MUTATIONS if not any(m is n for _, n in CASES)]
    assert not unused, f"mutations of code no statement names: {unused}"


@pytest.mark.parametrize("ref, mutation", CASES, ids=[f"{ref}: {m.implements} {m.what}" for ref, m in CASES])
def test_breaking_an_implementation_fails_its_statement(monkeypatch, ref, mutation):
    _break(monkeypatch, mutation)
    [result] = symbolic.prove_all((CHECKS[ref],))  # as `elr prove` runs it: a check that raises has failed
    assert not result.ok, f"{ref} still verifies with {mutation.implements} broken ({mutation.what}): {result.detail}"
    assert mutation.implements in result.implements


def test_the_command_names_the_code_and_fails_on_a_broken_one(monkeypatch, capsys):
    few = (symbolic.check_elr_map, symbolic.check_proposition_3_9)
    monkeypatch.setattr(symbolic, "prove_all", functools.partial(symbolic.prove_all, few))
    assert cli.main(["prove"]) == 0
    out = capsys.readouterr().out
    assert "[checks elr.dynamics.elr_step, elr.dynamics.discrete_step, elr.dynamics.elr]" in out
    assert "2 of 2 statements verified" in out
    _break(monkeypatch, next(m for m in MUTATIONS if m.implements == D + "elr_step"))
    assert cli.main(["prove"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] Lemma (ours)" in out and "1 of 2 statements verified; FAILED: Lemma (ours)" in out


# ------------------------------------------- long_horizon against brute-force iteration of Eq. 5

LR = 0.1
X0 = np.array([1e-3, 0.05, 0.3, 1.0, 2.5, 7.0, 8.0, 9.0, 20.0, 100.0, 1e3])  # x0 = σ0²/(cλ)
C = np.geomspace(1e-2, 1e2, X0.size)
N = np.unique(np.concatenate([np.arange(200), np.geomspace(200, 200_000, 60).round().astype(int)]))


@pytest.fixture(scope="module")
def eq5_sigma2():
    """σ²_n of Eq. 5, σ²_{i+1} = σ²_i + λ²c²/σ²_i, step by step for every n in N, with compensated
    (Kahan) summation so that 200,000 additions keep float64's precision: the sum is s − carry."""
    s, carry, out, wanted = X0 * C * LR, np.zeros_like(X0), {}, set(N.tolist())
    for i in range(N[-1] + 1):
        if i in wanted:
            out[i] = s - carry
        inc = LR**2 * C**2 / (s - carry) - carry
        total = s + inc
        carry = (total - s) - inc
        s = total
    return out


def _long_horizon_against_eq5(sigma2: dict) -> tuple[float, float, bool]:
    """(largest |estimate − x_n| as a fraction of the bracket's width where the closed form is used, largest
    relative error where long_horizon iterated exactly, every x_n inside its bracket)."""
    of_width, iterated, inside = 0.0, 0.0, True
    for n in N:
        exact = sigma2[n] / (C * LR)
        h = dynamics.long_horizon(X0, n)
        inside &= bool(np.all((h.lower <= exact * (1 + 1e-14)) & (exact <= h.upper * (1 + 1e-14))))
        closed = h.exact_steps < n
        width = np.where(closed, h.upper - h.lower, 1.0)
        of_width = max(of_width, float(np.max(np.where(closed, np.abs(h.x - exact) / width, 0.0))))
        iterated = max(iterated, float(np.max(np.where(closed, 0.0, np.abs(h.x / exact - 1)))))
    return of_width, iterated, inside


def test_long_horizon_matches_brute_force_iteration_of_eq5(eq5_sigma2):
    """x_n = σ²_n/(cλ) from long_horizon within 1/200 of its own bracket's width of Eq. 5 iterated n times
    (measured: 0.0023; the estimate's own error is about 1/y_m of the width, y_m >= 64), for x0 from 1e-3 to
    1e3 and n up to 200,000; and exactly where it iterates."""
    of_width, iterated, inside = _long_horizon_against_eq5(eq5_sigma2)
    assert inside
    assert of_width < 1 / 200, of_width
    assert iterated < 1e-14, iterated
    # elr_at_step is the same estimate for layers: E_n = c/σ²_n
    for n in (0, 7, 150, 200_000):
        h = dynamics.elr_at_step(X0 * C * LR, C, LR, n)
        assert np.all(np.abs(h.x - C / eq5_sigma2[n]) <= (h.upper - h.lower) / 200 + 1e-14 * h.x)


def test_the_brute_force_comparison_fails_with_two_fixed_point_steps(monkeypatch, eq5_sigma2):
    monkeypatch.setattr(dynamics, "_invariant_inverse", _two_fixed_point_steps)
    of_width, _, _ = _long_horizon_against_eq5(eq5_sigma2)
    assert of_width > 1 / 200  # measured 0.017

"""elr.symbolic and `elr prove`: every statement verifies, and a broken formula in elr.dynamics is caught."""
import dataclasses

import numpy as np
import pytest

from elr import cli, dynamics, symbolic


@pytest.fixture(scope="module")
def results():
    return symbolic.prove_all()


def test_every_statement_verifies(results):
    failed = [r.line() for r in results if not r.ok]
    assert not failed, "\n".join(failed)


def test_every_statement_of_the_issue_is_covered(results):
    refs = {r.ref for r in results}
    assert {"Eqs. 1-2", "Thm. 3.4", "Thm. 3.5", "Prop. 3.7", "Prop. 3.9", "Prop. A.1", "Thm. 3.6", "Cor. 3.10"} <= refs
    assert {f"Prop. III.{i}" for i in range(1, 7)} <= refs  # Part III


def test_closed_form_is_derived_not_restated():
    ode, solution, s0 = symbolic.derive_closed_form()
    # dsolve's answer satisfies the ODE and the initial condition
    t = symbolic.t
    assert symbolic.sp.simplify(solution.diff(t) - symbolic.c**2 / solution) == 0
    assert symbolic.sp.simplify(solution.subs(t, 0) - s0) == 0


def test_prove_command_exit_code_and_lines(capsys):
    assert cli.main(["prove"]) == 0
    out = capsys.readouterr().out
    assert "statements verified" in out and "FAIL" not in out
    assert out.count("[ok  ]") == len(symbolic.CHECKS)


def _broken_closed_form(t, c, sigma2_0=dynamics.SIGMA2_HE):
    # the 2 of Eq. (12) replaced by 1
    return np.sqrt(1.0 * np.asarray(c) ** 2 * np.asarray(t) + np.asarray(sigma2_0) ** 2)


def test_prove_fails_if_the_closed_form_is_broken(monkeypatch, capsys):
    monkeypatch.setattr(dynamics, "continuous_sigma2", _broken_closed_form)
    assert not symbolic.check_theorem_3_4().ok
    assert cli.main(["prove"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_prove_fails_if_the_discrete_model_is_broken(monkeypatch):
    monkeypatch.setattr(dynamics, "discrete_step",
                        lambda sigma2, c, lr: np.asarray(sigma2) + np.asarray(lr) * np.asarray(c) ** 2 / np.asarray(sigma2))
    failed = [r.ref for r in symbolic.prove_all() if not r.ok]
    assert {"Prop. 3.9", "Lemma (ours)"} <= set(failed)


def test_prove_fails_if_the_flipping_ratio_is_broken(monkeypatch):
    monkeypatch.setattr(dynamics, "flipping_ratio", lambda a, b: 1.0 / (np.asarray(a) * np.asarray(b)))
    assert not symbolic.check_proposition_3_9().ok


def test_a_raising_check_is_a_failure_not_a_crash():
    def boom():
        raise ZeroDivisionError("nope")

    [result] = symbolic.prove_all((boom,))
    assert not result.ok and "ZeroDivisionError" in result.detail


def test_the_short_spread_saturates_at_one():
    from elr import dynamics

    assert symbolic.derive_short_spread_limit() == 1
    # Eq. (7) numerically, for two block sizes and another alpha: the limit does not depend on them
    for s, alpha in ((2, dynamics.ALPHA), (3, 1.5)):
        values = [float(dynamics.relative_spread(dynamics.base_gradients_resnet(n, s, alpha))) for n in (100, 10000, 200000)]
        gaps = [abs(v - 1) for v in values]  # from below for α² ≈ 1.47, from above for 1.5³: either way to 1
        assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 5e-3


def test_momentum_flips_below_one_minus_mu_kappa_for_close_pairs_and_at_it_for_far_ones():
    """Prop. III.4 as the review found it: from an empty buffer, the pair σ² = 2, c = (10, 1) flips at
    0.45 (1 − μ) κ with μ = 0.9 (step 24); close pairs flip at about √((1−μ)/(1+μ)) (1−μ) κ, far pairs at (1−μ)κ,
    and SGD at κ for every ratio."""
    import math

    assert symbolic.momentum_flips(np.array([5.0, 0.5]), 0.45 * 0.1 / math.sqrt(2.5), 0.9) == 24
    assert symbolic.momentum_flips(np.array([5.0, 0.5]), 0.2 * 0.1 / math.sqrt(2.5), 0.9) is None
    close = symbolic.momentum_flip_threshold(1.001, 0.9)
    assert 1.0 < close / math.sqrt(0.1 / 1.9) < 1.15
    assert abs(symbolic.momentum_flip_threshold(1e8, 0.9) - 1) < 0.02
    assert abs(symbolic.momentum_flip_threshold(1.001, 0.0) - 1) < 1e-5


def _flips_ranked_after_the_step(self):
    e = self.elr
    top = np.take_along_axis(e[1:], np.argmax(e[1:], axis=-1)[..., None], -1)[..., 0]
    bottom = np.take_along_axis(e[1:], np.argmin(e[1:], axis=-1)[..., None], -1)[..., 0]
    return top < bottom


_ONE_CYCLE = dynamics.one_cycle
_WARMUP = dynamics.subcritical_warmup
_ELR_AT_STEP = dynamics.elr_at_step

# Each row breaks one formula the way the review did (or the way a careless edit would) and names the check
# of `elr prove` that must then fail.
BROKEN = {
    "CIFAR base gradients with 3 ReLUs per block": (
        "base_gradients_cifar_resnet",
        lambda depth, shortcut=True: (dynamics.base_gradients_resnet(dynamics.cifar_resnet_layers(depth), 3)
                                      if shortcut else dynamics.base_gradients_feedforward(
                                          dynamics.cifar_resnet_layers(depth))),
        symbolic.check_base_gradients),
    "OneCycle's default pct_start 0.25 instead of torch's 0.3": (
        "one_cycle", lambda step, max_lr, total, pct_start=0.25, *a, **k: _ONE_CYCLE(step, max_lr, total, pct_start, *a, **k),
        symbolic.check_schedules),
    "warm-up that never hands over to an already subcritical target": (
        "subcritical_warmup",
        lambda step, elr, target, tol=1e-6, max_steps=None: np.where(
            dynamics.relative_spread(np.asarray(elr)) <= tol, np.asarray(target(step), dtype=float),
            dynamics.subcritical_lr(elr)),
        symbolic.check_subcritical_warmup),
    "κ_ℓh from the two highest ELRs": (
        "critical_lr", lambda e: dynamics.subcritical_lr(e), symbolic.check_rates_and_spread),
    "S_rel with ddof = 1": (
        "relative_spread", lambda e: np.std(np.log(np.asarray(e, dtype=float)), axis=-1, ddof=1),
        symbolic.check_rates_and_spread),
    "elr_at_step 0.1 % off": (
        "elr_at_step", lambda *a: dataclasses.replace(_ELR_AT_STEP(*a), x=_ELR_AT_STEP(*a).x * 1.001),
        symbolic.check_elr_at_step),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_prove_fails_when_a_formula_is_broken(monkeypatch, name):
    attribute, broken, check = BROKEN[name]
    assert check().ok  # the check passes on the real formula ...
    monkeypatch.setattr(dynamics, attribute, broken)
    assert not check().ok  # ... and fails on the broken one


def test_prove_fails_when_flips_are_ranked_after_the_step(monkeypatch):
    monkeypatch.setattr(dynamics.Trajectory, "extreme_flips", property(_flips_ranked_after_the_step))
    assert not symbolic.check_rates_and_spread().ok

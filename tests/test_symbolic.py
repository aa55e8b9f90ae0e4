"""elr.symbolic and `elr prove`: every statement verifies, and a broken formula in elr.dynamics is caught."""
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

"""elr.symbolic and `elr prove`: every statement verifies (tests/test_prove.py: and fails when what it checks
is broken)."""
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


def test_prove_command_exit_code_and_lines(monkeypatch, capsys, results):
    monkeypatch.setattr(symbolic, "prove_all", lambda: results)  # the results above, printed by the command
    assert cli.main(["prove"]) == 0
    out = capsys.readouterr().out
    assert "statements verified" in out and "FAIL" not in out
    assert out.count("[ok  ]") == len(symbolic.CHECKS)
    # every line names the code it checks (tests/test_prove.py breaks each and sees the line fail)
    assert out.count(" [checks elr.") == len(symbolic.CHECKS)


def test_a_raising_check_is_a_failure_not_a_crash():
    def boom():
        raise ZeroDivisionError("nope")

    [result] = symbolic.prove_all((boom,))
    assert not result.ok and "ZeroDivisionError" in result.detail

    @symbolic.statement("Eq. 0", "elr.dynamics.elr")
    def named_boom():
        raise ZeroDivisionError("nope")

    [result] = symbolic.prove_all((named_boom,))
    assert (result.ref, result.implements, result.ok) == ("Eq. 0", ("elr.dynamics.elr",), False)


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

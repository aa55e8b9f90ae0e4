"""Part III models in elr.dynamics: weight decay, momentum, the ODE solvers and the long-horizon closed form."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from elr import dynamics, symbolic


def _vector_sgd(c, lr, wd, mu, n, dim=120, seed=0):
    """SGD with momentum and weight decay on explicit vectors, with gradients orthogonal to W and the buffer."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((len(c), dim))
    w *= np.sqrt(2.0) / np.linalg.norm(w, axis=1, keepdims=True)
    v = np.zeros_like(w)
    norms, angular = [np.sum(w**2, axis=1)], []
    for _ in range(n):
        g = rng.standard_normal(w.shape)
        for k in range(len(c)):
            basis = np.array([w[k]] + ([v[k]] if np.any(v[k]) else [])).T
            q, _ = np.linalg.qr(basis)
            g[k] -= q @ (q.T @ g[k])
        g *= (np.asarray(c) / np.linalg.norm(w, axis=1) / np.linalg.norm(g, axis=1))[:, None]
        v = mu * v + g + wd * w                      # torch.optim.SGD, dampening 0
        new = w - lr * v
        angular.append(np.linalg.norm(new - w, axis=1) / np.linalg.norm(w, axis=1))
        w = new
        norms.append(np.sum(w**2, axis=1))
    return np.array(norms), np.array(angular)


@pytest.mark.parametrize("lr,wd,mu", [(0.3, 1e-2, 0.9), (0.1, 0.0, 0.5), (1.0, 5e-3, 0.0), (0.2, 0.0, 0.0)])
def test_mean_field_model_is_exact_for_orthogonal_gradients(lr, wd, mu):
    c = np.array([0.3, 1.0, 4.0])
    norms, angular = _vector_sgd(c, lr, wd, mu, 150)
    traj = dynamics.simulate_sgd(np.full(3, 2.0), c, lr, 150, wd, mu)
    np.testing.assert_allclose(traj.sigma2, norms, rtol=1e-10)
    np.testing.assert_allclose(traj.angular, angular, rtol=1e-10)


def test_simulate_sgd_reduces_to_eq_5_and_to_the_weight_decay_recurrence():
    c, s0 = np.array([0.5, 2.0]), np.array([1.0, 3.0])
    plain = dynamics.simulate(s0, c, np.full(20, 0.7))
    np.testing.assert_allclose(dynamics.simulate_sgd(s0, c, 0.7, 20).sigma2, plain.sigma2, rtol=1e-13)
    s = s0.copy()
    for _ in range(20):
        s = (1 - 0.7 * 0.01) ** 2 * s + 0.7**2 * c**2 / s
    np.testing.assert_allclose(dynamics.simulate_sgd(s0, c, 0.7, 20, wd=0.01).sigma2[-1], s, rtol=1e-13)


def test_equilibrium_by_hand_and_validation():
    eq = dynamics.equilibrium(0.1, 5e-4, 0.9)
    assert eq.angular == pytest.approx(np.sqrt(2 * 0.1 * 5e-4 / 1.9))
    assert eq.elr == pytest.approx(np.sqrt(0.1 * 5e-4 * (2 * 1.9 - 0.1 * 5e-4) / (0.1 * 1.9)))
    assert dynamics.equilibrium(0.2, 1e-3).tangential == pytest.approx(np.sqrt(0.2e-3 * (2 - 0.2e-3)))
    np.testing.assert_allclose(dynamics.equilibrium(0.2, 1e-3).sigma2([1.0, 2.0]),
                               np.array([1.0, 2.0]) / dynamics.equilibrium(0.2, 1e-3).elr)
    for bad in [dict(lr=0.1, wd=0.0), dict(lr=-1, wd=1e-3), dict(lr=0.1, wd=1e-3, momentum=1.0), dict(lr=10, wd=1)]:
        with pytest.raises(ValueError):
            dynamics.equilibrium(**bad)
    with pytest.raises(ValueError, match="momentum"):
        dynamics.simulate_sgd([1.0], [1.0], 0.1, 5, momentum=1.2)


def test_relaxation_time_and_critical_rate_with_weight_decay():
    assert dynamics.relaxation_steps(0.1, 1e-3) == pytest.approx(1 / (4e-4), rel=2e-3)
    with pytest.raises(ValueError):
        dynamics.relaxation_steps(1.0, 0.5)
    e = np.array([0.1, 10.0])  # κ = 1
    assert float(dynamics.critical_lr_wd(e, 0.5)) == pytest.approx(1 / 1.5)
    assert float(dynamics.critical_lr_wd(e, 0.0)) == pytest.approx(float(dynamics.critical_lr(e)))


def test_solvers_by_hand():
    assert float(dynamics.implicit_step(np.array([1.0]), 1.0, 1.0)[0]) == pytest.approx((1 + np.sqrt(5)) / 2)
    assert float(dynamics.flow_step(np.array([1.0]), 1.0, 1.0)[0]) == pytest.approx(np.sqrt(3))
    traj = dynamics.simulate_solver(np.array([1.0, 2.0]), np.array([1.0, 1.0]), np.full(3, 0.5), "flow")
    np.testing.assert_allclose(traj.sigma2[-1], dynamics.continuous_sigma2(0.75, 1.0, np.array([1.0, 2.0])))
    with pytest.raises(ValueError, match="method"):
        dynamics.simulate_solver([1.0], [1.0], [0.1], "rk4")


@settings(max_examples=40, deadline=None)
@given(st.floats(1e-3, 1e3), st.integers(0, 3000))
def test_long_horizon_brackets_the_recurrence(x0, n):
    exact = dynamics.normalised_sequence(np.array([x0]), n)[-1, 0]
    h = dynamics.long_horizon(x0, n)
    assert h.lower * (1 - 1e-14) <= exact <= h.upper * (1 + 1e-14)
    assert abs(h.x / exact - 1) < 1e-6


def test_long_horizon_at_a_million_steps_and_elr_at_step():
    x0 = np.array([0.05, 1.0, 20.0])
    exact = dynamics.normalised_sequence(x0, 1_000_000)[-1]
    h = dynamics.long_horizon(x0, 1_000_000)
    np.testing.assert_allclose(h.x, exact, rtol=1e-9)
    assert np.all(h.exact_steps <= 32)
    s0, c, lr = np.array([2.0, 2.0]), np.array([0.1, 3.0]), 0.3
    e = dynamics.elr_at_step(s0, c, lr, 5000)
    np.testing.assert_allclose(e.x, dynamics.simulate(s0, c, np.full(5000, lr)).elr[-1], rtol=1e-8)
    assert np.all((e.lower <= e.x) & (e.x <= e.upper))
    with pytest.raises(ValueError, match="x0"):
        dynamics.long_horizon(-1.0, 3)
    with pytest.raises(ValueError, match="n must"):
        dynamics.long_horizon(1.0, 2.5)


@pytest.mark.parametrize("check,target,broken", [
    ("check_momentum_equilibrium", "equilibrium",
     lambda lr, wd, momentum=0.0: dynamics.Equilibrium(1.0, np.sqrt(2 * lr * wd), 1.0)),
    ("check_long_horizon", "long_horizon",
     lambda x0, n, y_min=64.0: dynamics.LongHorizon(*(np.sqrt(np.asarray(x0, float) ** 2 + 2 * np.asarray(n)),) * 3,
                                                     exact_steps=0)),
    ("check_weight_decay_flips", "critical_lr_wd", lambda e, wd: dynamics.critical_lr(e)),
])
def test_part_three_checks_catch_a_broken_formula(monkeypatch, check, target, broken):
    monkeypatch.setattr(dynamics, target, broken)
    assert not symbolic.prove_all([getattr(symbolic, check)])[0].ok

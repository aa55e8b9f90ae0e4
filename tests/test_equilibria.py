"""elr.equilibria: run summaries against the model's equilibrium, on records that follow the model exactly."""
import numpy as np
import pytest

from elr import dynamics, equilibria, measure


def _sgd_records(lr: float, wd: float, steps: int, sigma2_0=(9.0, 0.5, 2.0), c=(1.0, 0.3, 2.0)) -> measure.Records:
    """Three layers that follow the model of SGD with weight decay (simulate_sgd), logged every step."""
    sim = dynamics.simulate_sgd(np.array(sigma2_0), np.array(c), lr, steps, wd)
    records = measure.Records(["a", "b", "c"])
    for t in range(steps):
        w = np.sqrt(sim.sigma2[t])
        for q, v in (("weight_norm", w), ("grad_norm", np.array(c) / w), ("elr_grad", np.array(c) / w**2),
                     ("elr_update", sim.angular[t])):
            records.add(t, np.arange(3), np.full(3, -1), q, v)
    return records


def test_summary_of_a_run_that_follows_the_model_finds_its_equilibrium():
    lr, wd = 0.4, 0.02
    out = equilibria.summary(_sgd_records(lr, wd, 3000), lr, wd)
    eq = dynamics.equilibrium(lr, wd)
    np.testing.assert_allclose(out["elr"], eq.elr, rtol=0.01)
    np.testing.assert_allclose(out["angular"], eq.angular, rtol=0.01)
    assert out["settled"] and out["drift"] < 1e-3 and out["t_needed"] < out["tail_start"]
    assert out["t_pred"] == pytest.approx(2 * dynamics.relaxation_steps(lr, wd))
    assert 0 <= out["spread_end"] < 0.01  # every layer at the same E_*
    early = equilibria.summary(_sgd_records(lr, wd, 60), lr, wd)  # far from the plateau: not settled
    assert not early["settled"] and early["spread_end"] > 0.1
    assert equilibria.summary(_sgd_records(lr, wd, 3000), lr, 2 * wd)["elr_pred"] > 1.3 * eq.elr  # the wd is used


def _varying_c_records(lr: float, wd: float, sigma2_0: float, c: np.ndarray) -> measure.Records:
    """One layer of the model with weight decay whose base gradient c_t changes over time (c has one value per
    step): σ²_{t+1} = (1 − λwd)²σ²_t + λ²c_t²/σ²_t, logged every step."""
    records = measure.Records(["a"])
    s2 = sigma2_0
    for t, ct in enumerate(c):
        w = np.sqrt(s2)
        for q, v in (("weight_norm", w), ("grad_norm", ct / w), ("elr_grad", ct / s2),
                     ("elr_update", lr * ct / s2)):
            records.add(t, np.arange(1), np.full(1, -1), q, np.array([v]))
        s2 = (1 - lr * wd) ** 2 * s2 + lr**2 * ct**2 / s2
    return records


def test_settled_asks_whether_the_run_was_long_enough_for_its_own_start_and_plateau():
    lr, wd, steps = 0.4, 0.01, 1500
    e_star = dynamics.equilibrium(lr, wd).elr
    # c halves over the run, as when the loss falls: the equilibrium norm σ*² = c/E* follows it (mean ‖W‖² moves
    # by several % across the tail) and the ELR stays near E*; 1,200 steps are ample at λwd = 0.004
    falling_c = equilibria.summary(_varying_c_records(lr, wd, 9.0, np.linspace(1.0, 0.5, steps)), lr, wd)
    assert falling_c["drift"] > 0.03 and falling_c["settled"] and falling_c["t_needed"] < 1200
    assert falling_c["elr"][0] == pytest.approx(e_star, rel=0.05)  # a few % low: σ² lags c by ~1/(2λwd) steps
    # far above its equilibrium (σ0²/σ*² = 3000) with a small λwd: the decay's e⁻² point comes early, but at the
    # tail the norm is still on its way down and the ELR still below E*
    lr, wd = 0.1, 0.02
    sigma2_star = 1.0 / dynamics.equilibrium(lr, wd).elr
    late = equilibria.summary(_varying_c_records(lr, wd, 3000 * sigma2_star, np.ones(steps)), lr, wd)
    assert late["t_eq"] < 1200 and late["t_needed"] > 1200 and not late["settled"]
    assert late["elr"][0] < 0.9 * dynamics.equilibrium(lr, wd).elr
    # the same start, run three times as long, settles
    long = equilibria.summary(_varying_c_records(lr, wd, 3000 * sigma2_star, np.ones(3 * steps)), lr, wd)
    assert long["settled"] and long["elr"][0] == pytest.approx(dynamics.equilibrium(lr, wd).elr, rel=0.02)


def test_steps_to_settle_follow_the_models_relaxation():
    lr, wd = 0.4, 0.01
    tau = dynamics.relaxation_steps(lr, wd)
    np.testing.assert_allclose(equilibria.steps_to_settle(lr, wd, np.array([1.0 + np.e**3, 1.1]), np.array([1.0, 1.0])),
                               [5 * tau, 0.0])  # a gap of e³ needs 3 + 2 e-foldings; one below e⁻² none


def test_tail_drift_compares_the_halves_of_the_tail():
    v = np.ones((100, 2))
    v[-10:, 0] = 1.1  # the second half of the last 20 rows is 10 % higher in column 0
    np.testing.assert_allclose(equilibria.tail_drift(v), [0.1, 0.0], atol=1e-12)


def test_tail_spread_averages_the_last_fifth():
    e = np.ones((10, 3))
    e[-2:] = [[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]  # the last fifth: two rows
    expected = float(dynamics.relative_spread(e[-2:]).mean())
    assert expected > 0 and equilibria.tail_spread(e) == pytest.approx(expected)
    assert equilibria.tail_spread(e, tail=0.1) == 0.0  # the last row alone: no spread
    with pytest.raises(ValueError, match="tail"):
        equilibria.tail_spread(e, tail=0.0)

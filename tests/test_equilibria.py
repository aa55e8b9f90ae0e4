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
    assert out["settled"] and out["drift"] < 1e-3
    assert out["t_pred"] == pytest.approx(2 * dynamics.relaxation_steps(lr, wd))
    assert 0 <= out["spread_end"] < 0.01  # every layer at the same E_*
    early = equilibria.summary(_sgd_records(lr, wd, 60), lr, wd)  # far from the plateau: not settled
    assert not early["settled"] and early["spread_end"] > 0.1
    assert equilibria.summary(_sgd_records(lr, wd, 3000), lr, 2 * wd)["elr_pred"] > 1.3 * eq.elr  # the wd is used


def test_a_plateau_that_drifts_with_the_base_gradient_is_settled_a_run_still_falling_is_not():
    lr, wd, steps = 0.4, 0.01, 1500
    sim = dynamics.simulate_sgd(np.array([9.0, 4.0]), np.array([1.0, 0.3]), lr, steps, wd)
    # σ*² = c/E* follows c: let c fall by half over the run, as it does when the loss falls. Mean ‖W‖² then moves
    # by about 5 % across the tail, more than weight decay alone moves it there, yet the approach is long over.
    falling_c = np.sqrt(sim.sigma2[:steps] * np.linspace(1.0, 0.5, steps)[:, None])
    logged = np.arange(steps)
    drifting = equilibria.approach(logged, falling_c)
    assert drifting.drift.max() > 0.04 and drifting.settled
    assert drifting.tail_change.max() < 0.05 and np.all(2 * drifting.steps < drifting.tail_start)
    # still on its way down to the end: ‖W‖² falls linearly from 9 to 1, so its e⁻² point comes late (step 987
    # of 1500, the tail starting at 1200), though the tail moves by less than e⁻² of the whole approach
    falling = np.sqrt(np.linspace(9.0, 1.0, steps))[:, None] * np.ones((1, 2))
    down = equilibria.approach(logged, falling)
    assert not down.settled and down.tail_change.max() < np.exp(-2.0) and np.all(2 * down.steps > down.tail_start)
    # a plateau that jumps late (across the tail) by a third of the approach is not settled either
    jump = np.sqrt(sim.sigma2[:steps]).copy()
    s_star, s_0 = np.mean(jump[-300:] ** 4, axis=0), jump[0] ** 4
    jump[-150:] = (jump[-150:] ** 4 + 0.5 * np.abs(s_0 - s_star)) ** 0.25
    late = equilibria.approach(logged, jump)
    assert late.tail_change.max() > np.exp(-2.0) and not late.settled


def test_tail_spread_averages_the_last_fifth():
    e = np.ones((10, 3))
    e[-2:] = [[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]  # the last fifth: two rows
    expected = float(dynamics.relative_spread(e[-2:]).mean())
    assert expected > 0 and equilibria.tail_spread(e) == pytest.approx(expected)
    assert equilibria.tail_spread(e, tail=0.1) == 0.0  # the last row alone: no spread
    with pytest.raises(ValueError, match="tail"):
        equilibria.tail_spread(e, tail=0.0)

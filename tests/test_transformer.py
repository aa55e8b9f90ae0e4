"""elr.transformer, elr.equilibria and the base-gradient measurements of Part III."""
import numpy as np
import pytest
import torch

from elr import audit, dynamics, equilibria, measure, nets, transformer


def test_sorting_task_is_sorted_deterministic_and_split():
    a, b = transformer.sorting_task(64, seed=3), transformer.sorting_task(64, seed=3)
    assert torch.equal(a.inputs, b.inputs)
    assert torch.all(a.targets[:, 1:] >= a.targets[:, :-1])
    assert torch.equal(a.targets.sort(dim=1).values, a.inputs.sort(dim=1).values)
    train, test = a.split(16)
    assert len(train.inputs) == 48 and len(test.inputs) == 16 and "test part" in test.description
    with pytest.raises(ValueError, match="n_test"):
        a.split(64)
    with pytest.raises(ValueError, match="seq_len"):
        transformer.sorting_task(10, seq_len=1)


def test_model_shapes_and_validation():
    net = transformer.PreLNTransformer(vocab=7, seq_len=5, d_model=16, n_heads=2, n_layers=3)
    assert net(torch.randint(0, 7, (4, 5))).shape == (4, 5, 7)
    assert len(net.weight_layers()) == 18 and net.scale_invariant_layers() == []
    assert len(transformer.PreLNTransformer(d_model=16, n_heads=2, qk_norm=True).scale_invariant_layers()) == 4
    with pytest.raises(ValueError, match="divisible"):
        transformer.PreLNTransformer(d_model=10, n_heads=4)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_audit_finds_exactly_the_query_and_key_weights_with_qk_norm(qk_norm):
    torch.manual_seed(0)
    net = transformer.PreLNTransformer(d_model=16, n_heads=2, n_layers=2, qk_norm=qk_norm)
    rows = {r.name: r for r in audit.audit(net, transformer.sorting_task(16).inputs)}
    for name, _ in net.weight_layers():
        expected = qk_norm and name.endswith(("attn.q", "attn.k"))
        assert rows[f"{name}.weight"].invariant == expected, name
    assert "softmax" in rows["blocks.0.attn.q.weight"].reason or qk_norm
    assert rows["blocks.0.ln1.bias"].verdict == "untested (zero)"


def test_train_sequence_learns_and_records_every_weight():
    run = transformer.train_sequence(True, transformer.sorting_task(1024), 40, 0.5, n_test=128, d_model=16, n_heads=2,
                                     n_layers=1)
    steps, e = run.records.matrix("elr_grad")
    assert list(steps) == list(range(40)) and e.shape == (40, 6)
    assert run.diverged_at is None and np.nanmean(run.losses[-5:]) < run.losses[0]
    # the query and key weights of the QK-norm model obey plain SGD's norm law exactly: no radial gradient
    cos = measure.radial_cosine(run.records, 0.5)
    assert np.all(cos[:, :2] < 1e-4) and np.median(cos[:, 2:]) > 1e-3
    with pytest.raises(ValueError, match="lr"):
        transformer.train_sequence(True, transformer.sorting_task(64), 5, -1.0, n_test=8)


def test_radial_cosine_and_base_gradient_stats_on_a_bn_network():
    torch.manual_seed(0)
    net = nets.bnrelu(3, width=16, in_features=8, num_classes=3)
    mon = measure.ELRMonitor(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for step in range(10):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        mon.observe_gradients(step)
        opt.step()
        mon.observe_update(step)
    assert np.all(measure.radial_cosine(mon.records, 0.2) < 1e-3)
    stats = measure.base_gradient_stats(mon.records)
    assert set(stats) == {"noise", "drift", "growth"} and np.all(stats["growth"] > 0)  # SGD only grows the norms


def test_approach_recovers_the_relaxation_time_of_the_model():
    lr, wd = 0.4, 0.01
    c = np.array([0.5, 2.0, 8.0])
    traj = dynamics.simulate_sgd(np.full(3, 40.0), c, lr, 2000, wd)
    appr = equilibria.approach(np.arange(2001), np.sqrt(traj.sigma2))
    assert np.all(np.abs(appr.steps / (2 * dynamics.relaxation_steps(lr, wd)) - 1) < 0.1)
    assert np.all(appr.drift < 1e-3) and appr.half_steps == 200  # a tail of 400 of the 2001 steps
    with pytest.raises(ValueError, match="tail"):
        equilibria.approach(np.arange(3), np.ones((3, 1)), tail=1.5)


def test_loglog_fit_slope_and_uncertainty():
    x = np.logspace(-3, -1, 8)
    fit = equilibria.loglog_fit(x, 3.0 / x)
    assert fit.slope == pytest.approx(-1.0) and fit.slope_se < 1e-10
    noisy = 3.0 / x * np.exp(np.random.default_rng(0).normal(0, 0.1, 8))
    fit = equilibria.loglog_fit(x, noisy)
    assert abs(fit.slope + 1) < 4 * fit.slope_se and 0.01 < fit.slope_se < 0.2
    np.testing.assert_allclose(equilibria.tail_rms(np.array([[1.0], [3.0], [4.0], [4.0], [4.0]]), 0.4), [4.0])
    with pytest.raises(ValueError):
        equilibria.loglog_fit([1, 2], [1, 2])

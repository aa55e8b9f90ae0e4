"""LARS (timm's Lars, pinned in elr[lars]) beside the paper's ELR constraint: elr.lars and TrainConfig(optimizer="lars")."""
import numpy as np
import pytest
import torch

from elr import lars, train


def test_the_norm_law_is_the_product_of_orthogonal_steps():
    assert lars.norm_law(1.0, 0.03, 0) == 1.0
    np.testing.assert_allclose(lars.norm_law(0.5, 0.1, [1, 2, 10]), [np.sqrt(1.0025), 1.0025, 1.0025 ** 5])


@pytest.mark.parametrize("bad, message", [
    (dict(optimizer="adam"), "optimizer must be one of"),
    (dict(optimizer="lars", lars_scope="some"), "lars_scope must be one of"),
    (dict(optimizer="lars", trust_coeff=0.0), "trust_coeff must be > 0"),
    (dict(optimizer="lars", transform="constrain"), "constrains the update twice"),
    (dict(optimizer="lars", wd=1e-4), "cannot use wd > 0"),
])
def test_bad_lars_settings_are_refused_before_any_compute(bad, message):
    with pytest.raises(ValueError, match=message):
        train.TrainConfig(**bad)
    train.TrainConfig(optimizer="lars", lars_scope="all", wd=1e-4)  # decaying every parameter is allowed


def _run(tmp_path, **kw):
    config = train.TrainConfig(model="bnrelu4", width=16, batch_size=32, steps=12, lr=0.5, log_every=1, **kw)
    return train.train(config, tmp_path / config.key())


def test_lars_moves_each_invariant_weight_by_lr_times_eta_and_its_norm_grows_by_the_law(tmp_path):
    run = _run(tmp_path, optimizer="lars", trust_coeff=0.05)
    assert run.status == "completed"
    assert lars.update_deviation(run.records, 0.5 * 0.05) < 1e-4
    assert lars.norm_law_deviation(run.records, 0.5, 0.05) < 1e-4
    # the mutation a wrong law would make: the norms do grow, by far more than rounding
    assert lars.norm_law_deviation(run.records, 0.5, 0.0) > 1e-3


def test_the_constraint_keeps_the_largest_norm_at_one_and_lars_does_not(tmp_path):
    constrained = _run(tmp_path, transform="constrain", elr_goal=0.05)
    np.testing.assert_allclose(lars.largest_norm(constrained.records), 1.0, atol=1e-6)
    assert lars.update_deviation(constrained.records, 0.5 * 0.05) < 0.01
    free = _run(tmp_path, optimizer="lars", trust_coeff=0.05)
    assert np.all(np.diff(lars.largest_norm(free.records)) > 0)


def test_the_scope_decides_which_parameters_lars_adapts(tmp_path):
    config = train.TrainConfig(model="bnrelu4", width=16, optimizer="lars", trust_coeff=0.05)
    model = train.build_model(config, 1, 10, 64)
    weights = [m.weight for _, m in train.nets.scale_invariant_layers(model)]
    groups = train.build_optimizer(config, model, weights).param_groups
    assert [g["always_adapt"] for g in groups] == [True, False]
    assert {id(p) for p in groups[0]["params"]} == {id(w) for w in weights}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    everything = train.build_optimizer(train.TrainConfig(model="bnrelu4", width=16, optimizer="lars", lars_scope="all"),
                                       model, weights).param_groups
    assert len(everything) == 1 and len(everything[0]["params"]) == len(list(model.parameters()))


def test_timm_lars_at_weight_decay_zero_without_always_adapt_is_plain_sgd():
    # what chapter 19 tells its readers about timm's defaults
    from timm.optim import Lars

    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(5, 4))
    w2 = torch.nn.Parameter(w1.detach().clone())
    grad = torch.randn(5, 4)
    w1.grad, w2.grad = grad.clone(), grad.clone()
    Lars([w1], lr=0.1).step()
    torch.optim.SGD([w2], lr=0.1).step()
    torch.testing.assert_close(w1, w2, rtol=0, atol=0)
    w3 = torch.nn.Parameter(w2.detach().clone())
    w3.grad = grad.clone()
    Lars([w3], lr=0.1, trust_coeff=0.02, always_adapt=True).step()
    assert abs(float((w3 - w2).detach().norm() / w2.detach().norm()) - 0.1 * 0.02) < 1e-6


def test_the_two_optimizers_are_one_method_when_every_epsilon_is_zero():
    gap = lars.trajectory_gap(0, model="bnrelu4", width=16, steps=8, lr=0.3, elr_goal=0.05, batch_size=32)
    assert gap.shape == (8,) and gap.max() < 1e-10
    with pytest.raises(ValueError, match="steps must be >= 1"):
        lars.trajectory_gap(0, steps=0)

"""elr.gradients: the random walk is orthogonal with the gradient's norm; the ELR constraint hits its goal."""
import numpy as np
import pytest
import torch

from elr import gradients, measure, nets


@pytest.mark.parametrize("per_channel", [True, False])
def test_random_walk_is_orthogonal_and_keeps_the_norm(per_channel):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64, generator=g)
    grad = torch.randn(16, 8, 3, 3, dtype=torch.float64, generator=g)
    d = gradients.random_walk_direction(grad, w, g, per_channel=per_channel)
    if per_channel:
        assert torch.allclose((d * w).flatten(1).sum(1), torch.zeros(16, dtype=torch.float64), atol=1e-10)
        assert torch.allclose(d.flatten(1).norm(dim=1), grad.flatten(1).norm(dim=1))
    else:
        assert abs(float((d * w).sum())) < 1e-10 * float(d.norm() * w.norm())
        assert float(d.norm()) == pytest.approx(float(grad.norm()))
    assert not torch.allclose(d, grad)


def test_printed_algorithm_is_parallel_to_w():
    g = torch.Generator().manual_seed(1)
    w, grad = torch.randn(64, generator=g), torch.randn(64, generator=g)
    d = gradients.random_walk_as_printed(grad, w, g)
    cos = float((d @ w) / (d.norm() * w.norm()))
    assert abs(abs(cos) - 1) < 1e-6


def test_random_walk_transform_on_a_model_and_zero_weights():
    torch.manual_seed(0)
    model = nets.resnet20()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    with torch.no_grad():
        model.conv1.weight[0].zero_()
    walk = gradients.RandomWalk(model, seed=3)
    before = [w.grad.flatten(1).norm(dim=1).clone() for w in walk.weights]
    walk()
    for w, n in zip(walk.weights, before):
        assert torch.allclose(w.grad.flatten(1).norm(dim=1), n, rtol=1e-5)
        assert torch.all(torch.isfinite(w.grad))


def test_constraint_sets_every_elr_to_the_goal():
    torch.manual_seed(0)
    model = nets.resnet20(shortcut=False)
    torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
    layers = [m.weight for _, m in nets.scale_invariant_layers(model)]
    elr_before = [float(w.grad.norm() / w.detach().norm()) for w in layers]
    gradients.ConstrainELR(model, elr_goal=0.02, eps=1e-5)()
    for w, e in zip(layers, elr_before):
        assert float(w.grad.norm() / w.detach().norm()) == pytest.approx(0.02 * e / (e + 1e-5), rel=1e-4)
    assert max(float(w.detach().norm()) for w in layers) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="elr_goal"):
        gradients.ConstrainELR(model, elr_goal=0)


def test_channel_max_elrs_are_what_the_monitor_records_as_elr_grad_max():
    torch.manual_seed(0)
    model = nets.bnrelu(6, width=16, in_features=64)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    records = measure.measure_once(model, x, y)
    layers = [m.weight for _, m in nets.scale_invariant_layers(model)]
    np.testing.assert_allclose(gradients.channel_max_elrs(layers), records.matrix("elr_grad_max")[1][0], rtol=1e-5)
    model.zero_grad(set_to_none=True)
    assert np.all(gradients.channel_max_elrs(layers) == 0)  # no gradient: ELR 0, not an error

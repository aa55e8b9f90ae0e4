"""elr.schedules: torch schedulers that follow the pure functions of elr.dynamics."""
from functools import partial

import numpy as np
import pytest
import torch

from elr import dynamics, schedules


def test_pure_schedule_sets_the_rate_of_each_coming_step():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    fn = partial(dynamics.cosine, lr=0.4, total_steps=10)
    sched = schedules.PureSchedule(opt, fn)
    seen = []
    for _ in range(10):
        seen.append(sched.step())
        assert opt.param_groups[0]["lr"] == seen[-1]
        opt.step()
    np.testing.assert_allclose(seen, fn(np.arange(10)))


def _constant_base_gradient_net(n_layers, seed=0, size=50):
    """Weights whose gradient is, at every step, orthogonal to them with norm c_i / ‖W_i‖ (Eq. 4 held exactly)."""
    gen = torch.Generator().manual_seed(seed)
    weights = []
    for _ in range(n_layers):
        w = torch.randn(size, dtype=torch.float64, generator=gen)
        weights.append(torch.nn.Parameter(w * np.sqrt(dynamics.SIGMA2_HE) / w.norm()))
    c = dynamics.base_gradients_feedforward(n_layers)

    def set_gradients():
        for w, ci in zip(weights, c):
            r = torch.randn(size, dtype=torch.float64, generator=gen)
            wd = w.detach()
            r = r - (r @ wd) / (wd @ wd) * wd
            w.grad = r / r.norm() * ci / wd.norm()
    return weights, c, set_gradients


@pytest.mark.parametrize("n_layers", [2, 5, 9])
def test_subcritical_warmup_follows_the_model_when_base_gradients_are_constant(n_layers):
    weights, c, set_gradients = _constant_base_gradient_net(n_layers)
    opt = torch.optim.SGD(weights, lr=1.0)
    target = partial(dynamics.constant, lr=1e3)
    warmup = schedules.SubcriticalWarmup(opt, weights, target, tol=1e-9, max_steps=100, merge_rtol=1e-6,
                                         elr_fn=lambda: schedules.layer_elrs(weights, reduce="layer"))
    real_lr, real_sigma2 = [], []
    for _ in range(n_layers + 2):
        set_gradients()
        real_lr.append(warmup.step())
        opt.step()
        real_sigma2.append([float(w.detach() @ w.detach()) for w in weights])
    model = dynamics.simulate(np.full(n_layers, dynamics.SIGMA2_HE), c,
                              dynamics.subcritical_policy(target, tol=1e-9, max_steps=100), n_steps=n_layers + 2)
    # late in the warm-up the last groups are squeezed within ~1e-6 of each other, where grouping by
    # merge_rtol amplifies rounding differences between torch and NumPy: agreement to 1e-4 is what we ask
    np.testing.assert_allclose(real_lr, model.lr, rtol=1e-4)
    np.testing.assert_allclose(real_sigma2, model.sigma2[1:], rtol=1e-4)
    assert warmup.warmup_steps <= n_layers - 1 and warmup.warmup_steps == int(np.sum(model.lr != 1e3))
    assert not warmup.warm


def test_warmup_hands_over_after_its_cap_and_stays_handed_over():
    weights, c, set_gradients = _constant_base_gradient_net(6)
    opt = torch.optim.SGD(weights, lr=1.0)
    warmup = schedules.SubcriticalWarmup(opt, weights, partial(dynamics.constant, lr=1e3), tol=0.0, max_steps=2)
    lrs = []
    for _ in range(5):
        set_gradients()
        lrs.append(warmup.step())
        opt.step()
    assert lrs[2:] == [1e3] * 3 and all(v < 1e3 for v in lrs[:2])
    state = warmup.state_dict()
    again = schedules.SubcriticalWarmup(opt, weights, partial(dynamics.constant, lr=1e3))
    again.load_state_dict(state)
    assert not again.warm and again.warmup_steps == 2

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


def _run_factor(weights, set_gradients, opt, warmup, scheduler, n):
    applied, scheduled = [], []
    for _ in range(n):
        set_gradients()
        with warmup.dampening():
            applied.append([g["lr"] for g in opt.param_groups])
            opt.step()
        scheduled.append(scheduler.get_last_lr() if scheduler is not None else None)
        if scheduler is not None:
            scheduler.step()
    return np.array(applied), scheduled


def test_factor_warmup_equals_the_absolute_warmup_at_a_constant_rate():
    n = 6
    runs = []
    for kind in ("absolute", "factor"):
        weights, c, set_gradients = _constant_base_gradient_net(n)
        opt = torch.optim.SGD(weights, lr=1e3)
        lrs = []
        if kind == "absolute":
            warmup = schedules.SubcriticalWarmup(opt, weights, partial(dynamics.constant, lr=1e3), tol=1e-9)
            for _ in range(n + 2):
                set_gradients()
                lrs.append(warmup.step())
                opt.step()
        else:
            warmup = schedules.SubcriticalWarmupFactor(opt, weights, tol=1e-9)
            lrs = _run_factor(weights, set_gradients, opt, warmup, None, n + 2)[0][:, 0].tolist()
        runs.append((lrs, warmup.warmup_steps))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-12)
    assert runs[0][1] == runs[1][1] > 0


def test_both_warmups_keep_the_ratio_between_param_groups():
    weights, c, set_gradients = _constant_base_gradient_net(6)
    opt = torch.optim.SGD([{"params": weights[:3], "lr": 100.0}, {"params": weights[3:], "lr": 10.0}])
    warmup = schedules.SubcriticalWarmupFactor(opt, weights, tol=1e-9)
    applied, _ = _run_factor(weights, set_gradients, opt, warmup, None, 8)
    np.testing.assert_allclose(applied[:, 0] / applied[:, 1], 10.0, rtol=1e-12)
    assert applied[0, 0] < 100.0 and warmup.warmup_steps > 0  # it did warm up
    assert [g["lr"] for g in opt.param_groups] == [100.0, 10.0]  # and left the configured rates alone

    weights, c, set_gradients = _constant_base_gradient_net(6)
    opt = torch.optim.SGD([{"params": weights[:3], "lr": 100.0}, {"params": weights[3:], "lr": 10.0}])
    absolute = schedules.SubcriticalWarmup(opt, weights, partial(dynamics.constant, lr=100.0), tol=1e-9)
    for _ in range(8):
        set_gradients()
        absolute.step()
        assert opt.param_groups[0]["lr"] / opt.param_groups[1]["lr"] == pytest.approx(10.0, rel=1e-12)
        opt.step()
    assert absolute.warmup_steps > 0 and opt.param_groups[0]["lr"] < 100.0


@pytest.mark.parametrize("kind", ["SequentialLR", "ChainedScheduler"])
def test_factor_warmup_composes_with_torch_schedulers(kind):
    """The scheduler's own sequence is untouched, the applied rate is ω × scheduled with ω <= 1, and never
    above the schedule (the bug of the absolute form chained with LinearLR was 0.12 against 0.1)."""
    def make(opt):
        lr_sched = torch.optim.lr_scheduler
        if kind == "SequentialLR":
            return lr_sched.SequentialLR(opt, [lr_sched.LinearLR(opt, 0.5, 1.0, 3),
                                               lr_sched.CosineAnnealingLR(opt, T_max=20)], milestones=[3])
        return lr_sched.ChainedScheduler([lr_sched.LinearLR(opt, 0.5, 1.0, 3), lr_sched.CosineAnnealingLR(opt, 20)])

    weights, c, set_gradients = _constant_base_gradient_net(8)
    opt = torch.optim.SGD(weights, lr=1e3)
    sched = make(opt)
    warmup = schedules.SubcriticalWarmupFactor(opt, weights, tol=1e-9)
    applied, scheduled = _run_factor(weights, set_gradients, opt, warmup, sched, 12)

    weights2, _, set_gradients2 = _constant_base_gradient_net(8)
    opt2 = torch.optim.SGD(weights2, lr=1e3)
    plain = make(opt2)
    reference = []
    for _ in range(12):
        set_gradients2()
        reference.append(plain.get_last_lr())
        opt2.step()
        plain.step()
    np.testing.assert_allclose(np.array(scheduled), np.array(reference), rtol=1e-12)
    ref = np.array(reference)[:, 0]
    assert np.all(applied[:, 0] <= ref * (1 + 1e-12))
    assert warmup.warmup_steps > 0 and np.all(applied[:warmup.warmup_steps, 0] < ref[:warmup.warmup_steps])
    np.testing.assert_allclose(applied[warmup.warmup_steps + 1:, 0], ref[warmup.warmup_steps + 1:], rtol=1e-12)


def test_factor_warmup_resumes_from_a_checkpoint_in_the_middle():
    def fresh():
        weights, c, set_gradients = _constant_base_gradient_net(9)
        opt = torch.optim.SGD(weights, lr=1e3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
        return weights, set_gradients, opt, sched, schedules.SubcriticalWarmupFactor(opt, weights, tol=1e-9)

    weights, set_gradients, opt, sched, warmup = fresh()
    whole, _ = _run_factor(weights, set_gradients, opt, warmup, sched, 12)

    weights, set_gradients, opt, sched, warmup = fresh()
    first, _ = _run_factor(weights, set_gradients, opt, warmup, sched, 4)
    assert warmup.warm  # the checkpoint falls inside the warm-up
    state = {"w": [w.detach().clone() for w in weights], "opt": opt.state_dict(), "sched": sched.state_dict(),
             "warmup": warmup.state_dict()}
    weights2, set_gradients2, opt2, sched2, warmup2 = fresh()
    for _ in range(4):
        set_gradients2()  # the gradient stream is part of the data order: advance it as the first run did
    with torch.no_grad():
        for w, v in zip(weights2, state["w"]):
            w.copy_(v)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    warmup2.load_state_dict(state["warmup"])
    rest, _ = _run_factor(weights2, set_gradients2, opt2, warmup2, sched2, 8)
    np.testing.assert_allclose(np.concatenate([first, rest]), whole, rtol=1e-12)


def test_factor_warmup_does_not_start_when_the_schedule_is_already_subcritical():
    weights, c, set_gradients = _constant_base_gradient_net(6)
    opt = torch.optim.SGD(weights, lr=1e-6)
    warmup = schedules.SubcriticalWarmupFactor(opt, weights)
    applied, _ = _run_factor(weights, set_gradients, opt, warmup, None, 3)
    assert warmup.warmup_steps == 0 and not warmup.warm and np.all(applied == 1e-6)


def test_factor_warmup_refuses_bad_arguments():
    weights, *_ = _constant_base_gradient_net(3)
    opt = torch.optim.SGD(weights, lr=0.1)
    with pytest.raises(ValueError, match="tol"):
        schedules.SubcriticalWarmupFactor(opt, weights, tol=-1)
    with pytest.raises(ValueError, match="max_steps"):
        schedules.SubcriticalWarmupFactor(opt, weights, max_steps=1.5)
    with pytest.raises(ValueError, match="weights is empty"):
        schedules.SubcriticalWarmupFactor(opt, [])


def test_factor_warmup_with_a_closure_equals_the_plain_form():
    """Trainers such as Lightning compute the gradients inside optimizer.step(closure): ω must be set after
    the closure ran."""
    results = []
    for with_closure in (False, True):
        weights, c, set_gradients = _constant_base_gradient_net(7)
        opt = torch.optim.SGD(weights, lr=1e3)
        warmup = schedules.SubcriticalWarmupFactor(opt, weights, tol=1e-9)
        sigma2 = []
        for _ in range(8):
            if with_closure:
                def closure():
                    set_gradients()
                    return torch.zeros(())
                with warmup.dampening(closure) as wrapped:
                    opt.step(wrapped)
            else:
                set_gradients()
                with warmup.dampening():
                    opt.step()
            sigma2.append([float(w.detach() @ w.detach()) for w in weights])
        results.append((np.array(sigma2), warmup.warmup_steps))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12)
    assert results[0][1] == results[1][1] > 0


def test_factor_warmup_refuses_adaptive_optimizers_unless_told():
    weights, *_ = _constant_base_gradient_net(3)
    for make in (lambda: torch.optim.AdamW(weights, lr=1e-3), lambda: torch.optim.RMSprop(weights, lr=1e-3)):
        with pytest.raises(ValueError, match="derived for SGD.*adaptive_ok=True"):
            schedules.SubcriticalWarmupFactor(make(), weights)
    warmup = schedules.SubcriticalWarmupFactor(torch.optim.Adam(weights, lr=1e-3), weights, adaptive_ok=True)
    assert warmup.warm


def test_factor_warmup_takes_the_monitors_layers_from_the_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8, bias=False), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 8, bias=False), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 8, bias=False), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    warmup = schedules.SubcriticalWarmupFactor(opt, model=model, tol=1e-9)  # audits at the first forward
    torch.nn.functional.cross_entropy(model(x), y).backward()
    # the two Linear layers before BatchNorm; not the third (no normalisation after it), not the head
    assert warmup.weights == [model[0].weight, model[3].weight]
    explicit = schedules.SubcriticalWarmupFactor(opt, [model[0].weight, model[3].weight], tol=1e-9)
    assert warmup.factor() == explicit.factor() < 1
    named = schedules.SubcriticalWarmupFactor(opt, model=model, layers=["0.weight", "6.weight"])
    assert named.weights == [model[0].weight, model[6].weight]
    with pytest.raises(ValueError, match="model= .* or weights="):
        schedules.SubcriticalWarmupFactor(opt)

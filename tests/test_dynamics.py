"""elr.dynamics: hand-computed values, and the paper's lemmas as hypothesis properties of the numeric code."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from elr import dynamics

# log-uniform positive floats over many decades, as norms and gradients of real layers are
positive = st.floats(min_value=-4, max_value=4).map(lambda v: 10.0**v)


def layers(min_size=2, max_size=12):
    return st.integers(min_size, max_size).flatmap(
        lambda n: st.tuples(st.lists(positive, min_size=n, max_size=n), st.lists(positive, min_size=n, max_size=n)))


# ------------------------------------------------------------------ exact values


def test_discrete_step_by_hand():
    # sigma2 = 2, c = 3, lr = 0.5: 2 + 0.25 * 9 / 2 = 3.125
    assert dynamics.discrete_step([2.0], [3.0], 0.5)[0] == pytest.approx(3.125)


def test_continuous_closed_form_by_hand():
    # sqrt(2 * 3**2 * 5 + 2**2) = sqrt(94)
    assert dynamics.continuous_sigma2(5.0, 3.0, 2.0) == pytest.approx(math.sqrt(94.0))
    assert dynamics.continuous_sigma2(0.0, 7.0) == pytest.approx(dynamics.SIGMA2_HE)


def test_alpha_and_base_gradients():
    assert dynamics.ALPHA == pytest.approx(1.2112, abs=1e-4)  # the paper rounds to 1.21
    ff = dynamics.base_gradients_feedforward(4)
    assert ff == pytest.approx([dynamics.ALPHA**3, dynamics.ALPHA**2, dynamics.ALPHA, 1.0])
    res = dynamics.base_gradients_resnet(5, relus_per_block=2)
    a2 = dynamics.ALPHA**2
    assert res == pytest.approx([1 + 2 * a2, 1 + a2, 1 + a2, 1.0, 1.0])


def test_cifar_resnet_layers_and_validation():
    assert dynamics.cifar_resnet_layers(110) == 109
    assert dynamics.base_gradients_cifar_resnet(56, shortcut=False).size == 55
    with pytest.raises(ValueError, match="6n\\+2"):
        dynamics.cifar_resnet_layers(51)
    with pytest.raises(ValueError, match="n_layers"):
        dynamics.base_gradients_feedforward(0)


def test_critical_and_subcritical_rates_by_hand():
    e = np.array([4.0, 1.0, 0.25])
    assert dynamics.critical_lr(e) == pytest.approx(1.0)          # 1/sqrt(4 * 0.25)
    assert dynamics.subcritical_lr(e) == pytest.approx(0.5)       # 1/sqrt(4 * 1)
    assert dynamics.subcritical_lr([4.0, 4.0, 1.0]) == pytest.approx(0.5)  # ties: h' is strictly below h
    assert dynamics.subcritical_lr([4.0, 4.0, 1.0], distinct=False) == pytest.approx(0.25)
    assert dynamics.subcritical_lr([2.0, 2.0]) == pytest.approx(0.5)


def test_relative_spread_by_hand():
    e = np.exp([0.0, 2.0])
    assert dynamics.relative_spread(e) == pytest.approx(1.0)  # population std of {0, 2}
    assert dynamics.relative_spread(3.0 * e) == pytest.approx(1.0)  # invariant to a common factor


def test_schedules_by_hand():
    steps = np.arange(6)
    assert dynamics.constant(steps, 0.1) == pytest.approx([0.1] * 6)
    assert dynamics.linear_warmup(steps, 1.0, 4) == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    assert dynamics.cosine([0, 5, 10, 11], 2.0, 10) == pytest.approx([2.0, 1.0, 0.0, 0.0])
    assert dynamics.exponential([0, 2], 1.0, 0.5) == pytest.approx([1.0, 0.25])
    assert dynamics.multistep([0, 99, 100, 149, 150], 1.0, [100, 150]) == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_one_cycle_matches_torch():
    torch = pytest.importorskip("torch")
    total, max_lr = 50, 0.4
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr, momentum=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=0.1,
                                                div_factor=20, final_div_factor=2000, cycle_momentum=False)
    theirs = []
    for _ in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = dynamics.one_cycle(np.arange(total), max_lr, total, pct_start=0.1, div_factor=20, final_div_factor=2000)
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_simulate_validates_input():
    with pytest.raises(ValueError, match="strictly positive"):
        dynamics.simulate([1.0, 0.0], [1.0, 1.0], np.ones(3))
    with pytest.raises(ValueError, match="negative learning rate"):
        dynamics.simulate([1.0, 1.0], [1.0, 1.0], np.array([0.1, -0.1]))
    with pytest.raises(ValueError, match="n_steps"):
        dynamics.simulate([1.0], [1.0], lambda i, e: 0.1)


def test_simulate_vectorised_over_runs_matches_single_runs():
    c = dynamics.base_gradients_feedforward(5)
    lrs = np.array([0.01, 0.1, 1.0])
    many = dynamics.simulate(np.full((3, 5), 2.0), c, np.broadcast_to(lrs, (7, 3)))
    for k, lr in enumerate(lrs):
        one = dynamics.simulate(np.full(5, 2.0), c, np.full(7, lr))
        np.testing.assert_allclose(many.sigma2[:, k], one.sigma2, rtol=1e-15)


def test_normalised_sequence_by_hand():
    assert dynamics.normalised_sequence(1.0, 2) == pytest.approx([1.0, 2.0, 2.5])


# ------------------------------------------------------------ lemmas as properties


@settings(max_examples=200, deadline=None)
@given(layers(), st.floats(min_value=-4, max_value=3).map(lambda v: 10.0**v))
def test_ratios_shrink_unless_they_flip(state, lr):
    """Prop. 3.7: each ratio moves towards 1; |ln R| shrinks whenever the pair does not flip."""
    sigma2, c = map(np.array, state)
    r0 = dynamics.elr_ratios(dynamics.elr(sigma2, c))
    r1 = dynamics.elr_ratios(dynamics.elr(dynamics.discrete_step(sigma2, c, lr), c))
    e = dynamics.elr(sigma2, c)
    # pairs whose change in ln R, about λ²(E_j² − E_k²), is resolvable in double precision
    moves = lr**2 * np.abs(e[:, None] ** 2 - e[None, :] ** 2) > 1e-10
    off = ~np.eye(len(c), dtype=bool) & moves
    assume(off.any())
    assert np.all((r1 < r0)[off & (r0 > 1)]) and np.all((r1 > r0)[off & (r0 < 1)])
    kept = off & (np.sign(np.log(r1)) == np.sign(np.log(r0)))
    assert np.all(np.abs(np.log(r1))[kept] < np.abs(np.log(r0))[kept])


@settings(max_examples=300, deadline=None)
@given(layers(2, 2), st.floats(min_value=-2, max_value=2))
def test_flips_exactly_when_lr_exceeds_kappa(state, log_factor):
    """Prop. 3.9: the pair flips iff λ > κ_jk."""
    assume(abs(log_factor) > 1e-6)
    sigma2, c = map(np.array, state)
    e0 = dynamics.elr(sigma2, c)
    assume(abs(np.log(e0[0] / e0[1])) > 1e-6)
    kappa = dynamics.flipping_ratio(e0[0], e0[1])
    lr = kappa * 10.0**log_factor
    e1 = dynamics.elr(dynamics.discrete_step(sigma2, c, lr), c)
    flipped = (e0[0] > e0[1]) != (e1[0] > e1[1])
    assert flipped == (lr > kappa)


@settings(max_examples=150, deadline=None)
@given(layers(2, 8), st.floats(min_value=-3, max_value=3))
def test_constant_lr_flips_at_most_once(state, log_factor):
    """Prop. A.1: at constant λ every ratio changes side at most once (in fact only in step 0)."""
    sigma2, c = map(np.array, state)
    lr = float(dynamics.critical_lr(dynamics.elr(sigma2, c))) * 10.0**log_factor
    traj = dynamics.simulate(sigma2, c, np.full(25, lr))
    log_r = np.log(dynamics.elr_ratios(traj.elr))
    side = np.where(np.abs(log_r) < 1e-9, 0, np.sign(log_r))
    changes = (side[1:] != side[:-1]) & (side[:-1] != 0) & (side[1:] != 0)
    assert np.all(changes.sum(axis=0) <= 1)
    assert not changes[1:].any()


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 14), st.integers(0, 2**32 - 1))
def test_subcritical_never_flips_and_equalises_in_L_minus_1_steps(n_layers, seed):
    """Cor. 3.10 with h' read as the highest ELR strictly below the top."""
    rng = np.random.default_rng(seed)
    c = 10.0 ** rng.uniform(-3, 3, n_layers)
    sigma2 = 10.0 ** rng.uniform(-1, 1, n_layers)
    assume(np.min(np.diff(np.sort(np.log(c / sigma2)))) > 1e-3)  # L distinct ELRs
    traj = dynamics.simulate(sigma2, c, dynamics.subcritical_policy(), n_steps=n_layers - 1)
    order = np.argsort(traj.elr[0])
    ranked = traj.elr[:, order]
    assert np.all(np.diff(ranked, axis=-1) >= -1e-9 * ranked[:, 1:]), "no ratio flips"
    final = traj.elr[-1]
    assert final.max() / final.min() - 1 < 1e-8, "all ELRs agree after L - 1 steps"
    assert np.all(traj.lr <= traj.critical_lr[:-1] * (1 + 1e-12)), "never above the critical rate"


@settings(max_examples=50, deadline=None)
@given(layers(1, 5), st.floats(min_value=0.03, max_value=0.1))
def test_discrete_model_tends_to_closed_form(state, eps):
    """Thm. 3.4: at t = iλ² the discrete model approaches Eq. 12, with an error that shrinks like λ².

    λ = eps / E_max, run for one characteristic time 1/E_max² of the fastest layer (1/eps² steps).
    """
    sigma2, c = map(np.array, state)
    e_max = float(np.max(dynamics.elr(sigma2, c)))
    errors = []
    for lam in (eps / e_max, eps / e_max / 2):
        n = int(round(1.0 / (lam * e_max) ** 2))
        traj = dynamics.simulate(sigma2, c, np.full(n, lam))
        exact = dynamics.continuous_sigma2(traj.time[-1], c, sigma2)
        errors.append(np.max(np.abs(traj.sigma2[-1] / exact - 1)))
    assert errors[0] < 0.01
    assert errors[1] < errors[0] / 3


@settings(max_examples=100, deadline=None)
@given(layers(1, 6), positive)
def test_elr_map_agrees_with_the_sigma_update(state, lr):
    sigma2, c = map(np.array, state)
    via_sigma = dynamics.elr(dynamics.discrete_step(sigma2, c, lr), c)
    np.testing.assert_allclose(dynamics.elr_step(dynamics.elr(sigma2, c), lr), via_sigma, rtol=1e-12)
    assert np.all(via_sigma <= 1 / (2 * lr) * (1 + 1e-12))


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=-3, max_value=3).map(lambda v: 10.0**v))
def test_normalised_sequence_bounds_hold(x0):
    seq = dynamics.normalised_sequence(x0, 3000)
    n = np.arange(1, 3001)
    lower, upper = dynamics.normalised_sequence_bounds(x0, n)
    assert np.all(seq[1:] ** 2 >= lower * (1 - 1e-12))
    assert np.all(seq[1:] ** 2 <= upper * (1 + 1e-12))
    # tight: the upper bound is attained at n = 1 (x_1² = x0² + 2 + 1/x0²), so no constant can be dropped from it
    assert upper[0] == pytest.approx(seq[1] ** 2, rel=1e-12)


def test_subcritical_warmup_hands_over():
    c = dynamics.base_gradients_feedforward(30)
    sigma2 = np.full(30, 2.0)
    policy = dynamics.subcritical_policy(lambda s: dynamics.constant(s, 0.01))
    traj = dynamics.simulate(sigma2, c, policy, n_steps=100)
    warm = traj.lr != 0.01
    assert warm[0] and not warm[-1]
    first_target = int(np.argmin(warm))
    assert not warm[first_target:].any(), "once handed over, the target schedule stays"
    assert np.all(np.diff(traj.spread) <= 1e-12)
    capped = dynamics.simulate(sigma2, c, dynamics.subcritical_policy(lambda s: dynamics.constant(s, 1.0),
                                                                      max_steps=3), n_steps=10)
    assert np.all(capped.lr[3:] == 1.0) and np.all(capped.lr[:3] < 1.0)


# Tests that fail on changes to formulas that used to pass every test (the review of issue 13).


def test_cifar_resnet_base_gradients_are_eq7_with_two_relus_per_basic_block():
    """A basic block has two ReLUs (s = 2): c_i = 1 + floor((L − i)/2) α², written out for ResNet8 (L = 7)."""
    a2 = dynamics.ALPHA ** 2
    expected = [1 + 3 * a2, 1 + 2 * a2, 1 + 2 * a2, 1 + a2, 1 + a2, 1.0, 1.0]
    np.testing.assert_allclose(dynamics.base_gradients_cifar_resnet(8, shortcut=True), expected, rtol=1e-12)
    np.testing.assert_allclose(dynamics.base_gradients_cifar_resnet(8, shortcut=False),
                               dynamics.ALPHA ** np.arange(6, -1, -1), rtol=1e-12)
    assert abs(dynamics.ALPHA - (np.pi / (np.pi - 1)) ** 0.5) < 1e-12


def test_one_cycle_defaults_are_torchs():
    torch = pytest.importorskip("torch")
    total, max_lr = 40, 0.3
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, cycle_momentum=False)
    theirs = []
    for _ in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert dynamics.one_cycle(np.arange(total), max_lr, total) == pytest.approx(theirs, rel=1e-9)


def test_warmup_hands_over_at_once_when_the_target_is_already_subcritical():
    c = dynamics.base_gradients_feedforward(10)
    sigma2 = np.full(10, 2.0)
    kappa = float(dynamics.subcritical_lr(dynamics.elr(sigma2, c)))
    target = 0.5 * kappa   # no ratio can flip under it: there is nothing to warm up
    lr = dynamics.subcritical_warmup(0, dynamics.elr(sigma2, c), lambda s: dynamics.constant(s, target))
    assert float(lr) == target
    traj = dynamics.simulate(sigma2, c, dynamics.subcritical_policy(lambda s: dynamics.constant(s, target)), 5)
    assert np.all(traj.lr == target)


def test_a_flip_is_judged_by_the_layers_ranked_before_the_step():
    """E = (0.5, 1.5), λ = 3 ≫ κ = 1.15: the top layer ends below the bottom one, a flip in step 0.

    Ranking the layers after the step instead would compare the new top with the new bottom and find none.
    """
    traj = dynamics.simulate(np.array([2.0, 2.0]), np.array([1.0, 3.0]), np.full(1, 3.0))
    assert traj.elr[1, 1] < traj.elr[1, 0]
    assert traj.extreme_flips.tolist() == [True]
    calm = dynamics.simulate(np.array([2.0, 2.0]), np.array([1.0, 3.0]), np.full(1, 0.5))
    assert calm.extreme_flips.tolist() == [False]


def test_reversal_steps_find_the_steps_at_which_two_layers_swap_order():
    elr = np.array([[1.0, 2.0, 3.0], [1.5, 2.5, 3.5], [3.0, 2.5, 3.6], [3.0, 2.5, 3.6]])
    np.testing.assert_array_equal(dynamics.reversal_steps(elr), [1])     # layers 0 and 1 swap in step 1
    tied = np.array([[1.0, 1.0 + 1e-12, 2.0], [1.0 + 1e-12, 1.0, 2.0]])  # a merged group: rounding, no order
    assert dynamics.reversal_steps(tied).size == 0
    # the discrete model at a constant rate below every flipping ratio keeps its order
    run = dynamics.simulate(np.ones(5), np.linspace(0.1, 1.0, 5), np.full(20, 0.01))
    assert dynamics.reversal_steps(run.elr).size == 0

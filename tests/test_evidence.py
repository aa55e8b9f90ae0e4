"""elr.evidence against known cases: bootstrap coverage, exact sign-test values, verdicts."""
import math

import numpy as np
import pytest

from elr import evidence


@pytest.mark.parametrize("method, low, high", [("BCa", 0.90, 0.985), ("percentile", 0.90, 0.985)])
def test_bootstrap_interval_of_a_known_mean_has_its_coverage(method, low, high):
    """400 samples of 40 normal values: the 95 % interval of the mean covers the true mean ~95 % of the time.

    With 400 repetitions the binomial standard error of a 0.95 coverage is 0.011; bootstrap intervals
    under-cover slightly at n = 40 (about 0.93-0.94), so the band is [0.90, 0.985].
    """
    rng = np.random.default_rng(12345)
    hits = 0
    for rep in range(400):
        x = rng.normal(3.0, 2.0, 40)
        iv = evidence.mean_interval(x, method=method, n_resamples=999, seed=rep)
        hits += iv.low <= 3.0 <= iv.high
    assert low <= hits / 400 <= high, hits / 400


def test_paired_and_unpaired_differences_cover_a_known_shift():
    rng = np.random.default_rng(7)
    hits_paired = hits_unpaired = 0
    for rep in range(200):
        seed_effect = rng.normal(0, 5.0, 20)           # shared by both arms: pairing removes it
        a = seed_effect + 1.0 + rng.normal(0, 0.5, 20)
        b = seed_effect + rng.normal(0, 0.5, 20)
        p = evidence.paired_difference(a, b, n_resamples=999, seed=rep)
        u = evidence.unpaired_difference(a, b, n_resamples=999, seed=rep)
        hits_paired += p.low <= 1.0 <= p.high
        hits_unpaired += u.low <= 1.0 <= u.high
        assert p.high - p.low < u.high - u.low      # pairing is what makes seed-shared runs comparable
    assert hits_paired / 200 >= 0.88 and hits_unpaired / 200 >= 0.88


@pytest.mark.parametrize("wins, n, p", [(5, 5, 1 / 32), (4, 5, 6 / 32), (3, 5, 16 / 32), (10, 10, 1 / 1024),
                                        (8, 10, 56 / 1024), (0, 3, 1.0)])
def test_sign_test_matches_the_exact_binomial_tail(wins, n, p):
    a = np.r_[np.ones(wins), np.zeros(n - wins), 0.5, 0.5]   # two ties, dropped
    b = np.r_[np.zeros(wins), np.ones(n - wins), 0.5, 0.5]
    result = evidence.sign_test(a, b)
    assert (result.wins, result.n) == (wins, n)
    assert math.isclose(result.p_value, p, rel_tol=1e-12)
    assert math.isclose(p, sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n, rel_tol=1e-12)


def test_a_claim_holds_only_when_its_whole_interval_clears_the_threshold():
    iv = evidence.Interval(0.08, 0.03, 0.13, 5)
    assert evidence.verdict(iv, 0.05, ">") == "inconclusive"      # the point estimate alone would pass
    assert evidence.verdict(iv, 0.02, ">") == "holds"
    assert evidence.verdict(iv, 0.13, ">") == "fails"
    assert evidence.verdict(iv, 0.2, "<") == "holds" and evidence.verdict(iv, 0.03, "<") == "fails"


def test_claims_are_checked_against_what_the_text_stated():
    rng = np.random.default_rng(0)
    better = rng.normal(0.5, 0.02, 8)
    worse = better - 0.1 + rng.normal(0, 0.01, 8)
    holds = evidence.Claim.compare("A beats B by more than 5 points", better, worse, threshold=0.05)
    none = evidence.Claim.compare("no significant difference", better, better + rng.normal(0, 0.01, 8),
                                  threshold=0.0, expect="inconclusive")
    assert holds.verdict == "holds" and holds.interval.n == 8
    evidence.check([holds, none])
    md = evidence.table([holds, none])
    assert md.count("\n") == 3 and "A beats B by more than 5 points" in md and "**holds**" in md
    wrong = evidence.Claim.compare("B beats A", worse, better, threshold=0.0)
    with pytest.raises(AssertionError, match="B beats A: stated holds, measured fails"):
        evidence.check([holds, wrong])


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="at least 2 values .* raise n_seeds"):
        evidence.mean_interval([0.3])
    with pytest.raises(ValueError, match="non-finite"):
        evidence.mean_interval([0.3, float("nan")])
    with pytest.raises(ValueError, match="one value per seed"):
        evidence.paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="expect must be one of"):
        evidence.Claim("x", "mean", evidence.Interval(0, 0, 0, 2), 0.0, ">", "maybe")


def test_identical_values_give_a_degenerate_interval_not_nan():
    iv = evidence.mean_interval([0.25] * 5)
    assert (iv.estimate, iv.low, iv.high) == (0.25, 0.25, 0.25)


def test_the_claims_table_keeps_one_cell_per_column_when_a_statistic_has_bars():
    claim = evidence.Claim.level("|x| is small", [0.1, 0.2, 0.15], 1.0, "<", statistic="mean |ratio − 1|")
    row = evidence.table([claim]).splitlines()[-1]
    cells = [c for c in row.replace("\\|", "").split("|")[1:-1]]
    assert len(cells) == 6 and "\\|ratio − 1\\|" in row


def test_an_equivalence_claim_needs_its_whole_interval_inside_the_margin():
    assert evidence.verdict(evidence.Interval(0.0, -0.01, 0.015, 6), 0.02, "within") == "holds"
    assert evidence.verdict(evidence.Interval(0.01, -0.01, 0.03, 6), 0.02, "within") == "inconclusive"
    assert evidence.verdict(evidence.Interval(0.04, 0.02, 0.06, 6), 0.02, "within") == "fails"
    assert evidence.verdict(evidence.Interval(-0.04, -0.06, -0.02, 6), 0.02, "within") == "fails"
    with pytest.raises(ValueError, match="margin"):
        evidence.verdict(evidence.Interval(0.0, -0.01, 0.01, 6), 0.0, "within")
    rng = np.random.default_rng(1)
    a = rng.normal(0.9, 0.02, 10)
    same = evidence.Claim.within("A and B agree within 2 points", a, a + rng.normal(0, 0.002, 10), margin=0.02)
    apart = evidence.Claim.within("A and B agree within 2 points", a, a - 0.05 + rng.normal(0, 0.002, 10),
                                  margin=0.02, expect="fails")
    assert same.verdict == "holds" and apart.verdict == "fails"
    evidence.check([same, apart])
    assert "within ±0.02" in evidence.table([same])


def test_row_means_average_where_the_mask_holds_and_give_nan_for_an_empty_row():
    values = np.array([[1.0, 2.0, 9.0], [np.nan, 4.0, 6.0], [1.0, 1.0, 1.0], [np.nan, 3.0, 0.0]])
    mask = np.array([[True, True, False], [False, True, True], [False, False, False], [True, False, False]])
    out = evidence.row_means(values, mask)
    np.testing.assert_array_equal(out[:2], [1.5, 5.0])
    assert np.isnan(out[2]) and np.isnan(out[3])  # no entry; a NaN entry inside the mask stays NaN
    with pytest.raises(ValueError, match="one shape"):
        evidence.row_means(values, mask[:, :2])


# ------------------------------------------------------------ coverage at the book's sample sizes

_DRAWS = {
    "normal": (lambda rng, n: rng.normal(3.0, 2.0, n), 3.0, 0.93),
    "exponential": (lambda rng, n: rng.exponential(1.0, n), 1.0, 0.88),
    "lognormal": (lambda rng, n: rng.lognormal(0.0, 1.0, n), math.exp(0.5), 0.88),
}


@pytest.mark.parametrize("n", [5, 6, 10])
@pytest.mark.parametrize("dist", list(_DRAWS))
def test_the_default_interval_keeps_its_coverage_at_the_books_numbers_of_seeds(n, dist):
    """2,000 samples of n values: the default 95 % interval of the mean covers the true mean at least 93 % of
    the time on normal data and 88 % on skewed data (exponential, lognormal with σ = 1). Scipy's BCa covers
    81-85 % at n = 5 (measured when the default changed), Student's t 88 % on exponential and 82 % on this
    lognormal; the bootstrap-t measured 0.89-0.95 here."""
    draw, mean, required = _DRAWS[dist]
    rng = np.random.default_rng(1000 * n + len(dist))
    hits = sum(_covers(draw(rng, n), mean, i) for i in range(2000))
    assert evidence.mean_interval(draw(rng, n)).method == "bootstrap-t"
    assert hits / 2000 >= required, (dist, n, hits / 2000)


def _covers(x, mean, seed):
    iv = evidence.mean_interval(x, n_resamples=1999, seed=seed)
    return iv.low <= mean <= iv.high


def test_bca_is_not_the_default_because_it_undercovers_at_five_seeds():
    rng = np.random.default_rng(3)
    hits = sum(evidence.mean_interval(x, method="BCa", n_resamples=999, seed=i).low <= 1.0
               <= evidence.mean_interval(x, method="BCa", n_resamples=999, seed=i).high
               for i, x in enumerate(rng.exponential(1.0, (300, 5))))
    assert hits / 300 < 0.88


@pytest.mark.parametrize("n", [5, 10])
def test_the_welch_bootstrap_t_difference_keeps_its_coverage(n):
    rng = np.random.default_rng(n)
    hits = 0
    for i in range(1000):
        a, b = rng.exponential(1.0, n) + 0.5, rng.normal(0.0, 2.0, n)
        iv = evidence.unpaired_difference(a, b, n_resamples=1999, seed=i)
        hits += iv.low <= 1.5 <= iv.high
    assert hits / 1000 >= 0.88


def test_fewer_than_five_values_use_students_t():
    iv = evidence.mean_interval([1.0, 2.0, 4.0])
    assert iv.method == "t"
    assert math.isclose(iv.high - iv.estimate, 4.302652729911275 * np.std([1, 2, 4], ddof=1) / math.sqrt(3))


# ------------------------------------------------------------ kinds of claims

def test_a_statistic_without_spread_is_exact_not_a_zero_width_interval():
    iv = evidence.mean_interval([0.0141] * 5)
    assert iv.exact and iv.method == "exact" and "exact" in str(iv) and "[" not in str(iv)
    c = evidence.Claim.exact("one number", 3.0, 2.0, ">")
    assert c.verdict == "holds" and "exact" in evidence.table([c])
    assert evidence.Claim.exact("one number", 1.0, 2.0, ">").verdict == "fails"
    assert evidence.flip_probability(c) == 0.0


def test_an_identity_is_decided_by_its_worst_seed():
    ok = evidence.Claim.worst("every seed below 0.1", [0.01, 0.02, 0.09], 0.1, "<")
    bad = evidence.Claim.worst("every seed below 0.1", [0.01, 0.02, 0.11], 0.1, "<")
    assert ok.verdict == "holds" and ok.interval.estimate == 0.09
    assert bad.verdict == "fails"            # a mean of 0.047 would have passed
    assert evidence.Claim.worst("all within", [0.05, -0.12], 0.1, "within").verdict == "fails"
    assert evidence.Claim.worst("all above", [0.5, 0.2], 0.3, ">").verdict == "fails"


def test_a_discrete_outcome_is_decided_by_the_exact_sign_test():
    a, b = np.arange(10.0) + 1, np.arange(10.0)
    c = evidence.Claim.sign_claim("A beats B", a, b, alpha=0.005)
    assert c.sign.wins == 10 and c.verdict == "holds"
    assert evidence.Claim.sign_claim("B beats A", b, a, alpha=0.005).verdict == "fails"
    nine = np.r_[a[:9], -1.0]
    assert evidence.Claim.sign_claim("A beats B", nine, b, alpha=0.005).verdict == "inconclusive"  # p = 11/1024
    assert evidence.min_seeds_for_sign_test(0.005) == 8 and 0.5 ** 8 < 0.005 < 0.5 ** 7
    with pytest.raises(ValueError, match="SignTest"):
        evidence.Claim("x", "s", evidence.Interval(0, 0, 0, 2), 0.0, ">", "holds", kind="sign")


def test_the_margin_counts_standard_errors_past_the_threshold():
    iv = evidence.Interval(1.0, 0.6, 1.4, 5, se=0.1)
    assert math.isclose(evidence.margin(iv, 0.1, ">"), 5.0)
    assert math.isclose(evidence.margin(iv, 1.0, "<"), -4.0)
    assert math.isclose(evidence.margin(iv, 2.0, "within"), 6.0)


# ------------------------------------------------------------ predicted flips

def test_a_claim_far_from_its_threshold_is_predicted_stable_and_one_on_it_is_not():
    rng = np.random.default_rng(5)
    far = evidence.Claim.level("far", rng.normal(1.0, 0.1, 5), 0.0)
    near = evidence.Claim.level("near", [0.9, 1.1, 1.3, 0.8, 1.2], 0.5)    # holds, six standard errors out
    assert far.ok and evidence.flip_probability(far) < 0.005   # ten sds of one seed clear: 0.0017 at n = 5
    assert near.ok and evidence.flip_probability(near) > 0.05


@pytest.mark.parametrize("dist", ["normal", "lognormal"])
def test_claims_predicted_to_be_safe_gates_rarely_flip(dist):
    """Pilots of five seeds at effects of 2 to 12 standard deviations of one seed, decided as a gate is (Student's
    t at the Bonferroni level of four gates): among the pilots whose predicted flip probability is below 0.5 %,
    the true chance that a new build breaks the claim (simulated from the known law) averages below 1 %, also
    when the per-seed values are skewed (lognormal, σ = 0.8). Measured when written: 0.35 % and 0.53 %."""
    from scipy import stats

    n, confidence = 5, 1 - 0.05 / 4
    crit = stats.t.ppf(1 - (1 - confidence) / 2, n - 1)
    rng = np.random.default_rng(0)

    def draw(effect, size):
        if dist == "normal":
            return effect + rng.normal(0.0, 1.0, size)
        z = rng.lognormal(0.0, 0.8, size)
        return effect + (z - math.exp(0.32)) / math.sqrt((math.exp(0.64) - 1) * math.exp(0.64))

    selected = []
    for effect in (2, 3, 4, 6, 8, 12):
        builds = draw(effect, (20000, n))
        true_flip = np.mean(builds.mean(1) - crit * builds.std(1, ddof=1) / math.sqrt(n) <= 0)
        for i in range(60):
            c = evidence.Claim.level("x", draw(effect, n), 0.0, confidence=confidence, method="t")
            if c.ok and evidence.flip_probability(c, draws=4000, seed=i) < 0.005:
                selected.append(true_flip)
    assert len(selected) > 50
    assert np.mean(selected) < 0.01, np.mean(selected)


def test_sign_and_worst_claims_get_predictions_too():
    rng = np.random.default_rng(2)
    sure = evidence.Claim.worst("all below 1", rng.normal(0.0, 0.01, 5), 1.0, "<")
    unsure = evidence.Claim.worst("all below 0.02", rng.normal(0.0, 0.01, 5), 0.02, "<")
    assert evidence.flip_probability(sure) < 0.005
    assert evidence.flip_probability(unsure) > 0.05
    s = evidence.Claim.sign_claim("A beats B", np.ones(10), np.zeros(10), alpha=0.005)
    assert 0.05 < evidence.flip_probability(s) < 0.9   # 10 of 10 is the only winning outcome


def test_a_sample_too_lumpy_for_the_bootstrap_t_gets_students_t_not_an_infinite_bound():
    iv = evidence.mean_interval([1.0, 1.0, 1.0, 1.0, 0.5])     # a third of the resamples have no spread
    assert iv.method == "t" and np.isfinite(iv.low) and np.isfinite(iv.high)


def test_the_sign_test_orders_a_diverged_run_but_refuses_nan():
    inf = float("inf")
    result = evidence.sign_test([inf, inf, 3.0, 4.0, 5.0], [1.0, 2.0, 1.0, 1.0, 1.0])
    assert (result.wins, result.n) == (5, 5)
    with pytest.raises(ValueError, match="non-finite"):
        evidence.sign_test([float("nan"), 1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="non-finite"):
        evidence.mean_interval([inf, 1.0, 2.0])


def test_ties_count_against_a_sign_claim_and_seeds_without_spread_are_not_called_safe():
    a = np.r_[np.ones(6), np.zeros(4)]          # six wins, four ties
    b = np.zeros(10)
    dropped, against = evidence.sign_test(a, b), evidence.sign_test(a, b, ties="against")
    assert (dropped.n, against.n, against.ties) == (6, 10, 4)
    assert dropped.p_value == 1 / 64 and math.isclose(against.p_value, 386 / 1024)
    assert evidence.Claim.sign_claim("A beats B", a, b, alpha=0.025).verdict == "inconclusive"
    zeros = evidence.Claim.worst("no warm-up in any seed", [0.0] * 5, 0.5, "<")
    assert zeros.ok and math.isclose(evidence.flip_probability(zeros, draws=20000), 5 / 11, abs_tol=0.02)


def test_sentence_gives_estimate_interval_and_verdict_signed_only_for_differences():
    diff = evidence.Claim.compare("gain", np.array([1.0, 1.2, 0.9, 1.1, 1.0]), np.zeros(5), 0.0, ">")
    text = evidence.sentence(diff, 100, " points")
    assert text.startswith("+104 points (95 % interval +") and text.endswith(": holds)")
    level = evidence.Claim.level("acc", np.array([0.80, 0.82, 0.84, 0.86, 0.88]), 0.75, ">")
    low, high = 100 * level.interval.low, 100 * level.interval.high  # a level carries no sign
    assert evidence.sentence(level, 100, " %") == f"84 % (95 % interval {low:.3g} to {high:.3g}: holds)"
    worst = evidence.Claim.worst("steps", np.array([3.0, 12.0, 5.0]), 10.0, "<")
    assert evidence.sentence(worst) == "12 (worst seed: fails)"

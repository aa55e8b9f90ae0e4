"""Evidence: repeated runs turned into claims with intervals and tests (NumPy and SciPy).

A measured claim about trained networks is a statistic over seeds, not one
run: a different CPU takes a different floating-point path, so bit-for-bit
repetition on one machine proves nothing on another, and the same seeds on
another machine are new draws. Every measured claim of the book is
registered in ``notebooks/claims.toml`` (:mod:`elr.claims`) with its text,
statistic, threshold, expected verdict and role before its data are seen;
this module holds the statistics that decide it.

Five kinds of statistic, each with the decision that fits it:

- **mean** (one quantity over seeds), **paired** (mean of per-seed
  differences of runs that share a seed) and **unpaired** (difference of
  means of independent runs): a two-sided interval, by default the
  studentised bootstrap (*bootstrap-t*), which keeps its coverage on skewed
  data at the 5 to 10 seeds the book uses, where BCa and percentile
  intervals do not (``tests/test_evidence.py`` measures it). Below 5 values
  the bootstrap has too few distinct resamples and Student's t is used. Gate
  claims, whose Bonferroni levels (99 % and beyond) lie where five seeds give
  the bootstrap too few distinct resamples, use Student's t (Welch's for
  unpaired runs), whose critical values are fixed by n.
- **sign**: a discrete per-seed outcome (an argmin on a grid, a count, "A
  beats B") decided by the exact binomial sign test, never by a bootstrap of
  a mean; a tied seed counts against the claim.
- **worst**: an identity ("every layer within 10 %") asserted on the worst
  seed, not on a mean.
- **exact**: a statistic without spread (a deterministic computation), shown
  as exact, never as a zero-width interval.

A claim **holds** when its whole interval clears the threshold in the stated
direction (a sign test: p below α), **fails** when the whole interval lies on
the other side (the reverse test is significant), and is **inconclusive**
otherwise; a point estimate never decides.

:func:`flip_probability` predicts, from a claim's per-seed data, the chance
that a build at a new base seed (on another machine: new draws) would give a
verdict that breaks its expectation: a posterior predictive simulation under
a normal model of the per-seed values (flat prior on mean and log-variance),
with the claim's own critical values; a Dirichlet posterior on a sign test's
win, loss and tie rates; for a worst-seed claim, a Student-t law (3 degrees of
freedom) per seed, on a log scale for positive error measures, and the rule of
succession when the seeds show no spread at all. It is
what decides whether a claim may gate the build (:mod:`elr.claims`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np

VERDICTS = ("holds", "fails", "inconclusive")
#: what a claim may state: a verdict, "not holds" (fails or inconclusive: the claim is not established at
#: this scale), or "not fails" (holds or inconclusive: the data do not refute it). Only a definite verdict
#: can gate the build (elr.claims).
EXPECTATIONS = VERDICTS + ("not holds", "not fails")
KINDS = ("mean", "paired", "unpaired", "sign", "worst", "exact")
METHODS = ("bootstrap-t", "t", "BCa", "percentile")
#: below this many values the bootstrap-t has too few distinct resamples; Student's t is used instead
MIN_BOOTSTRAP_T = 5
K = TypeVar("K")


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval over ``n`` values (seeds, or pairs of them).

    ``se`` is the standard error the interval was built from (NaN where none applies); ``method`` names how
    it was built: ``bootstrap-t``, ``t``, ``BCa``, ``percentile``, ``exact`` (no spread: low = high =
    estimate), ``worst seed`` or ``sign test``.
    """

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    method: str = "bootstrap-t"
    se: float = float("nan")

    @property
    def exact(self) -> bool:
        return self.method in ("exact", "worst seed")

    def __str__(self) -> str:
        if self.exact:
            return f"{self.estimate:.4g} ({self.method})"
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _clean(values: Sequence[float], name: str, minimum: int = 2, ordinal: bool = False) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size < minimum:
        raise ValueError(f"{name} needs at least {minimum} values (seeds) for an interval, got {x.size}; "
                         "raise n_seeds")
    if ordinal and not np.any(np.isnan(x)):  # a rank statistic orders ±inf (a diverged run) like any value
        return x
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds non-finite values {x[~np.isfinite(x)]}; decide what a diverged run counts "
                         "as (for accuracy: chance, say; for a spread: a rank statistic) before computing an interval")
    return x


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _quantiles_t(boot_t: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    if np.mean(np.isinf(boot_t)) >= alpha / 2:  # a quantile would be infinite: the caller falls back to t
        return float("nan"), float("nan")
    boot_t = np.nan_to_num(boot_t, nan=0.0)  # a resample identical to the sample: no deviation
    return float(np.quantile(boot_t, alpha / 2)), float(np.quantile(boot_t, 1 - alpha / 2))


def _resample(x: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    return x[rng.integers(0, x.size, size=(n_resamples, x.size))]


def _studentised(x: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap-t statistics (m* − m) / se* of the mean; a resample without spread gives ±inf (or 0)."""
    xb = _resample(x, n_resamples, rng)
    mb, seb = xb.mean(axis=1), xb.std(axis=1, ddof=1) / math.sqrt(x.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (mb - x.mean()) / seb


def _bootstrap(data: tuple[np.ndarray, ...], statistic: Callable, confidence: float, method: str,
               n_resamples: int, seed: int) -> tuple[float, float]:
    from scipy import stats

    res = stats.bootstrap(data, statistic, confidence_level=confidence, method=method, n_resamples=n_resamples,
                          vectorized=True, rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)) and method.lower() == "bca":
        # BCa is undefined for some small, lumpy samples (all resamples on one side): fall back to percentiles
        res = stats.bootstrap(data, statistic, confidence_level=confidence, method="percentile",
                              n_resamples=n_resamples, vectorized=True, rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return low, high


def mean_interval(values: Sequence[float], confidence: float = 0.95, method: str = "bootstrap-t",
                  n_resamples: int = 9999, seed: int = 0) -> Interval:
    """The mean of ``values`` (one per seed) with its interval (bootstrap-t by default; see the module doc)."""
    _check_method(method)
    x = _clean(values, "values")
    n, m = x.size, float(x.mean())
    if np.ptp(x) == 0:  # no spread at all (std may still round to 1e-19)
        return Interval(m, m, m, n, confidence, "exact", 0.0)
    se = float(x.std(ddof=1) / math.sqrt(n))
    if method == "bootstrap-t" and n < MIN_BOOTSTRAP_T:
        method = "t"
    if method == "t":
        from scipy import stats

        c = float(stats.t.ppf(1 - (1 - confidence) / 2, n - 1))
        return Interval(m, m - c * se, m + c * se, n, confidence, "t", se)
    if method == "bootstrap-t":
        q_low, q_high = _quantiles_t(_studentised(x, n_resamples, np.random.default_rng(seed)), confidence)
        if np.isfinite(q_low) and np.isfinite(q_high):
            return Interval(m, m - q_high * se, m - q_low * se, n, confidence, method, se)
        # too lumpy for the bootstrap-t (many resamples without spread): Student's t
        return mean_interval(x, confidence, "t")
    low, high = _bootstrap((x,), np.mean, confidence, method, n_resamples, seed)
    return Interval(m, low, high, n, confidence, method, se)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                      method: str = "bootstrap-t", n_resamples: int = 9999, seed: int = 0) -> Interval:
    """Mean of the per-seed differences a_i − b_i (runs i of A and B share seed i), with its interval."""
    x, y = _clean(a, "a"), _clean(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired runs need one value per seed on both sides, got {x.size} and {y.size}")
    return mean_interval(x - y, confidence, method, n_resamples, seed)


def unpaired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                        method: str = "bootstrap-t", n_resamples: int = 9999, seed: int = 0) -> Interval:
    """mean(a) − mean(b) for independent runs, with its interval (Welch's standard error; each side resampled
    on its own for the bootstrap)."""
    _check_method(method)
    x, y = _clean(a, "a"), _clean(b, "b")
    d = float(x.mean() - y.mean())
    n = min(x.size, y.size)
    se = float(math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size))
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return Interval(d, d, d, n, confidence, "exact", 0.0)
    if method == "bootstrap-t" and n < MIN_BOOTSTRAP_T:
        method = "t"
    if method == "t":
        from scipy import stats

        vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
        df = (vx + vy) ** 2 / (vx ** 2 / (x.size - 1) + vy ** 2 / (y.size - 1))  # Welch-Satterthwaite
        c = float(stats.t.ppf(1 - (1 - confidence) / 2, df))
        return Interval(d, d - c * se, d + c * se, n, confidence, "t", se)
    if method == "bootstrap-t":
        rng = np.random.default_rng(seed)
        xb, yb = _resample(x, n_resamples, rng), _resample(y, n_resamples, rng)
        seb = np.sqrt(xb.var(axis=1, ddof=1) / x.size + yb.var(axis=1, ddof=1) / y.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            boot_t = (xb.mean(axis=1) - yb.mean(axis=1) - d) / seb
        q_low, q_high = _quantiles_t(boot_t, confidence)
        if np.isfinite(q_low) and np.isfinite(q_high):
            return Interval(d, d - q_high * se, d - q_low * se, n, confidence, method, se)
        return unpaired_difference(x, y, confidence, "t")

    def diff(u, v, axis=-1):
        return np.mean(u, axis=axis) - np.mean(v, axis=axis)

    low, high = _bootstrap((x, y), diff, confidence, method, n_resamples, seed)
    return Interval(d, low, high, n, confidence, method, se)


@dataclass(frozen=True)
class SignTest:
    """"A beats B in most seeds": wins, the seeds counted, and the exact one-sided p-values.

    ``n`` is the number of seeds the test counts: the informative ones when ties are dropped, all of them when
    ties count against the claim (then a tie is neither a win for "A > B" nor for "B > A")."""

    wins: int
    n: int
    p_value: float           # P(wins ≥ observed | n, 1/2): evidence that A beats B
    p_reverse: float = 1.0   # P(losses ≥ observed | n, 1/2): evidence that B beats A
    losses: int = -1
    ties: int = 0

    def __str__(self) -> str:
        tied = f", {self.ties} tied" if self.ties else ""
        return f"{self.wins}/{self.n} seeds{tied}, p = {self.p_value:.3g}"


def _upper_tail(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) ≥ k), exactly."""
    if n == 0:
        return 1.0
    return sum(math.comb(n, j) for j in range(max(k, 0), n + 1)) / 2.0 ** n


def sign_test(a: Sequence[float], b: Sequence[float], ties: str = "drop") -> SignTest:
    """Exact binomial sign test of P(a_i > b_i) > 1/2 over paired seeds; P(wins ≥ k | n, 1/2).

    ``ties="drop"`` leaves tied seeds out (the textbook test); ``ties="against"`` counts every seed, so a tie is
    a loss for whichever direction is claimed (the conservative choice for an argmin on a grid, where ties are
    common). A rank statistic: ±inf (a diverged run's spread, say) is ordered like any value; NaN is refused."""
    if ties not in ("drop", "against"):
        raise ValueError(f"ties must be 'drop' or 'against', got {ties!r}")
    x, y = _clean(a, "a", ordinal=True), _clean(b, "b", ordinal=True)
    if x.size != y.size:
        raise ValueError(f"a sign test pairs seeds: got {x.size} and {y.size} values")
    wins, losses = int(np.sum(x > y)), int(np.sum(x < y))
    tied = x.size - wins - losses
    n = wins + losses if ties == "drop" else x.size
    return SignTest(wins, n, _upper_tail(wins, n), _upper_tail(losses, n), losses, tied)


def min_seeds_for_sign_test(alpha: float) -> int:
    """The fewest informative seeds with which a sign test can reach p < ``alpha`` (all seeds won)."""
    return max(1, math.ceil(math.log2(1.0 / alpha) + 1e-12))


def verdict(interval: Interval, threshold: float, direction: str = ">") -> str:
    """holds / fails / inconclusive: does the whole interval clear ``threshold`` in ``direction``?

    ``direction="within"`` is an equivalence claim, |statistic| < threshold: it holds when the whole interval
    lies inside (−threshold, threshold) and fails when the whole interval lies outside it on one side. An
    exact statistic (or a worst seed) is its own interval, so it either holds or fails.
    """
    if direction == "within":
        if not threshold > 0:
            raise ValueError(f"an equivalence claim needs a threshold > 0 (the margin), got {threshold}")
        if -threshold < interval.low and interval.high < threshold:
            return "holds"
        return "fails" if interval.low >= threshold or interval.high <= -threshold or interval.exact \
            else "inconclusive"
    if direction == ">":
        return "holds" if interval.low > threshold else "fails" if interval.high <= threshold else "inconclusive"
    if direction == "<":
        return "holds" if interval.high < threshold else "fails" if interval.low >= threshold else "inconclusive"
    raise ValueError(f"direction must be '>', '<' or 'within', got {direction!r}")


def satisfies(verdict_: str, expect: str) -> bool:
    """Does a verdict meet a stated expectation ("not holds": fails or inconclusive, …)?"""
    if expect == "not holds":
        return verdict_ != "holds"
    if expect == "not fails":
        return verdict_ != "fails"
    return verdict_ == expect


def margin(interval: Interval, threshold: float, direction: str) -> float:
    """How far the interval clears the threshold, in standard errors (negative: it does not clear it).

    For '>' it is (low − threshold)/se, for '<' (threshold − high)/se, for 'within' the smaller of the two
    sides. NaN where the interval has no standard error (exact values, worst seeds, sign tests)."""
    if not (interval.se > 0):
        return float("nan")
    if direction == ">":
        return (interval.low - threshold) / interval.se
    if direction == "<":
        return (threshold - interval.high) / interval.se
    return min(threshold - interval.high, interval.low + threshold) / interval.se


@dataclass(frozen=True)
class Claim:
    """One claim: its text, the statistic and interval (or test) that decide it, and what was stated.

    ``expect`` is what the claim commits to before the numbers are seen (see EXPECTATIONS). ``kind`` is one of
    KINDS; ``data`` keeps the per-seed values the statistic came from (the differences for ``paired``, both
    arms for ``unpaired``), so that :func:`flip_probability` can predict another build. ``sign`` holds the sign
    test of a ``sign`` claim and ``alpha`` its one-sided level. Chapters build claims through the registry
    (:mod:`elr.claims`), which fills ``id``, ``role`` and ``paper`` and sets the confidence of gate claims.
    """

    text: str
    statistic: str
    interval: Interval
    threshold: float
    direction: str
    expect: str
    kind: str = "mean"
    data: tuple = field(default=(), repr=False, compare=False)
    sign: SignTest | None = None
    alpha: float = 0.025
    id: str = ""
    role: str = "gate"
    paper: str = ""

    def __post_init__(self):
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"expect must be one of {EXPECTATIONS}, got {self.expect!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "sign" and self.sign is None:
            raise ValueError("a sign claim needs its SignTest")

    @property
    def verdict(self) -> str:
        if self.kind == "sign":
            return "holds" if self.sign.p_value < self.alpha else "fails" if self.sign.p_reverse < self.alpha \
                else "inconclusive"
        return verdict(self.interval, self.threshold, self.direction)

    @property
    def ok(self) -> bool:
        return satisfies(self.verdict, self.expect)

    @property
    def margin(self) -> float:
        return margin(self.interval, self.threshold, self.direction) if self.kind in ("mean", "paired", "unpaired") \
            else float("nan")

    # ------------------------------------------------------------ constructors

    @classmethod
    def compare(cls, text: str, a: Sequence[float], b: Sequence[float], threshold: float = 0.0,
                direction: str = ">", paired: bool = True, expect: str = "holds", **kwargs) -> "Claim":
        """A claim about mean(A) − mean(B) (per-seed differences when ``paired``) against ``threshold``."""
        interval = (paired_difference if paired else unpaired_difference)(a, b, **kwargs)
        stat = "mean paired difference" if paired else "difference of means"
        data = (np.asarray(a, float) - np.asarray(b, float),) if paired else (np.asarray(a, float),
                                                                               np.asarray(b, float))
        return cls(text, stat, interval, threshold, direction, expect, "paired" if paired else "unpaired", data)

    @classmethod
    def within(cls, text: str, a: Sequence[float], b: Sequence[float], margin: float, paired: bool = True,
               expect: str = "holds", **kwargs) -> "Claim":
        """An equivalence claim: |mean(A) − mean(B)| < ``margin``, decided by the whole interval (see :func:`verdict`)."""
        claim = cls.compare(text, a, b, margin, ">", paired, expect, **kwargs)
        return cls(text, claim.statistic, claim.interval, margin, "within", expect, claim.kind, claim.data)

    @classmethod
    def level(cls, text: str, values: Sequence[float], threshold: float, direction: str = ">",
              expect: str = "holds", statistic: str = "mean", **kwargs) -> "Claim":
        """A claim about the mean of one quantity over seeds against ``threshold``."""
        x = np.asarray(values, float)
        return cls(text, statistic, mean_interval(x, **kwargs), threshold, direction, expect, "mean", (x,))

    @classmethod
    def sign_claim(cls, text: str, a: Sequence[float], b: Sequence[float], alpha: float = 0.025,
                   expect: str = "holds", statistic: str = "seeds in which A > B") -> "Claim":
        """"A > B in most seeds", by the exact sign test at one-sided level ``alpha`` (for discrete outcomes); a
        tied seed counts against the claim."""
        test = sign_test(a, b, ties="against")
        frac = test.wins / test.n if test.n else 0.5
        return cls(text, statistic, Interval(frac, frac, frac, test.n, 1 - alpha, "sign test"), 0.5, ">", expect,
                   "sign", (np.asarray(a, float), np.asarray(b, float)), test, alpha)

    @classmethod
    def worst(cls, text: str, values: Sequence[float], threshold: float, direction: str = "<",
              expect: str = "holds", statistic: str = "worst seed") -> "Claim":
        """An identity over seeds: every seed's value beyond ``threshold`` in ``direction`` ('<', '>' or 'within',
        the last for |value| < threshold); decided by the worst seed."""
        x = _clean(values, "values", minimum=1)
        if direction not in ("<", ">", "within"):
            raise ValueError(f"direction must be '>', '<' or 'within', got {direction!r}")
        w = float(x.max() if direction == "<" else x.min() if direction == ">" else np.abs(x).max())
        return cls(text, statistic, Interval(w, w, w, x.size, 1.0, "worst seed"), threshold, direction, expect,
                   "worst", (x,))

    @classmethod
    def exact(cls, text: str, value: float, threshold: float, direction: str = ">", expect: str = "holds",
              statistic: str = "value", n: int = 1) -> "Claim":
        """A claim on a statistic without spread (a deterministic computation): shown as exact."""
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"an exact claim needs a finite value, got {v}")
        return cls(text, statistic, Interval(v, v, v, n, 1.0, "exact", 0.0), threshold, direction, expect, "exact",
                   (np.array([v]),))


# --------------------------------------------------------------- prediction


def _posterior_draws(x: np.ndarray, draws: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(μ, σ) from the posterior of a normal model of ``x`` under the flat prior on (μ, log σ)."""
    n, m, s = x.size, x.mean(), x.std(ddof=1)
    sigma = s * np.sqrt((n - 1) / rng.chisquare(n - 1, draws))
    return rng.normal(m, sigma / np.sqrt(n)), sigma


def _new_mean_se(x: np.ndarray, n_new: int, draws: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = _posterior_draws(x, draws, rng)
    mean = rng.normal(mu, sigma / np.sqrt(n_new))
    s = sigma * np.sqrt(rng.chisquare(n_new - 1, draws) / (n_new - 1))
    return mean, s


def _codes(low: np.ndarray, high: np.ndarray, threshold: float, direction: str, exact: bool = False) -> np.ndarray:
    """Vectorised :func:`verdict`: 0 holds, 1 fails, 2 inconclusive."""
    if direction == ">":
        return np.where(low > threshold, 0, np.where(high <= threshold, 1, 2))
    if direction == "<":
        return np.where(high < threshold, 0, np.where(low >= threshold, 1, 2))
    inside = (-threshold < low) & (high < threshold)
    outside = (low >= threshold) | (high <= -threshold)
    return np.where(inside, 0, np.where(outside | exact, 1, 2))


def predictive_verdicts(claim: Claim, n: int | None = None, draws: int = 20000, seed: int = 0) -> np.ndarray:
    """Verdicts (as strings) of ``draws`` simulated builds at a new base seed with ``n`` seeds (default: the
    claim's), from the posterior predictive of the claim's per-seed data (see the module doc)."""
    rng = np.random.default_rng(seed)
    names = np.array(VERDICTS)
    iv = claim.interval
    if claim.kind == "exact":
        return np.full(draws, claim.verdict)
    if claim.kind == "sign":
        test = claim.sign
        n_new = n or max(test.n, 1)
        # Dirichlet posterior on (win, loss, tie) rates under a uniform prior; ties count against both directions
        rates = rng.dirichlet([test.wins + 1, max(test.losses, 0) + 1, test.ties + 1], draws)
        counts = np.array([rng.multinomial(n_new, r) for r in rates])
        tail = np.array([_upper_tail(k, n_new) for k in range(n_new + 1)])
        out = np.where(tail[counts[:, 0]] < claim.alpha, 0, np.where(tail[counts[:, 1]] < claim.alpha, 1, 2))
        return names[out]
    if claim.kind == "worst":
        x = claim.data[0]
        n_new = n or x.size
        if x.size < 2 or np.ptp(x) == 0:
            # no spread to model: the chance that all of n new seeds pass again, by the rule of succession
            # (uniform prior on a seed's pass rate, n of n passed): (n + 1) / (2n + 1)
            same = rng.random(draws) < (x.size + 1) / (2 * x.size + 1)
            other = "fails" if claim.verdict == "holds" else "holds"
            return np.where(same, claim.verdict, other)
        threshold, direction = claim.threshold, claim.direction
        positive = np.all(x > 0) and threshold > 0 and direction in ("<", ">")
        if positive:  # positive error measures are skewed: model them on a log scale
            x, threshold = np.log(x), math.log(threshold)
        mu, sigma = _posterior_draws(x, draws, rng)
        # a Student-t law per seed (3 degrees of freedom), not a normal one: heavier tails, a cautious prediction
        values = mu[:, None] + sigma[:, None] * rng.standard_t(3, (draws, n_new)) / math.sqrt(3.0)
        w = values.max(1) if direction == "<" else values.min(1) if direction == ">" else np.abs(values).max(1)
        return names[_codes(w, w, threshold, direction, exact=True)]
    # mean, paired, unpaired: the claim's own critical values, scaled to the new number of seeds
    if not iv.se > 0:
        return np.full(draws, claim.verdict)
    from scipy import stats

    n0 = iv.n
    n_new = n or n0
    scale = float(stats.t.ppf(1 - (1 - iv.confidence) / 2, n_new - 1) / stats.t.ppf(1 - (1 - iv.confidence) / 2,
                                                                                     n0 - 1))
    c_low, c_high = (iv.estimate - iv.low) / iv.se * scale, (iv.high - iv.estimate) / iv.se * scale
    if claim.kind == "unpaired":
        (ma, sa), (mb, sb) = (_new_mean_se(x, n_new, draws, rng) for x in claim.data)
        est, se = ma - mb, np.sqrt(sa ** 2 / n_new + sb ** 2 / n_new)
    else:
        est, s = _new_mean_se(claim.data[0], n_new, draws, rng)
        se = s / np.sqrt(n_new)
    return names[_codes(est - c_low * se, est + c_high * se, claim.threshold, claim.direction)]


def flip_probability(claim: Claim, n: int | None = None, draws: int = 20000, seed: int = 0) -> float:
    """Predicted probability that a build at a new base seed (another machine: new draws) gives a verdict
    that breaks the claim's expectation (for a claim whose verdict breaks it now: that the verdict changes)."""
    sims = predictive_verdicts(claim, n, draws, seed)
    if claim.ok:
        return float(np.mean([not satisfies(v, claim.expect) for v in sims])) if claim.expect in (
            "not holds", "not fails") else float(np.mean(sims != claim.expect))
    return float(np.mean(sims != claim.verdict))


# ------------------------------------------------------------------ helpers


def per_seed(runs: Mapping[K, Sequence], statistic: Callable) -> dict[K, np.ndarray]:
    """``statistic`` of every run, one array per case: ``{key: [statistic(run) for run in runs[key]]}``."""
    return {k: np.array([statistic(r) for r in rs], dtype=float) for k, rs in runs.items()}


def row_means(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row (one row per seed): the mean of ``values`` where ``mask`` is true, NaN for a row where it
    never is (a seed with nothing to average counts as missing, not as zero)."""
    values, mask = np.asarray(values, dtype=float), np.asarray(mask, dtype=bool)
    if values.shape != mask.shape or values.ndim != 2:
        raise ValueError(f"values and mask must be 2-D arrays of one shape, got {values.shape} and {mask.shape}")
    counts = mask.sum(axis=1)
    sums = np.where(mask, values, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def intervals(values: Mapping[K, Sequence[float]], **kwargs) -> dict[K, Interval]:
    """:func:`mean_interval` of every entry (one value per seed each): the cells of a results table."""
    return {k: mean_interval(v, **kwargs) for k, v in values.items()}


def cell(interval: Interval, scale: float = 1.0, digits: int = 2) -> str:
    """``mean [low, high]`` of an interval, multiplied by ``scale`` (100 for percent), for a Markdown table;
    an exact value is shown alone."""
    f = f"{{:.{digits}f}}"
    if interval.exact:
        return f"{f.format(scale * interval.estimate)} (exact)"
    return (f"{f.format(scale * interval.estimate)} [{f.format(scale * interval.low)}, "
            f"{f.format(scale * interval.high)}]")


def condition(c: Claim) -> str:
    """The decision rule of a claim in words, e.g. ``mean paired difference > 0``."""
    if c.kind == "sign":
        return f"{c.statistic}: sign test, p < {c.alpha:.3g}"
    if c.direction == "within":
        return f"{c.statistic} within ±{c.threshold:g}"
    return f"{c.statistic} {c.direction} {c.threshold:g}"


def shown(c: Claim) -> str:
    """The estimate and its interval (or the sign test, or 'exact') as one table cell."""
    if c.kind == "sign":
        return str(c.sign)
    if c.interval.exact:
        return f"{c.interval.estimate:.4g} ({c.interval.method})"
    return f"{c.interval.estimate:.4g} [{c.interval.low:.4g}, {c.interval.high:.4g}]"


def sentence(c: Claim, scale: float = 1.0, unit: str = "") -> str:
    """The estimate, its interval and the verdict for a sentence of prose, e.g. ``+1.94 points (95 % interval
    +0.82 to +4.2: holds)``; ``scale`` multiplies the numbers (100 for percent). A difference (paired or
    unpaired claim) carries its sign; a claim without spread names how it was decided (exact, worst seed)."""
    i, f = c.interval, ("{:+.3g}" if c.kind in ("paired", "unpaired") else "{:.3g}").format
    if c.kind == "sign":
        return f"{c.sign} ({c.verdict})"
    if i.exact or i.method == "worst seed":
        return f"{f(scale * i.estimate)}{unit} ({i.method}: {c.verdict})"
    return (f"{f(scale * i.estimate)}{unit} ({100 * i.confidence:.3g} % interval {f(scale * i.low)} to "
            f"{f(scale * i.high)}: {c.verdict})")


def table(claims: Sequence[Claim]) -> str:
    """A plain claims table (Markdown): claim, statistic, estimate and interval, seeds, verdict, stated.
    Registered claims render through :func:`elr.claims.table`, which adds role, margin and flip probability."""
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731 - "|x|" inside a cell would split the row
    rows = [f"| {esc(c.text)} | {esc(condition(c))} | {esc(shown(c))} | {c.interval.n} | **{c.verdict}** | "
            f"{c.expect} |" for c in claims]
    return ("| claim | statistic | estimate [95 % interval] | seeds | verdict | stated |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows))


def check(claims: Sequence[Claim]) -> None:
    """Assert every claim's verdict is the one its text stated; the message lists every mismatch."""
    wrong = [f"{c.text}: stated {c.expect}, measured {c.verdict} ({c.statistic} {shown(c)}, "
             f"threshold: {condition(c)}, {c.interval.n} seeds)" for c in claims if not c.ok]
    assert not wrong, "claims whose verdict differs from the text:\n  " + "\n  ".join(wrong)

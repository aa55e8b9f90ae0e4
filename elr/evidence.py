"""Evidence: repeated runs turned into claims with intervals (NumPy and SciPy).

A measured claim about trained networks is a statistic over seeds, not one
run: a different CPU takes a different floating-point path, so bit-for-bit
repetition on one machine proves nothing on another. A chapter states each
claim *before* it looks at numbers, as a :class:`Claim` with the threshold its
text names, and ends by rendering the claims table and asserting every
verdict the text commits to::

    claim = evidence.Claim.compare(
        "warm-up raises NoShort's accuracy by more than 5 points at λ = 1",
        warm_acc, plain_acc, threshold=0.05, paired=True, expect="holds")
    display(Markdown(evidence.table([claim])))
    evidence.check([claim])           # AssertionError naming every claim whose verdict differs

A claim **holds** when its whole 95 % interval clears the threshold in the
stated direction, **fails** when the whole interval lies on the other side,
and is **inconclusive** otherwise: a point estimate never decides.

Intervals come from :func:`scipy.stats.bootstrap` (BCa by default; the
percentile method on request). Runs that share a seed are compared *paired*
(the interval of the mean of per-seed differences); otherwise *unpaired* (the
interval of the difference of means). :func:`sign_test` is the exact one-sided
binomial test of "A beats B in most seeds" (ties dropped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np

VERDICTS = ("holds", "fails", "inconclusive")
#: what a chapter may state: a verdict, "not holds" (fails or inconclusive: the claim is not established at
#: this scale, whichever way a near-null effect happens to fall), or "not fails" (holds or inconclusive: the
#: data do not refute the claim, for a statistic that sits near its threshold so that the verdict depends on
#: the seeds drawn)
EXPECTATIONS = VERDICTS + ("not holds", "not fails")
K = TypeVar("K")


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval over ``n`` values (seeds, or pairs of them)."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    method: str = "BCa"

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _clean(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size < 2:
        raise ValueError(f"{name} needs at least 2 values (seeds) for an interval, got {x.size}; raise n_seeds")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds non-finite values {x[~np.isfinite(x)]}; decide what a diverged run counts "
                         "as (for accuracy: chance, say) before computing an interval")
    return x


def _bootstrap(data: tuple[np.ndarray, ...], statistic: Callable, confidence: float, method: str,
               n_resamples: int, seed: int) -> tuple[float, float]:
    from scipy import stats

    if all(np.ptp(d) == 0 for d in data):  # no spread at all: the bootstrap has nothing to resample
        value = float(statistic(*data, axis=-1))
        return value, value
    res = stats.bootstrap(data, statistic, confidence_level=confidence, method=method, n_resamples=n_resamples,
                          vectorized=True, rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)) and method.lower() == "bca":
        # BCa is undefined for some small, lumpy samples (all resamples on one side): fall back to percentiles
        res = stats.bootstrap(data, statistic, confidence_level=confidence, method="percentile",
                              n_resamples=n_resamples, vectorized=True, rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return low, high


def mean_interval(values: Sequence[float], confidence: float = 0.95, method: str = "BCa",
                  n_resamples: int = 9999, seed: int = 0) -> Interval:
    """The mean of ``values`` (one per seed) with its bootstrap interval."""
    x = _clean(values, "values")
    low, high = _bootstrap((x,), np.mean, confidence, method, n_resamples, seed)
    return Interval(float(x.mean()), low, high, x.size, confidence, method)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, method: str = "BCa",
                      n_resamples: int = 9999, seed: int = 0) -> Interval:
    """Mean of the per-seed differences a_i − b_i (runs i of A and B share seed i), with its interval."""
    x, y = _clean(a, "a"), _clean(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired runs need one value per seed on both sides, got {x.size} and {y.size}")
    return mean_interval(x - y, confidence, method, n_resamples, seed)


def unpaired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, method: str = "BCa",
                        n_resamples: int = 9999, seed: int = 0) -> Interval:
    """mean(a) − mean(b) for independent runs, with its bootstrap interval (each side resampled on its own)."""
    x, y = _clean(a, "a"), _clean(b, "b")

    def diff(u, v, axis=-1):
        return np.mean(u, axis=axis) - np.mean(v, axis=axis)

    low, high = _bootstrap((x, y), diff, confidence, method, n_resamples, seed)
    return Interval(float(x.mean() - y.mean()), low, high, min(x.size, y.size), confidence, method)


@dataclass(frozen=True)
class SignTest:
    """"A beats B in most seeds": wins, informative pairs (ties dropped) and the exact one-sided p-value."""

    wins: int
    n: int
    p_value: float

    def __str__(self) -> str:
        return f"{self.wins}/{self.n} seeds, p = {self.p_value:.3g}"


def sign_test(a: Sequence[float], b: Sequence[float]) -> SignTest:
    """Exact binomial sign test of P(a_i > b_i) > 1/2 over paired seeds; P(wins ≥ k | n, 1/2)."""
    from scipy import stats

    x, y = _clean(a, "a"), _clean(b, "b")
    if x.size != y.size:
        raise ValueError(f"a sign test pairs seeds: got {x.size} and {y.size} values")
    wins, n = int(np.sum(x > y)), int(np.sum(x != y))
    p = float(stats.binomtest(wins, n, 0.5, alternative="greater").pvalue) if n else 1.0
    return SignTest(wins, n, p)


def verdict(interval: Interval, threshold: float, direction: str = ">") -> str:
    """holds / fails / inconclusive: does the whole interval clear ``threshold`` in ``direction``?

    ``direction="within"`` is an equivalence claim, |statistic| < threshold: it holds when the whole interval
    lies inside (−threshold, threshold) and fails when the whole interval lies outside it on one side.
    """
    if direction == "within":
        if not threshold > 0:
            raise ValueError(f"an equivalence claim needs a threshold > 0 (the margin), got {threshold}")
        if -threshold < interval.low and interval.high < threshold:
            return "holds"
        return "fails" if interval.low >= threshold or interval.high <= -threshold else "inconclusive"
    if direction == ">":
        return "holds" if interval.low > threshold else "fails" if interval.high <= threshold else "inconclusive"
    if direction == "<":
        return "holds" if interval.high < threshold else "fails" if interval.low >= threshold else "inconclusive"
    raise ValueError(f"direction must be '>', '<' or 'within', got {direction!r}")


@dataclass(frozen=True)
class Claim:
    """One claim of a chapter: its text, the statistic and interval that test it, and the verdicts.

    ``expect`` is what the chapter's text commits to before the numbers are
    seen ("holds", "fails" or "inconclusive", the last for "no significant
    difference at this scale", "not holds" for "fails or inconclusive": the
    claim is not established here, or "not fails" for "holds or
    inconclusive": the data do not refute it); :func:`check` asserts it.
    """

    text: str
    statistic: str
    interval: Interval
    threshold: float
    direction: str
    expect: str

    def __post_init__(self):
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"expect must be one of {EXPECTATIONS}, got {self.expect!r}")

    @property
    def verdict(self) -> str:
        return verdict(self.interval, self.threshold, self.direction)

    @property
    def ok(self) -> bool:
        if self.expect == "not holds":
            return self.verdict != "holds"
        if self.expect == "not fails":
            return self.verdict != "fails"
        return self.verdict == self.expect

    @classmethod
    def compare(cls, text: str, a: Sequence[float], b: Sequence[float], threshold: float = 0.0,
                direction: str = ">", paired: bool = True, expect: str = "holds", **kwargs) -> "Claim":
        """A claim about mean(A) − mean(B) (per-seed differences when ``paired``) against ``threshold``."""
        interval = (paired_difference if paired else unpaired_difference)(a, b, **kwargs)
        stat = "mean paired difference" if paired else "difference of means"
        return cls(text, stat, interval, threshold, direction, expect)

    @classmethod
    def within(cls, text: str, a: Sequence[float], b: Sequence[float], margin: float, paired: bool = True,
               expect: str = "holds", **kwargs) -> "Claim":
        """An equivalence claim: |mean(A) − mean(B)| < ``margin``, decided by the whole interval (see :func:`verdict`)."""
        interval = (paired_difference if paired else unpaired_difference)(a, b, **kwargs)
        stat = "mean paired difference" if paired else "difference of means"
        return cls(text, stat, interval, margin, "within", expect)

    @classmethod
    def level(cls, text: str, values: Sequence[float], threshold: float, direction: str = ">",
              expect: str = "holds", statistic: str = "mean", **kwargs) -> "Claim":
        """A claim about the mean of one quantity over seeds against ``threshold``."""
        return cls(text, statistic, mean_interval(values, **kwargs), threshold, direction, expect)


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
    """``mean [low, high]`` of an interval, multiplied by ``scale`` (100 for percent), for a Markdown table."""
    f = f"{{:.{digits}f}}"
    return (f"{f.format(scale * interval.estimate)} [{f.format(scale * interval.low)}, "
            f"{f.format(scale * interval.high)}]")


def _condition(c: Claim) -> str:
    if c.direction == "within":
        return f"{c.statistic} within ±{c.threshold:g}"
    return f"{c.statistic} {c.direction} {c.threshold:g}"


def table(claims: Sequence[Claim]) -> str:
    """The claims table (Markdown): claim, statistic, 95 % interval, seeds, verdict, and what the text said."""
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731 - "|x|" inside a cell would split the row
    rows = [f"| {esc(c.text)} | {esc(_condition(c))} | {c.interval.estimate:.4g} | "
            f"[{c.interval.low:.4g}, {c.interval.high:.4g}] | {c.interval.n} | **{c.verdict}** | {c.expect} |"
            for c in claims]
    return ("| claim | statistic | estimate | 95 % interval | seeds | verdict | stated |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def check(claims: Sequence[Claim]) -> None:
    """Assert every claim's verdict is the one its text stated; the message lists every mismatch."""
    wrong = [f"{c.text}: stated {c.expect}, measured {c.verdict} ({c.statistic} {c.interval}, "
             f"threshold: {_condition(c)}, {c.interval.n} seeds)" for c in claims if not c.ok]
    assert not wrong, "claims whose verdict differs from the text:\n  " + "\n  ".join(wrong)

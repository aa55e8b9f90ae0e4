"""The claims registry: every measured claim of the book, registered before its data.

``notebooks/claims.toml`` holds one ``[[claim]]`` table per claim::

    [[claim]]
    id = "13.spread-noshort-vs-short"      # <chapter number>.<slug>, unique
    chapter = "13_trainability"
    paper = "Table 1"                      # where the paper makes it, or "ours"
    text = "without warm-up, NoShort's ELRs spread more than Short's"
    kind = "paired"                        # mean | paired | unpaired | sign | worst | exact (elr.evidence)
    statistic = "mean spread, NoShort − Short"
    threshold = 0.0
    direction = ">"                        # '>', '<' or 'within'
    expect = "holds"                       # elr.evidence.EXPECTATIONS
    role = "gate"                          # gate: asserted; report: shown, never asserted
    set_by = [100]                         # the base seeds whose pilot set expect and role
    confirmed_at = [0, 2000, 3000]         # base seeds never used to set it, at which it held
    pilot_p_flip = 0.0004                  # the pilot's predicted flip probability (required of a gate claim)
    history = ["2026-12-02: registered ... (why)"]

A report claim evaluated at several instances (depths, protocols) may hold one expectation per instance,
set by its pilot instance by instance: ``expect_instances = {"none, depth 105" = "fails"}``; an instance
not listed (a depth a reader's parameters add, say) takes ``expect``.

A chapter takes each claim's text, threshold, direction, expectation and
role from here, never from its own source, so a claim cannot be reworded in a
chapter alone::

    claims = elr.claims.Chapter("13_trainability", seed=seed)
    claims.paired("13.spread-noshort-vs-short", spread_noshort, spread_short)
    display(Markdown(claims.table()))
    claims.check()        # asserts the gate claims; every registered claim of the chapter must be evaluated

**Gate claims share a family-wise error.** Within a chapter, the gate claims
decided by an interval or a test (kinds mean, paired, unpaired, sign) are
corrected together by Bonferroni: with m of them, each interval is at
two-sided level 1 − 0.05/m and each sign test at one-sided level 0.025/m, so
the chance of any false verdict among them is at most 5 %. Worst-seed and
exact claims are statements about the runs themselves and carry no error
rate. Report claims use plain 95 % intervals.

**A claim may gate** only when its predicted flip probability
(:func:`elr.evidence.flip_probability`, from the pilot) is below
``MAX_FLIP`` = 0.5 %, the sum over the book's gate claims stays below
``MAX_FLIP_SUM`` = 5 %, and it held at ``MIN_CONFIRMATIONS`` = 3 base seeds
that never set it. ``elr claims`` reads the executed chapters' records and
prints what each claim measured and its flip probability; ``--propose`` the
roles a pilot allows, each candidate decided again as a gate (at its
Bonferroni level, with Student's t).
"""
from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from elr import evidence

ROOT = Path(os.environ.get("ELR_ROOT", Path(__file__).resolve().parent.parent))
#: the registry; ELR_CLAIMS_REGISTRY points elsewhere (tests, or a draft registry while a chapter is written)
REGISTRY = Path(os.environ.get("ELR_CLAIMS_REGISTRY") or ROOT / "notebooks" / "claims.toml")
ROLES = ("gate", "report")
MAX_FLIP = 0.005
MAX_FLIP_SUM = 0.05
MIN_CONFIRMATIONS = 3
FWER = 0.05
_FAMILY_KINDS = ("mean", "paired", "unpaired", "sign")
_FIELDS = {"id": str, "chapter": str, "paper": str, "text": str, "kind": str, "statistic": str,
           "threshold": (int, float), "direction": str, "expect": str, "role": str, "set_by": list,
           "confirmed_at": list, "history": list}
#: optional fields: the pilot's predicted flip probability (required of a gate claim), and expectations per
#: instance ({instance = expectation}; an instance not listed takes ``expect``), for a report claim whose
#: instances a pilot decided differently (e.g. "trains" at one depth, "fails" at another)
_OPTIONAL = {"pilot_p_flip": (int, float), "expect_instances": dict}


class RegistryError(ValueError):
    """An entry of notebooks/claims.toml that is missing a field or holds a wrong value."""


@dataclass(frozen=True)
class Entry:
    """One registered claim (see the module doc for the fields)."""

    id: str
    chapter: str
    paper: str
    text: str
    kind: str
    statistic: str
    threshold: float
    direction: str
    expect: str
    role: str
    set_by: tuple[int, ...]
    confirmed_at: tuple[int, ...]
    history: tuple[str, ...]
    pilot_p_flip: float | None = None
    expect_instances: tuple[tuple[str, str], ...] = ()

    @property
    def gate(self) -> bool:
        return self.role == "gate"

    def expect_for(self, instance: str | None) -> str:
        """The expectation of one instance: its own if the registry lists it, else ``expect``."""
        return dict(self.expect_instances).get(instance, self.expect) if instance is not None else self.expect


def _entry(raw: dict[str, Any], where: str) -> Entry:
    missing = [k for k in _FIELDS if k not in raw]
    unknown = [k for k in raw if k not in _FIELDS and k not in _OPTIONAL]
    name = raw.get("id", "?")
    if missing or unknown:
        raise RegistryError(f"{where}: claim {name!r}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown
                                                                        else [])))
    for key, typ in list(_FIELDS.items()) + [(k, t) for k, t in _OPTIONAL.items() if k in raw]:
        if not isinstance(raw[key], typ) or isinstance(raw[key], bool):
            raise RegistryError(f"{where}: claim {name!r}: {key} must be {typ}, got {raw[key]!r}")
    checks = [("kind", evidence.KINDS), ("direction", (">", "<", "within")), ("expect", evidence.EXPECTATIONS),
              ("role", ROLES)]
    for key, allowed in checks:
        if raw[key] not in allowed:
            raise RegistryError(f"{where}: claim {name!r}: {key} must be one of {allowed}, got {raw[key]!r}")
    if not raw["id"].startswith(raw["chapter"][:2] + "."):
        raise RegistryError(f"{where}: claim {name!r}: its id must start with its chapter's number "
                            f"({raw['chapter'][:2]}.)")
    if raw["role"] == "gate" and raw["expect"] not in ("holds", "fails"):
        raise RegistryError(f"{where}: claim {name!r}: a gate claim must expect 'holds' or 'fails', got "
                            f"{raw['expect']!r}; make it a report claim")
    if raw["role"] == "gate" and "pilot_p_flip" not in raw:
        raise RegistryError(f"{where}: claim {name!r}: a gate claim needs pilot_p_flip, the predicted flip "
                            "probability of its pilot (elr claims)")
    if not raw["history"]:
        raise RegistryError(f"{where}: claim {name!r}: history needs at least the entry that registered it")
    if raw["direction"] == "within" and not raw["threshold"] > 0:
        raise RegistryError(f"{where}: claim {name!r}: 'within' needs a threshold > 0")
    per_instance = raw.get("expect_instances", {})
    bad = {k: v for k, v in per_instance.items() if v not in evidence.EXPECTATIONS}
    if bad:
        raise RegistryError(f"{where}: claim {name!r}: expect_instances values must be one of "
                            f"{evidence.EXPECTATIONS}, got {bad}")
    if per_instance and raw["role"] == "gate":
        raise RegistryError(f"{where}: claim {name!r}: a gate claim has one expectation; expect_instances is for "
                            "report claims")
    return Entry(raw["id"], raw["chapter"], raw["paper"], raw["text"], raw["kind"], raw["statistic"],
                 float(raw["threshold"]), raw["direction"], raw["expect"], raw["role"],
                 tuple(int(s) for s in raw["set_by"]), tuple(int(s) for s in raw["confirmed_at"]),
                 tuple(str(h) for h in raw["history"]),
                 float(raw["pilot_p_flip"]) if "pilot_p_flip" in raw else None,
                 tuple((str(k), str(v)) for k, v in per_instance.items()))


def load(path: str | Path | None = None) -> dict[str, Entry]:
    """Every registered claim, by id, in file order; a malformed entry raises RegistryError naming it."""
    path = Path(path or REGISTRY)
    with open(path, "rb") as f:  # tomllib parses data only: nothing in the file can execute
        raw = tomllib.load(f)
    unknown = [k for k in raw if k != "claim"]
    if unknown:
        raise RegistryError(f"{path}: unknown top-level keys {unknown}; every entry is a [[claim]] table")
    entries: dict[str, Entry] = {}
    for i, item in enumerate(raw.get("claim", [])):
        e = _entry(item, f"{path} (claim {i + 1})")
        if e.id in entries:
            raise RegistryError(f"{path}: claim id {e.id!r} is registered twice")
        entries[e.id] = e
    return entries


@dataclass
class _Pending:
    entry: Entry
    instance: str | None
    data: tuple[np.ndarray, ...]


class Chapter:
    """The registered claims of one chapter, evaluated on its data (see the module doc).

    Claims are recorded as the chapter computes them and decided together when first needed (``claims``,
    ``table``, ``check``), because the Bonferroni level of a gate claim depends on how many there are.
    """

    def __init__(self, chapter: str, seed: int | None = None, registry: dict[str, Entry] | None = None,
                 out_dir: str | Path | None = None):
        self.chapter, self.seed = chapter, seed
        reg = load() if registry is None else registry
        self.entries = {k: e for k, e in reg.items() if e.chapter == chapter}
        if not self.entries:
            raise RegistryError(f"no claim of chapter {chapter!r} is registered in {REGISTRY}")
        self.out_dir = Path(out_dir or os.environ.get("ELR_CLAIMS_DIR") or ROOT / "book" / "chapters" / "claims")
        self._pending: list[_Pending] = []
        self._claims: list[evidence.Claim] | None = None
        self._flips: list[float] = []

    # ----------------------------------------------------------- recording

    def _add(self, claim_id: str, kind: str, data: tuple, instance: Any) -> None:
        if self._claims is not None:
            raise RuntimeError(f"claim {claim_id!r} recorded after the chapter's claims were decided; record every "
                               "claim before the first table() or check()")
        entry = self.entries.get(claim_id)
        if entry is None:
            raise RegistryError(f"chapter {self.chapter} evaluates claim {claim_id!r}, which {REGISTRY.name} does not "
                                "register; add it there (with its expectation and history) before its data")
        if entry.kind != kind:
            raise RegistryError(f"claim {claim_id!r} is registered as kind {entry.kind!r} but evaluated as {kind!r}")
        inst = None if instance is None else str(instance)
        if any(p.entry.id == claim_id and p.instance == inst for p in self._pending):
            raise RegistryError(f"claim {claim_id!r} ({inst}) evaluated twice")
        self._pending.append(_Pending(entry, inst, tuple(np.asarray(d, dtype=float).ravel() for d in data)))

    def mean(self, claim_id: str, values: Sequence[float], instance: Any = None) -> None:
        self._add(claim_id, "mean", (values,), instance)

    def paired(self, claim_id: str, a: Sequence[float], b: Sequence[float], instance: Any = None) -> None:
        a, b = np.asarray(a, float), np.asarray(b, float)
        if a.shape != b.shape:
            raise ValueError(f"claim {claim_id!r}: paired runs need one value per seed on both sides, got "
                             f"{a.size} and {b.size}")
        self._add(claim_id, "paired", (a, b), instance)

    def unpaired(self, claim_id: str, a: Sequence[float], b: Sequence[float], instance: Any = None) -> None:
        self._add(claim_id, "unpaired", (a, b), instance)

    def sign(self, claim_id: str, a: Sequence[float], b: Sequence[float], instance: Any = None) -> None:
        self._add(claim_id, "sign", (a, b), instance)

    def worst(self, claim_id: str, values: Sequence[float], instance: Any = None) -> None:
        self._add(claim_id, "worst", (values,), instance)

    def exact(self, claim_id: str, value: float, instance: Any = None) -> None:
        self._add(claim_id, "exact", ([value],), instance)

    # ------------------------------------------------------------- deciding

    @property
    def family(self) -> int:
        """How many gate claims share the chapter's family-wise error (Bonferroni)."""
        return sum(p.entry.gate and p.entry.kind in _FAMILY_KINDS for p in self._pending)

    def _decide(self, p: _Pending, m: int) -> evidence.Claim:
        e = p.entry
        text = e.text.format(instance=p.instance) if "{instance}" in e.text else (
            e.text if p.instance is None else f"{e.text} ({p.instance})")
        gate = e.gate and e.kind in _FAMILY_KINDS
        confidence = 1 - FWER / m if gate else 0.95
        # a gate's Bonferroni level lies where five seeds give the bootstrap too few resamples: Student's t
        c = _construct(e, text, p.data, confidence, "t" if gate else "bootstrap-t", e.expect_for(p.instance))
        return evidence.Claim(c.text, e.statistic, c.interval, c.threshold, c.direction, c.expect, c.kind, c.data,
                              c.sign, c.alpha, e.id, e.role, e.paper)

    @property
    def claims(self) -> list[evidence.Claim]:
        if self._claims is None:
            m = max(self.family, 1)
            self._claims = [self._decide(p, m) for p in self._pending]
            self._flips = [evidence.flip_probability(c) for c in self._claims]
        return self._claims

    def get(self, claim_id: str, instance: Any = None) -> evidence.Claim:
        """The decided claim ``claim_id`` (and ``instance``), e.g. for a sentence glued into the prose."""
        inst = None if instance is None else str(instance)
        for p, c in zip(self._pending, self.claims):
            if p.entry.id == claim_id and p.instance == inst:
                return c
        raise KeyError(f"claim {claim_id!r} ({inst}) was not evaluated in this chapter")

    def flip(self, claim: evidence.Claim) -> float:
        return self._flips[self.claims.index(claim)]

    # ------------------------------------------------------------- showing

    def table(self) -> str:
        """The claims table: claim, paper, statistic, estimate and interval, seeds, verdict, expectation, role,
        margin in standard errors and predicted flip probability; a note on the correction used."""
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731 - "|x|" inside a cell would split the row
        rows = []
        for c, flip in zip(self.claims, self._flips):
            mark = "✔" if c.ok else "✘"
            margin = "—" if math.isnan(c.margin) else f"{c.margin:+.1f}"
            rows.append(f"| {esc(c.text)} | {esc(c.paper)} | {esc(evidence.condition(c))} | {esc(evidence.shown(c))}"
                        f" | {c.interval.n} | **{c.verdict}** | {c.expect} {mark} | {c.role} | {margin} | "
                        f"{_pct(flip)} |")
        m = self.family
        note = (f"\n\nGate claims are asserted when the book is built; report claims are shown, never asserted. "
                f"The {m} gate claims decided by an interval or a test share a family-wise error of 5 % "
                f"(Bonferroni: each interval at {100 * (1 - FWER / m):.4g} %, each sign test at one-sided "
                f"{FWER / (2 * m):.3g}); report claims use 95 % intervals. "
                if m else "\n\nGate claims are asserted when the book is built; report claims are shown, never "
                          "asserted; report claims use 95 % intervals. ")
        note += ("Margin: how many standard errors the interval clears its threshold by (negative: it does not). "
                 "P(flip): the predicted chance that a build at another base seed breaks the expectation "
                 "(elr.evidence.flip_probability).")
        return ("| claim | paper | statistic | estimate | seeds | verdict | expected | role | margin (SE) | P(flip) |\n"
                "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + note)

    def summary(self) -> str:
        """The chapter's verdicts in words (Markdown): what is confirmed, what is not, what is only reported."""
        groups: dict[str, list[str]] = {"confirmed": [], "not confirmed": [], "reported": []}
        for c in self.claims:
            words = _words(c)
            if c.role == "gate":
                groups["confirmed" if c.ok else "not confirmed"].append(f"{c.text} ({words})")
            else:
                groups["reported"].append(f"{c.text}: {words}")
        lines = []
        if groups["confirmed"]:
            lines.append("**Confirmed at this scale** (checked when the book is built): "
                         + "; ".join(groups["confirmed"]) + ".")
        if groups["not confirmed"]:
            lines.append("**Not confirmed in this build**: " + "; ".join(groups["not confirmed"]) + ".")
        if groups["reported"]:
            lines.append("**Reported, not asserted** (too close to call at this scale, or not yet confirmed at "
                         "three base seeds that did not set it): "
                         + "; ".join(groups["reported"]) + ".")
        return "\n\n".join(lines)

    # ------------------------------------------------------------- checking

    def record(self) -> dict[str, Any]:
        rows = []
        for p, c, flip in zip(self._pending, self.claims, self._flips):
            iv = c.interval
            rows.append({"id": c.id, "instance": p.instance, "text": c.text, "paper": c.paper, "kind": c.kind,
                         "statistic": c.statistic,
                         "estimate": iv.estimate, "low": iv.low, "high": iv.high, "n": iv.n, "method": iv.method,
                         "confidence": iv.confidence, "se": iv.se, "threshold": c.threshold,
                         "direction": c.direction, "verdict": c.verdict, "expect": c.expect, "ok": c.ok,
                         "role": c.role, "margin": c.margin, "p_flip": flip,
                         "sign": None if c.sign is None else [c.sign.wins, c.sign.n, c.sign.p_value],
                         "data": [list(map(float, d)) for d in c.data]})
        return {"chapter": self.chapter, "seed": self.seed, "family": self.family, "claims": rows}

    def save(self) -> Path:
        """Write the decided claims to ``<out_dir>/<chapter>.json`` (atomically)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{self.chapter}.json"
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_finite(self.record()), indent=1))
        tmp.replace(path)
        return path

    def check(self) -> None:
        """Save the record, then assert: every registered claim of the chapter was evaluated, and every gate
        claim meets its expectation. Report claims are never asserted."""
        self.save()
        seen = {p.entry.id for p in self._pending}
        missing = [k for k in self.entries if k not in seen]
        assert not missing, (f"claims registered for {self.chapter} that the chapter did not evaluate: "
                             f"{', '.join(missing)}")
        wrong = [f"{c.text} [{c.id}]: expected {c.expect}, measured {c.verdict} ({evidence.condition(c)}: "
                 f"{evidence.shown(c)}, {c.interval.n} seeds)" for c in self.claims if c.role == "gate" and not c.ok]
        assert not wrong, "gate claims whose verdict differs from the registry:\n  " + "\n  ".join(wrong)

    def finish(self, check_claims: bool) -> None:
        """A chapter's last step: :meth:`check` (save, then assert the gates) when ``check_claims``, else only
        :meth:`save`; then say which it was (the smoke test reads this line)."""
        if check_claims:
            self.check()
        else:
            self.save()
        print("every gate claim of this chapter has its registered verdict" if check_claims
              else "claims not checked at this profile")


def _pct(p: float) -> str:
    return "0" if p == 0 else "< 0.01 %" if p < 1e-4 else f"{100 * p:.2g} %"


def _words(c: evidence.Claim) -> str:
    shown = evidence.shown(c)
    if c.verdict == "holds":
        return f"holds, {shown}"
    if c.verdict == "fails":
        return f"does not hold, {shown}"
    return f"undecided at this number of seeds, {shown}"


def _finite(obj: Any) -> Any:
    """JSON without NaN/inf (they become null), so any reader can parse the records."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ----------------------------------------------------------- calibration


def read_records(directory: str | Path) -> dict[str, dict[str, Any]]:
    """The claims records (``<chapter>.json``) an executed build wrote, by chapter."""
    out = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the claims record {path}: {err}") from None
    return out


def calibrate(directories: Sequence[str | Path], registry: dict[str, Entry] | None = None) -> str:
    """A report (plain text) over the claims records of one or more builds: per claim and build, the verdict,
    whether it met the registry's expectation, the margin and P(flip) as that build decided it, and the sum of
    P(flip) over the registry's gate claims. ``elr claims --propose`` adds the roles a pilot allows."""
    reg = load() if registry is None else registry
    builds = [(Path(d), read_records(d)) for d in directories]
    lines = []
    totals = [0.0] * len(builds)
    for e in reg.values():
        for b, (d, recs) in enumerate(builds):
            rows = [r for r in recs.get(e.chapter, {}).get("claims", []) if r["id"] == e.id]
            for r in rows:
                if e.gate:
                    totals[b] += r.get("p_flip") or 0.0
                margin = r["margin"] if r.get("margin") is not None else float("nan")
                lines.append(f"{e.id:40s} {d.name[:14]:14s} {r['verdict']:12s} exp {r['expect']:9s} "
                             f"{'met' if r['ok'] else 'NOT met':7s} {e.role:6s} margin {margin:+7.1f} "
                             f"P(flip) {_pct(r.get('p_flip') or 0.0):>9s}  [{r['text'][:60]}]")
            if not rows:
                lines.append(f"{e.id:40s} {d.name[:14]:14s} not evaluated")
    for (d, _), t in zip(builds, totals):
        lines.append(f"sum of P(flip) over gate claims in {d}: {100 * t:.2f} % (must stay below "
                     f"{100 * MAX_FLIP_SUM:g} %)")
    return "\n".join(lines)


def registered_in_sources(notebooks: str | Path | None = None) -> dict[str, tuple[str, str]]:
    """Every claim id a chapter source evaluates, with its chapter and kind: ``{id: (chapter, kind)}``, read
    from calls ``claims.<kind>("<id>", ...)`` in ``notebooks/NN_*.py``."""
    import re

    pattern = re.compile(r"\bclaims\.(mean|paired|unpaired|sign|worst|exact)\(\s*[\"']([0-9]{2}\.[^\"']+)[\"']")
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(Path(notebooks or ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        for kind, claim_id in pattern.findall(path.read_text()):
            found[claim_id] = (path.stem, kind)
    return found


def _construct(e: Entry, text: str, data: Sequence[np.ndarray], confidence: float, method: str,
               expect: str) -> evidence.Claim:
    """The claim of kind ``e.kind`` on ``data`` (one array, or two to compare), decided at ``confidence``: the one
    mapping from a registry kind to the evidence.Claim constructor that the chapters and the records both use."""
    if e.kind == "mean":
        return evidence.Claim.level(text, data[0], e.threshold, e.direction, statistic=e.statistic,
                                    confidence=confidence, expect=expect, method=method)
    if e.kind in ("paired", "unpaired"):
        paired = e.kind == "paired"
        if e.direction == "within":
            return evidence.Claim.within(text, *data, margin=e.threshold, paired=paired, confidence=confidence,
                                         expect=expect, method=method)
        return evidence.Claim.compare(text, *data, threshold=e.threshold, direction=e.direction, paired=paired,
                                      confidence=confidence, expect=expect, method=method)
    if e.kind == "sign":
        return evidence.Claim.sign_claim(text, *data, alpha=(1 - confidence) / 2, statistic=e.statistic,
                                         expect=expect)
    if e.kind == "worst":
        return evidence.Claim.worst(text, data[0], e.threshold, e.direction, statistic=e.statistic, expect=expect)
    return evidence.Claim.exact(text, float(data[0][0]), e.threshold, e.direction, statistic=e.statistic,
                                expect=expect)


def _reclaim(row: dict[str, Any], entry: Entry, confidence: float, method: str = "t") -> evidence.Claim:
    """A claim decided again from a record's per-seed data, as a gate: at ``confidence`` (its Bonferroni level)
    with Student's t."""
    data = [np.asarray(d, dtype=float) for d in row["data"]]
    if entry.kind == "paired":  # the record keeps the per-seed differences: compare them with zero
        data = [data[0], np.zeros_like(data[0])]
    return _construct(entry, row["text"], data, confidence, method, entry.expect_for(row.get("instance")))


def propose_roles(directory: str | Path, registry: dict[str, Entry] | None = None) -> dict[str, dict[str, Any]]:
    """From a pilot's claims records: the claims that may gate, by the rule of the module doc.

    Starts from every claim whose expectation is a verdict that the pilot met, decides each again at the
    Bonferroni level of its chapter's candidate gates (a gate's interval is wider than a report's), and drops
    any whose predicted flip probability (the worst over its instances) reaches MAX_FLIP, until the set is
    stable; then drops the least safe until the book's sum is below MAX_FLIP_SUM.
    Returns ``{id: {"gate": bool, "p_flip": float, "why": str, "instances": int}}``.
    """
    reg = load() if registry is None else registry
    records = read_records(directory)
    rows = {e.id: [r for r in records.get(e.chapter, {}).get("claims", []) if r["id"] == e.id] for e in reg.values()}
    out = {k: {"gate": False, "p_flip": float("nan"), "why": "not evaluated in the pilot", "instances": len(v)}
           for k, v in rows.items()}
    candidates = {k for k, e in reg.items() if rows[k] and e.expect in ("holds", "fails") and not e.expect_instances}
    for k in set(reg) - candidates:
        if rows[k]:
            out[k]["why"] = (f"expects {reg[k].expect!r}, not a definite verdict" if not reg[k].expect_instances
                             else "one expectation per instance: a report claim")
    while True:
        family: dict[str, int] = {}
        for k in candidates:
            if reg[k].kind in _FAMILY_KINDS:
                family[reg[k].chapter] = family.get(reg[k].chapter, 0) + len(rows[k])
        dropped = set()
        for k in candidates:
            e = reg[k]
            m = family.get(e.chapter, 1) if e.kind in _FAMILY_KINDS else 1
            confidence = 1 - FWER / m if e.kind in _FAMILY_KINDS else 0.95
            decided = [_reclaim(r, e, confidence) for r in rows[k]]
            flips = [evidence.flip_probability(c) if c.ok else 1.0 for c in decided]
            out[k]["p_flip"] = max(flips)
            if not all(c.ok for c in decided):
                out[k]["why"] = f"pilot verdict {[c.verdict for c in decided]}, expected {e.expect}"
                dropped.add(k)
            elif max(flips) >= MAX_FLIP:
                out[k]["why"] = f"P(flip) = {_pct(max(flips))} at the gate's level {confidence:.4g}"
                dropped.add(k)
            else:
                out[k]["why"] = f"P(flip) = {_pct(max(flips))} at level {confidence:.4g}"
        if not dropped:
            break
        candidates -= dropped
    while candidates and sum(out[k]["p_flip"] for k in candidates) >= MAX_FLIP_SUM:
        worst = max(candidates, key=lambda k: out[k]["p_flip"])
        out[worst]["why"] += "; dropped to keep the book's sum of P(flip) below 5 %"
        candidates.remove(worst)
    for k in candidates:
        out[k]["gate"] = True
    return out


def confirm(candidates: Sequence[str], directories: Sequence[str | Path],
            registry: dict[str, Entry] | None = None) -> dict[str, dict[str, Any]]:
    """Whether each candidate gate claim met its expectation in each confirmation build, decided as the gate it
    would be there: at the Bonferroni level of its chapter's candidates, with Student's t.

    ``directories`` hold the claims records of builds at base seeds that did not set the expectation (a build
    whose base seed is in a claim's ``set_by`` is refused for that claim). Returns ``{id: {"held": [seeds],
    "missed": [(seed, verdicts)], "missing": [directories without it], "gate": bool}}``, where ``gate`` means
    the claim held in every build that evaluated it, at ``MIN_CONFIRMATIONS`` or more distinct base seeds.
    """
    reg = load() if registry is None else registry
    unknown = [k for k in candidates if k not in reg]
    if unknown:
        raise RegistryError(f"unknown claim id(s) {unknown}")
    out = {k: {"held": [], "missed": [], "missing": [], "gate": False} for k in candidates}
    for d in directories:
        records = read_records(d)
        family: dict[str, int] = {}
        rows = {}
        for k in candidates:
            e = reg[k]
            rows[k] = [r for r in records.get(e.chapter, {}).get("claims", []) if r["id"] == k]
            if e.kind in _FAMILY_KINDS:
                family[e.chapter] = family.get(e.chapter, 0) + len(rows[k])
        for k in candidates:
            e = reg[k]
            if not rows[k]:
                out[k]["missing"].append(str(d))
                continue
            seed = records[e.chapter].get("seed")
            if seed is None or seed in e.set_by:
                raise ValueError(f"claim {k}: the build in {d} ran at base seed {seed}, which "
                                 + ("is not recorded" if seed is None else "set its expectation")
                                 + "; a confirmation needs a base seed of its own")
            m = family.get(e.chapter, 1) if e.kind in _FAMILY_KINDS else 1
            confidence = 1 - FWER / m if e.kind in _FAMILY_KINDS else 0.95
            decided = [_reclaim(r, e, confidence) for r in rows[k]]
            if all(c.ok for c in decided):
                out[k]["held"].append(int(seed))
            else:
                out[k]["missed"].append((int(seed), [c.verdict for c in decided]))
    for k, o in out.items():
        o["gate"] = not o["missed"] and len(set(o["held"])) >= MIN_CONFIRMATIONS
    return out

"""elr.claims: the registry of measured claims, its rules, and that chapters and registry agree."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from elr import book, claims, evidence

ENTRY = dict(id="99.a", chapter="99_demo", paper="ours", text="A beats B", kind="paired", statistic="A − B",
             threshold=0.0, direction=">", expect="holds", role="gate", set_by=[100], confirmed_at=[],
             pilot_p_flip=0.001, history=["registered"])


def _toml(entries: list[dict]) -> str:
    def value(v):
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {value(x)}" for k, x in v.items()) + "}"
        return repr(v)
    return "\n".join("[[claim]]\n" + "\n".join(f"{k} = {value(v)}" for k, v in e.items()) + "\n" for e in entries)


def _registry(tmp_path, entries):
    path = tmp_path / "claims.toml"
    path.write_text(_toml(entries))
    return claims.load(path)


# ------------------------------------------------------------------ the registry file


def test_the_books_registry_loads_and_every_gate_claim_expects_a_verdict():
    reg = claims.load()
    assert reg, "notebooks/claims.toml registers no claim"
    for e in reg.values():
        assert e.chapter in book.chapters(), e.id
        if e.gate:
            assert e.expect in ("holds", "fails"), e.id


def test_every_claim_a_chapter_evaluates_is_registered_and_every_registered_claim_is_evaluated():
    reg = claims.load()
    used = claims.registered_in_sources()
    assert sorted(set(used) - set(reg)) == [], "claims evaluated by a chapter but not registered"
    assert sorted(set(reg) - set(used)) == [], "registered claims no chapter evaluates"
    for claim_id, (chapter, kind) in used.items():
        assert reg[claim_id].chapter == chapter, claim_id
        assert reg[claim_id].kind == kind, claim_id


def test_no_gate_expectation_was_set_by_a_seed_a_build_uses():
    """A gate claim's expectation comes from a pilot at base seeds of its own (100 and up, never the default
    build's 0, the robustness builds' or CI's 10000-99999), and it was confirmed at other seeds; a report claim
    records honestly where its expectation came from (set_by), whatever that was."""
    for e in claims.load().values():
        assert not set(e.set_by) & set(e.confirmed_at), e.id
        if e.gate:
            assert e.set_by, f"{e.id}: a gate claim needs the pilot seeds that set it"
            bad = [s for s in e.set_by if s in book.CONFIRMATION_SEEDS or 10000 <= s < 100000 or s < 100]
            assert not bad, f"{e.id}: expectation set by build seeds {bad}"


def test_the_gate_claims_of_the_book_meet_the_flip_budget_of_their_pilot():
    """Each gate claim's pilot predicted a flip probability below 0.5 %, the book's sum stays below 5 %, and it
    held at three base seeds that never set it (elr.claims.MAX_FLIP, MAX_FLIP_SUM, MIN_CONFIRMATIONS)."""
    gates = [e for e in claims.load().values() if e.gate]
    for e in gates:
        assert e.pilot_p_flip < claims.MAX_FLIP, e.id
        assert len(set(e.confirmed_at)) >= claims.MIN_CONFIRMATIONS, e.id
    assert sum(e.pilot_p_flip for e in gates) < claims.MAX_FLIP_SUM


@pytest.mark.parametrize("change, message", [
    (dict(kind="bootstrap"), "kind must be one of"),
    (dict(role="maybe"), "role must be one of"),
    (dict(expect="not fails"), "a gate claim must expect 'holds' or 'fails'"),
    (dict(id="12.a"), "must start with its chapter's number"),
    (dict(history=[]), "history needs at least"),
    (dict(threshold="0"), "threshold must be"),
    (dict(direction="within", threshold=0.0), "'within' needs a threshold > 0"),
    (dict(pilot_p_flip="low"), "pilot_p_flip must be"),
])
def test_a_malformed_entry_is_refused_with_its_id_and_field(tmp_path, change, message):
    with pytest.raises(claims.RegistryError, match=message):
        _registry(tmp_path, [dict(ENTRY, **change)])


def test_missing_unknown_and_duplicate_entries_are_refused(tmp_path):
    with pytest.raises(claims.RegistryError, match="missing history"):
        _registry(tmp_path, [{k: v for k, v in ENTRY.items() if k != "history"}])
    with pytest.raises(claims.RegistryError, match="unknown colour"):
        _registry(tmp_path, [dict(ENTRY, colour="red")])
    with pytest.raises(claims.RegistryError, match="registered twice"):
        _registry(tmp_path, [ENTRY, ENTRY])
    with pytest.raises(claims.RegistryError, match="a gate claim needs pilot_p_flip"):
        _registry(tmp_path, [{k: v for k, v in ENTRY.items() if k != "pilot_p_flip"}])


# ------------------------------------------------------------------ a chapter's claims


def test_a_chapter_takes_text_and_threshold_from_the_registry_and_asserts_only_gates(tmp_path):
    reg = _registry(tmp_path, [ENTRY, dict(ENTRY, id="99.b", text="B beats A", role="report", expect="not fails")])
    ch = claims.Chapter("99_demo", seed=0, registry=reg, out_dir=tmp_path / "out")
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.05, 6)
    ch.paired("99.a", a, a - 0.5)
    ch.paired("99.b", a - 0.5, a)           # fails, but it is a report claim: never asserted
    ch.check()
    c = ch.get("99.a")
    assert c.text == "A beats B" and c.verdict == "holds" and c.role == "gate"
    assert ch.get("99.b").verdict == "fails"
    record = json.loads((tmp_path / "out" / "99_demo.json").read_text())
    assert [r["id"] for r in record["claims"]] == ["99.a", "99.b"] and record["family"] == 1
    table = ch.table()
    assert "| gate |" in table and "| report |" in table and "Bonferroni" in table and "P(flip)" in table
    assert "Confirmed at this scale" in ch.summary() and "Reported, not asserted" in ch.summary()


def test_a_failing_gate_claim_fails_the_check_and_names_itself(tmp_path):
    reg = _registry(tmp_path, [ENTRY])
    ch = claims.Chapter("99_demo", registry=reg, out_dir=tmp_path)
    a = np.linspace(0.0, 1.0, 6)
    ch.paired("99.a", a, a + 0.5)
    with pytest.raises(AssertionError, match=r"A beats B \[99.a\]: expected holds, measured fails"):
        ch.check()
    msg = book.failure_message("AssertionError", "gate claims whose verdict differs from the registry:\n  A beats "
                               f"B [99.a]: expected holds, measured fails ({book.ROOT}/x)")
    assert str(book.ROOT) not in msg and msg.splitlines()[-1].startswith("- A beats B")


def test_a_claim_the_registry_lacks_or_a_registered_claim_left_out_fails(tmp_path):
    reg = _registry(tmp_path, [ENTRY, dict(ENTRY, id="99.b")])
    ch = claims.Chapter("99_demo", registry=reg, out_dir=tmp_path)
    with pytest.raises(claims.RegistryError, match="does not register"):
        ch.paired("99.zzz", [1, 2], [0, 1])
    with pytest.raises(claims.RegistryError, match="registered as kind 'paired' but evaluated as 'mean'"):
        ch.mean("99.a", [1, 2])
    ch.paired("99.a", [1, 2, 3, 4, 5], [0, 1, 2, 3, 4.5])
    with pytest.raises(AssertionError, match="did not evaluate: 99.b"):
        ch.check()


def test_gate_claims_share_a_bonferroni_family_and_report_claims_keep_95_percent(tmp_path):
    entries = [dict(ENTRY, id=f"99.g{i}") for i in range(4)] + [
        dict(ENTRY, id="99.w", kind="worst", direction="<", threshold=1.0),
        dict(ENTRY, id="99.r", role="report")]
    ch = claims.Chapter("99_demo", registry=_registry(tmp_path, entries), out_dir=tmp_path)
    rng = np.random.default_rng(1)
    for i in range(4):
        x, y = rng.normal(1.0, 0.3, 6), rng.normal(0.0, 0.3, 6)
        ch.paired(f"99.g{i}", x, y)
    ch.worst("99.w", [0.1, 0.2])
    ch.paired("99.r", x, y)
    assert ch.family == 4
    levels = {c.id: c.interval.confidence for c in ch.claims}
    assert all(math.isclose(levels[f"99.g{i}"], 1 - 0.05 / 4) for i in range(4))
    assert levels["99.r"] == 0.95 and ch.get("99.w").interval.method == "worst seed"
    wide, narrow = ch.get("99.g3").interval, ch.get("99.r").interval   # the same data, two levels
    assert wide.high - wide.low > narrow.high - narrow.low


def test_templated_claims_carry_their_instance(tmp_path):
    reg = _registry(tmp_path, [dict(ENTRY, text="{instance}: A beats B", kind="worst", direction="<",
                                    threshold=1.0)])
    ch = claims.Chapter("99_demo", registry=reg, out_dir=tmp_path)
    ch.worst("99.a", [0.1, 0.5], instance="λ = 0.1")
    ch.worst("99.a", [0.1, 1.5], instance="λ = 0.2")
    assert [c.text for c in ch.claims] == ["λ = 0.1: A beats B", "λ = 0.2: A beats B"]
    assert [c.verdict for c in ch.claims] == ["holds", "fails"]
    with pytest.raises(RuntimeError, match="after the chapter's claims were decided"):
        ch.worst("99.a", [0.1], instance="λ = 0.4")


def test_a_report_claim_may_expect_each_instance_its_own_verdict(tmp_path):
    per = dict(ENTRY, text="{instance}: A above 0.5", kind="mean", threshold=0.5, role="report",
               expect="not fails", expect_instances={"deep": "fails"})
    del per["pilot_p_flip"]
    reg = _registry(tmp_path, [per])
    ch = claims.Chapter("99_demo", seed=100, registry=reg, out_dir=tmp_path / "build")
    ch.mean("99.a", [0.9, 0.92, 0.91, 0.93, 0.9], instance="shallow")
    ch.mean("99.a", [0.1, 0.12, 0.09, 0.11, 0.1], instance="deep")
    assert [(c.verdict, c.expect, c.ok) for c in ch.claims] == [("holds", "not fails", True), ("fails", "fails", True)]
    ch.save()
    rows = claims.read_records(tmp_path / "build")["99_demo"]["claims"]
    assert [(r["instance"], r["expect"]) for r in rows] == [("shallow", "not fails"), ("deep", "fails")]
    assert claims.calibrate([tmp_path / "build"], reg).count(" met ") == 2
    # the same data under one expectation for both instances: the deep one is not met
    one = _registry(tmp_path, [{k: v for k, v in per.items() if k != "expect_instances"}])
    again = claims.Chapter("99_demo", seed=100, registry=one, out_dir=tmp_path / "again")
    again.mean("99.a", [0.9, 0.92, 0.91, 0.93, 0.9], instance="shallow")
    again.mean("99.a", [0.1, 0.12, 0.09, 0.11, 0.1], instance="deep")
    assert [c.ok for c in again.claims] == [True, False]


@pytest.mark.parametrize("change, message", [
    (dict(role="gate", expect="holds", pilot_p_flip=0.001), "a gate claim has one expectation"),
    (dict(expect_instances={"deep": "maybe"}), "expect_instances values must be one of"),
])
def test_expectations_per_instance_are_checked(tmp_path, change, message):
    per = {**ENTRY, "role": "report", "expect": "not fails", "expect_instances": {"deep": "fails"}, **change}
    with pytest.raises(claims.RegistryError, match=message):
        _registry(tmp_path, [per])


def test_an_instance_the_registry_does_not_list_takes_the_claims_expectation(tmp_path):
    """A reader's parameters may evaluate other instances (other depths) than the pilot's: they are compared
    with the claim's own expectation, and the listed names that are not evaluated do no harm."""
    reg = _registry(tmp_path, [dict(ENTRY, role="report", expect="not fails", expect_instances={"deep": "fails"})])
    ch = claims.Chapter("99_demo", registry=reg, out_dir=tmp_path)
    ch.paired("99.a", [1.0, 1.1, 0.9, 1.05, 0.95], [0.0] * 5, instance="shallow")
    assert [(c.expect, c.verdict) for c in ch.claims] == [("not fails", "holds")]


def test_calibration_reports_each_build_and_the_gate_budget(tmp_path):
    reg = _registry(tmp_path, [ENTRY, dict(ENTRY, id="99.b", role="report", expect="holds")])
    ch = claims.Chapter("99_demo", seed=100, registry=reg, out_dir=tmp_path / "pilot")
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, 5)
    ch.paired("99.a", x + 10, x)
    ch.paired("99.b", x - 1.5, x + rng.normal(0, 1.0, 5))
    ch.save()
    report = claims.calibrate([tmp_path / "pilot"], reg)
    lines = {line.split()[0]: line for line in report.splitlines() if line.startswith("99.")}
    assert " met " in lines["99.a"] and "NOT met" in lines["99.b"]
    assert "sum of P(flip) over gate claims" in report


def test_roles_are_proposed_at_the_gates_own_level_and_within_the_flip_budget(tmp_path):
    entries = [dict(ENTRY, id="99.far", role="report"), dict(ENTRY, id="99.near", role="report"),
               dict(ENTRY, id="99.vague", role="report", expect="not fails")]
    reg = _registry(tmp_path, entries)
    ch = claims.Chapter("99_demo", seed=100, registry=reg, out_dir=tmp_path / "pilot")
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, 6)
    ch.paired("99.far", x + 20, x)
    ch.paired("99.near", x + 2.5, x + rng.normal(0.0, 1.0, 6))
    ch.paired("99.vague", x + 20, x)
    ch.save()
    proposal = claims.propose_roles(tmp_path / "pilot", reg)
    assert proposal["99.far"]["gate"] and proposal["99.far"]["p_flip"] < claims.MAX_FLIP
    assert not proposal["99.near"]["gate"] and "P(flip)" in proposal["99.near"]["why"]
    assert not proposal["99.vague"]["gate"] and "not a definite verdict" in proposal["99.vague"]["why"]


def _build(tmp_path, reg, seed, shift, name):
    """One build of the demo chapter at a base seed: claim 99.a measures a paired gap of ``shift``."""
    ch = claims.Chapter("99_demo", seed=seed, registry=reg, out_dir=tmp_path / name)
    x = np.random.default_rng(seed).normal(0.0, 1.0, 6)
    ch.paired("99.a", x + shift, x + np.random.default_rng(seed + 1).normal(0.0, 0.3, 6))
    ch.save()
    return tmp_path / name


def test_a_candidate_gates_only_after_holding_at_three_base_seeds_of_its_own(tmp_path):
    reg = _registry(tmp_path, [dict(ENTRY, role="report", set_by=[100])])
    good = [_build(tmp_path, reg, s, 10.0, f"b{s}") for s in (2000, 3000, 4000)]
    done = claims.confirm(["99.a"], good, reg)["99.a"]
    assert done["gate"] and sorted(done["held"]) == [2000, 3000, 4000] and not done["missed"]
    # two builds are not enough
    assert not claims.confirm(["99.a"], good[:2], reg)["99.a"]["gate"]
    # one build where the gap is gone: the claim missed there, and it may not gate however many others held
    bad = _build(tmp_path, reg, 5000, -10.0, "b5000")
    done = claims.confirm(["99.a"], good + [bad], reg)["99.a"]
    assert not done["gate"] and done["missed"] == [(5000, ["fails"])]
    # the pilot's own base seed confirms nothing
    pilot = _build(tmp_path, reg, 100, 10.0, "pilot")
    with pytest.raises(ValueError, match="base seed 100, which set its expectation"):
        claims.confirm(["99.a"], good + [pilot], reg)
    # a build that did not evaluate the claim is named, not counted
    (tmp_path / "empty").mkdir()
    done = claims.confirm(["99.a"], good[:2] + [tmp_path / "empty"], reg)["99.a"]
    assert not done["gate"] and done["missing"] == [str(tmp_path / "empty")]

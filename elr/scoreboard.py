"""The scoreboard of the paper: every claim of the paper, where the book tests it, and this build's verdict.

``notebooks/paper.toml`` lists the claims of the paper (its figures, Table 1, the statements of Section 3
and the text claims of Section 4), each with the chapters and registry claims (:mod:`elr.claims`) that test
it, at what scale, or why the book does not test it. :func:`render` turns that file, the registry and the
records of a build (``book/chapters/claims/<chapter>.json`` from :meth:`elr.claims.Chapter.save`, and the run
record ``book/chapters/run_record.json`` of :mod:`elr.book`) into the Markdown page ``book/scoreboard.md``.
The verdicts come from the records only, in words a reader need not decode:

- a registered claim: *confirmed* (its interval or test clears the threshold), *not confirmed at this
  scale* (it clears it the other way), *undecided at this number of seeds*; a report claim's words start
  with *reported:*, because the build never asserts it;
- a statement that a chapter derives and asserts (no registry claim): *confirmed* when every chapter
  that tests it passed in this build, *confirmed once corrected* when the book also corrects the paper,
  *not confirmed in this build* when one failed;
- *not yet built* when the chapter has no record yet, or only a smoke build (which checks that the code
  runs, not the claims); *not tested here* with the paper file's reason.
"""
from __future__ import annotations

import json
import math
import os
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elr import claims as registry_mod

ROOT = Path(os.environ.get("ELR_ROOT", Path(__file__).resolve().parent.parent))
PAPER = ROOT / "notebooks" / "paper.toml"
CLAIMS_DIR = ROOT / "book" / "chapters" / "claims"
RUN_RECORD = ROOT / "book" / "chapters" / "run_record.json"
OUT = ROOT / "book" / "scoreboard.md"
_FIELDS = {"id": str, "ref": str, "section": str, "paper": str, "paper_setting": str, "chapters": list,
           "claims": list, "against": list, "context": list, "prove": list, "scale": str, "correction": str,
           "untested": str}

CONFIRMED = "confirmed"
NOT_CONFIRMED = "not confirmed at this scale"
UNDECIDED = "undecided at this number of seeds"
NOT_BUILT = "not yet built"
CORRECTED = "confirmed once corrected"
_WORDS = {"holds": CONFIRMED, "fails": NOT_CONFIRMED, "inconclusive": UNDECIDED}
_REPORT_WORDS = {"holds": "reported: holds", "fails": "reported: does not hold", "inconclusive": "reported: undecided"}


class PaperFileError(ValueError):
    """An item of notebooks/paper.toml that is missing a field or contradicts itself."""


@dataclass(frozen=True)
class Item:
    """One claim of the paper (see notebooks/paper.toml for the fields)."""

    id: str
    ref: str
    section: str
    paper: str
    paper_setting: str
    chapters: tuple[str, ...]
    claims: tuple[str, ...]
    against: tuple[str, ...]
    context: tuple[str, ...]
    prove: tuple[str, ...]
    scale: str
    correction: str
    untested: str


def load_paper(path: str | Path | None = None) -> list[Item]:
    """The items of the paper file, in file order; a malformed item raises PaperFileError naming it."""
    path = Path(path or PAPER)
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    if set(raw) - {"item"}:
        raise PaperFileError(f"{path}: unknown top-level keys {sorted(set(raw) - {'item'})}; "
                             "every entry is an [[item]] table")
    items, seen = [], set()
    for i, it in enumerate(raw.get("item", [])):
        where = f"{path} (item {i + 1}, {it.get('id', '?')!r})"
        missing = [k for k in _FIELDS if k not in it]
        unknown = [k for k in it if k not in _FIELDS]
        if missing or unknown:
            raise PaperFileError(f"{where}: " + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                                          + ([f"unknown {', '.join(unknown)}"] if unknown else [])))
        for key, typ in _FIELDS.items():
            if not isinstance(it[key], typ):
                raise PaperFileError(f"{where}: {key} must be {typ.__name__}, got {it[key]!r}")
        if it["id"] in seen:
            raise PaperFileError(f"{where}: id {it['id']!r} appears twice")
        seen.add(it["id"])
        measured = it["claims"] + it["against"] + it["context"]
        if it["untested"] and (it["chapters"] or measured):
            raise PaperFileError(f"{where}: an untested item names no chapters or claims; empty `untested` "
                                 "if a chapter tests it")
        if not it["untested"] and not it["chapters"]:
            raise PaperFileError(f"{where}: name the chapters that test it, or say in `untested` why none does")
        if not it["untested"] and not it["scale"]:
            raise PaperFileError(f"{where}: a tested item says at what scale (`scale`)")
        if it["context"] and not (it["claims"] or it["against"]):
            raise PaperFileError(f"{where}: context claims are shown beside the claims that decide the item; "
                                 "move them to `claims` or `against`")
        twice = [c for c in set(measured) if measured.count(c) > 1]
        if twice:
            raise PaperFileError(f"{where}: {twice} listed more than once among claims, against and context")
        stray = [c for c in measured if c[:2] not in {ch[:2] for ch in it["chapters"]}]
        if stray:
            raise PaperFileError(f"{where}: claims {stray} belong to no chapter listed in `chapters`")
        items.append(Item(it["id"], it["ref"], it["section"], it["paper"], it["paper_setting"],
                          tuple(it["chapters"]), tuple(it["claims"]), tuple(it["against"]), tuple(it["context"]),
                          tuple(it["prove"]), it["scale"],
                          it["correction"], it["untested"]))
    return items


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.3g}"


def _measured(row: dict[str, Any]) -> str:
    """The statistic of one record row in plain words: estimate and interval, or a sign test's count."""
    if row.get("sign"):
        wins, n, p = row["sign"]
        return f"{wins} of {n} seeds, p = {p:.2g}"
    est, low, high, n = row.get("estimate"), row.get("low"), row.get("high"), row.get("n")
    kind = row.get("kind")
    if kind in ("worst", "exact") or low is None or high is None or low == high:
        what = "worst seed" if kind == "worst" else "value"
        return f"{what} {_num(est)}" + (f", {n} seeds" if n and kind == "worst" else "")
    return f"{_num(est)} [{_num(low)}, {_num(high)}], {n} seeds"


def claim_words(row: dict[str, Any], against: bool = False) -> str:
    """The verdict of one record row for the paper's claim, in words: confirmed / not confirmed at this scale /
    undecided …, with 'reported: …' for a report claim (shown, never asserted). ``against``: the row states
    the opposite of the paper's claim, so its holding contradicts the paper."""
    verdict = row["verdict"]
    if verdict not in _WORDS:
        raise ValueError(f"claim {row.get('id')!r}: verdict {verdict!r} is not one of {sorted(_WORDS)}")
    if against:
        verdict = {"holds": "fails", "fails": "holds"}.get(verdict, verdict)
    return (_REPORT_WORDS if row.get("role") == "report" else _WORDS)[verdict]


def _plain(row: dict[str, Any]) -> str:
    """What the measurement says about the registry claim's own text, in words."""
    return {"holds": "holds", "fails": "does not hold", "inconclusive": "undecided"}[row["verdict"]]


def _chapter_state(chapter: str, run_record: dict[str, dict]) -> str | None:
    """None when the chapter was built at a checking profile, else why its verdicts do not count yet."""
    entry = run_record.get(chapter)
    if entry is None:
        return None
    if entry.get("profile") == "smoke":
        return "only a smoke build, which checks that the code runs, not the claims"
    return None


def verdict(item: Item, registry: dict[str, registry_mod.Entry], records: dict[str, dict],
            run_record: dict[str, dict]) -> tuple[str, list[str]]:
    """The verdict of one item in words, and one line per claim (or chapter) it rests on."""
    if item.untested:
        return f"not tested here ({item.untested})", []
    if item.claims or item.against:
        words, lines = [], []
        for claim_id, role in ([(c, "for") for c in item.claims] + [(c, "against") for c in item.against]
                               + [(c, "context") for c in item.context]):
            entry = registry.get(claim_id)
            if entry is None:
                raise registry_mod.RegistryError(
                    f"{PAPER.name}: item {item.id!r} names claim {claim_id!r}, which {registry_mod.REGISTRY.name} "
                    "does not register; fix the id in notebooks/paper.toml or register the claim")
            why_not = _chapter_state(entry.chapter, run_record)
            rows = [r for r in records.get(entry.chapter, {}).get("claims", []) if r.get("id") == claim_id]
            lead = {"for": "", "against": "against the paper: ", "context": "the book also measures: "}[role]
            if why_not or not rows:
                reason = why_not or ("the chapter has not been built" if entry.chapter not in records
                                     else "the chapter's record does not evaluate it")
                if role != "context":
                    words.append(NOT_BUILT)
                lines.append(f"{lead}{NOT_BUILT} ({reason}): {entry.text} [{claim_id}]")
                continue
            for r in rows:
                if role == "context":
                    lines.append(f"{lead}{r['text']}: {_plain(r)} ({_measured(r)}) [{claim_id}]")
                    continue
                w = claim_words(r, against=role == "against")
                words.append(w)
                # a claim that states the paper's own claim needs no second verdict word; one against it does
                said = f": {_plain(r)}" if role == "against" else ""
                lines.append(f"{w}: {lead}{r['text']}{said} ({_measured(r)}) [{claim_id}]")
        return _summarise(words), lines
    words, lines = [], []
    for chapter in item.chapters:
        entry = run_record.get(chapter)
        why_not = _chapter_state(chapter, run_record)
        if entry is None or why_not:
            words.append(NOT_BUILT)
            lines.append(f"{NOT_BUILT}: {chapter} ({why_not or 'the chapter has not been built'})")
        elif entry.get("status") == "ok":
            words.append(CORRECTED if item.correction else CONFIRMED)
            lines.append(f"{CONFIRMED}: {chapter} derives and asserts it; it passed in this build")
        else:
            words.append("not confirmed in this build")
            lines.append(f"not confirmed in this build: {chapter} failed (see its banner)")
    if item.correction:
        lines.append(f"correction: {item.correction}")
    return _summarise(words), lines


def _summarise(words: list[str]) -> str:
    counts = Counter(words)
    if len(counts) == 1:
        return words[0]
    return ", ".join(f"{n} {w}" for w, n in counts.items())


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _where(item: Item) -> str:
    if item.untested:
        return "—"
    docs = ", ".join(f"{{doc}}`chapters/{c}`" for c in item.chapters)
    prove = f"; `elr prove`: {', '.join(item.prove)}" if item.prove else ""
    return f"{docs}{prove}<br>*{_esc(item.scale)}*"


def _load_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"cannot read the run record {path}: {err}") from None


def render(paper: str | Path | None = None, registry: str | Path | dict | None = None,
           records_dir: str | Path | None = None, run_record: str | Path | None = None) -> str:
    """The scoreboard page (MyST Markdown) from the paper file, the registry and a build's records.

    ``registry`` is a path to a claims registry or the dict :func:`elr.claims.load` returns (default: the
    book's). ``records_dir`` holds the chapters' claims records, ``run_record`` the build's run record; a
    missing directory or file means that nothing is built yet.
    """
    items = load_paper(paper)
    reg = registry if isinstance(registry, dict) else registry_mod.load(registry)
    rec_dir = Path(records_dir or CLAIMS_DIR)
    records = registry_mod.read_records(rec_dir) if rec_dir.is_dir() else {}
    runs = _load_json(Path(run_record or RUN_RECORD))
    rows, tally = [], Counter()
    for item in items:
        summary, lines = verdict(item, reg, records, runs)
        key = ("not tested here" if item.untested else
               NOT_BUILT if summary == NOT_BUILT else
               CONFIRMED if summary in (CONFIRMED, CORRECTED) else
               "reported only" if all(w.startswith("reported:") for w in summary.split(", ")) else
               NOT_CONFIRMED if summary == NOT_CONFIRMED else "mixed")
        tally[key] += 1
        detail = "".join(f"<br>• {_esc(line)}" for line in lines) if len(lines) > 1 or item.claims or item.against \
            else ""
        rows.append(f"| **{_esc(item.ref)}** (§{_esc(item.section)}) | {_esc(item.paper)}<br>*Paper: "
                    f"{_esc(item.paper_setting)}* | {_where(item)} | **{_esc(summary)}**{detail} |")
    order = [CONFIRMED, "mixed", NOT_CONFIRMED, "reported only", NOT_BUILT, "not tested here"]
    counts = "; ".join(f"{tally[k]} {k}" for k in order if tally[k])
    return (
        "# Scoreboard of the paper\n\n"
        "Every claim of {cite}`mehmeti2024weight` — its Figures 1–7, Table 1, the statements of Section 3 "
        "and the claims of Section 4 — with where this book tests it, at what scale, and what this build "
        "found. The list lives in `notebooks/paper.toml`; the verdicts come from the records the chapters "
        "wrote when this book was built, and each measured claim is registered, with its threshold and "
        "expected verdict, in `notebooks/claims.toml` before its data.\n\n"
        "**How to read a verdict.** *Confirmed*: the measurement's interval (or test) clears the claim's "
        "threshold in the claimed direction, or the chapter derives the statement and asserts it. *Not "
        "confirmed at this scale*: it clears the threshold the other way; the paper's setting is larger "
        "(the scale is given beside each claim). *Undecided*: the interval straddles the threshold at this "
        "number of seeds. *Reported*: a claim too close to call to be asserted when the book is built; its "
        "verdict is shown for information. *Not yet built*: the chapter has not been executed at a profile "
        "that checks its claims. *Not tested here*: with the reason.\n\n"
        f"**This build:** {len(items)} claims of the paper: {counts}. Figure and table numbers are those of "
        "the ICML 2024 version.\n\n"
        "| paper | claim | where the book tests it, at what scale | verdict |\n|---|---|---|---|\n"
        + "\n".join(rows) + "\n")


def write(out: str | Path | None = None, **kwargs: Any) -> Path:
    """Render the scoreboard (:func:`render`, same keyword arguments) to ``out`` (default
    ``book/scoreboard.md``), atomically."""
    out = Path(out or OUT)
    text = render(**kwargs)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out

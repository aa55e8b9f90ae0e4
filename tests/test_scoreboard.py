"""The scoreboard of the paper (elr.scoreboard): every figure and table listed, verdicts from the records."""
import json
import re

import pytest

from elr import claims, scoreboard

PAPER_REFS = [f"Figure {i}" for i in range(1, 8)] + ["Table 1"]
STATEMENTS = ["Proposition 3.1", "Theorem 3.4", "Theorem 3.5", "Theorem 3.6", "Proposition 3.7", "Proposition 3.9",
              "Proposition A.1", "Corollary 3.10"]


def _registry(tmp_path, items):
    """A registry holding every claim id the paper file names (the book's own is written elsewhere)."""
    chapter_of = {c[:2]: c for it in items for c in it.chapters}
    blocks = {}
    for it in items:
        for cid in it.claims + it.against + it.context:
            blocks.setdefault(cid, f'[[claim]]\nid = "{cid}"\nchapter = "{chapter_of[cid[:2]]}"\npaper = "{it.ref}"\n'
                          f'text = "text of {cid}"\nkind = "mean"\nstatistic = "mean"\nthreshold = 0.0\n'
                          f'direction = ">"\nexpect = "holds"\nrole = "gate"\nset_by = [100]\n'
                          f'confirmed_at = []\npilot_p_flip = 0.001\nhistory = ["registered for the test"]\n')
    path = tmp_path / "claims.toml"
    path.write_text("\n".join(blocks.values()))
    return claims.load(path)


def _row(cid, verdict="holds", role="gate", estimate=0.5, low=0.2, high=0.8):
    return {"id": cid, "text": f"measured {cid}", "paper": "", "kind": "mean", "statistic": "mean",
            "estimate": estimate, "low": low, "high": high, "n": 6, "method": "t", "confidence": 0.95, "se": 0.1,
            "threshold": 0.0, "direction": ">", "verdict": verdict, "expect": "holds", "ok": verdict == "holds",
            "role": role, "margin": 2.0, "p_flip": 0.001, "sign": None, "data": [[0.5] * 6]}


def _write_records(directory, chapter, rows):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{chapter}.json").write_text(json.dumps({"chapter": chapter, "seed": 0, "family": 1,
                                                           "claims": rows}))


def _page_row(page, item_text):
    """The table row of the page that holds an item's claim text."""
    rows = [line for line in page.splitlines() if line.startswith("|") and item_text in line]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def setup(tmp_path):
    items = scoreboard.load_paper()
    reg = _registry(tmp_path, items)
    return items, reg, tmp_path / "claims", tmp_path / "run_record.json"


def test_paper_file_lists_every_figure_table_and_statement(setup):
    items, reg, rec, run = setup
    refs = {it.ref for it in items}
    for ref in PAPER_REFS + STATEMENTS:
        assert ref in refs, f"notebooks/paper.toml does not list {ref}"
    page = scoreboard.render(registry=reg, records_dir=rec, run_record=run)
    for ref in PAPER_REFS + STATEMENTS:
        assert f"**{ref}**" in page, f"the scoreboard does not show {ref}"
    assert page.count("\n| **") == len(items)


def test_untested_items_say_why(setup):
    items, reg, rec, run = setup
    page = scoreboard.render(registry=reg, records_dir=rec, run_record=run)
    fig6 = next(it for it in items if it.ref == "Figure 6")
    assert fig6.untested and "CIFAR-100" in fig6.untested
    assert f"not tested here ({fig6.untested})" in _page_row(page, fig6.paper)


def test_verdict_comes_from_the_records(setup):
    items, reg, rec, run = setup
    fig2 = next(it for it in items if it.id == "fig2-real")
    chapter = fig2.chapters[0]
    # nothing built: the row says so
    assert "**not yet built**" in _page_row(scoreboard.render(registry=reg, records_dir=rec, run_record=run),
                                            fig2.paper)
    _write_records(rec, chapter, [_row(c) for c in fig2.claims])
    run.write_text(json.dumps({chapter: {"profile": "quick", "status": "ok", "seconds": 1.0}}))
    row = _page_row(scoreboard.render(registry=reg, records_dir=rec, run_record=run), fig2.paper)
    assert "**confirmed**" in row and "0.5 [0.2, 0.8], 6 seeds" in row
    # change one record: the page changes with it
    _write_records(rec, chapter, [_row(fig2.claims[0]), _row(fig2.claims[1], verdict="fails", low=-0.9, high=-0.1)])
    row = _page_row(scoreboard.render(registry=reg, records_dir=rec, run_record=run), fig2.paper)
    assert "**1 confirmed, 1 not confirmed at this scale**" in row
    assert f"not confirmed at this scale: measured {fig2.claims[1]}" in row
    # a report claim is never called confirmed
    _write_records(rec, chapter, [_row(c, verdict="inconclusive", role="report", low=-0.1) for c in fig2.claims])
    row = _page_row(scoreboard.render(registry=reg, records_dir=rec, run_record=run), fig2.paper)
    assert "**reported: undecided**" in row
    assert not re.search(r"\bnot holds\b|\bfails\b", row)


def test_a_claim_against_the_paper_counts_the_other_way(setup):
    items, reg, rec, run = setup
    item = next(it for it in items if it.against and it.context)
    chapter = item.chapters[0]
    rows = [_row(c) for c in item.against] + [_row(c, verdict="fails", low=-0.9, high=-0.1) for c in item.context]
    _write_records(rec, chapter, rows)
    run.write_text(json.dumps({chapter: {"profile": "quick", "status": "ok", "seconds": 1.0}}))
    row = _page_row(scoreboard.render(registry=reg, records_dir=rec, run_record=run), item.paper)
    # the opposite of the paper's claim holds: not confirmed; the context claims do not count
    assert "**not confirmed at this scale**" in row
    assert f"against the paper: measured {item.against[0]}: holds" in row
    assert f"the book also measures: measured {item.context[0]}: does not hold" in row
    _write_records(rec, chapter, [_row(c, verdict="fails", low=-0.9, high=-0.1) for c in item.against])
    row = _page_row(scoreboard.render(registry=reg, records_dir=rec, run_record=run), item.paper)
    assert "**confirmed**" in row


def test_smoke_build_does_not_count(setup):
    items, reg, rec, run = setup
    fig2 = next(it for it in items if it.id == "fig2-walk")
    chapter = fig2.chapters[0]
    _write_records(rec, chapter, [_row(c) for c in fig2.claims])
    run.write_text(json.dumps({chapter: {"profile": "smoke", "status": "ok", "seconds": 1.0}}))
    row = _page_row(scoreboard.render(registry=reg, records_dir=rec, run_record=run), fig2.paper)
    assert "**not yet built**" in row and "smoke" in row


def test_statements_take_the_chapter_status(setup):
    items, reg, rec, run = setup
    prop = next(it for it in items if it.ref == "Proposition 3.7")
    thm = next(it for it in items if it.ref == "Theorem 3.4")
    run.write_text(json.dumps({c: {"profile": "quick", "status": "ok", "seconds": 1.0}
                               for c in prop.chapters + thm.chapters}))
    page = scoreboard.render(registry=reg, records_dir=rec, run_record=run)
    assert "**confirmed**" in _page_row(page, prop.paper)
    assert "**confirmed once corrected**" in _page_row(page, thm.paper)
    assert f"correction: {thm.correction}" in _page_row(page, thm.paper)
    run.write_text(json.dumps({prop.chapters[0]: {"profile": "quick", "status": "failed", "seconds": 1.0}}))
    assert "**not confirmed in this build**" in _page_row(
        scoreboard.render(registry=reg, records_dir=rec, run_record=run), prop.paper)


def test_unknown_claim_id_is_refused(tmp_path, setup):
    items, reg, rec, run = setup
    missing = next(it for it in items if it.against).against[0]
    smaller = {k: v for k, v in reg.items() if k != missing}
    with pytest.raises(claims.RegistryError, match=re.escape(missing)):
        scoreboard.render(registry=smaller, records_dir=rec, run_record=run)


def test_paper_file_checks(tmp_path):
    bad = tmp_path / "paper.toml"
    base = ('[[item]]\nid = "x"\nref = "Figure 1"\nsection = "3"\npaper = "p"\npaper_setting = "s"\n'
            'chapters = {chapters}\nclaims = []\nagainst = []\ncontext = []\nprove = []\nscale = "{scale}"\ncorrection = ""\nuntested = "{why}"\n')
    bad.write_text(base.format(chapters="[]", scale="", why=""))
    with pytest.raises(scoreboard.PaperFileError, match="untested"):
        scoreboard.load_paper(bad)
    bad.write_text(base.format(chapters='["05_warmup"]', scale="", why="GPU"))
    with pytest.raises(scoreboard.PaperFileError, match="names no chapters"):
        scoreboard.load_paper(bad)
    bad.write_text(base.format(chapters='["05_warmup"]', scale="model", why="") + "extra = 1\n")
    with pytest.raises(scoreboard.PaperFileError, match="unknown extra"):
        scoreboard.load_paper(bad)


def test_paper_file_names_real_chapters_and_prove_statements():
    from elr import book, symbolic

    known = set(book.chapters())
    refs = {getattr(fn, "ref", None) for fn in symbolic.CHECKS}
    for it in scoreboard.load_paper():
        assert set(it.chapters) <= known, f"{it.id}: unknown chapters {set(it.chapters) - known}"
        assert set(it.prove) <= refs, f"{it.id}: unknown `elr prove` statements {set(it.prove) - refs}"


def test_paper_file_claims_are_registered():
    """Every registry id the paper file names is in the book's registry (once notebooks/claims.toml exists)."""
    if not claims.REGISTRY.exists():
        pytest.skip(f"{claims.REGISTRY} is not in this checkout yet")
    reg = claims.load()
    for it in scoreboard.load_paper():
        ids = set(it.claims + it.against + it.context)
        assert ids <= set(reg), f"{it.id}: not registered: {ids - set(reg)}"


def test_write_is_atomic_and_complete(tmp_path, setup):
    items, reg, rec, run = setup
    out = scoreboard.write(tmp_path / "scoreboard.md", registry=reg, records_dir=rec, run_record=run)
    assert out.read_text().startswith("# Scoreboard of the paper")
    assert not list(tmp_path.glob("*.tmp"))

"""elr.compute: the paper-profile plan counts each chapter's runs and converts FLOPs to hours as stated."""
import pytest

from elr import book, compute


def test_chapter_work_mirrors_the_chapters():
    v = book.resolve("14_weight_decay", "quick")
    (work,) = compute.chapter_work("14_weight_decay", v)
    assert work.runs == (len(v["grid"]) + 1) * v["n_seeds"] and work.steps == v["steps"] and work.model == v["model"]
    v = book.resolve("15_momentum", "paper")
    spread, eq = compute.chapter_work("15_momentum", v)
    assert spread.runs == len(v["lrs"]) * len(v["momenta"]) * v["spread_seeds"] and eq.runs == len(v["eq_grid"]) * v["n_seeds"]
    assert compute.chapter_work("16_stiff_ode", book.resolve("16_stiff_ode", "paper")) == []
    v = book.resolve("13_trainability", "quick")  # 4 protocols x 2 networks per depth, Table 1's fifth row once
    work = compute.chapter_work("13_trainability", v)
    assert sum(w.runs for w in work) == (8 * len(v["depths"]) + len(v["protocols"]) - 4) * v["n_seeds"]
    assert {w.model for w in work} == {f"{m}{d}" for m in ("bnrelu", "resmlp") for d in v["depths"]}


def test_plan_markdown_converts_flops_with_the_stated_rates():
    text = compute.plan_markdown("smoke", gpu_flops=2e12, cpu_flops=1e10, gpus=(1, 4))
    rows = {r["chapter"]: r for r in compute.plan("smoke", gpu_flops=2e12) if r["runs"]}
    assert "14_weight_decay" in rows and "| **total** |" in text
    r = rows["14_weight_decay"]
    assert r["gpu_hours"] == pytest.approx(r["pflops"] * 1e15 / 2e12 / 3600)
    assert f"{r['pflops'] * 1e15 / 1e10 / 3600:.3g}" in text  # CPU hours at the given throughput
    assert "200 times the throughput measured here" in text


def test_measured_throughput_is_positive_and_finite():
    flops = compute.measured_throughput(batch_size=8, reps=1)
    assert 1e6 < flops < 1e15


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_every_chapters_work_is_counted_with_its_seeds(profile):
    for chapter in book.chapters():
        values = book.resolve(chapter, profile)
        for work in compute.chapter_work(chapter, values):
            assert work.runs >= 1 and work.runs % values.get("n_seeds", 1) == 0, chapter

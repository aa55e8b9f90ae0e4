"""Seeds as the unit of evidence: sweep_seeds pairs runs by seed, a diverged run is counted, not dropped,
the robustness builds are isolated, and the plots and tables of seeds take what chapters give them."""
import json

import numpy as np
import pytest
import torch

from elr import book, evidence, measure, nets, plots, train

TINY = dict(model="bnrelu3", width=8, steps=4, batch_size=16, lr=0.1, log_every=1, eval_batches=1, flip=False)


def test_sweep_seeds_pairs_cases_by_seed(tmp_path):
    cases = {"a": train.TrainConfig(**TINY), "b": train.TrainConfig(**{**TINY, "lr": 0.2})}
    runs = train.sweep_seeds(cases, seed=7, n_seeds=3, root=tmp_path, workers=1)
    assert list(runs) == ["a", "b"] and all(len(v) == 3 for v in runs.values())
    for case in cases:
        assert [json.loads((r.run_dir / "config.json").read_text())["seed"] for r in runs[case]] == [7, 8, 9]
    # the same seed: the same initial weights in both cases (paired); another seed: other weights
    w = {(k, i): runs[k][i].records.model_state(0)[0] for k in cases for i in range(3)}
    assert np.allclose(w[("a", 0)], w[("b", 0)]) and not np.allclose(w[("a", 0)], w[("a", 1)])


def test_sweep_seeds_refuses_bad_counts_before_training(tmp_path):
    with pytest.raises(ValueError, match="n_seeds"):
        train.sweep_seeds({"a": train.TrainConfig(**TINY)}, 0, 0, root=tmp_path)
    with pytest.raises(ValueError, match="base seed"):
        train.sweep_seeds({"a": train.TrainConfig(**TINY)}, -1, 2, root=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_diverged_run_counts_as_what_the_chapter_says(tmp_path):
    run = train.run(train.TrainConfig(**{**TINY, "lr": 1e38, "steps": 6}), tmp_path)  # overflows float32
    assert run.status == "diverged"
    assert run.accuracy(diverged=0.1) == 0.1
    done = train.run(train.TrainConfig(**TINY), tmp_path)
    assert done.accuracy(diverged=0.1) == done.metrics["final"]["test_acc"]
    assert np.isfinite(done.mean_spread())


def test_elr_runs_moves_the_default_run_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ELR_RUNS", str(tmp_path / "elsewhere"))
    result = train.run(train.TrainConfig(**TINY))
    assert result.run_dir.parent == tmp_path / "elsewhere"


def test_compare_with_model_reads_a_run_against_eq5(tmp_path):
    cfg = train.TrainConfig(**{**TINY, "transform": "random_walk", "steps": 10})
    run = train.run(cfg, tmp_path)
    out = measure.compare_with_model(run.records, cfg.lr, cfg.steps)
    assert out["measured"].shape == out["predicted"].shape == (10, 3)
    # at step 0 the model starts from the measurement itself
    assert np.allclose(out["predicted"][0], out["measured"][0], rtol=1e-5)
    assert out["order_init"] == pytest.approx(out["measured"][0, 0] / out["measured"][0, -1])
    assert out["gap"] == pytest.approx(np.max(np.abs(out["s_meas"] - out["s_pred"])))


def test_not_holds_accepts_fails_and_inconclusive_only():
    high = evidence.Claim.level("x", [1.0, 1.1, 0.9, 1.05], 0.0, expect="not holds")
    assert high.verdict == "holds" and not high.ok
    for values in ([-1.0, -1.1, -0.9, -1.05], [-1.0, 1.0, -0.5, 0.7]):
        claim = evidence.Claim.level("x", values, 0.0, expect="not holds")
        assert claim.verdict in ("fails", "inconclusive") and claim.ok
    with pytest.raises(AssertionError, match="stated not holds, measured holds"):
        evidence.check([high])


def test_not_fails_accepts_holds_and_inconclusive_only():
    low = evidence.Claim.level("x", [1.0, 1.1, 0.9, 1.05], 2.0, "<", expect="not fails")
    assert low.verdict == "holds" and low.ok
    mixed = evidence.Claim.level("x", [1.5, 2.5, 1.8, 2.2], 2.0, "<", expect="not fails")
    assert mixed.verdict == "inconclusive" and mixed.ok
    high = evidence.Claim.level("x", [3.0, 3.1, 2.9, 3.05], 2.0, "<", expect="not fails")
    assert high.verdict == "fails" and not high.ok


def test_per_seed_intervals_and_cells():
    values = evidence.per_seed({"a": [1, 2, 3], "b": [4]}, lambda x: 2 * x)
    assert values["a"].tolist() == [2, 4, 6]
    ci = evidence.intervals({"a": values["a"]})["a"]
    assert ci.estimate == 4 and ci.low < 4 < ci.high
    assert evidence.cell(evidence.Interval(0.5, 0.25, 0.75, 3), scale=100, digits=1) == "50.0 [25.0, 75.0]"


def test_resmlp_has_an_identity_path_and_auto_tuning_layers():
    torch.manual_seed(0)
    plain, res = nets.build("bnrelu6", width=16, in_features=8), nets.build("resmlp6", width=16, in_features=8)
    assert len(nets.scale_invariant_layers(res)) == len(nets.scale_invariant_layers(plain)) == 6
    x = torch.randn(32, 8)
    res.train()
    block = res.body[3]
    with torch.no_grad():  # zero the branch's weight: BN of a zero input is zero, the block passes x on
        h = res.body[:3](x)
        block.linear.weight.zero_()
        assert torch.allclose(block(h), torch.relu(h))


def test_seed_plots_draw_means_bands_and_seeds():
    plots.setup()
    fig = plots.seed_band([1, 2, 3], np.array([[1.0, 2.0, np.nan], [2.0, 3.0, 4.0]]), band="interval")
    ax = fig.axes[0]
    assert np.allclose(ax.lines[0].get_ydata(), [1.5, 2.5, 4.0])
    fig = plots.seed_strip({"a": [1.0, 2.0, 3.0], "b": [2.0, 2.0, 2.0]})
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="band"):
        plots.seed_band([1], np.ones((2, 1)), band="sd")


def test_robustness_builds_refuse_unknown_variants_before_running():
    with pytest.raises(book.ParameterError, match="unknown robustness variant"):
        book.robust(["seed1000"])
    assert set(book.ROBUST_VARIANTS) == {"seed2000", "one-process", "one-thread"}


MEASURING = [c for c in book.chapters()
             if any(k in book._source_of(c).read_text() for k in ("train.sweep", "train.run(", "measure.at_init",
                                                                  "transformer.train_sequence"))]


def test_the_measuring_chapters_are_the_ones_the_book_says():
    # chapter 20 trains too, but checks the code on single runs (the audit, the monitor, an identity): no claims
    assert [c[:2] for c in MEASURING] == ["09", "10", "11", "12", "13", "14", "15", "18", "19"]


@pytest.mark.parametrize("chapter", MEASURING)
def test_every_measuring_chapter_runs_seeds_and_checks_its_claims_table(chapter):
    quick = book.resolve(chapter, "quick")
    assert quick["n_seeds"] >= 5, f"{chapter}: at least 5 seeds at the quick profile"
    assert "seed" in quick, f"{chapter}: a base seed parameter, so `elr book -p seed=1000` moves it"
    source = book._source_of(chapter).read_text()
    assert f'Chapter("{chapter}"' in source, f"{chapter}: its claims come from the registry (elr.claims.Chapter)"
    assert "claims.table()" in source and "claims.finish(check_claims)" in source, \
        f"{chapter}: ends by rendering its claims table and checking its gate claims"
    assert "sweep(" not in source.replace("sweep_seeds(", ""), f"{chapter}: every sweep runs seeds (sweep_seeds)"


@pytest.mark.parametrize("lr", [1e30, 1e38])
def test_compare_with_model_reports_no_fit_for_a_diverged_run(tmp_path, lr):
    # at these rates the weights overflow (ELRs of exactly 0) or the loss stops the run: neither is a fit
    cfg = train.TrainConfig(**{**TINY, "model": "resnet8", "shortcut": False, "width": 64, "steps": 20,
                               "log_every": 5, "lr": lr})
    run = train.run(cfg, tmp_path)
    out = measure.compare_with_model(run.records, cfg.lr, cfg.steps)
    assert out["diverged"]
    assert np.isnan(out["gap"]) and np.isnan(out["low_ratio"]) and np.isnan(out["order_meas"])
    fine = measure.compare_with_model(train.run(train.TrainConfig(**{**TINY, "steps": 10}), tmp_path).records,
                                      0.1, 10)
    assert not fine["diverged"] and np.isfinite(fine["gap"])


def test_compare_with_model_flags_a_run_cut_before_its_end(tmp_path):
    cfg = train.TrainConfig(**{**TINY, "steps": 10})
    run = train.run(cfg, tmp_path)
    out = measure.compare_with_model(run.records, cfg.lr, 40)  # the records stop at step 9 of 40
    assert out["diverged"] and np.isnan(out["gap"])

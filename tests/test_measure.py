"""elr.measure: the monitor against a hand computation, its transfer count, zero norms, storage."""
import numpy as np
import pytest
import torch

from elr import dynamics, measure, nets


def _toy():
    torch.manual_seed(0)
    model = nets.bnrelu(3, width=6, in_features=5, num_classes=3)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    return model, x, y


def test_monitor_matches_a_hand_computation():
    model, x, y = _toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    monitor = measure.ELRMonitor(model, per_channel=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    layers = [m for _, m in nets.scale_invariant_layers(model)]
    w0 = [m.weight.detach().clone() for m in layers]
    g0 = [m.weight.grad.detach().clone() for m in layers]
    monitor.observe_gradients(0)
    opt.step()
    monitor.observe_update(0)
    rec = monitor.records
    for i, (w, g, m) in enumerate(zip(w0, g0, layers)):
        assert rec.matrix("weight_norm")[1][0, i] == pytest.approx(float(w.norm()), rel=1e-6)
        assert rec.matrix("elr_grad")[1][0, i] == pytest.approx(float(g.norm() / w.norm()), rel=1e-6)
        per_channel = (g.norm(dim=1) / w.norm(dim=1)).numpy()
        np.testing.assert_allclose(rec.channels("elr_grad", 0, i), per_channel, rtol=1e-6)
        assert rec.matrix("elr_grad_max")[1][0, i] == pytest.approx(per_channel.max(), rel=1e-6)
        update = (m.weight.detach() - w).norm() / w.norm()
        assert rec.matrix("elr_update")[1][0, i] == pytest.approx(float(update), rel=1e-6)
        assert rec.matrix("elr_update")[1][0, i] == pytest.approx(0.3 * float(g.norm() / w.norm()), rel=1e-5)


def test_one_transfer_per_logged_step_and_none_otherwise(monkeypatch):
    model, x, y = _toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = measure.ELRMonitor(model, every=3)
    counts = {"n": 0}
    real_cpu, real_item, real_tolist = torch.Tensor.cpu, torch.Tensor.item, torch.Tensor.tolist

    def counting(fn):
        def wrapped(self, *a, **k):
            counts["n"] += 1
            return fn(self, *a, **k)
        return wrapped

    per_step = []
    for step in range(7):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        monkeypatch.setattr(torch.Tensor, "cpu", counting(real_cpu))
        monkeypatch.setattr(torch.Tensor, "item", counting(real_item))
        monkeypatch.setattr(torch.Tensor, "tolist", counting(real_tolist))
        counts["n"] = 0
        monitor.observe_gradients(step)
        opt.step()
        monitor.observe_update(step)
        per_step.append(counts["n"])
        monkeypatch.undo()
    assert per_step == [1, 0, 0, 1, 0, 0, 1]
    assert monitor.transfers == 3 and list(monitor.records.steps()) == [0, 3, 6]


def test_zero_norm_weights_give_nan_not_a_division_error():
    model, x, y = _toy()
    with torch.no_grad():
        model.body[3].weight.zero_()
    records = measure.measure_once(model, x, y)
    elr = records.matrix("elr_grad")[1][0]
    assert np.isnan(elr[1]) and np.all(np.isfinite(elr[[0, 2]]))
    assert np.isnan(records.spread()[1][0])


def test_records_round_trip(tmp_path):
    model, x, y = _toy()
    records = measure.measure_once(model, x, y, per_channel=True)
    path = records.save(tmp_path / "r.npz")
    back = measure.Records.load(path)
    assert back.layer_names == records.layer_names
    np.testing.assert_array_equal(back.table, records.table)
    row = next(back.rows())
    assert row[:5] == (0, "body.0", 0, -1, "weight_norm")


def _train(attach: bool, steps=6, every=2, accumulate=1):
    model, x, y = _toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    monitor = measure.ELRMonitor(model, every=every)
    handle = monitor.attach(opt) if attach else None
    for step in range(steps):
        opt.zero_grad()
        for part in torch.chunk(torch.arange(10), accumulate):
            (torch.nn.functional.cross_entropy(model(x[part]), y[part]) / accumulate).backward()
            # a hook-less monitor must not be fooled by the backward passes in between
        if not attach:
            monitor.observe_gradients(step)
        opt.step()
        if not attach:
            monitor.observe_update(step)
    return monitor, handle, model


def test_hooks_give_the_same_records_as_explicit_calls():
    explicit, _, _ = _train(attach=False)
    hooked, handle, _ = _train(attach=True)
    assert handle.step == 6 and list(hooked.records.steps()) == [0, 2, 4]
    _same_records(hooked.records, explicit.records)
    handle.remove()


def _same_records(hooked, explicit):
    """Weights and gradients alike to the bit; updates to float32 rounding: attached to SGD the monitor reads the
    update from the momentum buffer (λ‖buf‖), the explicit calls from a copy of the weights (‖W − W'‖, whose
    rounding is about 1e-7 ‖W‖ with ‖W‖ ≈ 3 here, so tiny updates agree only to that absolute level)."""
    a, b = hooked.table, explicit.table
    np.testing.assert_array_equal(a[["step", "layer", "channel", "quantity"]], b[["step", "layer", "channel", "quantity"]])
    update = np.isin(a["quantity"], [measure.QUANTITIES.index(q) for q in ("update_norm", "elr_update",
                                                                             "elr_update_max")])
    assert update.any()
    np.testing.assert_array_equal(a["value"][~update], b["value"][~update])
    np.testing.assert_allclose(a["value"][update], b["value"][update], rtol=1e-5, atol=2e-6)


def test_hooks_log_once_per_applied_update_under_gradient_accumulation():
    monitor, handle, _ = _train(attach=True, steps=4, every=1, accumulate=5)
    explicit, _, _ = _train(attach=False, steps=4, every=1, accumulate=5)
    assert list(monitor.records.steps()) == [0, 1, 2, 3]  # four updates, twenty backward passes
    _same_records(monitor.records, explicit.records)


@pytest.mark.parametrize("kind", ["SGD", "AdamW"])
@pytest.mark.parametrize("impl", ["plain", "foreach", "fused"])
def test_amp_reads_unscaled_gradients_and_counts_skipped_steps_with_every_optimizer_kind(kind, impl):
    """GradScaler unscales before a plain or foreach step but hands a fused optimizer scaled gradients and the
    scale; it skips a plain/foreach step without calling it, while a fused step runs and skips inside the kernel.
    In every case: true gradients, the skipped step not recorded but listed, later labels not shifted."""
    model, x, y = _toy()
    options = {"plain": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
    extra = {"momentum": 0.9} if kind == "SGD" else {}
    opt = getattr(torch.optim, kind)(model.parameters(), lr=0.05, **extra, **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    monitor = measure.ELRMonitor(model)
    handle = monitor.attach(opt)
    weights = [m.weight for _, m in nets.scale_invariant_layers(model)]
    grads, updates = [], []
    for step in range(4):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16 if step % 2 else torch.float16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if step == 1:
            weights[0].grad[0, 0] = float("inf")  # the scaler skips this step
        else:
            grads.append([float(w.grad.norm()) / scaler.get_scale() for w in weights])
        before = [w.detach().clone() for w in weights]
        scaler.step(opt)
        scaler.update()
        if step == 1:
            assert all(torch.equal(w, b) for w, b in zip(weights, before))  # nothing applied
        else:
            updates.append([float((w.detach() - b).norm()) for w, b in zip(weights, before)])
    steps, g = monitor.records.matrix("grad_norm")
    _, u = monitor.records.matrix("update_norm")
    assert list(steps) == [0, 2, 3] and monitor.skipped == [1] and handle.step == 4
    np.testing.assert_allclose(g, grads, rtol=1e-5)
    np.testing.assert_allclose(u, updates, rtol=1e-4, atol=1e-6)


def test_a_fused_skip_on_a_step_that_is_not_logged_is_counted_at_the_next_logged_step():
    model, x, y = _toy()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    monitor = measure.ELRMonitor(model, every=2)
    monitor.attach(opt)
    for step in range(4):
        opt.zero_grad()
        scaler.scale(torch.nn.functional.cross_entropy(model(x), y) * (float("inf") if step in (1, 3) else 1)).backward()
        scaler.step(opt)
        scaler.update()
        if step == 2:
            assert monitor.skipped == [1] and monitor.transfers == 2  # read with step 2's one transfer
    assert monitor.skipped == [1] and monitor.resolve_skipped() == [1, 3]
    assert list(monitor.records.steps()) == [0, 2]


def test_summary_scalars_and_pandas():
    monitor, _, _ = _train(attach=True)
    summary = monitor.records.summary()
    steps, e = monitor.records.matrix("elr_grad_max")
    np.testing.assert_array_equal(summary["step"], steps)
    np.testing.assert_allclose(summary["elr_max"], e.max(axis=1))
    np.testing.assert_allclose(summary["spread"], np.log(e).std(axis=1))
    np.testing.assert_allclose(summary["kappa_lh"], 1 / np.sqrt(e.min(axis=1) * e.max(axis=1)))
    top2 = np.sort(e, axis=1)[:, -2:]
    np.testing.assert_allclose(summary["kappa_hh"], 1 / np.sqrt(top2[:, 0] * top2[:, 1]))
    pd = pytest.importorskip("pandas")
    frame = monitor.records.to_pandas()
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(monitor.records)
    row = frame[(frame.quantity == "elr_grad_max") & (frame.step == 2) & (frame.depth == 1)]
    assert float(row.value.iloc[0]) == e[1, 1] and row.layer.iloc[0] == monitor.names[1]


def _ddp_worker(rank, port, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = nets.bnrelu(3, width=6, in_features=5, num_classes=3)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.3)
        monitor = measure.ELRMonitor(model)
        handle = monitor.attach(opt)
        torch.manual_seed(1 + rank)  # each rank its own batch
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        for _ in range(2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        torch.save({"active": handle.active, "rows": len(monitor.records)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_hooks_log_on_rank_zero_only_under_ddp(tmp_path):
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["active"] and r0["rows"] > 0
    assert not r1["active"] and r1["rows"] == 0


def test_growth_residuals_measure_the_sgd_norm_identities(tmp_path):
    from elr import train

    config = train.TrainConfig(model="bnrelu4", width=16, batch_size=32, steps=6, lr=0.2, log_every=1,
                               transform="random_walk")
    run = train.train(config, tmp_path / "walk")
    orthogonal, rate = measure.growth_residuals(run.records, 0.2)
    assert orthogonal < 1e-3 and rate < 1e-5
    assert measure.growth_residuals(run.records, 0.1)[1] > 0.9  # the wrong rate is seen: ‖ΔW‖ = 2·(0.1‖∇W‖)


def _model_records(lr: float, steps: int, sigma2_0=(4.0, 1.0), c=(0.5, 2.0), w_scale: float = 1.0) -> measure.Records:
    """Records of two layers that follow the discrete model (Eq. 5) exactly, the last ‖W‖ times w_scale."""
    records = measure.Records(["low", "high"])
    sim = dynamics.simulate(np.array(sigma2_0), np.array(c), np.full(steps, lr))
    for t in range(steps + 1):
        w = np.sqrt(sim.sigma2[t]) * (w_scale if t == steps else 1.0)
        g = np.array(c) / np.sqrt(sim.sigma2[t])
        for q, v in (("weight_norm", w), ("grad_norm", g), ("elr_grad", g / w)):
            records.add(t, np.arange(2), np.full(2, -1), q, v)
    return records


def test_lowest_layer_ratios_are_one_on_the_model_and_see_a_wrong_norm():
    exact = measure.lowest_layer_ratios(_model_records(0.5, 10), 0.5, 10)
    np.testing.assert_allclose(exact, (1.0, 1.0), rtol=1e-12)
    w_ratio, g_ratio = measure.lowest_layer_ratios(_model_records(0.5, 10, w_scale=1.1), 0.5, 10)
    assert w_ratio == pytest.approx(1.1) and g_ratio == pytest.approx(1.0)
    assert measure.lowest_layer_ratios(_model_records(0.5, 10), 1.0, 10)[0] < 0.96  # a wrong rate is seen
    with pytest.raises(ValueError, match="every step"):
        measure.lowest_layer_ratios(_model_records(0.5, 10), 0.5, 12)


def test_one_pass_spread_matches_the_model_and_marks_a_diverged_run():
    records = _model_records(0.3, 8)
    s0, after, model, k_crit, k_sub = measure.one_pass_spread(records, 0.3, 8)
    e0 = records.matrix("elr_grad")[1][0]
    assert s0 == pytest.approx(float(dynamics.relative_spread(e0)))
    assert after == pytest.approx(model, rel=1e-10) and after != pytest.approx(s0)
    assert k_crit == pytest.approx(float(dynamics.critical_lr(e0)))
    assert k_sub == pytest.approx(float(dynamics.subcritical_lr(e0)))
    assert np.isnan(measure.one_pass_spread(records, 0.3, 8, completed=False)[1])


def test_final_spread_is_nan_for_a_diverged_or_broken_run():
    records = _model_records(0.3, 8)
    e_last = records.matrix("elr_grad")[1][-1]
    assert measure.final_spread(records) == pytest.approx(float(dynamics.relative_spread(e_last)))
    assert np.isnan(measure.final_spread(records, completed=False))
    broken = _model_records(0.3, 8)
    broken.add(9, np.arange(2), np.full(2, -1), "elr_grad", np.array([np.inf, 1.0]))
    assert np.isnan(measure.final_spread(broken))


def test_run_summary_reads_the_records():
    records = _model_records(0.3, 8)
    out = measure.run_summary(records, 0.3)
    e = records.matrix("elr_grad")[1]
    np.testing.assert_array_equal(out["elr"], e)
    assert out["spread0"] == pytest.approx(float(dynamics.relative_spread(e[0])))
    assert out["spread_end"] == pytest.approx(float(dynamics.relative_spread(e[-1])))
    assert out["cos"].shape == (2,) and set(out["stats"]) == set(measure.base_gradient_stats(records))


# ------------------------------------------------------------------- which layers


def _mlp(bias_first=False):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 6, bias=bias_first), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                               torch.nn.Linear(6, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))


def test_default_layers_are_the_audits_and_are_chosen_at_the_first_forward():
    model, x = _mlp(), torch.randn(10, 5)
    monitor = measure.ELRMonitor(model)
    assert not monitor.ready
    with pytest.raises(RuntimeError, match="first forward"):
        monitor.observe_gradients(0)
    model(x).sum().backward()
    # only the bias-free Linear before BatchNorm is scale-invariant; the heuristic would also take nothing else
    assert monitor.ready and monitor.names == ["0"]
    assert measure.ELRMonitor(model, example_inputs=x).names == ["0"]
    assert measure.invariant_layers(model, x) == ["0.weight"]
    assert [n for n, _, _ in measure._resolve(model, ["3.weight", "5"])] == ["3", "5"]
    with pytest.raises(ValueError, match="no weight or module named 'nope'"):
        measure.ELRMonitor(model, layers=["nope"])


def test_a_model_without_invariant_weights_is_refused_with_the_cause():
    model, x = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)), torch.randn(10, 5)
    with pytest.raises(ValueError, match="no weight of this model is scale-invariant.*layers="):
        measure.ELRMonitor(model, example_inputs=x)
    lazy = measure.ELRMonitor(model)
    with pytest.raises(ValueError, match="at its first forward pass: no weight of this model is scale-invariant"):
        model(x)
    model(x)  # the hook removed itself: the model runs on, and the monitor says it has no layers
    assert not lazy.ready
    with pytest.raises(RuntimeError, match="no layers"):
        lazy.observe_gradients(0)


def test_heuristic_on_request_only():
    model = torch.nn.Sequential(torch.nn.Linear(5, 6, bias=False), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    # the name heuristic takes the first Linear (bias-free, not last); the audit sees no normalisation after it
    assert measure.ELRMonitor(model, layers="heuristic").names == ["0"]
    with pytest.raises(ValueError, match="no weight of this model is scale-invariant"):
        measure.ELRMonitor(model, example_inputs=torch.randn(4, 5))
    with pytest.raises(ValueError, match="layers must be None"):
        measure.ELRMonitor(model, layers="audit-please")


def test_conv1d_weights_are_measured_per_output_channel_along_their_second_dim():
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    torch.manual_seed(0)
    model = torch.nn.Sequential(conv1d(7, 5), torch.nn.BatchNorm1d(7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    torch.nn.init.normal_(model[0].bias)  # a bias before BatchNorm: removed by it, so the weight stays invariant
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    monitor = measure.ELRMonitor(model, per_channel=True, example_inputs=x)
    assert monitor.names == ["0"] and monitor.channels == [7]  # weight stored (5, 7): 7 output channels
    torch.nn.functional.cross_entropy(model(x), y).backward()
    monitor.observe_gradients(0)
    monitor.flush()
    w, g = model[0].weight.detach(), model[0].weight.grad
    np.testing.assert_allclose(monitor.records.channels("elr_grad", 0, 0), (g.norm(dim=0) / w.norm(dim=0)).numpy(),
                               rtol=1e-6)


# ------------------------------------------------------------------- torch.compile


def _compiled_run(compile_model: bool, compile_step: bool):
    torch._dynamo.reset()
    model, x = _mlp(), torch.randn(10, 5)
    y = torch.randint(0, 3, (10,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    monitor = measure.ELRMonitor(model)  # audits at the first forward, inside the compiled model's call
    monitor.attach(opt)
    net = torch.compile(model, backend="eager") if compile_model else model
    step = torch.compile(opt.step, backend="eager") if compile_step else opt.step
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        step()
    return monitor


def test_the_hooks_run_outside_torch_compile_of_the_model_and_of_the_optimizer_step():
    eager = _compiled_run(False, False)
    for compile_model, compile_step in [(True, False), (False, True)]:
        compiled = _compiled_run(compile_model, compile_step)
        assert compiled.names == ["0"] and list(compiled.records.steps()) == [0, 1, 2]
        np.testing.assert_allclose(compiled.records.table["value"], eager.records.table["value"], rtol=1e-5)


def test_records_spill_to_disk_and_read_back_whole(tmp_path):
    kept, _, _ = _train(attach=True, steps=6, every=1)
    model, x, y = _toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    spilled = measure.ELRMonitor(model, spill_to=tmp_path / "spill", spill_rows=40)
    spilled.attach(opt)
    for _ in range(6):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    files = sorted((tmp_path / "spill").glob("records-*.npy"))
    assert len(files) >= 2 and spilled.records._rows < 40  # memory holds less than one chunk
    np.testing.assert_array_equal(spilled.records.table, kept.records.table)
    assert list(spilled.records.steps()) == list(range(6))


@pytest.mark.parametrize("options", [{}, {"momentum": 0.9, "dampening": 0.5, "weight_decay": 1e-2},
                                     {"weight_decay": 1e-2}, {"momentum": 0.9, "nesterov": True},
                                     {"momentum": 0.9, "maximize": True, "foreach": True}])
def test_updates_read_from_sgd_equal_the_weights_difference(options):
    """Attached to plain SGD the monitor reads ‖ΔW‖ from the optimizer (λ‖∇W‖, λ‖buf‖) where that is exact, and
    from a copy otherwise (weight decay without momentum, Nesterov): the hand computation decides both."""
    model, x, y = _toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, **options)
    monitor = measure.ELRMonitor(model)
    monitor.attach(opt)
    weights = [m.weight for _, m in nets.scale_invariant_layers(model)]
    expected = []
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        before = [w.detach().clone() for w in weights]
        opt.step()
        expected.append([float((w.detach() - b).norm()) for w, b in zip(weights, before)])
    np.testing.assert_allclose(monitor.records.matrix("update_norm")[1], expected, rtol=1e-4, atol=1e-6)


def test_importing_the_toolkit_does_not_import_dynamo():
    """The hooks are compile-safe without ``torch.compiler.disable`` at import (it pulls ~900 modules, 2 s);
    torch's optimizers import Dynamo themselves when one is built, so the check stops before that."""
    import subprocess
    import sys

    code = ("import sys, elr.measure, elr.audit, elr.train, elr.schedules, elr.gradients; "
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_critical_lr_at_init_is_one_over_the_geometric_mean_of_the_extreme_elrs():
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    build = lambda: nets.bnrelu(8, width=16, in_features=64)  # noqa: E731
    kappa = measure.critical_lr_at_init(build, x, y, seeds=2, base_seed=5)
    for k, records in zip(kappa, measure.at_init(build, x, y, seeds=2, base_seed=5)):
        e = records.matrix("elr_grad")[1][0]
        assert k == pytest.approx(1 / np.sqrt(e.min() * e.max()))
    assert kappa[0] != kappa[1]  # two initialisations, two rates

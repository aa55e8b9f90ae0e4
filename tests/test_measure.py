"""elr.measure: the monitor against a hand computation, its transfer count, zero norms, storage."""
import numpy as np
import pytest
import torch

from elr import measure, nets


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

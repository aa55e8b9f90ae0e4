"""elr.measure under FSDP2 (fully_shard) on 2 gloo ranks on CPU: the ELRs of the sharded run equal those of one
process on the same data, with one all-reduce per logged step on every rank."""
import socket

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from elr import measure

STEPS, EVERY = 4, 2


def _model():
    # 33 output channels: the two shards are uneven (17 + 16 rows), as FSDP2 pads them
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 33, bias=False), nn.BatchNorm1d(33), nn.ReLU(),
                         nn.Linear(33, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [[(torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(2)]
            for _ in range(STEPS)]  # per step, one batch for each rank


def _optimizer(kind, params):
    if kind == "sgd":  # the update is read from the momentum buffer (a DTensor)
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.AdamW(params, lr=0.01)  # the update is read from a copy of the local shards


LAYERS = ["0.weight", "3.weight"]


def _worker(rank, port, out):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    calls = {"n": 0}
    real = dist.all_reduce

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    dist.all_reduce = counting
    try:
        results = {}
        for case, kind, before, rank_zero_only in [("after", "sgd", False, True), ("before", "adamw", True, False)]:
            model = _model()
            x0 = _batches()[0][0][0]
            monitor = measure.ELRMonitor(model, every=EVERY, example_inputs=(x0,)) if before else None
            fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
            monitor = monitor or measure.ELRMonitor(model, every=EVERY, layers=LAYERS)
            opt = _optimizer(kind, model.parameters())
            handle = monitor.attach(opt, rank_zero_only=rank_zero_only)
            calls["n"] = 0
            for batches in _batches():
                x, y = batches[rank]
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            results[case] = {"names": monitor.names, "table": monitor.records.table, "active": handle.active,
                             "all_reduces": calls["n"]}
        model = _model()
        fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
        try:
            measure.ELRMonitor(model, example_inputs=(torch.randn(8, 16),))
        except ValueError as err:
            results["refusal"] = str(err)
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.all_reduce = real
        dist.destroy_process_group()


def _one_process(kind):
    model = _model()
    monitor = measure.ELRMonitor(model, every=EVERY, layers=LAYERS)
    opt = _optimizer(kind, model.parameters())
    monitor.attach(opt)
    for batches in _batches():
        opt.zero_grad()
        for x, y in batches:  # FSDP2 averages the ranks' gradients
            (F.cross_entropy(model(x), y) / 2).backward()
        opt.step()
    return monitor


def test_fsdp2_elrs_equal_one_process_with_one_all_reduce_per_logged_step(tmp_path):
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for case, kind in [("after", "sgd"), ("before", "adamw")]:
        ref = _one_process(kind)
        logged = STEPS // EVERY
        assert r0[case]["all_reduces"] == r1[case]["all_reduces"] == logged  # every rank, once per logged step
        assert r0[case]["names"] == ref.names == ["0", "3"]  # "before": the audit's choice, kept after sharding
        got, want = r0[case]["table"], ref.records.table
        np.testing.assert_array_equal(got[["step", "layer", "channel", "quantity"]],
                                      want[["step", "layer", "channel", "quantity"]])
        np.testing.assert_allclose(got["value"], want["value"], rtol=1e-4, atol=1e-7)
        assert np.all(got["value"][got["quantity"] == measure.QUANTITIES.index("elr_grad")] > 0)
    # rank 1 records only when asked to (rank_zero_only=False), then the same values
    assert not r1["after"]["active"] and len(r1["after"]["table"]) == 0
    assert r1["before"]["active"]
    np.testing.assert_array_equal(r1["before"]["table"], r0["before"]["table"])
    # the audit needs the whole model: after fully_shard it refuses and says what to do
    assert "build the monitor before fully_shard" in r0["refusal"]

"""Benchmarks: ratios measured side by side in one process (never absolute pass/fail times).

    .venv/bin/python benchmarks/bench.py            # or: make bench

1. Monitor overhead: an SGD step with the ELR monitor logging every step, against the same step without it.
2. Framework overhead: a step of elr.train against a minimal hand-written loop (same model, data, seed).
3. Simulator throughput: vectorised elr.dynamics against a plain Python loop over layers and steps.

Timings interleave the variants and report the median ratio over repetitions, so a slow
moment of the machine hits both sides alike.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from elr import data, dynamics, measure, nets, train


def _median_ratio(fn_a, fn_b, reps: int) -> tuple[float, float, float]:
    """median(time_a / time_b) over interleaved repetitions, and the median times."""
    ta, tb = [], []
    for _ in range(reps):
        t0 = time.perf_counter(); fn_a(); ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); fn_b(); tb.append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(ta, tb)]
    return statistics.median(ratios), statistics.median(ta), statistics.median(tb)


def monitor_overhead(depth: int, steps: int, reps: int, cifar_shape: bool) -> str:
    if cifar_shape:  # the monitor's cost does not depend on the data, only the step's does: random 3x32x32 images
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(128, 3, 32, 32, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    else:
        ds = data.digits()
        x, y = ds.inputs[:128], ds.labels[:128]
    torch.manual_seed(0)
    model = nets.resnet(depth, shortcut=False, in_channels=x.shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = measure.ELRMonitor(model, every=1)

    def run(with_monitor: bool):
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            if with_monitor:
                monitor.observe_gradients(step)
            opt.step()
            if with_monitor:
                monitor.observe_update(step)

    run(True)  # warm-up
    monitor.transfers = 0
    ratio, t_with, t_without = _median_ratio(lambda: run(True), lambda: run(False), reps)
    shape = "3x32x32 (CIFAR-sized)" if cifar_shape else "1x8x8 (digits)"
    return (f"monitor overhead, ResNet{depth} NoShort, batch 128 of {shape}, logging every step: "
            f"{100 * (ratio - 1):+.2f}% ({t_with / steps * 1e3:.1f} vs {t_without / steps * 1e3:.1f} ms/step); "
            f"device-to-host transfers per logged step: {monitor.transfers / (reps * steps):.0f}")


def framework_overhead(depth: int, steps: int, reps: int) -> str:
    ds = data.digits()
    cfg = dict(model=f"resnet{depth}", shortcut=False, batch_size=128, lr=0.01, log_every=10**9, eval_batches=1)

    def elr_train(n):
        with tempfile.TemporaryDirectory() as tmp:
            train.train(train.TrainConfig(**cfg, steps=n), tmp)

    def hand(n):
        torch.manual_seed(0)
        model = nets.resnet(depth, shortcut=False, in_channels=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(ds), generator=gen)
        for step in range(n):
            idx = perm[(step * 128) % (len(ds) - 128):][:128]
            xb = data.random_flip(ds.inputs[idx], gen)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), ds.labels[idx]).backward()
            opt.step()

    # per-step cost from the difference of two lengths: removes set-up and evaluation from elr.train
    short, long = steps, 3 * steps
    per_elr, per_hand = [], []
    for _ in range(reps):
        t0 = time.perf_counter(); elr_train(short); a = time.perf_counter() - t0
        t0 = time.perf_counter(); elr_train(long); b = time.perf_counter() - t0
        t0 = time.perf_counter(); hand(short); c = time.perf_counter() - t0
        t0 = time.perf_counter(); hand(long); d = time.perf_counter() - t0
        per_elr.append((b - a) / (long - short))
        per_hand.append((d - c) / (long - short))
    ratio = statistics.median(e / h for e, h in zip(per_elr, per_hand))
    return (f"framework overhead, ResNet{depth} NoShort, batch 128: elr.train step / hand-written step = {ratio:.3f} "
            f"({statistics.median(per_elr) * 1e3:.1f} vs {statistics.median(per_hand) * 1e3:.1f} ms/step)")


def simulator_throughput(n_layers: int = 109, n_lrs: int = 50, n_steps: int = 196) -> str:
    c = dynamics.base_gradients_feedforward(n_layers)
    lrs = np.logspace(-6, 1, n_lrs)

    def vectorised():
        return dynamics.simulate(np.full((n_lrs, n_layers), 2.0), c, np.broadcast_to(lrs, (n_steps, n_lrs))).sigma2[-1]

    def python_loop():
        out = np.empty((n_lrs, n_layers))
        for r, lr in enumerate(lrs):
            for i, ci in enumerate(c):
                s = 2.0
                for _ in range(n_steps):
                    s = s + lr * lr * ci * ci / s
                out[r, i] = s
        return out

    assert np.allclose(vectorised(), python_loop())
    ratio, t_loop, t_vec = _median_ratio(python_loop, vectorised, 3)
    return (f"simulator, {n_layers} layers x {n_lrs} rates x {n_steps} steps (the paper's Figure 4 grid): "
            f"vectorised elr.dynamics is {ratio:.0f}x faster than a Python loop ({t_vec * 1e3:.1f} vs {t_loop * 1e3:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    for depth in (56, 110):
        for cifar_shape in (False, True):
            print(monitor_overhead(depth, args.steps, args.reps, cifar_shape), flush=True)
    print(framework_overhead(56, args.steps, max(args.reps // 2, 2)), flush=True)
    print(simulator_throughput(), flush=True)


if __name__ == "__main__":
    main()

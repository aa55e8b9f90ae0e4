"""Benchmarks: ratios measured side by side in one process (never absolute pass/fail times).

    .venv/bin/python benchmarks/bench.py            # or: make bench

1. Monitor overhead: an SGD step with the ELR monitor logging every step, against the same step without it.
2. Framework overhead: a step of elr.train against a minimal hand-written loop (same model, data, seed).
3. Simulator throughput: vectorised elr.dynamics against a plain Python loop over layers and steps,
   and the long-horizon closed form against iterating the recurrence.
4. Fast paths: channels_last against the default memory format per ResNet depth; torch.compile
   (compilation time, then the steady step against eager).
5. The book: time per chapter at the profile it was last built with (book/chapters/run_record.json).

The output is printed and written to benchmarks/latest.md, which the book's reproducibility page
includes, with the machine and the date.

Timings interleave the variants and report the median ratio over repetitions, so a slow
moment of the machine hits both sides alike.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

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

    in_monitor = []  # seconds spent inside the monitor's two calls, per repetition

    def run(with_monitor: bool):
        spent = 0.0
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            if with_monitor:
                t0 = time.perf_counter(); monitor.observe_gradients(step); spent += time.perf_counter() - t0
            opt.step()
            if with_monitor:
                t0 = time.perf_counter(); monitor.observe_update(step); spent += time.perf_counter() - t0
        if with_monitor:
            in_monitor.append(spent)

    run(True)  # warm-up
    monitor.transfers, in_monitor[:] = 0, []
    ratio, t_with, t_without = _median_ratio(lambda: run(True), lambda: run(False), reps)
    own = statistics.median(in_monitor) / (t_with - statistics.median(in_monitor))  # monitor time / rest of the step
    shape = "3x32x32 (CIFAR-sized)" if cifar_shape else "1x8x8 (digits)"
    return (f"monitor overhead, ResNet{depth} NoShort, batch 128 of {shape}, logging every step: "
            f"time inside the monitor {100 * own:.2f}% of a step ({statistics.median(in_monitor) / steps * 1e3:.1f} ms); "
            f"end to end {100 * (ratio - 1):+.2f}% ({t_with / steps * 1e3:.1f} vs {t_without / steps * 1e3:.1f} ms/step, "
            f"median of {reps} interleaved repetitions); "
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


def long_horizon_throughput(depth: int = 110, n: int = 1_000_000, lr: float = 0.1) -> str:
    c = dynamics.base_gradients_cifar_resnet(depth, shortcut=False)
    s0 = np.full(c.shape, dynamics.SIGMA2_HE)

    def closed():
        return dynamics.elr_at_step(s0, c, lr, n).x

    def iterate():
        s = s0.copy()
        for _ in range(n):
            s = dynamics.discrete_step(s, c, lr)
        return dynamics.elr(s, c)

    err = float(np.max(np.abs(closed() / iterate() - 1)))
    ratio, t_iter, t_closed = _median_ratio(iterate, closed, 2)
    return (f"long horizon, ResNet{depth} NoShort ({len(c)} layers), ELRs at step {n:,}: closed form is {ratio:,.0f}x "
            f"faster than iterating Eq. 5 ({t_closed * 1e3:.2f} ms vs {t_iter:.2f} s), max relative difference {err:.1e}")


def _step_fn(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def channels_last_speed(depth: int, steps: int, reps: int, batch: int = 128) -> str:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    torch.manual_seed(0)
    plain = nets.resnet(depth, shortcut=False)
    last = nets.resnet(depth, shortcut=False).to(memory_format=torch.channels_last)
    step_plain = _step_fn(plain, x, y)
    step_last = _step_fn(last, x.contiguous(memory_format=torch.channels_last), y)
    step_plain(); step_last()  # warm-up
    ratio, t_plain, t_last = _median_ratio(lambda: [step_plain() for _ in range(steps)],
                                           lambda: [step_last() for _ in range(steps)], reps)
    return (f"channels_last, ResNet{depth} NoShort, batch {batch} of 3x32x32: {ratio:.2f}x the speed of the default "
            f"layout ({t_last / steps * 1e3:.0f} vs {t_plain / steps * 1e3:.0f} ms/step)")


def compile_speed(depth: int, steps: int, reps: int, batch: int = 64) -> str:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    torch.manual_seed(0)
    eager = nets.resnet(depth, shortcut=False)
    compiled_model = nets.resnet(depth, shortcut=False)
    step_eager = _step_fn(eager, x, y)
    step_compiled = _step_fn(torch.compile(compiled_model), x, y)
    t0 = time.perf_counter(); step_compiled(); first = time.perf_counter() - t0
    step_eager()
    ratio, t_eager, t_comp = _median_ratio(lambda: [step_eager() for _ in range(steps)],
                                           lambda: [step_compiled() for _ in range(steps)], reps)
    return (f"torch.compile, ResNet{depth} NoShort, batch {batch} of 3x32x32: first step (compilation) {first:.1f} s, "
            f"then {ratio:.2f}x the speed of eager ({t_comp / steps * 1e3:.0f} vs {t_eager / steps * 1e3:.0f} ms/step); "
            f"compilation pays off after about {first / max(t_eager / steps - t_comp / steps, 1e-9):,.0f} steps"
            if t_comp < t_eager else
            f"torch.compile, ResNet{depth} NoShort, batch {batch} of 3x32x32: first step (compilation) {first:.1f} s, "
            f"then {ratio:.2f}x the speed of eager ({t_comp / steps * 1e3:.0f} vs {t_eager / steps * 1e3:.0f} ms/step): "
            f"no gain on this CPU")


def book_profile(path: Path = Path("book/chapters/run_record.json")) -> list[str]:
    """Where the book's time goes: each chapter's wall time when `elr book` last executed it."""
    if not path.exists():
        return [f"the book: no run record at {path} (run `make book` first)"]
    record = json.loads(path.read_text())
    rows = sorted(record.items(), key=lambda kv: -kv[1]["seconds"])
    total = sum(e["seconds"] for _, e in rows)
    profiles = sorted({e["profile"] for _, e in rows})
    lines = [f"the book, profile {'/'.join(profiles)}: {total:.0f} s of chapter time in all, by chapter:"]
    lines += [f"  {name}: {e['seconds']:.0f} s ({100 * e['seconds'] / total:.0f}%)" for name, e in rows]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compilation takes minutes)")
    parser.add_argument("--out", default="benchmarks/latest.md", help="where to write the output for the book")
    args = parser.parse_args()
    lines = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    emit(f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
         f"torch {torch.__version__}, {'CUDA' if torch.cuda.is_available() else 'CPU only'}; "
         f"--reps {args.reps} --steps {args.steps}; {time.strftime('%Y-%m-%d')}")
    for depth in (56, 110):
        for cifar_shape in (False, True):
            emit(monitor_overhead(depth, args.steps, args.reps, cifar_shape))
    emit(framework_overhead(56, args.steps, max(args.reps // 2, 2)))
    emit(simulator_throughput())
    emit(long_horizon_throughput())
    for depth in (20, 56, 110):
        emit(channels_last_speed(depth, max(args.steps // 3, 2), args.reps))
    if not args.no_compile:
        emit(compile_speed(20, max(args.steps // 2, 2), args.reps))
    for line in book_profile():
        emit(line)
    out = Path(args.out)
    out.write_text("```text\n" + "\n".join(lines) + "\n```\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()

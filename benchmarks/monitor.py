"""The ELR monitor's cost per training step, before and after issue 26, measured side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/monitor.py [--reps 3 --steps 10]

The case of the issue: torchvision's ResNet-18 (weights=None) on random 64×64 images, batch 16, one SGD step
(momentum 0.9) or AdamW step per iteration, the monitor attached to the optimizer (``attach``). "before" is the
monitor of commit cd88d67 (stacked copies of the weights and gradients), loaded from git; "after" is this
tree's. Every variant watches the same layers (the weights the audit finds scale-invariant: the convolutions).

Variants are interleaved within each repetition and the median ratio over repetitions is reported, so a slow
moment of the machine hits every variant alike. Times are CPU times of this process (``time.process_time``,
one thread), so other processes on a shared machine do not enter them; "inside the monitor" is the CPU time
spent in the monitor's two hooks, per step, against the step without a monitor. Prints ratios (time per step with the monitor / without) and
replaces the monitor section of benchmarks/latest.md (atomically).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from elr import measure

BEFORE = "cd88d67"
ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- monitor.py: begin -->", "<!-- monitor.py: end -->"


def _old_measure() -> types.ModuleType:
    """elr.measure as it was at commit BEFORE, as a module of its own."""
    src = subprocess.run(["git", "show", f"{BEFORE}:elr/measure.py"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    mod = types.ModuleType("elr_measure_before")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up there
    exec(compile(src, f"{BEFORE}:elr/measure.py", "exec"), mod.__dict__)
    return mod


def run(reps: int, steps: int, optimizer: str) -> list[str]:
    from torchvision.models import resnet18

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 64, 64, generator=gen), torch.randint(0, 1000, (16,), generator=gen)
    torch.manual_seed(0)
    model = resnet18(weights=None)
    names = measure.invariant_layers(model, x[:4])
    make = {"sgd": lambda: torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9),
            "adamw": lambda: torch.optim.AdamW(model.parameters(), lr=1e-5)}[optimizer]
    old = _old_measure()
    modules = dict(model.named_modules())
    pairs = [(n.rsplit(".", 1)[0], modules[n.rsplit(".", 1)[0]]) for n in names]
    variants = {"none": None,
                "before, every=1": lambda: old.ELRMonitor(pairs, every=1),
                "after, every=1": lambda: measure.ELRMonitor(model, every=1, layers=names),
                "before, every=10": lambda: old.ELRMonitor(pairs, every=10),
                "after, every=10": lambda: measure.ELRMonitor(model, every=10, layers=names)}
    opts = {k: make() for k in variants}  # one optimizer (and its state) per variant
    hooks = {}
    for k, build in variants.items():
        if build is not None:
            hooks[k] = build().attach(opts[k])
            hooks[k].remove()  # attached only while its variant runs

    inside = {k: [] for k in variants}  # CPU seconds spent in the monitor's hooks per step

    def timed(fn, acc):
        def wrapped(*a):
            t0 = time.process_time()
            fn(*a)
            acc[0] += time.process_time() - t0
        return wrapped

    def one(k):
        opt = opts[k]
        h = hooks.get(k)
        acc = [0.0]
        if h is not None:
            h._handles = [opt.register_step_pre_hook(timed(h._pre, acc)),
                          opt.register_step_post_hook(timed(h._post, acc))]
        t0 = time.process_time()  # CPU time: on a shared machine, other processes do not enter it (one thread)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        dt = time.process_time() - t0
        if h is not None:
            h.remove()
        inside[k].append(acc[0] / steps)
        return dt / steps

    model.train()
    for k in variants:  # warm-up: allocator, optimizer state, the monitors' buffers
        one(k)
    times = {k: [] for k in variants}
    for _ in range(reps):
        for k in variants:
            times[k].append(one(k))
    base = times["none"]
    lines = [f"monitor, ResNet-18 (torchvision, weights=None), batch 16 of 3x64x64, {optimizer}, "
             f"{len(names)} conv weights: step without monitor {statistics.median(base) * 1e3:.0f} ms"]
    for k in list(variants)[1:]:
        ratio = statistics.median(t / b for t, b in zip(times[k], base))
        own = statistics.mean(inside[k][1:])  # [0] is the warm-up; each repetition holds whole cycles of `every`
        lines.append(f"  {k:<17} step {ratio:.3f}x the step without monitor ({statistics.median(times[k]) * 1e3:.0f} "
                     f"ms); inside the monitor {own * 1e3:.1f} ms per step = {100 * own / statistics.median(base):.1f}% "
                     f"of the step without it")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per repetition (a multiple of 10, "
                                                              "so every repetition of every=10 logs once)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/latest.md alone")
    args = parser.parse_args()
    if args.steps % 10:
        parser.error("--steps must be a multiple of 10 (every=10 logs once per 10 steps)")
    head = (f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, CPU only; --reps {args.reps} --steps {args.steps}; {date.today()}; "
            f"before = {BEFORE}")
    note = ("note: 'step' ratios are end to end and carry the noise of a shared machine (every=10 can come out "
            "below 1); 'inside the monitor' is the CPU time spent in its hooks, the precise measure of its cost")
    lines = [head, note]
    print(head, note, sep="\n", flush=True)
    for optimizer in ("sgd", "adamw"):
        for line in run(args.reps, args.steps, optimizer):
            print(line, flush=True)
            lines.append(line)
    if args.no_write:
        return
    path = ROOT / "benchmarks" / "latest.md"
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n```text\n" + "\n".join(lines) + f"\n```\n{END}\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()

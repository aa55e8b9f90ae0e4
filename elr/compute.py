"""A compute plan for the paper profile: training FLOPs per chapter, counted, and GPU hours from them.

FLOPs of one SGD step (forward and backward) are *counted* with
``torch.utils.flop_counter.FlopCounterMode`` on the actual model and input
size (convolutions and matrix products; normalisation and activations are
not counted, a few per cent of a ResNet's work). The number of steps of each
chapter follows from its resolved parameters, with the same run structure
as the chapter's code. GPU hours then assume a stated sustained throughput;
that number is an assumption, not a measurement, and the plan says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from elr import book, nets

#: Sustained FP32 throughput assumed for one GPU when turning FLOPs into hours (about 1/8 of an
#: RTX 4090's FP32 peak; small-batch ResNets on CIFAR rarely reach more).
ASSUMED_GPU_FLOPS = 10e12

TRAIN_SIZE = {"digits": 1348, "cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}
INPUT = {"digits": (1, 8, 8), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "imagenet": (3, 224, 224)}
CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}


@dataclass(frozen=True)
class Work:
    """``runs`` training runs of ``steps`` steps each of one model."""

    model: str
    dataset: str
    batch_size: int
    runs: int
    steps: int
    width: int = 64    # hidden width of bnrelu models (the chapters use 64)
    log_every: int = 1  # steps between ELR records (what a run keeps in memory, elr.train.check_fits)


@lru_cache(maxsize=None)
def step_flops(model: str, dataset: str, batch_size: int, width: int = 64) -> float:
    """Counted FLOPs of one forward and backward pass (counted at batch 2, scaled linearly)."""
    from torch.utils.flop_counter import FlopCounterMode

    kwargs = {"num_classes": CLASSES[dataset]}
    if model.startswith(("bnrelu", "resmlp")):
        kwargs.update(width=width, in_features=math.prod(INPUT[dataset]))
    elif model != "resnet101":
        kwargs["in_channels"] = INPUT[dataset][0]
    net = nets.build(model, **kwargs).train()
    x = torch.randn(2, *INPUT[dataset])
    counter = FlopCounterMode(display=False)
    with counter:
        net(x).sum().backward()
    return counter.get_total_flops() / 2 * batch_size


def chapter_work(chapter: str, values: dict) -> list[Work]:
    """The training runs a chapter performs with these parameter values (mirrors the chapter's code)."""
    v = values
    n = v.get("n_seeds", 1)
    if chapter == "09_elr_at_init":
        return [Work(f"resnet{min(v['resnet_depths'])}", "digits", 64, 2 * n, v["walk_steps"])]
    if chapter == "10_short_term":
        return [Work(f"resnet{v['depth']}", v["dataset"], v["batch_size"], 2 * len(v["lrs"]) * n, v["steps"] + 1)]
    if chapter == "11_long_term":
        return [Work(v["model"], v["dataset"], v["batch_size"], 5 * n, v["steps"], log_every=v["log_every"])]
    if chapter == "12_criticality":
        epoch = max(TRAIN_SIZE[v["dataset"]] // v["batch_size"], 1)
        return [Work(f"resnet{v['depth']}", v["dataset"], v["batch_size"], 2 * len(v["lrs"]) * n, epoch + 1)]
    if chapter == "13_trainability":  # four protocols with and without shortcuts at every depth; the other
        # protocols (constrained + OneCycle) without shortcuts at the table depth only
        sweep = [p for p in v["protocols"] if p in ("none", "OneCycle", "subcritical", "constrained")]
        out = []
        for depth in v["depths"]:
            for shortcut in (False, True):
                model = (f"resnet{depth}" if v["family"] == "resnet" else
                         f"{'resmlp' if shortcut else 'bnrelu'}{depth}")
                cases = len(sweep) + (len(v["protocols"]) - len(sweep)
                                      if depth == v["table_depth"] and not shortcut else 0)
                if depth == v["table_depth"]:  # Figure 5's further rates: none, subcritical, constrained
                    cases += 3 * len([r for r in v["lrs"] if r != v["lr"]])
                out.append(Work(model, v["dataset"], v["batch_size"], cases * n, v["steps"], v["width"],
                                log_every=v["log_every"]))
        return out
    if chapter == "14_weight_decay":
        return [Work(v["model"], v["dataset"], v["batch_size"], (len(v["grid"]) + 1) * n, v["steps"], v["width"],
                     v["log_every"])]
    if chapter == "15_momentum":
        return [Work(f"resnet{v['depth']}", v["dataset"], v["batch_size"],
                     len(v["lrs"]) * len(v["momenta"]) * v["spread_seeds"], v["steps"], log_every=max(v["steps"] // 5, 1)),
                Work(v["eq_model"], v["dataset"], v["eq_batch_size"], len(v["eq_grid"]) * n, v["eq_steps"])]
    if chapter == "18_transformers":  # the ResNet runs compared with; the Transformer runs are not counted
        return [Work(f"resnet{v['resnet_depth']}", "digits", v["batch_size"], 2 * n, v["steps"])]
    if chapter == "19_lars":  # four cases; claim 1's float64 runs on the digits MLP are not counted
        return [Work(v["model"], v["dataset"], v["batch_size"], 4 * n, v["steps"], v["width"])]
    return []  # Parts I and III simulate the model; chapter 7 does single forward/backward passes


def measured_throughput(model: str = "resnet20", batch_size: int = 64, reps: int = 3) -> float:
    """FLOP/s of SGD steps measured on this machine: counted FLOPs of a step / median wall time of a step."""
    import statistics
    import time

    import torch.nn.functional as F

    torch.manual_seed(0)
    net = nets.build(model, num_classes=10, in_channels=3).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    times = []
    for i in range(reps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return step_flops(model, "cifar10", batch_size) / statistics.median(times)


def plan(profile: str = "paper", gpu_flops: float = ASSUMED_GPU_FLOPS) -> list[dict]:
    """Per chapter: runs, steps, counted PFLOPs, and GPU hours on 1 GPU at ``gpu_flops``."""
    rows = []
    for chapter in book.chapters():
        work = chapter_work(chapter, book.resolve(chapter, profile))
        flops = sum(w.runs * w.steps * step_flops(w.model, w.dataset, w.batch_size, w.width) for w in work)
        rows.append({"chapter": chapter, "runs": sum(w.runs for w in work),
                     "steps": sum(w.runs * w.steps for w in work), "pflops": flops / 1e15,
                     "gpu_hours": flops / gpu_flops / 3600,
                     "what": ", ".join(f"{w.runs} x {w.steps:,} steps of {w.model} on {w.dataset}, batch {w.batch_size}"
                                       for w in work)})
    return rows


def plan_markdown(profile: str = "paper", gpu_flops: float = ASSUMED_GPU_FLOPS, gpus: tuple[int, ...] = (1, 8, 32),
                  cpu_flops: float | None = None) -> str:
    """The plan as a Markdown table: CPU hours at the throughput measured here, GPU hours at ``gpu_flops``."""
    cpu_flops = measured_throughput() if cpu_flops is None else cpu_flops
    rows = [r for r in plan(profile, gpu_flops) if r["runs"]]
    head = ("| chapter | training | PFLOP (counted) | hours on this CPU (measured) | "
            + " | ".join(f"hours on {n} GPU{'s' if n > 1 else ''}" for n in gpus))
    lines = [head + " |", "|---|---|---|---|" + "---|" * len(gpus)]
    for r in rows:
        # runs are independent: N GPUs divide the time up to the number of runs
        hours = [r["gpu_hours"] / min(n, r["runs"]) for n in gpus]
        cpu_hours = r["pflops"] * 1e15 / cpu_flops / 3600
        lines.append(f"| {r['chapter']} | {r['what']} | {r['pflops']:.3g} | {cpu_hours:.3g} | "
                     + " | ".join(f"{h:.3g}" for h in hours) + " |")
    total = sum(r["gpu_hours"] for r in rows)
    total_pflops = sum(r["pflops"] for r in rows)
    lines.append(f"| **total** | | {total_pflops:.3g} | {total_pflops * 1e15 / cpu_flops / 3600:.3g} | "
                 + " | ".join(f"{sum(r['gpu_hours'] / min(n, r['runs']) for r in rows):.3g}" for n in gpus) + " |")
    return "\n".join(lines) + (
        f"\n\nThroughput measured on this machine when the book was built: {cpu_flops / 1e9:.1f} GFLOP/s "
        f"(SGD steps of ResNet20 on 3x32x32 inputs, batch 64, counted FLOPs / median step time). GPU hours assume "
        f"{gpu_flops / 1e12:g} TFLOP/s sustained per GPU, {gpu_flops / cpu_flops:,.0f} times the throughput measured "
        f"here (a stated ratio, not a measurement: about 1/8 of an RTX 4090's FP32 peak); "
        f"{math.ceil(total)} GPU hours in all on one GPU.\n")

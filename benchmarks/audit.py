"""The audit before and after the screen (Eq. 1), measured in one process: per torchvision model at random
initialisation (32 px, batch 2, one thread, params="weights" unless --all), the CPU seconds (process time: the machine is shared) of
``audit(method="factors")`` (every parameter scaled by the finite factors, the audit before) and of
``audit(method="screen")``, their ratio, and whether the rows agree (verdict, only_while_zero, reason).

    OMP_NUM_THREADS=1 python benchmarks/audit.py resnet50 efficientnet_b0 ...   [--all] [--new-only] [--out F]

``--partial`` times the screen's finite factors with whole forward passes (``fast=False``) against partial
ones (``fast=True``, the default: only what a scaled parameter reaches is recomputed), and checks that every
row is the same, its measured change included, bit for bit.

``--depthwise`` times the audit with torch's float64 grouped convolution (one group at a time) against the
audit's depthwise path (one unfold and one product where few output positions make that faster), and checks
that every row keeps its verdict, reason and method (the measured changes differ in the last bits).

With ``--out``, the table is also written to F (atomically, once every model is done).
"""
import argparse
import dataclasses
import os
import platform
import sys
import time
from collections import Counter

import torch

from elr import audit


def size(name):
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        return patch * -(-32 // patch)
    return 299 if name == "inception_v3" else (224 if name.startswith("maxvit") else 32)


def build(name):
    import torchvision

    s = size(name)
    kwargs = {"image_size": s} if name.startswith("vit_") else ({"input_size": (s, s)} if name.startswith("maxvit") else {})
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    return model, torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(0))


def key(r):
    return r.verdict, r.only_while_zero, r.reason


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--all", action="store_true", help='params="all" instead of "weights"')
    ap.add_argument("--new-only", action="store_true", help="time the screen only")
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--partial", action="store_true", help="whole against partial forward passes of the factors")
    ap.add_argument("--depthwise", action="store_true", help="torch's float64 depthwise convolution against the audit's")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    params = "all" if a.all else "weights"
    lines = []

    def emit(line):
        print(line, flush=True)
        lines.append(line)

    emit(f"machine: {platform.machine()}, {os.cpu_count()} cores, 1 torch thread, torch {torch.__version__}; "
         f"CPU seconds per audit (process time), 32 px (ViT: its patch; Inception 299, MaxViT 224), batch 2")
    emit("")
    if a.partial:
        emit("| model | rows | whole passes (s) | partial passes (s) | ratio | rows equal, changes included |")
        emit("|---|---|---|---|---|---|")
    elif a.depthwise:
        emit("| model | rows | torch's convolution (s) | depthwise path (s) | ratio | verdicts, reasons, methods equal |")
        emit("|---|---|---|---|---|---|")
    else:
        emit(f"| model | params | rows | factors (s) | screen (s) | ratio | rows equal | decided by |")
        emit("|---|---|---|---|---|---|---|---|")
    bad = 0
    own = audit._depthwise_conv2d

    def both_ways(name, rows_of):
        """Time ``rows_of(model, x, way)`` the old way (False) and the new (True); emit one row of the table."""
        model, x = build(name)
        times, rows = {}, {}
        for way in (False, True):
            t = time.process_time()
            rows[way] = rows_of(model, x, way)
            times[way] = time.process_time() - t
        same = rows[True] == rows[False]
        emit(f"| {name} | {len(rows[True])} | {times[False]:.1f} | {times[True]:.1f} | "
             f"{times[False] / times[True]:.2f}x | {'yes' if same else 'NO'} |")
        return not same

    def partial(model, x, fast):
        return [dataclasses.astuple(r) for r in audit.audit(model, x, params=params, fast=fast)]

    def depthwise(model, x, path):
        audit._depthwise_conv2d = own if path else (lambda *args, **kwargs: None)
        try:
            return [(r.name, r.verdict, r.reason, r.method) for r in audit.audit(model, x, params=params)]
        finally:
            audit._depthwise_conv2d = own

    if a.partial or a.depthwise:
        bad += sum(both_ways(name, partial if a.partial else depthwise) for name in a.models)
        a.models = []
    for name in a.models:
        model, x = build(name)
        t = time.process_time()
        new = audit.audit(model, x, params=params)
        t_new = time.process_time() - t
        how = Counter(r.method for r in new)
        if a.new_only:
            emit(f"| {name} | {params} | {len(new)} | | {t_new:.1f} | | | {dict(how)} |")
            continue
        t = time.process_time()
        old = audit.audit(model, x, params=params, method="factors")
        t_old = time.process_time() - t
        olds = {r.name: r for r in old}
        common = [r for r in new if r.name in olds]
        diff = [(r.name, key(olds[r.name]), key(r)) for r in common if key(olds[r.name]) != key(r)]
        verdict_diff = [d for d in diff if d[1][:2] != d[2][:2]]
        bad += len(verdict_diff)
        emit(f"| {name} | {params} | {len(new)} | {t_old:.1f} | {t_new:.1f} | {t_old / t_new:.0f}x | "
             f"{'yes' if not diff else f'{len(verdict_diff)} verdicts, {len(diff) - len(verdict_diff)} reasons differ'}"
             f" | {dict(how)} |")
        for d in diff[:5]:
            print("   DIFF", d, file=sys.stderr)
    if a.out:
        tmp = f"{a.out}.tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, a.out)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

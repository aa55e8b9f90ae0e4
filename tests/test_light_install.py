"""The core (elr.measure, elr.audit, elr.schedules, elr.gradients, elr.dynamics) runs in a fresh venv that has only
torch and numpy (and the packages torch itself needs), and pyproject.toml asks for nothing else.

A real `pip install torch numpy` costs about 90 s and 5.5 GB; instead the fresh venv (``--without-pip``) sees, through
one .pth file, a directory of symlinks to exactly the distributions torch and numpy need (their requirements,
recursively), taken from this venv. sympy is one of torch's own requirements (Dynamo imports it), so it is there;
the extras of elr are not."""
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the extras: not installed in the fresh venv (sympy is, as torch's own dependency)
EXTRAS = ("scipy", "sklearn", "matplotlib", "torchvision", "tqdm", "transformers", "lightning", "pandas")

CHECK = r"""
import importlib.util, sys
missing = [m for m in %(extras)r if importlib.util.find_spec(m) is not None]
assert not missing, f"the fresh venv can import {missing}: the test would prove nothing"
import numpy as np, torch
from torch import nn
import elr, elr.audit, elr.dynamics, elr.gradients, elr.measure, elr.schedules
assert elr.__file__.startswith(%(root)r), elr.__file__
# sympy may be imported, but only through torch's own Dynamo, which torch.optim imports when an optimizer is
# built (elr's imports do not: tests/test_measure.py): it is one of torch's requirements, not elr's

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
rows = {r.name: r for r in elr.audit.audit(model, x)}
assert rows["0.weight"].verdict == "auto-tunes" and rows["3.weight"].verdict == "breaks auto-tuning", rows
assert [n for n, _ in elr.audit.invariant_weights(model, x)] == ["0.weight"]

monitor = elr.measure.ELRMonitor(model)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
hooks = monitor.attach(opt)
for step in range(3):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
hooks.remove()
monitor.flush()
assert len(monitor.records) > 0
print("core ok;", len(sys.modules), "modules;", sorted(m for m in %(extras)r if m in sys.modules))
"""


def _distributions(roots=("torch", "numpy"), leave_out=()) -> list[metadata.Distribution]:
    """The installed distributions ``roots`` need (their requirements, recursively, for this platform)."""
    seen, todo, found = set(), list(roots), []
    while todo:
        name = re.split(r"[\s;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen or name in leave_out:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # an optional, platform or extra requirement that is not installed
            continue
        found.append(dist)
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(req)
    return found


def _expose(dists, into: Path) -> None:
    """Symlinks to the top-level files and directories (and dist-info) of ``dists`` in ``into``."""
    into.mkdir()
    for dist in dists:
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src, dst = base / top, into / top
            if src.exists() and not dst.exists() and not top.endswith(".pth") and top != "__pycache__":
                dst.symlink_to(src)


def _fresh_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    exposed = tmp_path / "torch-and-numpy"
    _expose(_distributions(), exposed)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "torch_and_numpy.pth").write_text(str(exposed) + "\n")
    return venv / "bin" / "python"


def test_the_core_runs_in_a_fresh_venv_with_only_torch_and_numpy(tmp_path):
    python = _fresh_venv(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(ROOT), PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([str(python), "-c", CHECK % {"extras": EXTRAS, "root": str(ROOT)}], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "core ok" in done.stdout


def test_pyproject_asks_only_for_torch_and_numpy_with_lower_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in project["dependencies"]}
    assert set(names) == {"torch", "numpy"}, names
    assert all(">=" in d and "==" not in d for d in names.values()), names
    # every pin of the book's environment is in constraints.txt, and `make install` uses it
    pins = [l.split("==")[0] for l in (ROOT / "constraints.txt").read_text().splitlines() if "==" in l]
    assert {"torch", "torchvision", "numpy", "sympy", "scipy", "matplotlib", "scikit-learn"} <= set(pins)
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_importing_the_audit_does_not_import_torchvision():
    code = "import sys, elr.audit, elr.measure, elr.schedules, elr.gradients; " \
           "print(sorted(m for m in %r if m in sys.modules))" % (EXTRAS,)
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in ("[]", "['tqdm']"), done.stdout  # torch itself may import tqdm if installed

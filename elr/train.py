"""The one training loop of every experiment, driven by a frozen :class:`TrainConfig`.

``train(config, run_dir)`` runs SGD (momentum, weight decay and Nesterov
optional; or timm's LARS, :func:`build_optimizer`) with any schedule, an optional warm-up and gradient transform,
the ELR monitor and evaluation, and leaves in ``run_dir`` the config, the code fingerprint, provenance,
the ELR records, the metrics and a checkpoint (the layout, and when a run is reused, are :mod:`elr.runs`'s).

:func:`run` and :func:`sweep` name a run's directory by :func:`elr.runs.run_key`, a hash of the config,
of the content of the ``elr`` modules that :mod:`elr.train` imports and of the torch version, so an edit to
the training code retrains while an edit to a chapter's prose does not. One process at a time trains a run
(it holds the run's lock); another that asks for the same run waits, then reuses it.

Every value of a :class:`TrainConfig` is checked when it is made: its type (``True`` is not a step count)
and its range, with bounds from what this machine can build and hold; the error names the field.

Checkpoints hold only tensors and plain containers and are loaded with
``torch.load(..., weights_only=True)``: a crafted ``checkpoint.pt`` is refused,
never executed. A checkpoint names the config and the code it belongs to; one of another run, or a
damaged one, is named in a warning and the run starts from step 0.

Every random choice (data order, flips, random-walk directions) is derived
from ``(seed, step)``, so a run is bit-for-bit reproducible on the CPU and a
killed run resumed from its checkpoint ends exactly where an uninterrupted
one does. A loss or weight that is not finite ends the run cleanly, recorded
as diverged with its step: at a super-critical rate that is a result, not a crash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import numbers
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

import elr
from elr import data as data_mod
from elr import dynamics, gradients, measure, nets, schedules
from elr.runs import (RUN_FILES, RunFileError, RunInfo, RunResult, code_fingerprint, default_root,  # noqa: F401
                      finished, list_runs, load_run, made_by_current_code, prune_runs, run_key, training_sources)
from elr import runs as run_cache

if os.environ.get("ELR_THREADS"):  # `make robust` checks the book with one torch thread (ELR_THREADS=1)
    torch.set_num_threads(int(os.environ["ELR_THREADS"]))

SCHEDULES = ("constant", "multistep", "cosine", "onecycle", "linear_warmup", "exponential")
WARMUPS = ("none", "subcritical")
TRANSFORMS = ("none", "random_walk", "constrain")
OPTIMIZERS = ("sgd", "lars")
LARS_SCOPES = ("invariant", "all")

#: The longest run a config may ask for. ImageNet's 90 epochs at batch 256 are 450,000 steps; 10^7 leaves
#: twenty times that, and a larger count is a typo (10**12 steps would run for years at any speed here).
MAX_STEPS = 10_000_000
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Seeds go to torch.manual_seed and numpy's SeedSequence as 64-bit integers; seed + n_seeds must stay below.
SEED_LIMIT = 2**63
#: Copies of each parameter a training process holds at once: weights, gradients, the momentum buffer and
#: the ELR monitor's snapshot of the weights before each update.
PARAMETER_COPIES = 4
#: Bytes one ELR record row takes (:class:`elr.measure.Records`: step, layer, channel, quantity, value) and
#: rows per layer and logged step (its whole-layer quantities).
RECORD_ROW_BYTES, RECORD_ROWS_PER_LAYER = 25, len(measure.LAYER_QUANTITIES)
#: Memory a finished run takes when a chapter holds it besides its records (its RunResult, metrics and config):
#: 3.5 kB measured with tracemalloc on the smallest run, rounded up.
RUN_OVERHEAD_BYTES = 4096


def machine_memory() -> int:
    """Bytes of physical memory of this machine: what every bound on a run's size is derived from."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_fits(model: str, width: int, steps: int, log_every: int, runs: int = 1, *, names: str = "") -> None:
    """Refuse, before any compute, ``runs`` runs of ``model`` that this machine cannot hold.

    A process trains one model at a time, holding :data:`PARAMETER_COPIES` float32 copies of its parameters
    (:func:`elr.nets.size_of`), and keeps every finished run's ELR records (one row per layer, quantity and
    logged step) plus :data:`RUN_OVERHEAD_BYTES`. ``names`` says which values set ``runs`` (for the message).
    """
    layers, params = nets.size_of(model, width)
    memory = machine_memory()
    model_bytes = PARAMETER_COPIES * 4 * params
    if model_bytes > memory:
        fix = ""
        if model.startswith("resnet") and model != "resnet101":
            n = (memory // (PARAMETER_COPIES * 4) + 23_040) // 96_768
            fix = f"; the deepest CIFAR ResNet that fits is resnet{6 * n + 2}"
        raise ValueError(f"model={model!r} (width={width}) cannot be built on this machine: {params:,} parameters need "
                         f"{_gb(model_bytes)} ({PARAMETER_COPIES} float32 copies: weights, gradients, momentum, the "
                         f"monitor's snapshot), more than its {_gb(memory)} of memory{fix}")
    per_run = -(-steps // log_every) * layers * RECORD_ROWS_PER_LAYER * RECORD_ROW_BYTES + RUN_OVERHEAD_BYTES
    if model_bytes + runs * per_run > memory:
        what = f"{runs:,} runs ({names}) of " if runs > 1 else ""
        raise ValueError(f"{what}steps={steps:,} logged every log_every={log_every} on {model} ({layers} layers) "
                         f"would hold {_gb(runs * per_run)} of results, more than this machine's {_gb(memory)}; "
                         f"lower {names + ', ' if names else ''}steps, or raise log_every")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. Defaults: a small quick run on the offline digits data."""

    model: str = "resnet20"            # elr.nets name: resnet20/56/110, resnet<6n+2>, resnet101, bnrelu<depth>, resmlp<depth>
    shortcut: bool | None = None       # None: the model's own (ResNets with shortcuts, bnrelu<d> without, resmlp<d>
                                       # with); False on a ResNet: the paper's "NoShort" network
    bn_affine: bool = False            # BatchNorm affine parameters (off in the paper, Sec. 4.1.1)
    width: int = 64                    # hidden width of bnrelu models
    head_norm: bool = False            # bnrelu/resmlp: a BatchNorm (affine as bn_affine) before the linear head
    dataset: str = "digits"            # digits (offline), cifar10, cifar100, imagenet
    data_root: str = "data"            # where cifar/imagenet live
    download: bool = False             # fetch CIFAR with torchvision if missing (needs network)
    n_train: int = 0                   # use only the first n training examples (0 = all)
    flip: bool | None = None           # random horizontal flips, the paper's only augmentation; None: on for natural
                                       # images (CIFAR, ImageNet), off for digits, whose mirror images are other glyphs
    batch_size: int = 128              # examples per step
    steps: int = 100                   # optimisation steps
    lr: float = 0.1                    # base / peak learning rate λ
    momentum: float = 0.0              # heavy-ball momentum (0 in the paper)
    nesterov: bool = False
    wd: float = 0.0                    # weight decay (0 in the paper)
    schedule: str = "constant"         # constant, multistep, cosine, onecycle, linear_warmup, exponential
    milestones: tuple[int, ...] = ()   # multistep: steps at which λ is multiplied by gamma
    gamma: float = 0.1                 # multistep / exponential factor
    warmup_steps: int = 0              # linear_warmup length
    pct_start: float = 0.3             # onecycle: fraction of steps rising
    div_factor: float = 25.0           # onecycle: initial rate = lr / div_factor
    final_div_factor: float = 1e4      # onecycle: final rate = initial / final_div_factor
    warmup: str = "none"               # "subcritical": the paper's warm-up before the schedule
    warmup_tol: float = 0.05           # subcritical warm-up ends when S_rel <= this
    warmup_max_steps: int = 1000       # ... or after this many warm-up steps
    transform: str = "none"            # none, random_walk (Def. 4.2), constrain (Eq. 33)
    elr_goal: float = 0.01             # constrain: target ELR per step (the update is lr·elr_goal relative)
    optimizer: str = "sgd"             # sgd (torch.optim.SGD) or lars (timm's Lars, elr[lars]; see build_optimizer)
    lars_scope: str = "invariant"      # lars: adapt the scale-invariant weights only (the rest: plain SGD) or "all"
    trust_coeff: float = 0.001         # lars: trust coefficient η; the relative update of an adapted weight is lr·η
    log_every: int = 1                 # ELR monitor interval in steps
    per_channel: bool = False          # also record per-channel values
    eval_every: int = 0                # evaluate every n steps (0 = only at the end)
    eval_batches: int = 0              # limit evaluation to n batches (0 = the whole test set)
    checkpoint_every: int = 0          # write checkpoint.pt every n steps (0 = never)
    seed: int = 0
    device: str = "cpu"
    channels_last: bool = False        # NHWC memory format for convolutions
    autocast: str = "none"             # "bf16": bfloat16 autocast of the forward pass; ELRs and norms stay float32
    compile: bool = False              # torch.compile the model (the first step's time, compilation included, is recorded)
    progress: bool = False             # show a tqdm progress bar

    def __post_init__(self):
        self._check_types()
        checks = [
            (1 <= self.steps <= MAX_STEPS, f"steps must be in 1..{MAX_STEPS:,} (MAX_STEPS), got {self.steps!r}"),
            (0 <= self.seed < SEED_LIMIT, f"seed must be in 0..2**63-1 (a 64-bit seed), got {self.seed!r}"),
            (self.n_train == 0 or self.n_train >= self.batch_size,
             f"n_train must be 0 (every example) or at least batch_size={self.batch_size}, got {self.n_train!r}"),
            (self.eval_batches >= 0, f"eval_batches must be >= 0 (0 = the whole test set), got {self.eval_batches!r}"),
            (self.eval_every >= 0, f"eval_every must be >= 0 (0 = only at the end), got {self.eval_every!r}"),
            (self.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0 = never), got {self.checkpoint_every!r}"),
            (self.width >= 1, f"width must be >= 1, got {self.width!r}"),
            (0 < self.pct_start < 1, f"pct_start (the rising fraction of onecycle) must be in (0, 1), got {self.pct_start!r}"),
            (self.div_factor > 0, f"div_factor must be > 0 (onecycle starts at lr / div_factor), got {self.div_factor!r}"),
            (self.final_div_factor > 0, f"final_div_factor must be > 0, got {self.final_div_factor!r}"),
            (self.gamma > 0, f"gamma must be > 0, got {self.gamma!r}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps!r}"),
            (self.warmup_tol > 0, f"warmup_tol must be > 0, got {self.warmup_tol!r}"),
            (self.warmup_max_steps >= 1, f"warmup_max_steps must be >= 1, got {self.warmup_max_steps!r}"),
            (all(m >= 0 for m in self.milestones) and list(self.milestones) == sorted(set(self.milestones)),
             f"milestones must be increasing steps >= 0, got {self.milestones!r}"),
            (self.batch_size >= 2, "batch_size must be >= 2 (batch normalisation needs a batch)"),
            (self.lr > 0, "lr must be > 0"),
            # SGD scales float32 tensors by lr (and momentum, wd): a factor beyond float32's range is an error there
            (max(self.lr, self.momentum, self.wd) <= FLOAT32_MAX,
             f"lr, momentum and wd must be at most {FLOAT32_MAX:.3g} (float32's largest), got lr={self.lr!r}, "
             f"momentum={self.momentum!r}, wd={self.wd!r}"),
            (self.momentum >= 0 and self.wd >= 0, "momentum and wd must be >= 0"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.warmup in WARMUPS, f"warmup must be one of {WARMUPS}"),
            (self.transform in TRANSFORMS, f"transform must be one of {TRANSFORMS}"),
            (self.dataset in data_mod.DATASETS, f"dataset must be one of {data_mod.DATASETS}"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.elr_goal > 0, "elr_goal must be > 0"),
            (not (self.nesterov and self.momentum == 0), "nesterov needs momentum > 0"),
            (self.autocast in ("none", "bf16"), "autocast must be 'none' or 'bf16'"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.lars_scope in LARS_SCOPES, f"lars_scope must be one of {LARS_SCOPES}"),
            (self.trust_coeff > 0, "trust_coeff must be > 0"),
            # an MLP's name fixes its shortcuts: a contrary flag would otherwise be ignored and train the other network
            (not (self.model.startswith("bnrelu") and self.shortcut is True),
             f"model={self.model!r} has no shortcuts, so shortcut=True would be ignored; use "
             f"model='resmlp{self.model[6:]}' for the residual MLP, or leave shortcut unset"),
            (not (self.model.startswith("resmlp") and self.shortcut is False),
             f"model={self.model!r} is the residual MLP, so shortcut=False would be ignored; use "
             f"model='bnrelu{self.model[6:]}' for the MLP without shortcuts, or leave shortcut unset"),
            (not self.head_norm or self.model.startswith(("bnrelu", "resmlp")),
             f"head_norm=True is an option of the MLPs (bnrelu<depth>, resmlp<depth>), not of model={self.model!r}, "
             f"whose ResNets end in their own normalisation; leave head_norm unset"),
            (not (self.optimizer == "lars" and self.transform == "constrain"),
             "optimizer='lars' with transform='constrain' constrains the update twice; choose one of them"),
            (not (self.optimizer == "lars" and self.lars_scope == "invariant" and self.wd > 0),
             "optimizer='lars' with lars_scope='invariant' cannot use wd > 0: timm's Lars adapts every parameter it "
             "decays, so the other parameters could not keep plain SGD; use lars_scope='all' or wd=0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")
        if self.optimizer == "lars" and importlib.util.find_spec("timm") is None:
            raise ImportError("TrainConfig: optimizer='lars' uses timm's Lars, which is not installed; "
                              "pip install 'elr[lars]' (the pinned timm)")
        try:
            check_fits(self.model, self.width, self.steps, self.log_every)
        except ValueError as err:
            raise ValueError(f"TrainConfig: {err}") from None

    def _check_types(self) -> None:
        """Each field of the type it declares (a bool is not a count, a string not a rate; floats finite),
        numpy scalars taken as the Python numbers they are; raises naming the field."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.type
            bad = isinstance(value, (bool, np.bool_)) and kind not in ("bool", "bool | None")
            if kind in ("bool", "bool | None"):
                ok = isinstance(value, (bool, np.bool_)) or (value is None and kind == "bool | None")
                value = bool(value) if ok and value is not None else value
            elif kind == "int":
                ok = isinstance(value, numbers.Integral) and not bad
                value = int(value) if ok else value
            elif kind == "float":
                ok = isinstance(value, numbers.Real) and not bad and math.isfinite(value)
                value = float(value) if ok else value
            elif kind == "str":
                ok = isinstance(value, str)
            else:  # milestones: tuple[int, ...]
                ok = isinstance(value, (list, tuple)) and all(
                    isinstance(m, numbers.Integral) and not isinstance(m, (bool, np.bool_)) for m in value)
                value = tuple(int(m) for m in value) if ok else value
            if not ok:
                what = {"tuple[int, ...]": "a list of step numbers (ints)"}.get(kind, f"{'a finite ' if kind == 'float' else ''}{kind}")
                raise ValueError(f"TrainConfig: {f.name} must be {what}, got {value!r} ({type(value).__name__})")
            object.__setattr__(self, f.name, value)

    @property
    def flips(self) -> bool:
        """Whether training batches are flipped: ``flip``, or by default only for natural images."""
        return self.dataset != "digits" if self.flip is None else bool(self.flip)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"TrainConfig has no field(s) {', '.join(unknown)}; fields: {', '.join(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out

    @property
    def has_shortcuts(self) -> bool:
        """Whether the network trained has shortcuts (``shortcut`` if set, else the model's own)."""
        if self.model.startswith(("bnrelu", "resmlp")):
            return self.model.startswith("resmlp")
        return self.shortcut is not False

    def key(self) -> str:
        """A stable short hash of the config alone (see :func:`run_key` for the name of a run directory)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def lr_at(self, step: int) -> float:
        """The schedule (without warm-up) as a pure function of the step, from elr.dynamics."""
        s = np.asarray(step)
        fn = {
            "constant": lambda: dynamics.constant(s, self.lr),
            "multistep": lambda: dynamics.multistep(s, self.lr, self.milestones, self.gamma),
            "cosine": lambda: dynamics.cosine(s, self.lr, self.steps),
            "onecycle": lambda: dynamics.one_cycle(s, self.lr, self.steps, self.pct_start, self.div_factor,
                                                   self.final_div_factor),
            "linear_warmup": lambda: dynamics.linear_warmup(s, self.lr, self.warmup_steps),
            "exponential": lambda: dynamics.exponential(s, self.lr, self.gamma),
        }[self.schedule]
        return float(fn())


# --------------------------------------------------------------------- helpers


def _atomic_json(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def _atomic_torch_save(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".pt")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint that holds something other than tensors and plain containers."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, never code."""
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpoint(
            f"refusing to load {path}: it holds objects other than tensors and plain containers, and loading "
            f"them could run code ({str(err).splitlines()[0]}). elr writes no such checkpoint; delete the file "
            f"to train this run from the start.") from None


def _checkpoint_identity(config: TrainConfig) -> dict[str, str]:
    """What a checkpoint says it belongs to: the run's config and the training code that wrote it."""
    return {"config": json.dumps(config.to_dict(), sort_keys=True), "code": code_fingerprint()["code"]}


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "records", "step", "history")


def _checkpoint_of(config: TrainConfig, path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it is one of this run (its config, its code, a step within the run).

    Otherwise (another run's checkpoint, one too old to name its run, a truncated or garbled file) a warning
    names the file and why, the file is removed, and None is returned: the run starts from step 0, which is
    always safe. A checkpoint that carries code still raises :class:`UnsafeCheckpoint`.
    """
    try:
        ckpt = load_checkpoint(path)
    except UnsafeCheckpoint:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for a damaged file
        why = f"it cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    else:
        step = ckpt.get("step") if isinstance(ckpt, dict) else None
        if not isinstance(ckpt, dict) or any(k not in ckpt for k in _CHECKPOINT_KEYS):
            why = "it is not a checkpoint elr writes"
        elif {k: ckpt.get(k) for k in ("config", "code")} != _checkpoint_identity(config):
            why = "it belongs to another config or other training code"
        elif isinstance(step, bool) or not isinstance(step, int) or not 0 < step <= config.steps:
            why = f"its step {step!r} lies outside this run's 1..{config.steps}"
        else:
            return ckpt
    warnings.warn(f"ignoring the checkpoint {path}: {why}; training this run from step 0", stacklevel=3)
    path.unlink(missing_ok=True)
    return None


def _step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """An independent generator for (seed, step, purpose): no state to checkpoint."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0]))


def build_optimizer(config: TrainConfig, model: torch.nn.Module, invariant: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The run's optimizer: ``torch.optim.SGD``, or timm's ``Lars`` (LARS, You et al. 2017).

    LARS with ``always_adapt=True`` scales each adapted parameter's gradient g by η‖W‖/(‖g‖ + wd‖W‖ + 1e-8)
    after adding wd·W, so at ``wd=0`` every adapted weight moves by ``lr·η`` of its norm each step (before
    momentum): the update ELR the paper's constraint sets with ``lr·elr_goal`` (chapter 19 compares the two).
    ``lars_scope="invariant"`` adapts only the scale-invariant weights (``invariant``, the ones
    :class:`elr.gradients.ConstrainELR` constrains) and trains every other parameter with plain SGD (a group with
    ``always_adapt=False`` and no weight decay); ``"all"`` adapts every parameter, biases and the classifier
    included, as one group. A parameter whose norm is zero (a zero-initialised bias) gets trust ratio 1 from timm,
    that is the raw ``lr``.
    """
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.wd)
    import warnings

    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        # timm imports huggingface_hub, which imports tqdm.auto: in a Jupyter kernel without ipywidgets that
        # warns "IProgress not found" onto the chapter's page, about a progress bar nothing here shows
        warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
        from timm.optim import Lars

    options = dict(lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.wd,
                   trust_coeff=config.trust_coeff, always_adapt=True)
    if config.lars_scope == "all":
        return Lars(model.parameters(), **options)
    ids = {id(p) for p in invariant}
    groups = [{"params": [p for p in model.parameters() if id(p) in ids]},
              {"params": [p for p in model.parameters() if id(p) not in ids], "always_adapt": False,
               "weight_decay": 0.0}]
    return Lars([g for g in groups if g["params"]], **options)


def build_model(config: TrainConfig, in_channels: int, num_classes: int, in_features: int) -> torch.nn.Module:
    kwargs = {"shortcut": config.has_shortcuts, "bn_affine": config.bn_affine, "num_classes": num_classes}
    if config.model.startswith(("bnrelu", "resmlp")):
        kwargs = {"bn_affine": config.bn_affine, "num_classes": num_classes, "width": config.width,
                  "in_features": in_features, "head_norm": config.head_norm}
    elif config.model != "resnet101":
        kwargs["in_channels"] = in_channels
    return nets.build(config.model, **kwargs)


class _Batches:
    """Deterministic batches: epoch e uses the permutation seeded by (seed, e)."""

    def __init__(self, dataset, batch_size: int, seed: int):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.n = len(dataset)
        self.per_epoch = max(self.n // batch_size, 1)  # drop the last partial batch
        self._epoch, self._perm = None, None

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=_step_generator(self.seed, epoch, 1))
            self._epoch = epoch
        idx = self._perm[k * self.batch_size:(k + 1) * self.batch_size]
        if isinstance(self.dataset, data_mod.TensorData):
            return self.dataset.inputs[idx], self.dataset.labels[idx]
        items = [self.dataset[int(i)] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def _subset(ds, n: int):
    if n and isinstance(ds, data_mod.TensorData) and n < len(ds):
        return data_mod.TensorData(ds.inputs[:n], ds.labels[:n], ds.name, ds.description + f", first {n} used")
    return ds


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, config: TrainConfig) -> dict[str, float]:
    model.eval()
    correct, total, loss = 0, 0, 0.0
    n_batches = -(-len(dataset) // config.batch_size)
    if config.eval_batches:
        n_batches = min(n_batches, config.eval_batches)
    for b in range(n_batches):
        sl = slice(b * config.batch_size, (b + 1) * config.batch_size)
        if isinstance(dataset, data_mod.TensorData):
            x, y = dataset.inputs[sl], dataset.labels[sl]
        else:
            items = [dataset[i] for i in range(sl.start, min(sl.stop, len(dataset)))]
            x, y = torch.stack([a for a, _ in items]), torch.tensor([c for _, c in items])
        x, y = x.to(config.device), y.to(config.device)
        if config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    model.train()
    return {"test_loss": loss / max(total, 1), "test_acc": correct / max(total, 1)}


# ------------------------------------------------------------------ the loop


def train(config: TrainConfig, run_dir: str | Path, resume: bool = True, *, retrain: bool = False) -> RunResult:
    """Run ``config`` into ``run_dir``; with ``resume``, continue from ``checkpoint.pt`` if present.

    A run directory that already holds a finished run of the same config, made
    by the same training code and torch version, is returned as it is (nothing
    is retrained). One made by other code is cleared and retrained, and so is everything with ``retrain``.
    The run's lock is held throughout: a second process asking for the same run waits, then reuses it.
    """
    run_dir = Path(run_dir)
    rank, world = _distributed(config)
    if rank > 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        return _train(config, run_dir, resume, rank, world)
    with run_cache.run_lock(run_dir):
        config_path = run_dir / "config.json"
        if retrain:
            _clear(run_dir)
        elif config_path.exists():
            try:
                stored = run_cache.read_json(config_path, "the run's config")
            except RunFileError as err:
                if run_dir.name != run_key(config):
                    raise RunFileError(f"{err}; delete it (or the run directory) to train {run_dir} again") from None
                # the directory is named by this config's key, so it can only have held this run: train it again
                warnings.warn(f"{err}; the directory is this config's run, so it is trained again", stacklevel=2)
                stored = config.to_dict()
                _clear(run_dir)
            if stored != config.to_dict():
                raise ValueError(f"{run_dir} holds a run of a different config; use another run_dir")
            if not made_by_current_code(run_dir):
                # results of other code (or of an elr too old to say): nothing here may be reused or resumed
                _clear(run_dir)
            elif finished(run_dir):
                return load_run(run_dir)
        _atomic_json(config_path, config.to_dict())
        _atomic_json(run_dir / "fingerprint.json", code_fingerprint())
        return _train(config, run_dir, resume, rank, world)


def _clear(run_dir: Path) -> None:
    """Remove a run's results and checkpoint (not its lock): it will be trained from step 0."""
    run_cache.unseal(run_dir)
    for name in RUN_FILES + ("checkpoint.pt",):
        (run_dir / name).unlink(missing_ok=True)


def _distributed(config: TrainConfig) -> tuple[int, int]:
    """(rank, world size); under torchrun (WORLD_SIZE > 1) joins the process group (gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo" if config.device == "cpu" else "nccl")
    return dist.get_rank(), dist.get_world_size()


def _train(config: TrainConfig, run_dir: Path, resume: bool, rank: int, world: int) -> RunResult:
    ckpt_path = run_dir / "checkpoint.pt"
    wall_start = time.time()

    torch.manual_seed(config.seed)
    train_set = _subset(data_mod.load(config.dataset, True, config.data_root, config.download), config.n_train)
    test_set = data_mod.load(config.dataset, False, config.data_root, config.download)
    sample_x, _ = (train_set.inputs[:1], None) if isinstance(train_set, data_mod.TensorData) else train_set[0]
    in_channels = sample_x.shape[-3] if sample_x.dim() >= 3 else 1
    num_classes = train_set.num_classes if isinstance(train_set, data_mod.TensorData) else len(train_set.classes)
    model = build_model(config, in_channels, num_classes, int(np.prod(sample_x.shape[1:] if sample_x.dim() == 4 else sample_x.shape)))
    model = model.to(config.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    layers = nets.scale_invariant_layers(model)
    net = model
    if world > 1:
        if config.batch_size % world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
        # gradients are averaged over processes; BatchNorm statistics stay per process (plain DDP)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if config.device == "cpu" else [rank])
    if config.compile:
        net = torch.compile(net)  # parameters stay those of `model`: the monitor and checkpoints see no difference
    weights = [m.weight for _, m in layers]
    optimizer = build_optimizer(config, model, weights)
    if config.warmup == "subcritical":
        scheduler = schedules.SubcriticalWarmup(optimizer, weights, config.lr_at, tol=config.warmup_tol,
                                                max_steps=config.warmup_max_steps)
    else:
        scheduler = schedules.PureSchedule(optimizer, config.lr_at)
    transform = {"none": None, "random_walk": gradients.RandomWalk(weights, seed=config.seed),
                 "constrain": gradients.ConstrainELR(weights, config.elr_goal)}[config.transform]
    monitor = measure.ELRMonitor(layers, every=config.log_every, per_channel=config.per_channel)
    batches = _Batches(train_set, config.batch_size, config.seed)

    start_step, history, status, diverged_at = 0, [], "running", None
    ckpt = _checkpoint_of(config, ckpt_path) if resume and ckpt_path.exists() else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        table = ckpt["records"].numpy().view(measure.Records._DTYPE).copy()
        monitor.records = measure.Records(monitor.names, [table])
        start_step, history = ckpt["step"], ckpt["history"]
        wall_start -= ckpt.get("wall", 0.0)

    def checkpoint(step: int) -> None:
        # only tensors and plain containers, so that it loads with weights_only=True (the records as raw bytes)
        records = torch.from_numpy(monitor.records.table.view(np.uint8).copy())
        _atomic_torch_save(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "scheduler": scheduler.state_dict(), "records": records,
                                       "step": step, "history": history, "wall": time.time() - wall_start,
                                       **_checkpoint_identity(config)})

    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start_step, desc=f"{config.model} λ={config.lr:g}", leave=False)
    model.train()
    step = start_step
    step_seconds = []  # wall time of the first steps of this process (the first includes any compilation)
    for step in range(start_step, config.steps):
        tick = time.perf_counter()
        x, y = batches.get(step)
        if config.flips and x.dim() == 4:
            x = data_mod.random_flip(x, _step_generator(config.seed, step, 2))
        if world > 1:
            x, y = x[rank::world], y[rank::world]  # this process's share of the global batch
        x, y = x.to(config.device), y.to(config.device)
        if config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(config.device).type, dtype=torch.bfloat16,
                            enabled=config.autocast == "bf16"):
            loss = F.cross_entropy(net(x), y)
        if not torch.isfinite(loss):
            status, diverged_at = "diverged", step
            break
        loss.backward()
        if isinstance(transform, gradients.RandomWalk):
            transform.generator.manual_seed(int(np.random.SeedSequence([config.seed, step, 3]).generate_state(1)[0]))
        before = None
        if isinstance(transform, gradients.ConstrainELR) and monitor.logs(step):
            # the constraint sets every ELR to E_goal, so the monitor, which reads the rescaled gradient, sees
            # almost no spread: keep the spread of the loss gradient's own ELRs, the paper's per-channel maximum
            before = float(dynamics.relative_spread(gradients.channel_max_elrs(weights)))
        if transform is not None:
            transform()
        monitor.observe_gradients(step)
        lr = scheduler.step()
        optimizer.step()
        monitor.observe_update(step)
        if not _all_finite(weights):
            status, diverged_at = "diverged", step
            break
        if monitor.logs(step):
            history.append({"step": step, "train_loss": loss.item(), "lr": lr,
                            **({} if before is None else {"spread_before_constraint": before})})
        if len(step_seconds) < 5:
            step_seconds.append(time.perf_counter() - tick)
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps and rank == 0:
            history.append({"step": step + 1, **evaluate(model, test_set, config)})
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and rank == 0:
            checkpoint(step + 1)
        if bar is not None:
            bar.update(1)
    else:
        status, step = "completed", config.steps
    if bar is not None:
        bar.close()
    if rank > 0:  # the records of every process, to check that they agree; metrics come from rank 0
        monitor.records.save(run_dir / f"records.rank{rank}.npz")
        return RunResult(run_dir, status, step, diverged_at, {"status": status}, monitor.records)
    final = evaluate(model, test_set, config) if status == "completed" else {}
    metrics = {"status": status, "diverged_at": diverged_at, "steps_done": step,
               "final": final, "history": history,
               "warmup_steps": getattr(scheduler, "warmup_steps", 0),
               "first_step_seconds": step_seconds[:1], "next_step_seconds": step_seconds[1:]}
    monitor.records.save(run_dir / "records.npz")
    _atomic_json(run_dir / "provenance.json", {
        "elr_version": elr.__version__, "git": _git_revision(), "torch": torch.__version__,
        "code": code_fingerprint()["code"],
        "python": platform.python_version(), "device": config.device, "machine": platform.machine(),
        "dataset": getattr(train_set, "description", config.dataset), "wall_seconds": round(time.time() - wall_start, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    metrics = run_cache.seal(run_dir, metrics)  # written last: a run is finished once its digests hold
    return RunResult(run_dir, status, metrics["steps_done"], diverged_at, metrics, monitor.records)


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every entry of every tensor is finite, with one reduction per tensor and one host sync in all:
    the largest |entry| of a tensor is NaN or ±inf exactly when the tensor holds one, and it cannot overflow."""
    if not tensors:
        return True
    if len({t.dtype for t in tensors}) > 1:
        return all(bool(torch.isfinite(t).all()) for t in tensors)
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors, float("inf")))).all())


def _git_revision() -> str:
    from elr.book import git_revision

    return git_revision()


def run(config: TrainConfig, root: str | Path | None = None, fresh: bool | None = None) -> RunResult:
    """Train ``config`` into ``root/<run_key>``, reusing a finished run of the same config and code unless ``fresh``.

    ``fresh=None`` reads the environment variable ELR_FRESH (set by ``elr book --fresh`` and
    ``elr run --fresh``): then every run is retrained once per process, never twice.
    """
    root = default_root() if root is None else Path(root)
    run_dir = root / run_key(config)
    run_cache.note_use(root, run_dir.name)
    if fresh is None:
        fresh = os.environ.get("ELR_FRESH") == "1" and str(run_dir.resolve()) not in _RETRAINED
        _RETRAINED.add(str(run_dir.resolve()))
    return train(config, run_dir, retrain=bool(fresh))


_RETRAINED: set[str] = set()


ENGINES = ("pool", "submitit")


def sweep(configs: list[TrainConfig], root: str | Path | None = None, workers: int | None = None, engine: str = "pool",
          cluster: str | None = None, executor_parameters: dict[str, Any] | None = None,
          poll_seconds: float = 0.5) -> list[RunResult]:
    """Run (or reuse) every config; a diverged run is a result like any other.

    Runs land in ``root/<config key>`` whatever runs them, so a chapter reads a
    sweep the same way. Finished runs are reused and interrupted ones resume
    from their checkpoint: a sweep that was killed skips what it had finished.

    ``workers=None`` reads the environment variable ELR_WORKERS (default 1): chapters
    call ``sweep(configs)`` and the person running the book decides
    (``ELR_WORKERS=2 make book``). Runs in one process repeat bit for bit; runs in a
    pool did not always do so here (see the book's reproducibility page).

    ``engine="pool"``: ``workers > 1`` runs the missing configs in a local pool of
    that many processes (one torch thread each, so the pool is bounded by the cores).

    ``engine="submitit"``: through submitit (``pip install 'elr[cluster]'``). With
    ``cluster=None`` it submits a SLURM job array when ``sbatch`` is available
    (``executor_parameters`` go to ``update_parameters``, e.g.
    ``{"slurm_partition": "gpu", "gpus_per_node": 1, "timeout_min": 600}``;
    ``workers`` caps how many array tasks run at once) and otherwise runs
    local subprocesses, at most ``workers`` at a time; ``cluster="local"``
    forces the latter.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    root = default_root() if root is None else Path(root)
    if workers is None:
        workers = int(os.environ.get("ELR_WORKERS", "1"))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    fingerprint = code_fingerprint()
    todo = [cfg for cfg in configs
            if not finished(Path(root) / run_key(cfg, fingerprint)) or os.environ.get("ELR_FRESH") == "1"]
    jobs = [(cfg.to_dict(), str(root)) for cfg in todo]
    if engine == "submitit" and todo:
        _submitit(jobs, Path(root), workers, cluster, executor_parameters or {}, poll_seconds)
    elif workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            list(pool.map(_run_in_worker, jobs))
    else:
        todo = []  # run below, in this process
    for cfg in todo:  # retrained by the workers: do not retrain again in this process
        _RETRAINED.add(str((Path(root) / run_key(cfg, fingerprint)).resolve()))
    return [run(cfg, root) for cfg in configs]


K = TypeVar("K")


def sweep_seeds(cases: Mapping[K, TrainConfig], seed: int, n_seeds: int, **kwargs) -> dict[K, list[RunResult]]:
    """Every case with seeds ``seed, …, seed + n_seeds − 1``, in one :func:`sweep` (so a pool shares the work).

    ``result[key][i]`` is the run of ``cases[key]`` with seed ``seed + i``: runs at the same index share
    their initialisation and data order across cases, which is what a paired comparison needs. The
    seed in each given config is replaced.
    """
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}; a claim that compares runs needs at least 2")
    if seed < 0:
        raise ValueError(f"seed (the base seed) must be >= 0, got {seed}")
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, numbers.Integral):
        raise ValueError(f"n_seeds must be an int, got {n_seeds!r}")
    if seed + n_seeds > SEED_LIMIT:
        raise ValueError(f"seed + n_seeds must stay below 2**63 (64-bit seeds), got seed={seed}, n_seeds={n_seeds}")
    keys = list(cases)
    for k in keys:  # before a single config is made: 10**9 seeds would exhaust the memory in the list below
        check_fits(cases[k].model, cases[k].width, cases[k].steps, cases[k].log_every, runs=n_seeds * len(keys),
                   names=f"n_seeds={n_seeds} × {len(keys)} cases")
    configs = [dataclasses.replace(cases[k], seed=seed + i) for k in keys for i in range(n_seeds)]
    results = sweep(configs, **kwargs)
    return {k: results[j * n_seeds:(j + 1) * n_seeds] for j, k in enumerate(keys)}


def _submitit(jobs: list[tuple[dict, str]], root: Path, workers: int, cluster: str | None,
              parameters: dict[str, Any], poll_seconds: float) -> None:
    try:
        import submitit
    except ImportError:
        raise ImportError("engine='submitit' needs submitit: pip install 'elr[cluster]'") from None
    executor = submitit.AutoExecutor(folder=root / "_submitit" / "%j", cluster=cluster)
    params = {"timeout_min": 24 * 60, **parameters}
    if executor.cluster == "slurm":
        params.setdefault("slurm_array_parallelism", workers)
    executor.update_parameters(**params)
    if executor.cluster == "slurm":
        import functools

        for job in executor.map_array(functools.partial(_run_in_worker, threads=None), jobs):
            job.result()  # raises with the job's traceback if it failed
        return
    # local (or debug) executor: it starts every job at once, so keep at most `workers` running
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < workers:
            running.append(executor.submit(_run_in_worker, pending.pop(0), 1))
        done = [job for job in running if job.done()]
        for job in done:
            job.result()
            running.remove(job)
        if not done:
            time.sleep(poll_seconds)


def _die_with_parent(parent: int) -> None:
    """Pool worker initializer: the worker is killed when the process that started it dies, however it dies.

    A ``kill -9`` of ``elr run`` (or of the kernel sweeping) runs no clean-up, so the pool cannot stop its
    workers itself; on Linux the kernel does, through the parent-death signal (``prctl(PR_SET_PDEATHSIG)``).
    Killing a worker mid-run loses nothing: its checkpoint and results are only ever replaced atomically.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed in a sweep worker")
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _run_in_worker(job: tuple[dict, str], threads: int | None = 1) -> str:
    """Run one config in a worker process; ``threads=None`` keeps torch's default (a cluster job's own cores)."""
    values, root = job
    if threads:
        torch.set_num_threads(threads)
    values["milestones"] = tuple(values["milestones"])
    return str(run(TrainConfig(**values), root).run_dir)

"""Measuring effective learning rates in any PyTorch training loop.

::

    monitor = ELRMonitor(model, every=10)          # the weights the audit finds scale-invariant (first forward)
    for step, (x, y) in enumerate(loader):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward()
        monitor.observe_gradients(step)             # gradient ELR ‖∇W‖/‖W‖
        opt.step()
        monitor.observe_update(step)                # update ELR ‖ΔW‖/‖W_before‖
    monitor.records.spread("elr_grad_max")          # S_rel per logged step

Or ``monitor.attach(opt)``: optimizer step hooks, correct under AMP (plain,
foreach and fused optimizers), DDP, FSDP2 and ``torch.compile``.

On a logged step the monitor computes the squared norms per output channel
with one reduction per tensor (weight, gradient, update), on the device and
without stacked copies, and moves them to the host in one transfer (under
FSDP2 after one all-reduce of the shards' sums); on other steps both calls
return at once. Layer
values are Frobenius norms over the whole layer; ``elr_grad_max`` and
``elr_update_max`` are the maximum over output channels, the paper's choice
(Sec. 4.3.1).

A weight whose norm is zero has no ELR: its ELRs are recorded as NaN, never
as a division by zero, and ``Records.spread`` returns NaN for a step that
contains one.
"""
from __future__ import annotations

import functools
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from elr import dynamics
from elr.nets import scale_invariant_layers


def _outside_compile(fn):
    """``torch.compiler.disable`` without importing Dynamo in a process that never compiles.

    Decorating with ``torch.compiler.disable`` imports ``torch._dynamo`` (about 2 s and 900 modules, sympy
    among them) when this module is imported, in every process that measures, compiled or not. Here the
    hook asks ``torch.compiler.is_compiling()`` (a flag, no import): eager code calls ``fn`` itself; code
    that Dynamo traces sees True and calls the disabled ``fn``, so the hook still runs outside the graph.
    """
    disabled = []

    @functools.wraps(fn)
    def hook(*args, **kwargs):
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return hook

#: Quantities recorded per layer (channel = -1) and, with ``per_channel``, per output channel.
LAYER_QUANTITIES = ("weight_norm", "grad_norm", "elr_grad", "elr_grad_max",
                    "update_norm", "elr_update", "elr_update_max")
CHANNEL_QUANTITIES = ("weight_norm", "grad_norm", "elr_grad", "update_norm", "elr_update")
QUANTITIES = LAYER_QUANTITIES  # every name that can appear; channel rows use a subset
_CODE = {q: i for i, q in enumerate(QUANTITIES)}


def summarize_elrs(e: np.ndarray) -> dict[str, np.ndarray]:
    """The summary scalars of ELR rows ``e`` (steps × layers): ``elr_max``, ``elr_min``, ``spread`` (S_rel,
    Def. 4.1), ``kappa_lh`` (κ_ℓh = 1/√(E_min E_max)) and ``kappa_hh`` (κ_hh', Cor. 3.10), NaN for a row where a
    layer has no ELR. O(layers) per row: a logger summarises each new step alone."""
    e = np.atleast_2d(np.asarray(e, dtype=float))
    n = len(e)
    out = {k: np.full(n, np.nan) for k in ("elr_max", "elr_min", "spread", "kappa_lh", "kappa_hh")}
    ok = np.all(np.isfinite(e) & (e > 0), axis=1) if n else np.zeros(0, bool)
    if ok.any():
        good = e[ok]
        out["elr_max"][ok], out["elr_min"][ok] = good.max(axis=1), good.min(axis=1)
        out["spread"][ok] = dynamics.relative_spread(good)
        out["kappa_lh"][ok] = dynamics.critical_lr(good)
        out["kappa_hh"][ok] = dynamics.subcritical_lr(good)
    return out


@dataclass
class Records:
    """A tidy table of measurements: one row per (step, layer, channel, quantity).

    ``layer`` indexes ``layer_names``; ``depth`` is the same index (0 = lowest
    scale-invariant layer); ``channel`` is -1 for a whole-layer value.
    """

    layer_names: list[str]
    _chunks: list[np.ndarray] = field(default_factory=list, repr=False)
    spill_dir: str | Path | None = None  # where chunks of spill_rows rows go, to keep memory bounded
    spill_rows: int = 1_000_000
    _spilled: list[Path] = field(default_factory=list, repr=False)
    _rows: int = field(default=0, repr=False)

    _DTYPE = np.dtype([("step", "i8"), ("layer", "i4"), ("channel", "i4"), ("quantity", "i1"), ("value", "f8")])

    def add(self, step: int, layer: np.ndarray, channel: np.ndarray, quantity: str, value: np.ndarray) -> None:
        rows = np.empty(len(value), dtype=self._DTYPE)
        rows["step"], rows["layer"], rows["channel"] = step, layer, channel
        rows["quantity"], rows["value"] = _CODE[quantity], value
        self._chunks.append(rows)
        self._rows += len(rows)
        if self.spill_dir is not None and self._rows >= self.spill_rows:
            self._spill_chunks()

    def _spill_chunks(self) -> None:
        """Write the rows held in memory to the next numbered file of ``spill_dir`` (atomically) and drop them."""
        folder = Path(self.spill_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"records-{len(self._spilled):06d}.npy"
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.concatenate(self._chunks))
        os.replace(tmp, path)
        self._spilled.append(path)
        self._chunks, self._rows = [], 0

    @property
    def table(self) -> np.ndarray:
        """Every row, in the order recorded (rows spilled to disk are read back; the result is then not kept)."""
        if self._spilled:
            return np.concatenate([np.load(p) for p in self._spilled] + self._chunks)
        if len(self._chunks) != 1:
            self._chunks = [np.concatenate(self._chunks) if self._chunks else np.empty(0, dtype=self._DTYPE)]
        return self._chunks[0]

    def __len__(self) -> int:
        return len(self.table)

    def rows(self) -> Iterable[tuple[int, str, int, int, str, float]]:
        """(step, layer, depth, channel, quantity, value) tuples."""
        for r in self.table:
            yield int(r["step"]), self.layer_names[r["layer"]], int(r["layer"]), int(r["channel"]), \
                QUANTITIES[r["quantity"]], float(r["value"])

    def steps(self) -> np.ndarray:
        return np.unique(self.table["step"])

    def matrix(self, quantity: str, channel: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) with values of shape (n_steps, n_layers) for a layer quantity."""
        t = self.table
        sel = t[(t["quantity"] == _CODE[quantity]) & (t["channel"] == channel)]
        steps = np.unique(sel["step"])
        out = np.full((len(steps), len(self.layer_names)), np.nan)
        out[np.searchsorted(steps, sel["step"]), sel["layer"]] = sel["value"]
        return steps, out

    def channels(self, quantity: str, step: int, layer: int) -> np.ndarray:
        """Per-channel values of one layer at one step (needs ``per_channel=True``)."""
        t = self.table
        sel = t[(t["quantity"] == _CODE[quantity]) & (t["step"] == step) & (t["layer"] == layer) & (t["channel"] >= 0)]
        return sel["value"][np.argsort(sel["channel"])]

    def spread(self, quantity: str = "elr_grad_max") -> tuple[np.ndarray, np.ndarray]:
        """(steps, S_rel) with S_rel = std over layers of ln ELR (Def. 4.1); NaN where a layer has no ELR."""
        steps, values = self.matrix(quantity)
        with np.errstate(invalid="ignore", divide="ignore"):
            return steps, dynamics.relative_spread(values)

    def summary(self, quantity: str = "elr_grad_max") -> dict[str, np.ndarray]:
        """A few scalars per logged step instead of one series per layer: what a logger should get.

        ``step``; ``elr_max`` and ``elr_min`` over layers; ``spread`` (S_rel, Def. 4.1); ``kappa_lh``
        (κ_ℓh = 1/√(E_min E_max)) and ``kappa_hh`` (κ_hh', the subcritical rate of Cor. 3.10). NaN where a
        layer has no ELR at that step.
        """
        steps, e = self.matrix(quantity)
        return {"step": steps, **summarize_elrs(e)}

    def to_pandas(self):
        """The table as a pandas DataFrame: step, layer (name), depth, channel, quantity, value."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Records.to_pandas needs pandas: pip install pandas") from None
        t = self.table
        return pd.DataFrame({"step": t["step"], "layer": np.asarray(self.layer_names, dtype=object)[t["layer"]],
                             "depth": t["layer"], "channel": t["channel"],
                             "quantity": np.asarray(QUANTITIES, dtype=object)[t["quantity"]], "value": t["value"]})

    def model_state(self, step: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(σ², c) per layer at ``step``: the discrete model's inputs, σ² = ‖W‖², c = ‖W‖·‖∇W‖ (Eq. 4)."""
        steps, w = self.matrix("weight_norm")
        _, g = self.matrix("grad_norm")
        k = int(np.searchsorted(steps, step))
        if k >= len(steps) or steps[k] != step:
            raise ValueError(f"no measurement at step {step}; logged steps: {steps[:10]}...")
        return w[k] ** 2, w[k] * g[k]

    def save(self, path: str | Path) -> Path:
        """Write atomically (a temporary file renamed into place) as .npz."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, table=self.table, layer_names=np.array(self.layer_names), quantities=np.array(QUANTITIES))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Records":
        with np.load(path) as data:
            if tuple(data["quantities"]) != QUANTITIES:
                raise ValueError(f"{path} was written with quantities {tuple(data['quantities'])}, "
                                 f"this elr reads {QUANTITIES}")
            return cls(list(data["layer_names"]), [data["table"].copy()])


# ------------------------------------------------------------------- which layers

#: ``layers="heuristic"``: the name heuristic of :func:`elr.nets.scale_invariant_layers` (bias-free convolutions
#: and linear layers except the last linear layer), used only when asked for.
HEURISTIC = "heuristic"


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer that stores its weight as (in, out), so its output
    channels are along dim 1 (matched by name: elr does not import transformers)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - a torch without torch.distributed
        return False
    return isinstance(t, DTensor)


def _is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2's ``fully_shard`` has been applied to the model (its weights are DTensor shards; during a
    forward pass they may be gathered, so the modules are checked too)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a torch without torch.distributed
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules()) or any(_is_dtensor(p) for p in model.parameters())


def invariant_layers(model: nn.Module, *example_inputs: Any, kwargs: dict | None = None) -> list[str]:
    """Names of the weights of ``model`` (its parameters of two or more dimensions) that the audit finds
    scale-invariant for any value of the other parameters (:attr:`elr.audit.AuditRow.auto_tunes`: the output does
    not change when the weight is multiplied by γ > 0, the paper's Eq. 1), in the model's parameter order.

    Runs :func:`elr.audit.audit` on ``model(*example_inputs, **kwargs)`` (a batch of at least 2 samples). This
    is the monitor's, the callbacks' and the warm-up's default notion of "which layers". Raises ValueError,
    naming the cause, when no weight is scale-invariant: critical rates (Cor. 3.10) are defined only for
    scale-invariant weights, so elr does not compute them for the others.
    """
    from elr import audit as _audit  # the audit is the heavier module: import it only when it is used

    if _is_sharded(model):
        raise ValueError("the model's parameters are already sharded (FSDP2's fully_shard), and the audit needs "
                         "the whole model: build the monitor before fully_shard (with example_inputs=; it rebinds "
                         "to the sharded weights), or pass layers=[weight names]")
    candidates = [n for n, p in model.named_parameters() if p.dim() >= 2]
    if not candidates:
        raise ValueError("the model has no weight of two or more dimensions, so no layer to measure ELRs of")
    device = next(model.parameters()).device.type
    with torch.enable_grad(), torch.autocast(device, enabled=False):  # the audit works in float64, whatever the loop
        rows = _audit.audit(model, *example_inputs, kwargs=kwargs, only=candidates)
    found = [r.name for r in rows if r.auto_tunes]
    if not found:
        while_zero = [r.name for r in rows if r.invariant and r.only_while_zero]
        # examples: layers with a traced reason first, embeddings (never invariant, nothing to learn) last
        ranked = sorted(rows, key=lambda r: ("numerical check only" in r.reason, r.reason.startswith("Embedding")))
        shown = "; ".join(f"'{r.name}': {r.reason}" for r in ranked[:2])
        raise ValueError(
            f"no weight of this model is scale-invariant: the audit finds no normalisation after any of its "
            f"{len(rows)} weights that absorbs their scale (e.g. {shown})"
            + (f"; {len(while_zero)} are invariant only while some all-zero parameters stay zero "
               f"(e.g. '{while_zero[0]}')" if while_zero else "")
            + ". ELRs and critical rates (Cor. 3.10) are defined for scale-invariant weights. To measure chosen "
              "weights anyway, pass layers=[their names]; layers='heuristic' picks bias-free linear and "
              "convolution layers by name")
    return found


def _layer_name(param_name: str) -> str:
    """A weight's layer name: its module's name for ``<module>.weight`` (as the paper's layer index), else the
    parameter's own name (``in_proj_weight``)."""
    module, _, leaf = param_name.rpartition(".")
    return module if leaf == "weight" and module else param_name


def _resolve(model: nn.Module, layers: Any) -> list[tuple[str, nn.Module, str]]:
    """(layer name, owning module, parameter name) for each layer of a ``layers=`` specification."""
    if isinstance(layers, str):
        if layers != HEURISTIC:
            raise ValueError(f"layers must be None (the audit's scale-invariant weights), {HEURISTIC!r}, or a list "
                             f"of weight names or modules; got {layers!r}")
        found = scale_invariant_layers(model)
        if not found:
            raise ValueError("layers='heuristic' found no bias-free convolution or linear layer (other than the "
                             "last linear layer); pass layers=[weight names] or layers=None to ask the audit")
        return [(n, m, "weight") for n, m in found]
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    names_of = {id(m): n for n, m in modules.items()}
    out = []
    for item in layers:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], nn.Module):
            out.append((str(item[0]), item[1], "weight"))
            continue
        if isinstance(item, nn.Module):
            if id(item) not in names_of:
                raise ValueError(f"layers: a {type(item).__name__} that is not a submodule of the model")
            item = names_of[id(item)]
        if not isinstance(item, str):
            raise ValueError(f"layers: entries must be weight names, module names or modules, got {type(item).__name__}")
        if item in params:
            module_name, _, leaf = item.rpartition(".")
            out.append((_layer_name(item), modules[module_name], leaf))
        elif item in modules and isinstance(getattr(modules[item], "weight", None), torch.Tensor):
            out.append((item, modules[item], "weight"))
        else:
            close = [n for n in params if item in n][:3]
            raise ValueError(f"layers: the model has no weight or module named {item!r}"
                             + (f" (did you mean {close}?)" if close else "; see model.named_parameters()"))
    if not out:
        raise ValueError("layers is empty: pass the weights to monitor, or layers=None for the audit's choice")
    return out


# ------------------------------------------------------------------- the monitor


def _channel_sq(t: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Squared norms of each output channel (one for a 1-D tensor), in float32 or wider: one reduction over the
    tensor as it is (no reshaped, stacked or squared copy)."""
    acc = torch.promote_types(t.dtype, torch.float32)
    if t.dim() < 2:
        return torch.linalg.vector_norm(t, dtype=acc).square().reshape(1)
    dims = tuple(d for d in range(t.dim()) if d != channel_dim)
    return torch.linalg.vector_norm(t, dim=dims, dtype=acc).square()


def _local(t: torch.Tensor | None) -> torch.Tensor | None:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return t.to_local() if t is not None and _is_dtensor(t) else t


class ELRMonitor:
    """Gradient and update ELRs of the scale-invariant weights of a model, every ``every`` steps.

    Which weights (``layers``):

    * ``None`` (default): the model's own declaration if it has one (``model.scale_invariant_layers()``, as the
      models of :mod:`elr.nets` and :mod:`elr.transformer`), else the weights the audit finds scale-invariant
      (:func:`invariant_layers`). The audit needs inputs: from ``example_inputs`` (a tuple of positional
      inputs, and ``example_kwargs``) at construction, or else from the model's first forward pass (a
      forward pre-hook that runs the audit once, on a float64 copy, and removes itself). A model with no
      scale-invariant weight is refused with the cause.
    * ``"heuristic"``: bias-free convolution and linear layers except the last linear layer, by type alone.
    * a list of weight names (``"blocks.0.attn.q.weight"``), module names or modules: exactly those (you vouch
      for their invariance: the critical rates of ``Records.summary`` assume it).

    ``model`` may also be a list of ``(name, module)`` pairs (the layers themselves, as ``layers=`` would give).

    The monitor holds each weight by its module and name, not by the tensor: it follows the weights when
    ``fully_shard`` (FSDP2) or ``.to()`` replaces them after the monitor was built.

    ``spill_to``: a directory where the records are written in chunks of ``spill_rows`` rows, so a long run
    keeps memory bounded (:class:`Records`).
    """

    def __init__(self, model: nn.Module | Sequence[tuple[str, nn.Module]], every: int = 1, per_channel: bool = False,
                 *, layers: Any = None, example_inputs: tuple | None = None, example_kwargs: dict | None = None,
                 spill_to: str | Path | None = None, spill_rows: int = 1_000_000):
        if int(every) != every or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every}")
        if example_inputs is not None and not isinstance(example_inputs, (tuple, list)):
            example_inputs = (example_inputs,)
        self.every, self.per_channel = int(every), per_channel
        self._spill = (spill_to, spill_rows)
        self.transfers = 0  # device-to-host transfers so far (one per logged step)
        self.skipped: list[int] = []  # labels of steps the loss scaler skipped (inf/NaN gradients): never recorded
        self.last: dict[str, Any] = {}  # the last recorded step's per-layer arrays (for O(1) summaries)
        self._pending: dict | None = None
        self._flags: list[tuple[int, torch.Tensor]] = []  # (label, found_inf) of fused steps not yet read
        self._before: list[torch.Tensor] | None = None  # the weights before the step, when the update needs a copy
        self._audit_hook = None
        self.records = Records([], spill_dir=spill_to, spill_rows=spill_rows)
        if not isinstance(model, nn.Module):
            if layers is not None:
                raise ValueError("pass either a model and layers=, or a list of (name, module) pairs, not both")
            self._setup([(str(n), m, "weight") for n, m in model])
        elif layers is not None:
            self._setup(_resolve(model, layers))
        elif hasattr(model, "scale_invariant_layers"):
            self._setup(_resolve(model, HEURISTIC))
        elif example_inputs is not None:
            self._setup(_resolve(model, invariant_layers(model, *example_inputs, kwargs=example_kwargs)))
        else:
            if _is_sharded(model):
                raise ValueError("the model is already sharded (FSDP2's fully_shard) and the audit that chooses the "
                                 "layers needs the whole model: build the monitor before fully_shard with "
                                 "example_inputs= (it follows the weights into their shards), or pass "
                                 "layers=[weight names]")
            self._model = model
            self._audit_hook = model.register_forward_pre_hook(self._audit_at_first_forward, with_kwargs=True)

    @_outside_compile
    def _audit_at_first_forward(self, module, args, kwargs):
        self._audit_hook.remove()  # before the audit: its copies of the model must not carry this hook
        self._audit_hook = None
        try:
            names = invariant_layers(self._model, *args, kwargs=kwargs)
        except ValueError as err:
            raise ValueError(f"ELRMonitor, auditing the model at its first forward pass: {err}") from None
        self._setup(_resolve(self._model, names))
        del self._model

    def _setup(self, layers: list[tuple[str, nn.Module, str]]) -> None:
        if not layers:
            raise ValueError("the model has no scale-invariant layers to monitor")
        self.names = [n for n, _, _ in layers]
        self._owners = [(m, p) for _, m, p in layers]
        weights = self.weights
        self._channel_dim = [1 if _is_conv1d(m) and w.dim() == 2 else 0 for (m, _), w in zip(self._owners, weights)]
        self.channels = [w.shape[d] if w.dim() > 1 else 1 for w, d in zip(weights, self._channel_dim)]
        offsets = np.cumsum([0] + self.channels)
        self._starts = offsets[:-1]  # first channel of each layer, for np.*.reduceat
        self._layer_of_channel = np.repeat(np.arange(len(weights)), self.channels)
        self._channel_index = np.concatenate([np.arange(c) for c in self.channels])
        self.records = Records(self.names, spill_dir=self._spill[0], spill_rows=self._spill[1])

    @property
    def ready(self) -> bool:
        """Whether the layers are known (False until the first forward pass when the audit waits for inputs)."""
        return hasattr(self, "_owners")

    @property
    def weights(self) -> list[torch.Tensor]:
        """The monitored weights as the model holds them now (DTensors under FSDP2)."""
        self._check_ready()
        return [getattr(m, p) for m, p in self._owners]

    def _check_ready(self) -> None:
        if self.ready:
            return
        if self._audit_hook is None:
            raise RuntimeError("the monitor has no layers: the audit at the model's first forward pass refused (see "
                               "that error); pass layers= to choose them")
        raise RuntimeError("the monitor has not chosen its layers yet: it audits the model at its first forward "
                           "pass. Run a forward pass first, or pass example_inputs= or layers=")

    def logs(self, step: int) -> bool:
        return step % self.every == 0

    def attach(self, optimizer: torch.optim.Optimizer, start_step: int = 0, rank_zero_only: bool = True) -> "_Hooks":
        """Instrument ``optimizer`` with step hooks, so that any loop logs without calling the monitor.

        A pre-hook reads the gradients and a post-hook the update around every ``optimizer.step()``; step
        labels count from ``start_step``, one per optimizer step the loop asks for. So:

        * gradient accumulation logs once per applied update (the optimizer steps only then);
        * under AMP (``torch.amp.GradScaler``) the gradients are read unscaled with every optimizer kind: plain
          and foreach optimizers get them unscaled from ``GradScaler.step``; fused ones get scaled gradients
          and the scale (``optimizer.grad_scale``), which the monitor divides out. A step the scaler skips
          (inf/NaN gradients) is never recorded; its label is added to :attr:`skipped` and later labels do not
          shift. (To see the skips of plain and foreach optimizers, whose ``step()`` the scaler does not call,
          ``attach`` wraps ``GradScaler.step`` once per process; the wrapper only notes whether the step ran.)
        * under DDP, gradients are already averaged when the optimizer steps; no collective is added, and with
          ``rank_zero_only`` only rank 0 records (``handle.active``).
        * under FSDP2 (``fully_shard``), each rank computes the squared norms of its shards and one all-reduce
          per logged step sums them, on every rank (so every rank must attach); rank 0 records (all ranks with
          ``rank_zero_only=False``). The ELRs equal those of one process.
        * the hooks run outside ``torch.compile`` (``torch.compiler.disable``, applied when compiling), also under
          ``torch.compile(optimizer.step)``.

        With plain ``torch.optim.SGD`` (not Nesterov) the update is read from the optimizer (λ·‖buf‖ with
        momentum, λ·‖∇W‖ without momentum and weight decay) instead of from a copy of the weights.

        Returns a handle; ``handle.remove()`` detaches the monitor, ``handle.step`` is the next step's label.
        """
        return _Hooks(self, optimizer, start_step, rank_zero_only)

    # ------------------------------------------------------------- measuring

    @_outside_compile
    @torch.no_grad()
    def observe_gradients(self, step: int) -> None:
        """Call after ``backward()`` (under AMP: after ``scaler.unscale_(optimizer)``): gradient and weight norms,
        kept on the device until the update."""
        self._gradients(step, None)

    @_outside_compile
    @torch.no_grad()
    def observe_update(self, step: int) -> bool:
        """Call after ``optimizer.step()``: the update norms, then one transfer of everything.

        Returns whether ``step`` was recorded now (False on steps that are not logged, or whose gradients
        were not observed)."""
        return self._update(step, None, True)

    def _gradients(self, step: int, optimizer, grad_scale=None, found_inf=None, record: bool = True) -> None:
        if not self.logs(step):
            return
        self._check_ready()
        if self._pending is not None:
            self.flush()
        weights = self.weights
        sharded = any(_is_dtensor(w) for w in weights)
        if not record and not sharded:
            return  # a rank that records nothing and owes no collective (DDP's other ranks)
        local = [_local(w.detach()) for w in weights]
        grads = [_local(w.grad) for w in weights]
        w_sq = [_channel_sq(w, d) for w, d in zip(local, self._channel_dim)]
        g_sq = [_channel_sq(g, d) if g is not None else torch.zeros_like(s) for g, s, d in
                zip(grads, w_sq, self._channel_dim)]
        if grad_scale is not None:  # a fused optimizer under GradScaler: the gradients are still scaled
            inv2 = grad_scale.to(torch.float64).reciprocal().square()
            g_sq = [s * inv2.to(s.device, s.dtype) for s in g_sq]
        plan = _sgd_plan(optimizer, weights, grads)
        if plan is None:  # the update needs the weights before the step: one copy, into a reused buffer
            if self._before is None or [b.shape for b in self._before] != [w.shape for w in local] or \
                    any(b.device != w.device or b.dtype != w.dtype for b, w in zip(self._before, local)):
                self._before = [torch.empty_like(w) for w in local]
            torch._foreach_copy_(self._before, local)
        self._pending = {"step": step, "w": w_sq, "g": g_sq, "plan": plan, "found_inf": found_inf,
                         "sharded": sharded, "record": record}

    def _update(self, step: int, optimizer, record: bool) -> bool:
        p = self._pending
        if p is None or p["step"] != step:
            return False
        weights = self.weights
        if p["plan"] is None:
            before = self._before
            torch._foreach_sub_(before, [_local(w.detach()) for w in weights])  # −ΔW, in the copy's buffer
            u_sq = [_channel_sq(b, d) for b, d in zip(before, self._channel_dim)]
        else:
            u_sq = [_sgd_update_sq(entry, g, optimizer, w, d)
                    for entry, g, w, d in zip(p["plan"], p["g"], weights, self._channel_dim)]
        return self._transfer(p, u_sq)

    def discard(self, step: int) -> None:
        """The step was skipped (a loss scaler found inf/NaN gradients; a trainer says so): drop its pending
        measurements, if any, and list it in :attr:`skipped`."""
        if self._pending is not None and self._pending["step"] == step:
            self._pending = None
        self.skipped.append(step)

    def flush(self) -> None:
        """Record pending gradient measurements without an update (e.g. when measuring at initialisation)."""
        if self._pending is not None:
            self._transfer(self._pending, None)

    def _transfer(self, p: dict, u_sq: list[torch.Tensor] | None) -> bool:
        """Assemble the squared norms in layer order, all-reduce them once if the weights are sharded, and move
        them (with any pending found-inf flags) to the host in one transfer. Returns whether the step was
        recorded (not on a rank that does not record, nor for a step the scaler skipped)."""
        self._pending = None
        kinds = [p["w"], p["g"]] + ([u_sq] if u_sq is not None else [])
        if p["sharded"]:
            flat = self._all_reduce(kinds)
        else:
            flat = torch.stack([torch.cat([s.to(torch.float64) for s in parts]) for parts in kinds])
        if not p["record"]:
            return False
        flags = self._flags + ([(p["step"], p["found_inf"])] if p["found_inf"] is not None else [])
        self._flags = []
        if flags:
            flat = torch.cat([flat.reshape(-1), torch.stack([f.reshape(()).to(flat) for _, f in flags])])
        host = flat.cpu().numpy()  # the one transfer
        self.transfers += 1
        n = len(kinds) * int(self._starts[-1] + self.channels[-1])
        skipped = {label for (label, _), f in zip(flags, host[n:]) if f != 0}
        self.skipped.extend(sorted(skipped))
        if p["step"] in skipped:
            return False  # the scaler skipped this step: its gradients are inf/NaN and no update was applied
        host = host[:n].reshape(len(kinds), -1)
        self._record(p["step"], host[0], host[1], host[2] if u_sq is not None else None)
        return True

    def _all_reduce(self, kinds: list[list[torch.Tensor]]) -> torch.Tensor:
        """Every rank writes the squared norms of its shards at their global channel positions (zero elsewhere),
        then one all-reduce sums them: the per-channel squared norms of the whole weights."""
        import torch.distributed as dist
        from torch.distributed.tensor import Replicate, Shard
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        weights = self.weights
        device = kinds[0][0].device
        total = int(self._starts[-1] + self.channels[-1])
        buf = torch.zeros(len(kinds), total, dtype=torch.float64, device=device)
        group, rank = None, dist.get_rank()
        for i, w in enumerate(weights):
            start, ch = int(self._starts[i]), self._channel_dim[i]
            if _is_dtensor(w):
                if w.device_mesh.ndim != 1:
                    raise NotImplementedError(f"ELRMonitor: weight '{self.names[i]}' is sharded over a "
                                              f"{w.device_mesh.ndim}-D device mesh (HSDP); only 1-D meshes are handled")
                group = w.device_mesh.get_group()
                placement = w.placements[0]
                if isinstance(placement, Replicate):
                    if w.device_mesh.get_local_rank() != 0:
                        continue
                    lo, n = start, self.channels[i]
                elif isinstance(placement, Shard):
                    shape, offset = compute_local_shape_and_global_offset(w.shape, w.device_mesh, w.placements)
                    if w.dim() > 1 and placement.dim == ch:
                        lo, n = start + offset[ch], shape[ch]
                    else:  # sharded across the channel's elements: partial sums for every channel
                        lo, n = start, self.channels[i]
                else:
                    raise NotImplementedError(f"ELRMonitor: weight '{self.names[i]}' has placement {placement}; "
                                              f"only Shard and Replicate are handled")
            else:  # a weight every rank holds whole: counted once
                if rank != 0:
                    continue
                lo, n = start, self.channels[i]
            for k, parts in enumerate(kinds):
                if n:
                    buf[k, lo:lo + n] = parts[i].to(torch.float64)
        dist.all_reduce(buf, group=group)  # the one collective of a logged step
        return buf

    def _record(self, step: int, w_sq: np.ndarray, g_sq: np.ndarray, u_sq: np.ndarray | None) -> None:
        n_layers = len(self.names)
        layer_idx, minus1 = np.arange(n_layers), np.full(n_layers, -1)
        starts = self._starts
        w_layer = np.sqrt(np.add.reduceat(w_sq, starts))  # per-layer sums of the per-channel squares
        w_chan = np.sqrt(w_sq)
        pairs = [("grad", g_sq)] + ([("update", u_sq)] if u_sq is not None else [])
        self.records.add(step, layer_idx, minus1, "weight_norm", w_layer)
        if self.per_channel:
            self.records.add(step, self._layer_of_channel, self._channel_index, "weight_norm", w_chan)
        last = {"step": step, "weight_norm": w_layer}
        for kind, sq in pairs:
            n_layer = np.sqrt(np.add.reduceat(sq, starts))
            n_chan = np.sqrt(sq)
            e_layer = _ratio(n_layer, w_layer)
            e_chan = _ratio(n_chan, w_chan)
            e_max = np.maximum.reduceat(e_chan, starts)  # max over channels (NaN if any channel has no ELR)
            self.records.add(step, layer_idx, minus1, f"{kind}_norm", n_layer)
            self.records.add(step, layer_idx, minus1, f"elr_{kind}", e_layer)
            self.records.add(step, layer_idx, minus1, f"elr_{kind}_max", e_max)
            last.update({f"{kind}_norm": n_layer, f"elr_{kind}": e_layer, f"elr_{kind}_max": e_max})
            if self.per_channel:
                self.records.add(step, self._layer_of_channel, self._channel_index, f"{kind}_norm", n_chan)
                self.records.add(step, self._layer_of_channel, self._channel_index, f"elr_{kind}", e_chan)
        self.last = last

    def resolve_skipped(self) -> list[int]:
        """:attr:`skipped`, after reading the found-inf flags of fused steps since the last logged step (one
        transfer; the monitor otherwise reads them with the next logged step)."""
        if self._flags:
            flags, self._flags = self._flags, []
            values = torch.stack([f.reshape(()).to(torch.float64) for _, f in flags]).cpu().numpy()
            self.skipped.extend(label for (label, _), v in zip(flags, values) if v != 0)
        return self.skipped


def _sgd_plan(optimizer, weights: list[torch.Tensor], grads: list) -> list[tuple] | None:
    """How to read each weight's update from a plain ``torch.optim.SGD`` after its step, without a copy:
    ("buf", group) with momentum (ΔW = −λ·buf, the buffer after the step), ("grad", group) without momentum and
    weight decay (ΔW = −λ·∇W), ("zero",) for a weight without a gradient (SGD leaves it). None when any weight
    needs a copy (another optimizer, Nesterov, weight decay without momentum)."""
    if optimizer is None or type(optimizer) is not torch.optim.SGD:
        return None
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    plan = []
    for w, g in zip(weights, grads):
        group = group_of.get(id(w))
        if group is None or group.get("nesterov") or group.get("differentiable"):
            return None
        if g is None:
            plan.append(("zero",))
        elif group["momentum"] != 0:
            plan.append(("buf", group))
        elif group["weight_decay"] == 0:
            plan.append(("grad", group))
        else:
            return None
    return plan


def _sgd_update_sq(entry: tuple, g_sq: torch.Tensor, optimizer, weight: torch.Tensor, channel_dim: int) -> torch.Tensor:
    if entry[0] == "zero":
        return torch.zeros_like(g_sq)
    lr = entry[1]["lr"]
    lr2 = lr * lr if not isinstance(lr, torch.Tensor) else (lr.detach() * lr.detach()).to(g_sq)
    if entry[0] == "grad":
        return g_sq * lr2
    return _channel_sq(_local(optimizer.state[weight]["momentum_buffer"]), channel_dim) * lr2


_ATTACHED: "weakref.WeakKeyDictionary[torch.optim.Optimizer, list[_Hooks]]" = weakref.WeakKeyDictionary()


def _wrap_grad_scaler() -> None:
    """Wrap ``torch.amp.GradScaler.step`` once per process: after the original step, tell the monitors attached
    to that optimizer whether ``optimizer.step()`` ran (the scaler skips it on inf/NaN gradients for plain and
    foreach optimizers, and then no optimizer hook runs)."""
    cls = torch.amp.GradScaler
    if getattr(cls.step, "_elr_wrapped", False):
        return
    original = cls.step

    @functools.wraps(original)
    def step(self, optimizer, *args, **kwargs):
        hooks = list(_ATTACHED.get(optimizer, ()))
        for h in hooks:
            h._ran = False
        out = original(self, optimizer, *args, **kwargs)
        for h in hooks:
            if not h._ran:
                h._skip()
        return out

    step._elr_wrapped = True
    cls.step = step


class _Hooks:
    """The step hooks of :meth:`ELRMonitor.attach`."""

    def __init__(self, monitor: ELRMonitor, optimizer: torch.optim.Optimizer, start_step: int, rank_zero_only: bool):
        self.monitor, self.optimizer, self.step = monitor, optimizer, int(start_step)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        #: whether this rank records (rank 0, or every rank with rank_zero_only=False). Every rank keeps its
        #: hooks: under FSDP2 they take part in the logged steps' all-reduce (under DDP the others do nothing).
        self.active = not (rank_zero_only and distributed and torch.distributed.get_rank() != 0)
        self._ran = False
        self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]
        _wrap_grad_scaler()
        _ATTACHED.setdefault(optimizer, []).append(self)

    @_outside_compile
    def _pre(self, optimizer, args, kwargs) -> None:
        self._ran = True
        found_inf = getattr(optimizer, "found_inf", None)  # set by GradScaler for fused optimizers only
        if found_inf is not None and not self.monitor.logs(self.step) and self.active:
            self.monitor._flags.append((self.step, found_inf))
        with torch.no_grad():
            self.monitor._gradients(self.step, optimizer, getattr(optimizer, "grad_scale", None), found_inf,
                                    self.active)

    @_outside_compile
    def _post(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            self.monitor._update(self.step, optimizer, self.active)
        self.step += 1

    def _skip(self) -> None:
        """The scaler skipped this step without calling ``optimizer.step()``."""
        if self.active:
            self.monitor.skipped.append(self.step)
        self.step += 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        hooks = _ATTACHED.get(self.optimizer, [])
        if self in hooks:
            hooks.remove(self)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den, NaN where den == 0 (a zero-norm weight has no ELR)."""
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def measure_once(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, per_channel: bool = False,
                 loss_fn=nn.functional.cross_entropy) -> Records:
    """ELRs of one forward/backward pass (train mode, no optimiser step), e.g. at initialisation."""
    monitor = ELRMonitor(model, per_channel=per_channel)
    model.train()
    model.zero_grad(set_to_none=True)
    loss_fn(model(inputs), targets).backward()
    monitor.observe_gradients(0)
    monitor.flush()
    return monitor.records


def at_init(build, inputs: torch.Tensor, targets: torch.Tensor, seeds: int, base_seed: int = 0) -> list[Records]:
    """:func:`measure_once` on ``seeds`` fresh models, ``build()`` called after ``torch.manual_seed(seed)`` for
    seed = ``base_seed``, …, ``base_seed + seeds − 1``."""
    out = []
    for seed in range(base_seed, base_seed + seeds):
        torch.manual_seed(seed)
        out.append(measure_once(build(), inputs, targets))
    return out


def critical_lr_at_init(build, inputs: torch.Tensor, targets: torch.Tensor, seeds: int,
                        base_seed: int = 0) -> np.ndarray:
    """κ_ℓh(0) = 1/√(E_min E_max) (:func:`elr.dynamics.critical_lr`) of ``seeds`` fresh models, one per seed, from
    one forward/backward pass on ``inputs`` each (:func:`at_init`); layer ELRs ‖∇W‖/‖W‖ of the whole layer."""
    return np.array([float(dynamics.critical_lr(r.matrix("elr_grad")[1][0]))
                     for r in at_init(build, inputs, targets, seeds, base_seed)])


# ----------------------------------------------- base gradients of recorded runs (Part III)


def base_gradient_stats(records: Records, tail: float = 0.2) -> dict[str, np.ndarray]:
    """Per layer: how much the base gradient c = ‖W‖·‖∇W‖ moves during a run.

    ``noise``: standard deviation of log c from one logged step to the next;
    ``drift``: |log c| between the median of the last ``tail`` of the run and of the first 5 logged steps;
    ``growth``: log σ² between the same windows (the auto-rate-tuning part of the ELR's change,
    since log E = log c − log σ²).
    """
    _, w = records.matrix("weight_norm")
    _, g = records.matrix("grad_norm")
    if len(w) < 7:
        raise ValueError("base_gradient_stats needs at least 7 logged steps")
    c = w * g
    k = max(int(round(tail * len(c))), 1)
    late, early = np.median(c[-k:], axis=0), np.median(c[:5], axis=0)
    return {"noise": np.std(np.diff(np.log(c), axis=0), axis=0),
            "drift": np.abs(np.log(late / early)),
            "growth": np.log(np.median(w[-k:] ** 2, axis=0) / np.median(w[:5] ** 2, axis=0))}


def radial_cosine(records: Records, lr: float) -> np.ndarray:
    """|cos(W, ∇W)| per logged step and layer, from the norms alone, for plain SGD logged at every step.

    Plain SGD gives ‖W'‖² = ‖W‖² − 2λ⟨W, ∇W⟩ + λ²‖∇W‖², so
    cos = (‖W‖² + λ²‖∇W‖² − ‖W'‖²) / (2λ ‖W‖ ‖∇W‖). It is 0 for a scale-invariant
    layer (Eq. 2). Returns shape (T − 1, L); needs consecutive steps.
    """
    steps, w = records.matrix("weight_norm")
    _, g = records.matrix("grad_norm")
    if len(steps) < 2 or np.any(np.diff(steps) != 1):
        raise ValueError("radial_cosine needs records logged at every step (log_every=1)")
    return np.abs((w[:-1] ** 2 + lr**2 * g[:-1] ** 2 - w[1:] ** 2) / (2 * lr * w[:-1] * g[:-1]))


def growth_residuals(records: Records, lr: float) -> tuple[float, float]:
    """How exactly a run obeys ‖W_{t+1}‖² = ‖W_t‖² + ‖ΔW_t‖² (the update is orthogonal to W) and ‖ΔW‖ = λ‖∇W‖
    (plain SGD at rate ``lr``): (max |(‖W_{t+1}‖² − ‖W_t‖²)/‖ΔW_t‖² − 1|, max |‖ΔW‖/(λ‖∇W‖) − 1|) over layers
    and logged steps; logged at every step for the first."""
    _, w = records.matrix("weight_norm")
    _, u = records.matrix("update_norm")
    _, g = records.matrix("grad_norm")
    return (float(np.max(np.abs((w[1:] ** 2 - w[:-1] ** 2) / u[:-1] ** 2 - 1))),
            float(np.max(np.abs(u / (lr * g) - 1))))


def lowest_layer_ratios(records: Records, lr: float, steps: int) -> tuple[float, float]:
    """The lowest layer against the discrete model (Eq. 5) started from the run's own σ²(0) and c, at a
    constant rate ``lr`` (chapter 10's short-term check): measured/predicted ‖W‖ at step ``steps``, and the
    geometric mean over steps ``steps // 2 … steps`` of measured/predicted ‖∇W‖ (predicted: c/σ).
    Needs a run logged at every step from 0 to ``steps``."""
    logged, w_all = records.matrix("weight_norm")
    _, g_all = records.matrix("grad_norm")
    if steps < 2 or len(logged) < steps + 1 or not np.array_equal(logged[:steps + 1], np.arange(steps + 1)):
        raise ValueError(f"lowest_layer_ratios needs steps >= 2 and every step 0..{steps} logged (log_every=1); "
                         f"logged: {logged[:5]}...")
    sigma2_0, c = records.model_state(0)
    model = dynamics.simulate(sigma2_0[:1], c[:1], np.full(steps, lr))
    half = np.arange(steps // 2, steps + 1)
    g_ratio = np.exp(np.mean(np.log(g_all[half, 0] * np.sqrt(model.sigma2[half, 0]) / c[0])))
    return float(w_all[steps, 0] / np.sqrt(model.sigma2[-1, 0])), float(g_ratio)


def one_pass_spread(records: Records, lr: float, steps: int, completed: bool = True) -> tuple[float, ...]:
    """Chapter 12's summary of a run of ``steps`` steps (one pass) at a constant rate ``lr``: the relative
    spread S_rel of the layers' ELRs at step 0, measured at the last logged step (NaN unless ``completed``),
    and predicted by the discrete model after ``steps`` steps from the run's σ²(0) and c; then the critical
    rates κ_ℓh(0) and κ_hh'(0) of the ELRs at step 0."""
    logged, e = records.matrix("elr_grad")
    sigma2_0, c = records.model_state(0)
    after = float(dynamics.relative_spread(e[-1])) if completed and len(logged) > 1 else np.nan
    model = float(dynamics.simulate(sigma2_0, c, np.full(steps, lr)).spread[-1])
    return (float(dynamics.relative_spread(e[0])), after, model, float(dynamics.critical_lr(e[0])),
            float(dynamics.subcritical_lr(e[0])))


def final_spread(records: Records, completed: bool = True) -> float:
    """The relative spread S_rel of the layers' ELRs at the last logged step; NaN unless the run ``completed``
    and every ELR there is finite and positive."""
    _, e = records.matrix("elr_grad")
    ok = completed and len(e) > 0 and bool(np.all(np.isfinite(e[-1])) and np.all(e[-1] > 0))
    return float(dynamics.relative_spread(e[-1])) if ok else np.nan


def run_summary(records: Records, lr: float) -> dict[str, Any]:
    """A run's ELR matrix (``elr``: logged steps × layers), the median over steps of each layer's |cos(W, ∇W)|
    (``cos``, :func:`radial_cosine` at the run's constant rate ``lr``), :func:`base_gradient_stats`
    (``stats``), and the relative spread at the first and last logged steps (``spread0``, ``spread_end``)."""
    _, e = records.matrix("elr_grad")
    return {"elr": e, "cos": np.median(radial_cosine(records, lr), axis=0), "stats": base_gradient_stats(records),
            "spread0": float(dynamics.relative_spread(e[0])), "spread_end": float(dynamics.relative_spread(e[-1]))}


def compare_with_model(records: "Records", lr: float, steps: int, quantity: str = "elr_grad",
                       low_fraction: float = 0.1) -> dict[str, Any]:
    """A run's per-layer ELRs against the discrete model (Eq. 5) started from the run's own σ²(0) and c.

    Returns the logged steps, the measured and predicted ELR matrices (steps × layers), their relative
    spreads, and scalar summaries: ``gap`` (the largest |S_rel measured − predicted| over the run),
    ``low_ratio`` (mean measured/predicted ELR of the lowest ``low_fraction`` of layers at the end), and
    the ELR ratio of the lowest to the highest layer at the start (``order_init``), at the end
    (``order_meas``) and predicted at the end (``order_pred``): a ratio that starts above 1 and ends below
    it is a flip of the two layers' order.

    ``diverged`` says whether the run stopped before its last logging interval of ``steps`` or logged an
    ELR that is not finite and positive (weights that overflowed give ELRs of exactly 0); then ``gap``, ``low_ratio`` and ``order_meas`` are NaN: a
    run cut at its first step would otherwise match the model perfectly, since both start from its state.
    """
    sigma2_0, c = records.model_state(0)
    logged, measured = records.matrix(quantity)
    predicted = dynamics.simulate(sigma2_0, c, np.full(steps, lr)).elr[logged]
    low = max(1, int(round(measured.shape[1] * low_fraction)))
    interval = int(logged[1] - logged[0]) if len(logged) > 1 else steps
    diverged = bool(len(logged) < 2 and steps > 1 or logged[-1] + interval < steps
                    or not np.all(np.isfinite(measured)) or not np.all(measured > 0))
    with np.errstate(divide="ignore", invalid="ignore"):  # a diverged run's zeros: flagged above, NaN below
        s_meas, s_pred = dynamics.relative_spread(measured), dynamics.relative_spread(predicted)
    nan = float("nan")
    return {"steps": logged, "measured": measured, "predicted": predicted, "s_meas": s_meas, "s_pred": s_pred,
            "diverged": diverged,
            "gap": nan if diverged else float(np.nanmax(np.abs(s_meas - s_pred))),
            "low_ratio": nan if diverged else float(np.mean(measured[-1, :low] / predicted[-1, :low])),
            "order_init": float(measured[0, 0] / measured[0, -1]),
            "order_meas": nan if diverged else float(measured[-1, 0] / measured[-1, -1]),
            "order_pred": float(predicted[-1, 0] / predicted[-1, -1])}

"""Measuring effective learning rates in any PyTorch training loop.

::

    monitor = ELRMonitor(model, every=10)          # the scale-invariant layers of the model
    for step, (x, y) in enumerate(loader):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward()
        monitor.observe_gradients(step)             # gradient ELR ‖∇W‖/‖W‖
        opt.step()
        monitor.observe_update(step)                # update ELR ‖ΔW‖/‖W_before‖
    monitor.records.spread("elr_grad_max")          # S_rel per logged step

On a logged step the monitor computes all squared norms (per output channel,
for every layer) as one batched computation on the device and moves them to
the host in one transfer; on other steps both calls return at once. Layer
values are Frobenius norms over the whole layer; ``elr_grad_max`` and
``elr_update_max`` are the maximum over output channels, the paper's choice
(Sec. 4.3.1).

A weight whose norm is zero has no ELR: its ELRs are recorded as NaN, never
as a division by zero, and ``Records.spread`` returns NaN for a step that
contains one.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from elr import dynamics
from elr.nets import scale_invariant_layers

#: Quantities recorded per layer (channel = -1) and, with ``per_channel``, per output channel.
LAYER_QUANTITIES = ("weight_norm", "grad_norm", "elr_grad", "elr_grad_max",
                    "update_norm", "elr_update", "elr_update_max")
CHANNEL_QUANTITIES = ("weight_norm", "grad_norm", "elr_grad", "update_norm", "elr_update")
QUANTITIES = LAYER_QUANTITIES  # every name that can appear; channel rows use a subset
_CODE = {q: i for i, q in enumerate(QUANTITIES)}


@dataclass
class Records:
    """A tidy table of measurements: one row per (step, layer, channel, quantity).

    ``layer`` indexes ``layer_names``; ``depth`` is the same index (0 = lowest
    scale-invariant layer); ``channel`` is -1 for a whole-layer value.
    """

    layer_names: list[str]
    _chunks: list[np.ndarray] = field(default_factory=list, repr=False)

    _DTYPE = np.dtype([("step", "i8"), ("layer", "i4"), ("channel", "i4"), ("quantity", "i1"), ("value", "f8")])

    def add(self, step: int, layer: np.ndarray, channel: np.ndarray, quantity: str, value: np.ndarray) -> None:
        rows = np.empty(len(value), dtype=self._DTYPE)
        rows["step"], rows["layer"], rows["channel"] = step, layer, channel
        rows["quantity"], rows["value"] = _CODE[quantity], value
        self._chunks.append(rows)

    @property
    def table(self) -> np.ndarray:
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
        out = {"step": steps, "elr_max": np.full(len(steps), np.nan), "elr_min": np.full(len(steps), np.nan),
               "spread": np.full(len(steps), np.nan), "kappa_lh": np.full(len(steps), np.nan),
               "kappa_hh": np.full(len(steps), np.nan)}
        ok = np.all(np.isfinite(e) & (e > 0), axis=1) if len(steps) else np.zeros(0, bool)
        if ok.any():
            good = e[ok]
            out["elr_max"][ok], out["elr_min"][ok] = good.max(axis=1), good.min(axis=1)
            out["spread"][ok] = dynamics.relative_spread(good)
            out["kappa_lh"][ok] = dynamics.critical_lr(good)
            out["kappa_hh"][ok] = dynamics.subcritical_lr(good)
        return out

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


class ELRMonitor:
    """Gradient and update ELRs of the scale-invariant layers of a model, every ``every`` steps."""

    def __init__(self, model: nn.Module | Sequence[tuple[str, nn.Module]], every: int = 1, per_channel: bool = False):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        layers = scale_invariant_layers(model) if isinstance(model, nn.Module) else list(model)
        if not layers:
            raise ValueError("the model has no scale-invariant layers to monitor")
        self.names = [n for n, _ in layers]
        self.weights = [m.weight for _, m in layers]
        self.every, self.per_channel = every, per_channel
        self.channels = [w.shape[0] if w.dim() > 1 else 1 for w in self.weights]
        offsets = np.cumsum([0] + self.channels)
        self._starts = offsets[:-1]  # first channel of each layer, for np.*.reduceat
        self._layer_of_channel = np.repeat(np.arange(len(self.weights)), self.channels)
        self._channel_index = np.concatenate([np.arange(c) for c in self.channels])
        self.records = Records(self.names)
        self.transfers = 0  # device-to-host transfers so far (one per logged step)
        self._pending: tuple[int, torch.Tensor, torch.Tensor, list[torch.Tensor]] | None = None
        # Layers of equal shape, dtype and device are stacked and reduced together: a ResNet has a
        # handful of distinct shapes, so a logged step costs a few dozen kernels instead of several
        # per layer. `_perm` puts the channels back into layer order.
        groups: dict[tuple, list[int]] = {}
        for i, w in enumerate(self.weights):
            groups.setdefault((tuple(w.shape), w.dtype, w.device), []).append(i)
        self._groups = list(groups.values())
        first, k = {}, 0
        for i in (i for g in self._groups for i in g):
            first[i], k = k, k + self.channels[i]
        self._perm = torch.from_numpy(np.concatenate(
            [np.arange(first[i], first[i] + c) for i, c in enumerate(self.channels)]))
        self._perm_on: dict[torch.device, torch.Tensor] = {}

    def logs(self, step: int) -> bool:
        return step % self.every == 0

    def attach(self, optimizer: torch.optim.Optimizer, start_step: int = 0, rank_zero_only: bool = True) -> "_Hooks":
        """Instrument ``optimizer`` with step hooks, so that any loop logs without calling the monitor.

        A pre-hook runs :meth:`observe_gradients` and a post-hook :meth:`observe_update` around every
        ``optimizer.step()`` that actually runs, counting steps from ``start_step``. So:

        * gradient accumulation logs once per applied update (the optimizer steps only then);
        * under AMP, ``GradScaler.step`` unscales the gradients before it calls ``optimizer.step()``,
          so the hooks see true gradients; a step the scaler skips (inf/NaN gradients) runs no hook
          and is not counted;
        * under DDP, gradients are already averaged when the optimizer steps; with ``rank_zero_only``
          only rank 0 attaches (the others get a handle that does nothing). No collective is added.

        Returns a handle; ``handle.remove()`` detaches the monitor, ``handle.step`` is the next step.
        """
        return _Hooks(self, optimizer, start_step, rank_zero_only)

    def _stacks(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One stacked copy per group of equally shaped layers."""
        return [torch.stack([tensors[i].detach() for i in g]) for g in self._groups]

    def _grouped_sq(self, stacks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Squared norms of every output channel, in layer order (float32 or wider), from ``_stacks``."""
        parts = []
        for s in stacks:
            rows = s.shape[0] * (s.shape[1] if s.dim() > 2 else 1)
            parts.append(s.reshape(rows, -1).to(torch.promote_types(s.dtype, torch.float32)).square().sum(dim=1))
        flat = torch.cat(parts)
        if flat.device not in self._perm_on:
            self._perm_on[flat.device] = self._perm.to(flat.device)
        return flat.index_select(0, self._perm_on[flat.device])

    @torch.no_grad()
    def observe_gradients(self, step: int) -> None:
        """Call after ``backward()``: gradient and weight norms (kept on the device until the update)."""
        if not self.logs(step):
            return
        if self._pending is not None:
            self.flush()
        grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in self.weights]
        before = self._stacks(self.weights)  # a copy of the weights, for the update
        self._pending = (step, self._grouped_sq(before), self._grouped_sq(self._stacks(grads)), before)

    @torch.no_grad()
    def observe_update(self, step: int) -> bool:
        """Call after ``optimizer.step()``: the update norms, then one transfer of everything.

        Returns whether ``step`` was recorded now (False on steps that are not logged, or whose gradients
        were not observed)."""
        if self._pending is None or self._pending[0] != step:
            return False
        _, w_sq, g_sq, before = self._pending
        u_sq = self._grouped_sq([a - b for a, b in zip(self._stacks(self.weights), before)])
        self._transfer(step, w_sq, g_sq, u_sq)
        return True

    def flush(self) -> None:
        """Record pending gradient measurements without an update (e.g. when measuring at initialisation)."""
        if self._pending is not None:
            step, w_sq, g_sq, _ = self._pending
            self._transfer(step, w_sq, g_sq, None)

    def _transfer(self, step, w_sq, g_sq, u_sq) -> None:
        self._pending = None
        parts = [w_sq, g_sq] + ([u_sq] if u_sq is not None else [])
        host = torch.stack([p.to(torch.float64) for p in parts]).cpu().numpy()  # the one transfer
        self.transfers += 1
        self._record(step, host[0], host[1], host[2] if u_sq is not None else None)

    def _record(self, step: int, w_sq: np.ndarray, g_sq: np.ndarray, u_sq: np.ndarray | None) -> None:
        n_layers = len(self.weights)
        layer_idx, minus1 = np.arange(n_layers), np.full(n_layers, -1)
        starts = self._starts
        w_layer = np.sqrt(np.add.reduceat(w_sq, starts))  # per-layer sums of the per-channel squares
        w_chan = np.sqrt(w_sq)
        pairs = [("grad", g_sq)] + ([("update", u_sq)] if u_sq is not None else [])
        self.records.add(step, layer_idx, minus1, "weight_norm", w_layer)
        if self.per_channel:
            self.records.add(step, self._layer_of_channel, self._channel_index, "weight_norm", w_chan)
        for kind, sq in pairs:
            n_layer = np.sqrt(np.add.reduceat(sq, starts))
            n_chan = np.sqrt(sq)
            e_layer = _ratio(n_layer, w_layer)
            e_chan = _ratio(n_chan, w_chan)
            e_max = np.maximum.reduceat(e_chan, starts)  # max over channels (NaN if any channel has no ELR)
            self.records.add(step, layer_idx, minus1, f"{kind}_norm", n_layer)
            self.records.add(step, layer_idx, minus1, f"elr_{kind}", e_layer)
            self.records.add(step, layer_idx, minus1, f"elr_{kind}_max", e_max)
            if self.per_channel:
                self.records.add(step, self._layer_of_channel, self._channel_index, f"{kind}_norm", n_chan)
                self.records.add(step, self._layer_of_channel, self._channel_index, f"elr_{kind}", e_chan)


class _Hooks:
    """The step hooks of :meth:`ELRMonitor.attach`."""

    def __init__(self, monitor: ELRMonitor, optimizer: torch.optim.Optimizer, start_step: int, rank_zero_only: bool):
        self.monitor, self.step, self._handles = monitor, int(start_step), []
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.active = not (rank_zero_only and distributed and torch.distributed.get_rank() != 0)
        if self.active:
            self._handles = [optimizer.register_step_pre_hook(self._pre),
                             optimizer.register_step_post_hook(self._post)]

    def _pre(self, optimizer, args, kwargs) -> None:
        self.monitor.observe_gradients(self.step)

    def _post(self, optimizer, args, kwargs) -> None:
        self.monitor.observe_update(self.step)
        self.step += 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


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

"""ELRs in the trainers and loggers researchers already use.

* :class:`TensorBoardWriter`: summary scalars (and optionally every layer) into a TensorBoard event file.
* :func:`lightning_callback`: a Lightning ``Callback`` (``pip install 'elr[lightning]'``).
* :func:`hf_callback`: a Hugging Face ``TrainerCallback`` (``pip install 'elr[hf]'``).
* :func:`summary_at`: the scalars of one logged step as a dict, for any logger that takes one (W&B's
  ``wandb.log``, MLflow's ``log_metrics``). Lightning's callback logs through whatever logger the Trainer
  has (``WandbLogger`` included); the Hugging Face callback takes ``sink=``.

Every one of them logs *summary scalars* per logged step (``elr_max``, ``elr_min``, ``spread`` = S_rel,
``kappa_lh``, ``kappa_hh``; see :meth:`elr.measure.Records.summary`), not one series per layer: a ResNet56
would otherwise add a hundred keys to the logger. ``per_layer=True`` adds ``elr/<layer name>`` too. The full
table is always in ``monitor.records``.

Where the gradients are read, and why it is correct:

* Lightning: ``on_before_optimizer_step``, which Lightning calls once the gradients of all accumulated
  batches are summed and, under AMP, after the loss scaler has unscaled them (plain and foreach optimizers;
  a fused optimizer's gradients are still scaled there, and the callback divides the scale out). A step the
  scaler skips is not recorded; its label goes to ``callback.monitor.skipped``. (Optimizer step hooks, as in
  :meth:`elr.measure.ELRMonitor.attach`, do not work here: Lightning passes the closure that computes the
  gradients *into* ``optimizer.step``, so a pre-step hook would run before the backward pass.)
* Hugging Face: ``on_pre_optimizer_step``, after gradient accumulation and after gradient clipping. Under
  fp16 the accelerate scaler unscales the gradients when it clips them (``max_grad_norm > 0``, the
  default); with ``max_grad_norm=0`` and fp16 the gradients are still scaled there, and the callback
  refuses to run rather than log ELRs off by the loss scale. bf16 needs no scaler.
* Both log on the global-zero process only and add no collective: after DDP's all-reduce every rank holds
  the same gradients.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from elr.measure import ELRMonitor, Records, summarize_elrs

SUMMARY_KEYS = ("elr_max", "elr_min", "spread", "kappa_lh", "kappa_hh")


def summaries(records: Records, steps: list[int], per_layer: bool = False,
              prefix: str = "elr/") -> dict[int, dict[str, float]]:
    """The summary scalars of these logged steps, ``{step: {prefix + key: value}}``, from one pass over the
    records (steps that were not logged are left out)."""
    s = records.summary()
    layers = records.matrix("elr_grad_max")[1] if per_layer else None
    out = {}
    for step in steps:
        k = int(np.searchsorted(s["step"], step))
        if k >= len(s["step"]) or s["step"][k] != step:
            continue
        out[step] = {f"{prefix}{key}": float(s[key][k]) for key in SUMMARY_KEYS}
        if per_layer:  # matrix() and summary() share the logged steps
            out[step].update({f"{prefix}{name}": float(v) for name, v in zip(records.layer_names, layers[k])})
    return out


def summary_at(records: Records, step: int, per_layer: bool = False, prefix: str = "elr/") -> dict[str, float]:
    """The summary scalars of one logged step as ``{prefix + key: value}`` (empty if the step was not logged)."""
    return summaries(records, [step], per_layer, prefix).get(step, {})


def last_summary(monitor: ELRMonitor, per_layer: bool = False, prefix: str = "elr/") -> dict[str, float]:
    """The summary scalars of the monitor's last recorded step, from that step's values alone: O(layers) per
    log, however long the run (what the callbacks log). Empty before the first recorded step."""
    last = monitor.last
    if not last or "elr_grad_max" not in last:
        return {}
    e = last["elr_grad_max"]
    out = {f"{prefix}{key}": float(v[0]) for key, v in summarize_elrs(e[None, :]).items()}
    if per_layer:
        out.update({f"{prefix}{name}": float(v) for name, v in zip(monitor.names, e)})
    return out


class TensorBoardWriter:
    """Write the summary scalars of each logged step (and optionally every layer) to TensorBoard.

    ``writer`` is a ``torch.utils.tensorboard.SummaryWriter`` or a log directory (needs ``tensorboard``,
    ``pip install 'elr[tensorboard]'``). Call :meth:`write` after the monitor logged a step; steps already
    written are skipped.
    """

    def __init__(self, writer: Any, per_layer: bool = False, prefix: str = "elr/"):
        if isinstance(writer, (str, Path)):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("TensorBoardWriter needs tensorboard: pip install 'elr[tensorboard]'") from None
            writer = SummaryWriter(str(writer))
        self.writer, self.per_layer, self.prefix = writer, per_layer, prefix
        self._written: set[int] = set()

    def write(self, records: Records) -> int:
        """Write every logged step not written yet; returns how many steps were written."""
        new = [int(s) for s in records.steps() if int(s) not in self._written]
        for step, scalars in summaries(records, new, self.per_layer, self.prefix).items():
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
        self._written.update(new)
        if new:
            self.writer.flush()
        return len(new)

    def write_last(self, monitor: ELRMonitor) -> int:
        """Write the monitor's last recorded step if not written yet (O(layers), for loggers called every step)."""
        step = monitor.last.get("step")
        if step is None or step in self._written:
            return 0
        for key, value in last_summary(monitor, self.per_layer, self.prefix).items():
            self.writer.add_scalar(key, value, step)
        self._written.add(step)
        self.writer.flush()
        return 1

    def close(self) -> None:
        self.writer.close()


def _check(every: int, layers: Any) -> None:
    """Refuse bad arguments when the callback is made, before any training."""
    if int(every) != every or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every}")
    if isinstance(layers, str) and layers != "heuristic":
        raise ValueError(f"layers must be None (the audit's scale-invariant weights), 'heuristic', or a list of "
                         f"weight names; got {layers!r}")


def _monitor_for(model: nn.Module, every: int, per_channel: bool, layers: Any, spill_to: Any) -> ELRMonitor:
    return ELRMonitor(model, every=every, per_channel=per_channel, layers=layers, spill_to=spill_to)


def _scaler_state(scaler, optimizer, logged: bool):
    """(grad_scale, found_inf) for the monitor from Lightning's GradScaler, read before its ``step``: a plain or
    foreach optimizer has been unscaled (found_inf known); a fused one has not (Lightning leaves its unscaling
    to the kernel), so its gradients carry the scale, and on a logged step the inf check is run now (the scaler
    runs it again in its step). (None, None) without a scaler."""
    if scaler is None or not scaler.is_enabled():
        return None, None
    from torch.amp.grad_scaler import OptState

    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.UNSCALED:
        found = state["found_inf_per_device"]
        grad_scale = None
    else:
        if not logged:
            return None, None  # skips of fused steps that are not logged go uncounted (no extra inf check)
        found = scaler._check_inf_per_device(optimizer)
        grad_scale = scaler._scale
    values = list(found.values())
    found_inf = sum(v.to(values[0].device) for v in values[1:]) + values[0] if values else None
    return grad_scale, found_inf


def lightning_callback(every: int = 50, per_layer: bool = False, per_channel: bool = False,
                       module_attr: str | None = None, layers: Any = None, spill_to: str | Path | None = None):
    """A Lightning ``Callback`` that measures ELRs and logs the summary scalars through ``pl_module.log``.

    ``module_attr`` names the submodule to monitor (default: the whole LightningModule). ``layers`` as in
    :class:`elr.measure.ELRMonitor`: by default the weights the audit finds scale-invariant, audited at the
    monitored module's first forward pass (so that module's ``forward`` must be called: name it with
    ``module_attr``), ``"heuristic"``, or a list of weight names. ``spill_to``: a directory the records spill to
    in long runs. After the fit the callback's ``monitor.records`` holds every measurement.
    """
    _check(every, layers)
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise ImportError("lightning_callback needs Lightning: pip install 'elr[lightning]'") from None

    class ELRCallback(pl.Callback):
        def __init__(self):
            self.every, self.per_layer, self.per_channel, self.module_attr = every, per_layer, per_channel, module_attr
            self.monitor: ELRMonitor | None = None

        def on_fit_start(self, trainer, pl_module):
            target = getattr(pl_module, self.module_attr) if self.module_attr else pl_module
            self.monitor = _monitor_for(target, self.every, self.per_channel, layers, spill_to)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if not trainer.is_global_zero:
                return
            step = trainer.global_step
            grad_scale, found_inf = _scaler_state(getattr(trainer.precision_plugin, "scaler", None), optimizer,
                                                  self.monitor.logs(step))
            if found_inf is not None and not self.monitor.logs(step):
                self.monitor._flags.append((step, found_inf))  # read with the next logged step's transfer
            self.monitor._gradients(step, None, grad_scale, found_inf)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not trainer.is_global_zero:
                return
            step = trainer.global_step - 1  # the step just applied (nothing to record on accumulation batches)
            if self.monitor._update(step, None, True):  # False also for a step the scaler skipped
                for key, value in last_summary(self.monitor, self.per_layer).items():
                    pl_module.log(key, value, on_step=True, on_epoch=False, rank_zero_only=True)

        def state_dict(self):
            return {"every": self.every}

    return ELRCallback()


def hf_callback(every: int = 50, per_layer: bool = False, per_channel: bool = False, tensorboard: Any = None,
                sink: Callable[[dict[str, float], int], Any] | None = None, layers: Any = None,
                spill_to: str | Path | None = None):
    """A Hugging Face ``TrainerCallback`` that measures ELRs of the model's scale-invariant weights.

    ``layers`` as in :class:`elr.measure.ELRMonitor`: by default the weights the audit finds scale-invariant,
    audited on the first training batch (a model with none is refused with the cause), ``"heuristic"``, or a
    list of weight names. A step the loss scaler skipped (fp16, inf/NaN gradients) is not recorded; its label
    goes to ``callback.monitor.skipped``. ``spill_to``: a directory the records spill to in long runs.

    The summary scalars of each logged step go into the Trainer's next log entry
    (``trainer.state.log_history``) and, if ``tensorboard`` is a SummaryWriter or a log directory, into
    TensorBoard at once. The Trainer's own reporters (``report_to``) run before user callbacks, so they do
    not receive them: pass ``tensorboard=`` for an event file, or ``sink``, a callable that gets
    ``(scalars, step)`` at each logged step (for W&B: ``lambda d, s: wandb.log(d, step=s)``).
    ``callback.monitor.records`` holds every measurement.
    """
    if sink is not None and not callable(sink):
        raise ValueError(f"sink must be a callable taking (scalars, step), got {type(sink).__name__}")
    _check(every, layers)
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ImportError("hf_callback needs transformers: pip install 'elr[hf]'") from None

    class ELRTrainerCallback(TrainerCallback):
        def __init__(self):
            self.every, self.per_layer, self.per_channel = every, per_layer, per_channel
            self.monitor: ELRMonitor | None = None
            self.writer = TensorBoardWriter(tensorboard, per_layer) if tensorboard is not None else None
            self._unlogged: dict[str, float] = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if getattr(args, "fp16", False) and not getattr(args, "max_grad_norm", 0):
                raise ValueError("with fp16 and max_grad_norm=0 the Trainer never unscales the gradients before "
                                 "the optimizer step, so ELRs would be off by the loss scale: set max_grad_norm > 0 "
                                 "(e.g. 1e9 to leave gradients unclipped) or use bf16")
            self.monitor = _monitor_for(model, self.every, self.per_channel, layers, spill_to)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.monitor.observe_gradients(state.global_step)

        def on_optimizer_step(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            step = state.global_step  # not yet incremented for the step just applied
            if getattr(kwargs.get("optimizer"), "step_was_skipped", False):  # accelerate: the scaler skipped it
                self.monitor.discard(step)
                return
            if self.monitor.observe_update(step):
                self._unlogged = last_summary(self.monitor, self.per_layer)
                if self.writer is not None:
                    self.writer.write_last(self.monitor)
                if sink is not None:
                    sink(dict(self._unlogged), step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self._unlogged and state.is_world_process_zero:
                if state.log_history:
                    state.log_history[-1].update(self._unlogged)
                if logs is not None:
                    logs.update(self._unlogged)  # for callbacks registered after this one
                self._unlogged = {}

    return ELRTrainerCallback()

"""The paper's ELR constraint (Eq. 33) beside LARS (You et al. 2017, timm's ``Lars``): chapter 19.

At weight decay 0 and with ``always_adapt=True``, timm's ``Lars`` multiplies each adapted parameter's
gradient g by η‖W‖/(‖g‖ + eps), so the weight moves by ``lr·η`` of its norm each step.
:class:`elr.gradients.ConstrainELR` multiplies g by E_goal/(E + ε), E = ‖g‖/‖W‖, after dividing every
constrained weight (and its gradient) by the largest of their norms, so under SGD the weight moves by
``lr·E_goal·E/(E + ε)`` of its norm. For weights that a normalisation makes scale-invariant, dividing them all by
one number changes neither the function nor the direction of the gradient, so with ``η = E_goal`` and both
eps at zero the two optimisers follow the same trajectory up to that number: :func:`trajectory_gap` measures
it in float64 with BatchNorm's ε at 1e-30. Three things separate them in practice:

* **norms**: under LARS a scale-invariant weight's gradient is orthogonal to it, so without momentum
  ‖W_t‖ = ‖W_0‖·(1 + (lr·η)²)^{t/2} (:func:`norm_law`), while the constraint keeps the largest norm at 1;
* **BatchNorm's ε**: shrinking the weights to norm ≤ 1 shrinks the pre-activation variance by the same
  factor squared, so the ε the normalisation adds counts for more under the constraint than under LARS;
* **which parameters**: the constraint acts on the scale-invariant weights only; LARS adapts every
  parameter of its groups, and gives a parameter of norm zero (a zero-initialised bias) the raw ``lr``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from elr import data as data_mod
from elr import gradients, measure, nets


def norm_law(lr: float, eta: float, updates: np.ndarray | int) -> np.ndarray:
    """‖W_t‖/‖W_0‖ after ``updates`` LARS steps without momentum or weight decay on a scale-invariant weight:
    each step adds an orthogonal vector of norm lr·η‖W‖, so the squared norm grows by the factor 1 + (lr·η)²."""
    return (1.0 + (lr * eta) ** 2) ** (np.asarray(updates, dtype=float) / 2)


def norm_law_deviation(records: measure.Records, lr: float, eta: float) -> float:
    """The largest relative deviation, over layers and logged steps, of ‖W_t‖/‖W_{t0}‖ from :func:`norm_law`
    (t − t0 updates after the first logged step t0)."""
    steps, norms = records.matrix("weight_norm")
    ratio = norms / norms[0]
    law = norm_law(lr, eta, steps - steps[0])[:, None]
    return float(np.max(np.abs(ratio / law - 1.0)))


def update_deviation(records: measure.Records, target: float) -> float:
    """The largest relative deviation of any layer's update ELR ‖ΔW‖/‖W‖ from ``target``, over logged steps."""
    _, updates = records.matrix("elr_update")
    return float(np.max(np.abs(updates / target - 1.0)))


def largest_norm(records: measure.Records) -> np.ndarray:
    """The largest weight norm over the monitored layers at each logged step."""
    _, norms = records.matrix("weight_norm")
    return norms.max(axis=1)


def trajectory_gap(seed: int, model: str = "bnrelu16", width: int = 64, steps: int = 60, lr: float = 0.3,
                   elr_goal: float = 0.03, batch_size: int = 64) -> np.ndarray:
    """The relative gap |L_constraint − L_LARS|/L_LARS of the training loss at every step, for the same
    initialisation and batches (digits, drawn from ``seed``), in float64 with BatchNorm's ε at 1e-30, the
    constraint's ε and LARS's eps at 0, and LARS adapting exactly the constrained weights with η = elr_goal.
    Zero up to rounding is what the derivation of chapter 19 predicts; anything else would be a difference
    between the two optimisers that the derivation missed."""
    from elr import train

    if steps < 1 or batch_size < 2:
        raise ValueError(f"steps must be >= 1 and batch_size >= 2, got {steps} and {batch_size}")
    ds = data_mod.digits(True)
    losses = {}
    for kind in ("constraint", "lars"):
        torch.manual_seed(seed)
        config = train.TrainConfig(model=model, width=width, seed=seed, lr=lr, trust_coeff=elr_goal,
                                   optimizer="sgd" if kind == "constraint" else "lars")
        net = train.build_model(config, ds.inputs.shape[1], ds.num_classes, int(np.prod(ds.inputs.shape[1:])))
        net = net.double()
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eps = 1e-30
        weights = [m.weight for _, m in nets.scale_invariant_layers(net)]
        opt = train.build_optimizer(config, net, weights)  # LARS: the constrained weights adapted, the rest SGD
        if kind == "lars":
            for group in opt.param_groups:
                group["eps"] = 0.0  # timm's 1e-8 in the trust ratio, off like the constraint's ε
        constrain = gradients.ConstrainELR(weights, elr_goal, eps=0.0) if kind == "constraint" else None
        gen, trace = torch.Generator().manual_seed(seed), []
        for _ in range(steps):
            idx = torch.randint(0, len(ds), (batch_size,), generator=gen)
            loss = F.cross_entropy(net(ds.inputs[idx].double()), ds.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if constrain is not None:
                constrain()
            opt.step()
            trace.append(loss.item())
        losses[kind] = np.array(trace)
    return np.abs(losses["constraint"] - losses["lars"]) / losses["lars"]

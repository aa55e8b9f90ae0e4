"""Which weights of a model auto-tune their learning rate, and why (the paper's Section 3.1).

A weight auto-tunes when the model's output does not change if the weight is
multiplied by a positive factor γ. :func:`audit` answers it twice for every
parameter:

* **numerically**: the model in float64, every normalisation's eps set to
  1e-12 (eps breaks exact invariance), training mode (batch statistics),
  dropout masks fixed by seeding; the output at γ = 0.5 and 3 against γ = 1;
* **structurally**, for linear and convolution weights: a ``torch.fx`` trace
  of the model, following how the weight's scale propagates to the output:
  through layers homogeneous of degree 1 (ReLU, LeakyReLU, dropout, pooling,
  bias-free linear maps) it stays a scale; a normalisation absorbs it; a
  bias, another nonlinearity, or an addition with a path that does not carry
  the scale (a residual connection before the normalisation, as in ResNet
  v2) breaks it. This gives the reason shown next to the verdict.

The numerical check decides the verdict; the reason comes from the trace (or
says that only the numerical check was possible).
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
         nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# positively homogeneous of degree 1: f(γx) = γ f(x) for γ > 0
HOMOGENEOUS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
                       nn.Flatten, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                       nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                       nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
HOMOGENEOUS_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, F.dropout, F.avg_pool2d, F.max_pool2d,
                         F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool1d, F.max_pool1d, F.pad,
                         torch.flatten, operator.getitem, operator.neg, torch.neg}
SHAPE_METHODS = {"flatten", "view", "reshape", "permute", "transpose", "contiguous", "mean", "sum", "squeeze",
                 "unsqueeze", "relu", "neg", "__getitem__", "chunk", "split"}
ADDITIONS = {operator.add, operator.sub, torch.add, torch.sub, operator.iadd}
# products: homogeneous of degree 1 in each factor (attention's q k^T, a scale by a constant)
PRODUCTS = {operator.mul, torch.mul, operator.matmul, torch.matmul, torch.bmm, operator.truediv, torch.div}
PRODUCT_METHODS = {"mul", "matmul", "bmm", "div", "__mul__", "__truediv__"}

CONST, HOM, SHIFTED, INV, BROKEN = "const", "scales", "scales+shift", "invariant", "broken"


@dataclass(frozen=True)
class AuditRow:
    name: str           # parameter name
    shape: tuple
    invariant: bool     # numerically: output unchanged when this parameter is scaled
    change: float       # largest relative output change over the tested factors
    reason: str         # why, from the traced structure (or why no reason could be traced)
    zero: bool = False  # the parameter is all zeros here, so scaling it tests nothing

    @property
    def verdict(self) -> str:
        if self.zero:
            return "untested (zero)"
        return "auto-tunes" if self.invariant else "breaks auto-tuning"


def exact_copy(model: nn.Module, eps: float = 1e-12, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A copy in training mode, in ``dtype`` (float64), with every normalisation's eps set to ``eps``.

    eps is what breaks invariance: a BatchNorm of a layer scaled by γ normalises by √(γ² var + eps), so its
    output changes by about eps/(2 var) · (1 − 1/γ²). At eps = 1e-12 that is far below what the audit's
    tolerance resolves; :func:`scaling_checks` goes lower, to where only rounding is left.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    model = copy.deepcopy(model).to(dtype).train()
    for m in model.modules():
        if isinstance(m, NORMS):
            m.eps = eps
        if isinstance(m, BATCH_NORMS):
            m.momentum = 0.0  # keep running statistics untouched; outputs use batch statistics anyway
    return model


def _numeric(model: nn.Module, inputs: torch.Tensor, factors=(0.5, 3.0), seed: int = 0) -> dict[str, float]:
    model = exact_copy(model)
    x = inputs.double() if inputs.is_floating_point() else inputs  # token ids stay integers

    def run():
        torch.manual_seed(seed)  # identical dropout masks in every forward pass
        with torch.no_grad():
            return model(x)

    base = run()
    scale = base.abs().max().clamp_min(1e-300)
    out = {}
    for name, p in model.named_parameters():
        worst = 0.0
        for g in factors:
            with torch.no_grad():
                p.mul_(g)
            worst = max(worst, float((run() - base).abs().max() / scale))
            with torch.no_grad():
                p.div_(g)
        out[name] = worst
    return out


def _combine(states: list[str]) -> tuple[str, str]:
    """State of a sum of terms with these states, and why it breaks if it does."""
    live = [s for s in states if s != CONST]
    if not live:
        return CONST, ""
    if BROKEN in live:
        return BROKEN, ""
    if all(s == INV for s in live):
        return INV, ""
    if all(s == HOM for s in live) and len(live) == len(states):
        return HOM, ""
    return BROKEN, "an addition of a path that carries the scale and one that does not (a residual connection " \
                   "before the normalisation)"


def _trace_reason(gm: fx.GraphModule, module_name: str) -> str:
    """Follow the scale of ``module_name``'s weight through the traced graph to the output."""
    modules = dict(gm.named_modules())
    state: dict[fx.Node, str] = {}
    reason = ""
    absorbed = ""

    def arg_states(node):
        found = []
        for a in node.all_input_nodes:
            found.append(state.get(a, CONST))
        return found

    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            state[node] = CONST
            continue
        ins = arg_states(node)
        live = [s for s in ins if s != CONST]
        if node.op == "output":
            final = ins[0] if len(ins) == 1 else (_combine(ins)[0] if ins else CONST)
            if final in (INV, CONST):
                return absorbed or "the output does not depend on this weight"
            if final in (HOM, SHIFTED):
                return "no normalisation follows this layer: the output changes with the weight's scale"
            return reason or "the scale reaches the output through an operation that is not homogeneous"
        if node.op == "call_module" and node.target == module_name:
            m = modules[node.target]
            state[node] = HOM if getattr(m, "bias", None) is None else SHIFTED
            continue
        if not live:
            state[node] = CONST
            continue
        s_in = BROKEN if BROKEN in live else (INV if all(s == INV for s in live) else
                                             (SHIFTED if SHIFTED in live else HOM))
        new, why = s_in, ""
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, NORMS):
                if s_in == HOM or (s_in == SHIFTED and isinstance(m, BATCH_NORMS)):
                    new = INV
                    also = ", whose batch mean also removes the bias before it" if s_in == SHIFTED else ""
                    absorbed = absorbed or f"normalised by '{node.target}' ({type(m).__name__}){also}"
                elif s_in == SHIFTED:
                    new, why = BROKEN, f"'{node.target}' ({type(m).__name__}) does not remove the bias added before it"
            elif isinstance(m, LINEAR):
                if s_in == HOM and m.bias is not None:
                    new = SHIFTED
            elif isinstance(m, HOMOGENEOUS_MODULES):
                if s_in == SHIFTED:
                    new, why = BROKEN, f"a bias before '{node.target}' ({type(m).__name__})"
            elif s_in in (HOM, SHIFTED):
                new, why = BROKEN, f"'{node.target}' ({type(m).__name__}) is not positively homogeneous of degree 1"
        elif node.op == "call_function" and node.target in ADDITIONS:
            new, why = _combine(ins)
        elif (node.op == "call_function" and node.target in PRODUCTS) or \
                (node.op == "call_method" and node.target in PRODUCT_METHODS):
            divisor = node.target in (operator.truediv, torch.div, "div", "__truediv__") and len(node.args) > 1 \
                and isinstance(node.args[1], fx.Node) and state.get(node.args[1], CONST) != CONST
            if all(s == INV for s in live):
                new = INV
            elif len(live) > 1:
                new, why = BROKEN, "a product of two terms that both carry the scale (degree 2, e.g. q·kᵀ)"
            elif divisor:
                new, why = BROKEN, "a division by a term that carries the scale"
        elif (node.op == "call_function" and node.target in HOMOGENEOUS_FUNCTIONS) or \
                (node.op == "call_method" and node.target in SHAPE_METHODS):
            if s_in == SHIFTED and node.target not in (operator.getitem, "flatten", "view", "reshape"):
                new, why = BROKEN, f"a bias before {getattr(node.target, '__name__', node.target)}"
        elif s_in in (HOM, SHIFTED):
            name = getattr(node.target, "__name__", str(node.target))
            new, why = BROKEN, f"{name} is not positively homogeneous of degree 1"
        state[node] = new
        if new == BROKEN and not reason:
            reason = why
    return reason or "no path to the output"


def audit(model: nn.Module, inputs: torch.Tensor, tol: float = 1e-8) -> list[AuditRow]:
    """Audit every parameter of ``model`` on a batch ``inputs`` (at least 2 samples, for batch statistics)."""
    if inputs.shape[0] < 2:
        raise ValueError("inputs needs at least 2 samples: batch normalisation uses batch statistics")
    changes = _numeric(model, inputs)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # data-dependent control flow and the like
        gm, trace_error = None, f"{type(err).__name__}"
    owners = {f"{mn}.{pn}" if mn else pn: (mn, pn) for mn, m in model.named_modules() for pn, _ in m.named_parameters(recurse=False)}
    modules = dict(model.named_modules())
    rows = []
    for name, p in model.named_parameters():
        module_name, pname = owners[name]
        module = modules[module_name]
        if pname != "weight" or not isinstance(module, LINEAR):
            reason = f"{type(module).__name__}.{pname}: numerical check only (reasons are traced for linear and conv weights)"
        elif gm is None:
            reason = f"numerical check only: the model could not be traced ({trace_error})"
        else:
            reason = _trace_reason(gm, module_name)
        zero = not bool(p.detach().abs().max() > 0)
        if zero:
            reason = "all zeros at this point, so scaling it cannot change anything: audit a trained model"
        rows.append(AuditRow(name, tuple(p.shape), changes[name] < tol and not zero, changes[name], reason, zero))
    return rows


def format_table(rows: list[AuditRow]) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"{'parameter':<{width}}  {'verdict':<18}  {'max change':>10}  reason"]
    lines += [f"{r.name:<{width}}  {r.verdict:<18}  {r.change:>10.1e}  {r.reason}" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------- the paper's Section 3.1 table


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width, affine=False)
    if kind == "layer":
        return nn.LayerNorm(width, elementwise_affine=False)
    raise ValueError(f"norm must be 'batch' or 'layer', got {kind!r}")


class _Between(nn.Module):
    """x -> Linear(W, no bias) -> [between] -> normalisation: does W auto-tune through ``between``?"""

    def __init__(self, between: nn.Module, norm: str, width: int = 8, norm_width: int | None = None):
        super().__init__()
        self.w = nn.Linear(width, width, bias=False)
        self.between = between
        self.norm = _norm(norm, norm_width or width)

    def forward(self, x):
        return self.norm(self.between(self.w(x)))


class _ResidualBeforeNorm(nn.Module):
    """ResNet v2 placement: x -> W -> (+ x) -> normalisation: the residual joins before the normalisation."""

    def __init__(self, norm: str, width: int = 8):
        super().__init__()
        self.w = nn.Linear(width, width, bias=False)
        self.norm = _norm(norm, width)

    def forward(self, x):
        return self.norm(self.w(x) + x)


class _PairMaxPool(nn.Module):
    """Max-pooling over pairs of neighbouring features."""

    def forward(self, x):
        return F.max_pool1d(x.unsqueeze(1), 2).squeeze(1)


#: The rows of the paper's Section 3.1 table: what sits between W and its normalisation, and the paper's verdict.
SECTION_3_1 = {
    "linear layer without bias": "passes",
    "linear layer with bias": "breaks",
    "ReLU": "passes",
    "LeakyReLU": "passes",
    "dropout": "passes",
    "GELU": "breaks",
    "tanh": "breaks",
    "max-pooling": "breaks",
    "residual connection (ResNet v2)": "breaks",
}


def section_3_1_modules(norm: str = "batch", width: int = 8) -> dict[str, nn.Module]:
    """One small module per row of :data:`SECTION_3_1`, with the normalisation ``norm`` ('batch' or 'layer')."""
    return {
        "linear layer without bias": _Between(nn.Linear(width, width, bias=False), norm, width),
        "linear layer with bias": _Between(nn.Linear(width, width, bias=True), norm, width),
        "ReLU": _Between(nn.ReLU(), norm, width),
        "LeakyReLU": _Between(nn.LeakyReLU(0.1), norm, width),
        "dropout": _Between(nn.Dropout(0.5), norm, width),
        "GELU": _Between(nn.GELU(), norm, width),
        "tanh": _Between(nn.Tanh(), norm, width),
        "max-pooling": _Between(_PairMaxPool(), norm, width, width // 2),
        "residual connection (ResNet v2)": _ResidualBeforeNorm(norm, width),
    }


def section_3_1_table(width: int = 8, batch: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """Audit the weight ``w`` of every row, after BatchNorm and after LayerNorm, beside the paper's verdict."""
    rows = []
    for label, paper in SECTION_3_1.items():
        row: dict[str, Any] = {"between W and its normalisation": label, "paper": paper}
        for norm in ("batch", "layer"):
            module = section_3_1_modules(norm, width)[label]
            torch.manual_seed(seed)
            for prm in module.parameters():
                nn.init.normal_(prm, 0.0, 0.5)
            x = torch.randn(batch, width, generator=torch.Generator().manual_seed(seed))
            found = next(r for r in audit(module, x) if r.name == "w.weight")
            row[f"{norm}norm"] = "passes" if found.invariant else "breaks"
            row[f"{norm}norm change"] = found.change
            row[f"{norm}norm reason"] = found.reason
        rows.append(row)
    return rows


def scaling_checks(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, gamma: float = 3.0,
                   loss_fn=F.cross_entropy, eps: float = 1e-30,
                   dtype: torch.dtype = torch.float64) -> list[dict[str, float]]:
    """Eq. (1), Eq. (2) and Prop. 3.1 measured on every scale-invariant layer of ``model``.

    In ``dtype`` (float64) with batch statistics and every normalisation's eps set to ``eps``. The default
    1e-30 puts eps's own effect, about eps/(2 var) per normalisation, far below float64's unit roundoff for
    any variance above 1e-14, so what is left is rounding; a larger eps measures eps's effect instead. For
    each layer k, W_k is multiplied by ``gamma`` and the loss and all gradients are recomputed. Returned per
    layer:

    * ``output_change``: max relative change of the logits (0 if the layer is scale-invariant);
    * ``inverse_scaling_error``: ‖γ·∇W_k(γW_k) − ∇W_k(W_k)‖ / ‖∇W_k‖ (Eq. 1 says 0);
    * ``cosine``: cos(∇W_k, W_k) at the original weights (Eq. 2 says 0);
    * ``others_change``: largest relative change of any *other* layer's gradient (Prop. 3.1 says 0).
    """
    from elr.nets import scale_invariant_layers

    if not gamma > 0 or gamma == 1:
        raise ValueError(f"gamma must be > 0 and != 1 (the factor each weight is scaled by), got {gamma}")
    model = exact_copy(model, eps=eps, dtype=dtype)
    weights = [m.weight for _, m in scale_invariant_layers(model)]
    x = inputs.to(dtype)

    def grads():
        model.zero_grad(set_to_none=True)
        out = model(x)
        loss_fn(out, targets).backward()
        return out.detach(), [w.grad.detach().clone() for w in weights]

    base_out, base = grads()
    rows = []
    for k, w in enumerate(weights):
        with torch.no_grad():
            w.mul_(gamma)
        out, scaled = grads()
        with torch.no_grad():
            w.div_(gamma)
        others = [float((s - b).norm() / b.norm()) for j, (s, b) in enumerate(zip(scaled, base)) if j != k]
        rows.append({
            "output_change": float((out - base_out).abs().max() / base_out.abs().max()),
            "inverse_scaling_error": float((gamma * scaled[k] - base[k]).norm() / base[k].norm()),
            "cosine": float((base[k] * w.detach()).sum() / (base[k].norm() * w.detach().norm())),
            "others_change": max(others) if others else 0.0,
        })
    return rows


SCALING_QUANTITIES = ("output_change", "inverse_scaling_error", "cosine", "others_change")


def worst_scaling_residuals(*checks: list[dict[str, float]]) -> dict[str, float]:
    """The largest |value| of each :func:`scaling_checks` quantity over all layers of all given networks."""
    rows = [r for rows in checks for r in rows]
    if not rows:
        raise ValueError("worst_scaling_residuals needs at least one layer's checks")
    return {q: max(abs(r[q]) for r in rows) for q in SCALING_QUANTITIES}

"""Which weights of a model auto-tune their learning rate, and why (the paper's Section 3.1).

A weight auto-tunes when the model's output does not change if the weight is
multiplied by a positive factor γ. :func:`audit` answers it twice for every
parameter:

* **numerically**: the model in float64, every normalisation's eps set to
  1e-30 (eps breaks exact invariance), training mode (batch statistics),
  dropout masks fixed by seeding; the output at γ = 1e-3, 0.5, 3 and 1e3
  against γ = 1 (:data:`FACTORS`), compared leaf by leaf;
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
import dataclasses
import math
import operator
from collections.abc import Collection, Mapping
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
                         torch.flatten, operator.getitem, operator.neg, torch.neg, torch.permute, torch.transpose,
                         torch.reshape, torch.squeeze, torch.unsqueeze, torch.mean, torch.sum}
try:  # torchvision's stochastic depth multiplies each sample by 0 or 1/(1-p): homogeneous of degree 1
    from torchvision.ops import stochastic_depth as _stochastic_depth
    HOMOGENEOUS_FUNCTIONS.add(_stochastic_depth)
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass
# normalisations called as functions (custom LayerNorm2d modules and the like): does each remove a bias?
NORM_FUNCTIONS = {F.layer_norm: False, F.group_norm: False, F.batch_norm: True, F.instance_norm: True}
# pure rearrangements: a bias before them is still just a bias (the scale+shift state passes through)
REARRANGEMENTS = {operator.getitem, torch.flatten, torch.permute, torch.transpose, torch.reshape, torch.squeeze,
                  torch.unsqueeze, "flatten", "view", "reshape", "permute", "transpose", "contiguous", "squeeze",
                  "unsqueeze", "__getitem__"}
SHAPE_METHODS = {"flatten", "view", "reshape", "permute", "transpose", "contiguous", "mean", "sum", "squeeze",
                 "unsqueeze", "relu", "neg", "__getitem__", "chunk", "split"}
ADDITIONS = {operator.add, operator.sub, torch.add, torch.sub, operator.iadd}
# products: homogeneous of degree 1 in each factor (attention's q k^T, a scale by a constant)
PRODUCTS = {operator.mul, torch.mul, operator.matmul, torch.matmul, torch.bmm, operator.truediv, torch.div}
PRODUCT_METHODS = {"mul", "matmul", "bmm", "div", "__mul__", "__truediv__"}

CONST, HOM, SHIFTED, INV, BROKEN = "const", "scales", "scales+shift", "invariant", "broken"


#: Scale factors of the numerical check. A factor of a thousand either way moves pre-activations of order one
#: past the saturation points of bounded nonlinearities (ReLU6 at 6, hardtanh at ±1, hardswish/hardsigmoid at
#: ±3) and into the near-linear region of smooth ones (GELU, SiLU, tanh, sigmoid), where a factor of 0.5 or 3
#: alone can miss them; 0.5 and 3 keep the moderate range covered. A normalisation's eps adds about
#: eps/(2 var γ²) to the change, so the check sets eps to 1e-30: at eps = 1e-12, γ = 1e-3 would show ~1e-6.
FACTORS = (3.0, 0.5, 1e3, 1e-3)


@dataclass(frozen=True)
class AuditRow:
    name: str           # parameter name
    shape: tuple
    invariant: bool     # numerically: output unchanged when this parameter is scaled
    change: float       # relative output change: the largest over the factors, or the first one above tol
    reason: str         # why, from the traced structure (or why no reason could be traced)
    zero: bool = False  # the parameter is all zeros here, so scaling it tests nothing
    only_while_zero: tuple = ()  # invariant now, but not once these all-zero parameters move (e.g. a zero bias)

    @property
    def verdict(self) -> str:
        if self.zero:
            return "untested (zero)"
        if self.invariant and self.only_while_zero:
            return "auto-tunes while zero"
        return "auto-tunes" if self.invariant else "breaks auto-tuning"

    @property
    def auto_tunes(self) -> bool:
        """Invariant now and for any value of the other parameters (what an optimizer grouping should use)."""
        return self.invariant and not self.only_while_zero


def exact_copy(model: nn.Module, eps: float = 1e-30, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A copy in training mode, in ``dtype`` (float64), with every normalisation's eps set to ``eps``.

    eps is what breaks invariance: a BatchNorm of a layer scaled by γ normalises by √(γ² var + eps), so its
    output changes by about eps/(2 var) · (1 − 1/γ²). At the default 1e-30 that is below float64's rounding
    for any variance above about 1e-14, also after a weight is scaled by 1e-3 (chapter 8 measures both).
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


def _leaves(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a model output: a tensor, or tuples, lists, dicts, namedtuples and
    dataclasses of them (HF ``ModelOutput`` is a dict), in a fixed order."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() or out.is_complex() else []
    if dataclasses.is_dataclass(out) and not isinstance(out, type) and not isinstance(out, Mapping):
        return [t for f in dataclasses.fields(out) for t in _leaves(getattr(out, f.name))]
    if isinstance(out, Mapping):
        return [t for k in out for t in _leaves(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _leaves(v)]
    return []


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors (also inside tuples, lists and dicts) to ``dtype``; integer tensors (token ids) stay."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return type(value)((k, _cast(v, dtype)) for k, v in value.items()) if not isinstance(value, dict) \
            else {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _relative_change(out: list[torch.Tensor], base: list[torch.Tensor]) -> float:
    """Largest relative change over the output's leaves, each relative to its own largest entry."""
    worst = 0.0
    for a, b in zip(out, base):
        scale = b.abs().max().clamp_min(1e-300) if b.numel() else torch.tensor(1.0, dtype=torch.float64)
        if a.numel():
            change = float((a - b).abs().max() / scale)
            if not math.isfinite(change):  # NaN or overflow: a change, never hidden (max(0.0, nan) is 0.0)
                return math.inf
            worst = max(worst, change)
    return worst


def _numeric(model: nn.Module, args: tuple, kwargs: dict, factors=FACTORS, seed: int = 0,
             names: set[str] | None = None, stop_above: float | None = None) -> dict[str, float]:
    """Largest relative output change per parameter over ``factors``; with ``stop_above``, the factors of a
    parameter stop at the first change above it (the verdict is then settled, and the change is a lower
    bound of the largest)."""
    model = exact_copy(model)
    args, kwargs = _cast(args, torch.float64), _cast(kwargs, torch.float64)

    def run():
        torch.manual_seed(seed)  # identical dropout masks in every forward pass
        with torch.no_grad():
            return _leaves(model(*args, **kwargs))

    try:
        base = run()
    except Exception as err:  # the inputs do not fit the model: say so, before any verdict
        raise ValueError(f"audit: the model's forward pass failed on the inputs given, in train mode "
                         f"({type(err).__name__}: {err}); pass inputs the model accepts in training "
                         f"(e.g. torchvision's Inception v3 needs 299x299 there)") from err
    if not base:
        raise ValueError("the model's output holds no floating-point tensor to compare")
    out = {}
    for name, p in model.named_parameters():
        if names is not None and name not in names:
            continue
        worst = 0.0
        for g in factors:
            with torch.no_grad():
                p.mul_(g)
            worst = max(worst, _relative_change(run(), base))
            with torch.no_grad():
                p.div_(g)
            if stop_above is not None and worst > stop_above:
                break
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
    if not any(n.op == "call_module" and n.target == module_name for n in gm.graph.nodes):
        return ("numerical check only: the trace never calls this layer as a module (its weight is used inside "
                "a function the trace treats as one operation)")
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
        elif node.op == "call_function" and node.target is getattr:
            new = CONST  # x.shape and the like: not a tensor that carries the scale
        elif node.op == "call_function" and node.target in NORM_FUNCTIONS:
            name = node.target.__name__
            if s_in == HOM or (s_in == SHIFTED and NORM_FUNCTIONS[node.target]):
                new = INV
                absorbed = absorbed or f"normalised by {name}"
            elif s_in == SHIFTED:
                new, why = BROKEN, f"{name} does not remove the bias added before it"
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
            if s_in == SHIFTED and node.target not in REARRANGEMENTS:
                new, why = BROKEN, f"a bias before {getattr(node.target, '__name__', node.target)}"
        elif s_in in (HOM, SHIFTED):
            name = getattr(node.target, "__name__", str(node.target))
            new, why = BROKEN, f"{name} is not positively homogeneous of degree 1"
        state[node] = new
        if new == BROKEN and not reason:
            reason = why
    return reason or "no path to the output"


def _linear_weights(model: nn.Module) -> list[str]:
    """Names of the weights of linear and convolution layers, in the model's parameter order (what
    ``params="weights"`` audits)."""
    return [f"{mn}.weight" if mn else "weight" for mn, m in model.named_modules()
            if isinstance(m, LINEAR) and isinstance(getattr(m, "weight", None), nn.Parameter)]


def audit(model: nn.Module, *inputs: Any, tol: float = 1e-8, factors: tuple = FACTORS,
          kwargs: dict | None = None, params: str = "all", only: Collection[str] | None = None) -> list[AuditRow]:
    """Audit every parameter of ``model`` on the inputs ``model(*inputs, **kwargs)`` (a batch of at least 2
    samples, for batch statistics).

    The output may be a tensor or any nesting of tuples, lists, dicts, namedtuples and dataclasses; it is
    compared leaf by leaf. Each parameter is scaled by every factor in ``factors`` (see :data:`FACTORS`). A
    weight that is invariant only because some parameter is all zeros (a bias at initialisation) is marked
    ``only_while_zero``: the check is repeated with those parameters set to small random values.
    ``params="weights"`` audits only the weights of linear and convolution layers (the layers the paper's
    analysis is about; cheaper on large models). ``only`` audits just the named parameters among those (each
    verdict depends on its own parameter alone, so a large model's audit can be split across processes).
    """
    if params not in ("all", "weights"):
        raise ValueError(f"params must be 'all' or 'weights', got {params!r}")
    kwargs = dict(kwargs or {})
    tensors = [t for t in list(inputs) + list(kwargs.values()) if isinstance(t, torch.Tensor)]
    if not tensors:
        raise ValueError("audit needs the model's inputs: audit(model, x) or audit(model, x, mask, kwargs={...})")
    if tensors[0].dim() == 0 or tensors[0].shape[0] < 2:
        raise ValueError("inputs needs at least 2 samples: batch normalisation uses batch statistics")
    if not factors or any(not f > 0 or f == 1 for f in factors):
        raise ValueError(f"factors must be positive and != 1, got {factors}")
    modules = dict(model.named_modules())
    owners = {f"{mn}.{pn}" if mn else pn: (mn, pn) for mn, m in model.named_modules() for pn, _ in m.named_parameters(recurse=False)}
    wanted = None if params == "all" else set(_linear_weights(model))
    if only is not None:
        unknown = sorted(set(only) - set(owners))
        if unknown:
            raise ValueError(f"only: no parameters named {unknown[:3]} in the model; see model.named_parameters()")
        wanted = set(only) if wanted is None else wanted & set(only)
    changes = _numeric(model, inputs, kwargs, factors, names=wanted, stop_above=tol)
    zero_params = {n for n, p in model.named_parameters() if not bool(p.detach().abs().max() > 0)}
    conditional: dict[str, tuple] = {}
    if zero_params:
        suspects = {n for n, v in changes.items() if v < tol and n not in zero_params}
        after = _numeric(_moved(model, zero_params), inputs, kwargs, factors, names=suspects,
                         stop_above=tol) if suspects else {}
        broken = [n for n, v in after.items() if not v < tol]
        # which zero parameter: first the weight's own bias (the common case), else all of them
        own = {n: n.rsplit(".", 1)[0] + ".bias" if "." in n else "bias" for n in broken}
        own = {n: b for n, b in own.items() if b in zero_params}
        alone = {}
        for bias in set(own.values()):
            names = {n for n, b in own.items() if b == bias}
            alone.update(_numeric(_moved(model, {bias}), inputs, kwargs, factors, names=names, stop_above=tol))
        conditional = {n: (own[n],) if n in own and not alone[n] < tol else tuple(sorted(zero_params))
                       for n in broken}
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # data-dependent control flow and the like
        gm, trace_error = None, f"{type(err).__name__}"
    rows = []
    for name, p in model.named_parameters():
        if wanted is not None and name not in wanted:
            continue
        module_name, pname = owners[name]
        module = modules[module_name]
        if pname != "weight" or not isinstance(module, LINEAR):
            reason = f"{type(module).__name__}.{pname}: numerical check only (reasons are traced for linear and conv weights)"
        elif gm is None:
            reason = f"numerical check only: the model could not be traced ({trace_error})"
        else:
            try:
                reason = _trace_reason(gm, module_name)
            except Exception as err:  # an unusual graph: keep the numerical verdict
                reason = f"numerical check only: the trace could not be followed ({type(err).__name__})"
        zero = name in zero_params
        if zero:
            reason = "all zeros at this point, so scaling it cannot change anything: audit a trained model"
        only = conditional.get(name, ())
        if only:
            own_bias = [z for z in only if z.startswith(module_name + ".")] if module_name else []
            if own_bias:
                reason = f"invariant only while '{own_bias[0]}' is zero (it is at this point); once it moves, it " \
                         f"breaks: {reason}"
            else:
                reason = f"invariant only while {len(only)} all-zero parameters stay zero (here: " \
                         f"{', '.join(repr(z) for z in only[:2])}{', ...' if len(only) > 2 else ''}); once they move, " \
                         f"it breaks"
        rows.append(AuditRow(name, tuple(p.shape), changes[name] < tol and not zero, changes[name], reason, zero,
                             only))
    return rows


def _moved(model: nn.Module, names: set[str]) -> nn.Module:
    """A copy with the named (all-zero) parameters set to small random values."""
    moved = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in moved.named_parameters():
            if n in names:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return moved


def param_groups(model: nn.Module, rows: list[AuditRow], invariant: dict | None = None,
                 other: dict | None = None) -> list[dict]:
    """Optimizer param groups from an audit: the weights that auto-tune (for any value of the other
    parameters) and the rest, each with its own options.

    For example, weight decay and LARS/AdamP-style treatment only for scale-invariant weights::

        rows = audit.audit(model, x)
        opt = torch.optim.SGD(audit.param_groups(model, rows, invariant={"weight_decay": 5e-4},
                                                 other={"weight_decay": 0.0}), lr=0.1)

    Empty groups are left out; every parameter of the model is in exactly one group. A parameter the rows do
    not cover (an audit with ``params="weights"`` skips biases and norms) goes to the other group.
    """
    verdict = {r.name: r.auto_tunes for r in rows}
    params = dict(model.named_parameters())
    foreign = set(verdict) - set(params)
    if foreign:
        raise ValueError(f"rows name parameters this model does not have (audit this model): {sorted(foreign)[:5]}")
    verdict = {n: verdict.get(n, False) for n in params}
    groups = [({"params": [p for n, p in params.items() if verdict[n]]}, invariant or {}),
              ({"params": [p for n, p in params.items() if not verdict[n]]}, other or {})]
    return [{**g, **opts} for g, opts in groups if g["params"]]


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


# ------------------------------------------- torchvision's models at random initialisation

#: The families of the book's zoo table: label -> torchvision builder name.
ZOO = {"ResNet-18": "resnet18", "ResNet-50": "resnet50", "VGG-11-BN": "vgg11_bn", "MobileNetV2": "mobilenet_v2",
       "EfficientNet-B0": "efficientnet_b0", "ConvNeXt-T": "convnext_tiny", "RegNetY-400MF": "regnet_y_400mf",
       "ViT-B/16": "vit_b_16", "Swin-T": "swin_t"}


def zoo_model(name: str, image_size: int = 32, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A torchvision classification model at random initialisation (``weights=None``: nothing is downloaded).

    ViTs are built for ``image_size`` (their position embedding depends on it); convolutional models accept
    any size their downsampling allows.
    """
    import torchvision

    kwargs = {"image_size": image_size} if name.startswith("vit_") else {}
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def reason_kind(reason: str) -> str:
    """A reason without the module names in it, so that reasons can be counted across layers."""
    import re

    return re.sub(r"'[^']*'", "'…'", reason)


def summarize(rows: list[AuditRow]) -> dict[str, Any]:
    """Fraction of audited weights that auto-tune, and the reasons of the others with their counts."""
    if not rows:
        raise ValueError("no rows to summarise")
    counts: dict[str, int] = {}
    for r in rows:
        if not r.auto_tunes:
            key = f"{r.verdict}: {reason_kind(r.reason)}"
            counts[key] = counts.get(key, 0) + 1
    return {"weights": len(rows), "auto_tune": sum(r.auto_tunes for r in rows),
            "fraction": sum(r.auto_tunes for r in rows) / len(rows),
            "others": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def _audit_zoo_part(job: tuple[str, int, int, int, int, int]) -> list[AuditRow]:
    """Every ``parts``-th linear and convolution weight of one model, from the ``part``-th on."""
    name, image_size, batch, seed, part, parts = job
    model = zoo_model(name, image_size, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen)
    return audit(model, x, params="weights", only=_linear_weights(model)[part::parts])


def audit_zoo(names: list[str], image_size: int = 32, batch: int = 2, seed: int = 0,
              workers: int = 1) -> list[dict[str, Any]]:
    """Audit the linear and convolution weights of torchvision models at random initialisation, in a pool of
    ``workers`` processes (one thread each). Returns :func:`summarize` per model, with its rows."""
    import torchvision

    known = set(torchvision.models.list_models(module=torchvision.models))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"not torchvision classification models: {unknown}; see torchvision.models.list_models()")
    if image_size < 32 or batch < 2:
        raise ValueError(f"image_size must be >= 32 (the models downsample by 32) and batch >= 2 (batch "
                         f"statistics); got {image_size}, {batch}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    # each model's weights are split into `workers` interleaved parts, so that no process waits long for the
    # last large model (the verdicts do not depend on the split)
    jobs = [(n, image_size, batch, seed, part, workers) for n in names for part in range(workers)]
    if workers == 1:
        parts = [_audit_zoo_part(j) for j in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # one torch thread in each worker (set there, never in the calling process)
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            parts = list(pool.map(_audit_zoo_part, jobs))
    results = []
    for i, name in enumerate(names):
        pieces = parts[i * workers:(i + 1) * workers]
        rows = [pieces[k % workers][k // workers] for k in range(sum(map(len, pieces)))]  # the model's order
        results.append({"model": name, **summarize(rows), "rows": rows})
    return results

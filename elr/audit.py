"""Which weights of a model auto-tune their learning rate, and why (the paper's Section 3.1).

A weight auto-tunes when the model's output does not change if the weight is
multiplied by a positive factor γ. :func:`audit` decides it for every
parameter, on a copy of the model in float64 with every normalisation's eps
set to 1e-30 (eps breaks exact invariance), in training mode (batch
statistics), with dropout masks fixed by seeding:

* **the screen** (``method="screen"``, the default): one forward and a few
  backward passes give, for every parameter W at once, ⟨∇_W f, W⟩ for random
  projections f = ⟨u, output⟩. For a scale-invariant W this is 0 for any
  output functional f (the paper's Eq. 1: ∇f(γW) = ∇f(W)/γ, so
  d f(γW)/dγ = ⟨∇f, W⟩ = 0 at γ = 1). A value far above rounding decides
  "breaks"; a value at rounding level decides "auto-tunes" when the traced
  structure also proves exact invariance (below). Everything else goes to
* **the finite factors** (``method="factors"`` runs them for every
  parameter, as the audit always did): the output at γ = 1e-3, 0.5, 3 and
  1e3 against γ = 1 (:data:`FACTORS`), compared leaf by leaf. They catch
  what a derivative at γ = 1 cannot: saturating nonlinearities (ReLU6 clips
  only at large γ), a weight invariant only while an all-zero bias stays
  zero, a NaN at γ = 1e3. Where ``torch.fx`` traces the model, each of these
  passes recomputes only the nodes the scaled parameter reaches and reads the
  rest from one kept full pass (:class:`_Suffix`): the same outputs bit for
  bit, checked against the eager pass, and declined (a whole pass instead)
  wherever an in-place operation could make a kept value stale.
* **structurally**, for linear and convolution weights (transformers'
  ``Conv1D`` included): a trace of the model, following how the weight's
  scale propagates to the output: through layers homogeneous of degree 1
  (ReLU, LeakyReLU, dropout, pooling, bias-free linear maps) it stays a
  scale; a normalisation (BatchNorm, LayerNorm, GroupNorm, InstanceNorm,
  RMSNorm, Hugging Face's ``*RMSNorm`` classes) absorbs it; a bias, another
  nonlinearity, or an addition with a path that does not carry the scale (a
  residual connection before the normalisation, as in ResNet v2) breaks it.
  This gives the reason shown next to the verdict. The trace is
  ``torch.fx``'s, or, for models it cannot trace (Hugging Face models, data-
  dependent control flow), a record of the operations of one real forward
  pass.

:func:`invariant_weights` returns the weights found scale-invariant, for
picking the layers a monitor watches.
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
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

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
# some channels (dim 1) scale, the others do not (DenseNet's concatenation): a per-channel normalisation
# (BatchNorm, InstanceNorm) still absorbs it, nothing that mixes channels does
PART = "scales some channels"
_PER_CHANNEL_NORMS = BATCH_NORMS + (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_CHANNEL_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, F.dropout, F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d,
                      F.adaptive_max_pool2d, F.avg_pool1d, F.max_pool1d, F.pad, operator.neg, torch.neg}
# normalisations whose output is x̂·weight + bias (so that scaling weight scales the output, as for a linear layer)
_AFFINE_NORMS = set(NORMS) | ({nn.RMSNorm} if hasattr(nn, "RMSNorm") else set())


def _is_rmsnorm(m: nn.Module) -> bool:
    """``nn.RMSNorm`` and Hugging Face's ``LlamaRMSNorm``, ``Qwen3RMSNorm``, ... (known by the class name: x /
    √(mean x² + eps) absorbs a positive scale of x, but not a bias, like LayerNorm)."""
    return type(m).__name__.endswith("RMSNorm")


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, NORMS) or _is_rmsnorm(m)


def _is_conv1d(m: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer x W + b with ``weight`` of shape (in, out)."""
    return type(m).__name__ == "Conv1D" and type(m).__module__.startswith("transformers") and hasattr(m, "nf")


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, LINEAR) or _is_conv1d(m)


def _homogeneous_function(target: Any) -> bool:
    # torchvision's stochastic depth multiplies each sample by 0 or 1/(1-p): homogeneous of degree 1 (matched by
    # name, so that importing the audit does not import torchvision)
    return target in HOMOGENEOUS_FUNCTIONS or (getattr(target, "__name__", "") == "stochastic_depth" and
                                               getattr(target, "__module__", "").startswith("torchvision"))


def output_channel_dim(module: nn.Module) -> int:
    """The dimension of ``module.weight`` that indexes output channels: 1 for transformers' ``Conv1D`` (weight
    (in, out)), 0 for ``nn.Linear`` and convolutions (weight (out, in, ...)); per-channel norms use it."""
    return 1 if _is_conv1d(module) else 0


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
    change: float       # relative output change: the largest over the factors, or the first one above tol; from the
    #                     screen, |d out(γW)/d log γ| at γ = 1 relative to max |out| (root mean square over projections)
    reason: str         # why, from the traced structure (or why no reason could be traced)
    zero: bool = False  # the parameter is all zeros here, so scaling it tests nothing
    only_while_zero: tuple = ()  # invariant now, but not once these all-zero parameters move (e.g. a zero bias)
    #: what decided the verdict: "screen" (⟨∇f, W⟩ far from 0: ``change`` is the first-order rate, below),
    #: "screen+trace" (⟨∇f, W⟩ at rounding level and the trace proves exact invariance), "factors" (the finite
    #: factors: ``change`` as above), "zero" (an all-zero parameter) or "zero output" (the output is identically
    #: zero whatever this weight is)
    method: str = "factors"

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
    for any variance above about 1e-14, also after a weight is scaled by 1e-3 (chapter 7 measures both).
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    model = copy.deepcopy(model).to(dtype).train()
    for m in model.modules():
        if isinstance(m, NORMS):
            m.eps = eps
        elif _is_rmsnorm(m):  # nn.RMSNorm's eps (None means the dtype's machine epsilon); HF's variance_epsilon
            for attr in ("eps", "variance_epsilon"):
                if hasattr(m, attr) and not isinstance(getattr(m, attr), torch.Tensor):
                    setattr(m, attr, eps)
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


_LOW_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_CASTS = {torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16}


class _KeepFloat64(TorchFunctionMode):
    """Inside the audit's float64 forward passes, casts of float64 tensors to a lower precision are dropped:
    Hugging Face's RMSNorm and attention compute in float32 (``x.to(torch.float32)``, ``softmax(...,
    dtype=torch.float32)``), whose rounding (~1e-7) would otherwise look like a broken invariance."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d:
            out = _depthwise_conv2d(*args, **kwargs)
            if out is not None:
                return out
        if func in _CASTS and args and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float64:
            return args[0]
        if func is torch.Tensor.to or func is torch.Tensor.type or "dtype" in kwargs:
            src = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if func is torch.Tensor.to or func is torch.Tensor.type:
                if src is None or src.dtype != torch.float64:
                    return func(*args, **kwargs)
                args = tuple(torch.float64 if a in _LOW_FLOATS else a for a in args)
            if kwargs.get("dtype") in _LOW_FLOATS:
                kwargs = {**kwargs, "dtype": torch.float64}
        return func(*args, **kwargs)


def _depthwise_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor | None:  # noqa: A002
    """A float64 depthwise convolution on the CPU over few output positions, as one unfold and one product,
    or None where torch's own is the faster (or the only) way. Torch computes a float64 grouped convolution
    on the CPU one group at a time (no oneDNN kernel for float64), about 20 us per channel however small the
    image: at the audit's 32-pixel inputs the deep depthwise layers of ConvNeXt and EfficientNet have 1-4
    output positions and hundreds of channels, and that loop dominated their audits. The result equals
    torch's to float64 rounding (~1e-16 relative), far below the audit's tolerance; every pass of one audit
    takes the same path, so its passes stay comparable bit for bit."""
    x = input  # torch.conv2d's own names, so that calls by keyword arrive here too
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dtype == torch.float64
            and x.device.type == "cpu" and x.dim() == 4 and weight.dim() == 4 and isinstance(groups, int)
            and groups > 1 and weight.shape[0] == groups and weight.shape[1] == 1 and x.shape[1] == groups
            and not isinstance(padding, str) and weight.dtype == torch.float64):
        return None
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1 or n * kh * kw * ho * wo > 1024:  # larger images: torch's loop is the faster
        return None
    cols = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
    out = (cols.view(n, c, kh * kw, ho * wo) * weight.reshape(1, c, kh * kw, 1)).sum(2).view(n, c, ho, wo)
    return out if bias is None else out + bias.view(1, c, 1, 1)


def _forward(model: nn.Module, args: tuple, kwargs: dict, seed: int, grad: bool) -> list[torch.Tensor]:
    """The output leaves of one forward pass, with the dropout masks of ``seed``; a clear error if the inputs
    do not fit."""
    torch.manual_seed(seed)  # identical dropout masks in every forward pass
    try:
        with torch.set_grad_enabled(grad), _KeepFloat64():
            out = _leaves(model(*args, **kwargs))
    except Exception as err:  # the inputs do not fit the model: say so, before any verdict
        raise ValueError(f"audit: the model's forward pass failed on the inputs given, in train mode "
                         f"({type(err).__name__}: {err}); pass inputs the model accepts in training "
                         f"(e.g. torchvision's Inception v3 needs 299x299 there)") from err
    if not out:
        raise ValueError("the model's output holds no floating-point tensor to compare")
    return out


def _numeric(model: nn.Module, args: tuple, kwargs: dict, factors=FACTORS, seed: int = 0,
             names: set[str] | None = None, stop_above: float | None = None) -> dict[str, float]:
    """Largest relative output change per parameter over ``factors``; with ``stop_above``, the factors of a
    parameter stop at the first change above it (the verdict is then settled, and the change is a lower
    bound of the largest)."""
    model = exact_copy(model)
    args, kwargs = _cast(args, torch.float64), _cast(kwargs, torch.float64)

    def run():
        return _forward(model, args, kwargs, seed, grad=False)

    base = run()
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


def _attention_linear_in_values(node: fx.Node, state: Mapping[fx.Node, str]) -> bool:
    """Whether ``F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, ...)`` passes the traced
    scale on unchanged: only the value carries it (not the query, the key or the mask, not even as the same node),
    and, when the value also carries a bias, no dropout (with dropout the weights no longer sum to 1)."""
    names = ("query", "key", "value", "attn_mask", "dropout_p")
    args = {n: node.args[i] if len(node.args) > i else node.kwargs.get(n) for i, n in enumerate(names)}
    live = lambda a: isinstance(a, fx.Node) and state.get(a, CONST) != CONST  # noqa: E731
    if not live(args["value"]) or any(live(args[n]) for n in ("query", "key", "attn_mask")):
        return False
    dropout = args["dropout_p"] or 0.0
    return state[args["value"]] == HOM or (state[args["value"]] == SHIFTED and dropout == 0.0)


def _trace_reason(gm: fx.GraphModule, module_name: str) -> str:
    """Follow the scale of ``module_name``'s weight through the traced graph to the output."""
    return _trace(gm, module_name)[0]


def _trace(gm: fx.GraphModule, module_name: str, zero_bias: Collection[str] = ()) -> tuple[str, str | None]:
    """The reason, and the state in which the scale of ``module_name``'s weight reaches the output (None if the
    layer is never called). Linear layers named in ``zero_bias`` have an all-zero bias and count as bias-free:
    the state then says what holds while those biases stay zero."""
    modules = dict(gm.named_modules())
    if not any(n.op == "call_module" and n.target == module_name for n in gm.graph.nodes):
        return ("numerical check only: the trace never calls this layer as a module (its weight is used inside "
                "a function the trace treats as one operation)"), None
    state: dict[fx.Node, str] = {}
    reason = ""
    absorbed = ""
    part_why = ""

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
                return absorbed or "the output does not depend on this weight", final
            if final in (HOM, SHIFTED, PART):
                return "no normalisation follows this layer: the output changes with the weight's scale", final
            return reason or "the scale reaches the output through an operation that is not homogeneous", final
        if node.op == "call_module" and node.target == module_name:
            m = modules[node.target]
            state[node] = HOM if getattr(m, "bias", None) is None or node.target in zero_bias else SHIFTED
            continue
        if not live:
            state[node] = CONST
            continue
        s_in = BROKEN if BROKEN in live else (INV if all(s == INV for s in live) else
                                             (SHIFTED if SHIFTED in live else HOM))
        new, why = s_in, ""
        if node.op == "call_function" and node.target is torch.cat and s_in != BROKEN:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if all(s == HOM for s in ins):
                new = HOM  # every piece carries the same scale
            elif dim == 1 and set(live) <= {HOM, PART, INV} and not all(s == INV for s in live):
                new, part_why = PART, "cat is not positively homogeneous of degree 1"
            elif not all(s == INV for s in live):
                new, why = BROKEN, "cat is not positively homogeneous of degree 1"
            state[node] = new
            if new == BROKEN and not reason:
                reason = why
            continue
        if PART in live and s_in != BROKEN:
            new, why = BROKEN, part_why
            single = len(live) == 1 or set(live) <= {PART, HOM}
            if node.op == "call_module":
                m = modules[node.target]
                if isinstance(m, _PER_CHANNEL_NORMS) and single:
                    new = INV
                    absorbed = absorbed or f"normalised by '{node.target}' ({type(m).__name__}), channel by channel"
                elif isinstance(m, HOMOGENEOUS_MODULES) and not isinstance(m, nn.Flatten) and single:
                    new = PART
            elif node.op == "call_function" and node.target in (F.batch_norm, F.instance_norm) and single:
                new = INV
                absorbed = absorbed or f"normalised by {node.target.__name__}, channel by channel"
            elif ((node.op == "call_function" and node.target in _CHANNEL_FUNCTIONS) or
                  (node.op == "call_method" and node.target in ("relu", "neg"))) and single:
                new = PART
            elif ((node.op == "call_function" and node.target in PRODUCTS) or
                  (node.op == "call_method" and node.target in PRODUCT_METHODS)) and len(live) == 1 and \
                    isinstance(node.args[0], fx.Node) and state.get(node.args[0]) == PART and \
                    node.target not in (operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm"):
                new = PART  # times a constant, elementwise
            state[node] = new
            if new == BROKEN and not reason:
                reason = why
            continue
        if node.op == "call_module":
            m = modules[node.target]
            if _is_norm(m):
                if s_in == HOM or (s_in == SHIFTED and isinstance(m, BATCH_NORMS)):
                    new = INV
                    also = ", whose batch mean also removes the bias before it" if s_in == SHIFTED else ""
                    absorbed = absorbed or f"normalised by '{node.target}' ({type(m).__name__}){also}"
                elif s_in == SHIFTED:
                    new, why = BROKEN, f"'{node.target}' ({type(m).__name__}) does not remove the bias added before it"
            elif _is_linear(m):
                if s_in == HOM and m.bias is not None and node.target not in zero_bias:
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
        elif node.op == "call_function" and node.target is F.scaled_dot_product_attention and \
                _attention_linear_in_values(node, state):
            # softmax(q kᵀ) v is linear in the values v when nothing else carries the scale; without dropout a
            # bias on v passes through too (the attention weights sum to 1), so the state stays what it was
            pass
        elif (node.op == "call_function" and _homogeneous_function(node.target)) or \
                (node.op == "call_method" and node.target in SHAPE_METHODS):
            if s_in == SHIFTED and node.target not in REARRANGEMENTS:
                new, why = BROKEN, f"a bias before {getattr(node.target, '__name__', node.target)}"
        elif s_in in (HOM, SHIFTED):
            name = getattr(node.target, "__name__", str(node.target))
            new, why = BROKEN, f"{name} is not positively homogeneous of degree 1"
        state[node] = new
        if new == BROKEN and not reason:
            reason = why
    return reason or "no path to the output", None


def _linear_weights(model: nn.Module) -> list[str]:
    """Names of the weights of linear and convolution layers (transformers' ``Conv1D`` included) and of
    ``nn.MultiheadAttention``'s input projections, in the model's parameter order (what ``params="weights"``
    audits)."""
    owned = set()
    for mn, m in model.named_modules():
        prefix = f"{mn}." if mn else ""
        if _is_linear(m) and isinstance(getattr(m, "weight", None), nn.Parameter):
            owned.add(prefix + "weight")
        elif isinstance(m, nn.MultiheadAttention):
            owned.update(prefix + pn for pn in ("in_proj_weight", "q_proj_weight", "k_proj_weight",
                                                "v_proj_weight") if isinstance(getattr(m, pn, None), nn.Parameter))
    return [n for n, _ in model.named_parameters() if n in owned]


#: The screen's thresholds. "Breaks" needs |⟨∇f, W⟩| above 10·tol per unit of the projection's 1-norm (so the
#: output's first-order change is at least 10·tol relative to its largest entry: the finite factors would see
#: it) and above 1e-6 of Σ|∇f ⊙ W| (so it is no rounding, about 1e-16 of that sum in float64). "Invariant" (with
#: the trace's proof) needs |⟨∇f, W⟩| below 1e-9 of Σ|∇f ⊙ W|, or a first-order change below 1e-3·tol (where the
#: gradient itself is rounding: a BatchNorm over two values gives ±1 whatever its input). Everything between goes
#: to the finite factors.
SCREEN_MARGIN, SCREEN_CANCELLED, SCREEN_ROUNDING, SCREEN_NEGLIGIBLE = 10.0, 1e-6, 1e-9, 1e-3


def _screen(m64: nn.Module, args: tuple, kwargs: dict, names: list[str], projections: int,
            seed: int) -> dict[str, tuple[float, float, float]]:
    """Eq. (1) for every named parameter W at once: one forward pass and ``projections`` backward passes of
    f = Σ_leaves ⟨u, out⟩ / max |out| with u ~ N(0, I). Per name: (the root mean square of d = ⟨∇_W f, W⟩ =
    d f(γW)/d log γ at γ = 1 over the projections; the largest |d| / ‖u‖₁, a lower bound of the output's
    first-order relative change; the largest |d| / Σ|∇_W f ⊙ W|, how far d is from rounding)."""
    wanted = set(names)
    stats = {n: (0.0, 0.0, 0.0) for n in names}
    # gradients only for the named parameters, each reduced to two numbers and freed as soon as it is complete
    # (a large model's float64 gradients would double the audit's memory)
    for n, p in m64.named_parameters():
        p.requires_grad_(n in wanted)
    try:
        out = [o for o in _forward(m64, args, kwargs, seed, grad=True) if o.requires_grad]
        if not out or not names:
            return stats  # no output depends on any of these parameters
        out = [torch.view_as_real(o) if o.is_complex() else o for o in out]
        gen = torch.Generator().manual_seed(seed + 1)
        sums = {n: [0.0, 0.0, 0.0] for n in names}
        seen: dict[str, tuple[float, float]] = {}
        hooks = []
        for n, p in m64.named_parameters():
            if n in wanted:
                def reduce(prm, n=n):
                    prod = prm.grad.detach() * prm.detach()
                    seen[n] = (float(prod.sum()), float(prod.abs().sum()))
                    prm.grad = None
                hooks.append(p.register_post_accumulate_grad_hook(reduce))
        try:
            for k in range(projections):
                f, norm1 = 0.0, 0.0
                for o in out:
                    u = torch.randn(o.shape, generator=gen, dtype=o.dtype)
                    top = float(o.detach().abs().max()) if o.numel() else 0.0
                    scale = top if top > 0 and math.isfinite(top) else 1.0
                    f = f + (u * o).sum() / scale
                    norm1 += float(u.abs().sum())
                seen.clear()
                f.backward(retain_graph=k < projections - 1)
                for n, (d, mag) in seen.items():  # parameters the output does not reach get no gradient
                    if not (math.isfinite(d) and math.isfinite(mag)):
                        d, mag = math.inf, math.inf  # a NaN or an overflow is a change, never hidden
                    acc = sums[n]
                    acc[0] += d * d / projections
                    acc[1] = max(acc[1], abs(d) / max(norm1, 1e-300))
                    acc[2] = max(acc[2], abs(d) / mag if mag > 0 else (math.inf if d else 0.0))
        finally:
            for h in hooks:
                h.remove()
    finally:
        for p in m64.parameters():
            p.grad = None
    return {n: (math.sqrt(a[0]), a[1], a[2]) for n, a in sums.items()}


def _factor_changes(m64: nn.Module, args: tuple, kwargs: dict, names: list[str], factors: tuple, seed: int,
                    stop_above: float, runner: "_Suffix | None" = None, moved: Collection[str] = ()) -> dict[str, float]:
    """The finite factors on the prepared float64 model, for the named parameters only (one shared base pass);
    each parameter is restored exactly after each factor. With a ``runner`` (:class:`_Suffix`, built before
    the parameters ``moved`` were changed), each pass recomputes only what the changed parameters reach."""

    def forward(changed):  # rerun of nothing is the kept full pass; None means it declined
        out = runner.rerun([*moved, *changed]) if runner is not None else None
        return out if out is not None else _forward(m64, args, kwargs, seed, grad=False)

    base = forward(())
    params = dict(m64.named_parameters())
    out = {}
    for n in names:
        p, worst = params[n], 0.0
        keep = p.detach().clone()
        for g in factors:
            with torch.no_grad():
                p.mul_(g)
            worst = max(worst, _relative_change(forward((n,)), base))
            with torch.no_grad():
                p.copy_(keep)
            if worst > stop_above:
                break
        out[n] = worst
    return out


def _decide(m64: nn.Module, args: tuple, kwargs: dict, names: list[str], proven: Mapping[str, bool],
            factors: tuple, tol: float, seed: int, projections: int, runner: "_Suffix | None" = None,
            moved: Collection[str] = ()) -> dict[str, tuple[bool, float, str]]:
    """(invariant, change, method) per name: the screen where it decides, the finite factors elsewhere. For a
    few names (the checks of one moved bias) the screen costs more than it saves: a proven weight is then
    invariant by the trace alone, and the others go straight to the factors (one pass if they break)."""
    if not names:
        return {}
    if len(names) <= 2:
        result = {n: (True, 0.0, "trace") for n in names if proven.get(n, False)}
        rest = [n for n in names if n not in result]
        changes = _factor_changes(m64, args, kwargs, rest, factors, seed, tol, runner, moved) if rest else {}
        result.update({n: (c < tol, c, "factors") for n, c in changes.items()})
        return result
    screen = _screen(m64, args, kwargs, names, projections, seed)
    result, undecided = {}, []
    for n in names:
        rate, lower, cancelled = screen[n]
        if lower > SCREEN_MARGIN * tol and cancelled > SCREEN_CANCELLED and not proven.get(n, False):
            result[n] = (False, rate, "screen")
        elif (cancelled < SCREEN_ROUNDING or rate < SCREEN_NEGLIGIBLE * tol) and proven.get(n, False):
            result[n] = (True, rate, "screen+trace")
        else:
            undecided.append(n)
    changes = _factor_changes(m64, args, kwargs, undecided, factors, seed, tol, runner, moved) if undecided else {}
    result.update({n: (c < tol, c, "factors") for n, c in changes.items()})
    return result


def _set_moved(m64: nn.Module, names: Collection[str], dtypes: Mapping[str, torch.dtype]) -> None:
    """Set the named (all-zero) parameters of the prepared copy to the values :func:`_moved` gives them (drawn
    in the model's parameter order, rounded to the original dtype)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m64.named_parameters():
            if n in names:
                p.copy_((0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64)).to(dtypes[n]))


def _zero_output(gm: fx.GraphModule | None, zero_params: set[str]) -> str:
    """If every output leaf comes, through rearrangements only, from a linear layer whose weight and bias are
    all zero (torchvision's ViT zero-initialises its head): which layer; else ''."""
    if gm is None:
        return ""
    modules = dict(gm.named_modules())
    zero: dict[fx.Node, str] = {}
    for node in gm.graph.nodes:
        ins = node.all_input_nodes
        if node.op == "call_module":
            m = modules[node.target]
            if _is_linear(m) and f"{node.target}.weight" in zero_params and \
                    (m.bias is None or f"{node.target}.bias" in zero_params):
                zero[node] = f"'{node.target}' ({type(m).__name__}) is all zeros, weight and bias"
            elif isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)) and ins and all(a in zero for a in ins):
                zero[node] = zero[ins[0]]
        elif node.op in ("call_function", "call_method") and node.target in REARRANGEMENTS and ins and \
                ins[0] in zero and all(a in zero for a in ins):
            zero[node] = zero[ins[0]]
        elif node.op == "output":
            return zero[ins[0]] if ins and all(a in zero for a in ins) else ""
    return ""


def audit(model: nn.Module, *inputs: Any, tol: float = 1e-8, factors: tuple = FACTORS,
          kwargs: dict | None = None, params: str = "all", only: Collection[str] | None = None,
          method: str = "screen", projections: int = 2, seed: int = 0, fast: bool = True) -> list[AuditRow]:
    """Audit every parameter of ``model`` on the inputs ``model(*inputs, **kwargs)`` (a batch of at least 2
    samples, for batch statistics).

    The output may be a tensor or any nesting of tuples, lists, dicts, namedtuples and dataclasses; it is
    compared leaf by leaf. ``method="screen"`` (default) decides what it can from Eq. (1), ⟨∇_W f, W⟩ = 0 for a
    scale-invariant W, with ``projections`` random output functionals f in one forward and ``projections``
    backward passes, and scales the remaining parameters by every factor in ``factors`` (see
    :data:`FACTORS`); ``method="factors"`` scales every parameter (the audit before the screen: the same
    verdicts, one to four forward passes per parameter). A weight that is invariant only because some parameter
    is all zeros (a bias at initialisation) is marked ``only_while_zero``: the check is repeated with those
    parameters set to small random values. ``params="weights"`` audits only the weights of linear and
    convolution layers and of attention's input projections (the layers the paper's analysis is about).
    ``only`` audits just the named parameters among those (each verdict depends on its own parameter alone, so
    a large model's audit can be split across processes). ``seed`` fixes the dropout masks and projections.
    ``fast`` (default) lets the finite factors recompute only the part of the model a scaled parameter
    reaches, where the model's fx graph allows it (:class:`_Suffix`; the same outputs, bit for bit);
    ``fast=False`` runs the whole model for every factor.
    """
    if params not in ("all", "weights"):
        raise ValueError(f"params must be 'all' or 'weights', got {params!r}")
    if method not in ("screen", "factors"):
        raise ValueError(f"method must be 'screen' (Eq. 1, then finite factors where undecided) or 'factors' "
                         f"(finite factors for every parameter), got {method!r}")
    if not isinstance(fast, bool):
        raise ValueError(f"fast must be True (partial forward passes where the fx graph allows) or False (whole "
                         f"passes), got {fast!r}")
    if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections must be an integer >= 1 (random output functionals of the screen), "
                         f"got {projections!r}")
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
    named = [(n, p) for n, p in model.named_parameters() if wanted is None or n in wanted]
    zero_params = {n for n, p in model.named_parameters() if not bool(p.detach().abs().max() > 0)}
    gm, trace_error = _fx_trace(model, inputs, kwargs, seed)
    zero_out = _zero_output(gm, zero_params)
    # structure, per linear weight: the reason, and whether the trace proves exact invariance (the weight reaches
    # the output only through its layer's calls, and the scale is absorbed), with all-zero biases as they are
    # (now) and as if they were not zero (for any values of the other parameters)
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        for _, prm in m.named_parameters(recurse=False):
            uses[id(prm)] = uses.get(id(prm), 0) + 1
    attrs = {n.target for n in gm.graph.nodes if n.op == "get_attr"} if gm is not None else set()
    calls: dict[str, int] = {}  # a layer called twice on its own output would scale by γ²: no proof then
    for node in (gm.graph.nodes if gm is not None else ()):
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    zero_bias = {mn for mn, m in modules.items() if f"{mn + '.' if mn else ''}bias" in zero_params}
    reasons, proof_any, proof_now = {}, {}, {}

    def prove(name, p, module_name, biases_zero):
        """The trace's proof that scaling ``name`` cannot change the output."""
        sole = uses.get(id(p), 0) == 1 and name not in attrs and calls.get(module_name) == 1
        return sole and _trace(gm, module_name, biases_zero)[1] in (INV, CONST)

    for name, p in named:
        module_name, pname = owners[name]
        module = modules[module_name]
        if pname != "weight" or not _is_linear(module):
            reasons[name] = f"{type(module).__name__}.{pname}: numerical check only (reasons are traced for " \
                            f"linear and conv weights)"
            # a normalisation's affine weight scales its output like a linear layer's weight (x̂·w + b): the
            # trace proves what it can, the reason stays the numerical one
            if gm is not None and pname == "weight" and type(module) in _AFFINE_NORMS:
                try:
                    proof_any[name] = prove(name, p, module_name, ())
                    proof_now[name] = proof_any[name] or prove(name, p, module_name, zero_bias)
                except Exception:  # an unusual graph: the numerical checks decide
                    pass
        elif gm is None:
            reasons[name] = f"numerical check only: the model could not be traced ({trace_error})"
        else:
            try:
                reasons[name], final = _trace(gm, module_name)
                proof_any[name] = uses.get(id(p), 0) == 1 and name not in attrs and calls.get(module_name) == 1 \
                    and final in (INV, CONST)
                proof_now[name] = proof_any[name] or prove(name, p, module_name, zero_bias)
            except Exception as err:  # an unusual graph: keep the numerical verdict
                reasons[name] = f"numerical check only: the trace could not be followed ({type(err).__name__})"
    if gm is not None and _writes_in_place(gm):
        # the trace follows a graph's edges, and an in-place write (into a view of another branch, say) is not
        # one: no structural proof then, the numerical checks decide
        proof_any = {n: False for n in proof_any}
        proof_now = {n: False for n in proof_now}
    conditional: dict[str, tuple] = {}
    if method == "factors":
        changes = _numeric(model, inputs, kwargs, factors, names=wanted, stop_above=tol)
        decided = {n: (changes[n] < tol, changes[n], "factors") for n, _ in named}
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
    else:
        m64 = exact_copy(model)
        args64, kwargs64 = _cast(inputs, torch.float64), _cast(kwargs, torch.float64)
        live = [n for n, _ in named if n not in zero_params]
        base = _forward(m64, args64, kwargs64, seed, grad=False)
        runner = None
        if zero_out and not any(bool(o.abs().max() > 0) for o in base if o.numel()):
            # the output is 0 · (anything finite): no weight before that layer can change it
            decided = {n: (True, 0.0, "zero output") for n in live}
        else:
            runner = _Suffix.build(m64, args64, kwargs64, seed, base) if fast else None
            decided = _decide(m64, args64, kwargs64, live, proof_now, factors, tol, seed, projections, runner)
        decided.update({n: (False, 0.0, "zero") for n, _ in named if n in zero_params})
        suspects = [n for n in live if decided[n][0] and not proof_any.get(n, False)]
        if zero_params and suspects:
            everything = dict(model.named_parameters())
            dtypes = {n: p.dtype for n, p in everything.items()}
            _set_moved(m64, zero_params, dtypes)
            after = _decide(m64, args64, kwargs64, suspects, proof_any, factors, tol, seed, projections, runner,
                            [n for n in zero_params if n in everything])
            with torch.no_grad():
                for n, prm in m64.named_parameters():
                    if n in zero_params:
                        prm.zero_()
            broken = [n for n in suspects if not after[n][0]]
            own = {n: n.rsplit(".", 1)[0] + ".bias" if "." in n else "bias" for n in broken}
            own = {n: b for n, b in own.items() if b in zero_params}
            alone: dict[str, bool] = {}
            for bias in dict.fromkeys(own.values()):
                names = [n for n, b in own.items() if b == bias]
                if zero_out:  # the zero layer still zeroes the output when one bias before it moves
                    alone.update({n: True for n in names})
                    continue
                others = zero_bias - {owners[bias][0]}
                proven = {}
                for n in names:
                    try:
                        proven[n] = n in proof_any and (proof_any[n] or prove(n, everything[n], owners[n][0], others))
                    except Exception:
                        proven[n] = False
                _set_moved(m64, {bias}, dtypes)
                alone.update({n: v[0] for n, v in _decide(m64, args64, kwargs64, names, proven, factors, tol, seed,
                                                          projections, runner, [bias]).items()})
                with torch.no_grad():
                    dict(m64.named_parameters())[bias].zero_()
            conditional = {n: (own[n],) if n in own and not alone[n] else tuple(sorted(zero_params))
                           for n in broken}
    rows = []
    for name, p in named:
        module_name, pname = owners[name]
        reason = reasons[name]
        zero = name in zero_params
        if zero:
            reason = "all zeros at this point, so scaling it cannot change anything: audit a trained model"
        invariant, change, how = decided[name]
        only_zero = conditional.get(name, ())
        if only_zero and zero_out:
            reason = f"the model's output is identically zero here ({zero_out}: a zero-initialised head?), so " \
                     f"no weight before it can change it; once the all-zero parameters move, it breaks: {reason}"
        elif only_zero and len(only_zero) == 1 and only_zero[0].startswith(module_name + "."):
            reason = f"invariant only while '{only_zero[0]}' is zero (it is at this point); once it moves, it " \
                     f"breaks: {reason}"
        elif only_zero:
            reason = f"invariant only while {len(only_zero)} all-zero parameters stay zero (here: " \
                     f"{', '.join(repr(z) for z in only_zero[:2])}{', ...' if len(only_zero) > 2 else ''}); once " \
                     f"they move, it breaks"
        rows.append(AuditRow(name, tuple(p.shape), invariant and not zero, change, reason, zero, only_zero,
                             "zero" if zero else how))
    return rows


def _writes_in_place(gm) -> bool:
    """Whether the graph holds an in-place operation (``x.add_(…)``, ``torch.relu_``, ``operator.iadd``), other
    than torch.nn modules with ``inplace=True``, whose write the trace would not follow."""
    for node in gm.graph.nodes:
        if node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_"):
            return True
        if node.op == "call_function":
            name = getattr(node.target, "__name__", "")
            if (name.endswith("_") and not name.startswith("_")) or name.startswith("_foreach_") or \
                    node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
                return True
    return False


def _fx_trace(model: nn.Module, args: tuple = (), kwargs: dict | None = None, seed: int = 0):
    """``torch.fx``'s symbolic trace; where it fails (Hugging Face models, data-dependent control flow), the
    operations of one real forward pass (:func:`_record`). Returns (graph or None, why neither worked)."""
    added = set()
    try:
        before = set(vars(model))
        graph = _Tracer().trace(model)
        # the tracer stores the constants it makes (values read at trace time) on the traced module: copied
        # into the graph's module, then taken off the user's model again
        added = {k for k in set(vars(model)) - before if k.startswith("_tensor_constant")}
        return fx.GraphModule(model, graph), ""
    except Exception as err:  # data-dependent control flow and the like
        symbolic = f"{type(err).__name__}"
    finally:
        for k in added:
            delattr(model, k)
    try:
        return _record(model, args, kwargs or {}, seed), ""
    except Exception as err:
        return None, f"{symbolic}; recording a forward pass failed too: {type(err).__name__}"


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with transformers' Conv1D and the *RMSNorm classes kept as single operations."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_conv1d(m) or _is_rmsnorm(m) or super().is_leaf_module(m, qualname)


class _Suffix:
    """Forward passes that recompute only what a change of some parameters can reach.

    One full pass of the model's fx graph keeps every node's value and the random-number state before it (so
    that dropout and stochastic depth draw the same masks); a later pass for changed parameters recomputes the
    nodes downstream of those parameters, reading the rest from the full pass. Each pass must give the output
    a whole forward pass gives, bit for bit; where that cannot be vouched for, the runner declines (``build``
    returns None, or ``rerun`` does) and the audit runs the whole model:

    * ``build`` declines a graph whose full pass differs from the eager one, that holds constants the tracer
      made (values read at trace time), that draws from a ``torch.Generator`` of its own, that changes a
      parameter in place, or where a tensor changes in place other than through a node it was handed to;
    * a shared (tied) parameter is never rerun partially;
    * in-place changes are followed through tensor storage, also inside tuples and lists: a node that reads a
      storage a recomputed node changed is recomputed too; a kept tensor that recomputed nodes read in more
      than one place, or read between two in-place changes, declines;
    * every kept tensor a recomputed node reads is passed as a copy, and a recomputed node that changes other
      inputs in place than it did in the full pass declines (an in-place change that depends on the values).
    """

    def __init__(self, gm: fx.GraphModule, args: tuple, seed: int, shared: set[str]):
        self.gm, self.args, self.seed, self.shared = gm, args, seed, shared
        self.nodes = list(gm.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.env: dict[fx.Node, Any] = {}
        self.rng: dict[fx.Node, torch.Tensor] = {}
        self.changes: dict[fx.Node, list[int]] = {}  # nodes whose storage later nodes change in place: by which
        self.made: dict[fx.Node, Any] = {}  # and a copy of their value as it was made
        self.storage: dict[fx.Node, set[int]] = {}  # the storages of each node's tensors (not parameters)
        self.changed_by: dict[fx.Node, set[int]] = {}  # the storages each node changed in place
        self.mutates: dict[fx.Node, set[tuple[int, int]]] = {}  # which (input, tensor) each node changed in place
        self._sources_of: dict[str, list[fx.Node]] = {}

    @classmethod
    def build(cls, m64: nn.Module, args: tuple, kwargs: dict, seed: int, base: list[torch.Tensor]) -> "_Suffix | None":
        """The runner for the float64 copy, or None where it cannot be trusted to equal the eager passes."""
        if kwargs:
            return None
        if any(isinstance(v, torch.Generator) for m in m64.modules() for v in vars(m).values()):
            return None  # a module's own generator: its draws are not restored with the global RNG state
        try:
            gm = fx.GraphModule(m64, _Tracer().trace(m64))
            placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
            if len(placeholders) != len(args):
                return None
            known = {n for n, _ in m64.named_parameters()} | {n for n, _ in m64.named_buffers()}
            for node in gm.graph.nodes:
                if node.op == "get_attr" and node.target not in known:
                    return None  # a constant the tracer made from a value read at trace time
                found = []
                fx.node.map_aggregate((node.args, node.kwargs), lambda v: found.append(v) or v)
                if any(isinstance(v, torch.Generator) for v in found):
                    return None
            counts: dict[int, int] = {}
            for _, p in m64.named_parameters(remove_duplicate=False):
                counts[id(p)] = counts.get(id(p), 0) + 1
            shared = {n for n, p in m64.named_parameters() if counts[id(p)] > 1}
            runner = cls(gm, args, seed, shared)
            if not runner._full():
                return None
            out = runner.output()
        except Exception:  # an untraceable model, or one the graph cannot run: the eager passes decide
            return None
        if len(out) != len(base) or not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(out, base)):
            return None
        return runner

    def _inputs(self, node: fx.Node, env: dict) -> list[tuple[tuple[int, int], torch.Tensor]]:
        """The tensors a node receives, as ((input position, tensor position), tensor)."""
        return [((i, j), t) for i, a in enumerate(node.all_input_nodes) for j, t in enumerate(_tensors(env.get(a)))]

    def _full(self) -> bool:
        """Run every node, keeping its value, the RNG state before it, and which nodes changed which tensor
        storage in place. False where that bookkeeping cannot vouch for the kept values."""
        interp = self._interp = fx.Interpreter(self.gm)
        interp.args_iter = iter(self.args)
        interp.env = self.env
        torch.manual_seed(self.seed)
        made: dict[fx.Node, list[tuple[torch.Tensor, int]]] = {}
        changes: dict[int, list[int]] = {}  # storage -> indices of the nodes that changed it in place
        with torch.no_grad(), _KeepFloat64():
            for i, node in enumerate(self.nodes):
                self.rng[node] = torch.get_rng_state()
                inputs = self._inputs(node, self.env)
                before = [t._version for _, t in inputs]
                self.env[node] = value = interp.run_node(node)
                for (where, t), v in zip(inputs, before):
                    if t._version != v:
                        if isinstance(t, nn.Parameter):
                            return False  # the model changes its own parameter in place
                        changes.setdefault(_storage(t), []).append(i)
                        self.changed_by.setdefault(node, set()).add(_storage(t))
                        self.mutates.setdefault(node, set()).add(where)
                leaves = [t for t in _tensors(value) if not isinstance(t, nn.Parameter)]
                if leaves:
                    made[node] = [(t, t._version) for t in leaves]
                    self.storage[node] = {_storage(t) for t in leaves}
                    self.made[node] = _clone(value)
        for node, leaves in made.items():
            later = sorted({c for st in self.storage[node] for c in changes.get(st, ()) if c > self.index[node]})
            for t, version in leaves:
                if t._version != version and not any(c > self.index[node] for c in changes.get(_storage(t), ())):
                    return False  # changed in place, but not by a node it was handed to
            if later:
                self.changes[node] = later
            else:
                del self.made[node]
        return True

    def output(self, env: dict | None = None) -> list[torch.Tensor]:
        env = self.env if env is None else env
        out = self.nodes[-1]
        return _leaves(fx.node.map_arg(out.args[0], lambda n: env[n]))

    def sources(self, name: str) -> list[fx.Node]:
        """The nodes through which parameter ``name`` enters the graph (its module's calls, or a get_attr)."""
        if name in self.shared:
            return []  # tied to another name: the caller runs the whole model
        if name not in self._sources_of:
            self._sources_of[name] = [
                n for n in self.nodes
                if (n.op == "call_module" and name.startswith(n.target + "."))
                or (n.op == "get_attr" and (n.target == name or name.startswith(n.target + ".")))]
        return self._sources_of[name]

    def rerun(self, changed: Collection[str]) -> list[torch.Tensor] | None:
        """The output after the named parameters changed (the others as in the full pass), or None where this
        pass cannot be trusted to equal a whole forward pass; the caller then runs the whole model."""
        starts = []
        for name in changed:
            found = self.sources(name)
            if not found:
                return None
            starts += found
        if not starts:
            return self.output()
        # what the changed parameters reach: through the graph's edges, and through storage that a recomputed
        # node changes in place (a later node reading that storage by another node reads the change)
        todo, dirty = set(starts), set()
        for node in self.nodes[min(self.index[n] for n in starts):]:
            if node in todo or any(a in todo or self.storage.get(a, set()) & dirty for a in node.all_input_nodes):
                todo.add(node)
                dirty |= self.changed_by.get(node, set())
        # kept inputs whose storage some node changes in place: each may be read once, as it was when that node
        # read it in the full pass (before any of those changes, or after all of them)
        env = dict(self.env)
        reads: dict[int, list[tuple[fx.Node, fx.Node]]] = {}
        frontier = {a for node in todo for a in node.all_input_nodes if a not in todo}
        for node in todo:
            for a in node.all_input_nodes:
                if a in frontier and a in self.changes:
                    for st in self.storage[a]:
                        reads.setdefault(st, []).append((a, node))
        chosen: dict[fx.Node, Any] = {}
        for pairs in reads.values():
            if len(pairs) > 1:
                return None
            (a, reader), = pairs
            at = self.index[reader]
            if all(c < at for c in self.changes[a]):
                chosen[a] = self.env[a]
            elif all(c >= at for c in self.changes[a]):
                chosen[a] = self.made[a]
            else:
                return None
        memo: dict[int, torch.Tensor] = {}  # one copy per tensor, so that aliases stay aliases
        for a in frontier:
            env[a] = _clone(chosen.get(a, self.env[a]), memo)
        interp = self._interp  # one per runner: building one lists every submodule
        interp.env = env
        with torch.no_grad(), _KeepFloat64():
            for node in self.nodes:
                if node in todo and node.op != "output":
                    inputs = self._inputs(node, env)
                    before = [t._version for _, t in inputs]
                    torch.set_rng_state(self.rng[node])
                    env[node] = interp.run_node(node)
                    now = {where for (where, t), v in zip(inputs, before) if t._version != v}
                    if now != self.mutates.get(node, set()):
                        return None  # an in-place change that depends on the values
        return self.output(env)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a node's value: a tensor, or tuples, lists and dicts of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _clone(value: Any, memo: dict[int, torch.Tensor] | None = None) -> Any:
    """A copy of the tensors in ``value`` (parameters stay themselves: they are the model's), one per tensor."""
    memo = {} if memo is None else memo
    if isinstance(value, nn.Parameter):
        return value
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.clone()
        return memo[id(value)]
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_clone(v, memo) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v, memo) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v, memo) for k, v in value.items()}
    return value


class _Recorded:
    """A graph recorded from one forward pass, with the interface :func:`_trace` uses."""

    def __init__(self, graph: fx.Graph, model: nn.Module):
        self.graph, self._model = graph, model

    def named_modules(self):
        return self._model.named_modules()


_OPERATORS = {"__add__": operator.add, "__radd__": operator.add, "add": operator.add, "__iadd__": operator.add,
              "__sub__": operator.sub, "__rsub__": operator.sub, "sub": operator.sub, "__mul__": operator.mul,
              "__rmul__": operator.mul, "mul": operator.mul, "__truediv__": operator.truediv, "div": operator.truediv,
              "__matmul__": operator.matmul, "__getitem__": operator.getitem, "__neg__": operator.neg}


def _is_leaf(m: nn.Module) -> bool:
    """Modules recorded as one operation: torch.nn's own (as torch.fx treats them), transformers' Conv1D and the
    *RMSNorm classes."""
    if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    return type(m).__module__.startswith("torch.nn") or _is_conv1d(m) or _is_rmsnorm(m)


def _record(model: nn.Module, args: tuple, kwargs: dict, seed: int) -> _Recorded:
    """The torch operations and leaf-module calls of one forward pass of a float64 training-mode copy, as an
    ``fx.Graph`` (tensors identified by object; parameters used outside their module appear as get_attr)."""
    m64 = exact_copy(model)
    names = {id(m): n for n, m in m64.named_modules()}
    param_names = {id(p): n for n, p in m64.named_parameters()}
    graph = fx.Graph()
    env: dict[int, fx.Node] = {}
    alive: list[Any] = []  # every recorded tensor stays alive, so that no id is reused
    depth = [0]

    def node_of(t: torch.Tensor) -> fx.Node:
        if id(t) not in env:
            if id(t) in param_names:
                env[id(t)] = graph.get_attr(param_names[id(t)])
            else:  # a constant made outside the recording (a buffer, a cached mask)
                env[id(t)] = graph.create_node("get_attr", f"_const_{len(env)}")
            alive.append(t)
        return env[id(t)]

    def arg(x):
        if isinstance(x, torch.Tensor):
            return node_of(x)
        if isinstance(x, (list, tuple)):
            return type(x)(arg(v) for v in x) if not hasattr(x, "_fields") else tuple(arg(v) for v in x)
        if isinstance(x, dict):
            return {k: arg(v) for k, v in x.items() if isinstance(k, str)}
        if x is None or isinstance(x, (bool, int, float, str, slice, torch.dtype, torch.device)) or x is Ellipsis:
            return x
        return None

    def bind(out, node):
        if isinstance(out, torch.Tensor):
            env[id(out)] = node
            alive.append(out)
        elif isinstance(out, (list, tuple)):
            for i, v in enumerate(out):
                if isinstance(v, torch.Tensor):
                    bind(v, graph.call_function(operator.getitem, (node, i)))

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, a=(), kw=None):
            kw = kw or {}
            out = func(*a, **kw)
            if depth[0] == 0 and func is not torch.Tensor.__getattribute__ and \
                    getattr(func, "__name__", "") not in ("__get__", "__set__", "dim", "size", "numel", "__len__"):
                name = getattr(func, "__name__", str(func))
                method = getattr(func, "__objclass__", None) is not None or \
                    (getattr(func, "__qualname__", "").startswith(("Tensor.", "TensorBase.")))
                if method and name in _OPERATORS:
                    node = graph.call_function(_OPERATORS[name], arg(tuple(a)), arg(kw))
                elif method:
                    node = graph.call_method(name.rstrip("_") if name.endswith("_") and not
                                             name.startswith("__") else name, arg(tuple(a)), arg(kw))
                else:
                    node = graph.call_function(func, arg(tuple(a)), arg(kw))
                if method and name.endswith("_") and not name.startswith("__") and a and \
                        isinstance(a[0], torch.Tensor):
                    env[id(a[0])] = node  # in place: the tensor now holds the result
                bind(out, node)
            return out

    hooks = []

    def pre(module, a, kw):
        if depth[0] == 0:
            module._elr_inputs = (a, kw)
        depth[0] += 1

    def post(module, a, kw, out):
        depth[0] -= 1
        if depth[0] == 0:
            a, kw = module._elr_inputs
            del module._elr_inputs
            bind(out, graph.call_module(names[id(module)], arg(tuple(a)), arg(kw)))

    for m in m64.modules():
        if m is not m64 and _is_leaf(m):
            hooks.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            hooks.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        args64, kwargs64 = _cast(args, torch.float64), _cast(kwargs, torch.float64)
        for t in [v for v in list(args64) + list(kwargs64.values()) if isinstance(v, torch.Tensor)]:
            env[id(t)] = graph.placeholder(f"input_{len(env)}")
            alive.append(t)
        torch.manual_seed(seed)
        with torch.no_grad(), _KeepFloat64(), Recorder():
            out = m64(*args64, **kwargs64)
        graph.output(tuple(node_of(t) for t in _leaves(out)))
    finally:
        for h in hooks:
            h.remove()
    return _Recorded(graph, m64)


def invariant_weights(model: nn.Module, *inputs: Any, kwargs: dict | None = None, params: str = "weights",
                      **options: Any) -> list[tuple[str, nn.Parameter]]:
    """The weights of ``model`` that auto-tune, as ``(name, parameter)`` in the model's parameter order.

    These are the weights the audit (:func:`audit` on ``model(*inputs, **kwargs)``, a batch of at least 2) finds
    scale-invariant for any value of the other parameters (:attr:`AuditRow.auto_tunes`; not those invariant only
    while an all-zero bias stays zero): the weights whose effective learning rate the paper's theory describes
    (Eq. 1-2), and the layers a monitor, callback or warm-up should watch. By default the weights of linear and
    convolution layers (transformers' ``Conv1D`` included) and attention's input projections; ``params="all"``
    considers every parameter. ``options`` go to :func:`audit`. An empty list means no weight is followed by a
    normalisation that absorbs its scale.
    """
    rows = audit(model, *inputs, kwargs=kwargs, params=params, **options)
    by_name = dict(model.named_parameters())
    return [(r.name, by_name[r.name]) for r in rows if r.auto_tunes]


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


def reasons_by_kind(rows) -> str:
    """The weights of audit ``rows`` that do not auto-tune, grouped by the kind of reason (:func:`reason_kind`),
    largest group first, each shown by its first weight with the layer names of its reason, for one Markdown
    table cell."""
    groups: dict[str, list] = {}
    for row in rows:
        if not row.auto_tunes:
            groups.setdefault(f"{row.verdict}: {reason_kind(row.reason)}", []).append(row)
    return "<br>".join(
        f"{len(g)}× {g[0].verdict}: {g[0].reason} (`{g[0].name}`" + (f" and {len(g) - 1} more)" if len(g) > 1 else ")")
        for g in sorted(groups.values(), key=len, reverse=True)).replace("|", "/")


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

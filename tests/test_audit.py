"""elr.audit: the Section 3.1 table, real networks, and the command line."""
import collections
import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision

from elr import audit, cli, nets

# What we measure (float64, eps 1e-12). The paper's table is reproduced except where BatchNorm's batch mean
# removes a bias (it does not for LayerNorm), and for max-pooling, which is positively homogeneous of degree 1.
EXPECTED = {
    "linear layer without bias": ("passes", "passes"),
    "linear layer with bias": ("passes", "breaks"),
    "ReLU": ("passes", "passes"),
    "LeakyReLU": ("passes", "passes"),
    "dropout": ("passes", "passes"),
    "GELU": ("breaks", "breaks"),
    "tanh": ("breaks", "breaks"),
    "max-pooling": ("passes", "passes"),
    "residual connection (ResNet v2)": ("breaks", "breaks"),
}


def test_section_3_1_table():
    rows = {r["between W and its normalisation"]: r for r in audit.section_3_1_table()}
    assert set(rows) == set(EXPECTED)
    for label, (bn, ln) in EXPECTED.items():
        assert (rows[label]["batchnorm"], rows[label]["layernorm"]) == (bn, ln), label
        for norm in ("batchnorm", "layernorm"):
            change = rows[label][f"{norm} change"]
            assert change < 1e-9 if rows[label][norm] == "passes" else change > 1e-3
    assert "residual" in rows["residual connection (ResNet v2)"]["batchnorm reason"]
    assert "GELU" in rows["GELU"]["layernorm reason"]
    assert "does not remove the bias" in rows["linear layer with bias"]["layernorm reason"]


@pytest.mark.parametrize("shortcut", [True, False])
def test_every_conv_of_a_resnet_auto_tunes_and_the_classifier_does_not(shortcut):
    torch.manual_seed(0)
    model = nets.resnet20(shortcut=shortcut)
    rows = {r.name: r for r in audit.audit(model, torch.randn(4, 3, 32, 32))}
    convs = [n for n in rows if n.endswith("weight") and not n.startswith("fc")]
    assert len(convs) == 19 and all(rows[n].invariant for n in convs)
    assert all("normalised by" in rows[n].reason for n in convs)
    assert not rows["fc.weight"].invariant and "no normalisation follows" in rows["fc.weight"].reason


@pytest.mark.parametrize("command", [["audit", "resmlp4", "--no-shortcut"], ["measure", "resmlp4", "--no-shortcut"]])
def test_cli_refuses_a_shortcut_flag_an_mlp_would_ignore(command, capsys):
    assert cli.main(command) == 2
    assert "bnrelu4" in capsys.readouterr().err


def test_cli_audit_flags_the_resnet_v2_block(capsys):
    assert cli.main(["audit", "resnet-v2-block"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("w.weight"))
    assert "breaks auto-tuning" in line and "residual" in line


def test_audit_needs_a_batch():
    with pytest.raises(ValueError, match="at least 2 samples"):
        audit.audit(nets.bnrelu(2), torch.randn(1, 64))


def _small_batch():
    torch.manual_seed(0)
    return torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))


def test_scaling_residual_is_linear_in_bn_eps_and_rounding_at_tiny_eps():
    """Chapter 7's account of the residual: ε's part grows like ε; at ε = 1e-30 what is left scales with the
    unit roundoff (float64 against float32)."""
    x, y = _small_batch()
    torch.manual_seed(0)
    model = nets.resnet(8, shortcut=False, in_channels=1)
    worst = {eps: audit.worst_scaling_residuals(audit.scaling_checks(model, x, y, eps=eps)) for eps in (1e-30, 1e-9, 1e-7)}
    single = audit.worst_scaling_residuals(audit.scaling_checks(model, x, y, eps=1e-30, dtype=torch.float32))
    for q in audit.SCALING_QUANTITIES:
        assert 70 < worst[1e-7][q] / worst[1e-9][q] < 130, q  # linear in ε
        assert worst[1e-9][q] > 100 * worst[1e-30][q], q
        assert worst[1e-30][q] / single[q] < 1e-6, q  # float64 rounding, far below float32's


def test_scaling_checks_and_exact_copy_refuse_bad_arguments():
    x, y = _small_batch()
    model = nets.resnet(8, in_channels=1)
    with pytest.raises(ValueError, match="gamma"):
        audit.scaling_checks(model, x, y, gamma=1.0)
    with pytest.raises(ValueError, match="eps"):
        audit.exact_copy(model, eps=-1.0)
    with pytest.raises(ValueError, match="dtype"):
        audit.exact_copy(model, dtype=torch.int64)
    copy = audit.exact_copy(model, eps=1e-20, dtype=torch.float32)
    assert next(copy.parameters()).dtype == torch.float32
    assert all(m.eps == 1e-20 for m in copy.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert next(model.parameters()).dtype == torch.float32 and model.bn1.eps != 1e-20  # the original is untouched


class _Block(torch.nn.Module):
    """x -> Linear -> [between] -> norm -> Linear head."""

    def __init__(self, between=None, norm="batch", bias=False):
        super().__init__()
        self.w = torch.nn.Linear(6, 8, bias=bias)
        self.between = between or torch.nn.Identity()
        self.norm = torch.nn.BatchNorm1d(8, affine=False) if norm == "batch" else torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.norm(self.between(self.w(x))))


def _verdicts(model, *inputs, **kw):
    return {r.name: r for r in audit.audit(model, *inputs, **kw)}


@pytest.mark.parametrize("nonlinearity", [torch.nn.ReLU6(), torch.nn.Hardtanh(), torch.nn.Hardswish()])
def test_saturating_nonlinearities_break_auto_tuning(nonlinearity):
    torch.manual_seed(0)
    x = torch.randn(16, 6)
    row = _verdicts(_Block(nonlinearity), x)["w.weight"]
    assert row.verdict == "breaks auto-tuning", (nonlinearity, row.change)
    # the review's finding: the old factors 0.5 and 3 alone did not see it for ReLU6
    if isinstance(nonlinearity, torch.nn.ReLU6):
        assert _verdicts(_Block(nonlinearity), x, factors=(0.5, 3.0))["w.weight"].invariant
    assert _verdicts(_Block(torch.nn.ReLU()), x)["w.weight"].verdict == "auto-tunes"


class _NaNAtLargeScale(torch.nn.Module):
    """Invariant at factors 3 and 0.5; at 1e3 the output is NaN (log of a negative number times zero)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(6, 4, bias=False)
        self.bn = torch.nn.BatchNorm1d(4, affine=False)

    def forward(self, x):
        return self.bn(self.w(x)) + 0 * torch.log(100 - self.w.weight.norm())


def test_a_nan_output_counts_as_a_change_not_as_no_change():
    torch.manual_seed(0)
    x = torch.randn(16, 6)
    assert _verdicts(_NaNAtLargeScale(), x, factors=(3.0, 0.5))["w.weight"].invariant
    row = _verdicts(_NaNAtLargeScale(), x)["w.weight"]
    assert row.verdict == "breaks auto-tuning" and row.change == float("inf")


def test_a_zero_bias_before_layernorm_is_marked_as_holding_only_while_zero():
    torch.manual_seed(0)
    model = _Block(norm="layer", bias=True)
    torch.nn.init.zeros_(model.w.bias)
    row = _verdicts(model, torch.randn(16, 6))["w.weight"]
    assert row.invariant and row.only_while_zero == ("w.bias",) and not row.auto_tunes
    assert row.verdict == "auto-tunes while zero" and "w.bias" in row.reason
    torch.nn.init.normal_(model.w.bias)
    assert _verdicts(model, torch.randn(16, 6))["w.weight"].verdict == "breaks auto-tuning"
    # before a BatchNorm the bias is removed by the batch mean, zero or not: a plain "auto-tunes"
    bn = _Block(norm="batch", bias=True)
    torch.nn.init.zeros_(bn.w.bias)
    assert _verdicts(bn, torch.randn(16, 6))["w.weight"].verdict == "auto-tunes"


class _Structured(torch.nn.Module):
    """Two inputs (x, mask), a keyword argument, and a structured output."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.w = torch.nn.Linear(6, 8, bias=False)
        self.norm = torch.nn.LayerNorm(8, elementwise_affine=False)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x, mask, scale=1.0):
        h = self.norm(self.w(x)) * mask[:, None] * scale
        logits, aux = self.head(h), self.w(x)  # aux depends on w's scale: w is not invariant overall
        if self.kind == "dict":
            return {"logits": logits, "aux": aux, "ids": mask.long()}
        if self.kind == "namedtuple":
            return collections.namedtuple("Out", "logits aux")(logits, aux)
        if self.kind == "dataclass":
            return _Out(logits, aux)
        return logits, aux


@dataclasses.dataclass
class _Out:
    logits: torch.Tensor
    aux: torch.Tensor


@pytest.mark.parametrize("kind", ["dict", "namedtuple", "dataclass", "tuple"])
def test_structured_outputs_and_several_inputs_are_compared_leaf_by_leaf(kind):
    torch.manual_seed(0)
    x, mask = torch.randn(16, 6), (torch.rand(16) > 0.3).float()
    rows = _verdicts(_Structured(kind), x, mask, kwargs={"scale": 2.0})
    assert rows["w.weight"].verdict == "breaks auto-tuning"  # through the aux leaf
    assert rows["head.weight"].verdict == "breaks auto-tuning"


def test_param_groups_split_by_verdict():
    torch.manual_seed(0)
    model = _Block(norm="layer", bias=True)
    torch.nn.init.zeros_(model.w.bias)
    rows = audit.audit(model, torch.randn(16, 6))
    groups = audit.param_groups(model, rows, invariant={"weight_decay": 5e-4}, other={"weight_decay": 0.0})
    names = {id(p): n for n, p in model.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert "w.weight" in by_decay[0.0]  # auto-tunes only while the bias is zero: not grouped as invariant
    assert sum(len(g["params"]) for g in groups) == len(names)
    plain = _Block(norm="batch")
    rows = audit.audit(plain, torch.randn(16, 6))
    groups = audit.param_groups(plain, rows, invariant={"weight_decay": 5e-4}, other={"weight_decay": 0.0})
    assert [len(g["params"]) for g in groups] == [1, 2] and groups[0]["params"][0] is plain.w.weight
    torch.optim.SGD(groups, lr=0.1)  # a valid optimizer spec
    with pytest.raises(ValueError, match="does not have"):
        audit.param_groups(torch.nn.Linear(2, 2), rows)
    weights_only = audit.audit(plain, torch.randn(16, 6), params="weights")
    assert {r.name for r in weights_only} == {"w.weight", "head.weight"}
    groups = audit.param_groups(plain, weights_only)
    assert [len(g["params"]) for g in groups] == [1, 2]  # head.bias, not audited, is in the other group


def test_audit_refuses_bad_factors_and_no_inputs():
    with pytest.raises(ValueError, match="factors"):
        audit.audit(_Block(), torch.randn(4, 6), factors=(1.0,))
    with pytest.raises(ValueError, match="inputs"):
        audit.audit(_Block())


def test_only_audits_the_named_parameters_and_refuses_unknown_names():
    torch.manual_seed(0)
    x = torch.randn(16, 6)
    rows = audit.audit(_Block(torch.nn.ReLU()), x, only=["w.weight"])
    assert [r.name for r in rows] == ["w.weight"]
    with pytest.raises(ValueError, match="only: no parameters named"):
        audit.audit(_Block(torch.nn.ReLU()), x, only=["nope.weight"])


def test_a_zoo_audit_split_across_processes_gives_the_verdicts_of_one_audit():
    threads = torch.get_num_threads()
    whole = audit.audit_zoo(["resnet18", "mobilenet_v3_small"], workers=1)
    assert torch.get_num_threads() == threads  # the caller's thread count is left alone
    split = audit.audit_zoo(["resnet18", "mobilenet_v3_small"], workers=2)
    torch.manual_seed(0)
    model = audit.zoo_model("resnet18")
    direct = audit.audit(model, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), params="weights")
    assert [(r.name, r.verdict, r.reason) for r in split[0]["rows"]] == [(r.name, r.verdict, r.reason) for r in direct]
    for a, b in zip(whole, split):
        assert a["model"] == b["model"] and [r.name for r in a["rows"]] == [r.name for r in b["rows"]]
        assert [r.verdict for r in a["rows"]] == [r.verdict for r in b["rows"]] and a["others"] == b["others"]


def test_inputs_the_model_cannot_take_get_a_clear_error():
    with pytest.raises(ValueError, match="forward pass failed on the inputs given"):
        audit.audit(_Block(torch.nn.ReLU()), torch.randn(4, 5))  # the block expects 6 features


# ------------------------------------------------------------------ the screen (Eq. 1) against the finite factors


def _same_verdicts(model, *inputs, **kw):
    screen = audit.audit(model, *inputs, **kw)
    factors = audit.audit(model, *inputs, method="factors", **kw)
    assert [(r.name, r.verdict, r.only_while_zero, r.reason) for r in screen] == \
        [(r.name, r.verdict, r.only_while_zero, r.reason) for r in factors]
    assert {r.method for r in factors} <= {"factors", "zero"}
    return screen


def _zero_bias_block():
    torch.manual_seed(0)
    model = _Block(norm="layer", bias=True)
    torch.nn.init.zeros_(model.w.bias)
    return model


@pytest.mark.parametrize("make", [
    lambda: nets.resnet20(shortcut=True), lambda: _Block(torch.nn.ReLU6()), lambda: _Block(torch.nn.GELU()),
    lambda: _Block(norm="layer", bias=True), _zero_bias_block, lambda: _NaNAtLargeScale(),
    lambda: section_3_1("residual connection (ResNet v2)"), lambda: section_3_1("max-pooling")])
def test_the_screen_gives_the_verdicts_of_the_finite_factors(make):
    torch.manual_seed(0)
    model = make()
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    x = torch.randn(16, 3, 32, 32) if convolutional else torch.randn(16, model_width(model))
    _same_verdicts(model, x)


def section_3_1(label):
    torch.manual_seed(0)
    return audit.section_3_1_modules("layer")[label]


def model_width(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).in_features


def test_the_screen_decides_a_resnet_in_a_constant_number_of_passes():
    """One forward and two backward passes decide every weight of a BatchNorm ResNet (the trace proves the convs
    invariant, the screen finds the classifier's change); the finite factors need four passes per invariant weight."""
    torch.manual_seed(0)
    model, x = nets.resnet20(shortcut=True), torch.randn(8, 3, 32, 32)
    passes = []
    model.register_forward_pre_hook(lambda *a: passes.append(1))
    rows = audit.audit(model, x, params="weights")
    screen_passes, passes[:] = len(passes), []
    assert {r.method for r in rows} == {"screen+trace", "screen"}
    assert rows[-1].name == "fc.weight" and rows[-1].method == "screen" and rows[-1].change > 1e-3
    audit.audit(model, x, params="weights", method="factors")
    assert screen_passes <= 3 and len(passes) >= 4 * 19, (screen_passes, len(passes))


def test_a_zero_head_is_named_instead_of_a_bias():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=4)
    rows = _same_verdicts(vit, torch.randn(2, 3, 16, 16), params="weights")
    row = next(r for r in rows if r.name == "conv_proj.weight")
    assert row.verdict == "auto-tunes while zero" and "output is identically zero" in row.reason
    assert "'heads.head'" in row.reason and "only while 'conv_proj.bias'" not in row.reason
    assert all(r.verdict == "untested (zero)" for r in rows if r.name.startswith("heads."))


# ------------------------------------------------------------------ modern blocks


@pytest.mark.parametrize("norm", ["torch", "llama"])
def test_rmsnorm_absorbs_the_scale_like_layernorm(norm):
    if norm == "llama":
        llama = pytest.importorskip("transformers.models.llama.modeling_llama")
        make = lambda: llama.LlamaRMSNorm(16, eps=1e-6)  # computes in float32 inside: the audit keeps float64
    else:
        make = lambda: torch.nn.RMSNorm(16, eps=1e-6)
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    for bias, verdict in ((False, "auto-tunes"), (True, "breaks auto-tuning")):
        model = torch.nn.Sequential(torch.nn.Linear(16, 16, bias=bias), make(), torch.nn.Linear(16, 4))
        row = _same_verdicts(model, x, params="weights")[0]
        assert row.verdict == verdict, (norm, bias, row)
        assert ("normalised by" in row.reason) == (not bias) and "RMSNorm" in row.reason


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config), {"input_ids": torch.randint(0, 64, (2, 8))}


def test_gpt2_conv1d_weights_are_audited_with_reasons():
    model, ids = _gpt2()
    rows = _same_verdicts(model, kwargs=ids, params="weights")
    conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert [r.name for r in rows] == [f"{n}.weight" for n in conv1d] and len(conv1d) == 4
    assert all(r.verdict == "breaks auto-tuning" for r in rows)  # GPT-2 is pre-LN: nothing normalises a weight
    assert not [r.reason for r in rows if "numerical check only" in r.reason]
    assert "bias" in rows[0].reason  # c_attn's bias reaches the attention
    modules = dict(model.named_modules())
    assert audit.output_channel_dim(modules[conv1d[0]]) == 1 and audit.output_channel_dim(torch.nn.Linear(2, 3)) == 0


def test_hf_models_get_traced_reasons_and_qk_norm_auto_tunes():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Qwen3Config(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                      num_attention_heads=2, num_key_value_heads=2, vocab_size=64,
                                      max_position_embeddings=16, head_dim=16)
    model, ids = transformers.Qwen3ForCausalLM(config), {"input_ids": torch.randint(0, 64, (2, 8))}
    rows = {r.name: r for r in audit.audit(model, kwargs=ids, params="weights")}
    assert not [r for r in rows.values() if "could not be traced" in r.reason]
    q = rows["model.layers.0.self_attn.q_proj.weight"]
    assert q.verdict == "auto-tunes" and "q_norm" in q.reason and "Qwen3RMSNorm" in q.reason
    assert "silu" in rows["model.layers.0.mlp.gate_proj.weight"].reason
    assert [n for n, _ in audit.invariant_weights(model, kwargs=ids)] == \
        ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"]


def test_attention_is_linear_in_its_values_but_not_in_queries_and_keys():
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(8, 8, bias=False) for _ in range(3))
            self.norm = torch.nn.LayerNorm(8)

        def forward(self, x):
            out = F.scaled_dot_product_attention(self.q(x), self.k(x), value=self.v(x))
            return self.norm(out)

    torch.manual_seed(0)
    rows = {r.name: r for r in _same_verdicts(Attention(), torch.randn(2, 5, 8), params="weights")}
    assert rows["v.weight"].verdict == "auto-tunes" and "normalised by 'norm' (LayerNorm)" in rows["v.weight"].reason
    for name in ("q.weight", "k.weight"):
        assert rows[name].verdict == "breaks auto-tuning"
        assert "scaled_dot_product_attention is not positively homogeneous" in rows[name].reason


class _SelfAttention(torch.nn.Module):
    """One projection h, then attention in which h plays the parts ``parts`` says, then a normalisation."""

    def __init__(self, parts: str, bias: bool = False, dropout: float = 0.0, norm: str = "layer"):
        super().__init__()
        self.h = torch.nn.Linear(8, 8, bias=bias)
        self.other = torch.nn.Parameter(torch.randn(1, 5, 8))
        self.parts, self.dropout = parts, dropout
        self.norm = torch.nn.LayerNorm(8) if norm == "layer" else torch.nn.BatchNorm1d(5)

    def forward(self, x):
        h = self.h(x)
        q, k, v = (h if p == "h" else self.other.expand_as(h) for p in self.parts)
        return self.norm(F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout))


@pytest.mark.parametrize("parts, bias, dropout, norm", [("hhh", False, 0.0, "layer"), ("ohh", False, 0.0, "layer"),
                                                         ("ooh", True, 0.5, "batch")])
def test_attention_breaks_invariance_when_the_value_is_also_query_or_key_or_dropped(parts, bias, dropout, norm):
    torch.manual_seed(0)
    model = _SelfAttention(parts, bias=bias, dropout=dropout, norm=norm)
    x = torch.randn(4, 5, 8)
    for method in ("screen", "factors"):  # two audited weights at most: the trace decides alone in the screen
        row = audit.audit(model, x, params="weights", method=method, seed=0)[0]
        assert row.name == "h.weight" and row.verdict == "breaks auto-tuning", (method, row)
    assert audit.audit(_SelfAttention("ooh"), x, params="weights")[0].verdict == "auto-tunes"  # values alone


def test_params_weights_includes_multihead_attentions_input_projection():
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
            self.norm = torch.nn.LayerNorm(8)

        def forward(self, x):
            return self.norm(self.mha(x, x, x, need_weights=False)[0])

    torch.manual_seed(0)
    rows = _same_verdicts(Attention(), torch.randn(2, 5, 8), params="weights")
    assert [r.name for r in rows] == ["mha.in_proj_weight", "mha.out_proj.weight"]
    assert rows[0].verdict == "breaks auto-tuning"  # softmax(q kᵀ) is not homogeneous


def test_invariant_weights_are_the_auto_tuning_ones():
    torch.manual_seed(0)
    model = nets.resnet20(shortcut=True)
    found = audit.invariant_weights(model, torch.randn(8, 3, 32, 32))
    params = dict(model.named_parameters())
    assert len(found) == 19 and all(params[n] is p for n, p in found) and "fc.weight" not in dict(found)
    assert audit.invariant_weights(_zero_bias_block(), torch.randn(16, 6)) == []  # only while the bias is zero


def test_audit_refuses_an_unknown_method_or_projections():
    with pytest.raises(ValueError, match="method must be 'screen'"):
        audit.audit(_Block(), torch.randn(4, 6), method="fast")
    with pytest.raises(ValueError, match="projections must be an integer"):
        audit.audit(_Block(), torch.randn(4, 6), projections=0)


def test_reasons_by_kind_groups_the_weights_that_do_not_auto_tune():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4), torch.nn.ReLU(),
                                torch.nn.Linear(4, 2))
    rows = audit.audit(model, torch.randn(8, 4, dtype=torch.float64), params="weights")
    text = audit.reasons_by_kind(rows)
    broken = [r for r in rows if not r.auto_tunes]
    assert broken and "|" not in text
    assert text.count("×") == len({(r.verdict, audit.reason_kind(r.reason)) for r in broken})
    counts = [int(part.split("×")[0]) for part in text.split("<br>")]
    assert sum(counts) == len(broken) and counts == sorted(counts, reverse=True)


# ------------------------------------------------------------------- the factors' partial passes (_Suffix)


class _Trap(torch.nn.Module):
    """A small network with one in-place pattern where a value kept from the full pass is not what a node
    read in it (``kind``), followed by BatchNorm and a head."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.a, self.b, self.c, self.down = (torch.nn.Linear(6, 6) for _ in range(4))
        self.drop = torch.nn.Dropout(0.3)
        self.norm = torch.nn.BatchNorm1d(6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        if self.kind == "added in place":  # add_ reads b's output as it was made, then changes it
            z = self.b(x).add_(self.down(x))
        elif self.kind == "read before and after":  # t is read before and after its in-place change
            s, t = self.c(x), self.a(x)
            r1 = s + t
            t.mul_(2.0)
            z = r1 + s * t
        elif self.kind == "changed behind the graph":  # add_ changes b's output, which c then reads
            out = self.b(x)
            out.add_(self.down(x))
            z = self.c(out)
        else:  # "relu_ of a kept residual", with dropout: the residual is read after the in-place ReLU
            h = self.a(x)
            keep = h
            h = torch.relu_(h)
            z = self.drop(self.b(h)) + keep
        return self.head(self.norm(z))


TRAPS = ["added in place", "read before and after", "changed behind the graph", "relu_ of a kept residual"]


def _runner_case(model, x):
    m64 = audit.exact_copy(model)
    args = audit._cast((x,), torch.float64)
    base = audit._forward(m64, args, {}, 0, grad=False)
    return m64, args, base, audit._Suffix.build(m64, args, {}, 0, base)


@pytest.mark.parametrize("make", [
    lambda: (_Trap("added in place"), torch.randn(8, 6)),
    lambda: (_Trap("read before and after"), torch.randn(8, 6)),
    lambda: (_Trap("changed behind the graph"), torch.randn(8, 6)),
    lambda: (_Trap("relu_ of a kept residual"), torch.randn(8, 6)),
    lambda: (torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32)),
    lambda: (torchvision.models.efficientnet_b0(num_classes=10), torch.randn(2, 3, 32, 32)),
], ids=TRAPS + ["resnet18", "efficientnet_b0 (stochastic depth)"])
def test_partial_passes_equal_whole_passes_bit_for_bit_or_decline(make):
    torch.manual_seed(0)
    model, x = make()
    m64, args, base, runner = _runner_case(model, x)
    assert runner is not None  # every case must use the partial passes, or nothing is tested
    params = list(m64.named_parameters())
    picked = params if len(params) <= 16 else params[::len(params) // 12]  # spread over the depth of the model
    bias = next(n for n, _ in params if n.endswith("bias"))
    used = 0
    for moved in ((), (bias,)):  # the reference pass's parameters, then one bias moved as the audit moves them
        if moved:
            audit._set_moved(m64, set(moved), {n: p.dtype for n, p in params})
        for name, p in picked:
            with torch.no_grad():
                keep = p.detach().clone()
                p.mul_(3.0)
            eager = audit._forward(m64, args, {}, 0, grad=False)
            partial = runner.rerun([*moved, name])
            if partial is not None:
                used += 1
                assert all(torch.equal(a, b) for a, b in zip(partial, eager)), (moved, name)
            with torch.no_grad():
                p.copy_(keep)
        with torch.no_grad():
            for n in moved:
                dict(params)[n].zero_()
    assert used > 0
    again = runner.output()
    assert all(torch.equal(a, b) for a, b in zip(again, base))  # the kept values were never changed


@pytest.mark.parametrize("kind", TRAPS)
def test_the_audit_of_in_place_traps_is_the_same_with_partial_passes(kind):
    torch.manual_seed(0)
    model, x = _Trap(kind), torch.randn(8, 6)
    fast = audit.audit(model, x, fast=True)
    slow = audit.audit(model, x, fast=False)
    assert [(r.name, r.verdict, r.change, r.reason, r.method) for r in fast] == \
        [(r.name, r.verdict, r.change, r.reason, r.method) for r in slow]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "regnet_y_400mf"])
def test_the_audit_with_partial_passes_gives_the_same_rows(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    rows = {fast: [(r.name, r.verdict, r.change, r.reason, r.method, r.only_while_zero)
                   for r in audit.audit(model, x, params="weights", fast=fast)] for fast in (True, False)}
    assert rows[True] == rows[False]


def test_fast_must_be_a_bool():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="fast must be True"):
        audit.audit(model, torch.randn(4, 4), fast="no")


def _only_some_values(h, y):  # changes h in place only when y is large: not at the reference weights
    if bool(y.abs().max() > 50):
        h.add_(1.0)
    return y


torch.fx.wrap("_only_some_values")


class _Declines(torch.nn.Module):
    """Patterns where a partial pass must decline (or the runner not be built), found by an independent review:
    in-place changes of tensors inside a tuple, tied weights, a value read at trace time, a generator of the
    module's own, an in-place change that depends on the values."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.v = torch.nn.Parameter(torch.rand(4) + 0.5)
        self.c = torch.nn.Parameter(torch.zeros(4))
        self.norm = torch.nn.BatchNorm1d(4)
        if kind == "tied":
            self.b.weight = self.a.weight
        if kind == "generator":
            self.gen = torch.Generator().manual_seed(0)

    def forward(self, x):
        if self.kind == "tuple changed in place":
            t = self.a(x).chunk(2, 1)
            t[0].add_(self.b(x)[:, :2])
            return torch.cat(t, 1)
        if self.kind == "foreach on a tuple":
            t = torch.aminmax(self.a(x), dim=1)
            y = (x * self.v).sum(1)
            torch._foreach_add_(t, [y, y])
            return torch.stack((t[0], t[1], y), 1)
        if self.kind == "tied":  # b is not downstream of a: a partial pass from a alone misses it
            return self.b(x) + 2.0 * self.a(x)
        if self.kind == "read at trace time":  # a constant of the graph, stale once a.weight is scaled
            return self.a(x) * self.a._parameters["weight"].detach().sum()
        if self.kind == "generator":
            return self.norm(self.a(x)) + self.c * torch.randn(x.shape, generator=self.gen, dtype=x.dtype)
        h = self.a(x)  # "changed for some values"
        y = _only_some_values(h, self.b(x))
        return h * y, h * 2.0  # h * 2 is not downstream of b: kept, unless the in-place change is noticed


DECLINES = ["tuple changed in place", "foreach on a tuple", "tied", "read at trace time", "generator",
            "changed for some values"]


@pytest.mark.parametrize("kind", DECLINES)
def test_partial_passes_decline_what_they_cannot_vouch_for(kind):
    torch.manual_seed(0)
    model, x = _Declines(kind), torch.randn(8, 4)
    m64, args, base, runner = _runner_case(model, x)
    params = dict(m64.named_parameters())
    for moved in ((), ("c",)):
        if moved:
            audit._set_moved(m64, set(moved), {n: p.dtype for n, p in params.items()})
        for name, p in params.items():
            for g in (1e3, 0.5, 3.0):
                with torch.no_grad():
                    keep = p.detach().clone()
                    p.mul_(g)
                eager = audit._forward(m64, args, {}, 0, grad=False)
                partial = runner.rerun([*moved, name]) if runner is not None else None
                with torch.no_grad():
                    p.copy_(keep)
                if partial is not None:
                    assert all(torch.equal(a, b) for a, b in zip(partial, eager)), (moved, name, g)
        with torch.no_grad():
            params["c"].zero_()
    if runner is not None:
        assert all(torch.equal(a, b) for a, b in zip(runner.output(), base))  # the kept pass is intact
    if kind in ("tuple changed in place", "foreach on a tuple"):
        return  # autograd refuses these in-place changes, so the audit's screen (a backward pass) cannot run
    fast, slow = (audit.audit(model, x, fast=f) for f in (True, False))
    assert [dataclasses.astuple(r) for r in fast] == [dataclasses.astuple(r) for r in slow]


def test_the_audit_leaves_no_trace_constants_on_the_users_model():
    class ReadsItsWeight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4, bias=False)

        def forward(self, x):
            return self.a(x) * next(iter(self.a.parameters())).abs().sum()

    model = ReadsItsWeight()
    before = set(vars(model))
    rows = audit.audit(model, torch.randn(8, 4))
    assert set(vars(model)) == before
    assert rows[0].verdict == "breaks auto-tuning"


def test_an_in_place_write_into_another_branch_is_not_proven_invariant():
    """b writes into a view of a's output; the trace's edges do not show it, so no structural proof may stand."""

    class WritesIntoA(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 2, bias=False)
            self.norm = torch.nn.BatchNorm1d(4, affine=False)

        def forward(self, x):
            t = self.a(x).chunk(2, dim=1)
            t[0].add_(self.b(x))
            return self.norm(torch.cat(t, dim=1))

    torch.manual_seed(0)
    rows = {r.name: r for r in audit.audit(WritesIntoA(), torch.randn(8, 4))}
    assert rows["b.weight"].verdict == "breaks auto-tuning" and rows["b.weight"].change > 0.01


@pytest.mark.parametrize("n, c, size, kernel, stride, padding, dilation", [
    (2, 384, 2, (7, 7), 1, 3, 1), (2, 96, 4, (5, 5), 2, 2, 1), (1, 8, 3, (3, 3), 1, (1, 2), 2),
    (2, 16, 4, (3, 1), (1, 2), (1, 0), 1), (2, 4, 1, (3, 3), 1, 1, 1)])
def test_the_float64_depthwise_convolution_equals_torchs(n, c, size, kernel, stride, padding, dilation):
    """The audit's depthwise convolution (float64, few output positions) is torch's to float64 rounding, values
    and gradients, with and without a bias."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, size, size, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(c, 1, *kernel, dtype=torch.float64, generator=g, requires_grad=True)
    for b in (None, torch.randn(c, dtype=torch.float64, generator=g)):
        ref = F.conv2d(x, w, b, stride, padding, dilation, c)
        out = audit._depthwise_conv2d(x, w, b, stride, padding, dilation, c)
        assert out is not None and out.shape == ref.shape
        assert (out - ref).abs().max() <= 1e-14 * ref.abs().max()
        probe = torch.randn(ref.shape, dtype=torch.float64, generator=g)
        grads, ref_grads = (torch.autograd.grad((o * probe).sum(), (x, w)) for o in (out, ref))
        for a, r in zip(grads, ref_grads):
            assert (a - r).abs().max() <= 1e-14 * r.abs().max()
        with audit._KeepFloat64():  # the audit's passes take this path, also when called by keyword
            assert torch.equal(F.conv2d(x, w, b, stride, padding, dilation, c), out)
            assert torch.equal(F.conv2d(input=x, weight=w, bias=b, stride=stride, padding=padding,
                                        dilation=dilation, groups=c), out)


def test_the_depthwise_path_leaves_the_other_convolutions_to_torch():
    x, w = torch.randn(2, 8, 16, 16, dtype=torch.float64), torch.randn(8, 1, 3, 3, dtype=torch.float64)
    assert audit._depthwise_conv2d(x, w, None, 1, 1, 1, 8) is None  # many output positions: torch's loop is faster
    small = x[:, :, :2, :2]
    assert audit._depthwise_conv2d(small.float(), w.float(), None, 1, 1, 1, 8) is None  # float32: oneDNN's kernel
    assert audit._depthwise_conv2d(small, torch.randn(8, 4, 3, 3, dtype=torch.float64), None, 1, 1, 1, 2) is None
    assert audit._depthwise_conv2d(small, torch.randn(8, 8, 3, 3, dtype=torch.float64), None, 1, 1, 1, 1) is None
    assert audit._depthwise_conv2d(small, w, None, 1, "same", 1, 8) is None


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_small"])
def test_the_audit_gives_the_same_verdicts_without_the_depthwise_path(name, monkeypatch):
    """Depthwise EfficientNet and MobileNet: the same verdicts, reasons and methods with torch's own convolution
    (the measured changes differ in the last bits, as any other order of summation would)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    fast = audit.audit(model, x, params="weights")
    monkeypatch.setattr(audit, "_depthwise_conv2d", lambda *a, **k: None)
    slow = audit.audit(model, x, params="weights")
    assert [(r.name, r.verdict, r.reason, r.method) for r in fast] == [(r.name, r.verdict, r.reason, r.method)
                                                                      for r in slow]
    assert any(r.auto_tunes for r in fast) and not all(r.auto_tunes for r in fast)

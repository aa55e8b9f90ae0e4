"""elr.audit: the Section 3.1 table, real networks, and the command line."""
import pytest
import torch

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
    """Chapter 8's account of the residual: ε's part grows like ε; at ε = 1e-30 what is left scales with the
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

"""elr.tiny_transformers: models built from their libraries' configs, and SGD with the monitor attached."""
import pytest
import torch

from elr import audit, measure
from elr import tiny_transformers as tt
from elr.transformer import sorting_task

pytest.importorskip("transformers")


@pytest.mark.parametrize("bad, match", [(dict(family="bert"), "family must be one of"),
                                        (dict(width=30, heads=4), "multiple of heads"),
                                        (dict(n_layers=0), "n_layers must be an integer >= 1"),
                                        (dict(norm_eps=0.0), "norm_eps"),
                                        (dict(family="vit", image_size=30), "multiple of patch_size")])
def test_bad_values_are_named(bad, match):
    values = dict(family="llama") | bad
    with pytest.raises(ValueError, match=match):
        tt.build(**values)


@pytest.mark.parametrize("family", tt.FAMILIES)
def test_each_family_runs_forward_and_only_weights_before_a_norm_are_invariant(family):
    model = tt.build(family, width=16, heads=2, n_layers=1)
    args, kwargs = tt.example_inputs(family)
    out = model(*args, **kwargs)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    assert torch.isfinite(logits).all()
    found = [n for n, _ in audit.invariant_weights(model, *args, kwargs=kwargs)]
    expected = {"qwen3": ["self_attn.q_proj", "self_attn.k_proj"],
                "olmo2": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj",
                          "mlp.down_proj"]}.get(family, [])
    assert found == [f"model.layers.0.{p}.weight" for p in expected]
    if family == "vit":
        assert model.heads.head.weight.abs().sum() > 0  # torchvision's zero head is drawn at random


def test_sgd_with_the_monitor_refuses_llama_and_keeps_the_identity_on_qwen3_only():
    task = sorting_task(n=256, seq_len=8, vocab=16, seed=0)
    with pytest.raises(ValueError, match="no weight of this model is scale-invariant"):
        tt.train_sequence(tt.build("llama", width=16, heads=2, n_layers=1), task, steps=2, lr=0.1, batch_size=8)
    runs = {}
    for family in ("qwen3", "llama"):
        model = tt.build(family, width=16, heads=2, n_layers=1, norm_eps=1e-30, dtype=torch.float64)
        names = [n for n, _ in model.named_parameters() if n.endswith(("q_proj.weight", "k_proj.weight"))]
        runs[family] = tt.train_sequence(model, task, steps=10, lr=0.1, batch_size=8,
                                         layers=None if family == "qwen3" else names)
        assert runs[family].diverged_at is None and runs[family].layers == [n.removesuffix(".weight") for n in names]
    assert measure.growth_residuals(runs["qwen3"].records, 0.1)[0] < 1e-4  # float32 rounding inside HF's RMSNorm
    assert measure.growth_residuals(runs["llama"].records, 0.1)[0] > 0.1   # not orthogonal: not invariant
    with pytest.raises(ValueError, match="steps must be"):
        tt.train_sequence(tt.build("qwen3"), task, steps=0, lr=0.1)

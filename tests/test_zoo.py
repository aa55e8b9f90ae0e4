"""The audit gives a verdict, never a traceback, on every torchvision classification model at random
initialisation. 80 models: `make test-zoo` runs it in two shards balanced by tests/zoo_seconds.json (`make test`
leaves it out). With the finite factors for every weight it took about two hours on a 2-core CPU; with the screen
(Eq. 1) most models take seconds, the larger ConvNeXts, Swin-V2s and RegNetY-128GF a minute or two (their changes
near the tolerance go to the factors, which recompute only what the scaled weight reaches): 499 s in all."""
import pytest
import torch
import torchvision

from elr import audit

MODELS = torchvision.models.list_models(module=torchvision.models)


def _size(name):
    """The smallest input a model accepts, at least 32: the audit's cost is forward passes in float64."""
    if name.startswith("vit_"):  # built for the size asked: the smallest multiple of the patch >= 32
        patch = int(name.rsplit("_", 1)[1])
        return patch * -(-32 // patch)
    if name.startswith("swin"):  # pads to its windows: 32 works (chapter 8 audits Swin-T at 32)
        return 32
    if name == "inception_v3":  # in train mode its auxiliary classifier needs 299 (283 fails; 75 is eval's minimum)
        return 299
    meta = next(iter(torchvision.models.get_model_weights(name))).meta
    return max(32, *meta.get("min_size", (32, 32)))  # e.g. Inception v3 75, MaxViT 224 (its partitions of 7)


@pytest.mark.zoo
@pytest.mark.parametrize("name", MODELS)
def test_every_torchvision_classifier_gets_a_verdict(name):
    torch.set_num_threads(1)
    size = _size(name)
    kwargs = {"image_size": size} if name.startswith("vit_") else {}
    if name.startswith("maxvit"):
        kwargs = {"input_size": (size, size)}
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    rows = audit.audit(model, torch.randn(2, 3, size, size), params="weights")
    assert rows and all(r.verdict in ("auto-tunes", "breaks auto-tuning", "auto-tunes while zero", "untested (zero)")
                        for r in rows)
    assert not [r.name for r in rows if "could not be followed" in r.reason]
    summary = audit.summarize(rows)
    assert 0 <= summary["fraction"] <= 1

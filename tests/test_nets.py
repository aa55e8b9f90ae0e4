"""elr.nets: parameter counts against published/torchvision numbers, shapes, scale-invariant layers."""
import pytest
import torch

from elr import nets

# With affine BN these are the counts published for the reference CIFAR ResNets (and torchvision's ResNet101).
PUBLISHED = {"resnet20": 269_722, "resnet56": 853_018, "resnet110": 1_727_962}
WITHOUT_AFFINE = {"resnet20": 268_346, "resnet56": 848_954, "resnet110": 1_719_866}


@pytest.mark.parametrize("name", PUBLISHED)
def test_cifar_parameter_counts(name):
    assert nets.count_parameters(nets.build(name, bn_affine=True)) == PUBLISHED[name]
    assert nets.count_parameters(nets.build(name)) == WITHOUT_AFFINE[name]
    assert nets.count_parameters(nets.build(name, shortcut=False)) == WITHOUT_AFFINE[name]  # option A has no weights


def test_resnet101_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    ours = nets.resnet101(bn_affine=True, num_classes=1000)
    assert nets.count_parameters(ours) == nets.count_parameters(torchvision.models.resnet101()) == 44_549_160
    assert nets.count_parameters(nets.resnet101()) == 44_443_816


@pytest.mark.parametrize("depth, layers", [(20, 19), (56, 55), (110, 109)])
def test_scale_invariant_layers_exclude_the_classifier(depth, layers):
    model = nets.resnet(depth, shortcut=False)
    found = nets.scale_invariant_layers(model)
    assert len(found) == layers and all(isinstance(m, torch.nn.Conv2d) for _, m in found)
    assert all(m.bias is None for _, m in found)


def test_forward_shapes_and_inputs():
    assert nets.resnet20()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert nets.resnet20(in_channels=1, num_classes=7)(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    assert nets.bnrelu(5, width=16)(torch.randn(4, 64)).shape == (4, 10)
    assert len(nets.scale_invariant_layers(nets.bnrelu(5))) == 5


def test_resnet101_forward_with_and_without_shortcuts():
    for shortcut in (True, False):
        model = nets.resnet101(shortcut=shortcut, num_classes=5)
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
        assert len(nets.scale_invariant_layers(model)) == (104 if shortcut else 100)


def test_no_shortcut_really_has_no_identity_path():
    torch.manual_seed(0)
    short, noshort = nets.resnet20(), nets.resnet20(shortcut=False)
    noshort.load_state_dict(short.state_dict())
    x = torch.randn(4, 3, 32, 32)
    assert not torch.allclose(short(x), noshort(x))


def test_generic_models_fall_back_to_bias_free_layers():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    assert [n for n, _ in nets.scale_invariant_layers(model)] == ["0"]


def test_bad_names_and_depths():
    with pytest.raises(ValueError, match="6n\\+2"):
        nets.resnet(21)
    with pytest.raises(ValueError, match="unknown model"):
        nets.build("vgg16")

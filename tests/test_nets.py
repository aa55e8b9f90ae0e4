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


def test_head_norm_reads_the_residual_stream_at_unit_scale():
    # the identity paths sum every layer's normalised output, so without the head's BatchNorm the head reads
    # features that grow as sqrt(depth); with it, at unit scale, and the scale-invariant layers are the same
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    plain, normed = nets.resmlp(64, width=32), nets.resmlp(64, width=32, head_norm=True)
    normed.load_state_dict(plain.state_dict(), strict=False)
    features = plain.body(x)
    assert features.pow(2).mean().sqrt() > 4  # about sqrt(64) = 8 at initialisation (7.7 measured)
    assert torch.allclose(normed.head_norm(features).pow(2).mean(), torch.tensor(1.0), atol=1e-3)
    assert torch.allclose(normed(x), normed.head(normed.head_norm(features)))
    assert [n for n, _ in nets.scale_invariant_layers(normed)] == [n for n, _ in nets.scale_invariant_layers(plain)]
    assert isinstance(nets.bnrelu(4, width=8).head_norm, torch.nn.Identity)  # off unless asked


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


@pytest.mark.parametrize("make", [
    lambda: torch.nn.Conv2d(16, 64, 3, bias=False), lambda: torch.nn.Conv2d(64, 128, 3, bias=False),
    lambda: torch.nn.Conv2d(3, 256, 1, bias=False), lambda: torch.nn.Linear(512, 256, bias=False),
    lambda: torch.nn.Linear(100, 400, bias=False),
])
def test_he_initialised_layers_have_the_models_sigma2(make):
    """σ²(0), the squared norm per output unit after He (Kaiming-normal, fan-in, ReLU gain) initialisation.

    E‖w‖² = fan_in · 2/fan_in = 2 for each output unit, so the mean over m units has relative standard
    error √(2/(fan_in·m)) (each squared weight has variance 2·(2/fan_in)²); the test allows 6 of those,
    at most ~8% here, while a σ²(0) of 4 (k0 = 16 instead of the paper's 4) is 100% off.
    """
    from elr import dynamics

    torch.manual_seed(0)
    layer = make()
    torch.nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
    w = layer.weight.detach().double().flatten(1)
    fan_in, m = w.shape[1], w.shape[0]
    sigma2 = float((w ** 2).sum(1).mean())
    tol = 6 * (2 / (fan_in * m)) ** 0.5
    assert abs(sigma2 / dynamics.SIGMA2_HE - 1) < tol, (sigma2, dynamics.SIGMA2_HE, tol)
    assert dynamics.SIGMA2_HE ** 2 == 4  # the paper's k0 = σ²(0)² = 4 (Eq. 12 with σ(0)² = 2)


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet56", "bnrelu6", "resmlp4"])
def test_size_of_counts_layers_and_parameters_without_building(name):
    kwargs = {"width": 32, "in_features": 64} if name.startswith(("bnrelu", "resmlp")) else {}
    model = nets.build(name, **kwargs)
    layers, params = nets.size_of(name, width=32)
    assert layers == len(nets.scale_invariant_layers(model))
    # every parameter but the input layer and the classifier, which depend on the data
    data_dependent = 432 + 650 if name.startswith("resnet") else 64 * 32 + 32 * 10 + 10
    assert params == nets.count_parameters(model) - data_dependent
    with pytest.raises(ValueError, match="6n\\+2"):
        nets.size_of("resnet9")

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from baselines.controlgan import (
    Classifier,
    ConditionalBatchNorm2d,
    ControlGANConfig,
    Discriminator,
    Generator,
    build_networks,
)


def conv_parameters(in_channels: int, out_channels: int, kernel_size: int) -> int:
    return in_channels * out_channels * kernel_size * kernel_size + out_channels


def layer_norm_parameters(channels: int) -> int:
    return 2 * channels


def classifier_block_parameters(in_channels: int, out_channels: int, shortcut: bool) -> int:
    count = (
        layer_norm_parameters(in_channels)
        + conv_parameters(in_channels, out_channels, 3)
        + layer_norm_parameters(out_channels)
        + conv_parameters(out_channels, out_channels, 3)
    )
    if shortcut:
        count += conv_parameters(in_channels, out_channels, 1)
    return count


def expected_classifier_parameters(widths: tuple[int, ...], num_classes: int) -> int:
    # Input block: conv, LN, conv, and a 1x1 shortcut from RGB.
    count = (
        conv_parameters(3, widths[0], 3)
        + layer_norm_parameters(widths[0])
        + conv_parameters(widths[0], widths[0], 3)
        + conv_parameters(3, widths[0], 1)
    )
    in_channels = widths[0]
    for stage, width in enumerate(widths):
        first = 1 if stage == 0 else 0
        for _ in range(first, 3):
            count += classifier_block_parameters(in_channels, width, in_channels != width)
            in_channels = width
        if stage < len(widths) - 1:
            count += classifier_block_parameters(width, width, shortcut=True)
    count += layer_norm_parameters(widths[-1]) + widths[-1] * num_classes + num_classes
    return count


def spectral_norm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if parametrize.is_parametrized(m, "weight")]


def test_generator_parameter_count_paper_widths():
    generator = Generator()
    linear = 128 * 4 * 4 * 256 + 4 * 4 * 256
    cbn = 2 * 10 * 256
    block = 2 * cbn + 2 * conv_parameters(256, 256, 3) + conv_parameters(256, 256, 1)
    output = cbn + conv_parameters(256, 3, 3)
    assert linear + 3 * block + output == 4_308_995
    assert generator.count_parameters() == 4_308_995


def test_discriminator_parameter_count_paper_widths():
    discriminator = Discriminator()
    input_block = (
        conv_parameters(3, 256, 3) + conv_parameters(256, 256, 3) + conv_parameters(3, 256, 1)
    )
    down_block = 2 * conv_parameters(256, 256, 3) + conv_parameters(256, 256, 1)
    plain_block = 2 * conv_parameters(256, 256, 3)
    expected = input_block + down_block + 2 * plain_block + 256 + 1
    assert expected == 4_204_801
    assert discriminator.count_parameters() == 4_204_801


@pytest.mark.parametrize(
    ("dataset", "widths", "num_classes", "total"),
    [
        ("cifar10", (32, 64, 128, 128), 10, 2_373_770),
        ("cifar100", (32, 64, 128, 256), 100, 4_792_804),
    ],
)
def test_classifier_parameter_count_paper_widths(dataset, widths, num_classes, total):
    config = ControlGANConfig.for_dataset(dataset)
    classifier = Classifier(config.num_classes, config.classifier_widths)
    assert config.classifier_widths == widths
    assert expected_classifier_parameters(widths, num_classes) == total
    assert classifier.count_parameters() == total


def test_count_parameters_trainable_only():
    classifier = Classifier(widths=(4, 4), blocks_per_stage=1)
    total = classifier.count_parameters()
    classifier.output_layer.requires_grad_(False)
    assert classifier.count_parameters(trainable_only=True) == total - (4 * 10 + 10)


def test_paper_networks_output_shapes():
    torch.manual_seed(0)
    generator, discriminator, classifier = build_networks()
    z = torch.randn(2, 128)
    y = torch.tensor([0, 9])
    images = generator(z, y)
    assert images.shape == (2, 3, 32, 32)
    assert images.abs().max() <= 1.0
    assert discriminator(images).shape == (2,)
    assert classifier(images).shape == (2, 10)


def test_cifar100_classifier_widths():
    _, _, classifier = build_networks(ControlGANConfig.for_dataset("cifar100"))
    last_stage_out = [block.conv2.out_channels for block in list(classifier.blocks)[-3:]]
    before_last_stage = list(classifier.blocks)[-4].conv2.out_channels
    assert last_stage_out == [256, 256, 256]
    assert before_last_stage == 128
    assert classifier.output_layer.out_features == 100
    assert classifier(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_classifier_downsamples_to_four_pixels():
    classifier = Classifier(widths=(4, 4, 4, 4), blocks_per_stage=1)
    features = classifier.blocks(torch.randn(1, 3, 32, 32))
    assert features.shape == (1, 4, 4, 4)
    assert sum(isinstance(m, nn.GroupNorm) for m in classifier.modules()) == 2 * 7


def test_discriminator_spectral_norm_on_every_layer():
    discriminator = Discriminator(channels=8)
    layers = [m for m in discriminator.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # Input block 3 convs, down block 3, two plain blocks 2 each, output linear 1.
    assert len(layers) == 11
    assert spectral_norm_layers(discriminator) == layers


def test_discriminator_spectral_norm_makes_unit_sigma():
    torch.manual_seed(0)
    discriminator = Discriminator(channels=8)
    layers = spectral_norm_layers(discriminator)
    with torch.no_grad():
        for layer in layers:
            layer.parametrizations.weight.original.mul_(3.0)
    # Each read of a weight in training mode runs one power iteration.
    for layer in layers:
        for _ in range(100):
            _ = layer.weight
    discriminator.eval()
    for layer in layers:
        raw = layer.parametrizations.weight.original.detach().flatten(1)
        normalized = layer.weight.detach().flatten(1)
        assert torch.linalg.matrix_norm(raw, ord=2).item() > 2.0
        assert torch.linalg.matrix_norm(normalized, ord=2).item() == pytest.approx(1.0, abs=1e-3)


def test_generator_spectral_norm_option():
    with_norm = Generator(channels=8, spectral_norm=True)
    without_norm = Generator(channels=8, spectral_norm=False)
    layers = [m for m in with_norm.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # Linear, 3 blocks x 3 convs and the output conv. The cBN embeddings stay unnormalised.
    assert len(layers) == 11
    assert spectral_norm_layers(with_norm) == layers
    assert spectral_norm_layers(without_norm) == []
    assert with_norm.count_parameters() == without_norm.count_parameters()


def test_cbn_starts_as_plain_batch_norm():
    norm = ConditionalBatchNorm2d(4, num_classes=3)
    x = torch.randn(6, 4, 5, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    expected = F.batch_norm(x, None, None, training=True, eps=1e-5)
    assert torch.equal(norm.gain.weight, torch.ones(3, 4))
    assert torch.equal(norm.bias.weight, torch.zeros(3, 4))
    torch.testing.assert_close(norm(x, y), expected)


def test_cbn_applies_gain_and_bias_of_each_label():
    norm = ConditionalBatchNorm2d(4, num_classes=3)
    with torch.no_grad():
        norm.gain.weight[1] = 2.0
        norm.bias.weight[1] = 0.5
    x = torch.randn(2, 4, 5, 5)
    normalized = F.batch_norm(x, None, None, training=True, eps=1e-5)
    out = norm(x, torch.tensor([0, 1]))
    torch.testing.assert_close(out[0], normalized[0])
    torch.testing.assert_close(out[1], 2.0 * normalized[1] + 0.5)


def test_generator_labels_act_through_cbn():
    torch.manual_seed(0)
    generator = Generator(channels=8).eval()
    z = torch.randn(1, 128)
    same_at_init = generator(z, torch.tensor([0])), generator(z, torch.tensor([1]))
    with torch.no_grad():
        generator.output_norm.bias.weight[1] += 1.0
    changed = generator(z, torch.tensor([0])), generator(z, torch.tensor([1]))
    assert torch.equal(*same_at_init)
    assert not torch.allclose(*changed)


def test_discriminator_samples_are_independent():
    torch.manual_seed(0)
    discriminator = Discriminator(channels=8).eval()
    batch = torch.randn(3, 3, 32, 32)
    together = discriminator(batch)
    alone = torch.cat([discriminator(batch[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: Generator(channels=0), "channels"),
        (lambda: Generator(z_dim=-1), "z_dim"),
        (lambda: Discriminator(channels=0), "channels"),
        (lambda: Classifier(widths=()), "widths"),
        (lambda: Classifier(blocks_per_stage=0), "blocks_per_stage"),
    ],
)
def test_networks_reject_bad_sizes(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_config_for_unknown_dataset_raises():
    with pytest.raises(ValueError, match="svhn"):
        ControlGANConfig.for_dataset("svhn")


def test_config_for_dataset_applies_overrides():
    config = ControlGANConfig.for_dataset("cifar100", generator_channels=16)
    assert config.num_classes == 100
    assert config.generator_channels == 16


def test_checkpoint_entry_rebuilds_network():
    torch.manual_seed(0)
    generator = Generator(channels=8).eval()
    generator(torch.randn(2, 128), torch.tensor([0, 1]))
    rebuilt = Generator.from_checkpoint_entry(generator.checkpoint_entry()).eval()
    z = torch.randn(2, 128)
    y = torch.tensor([3, 4])
    assert rebuilt.config == generator.config
    assert torch.equal(rebuilt(z, y), generator(z, y))


def test_checkpoint_entry_missing_key_raises():
    with pytest.raises(ValueError, match="state_dict"):
        Generator.from_checkpoint_entry({"config": {}})

"""Sampling images from generator networks with generate_images."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import Tensor, nn

from score_guidance.metrics import GeneratedImages, generate_images


class RecordingGenerator(nn.Module):
    """Conditional generator that stores its inputs and returns tanh outputs of shape (3, 2, 2)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(z_dim, 12)
        self.noise: list[Tensor] = []
        self.labels: list[Tensor] = []

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        self.noise.append(z)
        if labels is not None:
            self.labels.append(labels)
        return torch.tanh(self.linear(z)).view(-1, 3, 2, 2)


def test_exact_count_and_range():
    generator = RecordingGenerator(z_dim=8)

    batches = list(generate_images(generator, num_images=103, batch_size=10, z_dim=8))

    assert [batch.shape[0] for batch in batches] == [10] * 10 + [3]
    assert all(batch.shape[1:] == (3, 2, 2) for batch in batches)
    images = torch.cat(batches)
    assert images.min() >= 0.0
    assert images.max() <= 1.0
    assert generator.labels == []


def test_labels_uniform_chi_square():
    generator = RecordingGenerator(z_dim=4)

    for _ in generate_images(generator, 10_000, 500, num_classes=10, z_dim=4, seed=1):
        pass
    labels = torch.cat(generator.labels)
    counts = np.bincount(labels.numpy(), minlength=10)
    result = scipy.stats.chisquare(counts)

    assert labels.shape == (10_000,)
    assert labels.min() >= 0
    assert labels.max() <= 9
    assert result.pvalue > 0.001, f"label counts {counts.tolist()} are not uniform"


def test_noise_standard_normal_of_z_dim():
    generator = RecordingGenerator(z_dim=16)

    for _ in generate_images(generator, 2_000, 1_000, z_dim=16, seed=0):
        pass
    noise = torch.cat(generator.noise)

    assert noise.shape == (2_000, 16)
    assert abs(noise.mean().item()) < 0.02
    assert noise.std().item() == pytest.approx(1.0, abs=0.02)


def test_seed_reproducible():
    generator = RecordingGenerator(z_dim=4)
    stream = generate_images(generator, 20, 8, num_classes=3, z_dim=4, seed=5)

    first = torch.cat(list(stream))
    second = torch.cat(list(stream))
    other_seed = torch.cat(list(generate_images(generator, 20, 8, z_dim=4, seed=6)))

    assert torch.equal(first, second)
    assert not torch.equal(first, other_seed)


def test_output_range_mapped_to_unit():
    def constant_generator(z: Tensor) -> Tensor:
        return torch.full((z.shape[0], 3, 2, 2), 2.0)

    (images,) = generate_images(constant_generator, 4, 4, z_dim=2, output_range=(0.0, 4.0))

    assert torch.allclose(images, torch.full_like(images, 0.5))


def test_output_outside_range_raises():
    def wide_generator(z: Tensor) -> Tensor:
        return torch.full((z.shape[0], 3, 2, 2), -3.0)

    with pytest.raises(ValueError, match=r"values in \[-3, -3\], outside output_range=\(-1, 1\)"):
        list(generate_images(wide_generator, 4, 4, z_dim=2))


def test_wrong_batch_shape_raises():
    def flat_generator(z: Tensor) -> Tensor:
        return torch.zeros(z.shape[0], 12)

    with pytest.raises(ValueError, match="expected \\(4, channels, height, width\\)"):
        list(generate_images(flat_generator, 4, 4, z_dim=2))


def test_default_device_follows_parameters():
    def function_generator(z: Tensor) -> Tensor:
        return torch.zeros(z.shape[0], 3, 2, 2)

    module_stream = generate_images(RecordingGenerator(4), 4, 2, z_dim=4)
    function_stream = generate_images(function_generator, 4, 2, z_dim=4)

    assert isinstance(module_stream, GeneratedImages)
    assert module_stream.device == torch.device("cpu")
    assert function_stream.device == torch.device("cpu")
    assert module_stream.num_images == 4


def test_explicit_device_used():
    generator = RecordingGenerator(z_dim=4).to("meta")

    stream = generate_images(generator, 4, 2, z_dim=4)

    assert stream.device == torch.device("meta")
    assert generate_images(generator, 4, 2, device="cpu", z_dim=4).device == torch.device("cpu")


@pytest.mark.parametrize(
    "arguments",
    [
        {"num_images": 0, "batch_size": 2},
        {"num_images": 4, "batch_size": 0},
        {"num_images": 4, "batch_size": 2, "z_dim": 0},
        {"num_images": 4, "batch_size": 2, "num_classes": 0},
        {"num_images": 4, "batch_size": 2, "output_range": (1.0, -1.0)},
    ],
)
def test_invalid_arguments_raise(arguments: dict[str, object]):
    with pytest.raises(ValueError):
        generate_images(RecordingGenerator(4), **arguments)  # type: ignore[arg-type]

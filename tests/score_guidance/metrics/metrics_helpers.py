"""Helpers shared by the metrics tests: a fast stand-in network and synthetic images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[3]
CIFAR10_JPEG = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg"

requires_cifar10_jpeg = pytest.mark.skipif(
    not CIFAR10_JPEG.is_dir(), reason=f"the CIFAR-10 JPEG copy is not at {CIFAR10_JPEG}"
)


class ToyFeatureExtractor:
    """Fast deterministic stand-in for Inception: 4x4 average-pooled pixels and a softmax.

    Features have 48 dimensions, so covariances of more than 48 images are non-singular.
    """

    feature_dim = 48

    def __init__(self, num_classes: int = 10, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(self.feature_dim, num_classes, generator=generator) * 5.0
        self.calls = 0

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self.calls += 1
        features = F.adaptive_avg_pool2d(images.float(), 4).flatten(start_dim=1)
        probabilities = torch.softmax((features - 0.5) @ self.projection, dim=1)
        return features, probabilities


def smooth_images(num_images: int, size: int = 32, seed: int = 0) -> Tensor:
    """Return float images in [0, 1] with some spatial structure, shape (N, 3, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_images, 3, 4, 4, generator=generator)
    fine = torch.rand(num_images, 3, size, size, generator=generator)
    upsampled = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (0.8 * upsampled + 0.2 * fine).clamp(0.0, 1.0)

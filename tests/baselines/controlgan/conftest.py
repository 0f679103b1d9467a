"""Fixtures: tiny ControlGAN networks, a tiny frozen evaluator and deterministic real batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from baselines.controlgan import (
    ControlGANConfig,
    ControlGANTrainer,
    TrainConfig,
    build_networks,
)
from score_guidance import ModuleEvaluator, ScoreGuidanceLoss

TINY_NETWORKS = ControlGANConfig(
    generator_channels=8,
    discriminator_channels=8,
    classifier_widths=(4, 4, 4, 4),
    classifier_blocks_per_stage=1,
)
TINY_BATCH_SIZE = 4


def _real_batches(
    seed: int = 0, batch_size: int = TINY_BATCH_SIZE
) -> Iterator[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    while True:
        images = torch.rand(batch_size, 3, 32, 32, generator=generator) * 2 - 1
        labels = torch.randint(0, 10, (batch_size,), generator=generator)
        yield images, labels


def _build_guidance(weight: float = 0.5) -> ScoreGuidanceLoss:
    # A frozen 5-class classifier of 8x8 inputs replaces MobileNetV2 in tests.
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    evaluator = ModuleEvaluator(module, mean=(0.5,) * 3, std=(0.5,) * 3, image_size=8)
    return ScoreGuidanceLoss(evaluator, weight=weight)


@pytest.fixture
def tiny_networks() -> ControlGANConfig:
    """Network sizes small enough for CPU tests."""
    return TINY_NETWORKS


@pytest.fixture
def real_batches() -> Callable[..., Iterator[tuple[Tensor, Tensor]]]:
    """Return ``real_batches(seed=0, batch_size=4)``, an endless seeded batch iterator.

    Images are uniform in [-1, 1] at 32x32 and labels uniform in [0, 10).
    """
    return _real_batches


@pytest.fixture
def make_guidance() -> Callable[..., ScoreGuidanceLoss]:
    """Return ``make_guidance(weight=0.5)``, a guidance term with a tiny frozen evaluator."""
    return _build_guidance


@pytest.fixture
def make_trainer() -> Callable[..., ControlGANTrainer]:
    """Return a factory of tiny trainers (batch 4, n_dis 2).

    ``network_seed`` seeds the network initialisation. Other keyword arguments override
    TrainConfig fields. With ``score_guidance=True`` the trainer gets the tiny guidance term.
    """

    def factory(network_seed: int = 0, **overrides: Any) -> ControlGANTrainer:
        settings: dict[str, Any] = {"batch_size": TINY_BATCH_SIZE, "n_dis": 2}
        settings.update(overrides)
        config = TrainConfig(**settings)
        torch.manual_seed(network_seed)
        generator, discriminator, classifier = build_networks(TINY_NETWORKS)
        guidance = _build_guidance(config.delta) if config.score_guidance else None
        return ControlGANTrainer(generator, discriminator, classifier, config, guidance)

    return factory

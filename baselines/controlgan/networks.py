"""The generator, discriminator and classifier of ControlGAN for 32x32 images (CIFAR).

Architectures follow Table 1 of Lee and Seok, "Score-Guided Generative Adversarial Networks"
(2020), which ScoreGAN shares with its ControlGAN baseline:

- Generator: Linear(z -> 4x4xC), 3 x ResBlock Up(C) with cBN, cBN, ReLU, Conv3x3(3), tanh.
- Discriminator: ResBlock Down(C) (input block), ResBlock Down(C), 2 x ResBlock(C), ReLU,
  global sum pool, Linear(1). Spectral norm on every layer.
- Classifier: per stage, 3 x ResBlock(width) and ResBlock Down(width) except after the last
  stage, then LN, ReLU, global average pool, Linear(num_classes). Widths (32, 64, 128, 128) for
  CIFAR-10 and (32, 64, 128, 256) for CIFAR-100.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import BaseNetwork
from ._layers import (
    ConditionalBatchNorm2d,
    GeneratorBlock,
    InputBlock,
    ResidualBlock,
    build_conv2d,
    build_linear,
)

__all__ = [
    "DATASET_NUM_CLASSES",
    "Classifier",
    "ControlGANConfig",
    "ControlGANNetworks",
    "Discriminator",
    "Generator",
    "build_networks",
]

# Number of upsampling blocks in the generator: 4x4 -> 32x32.
_GENERATOR_NUM_BLOCKS = 3

DATASET_NUM_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100}

_CLASSIFIER_WIDTHS: dict[str, tuple[int, ...]] = {
    "cifar10": (32, 64, 128, 128),
    # CIFAR-100 widens the last three ResBlocks to 256 filters (Table 4 of the ScoreGAN paper).
    "cifar100": (32, 64, 128, 256),
}


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class Generator(BaseNetwork):
    """Conditional ResNet generator G(z, y) of ControlGAN.

    Args:
        num_classes: Number of labels the cBN layers are conditioned on.
        z_dim: Size of the latent vector z.
        channels: Channels C of the input layer and of every ResBlock (256 in the paper).
        bottom_width: Side of the first feature map. Three upsampling blocks make the output
            ``8 * bottom_width`` pixels wide (32 for the default 4).
        spectral_norm: Spectral-normalise the input linear layer and every conv. The cBN
            embeddings are never normalised, because normalising a gain table of ones would
            rescale every gain to ``1 / sqrt(num_classes * C)``.

    Shapes: z (N, z_dim), y (N,) integer labels. Returns images (N, 3, 8 * bottom_width,
    8 * bottom_width) in [-1, 1].
    """

    def __init__(
        self,
        num_classes: int = 10,
        z_dim: int = 128,
        channels: int = 256,
        bottom_width: int = 4,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("z_dim", z_dim),
            ("channels", channels),
            ("bottom_width", bottom_width),
        ):
            _check_positive_int(name, value)
        self.config = {
            "num_classes": num_classes,
            "z_dim": z_dim,
            "channels": channels,
            "bottom_width": bottom_width,
            "spectral_norm": spectral_norm,
        }
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.channels = channels
        self.bottom_width = bottom_width

        # Build the layers
        self.input_layer = build_linear(
            z_dim, bottom_width * bottom_width * channels, use_spectral_norm=spectral_norm
        )
        self.blocks = nn.ModuleList(
            GeneratorBlock(channels, channels, num_classes, use_spectral_norm=spectral_norm)
            for _ in range(_GENERATOR_NUM_BLOCKS)
        )
        self.output_norm = ConditionalBatchNorm2d(channels, num_classes)
        self.output_conv = build_conv2d(channels, 3, 3, use_spectral_norm=spectral_norm)

    @property
    def image_size(self) -> int:
        """Side of the generated images in pixels."""
        return self.bottom_width * 2**_GENERATOR_NUM_BLOCKS

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.input_layer(z)
        h = h.view(z.shape[0], self.channels, self.bottom_width, self.bottom_width)
        for block in self.blocks:
            h = block(h, y)
        h = F.relu(self.output_norm(h, y))
        return torch.tanh(self.output_conv(h))


class Discriminator(BaseNetwork):
    """Unconditional ResNet discriminator D(x) of ControlGAN, without label input.

    Args:
        channels: Channels C of every ResBlock (256 in the paper).
        spectral_norm: Spectral-normalise every conv and the output linear layer.

    Shapes: x (N, 3, H, W) with H and W divisible by 4. Returns one unbounded logit per image
    with shape (N,). Samples are processed independently (no batch normalisation), which the
    per-sample gradient penalty relies on.
    """

    def __init__(self, channels: int = 256, spectral_norm: bool = True) -> None:
        super().__init__()
        _check_positive_int("channels", channels)
        self.config = {"channels": channels, "spectral_norm": spectral_norm}
        self.channels = channels

        # Build the layers
        self.blocks = nn.Sequential(
            InputBlock(3, channels, downsample=True, use_spectral_norm=spectral_norm),
            ResidualBlock(channels, channels, downsample=True, use_spectral_norm=spectral_norm),
            ResidualBlock(channels, channels, use_spectral_norm=spectral_norm),
            ResidualBlock(channels, channels, use_spectral_norm=spectral_norm),
        )
        self.output_layer = build_linear(channels, 1, use_spectral_norm=spectral_norm)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.blocks(x))
        h = h.sum(dim=(2, 3))
        return self.output_layer(h).squeeze(1)


class Classifier(BaseNetwork):
    """Independent ResNet classifier C(x) of ControlGAN, trained on real images only.

    Args:
        num_classes: Number of output logits.
        widths: Channels of each stage. Every stage but the last ends with a downsampling
            ResBlock, so a 32x32 input reaches the head at ``32 / 2 ** (len(widths) - 1)`` pixels.
        blocks_per_stage: ResBlocks of each stage before its downsampling block.

    The first block reads the image with a plain convolution (see ``InputBlock``). Every other
    block uses layer normalisation, ``nn.GroupNorm(1, C)``, in place of batch normalisation.

    Shapes: x (N, 3, H, W) with H and W divisible by ``2 ** (len(widths) - 1)``. Returns logits
    (N, num_classes).
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128, 128),
        blocks_per_stage: int = 3,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("blocks_per_stage", blocks_per_stage)
        if not widths:
            raise ValueError("widths must name at least one stage, got an empty sequence")
        for width in widths:
            _check_positive_int("every entry of widths", width)
        self.config = {
            "num_classes": num_classes,
            "widths": widths,
            "blocks_per_stage": blocks_per_stage,
        }
        self.num_classes = num_classes

        # Build the layers
        blocks: list[nn.Module] = []
        in_channels = 3
        for stage, width in enumerate(widths):
            for index in range(blocks_per_stage):
                if stage == 0 and index == 0:
                    blocks.append(InputBlock(in_channels, width, downsample=False, layer_norm=True))
                else:
                    blocks.append(ResidualBlock(in_channels, width, layer_norm=True))
                in_channels = width
            if stage < len(widths) - 1:
                blocks.append(ResidualBlock(width, width, downsample=True, layer_norm=True))
        self.blocks = nn.Sequential(*blocks)
        self.output_norm = nn.GroupNorm(1, widths[-1])
        self.output_layer = build_linear(widths[-1], num_classes, use_spectral_norm=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.output_norm(self.blocks(x)))
        h = h.mean(dim=(2, 3))
        return self.output_layer(h)


@dataclass(frozen=True)
class ControlGANConfig:
    """Sizes of the three ControlGAN networks. The defaults are the paper's CIFAR-10 networks.

    Use :meth:`for_dataset` for the CIFAR-100 classifier, and smaller widths for tests.
    """

    num_classes: int = 10
    z_dim: int = 128
    generator_channels: int = 256
    bottom_width: int = 4
    generator_spectral_norm: bool = True
    discriminator_channels: int = 256
    discriminator_spectral_norm: bool = True
    classifier_widths: tuple[int, ...] = _CLASSIFIER_WIDTHS["cifar10"]
    classifier_blocks_per_stage: int = 3

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> ControlGANConfig:
        """Return the paper's networks for ``"cifar10"`` or ``"cifar100"``, with overrides.

        Raises:
            ValueError: ``dataset`` is not one of the supported names.
        """
        if dataset not in DATASET_NUM_CLASSES:
            raise ValueError(
                f"unknown dataset {dataset!r}; expected one of {sorted(DATASET_NUM_CLASSES)}"
            )
        preset = cls(
            num_classes=DATASET_NUM_CLASSES[dataset],
            classifier_widths=_CLASSIFIER_WIDTHS[dataset],
        )
        return dataclasses.replace(preset, **overrides)


class ControlGANNetworks(NamedTuple):
    """The trained networks of ControlGAN."""

    generator: Generator
    discriminator: Discriminator
    classifier: Classifier


def build_networks(
    config: ControlGANConfig | None = None, device: torch.device | str | None = None
) -> ControlGANNetworks:
    """Build the generator, discriminator and classifier described by ``config``.

    The weight initialisation and spectral norm's first power-iteration vectors draw from torch's
    global RNG, so call ``torch.manual_seed`` first for reproducible networks.
    """
    config = config or ControlGANConfig()
    generator = Generator(
        num_classes=config.num_classes,
        z_dim=config.z_dim,
        channels=config.generator_channels,
        bottom_width=config.bottom_width,
        spectral_norm=config.generator_spectral_norm,
    )
    discriminator = Discriminator(
        channels=config.discriminator_channels,
        spectral_norm=config.discriminator_spectral_norm,
    )
    classifier = Classifier(
        num_classes=config.num_classes,
        widths=config.classifier_widths,
        blocks_per_stage=config.classifier_blocks_per_stage,
    )
    return ControlGANNetworks(generator.to(device), discriminator.to(device), classifier.to(device))

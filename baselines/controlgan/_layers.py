"""Layers of the ControlGAN networks: spectral-normalised convolutions, cBN and ResBlocks.

Every ResBlock has two 3x3 convolutions. The generator's and classifier's blocks are
pre-activation blocks (norm, ReLU, conv), the discriminator's have no norm (ReLU, conv). A 1x1
conv shortcut is used where the channel count or the resolution changes, an identity otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = [
    "ConditionalBatchNorm2d",
    "GeneratorBlock",
    "InputBlock",
    "ResidualBlock",
    "build_conv2d",
    "build_linear",
]


def _initialize(layer: nn.Conv2d | nn.Linear, use_spectral_norm: bool) -> nn.Module:
    # Xavier (Glorot) uniform weights and zero biases, TensorFlow's default initialisation.
    # NOTE: the ScoreGAN paper (Lee and Seok, 2020) names no initialisation, so this is a choice.
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    if use_spectral_norm:
        return spectral_norm(layer)
    return layer


def build_conv2d(
    in_channels: int, out_channels: int, kernel_size: int, *, use_spectral_norm: bool
) -> nn.Module:
    """Build a stride-1 conv layer with "same" padding, optionally spectral-normalised."""
    layer = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    return _initialize(layer, use_spectral_norm)


def build_linear(in_features: int, out_features: int, *, use_spectral_norm: bool) -> nn.Module:
    """Build a linear layer, optionally spectral-normalised."""
    return _initialize(nn.Linear(in_features, out_features), use_spectral_norm)


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class ConditionalBatchNorm2d(nn.Module):
    """Conditional batch normalisation (cBN, Dumoulin et al. 2017).

    BatchNorm2d without affine parameters, followed by a per-class gain and bias looked up in two
    ``nn.Embedding`` tables. The gains start at 1 and the biases at 0, so at initialisation every
    class gets plain batch normalisation.

    Shapes: x (N, C, H, W), y (N,) integer labels in [0, num_classes).
    """

    def __init__(
        self, num_features: int, num_classes: int, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__()
        self.batch_norm = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        normalized = self.batch_norm(x)
        gain = self.gain(y)[:, :, None, None]
        bias = self.bias(y)[:, :, None, None]
        return torch.addcmul(bias, gain, normalized)


class GeneratorBlock(nn.Module):
    """Pre-activation ResBlock that doubles the resolution, conditioned on labels through cBN.

    Residual path: cBN, ReLU, nearest upsampling, conv3x3, cBN, ReLU, conv3x3. Shortcut: conv1x1
    and nearest upsampling.
    """

    def __init__(
        self, in_channels: int, out_channels: int, num_classes: int, *, use_spectral_norm: bool
    ) -> None:
        super().__init__()
        self.norm1 = ConditionalBatchNorm2d(in_channels, num_classes)
        self.conv1 = build_conv2d(in_channels, out_channels, 3, use_spectral_norm=use_spectral_norm)
        self.norm2 = ConditionalBatchNorm2d(out_channels, num_classes)
        self.conv2 = build_conv2d(
            out_channels, out_channels, 3, use_spectral_norm=use_spectral_norm
        )
        self.shortcut = build_conv2d(
            in_channels, out_channels, 1, use_spectral_norm=use_spectral_norm
        )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = F.relu(self.norm1(x, y))
        h = self.conv1(_upsample(h))
        h = F.relu(self.norm2(h, y))
        h = self.conv2(h)
        # A 1x1 conv commutes with nearest upsampling, so the shortcut convolves first, at a
        # quarter of the cost.
        return h + _upsample(self.shortcut(x))


class ResidualBlock(nn.Module):
    """Pre-activation ResBlock of the discriminator and the classifier.

    Residual path: [norm], ReLU, conv3x3, [norm], ReLU, conv3x3, [avg-pool 2x2]. The norm is
    layer normalisation over (C, H, W) with a per-channel affine, ``nn.GroupNorm(1, C)``, when
    ``layer_norm`` is true (classifier), and absent otherwise (discriminator). Where the channels
    or the resolution change, the shortcut is [avg-pool 2x2], conv1x1. Both are linear per pixel,
    so pooling before the conv gives the same result as after it, on a quarter of the pixels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        downsample: bool = False,
        layer_norm: bool = False,
        use_spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.downsample = downsample
        self.norm1: nn.Module = nn.GroupNorm(1, in_channels) if layer_norm else nn.Identity()
        self.conv1 = build_conv2d(in_channels, out_channels, 3, use_spectral_norm=use_spectral_norm)
        self.norm2: nn.Module = nn.GroupNorm(1, out_channels) if layer_norm else nn.Identity()
        self.conv2 = build_conv2d(
            out_channels, out_channels, 3, use_spectral_norm=use_spectral_norm
        )
        self.shortcut: nn.Module | None = None
        if downsample or in_channels != out_channels:
            self.shortcut = build_conv2d(
                in_channels, out_channels, 1, use_spectral_norm=use_spectral_norm
            )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            x = F.avg_pool2d(x, 2)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return h + shortcut


class InputBlock(nn.Module):
    """First ResBlock of a network that reads images: no activation before the first conv.

    Residual path: conv3x3, [norm], ReLU, conv3x3, [avg-pool 2x2]. Shortcut: [avg-pool 2x2],
    conv1x1. Applying ReLU to raw pixels would discard the negative half of images in [-1, 1],
    which is why the block starts with a convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        downsample: bool,
        layer_norm: bool = False,
        use_spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.downsample = downsample
        self.conv1 = build_conv2d(in_channels, out_channels, 3, use_spectral_norm=use_spectral_norm)
        self.norm: nn.Module = nn.GroupNorm(1, out_channels) if layer_norm else nn.Identity()
        self.conv2 = build_conv2d(
            out_channels, out_channels, 3, use_spectral_norm=use_spectral_norm
        )
        self.shortcut = build_conv2d(
            in_channels, out_channels, 1, use_spectral_norm=use_spectral_norm
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.norm(self.conv1(x))))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            x = F.avg_pool2d(x, 2)
        return h + self.shortcut(x)

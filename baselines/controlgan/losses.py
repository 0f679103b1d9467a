"""Losses of ControlGAN: hinge loss, gradient penalty and the classifier's cross-entropy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GradientPenaltyType",
    "classification_loss",
    "gradient_penalty",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
]

GradientPenaltyType = Literal["wgan-gp", "zero-centered"]
GRADIENT_PENALTY_TYPES: tuple[str, ...] = get_args(GradientPenaltyType)


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Compute the discriminator's hinge loss (Lim and Ye, 2017).

    ``L_D = mean(relu(1 - D(x_real))) + mean(relu(1 + D(x_fake)))``
    """
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    """Compute the generator's hinge loss, ``-mean(D(x_fake))``."""
    return -fake_logits.mean()


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Compute the mean cross-entropy ``CE(C(x), y)`` of logits (N, K) and labels (N,)."""
    return F.cross_entropy(logits, labels)


def gradient_penalty(
    discriminator: Callable[[Tensor], Tensor],
    real_images: Tensor,
    fake_images: Tensor,
    *,
    gp_type: GradientPenaltyType = "wgan-gp",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Compute a gradient penalty of ``discriminator`` at random real-fake interpolates.

    Each sample i gets its own ``eps_i ~ U(0, 1)`` and
    ``x_hat_i = eps_i * x_real_i + (1 - eps_i) * x_fake_i``. With ``g_i = grad_x D(x_hat_i)``:

    - ``"wgan-gp"`` (Gulrajani et al. 2017): ``mean_i((||g_i||_2 - 1)^2)``
    - ``"zero-centered"`` (Thanh-Tung et al. 2019): ``mean_i(||g_i||_2^2)``

    The norm is taken per sample, over (C, H, W), never across the batch. The per-sample
    gradients come from one backward pass of ``sum_i D(x_hat_i)``, which is exact only because
    the discriminator treats samples independently (it must not use batch normalisation).

    The result keeps its graph (``create_graph=True``), so backpropagating it reaches the
    discriminator's weights, spectral-normalised ones included.

    Args:
        discriminator: Maps images (N, C, H, W) to logits (N,) or (N, 1).
        real_images, fake_images: Batches of the same shape. Both are detached here.
        gp_type: ``"wgan-gp"`` or ``"zero-centered"``.
        generator: RNG for the interpolation weights. None uses torch's global RNG.

    Raises:
        ValueError: ``gp_type`` is unknown, or the batches differ in shape.
    """
    if gp_type not in GRADIENT_PENALTY_TYPES:
        raise ValueError(f"gp_type must be one of {GRADIENT_PENALTY_TYPES}, got {gp_type!r}")
    if real_images.shape != fake_images.shape:
        raise ValueError(
            f"real and fake batches must have the same shape for interpolation, got "
            f"{tuple(real_images.shape)} and {tuple(fake_images.shape)}"
        )

    # Interpolate between real and fake images
    weight_shape = (real_images.shape[0],) + (1,) * (real_images.dim() - 1)
    eps = torch.rand(
        weight_shape, generator=generator, device=real_images.device, dtype=real_images.dtype
    )
    interpolates = torch.lerp(fake_images.detach(), real_images.detach(), eps)
    interpolates.requires_grad_(True)

    # Differentiate D at the interpolates, keeping the graph for the weight update
    logits = discriminator(interpolates)
    (gradients,) = torch.autograd.grad(logits.sum(), interpolates, create_graph=True)
    gradients = gradients.flatten(start_dim=1)
    if gradients.dtype in (torch.float16, torch.bfloat16):
        gradients = gradients.float()

    if gp_type == "wgan-gp":
        return (gradients.norm(p=2, dim=1) - 1.0).square().mean()
    return gradients.square().sum(dim=1).mean()

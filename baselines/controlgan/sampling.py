"""Draw latent vectors and labels, and generate images for evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn

from .networks import Generator

__all__ = ["batchnorm_batch_statistics", "sample_images", "sample_labels", "sample_latents"]


def sample_latents(
    num_samples: int,
    z_dim: int,
    num_classes: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``z ~ N(0, I)`` of shape (N, z_dim) and uniform labels ``y`` of shape (N,).

    ``z`` is drawn before ``y`` from ``generator`` (torch's global RNG when None).
    """
    z = torch.randn(num_samples, z_dim, generator=generator, device=device)
    labels = sample_labels(num_samples, num_classes, device=device, generator=generator)
    return z, labels


def sample_labels(
    num_samples: int,
    num_classes: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``num_samples`` labels uniformly from [0, num_classes) as an int64 tensor."""
    return torch.randint(
        0, num_classes, (num_samples,), generator=generator, device=device, dtype=torch.long
    )


@contextmanager
def batchnorm_batch_statistics(module: nn.Module) -> Iterator[None]:
    """Make the BatchNorm layers of ``module`` normalise with batch statistics, read-only.

    Inside the context, every BatchNorm layer is in training mode, so it normalises each batch
    with that batch's mean and variance, while all other layers keep their mode (spectral norm
    in eval mode skips its power iteration). The running statistics are restored on exit, so
    the context leaves the module as it found it.
    """
    batch_norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_buffers = [
        {name: buffer.clone() for name, buffer in norm.named_buffers(recurse=False)}
        for norm in batch_norms
    ]
    saved_modes = [norm.training for norm in batch_norms]
    for norm in batch_norms:
        norm.train(True)
    try:
        yield
    finally:
        for norm, buffers, mode in zip(batch_norms, saved_buffers, saved_modes, strict=True):
            norm.train(mode)
            with torch.no_grad():
                for name, value in buffers.items():
                    getattr(norm, name).copy_(value)


def sample_images(
    generator_network: Generator,
    labels: Tensor,
    *,
    batch_size: int = 64,
    eval_mode: bool = True,
    rng: torch.Generator | None = None,
) -> Tensor:
    """Generate one image per label without gradients, in batches of ``batch_size``.

    BatchNorm mode: with ``eval_mode=True`` (the default) the generator runs in eval mode, so
    cBN normalises with its running statistics and each image depends only on its own z and y.
    With ``eval_mode=False`` cBN uses the statistics of each generated batch, as in training,
    so results depend on ``batch_size`` (use the training batch size). Either way the
    generator's weights, buffers and train/eval mode are the same afterwards.

    Args:
        generator_network: The generator.
        labels: Integer labels (N,) on the generator's device.
        batch_size: Images per forward pass.
        eval_mode: Use running statistics (True) or batch statistics (False) in cBN.
        rng: RNG for z on the generator's device, or None for torch's global RNG.

    Returns:
        Images (N, 3, H, W) in [-1, 1] on the generator's device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor (N,), got shape {tuple(labels.shape)}")
    device = generator_network.device
    labels = labels.to(device)
    was_training = generator_network.training
    generator_network.eval()
    chunks: list[Tensor] = []
    normalization: AbstractContextManager[None] = (
        nullcontext() if eval_mode else batchnorm_batch_statistics(generator_network)
    )
    try:
        with torch.no_grad(), normalization:
            for label_batch in labels.split(batch_size):
                z = torch.randn(
                    label_batch.shape[0], generator_network.z_dim, generator=rng, device=device
                )
                chunks.append(generator_network(z, label_batch))
    finally:
        generator_network.train(was_training)
    if not chunks:
        size = generator_network.image_size
        return torch.empty(0, 3, size, size, device=device)
    return torch.cat(chunks)

"""Differentiable Inception score of a batch of classifier logits."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["inception_score", "inception_score_splits"]


def _check_logits(logits: Tensor, min_samples: int = 2) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(
            f"logits must have shape (N, num_classes), got shape {tuple(logits.shape)}; "
            "flatten any extra dimensions first"
        )
    if logits.shape[0] < min_samples:
        raise ValueError(
            f"the Inception score needs at least {min_samples} samples, got {logits.shape[0]}: "
            "the score of a single image is always 1, so pass a batch of 2 or more images"
        )
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")


def inception_score(logits: Tensor) -> Tensor:
    """Compute the Inception score of one batch, differentiably.

    IS = exp(mean_i KL(p_i || p_bar)), with p_i = softmax(logits_i) and p_bar = mean_i p_i.
    The computation stays in log space (``log p_bar = logsumexp_i log p_i - log N``), so one-hot
    predictions give a finite score and finite gradients. It always runs in float32 or float64,
    also under ``torch.autocast``.

    Because p_bar couples the samples, the gradient for one sample depends on the whole batch. The
    score lies in [1, min(N, num_classes)].

    Args:
        logits: (N, num_classes) unnormalised class scores, N >= 2.

    Returns:
        A scalar tensor in the dtype of the computation (float32, or float64 for float64 input).

    Raises:
        ValueError: ``logits`` is not 2-D, is not floating point or has fewer than 2 rows.
    """
    _check_logits(logits)
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = torch.log_softmax(logits.to(compute_dtype), dim=1)
        log_p_bar = torch.logsumexp(log_p, dim=0) - math.log(logits.shape[0])
        kl_per_sample = (log_p.exp() * (log_p - log_p_bar)).sum(dim=1)
        return kl_per_sample.mean().exp()


def inception_score_splits(logits: Tensor, splits: int = 10) -> tuple[float, float]:
    """Return the mean and standard deviation of the Inception score over ``splits`` chunks.

    This is the evaluation protocol of the GAN literature: the N samples are cut into ``splits``
    contiguous chunks of N // splits or N // splits + 1 samples, the score is computed per chunk,
    and the mean and population standard deviation (``ddof=0``) over chunks are returned.

    Raises:
        ValueError: ``splits`` is below 1, or a chunk would hold fewer than 2 samples.
    """
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    _check_logits(logits, min_samples=1)
    num_samples = logits.shape[0]
    if num_samples < 2 * splits:
        raise ValueError(
            f"splits={splits} needs at least {2 * splits} samples (2 per split), got "
            f"{num_samples}; lower splits or pass more samples"
        )
    with torch.no_grad():
        scores = torch.stack([inception_score(chunk) for chunk in logits.tensor_split(splits)])
    scores = scores.double()
    return scores.mean().item(), scores.std(unbiased=False).item()

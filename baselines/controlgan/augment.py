"""Batched data augmentation of the classifier's real images, on the images' device."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PaddingMode", "augment_images"]

PaddingMode = Literal["reflect", "zeros"]
PADDING_MODES: tuple[str, ...] = get_args(PaddingMode)


def augment_images(
    images: Tensor,
    *,
    flip: bool = True,
    max_shift_fraction: float = 0.1,
    padding: PaddingMode = "reflect",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Randomly flip and translate each image of a batch independently.

    Each image is mirrored horizontally with probability 1/2, then shifted by an integer number
    of pixels drawn uniformly from [-s, s] on each axis, with ``s = floor(max_shift_fraction *
    side)`` (3 px for 32x32 images and the default 0.1). The uncovered border is filled by
    reflection (``"reflect"``, the default, which adds no artificial edge) or with zeros
    (``"zeros"``, mid-grey for images in [-1, 1]).

    The random draws come from ``generator`` (torch's global RNG when None) in a fixed order, so
    equal RNG states give equal outputs. The generator must be on the images' device.

    Args:
        images: Float batch (N, C, H, W).
        flip: Apply the random horizontal flip.
        max_shift_fraction: Largest shift as a fraction of the side, in [0, 0.5).
        padding: ``"reflect"`` or ``"zeros"``.
        generator: RNG on the images' device, or None.

    Returns:
        A new tensor with the shape, dtype and device of ``images``.

    Raises:
        ValueError: ``images`` is not a 4-D float tensor, an option is out of range, or
            ``generator`` is on another device.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor (N, C, H, W), got dtype {images.dtype} and shape "
            f"{tuple(images.shape)}"
        )
    if not 0.0 <= max_shift_fraction < 0.5:
        raise ValueError(f"max_shift_fraction must lie in [0, 0.5), got {max_shift_fraction}")
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    if generator is not None and generator.device.type != images.device.type:
        raise ValueError(
            f"generator is on {generator.device} but images are on {images.device}; create "
            "the torch.Generator on the images' device"
        )

    num_images, _, height, width = images.shape
    device = images.device
    augmented = images

    # Mirror half of the images
    if flip:
        flip_mask = torch.rand(num_images, generator=generator, device=device) < 0.5
        augmented = torch.where(flip_mask[:, None, None, None], augmented.flip(3), augmented)

    # Translate by cropping a shifted window out of the padded batch
    shift_y = int(max_shift_fraction * height)
    shift_x = int(max_shift_fraction * width)
    if shift_y == 0 and shift_x == 0:
        return augmented.clone() if augmented is images else augmented
    mode = "reflect" if padding == "reflect" else "constant"
    padded = F.pad(augmented, (shift_x, shift_x, shift_y, shift_y), mode=mode)
    offset_y = torch.randint(0, 2 * shift_y + 1, (num_images,), generator=generator, device=device)
    offset_x = torch.randint(0, 2 * shift_x + 1, (num_images,), generator=generator, device=device)
    rows = offset_y[:, None] + torch.arange(height, device=device)
    columns = offset_x[:, None] + torch.arange(width, device=device)
    batch_index = torch.arange(num_images, device=device)[:, None, None]
    # The advanced indices around the channel slice broadcast to (N, H, W) and come first,
    # so the result is (N, H, W, C).
    cropped = padded[batch_index, :, rows[:, :, None], columns[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()

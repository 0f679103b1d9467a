from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.controlgan import augment_images


def distinct_images(num_images: int = 16, side: int = 32) -> Tensor:
    """Images whose pixels all differ, so every shift and flip gives a different image."""
    values = torch.arange(num_images * 3 * side * side, dtype=torch.float32)
    return values.view(num_images, 3, side, side) / values.numel()


def shifted_candidates(image: Tensor, max_shift: int) -> list[Tensor]:
    padded = F.pad(image[None], (max_shift,) * 4)[0]
    side = image.shape[-1]
    return [
        padded[:, dy : dy + side, dx : dx + side]
        for dy in range(2 * max_shift + 1)
        for dx in range(2 * max_shift + 1)
    ]


def test_augment_keeps_shape_dtype_device():
    images = distinct_images()
    augmented = augment_images(images, generator=torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape
    assert augmented.dtype == images.dtype
    assert augmented.device == images.device


def test_augment_same_seed_same_output():
    images = distinct_images()
    first = augment_images(images, generator=torch.Generator().manual_seed(3))
    second = augment_images(images, generator=torch.Generator().manual_seed(3))
    other = augment_images(images, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_augment_global_rng_is_reproducible():
    images = distinct_images()
    torch.manual_seed(5)
    first = augment_images(images)
    torch.manual_seed(5)
    assert torch.equal(first, augment_images(images))


def test_augment_translation_up_to_three_pixels():
    images = distinct_images()
    augmented = augment_images(
        images, flip=False, padding="zeros", generator=torch.Generator().manual_seed(0)
    )
    shifts_found = 0
    for image, result in zip(images, augmented, strict=True):
        matches = [torch.equal(result, c) for c in shifted_candidates(image, max_shift=3)]
        assert sum(matches) == 1
        shifts_found += 0 if torch.equal(result, image) else 1
    assert shifts_found > 0


def test_augment_flip_only_mirrors_some_images():
    images = distinct_images(64)
    augmented = augment_images(
        images, max_shift_fraction=0.0, generator=torch.Generator().manual_seed(0)
    )
    flipped = [torch.equal(a, i.flip(-1)) for a, i in zip(augmented, images, strict=True)]
    unchanged = [torch.equal(a, i) for a, i in zip(augmented, images, strict=True)]
    assert all(f or u for f, u in zip(flipped, unchanged, strict=True))
    assert 16 < sum(flipped) < 48


def test_augment_reflect_padding_adds_no_constant_border():
    images = torch.full((64, 3, 32, 32), 0.5)
    images[:, :, 10:20, 10:20] = 0.9
    reflected = augment_images(
        images, padding="reflect", generator=torch.Generator().manual_seed(0)
    )
    zero_padded = augment_images(
        images, padding="zeros", generator=torch.Generator().manual_seed(0)
    )
    assert reflected.min() == 0.5
    assert zero_padded.min() == 0.0


def test_augment_without_flip_or_shift_returns_a_copy():
    images = distinct_images(2)
    augmented = augment_images(images, flip=False, max_shift_fraction=0.0)
    assert torch.equal(augmented, images)
    assert augmented.data_ptr() != images.data_ptr()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_shift_fraction": 0.5}, "max_shift_fraction"),
        ({"max_shift_fraction": -0.1}, "max_shift_fraction"),
        ({"padding": "circular"}, "padding"),
    ],
)
def test_augment_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        augment_images(distinct_images(2), **kwargs)


def test_augment_rejects_integer_images():
    with pytest.raises(ValueError, match="float"):
        augment_images(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))

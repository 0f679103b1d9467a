"""Conversion of the accepted image sources into a stream of checked float batches in [0, 1]."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pytorch_gan_metrics import ImageDataset
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from torchvision.transforms.functional import to_tensor

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "JPEG", "PNG", "JPG")

ImageSource = Tensor | np.ndarray | Dataset | Iterable[Any] | str | os.PathLike[str]


def module_device(module: object) -> torch.device | None:
    """Return the device of the first parameter or buffer of ``module``, or None if it has none."""
    if not isinstance(module, torch.nn.Module):
        return None
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return None


def check_images(images: Tensor, name: str = "images") -> None:
    """Raise ValueError unless ``images`` is a float tensor (N, 3, H, W) with values in [0, 1]."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (N, 3, H, W), got {tuple(images.shape)}; expand grayscale "
            "images with images.expand(-1, 3, -1, -1) and move channels first"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be floats in [0, 1], got dtype {images.dtype}"
            + (" with values in [0, 255]; divide by 255" if images.dtype == torch.uint8 else "")
        )
    if images.numel() == 0:
        return
    low, high = torch.aminmax(images.detach())
    low_value, high_value = float(low), float(high)
    if not (np.isfinite(low_value) and np.isfinite(high_value)):
        raise ValueError(f"{name} contain NaN or infinite values")
    if low_value < 0.0 or high_value > 1.0:
        hint = "; map [-1, 1] to [0, 1] with (images + 1) / 2" if low_value < 0.0 else ""
        raise ValueError(
            f"{name} must have values in [0, 1], got values in "
            f"[{low_value:.4g}, {high_value:.4g}]{hint}"
        )


def _item_to_tensor(item: Any) -> Tensor:
    """Convert one dataset item, a bare image or an (image, label) pair, to a tensor image."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError(
                "a dataset item is an empty tuple, expected an image or (image, label)"
            )
        item = item[0]
    if isinstance(item, Image.Image):
        return to_tensor(item.convert("RGB"))
    if isinstance(item, np.ndarray):
        return torch.from_numpy(item)
    if isinstance(item, Tensor):
        return item
    raise TypeError(
        f"a dataset item is a {type(item).__name__}, expected a tensor, a PIL image or a "
        "(image, label) pair"
    )


def _collate_images(items: list[Any]) -> Tensor:
    """Stack dataset items, bare images or (image, label) pairs, into one image batch."""
    return torch.stack([_item_to_tensor(item) for item in items])


def image_folder_dataset(folder: str | os.PathLike[str]) -> Dataset:
    """Return pytorch-gan-metrics' recursive ``ImageDataset`` of a folder, in sorted path order.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder contains no .png or .jpg images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    dataset = ImageDataset(str(folder), exts=list(IMAGE_EXTENSIONS))
    # The extension list repeats names that case-insensitive file systems match twice.
    dataset.paths = sorted(set(dataset.paths))
    if not dataset.paths:
        raise ValueError(
            f"no images found in {folder} or its subfolders (searched for the extensions "
            f"{', '.join(sorted({ext.lower() for ext in IMAGE_EXTENSIONS}))})"
        )
    return dataset


def _first_of_batch(batch: Any) -> Tensor:
    """Return the images of a batch that is a tensor or an (images, labels) sequence."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("a batch is an empty sequence, expected images or (images, labels)")
        batch = batch[0]
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if not isinstance(batch, Tensor):
        raise TypeError(
            f"a batch is a {type(batch).__name__}, expected a tensor or an (images, labels) pair"
        )
    return batch


def _tensor_batches(images: Tensor, batch_size: int, count: int) -> list[Tensor]:
    """Return views of the first ``count`` images in slices of ``batch_size``, without copies."""
    return [images[start : min(start + batch_size, count)] for start in range(0, count, batch_size)]


class ImageBatches:
    """Stream of checked image batches from any accepted source, with its size when known.

    ``num_images`` is the number of images the stream yields, or None for an iterable of unknown
    length. ``device`` is the device of the source's images, or None until the first batch.
    """

    def __init__(
        self,
        source: ImageSource,
        batch_size: int,
        *,
        num_images: int | None = None,
        num_workers: int = 0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if num_images is not None and (isinstance(num_images, bool) or num_images < 1):
            raise ValueError(f"num_images must be a positive integer or None, got {num_images!r}")

        self.num_images: int | None = None
        self.device: torch.device | None = None
        self._limit = num_images
        self._batches: Iterable[Any]

        if isinstance(source, (str, os.PathLike)):
            source = image_folder_dataset(source)
        if isinstance(source, np.ndarray):
            source = torch.from_numpy(source)

        if isinstance(source, Tensor):
            check_images(source)
            self.num_images = (
                source.shape[0] if num_images is None else min(source.shape[0], num_images)
            )
            self.device = source.device
            self._batches = _tensor_batches(source, batch_size, self.num_images)
        elif isinstance(source, IterableDataset):
            self.device = torch.device("cpu")
            self._batches = DataLoader(
                source, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate_images
            )
        elif isinstance(source, Dataset):
            size = len(source)  # type: ignore[arg-type]
            if num_images is not None and num_images < size:
                source = Subset(source, range(num_images))
                size = num_images
            self.num_images = size
            self.device = torch.device("cpu")
            self._batches = DataLoader(
                source, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate_images
            )
        elif isinstance(source, Iterable):
            known = getattr(source, "num_images", None)
            if isinstance(known, int):
                self.num_images = known if num_images is None else min(known, num_images)
            known_device = getattr(source, "device", None)
            if isinstance(known_device, torch.device):
                self.device = known_device
            self._batches = source
        elif callable(source):
            raise TypeError(
                "got a callable, not images: to evaluate a generator network, pass "
                "generate_images(generator, num_images, batch_size, ...) instead"
            )
        else:
            raise TypeError(
                f"unsupported image source {type(source).__name__}: pass a tensor, an array, a "
                "dataset, a DataLoader or iterable of batches, or a folder path"
            )

    def peek_device(self) -> torch.device:
        """Return the device of the source, reading the first batch of an iterable if needed."""
        if self.device is not None:
            return self.device
        iterator = iter(self._batches)
        try:
            first = next(iterator)
        except StopIteration:
            self._batches = ()
            self.device = torch.device("cpu")
            return self.device
        self._batches = itertools.chain([first], iterator)
        first_images = _first_of_batch(first)
        self.device = first_images.device
        return self.device

    def __iter__(self) -> Iterator[Tensor]:
        remaining = self._limit
        for index, raw_batch in enumerate(self._batches):
            images = _first_of_batch(raw_batch)
            if remaining is not None:
                images = images[:remaining]
                remaining -= images.shape[0]
            check_images(images, name=f"images of batch {index}")
            if images.shape[0] > 0:
                yield images
            if remaining is not None and remaining <= 0:
                return


def describe_source(source: object) -> str:
    """Return a short description of an image source for logs and JSON results."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Tensor):
        return f"tensor of shape {tuple(source.shape)}"
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        return f"{type(source).__name__} of {len(source)} items"
    return type(source).__name__

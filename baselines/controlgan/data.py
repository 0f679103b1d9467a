"""Training data for ControlGAN: decoded once into memory, then batched on the device.

CIFAR-sized datasets fit in memory as uint8 (50,000 images of 32x32 are 150 MB). Decoding
them once, on DataLoader workers, and drawing every batch by indexing a tensor that lives on
the training device keeps data loading out of the training loop's time, and makes the batch
order a function of one ``torch.Generator`` that checkpoints can save and restore.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

__all__ = [
    "DATASETS",
    "DataUnavailableError",
    "ImageTensorDataset",
    "BatchStream",
    "check_image_dataset",
    "load_image_dataset",
]

logger = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "imagefolder")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataUnavailableError(RuntimeError):
    """The requested dataset cannot be found, read or downloaded.

    Attributes:
        download_failed: True when the data was missing locally and could not be downloaded.
    """

    def __init__(self, message: str, *, download_failed: bool = False) -> None:
        super().__init__(message)
        self.download_failed = download_failed


@dataclass
class ImageTensorDataset:
    """Decoded images as uint8 (N, 3, H, W) with int64 labels and the class names."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])


class _ToUint8:
    """Convert a PIL image to a uint8 (3, H, W) tensor, optionally resized."""

    def __init__(self, image_size: int | None) -> None:
        self.image_size = image_size

    def __call__(self, image: Any) -> Tensor:
        image = image.convert("RGB")
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = torchvision.transforms.functional.resize(
                image, [self.image_size, self.image_size], antialias=True
            )
        return torchvision.transforms.functional.pil_to_tensor(image)


def _open_torchvision_dataset(name: str, data_dir: Path, download: bool) -> Dataset:
    dataset_class = {
        "cifar10": torchvision.datasets.CIFAR10,
        "cifar100": torchvision.datasets.CIFAR100,
    }[name]
    try:
        return dataset_class(str(data_dir), train=True, download=download)
    except (OSError, RuntimeError) as error:
        raise DataUnavailableError(
            f"cannot load {name} from {data_dir} ({error}). Without network, put the "
            f"torchvision {name} archive into --data-dir, or train on a folder of class "
            "subfolders with --dataset imagefolder --data-dir PATH",
            download_failed=download,
        ) from error


def _open_image_folder(data_dir: Path) -> torchvision.datasets.ImageFolder:
    if not data_dir.is_dir():
        raise DataUnavailableError(
            f"data folder {str(data_dir)!r} not found; pass --data-dir with a folder of class "
            "subfolders of images"
        )
    try:
        return torchvision.datasets.ImageFolder(str(data_dir))
    except (FileNotFoundError, OSError) as error:
        raise DataUnavailableError(
            f"no images found in {str(data_dir)!r} ({error}); --dataset imagefolder expects "
            f"one subfolder per class holding image files ({', '.join(_IMAGE_EXTENSIONS)})"
        ) from error


def _reraise_decode_errors(
    batches: Iterable[tuple[Tensor, Tensor]], data_dir: Path
) -> Iterator[tuple[Tensor, Tensor]]:
    try:
        yield from batches
    except OSError as error:  # PIL's UnidentifiedImageError is an OSError.
        raise DataUnavailableError(
            f"cannot decode an image in {str(data_dir)!r}: {error}; remove or replace that file"
        ) from error


def _check_image_size(dataset: Dataset, image_size: int, resize: bool, source: str) -> None:
    first_image = dataset[0][0]
    width, height = first_image.size
    if (width, height) != (image_size, image_size) and not resize:
        raise DataUnavailableError(
            f"images in {source} are {width}x{height} but the networks generate "
            f"{image_size}x{image_size}; pass --image-size {image_size} to resize them"
        )


def _open_and_check(
    name: str, data_dir: Path, image_size: int, resize: bool, download: bool
) -> Any:
    if name == "imagefolder":
        dataset: Any = _open_image_folder(data_dir)
    else:
        dataset = _open_torchvision_dataset(name, data_dir, download)
    if len(dataset) == 0:
        raise DataUnavailableError(f"the dataset in {str(data_dir)!r} has no images")
    if len(dataset.classes) < 2:
        raise DataUnavailableError(
            f"the dataset in {str(data_dir)!r} has {len(dataset.classes)} class; a conditional "
            "GAN needs at least 2 class subfolders"
        )
    _check_image_size(dataset, image_size, resize, str(data_dir))
    return dataset


def check_image_dataset(
    name: str,
    data_dir: str | os.PathLike[str],
    *,
    image_size: int = 32,
    resize: bool = False,
    download: bool = True,
) -> None:
    """Raise the error that :func:`load_image_dataset` would raise, without decoding images.

    Opening a torchvision dataset downloads it when ``download`` is set.

    Raises:
        DataUnavailableError: the data is missing, empty, of another size, or not downloadable.
        ValueError: ``name`` is unknown.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    _open_and_check(name, Path(data_dir).expanduser(), image_size, resize, download)


def load_image_dataset(
    name: str,
    data_dir: str | os.PathLike[str],
    *,
    image_size: int = 32,
    resize: bool = False,
    download: bool = True,
    limit: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    show_progress: bool = True,
) -> ImageTensorDataset:
    """Decode a training set into memory as uint8 tensors.

    Args:
        name: ``"cifar10"`` or ``"cifar100"`` (torchvision, downloaded into ``data_dir`` when
            ``download``), or ``"imagefolder"`` (``data_dir`` holds one subfolder per class).
        image_size: Side of the images the networks use.
        resize: Resize images of another size to ``image_size``. Without it they raise.
        limit: Keep only this many images, a uniformly random subset drawn with ``seed``.
        num_workers: DataLoader workers that decode the images.

    Raises:
        DataUnavailableError: the data is missing, empty, unreadable, of another size, or cannot
            be downloaded.
        ValueError: ``name`` is unknown or ``limit`` is not positive.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    data_dir = Path(data_dir).expanduser()
    dataset = _open_and_check(name, data_dir, image_size, resize, download)
    classes = list(dataset.classes)

    indices = np.arange(len(dataset))
    if limit is not None and limit < len(dataset):
        indices = np.sort(np.random.default_rng(seed).choice(len(dataset), limit, replace=False))
    dataset.transform = _ToUint8(image_size if resize else None)
    subset = torch.utils.data.Subset(dataset, indices.tolist())

    # Decode every image once
    loader = DataLoader(subset, batch_size=256, shuffle=False, num_workers=num_workers)
    images = torch.empty(len(subset), 3, image_size, image_size, dtype=torch.uint8)
    labels = torch.empty(len(subset), dtype=torch.int64)
    position = 0
    batches = tqdm(
        loader, desc=f"Decoding {name}", unit="batch", disable=not show_progress, leave=False
    )
    for batch_images, batch_labels in _reraise_decode_errors(batches, data_dir):
        count = batch_images.shape[0]
        images[position : position + count] = batch_images
        labels[position : position + count] = batch_labels
        position += count
    logger.info(
        "Loaded %d images of %d classes from %s (%s)", len(subset), len(classes), data_dir, name
    )
    return ImageTensorDataset(images, labels, classes)


class BatchStream(Iterator[tuple[Tensor, Tensor]]):
    """Endless stream of shuffled (images in [-1, 1], labels) batches on ``device``.

    Each epoch is a new permutation drawn from the stream's own ``torch.Generator``. Batches
    never straddle two epochs: the last incomplete batch of an epoch is dropped. The stream's
    :meth:`state_dict` (RNG state, current permutation and position) restores the exact order.
    """

    def __init__(
        self,
        dataset: ImageTensorDataset,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        if batch_size > len(dataset):
            raise ValueError(
                f"batch_size {batch_size} is larger than the dataset ({len(dataset)} images); "
                "use a smaller batch size or more images"
            )
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.rng = torch.Generator()
        self.rng.manual_seed(seed)
        self.epoch = 0
        self._order = self._new_order()
        self._position = 0

    def _new_order(self) -> Tensor:
        return torch.randperm(self.images.shape[0], generator=self.rng)

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self._position + self.batch_size > self._order.numel():
            self.epoch += 1
            self._order = self._new_order()
            self._position = 0
        index = self._order[self._position : self._position + self.batch_size].to(self.device)
        self._position += self.batch_size
        images = self.images.index_select(0, index).float().div_(127.5).sub_(1.0)
        return images, self.labels.index_select(0, index)

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.get_state(),
            "epoch": self.epoch,
            "order": self._order.clone(),
            "position": self._position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        order = state["order"]
        if order.numel() != self.images.shape[0]:
            raise ValueError(
                f"the saved data order covers {order.numel()} images but the dataset has "
                f"{self.images.shape[0]}; resume with the same data and --limit-images"
            )
        self.rng.set_state(state["rng"])
        self.epoch = int(state["epoch"])
        self._order = order.clone()
        self._position = int(state["position"])

"""Train a classifier on a folder of labelled images and save it as evaluator weights.

The written file is what ``TimmEvaluator``, ``TorchvisionEvaluator`` and
``build_evaluator(spec, checkpoint_path=FILE)`` load: the state dict under ``"state_dict"`` and
the preprocessing under ``"data_config"``, so that the evaluator normalises and sizes images as
training did. Command line::

    python -m score_guidance.train_evaluator --model timm:mobilenetv2_100 \\
        --data-dir data/cifar10/train --val-dir data/cifar10/test --out runs/guide.pth

Recipe: SGD with Nesterov momentum 0.9 and a peak learning rate of 0.1 for batches of 128,
decayed to zero along a cosine over all steps. Weight decay of 5e-4 applies to weight matrices
and convolution kernels only. Training batches get random crops with zero padding of 1/8 of the
image side and random horizontal flips. Mean and std are those of the backbone's own
configuration (timm's ``pretrained_cfg``, or the transforms of torchvision's default weights),
the same values the evaluator falls back to.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._checkpoint import DAMAGED_FILE_ERRORS, InvalidCheckpointError
from ._evaluators import (
    DEFAULT_EVALUATOR,
    PretrainedWeightsUnavailableError,
    TimmEvaluator,
    TorchvisionEvaluator,
    _create_pretrained_torchvision,
    _find_last_linear,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "EvaluatorTrainingConfig",
    "EvaluatorTrainingResult",
    "OutputWriteError",
    "TrainingDivergedError",
    "UnsupportedPixelRangeError",
    "build_parser",
    "main",
    "train_evaluator",
]

_logger = logging.getLogger(__name__)

_TRAINABLE_SOURCES = ("timm", "torchvision")
# The file extensions that torchvision's ImageFolder accepts, compared in lower case.
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# PIL modes of one-channel images with more than 8 bits per pixel. PIL's convert("RGB") clips
# their values to 255 instead of scaling them (seen with Pillow 13.0), so they are scaled here.
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Crop padding relative to the image side: 4 pixels at 32x32, the usual CIFAR augmentation.
_CROP_PADDING_FRACTION = 4 / 32
_RESUME_FORMAT_VERSION = 1
# The entries that _Trainer.save_resume_checkpoint writes, besides "format_version".
_RESUME_KEYS = (
    "config",
    "classes",
    "train_images",
    "train_fingerprint",
    "epoch",
    "step",
    "epoch_sums",
    "history",
    "model",
    "optimizer",
    "rng",
)
# Example values of the output paths, for error messages.
_EXAMPLE_PATHS = {"out": "runs/guide.pth", "resume_path": "runs/guide.pth.resume.pt"}
# Settings that change the trained weights, so a resumed run must use the saved values.
_RESUME_CONFIG_FIELDS = (
    "model",
    "pretrained",
    "image_size",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "label_smoothing",
    "augment",
    "seed",
)

# Independent random streams derived from the seed, so that changing one use of randomness
# (say, the held-out split) does not shift another (say, the initialisation).
_LIMIT_STREAM = 1
_SPLIT_STREAM = 2
_VAL_LIMIT_STREAM = 3
_INIT_STREAM = 4
_ORDER_STREAM = 5
_AUGMENT_STREAM = 6
_GLOBAL_RNG_STREAM = 7


class TrainingDivergedError(ValueError):
    """The training loss or the weights became NaN or infinite, usually from too high an lr."""


class UnsupportedPixelRangeError(ValueError):
    """An image has floating-point or 32-bit integer pixels whose value range is unknown."""


class OutputWriteError(OSError):
    """The weights file or the resume checkpoint could not be written."""


# Configuration and result


@dataclass(frozen=True, kw_only=True)
class EvaluatorTrainingConfig:
    """Settings of one :func:`train_evaluator` run, checked when the object is created.

    Folder paths are only checked for existence when training starts.

    Attributes:
        data_dir: Training images in the torchvision ``ImageFolder`` layout: one subfolder per
            class, holding image files (searched recursively). Classes are the subfolder names
            in sorted order, as ``ImageFolder`` numbers them. A ``str`` is converted to ``Path``.
            16-bit grayscale images are scaled to 8 bits. Floating-point images, and 32-bit
            integer images with values outside 0 to 65535, are rejected.
        out: The weights file to write, for example ``runs/guide.pth``.
        model: Classifier to train, ``"timm:NAME"`` or ``"torchvision:NAME"``.
        val_dir: Held-out images in the same layout with the same class subfolders, such as a
            test split. When None, ``val_fraction`` of each class of ``data_dir`` is held out.
        val_fraction: Fraction of each class of ``data_dir`` held out for the accuracy, in
            [0, 1), drawn with ``seed``. Ignored when ``val_dir`` is set. With 0 no held-out
            accuracy is measured.
        image_size: Side in pixels that every image is resized to when it is loaded (images of
            another aspect ratio are stretched, as the GAN training data in ``baselines`` is).
            It is also the input size recorded for the evaluator.
        epochs: Passes over the training images.
        batch_size: Images per training step. Each epoch has ``N // batch_size`` steps, so the
            last ``N % batch_size`` images of its random order are skipped. A training set
            smaller than one batch gives one step of all its images.
        lr: Peak SGD learning rate, decayed to zero along a cosine over all steps. 0.1 is a
            common choice for batches of 128 from random initialisation; when fine-tuning
            ``pretrained`` weights, start lower, for example at 0.01.
        momentum: Nesterov momentum of SGD; 0 gives plain SGD.
        weight_decay: L2 penalty on weights with 2 or more dimensions; biases and normalisation
            parameters are not decayed.
        label_smoothing: Label smoothing of the cross-entropy loss, in [0, 1).
        augment: Random crops with zero padding of ``round(image_size / 8)`` pixels and random
            horizontal flips of the training batches. Turn it off for data where a flip changes
            the class, such as digits.
        pretrained: Start from the backbone's pretrained ImageNet weights with a new random
            classifier head, instead of random initialisation. Fetching them needs network or
            a filled cache.
        limit_images: Use only this many images of ``data_dir``, a random subset drawn with
            ``seed`` before the held-out split, for quick runs.
        limit_val_images: Measure the held-out accuracy on at most this many held-out images, a
            random subset drawn with ``seed``.
        seed: Seed of the subsets, the split, the initialisation, the data order, the
            augmentation and dropout. Each epoch's order and augmentation depend only on
            ``seed`` and the epoch number.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or any other
            ``torch.device`` string.
        num_threads: CPU threads of torch during the run (``torch.set_num_threads``); the
            current setting when None.
        resume_path: The resume checkpoint, written after every epoch and when the run is
            stopped by a signal. When None, ``out`` with ``.resume.pt`` appended.
    """

    data_dir: Path
    out: Path
    model: str = DEFAULT_EVALUATOR
    val_dir: Path | None = None
    val_fraction: float = 0.1
    image_size: int = 32
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True
    pretrained: bool = False
    limit_images: int | None = None
    limit_val_images: int | None = None
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    resume_path: Path | None = None

    def __post_init__(self) -> None:
        for name in ("data_dir", "out", "val_dir", "resume_path"):
            value = getattr(self, name)
            if value is None and name in ("data_dir", "out"):
                raise ValueError(f"{name} is required; pass a path")
            if value is not None:
                if not isinstance(value, (str, os.PathLike)):
                    raise ValueError(f"{name} must be a path, got {type(value).__name__} {value!r}")
                object.__setattr__(self, name, Path(value).expanduser())
        for name in ("out", "resume_path"):
            path = getattr(self, name)
            # Path("") is Path("."), so an empty string also ends up here.
            if path is not None and path.name in ("", ".."):
                raise ValueError(
                    f"{name} {str(path)!r} has no file name; pass a file path such as "
                    f"{_EXAMPLE_PATHS[name]}, not an empty path or a folder"
                )
        if self.resume_path is not None and os.path.abspath(self.resume_path) == os.path.abspath(
            self.out
        ):
            raise ValueError(
                f"resume_path {str(self.resume_path)!r} is the out path; pass another file, or "
                "omit it to use the out path with .resume.pt appended"
            )
        _parse_model_spec(self.model)

        _check_int("image_size", self.image_size, 1, "pass the image side in pixels, e.g. 32")
        _check_int("epochs", self.epochs, 1, "train for at least one epoch")
        _check_int(
            "batch_size",
            self.batch_size,
            2,
            "batch normalisation needs at least 2 images per batch",
        )
        _check_int("seed", self.seed, 0, "pass a non-negative integer")
        for name in ("limit_images", "limit_val_images", "num_threads"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, "pass a positive integer, or None")

        _check_float("val_fraction", self.val_fraction, 0.0, 1.0, "e.g. 0.1 holds out 10%")
        _check_float("momentum", self.momentum, 0.0, 1.0, "e.g. 0.9, or 0 for plain SGD")
        _check_float("label_smoothing", self.label_smoothing, 0.0, 1.0, "e.g. 0 or 0.1")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}; e.g. 0.1")
        if not (
            isinstance(self.weight_decay, (int, float))
            and math.isfinite(self.weight_decay)
            and self.weight_decay >= 0
        ):
            raise ValueError(
                f"weight_decay must be a number >= 0, got {self.weight_decay!r}; e.g. 5e-4"
            )

        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string, got {self.device!r}; e.g. 'cpu'")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as error:
                raise ValueError(
                    f"invalid device {self.device!r} ({error}); use 'auto', 'cpu' or 'cuda'"
                ) from error

    @property
    def resume_checkpoint(self) -> Path:
        """The resume checkpoint path: ``resume_path``, or ``out`` with ``.resume.pt`` added."""
        if self.resume_path is not None:
            return self.resume_path
        return self.out.with_name(self.out.name + ".resume.pt")


def _check_int(name: str, value: Any, minimum: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; {hint}")


def _check_float(name: str, value: Any, low: float, high: float, hint: str) -> None:
    """Raise ValueError unless ``low <= value < high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}), got {value!r}; {hint}")


def _parse_model_spec(spec: Any) -> tuple[str, str]:
    """Split ``"SOURCE:NAME"`` and check that the source is trainable and has the model."""
    if not isinstance(spec, str):
        raise ValueError(f"model must be a 'SOURCE:NAME' string, got {type(spec).__name__}")
    source, separator, name = spec.partition(":")
    if not separator or not name or source not in _TRAINABLE_SOURCES:
        raise ValueError(
            f"invalid model {spec!r}: expected 'timm:NAME' or 'torchvision:NAME', "
            f"e.g. {DEFAULT_EVALUATOR!r}"
        )
    if source == "timm":
        import timm

        if not timm.is_model(name):
            raise ValueError(
                f"unknown timm model {name!r} in model {spec!r}; list valid names with "
                "timm.list_models('*mobilenet*') (or any other pattern)"
            )
    else:
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(
                f"unknown torchvision classification model {name!r} in model {spec!r}; list "
                "valid names with torchvision.models.list_models(module=torchvision.models)"
            )
    return source, name


@dataclass(frozen=True)
class EvaluatorTrainingResult:
    """Outcome of :func:`train_evaluator`, finished or stopped by a signal.

    Attributes:
        weights_path: The written weights file, or None when the run was interrupted.
        resume_path: The resume checkpoint, which ``resume=True`` continues from.
        epochs_completed: Epochs trained so far, including those of earlier calls.
        resumed: Whether this call continued from a resume checkpoint.
        interrupted: Whether a signal stopped the run before its last epoch ended.
        train_loss: Mean loss of the last completed epoch, on augmented training batches.
        train_accuracy: Accuracy of the last completed epoch, on augmented training batches in
            training mode, so it lags behind the final weights.
        held_out_accuracy: Accuracy of the final weights on the held-out images, with the
            evaluator's preprocessing; None without held-out images or when interrupted.
        train_images: Number of training images.
        held_out_images: Number of held-out images.
        classes: Class names in label order.
        data_config: The preprocessing stored in the weights file.
        history: Per completed epoch: ``epoch``, ``train_loss``, ``train_accuracy`` and
            ``held_out_accuracy`` (None without held-out images).
        model: The trained network in eval mode, on the training device.
    """

    weights_path: Path | None
    resume_path: Path
    epochs_completed: int
    resumed: bool
    interrupted: bool
    train_loss: float | None
    train_accuracy: float | None
    held_out_accuracy: float | None
    train_images: int
    held_out_images: int
    classes: list[str]
    data_config: dict[str, Any]
    history: list[dict[str, Any]] = field(repr=False)
    model: nn.Module = field(repr=False)


# Read the image folders


@dataclass(frozen=True)
class _FolderListing:
    """Image files of a class-subfolder tree, in the order torchvision's ImageFolder uses."""

    root: Path
    classes: list[str]
    paths: list[str]
    labels: Tensor

    def select(self, indices: Tensor) -> _FolderListing:
        return _FolderListing(
            self.root, self.classes, [self.paths[i] for i in indices.tolist()], self.labels[indices]
        )


def _list_image_folder(folder: Path, option: str) -> _FolderListing:
    """List the images of ``folder``, naming the setting ``option`` in error messages.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is a file.
        ValueError: no class subfolders, a class subfolder without images, or one class only.
    """
    layout = f"expected one subfolder per class holding images, as in {folder}/CLASS_NAME/1.png"
    if not folder.exists():
        raise FileNotFoundError(f"{option} {str(folder)!r} not found; {layout}")
    if not folder.is_dir():
        raise NotADirectoryError(f"{option} {str(folder)!r} is a file, not a folder; {layout}")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise ValueError(f"{option} {str(folder)!r} has no class subfolders; {layout}")

    paths: list[str] = []
    labels: list[int] = []
    empty_classes: list[str] = []
    for label, class_name in enumerate(classes):
        count_before = len(paths)
        for root, _, file_names in sorted(os.walk(folder / class_name, followlinks=True)):
            for file_name in sorted(file_names):
                if file_name.lower().endswith(_IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, file_name))
                    labels.append(label)
        if len(paths) == count_before:
            empty_classes.append(class_name)

    extensions = ", ".join(_IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(
            f"{option} {str(folder)!r} has no images in its class subfolders {classes}; "
            f"{layout}, with the extensions {extensions}"
        )
    if empty_classes:
        raise ValueError(
            f"class subfolders without images in {option} {str(folder)!r}: {empty_classes}; "
            f"add images ({extensions}) to them or remove them"
        )
    if len(classes) < 2:
        raise ValueError(
            f"{option} {str(folder)!r} has only the class {classes[0]!r}; a classifier needs "
            "at least 2 class subfolders"
        )
    return _FolderListing(folder, classes, paths, torch.tensor(labels, dtype=torch.int64))


def _random_subset(count: int, limit: int | None, seed: int, stream: int) -> Tensor:
    """Return sorted indices of a random subset of ``limit`` of ``count`` items, or all."""
    if limit is None or limit >= count:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(_derive_seed(seed, stream))
    return torch.randperm(count, generator=generator)[:limit].sort().values


def _split_held_out(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Hold out ``round(fraction * n)`` random images of each class of n images.

    Every class keeps at least one training image. Returns sorted (train, held-out) indices.
    """
    generator = torch.Generator().manual_seed(_derive_seed(seed, _SPLIT_STREAM))
    train_parts: list[Tensor] = []
    held_out_parts: list[Tensor] = []
    for label in labels.unique().tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        held_out_count = min(round(fraction * members.numel()), members.numel() - 1)
        held_out_parts.append(members[:held_out_count])
        train_parts.append(members[held_out_count:])
    return torch.cat(train_parts).sort().values, torch.cat(held_out_parts).sort().values


def _decode_image(path: str, image_size: int) -> np.ndarray:
    """Decode one image file to uint8 (image_size, image_size, 3), resized with antialiasing.

    16-bit integer images are scaled to 8 bits. Raises ValueError, naming ``path``, for a
    damaged file, a decompression bomb or pixel values of unknown range.
    """
    import torchvision.transforms.functional as TF
    from PIL import Image

    high_bit_depth: np.ndarray | None = None
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in _HIGH_BIT_DEPTH_MODES:
                high_bit_depth = np.asarray(image)
            else:
                rgb = image.convert("RGB")
    # PIL raises UnidentifiedImageError (an OSError), OSError or ValueError for damaged files,
    # and DecompressionBombError for images of more than twice Image.MAX_IMAGE_PIXELS pixels.
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode image {path!r} ({error}); remove or replace it") from error
    if high_bit_depth is not None:
        rgb = _scale_to_8_bits(high_bit_depth, mode, path)
    if rgb.size != (image_size, image_size):
        rgb = TF.resize(
            rgb,
            [image_size, image_size],
            interpolation=TF.InterpolationMode.BILINEAR,
            antialias=True,
        )
    return np.asarray(rgb)


def _scale_to_8_bits(pixels: np.ndarray, mode: str, path: str) -> PILImage:
    """Map a one-channel image of PIL mode "I;16*", "I" or "F" to an 8-bit RGB PIL image.

    Values in [0, 65535] become round(value / 257), so that 65535 maps to 255.

    NOTE: a mode "I" image that stores 8-bit values in 32 bits is also divided by 257 and
    comes out nearly black, because the file does not say which range its values use.

    Raises:
        UnsupportedPixelRangeError: floating-point pixels, or 32-bit integers outside
            [0, 65535], whose full range cannot be known from the file.
    """
    from PIL import Image

    convert = "convert the images to 8-bit or 16-bit integer pixels, for example PNG"
    if mode == "F":
        raise UnsupportedPixelRangeError(
            f"image {path!r} has 32-bit floating-point pixels (PIL mode 'F'), whose value "
            f"range is unknown; {convert}"
        )
    low, high = int(pixels.min()), int(pixels.max())
    if low < 0 or high > 65535:
        raise UnsupportedPixelRangeError(
            f"image {path!r} has 32-bit integer pixels (PIL mode {mode!r}) from {low} to "
            f"{high}, outside the 16-bit range 0 to 65535, so their full range is unknown; "
            f"{convert}"
        )
    # Dividing by 257, an odd number, never ends in exactly .5, so rounding has no ties.
    gray = np.rint(pixels.astype(np.float64) / 257.0).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _decode_images(listing: _FolderListing, image_size: int, role: str, progress: bool) -> Tensor:
    """Decode every listed image into one uint8 tensor (N, 3, image_size, image_size)."""
    # Filled in channel-first order, so that no second copy of all images is needed.
    pixels = np.empty((len(listing.paths), 3, image_size, image_size), dtype=np.uint8)
    started = time.perf_counter()
    paths = tqdm(
        listing.paths,
        desc=f"Loading {role} images",
        unit="image",
        disable=not progress,
        leave=False,
    )
    for index, path in enumerate(paths):
        pixels[index] = _decode_image(path, image_size).transpose(2, 0, 1)
    _logger.info(
        "Loaded %d %s images of %d classes from %s at %dx%d pixels in %.1f s",
        len(listing.paths),
        role,
        len(listing.classes),
        listing.root,
        image_size,
        image_size,
        time.perf_counter() - started,
    )
    return torch.from_numpy(pixels)


def _fingerprint(listing: _FolderListing) -> str:
    """Hash the relative paths and labels, so a resumed run can verify its training images."""
    digest = hashlib.sha256()
    for path, label in zip(listing.paths, listing.labels.tolist(), strict=True):
        digest.update(f"{label}\t{os.path.relpath(path, listing.root)}\n".encode())
    return digest.hexdigest()


# Build the network


def _build_network(
    config: EvaluatorTrainingConfig, num_classes: int
) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """Build the trainable classifier through the evaluator class that will load its weights.

    Building it as ``build_evaluator`` does guarantees the same module structure, and therefore
    the same state-dict keys, and gives the mean and std the evaluator resolves for it.

    Returns:
        The network in training mode with gradients enabled, its mean and its std.

    Raises:
        PretrainedWeightsUnavailableError: ``config.pretrained`` and the weights cannot be fetched.
    """
    source, name = _parse_model_spec(config.model)
    torch.manual_seed(_derive_seed(config.seed, _INIT_STREAM))
    evaluator: TimmEvaluator | TorchvisionEvaluator
    if source == "timm":
        evaluator = TimmEvaluator(
            name,
            pretrained=config.pretrained,
            num_classes=num_classes,
            image_size=config.image_size,
        )
    else:
        try:
            evaluator = TorchvisionEvaluator(
                name, pretrained=False, num_classes=num_classes, image_size=config.image_size
            )
        except ValueError as error:
            _reject_model_without_linear_head(config.model, name, num_classes, error)
            raise
        if config.pretrained:
            _load_pretrained_torchvision(evaluator.backbone, name)
    network = evaluator.backbone
    network.requires_grad_(True)
    network.train()
    return network, evaluator.mean, evaluator.std


def _reject_model_without_linear_head(
    spec: str, name: str, num_classes: int, error: ValueError
) -> None:
    """Raise ValueError, from ``error``, if the torchvision model has no ``nn.Linear`` layer.

    The evaluators take their features from the input of the final ``nn.Linear``, so a model
    whose classifier is a convolution (as in SqueezeNet) cannot serve as one.
    """
    import torchvision

    # Built again only to inspect it, so it must not advance the seeded global RNG.
    with torch.random.fork_rng(devices=[]):
        network = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if _find_last_linear(network) is None:
        raise ValueError(
            f"model {spec!r} has no final nn.Linear layer, so it cannot serve as an "
            "evaluator; choose another model, e.g. torchvision:mobilenet_v3_small"
        ) from error


def _load_pretrained_torchvision(network: nn.Module, model_name: str) -> None:
    """Copy the default pretrained weights into ``network``, except the entries of other shape.

    torchvision builds pretrained models only with their original number of classes, so the
    classifier head, whose shape depends on it, keeps its random initialisation.
    """
    import torchvision

    weights = torchvision.models.get_model_weights(model_name).DEFAULT  # type: ignore[attr-defined]
    pretrained_state = _create_pretrained_torchvision(model_name, weights).state_dict()
    own_state = network.state_dict()
    matching = {
        key: value
        for key, value in pretrained_state.items()
        if key in own_state and own_state[key].shape == value.shape
    }
    network.load_state_dict(matching, strict=False)
    kept_random = sorted(set(own_state) - set(matching))
    _logger.info(
        "Started from the torchvision weights %s; entries with random initialisation: %s",
        weights,
        ", ".join(kept_random) or "none",
    )


def _check_network_runs(network: nn.Module, config: EvaluatorTrainingConfig, classes: int) -> None:
    """Raise ValueError when the network fails on, or returns no logits for, a small batch."""
    network.eval()
    device = next(network.parameters()).device
    try:
        probe = torch.zeros(2, 3, config.image_size, config.image_size, device=device)
        with torch.no_grad():
            logits = network(probe)
    # Layers raise RuntimeError for too small inputs, and timm's ViTs assert their input size.
    # The allocators raise RuntimeError (torch.OutOfMemoryError on CUDA) for too large ones.
    except (RuntimeError, AssertionError) as error:
        raise ValueError(
            f"model {config.model!r} cannot classify {config.image_size}x{config.image_size} "
            f"images ({error}); use another image_size or another model"
        ) from error
    finally:
        network.train()
    if not isinstance(logits, Tensor) or tuple(logits.shape) != (2, classes):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"model {config.model!r} returned {shape} for 2 images instead of logits of shape "
            f"(2, {classes}); train a plain classifier"
        )


# Randomness


def _derive_seed(seed: int, *stream: int) -> int:
    """Return a 63-bit seed for the random stream ``stream`` of the run seeded with ``seed``."""
    words = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _global_rng_state(device: torch.device) -> dict[str, Tensor | None]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_global_rng_state(state: dict[str, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])  # type: ignore[arg-type]
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)  # type: ignore[arg-type]


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """Record SIGINT and SIGTERM in the yielded list instead of stopping at once.

    A second signal of the same kind stops the process as usual. Outside the main thread the
    handlers cannot be installed, and signals keep their previous handlers.
    """
    received: list[int] = []
    previous: dict[int, Any] = {}

    def record(signum: int, frame: Any) -> None:
        received.append(signum)
        signal.signal(signum, previous[signum])
        _logger.warning(
            "Received %s: saving the resume checkpoint after this step (send it again to stop "
            "at once)",
            signal.Signals(signum).name,
        )

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, record)
        except ValueError:  # Not the main thread.
            pass
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# Save files


def _temporary_path(path: Path) -> Path:
    """Return a new name for the temporary file of a save to ``path``: PATH.XXXXXXXX.tmp."""
    return path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")


def _is_temporary_file_of(name: str, path: Path) -> bool:
    """Return True if the file name ``name`` has the form of a temporary file of ``path``.

    It matches the names of :func:`_temporary_path` and those of ``tempfile.mkstemp`` that
    earlier versions used: 8 characters of [a-z0-9_] between ``path.name + "."`` and ".tmp".
    """
    return re.fullmatch(re.escape(path.name) + r"\.[a-z0-9_]{8}\.tmp", name) is not None


def _remove_interrupted_saves(path: Path) -> None:
    """Delete the temporary files that a save to ``path`` left when its process was killed."""
    if not path.parent.is_dir():
        return
    with os.scandir(path.parent) as entries:
        leftovers = [
            entry.path
            for entry in entries
            if _is_temporary_file_of(entry.name, path) and entry.is_file(follow_symlinks=False)
        ]
    for leftover in leftovers:
        try:
            os.unlink(leftover)
        except OSError as error:
            _logger.warning(
                "Failed to remove %s, left behind by an interrupted save: %s", leftover, error
            )
            continue
        _logger.info("Removed %s, left behind by an interrupted save of %s", leftover, path)


def _save_atomically(contents: dict[str, Any], path: Path, option: str) -> None:
    """Write ``contents`` with ``torch.save`` to a temporary file next to ``path``, then rename.

    An interrupted write therefore never leaves a truncated file at ``path``. The file gets the
    permissions of a file that ``open()`` creates: 0o666 minus the process umask.

    Raises:
        OutputWriteError: the folder cannot be created or the file cannot be written, naming
            ``option``, the setting that chose ``path``.
    """
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        flags |= getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
        while temporary is None:
            candidate = _temporary_path(path)
            try:
                # The kernel applies the umask to the mode 0o666, as open() does.
                handle = os.open(candidate, flags, 0o666)
            except FileExistsError:
                continue
            temporary = candidate
        with os.fdopen(handle, "wb") as file:
            torch.save(contents, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        if isinstance(error, OSError):
            raise OutputWriteError(
                f"cannot write {option} {str(path)!r} ({error}); check that its folder is "
                "writable and the disk has space"
            ) from error
        raise


def _read_resume_checkpoint(path: Path) -> dict[str, Any]:
    """Load a resume checkpoint with ``weights_only=True``.

    Raises:
        InvalidCheckpointError: the file is unreadable or not a resume checkpoint of this version.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except DAMAGED_FILE_ERRORS as error:
        raise InvalidCheckpointError(
            f"cannot read the resume checkpoint {str(path)!r} ({error}); delete it to start "
            "a new run"
        ) from error
    if not isinstance(state, dict) or state.get("format_version") != _RESUME_FORMAT_VERSION:
        raise InvalidCheckpointError(
            f"{str(path)!r} is not a train_evaluator resume checkpoint of format version "
            f"{_RESUME_FORMAT_VERSION}; delete it or pass another resume_path"
        )
    missing = [key for key in _RESUME_KEYS if key not in state]
    if missing:
        raise InvalidCheckpointError(
            f"the resume checkpoint {str(path)!r} is missing the entries {missing}; delete it "
            "to start a new run"
        )
    if not isinstance(state["config"], dict):
        raise InvalidCheckpointError(
            f"the resume checkpoint {str(path)!r} has a config of type "
            f"{type(state['config']).__name__} instead of a dict; delete it to start a new run"
        )
    return state


def _check_resume_matches(
    state: dict[str, Any],
    config: EvaluatorTrainingConfig,
    train_listing: _FolderListing,
    path: Path,
) -> None:
    """Raise ValueError, naming the differences, if ``state`` came from another run."""
    saved_config = state["config"]
    differences = [
        f"{name} (saved {saved_config.get(name)!r}, now {getattr(config, name)!r})"
        for name in _RESUME_CONFIG_FIELDS
        if saved_config.get(name) != getattr(config, name)
    ]
    if state["classes"] != train_listing.classes:
        differences.append(f"classes (saved {state['classes']}, now {train_listing.classes})")
    if state["train_fingerprint"] != _fingerprint(train_listing):
        differences.append(
            f"training images (saved {state['train_images']} images, now "
            f"{len(train_listing.paths)}, or other files); use the same data_dir, val_dir, "
            "val_fraction and limit_images"
        )
    if differences:
        raise ValueError(
            f"cannot resume from {str(path)!r} because the run used other settings: "
            f"{'; '.join(differences)}. Resume with the saved settings, or start a new run "
            "without resume"
        )


def _plain_config(config: EvaluatorTrainingConfig) -> dict[str, Any]:
    """Return the config as a dict of strings, numbers and None, for ``weights_only`` files."""
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in dataclasses.asdict(config).items()
    }


# Train


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use 'cpu'")
    return device


def _cosine_lr(peak: float, step: int, total_steps: int) -> float:
    return 0.5 * peak * (1.0 + math.cos(math.pi * step / total_steps))


def _augment(images: Tensor, generator: torch.Generator, padding: int) -> Tensor:
    """Randomly crop uint8 images (N, 3, H, W) from a zero-padded copy and flip each with p=0.5.

    The random numbers come from the CPU ``generator``, so they do not depend on the device.
    """
    count, channels, height, width = images.shape
    device = images.device
    flips = (torch.rand(count, generator=generator) < 0.5).to(device)
    if padding > 0:
        offsets = torch.randint(0, 2 * padding + 1, (count, 2), generator=generator).to(device)
        padded = F.pad(images, (padding, padding, padding, padding))
        rows = offsets[:, 0:1] + torch.arange(height, device=device)
        columns = offsets[:, 1:2] + torch.arange(width, device=device)
        images = padded[
            torch.arange(count, device=device)[:, None, None, None],
            torch.arange(channels, device=device)[None, :, None, None],
            rows[:, None, :, None],
            columns[:, None, None, :],
        ]
    return torch.where(flips[:, None, None, None], images.flip(-1), images)


@dataclass
class _RunData:
    """The chosen images of a run: listings for checks and file records, decoded pixels."""

    train: _FolderListing
    held_out: _FolderListing | None
    train_images: Tensor
    held_out_images: Tensor | None

    @property
    def held_out_count(self) -> int:
        return 0 if self.held_out is None else len(self.held_out.paths)


class _Trainer:
    """The network, optimizer and data of one run, with the state a resume checkpoint stores."""

    def __init__(
        self,
        config: EvaluatorTrainingConfig,
        network: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        data: _RunData,
        device: torch.device,
    ) -> None:
        self.config = config
        self.network = network
        self.device = device
        self.data = data
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.images = data.train_images.to(device)
        self.labels = data.train.labels.to(device)
        count = self.images.shape[0]
        self.batch_size = min(config.batch_size, count)
        self.steps_per_epoch = count // self.batch_size
        self.total_steps = config.epochs * self.steps_per_epoch
        self.padding = round(config.image_size * _CROP_PADDING_FRACTION) if config.augment else 0

        decayed = [p for p in network.parameters() if p.ndim > 1]
        not_decayed = [p for p in network.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD(
            [
                {"params": decayed, "weight_decay": config.weight_decay},
                {"params": not_decayed, "weight_decay": 0.0},
            ],
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.momentum > 0,
        )

        # Position in the run: completed epochs and completed steps of the current epoch. The
        # sums of the current epoch stay on the device, so that steps need no synchronisation.
        self.epoch = 0
        self.step = 0
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0
        self.history: list[dict[str, Any]] = []
        self._order: Tensor | None = None
        self._augment_generator = torch.Generator()

    def normalise(self, images: Tensor) -> Tensor:
        """Map uint8 images to the network input: scale to [0, 1], then (x - mean) / std."""
        return (images.float().div(255.0) - self.mean) / self.std

    def start_epoch(self) -> None:
        """Seed the epoch's data order, augmentation and dropout from (seed, epoch)."""
        seed = self.config.seed
        order_generator = torch.Generator().manual_seed(
            _derive_seed(seed, _ORDER_STREAM, self.epoch)
        )
        self._order = torch.randperm(self.images.shape[0], generator=order_generator)
        self._augment_generator.manual_seed(_derive_seed(seed, _AUGMENT_STREAM, self.epoch))
        torch.manual_seed(_derive_seed(seed, _GLOBAL_RNG_STREAM, self.epoch))

    def train_step(self) -> Tensor:
        """Run step ``self.step`` of the current epoch and return the batch loss."""
        assert self._order is not None, "start_epoch() must run first"
        start = self.step * self.batch_size
        index = self._order[start : start + self.batch_size].to(self.device)
        images = self.images.index_select(0, index)
        labels = self.labels.index_select(0, index)
        if self.config.augment:
            images = _augment(images, self._augment_generator, self.padding)

        lr = _cosine_lr(
            self.config.lr, self.epoch * self.steps_per_epoch + self.step, self.total_steps
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits = self.network(self.normalise(images))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

        loss = loss.detach()
        self.loss_sum += loss * labels.numel()
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += labels.numel()
        self.step += 1
        return loss

    def run_epoch(self, signals: list[int], progress: bool) -> bool:
        """Train the rest of the current epoch and measure the held-out accuracy after it.

        Returns True when a signal in ``signals`` stopped the run before its last epoch ended.
        """
        if self.step == 0:
            self.start_epoch()
        started = time.perf_counter()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step,
            desc=f"Epoch {self.epoch + 1}/{self.config.epochs}",
            unit="step",
            disable=not progress,
            leave=False,
        )
        with bar:
            while self.step < self.steps_per_epoch:
                loss = self.train_step()
                bar.update(1)
                if progress and self.step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                if signals and self.step < self.steps_per_epoch:
                    return True

        trained = time.perf_counter()
        train_loss = self.loss_sum.item() / self.seen
        self.check_finite(train_loss)
        record = {
            "epoch": self.epoch + 1,
            "train_loss": train_loss,
            "train_accuracy": self.correct.item() / self.seen,
            "held_out_accuracy": self.held_out_accuracy(),
        }
        self.history.append(record)
        self.epoch += 1
        self.step = 0
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0

        held_out = record["held_out_accuracy"]
        _logger.info(
            "Epoch %d/%d: train loss %.4f, train accuracy %.4f, held-out accuracy %s "
            "(training %.1f s, held-out evaluation %.1f s)",
            record["epoch"],
            self.config.epochs,
            record["train_loss"],
            record["train_accuracy"],
            "n/a" if held_out is None else f"{held_out:.4f}",
            trained - started,
            time.perf_counter() - trained,
        )
        return bool(signals) and self.epoch < self.config.epochs

    def check_finite(self, train_loss: float) -> None:
        """Raise TrainingDivergedError when the epoch's loss or any weight is NaN or infinite."""
        if math.isfinite(train_loss):
            tensors = [
                tensor
                for tensor in (*self.network.parameters(), *self.network.buffers())
                if tensor.is_floating_point()
            ]
            non_finite = [tensor for tensor in tensors if not bool(torch.isfinite(tensor).all())]
            if not non_finite:
                return
            problem = (
                f"{len(non_finite)} of {len(tensors)} weight tensors contain NaN or infinite values"
            )
        else:
            problem = f"the mean training loss is {train_loss}"
        raise TrainingDivergedError(
            f"training diverged in epoch {self.epoch + 1} of {self.config.epochs}: {problem}. "
            f"Start a new run with an lr (--lr) lower than {self.config.lr:g}; no weights file "
            "was written"
        )

    @torch.no_grad()
    def held_out_accuracy(self) -> float | None:
        """Return the eval-mode accuracy on the held-out images, keeping the network's mode."""
        if self.data.held_out is None or self.data.held_out_images is None:
            return None
        images, labels = self.data.held_out_images, self.data.held_out.labels
        was_training = self.network.training
        self.network.eval()
        correct = 0
        batch_size = max(self.config.batch_size, 256)
        try:
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(self.device)
                predictions = self.network(self.normalise(batch)).argmax(1).cpu()
                correct += int((predictions == labels[start : start + batch_size]).sum())
        finally:
            self.network.train(was_training)
        return correct / images.shape[0]

    def save_resume_checkpoint(self, path: Path) -> None:
        state = {
            "format_version": _RESUME_FORMAT_VERSION,
            "config": _plain_config(self.config),
            "classes": self.data.train.classes,
            "train_images": len(self.data.train.paths),
            "train_fingerprint": _fingerprint(self.data.train),
            "epoch": self.epoch,
            "step": self.step,
            "epoch_sums": {
                "loss": self.loss_sum.item(),
                "correct": self.correct.item(),
                "seen": self.seen,
            },
            "history": list(self.history),
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            # An epoch starts from RNG states derived from (seed, epoch). They are stored for a
            # stop in the middle of an epoch, after the draws so far have advanced them.
            "rng": {
                "augment": self._augment_generator.get_state(),
                "global": _global_rng_state(self.device),
            },
        }
        _save_atomically(state, path, "resume_path")

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore a state that :meth:`save_resume_checkpoint` wrote and the caller checked."""
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        sums = state["epoch_sums"]
        self.loss_sum.fill_(float(sums["loss"]))
        self.correct.fill_(int(sums["correct"]))
        self.seen = int(sums["seen"])
        self.history = list(state["history"])
        if self.step > 0:
            self.start_epoch()
            self._augment_generator.set_state(state["rng"]["augment"])
            _set_global_rng_state(state["rng"]["global"], self.device)

    def write_weights(self, path: Path, data_config: dict[str, Any]) -> float | None:
        """Measure the held-out accuracy, write the evaluator weights file and return it."""
        self.network.eval()
        # Measured again because a resumed finished run may have other held-out images.
        accuracy = self.held_out_accuracy()
        state_dict = self.network.state_dict()
        weights: dict[str, Any] = {
            "state_dict": {key: value.detach().cpu() for key, value in state_dict.items()},
            "data_config": data_config,
            "evaluator": self.config.model,
            "classes": self.data.train.classes,
            "train_accuracy": self.history[-1]["train_accuracy"],
            "epochs": self.epoch,
            "history": self.history,
        }
        if accuracy is not None:
            weights["accuracy"] = accuracy
            weights["held_out_images"] = self.data.held_out_count
        _save_atomically(weights, path, "out")
        _logger.info("Wrote the evaluator weights %s", path)
        return accuracy


def train_evaluator(
    config: EvaluatorTrainingConfig, *, resume: bool = False, progress: bool = False
) -> EvaluatorTrainingResult:
    """Train ``config.model`` on ``config.data_dir`` and write the evaluator weights file.

    The file at ``config.out`` contains ``state_dict``, ``data_config`` (``mean``, ``std``,
    ``input_size`` of (3, image_size, image_size), ``interpolation`` and ``num_classes``),
    ``evaluator`` (the model spec), ``classes``, ``train_accuracy``, ``epochs``, ``history``
    and, when there are held-out images, ``accuracy`` and ``held_out_images``. Load it with
    ``build_evaluator(config.model, checkpoint_path=config.out)``.

    After every epoch the run writes the resume checkpoint ``config.resume_checkpoint``. While
    it trains, a SIGINT or SIGTERM (in the main thread) stops it after the current step: it
    saves the resume checkpoint and returns with ``interrupted=True``. On the CPU a resumed run
    gives bitwise the same weights as an uninterrupted one. Both files are written to a
    temporary file first and renamed, so a crash never leaves a truncated file. The resume
    checkpoint stays after the run; delete it when it is no longer needed.

    The caller's global torch RNG state and thread count are restored when the call returns.

    Args:
        config: The run's settings.
        resume: Continue from the resume checkpoint when it exists, or start a new run when it
            does not. With the checkpoint of a finished run, only the weights file is rewritten.
        progress: Show tqdm progress bars for loading and for each epoch.

    Raises:
        FileNotFoundError, NotADirectoryError: a data folder is missing or is a file.
        ValueError: A data folder has no images, one class, other classes than ``data_dir``,
            or an unreadable image. The decoded images would not fit in the machine's memory.
            ``out`` or the resume checkpoint is a folder, or its folder cannot be created or
            written. The model has no final ``nn.Linear`` or fails at ``image_size``. The
            device is unavailable. The resume checkpoint comes from a run with other settings.
        UnsupportedPixelRangeError: an image has floating-point pixels, or 32-bit integers
            outside [0, 65535].
        TrainingDivergedError: an epoch ended with a NaN or infinite loss or weights. No
            weights file is written, and the resume checkpoint keeps the previous epoch.
        InvalidCheckpointError: the resume checkpoint cannot be read.
        OutputWriteError: writing the weights file or the resume checkpoint failed.
        PretrainedWeightsUnavailableError: ``config.pretrained`` and the weights cannot be
            fetched.
    """
    device = _resolve_device(config.device)
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    # The run reseeds the global RNG for the initialisation and for every epoch.
    # NOTE: no test runs on CUDA, so this fork and the saved CUDA RNG state are untested.
    rng_devices: list[int] = []
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=rng_devices):
            return _train(config, device, resume=resume, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)


def _select_data(config: EvaluatorTrainingConfig) -> tuple[_FolderListing, _FolderListing | None]:
    """List the folders and choose the training and held-out images, without decoding them."""
    listing = _list_image_folder(config.data_dir, "data_dir")
    listing = listing.select(
        _random_subset(len(listing.paths), config.limit_images, config.seed, _LIMIT_STREAM)
    )
    if config.val_dir is not None:
        held_out = _list_image_folder(config.val_dir, "val_dir")
        if held_out.classes != listing.classes:
            missing = sorted(set(listing.classes) - set(held_out.classes))
            extra = sorted(set(held_out.classes) - set(listing.classes))
            raise ValueError(
                f"val_dir {str(config.val_dir)!r} has other classes than data_dir "
                f"{str(config.data_dir)!r} (missing: {missing}, extra: {extra}); both need the "
                "same class subfolders"
            )
        train = listing
    elif config.val_fraction > 0:
        train_indices, held_out_indices = _split_held_out(
            listing.labels, config.val_fraction, config.seed
        )
        train, held_out = listing.select(train_indices), listing.select(held_out_indices)
    else:
        train, held_out = listing, None

    if held_out is not None and not held_out.paths:
        _logger.warning(
            "val_fraction %g of %d images leaves no held-out image, so no accuracy is measured",
            config.val_fraction,
            len(listing.paths),
        )
        held_out = None
    if held_out is not None:
        held_out = held_out.select(
            _random_subset(
                len(held_out.paths), config.limit_val_images, config.seed, _VAL_LIMIT_STREAM
            )
        )
    if len(train.paths) < 2:
        raise ValueError(
            f"data_dir {str(config.data_dir)!r} leaves {len(train.paths)} training images; "
            "training needs at least 2 (raise limit_images or lower val_fraction)"
        )
    return train, held_out


def _check_output_path(option: str, path: Path) -> None:
    """Raise ValueError unless ``path`` can be written: not a folder, in a writable folder.

    A folder that does not exist yet needs a writable nearest existing ancestor.
    """
    suggestion = f"pass a file path such as {_EXAMPLE_PATHS[option]}"
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; {suggestion}")
    # The loop ends at "." or at the root folder, which exist.
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise ValueError(
                f"{option} {str(path)!r} cannot be created because {str(ancestor)!r} is a "
                f"broken symbolic link; {suggestion}"
            )
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(
            f"{option} {str(path)!r} cannot be created because {str(ancestor)!r} is a file, "
            f"not a folder; {suggestion}"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(
            f"{option} {str(path)!r} cannot be written because the folder {str(ancestor)!r} "
            "is not writable; pass a path in a writable folder"
        )


def _physical_memory_bytes() -> int | None:
    """Return the size of the machine's RAM, or None where ``os.sysconf`` is unavailable."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows has no os.sysconf.
        return None


def _check_memory(config: EvaluatorTrainingConfig, train_count: int, held_out_count: int) -> None:
    """Raise ValueError when the decoded images and one float32 batch exceed the machine's RAM.

    NOTE: GPU memory, activations and the memory of other processes are not counted, so a run
    that passes this check can still run out of memory.
    """
    available = _physical_memory_bytes()
    if available is None:
        return
    pixels_per_image = 3 * config.image_size**2
    decoded = (train_count + held_out_count) * pixels_per_image
    batch = max(2, min(config.batch_size, train_count)) * pixels_per_image * 4
    if decoded + batch > available:
        gib = 2**30
        raise ValueError(
            f"{train_count + held_out_count} images of {config.image_size}x{config.image_size} "
            f"pixels need about {(decoded + batch) / gib:.1f} GiB of memory ({decoded / gib:.1f} "
            f"GiB decoded as uint8, plus a float32 batch), more than the {available / gib:.1f} "
            "GiB of this machine; pass a smaller image_size or limit_images"
        )


def _count(listing: _FolderListing | None) -> int:
    return 0 if listing is None else len(listing.paths)


def _train(
    config: EvaluatorTrainingConfig, device: torch.device, *, resume: bool, progress: bool
) -> EvaluatorTrainingResult:
    # Check everything that can fail before decoding the images
    outputs = (("out", config.out), ("resume_path", config.resume_checkpoint))
    for option, path in outputs:
        _check_output_path(option, path)
    for _, path in outputs:
        _remove_interrupted_saves(path)
    train_listing, held_out_listing = _select_data(config)
    classes = train_listing.classes
    _check_memory(config, len(train_listing.paths), _count(held_out_listing))
    network, mean, std = _build_network(config, len(classes))
    network.to(device)
    _check_network_runs(network, config, len(classes))
    resume_path = config.resume_checkpoint
    saved_state: dict[str, Any] | None = None
    if resume and resume_path.is_file():
        saved_state = _read_resume_checkpoint(resume_path)
        _check_resume_matches(saved_state, config, train_listing, resume_path)
    elif resume:
        _logger.warning("No resume checkpoint at %s; starting a new run", resume_path)

    # Load the images and restore the run
    data = _RunData(
        train=train_listing,
        held_out=held_out_listing,
        train_images=_decode_images(train_listing, config.image_size, "training", progress),
        held_out_images=None
        if held_out_listing is None
        else _decode_images(held_out_listing, config.image_size, "held-out", progress),
    )
    trainer = _Trainer(config, network, mean, std, data, device)
    if saved_state is not None:
        trainer.load_resume_state(saved_state)
        _logger.info(
            "Resumed from %s at epoch %d, step %d", resume_path, trainer.epoch, trainer.step
        )

    # Train
    _logger.info(
        "Training %s on %d images of %d classes for %d epochs of %d steps on %s",
        config.model,
        len(train_listing.paths),
        len(classes),
        config.epochs,
        trainer.steps_per_epoch,
        device,
    )
    interrupted = False
    with _stop_on_signals() as signals:
        while trainer.epoch < config.epochs and not interrupted:
            interrupted = trainer.run_epoch(signals, progress)
            trainer.save_resume_checkpoint(resume_path)

    data_config = {
        "mean": tuple(float(value) for value in mean),
        "std": tuple(float(value) for value in std),
        "input_size": (3, config.image_size, config.image_size),
        "interpolation": "bilinear",
        "num_classes": len(classes),
    }
    if interrupted:
        network.eval()
        held_out_accuracy = None
        _logger.warning(
            "Stopped at epoch %d, step %d; saved the resume checkpoint %s",
            trainer.epoch,
            trainer.step,
            resume_path,
        )
    else:
        held_out_accuracy = trainer.write_weights(config.out, data_config)
    last_epoch = trainer.history[-1] if trainer.history else {}
    return EvaluatorTrainingResult(
        weights_path=None if interrupted else config.out,
        resume_path=resume_path,
        epochs_completed=trainer.epoch,
        resumed=saved_state is not None,
        interrupted=interrupted,
        train_loss=last_epoch.get("train_loss"),
        train_accuracy=last_epoch.get("train_accuracy"),
        held_out_accuracy=held_out_accuracy,
        train_images=len(train_listing.paths),
        held_out_images=data.held_out_count,
        classes=classes,
        data_config=data_config,
        history=trainer.history,
        model=network,
    )


# Command line


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m score_guidance.train_evaluator``."""
    defaults = {item.name: item.default for item in dataclasses.fields(EvaluatorTrainingConfig)}
    parser = argparse.ArgumentParser(
        prog="python -m score_guidance.train_evaluator",
        description="Train a timm or torchvision classifier on a folder of class subfolders "
        "of images and write a weights file for the score-guidance evaluators.",
    )
    parser.add_argument(
        "--model",
        default=defaults["model"],
        help="classifier as timm:NAME or torchvision:NAME (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, required=True, help="weights file to write")
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="start from the pretrained ImageNet weights instead of random initialisation",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir", type=Path, required=True, help="training folder with one subfolder per class"
    )
    data.add_argument(
        "--val-dir",
        type=Path,
        help="held-out folder with the same class subfolders (default: split off --data-dir)",
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        default=defaults["val_fraction"],
        help="fraction of each class held out when there is no --val-dir (default: %(default)s)",
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=defaults["image_size"],
        help="side in pixels that images are resized to, and the evaluator input size "
        "(default: %(default)s)",
    )
    data.add_argument(
        "--limit-images", type=int, help="train on a random subset of N images of --data-dir"
    )
    data.add_argument(
        "--limit-val-images", type=int, help="measure the accuracy on at most N held-out images"
    )
    data.add_argument(
        "--no-augment", action="store_true", help="train without random crops and flips"
    )

    training = parser.add_argument_group("training")
    training.add_argument(
        "--epochs", type=int, default=defaults["epochs"], help="epochs (default: %(default)s)"
    )
    training.add_argument(
        "--batch-size",
        type=int,
        default=defaults["batch_size"],
        help="images per step (default: %(default)s)",
    )
    training.add_argument(
        "--lr",
        type=float,
        default=defaults["lr"],
        help="peak SGD learning rate, decayed to 0 along a cosine (default: %(default)s; "
        "lower it, e.g. to 0.01, with --pretrained)",
    )
    training.add_argument(
        "--momentum",
        type=float,
        default=defaults["momentum"],
        help="Nesterov momentum (default: %(default)s)",
    )
    training.add_argument(
        "--weight-decay",
        type=float,
        default=defaults["weight_decay"],
        help="weight decay of weights with 2 or more dimensions (default: %(default)s)",
    )
    training.add_argument(
        "--label-smoothing",
        type=float,
        default=defaults["label_smoothing"],
        help="label smoothing of the loss (default: %(default)s)",
    )
    training.add_argument(
        "--seed", type=int, default=defaults["seed"], help="random seed (default: %(default)s)"
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--device",
        default=defaults["device"],
        help="auto, cpu, cuda or cuda:N (default: %(default)s)",
    )
    run.add_argument(
        "--num-threads", type=int, help="CPU threads of torch (default: torch's current setting)"
    )
    run.add_argument(
        "--resume", action="store_true", help="continue from the resume checkpoint if it exists"
    )
    run.add_argument(
        "--resume-path",
        type=Path,
        help="resume checkpoint (default: the --out path with .resume.pt appended)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _config_from_args(args: argparse.Namespace) -> EvaluatorTrainingConfig:
    return EvaluatorTrainingConfig(
        model=args.model,
        data_dir=args.data_dir,
        out=args.out,
        val_dir=args.val_dir,
        val_fraction=args.val_fraction,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        augment=not args.no_augment,
        pretrained=args.pretrained,
        limit_images=args.limit_images,
        limit_val_images=args.limit_val_images,
        seed=args.seed,
        device=args.device,
        num_threads=args.num_threads,
        resume_path=args.resume_path,
    )


def _usage_hint(config: EvaluatorTrainingConfig, path: Path) -> str:
    source, name = _parse_model_spec(config.model)
    evaluator_class = "TimmEvaluator" if source == "timm" else "TorchvisionEvaluator"
    return (
        "Use it with:\n"
        f"  {evaluator_class}({name!r}, checkpoint_path={str(path)!r})\n"
        f"  python examples/controlgan_cifar10.py --evaluator {config.model} "
        f"--evaluator-weights {path} --evaluator-image-size {config.image_size}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit status.

    Returns 0 on success, 2 for invalid input (reported on stderr), and 130 when interrupted.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        config = _config_from_args(args)
        result = train_evaluator(config, resume=args.resume, progress=not args.no_progress)
    except (
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        OutputWriteError,
        PretrainedWeightsUnavailableError,
    ) as error:
        # InvalidCheckpointError, TrainingDivergedError and UnsupportedPixelRangeError are
        # ValueErrors.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Raised by a second Ctrl-C, or by one before training started, so the current epoch
        # is lost.
        print(
            "interrupted; rerun with --resume to continue from the last saved resume checkpoint",
            file=sys.stderr,
        )
        return 130

    if result.interrupted:
        print(
            f"Interrupted after {result.epochs_completed} complete epochs; the resume "
            f"checkpoint is {result.resume_path}. Continue with the same command and --resume.",
            file=sys.stderr,
        )
        return 130
    accuracy = result.held_out_accuracy
    if accuracy is None:
        print("Held-out accuracy: not measured (no held-out images)")
    else:
        print(f"Held-out accuracy: {accuracy:.4f} on {result.held_out_images} images")
    print(f"Wrote {result.weights_path}")
    print(_usage_hint(config, result.weights_path))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

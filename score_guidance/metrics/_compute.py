"""Inception score, FID and reference statistics from one pass of a feature extractor."""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._inception import FeatureExtractor, PathLike, load_inception
from ._sources import ImageBatches, ImageSource, describe_source
from ._statistics import (
    FeatureMoments,
    ReferenceStatistics,
    frechet_distance,
    inception_score_from_probabilities,
    load_reference_statistics,
    save_reference_statistics,
    validate_reference,
    warn_if_singular,
)

logger = logging.getLogger(__name__)


class InceptionScoreAndFID(NamedTuple):
    """Inception score (mean and standard deviation over splits) and FID of one image set."""

    inception_score: float
    inception_score_std: float
    fid: float


class SampleStatistics(NamedTuple):
    """Everything one pass of the feature extractor keeps about an image set."""

    moments: FeatureMoments
    probabilities: np.ndarray
    num_images: int


def _resolve_feature_extractor(
    feature_extractor: FeatureExtractor | None,
    inception_weights: PathLike | None,
    device: torch.device | str | None,
    batches: ImageBatches,
) -> FeatureExtractor:
    if feature_extractor is not None:
        if inception_weights is not None or device is not None:
            raise ValueError(
                "pass either feature_extractor or inception_weights and device: a feature "
                "extractor already has its weights and moves images to its own device"
            )
        return feature_extractor
    resolved_device = torch.device(device) if device is not None else batches.peek_device()
    return load_inception(inception_weights, resolved_device)


def _check_extractor_output(features: Tensor, probabilities: Tensor, batch_size: int) -> None:
    if features.dim() != 2 or features.shape[0] != batch_size:
        raise ValueError(
            f"the feature extractor returned features of shape {tuple(features.shape)} for "
            f"{batch_size} images; expected ({batch_size}, D)"
        )
    if probabilities.dim() != 2 or probabilities.shape[0] != batch_size:
        raise ValueError(
            f"the feature extractor returned probabilities of shape "
            f"{tuple(probabilities.shape)} for {batch_size} images; expected ({batch_size}, C)"
        )


def extract_statistics(
    batches: ImageBatches,
    feature_extractor: FeatureExtractor,
    *,
    keep_probabilities: bool,
    expected_feature_dim: int | None = None,
    progress: bool = False,
    description: str = "Inception features",
) -> SampleStatistics:
    """Run every batch through ``feature_extractor`` once, accumulating feature moments.

    Class probabilities are kept on the CPU as float32 when ``keep_probabilities`` is set. The
    features are not kept, so memory does not grow with the number of images beyond the
    probabilities.

    Raises:
        ValueError: the source has no images, a batch is invalid, or the feature dimension
            differs from ``expected_feature_dim``.
    """
    moments = FeatureMoments()
    probability_batches: list[np.ndarray] = []
    with tqdm(
        total=batches.num_images,
        desc=description,
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
    ) as progress_bar:
        for images in batches:
            features, probabilities = feature_extractor(images)
            _check_extractor_output(features, probabilities, images.shape[0])
            if expected_feature_dim is not None and features.shape[1] != expected_feature_dim:
                raise ValueError(
                    f"the reference statistics have dimension {expected_feature_dim}, but the "
                    f"feature extractor returns {features.shape[1]}-dimensional features; "
                    "compute the reference with the same network"
                )
            moments.update(features)
            if keep_probabilities:
                probability_batches.append(probabilities.detach().float().cpu().numpy())
            progress_bar.update(images.shape[0])

    if moments.count == 0:
        raise ValueError("the image source yielded no images")
    if probability_batches:
        probabilities_array = np.concatenate(probability_batches)
    else:
        probabilities_array = np.empty((0, 0), dtype=np.float32)
    return SampleStatistics(moments, probabilities_array, moments.count)


def _load_reference(fid_reference: ReferenceStatistics | PathLike) -> ReferenceStatistics:
    if isinstance(fid_reference, ReferenceStatistics):
        return validate_reference(fid_reference, "passed in memory")
    if isinstance(fid_reference, (str, os.PathLike)):
        return load_reference_statistics(fid_reference)
    raise TypeError(
        f"fid_reference must be a path to an .npz file or ReferenceStatistics, got "
        f"{type(fid_reference).__name__}"
    )


def inception_score_and_fid(
    images_or_generator: ImageSource,
    fid_reference: ReferenceStatistics | PathLike,
    splits: int = 10,
    device: torch.device | str | None = None,
    *,
    batch_size: int = 50,
    num_images: int | None = None,
    num_workers: int = 0,
    inception_weights: PathLike | None = None,
    feature_extractor: FeatureExtractor | None = None,
    progress: bool = False,
) -> InceptionScoreAndFID:
    """Compute the Inception score and the FID of a set of images in one Inception pass.

    ``images_or_generator`` is one of: a float tensor or array (N, 3, H, W) in [0, 1], the output
    of ``generate_images``, a dataset of images or (image, label) pairs, a DataLoader or other
    iterable of batches. It can also be a folder, searched recursively for .png and .jpg files.
    At most ``num_images`` images are used. ``fid_reference`` is an ``.npz`` file with ``mu`` and
    ``sigma`` or a ``ReferenceStatistics``.

    ``device`` is where the Inception network runs. None means the device of the images: the
    generator's device for ``generate_images``, the tensor's device, the first batch's device for
    an iterable, and the CPU for datasets and folders. ``inception_weights`` is the local
    ``pt_inception-2015-12-05`` file (see ``load_inception``). ``feature_extractor`` replaces the
    Inception network, for example with another judge network, and excludes both.

    Fewer images than the feature dimension give an ``UnreliableMetricWarning`` and a finite FID.

    Raises:
        ValueError: fewer images than ``splits``, images outside [0, 1] or of the wrong shape,
            or reference statistics that are malformed or of another dimension.
        FileNotFoundError: the reference file or the Inception weights are missing.
    """
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    reference = _load_reference(fid_reference)
    batches = ImageBatches(
        images_or_generator, batch_size, num_images=num_images, num_workers=num_workers
    )
    if batches.num_images is not None and batches.num_images < splits:
        raise ValueError(
            f"the Inception score with splits={splits} needs at least {splits} images, got "
            f"{batches.num_images}; lower splits or evaluate more images"
        )
    extractor = _resolve_feature_extractor(feature_extractor, inception_weights, device, batches)

    logger.info("Evaluating %s", describe_source(images_or_generator))
    result, _ = evaluate_batches(batches, extractor, reference, splits, progress=progress)
    return result


def evaluate_batches(
    batches: ImageBatches,
    feature_extractor: FeatureExtractor,
    reference: ReferenceStatistics,
    splits: int,
    *,
    progress: bool = False,
) -> tuple[InceptionScoreAndFID, int]:
    """Return the Inception score and FID of ``batches`` and the number of images evaluated."""
    sample = extract_statistics(
        batches,
        feature_extractor,
        keep_probabilities=True,
        expected_feature_dim=reference.mu.shape[0],
        progress=progress,
        description="IS and FID",
    )
    inception_score, inception_score_std = inception_score_from_probabilities(
        sample.probabilities, splits
    )
    warn_if_singular(sample.num_images, reference.mu.shape[0], "the FID")
    statistics = sample.moments.statistics()
    fid = frechet_distance(statistics.mu, statistics.sigma, reference.mu, reference.sigma)
    return InceptionScoreAndFID(inception_score, inception_score_std, fid), sample.num_images


def statistics_of_batches(
    batches: ImageBatches, feature_extractor: FeatureExtractor, *, progress: bool = False
) -> tuple[ReferenceStatistics, int]:
    """Return the feature mean and covariance of ``batches`` and the number of images used."""
    sample = extract_statistics(
        batches,
        feature_extractor,
        keep_probabilities=False,
        progress=progress,
        description="Reference statistics",
    )
    statistics = sample.moments.statistics()
    warn_if_singular(sample.num_images, statistics.mu.shape[0], "the reference statistics")
    return statistics, sample.num_images


def compute_reference_statistics(
    dataset_or_folder: ImageSource,
    output_path: PathLike | None,
    device: torch.device | str | None = None,
    *,
    batch_size: int = 50,
    num_images: int | None = None,
    num_workers: int = 0,
    inception_weights: PathLike | None = None,
    feature_extractor: FeatureExtractor | None = None,
    progress: bool = False,
) -> ReferenceStatistics:
    """Compute the mean and covariance of Inception pool features and save them as ``.npz``.

    The file contains float64 arrays ``mu`` (2048,) and ``sigma`` (2048, 2048), the format that
    pytorch-gan-metrics and ``inception_score_and_fid`` read. ``output_path=None`` skips
    saving. The sources, ``device``, ``inception_weights`` and ``feature_extractor`` are those of
    ``inception_score_and_fid``. The computation runs on any device, the CPU included.

    Raises:
        ValueError: fewer than 2 images, or images outside [0, 1] or of the wrong shape.
    """
    batches = ImageBatches(
        dataset_or_folder, batch_size, num_images=num_images, num_workers=num_workers
    )
    extractor = _resolve_feature_extractor(feature_extractor, inception_weights, device, batches)

    logger.info("Computing reference statistics of %s", describe_source(dataset_or_folder))
    statistics, count = statistics_of_batches(batches, extractor, progress=progress)
    if output_path is not None:
        saved_path = save_reference_statistics(statistics, output_path)
        logger.info("Saved statistics of %d images to %s", count, saved_path)
    return statistics

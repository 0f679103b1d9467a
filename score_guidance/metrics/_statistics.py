"""Feature statistics, the Frechet distance and the Inception score, in float64."""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.linalg
import torch
from scipy.special import rel_entr
from torch import Tensor

logger = logging.getLogger(__name__)

# Largest imaginary part of the diagonal of sqrtm(sigma1 @ sigma2) that pytorch-gan-metrics 0.5.3
# (calculate_frechet_distance) accepts as rounding noise.
IMAGINARY_TOLERANCE = 1e-3


class UnreliableMetricWarning(UserWarning):
    """Warning that a score was computed but should not be trusted or compared."""


class ReferenceStatistics(NamedTuple):
    """Mean ``mu`` (D,) and covariance ``sigma`` (D, D) of reference features, in float64."""

    mu: np.ndarray
    sigma: np.ndarray


def validate_reference(statistics: ReferenceStatistics, source: str) -> ReferenceStatistics:
    """Return ``statistics`` as float64 arrays after checking their shapes and values.

    Raises:
        ValueError: ``mu`` is not 1-D, ``sigma`` is not (D, D), or a value is not finite.
    """
    mu = np.asarray(statistics.mu, dtype=np.float64)
    sigma = np.asarray(statistics.sigma, dtype=np.float64)
    if mu.ndim != 1 or mu.shape[0] < 1:
        raise ValueError(
            f"reference statistics {source}: mu must be a 1-D array, got shape {mu.shape}"
        )
    dim = mu.shape[0]
    if sigma.shape != (dim, dim):
        raise ValueError(
            f"reference statistics {source}: sigma must have shape ({dim}, {dim}) to match mu, "
            f"got {sigma.shape}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(
            f"reference statistics {source}: mu or sigma contains NaN or infinite values"
        )
    return ReferenceStatistics(mu, sigma)


def load_reference_statistics(path: str | os.PathLike[str]) -> ReferenceStatistics:
    """Load ``mu`` and ``sigma`` from an ``.npz`` file in the format of pytorch-gan-metrics.

    Pickled files (the old ``.npy`` dictionaries) are rejected because loading them can run code.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an ``.npz`` archive, lacks ``mu`` or ``sigma``, or the arrays
            have inconsistent shapes or non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"cannot read reference statistics {path}: {error}. Expected an .npz file with "
            "arrays mu and sigma, as written by compute_reference_statistics"
        ) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"reference statistics {path} is a single array, expected an .npz file with arrays "
            "mu and sigma"
        )
    with archive:
        missing = [key for key in ("mu", "sigma") if key not in archive.files]
        if missing:
            raise ValueError(
                f"reference statistics {path} lacks the array(s) {', '.join(missing)}; "
                f"it contains {archive.files}"
            )
        try:
            statistics = ReferenceStatistics(archive["mu"], archive["sigma"])
        except ValueError as error:
            # Object arrays inside the archive need pickle.
            raise ValueError(f"cannot read mu and sigma from {path}: {error}") from error
    return validate_reference(statistics, str(path))


def save_reference_statistics(
    statistics: ReferenceStatistics, path: str | os.PathLike[str]
) -> Path:
    """Write ``mu`` and ``sigma`` to a compressed ``.npz`` file, creating parent folders.

    NumPy appends ``.npz`` to a path without that suffix; the returned path includes it.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, mu=statistics.mu, sigma=statistics.sigma)
    return path


class FeatureMoments:
    """Running mean and covariance of feature rows, accumulated in float64 on their device.

    Rows are shifted by the mean of the first batch before summing, so the covariance does not
    lose precision when the features have a large common offset. Small batches are buffered
    until ``chunk_rows`` rows are pending, because one matrix product per chunk is several times
    faster than one per batch of 50. The result matches ``np.cov(features, rowvar=False)``
    (ddof=1) to float64 rounding, for any batch split.
    """

    def __init__(self, chunk_rows: int = 1024) -> None:
        self.count = 0
        self.chunk_rows = chunk_rows
        self._shift: Tensor | None = None
        self._sum: Tensor | None = None
        self._outer_sum: Tensor | None = None
        self._pending: list[Tensor] = []
        self._pending_rows = 0

    def update(self, features: Tensor) -> None:
        """Add the rows of ``features`` (B, D)."""
        if features.dim() != 2:
            raise ValueError(f"features must have shape (B, D), got {tuple(features.shape)}")
        if features.shape[0] == 0:
            return
        features = features.detach().to(torch.float64)
        if self._shift is None:
            self._shift = features.mean(dim=0)
            dim = features.shape[1]
            self._sum = features.new_zeros(dim)
            self._outer_sum = features.new_zeros(dim, dim)
        if features.shape[1] != self._shift.shape[0]:
            raise ValueError(
                f"feature dimension changed from {self._shift.shape[0]} to {features.shape[1]}"
            )
        self._pending.append(features.to(self._shift.device))
        self._pending_rows += features.shape[0]
        self.count += features.shape[0]
        if self._pending_rows >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        assert self._shift is not None and self._sum is not None and self._outer_sum is not None
        centred = torch.cat(self._pending) - self._shift
        self._pending = []
        self._pending_rows = 0
        # Checked once per chunk: on a busy CPU each small tensor operation costs milliseconds.
        if not torch.isfinite(centred).all():
            raise ValueError("the feature extractor returned NaN or infinite features")
        self._sum += centred.sum(dim=0)
        self._outer_sum.addmm_(centred.T, centred)

    @property
    def feature_dim(self) -> int | None:
        return None if self._shift is None else int(self._shift.shape[0])

    def statistics(self) -> ReferenceStatistics:
        """Return the mean and the unbiased covariance as float64 NumPy arrays.

        Raises:
            ValueError: fewer than 2 rows were added.
        """
        if self.count < 2 or self._shift is None:
            raise ValueError(f"the covariance needs at least 2 images, got {self.count}")
        self._flush()
        assert self._sum is not None and self._outer_sum is not None
        mean_offset = self._sum / self.count
        covariance = self._outer_sum.addr(mean_offset, mean_offset, alpha=-self.count)
        covariance /= self.count - 1
        covariance = (covariance + covariance.T) / 2  # remove rounding asymmetry
        mu = (self._shift + mean_offset).cpu().numpy()
        return ReferenceStatistics(mu, covariance.cpu().numpy())


def warn_if_singular(num_samples: int, feature_dim: int, subject: str) -> None:
    """Warn that a covariance of ``num_samples`` rows of dimension ``feature_dim`` is singular."""
    if num_samples <= feature_dim:
        warnings.warn(
            f"{subject} uses {num_samples} images, but a covariance of {feature_dim}-dimensional "
            f"features needs more than {feature_dim} to be non-singular: the FID is unreliable "
            "and not comparable with published values (the standard protocol uses 50,000)",
            UnreliableMetricWarning,
            # Skip this function and the helper of _compute that calls it, so the warning points
            # at the caller of the public function.
            stacklevel=4,
        )


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
) -> float:
    """Compute the Frechet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 @ sigma2))`` in float64, with
    scipy.linalg.sqrtm, as pytorch-gan-metrics 0.5.3 computes it. When sqrtm returns non-finite
    values, ``eps`` is added to both diagonals and the root is computed again, as there.
    Imaginary parts from rounding are dropped, and a result below 0 from rounding is returned as
    0. An imaginary diagonal entry above 1e-3, which
    pytorch-gan-metrics 0.5.3 raises on, is dropped too but reported with an
    ``UnreliableMetricWarning``.

    Raises:
        ValueError: the shapes of the means and covariances do not match.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"the means have different shapes: {mu1.shape} and {mu2.shape}")
    dim = mu1.shape[0]
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"the covariances must have shape ({dim}, {dim}), got {sigma1.shape} and {sigma2.shape}"
        )

    with warnings.catch_warnings():
        # scipy warns that a singular product "might not have a square root". Singular inputs
        # are reported by warn_if_singular, which names the cause.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covariance_root = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covariance_root).all():
            logger.warning(
                "sqrtm(sigma1 @ sigma2) is not finite; adding %g to the covariance diagonals", eps
            )
            offset = np.eye(dim) * eps
            covariance_root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))

    if np.iscomplexobj(covariance_root):
        max_imaginary = float(np.max(np.abs(np.diagonal(covariance_root).imag)))
        if max_imaginary > IMAGINARY_TOLERANCE:
            warnings.warn(
                "sqrtm(sigma1 @ sigma2) has an imaginary diagonal component of "
                f"{max_imaginary:.3g} "
                f"(tolerance {IMAGINARY_TOLERANCE}): the covariances are probably not positive "
                "semi-definite, and the FID, computed from the real part, is unreliable",
                UnreliableMetricWarning,
                stacklevel=2,
            )
        covariance_root = covariance_root.real

    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covariance_root)
    # The distance is non-negative; rounding in sqrtm can push identical inputs slightly below 0.
    return max(float(distance), 0.0)


def inception_score_from_probabilities(
    probabilities: np.ndarray | Tensor, splits: int = 10
) -> tuple[float, float]:
    """Return the mean and standard deviation of the Inception score over ``splits`` chunks.

    The chunk boundaries ``i * N // splits`` and the population standard deviation are those of
    pytorch-gan-metrics 0.5.3, so scores match it. The KL divergence uses scipy's ``rel_entr``,
    which counts a zero probability as 0 where the library's ``p * log(p)`` gives NaN.

    Raises:
        ValueError: ``splits`` is not a positive integer, there are fewer rows than splits, or
            ``probabilities`` is not a 2-D array.
    """
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    if isinstance(probabilities, Tensor):
        probabilities = probabilities.detach().cpu().numpy()
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(
            f"probabilities must have shape (N, num_classes), got {probabilities.shape}"
        )
    num_samples = probabilities.shape[0]
    if num_samples < splits:
        raise ValueError(
            f"the Inception score with splits={splits} needs at least {splits} images, got "
            f"{num_samples}; lower splits or evaluate more images"
        )

    scores = []
    for index in range(splits):
        part = probabilities[index * num_samples // splits : (index + 1) * num_samples // splits]
        marginal = part.mean(axis=0, keepdims=True)
        mean_kl = rel_entr(part, marginal).sum(axis=1).mean()
        scores.append(np.exp(mean_kl))
    return float(np.mean(scores)), float(np.std(scores))

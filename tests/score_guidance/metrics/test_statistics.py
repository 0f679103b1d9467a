"""Feature moments, Frechet distance, Inception score and reference files, in float64."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_gan_metrics.core import calculate_frechet_distance, calculate_inception_score

from score_guidance.metrics import (
    ReferenceStatistics,
    UnreliableMetricWarning,
    frechet_distance,
    inception_score_from_probabilities,
    load_reference_statistics,
)
from score_guidance.metrics._statistics import FeatureMoments, save_reference_statistics


def _random_covariance(dim: int, rng: np.random.Generator) -> np.ndarray:
    factor = rng.standard_normal((dim, 2 * dim))
    return factor @ factor.T / (2 * dim)


def _random_probabilities(rows: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    logits = rng.standard_normal((rows, classes)) * 3.0
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("batch_sizes", [[100], [1, 99], [7, 7, 7, 79], [50, 50]])
def test_moments_match_numpy_cov(batch_sizes: list[int]):
    rng = np.random.default_rng(0)
    # A large common offset checks that the running sums do not lose the small variance.
    features = rng.standard_normal((100, 6)) + 1e4
    moments = FeatureMoments()

    start = 0
    for size in batch_sizes:
        moments.update(torch.from_numpy(features[start : start + size]))
        start += size
    mu, sigma = moments.statistics()

    assert moments.count == 100
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)


def test_moments_need_two_rows():
    moments = FeatureMoments()
    moments.update(torch.ones(1, 4))

    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        moments.statistics()


def test_moments_reject_nan():
    moments = FeatureMoments()
    moments.update(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    moments.update(torch.tensor([[float("nan"), 0.0]]))

    with pytest.raises(ValueError, match="NaN"):
        moments.statistics()


def test_moments_chunks_match_single_product():
    rng = np.random.default_rng(1)
    features = torch.from_numpy(rng.standard_normal((70, 5)))
    chunked = FeatureMoments(chunk_rows=16)
    single = FeatureMoments(chunk_rows=1000)

    for start in range(0, 70, 6):
        chunked.update(features[start : start + 6])
        single.update(features[start : start + 6])

    np.testing.assert_allclose(chunked.statistics().sigma, single.statistics().sigma, rtol=1e-12)


def test_frechet_identical_is_zero():
    rng = np.random.default_rng(0)
    mu = rng.standard_normal(16)
    sigma = _random_covariance(16, rng)

    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_frechet_diagonal_closed_form():
    # For diagonal covariances, FID = |mu1 - mu2|^2 + sum((sqrt(a) - sqrt(b))^2).
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    variances1, variances2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = 5.0 + (1.0 + 1.0 + 4.0)

    distance = frechet_distance(mu1, np.diag(variances1), mu2, np.diag(variances2))

    assert distance == pytest.approx(expected, rel=1e-12)


def test_frechet_matches_pytorch_gan_metrics():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
    sigma1, sigma2 = _random_covariance(32, rng), _random_covariance(32, rng)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy 1.16+ deprecates disp=False
        expected = calculate_frechet_distance(mu1, sigma1, mu2, sigma2)

    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)


def test_frechet_shape_mismatch_raises():
    with pytest.raises(ValueError, match="means have different shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="covariances must have shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def test_frechet_large_imaginary_warns():
    # A covariance with a negative eigenvalue has no real square root: sqrtm returns 1j there.
    sigma_negative = np.diag([1.0, -1.0])

    with pytest.warns(UnreliableMetricWarning, match="imaginary diagonal component of 1"):
        distance = frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), sigma_negative)

    assert np.isfinite(distance)
    assert isinstance(distance, float)


def test_frechet_singular_small_imaginary_dropped():
    rng = np.random.default_rng(2)
    features1 = rng.standard_normal((10, 64))
    features2 = rng.standard_normal((10, 64))
    sigma1 = np.cov(features1, rowvar=False)
    sigma2 = np.cov(features2, rowvar=False)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableMetricWarning)
        distance = frechet_distance(features1.mean(0), sigma1, features2.mean(0), sigma2)

    assert np.isfinite(distance)
    assert isinstance(distance, float)


def test_inception_score_identical_rows_is_one():
    rng = np.random.default_rng(0)
    probabilities = np.repeat(_random_probabilities(1, 1008, rng), 40, axis=0)

    score, std = inception_score_from_probabilities(probabilities, splits=4)

    assert score == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_one_hot_counts_classes():
    probabilities = np.eye(10)

    score, std = inception_score_from_probabilities(probabilities, splits=1)

    assert score == pytest.approx(10.0, rel=1e-12)
    assert std == 0.0


def test_inception_score_matches_pytorch_gan_metrics():
    rng = np.random.default_rng(3)
    probabilities = _random_probabilities(103, 20, rng)

    expected_score, expected_std = calculate_inception_score(probabilities, splits=10)
    score, std = inception_score_from_probabilities(probabilities, splits=10)

    assert score == pytest.approx(expected_score, rel=1e-12)
    assert std == pytest.approx(expected_std, rel=1e-9)


def test_inception_score_zero_probability_finite():
    # float32 softmax underflows to exact zeros; pytorch-gan-metrics returns NaN then.
    probabilities = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])

    with np.errstate(divide="ignore", invalid="ignore"):
        library_score, _ = calculate_inception_score(probabilities, splits=1)
    score, _ = inception_score_from_probabilities(probabilities, splits=1)

    assert np.isnan(library_score)
    assert np.isfinite(score)
    assert score > 1.0


def test_inception_score_fewer_samples_than_splits():
    probabilities = np.full((9, 4), 0.25)

    with pytest.raises(ValueError, match="splits=10 needs at least 10 images, got 9"):
        inception_score_from_probabilities(probabilities, splits=10)


@pytest.mark.parametrize("splits", [0, -1, 2.0, True])
def test_inception_score_invalid_splits(splits: object):
    with pytest.raises(ValueError, match="splits must be a positive integer"):
        inception_score_from_probabilities(np.full((10, 4), 0.25), splits=splits)  # type: ignore[arg-type]


def test_reference_round_trip(tmp_path: Path):
    rng = np.random.default_rng(0)
    statistics = ReferenceStatistics(rng.standard_normal(8), _random_covariance(8, rng))

    saved = save_reference_statistics(statistics, tmp_path / "reference")
    loaded = load_reference_statistics(saved)
    # The reading code of pytorch-gan-metrics 0.5.3 (get_fid) reads the arrays by these keys.
    with np.load(saved, allow_pickle=True) as archive:
        library_mu, library_sigma = archive["mu"][:], archive["sigma"][:]

    assert saved.name == "reference.npz"
    np.testing.assert_array_equal(loaded.mu, statistics.mu)
    np.testing.assert_array_equal(loaded.sigma, statistics.sigma)
    np.testing.assert_array_equal(library_mu, statistics.mu)
    np.testing.assert_array_equal(library_sigma, statistics.sigma)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"mu": np.zeros(4)}, "lacks the array"),
        ({"mean": np.zeros(4), "cov": np.eye(4)}, "lacks the array"),
        ({"mu": np.zeros(4), "sigma": np.eye(3)}, r"sigma must have shape \(4, 4\)"),
        ({"mu": np.zeros((4, 1)), "sigma": np.eye(4)}, "mu must be a 1-D array"),
        ({"mu": np.full(2, np.nan), "sigma": np.eye(2)}, "NaN or infinite"),
    ],
)
def test_reference_malformed_raises(tmp_path: Path, arrays: dict[str, np.ndarray], message: str):
    path = tmp_path / "reference.npz"
    np.savez(path, **arrays)

    with pytest.raises(ValueError, match=message):
        load_reference_statistics(path)


def test_reference_pickled_rejected(tmp_path: Path):
    # The old pytorch-gan-metrics format: a pickled dictionary in a .npy file.
    path = tmp_path / "reference.npy"
    np.save(path, {"mu": np.zeros(2), "sigma": np.eye(2)}, allow_pickle=True)

    with pytest.raises(ValueError, match="cannot read reference statistics"):
        load_reference_statistics(path)


def test_reference_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_reference_statistics(tmp_path / "absent.npz")

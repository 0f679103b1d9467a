"""inception_score_and_fid and compute_reference_statistics on every accepted source."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from metrics_helpers import CIFAR10_JPEG, ToyFeatureExtractor, requires_cifar10_jpeg, smooth_images
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from score_guidance.metrics import (
    InceptionFeatureExtractor,
    InceptionScoreAndFID,
    ReferenceStatistics,
    UnreliableMetricWarning,
    compute_reference_statistics,
    generate_images,
    inception_score_and_fid,
    inception_score_from_probabilities,
    load_reference_statistics,
)
from score_guidance.metrics._compute import _resolve_feature_extractor, extract_statistics
from score_guidance.metrics._sources import ImageBatches

# Most tests here use fewer images than feature dimensions on purpose. The tests of that warning
# catch it with pytest.warns or turn it into an error.
pytestmark = pytest.mark.filterwarnings("ignore::score_guidance.metrics.UnreliableMetricWarning")


class BareImages(Dataset):
    """Dataset that returns images without labels."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


class PilImages(BareImages):
    """Dataset of (PIL image, label) pairs, like a torchvision dataset without a transform."""

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:  # type: ignore[override]
        array = (self.images[index] * 255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(array), 0


class SmoothGenerator(nn.Module):
    """Generator whose tanh output is a smooth 16x16 image, conditional on a label."""

    def __init__(self, z_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(z_dim, 3 * 4 * 4)
        self.embedding = nn.Embedding(num_classes, 3 * 4 * 4)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        coarse = torch.tanh(self.linear(z) + self.embedding(labels)).view(-1, 3, 4, 4)
        return nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear")


def _spanning(low: float, high: float) -> Tensor:
    """Return 12 smooth images rescaled to span exactly [low, high]."""
    images = smooth_images(12)
    unit = (images - images.min()) / (images.max() - images.min())
    return unit * (high - low) + low


def _toy_statistics(images: Tensor) -> ReferenceStatistics:
    return compute_reference_statistics(images, None, feature_extractor=ToyFeatureExtractor())


def test_fid_against_own_statistics_toy(toy_extractor: ToyFeatureExtractor):
    images = smooth_images(120)
    reference = _toy_statistics(images)

    result = inception_score_and_fid(images, reference, feature_extractor=toy_extractor)

    assert isinstance(result, InceptionScoreAndFID)
    assert abs(result.fid) < 1e-6
    assert result.inception_score > 1.0
    assert result.inception_score_std > 0.0


def test_batch_size_independent_toy():
    images = smooth_images(120)
    reference = _toy_statistics(smooth_images(120, seed=1))

    results = [
        inception_score_and_fid(
            images, reference, batch_size=size, feature_extractor=ToyFeatureExtractor()
        )
        for size in (1, 7, 50, 120)
    ]

    for result in results[1:]:
        assert result.inception_score == pytest.approx(results[0].inception_score, rel=1e-6)
        assert result.inception_score_std == pytest.approx(results[0].inception_score_std, rel=1e-5)
        assert result.fid == pytest.approx(results[0].fid, rel=1e-6)


def test_fewer_images_than_splits_raises_early(toy_extractor: ToyFeatureExtractor):
    reference = _toy_statistics(smooth_images(60))

    with pytest.raises(ValueError, match="splits=10 needs at least 10 images, got 9"):
        inception_score_and_fid(smooth_images(9), reference, feature_extractor=toy_extractor)

    assert toy_extractor.calls == 0


def test_fewer_images_than_splits_from_iterable(toy_extractor: ToyFeatureExtractor):
    reference = _toy_statistics(smooth_images(60))
    batches = iter([smooth_images(4), smooth_images(5)])

    with pytest.raises(ValueError, match="splits=10 needs at least 10 images, got 9"):
        inception_score_and_fid(batches, reference, feature_extractor=toy_extractor)


def test_few_images_warn_singular_but_finite(toy_extractor: ToyFeatureExtractor):
    reference = _toy_statistics(smooth_images(100, seed=1))

    with pytest.warns(UnreliableMetricWarning, match="needs more than 48"):
        result = inception_score_and_fid(
            smooth_images(20), reference, feature_extractor=toy_extractor
        )

    assert np.isfinite(result.fid)
    assert np.isfinite(result.inception_score)


def test_enough_images_do_not_warn(toy_extractor: ToyFeatureExtractor):
    reference = _toy_statistics(smooth_images(100, seed=1))

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableMetricWarning)
        inception_score_and_fid(smooth_images(100), reference, feature_extractor=toy_extractor)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (_spanning(-1.0, 1.0), r"got values in \[-1, 1\].*\(images \+ 1\) / 2"),
        (_spanning(0.0, 255.0), r"got values in \[0, 255\]"),
        (_spanning(0.0, 255.0).byte(), "dtype torch.uint8 with values in \\[0, 255\\]"),
        (smooth_images(12).mean(dim=1, keepdim=True), r"shape \(N, 3, H, W\)"),
        (torch.full((12, 3, 8, 8), float("nan")), "NaN"),
    ],
)
def test_invalid_images_raise(images: Tensor, message: str, toy_extractor: ToyFeatureExtractor):
    reference = _toy_statistics(smooth_images(60))

    with pytest.raises(ValueError, match=message):
        inception_score_and_fid(images, reference, splits=2, feature_extractor=toy_extractor)
    with pytest.raises(ValueError, match=message):
        compute_reference_statistics(images, None, feature_extractor=toy_extractor)


def test_invalid_batch_in_stream_raises(toy_extractor: ToyFeatureExtractor):
    reference = _toy_statistics(smooth_images(60))
    batches = [smooth_images(6), _spanning(-1.0, 1.0)]

    with pytest.raises(ValueError, match=r"images of batch 1 .* got values in \[-1, 1\]"):
        inception_score_and_fid(batches, reference, splits=2, feature_extractor=toy_extractor)


def test_reference_of_other_dimension_raises(toy_extractor: ToyFeatureExtractor):
    reference = ReferenceStatistics(np.zeros(2048), np.eye(2048))

    with pytest.raises(ValueError, match="dimension 2048.*48-dimensional features"):
        inception_score_and_fid(
            smooth_images(12), reference, splits=2, feature_extractor=toy_extractor
        )


def test_reference_file_without_sigma_raises(tmp_path: Path, toy_extractor: ToyFeatureExtractor):
    path = tmp_path / "reference.npz"
    np.savez(path, mu=np.zeros(48))

    with pytest.raises(ValueError, match="lacks the array"):
        inception_score_and_fid(smooth_images(12), path, splits=2, feature_extractor=toy_extractor)
    assert toy_extractor.calls == 0


def test_labelled_and_bare_datasets_agree():
    images = smooth_images(30)
    tensor_statistics = _toy_statistics(images)
    sources = {
        "pairs": TensorDataset(images, torch.zeros(30, dtype=torch.long)),
        "bare": BareImages(images),
        "pil pairs": PilImages(images),
        "dataloader pairs": DataLoader(TensorDataset(images, torch.zeros(30)), batch_size=8),
        "list of batches": [images[:13], images[13:]],
    }

    for name, source in sources.items():
        statistics = compute_reference_statistics(
            source, None, batch_size=8, feature_extractor=ToyFeatureExtractor()
        )
        # PIL images are rounded to 8 bits.
        tolerance = 1e-2 if name == "pil pairs" else 1e-6
        np.testing.assert_allclose(
            statistics.mu, tensor_statistics.mu, atol=tolerance, err_msg=name
        )


def test_torchvision_dataset_accepted():
    # FakeData returns (PIL image, label) pairs, as CIFAR10 without a transform does.
    dataset = torchvision.datasets.FakeData(size=12, image_size=(3, 16, 16), random_offset=0)
    tensors = torch.stack(
        [torchvision.transforms.functional.to_tensor(image) for image, _ in dataset]
    )

    statistics = compute_reference_statistics(
        dataset, None, batch_size=5, feature_extractor=ToyFeatureExtractor()
    )

    np.testing.assert_allclose(statistics.mu, _toy_statistics(tensors).mu, atol=1e-6)


def test_iterable_dataset_accepted():
    images = smooth_images(10)

    class StreamedPairs(torch.utils.data.IterableDataset):
        def __iter__(self) -> Iterator[tuple[Tensor, int]]:
            return ((image, 0) for image in images)

    statistics = compute_reference_statistics(
        StreamedPairs(), None, batch_size=4, feature_extractor=ToyFeatureExtractor()
    )

    np.testing.assert_allclose(statistics.mu, _toy_statistics(images).mu, atol=1e-6)


def test_num_images_limits_sources():
    images = smooth_images(30)
    dataset = TensorDataset(images, torch.zeros(30))
    expected = _toy_statistics(images[:17])

    for source in (images, dataset, [images[:10], images[10:]]):
        statistics = compute_reference_statistics(
            source, None, batch_size=8, num_images=17, feature_extractor=ToyFeatureExtractor()
        )
        np.testing.assert_allclose(statistics.mu, expected.mu, atol=1e-6)


def test_folder_source_and_saved_file(tmp_path: Path):
    images = smooth_images(12)
    folder = tmp_path / "images" / "class_a"
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        torchvision.utils.save_image(image, folder / f"{index:03d}.png")

    statistics = compute_reference_statistics(
        tmp_path / "images", tmp_path / "out" / "stats.npz", feature_extractor=ToyFeatureExtractor()
    )
    loaded = load_reference_statistics(tmp_path / "out" / "stats.npz")

    np.testing.assert_allclose(statistics.mu, _toy_statistics(images).mu, atol=1e-2)
    np.testing.assert_array_equal(loaded.mu, statistics.mu)
    np.testing.assert_array_equal(loaded.sigma, statistics.sigma)


def test_empty_or_missing_folder_raises(tmp_path: Path, toy_extractor: ToyFeatureExtractor):
    (tmp_path / "empty").mkdir()

    with pytest.raises(ValueError, match="no images found"):
        compute_reference_statistics(tmp_path / "empty", None, feature_extractor=toy_extractor)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        compute_reference_statistics(tmp_path / "absent", None, feature_extractor=toy_extractor)


def test_generator_network_needs_generate_images(toy_extractor: ToyFeatureExtractor):
    generator = SmoothGenerator(z_dim=8, num_classes=10)
    reference = _toy_statistics(smooth_images(60))

    with pytest.raises(TypeError, match="generate_images"):
        inception_score_and_fid(generator, reference, feature_extractor=toy_extractor)  # type: ignore[arg-type]


def test_generated_stream_evaluated(toy_extractor: ToyFeatureExtractor):
    generator = SmoothGenerator(z_dim=8, num_classes=10)
    reference = _toy_statistics(smooth_images(60))
    stream = generate_images(generator, 70, 16, num_classes=10, z_dim=8, seed=0)

    first = inception_score_and_fid(stream, reference, feature_extractor=toy_extractor)
    second = inception_score_and_fid(stream, reference, feature_extractor=ToyFeatureExtractor())

    assert np.isfinite(first.fid)
    assert first == second


def test_extractor_excludes_device_and_weights(toy_extractor: ToyFeatureExtractor):
    reference = _toy_statistics(smooth_images(60))

    with pytest.raises(ValueError, match="either feature_extractor or inception_weights"):
        inception_score_and_fid(
            smooth_images(12), reference, splits=2, device="cpu", feature_extractor=toy_extractor
        )


def test_default_device_of_sources():
    generator = SmoothGenerator(z_dim=8, num_classes=10)

    assert ImageBatches(smooth_images(4), 2).peek_device() == torch.device("cpu")
    assert ImageBatches(generate_images(generator, 4, 2, 10, z_dim=8), 2).device == torch.device(
        "cpu"
    )
    assert ImageBatches(iter([smooth_images(4)]), 2).peek_device() == torch.device("cpu")


def test_identical_images_score_one(inception: InceptionFeatureExtractor):
    images = smooth_images(1).expand(4, -1, -1, -1)

    sample = extract_statistics(ImageBatches(images, 4), inception, keep_probabilities=True)
    score, std = inception_score_from_probabilities(sample.probabilities, splits=2)

    assert score == pytest.approx(1.0, abs=1e-4)
    assert std == pytest.approx(0.0, abs=1e-4)


def test_batch_size_independent_inception(inception: InceptionFeatureExtractor):
    images = smooth_images(3, seed=3)

    small = extract_statistics(ImageBatches(images, 1), inception, keep_probabilities=True)
    large = extract_statistics(ImageBatches(images, 3), inception, keep_probabilities=True)
    small_statistics = small.moments.statistics()
    large_statistics = large.moments.statistics()

    np.testing.assert_allclose(large.probabilities, small.probabilities, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(large_statistics.mu, small_statistics.mu, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(large_statistics.sigma, small_statistics.sigma, rtol=1e-3, atol=1e-8)


@pytest.mark.slow
def test_fid_against_own_statistics_inception(random_inception_weights: Path):
    images = smooth_images(20, seed=4)
    reference = compute_reference_statistics(
        images, None, batch_size=8, inception_weights=random_inception_weights
    )

    with pytest.warns(UnreliableMetricWarning):
        result = inception_score_and_fid(
            images, reference, splits=2, batch_size=5, inception_weights=random_inception_weights
        )

    assert abs(result.fid) < 1e-3
    assert result.inception_score > 1.0


def test_weights_path_selects_inception(random_inception_weights: Path):
    batches = ImageBatches(smooth_images(2), 2)

    extractor = _resolve_feature_extractor(None, random_inception_weights, None, batches)

    assert isinstance(extractor, InceptionFeatureExtractor)
    assert extractor.device == torch.device("cpu")


@requires_cifar10_jpeg
def test_cifar_image_folder_pairs(tmp_path: Path, inception: InceptionFeatureExtractor):
    dataset = torchvision.datasets.ImageFolder(str(CIFAR10_JPEG / "test"))
    subset = torch.utils.data.Subset(dataset, range(2))
    tensors = torch.stack(
        [torchvision.transforms.functional.to_tensor(dataset[index][0]) for index in range(2)]
    )

    with pytest.warns(UnreliableMetricWarning, match="uses 2 images"):
        from_pairs = compute_reference_statistics(
            subset, tmp_path / "cifar.npz", feature_extractor=inception
        )
    features, _ = inception(tensors)

    assert from_pairs.mu.shape == (2048,)
    assert from_pairs.sigma.shape == (2048, 2048)
    assert load_reference_statistics(tmp_path / "cifar.npz").mu.shape == (2048,)
    np.testing.assert_allclose(
        from_pairs.mu, features.double().mean(0).numpy(), rtol=1e-5, atol=1e-7
    )

"""Loading the FID Inception network from local files, and the errors without one."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import pytest
import pytorch_gan_metrics.inception as gan_metrics_inception
import torch
import torchvision
from metrics_helpers import smooth_images

from score_guidance.metrics import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILENAME,
    InceptionFeatureExtractor,
    _inception,
    load_inception,
)


def _fail_download() -> None:
    raise urllib.error.URLError("network unreachable (test)")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the download with one that fails and counts its calls."""
    calls: list[int] = []

    def fail_download() -> None:
        calls.append(1)
        _fail_download()

    monkeypatch.setattr(_inception, "_download_state_dict", fail_download)
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    return calls


def test_extractor_output_shapes(inception: InceptionFeatureExtractor):
    features, probabilities = inception(smooth_images(2))

    assert features.shape == (2, 2048)
    assert probabilities.shape == (2, 1008)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2), atol=1e-5)
    assert torch.isfinite(features).all()


def test_path_argument_loads_offline(random_inception_weights: Path, no_network: list[int]):
    extractor = load_inception(random_inception_weights, "cpu")

    assert isinstance(extractor, InceptionFeatureExtractor)
    assert no_network == []


def _assert_same_weights(
    first: InceptionFeatureExtractor, second: InceptionFeatureExtractor
) -> None:
    first_state = first.network.state_dict()
    second_state = second.network.state_dict()
    assert first_state.keys() == second_state.keys()
    for name, tensor in first_state.items():
        assert torch.equal(tensor, second_state[name]), name


def test_environment_variable_loads(
    random_inception_weights: Path,
    inception: InceptionFeatureExtractor,
    no_network: list[int],
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(random_inception_weights))

    extractor = load_inception(device="cpu")

    assert no_network == []
    _assert_same_weights(extractor, inception)


def test_missing_path_names_file(tmp_path: Path, no_network: list[int]):
    missing = tmp_path / "absent.pth"

    with pytest.raises(FileNotFoundError) as raised:
        load_inception(missing, "cpu")

    assert str(missing) in str(raised.value)
    assert INCEPTION_WEIGHTS_FILENAME in str(raised.value)
    assert no_network == []


def test_missing_environment_file_names_variable(
    tmp_path: Path, no_network: list[int], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "absent.pth"))

    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_ENV):
        load_inception(device="cpu")


def test_failed_download_names_locations(no_network: list[int]):
    with pytest.raises(FileNotFoundError) as raised:
        load_inception(device="cpu")

    message = str(raised.value)
    assert no_network == [1]
    assert INCEPTION_WEIGHTS_FILENAME in message
    assert str(_inception.hub_weights_path()) in message
    assert INCEPTION_WEIGHTS_ENV in message
    assert "inception_weights=PATH" in message
    assert "network unreachable (test)" in message


def test_disabled_download_never_called(no_network: list[int]):
    with pytest.raises(FileNotFoundError, match="downloads are disabled"):
        load_inception(device="cpu", allow_download=False)

    assert no_network == []


def test_hub_cache_file_read_in_place(
    random_inception_weights: Path, inception: InceptionFeatureExtractor, no_network: list[int]
):
    cached = _inception.hub_weights_path()
    cached.parent.mkdir(parents=True)
    shutil.copyfile(random_inception_weights, cached)
    try:
        extractor = load_inception(device="cpu")
        # pytorch-gan-metrics itself loads the same file, so the random file has its format.
        library_network = gan_metrics_inception.InceptionV3([3, 4])
    finally:
        cached.unlink()

    assert no_network == []
    _assert_same_weights(extractor, inception)
    library_state = library_network.state_dict()
    for name, tensor in inception.network.state_dict().items():
        assert torch.equal(tensor, library_state[name]), name


def test_local_file_not_copied_to_hub(random_inception_weights: Path, no_network: list[int]):
    load_inception(random_inception_weights, "cpu")

    assert not _inception.hub_weights_path().exists()


def test_torchvision_weights_rejected(tmp_path: Path, no_network: list[int]):
    # torchvision's inception_v3 layout: an auxiliary classifier and 1000 classes.
    torchvision_network = torchvision.models.inception_v3(weights=None, init_weights=False)
    path = tmp_path / "torchvision_inception.pth"
    torch.save(torchvision_network.state_dict(), path)

    with pytest.raises(ValueError, match="torchvision's inception_v3 weights are not accepted"):
        load_inception(path, "cpu")


def test_non_state_dict_rejected(tmp_path: Path, no_network: list[int]):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)

    with pytest.raises(ValueError, match="contains a Tensor"):
        load_inception(path, "cpu")


def test_library_loader_restored(tmp_path: Path, random_inception_weights: Path):
    original = gan_metrics_inception.load_state_dict_from_url
    path = tmp_path / "tensor.pth"
    torch.save({"unexpected": torch.zeros(1)}, path)

    load_inception(random_inception_weights, "cpu")
    assert gan_metrics_inception.load_state_dict_from_url is original
    with pytest.raises(ValueError):
        load_inception(path, "cpu")
    assert gan_metrics_inception.load_state_dict_from_url is original

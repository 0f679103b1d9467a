"""Fixtures for the metrics tests: random Inception weights and an untouched torch hub cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from metrics_helpers import ToyFeatureExtractor

from score_guidance.metrics import InceptionFeatureExtractor, load_inception
from score_guidance.metrics._inception import save_random_inception_weights


@pytest.fixture(autouse=True)
def torch_home_stays_empty(_isolated_caches: None) -> Iterator[None]:
    """Fail a test that writes anything into the temporary torch hub cache."""
    torch_home = Path(os.environ["TORCH_HOME"])
    yield
    written = sorted(str(path) for path in torch_home.rglob("*") if path.is_file())
    assert written == [], f"the test wrote into TORCH_HOME: {written}"


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a randomly initialised pt_inception-2015-12-05 state dict, saved once."""
    path = tmp_path_factory.mktemp("inception") / "random_pt_inception.pth"
    return save_random_inception_weights(path, seed=0)


@pytest.fixture(scope="session")
def inception(random_inception_weights: Path) -> InceptionFeatureExtractor:
    """The real FID Inception network with random weights, on the CPU."""
    return load_inception(random_inception_weights, "cpu", allow_download=False)


@pytest.fixture
def toy_extractor() -> ToyFeatureExtractor:
    return ToyFeatureExtractor()

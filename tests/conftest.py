"""Shared test set-up: no network, no writes into the user's caches, small seeded tensors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Hub downloads fail at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR10_JPEG = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Point the torch hub cache at a temporary folder so that no test fills the real one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    torch.manual_seed(0)


def requires_cifar10_jpeg() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not CIFAR10_JPEG.is_dir(),
        reason=f"the CIFAR-10 JPEG copy is not at {CIFAR10_JPEG}",
    )

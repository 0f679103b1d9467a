"""Shared test set-up: no network, no writes into the user's caches, small seeded tensors."""

from __future__ import annotations

import os

import pytest
import torch

# Hub downloads fail at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Point the torch hub cache at a temporary folder so that no test fills the real one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    torch.manual_seed(0)

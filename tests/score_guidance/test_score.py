from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from score_guidance import inception_score, inception_score_splits


def _numpy_inception_score(logits: np.ndarray) -> float:
    """Float64 reference: exp(mean KL(p_i || p_bar)) straight from the definition."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    p_bar = p.mean(axis=0, keepdims=True)
    kl = (p * (np.log(p) - np.log(p_bar))).sum(axis=1)
    return float(np.exp(kl.mean()))


def test_identical_rows_score_one():
    logits = torch.randn(1, 10).repeat(16, 1)
    assert inception_score(logits).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("num_samples", [2, 5, 10])
def test_distinct_one_hot_rows_score_n(num_samples: int):
    logits = torch.eye(10)[:num_samples] * 1000.0
    assert inception_score(logits).item() == pytest.approx(num_samples, rel=1e-6)


def test_one_hot_spread_over_k_classes_scores_k():
    # 12 one-hot rows over 4 classes, 3 per class: the score is 4, not 12.
    logits = torch.eye(4).repeat(3, 1) * 500.0
    assert inception_score(logits).item() == pytest.approx(4.0, rel=1e-6)


def test_one_hot_gradient_is_finite():
    logits = (torch.eye(8) * 1e4).requires_grad_()
    inception_score(logits).backward()
    assert torch.isfinite(logits.grad).all()


def test_matches_numpy_float64_reference():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 100, generator=generator) * 3.0
    expected = _numpy_inception_score(logits.double().numpy())
    assert inception_score(logits).item() == pytest.approx(expected, rel=1e-5)
    assert inception_score(logits.double()).item() == pytest.approx(expected, rel=1e-12)


def test_gradient_passes_gradcheck():
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(inception_score, (logits,))


def test_bfloat16_autocast_computes_in_float32():
    logits = torch.randn(32, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        score = inception_score(logits.bfloat16())
    assert score.dtype == torch.float32
    assert score.item() == pytest.approx(inception_score(logits.bfloat16().float()).item())


def test_score_is_bounded_by_batch_size():
    logits = torch.randn(8, 1000) * 50.0
    assert 1.0 <= inception_score(logits).item() <= 8.0 + 1e-4


@pytest.mark.parametrize(
    "logits",
    [torch.randn(1, 10), torch.randn(10), torch.randn(2, 3, 4), torch.ones(4, 3, dtype=torch.long)],
    ids=["one-sample", "1-d", "3-d", "integer"],
)
def test_invalid_logits_raise(logits: torch.Tensor):
    with pytest.raises(ValueError):
        inception_score(logits)


def test_splits_match_per_chunk_scores():
    logits = torch.randn(103, 7, generator=torch.Generator().manual_seed(2))
    mean, std = inception_score_splits(logits, splits=4)
    chunks = np.array_split(logits.double().numpy(), 4)
    expected = np.array([_numpy_inception_score(chunk) for chunk in chunks])
    assert mean == pytest.approx(expected.mean(), rel=1e-5)
    assert std == pytest.approx(expected.std(), rel=1e-4)


def test_splits_of_identical_rows_have_zero_spread():
    mean, std = inception_score_splits(torch.zeros(40, 10), splits=10)
    assert mean == pytest.approx(1.0)
    assert std == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("splits", [0, -1, 11, 2.5, True])
def test_invalid_splits_raise(splits):
    with pytest.raises(ValueError):
        inception_score_splits(torch.randn(20, 5), splits=splits)


def test_nan_free_for_extreme_logits():
    logits = torch.tensor([[1e30, -1e30], [-1e30, 1e30]])
    assert not math.isnan(inception_score(logits).item())

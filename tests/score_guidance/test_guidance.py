from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from score_guidance import GuidanceStats, ModuleEvaluator, ScoreGuidanceLoss, inception_score


class LinearClassifier(nn.Module):
    """Logits are a fixed linear map of the mean colour, so scores are easy to steer."""

    def __init__(self, num_classes: int = 6) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(
                torch.randn(num_classes, 3, generator=torch.Generator().manual_seed(3)) * 4
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


def _evaluator() -> ModuleEvaluator:
    return ModuleEvaluator(LinearClassifier(), mean=(0.5,) * 3, std=(0.5,) * 3, image_size=8)


def _diverse_batch(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1


def test_value_is_minus_weight_times_min_score():
    evaluator = _evaluator()
    guidance = ScoreGuidanceLoss(evaluator, weight=0.5)
    fake, real = _diverse_batch() * 0.3, torch.rand(8, 3, 8, 8) * 2 - 1

    loss = guidance(fake, real)

    fake_score = inception_score(evaluator(fake)).item()
    real_score = inception_score(evaluator(real)).item()
    assert loss.item() == pytest.approx(-0.5 * min(fake_score, real_score), rel=1e-6)
    assert guidance.last == GuidanceStats(
        pytest.approx(fake_score), pytest.approx(real_score), fake_score >= real_score
    )


def test_gradient_zero_when_fake_above_reference():
    guidance = ScoreGuidanceLoss(_evaluator(), weight=0.5, reference=1.0)
    fake = _diverse_batch().requires_grad_()
    guidance(fake).backward()
    assert guidance.last.capped
    assert torch.count_nonzero(fake.grad) == 0


def test_gradient_nonzero_below_reference():
    guidance = ScoreGuidanceLoss(_evaluator(), weight=0.5, reference=6.0)
    fake = _diverse_batch().requires_grad_()
    guidance(fake).backward()
    assert not guidance.last.capped
    assert fake.grad.abs().sum() > 0


def test_gradient_raises_the_fake_score():
    evaluator = _evaluator()
    guidance = ScoreGuidanceLoss(evaluator, weight=1.0, reference=None)
    fake = (_diverse_batch() * 0.1).requires_grad_()
    before = inception_score(evaluator(fake)).item()
    guidance(fake).backward()
    with torch.no_grad():
        stepped = (fake - 0.05 * fake.grad.sign()).clamp(-1, 1)
    assert inception_score(evaluator(stepped)).item() > before


def test_real_batch_gets_no_gradient():
    guidance = ScoreGuidanceLoss(_evaluator())
    fake = (_diverse_batch() * 0.1).requires_grad_()
    real = _diverse_batch().requires_grad_()
    guidance(fake, real).backward()
    assert real.grad is None


def test_batch_reference_caps_at_real_score():
    evaluator = _evaluator()
    guidance = ScoreGuidanceLoss(evaluator, weight=2.0)
    real = torch.zeros(8, 3, 8, 8) - 0.5  # identical images score 1
    fake = _diverse_batch().requires_grad_()
    loss = guidance(fake, real)
    assert loss.item() == pytest.approx(-2.0, rel=1e-6)
    loss.backward()
    assert torch.count_nonzero(fake.grad) == 0


def test_uncapped_reference_warns_and_reports_nan(caplog):
    with caplog.at_level(logging.WARNING, logger="score_guidance"):
        guidance = ScoreGuidanceLoss(_evaluator(), reference=None)
    assert "without a cap" in caplog.text
    guidance(_diverse_batch())
    assert math.isnan(guidance.last.reference_score)
    assert not guidance.last.capped


def test_last_is_none_before_first_call():
    assert ScoreGuidanceLoss(_evaluator()).last is None
    assert ScoreGuidanceLoss(_evaluator()).last_scores is None


def test_last_scores_match_last():
    guidance = ScoreGuidanceLoss(_evaluator(), reference=3.0)
    guidance(_diverse_batch())
    fake_score, reference_score = guidance.last_scores
    assert fake_score.item() == pytest.approx(guidance.last.fake_score)
    assert reference_score.item() == 3.0
    assert not fake_score.requires_grad


def test_batch_reference_needs_real():
    with pytest.raises(ValueError, match="needs the real batch"):
        ScoreGuidanceLoss(_evaluator())(_diverse_batch())


def test_different_batch_sizes_raise():
    with pytest.raises(ValueError, match="same size"):
        ScoreGuidanceLoss(_evaluator())(_diverse_batch(8), _diverse_batch(6))


def test_single_image_batch_raises():
    with pytest.raises(ValueError, match="at least 2"):
        ScoreGuidanceLoss(_evaluator(), reference=2.0)(_diverse_batch(1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight": -0.1},
        {"weight": float("nan")},
        {"reference": "dataset"},
        {"reference": 0.5},
        {"reference": float("inf")},
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ScoreGuidanceLoss(_evaluator(), **kwargs)


def test_guidance_adds_nothing_to_state_dict():
    model = nn.ModuleDict({"net": nn.Linear(2, 2), "guidance": ScoreGuidanceLoss(_evaluator())})
    assert sorted(model.state_dict()) == ["net.bias", "net.weight"]


def test_bfloat16_autocast_stays_finite_and_close():
    evaluator = _evaluator()
    guidance = ScoreGuidanceLoss(evaluator, reference=None)
    fake = _diverse_batch()
    full = guidance(fake).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = guidance(fake)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(full, rel=2e-2)

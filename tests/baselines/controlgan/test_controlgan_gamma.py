from __future__ import annotations

import math

import pytest

from baselines.controlgan import AdaptiveClassificationWeight


def test_gamma_defaults():
    gamma = AdaptiveClassificationWeight()
    assert (gamma.r, gamma.alpha, gamma.gamma_max, gamma.value) == (1e-4, 1.0, 0.1, 0.0)


def test_gamma_update_arithmetic():
    gamma = AdaptiveClassificationWeight(r=0.01, alpha=0.5, gamma_max=1.0, initial=0.02)
    # 0.02 + 0.01 * (2.0 - 0.5 * 1.0) = 0.035
    assert gamma.update(2.0, 1.0) == pytest.approx(0.035)
    assert gamma.value == pytest.approx(0.035)


def test_gamma_clips_at_gamma_max():
    gamma = AdaptiveClassificationWeight(r=0.1, gamma_max=0.1, initial=0.05)
    assert gamma.update(5.0, 0.0) == 0.1


def test_gamma_clips_at_zero():
    gamma = AdaptiveClassificationWeight(r=0.1, initial=0.05)
    assert gamma.update(0.0, 5.0) == 0.0


def test_gamma_accumulates_over_updates():
    gamma = AdaptiveClassificationWeight(r=1e-4)
    for _ in range(3):
        gamma.update(2.5, 2.0)
    assert gamma.value == pytest.approx(3 * 1e-4 * 0.5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"r": -1e-4}, "r"),
        ({"r": math.nan}, "r"),
        ({"alpha": -1.0}, "alpha"),
        ({"gamma_max": 0.0}, "gamma_max"),
        ({"gamma_max": -0.1}, "gamma_max"),
        ({"gamma_max": math.inf}, "gamma_max"),
        ({"initial": 0.2}, "initial"),
        ({"initial": -0.01}, "initial"),
    ],
)
def test_gamma_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        AdaptiveClassificationWeight(**kwargs)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_gamma_update_rejects_non_finite_loss(bad):
    gamma = AdaptiveClassificationWeight(initial=0.05)
    with pytest.raises(ValueError, match="fake_class_loss"):
        gamma.update(bad, 1.0)
    with pytest.raises(ValueError, match="real_class_loss"):
        gamma.update(1.0, bad)
    assert gamma.value == 0.05


def test_gamma_state_dict_round_trip():
    gamma = AdaptiveClassificationWeight(r=0.01, gamma_max=1.0)
    gamma.update(3.0, 1.0)
    restored = AdaptiveClassificationWeight(r=0.01, gamma_max=1.0)
    restored.load_state_dict(gamma.state_dict())
    assert restored.value == pytest.approx(0.02)


def test_gamma_load_rejects_value_above_gamma_max():
    gamma = AdaptiveClassificationWeight(gamma_max=0.1)
    with pytest.raises(ValueError, match="gamma value"):
        gamma.load_state_dict({"value": 0.5})
    with pytest.raises(ValueError, match="'value'"):
        gamma.load_state_dict({})

"""The adaptive weight gamma_t of ControlGAN's classification loss in the generator loss."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["AdaptiveClassificationWeight"]


def _finite_float(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a finite number, got {value!r}") from error
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number}")
    return number


class AdaptiveClassificationWeight:
    """Equilibrium controller for gamma_t, the weight of CE(C(G(z, y)), y) in the generator loss.

    After every generator iteration:

        gamma <- clip(gamma + r * (L_C(fake) - alpha * L_C(real)), 0, gamma_max)

    gamma grows while the classifier finds generated images harder to classify than real ones,
    and shrinks otherwise.

    Args:
        r: Step size of the update (1e-4 by default; the 2018 ControlGAN code used 1e-3).
        alpha: Target ratio of the fake to the real classification loss.
        gamma_max: Upper clip of gamma (0.1 in ScoreGAN; the 2018 ControlGAN code used 2).
        initial: Starting value, in [0, gamma_max].

    Raises:
        ValueError: a value is not finite, ``r`` or ``alpha`` is negative, ``gamma_max`` is not
            positive, or ``initial`` lies outside [0, gamma_max]. The message names the value.
    """

    def __init__(
        self, r: float = 1e-4, alpha: float = 1.0, gamma_max: float = 0.1, initial: float = 0.0
    ) -> None:
        self.r = _finite_float("r", r)
        self.alpha = _finite_float("alpha", alpha)
        self.gamma_max = _finite_float("gamma_max", gamma_max)
        if self.r < 0:
            raise ValueError(f"r must be non-negative, got {self.r}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")
        if self.gamma_max <= 0:
            raise ValueError(f"gamma_max must be positive, got {self.gamma_max}")
        self._value = self._check_value("initial", initial)

    def _check_value(self, name: str, value: float) -> float:
        number = _finite_float(name, value)
        if not 0.0 <= number <= self.gamma_max:
            raise ValueError(f"{name} must lie in [0, gamma_max={self.gamma_max}], got {number}")
        return number

    @property
    def value(self) -> float:
        """Current gamma_t."""
        return self._value

    def update(self, fake_class_loss: float, real_class_loss: float) -> float:
        """Apply one update with the classifier's losses on fake and real batches; return gamma.

        Raises:
            ValueError: a loss is not finite. gamma is left unchanged.
        """
        fake_loss = _finite_float("fake_class_loss", fake_class_loss)
        real_loss = _finite_float("real_class_loss", real_class_loss)
        proposed = self._value + self.r * (fake_loss - self.alpha * real_loss)
        self._value = min(max(proposed, 0.0), self.gamma_max)
        return self._value

    def state_dict(self) -> dict[str, float]:
        """Return the current value and the hyperparameters."""
        return {"value": self._value, "r": self.r, "alpha": self.alpha, "gamma_max": self.gamma_max}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the value from :meth:`state_dict`, keeping this object's hyperparameters.

        Raises:
            ValueError: the value is missing, not finite or outside [0, gamma_max].
        """
        if "value" not in state:
            raise ValueError(f"gamma state has no 'value' entry, got keys {sorted(state)}")
        self._value = self._check_value("gamma value", state["value"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(value={self._value}, r={self.r}, alpha={self.alpha}, "
            f"gamma_max={self.gamma_max})"
        )

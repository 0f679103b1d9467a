"""The score-guidance loss term of ScoreGAN."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._evaluators import Evaluator
from ._score import inception_score

__all__ = ["GuidanceStats", "ScoreGuidanceLoss"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuidanceStats:
    """Scores of the last :class:`ScoreGuidanceLoss` call, as plain floats for logging.

    Attributes:
        fake_score: Batch Inception score of the generated images under the evaluator.
        reference_score: The cap: the real batch's score, the fixed float, or NaN when uncapped.
        capped: True when ``fake_score >= reference_score``, so the term had zero gradient.
    """

    fake_score: float
    reference_score: float
    capped: bool


class ScoreGuidanceLoss(nn.Module):
    """Regularised Inception-score term that guides a generator with a frozen evaluator.

    ``loss = -weight * min(IS_E(real), IS_E(fake))``, where IS_E is the batch Inception score
    under the evaluator E (:func:`~score_guidance.inception_score`). Add it to a generator's
    loss. Minimising it raises the fake batch's score until it reaches the real batch's. Past
    that point the ``min`` returns the real score, a constant, and the gradient is exactly zero.
    That cap keeps the generator from chasing the evaluator beyond what real data scores.

    Args:
        evaluator: A frozen :class:`~score_guidance.Evaluator`.
        weight: delta, the non-negative weight of the term (0.5 in ScoreGAN).
        reference: ``"batch"`` (default) caps at the score of the real batch passed to each
            call, computed without gradients. A float caps at that fixed score, and ``real`` is
            then not needed. ``None`` maximises the fake score without a cap, which is known to
            drive the generator towards adversarial images for the evaluator.

    Shapes:
        fake: (N, C, H, W) in the evaluator's ``input_range``, N >= 2.
        real: the same batch size N as ``fake``, because a batch score depends on N.
        Returns a scalar tensor (float32, also under ``torch.autocast``).

    After each call, :attr:`last` holds a :class:`GuidanceStats`. Reading it synchronises with
    the device, so read it only when logging, or read the tensors of :attr:`last_scores`.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        weight: float = 0.5,
        reference: str | float | None = "batch",
    ) -> None:
        super().__init__()
        if not isinstance(evaluator, nn.Module):
            raise TypeError(
                f"evaluator must be an Evaluator (an nn.Module), got {type(evaluator).__name__}; "
                "build one with score_guidance.build_evaluator()"
            )
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight (delta) must be finite and non-negative, got {weight}")
        if isinstance(reference, str):
            if reference != "batch":
                raise ValueError(
                    f"reference must be 'batch', a float score >= 1, or None, got {reference!r}"
                )
        elif reference is not None:
            reference = float(reference)
            if not math.isfinite(reference) or reference < 1.0:
                raise ValueError(
                    f"a fixed reference score must be finite and at least 1 (the lowest "
                    f"possible Inception score), got {reference}"
                )
        else:
            _logger.warning(
                "ScoreGuidanceLoss(reference=None) maximises the evaluator's score without a "
                "cap; generators trained this way tend to produce adversarial images for the "
                "evaluator. Use reference='batch' unless you study that failure mode."
            )
        self.evaluator = evaluator
        self.weight = weight
        self.reference = reference
        self._last: tuple[Tensor, Tensor | None] | None = None

    @property
    def last_scores(self) -> tuple[Tensor, Tensor | None] | None:
        """Detached (fake score, reference score) tensors of the last call, without a sync.

        A training loop can stack them with its other scalars and read all at once. The
        reference is None when the term is uncapped.
        """
        return self._last

    @property
    def last(self) -> GuidanceStats | None:
        """Scores of the last call, or None before the first call."""
        if self._last is None:
            return None
        fake_score, reference_score = self._last
        fake = fake_score.item()
        if reference_score is None:
            return GuidanceStats(fake, math.nan, False)
        reference = reference_score.item()
        return GuidanceStats(fake, reference, fake >= reference)

    def reference_score(self, real: Tensor | None, batch_size: int) -> Tensor | None:
        """Return the cap for a fake batch of ``batch_size`` images (no gradient)."""
        if self.reference is None:
            return None
        if isinstance(self.reference, float):
            return torch.tensor(self.reference)
        if real is None:
            raise ValueError(
                "reference='batch' needs the real batch: call guidance(fake, real), or build "
                "ScoreGuidanceLoss with a fixed float reference"
            )
        if real.shape[0] != batch_size:
            raise ValueError(
                f"fake and real batches must have the same size because the batch score depends "
                f"on it; got {batch_size} fake and {real.shape[0]} real images"
            )
        with torch.no_grad():
            return inception_score(self.evaluator(real))

    def forward(self, fake: Tensor, real: Tensor | None = None) -> Tensor:
        """Return ``-weight * min(IS_E(real), IS_E(fake))`` for a generated batch ``fake``."""
        if not isinstance(fake, Tensor) or fake.dim() == 0:
            raise ValueError("fake must be a batch of images (N, C, H, W)")
        reference = self.reference_score(real, fake.shape[0])
        fake_score = inception_score(self.evaluator(fake))
        if reference is None:
            score = fake_score
        else:
            reference = reference.to(fake_score)
            score = torch.minimum(fake_score, reference)
        self._last = (fake_score.detach(), None if reference is None else reference.detach())
        return -self.weight * score

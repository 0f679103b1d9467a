"""Any ``Evaluator`` as the feature network of the Inception score and the Fréchet distance.

ScoreGAN (Lee and Seok, 2020) guides with MobileNetV2 and judges with Inception, a different
network. With a judge trained on the user's own data (see ``python -m
score_guidance.train_evaluator``), the score uses the judge's class probabilities and the
distance uses its penultimate features.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .._evaluators import Evaluator, build_evaluator


class EvaluatorFeatureExtractor:
    """An ``Evaluator`` as a ``FeatureExtractor``: penultimate features and softmax probabilities.

    Images arrive in [0, 1] and are mapped to the evaluator's ``input_range`` before its own
    resizing and normalisation. Features are the output of ``forward_features`` (for a timm or
    torchvision classifier, the pooled features before the last linear layer) and the
    probabilities are the softmax of ``forward_head`` on them, computed in float32.

    Args:
        evaluator: The judge network. It is used in eval mode and never trained.
        device: Where the judge runs; the evaluator's current device when omitted.
    """

    def __init__(self, evaluator: Evaluator, device: torch.device | str | None = None) -> None:
        if not isinstance(evaluator, Evaluator):
            raise TypeError(
                f"evaluator must be a score_guidance.Evaluator, got {type(evaluator).__name__}; "
                "wrap a plain classifier in ModuleEvaluator first"
            )
        if device is None:
            parameter = next(iter(evaluator.backbone.parameters()), None)
            device = parameter.device if parameter is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.evaluator = evaluator.to(self.device)
        self.num_classes = evaluator.num_classes

    @property
    def name(self) -> str:
        """The evaluator's name, for logs and result files."""
        return self.evaluator.name

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        low, high = self.evaluator.input_range
        images = images.to(self.device, torch.float32)
        with torch.inference_mode():
            features = self.evaluator.forward_features(images * (high - low) + low)
            logits = self.evaluator.forward_head(features)
        features = features.float().flatten(start_dim=1)
        return features, torch.softmax(logits.float(), dim=1)


def load_judge(
    spec: str,
    checkpoint_path: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    *,
    image_size: int | None = None,
) -> EvaluatorFeatureExtractor:
    """Build the judge ``spec`` (as in ``build_evaluator``) as a feature extractor on ``device``.

    With ``checkpoint_path`` the weights come from that local file, for example one written by
    ``python -m score_guidance.train_evaluator``; without it the pretrained weights are fetched.

    Raises:
        ValueError: an unknown spec, or a weights file that does not match it.
        score_guidance.PretrainedWeightsUnavailableError: pretrained weights cannot be fetched.
    """
    evaluator = build_evaluator(
        spec,
        pretrained=checkpoint_path is None,
        checkpoint_path=checkpoint_path,
        image_size=image_size,
    )
    return EvaluatorFeatureExtractor(evaluator, device)

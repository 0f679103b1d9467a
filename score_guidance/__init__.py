"""Guide GAN training with frozen pretrained evaluator networks (ScoreGAN).

The public names are re-exported here; the underscore-prefixed modules are internal.
"""

from ._checkpoint import InvalidCheckpointError
from ._evaluators import (
    DEFAULT_EVALUATOR,
    Evaluator,
    ModuleEvaluator,
    PretrainedWeightsUnavailableError,
    TimmEvaluator,
    TorchvisionEvaluator,
    build_evaluator,
    list_evaluator_sources,
    register_evaluator,
)
from ._guidance import GuidanceStats, ScoreGuidanceLoss
from ._score import inception_score, inception_score_splits

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_EVALUATOR",
    "Evaluator",
    "GuidanceStats",
    "InvalidCheckpointError",
    "ModuleEvaluator",
    "PretrainedWeightsUnavailableError",
    "ScoreGuidanceLoss",
    "TimmEvaluator",
    "TorchvisionEvaluator",
    "__version__",
    "build_evaluator",
    "inception_score",
    "inception_score_splits",
    "list_evaluator_sources",
    "register_evaluator",
]

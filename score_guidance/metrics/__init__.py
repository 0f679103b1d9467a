"""Inception score and FID evaluation, built on pytorch-gan-metrics 0.5.3.

The network is pytorch-gan-metrics' FID Inception (``pt_inception-2015-12-05``, 1008 classes).
Unlike that library, this module loads the weights from a local file, runs on any device
including the CPU, streams generated images, and checks its inputs. Any ``Evaluator`` can replace
the Inception network as the judge (``load_judge``). See ``docs/metrics.md``.
"""

from ._compute import (
    InceptionScoreAndFID,
    compute_reference_statistics,
    inception_score_and_fid,
)
from ._generate import GeneratedImages, generate_images
from ._inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILENAME,
    FeatureExtractor,
    InceptionFeatureExtractor,
    load_inception,
)
from ._judge import EvaluatorFeatureExtractor, load_judge
from ._statistics import (
    ReferenceStatistics,
    UnreliableMetricWarning,
    frechet_distance,
    inception_score_from_probabilities,
    load_reference_statistics,
)

__all__ = [
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILENAME",
    "EvaluatorFeatureExtractor",
    "FeatureExtractor",
    "GeneratedImages",
    "InceptionFeatureExtractor",
    "InceptionScoreAndFID",
    "ReferenceStatistics",
    "UnreliableMetricWarning",
    "compute_reference_statistics",
    "frechet_distance",
    "generate_images",
    "inception_score_and_fid",
    "inception_score_from_probabilities",
    "load_inception",
    "load_judge",
    "load_reference_statistics",
]

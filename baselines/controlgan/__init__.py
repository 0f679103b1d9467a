"""ControlGAN (Lee and Seok, 2019), the baseline of ScoreGAN, for 32x32 images.

Build the networks with :func:`build_networks`, train them with :class:`ControlGANTrainer`
(ScoreGAN when ``TrainConfig.score_guidance`` is on), and load a trained generator with
:func:`load_generator`.
"""

from ._base import BaseNetwork
from ._layers import ConditionalBatchNorm2d
from .augment import augment_images
from .checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    load_checkpoint,
    load_generator,
    save_checkpoint,
)
from .gamma import AdaptiveClassificationWeight
from .losses import (
    classification_loss,
    gradient_penalty,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from .networks import (
    DATASET_NUM_CLASSES,
    Classifier,
    ControlGANConfig,
    ControlGANNetworks,
    Discriminator,
    Generator,
    build_networks,
)
from .sampling import batchnorm_batch_statistics, sample_images, sample_labels, sample_latents
from .train_config import TrainConfig
from .trainer import (
    ControlGANTrainer,
    GeneratorLossTerms,
    GuidanceLoss,
    NonFiniteLossError,
    build_guidance,
)

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "DATASET_NUM_CLASSES",
    "AdaptiveClassificationWeight",
    "BaseNetwork",
    "Classifier",
    "ConditionalBatchNorm2d",
    "ControlGANConfig",
    "ControlGANNetworks",
    "ControlGANTrainer",
    "Discriminator",
    "Generator",
    "GeneratorLossTerms",
    "GuidanceLoss",
    "NonFiniteLossError",
    "TrainConfig",
    "augment_images",
    "batchnorm_batch_statistics",
    "build_guidance",
    "build_networks",
    "classification_loss",
    "gradient_penalty",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "load_checkpoint",
    "load_generator",
    "sample_images",
    "sample_labels",
    "sample_latents",
    "save_checkpoint",
]

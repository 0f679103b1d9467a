"""Hyperparameters of ControlGAN and ScoreGAN training."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from .augment import PADDING_MODES, PaddingMode
from .gamma import AdaptiveClassificationWeight
from .losses import GRADIENT_PENALTY_TYPES, GradientPenaltyType

__all__ = [
    "AMP_MODES",
    "CLASSIFIER_LR_SCHEDULES",
    "AmpMode",
    "ClassifierLRSchedule",
    "TrainConfig",
]

ClassifierLRSchedule = Literal["constant", "linear"]
CLASSIFIER_LR_SCHEDULES: tuple[str, ...] = get_args(ClassifierLRSchedule)
AmpMode = Literal["auto", "off", "bf16", "fp16"]
AMP_MODES: tuple[str, ...] = get_args(AmpMode)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of ControlGAN and ScoreGAN training.

    The defaults are the CIFAR settings of Lee and Seok, "Score-Guided Generative Adversarial
    Networks" (2020). Values that the paper does not give are marked *inferred*.

    Attributes:
        batch_size: Real and generated images per step. Every real batch must have this size.
        iterations: Generator iterations of a full run, the length of the ``"linear"``
            classifier schedule. The trainer itself does not stop.
        n_dis: Discriminator steps per generator iteration.
        lr_g, lr_d: Adam learning rates of the generator and discriminator (TTUR).
        betas: Adam betas of the generator and discriminator.
        lr_decay_at: Iteration after which ``lr_g`` and ``lr_d`` are multiplied by
            ``lr_decay_factor``. None keeps them constant.
        lr_decay_factor: Factor of that decay, in (0, 1].
        lr_c, betas_c: Adam learning rate and betas of the classifier (*inferred*).
        lr_c_schedule: ``"constant"``, or ``"linear"`` decay to 0 at ``iterations`` as in the
            2018 ControlGAN code (*inferred*).
        gp_weight: Weight of the gradient penalty in the discriminator loss. 0 disables it.
        gp_type: ``"wgan-gp"`` or ``"zero-centered"`` (*inferred*: the paper names no form).
        gamma_r, gamma_alpha, gamma_max, gamma_initial: Parameters of the gamma_t rule, see
            :class:`AdaptiveClassificationWeight` (r and alpha *inferred*).
        score_guidance: Add the score-guidance term (ScoreGAN). False trains ControlGAN.
        delta: Weight of the score-guidance term.
        evaluator: Evaluator spec for ``build_guidance``, e.g. ``"timm:mobilenetv2_100"``.
        guidance_reference: Cap of the guided score: ``"batch"`` (the real batch's score), a
            fixed float score, or None for no cap.
        dequantize: Add uniform noise U(0, 1/128), one quantisation step of 8-bit pixels in
            [-1, 1], to the discriminator's real batches, as the 2018 ControlGAN code did. The
            classifier and the guidance term get the batch without noise, because the noise
            pushes values above 1, outside the evaluator's input range.
        augment_flip, augment_max_shift, augment_padding: Classifier augmentation, see
            :func:`augment_images` (*inferred*).
        seed: Seed of the trainer's RNG, which draws z, y, interpolation weights, dequantisation
            noise and augmentations.
        ema_decay: Decay of an exponential moving average of the generator's weights, kept
            beside the raw generator for sampling and evaluation, e.g. 0.999. None keeps no
            average. The ScoreGAN paper did not use one.
        amp: Mixed precision of the forward passes: ``"bf16"``, ``"fp16"`` (with gradient
            scaling), ``"off"`` (float32), or ``"auto"``: bf16 on CUDA (fp16 where the GPU has
            no bf16), off elsewhere. The gradient penalty, the batch score and the losses stay
            in float32 in every mode.
        channels_last: Keep the networks, the real batches and the evaluator in channels-last
            memory format. None turns it on for CUDA only.
        compile: Run the training forward passes of G, D and C through ``torch.compile``. The
            gradient penalty's forward pass of D stays eager, because compiled graphs do not
            support the double backward it needs.

    ``amp``, ``channels_last`` and ``compile`` are speed settings: a resumed run may change
    them.
    """

    batch_size: int = 64
    iterations: int = 100_000
    n_dis: int = 5
    lr_g: float = 2e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.9)
    lr_decay_at: int | None = 50_000
    lr_decay_factor: float = 0.5
    lr_c: float = 1e-3
    betas_c: tuple[float, float] = (0.9, 0.999)
    lr_c_schedule: ClassifierLRSchedule = "constant"
    gp_weight: float = 10.0
    gp_type: GradientPenaltyType = "wgan-gp"
    gamma_r: float = 1e-4
    gamma_alpha: float = 1.0
    gamma_max: float = 0.1
    gamma_initial: float = 0.0
    score_guidance: bool = False
    delta: float = 0.5
    evaluator: str = "timm:mobilenetv2_100"
    guidance_reference: str | float | None = "batch"
    dequantize: bool = False
    augment_flip: bool = True
    augment_max_shift: float = 0.1
    augment_padding: PaddingMode = "reflect"
    seed: int = 0
    ema_decay: float | None = None
    amp: AmpMode = "off"
    channels_last: bool | None = False
    compile: bool = False

    def __post_init__(self) -> None:
        self._validate_schedule()
        self._validate_losses()
        _require(
            self.ema_decay is None or 0.0 < self.ema_decay < 1.0,
            f"ema_decay must lie in (0, 1) or be None, got {self.ema_decay}",
        )
        _require(self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        _require(
            0.0 <= self.augment_max_shift < 0.5,
            f"augment_max_shift must lie in [0, 0.5), got {self.augment_max_shift}",
        )
        _require(
            self.augment_padding in PADDING_MODES,
            f"augment_padding must be one of {PADDING_MODES}, got {self.augment_padding!r}",
        )

    def _validate_schedule(self) -> None:
        for name in ("batch_size", "iterations", "n_dis"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be a positive integer, got {value!r}",
            )

        for name in ("lr_g", "lr_d", "lr_c"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, f"{name} must be positive, got {value}")
        for name in ("betas", "betas_c"):
            value = getattr(self, name)
            _require(
                len(value) == 2 and all(0.0 <= beta < 1.0 for beta in value),
                f"{name} must be two numbers in [0, 1), got {value}",
            )

        _require(
            self.lr_decay_at is None or self.lr_decay_at >= 1,
            f"lr_decay_at must be a positive iteration or None, got {self.lr_decay_at}",
        )
        _require(
            0.0 < self.lr_decay_factor <= 1.0,
            f"lr_decay_factor must lie in (0, 1], got {self.lr_decay_factor}",
        )
        _require(
            self.lr_c_schedule in CLASSIFIER_LR_SCHEDULES,
            f"lr_c_schedule must be one of {CLASSIFIER_LR_SCHEDULES}, got {self.lr_c_schedule!r}",
        )

    def _validate_losses(self) -> None:
        _require(
            math.isfinite(self.gp_weight) and self.gp_weight >= 0,
            f"gp_weight must be non-negative, got {self.gp_weight}",
        )
        _require(
            self.gp_type in GRADIENT_PENALTY_TYPES,
            f"gp_type must be one of {GRADIENT_PENALTY_TYPES}, got {self.gp_type!r}",
        )
        _require(
            math.isfinite(self.delta) and self.delta >= 0,
            f"delta must be non-negative, got {self.delta}",
        )
        # The gamma_t rule validates its own parameters.
        self.build_gamma()

    def build_gamma(self) -> AdaptiveClassificationWeight:
        """Build the gamma_t rule from the ``gamma_*`` fields."""
        return AdaptiveClassificationWeight(
            r=self.gamma_r,
            alpha=self.gamma_alpha,
            gamma_max=self.gamma_max,
            initial=self.gamma_initial,
        )

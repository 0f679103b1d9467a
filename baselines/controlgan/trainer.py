"""Training of ControlGAN, and of ScoreGAN when score guidance is on.

One call of :meth:`ControlGANTrainer.train_step` runs one generator iteration: ``n_dis``
discriminator steps, one generator step, one classifier step and the update of gamma_t.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parametrize

from score_guidance import ScoreGuidanceLoss, build_evaluator

from .augment import augment_images
from .checkpoint import CHECKPOINT_FORMAT_VERSION
from .distributed import all_gather_objects, is_distributed, rank_seed
from .ema import GeneratorEMA
from .losses import (
    classification_loss,
    gradient_penalty,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from .networks import Classifier, Discriminator, Generator
from .sampling import sample_images, sample_labels, sample_latents
from .speed import Precision, compile_network, resolve_amp_dtype, resolve_channels_last
from .train_config import TrainConfig

__all__ = [
    "ControlGANTrainer",
    "GeneratorLossTerms",
    "GuidanceLoss",
    "NonFiniteLossError",
    "TrainConfig",
    "build_guidance",
]

logger = logging.getLogger(__name__)

# One uint8 quantisation step of pixels mapped to [-1, 1]: 2 / 256.
_DEQUANTIZATION_STEP = 1.0 / 128.0


class GuidanceLoss(Protocol):
    """The score-guidance term of the generator loss, e.g. ``score_guidance.ScoreGuidanceLoss``.

    A call returns ``-delta * RIS(fake)`` as a scalar tensor. ``last_scores`` holds the
    detached (fake score, reference score) tensors of the last call, the reference being None
    when the score is uncapped.
    """

    @property
    def last_scores(self) -> tuple[Tensor, Tensor | None] | None: ...

    def __call__(self, fake_images: Tensor, real_images: Tensor) -> Tensor: ...


def build_guidance(
    config: TrainConfig, device: torch.device | str | None = None, **evaluator_kwargs: Any
) -> ScoreGuidanceLoss:
    """Build the score-guidance term that ``config`` describes.

    ``evaluator_kwargs`` go to ``score_guidance.build_evaluator``, e.g. ``pretrained=False``
    or ``checkpoint_path=...``. ``channels_last`` defaults to ``config.channels_last`` on
    ``device``.
    """
    if "channels_last" not in evaluator_kwargs:
        target = torch.device(device) if device is not None else torch.device("cpu")
        evaluator_kwargs["channels_last"] = resolve_channels_last(config.channels_last, target)
    evaluator = build_evaluator(config.evaluator, **evaluator_kwargs)
    guidance = ScoreGuidanceLoss(
        evaluator, weight=config.delta, reference=config.guidance_reference
    )
    return guidance.to(device)


class GeneratorLossTerms(NamedTuple):
    """The generator loss and its three terms, as tensors with graphs.

    ``total == adversarial + gamma * classification + guidance``.
    """

    total: Tensor
    adversarial: Tensor
    classification: Tensor
    guidance: Tensor
    gamma: float


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite.

    Attributes:
        name: Key of the loss in the metrics of :meth:`ControlGANTrainer.train_step`.
        value: The non-finite value.
        iteration: The generator iteration, counted from 1, in which it occurred.
    """

    def __init__(self, name: str, value: float, iteration: int) -> None:
        self.name = name
        self.value = value
        self.iteration = iteration
        super().__init__(
            f"{name} is {value} at generator iteration {iteration}. The optimisers already "
            "applied this iteration's updates, so resume from the last checkpoint, and check "
            "the input data or lower the learning rates"
        )


_STATE_KEYS = (
    "iteration",
    "generator",
    "discriminator",
    "classifier",
    "optimizer_g",
    "optimizer_d",
    "optimizer_c",
    "scheduler_g",
    "scheduler_d",
    "scheduler_c",
    "gamma",
    "rng",
)

# Order in which losses are checked, so the error names the earliest failing loss.
_FINITE_CHECK_ORDER = (
    "loss_d",
    "gp",
    "loss_g_adversarial",
    "class_loss_fake",
    "guidance_term",
    "loss_g",
    "loss_c",
)


class ControlGANTrainer:
    """Training loop of ControlGAN's generator, discriminator and classifier (and of ScoreGAN).

    The generator loss is ``L_G = -mean(D(G(z, y))) + gamma_t * CE(C(G(z, y)), y)``, plus
    ``-delta * RIS(G(z, y))`` when ``config.score_guidance`` is on (ScoreGAN). See
    :meth:`generator_loss`.

    The networks must already be on the training device, which the trainer reads from the
    generator. The raw networks stay in :attr:`generator`, :attr:`discriminator` and
    :attr:`classifier`, which checkpoints and sampling use. The step that updates a network
    runs it through :attr:`generator_forward`, :attr:`discriminator_forward` or
    :attr:`classifier_forward`: the network itself, ``torch.compile`` of it with
    ``config.compile``, and that wrapped in ``DistributedDataParallel`` when distributed.
    Other steps run a network without the ``DistributedDataParallel`` wrapper: D and C in the
    generator step, and G without gradients in the discriminator step. So no gradient
    synchronisation or unused-parameter search starts for weights that a step does not
    update.

    Mixed precision (``config.amp``) runs the forward passes under ``torch.autocast``. The
    gradient penalty with its double backward, the batch score and every loss stay in
    float32. A float16 run scales each network's loss with its own ``torch.amp.GradScaler``.

    Every random draw of training comes from :attr:`rng`, a ``torch.Generator`` on the device
    that ``config.seed`` seeds and :meth:`state_dict` saves. Each rank of a distributed run
    seeds it with its own seed (see ``rank_seed``), rank 0 with ``config.seed``. With the same
    networks, data and seed, two runs on the CPU give bitwise identical weights.

    The guidance's evaluator checks the values of its inputs in the first iteration only,
    because each check synchronises with the device. That iteration catches real batches in
    [0, 1] instead of [-1, 1]. Later generator outputs cannot leave the tanh range except as
    NaN, which the loss check reports.

    Args:
        generator, discriminator, classifier: The networks, e.g. from ``build_networks``.
        config: Training hyperparameters.
        guidance: The score-guidance term, required exactly when ``config.score_guidance`` is
            on (see :func:`build_guidance`). It is not part of the trainer's state and is
            never wrapped in ``DistributedDataParallel``.
        distributed: Synchronise the networks over the default process group with
            ``DistributedDataParallel``. None (the default) does so when a process group of
            more than one rank is initialised.

    Raises:
        ValueError: the networks are on different devices or disagree on the number of
            classes, ``guidance`` does not match ``config``, or ``distributed`` is True
            without a process group.
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        classifier: Classifier,
        config: TrainConfig | None = None,
        guidance: GuidanceLoss | None = None,
        *,
        distributed: bool | None = None,
    ) -> None:
        config = config or TrainConfig()
        self.config = config
        self.device = generator.device
        self._check_networks(generator, discriminator, classifier)
        self._check_guidance(guidance)
        self.distributed = is_distributed() if distributed is None else distributed
        if self.distributed and not is_distributed():
            raise ValueError(
                "distributed=True needs an initialised process group of more than one rank; "
                "start the script with torchrun and call torch.distributed.init_process_group"
            )
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1

        self.generator = generator
        self.discriminator = discriminator
        self.classifier = classifier
        self.guidance = guidance
        self.precision = Precision(
            resolve_amp_dtype(config.amp, self.device),
            self.device,
            ("generator", "discriminator", "classifier"),
        )
        self.channels_last = resolve_channels_last(config.channels_last, self.device)
        if self.channels_last:
            for network in (generator, discriminator, classifier):
                network.to(memory_format=torch.channels_last)
        self._generator_parameters = list(generator.parameters())
        self._discriminator_parameters = list(discriminator.parameters())
        self._classifier_parameters = list(classifier.parameters())

        # Build the optimisers and learning-rate schedules
        self.optimizer_g = self._build_adam(self._generator_parameters, config.lr_g, config.betas)
        self.optimizer_d = self._build_adam(
            self._discriminator_parameters, config.lr_d, config.betas
        )
        self.optimizer_c = self._build_adam(
            self._classifier_parameters, config.lr_c, config.betas_c
        )
        self.scheduler_g = self._build_step_decay(self.optimizer_g)
        self.scheduler_d = self._build_step_decay(self.optimizer_d)
        self.scheduler_c = self._build_classifier_schedule()

        # Route the forward passes through torch.compile and DistributedDataParallel
        self._build_forwards()
        self.ema = GeneratorEMA(generator, config.ema_decay) if config.ema_decay else None

        self.gamma = config.build_gamma()
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(rank_seed(config.seed, self.rank))
        self.iteration = 0
        self._evaluator_checks_pending = True
        logger.info(
            "ControlGAN trainer on %s: G %d, D %d, C %d parameters, score guidance %s, "
            "precision %s, channels-last %s, compile %s, EMA %s, rank %d of %d",
            self.device,
            generator.count_parameters(),
            discriminator.count_parameters(),
            classifier.count_parameters(),
            "on" if guidance is not None else "off",
            self.precision.dtype or torch.float32,
            "on" if self.channels_last else "off",
            "on" if config.compile else "off",
            config.ema_decay or "off",
            self.rank,
            self.world_size,
        )

    def _check_networks(
        self, generator: Generator, discriminator: Discriminator, classifier: Classifier
    ) -> None:
        for name, network in (("discriminator", discriminator), ("classifier", classifier)):
            if network.device != self.device:
                raise ValueError(
                    f"the {name} is on {network.device} but the generator is on {self.device}; "
                    "move all networks to the training device first"
                )
        if classifier.num_classes != generator.num_classes:
            raise ValueError(
                f"the classifier has {classifier.num_classes} classes but the generator "
                f"{generator.num_classes}; build both with the same num_classes"
            )

    def _check_guidance(self, guidance: GuidanceLoss | None) -> None:
        if self.config.score_guidance and guidance is None:
            raise ValueError(
                "config.score_guidance is on but no guidance module was passed; build one with "
                "build_guidance(config, device)"
            )
        if not self.config.score_guidance and guidance is not None:
            raise ValueError(
                "a guidance module was passed but config.score_guidance is off; set "
                "score_guidance=True to train ScoreGAN, or pass guidance=None for ControlGAN"
            )
        weight = getattr(guidance, "weight", None)
        if weight is not None and not math.isclose(float(weight), self.config.delta):
            raise ValueError(
                f"the guidance module's weight is {float(weight)} but config.delta is "
                f"{self.config.delta}; build the guidance with weight=config.delta"
            )

    def _build_adam(
        self, parameters: list[nn.Parameter], lr: float, betas: tuple[float, float]
    ) -> torch.optim.Adam:
        # The fused CUDA kernel updates all parameters at once and takes a float16 run's
        # gradient scale on the device, so GradScaler.step does not synchronise.
        fused = True if self.device.type == "cuda" else None
        return torch.optim.Adam(parameters, lr=lr, betas=betas, fused=fused)

    def _build_step_decay(
        self, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler:
        milestones = [] if self.config.lr_decay_at is None else [self.config.lr_decay_at]
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=milestones, gamma=self.config.lr_decay_factor
        )

    def _build_classifier_schedule(self) -> torch.optim.lr_scheduler.LRScheduler:
        iterations = self.config.iterations
        if self.config.lr_c_schedule == "linear":
            return torch.optim.lr_scheduler.LambdaLR(
                self.optimizer_c, lambda step: max(0.0, 1.0 - step / iterations)
            )
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer_c, lambda step: 1.0)

    def _build_forwards(self) -> None:
        networks = {
            "generator": self.generator,
            "discriminator": self.discriminator,
            "classifier": self.classifier,
        }
        plain: dict[str, Callable[..., Tensor]] = dict(networks)
        if self.config.compile:
            plain = {name: compile_network(network) for name, network in networks.items()}
        updating = dict(plain)
        # NOTE: compile together with DistributedDataParallel is untested, and so is
        # DistributedDataParallel on CUDA with NCCL. The tests run gloo on the CPU.
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            for name, forward in plain.items():
                # By default the wrapper broadcasts rank 0's buffers (spectral norm's vectors,
                # cBN's running statistics) to every rank before each forward pass through it.
                updating[name] = DistributedDataParallel(forward, device_ids=device_ids)
        self.generator_forward: Callable[..., Tensor] = updating["generator"]
        self.discriminator_forward: Callable[..., Tensor] = updating["discriminator"]
        self.classifier_forward: Callable[..., Tensor] = updating["classifier"]
        self._passthrough_forwards = plain
        # Compiled graphs have no double backward, so the gradient penalty runs D eagerly.
        self._penalty_forward: Callable[..., Tensor] = self.discriminator

    def wrap_networks(self, wrap: Callable[[nn.Module], Callable[..., Tensor]]) -> None:
        """Route every training forward pass through ``wrap(network)``.

        ``wrap`` replaces the forwards that ``config.compile`` set up, including the gradient
        penalty's forward pass of D. The raw networks, their parameters, the optimisers and
        checkpoints are unchanged.

        Raises:
            ValueError: the trainer is distributed, because the wrappers would replace the
                ``DistributedDataParallel`` ones.
        """
        if self.distributed:
            raise ValueError(
                "wrap_networks would replace the DistributedDataParallel wrappers of a "
                "distributed trainer; use config.compile for torch.compile instead"
            )
        self.generator_forward = wrap(self.generator)
        self.discriminator_forward = wrap(self.discriminator)
        self.classifier_forward = wrap(self.classifier)
        self._passthrough_forwards = {
            "generator": self.generator_forward,
            "discriminator": self.discriminator_forward,
            "classifier": self.classifier_forward,
        }
        self._penalty_forward = self.discriminator_forward

    # Draw random inputs

    def sample_latents(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Draw z ~ N(0, I) and uniform labels y from the trainer's RNG."""
        return sample_latents(
            batch_size,
            self.generator.z_dim,
            self.generator.num_classes,
            device=self.device,
            generator=self.rng,
        )

    def _next_real_batch(self, data: Iterator[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        try:
            images, labels = next(data)
        except StopIteration as error:
            raise RuntimeError(
                "the data iterator is exhausted; pass an endless iterator of (images, labels) "
                "batches, e.g. one that restarts the DataLoader after each epoch"
            ) from error
        if images.shape[0] != self.config.batch_size or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"expected real batches of {self.config.batch_size} images and labels, got "
                f"{images.shape[0]} images and {labels.shape[0]} labels; use "
                "DataLoader(..., drop_last=True) with batch_size=config.batch_size"
            )
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def _dequantize(self, images: Tensor) -> Tensor:
        noise = torch.rand(images.shape, generator=self.rng, device=self.device, dtype=images.dtype)
        return images + noise * _DEQUANTIZATION_STEP

    # Compute the losses and update the networks

    def generator_loss(self, z: Tensor, y: Tensor, real_images: Tensor) -> GeneratorLossTerms:
        """Compute ``L_G = -mean(D(G(z, y))) + gamma_t * CE(C(G(z, y)), y) - delta * RIS(G(z, y))``.

        The guidance module returns the last term with its sign and delta. Without score
        guidance that term is 0 and L_G is ControlGAN's generator loss. ``real_images`` is the
        real batch whose evaluator score caps RIS, with the batch size of ``z``.

        D and C run without their ``DistributedDataParallel`` wrappers, because this loss
        updates only G. Every term is a float32 scalar, also under mixed precision.
        """
        gamma = self.gamma.value
        with self.precision.autocast():
            fake_images = self.generator_forward(z, y)
            fake_logits = self._passthrough_forwards["discriminator"](fake_images)
            class_logits = self._passthrough_forwards["classifier"](fake_images)
            if self.guidance is None:
                guidance = torch.zeros((), device=self.device)
            else:
                guidance = self.guidance(fake_images, real_images)

        adversarial = hinge_generator_loss(fake_logits.float())
        classification = classification_loss(class_logits.float(), y)
        total = adversarial + gamma * classification + guidance
        return GeneratorLossTerms(total, adversarial, classification, guidance, gamma)

    def _discriminator_step(self, real_images: Tensor) -> tuple[Tensor, Tensor]:
        if self.config.dequantize:
            real_images = self._dequantize(real_images)
        z, y = self.sample_latents(real_images.shape[0])
        with torch.no_grad(), self.precision.autocast():
            fake_images = self._passthrough_forwards["generator"](z, y)
        # Under autocast G returns bfloat16 or float16 images, and the penalty needs float32.
        fake_images = fake_images.to(real_images.dtype)

        # Compute the spectral-normalised weights once, so that the hinge loss and the gradient
        # penalty see the same weights and spectral norm runs one power iteration per step.
        with parametrize.cached():
            with self.precision.autocast():
                logits = self.discriminator_forward(torch.cat([real_images, fake_images]))
            real_logits, fake_logits = logits.float().chunk(2)
            loss = hinge_discriminator_loss(real_logits, fake_logits)
            if self.config.gp_weight > 0:
                # D runs eagerly, because compiled graphs have no double backward, and in
                # float32, so that gradient norms near 1 keep their precision.
                with self.precision.full_precision():
                    penalty = gradient_penalty(
                        self._penalty_forward,
                        real_images,
                        fake_images,
                        gp_type=self.config.gp_type,
                        generator=self.rng,
                    )
                loss = loss + self.config.gp_weight * penalty
            else:
                penalty = torch.zeros((), device=self.device)

        self.precision.backward_and_step(
            "discriminator", loss, self.optimizer_d, self._discriminator_parameters
        )
        return loss.detach(), penalty.detach()

    def _generator_step(self, z: Tensor, y: Tensor, real_images: Tensor) -> GeneratorLossTerms:
        terms = self.generator_loss(z, y, real_images)
        # Only the generator's gradients are computed: D and C stay untouched by this step.
        self.precision.backward_and_step(
            "generator", terms.total, self.optimizer_g, self._generator_parameters
        )
        if self.ema is not None:
            self.ema.update(self.generator)
        return terms

    def _classifier_step(self, real_images: Tensor, real_labels: Tensor) -> Tensor:
        augmented = augment_images(
            real_images,
            flip=self.config.augment_flip,
            max_shift_fraction=self.config.augment_max_shift,
            padding=self.config.augment_padding,
            generator=self.rng,
        )
        if self.channels_last:
            augmented = augmented.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            logits = self.classifier_forward(augmented)
        loss = classification_loss(logits.float(), real_labels)
        self.precision.backward_and_step(
            "classifier", loss, self.optimizer_c, self._classifier_parameters
        )
        return loss.detach()

    def train_step(self, data: Iterator[tuple[Tensor, Tensor]]) -> dict[str, float]:
        """Run one generator iteration and return its losses and settings as floats.

        The iteration runs ``n_dis`` discriminator steps, each on a new real batch from
        ``data`` and new (z, y). Then come one generator step on new (z, y), one classifier
        step on the augmented last real batch, the gamma update and the learning-rate
        schedules. The generator step uses the classifier before its update, and the
        classifier's loss is read before its own update, so both losses of the gamma rule come
        from the same classifier. The score of the last real batch caps the guidance term.

        Args:
            data: Endless iterator of (images, labels) with images in [-1, 1] of shape
                (batch_size, 3, H, W), on any device.

        Returns:
            A dict with these keys:

            - ``loss_d`` (hinge + gp_weight * gp) and ``gp``, averaged over the n_dis steps.
            - ``loss_g`` and its terms ``loss_g_adversarial`` and ``class_loss_fake``.
            - ``loss_c`` and ``class_loss_real``. They are equal, because the classifier's
              training loss before its update is L_C(real).
            - ``gamma``, the value used in this iteration's ``loss_g``.
            - ``lr_g``, ``lr_d`` and ``lr_c`` used in this iteration.
            - With score guidance: ``guidance_term``, ``guidance_fake_score``,
              ``guidance_reference_score`` and ``guidance_capped`` (1.0 or 0.0).

            In a distributed run the losses and scores are means over ranks, the same on
            every rank, and ``guidance_capped`` is the fraction of ranks whose term was
            capped.

        Raises:
            NonFiniteLossError: a loss is NaN or infinite. gamma, the schedules and
                :attr:`iteration` are not advanced, but the optimisers have stepped.
            ValueError: a real batch does not have ``config.batch_size`` images.
            RuntimeError: ``data`` is exhausted.
        """
        config = self.config
        iteration = self.iteration + 1
        self.generator.train()
        self.discriminator.train()
        self.classifier.train()

        # Train the discriminator
        loss_d_sum = torch.zeros((), device=self.device)
        penalty_sum = torch.zeros((), device=self.device)
        for _ in range(config.n_dis):
            real_images, real_labels = self._next_real_batch(data)
            loss_d, penalty = self._discriminator_step(real_images)
            loss_d_sum += loss_d
            penalty_sum += penalty

        # Train the generator, then the classifier
        z, y = self.sample_latents(config.batch_size)
        terms = self._generator_step(z, y, real_images)
        loss_c = self._classifier_step(real_images, real_labels)

        metrics = self._collect_metrics(
            loss_d_sum / config.n_dis, penalty_sum / config.n_dis, terms, loss_c, iteration
        )

        # Advance gamma, the schedules and the counter
        self.gamma.update(metrics["class_loss_fake"], metrics["class_loss_real"])
        for scheduler in (self.scheduler_g, self.scheduler_d, self.scheduler_c):
            scheduler.step()
        self.iteration = iteration
        if self._evaluator_checks_pending:
            self._stop_evaluator_checks()
        return metrics

    def _collect_metrics(
        self,
        loss_d: Tensor,
        penalty: Tensor,
        terms: GeneratorLossTerms,
        loss_c: Tensor,
        iteration: int,
    ) -> dict[str, float]:
        # Read the losses and scores with one device synchronisation, after one all-reduce
        # when distributed.
        values = {
            "loss_d": loss_d,
            "gp": penalty,
            "loss_g": terms.total.detach(),
            "loss_g_adversarial": terms.adversarial.detach(),
            "class_loss_fake": terms.classification.detach(),
            "loss_c": loss_c,
        }
        if self.guidance is not None:
            values["guidance_term"] = terms.guidance.detach()
            values.update(self._guidance_scores())
        stacked = torch.stack([value.float() for value in values.values()])
        if self.distributed:
            # Sum and divide, because gloo has no averaging all-reduce.
            dist.all_reduce(stacked)
            stacked /= self.world_size
        metrics = dict(zip(values, stacked.tolist(), strict=True))
        for name in _FINITE_CHECK_ORDER:
            if name in metrics and not math.isfinite(metrics[name]):
                raise NonFiniteLossError(name, metrics[name], iteration)

        metrics["class_loss_real"] = metrics["loss_c"]
        metrics["gamma"] = terms.gamma
        metrics["lr_g"] = self.optimizer_g.param_groups[0]["lr"]
        metrics["lr_d"] = self.optimizer_d.param_groups[0]["lr"]
        metrics["lr_c"] = self.optimizer_c.param_groups[0]["lr"]
        return metrics

    def _guidance_scores(self) -> dict[str, Tensor]:
        scores = self.guidance.last_scores  # type: ignore[union-attr]
        if scores is None:
            raise RuntimeError("the guidance module recorded no scores in the generator step")
        fake_score, reference_score = scores
        if reference_score is None:
            # Uncapped: there is no reference, and the term is never capped.
            reference_score = torch.full_like(fake_score, math.nan)
            capped = torch.zeros_like(fake_score)
        else:
            capped = (fake_score >= reference_score).to(fake_score.dtype)
        return {
            "guidance_fake_score": fake_score,
            "guidance_reference_score": reference_score,
            "guidance_capped": capped,
        }

    def _stop_evaluator_checks(self) -> None:
        # The first iteration has checked the real and fake batches' shapes and ranges.
        self._evaluator_checks_pending = False
        evaluator = getattr(self.guidance, "evaluator", None)
        if getattr(evaluator, "validate_inputs", False):
            evaluator.validate_inputs = False  # type: ignore[union-attr]
            logger.debug("The evaluator checked the first iteration's inputs; checks now off")

    # Generate images for evaluation

    def sample(
        self,
        num_samples: int,
        labels: Tensor | None = None,
        *,
        eval_mode: bool = True,
        batch_size: int | None = None,
        seed: int = 0,
        use_ema: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Generate ``num_samples`` images and return them with their labels.

        Labels are drawn uniformly unless given. z and the labels come from a new RNG seeded
        with ``seed``, never from the training RNG, so sampling does not change training, and
        the same seed gives the same z at every checkpoint. ``eval_mode=True`` (the default)
        makes cBN use running statistics. False makes it use the statistics of each batch of
        ``batch_size`` images (default ``config.batch_size``). See :func:`sample_images`.
        ``use_ema=True`` samples from the moving average of the generator's weights.

        Raises:
            ValueError: ``use_ema`` is set but ``config.ema_decay`` is None, or ``labels`` has
                the wrong shape.
        """
        if use_ema and self.ema is None:
            raise ValueError("use_ema=True needs a moving average: set TrainConfig.ema_decay")
        generator = self.ema.generator if use_ema else self.generator  # type: ignore[union-attr]
        rng = torch.Generator(device=self.device)
        rng.manual_seed(seed)
        if labels is None:
            labels = sample_labels(
                num_samples, self.generator.num_classes, device=self.device, generator=rng
            )
        elif labels.shape != (num_samples,):
            raise ValueError(f"labels must have shape ({num_samples},), got {tuple(labels.shape)}")
        images = sample_images(
            generator,
            labels,
            batch_size=batch_size or self.config.batch_size,
            eval_mode=eval_mode,
            rng=rng,
        )
        return images, labels

    # Save and restore the training state

    def state_dict(self) -> dict[str, Any]:
        """Return the training state: networks, optimisers, schedules, gamma, RNG, iteration.

        Also the moving average of the generator (``generator_ema``) when there is one, and
        the gradient scalers of a float16 run. The evaluator of the guidance module is not
        included. Store the result with ``save_checkpoint``, whose file ``load_generator``
        reads.

        The networks are the raw ones, so the state loads on any number of ranks. In a
        distributed run this is a collective, to be called on every rank. ``rng`` is this
        rank's RNG state, and ``rank_rngs`` contains those of all ranks, ordered by rank.
        """
        state = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "iteration": self.iteration,
            "train_config": dataclasses.asdict(self.config),
            "generator": self.generator.checkpoint_entry(),
            "discriminator": self.discriminator.checkpoint_entry(),
            "classifier": self.classifier.checkpoint_entry(),
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "optimizer_c": self.optimizer_c.state_dict(),
            "scheduler_g": self.scheduler_g.state_dict(),
            "scheduler_d": self.scheduler_d.state_dict(),
            "scheduler_c": self.scheduler_c.state_dict(),
            "gamma": self.gamma.state_dict(),
            "rng": self.rng.get_state(),
            "grad_scalers": self.precision.state_dict(),
        }
        if self.ema is not None:
            state["generator_ema"] = self.ema.checkpoint_entry()
        if self.distributed:
            state["rank_rngs"] = all_gather_objects(self.rng.get_state())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`, so that training continues exactly where it stopped.

        The learning-rate schedules continue as saved. This trainer keeps its own config and
        ignores the saved ``train_config``. A state without a moving average of the generator
        starts the average at the loaded generator.

        Each rank takes its own RNG state from ``rank_rngs``. A rank that the saved run did
        not have gets a new seed from ``config.seed``, its rank and the iteration.

        Raises:
            ValueError: ``state`` has another format version, lacks an entry, or contains
                networks built with other sizes than this trainer's.
        """
        version = state.get("format_version")
        if version != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"expected trainer state of format version {CHECKPOINT_FORMAT_VERSION}, got "
                f"{version!r}"
            )
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"trainer state is missing the entries {missing}")

        for name, network in (
            ("generator", self.generator),
            ("discriminator", self.discriminator),
            ("classifier", self.classifier),
        ):
            saved_config = dict(state[name]["config"])
            if saved_config != network.config:
                raise ValueError(
                    f"the {name} in the state was built with {saved_config}, but this trainer's "
                    f"with {network.config}; build the networks with the saved sizes"
                )
            network.load_state_dict(state[name]["state_dict"])

        if self.ema is not None:
            if "generator_ema" in state:
                self.ema.load_checkpoint_entry(state["generator_ema"])
            else:
                logger.warning("The state has no moving average; starting it at the generator")
                self.ema.copy_from(self.generator)

        for optimizer, key in (
            (self.optimizer_g, "optimizer_g"),
            (self.optimizer_d, "optimizer_d"),
            (self.optimizer_c, "optimizer_c"),
        ):
            fused = [group["fused"] for group in optimizer.param_groups]
            optimizer.load_state_dict(state[key])
            # A state saved on another device type keeps this device's Adam implementation.
            for group, setting in zip(optimizer.param_groups, fused, strict=True):
                group["fused"] = setting
        self.scheduler_g.load_state_dict(state["scheduler_g"])
        self.scheduler_d.load_state_dict(state["scheduler_d"])
        self.scheduler_c.load_state_dict(state["scheduler_c"])
        self.precision.load_state_dict(state.get("grad_scalers", {}))
        self.gamma.load_state_dict(state["gamma"])
        self.iteration = int(state["iteration"])
        self._load_rng(state)
        logger.info("Restored trainer state at iteration %d", self.iteration)

    def _load_rng(self, state: Mapping[str, Any]) -> None:
        rank_states = state.get("rank_rngs") or [state["rng"]]
        if self.rank < len(rank_states):
            self.rng.set_state(rank_states[self.rank].cpu())
            return
        seed = rank_seed(self.config.seed, self.rank, iteration=self.iteration)
        logger.info("The state has no RNG state of rank %d; seeding it with %d", self.rank, seed)
        self.rng.manual_seed(seed)

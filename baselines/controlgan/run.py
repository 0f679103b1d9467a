"""A complete ControlGAN/ScoreGAN training run: data, checkpoints, logs, samples, evaluation.

:func:`train` drives :class:`~baselines.controlgan.ControlGANTrainer` for a run described by a
:class:`RunConfig` and writes everything into one output folder::

    OUT/config.json            the run's settings
    OUT/checkpoints/           the last ``keep_checkpoints`` checkpoints, written atomically
    OUT/metrics.csv            every logged scalar, one row per logged iteration
    OUT/evaluation.csv         Inception score and FID at each evaluation
    OUT/tensorboard/           TensorBoard event files
    OUT/samples/               sample grids from a fixed noise batch, one column per class
    OUT/curves.png             Inception score and FID against iterations, when evaluations ran

A run stopped by SIGINT or SIGTERM saves a checkpoint first, and ``resume=True`` continues it
with bitwise the same result on the CPU as an uninterrupted run.

Started by ``torchrun`` with several processes, :func:`train` joins the process group and
trains with ``DistributedDataParallel`` (see :mod:`baselines.controlgan.distributed`). Rank 0
alone writes checkpoints, logs, samples and evaluations. The ranks stop together when any of
them receives a signal. A checkpoint resumes on any number of ranks.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torchvision
from tqdm.auto import tqdm

from score_guidance import InvalidCheckpointError, ScoreGuidanceLoss

from .checkpoint import load_checkpoint, save_checkpoint
from .data import check_image_dataset, load_image_dataset
from .distributed import (
    ShardedBatchStream,
    any_rank,
    broadcast_object,
    get_rank,
    get_world_size,
    init_from_environment,
    is_distributed,
    local_rank,
)
from .networks import ControlGANConfig, build_networks
from .sampling import batchnorm_batch_statistics
from .trainer import ControlGANTrainer, NonFiniteLossError, TrainConfig, build_guidance

__all__ = ["RunConfig", "RunResult", "RunSetupError", "train", "find_checkpoints"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_CHECKPOINT_PATTERN = "checkpoint_*.pt"
# Settings that may change when a run is resumed; every other setting must match the checkpoint.
_RESUMABLE_SETTINGS = frozenset(
    {
        "out",
        "data_dir",
        "num_workers",
        "device",
        "resume",
        "evaluator_weights",
        "eval_every",
        "eval_samples",
        "fid_stats",
        "inception_weights",
        "judge",
        "judge_weights",
        "sample_every",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "show_progress",
        "train.iterations",
        "train.amp",
        "train.channels_last",
        "train.compile",
    }
)


class RunSetupError(RuntimeError):
    """The run cannot start: bad output folder, checkpoint, data or configuration."""


@dataclass
class RunConfig:
    """Settings of a training run besides the networks' and the trainer's hyperparameters.

    Attributes:
        out: Output folder.
        network: Sizes of G, D and C.
        train: Trainer hyperparameters, including ``score_guidance`` and ``iterations``.
        dataset, data_dir: ``"cifar10"``, ``"cifar100"`` or ``"imagefolder"``, and its folder.
        image_size, resize: Image side, and whether images of another size are resized.
        limit_images: Train on a random subset of this many images.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        seed: Seeds the networks' initialisation, the data order and the trainer's RNG.
        resume: Continue from the newest readable checkpoint in ``out``.
        evaluator_weights, pretrained_evaluator, evaluator_image_size: How the guidance
            evaluator is built (``checkpoint_path``, ``pretrained`` and ``image_size``).
        eval_every, eval_samples: Evaluation period in iterations (0 disables) and sample count.
        fid_stats, inception_weights: FID reference statistics and local Inception weights.
        judge, judge_weights: Evaluate with this evaluator spec (and local weights file) in
            place of the Inception network; ``fid_stats`` must then hold the judge's features.
        sample_every, sample_batch_statistics: Grid period, and whether cBN samples with batch
            statistics (True) or running statistics (False) for grids and evaluation.
        checkpoint_every, keep_checkpoints: Checkpoint period and how many files are kept.
        log_every: Iterations between rows of ``metrics.csv`` and TensorBoard points.
        deterministic: Call ``torch.use_deterministic_algorithms(True)``.
    """

    out: Path
    network: ControlGANConfig = field(default_factory=ControlGANConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dataset: str = "cifar10"
    data_dir: Path = Path("data")
    image_size: int = 32
    resize: bool = False
    limit_images: int | None = None
    num_workers: int = 2
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    evaluator_weights: Path | None = None
    pretrained_evaluator: bool = True
    evaluator_image_size: int | None = None
    eval_every: int = 5000
    eval_samples: int = 10_000
    fid_stats: Path | None = None
    inception_weights: Path | None = None
    judge: str | None = None
    judge_weights: Path | None = None
    sample_every: int = 1000
    sample_batch_statistics: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    show_progress: bool = True
    deterministic: bool = False

    def __post_init__(self) -> None:
        for name in ("checkpoint_every", "keep_checkpoints", "log_every", "eval_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("eval_every", "sample_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be 0 (off) or a positive integer, got {value!r}")
        if self.judge_weights is not None and self.judge is None:
            raise ValueError(
                f"judge_weights={str(self.judge_weights)!r} needs judge, the evaluator spec of "
                "that file, e.g. judge='timm:resnet18' (--judge timm:resnet18)"
            )

    def settings(self) -> dict[str, Any]:
        """Return the settings as a flat JSON-compatible dict (``network.*`` and ``train.*``)."""
        flat: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, dict):
                flat.update({f"{key}.{name}": _plain(item) for name, item in value.items()})
            else:
                flat[key] = _plain(value)
        return flat


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass
class RunResult:
    """What a finished or stopped run produced."""

    iteration: int
    interrupted: bool
    last_checkpoint: Path | None
    metrics: dict[str, float]
    evaluations: list[dict[str, float]]


def find_checkpoints(out: Path) -> list[Path]:
    """Return the checkpoints in ``out/checkpoints``, oldest first."""
    return sorted((out / "checkpoints").glob(_CHECKPOINT_PATTERN))


def _device_type(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


def _resolve_device(name: str) -> torch.device:
    device = torch.device(_device_type(name))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunSetupError(
            "--device cuda was requested but CUDA is not available; use --device cpu"
        )
    if device.type == "cuda" and is_distributed():
        # torchrun starts one process per GPU of a machine.
        return torch.device("cuda", local_rank())
    return device


# Save and restore every RNG


def _rng_states(device: torch.device) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
        # Only the training device's state: reading every GPU's would create a CUDA context on
        # each GPU of the machine in every rank.
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
    }


def _restore_rng_states(states: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"][0], device)


@contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """Record SIGINT and SIGTERM in the yielded list instead of stopping at once.

    A second signal of the same kind stops the process as usual.
    """
    received: list[int] = []
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        signal.signal(signum, previous[signum])
        logger.warning(
            "Received %s: saving a checkpoint after this iteration (send it again to stop now)",
            signal.Signals(signum).name,
        )

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # Not the main thread: signals stay with the caller.
            pass
    try:
        yield received
    finally:
        for signum, old_handler in previous.items():
            signal.signal(signum, old_handler)


class _Run:
    """State of one call of :func:`train` on one rank."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.out = Path(config.out)
        self.device = _resolve_device(config.device)
        self.rank = get_rank()
        self.world_size = get_world_size()
        self.is_main = self.rank == 0
        if self.device.type == "cuda" and self.world_size > 1:
            # NCCL's object collectives run on the current device, which must be this rank's.
            torch.cuda.set_device(self.device)
        self.evaluations: list[dict[str, float]] = []
        self.last_checkpoint: Path | None = None
        self._evaluation_off = config.eval_every == 0
        self._inception: Any = None

    # Coordinate the ranks

    def _call_on_rank_zero(self, function: Callable[[], _T]) -> _T | None:
        # A collective: rank 0 calls function and sends the other ranks whether it raised, so
        # that they raise too instead of waiting for a collective that never comes.
        result = None
        failure = None
        if self.is_main:
            try:
                result = function()
            except Exception as error:
                failure = f"{type(error).__name__}: {error}"
                broadcast_object(failure)
                raise
        failure = broadcast_object(failure)
        if failure is not None:
            raise RunSetupError(f"rank 0 failed: {failure}")
        return result

    def on_rank_zero(self, function: Callable[[], _T]) -> _T:
        """Call ``function`` on rank 0 only and return its result on every rank."""
        if self.world_size == 1:
            return function()
        return broadcast_object(self._call_on_rank_zero(function))

    def rank_zero_first(self, function: Callable[[], _T]) -> _T:
        """Call ``function`` on rank 0, then on the other ranks, e.g. to download once."""
        if self.world_size == 1:
            return function()
        result = self._call_on_rank_zero(function)
        if not self.is_main:
            result = function()
        return result  # type: ignore[return-value]

    # Set up

    def check_out_folder(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunSetupError(
                f"cannot create the output folder {self.out} ({error}); choose another --out"
            ) from error
        for flag, path in (
            ("--fid-stats", self.config.fid_stats),
            ("--inception-weights", self.config.inception_weights),
            ("--evaluator-weights", self.config.evaluator_weights),
            ("--judge-weights", self.config.judge_weights),
        ):
            if path is not None and not Path(path).is_file():
                raise RunSetupError(f"{flag} {path} not found; pass the path of an existing file")
        existing = find_checkpoints(self.out)
        if existing and not self.config.resume:
            raise RunSetupError(
                f"{self.out} already holds the checkpoints of a run (newest: "
                f"{existing[-1].name}); pass --resume to continue it, or choose another --out"
            )
        if self.config.resume and not existing:
            raise RunSetupError(
                f"--resume was given but {self.out / 'checkpoints'} holds no checkpoint; start "
                "without --resume"
            )

    def build(self) -> None:
        config = self.config
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        elif self.device.type == "cuda":
            # The shapes never change during a run, so cuDNN's autotuner pays off after a
            # few steps.
            torch.backends.cudnn.benchmark = True
        random.seed(config.seed)
        np.random.seed(config.seed)

        # Check the data and build the guidance before decoding, so that a missing dataset or
        # unavailable weights stop the run at once
        self.rank_zero_first(
            lambda: check_image_dataset(
                config.dataset, config.data_dir, image_size=config.image_size, resize=config.resize
            )
        )
        guidance = None
        if config.train.score_guidance:
            if not config.pretrained_evaluator and config.evaluator_weights is None:
                logger.warning(
                    "THE EVALUATOR HAS RANDOM WEIGHTS: score guidance will not mean anything. "
                    "Use this only to test the pipeline."
                )
            # Rank 0 first, so that pretrained weights are downloaded once.
            guidance = self.rank_zero_first(self._build_guidance)

        # Load the data, rank 0 first, so that a download runs once
        dataset = self.rank_zero_first(
            lambda: load_image_dataset(
                config.dataset,
                config.data_dir,
                image_size=config.image_size,
                resize=config.resize,
                limit=config.limit_images,
                seed=config.seed,
                num_workers=config.num_workers,
                show_progress=config.show_progress and self.is_main,
            )
        )
        if dataset.num_classes != config.network.num_classes:
            raise RunSetupError(
                f"the dataset has {dataset.num_classes} classes but the networks are built for "
                f"{config.network.num_classes}; pass --num-classes {dataset.num_classes}"
            )
        self.classes = dataset.classes
        self.stream = ShardedBatchStream(
            dataset,
            config.train.batch_size,
            self.device,
            seed=config.seed,
            rank=self.rank,
            world_size=self.world_size,
        )

        # Build the networks and the trainer
        torch.manual_seed(config.seed)
        networks = build_networks(config.network, self.device)
        if networks.generator.image_size != config.image_size:
            raise RunSetupError(
                f"the generator makes {networks.generator.image_size}-pixel images but the data "
                f"is {config.image_size} pixels; set the generator's bottom width to "
                f"{config.image_size // 8}"
            )
        self.trainer = ControlGANTrainer(
            *networks, config=config.train, guidance=guidance, distributed=self.world_size > 1
        )

    def _build_guidance(self) -> ScoreGuidanceLoss:
        config = self.config
        with torch.random.fork_rng(devices=[]):
            # A random evaluator must be the same network again after a resume.
            torch.manual_seed(config.seed)
            return build_guidance(
                config.train,
                self.device,
                pretrained=config.pretrained_evaluator,
                checkpoint_path=config.evaluator_weights,
                image_size=config.evaluator_image_size,
            )

    def restore(self) -> None:
        """Load the newest readable checkpoint, falling back to older ones.

        Rank 0 reads the file and sends the state to the other ranks, so the output folder
        need not be shared between machines.
        """
        state, path = self.on_rank_zero(self._read_newest_checkpoint)
        self.trainer.load_state_dict(state)
        self.stream.load_state_dict(state["data_stream"])
        _restore_rng_states(state["rng_states"], self.device)
        self.evaluations = list(state.get("evaluations", []))
        self.last_checkpoint = path
        logger.info("Resumed from %s at iteration %d", path, self.trainer.iteration)

    def _read_newest_checkpoint(self) -> tuple[dict[str, Any], Path]:
        candidates = list(reversed(find_checkpoints(self.out)))
        for index, path in enumerate(candidates):
            try:
                state = load_checkpoint(path, map_location="cpu")
            except InvalidCheckpointError as error:
                older = candidates[index + 1].name if index + 1 < len(candidates) else None
                logger.error(
                    "Checkpoint %s is unreadable (%s); %s",
                    path,
                    error,
                    f"falling back to {older}" if older else "no older checkpoint is left",
                )
                continue
            self._check_settings(state.get("run_settings", {}), path)
            return state, path
        raise RunSetupError(
            f"no readable checkpoint in {self.out / 'checkpoints'}; remove the damaged files or "
            "start a new run in another --out"
        )

    def _check_settings(self, saved: dict[str, Any], path: Path) -> None:
        current = self.config.settings()
        differences = [
            f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}"
            for key in sorted(set(saved) | set(current))
            if key not in _RESUMABLE_SETTINGS and saved.get(key) != current.get(key)
        ]
        if differences:
            raise RunSetupError(
                f"{path} was written by a run with other settings: "
                + "; ".join(differences)
                + ". Resume with the same settings, or start a new run in another --out"
            )

    # Write checkpoints, logs, samples and evaluations

    def save(self, metrics: dict[str, float]) -> Path | None:
        """Write a checkpoint on rank 0 and return its path (None on other ranks).

        Every rank must call it, because the trainer gathers the ranks' RNG states.
        """
        state = self.trainer.state_dict()
        if not self.is_main:
            return None
        state["run_settings"] = self.config.settings()
        state["data_stream"] = self.stream.state_dict()
        state["rng_states"] = _rng_states(self.device)
        state["evaluations"] = self.evaluations
        state["last_metrics"] = metrics
        path = self.out / "checkpoints" / f"checkpoint_{self.trainer.iteration:07d}.pt"
        self.last_checkpoint = save_checkpoint(state, path)
        for old in find_checkpoints(self.out)[: -self.config.keep_checkpoints]:
            old.unlink()
        # Remove files of saves that a crash interrupted; only rank 0 writes here.
        for leftover in (self.out / "checkpoints").glob(_CHECKPOINT_PATTERN + ".partial"):
            leftover.unlink(missing_ok=True)
        return path

    def save_samples(self) -> list[Path]:
        """Write a grid of the generator's samples, and one of the moving average's if any."""
        num_classes = self.trainer.generator.num_classes
        rows = 10 if num_classes <= 20 else 4
        labels = torch.arange(num_classes, device=self.device).repeat(rows)
        variants = [("samples", False)]
        if self.trainer.ema is not None:
            variants.append(("samples_ema", True))
        paths = []
        for prefix, use_ema in variants:
            images, _ = self.trainer.sample(
                labels.shape[0],
                labels,
                eval_mode=not self.config.sample_batch_statistics,
                seed=self.config.seed + 1,
                use_ema=use_ema,
            )
            path = self.out / "samples" / f"{prefix}_{self.trainer.iteration:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            torchvision.utils.save_image(
                images, path, nrow=num_classes, normalize=True, value_range=(-1, 1), padding=1
            )
            paths.append(path)
        return paths

    def evaluate(self) -> dict[str, float] | None:
        """Return Inception score and FID of the generator, or None when evaluation is off.

        Evaluation needs ``fid_stats`` and the Inception weights (or the judge's); without
        either it is switched off for the rest of the run with one warning. With a judge, the
        score and the distance use the judge's probabilities and features.
        """
        from score_guidance import PretrainedWeightsUnavailableError, metrics

        config = self.config
        if self._evaluation_off:
            return None
        if config.fid_stats is None:
            return self._switch_off_evaluation("no FID reference statistics (pass --fid-stats)")
        if self._inception is None:
            try:
                if config.judge is not None:
                    self._inception = metrics.load_judge(
                        config.judge, config.judge_weights, self.device
                    )
                else:
                    self._inception = metrics.load_inception(config.inception_weights, self.device)
            except (FileNotFoundError, PretrainedWeightsUnavailableError) as error:
                return self._switch_off_evaluation(str(error))

        generator = self.trainer.generator
        images = metrics.generate_images(
            generator,
            config.eval_samples,
            batch_size=config.train.batch_size,
            num_classes=generator.num_classes,
            device=self.device,
            z_dim=generator.z_dim,
            seed=config.seed + 2,
        )
        if config.sample_batch_statistics:
            bn_mode = batchnorm_batch_statistics(generator)
        else:
            generator.eval()
            bn_mode = contextlib.nullcontext()
        try:
            with bn_mode:
                result = metrics.inception_score_and_fid(
                    images,
                    fid_reference=config.fid_stats,
                    feature_extractor=self._inception,
                    progress=config.show_progress,
                )
        finally:
            generator.train()
        evaluation = {
            "iteration": self.trainer.iteration,
            "inception_score": float(result.inception_score),
            "inception_score_std": float(result.inception_score_std),
            "fid": float(result.fid),
        }
        self.evaluations.append(evaluation)
        return evaluation

    def _switch_off_evaluation(self, reason: str) -> None:
        logger.warning("Skipping evaluation for this run: %s", reason)
        self._evaluation_off = True
        return None

    def write_curves(self) -> Path | None:
        if not self.evaluations:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        iterations = [row["iteration"] for row in self.evaluations]
        figure, (score_axis, fid_axis) = plt.subplots(1, 2, figsize=(10, 4))
        score_axis.errorbar(
            iterations,
            [row["inception_score"] for row in self.evaluations],
            yerr=[row["inception_score_std"] for row in self.evaluations],
            marker="o",
        )
        score_axis.set(xlabel="generator iteration", ylabel="Inception score")
        fid_axis.plot(iterations, [row["fid"] for row in self.evaluations], marker="o")
        fid_axis.set(xlabel="generator iteration", ylabel="FID")
        for axis in (score_axis, fid_axis):
            axis.grid(alpha=0.3)
        figure.suptitle("ScoreGAN" if self.config.train.score_guidance else "ControlGAN")
        figure.tight_layout()
        path = self.out / "curves.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path


class _CsvLog:
    """Append rows to a CSV file, dropping rows past ``start_iteration`` from an earlier run."""

    def __init__(self, path: Path, start_iteration: int) -> None:
        self.path = path
        self.fields: list[str] | None = None
        rows: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as file:
                reader = csv.DictReader(file)
                self.fields = list(reader.fieldnames or [])
                rows = [row for row in reader if int(float(row["iteration"])) <= start_iteration]
        self.file = path.open("w", newline="")
        self.writer: csv.DictWriter | None = None
        if self.fields:
            self._start_writer(self.fields)
            self.writer.writerows(rows)  # type: ignore[union-attr]

    def _start_writer(self, fields: list[str]) -> None:
        self.fields = fields
        self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
        self.writer.writeheader()

    def write(self, row: dict[str, float]) -> None:
        if self.writer is None:
            self._start_writer(list(row))
        self.writer.writerow(row)  # type: ignore[union-attr]
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    shown = {"loss_d": "D", "loss_g": "G", "loss_c": "C", "gamma": "gamma"}
    postfix = {label: f"{metrics[key]:.3f}" for key, label in shown.items() if key in metrics}
    if "guidance_fake_score" in metrics:
        postfix["IS_E"] = f"{metrics['guidance_fake_score']:.2f}"
    return postfix


class _RankZeroOutputs:
    """Metric logs, TensorBoard, progress bar, sample grids and evaluations of rank 0."""

    def __init__(self, run: _Run, start: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        config = run.config
        self.run = run
        self.metrics_log = _CsvLog(run.out / "metrics.csv", start)
        self.evaluation_log = _CsvLog(run.out / "evaluation.csv", start)
        self.tensorboard = SummaryWriter(str(run.out / "tensorboard"), purge_step=start + 1)
        self.progress = tqdm(
            total=config.train.iterations,
            initial=start,
            desc="train",
            unit="it",
            disable=not config.show_progress,
        )
        self.started_at = time.perf_counter()

    def after_iteration(self, iteration: int, metrics: dict[str, float]) -> None:
        config = self.run.config
        self.progress.update(1)
        if iteration % config.log_every == 0 or iteration == config.train.iterations:
            row: dict[str, float] = {"iteration": iteration, **metrics}
            row["seconds"] = time.perf_counter() - self.started_at
            self.metrics_log.write(row)
            for name, value in metrics.items():
                self.tensorboard.add_scalar(f"train/{name}", value, iteration)
            self.progress.set_postfix(_postfix(metrics), refresh=False)
        if config.sample_every and iteration % config.sample_every == 0:
            self.run.save_samples()
        if config.eval_every and iteration % config.eval_every == 0:
            evaluation = self.run.evaluate()
            if evaluation is not None:
                self.evaluation_log.write(evaluation)
                for name in ("inception_score", "fid"):
                    self.tensorboard.add_scalar(f"eval/{name}", evaluation[name], iteration)
                logger.info(
                    "Iteration %d: IS %.3f +/- %.3f, FID %.3f",
                    iteration,
                    evaluation["inception_score"],
                    evaluation["inception_score_std"],
                    evaluation["fid"],
                )

    def close(self) -> None:
        self.progress.close()
        self.metrics_log.close()
        self.evaluation_log.close()
        self.tensorboard.close()


def train(config: RunConfig) -> RunResult:
    """Train ControlGAN, or ScoreGAN with ``config.train.score_guidance``, as one run.

    In a process that ``torchrun`` started with several processes, the call first joins the
    default process group unless it exists, and trains on all ranks. The group stays
    initialised for later calls, so destroy it with ``torch.distributed.destroy_process_group``
    when the process is done. (Destroying and creating it again within one ``torchrun`` job
    can read stale addresses from the rendezvous store.) Every rank returns the same
    iteration, interruption and metrics. Evaluations are those of rank 0, and the checkpoint
    path is None on the other ranks.

    Raises:
        RunSetupError: the output folder, a checkpoint or the settings are unusable.
        DataUnavailableError: the training data cannot be found or read.
        score_guidance.PretrainedWeightsUnavailableError: evaluator weights cannot be fetched.
        NonFiniteLossError: a loss became NaN or infinite. The last checkpoint is the last
            good state; nothing is saved after the failing iteration.
    """
    init_from_environment(_device_type(config.device))
    return _train(config)


def _train(config: RunConfig) -> RunResult:
    run = _Run(config)
    out = run.out
    run.on_rank_zero(run.check_out_folder)
    run.build()
    if config.resume:
        run.restore()
    if run.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.settings(), indent=2) + "\n")

    trainer = run.trainer
    start = trainer.iteration
    if start > config.train.iterations:
        raise RunSetupError(
            f"the checkpoint is at iteration {start}, past --iterations "
            f"{config.train.iterations}; pass a larger --iterations to train further"
        )
    total = config.train.iterations
    outputs = _RankZeroOutputs(run, start) if run.is_main else None
    logger.info(
        "Training %s from iteration %d to %d on %s (rank %d of %d), writing to %s",
        "ScoreGAN" if config.train.score_guidance else "ControlGAN",
        start,
        total,
        run.device,
        run.rank,
        run.world_size,
        out,
    )

    metrics: dict[str, float] = {}
    interrupted = False
    try:
        with _stop_on_signals() as signals:
            while trainer.iteration < total:
                try:
                    metrics = trainer.train_step(run.stream)
                except NonFiniteLossError as error:
                    logger.error(
                        "Stopping: %s. The last good checkpoint is %s", error, run.last_checkpoint
                    )
                    raise
                iteration = trainer.iteration
                if outputs is not None:
                    outputs.after_iteration(iteration, metrics)
                # All ranks stop after the same iteration, also when only some got the signal.
                if any_rank(bool(signals)):
                    run.save(metrics)
                    interrupted = True
                    logger.warning("Stopped at iteration %d; continue with --resume", iteration)
                    break
                if iteration % config.checkpoint_every == 0 or iteration == total:
                    run.save(metrics)
    finally:
        if outputs is not None:
            outputs.close()

    if not interrupted and run.is_main:
        if config.sample_every:
            run.save_samples()
        run.write_curves()
    return RunResult(trainer.iteration, interrupted, run.last_checkpoint, metrics, run.evaluations)

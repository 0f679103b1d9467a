"""Train ScoreGAN (or, with --no-score-guidance, the ControlGAN baseline) on CIFAR.

Presets:
  paper  the paper's networks and settings, 100,000 generator iterations (a GPU is assumed)
  quick  a small model that shows learning on a CPU in about 15 minutes
  smoke  a few seconds, for tests

Every setting of a preset can be overridden by its flag. Examples:

  python examples/controlgan_cifar10.py
  python examples/controlgan_cifar10.py --dataset imagefolder \\
      --data-dir ../shared/data/cifar10-jpeg/train --evaluator-weights mobilenetv2_100.pth
  python examples/controlgan_cifar10.py --preset quick --no-score-guidance --out runs/baseline
  python examples/controlgan_cifar10.py --out runs/scoregan --resume
  torchrun --nproc-per-node 4 examples/controlgan_cifar10.py --out runs/scoregan-4gpu

Under torchrun every process trains on its own shard with DistributedDataParallel, and
--batch-size is the batch of each process.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from baselines.controlgan import ControlGANConfig, NonFiniteLossError, TrainConfig
from baselines.controlgan.data import DATASETS, DataUnavailableError
from baselines.controlgan.distributed import get_rank
from baselines.controlgan.run import RunConfig, RunSetupError, train
from score_guidance import (
    DEFAULT_EVALUATOR,
    InvalidCheckpointError,
    PretrainedWeightsUnavailableError,
)

logger = logging.getLogger("controlgan_cifar10")

# Preset values; "network" and "train" entries override ControlGANConfig and TrainConfig.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "network": {},
        "train": {},
        "run": {"eval_every": 5000, "eval_samples": 10_000, "sample_every": 1000},
    },
    "quick": {
        "network": {
            "generator_channels": 32,
            "discriminator_channels": 32,
            "classifier_widths": (16, 32, 64, 64),
            "classifier_blocks_per_stage": 1,
        },
        "train": {"iterations": 500, "n_dis": 2, "batch_size": 32, "lr_decay_at": None},
        "run": {
            "evaluator_image_size": 96,
            "eval_every": 0,
            "sample_every": 50,
            "checkpoint_every": 100,
            "log_every": 10,
            "limit_images": None,
        },
    },
    "smoke": {
        "network": {
            "generator_channels": 8,
            "discriminator_channels": 8,
            "classifier_widths": (4, 4, 4, 4),
            "classifier_blocks_per_stage": 1,
            "z_dim": 16,
        },
        "train": {"iterations": 20, "n_dis": 1, "batch_size": 16, "lr_decay_at": None},
        "run": {
            "evaluator_image_size": 32,
            "eval_every": 0,
            "sample_every": 10,
            "checkpoint_every": 10,
            "log_every": 1,
            "num_workers": 0,
        },
    },
}

_DATASET_CLASSES = {"cifar10": 10, "cifar100": 100}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--out", type=Path, help="output folder (default runs/PRESET-ARM)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--seed", type=int, help="seed of initialisation, data order and noise")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    parser.add_argument("--deterministic", action="store_true", help="deterministic kernels only")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help="default cifar10")
    data.add_argument("--data-dir", type=Path, help="dataset folder (default ./data)")
    data.add_argument("--image-size", type=int, help="resize images to this side in pixels")
    data.add_argument("--limit-images", type=int, help="train on a random subset of N images")
    data.add_argument("--num-classes", type=int, help="classes (default: from --dataset)")
    data.add_argument("--num-workers", type=int, help="DataLoader workers for decoding")

    guidance = parser.add_argument_group("score guidance")
    guidance.add_argument(
        "--score-guidance",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train ScoreGAN (default) or, with --no-score-guidance, ControlGAN",
    )
    guidance.add_argument("--delta", type=float, help="weight of the score guidance (0.5)")
    guidance.add_argument(
        "--evaluator", help=f"evaluator as SOURCE:MODEL_NAME (default {DEFAULT_EVALUATOR})"
    )
    guidance.add_argument("--evaluator-weights", type=Path, help="local evaluator weights file")
    guidance.add_argument(
        "--evaluator-image-size",
        type=int,
        help="evaluator input size (default: the preset's; with --evaluator-weights, the size "
        "stored in the file or the backbone's)",
    )
    guidance.add_argument(
        "--no-pretrained-evaluator",
        action="store_true",
        help="random evaluator weights, only for testing the pipeline",
    )

    training = parser.add_argument_group("training")
    training.add_argument("--iterations", type=int, help="generator iterations")
    training.add_argument("--batch-size", type=int, help="images per batch (64)")
    training.add_argument("--n-dis", type=int, help="discriminator steps per generator step (5)")
    training.add_argument("--lr-g", type=float, help="generator learning rate (2e-4)")
    training.add_argument("--lr-d", type=float, help="discriminator learning rate (4e-4)")
    training.add_argument("--lr-c", type=float, help="classifier learning rate (1e-3)")
    training.add_argument(
        "--lr-decay-at", type=int, help="iteration after which lr_g and lr_d halve (50000)"
    )
    training.add_argument("--gp-weight", type=float, help="gradient penalty weight (10)")
    training.add_argument("--gp-type", choices=("wgan-gp", "zero-centered"))
    training.add_argument("--gamma-max", type=float, help="maximum of gamma_t (0.1)")
    training.add_argument("--gamma-r", type=float, help="step of the gamma_t rule (1e-4)")
    training.add_argument("--channels", type=int, help="channels of G and D (256)")
    training.add_argument(
        "--ema-decay",
        type=float,
        help="keep a moving average of G's weights with this decay, e.g. 0.999 (default off)",
    )

    speed = parser.add_argument_group("speed")
    speed.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="mixed precision of the forward passes; auto is bf16 on CUDA and off on CPU",
    )
    speed.add_argument(
        "--compile", action="store_true", help="run the networks through torch.compile"
    )
    speed.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory format (default: on for CUDA, off on CPU)",
    )

    outputs = parser.add_argument_group("evaluation and outputs")
    outputs.add_argument("--eval-every", type=int, help="iterations between evaluations (0: off)")
    outputs.add_argument("--eval-samples", type=int, help="generated images per evaluation")
    outputs.add_argument("--fid-stats", type=Path, help=".npz with FID reference mu and sigma")
    outputs.add_argument(
        "--inception-weights", type=Path, help="local pt_inception-2015-12-05 weights file"
    )
    outputs.add_argument(
        "--judge",
        help="evaluate with this evaluator (e.g. timm:resnet18) instead of Inception; "
        "--fid-stats must then come from the same judge",
    )
    outputs.add_argument("--judge-weights", type=Path, help="local weights file of --judge")
    outputs.add_argument("--sample-every", type=int, help="iterations between sample grids")
    outputs.add_argument(
        "--sample-batch-statistics",
        action="store_true",
        help="sample with cBN batch statistics instead of running statistics",
    )
    outputs.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints")
    outputs.add_argument("--keep-checkpoints", type=int, help="checkpoints kept (3)")
    outputs.add_argument("--log-every", type=int, help="iterations between logged rows")
    outputs.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


def build_run_config(args: argparse.Namespace) -> RunConfig:
    """Merge the preset with the flags given on the command line."""
    preset = PRESETS[args.preset]
    network = dict(preset["network"])
    train_settings = dict(preset["train"])
    run = dict(preset["run"])

    dataset = args.dataset or "cifar10"
    num_classes = args.num_classes or _DATASET_CLASSES.get(dataset)
    if num_classes is None:
        num_classes = _count_class_folders(args.data_dir)
    classifier_dataset = "cifar100" if num_classes > 10 else "cifar10"
    base_network = ControlGANConfig.for_dataset(classifier_dataset)
    network["num_classes"] = num_classes
    if args.channels is not None:
        network["generator_channels"] = network["discriminator_channels"] = args.channels
    if args.image_size is not None:
        network["bottom_width"] = max(1, args.image_size // 8)

    score_guidance = True if args.score_guidance is None else args.score_guidance
    train_settings["score_guidance"] = score_guidance
    train_settings["amp"] = args.amp
    train_settings["channels_last"] = args.channels_last
    train_settings["compile"] = args.compile
    for key in (
        "iterations", "batch_size", "n_dis", "lr_g", "lr_d", "lr_c", "lr_decay_at",
        "gp_weight", "gp_type", "gamma_max", "gamma_r", "delta", "evaluator", "seed",
        "ema_decay",
    ):  # fmt: skip
        _set(train_settings, key, getattr(args, key))

    arm = "scoregan" if score_guidance else "controlgan"
    run["out"] = args.out or Path("runs") / f"{args.preset}-{arm}"
    run["dataset"] = dataset
    run["resize"] = args.image_size is not None
    run["pretrained_evaluator"] = not args.no_pretrained_evaluator
    if args.evaluator_weights is not None:
        # A weights file carries the input size it was trained at; a preset's size would hide it.
        run.pop("evaluator_image_size", None)
    for key in (
        "data_dir", "image_size", "limit_images", "num_workers", "device", "seed", "resume",
        "evaluator_weights", "evaluator_image_size", "eval_every", "eval_samples", "fid_stats",
        "inception_weights", "judge", "judge_weights", "sample_every", "checkpoint_every",
        "keep_checkpoints", "log_every", "deterministic",
    ):  # fmt: skip
        value = getattr(args, key)
        if value is not None and value is not False:
            run[key] = value
    if args.sample_batch_statistics:
        run["sample_batch_statistics"] = True
    run["show_progress"] = not args.no_progress

    return RunConfig(
        network=dataclasses.replace(base_network, **network),
        train=TrainConfig(**train_settings),
        **run,
    )


def _count_class_folders(data_dir: Path | None) -> int:
    if data_dir is None or not data_dir.is_dir():
        raise DataUnavailableError(
            f"data folder {str(data_dir)!r} not found; --dataset imagefolder needs --data-dir "
            "with one subfolder per class"
        )
    return sum(1 for path in data_dir.iterdir() if path.is_dir())


def _offline_hint(args: argparse.Namespace) -> str:
    return (
        "To train without network, pass local files, for example:\n"
        "  --dataset imagefolder --data-dir PATH/TO/cifar10-jpeg/train "
        "--evaluator-weights mobilenetv2_100.pth\n"
        "(or --no-pretrained-evaluator to test the pipeline with a random evaluator).\n"
        "Set HF_HUB_OFFLINE=1 so that a missing evaluator download fails at once instead of "
        "after the Hugging Face hub's retries."
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = build_run_config(args)
    except (ValueError, DataUnavailableError) as error:
        parser.error(str(error))

    try:
        return _train(config, args)
    finally:
        # torchrun runs: leave the process group that train() joined.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: RunConfig, args: argparse.Namespace) -> int:
    try:
        result = train(config)
    except (DataUnavailableError, PretrainedWeightsUnavailableError) as error:
        offline = isinstance(error, PretrainedWeightsUnavailableError) or error.download_failed
        hint = f"\n{_offline_hint(args)}" if offline else ""
        print(f"error: {error}{hint}", file=sys.stderr)
        return 2
    except (RunSetupError, InvalidCheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: training diverged: {error}", file=sys.stderr)
        return 1
    if result.interrupted:
        return 130
    if get_rank() == 0:
        print(f"Finished at iteration {result.iteration}; last checkpoint {result.last_checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

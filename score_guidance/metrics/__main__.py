"""Command line: ``python -m score_guidance.metrics {stats,eval} ...``.

``stats`` saves the reference statistics of a dataset or folder. ``eval`` prints the Inception
score and FID of a folder of images, an image tensor file or a generator checkpoint as one line,
and writes them as JSON with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._evaluators import PretrainedWeightsUnavailableError
from ._compute import _load_reference, evaluate_batches, statistics_of_batches
from ._generate import generate_images
from ._inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILENAME,
    FeatureExtractor,
    load_inception,
)
from ._judge import load_judge
from ._sources import ImageBatches, ImageSource
from ._statistics import save_reference_statistics

logger = logging.getLogger("score_guidance.metrics")

# Number of generated images when evaluating a generator, as in the standard protocol.
DEFAULT_GENERATED_IMAGES = 50_000
TORCHVISION_PREFIX = "torchvision:"
TORCHVISION_DATASETS = ("CIFAR10", "CIFAR100")
CONTROLGAN_LOADER = "baselines.controlgan:load_generator"


class CommandError(Exception):
    """Invalid command-line input, reported as one error line without a traceback."""


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device that runs the Inception network, for example cuda or cuda:1 "
        "(default: cpu)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=50, help="images per Inception batch (default: 50)"
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="DataLoader worker processes for folders and datasets (default: 0)",
    )
    parser.add_argument(
        "--num-images",
        type=int,
        default=None,
        help="use at most this many images; for a generator, how many to draw "
        f"(default: all images, or {DEFAULT_GENERATED_IMAGES:,} from a generator)",
    )
    parser.add_argument(
        "--inception-weights",
        type=Path,
        default=None,
        help=f"local {INCEPTION_WEIGHTS_FILENAME} file (default: ${INCEPTION_WEIGHTS_ENV}, "
        "then the torch hub cache, then a download)",
    )
    parser.add_argument(
        "--judge",
        default=None,
        metavar="SPEC",
        help="judge with this evaluator instead of Inception, e.g. timm:resnet18: its softmax "
        "for the score and its penultimate features for the distance",
    )
    parser.add_argument(
        "--judge-weights",
        type=Path,
        default=None,
        help="local weights file of --judge, e.g. from python -m score_guidance.train_evaluator",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="fail instead of downloading the Inception weights when no local file exists",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the result as JSON"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with the ``stats`` and ``eval`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m score_guidance.metrics",
        description="Inception score and FID with the FID Inception network of "
        "pytorch-gan-metrics 0.5.3.",
    )
    subcommands = parser.add_subparsers(dest="command", required=True)

    stats = subcommands.add_parser(
        "stats",
        help="save the reference statistics (mu, sigma) of a dataset or folder",
        description="Save the mean and covariance of Inception pool features as an .npz file.",
    )
    stats.add_argument(
        "source",
        help="folder of .png/.jpg images (searched recursively), .pt or .npz file of images "
        f"in [0, 1], or {TORCHVISION_PREFIX}NAME for the torchvision datasets "
        f"{', '.join(TORCHVISION_DATASETS)}",
    )
    stats.add_argument("--output", type=Path, required=True, help="output .npz file")
    stats.add_argument(
        "--dataset-root",
        type=Path,
        default=None,
        help=f"root folder of a {TORCHVISION_PREFIX}NAME dataset (it is never downloaded)",
    )
    stats.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help=f"split of a {TORCHVISION_PREFIX}NAME dataset (default: train)",
    )
    _add_common_arguments(stats)

    evaluate = subcommands.add_parser(
        "eval",
        help="compute the Inception score and FID of images or a generator",
        description="Compute the Inception score and FID in one Inception pass.",
    )
    evaluate.add_argument(
        "source",
        help="folder of .png/.jpg images, .pt or .npz file of images in [0, 1] with shape "
        "(N, 3, H, W), or a generator checkpoint",
    )
    evaluate.add_argument(
        "--reference", type=Path, required=True, help=".npz file with the reference mu and sigma"
    )
    evaluate.add_argument(
        "--splits", type=int, default=10, help="splits of the Inception score (default: 10)"
    )
    evaluate.add_argument(
        "--generator",
        default=None,
        metavar="MODULE:FACTORY",
        help="function FACTORY(checkpoint_path, device) in MODULE that returns the generator "
        f"of the checkpoint SOURCE (default for a checkpoint: {CONTROLGAN_LOADER}, if it "
        "can be imported)",
    )
    evaluate.add_argument(
        "--z-dim",
        type=int,
        default=None,
        help="noise dimension of the generator (default: its z_dim attribute)",
    )
    evaluate.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of a conditional generator, called as generator(z, y) "
        "(default: its num_classes attribute, else unconditional)",
    )
    evaluate.add_argument(
        "--output-range",
        type=float,
        nargs=2,
        default=(-1.0, 1.0),
        metavar=("LOW", "HIGH"),
        help="value range of the generator output, mapped to [0, 1] (default: -1 1)",
    )
    evaluate.add_argument(
        "--seed", type=int, default=0, help="seed of the generator noise and labels (default: 0)"
    )
    _add_common_arguments(evaluate)
    return parser


def _load_image_file(path: Path) -> Tensor | None:
    """Return the image tensor stored in a .npz or torch file, or None for a checkpoint dict."""
    if path.suffix == ".npz":
        try:
            archive = np.load(path, allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile) as error:
            raise CommandError(f"cannot read {path} as an .npz archive: {error}") from error
        with archive:
            if "images" in archive.files:
                return torch.from_numpy(archive["images"])
            if len(archive.files) == 1:
                return torch.from_numpy(archive[archive.files[0]])
            raise CommandError(
                f"{path} contains the arrays {archive.files}; expected one array or an array "
                "named images"
            )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch.load raises pickle, zip and runtime errors for unreadable or unsafe files.
        raise CommandError(
            f"cannot load {path} with torch.load(weights_only=True): {error}"
        ) from error
    if isinstance(content, Tensor):
        return content
    if isinstance(content, Mapping):
        return None
    raise CommandError(
        f"{path} contains a {type(content).__name__}; expected an image tensor or a checkpoint "
        "dictionary"
    )


def _import_factory(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:FACTORY`` and return the attribute FACTORY of MODULE."""
    module_name, separator, attribute = spec.partition(":")
    if not separator or not module_name or not attribute:
        raise CommandError(f"--generator must have the form MODULE:FACTORY, got {spec!r}")
    module = importlib.import_module(module_name)
    factory = module
    for part in attribute.split("."):
        factory = getattr(factory, part)
    if not callable(factory):
        raise CommandError(f"{spec} is a {type(factory).__name__}, not a callable")
    return factory


def _load_generator(args: argparse.Namespace, device: torch.device) -> Any:
    if args.generator is not None:
        factory = _import_factory(args.generator)
    else:
        try:
            factory = _import_factory(CONTROLGAN_LOADER)
        except (ImportError, AttributeError) as error:
            raise CommandError(
                f"{args.source} is a checkpoint, and {CONTROLGAN_LOADER} is not available "
                f"({error}); pass --generator MODULE:FACTORY"
            ) from error
    logger.info("Loading the generator of %s", args.source)
    generator = factory(str(args.source), device)
    if isinstance(generator, torch.nn.Module):
        generator.eval()
    return generator


def _generated_images(args: argparse.Namespace, device: torch.device) -> ImageSource:
    generator = _load_generator(args, device)
    z_dim = args.z_dim if args.z_dim is not None else getattr(generator, "z_dim", None)
    if not isinstance(z_dim, int):
        raise CommandError("the generator has no integer z_dim attribute; pass --z-dim")
    num_classes = args.num_classes
    if num_classes is None:
        num_classes = getattr(generator, "num_classes", None)
    num_images = args.num_images if args.num_images is not None else DEFAULT_GENERATED_IMAGES
    return generate_images(
        generator,
        num_images,
        args.batch_size,
        num_classes=num_classes,
        device=device,
        z_dim=z_dim,
        output_range=tuple(args.output_range),
        seed=args.seed,
    )


def _torchvision_dataset(args: argparse.Namespace) -> ImageSource:
    name = args.source[len(TORCHVISION_PREFIX) :]
    if name not in TORCHVISION_DATASETS:
        raise CommandError(
            f"unsupported torchvision dataset {name!r}; supported: "
            f"{', '.join(TORCHVISION_DATASETS)}"
        )
    if args.dataset_root is None:
        raise CommandError(f"{args.source} needs --dataset-root")
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, name)
    try:
        return dataset_class(str(args.dataset_root), train=args.split == "train", download=False)
    except RuntimeError as error:
        # torchvision raises RuntimeError when the files are missing and download is False.
        raise CommandError(f"cannot open {name} in {args.dataset_root}: {error}") from error


def resolve_source(args: argparse.Namespace, device: torch.device) -> ImageSource:
    """Return the image source that the command's SOURCE argument names."""
    if args.command == "eval" and args.generator is not None:
        return _generated_images(args, device)
    if args.command == "stats" and args.source.startswith(TORCHVISION_PREFIX):
        return _torchvision_dataset(args)

    path = Path(args.source)
    if path.is_dir():
        return path
    if not path.is_file():
        raise CommandError(f"source not found: {path}")
    images = _load_image_file(path)
    if images is not None:
        return images
    if args.command == "stats":
        raise CommandError(f"{path} is a checkpoint dictionary, not images")
    return _generated_images(args, device)


def _write_json(path: Path, result: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def _load_feature_extractor(args: argparse.Namespace, device: torch.device) -> FeatureExtractor:
    if args.judge is None:
        if args.judge_weights is not None:
            raise CommandError("--judge-weights needs --judge SPEC, the judge's architecture")
        return load_inception(args.inception_weights, device, allow_download=not args.no_download)
    if args.inception_weights is not None:
        raise CommandError("pass either --judge or --inception-weights, not both")
    if args.judge_weights is None and args.no_download:
        raise CommandError(f"--no-download needs --judge-weights PATH for --judge {args.judge}")
    return load_judge(args.judge, args.judge_weights, device)


def run_stats(args: argparse.Namespace) -> dict[str, Any]:
    """Compute and save reference statistics; return the JSON result."""
    device = torch.device(args.device)
    source = resolve_source(args, device)
    batches = ImageBatches(
        source, args.batch_size, num_images=args.num_images, num_workers=args.num_workers
    )
    extractor = _load_feature_extractor(args, device)
    statistics, num_images = statistics_of_batches(
        batches, extractor, progress=not args.no_progress
    )
    output = save_reference_statistics(statistics, args.output)
    feature_dim = int(statistics.mu.shape[0])
    print(f"Saved reference statistics of {num_images} images ({feature_dim} features) to {output}")
    return {
        "command": "stats",
        "source": str(args.source),
        "output": str(output),
        "judge": args.judge or "inception",
        "num_images": num_images,
        "feature_dim": feature_dim,
    }


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Compute the Inception score and FID; return the JSON result."""
    device = torch.device(args.device)
    reference = _load_reference(args.reference)
    source = resolve_source(args, device)
    batches = ImageBatches(
        source, args.batch_size, num_images=args.num_images, num_workers=args.num_workers
    )
    if batches.num_images is not None and batches.num_images < args.splits:
        raise CommandError(
            f"--splits {args.splits} needs at least {args.splits} images, got {batches.num_images}"
        )
    extractor = _load_feature_extractor(args, device)
    result, num_images = evaluate_batches(
        batches, extractor, reference, args.splits, progress=not args.no_progress
    )
    print(
        f"IS {result.inception_score:.4f} +/- {result.inception_score_std:.4f}  "
        f"FID {result.fid:.4f}  ({num_images} images, {args.splits} splits, "
        f"reference {args.reference}, judge {args.judge or 'Inception'})"
    )
    return {
        "command": "eval",
        "source": str(args.source),
        "reference": str(args.reference),
        "num_images": num_images,
        "splits": args.splits,
        "judge": args.judge or "inception",
        "inception_score": result.inception_score,
        "inception_score_std": result.inception_score_std,
        "fid": result.fid,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)

    command = run_stats if args.command == "stats" else run_eval
    try:
        result = command(args)
    except (
        CommandError,
        ValueError,
        TypeError,
        FileNotFoundError,
        ImportError,
        PretrainedWeightsUnavailableError,
    ) as error:
        logger.error("%s", error)
        logger.debug("Traceback of the error above", exc_info=True)
        return 1
    if args.json is not None:
        _write_json(args.json, result)
        logger.info("Wrote %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

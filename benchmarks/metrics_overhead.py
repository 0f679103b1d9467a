"""Time score_guidance.metrics against pytorch-gan-metrics 0.5.3 called directly on the same images.

Both compute the Inception score (10 splits) and the FID of the same CPU tensor of generated
32x32 images, with the same Inception weights file and batch size, and the runs alternate so
that changing machine load affects both alike. The weights are random (saved by the script into
a temporary torch hub cache, where pytorch-gan-metrics finds them without a download), so the
scores mean nothing, but the network and the computation are the real ones. The FID reference is
a synthetic N(0.05, 0.001 I) in 2048 dimensions, the same file for both.

Usage:
    python benchmarks/metrics_overhead.py --num-images 10000 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn


class RandomGenerator(nn.Module):
    """Small DCGAN-style generator with random weights: z (128) to a 3x32x32 tanh image."""

    def __init__(self, z_dim: int = 128) -> None:
        super().__init__()
        self.project = nn.Linear(z_dim, 128 * 4 * 4)
        self.blocks = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.blocks(self.project(z).view(-1, 128, 4, 4))


def _generate(num_images: int, batch_size: int) -> Tensor:
    from score_guidance.metrics import generate_images

    torch.manual_seed(0)
    generator = RandomGenerator().eval()
    stream = generate_images(generator, num_images, batch_size, z_dim=128, device="cpu", seed=0)
    return torch.cat(list(stream))


Timing = tuple[float, float]  # wall-clock seconds, CPU seconds of this process


def _run_library(images: Tensor, reference: Path, batch_size: int) -> tuple[Timing, tuple]:
    from pytorch_gan_metrics import get_inception_score_and_fid

    start = (time.perf_counter(), time.process_time())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy 1.16+: sqrtm(disp=False)
        with np.errstate(divide="ignore", invalid="ignore"):
            (score, std), fid = get_inception_score_and_fid(
                images,
                str(reference),
                splits=10,
                batch_size=batch_size,
                device=torch.device("cpu"),
            )
    return _elapsed(start), (float(score), float(std), float(fid))


def _run_wrapper(
    images: Tensor, reference: Path, weights: Path, batch_size: int
) -> tuple[Timing, tuple]:
    from score_guidance.metrics import UnreliableMetricWarning, inception_score_and_fid

    start = (time.perf_counter(), time.process_time())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableMetricWarning)
        result = inception_score_and_fid(
            images,
            reference,
            splits=10,
            device="cpu",
            batch_size=batch_size,
            inception_weights=weights,
        )
    return _elapsed(start), tuple(result)


def _elapsed(start: Timing) -> Timing:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def _time_bookkeeping(images: Tensor, batch_size: int) -> tuple[float, float]:
    """Return the seconds that each implementation spends outside the Inception network.

    Random features and probabilities of the Inception output shapes stand in for the network,
    which is the same pytorch-gan-metrics code in both implementations. The final sqrtm is also
    the same in both and is left out. The library copies features into preallocated float64
    arrays and calls np.cov. The wrapper checks the value range of each image batch, accumulates
    float64 moments and keeps float32 probabilities.
    """
    from pytorch_gan_metrics.core import calculate_inception_score

    from score_guidance.metrics._sources import check_images
    from score_guidance.metrics._statistics import (
        FeatureMoments,
        inception_score_from_probabilities,
    )

    num_images = images.shape[0]
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(num_images, 2048, generator=generator)
    probabilities = torch.softmax(torch.randn(num_images, 1008, generator=generator), dim=1)

    start = time.perf_counter()
    library_features = np.empty((num_images, 2048))
    library_probabilities = np.empty((num_images, 1008))
    for begin in range(0, num_images, batch_size):
        end = min(begin + batch_size, num_images)
        library_features[begin:end] = features[begin:end].numpy()
        library_probabilities[begin:end] = probabilities[begin:end].numpy()
    calculate_inception_score(library_probabilities, 10)
    np.mean(library_features, axis=0)
    np.cov(library_features, rowvar=False)
    library_seconds = time.perf_counter() - start

    start = time.perf_counter()
    moments = FeatureMoments()
    kept_probabilities = []
    for begin in range(0, num_images, batch_size):
        end = min(begin + batch_size, num_images)
        check_images(images[begin:end])
        moments.update(features[begin:end])
        kept_probabilities.append(probabilities[begin:end].float().cpu().numpy())
    inception_score_from_probabilities(np.concatenate(kept_probabilities), 10)
    moments.statistics()
    wrapper_seconds = time.perf_counter() - start
    return library_seconds, wrapper_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=10_000, help="images per evaluation")
    parser.add_argument("--batch-size", type=int, default=50, help="Inception batch size")
    parser.add_argument(
        "--repeats", type=int, default=1, help="alternating runs of each implementation"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        temporary_path = Path(temporary)
        # Set before any hub lookup so that neither implementation touches the real cache.
        os.environ["TORCH_HOME"] = str(temporary_path / "torch_home")
        from score_guidance.metrics._inception import (
            hub_weights_path,
            save_random_inception_weights,
        )

        weights = save_random_inception_weights(hub_weights_path(), seed=0)
        reference = temporary_path / "reference.npz"
        np.savez(reference, mu=np.full(2048, 0.05), sigma=np.eye(2048) * 1e-3)

        images = _generate(args.num_images, args.batch_size)
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        print(f"images: {tuple(images.shape)}, batch size {args.batch_size}")

        library_times: list[Timing] = []
        wrapper_times: list[Timing] = []
        for repeat in range(args.repeats):
            timing, library_result = _run_library(images, reference, args.batch_size)
            library_times.append(timing)
            _print_run(repeat, "pytorch-gan-metrics", timing, library_result)
            timing, wrapper_result = _run_wrapper(images, reference, weights, args.batch_size)
            wrapper_times.append(timing)
            _print_run(repeat, "score_guidance.metrics", timing, wrapper_result)

        bookkeeping_times = [_time_bookkeeping(images, args.batch_size) for _ in range(3)]
        library_extra = min(pair[0] for pair in bookkeeping_times)
        wrapper_extra = min(pair[1] for pair in bookkeeping_times)
        fastest_library = min(timing[0] for timing in library_times)
        print(
            f"outside the network (fastest of 3): pytorch-gan-metrics {library_extra:.2f} s, "
            f"score_guidance.metrics {wrapper_extra:.2f} s, difference "
            f"{(wrapper_extra - library_extra) / fastest_library * 100:+.2f}% of the fastest "
            "pytorch-gan-metrics run"
        )

    # Other processes on a shared machine only ever slow a run down, so the fastest run of each
    # implementation is the least disturbed estimate. The median is printed for comparison.
    for index, clock in enumerate(("wall-clock", "CPU")):
        for summary_name, summary in (("fastest", min), ("median", statistics.median)):
            library_seconds = summary(timing[index] for timing in library_times)
            wrapper_seconds = summary(timing[index] for timing in wrapper_times)
            overhead = (wrapper_seconds / library_seconds - 1.0) * 100.0
            print(
                f"{summary_name} {clock} time: pytorch-gan-metrics {library_seconds:.1f} s, "
                f"score_guidance.metrics {wrapper_seconds:.1f} s, overhead {overhead:+.1f}%"
            )


def _print_run(repeat: int, name: str, timing: Timing, result: tuple) -> None:
    score, std, fid = result
    print(
        f"run {repeat + 1} {name}: {timing[0]:.1f} s wall-clock, {timing[1]:.1f} s CPU, "
        f"IS {score:.6f} +/- {std:.6f}, FID {fid:.6f}"
    )


if __name__ == "__main__":
    main()

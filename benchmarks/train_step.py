"""Time training iterations of ControlGAN and ScoreGAN, with and without each speed flag.

The defaults are the CIFAR-10 settings of Lee and Seok, "Score-Guided Generative Adversarial
Networks" (2020): G and D with 256 channels, batch 64, n_dis 5, and MobileNetV2 at 224 pixels.
One iteration is ``ControlGANTrainer.train_step``: ``n_dis`` discriminator steps with the
gradient penalty, one generator step and one classifier step. ScoreGAN adds the score
guidance, a frozen MobileNetV2 (``timm:mobilenetv2_100`` with random weights, which cost the
same as pretrained ones) on the fake and the real batch.

For each variant of the speed settings the script builds both trainers in one process, warms
them up (``torch.compile`` compiles here), then alternates timed iterations between them, so
that changing machine load affects both alike. It prints iterations per second, the
ScoreGAN/ControlGAN ratio of time per iteration, and peak memory. Times are medians over the
timed iterations, as wall time and as the process's CPU time. On a CPU that other processes
share, the CPU time is the steadier measure of the work an iteration does.

Peak memory:

- CUDA: ``torch.cuda.max_memory_allocated`` during one iteration, plus the memory the trainer
  holds between iterations (weights, optimiser states, evaluator).
- CPU: the peak resident set size of a child process that builds one trainer and runs it,
  minus the size after imports (``--memory``; off by default because it repeats the
  warm-up in each child).

Variants: ``none`` (every speed flag off, the library default), ``bf16`` and ``fp16`` (the
``amp`` setting), ``channels-last``, ``compile``, and ``all`` (bf16, channels-last and
compile). Only ``none`` runs on code from before these flags existed.

    python benchmarks/train_step.py --variants none bf16 channels-last --iterations 3
    python benchmarks/train_step.py --device cuda --variants none all --iterations 50
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from baselines.controlgan import ControlGANConfig, ControlGANTrainer, TrainConfig, build_networks
from baselines.controlgan.trainer import build_guidance

ARMS = ("controlgan", "scoregan")
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "bf16": {"amp": "bf16"},
    "fp16": {"amp": "fp16"},
    "channels-last": {"channels_last": True},
    "compile": {"compile": True},
    "all": {"amp": "bf16", "channels_last": True, "compile": True},
}


@dataclass
class Measurement:
    """Wall and CPU seconds per iteration, and memory, of one trainer."""

    seconds: list[float]
    cpu_seconds: list[float]
    resident_mib: float = float("nan")
    peak_mib: float = float("nan")

    @property
    def iterations_per_second(self) -> float:
        return 1.0 / statistics.median(self.seconds)

    @property
    def median_cpu_seconds(self) -> float:
        return statistics.median(self.cpu_seconds)

    def record(self, wall_and_cpu: tuple[float, float]) -> None:
        self.seconds.append(wall_and_cpu[0])
        self.cpu_seconds.append(wall_and_cpu[1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["none"])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per trainer")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per trainer")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-dis", type=int, default=5)
    parser.add_argument("--channels", type=int, default=256, help="channels of G and D")
    parser.add_argument("--evaluator", default="timm:mobilenetv2_100")
    parser.add_argument("--evaluator-image-size", type=int, default=224)
    parser.add_argument(
        "--memory", action="store_true", help="on CPU, measure peak RSS in child processes"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    # Internal: run one trainer in a child process and print its peak RSS.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# Build trainers and data


def build_trainer(args: argparse.Namespace, variant: str, arm: str) -> ControlGANTrainer:
    """Build a seeded trainer with the variant's speed settings."""
    device = torch.device(args.device)
    settings = dict(VARIANTS[variant])
    config = TrainConfig(
        batch_size=args.batch_size,
        n_dis=args.n_dis,
        score_guidance=arm == "scoregan",
        evaluator=args.evaluator,
        **settings,
    )
    guidance = None
    if config.score_guidance:
        torch.manual_seed(0)
        guidance = build_guidance(
            config,
            device,
            pretrained=False,
            image_size=args.evaluator_image_size,
            channels_last=bool(settings.get("channels_last", False)),
        )
    torch.manual_seed(0)
    network_config = ControlGANConfig(
        generator_channels=args.channels, discriminator_channels=args.channels
    )
    networks = build_networks(network_config, device)
    return ControlGANTrainer(*networks, config=config, guidance=guidance)


def real_batches(args: argparse.Namespace) -> Iterator[tuple[Tensor, Tensor]]:
    """Cycle through a fixed pool of random batches already on the device."""
    generator = torch.Generator().manual_seed(0)
    pool = []
    for _ in range(2 * args.n_dis):
        images = torch.rand(args.batch_size, 3, 32, 32, generator=generator) * 2 - 1
        labels = torch.randint(0, 10, (args.batch_size,), generator=generator)
        pool.append((images.to(args.device), labels.to(args.device)))
    return itertools.cycle(pool)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(
    trainer: ControlGANTrainer, data: Iterator[tuple[Tensor, Tensor]]
) -> tuple[float, float]:
    """Run one iteration and return its wall time and this process's CPU time in seconds."""
    synchronize(trainer.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train_step(data)
    synchronize(trainer.device)
    return time.perf_counter() - start, time.process_time() - cpu_start


# Measure memory


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as file:
        resident_pages = int(file.read().split()[1])
    return resident_pages * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(args: argparse.Namespace) -> None:
    """Build one trainer, run warm-up and one timed iteration, print the peak RSS growth."""
    variant, arm = args.child.split(":")
    data = real_batches(args)
    baseline = _current_rss_mib()
    trainer = build_trainer(args, variant, arm)
    for _ in range(args.warmup + 1):
        trainer.train_step(data)
    print(json.dumps({"peak_mib": _peak_rss_mib() - baseline}))


def measure_cpu_memory(args: argparse.Namespace, variant: str, arm: str) -> float:
    command = [sys.executable, __file__, "--child", f"{variant}:{arm}", "--device", "cpu"]
    command += ["--batch-size", str(args.batch_size), "--n-dis", str(args.n_dis)]
    command += ["--channels", str(args.channels), "--warmup", str(args.warmup)]
    command += ["--evaluator", args.evaluator]
    command += ["--evaluator-image-size", str(args.evaluator_image_size)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"])


# Compare the arms of one variant


def measure_variant(args: argparse.Namespace, variant: str) -> dict[str, Measurement]:
    device = torch.device(args.device)
    data = real_batches(args)
    trainers: dict[str, ControlGANTrainer] = {}
    results: dict[str, Measurement] = {}
    held_by_others = 0.0
    for arm in args.arms:
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        trainers[arm] = build_trainer(args, variant, arm)
        for _ in range(args.warmup):
            trainers[arm].train_step(data)
        results[arm] = Measurement(seconds=[], cpu_seconds=[])
        if device.type == "cuda":
            # Peak of one iteration with only the trainers built so far in memory.
            synchronize(device)
            resident = torch.cuda.memory_allocated(device) - before
            torch.cuda.reset_peak_memory_stats(device)
            results[arm].record(timed_step(trainers[arm], data))
            peak = torch.cuda.max_memory_allocated(device) - held_by_others
            results[arm].resident_mib = resident / 2**20
            results[arm].peak_mib = peak / 2**20
            held_by_others += resident

    # Alternate the trainers, one iteration each, so that both see the same machine load.
    for _ in range(args.iterations):
        for arm, trainer in trainers.items():
            results[arm].record(timed_step(trainer, data))
    if device.type == "cpu" and args.memory:
        for arm in args.arms:
            results[arm].peak_mib = measure_cpu_memory(args, variant, arm)

    del trainers
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def print_header(args: argparse.Namespace) -> None:
    memory_kind = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(
        f"| variant | arm | it/s | wall s/it | CPU s/it | {memory_kind} "
        "| ScoreGAN/ControlGAN wall | ScoreGAN/ControlGAN CPU |"
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)


def print_rows(variant: str, arms: dict[str, Measurement]) -> None:
    ratios = ["", ""]
    if set(ARMS) <= set(arms):
        control, score = arms["controlgan"], arms["scoregan"]
        wall_ratio = control.iterations_per_second / score.iterations_per_second
        cpu_ratio = score.median_cpu_seconds / control.median_cpu_seconds
        ratios = [f"{wall_ratio:.3f}", f"{cpu_ratio:.3f}"]
    for arm, measurement in arms.items():
        rate = measurement.iterations_per_second
        shown = ratios if arm == "scoregan" else ["", ""]
        print(
            f"| {variant} | {arm} | {rate:.4f} | {1 / rate:.3f} | "
            f"{measurement.median_cpu_seconds:.3f} | {measurement.peak_mib:.0f} | "
            f"{shown[0]} | {shown[1]} |",
            flush=True,
        )


def print_changes(results: dict[str, dict[str, Measurement]]) -> None:
    """Print each variant's time per iteration relative to the variant ``none``."""
    if "none" not in results or len(results) == 1:
        return
    print()
    print("| variant | arm | wall time / none | CPU time / none |")
    print("|---|---|---|---|")
    for variant, arms in results.items():
        for arm, measurement in arms.items():
            reference = results["none"].get(arm)
            if variant == "none" or reference is None:
                continue
            wall = reference.iterations_per_second / measurement.iterations_per_second
            cpu = measurement.median_cpu_seconds / reference.median_cpu_seconds
            print(f"| {variant} | {arm} | {wall:.3f} | {cpu:.3f} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        # As training runs do: the shapes are fixed.
        torch.backends.cudnn.benchmark = True
    if args.child:
        run_child(args)
        return
    print(
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, batch {args.batch_size}, "
        f"n_dis {args.n_dis}, channels {args.channels}, evaluator {args.evaluator} at "
        f"{args.evaluator_image_size} px, {args.warmup} warm-up and {args.iterations} timed "
        "iterations per trainer"
    )
    # Print each variant as soon as it is measured, so that a time limit keeps the finished ones.
    print_header(args)
    results = {}
    for variant in args.variants:
        results[variant] = measure_variant(args, variant)
        print_rows(variant, results[variant])
    print_changes(results)
    if args.json:
        serialised = {
            variant: {arm: vars(measurement) for arm, measurement in arms.items()}
            for variant, arms in results.items()
        }
        with open(args.json, "w") as file:
            json.dump(serialised, file, indent=2)


if __name__ == "__main__":
    main()

"""Does score guidance help? ControlGAN against ScoreGAN on the CIFAR-10 JPEG copy, on a CPU.

The study follows the protocol of ScoreGAN (Lee and Seok, 2020) at a scale a 2-core CPU can
run: one network guides, another judges.

1. Train the guide (MobileNetV2) and the judge (a ResNet) on the ``train`` folder with
   ``python -m score_guidance.train_evaluator``; both report their accuracy on ``test``.
2. Compute the judge's feature statistics of the ``test`` folder.
3. For each seed, train ControlGAN and ScoreGAN with ``examples/controlgan_cifar10.py`` (the
   ``quick`` preset, the trainer unchanged) with the same seed, data order and budget. All runs
   start at once, one thread each, so that machine load affects every arm alike. Every
   ``--eval-every`` iterations each run measures, with the judge only, the score and the
   Fréchet distance of its samples against the test statistics.
4. Collect ``study.csv``, ``curves.png`` (both arms, mean and range over seeds), ``grids.png``
   (the final sample grids of the first seed, ControlGAN left and ScoreGAN right) and
   ``results.md`` (the table for docs/cpu-study.md).

Every step resumes: finished evaluators and statistics are reused, and interrupted GAN runs
continue from their last checkpoint when the command is run again.

    python benchmarks/cpu_study.py --data-dir ../shared/data/cifar10-jpeg --out runs/cpu-study
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "controlgan_cifar10.py"
ARMS = ("controlgan", "scoregan")

logger = logging.getLogger("cpu_study")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg",
        help="folder with train/ and test/ image folders, one subfolder per class",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/cpu-study"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--preset", default="quick", help="preset of controlgan_cifar10.py")
    parser.add_argument("--iterations", type=int, default=1500, help="generator iterations")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-samples", type=int, default=2000)
    parser.add_argument("--delta", type=float, default=0.5, help="weight of the score guidance")
    parser.add_argument("--guide", default="timm:mobilenetv2_100")
    parser.add_argument("--judge", default="timm:resnet18")
    parser.add_argument("--evaluator-image-size", type=int, default=32)
    parser.add_argument("--evaluator-epochs", type=int, default=8)
    parser.add_argument(
        "--evaluator-images",
        type=int,
        default=None,
        help="train the guide and the judge on this many images (default: all)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--docs-dir", type=Path, help="also copy the figures here")
    return parser.parse_args(argv)


# Settings that change what the study measures; a rerun in the same --out must keep them.
_FIXED_SETTINGS = (
    "data_dir", "seeds", "preset", "eval_every", "eval_samples", "delta", "guide", "judge",
    "evaluator_image_size", "evaluator_epochs", "evaluator_images",
)  # fmt: skip


def check_settings(args: argparse.Namespace) -> None:
    """Record the settings on the first run and reject a rerun that changes them."""
    path = args.out / "study_settings.json"
    current = {name: str(getattr(args, name)) for name in _FIXED_SETTINGS}
    if not path.is_file():
        path.write_text(json.dumps(current, indent=2) + "\n")
        return
    saved = json.loads(path.read_text())
    changed = [name for name in _FIXED_SETTINGS if saved.get(name) != current[name]]
    if changed:
        details = ", ".join(f"{name} {saved.get(name)} -> {current[name]}" for name in changed)
        raise ValueError(
            f"{args.out} contains a study with other settings ({details}); rerun with the "
            "saved settings to resume it, or choose another --out"
        )


def _environment(threads: int) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])),
    )
    return environment


class StudyInterrupted(Exception):
    """SIGINT or SIGTERM reached the study; its runs saved their state and stopped."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise StudyInterrupted(signal.Signals(signum).name)


def _run_together(commands: list[list[str]], logs: list[Path], threads: int) -> None:
    """Run ``commands`` at the same time; raise if one of them fails.

    On SIGINT or SIGTERM every command gets SIGINT, which makes the training commands save a
    checkpoint and exit, and the study waits for them before it stops.
    """
    processes: list[subprocess.Popen[bytes]] = []
    for command, log in zip(commands, logs, strict=True):
        log.parent.mkdir(parents=True, exist_ok=True)
        logger.info("Running %s (log: %s)", " ".join(command[1:4]), log)
        with log.open("a") as file:
            processes.append(
                subprocess.Popen(
                    command, stdout=file, stderr=subprocess.STDOUT, env=_environment(threads)
                )
            )
    try:
        codes = [process.wait() for process in processes]
    except (KeyboardInterrupt, StudyInterrupted):
        logger.info("Stopping: each run saves its state, then the study exits")
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            process.wait()
        raise StudyInterrupted("interrupted") from None
    failed = list(zip(logs, codes, strict=True))
    failed = [(log, code) for log, code in failed if code != 0]
    if failed:
        details = ", ".join(f"{log} (exit {code})" for log, code in failed)
        raise RuntimeError(f"a study step failed; see {details}")


# Train the guide and the judge


def train_evaluators(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Train the guide and the judge at once; return their specs, files and test accuracies."""
    networks = {"guide": args.guide, "judge": args.judge}
    commands, logs = [], []
    for role, spec in networks.items():
        weights = args.out / f"{role}.pth"
        if weights.is_file():
            logger.info("Reusing the %s %s", role, weights)
            continue
        command = [
            sys.executable, "-m", "score_guidance.train_evaluator",
            "--model", spec,
            "--data-dir", str(args.data_dir / "train"),
            "--val-dir", str(args.data_dir / "test"),
            "--image-size", str(args.evaluator_image_size),
            "--epochs", str(args.evaluator_epochs),
            "--seed", "0",
            "--out", str(weights),
            "--resume",
            "--no-progress",
        ]  # fmt: skip
        if args.evaluator_images is not None:
            command += ["--limit-images", str(args.evaluator_images)]
        commands.append(command)
        logs.append(args.out / "logs" / f"{role}.log")
    _run_together(commands, logs, args.threads)

    result = {}
    for role, spec in networks.items():
        weights = args.out / f"{role}.pth"
        saved = torch.load(weights, map_location="cpu", weights_only=True)
        result[role] = {"spec": spec, "weights": str(weights), "accuracy": saved["accuracy"]}
        logger.info("%s %s: test accuracy %.4f", role, spec, saved["accuracy"])
    return result


def judge_statistics(args: argparse.Namespace) -> Path:
    """Save the judge's feature statistics of the test folder (once)."""
    from score_guidance.metrics import compute_reference_statistics, load_judge

    path = args.out / "judge_test_stats.npz"
    if not path.is_file():
        torch.set_num_threads(max(2, args.threads))
        judge = load_judge(args.judge, args.out / "judge.pth")
        compute_reference_statistics(args.data_dir / "test", path, feature_extractor=judge)
    return path


# Train both arms


def train_arms(args: argparse.Namespace, stats: Path) -> None:
    """Train ControlGAN and ScoreGAN with every seed, all at the same time."""
    commands, logs = [], []
    for seed, arm in itertools.product(args.seeds, ARMS):
        out = args.out / f"seed{seed}-{arm}"
        command = [
            sys.executable, str(EXAMPLE),
            "--preset", args.preset,
            "--score-guidance" if arm == "scoregan" else "--no-score-guidance",
            "--dataset", "imagefolder",
            "--data-dir", str(args.data_dir / "train"),
            "--num-workers", "0",
            "--seed", str(seed),
            "--iterations", str(args.iterations),
            "--delta", str(args.delta),
            "--evaluator", args.guide,
            "--evaluator-weights", str(args.out / "guide.pth"),
            "--evaluator-image-size", str(args.evaluator_image_size),
            "--judge", args.judge,
            "--judge-weights", str(args.out / "judge.pth"),
            "--fid-stats", str(stats),
            "--eval-every", str(args.eval_every),
            "--eval-samples", str(args.eval_samples),
            "--sample-every", str(args.eval_every),
            "--out", str(out),
            "--no-progress",
        ]  # fmt: skip
        if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
            command.append("--resume")
        if _finished(out, args.iterations):
            logger.info("Reusing the finished run %s", out)
            continue
        commands.append(command)
        logs.append(args.out / "logs" / f"seed{seed}-{arm}.log")
    _run_together(commands, logs, args.threads)


def _finished(out: Path, iterations: int) -> bool:
    rows = _read_csv(out / "evaluation.csv")
    return bool(rows) and int(rows[-1]["iteration"]) >= iterations


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


# Collect the results


def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Return one row per arm, seed and evaluation, and write them to ``study.csv``."""
    rows = []
    for seed in args.seeds:
        for arm in ARMS:
            for row in _read_csv(args.out / f"seed{seed}-{arm}" / "evaluation.csv"):
                if int(row["iteration"]) > args.iterations:
                    continue
                rows.append(
                    {
                        "arm": arm,
                        "seed": seed,
                        "iteration": int(row["iteration"]),
                        "judge_score": float(row["inception_score"]),
                        "judge_score_std": float(row["inception_score_std"]),
                        "judge_distance": float(row["fid"]),
                    }
                )
    with (args.out / "study.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _by_arm_and_iteration(
    rows: list[dict[str, Any]], key: str
) -> dict[str, dict[int, list[float]]]:
    table: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        table[row["arm"]][row["iteration"]].append(row[key])
    return table


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Plot the judge's score and distance against iterations: mean and range over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, label in (
        (axes[0], "judge_score", "judge's score (higher is better)"),
        (axes[1], "judge_distance", "judge's Fréchet distance (lower is better)"),
    ):
        for arm, by_iteration in sorted(_by_arm_and_iteration(rows, key).items()):
            iterations = sorted(by_iteration)
            values = [by_iteration[i] for i in iterations]
            axis.plot(iterations, [statistics.mean(v) for v in values], marker="o", label=arm)
            axis.fill_between(
                iterations, [min(v) for v in values], [max(v) for v in values], alpha=0.2
            )
        axis.set(xlabel="generator iteration", ylabel=label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def side_by_side_grids(args: argparse.Namespace, path: Path, iteration: int) -> None:
    """Join the first seed's grids at ``iteration``: ControlGAN left, ScoreGAN right.

    The grids are pasted unscaled with a white gap, so the file keeps the generated pixels.
    """
    from PIL import Image

    grids = [
        Image.open(
            args.out / f"seed{args.seeds[0]}-{arm}" / "samples" / f"samples_{iteration:07d}.png"
        )
        for arm in ARMS
    ]
    gap = 16
    width = sum(grid.width for grid in grids) + gap * (len(grids) - 1)
    joined = Image.new("RGB", (width, max(grid.height for grid in grids)), "white")
    left = 0
    for grid in grids:
        joined.paste(grid.convert("RGB"), (left, 0))
        left += grid.width + gap
    joined.save(path)


def results_table(rows: list[dict[str, Any]], evaluators: dict[str, dict[str, Any]]) -> str:
    """Return the Markdown table: mean and range over seeds for each arm and evaluation."""
    scores = _by_arm_and_iteration(rows, "judge_score")
    distances = _by_arm_and_iteration(rows, "judge_distance")
    lines = [
        f"Guide: {evaluators['guide']['spec']}, test accuracy "
        f"{evaluators['guide']['accuracy']:.3f}. Judge: {evaluators['judge']['spec']}, test "
        f"accuracy {evaluators['judge']['accuracy']:.3f}.",
        "",
        "| iteration | ControlGAN score | ScoreGAN score | ControlGAN distance | "
        "ScoreGAN distance |",
        "|---|---|---|---|---|",
    ]

    def cell(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    for iteration in sorted(scores["controlgan"]):
        lines.append(
            f"| {iteration} | {cell(scores['controlgan'][iteration])} | "
            f"{cell(scores['scoregan'].get(iteration, [float('nan')]))} | "
            f"{cell(distances['controlgan'][iteration])} | "
            f"{cell(distances['scoregan'].get(iteration, [float('nan')]))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for split in ("train", "test"):
        if not (args.data_dir / split).is_dir():
            print(f"error: {args.data_dir / split} not found; pass --data-dir", file=sys.stderr)
            return 2
    if args.eval_every < 1 or args.iterations < args.eval_every:
        print(
            f"error: --eval-every {args.eval_every} must be between 1 and --iterations "
            f"{args.iterations}, because the study compares the arms at its evaluations",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        check_settings(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return _run_study(args)
    except StudyInterrupted:
        print("Stopped; run the same command again to resume the study.", file=sys.stderr)
        return 130
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _run_study(args: argparse.Namespace) -> int:
    # Wall times add up over reruns, so a resumed study reports the time of all its attempts.
    summary_path = args.out / "study.json"
    timings: dict[str, float] = {}
    if summary_path.is_file():
        timings = dict(json.loads(summary_path.read_text()).get("seconds", {}))

    def timed(step: str, start: float) -> None:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - start

    start = time.perf_counter()
    evaluators = train_evaluators(args)
    timed("evaluators", start)
    start = time.perf_counter()
    stats = judge_statistics(args)
    timed("judge_statistics", start)
    start = time.perf_counter()
    train_arms(args, stats)
    timed("gan_runs", start)

    rows = collect(args)
    plot_curves(rows, args.out / "curves.png")
    side_by_side_grids(args, args.out / "grids.png", max(row["iteration"] for row in rows))
    table = results_table(rows, evaluators)
    (args.out / "results.md").write_text(table)
    summary = {
        "evaluators": evaluators,
        "seconds": timings,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "settings": {key: str(value) for key, value in vars(args).items()},
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    if args.docs_dir is not None:
        args.docs_dir.mkdir(parents=True, exist_ok=True)
        for name in ("curves.png", "grids.png"):
            (args.docs_dir / f"cpu-study-{name}").write_bytes((args.out / name).read_bytes())
    print(table)
    print("wall time per step (s):", json.dumps({k: round(v) for k, v in timings.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

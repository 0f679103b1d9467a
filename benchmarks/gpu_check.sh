#!/usr/bin/env bash
# Measure ControlGAN/ScoreGAN training speed on a machine with one GPU, in at most 8 minutes.
#
#   bash benchmarks/gpu_check.sh               # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --cpu-dry-run # tiny sizes on the CPU, to test this script
#
# 1. benchmarks/train_step.py at the CIFAR-10 settings of the ScoreGAN paper (Lee and Seok,
#    2020: widths 256, batch 64, n_dis 5, MobileNetV2 at 224 pixels), with the speed flags
#    off, bf16 and channels-last one at a time, and all three with --compile together.
# 2. A 2,000-iteration ScoreGAN run at those widths with bf16, channels-last and compile on
#    synthetic images, which prints iterations per second after the warm-up, the peak GPU
#    memory and the projected time of 100,000 iterations, the paper's run length.
#
# The script installs nothing: it imports the repository through PYTHONPATH and stops with a
# message if a required package is missing. Each part has a time limit, so the whole stays
# under 8 minutes. A run stopped by its limit saves a checkpoint and reports what it measured.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if [[ "${1:-}" == "--cpu-dry-run" ]]; then
    DEVICE=cpu
    BENCHMARK_ARGS=(--channels 16 --batch-size 8 --n-dis 2 --evaluator-image-size 32
                    --iterations 2 --warmup 1 --variants none bf16 channels-last)
    RUN_ITERATIONS=20 RUN_CHANNELS=16 RUN_BATCH=8 RUN_EVALUATOR_SIZE=32 RUN_COMPILE=0
    BENCHMARK_LIMIT=120 RUN_LIMIT=120
else
    DEVICE=cuda
    BENCHMARK_ARGS=(--iterations 20 --warmup 3 --variants none bf16 channels-last all)
    RUN_ITERATIONS=2000 RUN_CHANNELS=256 RUN_BATCH=64 RUN_EVALUATOR_SIZE=224 RUN_COMPILE=1
    BENCHMARK_LIMIT=190 RUN_LIMIT=250
fi

"$PYTHON" - "$DEVICE" <<'EOF'
import importlib.util, sys
missing = [name for name in ("torch", "torchvision", "timm", "tensorboard", "PIL", "tqdm")
           if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"error: missing packages {missing}; install the project's dependencies first")
import torch
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("error: CUDA is not available; run with --cpu-dry-run to test the script on a CPU")
name = torch.cuda.get_device_name() if sys.argv[1] == "cuda" else "CPU"
print(f"torch {torch.__version__}, device {name}")
EOF

echo "== 1. benchmarks/train_step.py (limit ${BENCHMARK_LIMIT} s)"
timeout "$BENCHMARK_LIMIT" "$PYTHON" benchmarks/train_step.py --device "$DEVICE" \
    "${BENCHMARK_ARGS[@]}" || echo "benchmark stopped (exit $?); results above are partial"

echo "== 2. ${RUN_ITERATIONS}-iteration ScoreGAN run on synthetic data (limit ${RUN_LIMIT} s)"
"$PYTHON" - "$WORK/images" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for label in range(10):
    folder = Path(sys.argv[1]) / f"class_{label}"
    folder.mkdir(parents=True)
    for index in range(256):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
EOF

# SIGINT makes the run save a checkpoint and return, so a partial run still reports.
timeout --preserve-status -s INT -k 30 "$RUN_LIMIT" "$PYTHON" - "$DEVICE" "$WORK" "$RUN_ITERATIONS" \
    "$RUN_CHANNELS" "$RUN_BATCH" "$RUN_EVALUATOR_SIZE" "$RUN_COMPILE" <<'EOF'
import csv, logging, sys
from pathlib import Path
import torch
from baselines.controlgan import ControlGANConfig, TrainConfig
from baselines.controlgan.run import RunConfig, train

device, work = sys.argv[1], Path(sys.argv[2])
iterations, channels, batch, evaluator_size, compile_ = map(int, sys.argv[3:8])
logging.basicConfig(level=logging.WARNING)
config = RunConfig(
    out=work / "run",
    network=ControlGANConfig(generator_channels=channels, discriminator_channels=channels),
    train=TrainConfig(
        iterations=iterations, batch_size=batch, score_guidance=True,
        amp="bf16", channels_last=True, compile=bool(compile_),
    ),
    dataset="imagefolder", data_dir=work / "images", num_workers=2, device=device,
    pretrained_evaluator=False, evaluator_image_size=evaluator_size,
    eval_every=0, sample_every=0, checkpoint_every=iterations, log_every=10,
    show_progress=False,
)
result = train(config)
with (work / "run" / "metrics.csv").open() as file:
    rows = [(int(float(row["iteration"])), float(row["seconds"])) for row in csv.DictReader(file)]
if not rows:
    sys.exit("error: the run logged no iteration within its time limit")
# Skip the first quarter, which includes compilation and warm-up.
end = rows[-1]
start = next((row for row in rows if row[0] >= end[0] // 4 and row[0] < end[0]), (0, 0.0))
rate = (end[0] - start[0]) / (end[1] - start[1])
print(f"iterations: {result.iteration} of {iterations}" + (" (stopped by the time limit)" if result.interrupted else ""))
print(f"iterations per second after iteration {start[0]}: {rate:.2f}")
print(f"total time of the first {end[0]} iterations, compilation included: {end[1]:.0f} s")
if device == "cuda":
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
print(f"projected time of 100,000 iterations: {100_000 / rate / 3600:.2f} h")
EOF

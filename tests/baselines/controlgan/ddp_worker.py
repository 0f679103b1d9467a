"""One rank of the two-process DistributedDataParallel test, started by torchrun on the CPU.

The rank trains in three ways and writes what the test compares into ``--out``:

1. ``straight/``: a run of five iterations through ``train()``, which joins the process
   group from torchrun's environment, as the command line does.
2. ``trainer_rank{R}.pt``: a distributed ControlGANTrainer after three iterations.
3. ``interrupted/``: the run of 1, stopped by SIGTERM, which only rank 1 receives, after
   iteration 2, then resumed to iteration 5. ``result_rank{R}.json`` records where each
   rank stopped.
4. ``gradients_rank{R}.json``: for one step of each network, the largest difference between
   the gradients of the distributed trainer and the mean over ranks of the gradients that a
   non-distributed copy computes on each rank's batch, and between the ranks' gradients.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from baselines.controlgan import ControlGANConfig, ControlGANTrainer, TrainConfig, build_networks
from baselines.controlgan.data import ImageTensorDataset
from baselines.controlgan.distributed import ShardedBatchStream, all_gather_objects, get_rank
from baselines.controlgan.run import RunConfig, train
from score_guidance import ModuleEvaluator, ScoreGuidanceLoss

NETWORKS = ControlGANConfig(
    num_classes=3,
    generator_channels=8,
    discriminator_channels=8,
    classifier_widths=(4, 4, 4, 4),
    classifier_blocks_per_stage=1,
)
INTERRUPT_AFTER = 2


def tiny_guidance() -> ScoreGuidanceLoss:
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    evaluator = ModuleEvaluator(module, mean=(0.5,) * 3, std=(0.5,) * 3, image_size=8)
    return ScoreGuidanceLoss(evaluator, weight=0.5)


def train_with_trainer(out: Path) -> None:
    rank = get_rank()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 3, (64,), generator=generator)
    dataset = ImageTensorDataset(images, labels, ["a", "b", "c"])
    stream = ShardedBatchStream(dataset, 4, seed=0, rank=rank, world_size=dist.get_world_size())
    first_batch, _ = next(ShardedBatchStream(dataset, 4, rank=rank, world_size=2))

    config = TrainConfig(batch_size=4, n_dis=2, score_guidance=True, ema_decay=0.9, dequantize=True)
    torch.manual_seed(0)
    networks = build_networks(NETWORKS)
    torch.manual_seed(0)
    trainer = ControlGANTrainer(*networks, config, tiny_guidance())
    metrics = [trainer.train_step(stream) for _ in range(3)]

    torch.save(
        {
            "distributed": trainer.distributed,
            "generator": dict(trainer.generator.named_parameters()),
            "discriminator": dict(trainer.discriminator.named_parameters()),
            "classifier": dict(trainer.classifier.named_parameters()),
            "generator_buffers": dict(trainer.generator.named_buffers()),
            "discriminator_buffers": dict(trainer.discriminator.named_buffers()),
            "ema": dict(trainer.ema.generator.named_parameters()),
            "gamma": trainer.gamma.value,
            "metrics": metrics,
            "rng": trainer.rng.get_state(),
            "first_batch": first_batch,
        },
        out / f"trainer_rank{rank}.pt",
    )


def compare_gradients(out: Path) -> None:
    rank = get_rank()
    generator = torch.Generator().manual_seed(10 + rank)
    real = torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1
    labels = torch.randint(0, 3, (4,), generator=generator)
    config = TrainConfig(batch_size=4, n_dis=1, score_guidance=True)
    trainers = {}
    for distributed in (True, False):
        torch.manual_seed(0)
        networks = build_networks(NETWORKS)
        torch.manual_seed(0)
        trainers[distributed] = ControlGANTrainer(
            *networks, config, tiny_guidance(), distributed=distributed
        )
    synced, local = trainers[True], trainers[False]
    local.rng.set_state(synced.rng.get_state())

    def generator_step(trainer: ControlGANTrainer) -> None:
        z, y = trainer.sample_latents(4)
        trainer._generator_step(z, y, real)

    steps = {
        "discriminator": lambda trainer: trainer._discriminator_step(real),
        "generator": generator_step,
        "classifier": lambda trainer: trainer._classifier_step(real, labels),
    }
    differences = {}
    for name, step in steps.items():
        step(synced)
        step(local)
        local_gradients = [p.grad.clone() for p in getattr(local, name).parameters()]
        per_rank = all_gather_objects(local_gradients)
        synced_gradients = [p.grad for p in getattr(synced, name).parameters()]
        differences[name] = max(
            (synced_gradient - torch.stack(rank_gradients).mean(0)).abs().max().item()
            for synced_gradient, *rank_gradients in zip(synced_gradients, *per_rank, strict=True)
        )
        differences[f"{name}_between_ranks"] = max(
            (first - second).abs().max().item()
            for first, second in zip(per_rank[0], per_rank[1], strict=True)
        )
        # The next step must see the same weights in both trainers.
        for network in steps:
            getattr(local, network).load_state_dict(getattr(synced, network).state_dict())
    (out / f"gradients_rank{rank}.json").write_text(json.dumps(differences))


def run_config(out: Path, images: Path, resume: bool = False) -> RunConfig:
    return RunConfig(
        out=out,
        network=NETWORKS,
        train=TrainConfig(
            iterations=5,
            n_dis=1,
            batch_size=4,
            lr_decay_at=None,
            score_guidance=True,
            ema_decay=0.9,
        ),
        dataset="imagefolder",
        data_dir=images,
        num_workers=0,
        resume=resume,
        pretrained_evaluator=False,
        evaluator_image_size=32,
        eval_every=0,
        sample_every=0,
        checkpoint_every=4,
        log_every=1,
        show_progress=False,
    )


def train_with_interruption(out: Path, images: Path) -> None:
    original_step = ControlGANTrainer.train_step

    def step_then_signal(self: ControlGANTrainer, data):  # type: ignore[no-untyped-def]
        metrics = original_step(self, data)
        if self.rank == 1 and self.iteration == INTERRUPT_AFTER:
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    ControlGANTrainer.train_step = step_then_signal  # type: ignore[method-assign]
    try:
        stopped = train(run_config(out / "interrupted", images))
    finally:
        ControlGANTrainer.train_step = original_step  # type: ignore[method-assign]
    resumed = train(run_config(out / "interrupted", images, resume=True))
    result = {
        "stopped_at": stopped.iteration,
        "interrupted": stopped.interrupted,
        "resumed_to": resumed.iteration,
    }
    rank = int(os.environ["RANK"])
    (out / f"result_rank{rank}.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)

    train(run_config(args.out / "straight", args.images))
    assert dist.is_initialized(), "train() did not join the process group"
    train_with_trainer(args.out)
    train_with_interruption(args.out, args.images)
    compare_gradients(args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Multi-GPU and multi-node training with ``torchrun`` and ``DistributedDataParallel``.

Every process (rank) trains the same networks on its own shard of each epoch and with its own
noise. ``DistributedDataParallel`` averages the gradients, so the weights stay identical on
all ranks. ``TrainConfig.batch_size`` is the batch of one rank, and the global batch is
``batch_size * world_size``.

Decisions that this module and the trainer implement:

- Data: all ranks draw the same permutation of the dataset per epoch (same seed), and rank r
  takes every ``world_size``-th index of it starting at r, like
  ``torch.utils.data.DistributedSampler``. The images consumed so far are therefore always a
  prefix of the permutation, whatever the number of ranks, which lets a checkpoint resume
  the exact order on the same number of ranks and continue the same epoch on another number.
- cBN does not use ``SyncBatchNorm``: each rank normalises with its own batch's statistics.
  With 64 images per rank these are the statistics of the single-GPU batch of 64 that Lee and
  Seok (2020) trained with. ``SyncBatchNorm`` runs on GPUs only, and it would make sampling
  with batch statistics a collective, while evaluation runs on rank 0 alone.
- Buffers: ``DistributedDataParallel`` broadcasts rank 0's buffers before each forward pass
  through it. Spectral norm's power iteration then runs on identical weights and vectors, so
  its singular vectors stay identical on all ranks. cBN's running statistics are updated with
  each rank's batches, and checkpoints and samples use rank 0's.
- The score of the guidance term is computed per rank on that rank's fake and real batches,
  so it depends on the per-rank batch size (a batch score is at most the batch size).
- Logged losses and scores, and the losses of the gamma_t rule, are averaged over ranks, so
  gamma_t stays identical on all ranks.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .data import BatchStream, ImageTensorDataset

__all__ = [
    "ShardedBatchStream",
    "all_gather_objects",
    "any_rank",
    "broadcast_object",
    "get_rank",
    "get_world_size",
    "init_from_environment",
    "is_distributed",
    "local_rank",
    "rank_seed",
]

logger = logging.getLogger(__name__)

# Collectives wait this long for a slow rank, e.g. while rank 0 evaluates or writes a checkpoint.
_COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


def is_distributed() -> bool:
    """Return whether a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Return this process's rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Return the number of ranks, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Return the rank on this machine that ``torchrun`` set in ``LOCAL_RANK``, else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_environment(device_type: str) -> bool:
    """Initialise the default process group when ``torchrun`` started several processes.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. The
    backend is NCCL for CUDA and gloo otherwise. Returns True when this call created the group,
    and False when there is nothing to do: one process, or a group that already exists.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE is {world_size} but this PyTorch build has no torch.distributed; run "
            "a single process, or install a PyTorch build with distributed support"
        )
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=_COLLECTIVE_TIMEOUT)
    logger.info(
        "Rank %d of %d joined the %s process group (local rank %d)",
        dist.get_rank(),
        world_size,
        backend,
        local_rank(),
    )
    return True


def broadcast_object(value: Any, source: int = 0) -> Any:
    """Return ``value`` of rank ``source`` on every rank. The value is sent pickled."""
    if not is_distributed():
        return value
    container = [value]
    dist.broadcast_object_list(container, src=source, device=_collective_device())
    return container[0]


def all_gather_objects(value: Any) -> list[Any]:
    """Return the list of every rank's ``value``, ordered by rank."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def any_rank(flag: bool) -> bool:
    """Return True on every rank when ``flag`` is True on at least one rank."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_seed(seed: int, rank: int, *, iteration: int = 0) -> int:
    """Return the seed of rank ``rank``'s RNG: ``seed`` itself for rank 0 at iteration 0.

    Every other (rank, iteration) pair gets an independent stream from
    ``numpy.random.SeedSequence``, so that no two ranks draw the same noise and a
    single-process run equals rank 0 of a distributed one. ``iteration`` seeds a rank that a
    resumed run adds.
    """
    if rank == 0 and iteration == 0:
        return seed
    spawn_key = (rank,) if iteration == 0 else (rank, iteration)
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=spawn_key)
    # Keep the seed below 2**63, inside the range of torch.Generator.manual_seed.
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)


class ShardedBatchStream(BatchStream):
    """A :class:`BatchStream` of which every rank reads a disjoint shard of each epoch.

    All ranks draw the same per-epoch permutation from the same seed. Rank r's batch is the
    entries ``position + r, position + r + world_size, ...`` of the permutation, and
    ``position`` advances by ``batch_size * world_size`` per batch, so after each batch the
    images consumed by all ranks together are the prefix ``order[:position]``. An epoch ends
    when fewer than ``batch_size * world_size`` images remain, and the rest is dropped. With
    ``world_size=1`` the stream gives the same batches as ``BatchStream`` with the same seed.

    The state (RNG, epoch, permutation, position) does not depend on the number of ranks: on
    the same number it resumes the exact batches, on another it continues the same epoch with
    the images not yet consumed.
    """

    def __init__(
        self,
        dataset: ImageTensorDataset,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        if batch_size * world_size > len(dataset):
            raise ValueError(
                f"a global batch of {batch_size} x {world_size} ranks is larger than the "
                f"dataset ({len(dataset)} images); use a smaller batch size or more images"
            )
        super().__init__(dataset, batch_size, device, seed=seed)
        self.rank = rank
        self.world_size = world_size

    def __next__(self) -> tuple[Tensor, Tensor]:
        global_batch = self.batch_size * self.world_size
        if self._position + global_batch > self._order.numel():
            self.epoch += 1
            self._order = self._new_order()
            self._position = 0
        start = self._position + self.rank
        index = self._order[start : self._position + global_batch : self.world_size]
        self._position += global_batch
        index = index.to(self.device)
        images = self.images.index_select(0, index).float().div_(127.5).sub_(1.0)
        return images, self.labels.index_select(0, index)

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import run_config

from baselines.controlgan import load_checkpoint
from baselines.controlgan.data import BatchStream, ImageTensorDataset
from baselines.controlgan.distributed import ShardedBatchStream, rank_seed
from baselines.controlgan.run import train
from tests.examples.cli_helpers import write_image_folder

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).with_name("ddp_worker.py")


def dataset(num_images: int = 40) -> ImageTensorDataset:
    images = torch.arange(num_images, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    return ImageTensorDataset(images.contiguous(), torch.arange(num_images), ["a", "b"])


def drawn_labels(stream: ShardedBatchStream | BatchStream, batches: int) -> list[list[int]]:
    return [next(stream)[1].tolist() for _ in range(batches)]


# Sharded data stream


def test_sharded_stream_single_rank_matches_batch_stream():
    sharded = ShardedBatchStream(dataset(), 4, seed=3)
    plain = BatchStream(dataset(), 4, seed=3)
    assert drawn_labels(sharded, 25) == drawn_labels(plain, 25)


def test_sharded_stream_ranks_read_disjoint_prefix():
    streams = [ShardedBatchStream(dataset(), 4, seed=1, rank=r, world_size=2) for r in range(2)]
    order = streams[0].state_dict()["order"].tolist()
    consumed: list[int] = []
    for _ in range(5):
        for stream in streams:
            consumed += next(stream)[1].tolist()
    # Five global batches of 8 use the whole epoch of 40 images, each image once.
    assert sorted(consumed) == sorted(order)
    assert streams[0].state_dict()["position"] == 40
    first_batches = [ShardedBatchStream(dataset(), 4, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert next(first_batches[0])[1].tolist() == order[0:8:2]
    assert next(first_batches[1])[1].tolist() == order[1:8:2]


def test_sharded_stream_drops_incomplete_global_batch():
    stream = ShardedBatchStream(dataset(20), 4, seed=0, rank=1, world_size=2)
    next(stream)
    next(stream)
    # 4 images are left, fewer than a global batch of 8: the next batch starts epoch 1.
    next(stream)
    assert stream.epoch == 1
    assert stream.state_dict()["position"] == 8


def test_sharded_stream_resumes_exactly_on_same_ranks():
    stream = ShardedBatchStream(dataset(), 4, seed=2, rank=1, world_size=2)
    drawn_labels(stream, 7)
    state = stream.state_dict()
    expected = drawn_labels(stream, 6)
    resumed = ShardedBatchStream(dataset(), 4, seed=9, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert drawn_labels(resumed, 6) == expected


def test_sharded_stream_resumes_on_other_rank_count():
    two_ranks = [ShardedBatchStream(dataset(), 4, seed=4, rank=r, world_size=2) for r in (0, 1)]
    consumed = [label for stream in two_ranks for label in next(stream)[1].tolist()]
    state = two_ranks[0].state_dict()

    one_rank = ShardedBatchStream(dataset(), 4, seed=0)
    one_rank.load_state_dict(state)
    rest = [label for batch in drawn_labels(one_rank, 8) for label in batch]
    # The epoch continues with the 32 images that the two ranks had not consumed.
    assert sorted(consumed + rest) == list(range(40))
    assert one_rank.epoch == state["epoch"]


def test_sharded_stream_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchStream(dataset(), 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="global batch"):
        ShardedBatchStream(dataset(), 8, rank=0, world_size=6)


def test_rank_seed_keeps_rank_zero_seed():
    assert rank_seed(7, 0) == 7
    seeds = {rank_seed(7, rank) for rank in range(4)}
    assert len(seeds) == 4
    assert rank_seed(7, 1) != rank_seed(7, 1, iteration=10)
    assert rank_seed(7, 1) == rank_seed(7, 1)


# Two processes with gloo, started by torchrun


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def network_tensors(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    tensors = {}
    for name in ("generator", "discriminator", "classifier", "generator_ema"):
        for key, tensor in state[name]["state_dict"].items():
            tensors[f"{name}.{key}"] = tensor
    return tensors


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run ddp_worker.py on two CPU processes and return its output folder."""
    root = tmp_path_factory.mktemp("ddp")
    images = write_image_folder(root / "images", classes=3, per_class=8)
    out = root / "out"
    out.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        str(WORKER), "--out", str(out), "--images", str(images),
    ]  # fmt: skip
    # A session of its own, so that a timeout can stop torchrun and both workers.
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the two-rank run timed out:\n{stdout[-3000:]}\n{stderr[-6000:]}")
    assert process.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return out


def test_ddp_ranks_keep_identical_weights(two_rank_run: Path):
    ranks = [torch.load(two_rank_run / f"trainer_rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["distributed"] and ranks[1]["distributed"]
    for network in ("generator", "discriminator", "classifier", "ema"):
        for name, tensor in ranks[0][network].items():
            assert torch.equal(tensor, ranks[1][network][name]), f"{network}.{name}"
    # Spectral norm's singular vectors stay identical; cBN running statistics are per rank.
    checked = 0
    for network in ("generator_buffers", "discriminator_buffers"):
        for name, tensor in ranks[0][network].items():
            if name.endswith(("._u", "._v")):
                assert torch.equal(tensor, ranks[1][network][name]), f"{network}.{name}"
                checked += 1
    assert checked > 0
    assert ranks[0]["gamma"] == ranks[1]["gamma"]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]


def test_ddp_gradients_are_mean_of_rank_gradients(two_rank_run: Path):
    # Covers the gradient penalty's double backward, and D and C without their wrappers in
    # the generator step.
    for rank in (0, 1):
        differences = json.loads((two_rank_run / f"gradients_rank{rank}.json").read_text())
        for network in ("discriminator", "generator", "classifier"):
            assert differences[network] < 1e-6, (rank, network)
            # Otherwise any synchronisation would pass.
            assert differences[f"{network}_between_ranks"] > 1e-4, (rank, network)


def test_ddp_ranks_draw_different_data_and_noise(two_rank_run: Path):
    ranks = [torch.load(two_rank_run / f"trainer_rank{r}.pt") for r in (0, 1)]
    assert not torch.equal(ranks[0]["first_batch"], ranks[1]["first_batch"])
    assert not torch.equal(ranks[0]["rng"], ranks[1]["rng"])
    assert ranks[0]["metrics"][0]["gp"] > 0


def test_ddp_run_stops_on_all_ranks_and_resumes(two_rank_run: Path):
    for rank in (0, 1):
        result = json.loads((two_rank_run / f"result_rank{rank}.json").read_text())
        assert result == {"stopped_at": 2, "interrupted": True, "resumed_to": 5}, rank

    straight = two_rank_run / "straight" / "checkpoints" / "checkpoint_0000005.pt"
    resumed = two_rank_run / "interrupted" / "checkpoints" / "checkpoint_0000005.pt"
    expected, actual = network_tensors(straight), network_tensors(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    straight_state, resumed_state = load_checkpoint(straight), load_checkpoint(resumed)
    assert straight_state["gamma"] == resumed_state["gamma"]
    assert straight_state["last_metrics"] == resumed_state["last_metrics"]
    assert len(resumed_state["rank_rngs"]) == 2
    saved_rngs = zip(straight_state["rank_rngs"], resumed_state["rank_rngs"], strict=True)
    for saved, restored in saved_rngs:
        assert torch.equal(saved, restored)


def test_ddp_checkpoint_resumes_on_one_process(two_rank_run: Path):
    config = run_config(two_rank_run / "interrupted", two_rank_run.parent / "images", True)
    config.train = dataclasses.replace(config.train, iterations=6)
    result = train(config)
    assert result.iteration == 6
    assert not result.interrupted

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor

from baselines.controlgan import ControlGANTrainer, Generator, load_checkpoint, save_checkpoint
from baselines.controlgan.ema import GeneratorEMA

MakeTrainer = Callable[..., ControlGANTrainer]
RealBatches = Callable[..., Iterator[tuple[Tensor, Tensor]]]


def tiny_generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    return Generator(channels=8, z_dim=16)


def test_ema_update_follows_formula():
    generator = tiny_generator(0)
    ema = GeneratorEMA(generator, decay=0.75)
    start = {name: p.detach().clone() for name, p in ema.generator.named_parameters()}
    target = tiny_generator(1)

    ema.update(target)
    ema.update(target)

    for name, parameter in ema.generator.named_parameters():
        new = dict(target.named_parameters())[name].detach()
        # Two steps towards a fixed target: 0.75**2 of the distance remains.
        expected = new + 0.75**2 * (start[name] - new)
        torch.testing.assert_close(parameter, expected, msg=name)
        assert not parameter.requires_grad


def test_ema_copies_buffers():
    generator = tiny_generator(0)
    ema = GeneratorEMA(generator, decay=0.9)
    with torch.no_grad():
        generator(torch.randn(6, 16) * 3, torch.randint(0, 10, (6,)))
    ema.update(generator)
    for (name, buffer), (_, copied) in zip(
        generator.named_buffers(), ema.generator.named_buffers(), strict=True
    ):
        assert torch.equal(buffer, copied), name
    assert not ema.generator.training


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_ema_rejects_bad_decay(decay):
    with pytest.raises(ValueError, match="decay"):
        GeneratorEMA(tiny_generator(0), decay)


def test_trainer_averages_generator(make_trainer: MakeTrainer, real_batches: RealBatches):
    trainer = make_trainer(ema_decay=0.5)
    data = real_batches()
    trainer.train_step(data)
    trainer.train_step(data)
    raw = dict(trainer.generator.named_parameters())
    averaged = dict(trainer.ema.generator.named_parameters())
    assert raw.keys() == averaged.keys()
    assert any(not torch.equal(raw[name], averaged[name]) for name in raw)
    assert make_trainer().ema is None


def test_sample_from_ema(make_trainer: MakeTrainer, real_batches: RealBatches):
    trainer = make_trainer(ema_decay=0.5)
    trainer.train_step(real_batches())
    raw, labels = trainer.sample(6, seed=3)
    averaged, averaged_labels = trainer.sample(6, seed=3, use_ema=True)
    assert averaged.shape == raw.shape
    assert torch.equal(labels, averaged_labels)
    assert not torch.equal(raw, averaged)
    with pytest.raises(ValueError, match="ema_decay"):
        make_trainer().sample(2, use_ema=True)


def test_ema_resumes_from_checkpoint(
    make_trainer: MakeTrainer, real_batches: RealBatches, tmp_path
):
    straight = make_trainer(ema_decay=0.9)
    data = real_batches(seed=2)
    for _ in range(3):
        straight.train_step(data)

    first = make_trainer(ema_decay=0.9)
    data = real_batches(seed=2)
    for _ in range(2):
        first.train_step(data)
    path = save_checkpoint(first.state_dict(), tmp_path / "checkpoint.pt")
    state = load_checkpoint(path)
    assert state["generator_ema"]["decay"] == 0.9
    assert (
        Generator.from_checkpoint_entry(state["generator_ema"]).config
        == state["generator"]["config"]
    )

    resumed = make_trainer(network_seed=5, ema_decay=0.9)
    resumed.load_state_dict(state)
    resumed.train_step(itertools.islice(real_batches(seed=2), 2 * 2, None))
    for (name, expected), (_, actual) in zip(
        straight.ema.generator.state_dict().items(),
        resumed.ema.generator.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(expected, actual), name


def test_state_without_ema_starts_average_at_generator(make_trainer: MakeTrainer, caplog):
    state = make_trainer(network_seed=3).state_dict()
    trainer = make_trainer(ema_decay=0.9)
    trainer.load_state_dict(state)
    for name, parameter in trainer.ema.generator.named_parameters():
        assert torch.equal(parameter, dict(trainer.generator.named_parameters())[name]), name
    assert "no moving average" in caplog.text

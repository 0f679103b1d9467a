from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from baselines.controlgan import (
    ControlGANTrainer,
    Generator,
    batchnorm_batch_statistics,
    load_checkpoint,
    load_generator,
    sample_images,
    save_checkpoint,
)
from score_guidance import InvalidCheckpointError

MakeTrainer = Callable[..., ControlGANTrainer]
RealBatches = Callable[..., Iterator[tuple[torch.Tensor, torch.Tensor]]]


def trained_generator() -> Generator:
    """Tiny generator whose BatchNorm running statistics differ from their initial values."""
    torch.manual_seed(0)
    generator = Generator(channels=8)
    with torch.no_grad():
        for _ in range(3):
            generator(torch.randn(8, 128) * 3, torch.randint(0, 10, (8,)))
    return generator


def buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in module.named_buffers()}


def test_sample_images_shape_and_determinism():
    generator = trained_generator()
    labels = torch.arange(10)
    first = sample_images(generator, labels, batch_size=4, rng=torch.Generator().manual_seed(1))
    second = sample_images(generator, labels, batch_size=4, rng=torch.Generator().manual_seed(1))
    assert first.shape == (10, 3, 32, 32)
    assert torch.equal(first, second)
    assert first.abs().max() <= 1.0


def test_sample_images_eval_mode_ignores_batch_size():
    generator = trained_generator()
    labels = torch.arange(8)
    whole = sample_images(generator, labels, batch_size=8, rng=torch.Generator().manual_seed(1))
    split = sample_images(generator, labels, batch_size=3, rng=torch.Generator().manual_seed(1))
    torch.testing.assert_close(whole, split)


def test_batch_statistics_sampling_restores_state():
    generator = trained_generator()
    generator.train()
    before = buffers(generator)
    labels = torch.arange(8)
    running = sample_images(generator, labels, rng=torch.Generator().manual_seed(1))
    batch = sample_images(generator, labels, eval_mode=False, rng=torch.Generator().manual_seed(1))
    assert not torch.allclose(running, batch)
    assert generator.training
    after = buffers(generator)
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def test_batchnorm_batch_statistics_restores_modes():
    generator = trained_generator().eval()
    norm = generator.output_norm.batch_norm
    with batchnorm_batch_statistics(generator):
        assert norm.training
        assert not generator.output_conv.training
    assert not norm.training


def test_trainer_sample_leaves_training_rng(make_trainer: MakeTrainer):
    trainer = make_trainer()
    rng_before = trainer.rng.get_state()
    images, labels = trainer.sample(6, seed=2)
    again, labels_again = trainer.sample(6, seed=2)
    assert images.shape == (6, 3, 32, 32)
    assert torch.equal(images, again)
    assert torch.equal(labels, labels_again)
    assert torch.equal(trainer.rng.get_state(), rng_before)
    assert ((labels >= 0) & (labels < 10)).all()


def test_trainer_sample_uses_given_labels(make_trainer: MakeTrainer):
    trainer = make_trainer()
    labels = torch.tensor([7, 7, 2])
    _, returned = trainer.sample(3, labels)
    assert torch.equal(returned, labels)
    with pytest.raises(ValueError, match="shape"):
        trainer.sample(4, labels)


def test_load_generator_matches_trainer(
    make_trainer: MakeTrainer, real_batches: RealBatches, tmp_path
):
    trainer = make_trainer()
    trainer.train_step(real_batches())
    path = save_checkpoint(trainer.state_dict(), tmp_path / "checkpoint.pt")

    generator = load_generator(path, device="cpu")

    assert not generator.training
    assert generator.config == trainer.generator.config
    z = torch.randn(4, 128)
    y = torch.tensor([0, 1, 2, 3])
    trainer.generator.eval()
    with torch.no_grad():
        torch.testing.assert_close(generator(z, y), trainer.generator(z, y), rtol=0, atol=0)


def test_save_checkpoint_leaves_no_partial_file(make_trainer: MakeTrainer, tmp_path):
    path = save_checkpoint(make_trainer().state_dict(), tmp_path / "checkpoint.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert load_checkpoint(path)["iteration"] == 0


def test_load_checkpoint_rejects_missing_file(tmp_path):
    with pytest.raises(InvalidCheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_load_checkpoint_rejects_other_files(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(InvalidCheckpointError, match="format_version=None"):
        load_checkpoint(path)
    with pytest.raises(InvalidCheckpointError):
        load_generator(path)

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor

from baselines.controlgan import (
    ControlGANTrainer,
    TrainConfig,
    gradient_penalty,
    hinge_discriminator_loss,
)
from baselines.controlgan.speed import resolve_amp_dtype, resolve_channels_last

MakeTrainer = Callable[..., ControlGANTrainer]
RealBatches = Callable[..., Iterator[tuple[Tensor, Tensor]]]

CPU = torch.device("cpu")


def test_amp_modes_resolve_per_device():
    assert resolve_amp_dtype("off", CPU) is None
    assert resolve_amp_dtype("auto", CPU) is None
    assert resolve_amp_dtype("bf16", CPU) is torch.bfloat16
    assert resolve_amp_dtype("fp16", CPU) is torch.float16
    with pytest.raises(ValueError, match="amp"):
        resolve_amp_dtype("fp8", CPU)


def test_channels_last_default_is_cuda_only():
    assert resolve_channels_last(None, CPU) is False
    assert resolve_channels_last(None, torch.device("cuda")) is True
    assert resolve_channels_last(True, CPU) is True


@pytest.mark.parametrize(("field", "value"), [("amp", "fp8"), ("ema_decay", 1.0)])
def test_train_config_rejects_bad_speed_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def step_losses(trainer: ControlGANTrainer, real: Tensor) -> dict[str, Tensor]:
    """Compute D's hinge loss, the gradient penalty, the G terms and C's loss on one batch."""
    z, y = trainer.sample_latents(real.shape[0])
    labels = torch.arange(real.shape[0]) % 10
    with trainer.precision.autocast():
        fake = trainer.generator(z, y).float()
        logits = trainer.discriminator(torch.cat([real, fake])).float()
        class_logits = trainer.classifier(real).float()
    with trainer.precision.full_precision():
        penalty = gradient_penalty(trainer.discriminator, real, fake, generator=trainer.rng)
    terms = trainer.generator_loss(z, y, real)
    return {
        "hinge": hinge_discriminator_loss(*logits.chunk(2)),
        "gp": penalty,
        "loss_g": terms.total,
        "adversarial": terms.adversarial,
        "classification": terms.classification,
        "guidance": terms.guidance,
        "loss_c": torch.nn.functional.cross_entropy(class_logits, labels),
    }


def test_bf16_losses_close_to_float32(make_trainer: MakeTrainer, real_batches: RealBatches):
    real, _ = next(real_batches())
    losses = {}
    for amp in ("off", "bf16"):
        trainer = make_trainer(score_guidance=True, amp=amp)
        trainer.generator.eval()
        trainer.gamma.load_state_dict({"value": 0.1})
        losses[amp] = step_losses(trainer, real)
    for name, value in losses["bf16"].items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        # bfloat16 keeps 8 significant bits, about 0.4 % per rounding.
        torch.testing.assert_close(value, losses["off"][name], rtol=0.03, atol=0.03, msg=name)


def test_bf16_train_steps_finite(make_trainer: MakeTrainer, real_batches: RealBatches):
    trainer = make_trainer(score_guidance=True, amp="bf16")
    data = real_batches()
    for _ in range(2):
        metrics = trainer.train_step(data)
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values())
    assert trainer.precision.dtype is torch.bfloat16
    assert trainer.precision.state_dict()["generator"] == {}


# A scaler skips the optimiser step of an iteration whose gradients overflow, which the
# learning-rate scheduler reports once.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
def test_fp16_scales_each_network(make_trainer: MakeTrainer, real_batches: RealBatches):
    trainer = make_trainer(score_guidance=True, amp="fp16")
    data = real_batches()
    for _ in range(2):
        trainer.train_step(data)
    scalers = trainer.state_dict()["grad_scalers"]
    assert set(scalers) == {"generator", "discriminator", "classifier"}
    assert all(state["scale"] > 0 for state in scalers.values())

    resumed = make_trainer(score_guidance=True, amp="fp16")
    resumed.load_state_dict(trainer.state_dict())
    assert resumed.precision.state_dict() == trainer.precision.state_dict()


def test_channels_last_matches_contiguous(make_trainer: MakeTrainer, real_batches: RealBatches):
    results = {}
    for channels_last in (False, True):
        trainer = make_trainer(score_guidance=True, channels_last=channels_last)
        metrics = trainer.train_step(real_batches())
        weight = trainer.discriminator.blocks[0].conv1.parametrizations.weight.original
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        results[channels_last] = (metrics, weight.detach().contiguous())
    assert results[True][0]["loss_d"] == pytest.approx(results[False][0]["loss_d"], rel=1e-4)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-4, atol=1e-5)


def test_evaluator_checks_only_first_iteration(
    make_trainer: MakeTrainer, real_batches: RealBatches
):
    trainer = make_trainer(score_guidance=True)
    evaluator = trainer.guidance.evaluator
    assert evaluator.validate_inputs
    trainer.train_step(real_batches())
    assert not evaluator.validate_inputs


def test_first_iteration_rejects_unit_range_images(
    make_trainer: MakeTrainer, real_batches: RealBatches
):
    def unit_range_batches() -> Iterator[tuple[Tensor, Tensor]]:
        for images, labels in real_batches(batch_size=4):
            yield (images + 1) / 2, labels

    trainer = make_trainer(score_guidance=True, n_dis=1)
    with pytest.raises(ValueError, match="no value below 0"):
        trainer.train_step(unit_range_batches())


def test_metrics_read_guidance_scores_without_last(
    make_trainer: MakeTrainer, real_batches: RealBatches, monkeypatch: pytest.MonkeyPatch
):
    trainer = make_trainer(score_guidance=True)

    def fail(self: object) -> None:
        raise AssertionError("the trainer read guidance.last, which synchronises twice")

    monkeypatch.setattr(type(trainer.guidance), "last", property(fail))
    metrics = trainer.train_step(real_batches())
    fake_score, reference_score = trainer.guidance.last_scores
    assert metrics["guidance_fake_score"] == pytest.approx(fake_score.item())
    assert metrics["guidance_reference_score"] == pytest.approx(reference_score.item())
    assert metrics["guidance_capped"] == float(fake_score.item() >= reference_score.item())


@pytest.mark.slow
def test_compiled_steps_match_eager(make_trainer: MakeTrainer, real_batches: RealBatches):
    results = {}
    for compiled in (False, True):
        trainer = make_trainer(score_guidance=True, compile=compiled)
        data = real_batches()
        metrics = [trainer.train_step(data) for _ in range(2)]
        results[compiled] = (metrics, trainer.generator.output_conv.parametrizations.weight)
    for eager, compiled in zip(results[False][0], results[True][0], strict=True):
        for name, value in eager.items():
            assert compiled[name] == pytest.approx(value, rel=1e-3, abs=1e-4), name
    original = results[False][1].original.detach()
    torch.testing.assert_close(results[True][1].original.detach(), original, rtol=1e-3, atol=1e-5)

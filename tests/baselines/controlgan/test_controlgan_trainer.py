from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from baselines.controlgan import (
    ControlGANConfig,
    ControlGANTrainer,
    NonFiniteLossError,
    TrainConfig,
    build_guidance,
    build_networks,
    hinge_generator_loss,
    load_checkpoint,
    save_checkpoint,
)
from score_guidance import ScoreGuidanceLoss, inception_score

MakeTrainer = Callable[..., ControlGANTrainer]
RealBatches = Callable[..., Iterator[tuple[Tensor, Tensor]]]


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def changed_parameters(module: nn.Module, before: dict[str, Tensor]) -> list[str]:
    return [
        name
        for name, parameter in module.named_parameters()
        if not torch.equal(parameter.detach(), before[name])
    ]


def assert_same_state(first: ControlGANTrainer, second: ControlGANTrainer) -> None:
    for name in ("generator", "discriminator", "classifier"):
        state_a = getattr(first, name).state_dict()
        state_b = getattr(second, name).state_dict()
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), f"{name}.{key}"


def test_train_step_updates_all_three_networks(
    make_trainer: MakeTrainer, real_batches: RealBatches
):
    trainer = make_trainer(score_guidance=True)
    before = {
        name: snapshot(getattr(trainer, name))
        for name in ("generator", "discriminator", "classifier")
    }
    data = real_batches()
    trainer.train_step(data)
    trainer.train_step(data)
    for name, saved in before.items():
        network = getattr(trainer, name)
        assert len(changed_parameters(network, saved)) > 0, name
    assert trainer.iteration == 2


def test_train_step_keeps_evaluator_frozen(make_trainer: MakeTrainer, real_batches: RealBatches):
    trainer = make_trainer(score_guidance=True)
    backbone = trainer.guidance.evaluator.backbone
    before = snapshot(backbone)
    trainer.train_step(real_batches())
    for name, parameter in backbone.named_parameters():
        assert not parameter.requires_grad, name
        assert parameter.grad is None, name
        assert torch.equal(parameter, before[name]), name
    assert not backbone.training


def test_train_step_metrics(make_trainer: MakeTrainer, real_batches: RealBatches):
    trainer = make_trainer(score_guidance=True)
    metrics = trainer.train_step(real_batches())
    expected_keys = {
        "loss_d",
        "gp",
        "loss_g",
        "loss_g_adversarial",
        "class_loss_fake",
        "loss_c",
        "class_loss_real",
        "gamma",
        "lr_g",
        "lr_d",
        "lr_c",
        "guidance_term",
        "guidance_fake_score",
        "guidance_reference_score",
        "guidance_capped",
    }
    assert set(metrics) == expected_keys
    assert all(isinstance(value, float) for value in metrics.values())
    assert (metrics["lr_g"], metrics["lr_d"], metrics["lr_c"]) == (2e-4, 4e-4, 1e-3)
    assert metrics["class_loss_real"] == metrics["loss_c"]
    assert metrics["gp"] > 0
    recomputed = (
        metrics["loss_g_adversarial"]
        + metrics["gamma"] * metrics["class_loss_fake"]
        + metrics["guidance_term"]
    )
    assert metrics["loss_g"] == pytest.approx(recomputed, abs=1e-6)
    assert metrics["guidance_term"] == pytest.approx(
        -0.5 * min(metrics["guidance_fake_score"], metrics["guidance_reference_score"]), rel=1e-5
    )


def test_train_step_metrics_without_guidance(make_trainer: MakeTrainer, real_batches: RealBatches):
    metrics = make_trainer().train_step(real_batches())
    assert "guidance_term" not in metrics
    assert "guidance_fake_score" not in metrics
    assert metrics["gamma"] == 0.0
    assert metrics["loss_g"] == pytest.approx(metrics["loss_g_adversarial"], abs=1e-6)


def test_generator_loss_is_sum_of_three_terms(make_trainer: MakeTrainer, real_batches: RealBatches):
    trainer = make_trainer(score_guidance=True)
    trainer.gamma.load_state_dict({"value": 0.05})
    # Eval mode makes every forward pass deterministic, so the terms can be recomputed.
    trainer.generator.eval()
    trainer.discriminator.eval()
    z, y = trainer.sample_latents(trainer.config.batch_size)
    real_images, _ = next(real_batches())

    terms = trainer.generator_loss(z, y, real_images)

    with torch.no_grad():
        fake = trainer.generator(z, y)
        adversarial = -trainer.discriminator(fake).mean()
        classification = torch.nn.functional.cross_entropy(trainer.classifier(fake), y)
        evaluator = trainer.guidance.evaluator
        score = torch.minimum(
            inception_score(evaluator(fake)), inception_score(evaluator(real_images))
        )
    assert terms.gamma == 0.05
    torch.testing.assert_close(terms.adversarial, adversarial)
    torch.testing.assert_close(terms.classification, classification)
    torch.testing.assert_close(terms.guidance, -0.5 * score)
    torch.testing.assert_close(
        terms.total, terms.adversarial + 0.05 * terms.classification + terms.guidance
    )


def test_generator_loss_without_guidance_is_controlgan(
    make_trainer: MakeTrainer, real_batches: RealBatches
):
    trainer = make_trainer()
    trainer.gamma.load_state_dict({"value": 0.1})
    z, y = trainer.sample_latents(trainer.config.batch_size)
    terms = trainer.generator_loss(z, y, next(real_batches())[0])
    assert terms.guidance.item() == 0.0
    torch.testing.assert_close(terms.total, terms.adversarial + 0.1 * terms.classification)


def test_generator_step_leaves_discriminator_and_classifier(
    make_trainer: MakeTrainer, real_batches: RealBatches
):
    trainer = make_trainer()
    discriminator_before = snapshot(trainer.discriminator)
    classifier_before = snapshot(trainer.classifier)
    z, y = trainer.sample_latents(trainer.config.batch_size)
    trainer._generator_step(z, y, next(real_batches())[0])
    assert changed_parameters(trainer.discriminator, discriminator_before) == []
    assert changed_parameters(trainer.classifier, classifier_before) == []
    assert all(p.grad is None for p in trainer.discriminator.parameters())
    assert all(p.grad is None for p in trainer.classifier.parameters())


def test_gamma_follows_step_losses(make_trainer: MakeTrainer, real_batches: RealBatches):
    trainer = make_trainer(gamma_r=0.05, gamma_alpha=0.5)
    metrics = trainer.train_step(real_batches())
    expected = 0.05 * (metrics["class_loss_fake"] - 0.5 * metrics["class_loss_real"])
    assert 0.0 < expected < 0.1
    assert trainer.gamma.value == pytest.approx(expected)
    assert trainer.train_step(real_batches(1))["gamma"] == pytest.approx(expected)


def test_train_steps_bitwise_reproducible(make_trainer: MakeTrainer, real_batches: RealBatches):
    first = make_trainer(score_guidance=True, dequantize=True)
    second = make_trainer(score_guidance=True, dequantize=True)
    for trainer in (first, second):
        data = real_batches(seed=3)
        trainer.train_step(data)
        trainer.train_step(data)
    assert_same_state(first, second)
    assert first.gamma.value == second.gamma.value
    assert torch.equal(first.rng.get_state(), second.rng.get_state())


def test_trainer_seed_changes_training(make_trainer: MakeTrainer, real_batches: RealBatches):
    first = make_trainer(seed=0)
    second = make_trainer(seed=1)
    first.train_step(real_batches())
    second.train_step(real_batches())
    generator_a = first.generator.input_layer.parametrizations.weight.original
    generator_b = second.generator.input_layer.parametrizations.weight.original
    assert not torch.equal(generator_a, generator_b)


def test_resume_from_checkpoint_matches_uninterrupted_run(
    make_trainer: MakeTrainer, tmp_path, real_batches: RealBatches
):
    n_dis = 2
    uninterrupted = make_trainer(score_guidance=True)
    data = real_batches(seed=5)
    for _ in range(3):
        uninterrupted.train_step(data)

    interrupted = make_trainer(score_guidance=True)
    data = real_batches(seed=5)
    for _ in range(2):
        interrupted.train_step(data)
    path = save_checkpoint(interrupted.state_dict(), tmp_path / "run" / "checkpoint.pt")

    # Different initial weights and RNG seed: everything must come from the checkpoint.
    resumed = make_trainer(network_seed=9, score_guidance=True, seed=9)
    resumed.load_state_dict(load_checkpoint(path))
    data = itertools.islice(real_batches(seed=5), 2 * n_dis, None)
    resumed.train_step(data)

    assert resumed.iteration == 3
    assert_same_state(uninterrupted, resumed)
    assert resumed.gamma.value == uninterrupted.gamma.value
    for name in ("optimizer_g", "optimizer_d", "optimizer_c"):
        state_a = getattr(uninterrupted, name).state_dict()["state"]
        state_b = getattr(resumed, name).state_dict()["state"]
        assert all(torch.equal(state_a[i]["exp_avg"], state_b[i]["exp_avg"]) for i in state_a)


def test_state_dict_excludes_evaluator(make_trainer: MakeTrainer):
    state = make_trainer(score_guidance=True).state_dict()
    assert "guidance" not in state
    for network in ("generator", "discriminator", "classifier"):
        assert not any("evaluator" in key for key in state[network]["state_dict"])


def test_load_state_dict_rejects_other_network_sizes(make_trainer: MakeTrainer):
    state = make_trainer().state_dict()
    state["discriminator"]["config"]["channels"] = 16
    with pytest.raises(ValueError, match="discriminator"):
        make_trainer().load_state_dict(state)


def test_load_state_dict_rejects_missing_entries(make_trainer: MakeTrainer):
    state = make_trainer().state_dict()
    del state["gamma"]
    with pytest.raises(ValueError, match="gamma"):
        make_trainer().load_state_dict(state)


def nan_batches(real_batches: RealBatches) -> Iterator[tuple[Tensor, Tensor]]:
    for images, labels in real_batches():
        yield torch.full_like(images, float("nan")), labels


def test_non_finite_loss_names_loss_and_iteration(
    make_trainer: MakeTrainer, real_batches: RealBatches
):
    trainer = make_trainer()
    trainer.train_step(real_batches())
    gamma_before = trainer.gamma.value
    with pytest.raises(NonFiniteLossError, match="iteration 2") as raised:
        trainer.train_step(nan_batches(real_batches))
    assert raised.value.name == "loss_d"
    assert raised.value.iteration == 2
    assert trainer.iteration == 1
    assert trainer.gamma.value == gamma_before
    assert trainer.scheduler_g.last_epoch == 1


def test_non_finite_generator_loss_detected(make_trainer: MakeTrainer, real_batches: RealBatches):
    trainer = make_trainer(gp_weight=0.0)
    trainer.gamma.load_state_dict({"value": 0.1})
    with torch.no_grad():
        trainer.classifier.output_layer.weight.fill_(float("inf"))
    with pytest.raises(NonFiniteLossError) as raised:
        trainer.train_step(real_batches())
    assert raised.value.name == "class_loss_fake"
    assert raised.value.iteration == 1


def test_lr_decay_halves_generator_and_discriminator(
    make_trainer: MakeTrainer, real_batches: RealBatches
):
    trainer = make_trainer(n_dis=1, lr_decay_at=2)
    data = real_batches()
    rates = [trainer.train_step(data) for _ in range(3)]
    assert [m["lr_g"] for m in rates] == [2e-4, 2e-4, 1e-4]
    assert [m["lr_d"] for m in rates] == [4e-4, 4e-4, 2e-4]
    assert [m["lr_c"] for m in rates] == [1e-3, 1e-3, 1e-3]


def test_classifier_linear_schedule(make_trainer: MakeTrainer):
    trainer = make_trainer(lr_c_schedule="linear", iterations=4)
    for _ in range(2):
        trainer.optimizer_c.step()
        trainer.scheduler_c.step()
    assert trainer.optimizer_c.param_groups[0]["lr"] == pytest.approx(0.5e-3)


def test_wrap_networks_routes_training_forwards(
    make_trainer: MakeTrainer, real_batches: RealBatches
):
    trainer = make_trainer(n_dis=2)
    calls: Counter[str] = Counter()

    def wrap(network: nn.Module) -> Callable[..., Tensor]:
        def forward(*args: Tensor) -> Tensor:
            calls[type(network).__name__] += 1
            return network(*args)

        return forward

    trainer.wrap_networks(wrap)
    trainer.train_step(real_batches())
    # G: one per D step and one for the G step. D: real+fake and the penalty per D step, and
    # the G step. C: the G step and the classifier step.
    assert calls == Counter(Generator=3, Discriminator=5, Classifier=2)


def test_real_batch_of_wrong_size_raises(make_trainer: MakeTrainer, real_batches: RealBatches):
    trainer = make_trainer()
    with pytest.raises(ValueError, match="drop_last"):
        trainer.train_step(real_batches(batch_size=trainer.config.batch_size - 1))


def test_exhausted_data_raises(make_trainer: MakeTrainer, real_batches: RealBatches):
    with pytest.raises(RuntimeError, match="exhausted"):
        make_trainer().train_step(iter([next(real_batches())]))


def test_guidance_must_match_config(
    tiny_networks: ControlGANConfig, make_guidance: Callable[..., ScoreGuidanceLoss]
):
    torch.manual_seed(0)
    networks = build_networks(tiny_networks)
    guidance = make_guidance(weight=0.5)
    with pytest.raises(ValueError, match="build_guidance"):
        ControlGANTrainer(*networks, TrainConfig(score_guidance=True))
    with pytest.raises(ValueError, match="score_guidance is off"):
        ControlGANTrainer(*networks, TrainConfig(), guidance)
    with pytest.raises(ValueError, match="delta"):
        ControlGANTrainer(*networks, TrainConfig(score_guidance=True, delta=0.25), guidance)


def test_trainer_rejects_class_count_mismatch(tiny_networks: ControlGANConfig):
    torch.manual_seed(0)
    generator, discriminator, _ = build_networks(tiny_networks)
    _, _, classifier = build_networks(dataclasses.replace(tiny_networks, num_classes=100))
    with pytest.raises(ValueError, match="classes"):
        ControlGANTrainer(generator, discriminator, classifier)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_dis", 0),
        ("batch_size", 0),
        ("lr_d", -1e-4),
        ("betas", (0.0, 1.0)),
        ("lr_decay_factor", 0.0),
        ("gp_type", "r1"),
        ("gp_weight", -1.0),
        ("lr_c_schedule", "cosine"),
        ("augment_padding", "circular"),
        ("gamma_max", 0.0),
    ],
)
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_train_config_defaults():
    config = TrainConfig()
    assert (config.batch_size, config.iterations, config.n_dis) == (64, 100_000, 5)
    assert (config.lr_d, config.lr_g, config.betas) == (4e-4, 2e-4, (0.0, 0.9))
    assert (config.lr_decay_at, config.lr_decay_factor) == (50_000, 0.5)
    assert (config.gp_weight, config.gp_type, config.delta) == (10.0, "wgan-gp", 0.5)
    assert (config.gamma_r, config.gamma_alpha, config.gamma_max) == (1e-4, 1.0, 0.1)


def test_hinge_generator_term_matches_discriminator_output(
    make_trainer: MakeTrainer, real_batches: RealBatches
):
    trainer = make_trainer()
    trainer.discriminator.eval()
    trainer.generator.eval()
    z, y = trainer.sample_latents(trainer.config.batch_size)
    terms = trainer.generator_loss(z, y, next(real_batches())[0])
    with torch.no_grad():
        expected = hinge_generator_loss(trainer.discriminator(trainer.generator(z, y)))
    torch.testing.assert_close(terms.adversarial, expected)


def test_build_guidance_trains_with_timm_mobilenet(
    tiny_networks: ControlGANConfig, real_batches: RealBatches
):
    pytest.importorskip("timm")
    config = TrainConfig(batch_size=2, n_dis=1, score_guidance=True)
    guidance = build_guidance(config, "cpu", pretrained=False)
    torch.manual_seed(0)
    trainer = ControlGANTrainer(*build_networks(tiny_networks), config, guidance)
    metrics = trainer.train_step(real_batches(batch_size=2))
    assert guidance.weight == 0.5
    assert 1.0 <= metrics["guidance_fake_score"] <= 2.0
    assert metrics["guidance_term"] == pytest.approx(
        -0.5 * min(metrics["guidance_fake_score"], metrics["guidance_reference_score"]), rel=1e-5
    )
    assert not any(p.requires_grad for p in guidance.evaluator.backbone.parameters())

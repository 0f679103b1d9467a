from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from baselines.controlgan import (
    Discriminator,
    classification_loss,
    gradient_penalty,
    hinge_discriminator_loss,
    hinge_generator_loss,
)


def test_hinge_discriminator_loss_value():
    real_logits = torch.tensor([2.0, 0.5, -1.0])
    fake_logits = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] has mean 5/6, and relu(1 + fake) = [0, 1, 2] has mean 1.
    loss = hinge_discriminator_loss(real_logits, fake_logits)
    assert loss.item() == pytest.approx(5 / 6 + 1.0)


def test_hinge_discriminator_loss_zero_beyond_margin():
    loss = hinge_discriminator_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -5.0]))
    assert loss.item() == 0.0


def test_hinge_generator_loss_value():
    assert hinge_generator_loss(torch.tensor([-2.0, 0.0, 1.0])).item() == pytest.approx(1 / 3)


def test_classification_loss_value():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    # softmax = [1/4, 3/4], so CE for label 1 is -log(3/4).
    loss = classification_loss(logits, torch.tensor([1]))
    assert loss.item() == pytest.approx(-math.log(0.75))


class LinearCritic:
    """D(x) = <w, x> per sample, so grad_x D = w everywhere."""

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight

    def __call__(self, images: Tensor) -> Tensor:
        return (images * self.weight).flatten(1).sum(dim=1)


def half_squared_norm(images: Tensor) -> Tensor:
    """D(x) = ||x||^2 / 2 per sample, so grad_x D = x."""
    return 0.5 * images.flatten(1).square().sum(dim=1)


@pytest.mark.parametrize(("gp_type", "expected"), [("wgan-gp", 4.0), ("zero-centered", 9.0)])
def test_gradient_penalty_linear_critic(gp_type, expected):
    weight = torch.zeros(1, 1, 2, 2)
    weight[0, 0, 0, 0] = 3.0  # ||w|| = 3
    real = torch.randn(5, 1, 2, 2)
    fake = torch.randn(5, 1, 2, 2)
    penalty = gradient_penalty(LinearCritic(weight), real, fake, gp_type=gp_type)
    # wgan-gp gives (3 - 1)^2 = 4 and zero-centred 3^2 = 9, whatever the interpolates are.
    assert penalty.item() == pytest.approx(expected)


@pytest.mark.parametrize(("gp_type", "expected"), [("wgan-gp", 2.0), ("zero-centered", 5.0)])
def test_gradient_penalty_norm_is_per_sample(gp_type, expected):
    # With real == fake the interpolates are the images, whose gradient norms are 1 and 3.
    images = torch.zeros(2, 1, 1, 2)
    images[0, 0, 0, 0] = 1.0
    images[1, 0, 0, 1] = 3.0
    penalty = gradient_penalty(half_squared_norm, images, images.clone(), gp_type=gp_type)
    # Per sample: mean((1-1)^2, (3-1)^2) = 2 and mean(1, 9) = 5. A norm across the whole batch
    # would give (sqrt(10) - 1)^2 = 4.675 instead.
    assert penalty.item() == pytest.approx(expected)


def test_gradient_penalty_interpolates_with_generator_draws():
    fake = torch.ones(3, 1, 1, 1)
    real = torch.zeros(3, 1, 1, 1)
    penalty = gradient_penalty(
        half_squared_norm, real, fake, generator=torch.Generator().manual_seed(7)
    )
    eps = torch.rand(3, 1, 1, 1, generator=torch.Generator().manual_seed(7))
    # x_hat = eps * real + (1 - eps) * fake = 1 - eps, and its gradient norm is |1 - eps|.
    expected = ((1 - eps).flatten() - 1).square().mean()
    assert penalty.item() == pytest.approx(expected.item())


def test_gradient_penalty_backpropagates_through_spectral_norm():
    torch.manual_seed(0)
    discriminator = Discriminator(channels=4)
    real = torch.rand(3, 3, 8, 8) * 2 - 1
    fake = torch.rand(3, 3, 8, 8) * 2 - 1
    penalty = gradient_penalty(discriminator, real, fake)
    penalty.backward()
    # The input gradient of a ReLU network is piecewise constant in the biases, so only the
    # weights receive gradients from the penalty.
    weights = {
        name: parameter
        for name, parameter in discriminator.named_parameters()
        if name.endswith("weight.original")
    }
    assert len(weights) == 11
    for name, weight in weights.items():
        assert weight.grad is not None, name
        assert torch.isfinite(weight.grad).all(), name
        assert weight.grad.abs().sum() > 0, name


def test_gradient_penalty_leaves_inputs_without_gradients():
    real = torch.randn(2, 1, 2, 2, requires_grad=True)
    fake = torch.randn(2, 1, 2, 2, requires_grad=True)
    gradient_penalty(half_squared_norm, real, fake).backward()
    assert real.grad is None
    assert fake.grad is None


def test_gradient_penalty_rejects_unknown_type():
    images = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="'r1'"):
        gradient_penalty(half_squared_norm, images, images, gp_type="r1")  # type: ignore[arg-type]


def test_gradient_penalty_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(half_squared_norm, torch.zeros(2, 1, 2, 2), torch.zeros(3, 1, 2, 2))

"""Add score guidance to an ordinary GAN training loop.

A small unconditional DCGAN with the hinge loss, trained on a folder of images (for example a
CIFAR-10 copy in ImageFolder layout) or, without ``--data-dir``, on synthetic colour blobs. The
score guidance is the single line marked "Score guidance" in ``train``.

    python examples/add_to_your_gan.py --iterations 50 --no-pretrained
    python examples/add_to_your_gan.py --data-dir ../shared/data/cifar10-jpeg/train
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from score_guidance import (
    DEFAULT_EVALUATOR,
    PretrainedWeightsUnavailableError,
    ScoreGuidanceLoss,
    build_evaluator,
)

logger = logging.getLogger("add_to_your_gan")


class Generator(nn.Module):
    """DCGAN generator: z (N, z_dim) to images (N, 3, 32, 32) in [-1, 1]."""

    def __init__(self, z_dim: int = 64, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z_dim, width * 4, 4, 1, 0),
            nn.BatchNorm2d(width * 4),
            nn.ReLU(),
            nn.ConvTranspose2d(width * 4, width * 2, 4, 2, 1),
            nn.BatchNorm2d(width * 2),
            nn.ReLU(),
            nn.ConvTranspose2d(width * 2, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """DCGAN discriminator: images (N, 3, 32, 32) to one score per image."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width * 2, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width * 2, width * 4, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width * 4, 1, 4, 1, 0),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten()


def synthetic_blobs(num_images: int, seed: int = 0) -> TensorDataset:
    """Return images of one coloured Gaussian blob on a dark background, in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-1, 1, 32)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    centres = torch.rand(num_images, 2, 1, 1, generator=generator) * 1.2 - 0.6
    radius = torch.rand(num_images, 1, 1, generator=generator) * 0.3 + 0.15
    blob = torch.exp(-((xx - centres[:, 0]) ** 2 + (yy - centres[:, 1]) ** 2) / radius**2)
    colours = torch.rand(num_images, 3, 1, 1, generator=generator)
    images = blob[:, None] * colours * 2 - 1
    return TensorDataset(images)


def image_folder(path: Path) -> torchvision.datasets.ImageFolder:
    transform = torchvision.transforms.Compose(
        [
            torchvision.transforms.Resize(32),
            torchvision.transforms.CenterCrop(32),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    return torchvision.datasets.ImageFolder(str(path), transform=transform)


def endless(loader: DataLoader) -> Iterator[Tensor]:
    while True:
        for batch in loader:
            yield batch[0]


def train(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    # Build the data, the networks and the optimisers
    dataset = image_folder(args.data_dir) if args.data_dir else synthetic_blobs(4096, args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    batches = endless(loader)
    generator = Generator(args.z_dim).to(device)
    discriminator = Discriminator().to(device)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.0, 0.9))
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.0, 0.9))

    # Build the frozen evaluator and the guidance term
    evaluator = build_evaluator(
        args.evaluator,
        pretrained=not args.no_pretrained,
        checkpoint_path=args.evaluator_weights,
        image_size=args.evaluator_image_size,
    )
    guidance = ScoreGuidanceLoss(evaluator, weight=args.delta).to(device)

    for iteration in range(1, args.iterations + 1):
        real = next(batches).to(device)
        z = torch.randn(args.batch_size, args.z_dim, device=device)

        # Update the discriminator with the hinge loss
        fake = generator(z)
        loss_d = (
            torch.relu(1 - discriminator(real)).mean()
            + torch.relu(1 + discriminator(fake.detach())).mean()
        )
        optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimizer_d.step()

        # Update the generator
        loss_g = -discriminator(fake).mean()
        loss_g = loss_g + guidance(fake, real)  # Score guidance: -delta * min(IS(real), IS(fake))
        optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimizer_g.step()

        if iteration % args.log_every == 0 or iteration == args.iterations:
            stats = guidance.last
            logger.info(
                "iteration %d: loss_d %.3f, loss_g %.3f, IS_E(fake) %.3f, IS_E(real) %.3f",
                iteration,
                loss_d.item(),
                loss_g.item(),
                stats.fake_score,
                stats.reference_score,
            )

    if args.samples:
        with torch.no_grad():
            images = generator(torch.randn(64, args.z_dim, device=device))
        torchvision.utils.save_image(
            images, args.samples, nrow=8, normalize=True, value_range=(-1, 1)
        )
        logger.info("Wrote samples to %s", args.samples)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="generator updates")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--z-dim", type=int, default=64, help="noise dimension")
    parser.add_argument("--delta", type=float, default=0.5, help="weight of the score guidance")
    parser.add_argument(
        "--data-dir", type=Path, help="ImageFolder of training images; synthetic blobs if unset"
    )
    parser.add_argument(
        "--evaluator", default=DEFAULT_EVALUATOR, help="evaluator as SOURCE:MODEL_NAME"
    )
    parser.add_argument(
        "--evaluator-weights", type=Path, help="local weights file for the evaluator"
    )
    parser.add_argument(
        "--evaluator-image-size",
        type=int,
        default=96,
        help="evaluator input size in pixels (default 96, which keeps the example fast on a "
        "CPU; MobileNetV2's own size is 224)",
    )
    parser.add_argument(
        "--no-pretrained",
        action="store_true",
        help="use a randomly initialised evaluator (for trying the loop offline, not for results)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10, help="iterations between log lines")
    parser.add_argument("--samples", type=Path, help="write an 8x8 grid of samples to this PNG")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.batch_size < 2:
        parser.error("--iterations must be at least 1 and --batch-size at least 2")
    if args.data_dir is not None and not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.no_pretrained:
        logger.warning("The evaluator has random weights: its guidance is meaningless.")
    try:
        train(args)
    except PretrainedWeightsUnavailableError as error:
        logger.error("%s", error)
        logger.error("To try the loop offline, add --no-pretrained.")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

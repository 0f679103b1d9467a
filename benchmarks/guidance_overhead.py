"""Time the score-guidance term against one ControlGAN update, for several evaluator input sizes.

For each evaluator input size, the script times the guidance term's forward and backward on a
batch of generated images (including the real batch's no-grad pass), and compares it with one
discriminator update (hinge loss plus gradient penalty) plus one generator update of the
paper's 256-channel CIFAR networks. It also reports how well the input gradient at each size
agrees with the gradient at 224 pixels, MobileNetV2's own size:

- ``cosine``: cosine similarity of the guidance gradients with respect to the generated images;
- ``gain``: the rise of the 224-pixel score after one signed-gradient step of the images taken
  with that size's gradient, divided by the rise for the 224-pixel gradient.

    python benchmarks/guidance_overhead.py --batch-size 64 --repeats 3
    python benchmarks/guidance_overhead.py --evaluator-weights mnv2.pth   # pretrained weights
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from baselines.controlgan import (
    Discriminator,
    Generator,
    gradient_penalty,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from score_guidance import ScoreGuidanceLoss, build_evaluator, inception_score


def time_call(function: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Return the median wall time of ``function`` in seconds, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 160, 128, 96])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--evaluator", default="timm:mobilenetv2_100")
    parser.add_argument("--evaluator-weights", type=Path, help="local evaluator weights file")
    parser.add_argument("--channels-last", action="store_true", help="evaluator in channels_last")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, batch {args.batch_size}, "
        f"evaluator {args.evaluator} "
        f"({'local weights' if args.evaluator_weights else 'random weights'})"
    )

    # Time one discriminator-plus-generator update at the paper's widths
    generator = Generator(num_classes=10, channels=256).to(device)
    discriminator = Discriminator(channels=256).to(device)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.0, 0.9))
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=4e-4, betas=(0.0, 0.9))
    real = torch.rand(args.batch_size, 3, 32, 32, device=device) * 2 - 1
    labels = torch.randint(0, 10, (args.batch_size,), device=device)

    def gan_update() -> None:
        z = torch.randn(args.batch_size, 128, device=device)
        fake = generator(z, labels)
        loss_d = hinge_discriminator_loss(discriminator(real), discriminator(fake.detach()))
        loss_d = loss_d + 10.0 * gradient_penalty(discriminator, real, fake.detach())
        optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimizer_d.step()
        loss_g = hinge_generator_loss(discriminator(fake))
        optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimizer_g.step()

    gan_seconds = time_call(gan_update, args.repeats, device)
    print(f"one D+G update (256 channels): {gan_seconds * 1000:.0f} ms")

    # Time the guidance term and compare its gradients across sizes
    fake = (torch.rand(args.batch_size, 3, 32, 32, device=device) * 1.6 - 0.8).requires_grad_()
    reference_size = max(args.sizes)
    gradients: dict[int, torch.Tensor] = {}
    judge = build_evaluator(
        args.evaluator,
        pretrained=False,
        checkpoint_path=args.evaluator_weights,
        image_size=reference_size,
    ).to(device)
    with torch.no_grad():
        score_before = inception_score(judge(fake)).item()

    print("| evaluator size | guidance fwd+bwd (ms) | / one D+G update | cosine | gain |")
    print("|---|---|---|---|---|")
    rows = []
    for size in args.sizes:
        evaluator = build_evaluator(
            args.evaluator,
            pretrained=False,
            checkpoint_path=args.evaluator_weights,
            image_size=size,
            channels_last=args.channels_last,
        )
        evaluator.backbone.load_state_dict(judge.backbone.state_dict())
        evaluator.to(device)
        guidance = ScoreGuidanceLoss(evaluator, weight=0.5, reference="batch")

        def guidance_step(guidance: ScoreGuidanceLoss = guidance) -> None:
            fake.grad = None
            guidance(fake, real).backward()

        seconds = time_call(guidance_step, args.repeats, device)

        # The uncapped term always has a gradient, even where the cap would zero it.
        fake.grad = None
        ScoreGuidanceLoss(evaluator, weight=0.5, reference=None)(fake).backward()
        gradients[size] = fake.grad.detach().clone()
        rows.append((size, seconds))

    for size, seconds in rows:
        cosine = F.cosine_similarity(
            gradients[size].flatten(), gradients[reference_size].flatten(), dim=0
        ).item()
        with torch.no_grad():
            # The guidance is a loss, so the score rises against its gradient.
            stepped = (fake - 0.02 * gradients[size].sign()).clamp(-1, 1)
            gain = inception_score(judge(stepped)).item() - score_before
            stepped_reference = (fake - 0.02 * gradients[reference_size].sign()).clamp(-1, 1)
            reference_gain = inception_score(judge(stepped_reference)).item() - score_before
        print(
            f"| {size} | {seconds * 1000:.0f} | {seconds / gan_seconds:.2f} | {cosine:.3f} "
            f"| {gain / reference_gain:.2f} |"
        )


if __name__ == "__main__":
    main()

"""Sampling of image batches from a generator network, for evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ._sources import module_device

GeneratorNetwork = Callable[..., Tensor]

# Generator outputs may leave their nominal range by this much (relative to its width) before
# generate_images rejects them. Tanh outputs rounded to float32 stay well inside it.
_RANGE_TOLERANCE = 1e-3


class GeneratedImages:
    """Iterable of image batches in [0, 1] drawn from a generator network.

    Each iteration draws new noise, starting from ``seed`` when one is given, so iterating twice
    with a seed yields the same images. ``num_images`` and ``device`` are known before iterating.
    """

    def __init__(
        self,
        generator: GeneratorNetwork,
        num_images: int,
        batch_size: int,
        num_classes: int | None,
        device: torch.device,
        z_dim: int,
        output_range: tuple[float, float],
        seed: int | None,
    ) -> None:
        self.generator = generator
        self.num_images = num_images
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.device = device
        self.z_dim = z_dim
        self.output_range = output_range
        self.seed = seed

    def __iter__(self) -> Iterator[Tensor]:
        random_generator: torch.Generator | None = None
        if self.seed is not None:
            random_generator = torch.Generator(device=self.device).manual_seed(self.seed)

        for start in range(0, self.num_images, self.batch_size):
            size = min(self.batch_size, self.num_images - start)
            with torch.no_grad():
                z = torch.randn(size, self.z_dim, device=self.device, generator=random_generator)
                if self.num_classes is None:
                    output = self.generator(z)
                else:
                    labels = torch.randint(
                        self.num_classes, (size,), device=self.device, generator=random_generator
                    )
                    output = self.generator(z, labels)
            yield self._to_unit_range(output, size)

    def _to_unit_range(self, output: Tensor, size: int) -> Tensor:
        """Map generator output from ``output_range`` to [0, 1] after checking shape and range."""
        if not isinstance(output, Tensor):
            raise TypeError(f"the generator returned a {type(output).__name__}, expected a tensor")
        if output.dim() != 4 or output.shape[0] != size:
            raise ValueError(
                f"the generator returned shape {tuple(output.shape)} for a batch of {size}; "
                f"expected ({size}, channels, height, width)"
            )
        if not output.is_floating_point():
            raise ValueError(f"the generator returned dtype {output.dtype}, expected floats")

        low, high = self.output_range
        observed_low, observed_high = (float(value) for value in torch.aminmax(output.detach()))
        tolerance = _RANGE_TOLERANCE * (high - low)
        if not (observed_low >= low - tolerance and observed_high <= high + tolerance):
            raise ValueError(
                f"the generator returned values in [{observed_low:.4g}, {observed_high:.4g}], "
                f"outside output_range=({low:g}, {high:g}); pass the range the generator "
                "produces, for example output_range=(0, 1) for sigmoid outputs"
            )
        return ((output.float() - low) / (high - low)).clamp_(0.0, 1.0)


def generate_images(
    generator: GeneratorNetwork,
    num_images: int,
    batch_size: int,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    *,
    z_dim: int = 128,
    output_range: tuple[float, float] = (-1.0, 1.0),
    seed: int | None = None,
) -> GeneratedImages:
    """Draw ``num_images`` images from ``generator`` in batches of at most ``batch_size``.

    The generator is called as ``generator(z)``, or as ``generator(z, y)`` when ``num_classes``
    is given, with ``z`` of shape (B, z_dim) from a standard normal distribution and labels ``y``
    of shape (B,) drawn independently and uniformly from ``range(num_classes)``. Its outputs,
    expected in ``output_range``, are mapped linearly to [0, 1]. Batches are produced one at a
    time on ``device``, so the whole set is never held in memory. The generator is called under
    ``torch.no_grad()`` and its train/eval mode is not changed: call ``generator.eval()`` first
    if it has batch normalisation or dropout.

    ``device=None`` means the device of the generator's parameters, or the CPU for a generator
    without parameters. ``seed`` makes the noise and labels reproducible without touching the
    global random state.

    Raises:
        ValueError: a size argument is not a positive integer or ``output_range`` is empty. While
            iterating: the generator returns a wrong shape or values outside ``output_range``.
    """
    for name, value in (("num_images", num_images), ("batch_size", batch_size), ("z_dim", z_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    low, high = (float(value) for value in output_range)
    if not high > low:
        raise ValueError(f"output_range must be (low, high) with low < high, got {output_range!r}")

    if device is None:
        resolved_device = module_device(generator) or torch.device("cpu")
    else:
        resolved_device = torch.device(device)
    return GeneratedImages(
        generator,
        num_images,
        batch_size,
        num_classes,
        resolved_device,
        z_dim,
        (low, high),
        seed,
    )

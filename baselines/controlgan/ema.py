"""Exponential moving average of the generator's weights, for sampling and evaluation."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from .networks import Generator

__all__ = ["GeneratorEMA"]


class GeneratorEMA:
    """A copy of the generator whose parameters follow an exponential moving average.

    After each generator update, ``ema = decay * ema + (1 - decay) * weights`` for every
    parameter, which for a spectral-normalised layer is the weight before normalisation. The
    buffers are copied from the raw generator: cBN's running statistics and spectral norm's
    singular-vector estimates. The average is never trained, so it stays in eval mode.

    Args:
        generator: The raw generator (not a compiled or distributed wrapper). The average
            starts as a copy of it.
        decay: Weight of the old average, in (0, 1), e.g. 0.999.
    """

    def __init__(self, generator: Generator, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.generator: Generator = copy.deepcopy(generator).eval().requires_grad_(False)
        self._averaged = list(self.generator.parameters())
        self._averaged_buffers = list(self.generator.buffers())

    @torch.no_grad()
    def update(self, generator: Generator) -> None:
        """Move the average towards the current weights of ``generator``, without a sync."""
        source = [parameter.detach() for parameter in generator.parameters()]
        torch._foreach_lerp_(self._averaged, source, 1.0 - self.decay)
        for averaged, buffer in zip(self._averaged_buffers, generator.buffers(), strict=True):
            averaged.copy_(buffer)

    def copy_from(self, generator: Generator) -> None:
        """Restart the average at the current weights and buffers of ``generator``."""
        self.generator.load_state_dict(generator.state_dict())

    def checkpoint_entry(self) -> dict[str, Any]:
        """Return the averaged generator in the format of ``Generator.checkpoint_entry``."""
        entry = self.generator.checkpoint_entry()
        entry["decay"] = self.decay
        return entry

    def load_checkpoint_entry(self, entry: Mapping[str, Any]) -> None:
        """Load the weights of :meth:`checkpoint_entry`. The decay stays this object's.

        Raises:
            ValueError: the entry was built with other generator sizes.
        """
        saved_config = dict(entry["config"])
        if saved_config != self.generator.config:
            raise ValueError(
                f"the averaged generator in the state was built with {saved_config}, but this "
                f"trainer's with {self.generator.config}; build the networks with the saved sizes"
            )
        self.generator.load_state_dict(entry["state_dict"])

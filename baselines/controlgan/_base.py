"""Shared machinery of the ControlGAN networks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["BaseNetwork"]

_NetworkT = TypeVar("_NetworkT", bound="BaseNetwork")


class BaseNetwork(nn.Module):
    """Base class that counts parameters, reports the device and writes checkpoint entries.

    Subclasses build their layers in ``__init__`` and implement ``forward``. They store their
    constructor arguments in :attr:`config`, so that :meth:`from_checkpoint_entry` can rebuild the
    network before loading its weights.

    Attributes:
        config: Keyword arguments of the subclass's constructor, as plain Python values.
    """

    config: dict[str, Any]

    def count_parameters(self, trainable_only: bool = False) -> int:
        """Return the number of parameter elements, optionally only those requiring gradients.

        A spectral-normalised layer counts its unnormalised weight once. The power-iteration
        vectors of spectral norm and the BatchNorm statistics are buffers and are not counted.
        """
        return sum(
            parameter.numel()
            for parameter in self.parameters()
            if parameter.requires_grad or not trainable_only
        )

    @property
    def device(self) -> torch.device:
        """Device of the network's first parameter."""
        return next(self.parameters()).device

    def checkpoint_entry(self) -> dict[str, Any]:
        """Return the constructor arguments and the state dict, to store in a checkpoint."""
        return {"config": dict(self.config), "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint_entry(
        cls: type[_NetworkT], entry: Mapping[str, Any], strict: bool = True
    ) -> _NetworkT:
        """Rebuild a network from a :meth:`checkpoint_entry` dict and load its weights.

        Raises:
            ValueError: ``entry`` lacks the ``config`` or ``state_dict`` key.
        """
        missing = [key for key in ("config", "state_dict") if key not in entry]
        if missing:
            raise ValueError(
                f"checkpoint entry for {cls.__name__} is missing {missing}; expected the dict "
                "that checkpoint_entry() returns"
            )
        network = cls(**entry["config"])
        network.load_state_dict(entry["state_dict"], strict=strict)
        return network

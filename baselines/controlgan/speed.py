"""Speed settings of training: mixed precision, memory format and compiled forward passes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .train_config import AMP_MODES

__all__ = ["Precision", "compile_network", "resolve_amp_dtype", "resolve_channels_last"]

logger = logging.getLogger(__name__)


def resolve_amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype of an ``amp`` setting on ``device``, or None for float32.

    ``"auto"`` is bfloat16 on CUDA devices that support it, float16 on older CUDA devices, and
    float32 on every other device.
    """
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {mode!r}")
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def resolve_channels_last(setting: bool | None, device: torch.device) -> bool:
    """Return whether to use channels-last memory format: None means on CUDA only."""
    if setting is None:
        return device.type == "cuda"
    return bool(setting)


class Precision:
    """Autocast and gradient scaling of one training run.

    Forward passes run in ``autocast()``. Backward passes and optimiser steps go through one
    ``torch.amp.GradScaler`` per network, which scales losses only for float16. A network's
    scale is updated after each of its optimiser steps. One scaler per network is needed
    because the discriminator steps ``n_dis`` times per generator iteration, and a scaler
    allows one step per optimiser between two updates.

    NOTE: bf16 and fp16 have run on the CPU only. On CUDA, where fp16 relies on the fused
    Adam kernel to read the scale without a synchronisation, they are untested.

    Args:
        dtype: Autocast dtype, or None for float32 without autocast.
        device: The training device.
        names: Names of the networks that get a scaler.
    """

    def __init__(self, dtype: torch.dtype | None, device: torch.device, names: tuple[str, ...]):
        self.dtype = dtype
        self.device_type = device.type
        self.scalers = {
            name: torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
            for name in names
        }

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Return the autocast context of the forward passes (a no-op for float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def full_precision(self) -> contextlib.AbstractContextManager[Any]:
        """Return a context that runs its forward passes in float32, also inside autocast."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def backward_and_step(
        self, name: str, loss: Tensor, optimizer: torch.optim.Optimizer, inputs: list[Tensor]
    ) -> None:
        """Backpropagate ``loss`` into ``inputs`` and step ``optimizer``, with scaling."""
        scaler = self.scalers[name]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward(inputs=inputs)
        scaler.step(optimizer)
        scaler.update()

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Return the scalers' states, which are empty unless the dtype is float16."""
        return {name: scaler.state_dict() for name, scaler in self.scalers.items()}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Restore the scalers' states. A scaler without a saved state keeps its own."""
        for name, scaler in self.scalers.items():
            if state.get(name) and scaler.is_enabled():
                scaler.load_state_dict(state[name])


def compile_network(network: nn.Module) -> Callable[..., Tensor]:
    """Return ``torch.compile(network)``, which shares the network's parameters.

    Shapes are static: D sees batches of N and 2N images, and a graph compiled for each size
    runs faster than one graph for dynamic sizes.
    """
    logger.info("Compiling %s with torch.compile", type(network).__name__)
    return torch.compile(network, dynamic=False)

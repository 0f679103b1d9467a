"""Save and load ControlGAN training checkpoints, and load a generator for evaluation."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from score_guidance import InvalidCheckpointError

from .networks import Generator

__all__ = ["CHECKPOINT_FORMAT_VERSION", "load_checkpoint", "load_generator", "save_checkpoint"]

logger = logging.getLogger(__name__)

# Version of the dict that ControlGANTrainer.state_dict() returns. Raise it when keys change.
CHECKPOINT_FORMAT_VERSION = 1


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` with ``torch.save`` atomically and return the path.

    The file is written next to ``path`` and renamed over it, so an interrupted save never
    leaves a truncated checkpoint. ``state`` is usually ``trainer.state_dict()`` with extra
    top-level keys of the caller, such as RNG states. Store those as tensors, numbers, strings,
    lists or dicts so that :func:`load_checkpoint` can read the file with ``weights_only=True``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial_path = path.with_name(path.name + ".partial")
    torch.save(dict(state), partial_path)
    os.replace(partial_path, path)
    logger.info("Saved checkpoint %s", path)
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: torch.device | str = "cpu",
    weights_only: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint that :func:`save_checkpoint` wrote.

    Args:
        path: The checkpoint file.
        map_location: Device for the loaded tensors.
        weights_only: Use torch's restricted unpickler, which loads only tensors and plain
            Python containers. Pass False only for trusted files with other objects in them.

    Raises:
        InvalidCheckpointError: the file is missing, unreadable, or not a ControlGAN
            checkpoint of version ``CHECKPOINT_FORMAT_VERSION``.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidCheckpointError(f"checkpoint file {str(path)!r} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as error:
        raise InvalidCheckpointError(
            f"cannot read checkpoint {str(path)!r}: {error}. If the file stores objects other "
            "than tensors and plain containers and you trust it, pass weights_only=False"
        ) from error
    # A damaged file surfaces as any of these, depending on where the bytes break.
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError) as error:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise InvalidCheckpointError(
            f"cannot read checkpoint {str(path)!r}, which is damaged or not a torch.save file "
            f"({reason})"
        ) from error
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != CHECKPOINT_FORMAT_VERSION:
        raise InvalidCheckpointError(
            f"{str(path)!r} is not a ControlGAN checkpoint of format version "
            f"{CHECKPOINT_FORMAT_VERSION} (found format_version={version!r}); write it with "
            "save_checkpoint(trainer.state_dict(), path)"
        )
    return state


def load_generator(
    checkpoint_path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> Generator:
    """Rebuild the generator of a training checkpoint, in eval mode, on ``device``.

    Eval mode makes cBN use its running statistics. Call ``.train()`` on the result, or use
    ``sample_images(..., eval_mode=False)``, to sample with batch statistics instead.

    Raises:
        InvalidCheckpointError: the file is not a ControlGAN checkpoint, or its generator entry
            does not match the Generator class.
    """
    state = load_checkpoint(checkpoint_path, map_location="cpu")
    try:
        generator = Generator.from_checkpoint_entry(state["generator"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InvalidCheckpointError(
            f"cannot rebuild the generator from {str(checkpoint_path)!r}: {error}"
        ) from error
    logger.info(
        "Loaded generator from %s (iteration %s)", checkpoint_path, state.get("iteration", "?")
    )
    return generator.to(device).eval()

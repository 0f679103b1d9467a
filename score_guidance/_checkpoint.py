"""Read local weights files for evaluator backbones without touching the network."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "InvalidCheckpointError",
    "check_recorded_spec",
    "load_weights_file",
    "load_into_backbone",
]

_logger = logging.getLogger(__name__)

# Exceptions torch.load raises on a damaged file, depending on where the bytes break.
DAMAGED_FILE_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    OSError,
    KeyError,
    ValueError,
    IndexError,
)
# Keys of a training checkpoint that may wrap the state dict itself.
_STATE_DICT_KEYS = ("state_dict", "model")
_MAX_KEYS_IN_MESSAGE = 8


class InvalidCheckpointError(ValueError):
    """A weights file is missing, unreadable, not a state dict, or does not match the backbone."""


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return shown + (f" and {more} more" if more > 0 else "")


def load_weights_file(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load a state dict from a ``.safetensors`` file or a ``torch.save`` file.

    ``torch.save`` files are read with ``weights_only=True``. A file may hold a bare state dict or
    a dict with the state dict under ``"state_dict"`` (or ``"model"``) and optional metadata under
    ``"data_config"`` (keys ``mean``, ``std``, ``input_size``, ``interpolation``, ``num_classes``).
    A string under ``"evaluator"`` (the model spec that wrote the file) is returned in the
    metadata under the same key.
    A ``module.`` prefix on every key, as DistributedDataParallel writes it, is removed.

    Returns:
        The state dict and the metadata dict (empty when the file has none).

    Raises:
        InvalidCheckpointError: the file is missing, cannot be read, or holds no state dict.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise InvalidCheckpointError(
            f"checkpoint path {str(path)!r} is a folder; pass the path of a weights file in it"
        )
    if not path.is_file():
        raise InvalidCheckpointError(
            f"checkpoint file {str(path)!r} not found; pass the path of an existing weights file"
        )

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            contents: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as error:
            raise InvalidCheckpointError(
                f"cannot read safetensors file {str(path)!r}: {error}"
            ) from error
    else:
        try:
            contents = torch.load(path, map_location="cpu", weights_only=True)
        except DAMAGED_FILE_ERRORS as error:
            raise InvalidCheckpointError(
                f"cannot read {str(path)!r} as a weights-only torch file ({error}); save the "
                "weights with torch.save(model.state_dict(), path)"
            ) from error

    metadata: dict[str, Any] = {}
    if isinstance(contents, Mapping):
        for key in _STATE_DICT_KEYS:
            if isinstance(contents.get(key), Mapping):
                metadata = dict(contents.get("data_config") or {})
                if isinstance(contents.get("evaluator"), str):
                    metadata["evaluator"] = contents["evaluator"]
                contents = contents[key]
                break
    if not isinstance(contents, Mapping) or not contents:
        raise InvalidCheckpointError(
            f"{str(path)!r} holds a {type(contents).__name__}, not a state dict; save the "
            "weights with torch.save(model.state_dict(), path)"
        )
    non_tensors = [str(key) for key, value in contents.items() if not isinstance(value, Tensor)]
    if non_tensors:
        raise InvalidCheckpointError(
            f"{str(path)!r} is not a state dict: the entries {_format_keys(non_tensors)} are not "
            "tensors; save the weights with torch.save(model.state_dict(), path)"
        )

    state_dict = {str(key): value for key, value in contents.items()}
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict, metadata


def check_recorded_spec(
    metadata: Mapping[str, Any], spec: str, source: str | os.PathLike[str]
) -> None:
    """Raise if the weights file records that it was trained as another model than ``spec``.

    Raises:
        InvalidCheckpointError: the file's ``evaluator`` entry names another model.
    """
    recorded = metadata.get("evaluator")
    if recorded is not None and recorded != spec:
        raise InvalidCheckpointError(
            f"checkpoint {str(source)!r} contains the weights of {recorded!r}, not {spec!r}. "
            f"Build the evaluator as {recorded!r} (for example --evaluator {recorded})"
        )


def load_into_backbone(
    backbone: nn.Module, state_dict: Mapping[str, Tensor], source: str | os.PathLike[str]
) -> None:
    """Load ``state_dict`` into ``backbone``, strictly, with an error that names the bad keys.

    Raises:
        InvalidCheckpointError: keys are missing or unexpected, or a tensor has the wrong shape.
    """
    try:
        result = backbone.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:
        # load_state_dict raises on shape mismatches even with strict=False.
        raise InvalidCheckpointError(
            f"checkpoint {str(source)!r} does not fit the {type(backbone).__name__} backbone: "
            f"{error}; check the model name and num_classes"
        ) from error
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing keys: {_format_keys(list(result.missing_keys))}")
        if result.unexpected_keys:
            parts.append(f"unexpected keys: {_format_keys(list(result.unexpected_keys))}")
        raise InvalidCheckpointError(
            f"checkpoint {str(source)!r} does not match the {type(backbone).__name__} backbone "
            f"({'; '.join(parts)}); check that the file was saved from the same architecture"
        )
    _logger.info("Loaded evaluator weights from %s", source)

"""Loading of the FID Inception network of pytorch-gan-metrics 0.5.3 from a local weights file.

pytorch-gan-metrics builds its ``InceptionV3`` by downloading ``pt_inception-2015-12-05`` into
the torch hub cache and has no argument for a local file. This module builds the same network
class and replaces only the download call, so evaluation works offline and a local file is read
in place instead of being copied into the cache.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pytorch_gan_metrics.inception as gan_metrics_inception
import torch
import torch.nn.functional as F
import torchvision
from pytorch_gan_metrics.inception import FID_WEIGHTS_URL, InceptionV3
from torch import Tensor, nn

logger = logging.getLogger(__name__)

INCEPTION_WEIGHTS_ENV = "SCORE_GUIDANCE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILENAME = FID_WEIGHTS_URL.rsplit("/", 1)[-1]
INCEPTION_FEATURE_DIM = 2048
INCEPTION_NUM_CLASSES = 1008

# Indices of the final average pool and of the softmax in InceptionV3.BLOCK_INDEX_BY_DIM.
_POOL_BLOCK = InceptionV3.BLOCK_INDEX_BY_DIM[INCEPTION_FEATURE_DIM]
_SOFTMAX_BLOCK = InceptionV3.BLOCK_INDEX_BY_DIM[INCEPTION_NUM_CLASSES]

# InceptionV3.__init__ looks up `load_state_dict_from_url` in the pytorch_gan_metrics.inception
# module at call time. The lock keeps two threads from swapping that global at the same time.
_LOADER_PATCH_LOCK = threading.Lock()

PathLike = str | os.PathLike[str]

# Layers of torchvision's InceptionE whose outputs are concatenated into the block output.
_MIXED_7C_OUTPUT_LAYERS = (
    "branch1x1",
    "branch3x3_2a",
    "branch3x3_2b",
    "branch3x3dbl_3a",
    "branch3x3dbl_3b",
    "branch_pool",
)
_RANDOM_FEATURE_SCALE = 1.0 / 16.0


@runtime_checkable
class FeatureExtractor(Protocol):
    """Network that maps a batch of images in [0, 1] to pool features and class probabilities.

    ``__call__`` receives a float tensor of shape (N, 3, H, W) on any device and returns
    ``(features, probabilities)`` of shapes (N, D) and (N, C), on any device. The rows of
    ``probabilities`` sum to 1. An implementation moves the images to its own device and
    rescales them to the input range of its network.
    """

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]: ...


class InceptionFeatureExtractor:
    """The FID Inception network of pytorch-gan-metrics as a ``FeatureExtractor``.

    Returns the 2048-dimensional final average pool features and the 1008-class softmax
    probabilities of one forward pass. Images are resized to 299x299 inside the network.
    """

    feature_dim: int = INCEPTION_FEATURE_DIM
    num_classes: int = INCEPTION_NUM_CLASSES

    def __init__(self, network: InceptionV3, device: torch.device) -> None:
        if sorted(network.output_blocks) != [_POOL_BLOCK, _SOFTMAX_BLOCK]:
            raise ValueError(
                f"the InceptionV3 network must output blocks {[_POOL_BLOCK, _SOFTMAX_BLOCK]} "
                f"(pool features and softmax), got {network.output_blocks}"
            )
        self.network = network.to(device).eval()
        self.device = device

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        images = images.to(self.device, torch.float32)
        with torch.inference_mode():
            outputs = self.network(images)
        by_block = dict(zip(self.network.output_blocks, outputs, strict=True))
        features = by_block[_POOL_BLOCK].flatten(start_dim=1)
        probabilities = by_block[_SOFTMAX_BLOCK]
        return features, probabilities


def hub_weights_path() -> Path:
    """Return where pytorch-gan-metrics caches the Inception weights: the torch hub checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME


def _missing_weights_message(reason: str) -> str:
    return (
        f"{reason}. Evaluation needs the Inception weights file {INCEPTION_WEIGHTS_FILENAME} "
        f"(download URL: {FID_WEIGHTS_URL}). Fetch it on a machine with network access, then "
        f"pass its path as inception_weights=PATH (command line: --inception-weights PATH), "
        f"set {INCEPTION_WEIGHTS_ENV}=PATH, or put it at {hub_weights_path()}"
    )


def resolve_inception_weights(inception_weights: PathLike | None = None) -> Path | None:
    """Return the local Inception weights file to load, or None when it has to be downloaded.

    The order is: the ``inception_weights`` argument, then the ``SCORE_GUIDANCE_INCEPTION_WEIGHTS``
    environment variable, then the torch hub cache file that pytorch-gan-metrics would use.

    Raises:
        FileNotFoundError: the argument or the environment variable names a missing file.
    """
    if inception_weights is not None:
        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                _missing_weights_message(f"Inception weights file not found: {path}")
            )
        return path

    from_environment = os.environ.get(INCEPTION_WEIGHTS_ENV, "")
    if from_environment:
        path = Path(from_environment).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                _missing_weights_message(
                    f"Inception weights file not found: {path} (from {INCEPTION_WEIGHTS_ENV})"
                )
            )
        return path

    cached = hub_weights_path()
    if cached.is_file():
        return cached
    return None


def _download_state_dict() -> Mapping[str, Any]:
    """Download the weights into the torch hub cache, as pytorch-gan-metrics does."""
    return torch.hub.load_state_dict_from_url(
        FID_WEIGHTS_URL, map_location="cpu", progress=True, weights_only=True
    )


def _read_state_dict(path: Path) -> Mapping[str, Any]:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch.load raises pickle, zip and runtime errors for files it cannot read safely.
        raise ValueError(
            f"cannot load the Inception weights file {path} with torch.load(weights_only=True): "
            f"{error}. Expected the state dict file {INCEPTION_WEIGHTS_FILENAME}"
        ) from error
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"the Inception weights file {path} contains a {type(state_dict).__name__}, "
            f"expected a state dict (a mapping of parameter names to tensors)"
        )
    return state_dict


def _build_inception(state_dict: Mapping[str, Any], source: str) -> InceptionV3:
    """Build pytorch-gan-metrics' InceptionV3 with pool and softmax outputs from ``state_dict``."""

    def load_from_memory(url: str, *args: object, **kwargs: object) -> Mapping[str, Any]:
        if url != FID_WEIGHTS_URL:
            raise RuntimeError(
                f"pytorch-gan-metrics requested unexpected weights {url}; "
                f"only {FID_WEIGHTS_URL} can be replaced by a local file"
            )
        return state_dict

    with _LOADER_PATCH_LOCK:
        original_loader = gan_metrics_inception.load_state_dict_from_url
        gan_metrics_inception.load_state_dict_from_url = load_from_memory
        try:
            network = InceptionV3(
                output_blocks=[_POOL_BLOCK, _SOFTMAX_BLOCK],
                resize_input=True,
                normalize_input=True,
                use_fid_inception=True,
            )
        except RuntimeError as error:
            # load_state_dict raises RuntimeError for missing, unexpected or mis-shaped tensors.
            raise ValueError(
                f"{source} is not a {INCEPTION_WEIGHTS_FILENAME} state dict: {error}. "
                "The FID Inception network has 1008 classes and no auxiliary classifier; "
                "torchvision's inception_v3 weights are not accepted because they give "
                "different scores"
            ) from error
        finally:
            gan_metrics_inception.load_state_dict_from_url = original_loader
    return network


def load_inception(
    inception_weights: PathLike | None = None,
    device: torch.device | str = "cpu",
    *,
    allow_download: bool = True,
) -> InceptionFeatureExtractor:
    """Load the FID Inception network (``pt_inception-2015-12-05``) on ``device``.

    A local file, from ``inception_weights``, ``SCORE_GUIDANCE_INCEPTION_WEIGHTS`` or the torch
    hub cache, is read in place and never copied. Without one, the file is downloaded into the
    torch hub cache, as pytorch-gan-metrics does, unless ``allow_download`` is False.

    Raises:
        FileNotFoundError: no local file exists and the download is disabled or failed. The
            message names the file and where to put it.
        ValueError: the file is not a state dict of the FID Inception network.
    """
    device = torch.device(device)
    path = resolve_inception_weights(inception_weights)

    if path is not None:
        logger.info("Loading Inception weights from %s", path)
        state_dict = _read_state_dict(path)
        source = str(path)
    elif not allow_download:
        raise FileNotFoundError(
            _missing_weights_message("No local Inception weights file and downloads are disabled")
        )
    else:
        logger.info("Downloading Inception weights from %s", FID_WEIGHTS_URL)
        try:
            state_dict = _download_state_dict()
        except OSError as error:
            # urllib's URLError and HTTPError are OSError subclasses.
            raise FileNotFoundError(
                _missing_weights_message(f"Downloading the Inception weights failed ({error})")
            ) from error
        source = FID_WEIGHTS_URL

    network = _build_inception(state_dict, source)
    return InceptionFeatureExtractor(network, device)


def save_random_inception_weights(path: PathLike, seed: int = 0) -> Path:
    """Save randomly initialised weights of the FID Inception network to ``path``, for tests.

    The file has the keys and shapes of ``pt_inception-2015-12-05``, so it loads through
    ``load_inception``, but scores computed with it mean nothing. Batch-norm running statistics
    are calibrated on smooth random images, and the classifier ignores the mean feature so that
    class probabilities differ between images (the Inception score of 20 CIFAR-10 test images is
    about 1.6).
    """
    # fork_rng keeps the seeding below from changing the caller's global CPU random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # The FID blocks of pytorch-gan-metrics subclass torchvision's blocks and only change
        # forward(), so torchvision's architecture has exactly the FID parameter names and shapes.
        network = torchvision.models.inception_v3(
            weights=None, aux_logits=False, num_classes=INCEPTION_NUM_CLASSES, init_weights=False
        )
        mean_feature = _calibrate_batch_norm(network)

    with torch.no_grad():
        # Pool features are the average of these ReLU outputs, so scaling their batch-norm affine
        # parameters scales the features. The error of scipy's sqrtm on a singular covariance
        # grows with its norm, and this scale keeps the FID of 20 CIFAR-10 images against their
        # own statistics near 1e-5.
        for name in _MIXED_7C_OUTPUT_LAYERS:
            batch_norm = getattr(network.Mixed_7c, name).bn
            batch_norm.weight.mul_(_RANDOM_FEATURE_SCALE)
            batch_norm.bias.mul_(_RANDOM_FEATURE_SCALE)
        mean_feature *= _RANDOM_FEATURE_SCALE

        # The FID network drops the classifier bias, so a shared feature offset would give every
        # image the same class. Removing the mean-feature direction from each weight row avoids it.
        weight = network.fc.weight
        weight -= torch.outer(weight @ mean_feature, mean_feature) / mean_feature.dot(mean_feature)
        weight *= 4.0 / _RANDOM_FEATURE_SCALE

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def _smooth_random_images(num_images: int) -> Tensor:
    """Return 299x299 images in [-1, 1] made of noise upsampled from 2 to 32 pixels.

    Low resolutions get the largest amplitude, as in photos, whose spectrum falls with frequency.
    """
    images = torch.zeros(num_images, 3, 299, 299)
    for resolution in (2, 4, 8, 16, 32):
        noise = torch.randn(num_images, 3, resolution, resolution)
        upsampled = F.interpolate(noise, size=(299, 299), mode="bilinear", align_corners=False)
        images += upsampled * (32 / resolution) ** 0.5
    images *= 0.5 / images.flatten(start_dim=1).std(dim=1).view(-1, 1, 1, 1)
    return images.clamp(-1.0, 1.0)


def _calibrate_batch_norm(network: torchvision.models.Inception3) -> Tensor:
    """Set batch-norm running statistics from one batch of smooth random images.

    Returns the mean pool feature of a second batch, computed in eval mode.
    """
    batch_norms = [module for module in network.modules() if isinstance(module, nn.BatchNorm2d)]
    for batch_norm in batch_norms:
        batch_norm.reset_running_stats()
        batch_norm.momentum = None  # cumulative average: one batch sets the statistics exactly

    network.train()
    with torch.no_grad():
        network(_smooth_random_images(4))
    network.eval()

    pool_outputs: list[Tensor] = []
    hook = network.avgpool.register_forward_hook(
        lambda module, inputs, output: pool_outputs.append(output.flatten(start_dim=1))
    )
    try:
        with torch.no_grad():
            network(_smooth_random_images(4))
    finally:
        hook.remove()
    return pool_outputs[0].mean(dim=0)

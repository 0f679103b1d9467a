"""Frozen pretrained classifiers that map generated images to class logits."""

from __future__ import annotations

import abc
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checkpoint import check_recorded_spec, load_into_backbone, load_weights_file

__all__ = [
    "Evaluator",
    "ModuleEvaluator",
    "TimmEvaluator",
    "TorchvisionEvaluator",
    "PretrainedWeightsUnavailableError",
    "build_evaluator",
    "list_evaluator_sources",
    "register_evaluator",
    "DEFAULT_EVALUATOR",
]

_logger = logging.getLogger(__name__)

DEFAULT_EVALUATOR = "timm:mobilenetv2_100"

# How far inputs may stray outside ``input_range`` before they are rejected, to allow for the
# rounding of a tanh output or of a mixed-precision cast.
_RANGE_TOLERANCE = 1e-3
_INTERPOLATION_MODES = ("bilinear", "bicubic", "nearest", "area")


class PretrainedWeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched, usually because there is no network."""


def _as_triple(values: Sequence[float], name: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"{name} must have 1 or 3 values (one per RGB channel), got {values}")
    return values  # type: ignore[return-value]


def _as_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(s) for s in image_size)[-2:]
        if len(size) == 1:
            size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size}")
    return size  # type: ignore[return-value]


class Evaluator(nn.Module, abc.ABC):
    """A frozen classifier that maps generated images to class logits.

    Images enter as a float tensor (N, C, H, W) with C in {1, 3} and values in ``input_range``
    (default (-1, 1), a tanh generator's output). The evaluator maps them to [0, 1], normalises
    them with the backbone's mean and std, and resizes them to the backbone's input size. Because
    interpolation weights sum to one, the per-channel affine map commutes with the resize, so it
    runs first, at the small input resolution, in one fused ``addcmul``.

    The backbone is frozen: it stays in eval mode whatever ``.train()`` is called on, and its
    parameters never require gradients, while gradients still reach the input images. It is not
    a registered submodule, so its weights do not appear in the ``state_dict()`` or
    ``parameters()`` of a model that contains the evaluator. It still follows ``.to()``,
    ``.cuda()`` and ``.half()``. Save it with ``evaluator.backbone.state_dict()`` if needed.

    Subclasses build the backbone and implement :meth:`_compute_features` and
    :meth:`_compute_head`.

    Attributes:
        num_classes: Number of logits per image.
        image_size: (height, width) the backbone sees.
        mean, std: Per-channel normalisation of the backbone.
        input_range: (low, high) value range of the images passed in.
        interpolation: ``torch.nn.functional.interpolate`` mode of the resize.
        validate_inputs: Whether each call checks the input's shape and values. The value check
            costs one device synchronisation per call. The first checked batch must also reach
            below zero when ``input_range`` spans zero, which catches [0, 1] images passed to a
            (-1, 1) evaluator.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int | Sequence[int],
        input_range: tuple[float, float] = (-1.0, 1.0),
        interpolation: str = "bilinear",
        channels_last: bool = False,
        validate_inputs: bool = True,
        name: str = "",
    ) -> None:
        super().__init__()
        low, high = (float(v) for v in input_range)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(
                f"input_range must be (low, high) with finite low < high, got {input_range}"
            )
        if interpolation not in _INTERPOLATION_MODES:
            raise ValueError(
                f"interpolation must be one of {_INTERPOLATION_MODES}, got {interpolation!r}"
            )
        mean3 = _as_triple(mean, "mean")
        std3 = _as_triple(std, "std")
        if min(std3) <= 0:
            raise ValueError(f"std must be positive, got {std3}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")

        self.num_classes = int(num_classes)
        self.image_size = _as_image_size(image_size)
        self.mean = mean3
        self.std = std3
        self.input_range = (low, high)
        self.interpolation = interpolation
        self.channels_last = channels_last
        self.validate_inputs = validate_inputs
        self.name = name or type(backbone).__name__

        # Fold (x - low) / (high - low), then (x - mean) / std, into x * scale + shift.
        mean_t = torch.tensor(mean3).view(1, 3, 1, 1)
        std_t = torch.tensor(std3).view(1, 3, 1, 1)
        scale = 1.0 / ((high - low) * std_t)
        shift = (-low / (high - low) - mean_t) / std_t
        self.register_buffer("_scale", scale, persistent=False)
        self.register_buffer("_shift", shift, persistent=False)

        # Freeze the backbone and keep it out of the module tree (see the class docstring).
        backbone.eval()
        backbone.requires_grad_(False)
        if channels_last:
            backbone.to(memory_format=torch.channels_last)
        self.__dict__["_frozen_backbone"] = backbone
        self.__dict__["_first_batch_pending"] = True
        self.train(False)

    @property
    def backbone(self) -> nn.Module:
        """The frozen classifier network."""
        return self.__dict__["_frozen_backbone"]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Evaluator:
        super()._apply(fn, recurse)
        self.backbone._apply(fn)
        return self

    def train(self, mode: bool = True) -> Evaluator:
        """Keep the evaluator and its backbone in eval mode, whatever ``mode`` is."""
        super().train(False)
        self.backbone.eval()
        return self

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, num_classes={self.num_classes}, image_size={self.image_size}, "
            f"input_range={self.input_range}, interpolation={self.interpolation!r}"
        )

    # Preprocess the images

    def check_images(self, images: Tensor) -> None:
        """Raise ``ValueError`` if ``images`` is not a batch the evaluator accepts."""
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4:
            raise ValueError(
                f"images must be a 4-D tensor (N, C, H, W), got shape {tuple(images.shape)}; "
                "add a batch dimension with images.unsqueeze(0) for a single image"
            )
        if images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must have 1 or 3 channels, got {images.shape[1]} (shape "
                f"{tuple(images.shape)}); channels come second, as in (N, C, H, W)"
            )
        low, high = self.input_range
        if not images.is_floating_point():
            raise ValueError(
                f"images must be a floating-point tensor in {self.input_range}, got dtype "
                f"{images.dtype}; convert 8-bit images with "
                f"images.float() / 255 * {high - low:g} {'-' if low < 0 else '+'} {abs(low):g}"
            )
        if not self.validate_inputs or images.numel() == 0:
            return
        observed_min, observed_max = torch.stack(torch.aminmax(images.detach())).tolist()
        if not (math.isfinite(observed_min) and math.isfinite(observed_max)):
            raise ValueError(
                f"images contain non-finite values (min {observed_min}, max {observed_max}); "
                "check the generator for NaN or infinite outputs"
            )
        if observed_min < low - _RANGE_TOLERANCE or observed_max > high + _RANGE_TOLERANCE:
            raise ValueError(
                f"image values span [{observed_min:.4g}, {observed_max:.4g}], outside "
                f"input_range={self.input_range}; rescale the images or build the evaluator "
                "with the matching input_range, e.g. input_range=(0, 1) for images in [0, 1]"
            )
        first_batch = self.__dict__.pop("_first_batch_pending", False)
        if first_batch and low < 0 < high and observed_min >= 0 and images.numel() >= 1024:
            # A whole batch without one value below zero is what [0, 1] images fed to a (-1, 1)
            # evaluator look like. Only the first batch is checked, so that a generator that
            # later collapses to bright images does not stop training.
            raise ValueError(
                f"the first batch has no value below 0 (it spans [{observed_min:.4g}, "
                f"{observed_max:.4g}]) although input_range={self.input_range}; this looks "
                "like [0, 1] images: map them with images * 2 - 1, or build the evaluator with "
                "input_range=(0, 1), or pass validate_inputs=False if the range is intended"
            )

    def preprocess(self, images: Tensor) -> Tensor:
        """Map images from ``input_range`` to the backbone's normalised input at its size."""
        self.check_images(images)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        x = torch.addcmul(self._shift, images.to(self._scale.dtype), self._scale)
        if self.channels_last:
            # Convert at the input size: interpolate keeps the memory format, so the resized
            # batch, 49 times larger for 32 to 224 pixels, is not copied again.
            x = x.contiguous(memory_format=torch.channels_last)
        if tuple(x.shape[-2:]) != self.image_size:
            downsampling = x.shape[-2] > self.image_size[0] or x.shape[-1] > self.image_size[1]
            x = F.interpolate(
                x,
                size=self.image_size,
                mode=self.interpolation,
                align_corners=False if self.interpolation in ("bilinear", "bicubic") else None,
                antialias=downsampling and self.interpolation in ("bilinear", "bicubic"),
            )
        if self.channels_last:
            # A no-op unless interpolate returned another format.
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # Run the backbone

    @abc.abstractmethod
    def _compute_features(self, x: Tensor) -> Tensor:
        """Return pooled penultimate features (N, D) of preprocessed images."""

    @abc.abstractmethod
    def _compute_head(self, features: Tensor) -> Tensor:
        """Return logits (N, num_classes) from pooled features."""

    def _compute_logits(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, images: Tensor) -> Tensor:
        """Return class logits (N, num_classes) of images in ``input_range``."""
        return self._compute_logits(self.preprocess(images))

    def forward_features(self, images: Tensor) -> Tensor:
        """Return the pooled penultimate features (N, D), e.g. for a Fréchet distance."""
        return self._compute_features(self.preprocess(images))

    def forward_head(self, features: Tensor) -> Tensor:
        """Return logits from the output of :meth:`forward_features`."""
        return self._compute_head(features)


def _find_last_linear(module: nn.Module) -> nn.Linear | None:
    last = None
    for child in module.modules():
        if isinstance(child, nn.Linear):
            last = child
    return last


class ModuleEvaluator(Evaluator):
    """Wrap any classifier ``module`` that maps normalised images to logits.

    Args:
        module: The classifier. It is frozen in place (eval mode, no gradients).
        mean, std: Per-channel normalisation the module was trained with, for inputs in [0, 1].
        image_size: Input size the module expects, an int or (height, width).
        num_classes: Number of logits; read from the classifier layer when omitted.
        classifier: Name of the final ``nn.Linear`` layer (as in ``named_modules()``), or the
            layer itself, used by :meth:`forward_features`. Defaults to the last ``nn.Linear``.
        **kwargs: ``input_range``, ``interpolation``, ``channels_last``, ``validate_inputs``.
    """

    def __init__(
        self,
        module: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int | Sequence[int],
        num_classes: int | None = None,
        classifier: str | nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if isinstance(classifier, str):
            layers = dict(module.named_modules())
            if classifier not in layers:
                raise ValueError(
                    f"classifier {classifier!r} is not a submodule of {type(module).__name__}; "
                    "pass a name from module.named_modules()"
                )
            head = layers[classifier]
        else:
            head = classifier if classifier is not None else _find_last_linear(module)
        if num_classes is None:
            if not isinstance(head, nn.Linear):
                raise ValueError(
                    f"cannot infer num_classes: {type(module).__name__} has no final nn.Linear; "
                    "pass num_classes"
                )
            num_classes = head.out_features
        kwargs.setdefault("name", type(module).__name__)
        super().__init__(
            module, num_classes=num_classes, mean=mean, std=std, image_size=image_size, **kwargs
        )
        self.__dict__["_head"] = head

    def _compute_features(self, x: Tensor) -> Tensor:
        head = self.__dict__["_head"]
        if head is None:
            raise NotImplementedError(
                f"{self.name} has no final nn.Linear layer, so its features are undefined; "
                "pass classifier=... to ModuleEvaluator"
            )
        captured: list[Tensor] = []
        handle = head.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        try:
            self.backbone(x)
        finally:
            handle.remove()
        return captured[-1].flatten(1)

    def _compute_head(self, features: Tensor) -> Tensor:
        return self.__dict__["_head"](features)


class TimmEvaluator(Evaluator):
    """A frozen ``timm`` classifier, MobileNetV2 (``mobilenetv2_100``) by default.

    Mean, std and input size come from the model's ``pretrained_cfg``, or from the ``data_config``
    stored in ``checkpoint_path`` when it has one. ``image_size`` overrides the input size.

    Args:
        model_name: A ``timm`` model name, optionally with a weight tag (``name.tag``).
        pretrained: Download the pretrained weights through ``timm`` (needs network or a filled
            Hugging Face cache). Ignored when ``checkpoint_path`` is given.
        checkpoint_path: A local ``.pth``/``.pt`` (``weights_only``) or ``.safetensors`` file to
            load, so nothing is downloaded.
        num_classes: Size of the classifier head; the checkpoint's ``data_config`` or 1000 when
            omitted.
        image_size: Evaluator input size; the backbone's configured size when omitted.
        **kwargs: ``input_range``, ``interpolation``, ``channels_last``, ``validate_inputs``.

    Raises:
        ValueError: ``model_name`` is not a ``timm`` model, or the checkpoint is invalid.
        PretrainedWeightsUnavailableError: the pretrained weights cannot be fetched.
    """

    def __init__(
        self,
        model_name: str = "mobilenetv2_100",
        pretrained: bool = True,
        checkpoint_path: str | os.PathLike[str] | None = None,
        num_classes: int | None = None,
        image_size: int | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        import timm
        import timm.data

        if not timm.is_model(model_name):
            raise ValueError(
                f"unknown timm model {model_name!r}; list valid names with "
                "timm.list_models('*mobilenet*') (or any other pattern)"
            )

        # Build the backbone
        state_dict: dict[str, Tensor] | None = None
        metadata: dict[str, Any] = {}
        if checkpoint_path is not None:
            state_dict, metadata = load_weights_file(checkpoint_path)
            check_recorded_spec(metadata, f"timm:{model_name}", checkpoint_path)
            pretrained = False
        create_kwargs: dict[str, Any] = {}
        if num_classes is None and "num_classes" in metadata:
            num_classes = int(metadata["num_classes"])
        if num_classes is not None:
            create_kwargs["num_classes"] = num_classes
        if pretrained:
            backbone = _create_pretrained_timm(model_name, create_kwargs)
        else:
            backbone = timm.create_model(model_name, pretrained=False, **create_kwargs)
        if state_dict is not None:
            load_into_backbone(backbone, state_dict, checkpoint_path)  # type: ignore[arg-type]

        # Read the preprocessing from the configuration
        data_config = dict(timm.data.resolve_model_data_config(backbone))
        data_config.update({k: v for k, v in metadata.items() if k in data_config})
        self.data_config = data_config
        super().__init__(
            backbone,
            num_classes=backbone.num_classes,
            mean=data_config["mean"],
            std=data_config["std"],
            image_size=image_size if image_size is not None else data_config["input_size"],
            name=f"timm:{model_name}",
            **kwargs,
        )

    def _compute_features(self, x: Tensor) -> Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def _compute_head(self, features: Tensor) -> Tensor:
        return self.backbone.get_classifier()(features)


def _create_pretrained_timm(model_name: str, create_kwargs: dict[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(model_name, pretrained=True, **create_kwargs)
    except (OSError, RuntimeError) as error:
        raise PretrainedWeightsUnavailableError(
            f"cannot fetch the pretrained weights of timm model {model_name!r} ({error}). "
            "Download them on a machine with network access, for example with "
            f"timm.create_model({model_name!r}, pretrained=True) and "
            "torch.save(model.state_dict(), 'weights.pth'), then pass "
            "checkpoint_path='weights.pth' (or --evaluator-weights on the command line)"
        ) from error


class TorchvisionEvaluator(ModuleEvaluator):
    """A frozen ``torchvision`` classifier, MobileNetV2 (``mobilenet_v2``) by default.

    Mean, std and input size (the crop size) come from the weights' inference transforms; for
    random or local weights, from the model's ``DEFAULT`` weights entry.

    Args:
        model_name: A name from ``torchvision.models.list_models(module=torchvision.models)``.
        weights: A weights name such as ``"DEFAULT"`` or ``"IMAGENET1K_V2"``, a weights enum
            member, or None for random initialisation. Ignored when ``checkpoint_path`` is given.
        pretrained: False is the same as ``weights=None``, so that ``build_evaluator`` takes
            ``pretrained=False`` for every source.
        checkpoint_path: A local ``.pth``/``.pt`` (``weights_only``) or ``.safetensors`` file.
        num_classes: Size of the classifier head; the checkpoint's ``data_config`` or the weights'
            category count when omitted.
        image_size: Evaluator input size; the weights' crop size when omitted.
        **kwargs: ``input_range``, ``interpolation``, ``channels_last``, ``validate_inputs``.
    """

    def __init__(
        self,
        model_name: str = "mobilenet_v2",
        weights: str | Any | None = "DEFAULT",
        pretrained: bool = True,
        checkpoint_path: str | os.PathLike[str] | None = None,
        num_classes: int | None = None,
        image_size: int | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        import torchvision

        valid_names = torchvision.models.list_models(module=torchvision.models)
        if model_name not in valid_names:
            raise ValueError(
                f"unknown torchvision classification model {model_name!r}; list valid names "
                "with torchvision.models.list_models(module=torchvision.models)"
            )
        weights_enum = torchvision.models.get_model_weights(model_name)
        default_entry = weights_enum.DEFAULT  # type: ignore[attr-defined]

        # Resolve the weights entry that sets the preprocessing
        state_dict: dict[str, Tensor] | None = None
        metadata: dict[str, Any] = {}
        if checkpoint_path is not None:
            state_dict, metadata = load_weights_file(checkpoint_path)
            check_recorded_spec(metadata, f"torchvision:{model_name}", checkpoint_path)
            download = None
        elif weights is None or not pretrained:
            download = None
        else:
            try:
                download = weights_enum.verify(weights)  # type: ignore[attr-defined]
            except (KeyError, ValueError) as error:
                raise ValueError(
                    f"unknown weights {weights!r} for torchvision model {model_name!r}; valid: "
                    f"{['DEFAULT'] + [entry.name for entry in weights_enum]}"  # type: ignore[attr-defined]
                ) from error
        config_entry = download or default_entry

        # Build the backbone
        if num_classes is None and "num_classes" in metadata:
            num_classes = int(metadata["num_classes"])
        if num_classes is None:
            num_classes = len(config_entry.meta["categories"])
        if download is not None:
            backbone = _create_pretrained_torchvision(model_name, download)
        else:
            backbone = torchvision.models.get_model(
                model_name, weights=None, num_classes=num_classes
            )
        if state_dict is not None:
            load_into_backbone(backbone, state_dict, checkpoint_path)  # type: ignore[arg-type]

        # Read the preprocessing from the weights' transforms
        transforms = config_entry.transforms()
        data_config: dict[str, Any] = {
            "mean": tuple(transforms.mean),
            "std": tuple(transforms.std),
            "input_size": (3, *_as_image_size(transforms.crop_size)),
            "weights": str(config_entry),
        }
        data_config.update({k: v for k, v in metadata.items() if k in data_config})
        self.data_config = data_config
        super().__init__(
            backbone,
            mean=data_config["mean"],
            std=data_config["std"],
            image_size=image_size if image_size is not None else data_config["input_size"],
            name=f"torchvision:{model_name}",
            **kwargs,
        )


def _create_pretrained_torchvision(model_name: str, weights: Any) -> nn.Module:
    import torchvision

    try:
        return torchvision.models.get_model(model_name, weights=weights)
    except (OSError, RuntimeError) as error:
        cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise PretrainedWeightsUnavailableError(
            f"cannot fetch the torchvision weights {weights} for {model_name!r} ({error}). "
            f"Download {weights.url} on a machine with network access and either pass "
            "checkpoint_path=PATH_TO_FILE (or --evaluator-weights on the command line) or put "
            f"the file into {cache_dir}"
        ) from error


# Build evaluators from strings

_EVALUATOR_SOURCES: dict[str, Callable[..., Evaluator]] = {}


def register_evaluator(
    source: str,
) -> Callable[[Callable[..., Evaluator]], Callable[..., Evaluator]]:
    """Register a factory so that ``build_evaluator("SOURCE:NAME")`` calls ``factory(NAME)``."""

    def decorator(factory: Callable[..., Evaluator]) -> Callable[..., Evaluator]:
        if source in _EVALUATOR_SOURCES:
            raise ValueError(f"an evaluator source named {source!r} is already registered")
        _EVALUATOR_SOURCES[source] = factory
        return factory

    return decorator


register_evaluator("timm")(TimmEvaluator)
register_evaluator("torchvision")(TorchvisionEvaluator)


def list_evaluator_sources() -> list[str]:
    """Return the registered prefixes that :func:`build_evaluator` accepts."""
    return sorted(_EVALUATOR_SOURCES)


def build_evaluator(spec: str = DEFAULT_EVALUATOR, **kwargs: Any) -> Evaluator:
    """Build an evaluator from a ``"SOURCE:MODEL_NAME"`` string, for command lines and configs.

    Examples: ``"timm:mobilenetv2_100"``, ``"timm:mobilenetv3_large_100"``,
    ``"torchvision:mobilenet_v2"``. Keyword arguments go to the evaluator class, e.g.
    ``pretrained=False`` for timm, ``weights=None`` for torchvision, or ``checkpoint_path``.

    Raises:
        ValueError: the string has no known source prefix or names an unknown model.
    """
    if not isinstance(spec, str):
        raise ValueError(
            f"evaluator must be a 'SOURCE:MODEL_NAME' string, got {type(spec).__name__} {spec!r}"
        )
    source, separator, model_name = spec.partition(":")
    if not separator or not model_name or source not in _EVALUATOR_SOURCES:
        raise ValueError(
            f"invalid evaluator {spec!r}: expected 'SOURCE:MODEL_NAME' with SOURCE one of "
            f"{list_evaluator_sources()}, e.g. {DEFAULT_EVALUATOR!r}"
        )
    return _EVALUATOR_SOURCES[source](model_name, **kwargs)

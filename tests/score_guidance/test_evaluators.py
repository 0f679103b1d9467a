from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from score_guidance import (
    Evaluator,
    InvalidCheckpointError,
    ModuleEvaluator,
    PretrainedWeightsUnavailableError,
    TimmEvaluator,
    TorchvisionEvaluator,
    build_evaluator,
    list_evaluator_sources,
)


class TinyClassifier(nn.Module):
    """A small BatchNorm classifier, so that eval mode matters."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _tiny_evaluator(**kwargs) -> ModuleEvaluator:
    kwargs.setdefault("image_size", 16)
    return ModuleEvaluator(TinyClassifier(), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), **kwargs)


def _images(n: int = 4, channels: int = 3, size: int = 8) -> torch.Tensor:
    return torch.rand(n, channels, size, size) * 2 - 1


def test_evaluator_is_abstract():
    with pytest.raises(TypeError):
        Evaluator(nn.Identity(), num_classes=2, mean=(0,), std=(1,), image_size=8)


def test_preprocess_maps_range_then_normalises():
    evaluator = _tiny_evaluator(image_size=8)
    images = _images()
    expected = ((images + 1) / 2 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.3]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(evaluator.preprocess(images), expected)


def test_preprocess_resize_equals_normalise_after_bilinear_resize():
    evaluator = _tiny_evaluator(image_size=20)
    images = _images(size=8)
    unit = torch.nn.functional.interpolate((images + 1) / 2, size=20, mode="bilinear")
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(evaluator.preprocess(images), (unit - mean) / std)


def test_one_channel_images_are_repeated():
    evaluator = _tiny_evaluator()
    gray = _images(channels=1)
    torch.testing.assert_close(evaluator(gray), evaluator(gray.repeat(1, 3, 1, 1)))


def test_custom_input_range_accepts_unit_images():
    evaluator = _tiny_evaluator(input_range=(0, 1))
    images = torch.rand(3, 3, 8, 8)
    reference = _tiny_evaluator()
    reference.backbone.load_state_dict(evaluator.backbone.state_dict())
    torch.testing.assert_close(evaluator(images), reference(images * 2 - 1))


def test_train_keeps_backbone_in_eval_mode():
    evaluator = _tiny_evaluator()
    container = nn.Sequential(nn.Conv2d(3, 3, 1), evaluator)
    container.train()
    assert not evaluator.backbone.training
    assert not evaluator.backbone.bn.training
    assert not evaluator.training
    assert container[0].training


def test_batchnorm_running_stats_unchanged_by_forward():
    evaluator = _tiny_evaluator()
    evaluator.train()
    before = evaluator.backbone.bn.running_mean.clone()
    evaluator(_images(n=8) * 0.9)
    torch.testing.assert_close(evaluator.backbone.bn.running_mean, before)


def test_parameters_frozen_but_input_gets_gradient():
    evaluator = _tiny_evaluator()
    assert all(not p.requires_grad for p in evaluator.backbone.parameters())
    images = _images().requires_grad_()
    evaluator(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_weights_unchanged_after_generator_step():
    evaluator = _tiny_evaluator()
    generator = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Tanh(), nn.Unflatten(1, (3, 8, 8)))
    model = nn.ModuleDict({"generator": generator, "evaluator": evaluator})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before = copy.deepcopy(evaluator.backbone.state_dict())
    generator_before = generator[0].weight.detach().clone()

    loss = -evaluator(generator(torch.randn(6, 4))).log_softmax(1)[:, 0].mean()
    loss.backward()
    optimizer.step()

    assert not torch.equal(generator[0].weight, generator_before)
    for name, tensor in evaluator.backbone.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_evaluator_weights_absent_from_container_state_dict():
    evaluator = _tiny_evaluator()
    container = nn.ModuleDict({"head": nn.Linear(2, 2), "evaluator": evaluator})
    assert sorted(container.state_dict()) == ["head.bias", "head.weight"]
    assert all(p.shape != (8, 3, 3, 3) for p in container.parameters())


def test_to_dtype_moves_backbone_and_buffers():
    evaluator = _tiny_evaluator().to(torch.float64)
    assert evaluator.backbone.conv.weight.dtype == torch.float64
    assert evaluator(_images()).dtype == torch.float64


def test_forward_features_and_head_reproduce_logits():
    evaluator = _tiny_evaluator()
    images = _images()
    features = evaluator.forward_features(images)
    assert features.shape == (4, 8)
    torch.testing.assert_close(evaluator.forward_head(features), evaluator(images))


def test_num_classes_inferred_from_last_linear():
    assert _tiny_evaluator().num_classes == 5


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.rand(3, 8, 8), "4-D"),
        (torch.rand(2, 2, 8, 8), "1 or 3 channels"),
        (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), "floating-point"),
        (torch.rand(2, 3, 8, 8) * 255, "outside input_range"),
        (torch.full((2, 3, 8, 8), -1.01), "outside input_range"),
        (torch.full((2, 3, 8, 8), float("nan")), "non-finite"),
        (torch.full((2, 3, 8, 8), float("inf")), "non-finite"),
    ],
    ids=["3-d", "two-channels", "uint8", "0-255", "below-range", "nan", "inf"],
)
def test_invalid_images_raise(images: torch.Tensor, match: str):
    with pytest.raises(ValueError, match=match):
        _tiny_evaluator()(images)


def test_unit_images_rejected_on_first_batch():
    unit_images = torch.rand(4, 3, 16, 16)
    evaluator = _tiny_evaluator()
    with pytest.raises(ValueError, match=r"images \* 2 - 1"):
        evaluator(unit_images)


def test_unit_range_probe_checks_first_batch_only():
    evaluator = _tiny_evaluator()
    evaluator(_images(size=16))
    bright = torch.rand(4, 3, 16, 16)
    assert evaluator(bright).shape == (4, 5)


def test_unit_images_accepted_with_validation_off():
    evaluator = _tiny_evaluator(validate_inputs=False)
    assert evaluator(torch.rand(4, 3, 16, 16)).shape == (4, 5)


def test_tolerance_admits_rounding_above_range():
    _tiny_evaluator()(torch.full((2, 3, 8, 8), 1.0005))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_range": (1, -1)},
        {"interpolation": "lanczos"},
        {"std": (0.0, 1.0, 1.0)},
        {"mean": (0.1, 0.2)},
    ],
)
def test_invalid_configuration_raises(kwargs):
    base = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "image_size": 8}
    base.update(kwargs)
    with pytest.raises(ValueError):
        ModuleEvaluator(TinyClassifier(), **base)


# timm and torchvision backbones, random weights, small input size for speed


def test_timm_evaluator_reads_config_from_backbone():
    evaluator = TimmEvaluator("mobilenetv2_100", pretrained=False)
    config = evaluator.backbone.pretrained_cfg
    assert evaluator.mean == pytest.approx(config["mean"])
    assert evaluator.std == pytest.approx(config["std"])
    assert evaluator.image_size == tuple(config["input_size"][1:])
    assert evaluator.num_classes == 1000


def test_torchvision_evaluator_reads_config_from_weights():
    import torchvision

    evaluator = TorchvisionEvaluator("mobilenet_v2", pretrained=False, image_size=64)
    transforms = torchvision.models.MobileNet_V2_Weights.DEFAULT.transforms()
    assert evaluator.mean == pytest.approx(transforms.mean)
    assert evaluator.std == pytest.approx(transforms.std)
    assert TorchvisionEvaluator("mobilenet_v2", weights=None).image_size == (224, 224)
    assert evaluator(_images(n=2)).shape == (2, 1000)


def test_timm_checkpoint_round_trip(tmp_path):
    source = TimmEvaluator("mobilenetv2_050", pretrained=False, image_size=64)
    path = tmp_path / "weights.pth"
    torch.save(source.backbone.state_dict(), path)

    loaded = TimmEvaluator("mobilenetv2_050", checkpoint_path=path, image_size=64)

    images = _images(n=3)
    torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)


def test_safetensors_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    source = TorchvisionEvaluator("mobilenet_v3_small", pretrained=False, image_size=64)
    path = tmp_path / "weights.safetensors"
    save_file(source.backbone.state_dict(), str(path))

    loaded = build_evaluator("torchvision:mobilenet_v3_small", checkpoint_path=path, image_size=64)

    images = _images(n=3)
    torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)


def test_checkpoint_data_config_overrides_preprocessing(tmp_path):
    source = TimmEvaluator("mobilenetv2_050", pretrained=False, num_classes=10)
    path = tmp_path / "trained.pth"
    data_config = {"mean": (0.4, 0.5, 0.6), "std": (0.1, 0.2, 0.3), "input_size": (3, 48, 48)}
    data_config["num_classes"] = 10
    torch.save({"state_dict": source.backbone.state_dict(), "data_config": data_config}, path)

    loaded = TimmEvaluator("mobilenetv2_050", checkpoint_path=path)

    assert loaded.num_classes == 10
    assert loaded.image_size == (48, 48)
    assert loaded.mean == pytest.approx((0.4, 0.5, 0.6))


def test_ddp_prefixed_checkpoint_loads(tmp_path):
    source = TimmEvaluator("mobilenetv2_050", pretrained=False, image_size=32)
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in source.backbone.state_dict().items()}, path)
    loaded = TimmEvaluator("mobilenetv2_050", checkpoint_path=path, image_size=32)
    images = _images(n=2)
    torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(InvalidCheckpointError, match="not found"):
        TimmEvaluator("mobilenetv2_050", checkpoint_path=tmp_path / "absent.pth")


def test_folder_as_checkpoint_raises(tmp_path):
    with pytest.raises(InvalidCheckpointError, match="is a folder"):
        TimmEvaluator("mobilenetv2_050", checkpoint_path=tmp_path)


def test_text_file_checkpoint_raises(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_text("junk\n")
    with pytest.raises(InvalidCheckpointError, match="cannot read"):
        TimmEvaluator("mobilenetv2_050", checkpoint_path=path)


def test_non_state_dict_checkpoint_raises(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="not a state dict"):
        TimmEvaluator("mobilenetv2_050", checkpoint_path=path)


def test_garbage_checkpoint_raises(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        TimmEvaluator("mobilenetv2_050", checkpoint_path=path)


def test_mismatched_checkpoint_names_keys(tmp_path):
    state_dict = TimmEvaluator("mobilenetv2_050", pretrained=False).backbone.state_dict()
    state_dict["extra.weight"] = torch.zeros(1)
    del state_dict["classifier.bias"]
    path = tmp_path / "mismatch.pth"
    torch.save(state_dict, path)
    with pytest.raises(ValueError, match="missing keys: classifier.bias") as error:
        TimmEvaluator("mobilenetv2_050", checkpoint_path=path)
    assert "unexpected keys: extra.weight" in str(error.value)


def test_wrong_architecture_checkpoint_raises(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(TimmEvaluator("mobilenetv2_050", pretrained=False).backbone.state_dict(), path)
    with pytest.raises(ValueError, match="does not fit"):
        TimmEvaluator("mobilenetv2_100", checkpoint_path=path)


def test_offline_pretrained_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsUnavailableError, match="checkpoint_path") as error:
        TimmEvaluator("mobilenetv2_050", pretrained=True)
    assert "mobilenetv2_050" in str(error.value)


def test_build_evaluator_dispatches_on_source():
    evaluator = build_evaluator("timm:mobilenetv2_050", pretrained=False, image_size=32)
    assert isinstance(evaluator, TimmEvaluator)
    assert evaluator.image_size == (32, 32)
    assert list_evaluator_sources() == ["timm", "torchvision"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("mobilenetv2_100", "SOURCE:MODEL_NAME"),
        ("keras:mobilenet_v2", "SOURCE:MODEL_NAME"),
        ("timm:not_a_model", r"timm.list_models"),
        ("torchvision:not_a_model", r"torchvision.models.list_models"),
        (None, "must be a 'SOURCE:MODEL_NAME' string"),
    ],
)
def test_build_evaluator_rejects_unknown_names(spec: str, match: str):
    with pytest.raises(ValueError, match=match):
        build_evaluator(spec, pretrained=False)


def test_weights_file_of_another_model_rejected(tmp_path):
    import timm

    model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=4)
    path = tmp_path / "guide.pth"
    data_config = {"num_classes": 4}
    contents = {"state_dict": model.state_dict(), "data_config": data_config}
    torch.save({**contents, "evaluator": "timm:mobilenetv2_050"}, path)

    evaluator = build_evaluator("timm:mobilenetv2_050", checkpoint_path=path, image_size=32)
    assert evaluator.num_classes == 4
    with pytest.raises(
        InvalidCheckpointError, match="contains the weights of 'timm:mobilenetv2_050'"
    ):
        build_evaluator("timm:mobilenetv2_035", checkpoint_path=path)

"""Tests of ``score_guidance.train_evaluator`` on tiny synthetic image folders.

Each class of the synthetic folders is one colour plus noise, so that a small network separates
them within a few steps. The models are ``timm:test_resnet`` (0.4 M parameters, whose config
has mean and std 0.5, unlike ImageNet) and torchvision's ``mobilenet_v3_small`` at 16x16 pixels.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
import torchvision
from PIL import Image

import score_guidance.train_evaluator as train_module
from score_guidance import (
    InvalidCheckpointError,
    PretrainedWeightsUnavailableError,
    build_evaluator,
)
from score_guidance.train_evaluator import (
    EvaluatorTrainingConfig,
    EvaluatorTrainingResult,
    TrainingDivergedError,
    UnsupportedPixelRangeError,
    main,
    train_evaluator,
)

TIMM_MODEL = "timm:test_resnet"
TORCHVISION_MODEL = "torchvision:mobilenet_v3_small"
CLASS_COLOURS = ((220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40))

if not timm.is_model("test_resnet"):
    pytest.skip("timm has no test_resnet model before version 1.0", allow_module_level=True)


def make_image_folder(
    root: Path, classes: int = 3, per_class: int = 16, size: int = 16, seed: int = 0
) -> Path:
    """Write ``per_class`` noisy single-colour PNG images into ``root/class_C`` per class."""
    generator = np.random.default_rng(seed)
    for label in range(classes):
        class_dir = root / f"class_{label}"
        class_dir.mkdir(parents=True)
        for index in range(per_class):
            noise = generator.normal(0.0, 30.0, size=(size, size, 3))
            pixels = np.clip(np.array(CLASS_COLOURS[label]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(class_dir / f"{index:03d}.png")
    return root


def read_images(folder: Path) -> torch.Tensor:
    """Read every PNG under ``folder`` in sorted order as uint8 (N, 3, H, W)."""
    paths = sorted(folder.glob("*/*.png"))
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def make_config(tmp_path: Path, data_dir: Path, **overrides) -> EvaluatorTrainingConfig:
    settings = {
        "model": TIMM_MODEL,
        "data_dir": data_dir,
        "out": tmp_path / "runs" / "guide.pth",
        "image_size": 16,
        "epochs": 2,
        "batch_size": 8,
        "lr": 0.05,
        "val_fraction": 0.25,
        "device": "cpu",
        "num_threads": 1,
    }
    settings.update(overrides)
    return EvaluatorTrainingConfig(**settings)


def logits_by_hand(result: EvaluatorTrainingResult, images: torch.Tensor) -> torch.Tensor:
    """Normalise uint8 images with the result's mean and std and run the trained network."""
    mean = torch.tensor(result.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(result.data_config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return result.model((images.float() / 255 - mean) / std)


def make_gray_folder(root: Path, values: dict[str, int], mode: str, suffix: str) -> Path:
    """Write two 4x4 one-channel images of PIL ``mode`` per class, all pixels of its value."""
    dtypes = {"I;16": np.uint16, "I": np.int32, "F": np.float32}
    for class_name, value in values.items():
        class_dir = root / class_name
        class_dir.mkdir(parents=True)
        for index in range(2):
            image = Image.fromarray(np.full((4, 4), value, dtype=dtypes[mode]))
            assert image.mode == mode
            image.save(class_dir / f"{index}{suffix}")
    return root


def forbid_data_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make listing the data folders fail, to show that a check ran before it."""

    def select_data(config):
        raise AssertionError("the data folders were read before the check")

    monkeypatch.setattr(train_module, "_select_data", select_data)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "train")


# The weights file


def test_timm_weights_load_as_evaluator(tmp_path, data_dir):
    config = make_config(tmp_path, data_dir)
    rng_state_before = torch.get_rng_state()
    result = train_evaluator(config)

    assert result.weights_path == config.out
    assert result.weights_path.is_file()
    assert result.epochs_completed == 2
    assert not result.resumed
    assert not result.interrupted
    assert result.classes == ["class_0", "class_1", "class_2"]
    assert torch.equal(torch.get_rng_state(), rng_state_before)

    evaluator = build_evaluator(TIMM_MODEL, pretrained=False, checkpoint_path=config.out)
    backbone_config = timm.data.resolve_model_data_config(timm.create_model("test_resnet"))
    assert evaluator.mean == tuple(backbone_config["mean"])
    assert evaluator.std == tuple(backbone_config["std"])
    assert evaluator.image_size == (16, 16)
    assert evaluator.num_classes == 3

    images = read_images(data_dir)[:12]
    expected = logits_by_hand(result, images)
    with torch.no_grad():
        logits = evaluator(images.float() / 127.5 - 1)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_weights_file_contents(tmp_path, data_dir):
    config = make_config(tmp_path, data_dir)
    result = train_evaluator(config)
    saved = torch.load(config.out, map_location="cpu", weights_only=True)

    assert saved["data_config"] == {
        "mean": result.data_config["mean"],
        "std": result.data_config["std"],
        "input_size": (3, 16, 16),
        "interpolation": "bilinear",
        "num_classes": 3,
    }
    assert saved["evaluator"] == TIMM_MODEL
    assert saved["classes"] == ["class_0", "class_1", "class_2"]
    assert saved["accuracy"] == result.held_out_accuracy
    assert saved["held_out_images"] == 12  # round(0.25 * 16) of each of 3 classes
    assert saved["train_accuracy"] == result.train_accuracy
    assert saved["epochs"] == 2
    assert len(saved["history"]) == 2
    trained_state = result.model.state_dict()
    assert saved["state_dict"].keys() == trained_state.keys()
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, trained_state[key]), key


def test_torchvision_weights_load_as_evaluator(tmp_path, data_dir):
    config = make_config(tmp_path, data_dir, model=TORCHVISION_MODEL)
    result = train_evaluator(config)

    evaluator = build_evaluator(TORCHVISION_MODEL, pretrained=False, checkpoint_path=config.out)
    default_weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    transforms = default_weights.transforms()
    assert evaluator.mean == tuple(transforms.mean)
    assert evaluator.std == tuple(transforms.std)
    assert evaluator.image_size == (16, 16)
    assert evaluator.num_classes == 3

    images = read_images(data_dir)[:12]
    expected = logits_by_hand(result, images)
    with torch.no_grad():
        logits = evaluator(images.float() / 127.5 - 1)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_held_out_accuracy_on_val_dir(tmp_path, data_dir):
    val_dir = make_image_folder(tmp_path / "val", per_class=10, seed=1)
    config = make_config(tmp_path, data_dir, val_dir=val_dir, epochs=4)
    result = train_evaluator(config)

    assert result.held_out_images == 30
    assert result.held_out_accuracy is not None
    assert result.held_out_accuracy >= 0.9
    assert result.history[-1]["held_out_accuracy"] == result.held_out_accuracy
    saved = torch.load(config.out, map_location="cpu", weights_only=True)
    assert saved["accuracy"] == result.held_out_accuracy

    with torch.no_grad():
        predictions = logits_by_hand(result, read_images(val_dir)).argmax(1)
    labels = torch.arange(3).repeat_interleave(10)
    assert (predictions == labels).float().mean().item() == result.held_out_accuracy


def test_no_held_out_images_without_fraction(tmp_path, data_dir):
    config = make_config(tmp_path, data_dir, val_fraction=0.0, epochs=1)
    result = train_evaluator(config)

    assert result.held_out_accuracy is None
    assert result.held_out_images == 0
    saved = torch.load(config.out, map_location="cpu", weights_only=True)
    assert "accuracy" not in saved


def test_limit_images_trains_on_subset(tmp_path, data_dir):
    config = make_config(tmp_path, data_dir, limit_images=24, val_fraction=0.0, epochs=1)
    result = train_evaluator(config)
    assert result.train_images == 24
    assert result.held_out_images == 0


def test_split_holds_out_fraction_of_each_class(tmp_path, data_dir):
    result = train_evaluator(make_config(tmp_path, data_dir, epochs=1, limit_val_images=9))
    # round(0.25 * 16) = 4 of the 16 images of each of the 3 classes are held out.
    assert result.train_images == 36
    assert result.held_out_images == 9


def test_saved_files_follow_umask(tmp_path, data_dir):
    previous_umask = os.umask(0o027)
    try:
        config = make_config(tmp_path, data_dir, epochs=1)
        train_evaluator(config)
    finally:
        os.umask(previous_umask)
    assert config.out.stat().st_mode & 0o777 == 0o640
    assert config.resume_checkpoint.stat().st_mode & 0o777 == 0o640


def test_leftover_temporary_files_removed(tmp_path, data_dir, caplog):
    config = make_config(tmp_path, data_dir, epochs=1)
    folder = config.out.parent
    folder.mkdir(parents=True)
    leftovers = [folder / "guide.pth.ab12cd34.tmp", folder / "guide.pth.resume.pt.x_9y8z7w.tmp"]
    unrelated = [
        folder / "other.pth.ab12cd34.tmp",  # the temporary file of another target
        folder / "guide.pth.notes.tmp",  # not 8 characters between the dots
        folder / "guide.pth.ab12cd34.tmp.bak",
    ]
    for path in [*leftovers, *unrelated]:
        path.write_bytes(b"partial")

    with caplog.at_level(logging.INFO, logger=train_module.__name__):
        train_evaluator(config)

    for path in leftovers:
        assert not path.exists(), path
        assert f"Removed {path}" in caplog.text
    for path in unrelated:
        assert path.exists(), path
    assert sorted(path.name for path in folder.glob("*.tmp")) == sorted(
        path.name for path in unrelated if path.suffix == ".tmp"
    )


# Diverged training


def test_diverged_training_raises_without_weights(tmp_path, data_dir):
    config = make_config(tmp_path, data_dir, lr=1e30)
    with pytest.raises(TrainingDivergedError, match="diverged in epoch 1 of 2") as caught:
        train_evaluator(config)
    assert "the mean training loss is nan" in str(caught.value)
    assert "lr (--lr) lower than 1e+30" in str(caught.value)
    assert not config.out.exists()


def test_non_finite_weights_raise(tmp_path, data_dir, monkeypatch):
    # 36 training images in batches of 8 give 4 steps, and the loss of the 4th step is
    # computed before the weights are broken, so only the weights check can notice.
    original_step = train_module._Trainer.train_step

    def step_then_break_weights(trainer):
        loss = original_step(trainer)
        if trainer.step == trainer.steps_per_epoch:
            with torch.no_grad():
                next(trainer.network.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(train_module._Trainer, "train_step", step_then_break_weights)
    config = make_config(tmp_path, data_dir, epochs=1)
    with pytest.raises(
        TrainingDivergedError, match=r"1 of \d+ weight tensors contain NaN or infinite"
    ):
        train_evaluator(config)
    assert not config.out.exists()


# Resume


def stop_after_steps(monkeypatch: pytest.MonkeyPatch, steps: int, signum: int) -> None:
    """Make the next run send itself ``signum`` after its ``steps``-th training step."""
    original_step = train_module._Trainer.train_step
    calls = {"count": 0}

    def step_then_signal(trainer):
        loss = original_step(trainer)
        calls["count"] += 1
        if calls["count"] == steps:
            os.kill(os.getpid(), signum)
        return loss

    monkeypatch.setattr(train_module._Trainer, "train_step", step_then_signal)


@pytest.mark.parametrize(
    ("model", "steps_before_signal", "signum"),
    [
        (TIMM_MODEL, 4, signal.SIGINT),
        (TIMM_MODEL, 6, signal.SIGTERM),
        # Its dropout layer draws from the global RNG, which each epoch must reseed and a
        # checkpoint inside an epoch must restore.
        (TORCHVISION_MODEL, 4, signal.SIGINT),
        (TORCHVISION_MODEL, 6, signal.SIGINT),
    ],
    ids=["after-epoch-1", "inside-epoch-2", "dropout-after-epoch-1", "dropout-inside-epoch-2"],
)
def test_resumed_run_matches_straight_run(
    tmp_path, data_dir, monkeypatch, model, steps_before_signal, signum
):
    # 36 training images in batches of 8 give 4 steps per epoch.
    straight = train_evaluator(make_config(tmp_path / "straight", data_dir, model=model))

    config = make_config(tmp_path / "resumed", data_dir, model=model)
    with monkeypatch.context() as patch:
        stop_after_steps(patch, steps_before_signal, signum)
        stopped = train_evaluator(config)
    assert stopped.interrupted
    assert stopped.weights_path is None
    assert stopped.epochs_completed == steps_before_signal // 4
    assert not config.out.exists()
    assert config.resume_checkpoint.is_file()
    assert signal.getsignal(signum) is not None  # the handler was restored

    resumed = train_evaluator(config, resume=True)
    assert resumed.resumed
    assert not resumed.interrupted
    assert resumed.epochs_completed == 2
    straight_state = straight.model.state_dict()
    resumed_state = resumed.model.state_dict()
    assert resumed_state.keys() == straight_state.keys()
    for key, value in straight_state.items():
        assert torch.equal(resumed_state[key], value), key
    assert resumed.history == straight.history
    assert resumed.held_out_accuracy == straight.held_out_accuracy


def test_resume_of_finished_run_rewrites_weights(tmp_path, data_dir):
    config = make_config(tmp_path, data_dir, epochs=1)
    first = train_evaluator(config)
    config.out.unlink()

    again = train_evaluator(config, resume=True)
    assert again.resumed
    assert again.epochs_completed == 1
    assert config.out.is_file()
    assert again.history == first.history


def test_resume_without_checkpoint_starts_new_run(tmp_path, data_dir):
    config = make_config(tmp_path, data_dir, epochs=1)
    result = train_evaluator(config, resume=True)
    assert not result.resumed
    assert result.epochs_completed == 1


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"lr": 0.1}, r"lr \(saved 0.05, now 0.1\)"),
        ({"model": TORCHVISION_MODEL}, r"model \(saved 'timm:test_resnet'"),
        ({"limit_images": 30}, r"training images \(saved 36 images, now \d+"),
    ],
    ids=["lr", "model", "images"],
)
def test_resume_rejects_other_settings(tmp_path, data_dir, monkeypatch, overrides, match):
    config = make_config(tmp_path, data_dir)
    with monkeypatch.context() as patch:
        stop_after_steps(patch, 1, signal.SIGINT)
        assert train_evaluator(config).interrupted

    changed = dataclasses.replace(config, **overrides)
    with pytest.raises(ValueError, match=match):
        train_evaluator(changed, resume=True)


def test_damaged_resume_checkpoint_raises(tmp_path, data_dir):
    config = make_config(tmp_path, data_dir)
    config.resume_checkpoint.parent.mkdir(parents=True)
    config.resume_checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidCheckpointError, match="resume checkpoint"):
        train_evaluator(config, resume=True)


def test_resume_checkpoint_missing_keys_raises(tmp_path, data_dir):
    config = make_config(tmp_path, data_dir)
    config.resume_checkpoint.parent.mkdir(parents=True)
    torch.save({"format_version": 1}, config.resume_checkpoint)
    with pytest.raises(
        InvalidCheckpointError, match=r"is missing the entries \['config', "
    ) as caught:
        train_evaluator(config, resume=True)
    assert str(config.resume_checkpoint) in str(caught.value)
    assert "delete it" in str(caught.value)


# Network construction


def test_pretrained_timm_offline_raises(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = make_config(tmp_path, data_dir, model="timm:mobilenetv2_050", pretrained=True)
    with pytest.raises(PretrainedWeightsUnavailableError, match="mobilenetv2_050"):
        train_evaluator(config)


def test_pretrained_torchvision_keeps_all_but_head(tmp_path, data_dir, monkeypatch):
    torch.manual_seed(123)
    pretrained = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    requested = []

    def create_pretrained(model_name, weights):
        requested.append((model_name, weights))
        return pretrained

    monkeypatch.setattr(train_module, "_create_pretrained_torchvision", create_pretrained)
    config = make_config(tmp_path, data_dir, model=TORCHVISION_MODEL, pretrained=True)
    network, _, _ = train_module._build_network(config, num_classes=3)

    default_weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    assert requested == [("mobilenet_v3_small", default_weights)]
    pretrained_state = pretrained.state_dict()
    for key, value in network.state_dict().items():
        if key.startswith("classifier.3."):  # the head, with 3 outputs instead of 1000
            assert value.shape[0] == 3, key
        else:
            assert torch.equal(value, pretrained_state[key]), key


def test_model_without_linear_head_raises(tmp_path, data_dir):
    # SqueezeNet classifies with a 1x1 convolution.
    config = make_config(tmp_path, data_dir, model="torchvision:squeezenet1_0")
    with pytest.raises(ValueError, match="'torchvision:squeezenet1_0' has no final nn.Linear"):
        train_evaluator(config)


def test_image_size_unusable_by_model_raises(tmp_path, data_dir):
    # This ViT asserts that its input is 224x224.
    config = make_config(tmp_path, data_dir, model="timm:vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="cannot classify 16x16 images"):
        train_evaluator(config)


# Invalid input


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"image_size": 0}, "image_size must be an integer >= 1, got 0"),
        ({"val_fraction": 1.5}, r"val_fraction must be in \[0, 1\), got 1.5"),
        ({"batch_size": 1}, "batch_size must be an integer >= 2, got 1"),
        ({"lr": 0.0}, "lr must be a positive number, got 0.0"),
        ({"limit_images": 0}, "limit_images must be an integer >= 1, got 0"),
        ({"model": "timm:no_such_model"}, "unknown timm model 'no_such_model'"),
        ({"model": "torchvision:no_such_model"}, "unknown torchvision .* 'no_such_model'"),
        ({"model": "keras:resnet50"}, "invalid model 'keras:resnet50'"),
        ({"model": "resnet18"}, "invalid model 'resnet18'"),
        ({"device": "no_such_device"}, "invalid device 'no_such_device'"),
    ],
)
def test_invalid_config_raises(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_config(tmp_path, tmp_path / "train", **overrides)


def test_missing_folder_raises(tmp_path):
    config = make_config(tmp_path, tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="data_dir '.*absent' not found"):
        train_evaluator(config)


def test_folder_without_class_subfolders_raises(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "image.png")
    with pytest.raises(ValueError, match="'.*flat' has no class subfolders"):
        train_evaluator(make_config(tmp_path, folder))


def test_single_class_raises(tmp_path):
    folder = make_image_folder(tmp_path / "one", classes=1)
    with pytest.raises(ValueError, match="only the class 'class_0'"):
        train_evaluator(make_config(tmp_path, folder))


def test_class_without_images_raises(tmp_path, data_dir):
    (data_dir / "class_3").mkdir()
    (data_dir / "class_3" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"without images .*\['class_3'\]"):
        train_evaluator(make_config(tmp_path, data_dir))


def test_folder_without_images_raises(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "empty" / name).mkdir(parents=True)
    with pytest.raises(ValueError, match="has no images"):
        train_evaluator(make_config(tmp_path, tmp_path / "empty"))


def test_val_dir_with_other_classes_raises(tmp_path, data_dir):
    val_dir = make_image_folder(tmp_path / "val", classes=2, per_class=2)
    config = make_config(tmp_path, data_dir, val_dir=val_dir)
    with pytest.raises(ValueError, match=r"other classes .*missing: \['class_2'\]"):
        train_evaluator(config)


def test_out_folder_raises(tmp_path, data_dir):
    config = make_config(tmp_path, data_dir, out=tmp_path)
    with pytest.raises(ValueError, match="out '.*' is a folder"):
        train_evaluator(config)


@pytest.mark.parametrize(
    ("option", "name", "match"),
    [
        ("out", "a_file/guide.pth", r"out '.*a_file/guide.pth' .* '.*a_file' is a file"),
        ("out", "a_file/new/guide.pth", r"out .* because '.*a_file' is a file, not a folder"),
        ("resume_path", "a_file/guide.pth.resume.pt", "resume_path .* '.*a_file' is a file"),
    ],
)
def test_output_under_file_raises_before_loading(
    tmp_path, data_dir, monkeypatch, option, name, match
):
    (tmp_path / "a_file").write_text("a regular file")
    config = make_config(tmp_path, data_dir, **{option: tmp_path / name})
    forbid_data_loading(monkeypatch)
    with pytest.raises(ValueError, match=match):
        train_evaluator(config)


@pytest.mark.parametrize("option", ["out", "resume_path"])
def test_output_in_read_only_folder_raises(tmp_path, data_dir, monkeypatch, option):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    # For root, os.access reports every folder as writable, so it is patched for this one.
    real_access = os.access

    def access(path, mode, **kwargs):
        if Path(path) == read_only and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    config = make_config(tmp_path, data_dir, **{option: read_only / "sub" / "file.pth"})
    forbid_data_loading(monkeypatch)
    try:
        with pytest.raises(ValueError, match=f"{option} .* '.*read_only' is not writable"):
            train_evaluator(config)
    finally:
        read_only.chmod(0o755)


@pytest.mark.parametrize("option", ["out", "resume_path"])
def test_empty_output_name_raises(tmp_path, data_dir, option):
    with pytest.raises(ValueError, match=f"^{option} '.' has no file name"):
        make_config(tmp_path, data_dir, **{option: ""})


def test_resume_path_equal_to_out_raises(tmp_path, data_dir):
    out = tmp_path / "guide.pth"
    with pytest.raises(ValueError, match="resume_path .* is the out path"):
        make_config(tmp_path, data_dir, out=out, resume_path=out)


def test_decoded_images_larger_than_memory_raise(tmp_path, data_dir, monkeypatch):
    real_sysconf = os.sysconf

    def sysconf(name):
        # A machine of 4 pages of 4096 bytes, less than 48 images of 3x16x16 bytes.
        return {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 4}.get(name) or real_sysconf(name)

    def decode_images(*args):
        raise AssertionError("the images were decoded before the check")

    monkeypatch.setattr(os, "sysconf", sysconf)
    monkeypatch.setattr(train_module, "_decode_images", decode_images)
    with pytest.raises(ValueError, match=r"48 images of 16x16 pixels need about") as caught:
        train_evaluator(make_config(tmp_path, data_dir))
    assert "more than the 0.0 GiB of this machine" in str(caught.value)
    assert "smaller image_size or limit_images" in str(caught.value)


def test_damaged_image_raises_with_path(tmp_path, data_dir):
    damaged = data_dir / "class_1" / "broken.png"
    damaged.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode image .*broken.png"):
        train_evaluator(make_config(tmp_path, data_dir, val_fraction=0.0))


def test_decompression_bomb_raises_with_path(tmp_path, data_dir, monkeypatch):
    # PIL raises DecompressionBombError above twice MAX_IMAGE_PIXELS, here 16x16 > 2 * 100.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"cannot decode image .*000.png' \(Image size"):
        train_evaluator(make_config(tmp_path, data_dir, val_fraction=0.0))


@pytest.mark.parametrize(
    ("mode", "suffix"), [("I;16", ".png"), ("I", ".tif")], ids=["16-bit-png", "int32-tiff"]
)
def test_high_bit_depth_images_scaled_to_8_bits(tmp_path, mode, suffix):
    folder = make_gray_folder(tmp_path / "gray", {"dark": 4000, "bright": 60000}, mode, suffix)
    listing = train_module._list_image_folder(folder, "data_dir")
    images = train_module._decode_images(listing, 4, "training", progress=False)

    assert listing.classes == ["bright", "dark"]
    assert images.dtype == torch.uint8
    assert images.shape == (4, 3, 4, 4)
    assert torch.all(images[:2] == 233)  # round(60000 / 257)
    assert torch.all(images[2:] == 16)  # round(4000 / 257)


@pytest.mark.parametrize(
    ("mode", "value", "match"),
    [
        ("F", 0.5, "floating-point pixels"),
        ("I", 100000, "from 100000 to 100000, outside the 16-bit range"),
        ("I", -1, "from -1 to -1, outside the 16-bit range"),
    ],
    ids=["float", "above-16-bit", "negative"],
)
def test_unknown_pixel_range_raises(tmp_path, mode, value, match):
    folder = make_gray_folder(tmp_path / "gray", {"a": value, "b": value}, mode, ".tif")
    config = make_config(tmp_path, folder, val_fraction=0.0)
    with pytest.raises(UnsupportedPixelRangeError, match=match) as caught:
        train_evaluator(config)
    assert "a/0.tif" in str(caught.value)
    assert "convert the images to 8-bit or 16-bit" in str(caught.value)


# Command line


def cli_arguments(tmp_path: Path, data_dir: Path) -> list[str]:
    return [
        "--model", TIMM_MODEL,
        "--data-dir", str(data_dir),
        "--out", str(tmp_path / "cli" / "guide.pth"),
        "--image-size", "16",
        "--epochs", "2",
        "--batch-size", "8",
        "--lr", "0.05",
        "--val-fraction", "0.25",
        "--device", "cpu",
        "--num-threads", "1",
        "--no-progress",
    ]  # fmt: skip


def test_cli_writes_weights(tmp_path, data_dir, capsys):
    assert main(cli_arguments(tmp_path, data_dir)) == 0

    weights = tmp_path / "cli" / "guide.pth"
    assert weights.is_file()
    output = capsys.readouterr().out
    assert "Held-out accuracy: " in output
    assert f"Wrote {weights}" in output
    assert f"--evaluator-weights {weights} --evaluator-image-size 16" in output
    assert f"TimmEvaluator('test_resnet', checkpoint_path='{weights}')" in output


def test_cli_missing_folder_returns_2(tmp_path, capsys):
    assert main(cli_arguments(tmp_path, tmp_path / "absent")) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: data_dir ")
    assert "absent' not found" in error


def test_cli_invalid_value_returns_2(tmp_path, data_dir, capsys):
    assert main([*cli_arguments(tmp_path, data_dir), "--epochs", "0"]) == 2
    assert "epochs must be an integer >= 1, got 0" in capsys.readouterr().err


def test_cli_diverged_training_returns_2(tmp_path, data_dir, capsys):
    assert main([*cli_arguments(tmp_path, data_dir), "--lr", "1e30"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: training diverged in epoch 1 of 2")
    assert "Traceback" not in error
    assert not (tmp_path / "cli" / "guide.pth").exists()


@pytest.mark.parametrize("flag", ["--out", "--resume-path"])
def test_cli_output_under_file_returns_2(tmp_path, data_dir, capsys, flag):
    (tmp_path / "a_file").write_text("a regular file")
    arguments = [*cli_arguments(tmp_path, data_dir), flag, str(tmp_path / "a_file" / "x.pth")]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert "a_file' is a file, not a folder" in error
    assert not (tmp_path / "cli" / "guide.pth").exists()


def test_cli_failed_weights_write_returns_2(tmp_path, data_dir, monkeypatch, capsys):
    real_save = torch.save

    def save(contents, file, *args, **kwargs):
        if "state_dict" in contents:  # the weights file, not the resume checkpoint
            raise OSError(28, "No space left on device")
        real_save(contents, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(cli_arguments(tmp_path, data_dir)) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot write out '")
    assert "No space left on device" in error
    assert list((tmp_path / "cli").iterdir()) == [tmp_path / "cli" / "guide.pth.resume.pt"]


def test_cli_interrupt_returns_130_then_resumes(tmp_path, data_dir, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        stop_after_steps(patch, 2, signal.SIGINT)
        assert main(cli_arguments(tmp_path, data_dir)) == 130
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "cli" / "guide.pth.resume.pt").is_file()

    assert main([*cli_arguments(tmp_path, data_dir), "--resume"]) == 0
    assert (tmp_path / "cli" / "guide.pth").is_file()

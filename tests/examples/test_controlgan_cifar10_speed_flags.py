"""The speed and moving-average flags of examples/controlgan_cifar10.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from baselines.controlgan import load_checkpoint
from baselines.controlgan.run import find_checkpoints

from .cli_helpers import load_example, write_image_folder

cli = load_example("controlgan_cifar10")

SMOKE = ["--preset", "smoke", "--no-pretrained-evaluator", "--no-progress", "--batch-size", "8"]


def parse(*flags: str):
    return cli.build_run_config(cli.build_parser().parse_args([*SMOKE, *flags]))


def test_speed_flag_defaults():
    train = parse().train
    assert (train.amp, train.channels_last, train.compile, train.ema_decay) == (
        "auto",
        None,
        False,
        None,
    )


def test_speed_flags_reach_train_config():
    train = parse("--amp", "fp16", "--compile", "--no-channels-last", "--ema-decay", "0.999").train
    assert (train.amp, train.channels_last, train.compile, train.ema_decay) == (
        "fp16",
        False,
        True,
        0.999,
    )


def test_invalid_ema_decay_is_rejected(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main([*SMOKE, "--ema-decay", "1.5"])
    assert raised.value.code == 2
    assert "ema_decay must lie in (0, 1)" in capsys.readouterr().err


def test_smoke_run_with_ema_and_bf16_resumes_in_float32(tmp_path: Path):
    images = write_image_folder(tmp_path / "images", classes=3, per_class=8)
    out = tmp_path / "run"
    common = [*SMOKE, "--dataset", "imagefolder", "--data-dir", str(images), "--out", str(out)]
    common += ["--ema-decay", "0.9", "--checkpoint-every", "2", "--sample-every", "2"]

    assert cli.main([*common, "--iterations", "2", "--amp", "bf16", "--channels-last"]) == 0
    # The precision and memory format may change when a run resumes.
    assert cli.main([*common, "--iterations", "4", "--amp", "off", "--resume"]) == 0

    assert (out / "samples" / "samples_ema_0000004.png").stat().st_size > 0
    state = load_checkpoint(find_checkpoints(out)[-1])
    assert state["iteration"] == 4
    assert state["generator_ema"]["decay"] == 0.9
    assert state["train_config"]["amp"] == "off"

"""End-to-end runs of examples/controlgan_cifar10.py on tiny data, in process and as a CLI."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from baselines.controlgan import load_checkpoint, load_generator
from baselines.controlgan.run import find_checkpoints

from .cli_helpers import CIFAR10_JPEG, EXAMPLES, load_example, write_image_folder

cli = load_example("controlgan_cifar10")

# Smoke settings: tiny networks, an evaluator at 32 pixels, no progress bar.
SMOKE = ["--preset", "smoke", "--no-pretrained-evaluator", "--no-progress", "--batch-size", "8"]


def _run(image_folder: Path, out: Path, *extra: str) -> int:
    argv = [*SMOKE, "--dataset", "imagefolder", "--data-dir", str(image_folder), "--out", str(out)]
    return cli.main([*argv, *extra])


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    tensors = {}
    for network in ("generator", "discriminator", "classifier"):
        for name, tensor in state[network]["state_dict"].items():
            tensors[f"{network}.{name}"] = tensor
    return tensors


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images", classes=3, per_class=16)


def test_smoke_run_writes_all_outputs(image_folder, tmp_path):
    out = tmp_path / "run"
    assert _run(image_folder, out) == 0

    assert [path.name for path in find_checkpoints(out)] == [
        "checkpoint_0000010.pt",
        "checkpoint_0000020.pt",
    ]
    rows = _read_csv(out / "metrics.csv")
    assert [int(float(row["iteration"])) for row in rows] == list(range(1, 21))
    for column in ("loss_d", "loss_g", "loss_c", "gamma", "guidance_fake_score"):
        assert column in rows[0], column
    assert (out / "samples" / "samples_0000020.png").stat().st_size > 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert load_checkpoint(find_checkpoints(out)[-1])["iteration"] == 20


def test_sample_grid_has_one_column_per_class(image_folder, tmp_path):
    from PIL import Image

    out = tmp_path / "run"
    assert _run(image_folder, out, "--iterations", "2", "--sample-every", "2") == 0
    width, height = Image.open(out / "samples" / "samples_0000002.png").size
    # 3 classes in columns, 10 rows, 32-pixel images with 1-pixel padding.
    assert (width, height) == (3 * 33 + 1, 10 * 33 + 1)


def test_weights_file_size_beats_the_preset_size(tmp_path):
    parser = cli.build_parser()
    base = ["--preset", "quick", "--out", str(tmp_path / "run")]

    preset_config = cli.build_run_config(parser.parse_args(base))
    file_config = cli.build_run_config(
        parser.parse_args([*base, "--evaluator-weights", str(tmp_path / "guide.pth")])
    )
    flag_config = cli.build_run_config(
        parser.parse_args(
            [*base, "--evaluator-weights", "guide.pth", "--evaluator-image-size", "64"]
        )
    )

    assert preset_config.evaluator_image_size == 96
    assert file_config.evaluator_image_size is None
    assert flag_config.evaluator_image_size == 64


def test_resume_matches_uninterrupted_run(image_folder, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _run(image_folder, straight, "--iterations", "8", "--checkpoint-every", "4") == 0
    assert _run(image_folder, resumed, "--iterations", "4", "--checkpoint-every", "4") == 0
    assert (
        _run(image_folder, resumed, "--iterations", "8", "--checkpoint-every", "4", "--resume") == 0
    )

    expected = _weights(straight / "checkpoints" / "checkpoint_0000008.pt")
    actual = _weights(resumed / "checkpoints" / "checkpoint_0000008.pt")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    straight_state = load_checkpoint(straight / "checkpoints" / "checkpoint_0000008.pt")
    resumed_state = load_checkpoint(resumed / "checkpoints" / "checkpoint_0000008.pt")
    assert straight_state["gamma"] == resumed_state["gamma"]
    assert straight_state["last_metrics"] == resumed_state["last_metrics"]
    rows = _read_csv(resumed / "metrics.csv")
    assert [int(float(row["iteration"])) for row in rows] == list(range(1, 9))


def test_resume_removes_the_file_of_an_interrupted_save(image_folder, tmp_path):
    out = tmp_path / "run"
    assert _run(image_folder, out, "--iterations", "4", "--checkpoint-every", "4") == 0
    orphan = out / "checkpoints" / "checkpoint_0000006.pt.partial"
    orphan.write_bytes(b"half a checkpoint")

    assert _run(image_folder, out, "--iterations", "8", "--checkpoint-every", "4", "--resume") == 0

    assert not orphan.exists()
    assert [path.name for path in find_checkpoints(out)] == [
        "checkpoint_0000004.pt",
        "checkpoint_0000008.pt",
    ]


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_corrupted_checkpoint_falls_back(image_folder, tmp_path, caplog, damage):
    out = tmp_path / "run"
    assert _run(image_folder, out, "--iterations", "4", "--checkpoint-every", "2") == 0
    newest = out / "checkpoints" / "checkpoint_0000004.pt"
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[:1000])
    else:
        newest.write_text("junk\n")

    assert _run(image_folder, out, "--iterations", "6", "--checkpoint-every", "2", "--resume") == 0

    assert "checkpoint_0000004.pt is unreadable" in caplog.text
    assert "falling back to checkpoint_0000002.pt" in caplog.text
    assert load_checkpoint(out / "checkpoints" / "checkpoint_0000006.pt")["iteration"] == 6


def test_resume_with_other_settings_names_them(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(image_folder, out, "--iterations", "2", "--checkpoint-every", "2") == 0
    assert _run(image_folder, out, "--iterations", "4", "--resume", "--lr-g", "0.001") == 2
    message = capsys.readouterr().err
    assert "train.lr_g: checkpoint 0.0002, now 0.001" in message


def test_out_folder_with_checkpoints_needs_resume(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(image_folder, out, "--iterations", "2", "--checkpoint-every", "2") == 0
    assert _run(image_folder, out, "--iterations", "2") == 2
    assert "pass --resume" in capsys.readouterr().err


def test_resume_without_checkpoint_fails(image_folder, tmp_path, capsys):
    assert _run(image_folder, tmp_path / "empty", "--resume") == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_non_finite_loss_keeps_last_checkpoint(image_folder, tmp_path, capsys, monkeypatch):
    from baselines.controlgan import ControlGANTrainer, NonFiniteLossError

    original_step = ControlGANTrainer.train_step

    def diverging_step(self, data):
        metrics = original_step(self, data)
        if self.iteration == 5:
            raise NonFiniteLossError("loss_d", float("nan"), self.iteration)
        return metrics

    monkeypatch.setattr(ControlGANTrainer, "train_step", diverging_step)
    out = tmp_path / "run"

    code = _run(image_folder, out, "--iterations", "20", "--checkpoint-every", "2")

    assert code == 1
    assert "loss_d is nan at generator iteration 5" in capsys.readouterr().err
    assert [path.name for path in find_checkpoints(out)] == [
        "checkpoint_0000002.pt",
        "checkpoint_0000004.pt",
    ]


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ("missing", "not found"),
        ("empty", "no images found"),
        ("large-images", "pass --image-size 32"),
    ],
)
def test_bad_data_folders_fail_clearly(tmp_path, capsys, setup, match):
    folder = tmp_path / "data"
    if setup == "empty":
        folder.mkdir()
        (folder / "cats").mkdir()
    elif setup == "large-images":
        write_image_folder(folder, classes=2, per_class=2, size=48)
    assert _run(folder, tmp_path / "run", "--num-classes", "2") == 2
    assert match in capsys.readouterr().err


def test_unreadable_image_names_file(image_folder, tmp_path, capsys):
    (image_folder / "class_0" / "broken.jpg").write_text("not an image")
    assert _run(image_folder, tmp_path / "run", "--iterations", "2") == 2
    message = capsys.readouterr().err
    assert "cannot decode an image" in message
    assert "broken.jpg" in message


def test_image_size_flag_resizes(tmp_path):
    folder = write_image_folder(tmp_path / "data", classes=2, per_class=8, size=48)
    out = tmp_path / "run"
    assert _run(folder, out, "--iterations", "2", "--image-size", "32", "--sample-every", "0") == 0
    assert load_generator(find_checkpoints(out)[-1]).image_size == 32


def test_class_count_mismatch_fails(image_folder, tmp_path, capsys):
    assert _run(image_folder, tmp_path / "run", "--num-classes", "10") == 2
    assert "has 3 classes but the networks are built for 10" in capsys.readouterr().err


def test_offline_default_command_stops_with_flags(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(EXAMPLES.parent)}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "controlgan_cifar10.py"),
            "--out",
            str(tmp_path / "r"),
            "--data-dir",
            str(tmp_path / "data"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--evaluator-weights" in result.stderr
    assert "--dataset imagefolder --data-dir" in result.stderr
    assert time.monotonic() - started < 60


@pytest.mark.skipif(not CIFAR10_JPEG.is_dir(), reason=f"no CIFAR-10 JPEG copy at {CIFAR10_JPEG}")
def test_smoke_run_on_cifar10_jpeg(tmp_path):
    out = tmp_path / "run"
    data = CIFAR10_JPEG / "train"
    assert cli.main([*SMOKE, "--dataset", "imagefolder", "--data-dir", str(data),
                     "--limit-images", "512", "--out", str(out)]) == 0  # fmt: skip
    assert (out / "checkpoints" / "checkpoint_0000020.pt").is_file()
    assert (out / "samples" / "samples_0000020.png").is_file()
    assert len(_read_csv(out / "metrics.csv")) == 20
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_sigterm_saves_checkpoint_then_resumes(image_folder, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(EXAMPLES.parent)}
    command = [sys.executable, str(EXAMPLES / "controlgan_cifar10.py"), *SMOKE,
               "--dataset", "imagefolder", "--data-dir", str(image_folder), "--out", str(out),
               "--iterations", "100000", "--checkpoint-every", "100000",
               "--sample-every", "0"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.is_file() or len(_read_csv(metrics)) < 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 130, stderr
    checkpoints = find_checkpoints(out)
    assert len(checkpoints) == 1
    stopped_at = load_checkpoint(checkpoints[0])["iteration"]
    assert stopped_at >= 3
    assert _run(image_folder, out, "--iterations", str(stopped_at + 2), "--resume") == 0
    assert load_checkpoint(find_checkpoints(out)[-1])["iteration"] == stopped_at + 2


class _PooledColourJudge:
    """A cheap stand-in for the Inception network: 48 pooled pixel features, 10 classes."""

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1).double()
        return features, torch.softmax(features[:, :10] * 20, dim=1)


def test_evaluation_runs_with_judge_and_writes_curves(image_folder, tmp_path, monkeypatch):
    from score_guidance import metrics

    judge = _PooledColourJudge()
    stats = tmp_path / "stats.npz"
    metrics.compute_reference_statistics(image_folder, stats, feature_extractor=judge)
    monkeypatch.setattr(metrics, "load_inception", lambda weights, device: judge)
    out = tmp_path / "run"

    code = _run(image_folder, out, "--iterations", "4", "--eval-every", "2",
                "--eval-samples", "40", "--fid-stats", str(stats))  # fmt: skip

    assert code == 0
    rows = _read_csv(out / "evaluation.csv")
    assert [int(row["iteration"]) for row in rows] == [2, 4]
    for row in rows:
        assert 1.0 <= float(row["inception_score"]) <= 4.0 + 1e-6  # 4 images per split
        assert float(row["fid"]) > 0
    assert (out / "curves.png").stat().st_size > 0


def test_judge_flags_evaluate_with_a_trained_judge_file(image_folder, tmp_path):
    import timm

    from score_guidance import metrics

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=3)
    judge_weights = tmp_path / "judge.pth"
    data_config = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "input_size": (3, 32, 32)}
    data_config["num_classes"] = 3
    torch.save({"state_dict": model.state_dict(), "data_config": data_config}, judge_weights)
    judge = metrics.load_judge("timm:mobilenetv2_050", judge_weights)
    stats = tmp_path / "judge_stats.npz"
    metrics.compute_reference_statistics(image_folder, stats, feature_extractor=judge)
    out = tmp_path / "run"

    judge_flags = ["--judge", "timm:mobilenetv2_050", "--judge-weights", str(judge_weights)]
    code = _run(image_folder, out, "--iterations", "2", "--eval-every", "2",
                "--eval-samples", "20", "--fid-stats", str(stats), *judge_flags)  # fmt: skip

    assert code == 0
    rows = _read_csv(out / "evaluation.csv")
    assert [int(row["iteration"]) for row in rows] == [2]
    assert 1.0 <= float(rows[0]["inception_score"]) <= 2.0 + 1e-6  # 2 images per split
    assert float(rows[0]["fid"]) > 0


def test_judge_weights_without_judge_fails(image_folder, tmp_path, capsys):
    weights = tmp_path / "judge.pth"
    weights.write_bytes(b"")

    with pytest.raises(SystemExit) as exit_info:
        _run(image_folder, tmp_path / "run", "--judge-weights", str(weights))
    assert exit_info.value.code == 2
    assert "needs judge" in capsys.readouterr().err


@pytest.mark.slow
def test_periodic_evaluation_writes_scores_and_curves(image_folder, tmp_path):
    from score_guidance.metrics import compute_reference_statistics
    from score_guidance.metrics._inception import save_random_inception_weights

    weights = save_random_inception_weights(tmp_path / "inception.pth")
    stats = tmp_path / "stats.npz"
    with pytest.warns(UserWarning, match="unreliable"):
        compute_reference_statistics(image_folder, stats, "cpu", inception_weights=weights)
    out = tmp_path / "run"

    code = _run(image_folder, out, "--iterations", "4", "--eval-every", "2",
                "--eval-samples", "20", "--fid-stats", str(stats),
                "--inception-weights", str(weights))  # fmt: skip

    assert code == 0
    rows = _read_csv(out / "evaluation.csv")
    assert [int(row["iteration"]) for row in rows] == [2, 4]
    for row in rows:
        assert 1.0 <= float(row["inception_score"]) <= 2.0 + 1e-6  # 2 images per split
        assert float(row["fid"]) > 0
    assert (out / "curves.png").stat().st_size > 0


def test_evaluation_without_inception_weights_warns_once(image_folder, tmp_path, caplog):
    stats = tmp_path / "stats.npz"
    import numpy as np

    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    out = tmp_path / "run"
    code = _run(image_folder, out, "--iterations", "4", "--eval-every", "1",
                "--eval-samples", "20", "--fid-stats", str(stats))  # fmt: skip
    assert code == 0
    assert caplog.text.count("Skipping evaluation for this run") == 1
    assert "pt_inception-2015-12-05" in caplog.text
    assert not (out / "curves.png").exists()


def test_missing_fid_stats_file_fails_at_start(image_folder, tmp_path, capsys):
    assert _run(image_folder, tmp_path / "run", "--fid-stats", str(tmp_path / "none.npz")) == 2
    assert "--fid-stats" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--checkpoint-every", "0"), ("--keep-checkpoints", "0"), ("--eval-every", "-1")],
)
def test_invalid_periods_are_rejected(image_folder, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        _run(image_folder, tmp_path / "run", flag, value)
    assert exit_info.value.code == 2
    assert flag.removeprefix("--").replace("-", "_") in capsys.readouterr().err


def test_resume_past_iterations_fails(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(image_folder, out, "--iterations", "4", "--checkpoint-every", "2") == 0
    assert _run(image_folder, out, "--iterations", "2", "--resume") == 2
    assert "past --iterations 2" in capsys.readouterr().err


def test_out_below_a_file_fails_clearly(image_folder, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert _run(image_folder, blocker / "run") == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def test_local_data_error_has_no_network_hint(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "data", classes=1, per_class=2)
    assert _run(folder, tmp_path / "run", "--num-classes", "2") == 2
    message = capsys.readouterr().err
    assert "at least 2 class" in message
    assert "without network" not in message

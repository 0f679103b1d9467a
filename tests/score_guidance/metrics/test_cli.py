"""The command line: python -m score_guidance.metrics stats|eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from metrics_helpers import REPO_ROOT, ToyFeatureExtractor, smooth_images

from score_guidance.metrics import GeneratedImages
from score_guidance.metrics import __main__ as cli

FACTORY_MODULE = """
import torch
from torch import nn


class TinyGenerator(nn.Module):
    z_dim = 6
    num_classes = 4

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3 * 4 * 4)
        self.embedding = nn.Embedding(4, 3 * 4 * 4)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        coarse = torch.tanh(self.linear(z) + self.embedding(labels)).view(-1, 3, 4, 4)
        return nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear")


def load(checkpoint_path: str, device: torch.device) -> TinyGenerator:
    generator = TinyGenerator()
    generator.load_state_dict(torch.load(checkpoint_path, weights_only=True)["generator"])
    return generator.to(device)
"""


def _write_png_folder(folder: Path, num_images: int) -> None:
    (folder / "nested").mkdir(parents=True)
    for index, image in enumerate(smooth_images(num_images, seed=7)):
        target = folder if index % 2 else folder / "nested"
        torchvision.utils.save_image(image, target / f"{index:03d}.png")


def _run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), environment.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    environment["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "score_guidance.metrics", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=600,
        check=False,
    )


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Import name of a module with a generator factory load(checkpoint_path, device)."""
    (tmp_path / "tiny_generator_factory.py").write_text(textwrap.dedent(FACTORY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "tiny_generator_factory"


@pytest.fixture
def generator_checkpoint(tmp_path: Path, factory_module: str) -> Path:
    module = __import__(factory_module)
    path = tmp_path / "checkpoint.pt"
    torch.save({"generator": module.TinyGenerator().state_dict(), "step": 10}, path)
    return path


def _check_end_to_end_outputs(tmp_path: Path, stats_output: str, eval_output: str) -> None:
    stats_result = json.loads((tmp_path / "stats.json").read_text())
    eval_result = json.loads((tmp_path / "eval.json").read_text())
    assert f"Saved reference statistics of 10 images ({stats_result['feature_dim']} features)" in (
        stats_output
    )
    assert eval_output.startswith("IS ")
    assert len(eval_output.strip().splitlines()) == 1
    assert f"FID {eval_result['fid']:.4f}" in eval_output
    assert stats_result["num_images"] == 10
    assert eval_result["num_images"] == 10
    assert eval_result["splits"] == 2
    assert abs(eval_result["fid"]) < 1e-3
    assert eval_result["inception_score"] >= 1.0
    with np.load(tmp_path / "reference.npz") as archive:
        assert sorted(archive.files) == ["mu", "sigma"]


def test_stats_and_eval_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    # The stand-in network keeps this test fast; the slow test below runs the real network.
    monkeypatch.setattr(cli, "load_inception", lambda *args, **kwargs: ToyFeatureExtractor())
    _write_png_folder(tmp_path / "images", 10)
    reference = tmp_path / "reference.npz"

    stats_status = cli.main(
        [
            "stats",
            str(tmp_path / "images"),
            "--output",
            str(reference),
            "--batch-size",
            "4",
            "--json",
            str(tmp_path / "stats.json"),
        ]
    )
    stats_output = capsys.readouterr()
    eval_status = cli.main(
        [
            "eval",
            str(tmp_path / "images"),
            "--reference",
            str(reference),
            "--splits",
            "2",
            "--batch-size",
            "3",
            "--json",
            str(tmp_path / "eval.json"),
        ]
    )
    eval_output = capsys.readouterr()

    assert stats_status == 0
    assert eval_status == 0
    assert "IS and FID" in eval_output.err  # the tqdm progress bar
    _check_end_to_end_outputs(tmp_path, stats_output.out, eval_output.out)


@pytest.mark.slow
def test_stats_and_eval_subprocess(tmp_path: Path, random_inception_weights: Path):
    _write_png_folder(tmp_path / "images", 10)
    reference = tmp_path / "reference.npz"
    common = ["--inception-weights", str(random_inception_weights), "--batch-size", "4"]

    stats = _run_cli(
        "stats",
        str(tmp_path / "images"),
        "--output",
        str(reference),
        *common,
        "--json",
        str(tmp_path / "stats.json"),
    )
    evaluation = _run_cli(
        "eval",
        str(tmp_path / "images"),
        "--reference",
        str(reference),
        "--splits",
        "2",
        *common,
        "--json",
        str(tmp_path / "eval.json"),
    )

    assert stats.returncode == 0, stats.stderr
    assert evaluation.returncode == 0, evaluation.stderr
    assert "IS and FID" in evaluation.stderr  # the tqdm progress bar
    _check_end_to_end_outputs(tmp_path, stats.stdout, evaluation.stdout)
    assert json.loads((tmp_path / "stats.json").read_text())["feature_dim"] == 2048


def test_source_tensor_file(tmp_path: Path):
    path = tmp_path / "images.pt"
    torch.save(smooth_images(5), path)
    args = cli.build_parser().parse_args(["eval", str(path), "--reference", "ref.npz"])

    source = cli.resolve_source(args, torch.device("cpu"))

    assert torch.equal(source, smooth_images(5))


def test_source_npz_file(tmp_path: Path):
    path = tmp_path / "images.npz"
    np.savez(path, images=smooth_images(5).numpy(), labels=np.zeros(5))
    args = cli.build_parser().parse_args(["stats", str(path), "--output", "out.npz"])

    source = cli.resolve_source(args, torch.device("cpu"))

    assert torch.equal(source, smooth_images(5))


def test_source_npz_ambiguous_raises(tmp_path: Path):
    path = tmp_path / "arrays.npz"
    np.savez(path, first=np.zeros(2), second=np.zeros(2))
    args = cli.build_parser().parse_args(["stats", str(path), "--output", "out.npz"])

    with pytest.raises(cli.CommandError, match="an array named images"):
        cli.resolve_source(args, torch.device("cpu"))


def test_source_invalid_npz_raises(tmp_path: Path):
    path = tmp_path / "images.npz"
    path.write_text("not an archive")
    args = cli.build_parser().parse_args(["stats", str(path), "--output", "out.npz"])

    with pytest.raises(cli.CommandError, match="cannot read .* as an .npz archive"):
        cli.resolve_source(args, torch.device("cpu"))


def test_generator_factory_source(generator_checkpoint: Path, factory_module: str):
    args = cli.build_parser().parse_args(
        [
            "eval",
            str(generator_checkpoint),
            "--reference",
            "ref.npz",
            "--generator",
            f"{factory_module}:load",
            "--num-images",
            "30",
            "--batch-size",
            "8",
        ]
    )

    source = cli.resolve_source(args, torch.device("cpu"))
    batches = list(source)

    assert isinstance(source, GeneratedImages)
    assert source.z_dim == 6
    assert source.num_classes == 4
    assert source.num_images == 30
    assert sum(batch.shape[0] for batch in batches) == 30
    assert all(batch.min() >= 0 and batch.max() <= 1 for batch in batches)


def test_generator_flags_override_attributes(generator_checkpoint: Path, factory_module: str):
    args = cli.build_parser().parse_args(
        [
            "eval",
            str(generator_checkpoint),
            "--reference",
            "ref.npz",
            "--generator",
            f"{factory_module}:load",
            "--num-classes",
            "2",
            "--z-dim",
            "6",
        ]
    )

    source = cli.resolve_source(args, torch.device("cpu"))

    assert source.num_classes == 2
    assert source.num_images == cli.DEFAULT_GENERATED_IMAGES


def test_checkpoint_without_loader_raises(
    generator_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(cli, "CONTROLGAN_LOADER", "module_absent_for_test:load_generator")
    args = cli.build_parser().parse_args(
        ["eval", str(generator_checkpoint), "--reference", "r.npz"]
    )

    with pytest.raises(cli.CommandError, match="pass --generator MODULE:FACTORY"):
        cli.resolve_source(args, torch.device("cpu"))


def test_checkpoint_uses_controlgan_hook(
    generator_checkpoint: Path, factory_module: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(cli, "CONTROLGAN_LOADER", f"{factory_module}:load")
    args = cli.build_parser().parse_args(
        ["eval", str(generator_checkpoint), "--reference", "r.npz"]
    )

    source = cli.resolve_source(args, torch.device("cpu"))

    assert isinstance(source, GeneratedImages)


def test_controlgan_checkpoint_source(tmp_path: Path):
    controlgan = pytest.importorskip("baselines.controlgan")
    from baselines.controlgan.checkpoint import CHECKPOINT_FORMAT_VERSION

    generator = controlgan.Generator(channels=16)
    path = controlgan.save_checkpoint(
        {"format_version": CHECKPOINT_FORMAT_VERSION, "generator": generator.checkpoint_entry()},
        tmp_path / "controlgan.pt",
    )
    args = cli.build_parser().parse_args(
        ["eval", str(path), "--reference", "r.npz", "--num-images", "6", "--batch-size", "4"]
    )

    source = cli.resolve_source(args, torch.device("cpu"))
    images = torch.cat(list(source))

    assert isinstance(source, GeneratedImages)
    assert source.num_classes == generator.num_classes
    assert source.z_dim == generator.z_dim
    assert images.shape == (6, 3, 32, 32)
    assert images.min() >= 0.0
    assert images.max() <= 1.0


def test_invalid_generator_spec_raises(generator_checkpoint: Path):
    args = cli.build_parser().parse_args(
        ["eval", str(generator_checkpoint), "--reference", "r.npz", "--generator", "no_colon"]
    )

    with pytest.raises(cli.CommandError, match="MODULE:FACTORY"):
        cli.resolve_source(args, torch.device("cpu"))


def test_missing_reference_exits_one(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    _write_png_folder(tmp_path / "images", 4)

    status = cli.main(
        ["eval", str(tmp_path / "images"), "--reference", str(tmp_path / "absent.npz")]
    )

    assert status == 1
    assert "reference statistics file not found" in caplog.text


def test_fewer_images_than_splits_exits_one(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    _write_png_folder(tmp_path / "images", 4)
    reference = tmp_path / "reference.npz"
    np.savez(reference, mu=np.zeros(2048), sigma=np.eye(2048))

    status = cli.main(["eval", str(tmp_path / "images"), "--reference", str(reference)])

    assert status == 1
    assert "--splits 10 needs at least 10 images, got 4" in caplog.text


def test_torchvision_dataset_needs_root(caplog: pytest.LogCaptureFixture):
    status = cli.main(["stats", "torchvision:CIFAR10", "--output", "out.npz"])

    assert status == 1
    assert "needs --dataset-root" in caplog.text


def test_missing_source_exits_one(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    status = cli.main(["stats", str(tmp_path / "absent"), "--output", str(tmp_path / "o.npz")])

    assert status == 1
    assert "source not found" in caplog.text


@pytest.mark.slow
def test_eval_generator_end_to_end(
    tmp_path: Path,
    random_inception_weights: Path,
    generator_checkpoint: Path,
    factory_module: str,
):
    reference = tmp_path / "reference.npz"
    common = ["--inception-weights", str(random_inception_weights), "--no-progress"]
    assert cli.main(["stats", str(tmp_path), "--output", str(reference), *common]) == 1  # no PNGs
    _write_png_folder(tmp_path / "images", 12)
    assert cli.main(["stats", str(tmp_path / "images"), "--output", str(reference), *common]) == 0

    status = cli.main(
        [
            "eval",
            str(generator_checkpoint),
            "--reference",
            str(reference),
            "--splits",
            "2",
            "--generator",
            f"{factory_module}:load",
            "--num-images",
            "12",
            "--json",
            str(tmp_path / "eval.json"),
            *common,
        ]
    )

    result = json.loads((tmp_path / "eval.json").read_text())
    assert status == 0
    assert result["num_images"] == 12
    assert np.isfinite(result["fid"])

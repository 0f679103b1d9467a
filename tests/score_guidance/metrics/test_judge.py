"""Any Evaluator as the judge of the Inception score and the Fréchet distance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from metrics_helpers import smooth_images
from torch import nn

from score_guidance import ModuleEvaluator
from score_guidance.metrics import (
    EvaluatorFeatureExtractor,
    compute_reference_statistics,
    inception_score_and_fid,
    inception_score_from_probabilities,
    load_judge,
)
from score_guidance.metrics import __main__ as cli


def _tiny_classifier() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))


def test_features_and_probabilities_match_a_hand_computation() -> None:
    classifier = _tiny_classifier()
    judge = EvaluatorFeatureExtractor(
        ModuleEvaluator(classifier, mean=(0.2, 0.4, 0.6), std=(0.5, 0.25, 0.1), image_size=4)
    )
    images = torch.rand(6, 3, 4, 4)

    features, probabilities = judge(images)

    mean = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 0.1]).view(1, 3, 1, 1)
    first, last = classifier[1], classifier[3]
    with torch.no_grad():
        expected_features = torch.relu(first(((images - mean) / std).flatten(1)))
        expected_probabilities = torch.softmax(last(expected_features), dim=1)
    torch.testing.assert_close(features, expected_features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probabilities, expected_probabilities, atol=1e-6, rtol=1e-5)
    assert judge.num_classes == 3


def test_judge_distance_to_itself_is_zero() -> None:
    judge = EvaluatorFeatureExtractor(
        ModuleEvaluator(_tiny_classifier(), mean=(0.5,) * 3, std=(0.5,) * 3, image_size=4)
    )
    images = smooth_images(40, size=8, seed=1)
    reference = compute_reference_statistics(images, None, feature_extractor=judge)

    result = inception_score_and_fid(images, reference, splits=2, feature_extractor=judge)

    _, probabilities = judge(images)
    expected_score, expected_std = inception_score_from_probabilities(
        probabilities.numpy().astype(np.float64), 2
    )
    assert reference.mu.shape == (5,)
    assert result.inception_score == pytest.approx(expected_score, rel=1e-5)
    assert result.inception_score_std == pytest.approx(expected_std, rel=1e-4, abs=1e-7)
    assert result.fid == pytest.approx(0.0, abs=1e-6)

    shifted = inception_score_and_fid(
        images.flip(-1) * 0.5, reference, splits=2, feature_extractor=judge
    )
    assert shifted.fid > 1e-3


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=4).eval()
    path = tmp_path_factory.mktemp("judge") / "judge.pth"
    data_config = {
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "input_size": (3, 32, 32),
        "num_classes": 4,
    }
    torch.save({"state_dict": model.state_dict(), "data_config": data_config}, path)
    return path, model


def test_load_judge_local_file(
    timm_weights: tuple[Path, nn.Module],
) -> None:
    path, model = timm_weights
    judge = load_judge("timm:mobilenetv2_050", path, "cpu")
    images = torch.rand(4, 3, 32, 32)

    features, probabilities = judge(images)

    with torch.no_grad():
        expected_features = model.forward_head(
            model.forward_features((images - 0.5) / 0.25), pre_logits=True
        )
        expected = torch.softmax(model.get_classifier()(expected_features), dim=1)
    assert features.shape == (4, model.num_features)
    torch.testing.assert_close(features, expected_features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=1e-4)
    assert judge.name == "timm:mobilenetv2_050"


def test_cli_stats_and_eval_with_a_judge(
    timm_weights: tuple[Path, nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = timm_weights
    images = tmp_path / "images.pt"
    torch.save(smooth_images(24, size=32, seed=2), images)
    judge_flags = ["--judge", "timm:mobilenetv2_050", "--judge-weights", str(path)]

    status = cli.main(
        ["stats", str(images), "--output", str(tmp_path / "ref.npz"), "--no-progress"] + judge_flags
    )
    assert status == 0
    with np.load(tmp_path / "ref.npz") as reference:
        assert reference["mu"].shape == (1280,)

    status = cli.main(
        ["eval", str(images), "--reference", str(tmp_path / "ref.npz"), "--splits", "2"]
        + ["--no-progress", "--json", str(tmp_path / "eval.json")]
        + judge_flags
    )
    assert status == 0
    assert "judge timm:mobilenetv2_050" in capsys.readouterr().out
    assert '"judge": "timm:mobilenetv2_050"' in (tmp_path / "eval.json").read_text()


def test_cli_rejects_judge_weights_without_a_judge(
    timm_weights: tuple[Path, nn.Module], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = timm_weights
    images = tmp_path / "images.pt"
    torch.save(smooth_images(4, size=32), images)

    status = cli.main(
        ["stats", str(images), "--output", str(tmp_path / "ref.npz"), "--judge-weights", str(path)]
    )

    assert status == 1
    assert "--judge-weights needs --judge SPEC" in caplog.text


def test_plain_module_rejected() -> None:
    with pytest.raises(TypeError, match="ModuleEvaluator"):
        EvaluatorFeatureExtractor(_tiny_classifier())  # type: ignore[arg-type]


def test_cli_judge_without_weights_offline_fails_clearly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    images = tmp_path / "images.pt"
    torch.save(smooth_images(4, size=32), images)

    status = cli.main(
        ["stats", str(images), "--output", str(tmp_path / "ref.npz"), "--judge", "timm:resnet10t"]
    )

    assert status == 1
    assert "resnet10t" in caplog.text
    assert "checkpoint_path" in caplog.text
    assert not (tmp_path / "ref.npz").exists()

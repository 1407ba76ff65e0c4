"""FID and KID with the shipped digit classifier: offline weights, accuracy, sane numbers."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from sagan_tutorial import metrics
from sagan_tutorial.data import load_dataset
from sagan_tutorial.models import GANConfig, Generator

# weights/README.md records 0.9780 on the mnist5k test split
RECORDED_ACCURACY = 0.978


@pytest.fixture(scope="module")
def test_digits():
    return load_dataset("mnist5k", split="test")


def test_weights_are_small_and_load_offline_with_weights_only():
    assert metrics.WEIGHTS.stat().st_size < 2**20
    state = torch.load(metrics.WEIGHTS, weights_only=True)
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    extractor = metrics.digit_feature_extractor()
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())
    assert extractor(torch.zeros(2, 1, 32, 32)).shape == (2, extractor.num_features)


def test_classifier_reaches_the_recorded_held_out_accuracy():
    accuracy = metrics.classifier_accuracy(metrics.digit_classifier(), split="test")
    assert accuracy >= RECORDED_ACCURACY - 0.002  # 2 digits of 1,000 for other CPUs' rounding
    readme = (metrics.WEIGHTS.parent / "README.md").read_text()
    assert f"**{RECORDED_ACCURACY:.4f}**" in readme


def test_fid_kid_of_a_set_against_itself_is_zero(test_digits):
    result = metrics.fid_kid(test_digits.images[:500], test_digits.images[:500])
    assert set(result) == {"fid", "kid_mean", "kid_std"}
    assert abs(result["fid"]) < 1e-2
    # KID compares random subsets, so it is ~0 up to sampling noise (real vs noise gives ~9)
    assert abs(result["kid_mean"]) < 0.05 and result["kid_std"] < 0.05


def test_extractor_plugs_into_torchmetrics_and_agrees_with_fid_kid(test_digits):
    real, fake = test_digits.images[:200], test_digits.images[200:400].flip(-1)  # mirrored digits
    fid = FrechetInceptionDistance(feature=metrics.digit_feature_extractor())
    fid.update(real, real=True)
    fid.update(fake, real=False)
    expected = metrics.fid_kid(real, fake, device="cpu")["fid"]
    assert fid.compute().item() == pytest.approx(expected, rel=1e-4)
    assert expected > 10 * metrics.fid_kid(real, test_digits.images[200:400])["fid"]


def test_noise_is_far_from_digits_and_real_halves_are_close(test_digits):
    torch.manual_seed(0)
    floor = metrics.real_vs_real_floor()
    noise = torch.rand(500, 1, 32, 32) * 2 - 1
    far = metrics.fid_kid(test_digits.images[:500], noise)
    assert floor["fid"] > 0  # two different samples of digits are not identical
    assert far["fid"] > 20 * floor["fid"]
    assert far["kid_mean"] - floor["kid_mean"] > 20 * (far["kid_std"] + floor["kid_std"])
    # a digit set missing half the classes is worse than the floor but better than noise
    half = test_digits.images[test_digits.labels < 5]
    skewed = metrics.fid_kid(test_digits.images[1::2], half)
    assert floor["fid"] < skewed["fid"] < far["fid"]


def test_evaluate_generator_unconditional_and_conditional():
    torch.manual_seed(0)
    config = GANConfig(g_width=8, d_width=8, z_dim=16, g_attention=())
    generator = Generator(config)
    result = metrics.evaluate_generator(generator, n=200)
    assert result["n"] == 200 and result["fid"] > metrics.real_vs_real_floor()["fid"]
    assert generator.training  # put back as it was
    conditional = Generator(GANConfig(g_width=8, z_dim=16, g_attention=(), num_classes=10)).eval()
    result = metrics.evaluate_generator(conditional, n=100)
    assert 0.0 <= result["class_accuracy"] <= 1.0 and not conditional.training


def test_train_classifier_runs_and_calibrates():
    """A two-step run (the shipped weights, made by the same function, prove that it learns)."""
    lines = []
    model = metrics.train_classifier(epochs=1, n=64, batch_size=32, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("epoch 1/1: loss ")
    assert not model.training
    images = load_dataset("mnist5k").images[:64]
    with torch.no_grad():
        features = model.embed(images)  # (64, 64)
    assert features.square().sum(1).mean().item() == pytest.approx(64.0, rel=1e-4)


@pytest.mark.parametrize(
    ("real", "error", "match"),
    [
        (
            torch.zeros(8, 3, 32, 32),
            ValueError,
            r"real must have shape \(N, 1, 32, 32\) .*got \(8, 3, 32, 32\)",
        ),
        (torch.zeros(8, 1, 28, 28), ValueError, r"got \(8, 1, 28, 28\)"),
        (
            torch.zeros(8, 1, 32, 32, dtype=torch.uint8),
            TypeError,
            "real must be a float tensor in .-1, 1., got dtype torch.uint8",
        ),
        ([0.0], TypeError, r"real must be a tensor \(N, 1, 32, 32\), got list"),
        (torch.zeros(2, 1, 32, 32), ValueError, "at least 4 images in each set, got 2 and 8"),
    ],
)
def test_bad_input(real, error, match):
    with pytest.raises(error, match=match):
        metrics.fid_kid(real, torch.zeros(8, 1, 32, 32))


def test_bad_generator_and_cli(capsys):
    generator = Generator(GANConfig(image_size=64, g_width=8, z_dim=16, g_attention=()))
    with pytest.raises(ValueError, match="expected a Generator of 32x32 grey digits, got 64 px"):
        metrics.evaluate_generator(generator)
    with pytest.raises(SystemExit) as exit_info:
        metrics.main(["--train-classifier", "--epochs", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "python -m sagan_tutorial.metrics: error: --epochs must be at least 1, got 0"
    ]

"""FID and KID: the shipped digit classifier, seeded and reproducible numbers, bootstrap intervals,
the floor at the model's n, Inception features (a stand-in here) for any images, clear errors."""

from __future__ import annotations

import os
import traceback
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from sagan_tutorial import digits, distances, metrics, pretrained
from sagan_tutorial.data import load_dataset
from sagan_tutorial.models import GANConfig, Generator

# weights/README.md records 0.9780 on the mnist5k test split
RECORDED_ACCURACY = 0.978
FAST = {"resamples": 200}  # where the interval is not what is tested


@pytest.fixture(scope="module")
def test_digits():
    return load_dataset("mnist5k", split="test")


@pytest.fixture(scope="module")
def features(test_digits):
    """Digit features (float64) of the 1000 test digits and of the first 1000 training digits."""
    extractor = metrics.digit_feature_extractor(device="cpu")
    train = load_dataset("mnist5k", split="train").images[:1000]
    with torch.no_grad():
        return extractor(test_digits.images).double(), extractor(train).double()


def small_generator(**config) -> Generator:
    torch.manual_seed(0)
    return Generator(GANConfig(g_width=8, d_width=8, z_dim=16, g_attention=(), **config))


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# --- the shipped classifier -----------------------------------------------------------------------


def test_weights_are_small_and_load_offline_with_weights_only():
    assert metrics.WEIGHTS.stat().st_size < 2**20
    state = torch.load(metrics.WEIGHTS, weights_only=True)
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    extractor = metrics.digit_feature_extractor(device="cpu")
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())
    assert extractor(torch.zeros(2, 1, 32, 32)).shape == (2, extractor.num_features)


def test_classifier_reaches_the_recorded_held_out_accuracy():
    accuracy = metrics.classifier_accuracy(metrics.digit_classifier(device="cpu"), split="test")
    assert accuracy >= RECORDED_ACCURACY - 0.002  # 2 digits of 1,000 for other CPUs' rounding
    readme = (metrics.WEIGHTS.parent / "README.md").read_text()
    assert f"**{RECORDED_ACCURACY:.4f}**" in readme


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


def _tampered(path, state):
    torch.save(state, path)
    return path


class _Code:  # a pickle that runs a shell command when unpickled without weights_only
    def __reduce__(self):
        return (os.system, ("touch CODE_RAN",))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p, s: p.with_name("absent.pt"), "no such file"),
        (
            lambda p, s: p.write_bytes(b"not a torch file") and p,
            r"is not a file of digit classifier weights that can be read safely: .*UnpicklingError",
        ),
        (
            lambda p, s: _tampered(p, {**s, "code": _Code()}),
            "(?i)unsupported global.* posix.system",
        ),
        (lambda p, s: _tampered(p, [1, 2]), "expected a state dict .*got a list"),
        (lambda p, s: _tampered(p, {k: v for k, v in s.items() if k != "head.bias"}), "missing"),
        (lambda p, s: _tampered(p, {**s, "extra": torch.zeros(1)}), "unexpected keys extra"),
        (
            lambda p, s: _tampered(p, {**s, "head.bias": torch.zeros(9)}),
            r"wrong shapes head.bias \(9,\) \(expected \(10,\)\)",
        ),
        (lambda p, s: _tampered(p, {**s, "head.bias": s["head.bias"] * np.nan}), "non-finite"),
        (lambda p, s: _tampered(p, {**s, "feature_scale": torch.tensor(0.0)}), "feature_scale 0"),
    ],
)
def test_wrong_weights_give_one_line_naming_the_file(tmp_path, monkeypatch, make, match):
    monkeypatch.chdir(tmp_path)
    path = make(tmp_path / "weights.pt", torch.load(metrics.WEIGHTS, weights_only=True))
    with pytest.raises(ValueError, match=match) as error:
        metrics.digit_classifier(path)
    assert str(path) in one_line(error)
    shown = "".join(traceback.format_exception(error.value))  # what a user would see
    assert "weights_only=False" not in shown  # torch's text invites it: not shown
    assert not (tmp_path / "CODE_RAN").exists()


def test_cli_refuses_to_overwrite_and_writes_atomically(tmp_path, monkeypatch, capsys):
    trained = []

    def train_classifier(**options):
        trained.append(options)
        return digits.DigitClassifier()

    monkeypatch.setattr(digits, "train_classifier", train_classifier)
    monkeypatch.setattr(digits, "classifier_accuracy", lambda model: 0.5)

    def run(*args):
        with pytest.raises(SystemExit) as exit_info:
            raise SystemExit(metrics.main(["--train-classifier", *map(str, args)]))
        return exit_info.value.code, capsys.readouterr()

    prog = "python -m sagan_tutorial.metrics: error:"
    code, out = run("--epochs", 0, "--out", tmp_path / "a.pt")
    assert (code, out.err) == (2, f"{prog} --epochs must be between 1 and 1000, got 0\n")
    code, out = run("--seed", 2**64, "--out", tmp_path / "a.pt")
    assert (code, out.err) == (2, f"{prog} --seed must be between 0 and 4294967295, got {2**64}\n")
    code, out = run()  # --out is required: the package's file is never the default
    assert code == 2 and "--out" in out.err and len(out.err.splitlines()) == 1
    out_file = tmp_path / "a.pt"
    assert run("--out", out_file) == (0, (f"saved {out_file}: test accuracy 0.5000\n", ""))
    assert len(trained) == 1
    metrics.digit_classifier(out_file)  # a complete, loadable file
    assert oct(out_file.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    before = out_file.read_bytes()
    code, out = run("--out", out_file)
    assert (code, out.err) == (
        2,
        f"{prog} --out {out_file} exists: pass --overwrite to replace it\n",
    )
    assert len(trained) == 1  # refused before training
    code, out = run("--out", tmp_path / "nowhere" / "a.pt")
    assert code == 2 and "no such folder" in out.err and len(trained) == 1

    def interrupted(epochs, seed):
        raise KeyboardInterrupt

    monkeypatch.setattr(digits, "train_classifier", interrupted)
    assert run("--out", tmp_path / "b.pt") == (
        130,
        ("", f"{prog} interrupted; nothing was written\n"),
    )
    monkeypatch.setattr(digits, "train_classifier", train_classifier)

    def broken_save(state, f):
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    code, out = run("--out", out_file, "--overwrite")
    assert (code, out.err) == (2, f"{prog} cannot write {out_file}: No space left on device\n")
    assert out_file.read_bytes() == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # no temporary file left


# --- FID and KID: correctness against torchmetrics ------------------------------------------------


def test_fid_kid_of_a_set_against_itself_is_zero(test_digits):
    result = metrics.fid_kid(test_digits.images[:300], test_digits.images[:300], **FAST)
    assert abs(result["fid"]) < 1e-6
    # KID compares random subsets, so it is ~0 up to sampling noise (real vs noise gives ~9)
    assert abs(result["kid_mean"]) < 0.05 and result["kid_subset_std"] < 0.05
    assert result["fid_low"] == 0.0 and result["fid_high"] < 0.5
    assert result["kid_low"] < 0 < result["kid_high"]


def test_fid_and_kid_agree_with_torchmetrics(test_digits, features):
    real, fake = test_digits.images[:200], test_digits.images[200:400].flip(-1)  # mirrored digits
    extractor = metrics.digit_feature_extractor(device="cpu")
    fid = FrechetInceptionDistance(feature=extractor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=extractor, subsets=2, subset_size=200)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    ours = metrics.fid_kid(real, fake, device="cpu", kid_subset_size=200, kid_subsets=2, **FAST)
    assert ours["fid"] == pytest.approx(fid.compute().item(), rel=1e-5)
    assert ours["kid_mean"] == pytest.approx(kid.compute()[0].item(), rel=1e-4)  # whole sets
    assert ours["fid"] > 10 * metrics.fid_kid(real, test_digits.images[200:400], **FAST)["fid"]
    # fewer images than features (FID's square root through the n x n Gram matrix)
    x, y = features[0][:40], features[1][:50]
    expected = reference_fid(x, y)
    assert metrics.fid_kid_from_features(x, y, **FAST)["fid"] == pytest.approx(expected, rel=1e-6)
    assert metrics.fid_kid_from_features(*features, **FAST)["fid"] == pytest.approx(
        reference_fid(*features), rel=1e-6
    )


def reference_fid(x: torch.Tensor, y: torch.Tensor) -> float:
    """FID as the original code writes it, in numpy: |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))."""
    s1, s2 = np.cov(x.numpy(), rowvar=False), np.cov(y.numpy(), rowvar=False)
    diff = (x.mean(0) - y.mean(0)).numpy()
    root = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * root)


def test_the_two_ways_to_fid_agree(features, monkeypatch):
    """Covariances d x d (few features) and the n x n Gram matrix (many) give the same FID."""
    x, y = features[0][:150], features[1][:120]
    direct = metrics.fid_kid_from_features(x, y, resamples=20)
    monkeypatch.setattr(distances, "_MOMENTS_MAX_DIM", 0)
    gram = metrics.fid_kid_from_features(x, y, resamples=20)
    for key in ("fid", "fid_low", "fid_high"):
        assert gram[key] == pytest.approx(direct[key], rel=1e-6)


def test_noise_is_far_from_digits_and_a_skewed_set_in_between(test_digits, features):
    floor = metrics.fid_kid_from_features(features[0][:500], features[1][:500], **FAST)
    noise = torch.rand(500, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    far = metrics.fid_kid(test_digits.images[:500], noise, **FAST)
    assert floor["fid"] > 0  # two different samples of digits are not identical
    assert far["fid"] > 20 * floor["fid_high"]
    assert far["kid_low"] > 20 * floor["kid_high"]
    # a digit set missing half the classes is worse than the floor but better than noise
    half = test_digits.images[test_digits.labels < 5][:300]
    skewed = metrics.fid_kid(test_digits.images[:300], half, **FAST)
    assert floor["fid_high"] < skewed["fid_low"] and skewed["fid_high"] < far["fid_low"]


# --- reproducible: seeded, the caller's RNG untouched ---------------------------------------------


def test_same_seed_same_numbers_other_seed_other_numbers_global_rng_untouched():
    generator = small_generator()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = metrics.evaluation_report(generator, n=120, seed=3, **FAST)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream goes on as it was
    torch.manual_seed(999)  # another global state: no effect on the numbers
    again = metrics.evaluation_report(generator, n=120, seed=3, **FAST)
    assert again == first  # bit for bit, KID (random subsets) and intervals included
    other = metrics.evaluation_report(generator, n=120, seed=4, **FAST)
    for key in ("fid", "fid_low", "kid_mean", "kid_high", "floor_kid_mean", "floor_fid_high"):
        assert other[key] != first[key], key
    assert other["floor_fid"] == first["floor_fid"]  # the same images: only the draws differ


def test_kid_is_a_function_of_the_seed_alone(features):
    x, y = features[0][:200], features[1][:200]
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = metrics.fid_kid_from_features(x, y, seed=7, **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(2)
    b = metrics.fid_kid_from_features(x, y, seed=7, **FAST)
    c = metrics.fid_kid_from_features(x, y, seed=8, **FAST)
    assert a == b and a["kid_mean"] != c["kid_mean"] and a["fid"] == c["fid"]


# --- the floor: same n, disjoint sets -------------------------------------------------------------


def test_floor_is_measured_at_the_models_n_on_disjoint_images(monkeypatch, test_digits):
    seen = []
    embed = metrics._embed
    monkeypatch.setattr(metrics, "_embed", lambda ex, x, *a: seen.append(x) or embed(ex, x, *a))
    generator = small_generator()
    report = metrics.evaluation_report(generator, n=150, **FAST)
    assert report["n"] == 150 and len(seen) == 3  # held-out, generated, training: each once
    held_out, _, train = seen
    assert torch.equal(held_out, test_digits.images[:150])
    assert torch.equal(train, load_dataset("mnist5k", split="train").images[:150])
    pixels = {bytes(image.numpy()) for image in held_out}
    assert not pixels & {bytes(image.numpy()) for image in train}
    assert generator.training  # put back as it was
    floor = metrics.real_vs_real_floor(n=150, **FAST)
    assert (floor["n"], floor["n_real"], floor["n_fake"]) == (150, 150, 150)
    assert {k: report[f"floor_{k}"] for k in ("fid", "kid_mean", "kid_high")} == {
        k: floor[k] for k in ("fid", "kid_mean", "kid_high")
    }
    assert report["fid_low"] > report["floor_fid_high"]  # an untrained G is far from real


def test_floor_at_1000_is_below_the_old_500_against_500(features):
    """FID is biased upward at small n: the floor must be taken at the model's n."""
    old = metrics.fid_kid_from_features(features[0][0::2], features[0][1::2], **FAST)["fid"]
    assert old == pytest.approx(0.097, abs=0.002)  # the floor weights/README.md recorded
    floor = metrics.real_vs_real_floor(n=1000, resamples=20)["fid"]
    assert floor < 0.5 * old
    at = {n: metrics.fid_kid_from_features(*(f[:n] for f in features), **FAST) for n in (100, 300)}
    assert at[100]["fid"] > at[300]["fid"] > floor


# --- intervals ------------------------------------------------------------------------------------


def test_intervals_hold_the_estimate_and_shrink_with_n(features):
    widths = {}
    for n in (100, 800):
        real, other = features[0][:n], features[1][:n]
        for name, fake in (("floor", other), ("shifted", other + 0.3)):
            result = metrics.fid_kid_from_features(real, fake, resamples=300)
            assert result["fid_low"] <= result["fid"] <= result["fid_high"]
            assert result["kid_low"] <= result["kid_mean"] <= result["kid_high"]
            assert result["kid_subset_size"] == n // 2 and result["resamples"] == 300
            widths[name, n] = [result[f"{m}_high"] - result[f"{m}_low"] for m in ("fid", "kid")]
    for name in ("floor", "shifted"):
        assert widths[name, 800][0] < 0.6 * widths[name, 100][0]
        assert widths[name, 800][1] < 0.6 * widths[name, 100][1]
    assert metrics.fid_kid_from_features(*features, resamples=20, confidence=0.5)["resamples"] == 20


def test_bootstrap_kid_leaves_out_pairs_of_an_image_with_itself(features):
    """A resample repeats images; counting their pairs with themselves would bias KID upward
    (k(x, x) is large): the mean of the bootstrap replicates must stay at the estimate."""
    x, y = features[0][:300], features[1][:300]
    rng = torch.Generator().manual_seed(0)
    replicates = distances._kid(
        x, y, distances._counts(300, 400, rng), distances._counts(300, 400, rng)
    )
    whole = distances._kid(
        x, y, torch.ones(1, 300, dtype=x.dtype), torch.ones(1, 300, dtype=x.dtype)
    )
    standard_error = replicates.std() / 400**0.5  # about 0.002 (with the pairs: 0.065 off)
    assert abs(replicates.mean() - whole) < 3 * standard_error


def test_conditional_generator_gets_class_accuracy_with_an_interval():
    generator = pretrained("sagan-mnist32-cond", device="cpu")
    report = metrics.evaluation_report(generator, n=200, **FAST)
    low, accuracy, high = (report[f"class_accuracy{e}"] for e in ("_low", "", "_high"))
    assert 0.9 < low <= accuracy <= high <= 1 and high - low < 0.1  # recorded: 0.992 at n=1000
    text = metrics.format_report(report, "sagan-mnist32-cond")
    assert f"Class accuracy of the samples (digit classifier): {accuracy:.3f} [" in text
    assert "class_accuracy" not in metrics.evaluate_generator(small_generator(), n=50, **FAST)


def test_format_report_says_what_was_compared():
    report = metrics.evaluation_report(small_generator(), n=100, **FAST)
    lines = metrics.format_report(report, "my G").splitlines()
    assert lines[0].startswith("my G: 100 samples against 100 held-out (test) images of mnist5k;")
    assert "the same 100 held-out images against 100 training images" in lines[0]
    assert lines[4].startswith(f"| my G | {report['fid']:.3f} [{report['fid_low']:.3f}, ")
    assert lines[5].startswith(f"| real vs real (floor) | {report['floor_fid']:.3f} [")
    assert len(lines) == 6


# --- Inception features (a stand-in) for any images -----------------------------------------------


class StandInInception(nn.Module):
    """A fixed random projection of 8x8 pooled RGB: (N, C, H, W) -> (N, 2048), as Inception's."""

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        projection = torch.randn(3 * 8 * 8, 2048, generator=torch.Generator().manual_seed(0))
        self.register_buffer("projection", projection / 8)
        self.shapes = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return F.adaptive_avg_pool2d(x.expand(-1, 3, -1, -1), 8).flatten(1) @ self.projection


@pytest.fixture
def stand_in(monkeypatch):
    made = StandInInception()
    made.paths = []
    monkeypatch.setattr(metrics, "_inception_extractor", lambda p, d: made.paths.append(p) or made)
    return made


@pytest.fixture
def colour_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(60):  # 48 training, 12 held-out images
        colour = rng.integers(0, 256, 3, dtype=np.uint8)
        pixels = np.clip(colour + rng.normal(0, 20, (80, 80, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i:02d}.png")
    return tmp_path


def test_inception_features_for_a_64px_rgb_generator(stand_in, colour_folder):
    generator = small_generator(image_size=64, channels=3)
    with pytest.raises(ValueError, match="32x32 grey digits for features='digits'") as error:
        metrics.evaluation_report(generator, dataset=colour_folder, n=10)
    assert one_line(error).endswith("got 64 px, 3 ch")
    assert metrics.check_sample_size(12, colour_folder) == 12
    report = metrics.evaluation_report(
        generator, dataset=colour_folder, n=10, features="inception", inception_weights="w.pth"
    )
    assert stand_in.paths == ["w.pth"] and stand_in.shapes == [(10, 3, 64, 64)] * 3
    assert report["features"] == "inception" and report["n"] == 10
    assert report["resamples"] == distances.RESAMPLES_LARGE  # 2048 features: fewer resamples
    assert report["fid_low"] <= report["fid"] <= report["fid_high"]
    assert report["floor_fid"] < report["fid"]  # noise-like samples against colour fields
    assert "Features: inception" in metrics.format_report(report, "G")
    again = metrics.evaluation_report(generator, dataset=colour_folder, n=10, features="inception")
    assert again == report
    with pytest.raises(ValueError, match=r"expected --n between 4 and 12 \(the held-out images"):
        metrics.check_sample_size(13, colour_folder)
    grey = metrics.fid_kid(
        torch.zeros(6, 1, 20, 20), torch.ones(6, 1, 20, 20), features="inception"
    )
    assert grey["fid"] > 0 and stand_in.shapes[-1] == (6, 1, 20, 20)


# --- errors ---------------------------------------------------------------------------------------


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
        (
            torch.zeros(2, 1, 32, 32),
            ValueError,
            r"at least 4 images in each set, .*got \(2, 64\) and \(8, 64\)",
        ),
        (
            torch.zeros(8, 1, 32, 32).index_fill(0, torch.tensor([1, 5]), float("nan")),
            ValueError,
            "real must be finite, got 2 of 8 with NaN or inf",
        ),
    ],
)
def test_bad_input(real, error, match):
    with pytest.raises(error, match=match) as info:
        metrics.fid_kid(real, torch.zeros(8, 1, 32, 32), **FAST)
    one_line(info)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"real": torch.full((8, 3), 1e200, dtype=torch.float64)},
            r"real features must be below 1e\+100 in magnitude, got 1e\+200",
        ),
        ({"real": torch.zeros(8, 0), "fake": torch.zeros(8, 0)}, "at least one feature per image"),
        ({"resamples": 10**9}, r"resamples must be .*100000, got 1000000000"),
        ({"kid_subsets": 10**9}, r"kid_subsets must be .*100000"),
    ],
)
def test_features_that_would_overflow_or_exhaust_memory_are_refused(options, match):
    inputs = {"real": torch.randn(8, 3), "fake": torch.randn(8, 3), **options}
    with pytest.raises(ValueError, match=match) as info:
        metrics.fid_kid_from_features(
            inputs.pop("real").double(), inputs.pop("fake").double(), **inputs
        )
    one_line(info)


def test_a_generator_with_nan_weights_is_refused():
    generator = small_generator()
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(ValueError) as error:
        metrics.evaluate_generator(generator, n=16, **FAST)
    assert one_line(error) == (
        "the generated images must be finite, got 16 of 16 with NaN or inf "
        "(does the generator have NaN weights?)"
    )
    features = torch.zeros(8, 64).index_fill(0, torch.tensor([3]), float("inf"))
    with pytest.raises(ValueError, match="fake features must be finite, got 1 of 8"):
        metrics.fid_kid_from_features(torch.randn(8, 64), features)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: metrics.check_sample_size(3),
            ValueError,
            "expected --n between 4 and 1000 (the held-out images of mnist5k), got 3",
        ),
        (
            lambda: metrics.check_sample_size(1001),
            ValueError,
            "expected --n between 4 and 1000 (the held-out images of mnist5k), got 1001",
        ),
        (
            lambda: metrics.check_sample_size(8.0),
            TypeError,
            "--n must be an int, got float 8.0",
        ),
        (
            lambda: metrics.evaluation_report(small_generator(), n=1001),
            ValueError,
            "expected n between 4 and 1000 (the test images of mnist5k), got 1001",
        ),
        (
            lambda: metrics.real_vs_real_floor(n=2),
            ValueError,
            "expected n between 4 and 1000 (the test images of mnist5k), got 2",
        ),
        (
            lambda: metrics.evaluate_generator(small_generator(), n=8, features="clip"),
            ValueError,
            "features must be one of ('digits', 'inception'), got 'clip'",
        ),
        (
            lambda: metrics.real_vs_real_floor(n=8, inception_weights="w.pth"),
            ValueError,
            "inception_weights applies to features='inception', got 'digits'",
        ),
        (
            lambda: metrics.evaluate_generator(small_generator(), n=8, sead=1),
            TypeError,
            "unexpected keyword arguments ['sead'], expected some of ('dataset', 'seed', ",
        ),
        (
            lambda: metrics.evaluate_generator(nn.Linear(2, 2)),
            TypeError,
            "expected a Generator (with a .config), got Linear",
        ),
        (
            lambda: metrics.fid_kid(
                torch.zeros(6, 2, 8, 8), torch.zeros(6, 3, 8, 8), features="inception"
            ),
            ValueError,
            "real must have shape (N, C, H, W), C 1 or 3, got (6, 2, 8, 8)",
        ),
        (
            lambda: metrics.fid_kid_from_features(torch.randn(8, 4), torch.randn(8, 4), seed=-1),
            ValueError,
            "seed must be between 0 and 4294967295, got -1",
        ),
        (
            lambda: metrics.fid_kid(
                torch.zeros(8, 1, 32, 32), torch.zeros(8, 1, 32, 32), seed=2**70
            ),
            ValueError,
            "seed must be between 0 and 4294967295, got 1180591620717411303424",
        ),
        (
            lambda: metrics.fid_kid(
                torch.zeros(8, 1, 32, 32), torch.zeros(8, 1, 32, 32), batch_size=0
            ),
            ValueError,
            "batch_size must be at least 1, got 0",
        ),
        (
            lambda: metrics.fid_kid(torch.full((8, 1, 32, 32), 255.0), torch.zeros(8, 1, 32, 32)),
            ValueError,
            "real must be images in [-1, 1], got values from 255 to 255",
        ),
        (
            lambda: metrics.fid_kid_from_features(
                torch.randn(8, 4), torch.randn(8, 4), resamples=0
            ),
            ValueError,
            "resamples must be between 2 and 100000, got 0",
        ),
        (
            lambda: metrics.fid_kid_from_features(
                torch.randn(8, 4), torch.randn(8, 4), confidence=1.0
            ),
            ValueError,
            "confidence must be a finite number in (0, 1), got 1.0",
        ),
    ],
)
def test_one_line_errors(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert one_line(info).startswith(message)

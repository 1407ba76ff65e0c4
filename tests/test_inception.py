"""The FID Inception-v3: published keys and shapes, finding and loading weights, features, FID.

Offline: the real weights (95.6 MB) are never needed. The tests save a randomly initialised network
(fixed seed) in the published file's format and load that.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sagan_tutorial import inception
from sagan_tutorial.inception import FIDInceptionV3

# The keys of pt_inception-2015-12-05-6726825d.pth, written down from the published architecture
# (pytorch-fid's fid_inception_v3: torchvision's Inception3 with 1008 classes and no AuxLogits,
# blocks replaced by FIDInceptionA/C/E_1/E_2). Each row is a BasicConv2d: name, in, out, kernel.
STEM = """
Conv2d_1a_3x3 3 32 3x3
Conv2d_2a_3x3 32 32 3x3
Conv2d_2b_3x3 32 64 3x3
Conv2d_3b_1x1 64 80 1x1
Conv2d_4a_3x3 80 192 3x3
"""
BLOCK_A = """
branch1x1 C 64 1x1
branch5x5_1 C 48 1x1
branch5x5_2 48 64 5x5
branch3x3dbl_1 C 64 1x1
branch3x3dbl_2 64 96 3x3
branch3x3dbl_3 96 96 3x3
branch_pool C P 1x1
"""
BLOCK_B = """
branch3x3 C 384 3x3
branch3x3dbl_1 C 64 1x1
branch3x3dbl_2 64 96 3x3
branch3x3dbl_3 96 96 3x3
"""
BLOCK_C = """
branch1x1 C 192 1x1
branch7x7_1 C P 1x1
branch7x7_2 P P 1x7
branch7x7_3 P 192 7x1
branch7x7dbl_1 C P 1x1
branch7x7dbl_2 P P 7x1
branch7x7dbl_3 P P 1x7
branch7x7dbl_4 P P 7x1
branch7x7dbl_5 P 192 1x7
branch_pool C 192 1x1
"""
BLOCK_D = """
branch3x3_1 C 192 1x1
branch3x3_2 192 320 3x3
branch7x7x3_1 C 192 1x1
branch7x7x3_2 192 192 1x7
branch7x7x3_3 192 192 7x1
branch7x7x3_4 192 192 3x3
"""
BLOCK_E = """
branch1x1 C 320 1x1
branch3x3_1 C 384 1x1
branch3x3_2a 384 384 1x3
branch3x3_2b 384 384 3x1
branch3x3dbl_1 C 448 1x1
branch3x3dbl_2 448 384 3x3
branch3x3dbl_3a 384 384 1x3
branch3x3dbl_3b 384 384 3x1
branch_pool C 192 1x1
"""
# block name, template, C = in channels, P = pool features (A) or channels_7x7 (C)
MIXED = [
    ("Mixed_5b", BLOCK_A, 192, 32),
    ("Mixed_5c", BLOCK_A, 256, 64),
    ("Mixed_5d", BLOCK_A, 288, 64),
    ("Mixed_6a", BLOCK_B, 288, 0),
    ("Mixed_6b", BLOCK_C, 768, 128),
    ("Mixed_6c", BLOCK_C, 768, 160),
    ("Mixed_6d", BLOCK_C, 768, 160),
    ("Mixed_6e", BLOCK_C, 768, 192),
    ("Mixed_7a", BLOCK_D, 768, 0),
    ("Mixed_7b", BLOCK_E, 1280, 0),
    ("Mixed_7c", BLOCK_E, 2048, 0),
]
# torchvision's inception_v3 (1000 classes, with AuxLogits) has 27,161,264 parameters (its
# weights' meta); AuxLogits holds 98,304 + 256 + 2,457,600 + 1,536 + 769,000 = 3,326,696 of them,
# and 1008 classes instead of 1000 add 8 * 2048 + 8 = 16,392.
PUBLISHED_PARAMETERS = 27_161_264 - 3_326_696 + 16_392  # 23,850,960


def published_shapes() -> dict[str, tuple[int, ...]]:
    rows = [line.split() for line in STEM.strip().splitlines()]
    for block, template, c, p in MIXED:
        for row in template.strip().splitlines():
            name, cin, cout, kernel = row.split()
            sub = {"C": str(c), "P": str(p)}
            rows.append([f"{block}.{name}", sub.get(cin, cin), sub.get(cout, cout), kernel])
    shapes: dict[str, tuple[int, ...]] = {}
    for name, cin, cout, kernel in rows:
        kh, kw = (int(k) for k in kernel.split("x"))
        shapes[f"{name}.conv.weight"] = (int(cout), int(cin), kh, kw)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{stat}"] = (int(cout),)
        shapes[f"{name}.bn.num_batches_tracked"] = ()
    shapes["fc.weight"] = (1008, 2048)
    shapes["fc.bias"] = (1008,)
    return shapes


def random_inception(seed: int = 0) -> FIDInceptionV3:
    """Random weights that keep activations of order 1: with PyTorch's default init the pool3
    features come out near 1e-8, too small for FID/KID checks to mean anything."""
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def images(n: int, channels: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    """(n, channels, size, size) in [-1, 1]: smooth random blobs, not white noise."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, channels, 4, 4, generator=g) * 2 - 1
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module", autouse=True)
def any_digest():
    """The tests make their own weights files: accept any SHA-256 (one test checks the rule)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inception, "INCEPTION_WEIGHTS_SHA256_PREFIX", "")
        yield


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / inception.INCEPTION_WEIGHTS_NAME
    torch.save(random_inception().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def extractor(weights_file) -> FIDInceptionV3:
    return inception.inception_feature_extractor(weights_file)


@pytest.fixture(scope="module")
def traced_forward(extractor) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[int, ...]]]:
    """Two RGB images, their features, and the output shape of every named layer on the way."""
    x, shapes = images(2), {}
    hooks = [
        module.register_forward_hook(lambda m, i, out, name=name: shapes.update({name: out.shape}))
        for name, module in extractor.named_children()
    ]
    try:
        with torch.no_grad():
            features = extractor(x)
    finally:
        for hook in hooks:
            hook.remove()
    return x, features, {k: tuple(v[1:]) for k, v in shapes.items()}


@pytest.fixture(scope="module")
def rgb_features(traced_forward) -> tuple[torch.Tensor, torch.Tensor]:
    return traced_forward[:2]


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


# --- architecture ---------------------------------------------------------------------------


def test_state_dict_has_the_published_keys_and_shapes():
    # The published file is a torchvision model's state_dict, num_batches_tracked included
    # (tinygrad's loader of it reshapes those 0-d entries); loading also accepts files without.
    expected = published_shapes()
    assert len(expected) == 566  # 94 BasicConv2d x (conv weight + 5 BatchNorm entries) + fc
    state = FIDInceptionV3().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_parameter_count_is_the_fid_inceptions():
    model = FIDInceptionV3()
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS == 23_850_960
    assert model.num_features == 2048
    assert all(m.eps == 0.001 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def pool_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pool branch's output (its channels come last) when branch_pool passes channels on."""
    block = copy.deepcopy(block).eval()
    conv = block.branch_pool.conv
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 0, 0] = torch.eye(conv.out_channels, conv.in_channels)
        out = block(x)[:, -conv.out_channels :]
    return out * (1 + block.branch_pool.bn.eps) ** 0.5  # undo BatchNorm's 1 / sqrt(1 + eps)


@pytest.mark.parametrize("name", ["Mixed_5b", "Mixed_6b", "Mixed_7b"])
def test_average_pools_leave_the_padding_out(name):
    # TensorFlow's pool: a constant map stays constant up to the border (torchvision's would
    # give 4/9 of it in the corners, 6/9 along the edges).
    block = getattr(FIDInceptionV3(), name)
    channels = block.branch1x1.conv.in_channels
    out = pool_branch(block, torch.full((1, channels, 5, 5), 2.0))
    torch.testing.assert_close(out, torch.full_like(out, 2.0))


def test_last_block_max_pools():
    # FIDInceptionE_2: one bright pixel spreads, undiminished, over its 3x3 neighbourhood.
    block = FIDInceptionV3().Mixed_7c
    x = torch.zeros(1, 2048, 5, 5)
    x[:, :, 2, 2] = 9.0
    out = pool_branch(block, x)
    expected = torch.zeros(1, 192, 5, 5)
    expected[:, :, 1:4, 1:4] = 9.0
    torch.testing.assert_close(out, expected)


def test_feature_maps_have_the_published_sizes(traced_forward):
    # As annotated in torch-fidelity's FeatureExtractorInceptionV3.forward (from 299x299 input).
    sizes = {"Conv2d_1a_3x3": (32, 149), "Conv2d_2a_3x3": (32, 147), "Conv2d_2b_3x3": (64, 147)}
    sizes |= {"Conv2d_3b_1x1": (80, 73), "Conv2d_4a_3x3": (192, 71), "Mixed_5b": (256, 35)}
    sizes |= {"Mixed_5c": (288, 35), "Mixed_5d": (288, 35), "Mixed_7a": (1280, 8)}
    sizes |= {f"Mixed_6{b}": (768, 17) for b in "abcde"}
    sizes |= {"Mixed_7b": (2048, 8), "Mixed_7c": (2048, 8)}
    expected = {name: (c, s, s) for name, (c, s) in sizes.items()}
    assert traced_forward[2] == expected  # fc is not run: FID stops at pool3


def test_module_imports_neither_torchmetrics_nor_matplotlib():
    tree = ast.parse(Path(inception.__file__).read_text())
    top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in top if m.split(".")[0] in {"torchmetrics", "matplotlib", "torchvision"}}


# --- finding the weights --------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch.hub cache under a temporary TORCH_HOME; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_find_returns_a_given_file(weights_file, hub):
    assert inception.find_inception_weights(weights_file) == weights_file
    assert inception.find_inception_weights(str(weights_file)) == weights_file


def test_find_names_a_given_file_that_does_not_exist(tmp_path, hub):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(ValueError) as error:
        inception.find_inception_weights(missing)
    assert_one_line(error, str(missing), "does not exist")


@pytest.mark.parametrize(
    "name", [inception.INCEPTION_WEIGHTS_NAME, inception.TORCH_FIDELITY_WEIGHTS_NAME]
)
def test_find_looks_in_the_torch_hub_cache(hub, name):
    hub.mkdir(parents=True)
    (hub / name).write_bytes(b"found by name; read only when loaded")
    assert inception.find_inception_weights() == hub / name


def test_find_prefers_pytorch_fids_name(hub):
    hub.mkdir(parents=True)
    for name in (inception.TORCH_FIDELITY_WEIGHTS_NAME, inception.INCEPTION_WEIGHTS_NAME):
        (hub / name).write_bytes(b"x")
    assert inception.find_inception_weights().name == inception.INCEPTION_WEIGHTS_NAME


def test_find_says_in_one_line_how_to_get_the_weights(hub):
    with pytest.raises(ValueError) as error:
        inception.find_inception_weights()
    assert_one_line(error, inception.INCEPTION_WEIGHTS_URL, "--inception-weights FILE", str(hub))
    assert inception.INCEPTION_WEIGHTS_URL.startswith("https://github.com/mseitzer/pytorch-fid/")
    assert inception.INCEPTION_WEIGHTS_URL.endswith("/" + inception.INCEPTION_WEIGHTS_NAME)


# --- loading --------------------------------------------------------------------------------


def test_extractor_is_frozen_in_eval_mode_with_the_files_weights(extractor, weights_file):
    assert isinstance(extractor, FIDInceptionV3) and not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())
    state = torch.load(weights_file, weights_only=True)
    for key, value in extractor.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_loads_a_file_without_num_batches_tracked(tmp_path, extractor):
    # As torch-fidelity's conversion script writes it: a plain dict of the same names.
    state = extractor.state_dict()
    plain = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(plain, tmp_path / "converted.pth")
    model = inception.inception_feature_extractor(tmp_path / "converted.pth")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    model.load_state_dict(plain)  # a plain, strict load_state_dict accepts it as well


class _MakeDirOnLoad:
    """Pickles as a call to os.mkdir: code that would run if the file were unpickled freely."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory, extractor) -> dict[str, tuple[Path, str]]:
    """name -> (a file that is not the FID Inception's weights, what its error must contain)."""
    folder = tmp_path_factory.mktemp("broken")
    state = extractor.state_dict()
    files = {}

    def save(name, obj):
        torch.save(obj, folder / name)
        return folder / name

    files["tensor"] = (save("tensor.pth", torch.zeros(3)), "Tensor")
    missing = {k: v for k, v in state.items() if k != "Mixed_6c.branch7x7_2.conv.weight"}
    files["missing"] = (save("missing.pth", missing), "Mixed_6c.branch7x7_2.conv.weight")
    torchvision_like = dict(state, **{"fc.weight": torch.zeros(1000, 2048)})
    torchvision_like["AuxLogits.fc.bias"] = torch.zeros(1000)
    files["shapes"] = (save("torchvision.pth", torchvision_like), "AuxLogits.fc.bias")
    code = {"fc.weight": _MakeDirOnLoad(folder / "pwned")}
    files["code"] = (save("code.pth", code), "GLOBAL posix.mkdir")
    (folder / "truncated.pth").write_bytes(files["missing"][0].read_bytes()[:4096])
    files["truncated"] = (folder / "truncated.pth", "truncated.pth")
    (folder / "empty.pth").write_bytes(b"")
    files["empty"] = (folder / "empty.pth", "EOFError")
    return files


@pytest.mark.parametrize("kind", ["tensor", "missing", "shapes", "code", "truncated", "empty"])
def test_a_wrong_file_gives_one_line_naming_it(broken_files, kind):
    file, fragment = broken_files[kind]
    with pytest.raises(ValueError) as error:
        inception.inception_feature_extractor(file)
    assert_one_line(error, str(file), fragment)
    assert "weights_only=False" not in str(error.value)
    assert not (file.parent / "pwned").exists()  # the pickled code never ran


def test_wrong_shapes_are_listed(broken_files):
    with pytest.raises(ValueError) as error:
        inception.inception_feature_extractor(broken_files["shapes"][0])
    assert re.search(r"fc\.weight \(1000, 2048\) \(expected \(1008, 2048\)\)", str(error.value))


# --- features -------------------------------------------------------------------------------


def test_features_are_finite_2048_per_image_and_deterministic(extractor, rgb_features):
    x, features = rgb_features
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert features.std(0).mean() > 0  # two different images, two different feature vectors
    with torch.no_grad():
        assert torch.equal(extractor(x), features)


def test_grey_is_the_same_image_repeated_to_rgb(extractor):
    grey = images(1, channels=1, seed=2)
    with torch.no_grad():
        assert torch.equal(extractor(grey), extractor(grey.repeat(1, 3, 1, 1)))


def test_images_are_resized_bilinearly_to_299(extractor, rgb_features):
    x, features = rgb_features
    resized = F.interpolate(x[:1], size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(extractor(resized), features[:1])


@pytest.mark.parametrize(
    ("x", "error", "fragment"),
    [
        ([[0.0]], TypeError, "list"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), TypeError, "torch.uint8"),
        (torch.zeros(3, 8, 8), ValueError, "(3, 8, 8)"),
        (torch.zeros(2, 2, 8, 8), ValueError, "(2, 2, 8, 8)"),
        (torch.zeros(0, 3, 8, 8), ValueError, "(0, 3, 8, 8)"),
        (torch.full((2, 3, 8, 8), 255.0), ValueError, "[255, 255]"),
    ],
)
def test_bad_input_is_refused_saying_what_came_in(x, error, fragment):
    with pytest.raises(error) as caught:
        inception.check_rgb_images(x)
    assert_one_line(caught, fragment)


def test_forward_checks_its_input(extractor):
    with pytest.raises(ValueError, match=r"\[-1, 1\], got values in \[0, 255\]"):
        extractor(torch.linspace(0, 255, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8))


# --- through torchmetrics -------------------------------------------------------------------


@pytest.mark.slow  # ~20 s on 2 CPU cores: torchmetrics takes eigenvalues of a 2048x2048 matrix
def test_torchmetrics_fid_runs_on_the_extractor(extractor):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, other = images(3, seed=3), images(3, seed=4) * 0.5
    fid = FrechetInceptionDistance(feature=extractor)
    fid.update(real, real=True)
    fid.update(real, real=False)
    same = float(fid.compute())
    fid.reset()
    fid.update(real, real=True)
    fid.update(other, real=False)
    different = float(fid.compute())
    assert abs(same) < 1e-3 * different
    assert different > 0


def test_torchmetrics_kid_runs_on_the_extractor(extractor):
    from torchmetrics.image.kid import KernelInceptionDistance

    real, other = images(2, seed=3), images(2, seed=4) * 0.5
    with warnings.catch_warnings():  # KID warns that it keeps every feature: 4 here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=extractor, subset_size=2, subsets=5)
    kid.update(real, real=True)
    kid.update(other, real=False)
    mean, _ = kid.compute()
    assert float(mean) > 0


def test_a_file_of_the_right_shapes_but_other_numbers_is_refused(weights_file, monkeypatch):
    """Random weights of the right shapes would give FIDs that compare with nothing: the file's
    SHA-256 must begin with the published file's prefix (6726825d)."""
    monkeypatch.setattr(inception, "INCEPTION_WEIGHTS_SHA256_PREFIX", "6726825d")
    with pytest.raises(ValueError, match=r"is not the FID Inception weights file: its SHA-256"):
        inception.inception_feature_extractor(weights_file)

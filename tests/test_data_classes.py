"""The class names and config defaults that ship with flowers_jax.data, and what importing them costs."""

from __future__ import annotations

import fnmatch
import pathlib
import subprocess
import sys
import tomllib

import ml_collections
import pytest

from flowers_jax import data
from flowers_jax.data.classes import class_index

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_104_competition_classes():
    names = data.class_names()
    assert len(names) == len(set(names)) == 104
    assert names[0] == "pink primrose" and names[48] == "daisy" and names[102:] == ["common tulip", "wild rose"]
    assert all(n == n.strip() for n in names)  # the original list's trailing spaces (87, 90) are gone
    assert names[87] == "cyclamen" and names[90] == "hippeastrum"
    assert class_index("Common_Dandelion") == names.index("common dandelion")
    with pytest.raises(KeyError, match=r"unknown class name 'sunflowr'; did you mean \['sunflower'"):
        class_index("sunflowr")


def test_data_config_defaults():
    c = data.data_config()
    assert c.image_size == 224 and c.tfrecord_size == 0 and c.data_dir == ""
    assert (c.train_split, c.val_split, c.test_split) == ("train", "val", "test")
    assert c.skip_bad_records is False and c.dct_method == "INTEGER_ACCURATE"
    a = c.augment
    assert a.flip and a.random_resized_crop and tuple(a.crop_scale) == (0.35, 1.0)
    assert (a.rotation, a.zoom, a.contrast) == (0.1, 0.1, 0.1)
    assert tuple(c.extra_sources) == ()


def test_loading_a_config_does_not_import_tensorflow():
    code = (
        "import sys; from flowers_jax.data import data_config, class_names; data_config(); class_names(); "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_package_data_files_are_declared_for_wheels():
    """Non-Python files of flowers_jax/data must be listed as package data, or wheels lack them."""
    files = sorted(
        str(p.relative_to(ROOT / "flowers_jax" / "data"))
        for p in (ROOT / "flowers_jax" / "data").rglob("*")
        if p.is_file() and p.suffix in (".txt", ".json")
    )
    assert "kaggle_104_classes.txt" in files and "mappings/tf_flowers.json" in files
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {})
    patterns = [*declared.get("flowers_jax.data", []), *declared.get("*", [])]
    patterns += [p.removeprefix("data/") for p in declared.get("flowers_jax", []) if p.startswith("data/")]
    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert not missing, f'add to pyproject.toml [tool.setuptools.package-data] "flowers_jax.data": {missing}'


def test_one_class_name_rule_for_data_with_and_without_dataset_json():
    """layout.class_names is the rule the pipeline, DatasetInfo and the synthetic writer all follow."""
    from flowers_jax.data import layout
    from flowers_jax.data.classes import default_names

    config = ml_collections.ConfigDict({"data": data.data_config(), "num_classes": 106})
    names = data.class_names()
    assert layout.class_names(config) == (*names, "class_104", "class_105")  # no data_dir: no dataset.json
    config.num_classes = 5
    assert layout.class_names(config) == tuple(names[:5]) == tuple(default_names(5))
    assert layout.class_names(config, {"class_names": list("abcde")}) == tuple("abcde")
    with pytest.raises(data.DataError, match="config.num_classes is 5 but the data's dataset.json lists 3"):
        layout.class_names(config, {"class_names": ["a", "b", "c"]})

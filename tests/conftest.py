"""Test set-up: CPU JAX, Keras on its TensorFlow backend (an independent reference), quiet TF."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the session, used in this process and by every `python -m
# flowers_jax.main` a test starts (they inherit the environment): the programs many tests share (the
# smoke model's steps, the TINY run's, a resumed run's) are compiled once, not once per test. A size
# limit turns on jax's eviction, and with it a file lock around every read and write, so processes
# sharing an entry never see it half-written. Set JAX_COMPILATION_CACHE_DIR yourself to keep one.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE = tempfile.mkdtemp(prefix="flowers_jax_xla_cache_")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import pathlib  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory) -> pathlib.Path:
    """The workdir of one real `configs/smoke.py` run, shared by the tests that need a trained model."""
    from training_runs import run

    workdir = tmp_path_factory.mktemp("smoke")
    run(workdir, timeout=600)
    return workdir


@pytest.fixture(scope="session")
def calibrate_run(smoke_workdir, tmp_path_factory) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
    """(workdir, the command's result) of `--mode calibrate` on a copy of the smoke workdir (the shared
    one stays uncalibrated). Tests may add eval/ and predict/ folders to it, nothing else."""
    from training_runs import ROOT, env, main_command

    workdir = tmp_path_factory.mktemp("calibrated_smoke") / "w"
    shutil.copytree(smoke_workdir, workdir, ignore=shutil.ignore_patterns("eval", "predict"))
    done = subprocess.run(
        main_command(workdir, "--mode=calibrate"), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, done


@pytest.fixture(scope="session")
def calibrated_smoke(calibrate_run) -> pathlib.Path:
    return calibrate_run[0]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> pathlib.Path:
    """The workdir of one uninterrupted `training_runs.TINY` run on one device: the reference that the
    resumed, 8-device and read-beside runs are compared with. Tests must not change it."""
    from training_runs import TINY, run

    workdir = tmp_path_factory.mktemp("tiny") / "w"
    run(workdir, *TINY)
    return workdir


@pytest.fixture(scope="session")
def small_export(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """(folder, variables) of one small export shared by the browser tests (tests/small_export.py).
    Tests must not change the folder: copy it first."""
    import small_export as small

    return small.make(tmp_path_factory.mktemp("export") / "web")


# Fixtures that train a model or export one end to end, shared by many tests. The suite runs on
# pytest-xdist workers (pyproject.toml's addopts: `-n auto --dist loadgroup`), and a session fixture
# lives once per worker: each test that uses one joins that fixture's xdist group, so one worker makes
# it once and runs all its users while the others take the rest (tiny_run and eight_device_run are
# compared with each other, hence one group). Every such test is also marked `slow`, so
# `pytest -m "not slow"` leaves it out of the quick loop (pyproject.toml registers the marker).
# eight_device_run is tests/test_train.py's.
XDIST_GROUPS = {
    "smoke_workdir": "smoke",
    "tiny_run": "tiny",
    "eight_device_run": "tiny",
    "small_export": "export",
}
SLOW_FIXTURES = frozenset(XDIST_GROUPS)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups off the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & used:
            item.add_marker(pytest.mark.slow)
        groups = sorted({XDIST_GROUPS[f] for f in used & XDIST_GROUPS.keys()})
        if len(groups) > 1:  # it would build one group's fixtures a second time, on another worker
            raise pytest.UsageError(f"{item.nodeid} uses the fixtures of xdist groups {groups}: give them one group")
        if groups:
            item.add_marker(pytest.mark.xdist_group(groups[0]))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core this process may use, at most 4 (each holds TF, JAX and its own
    session fixtures). joblib (scikit-learn's) counts a container's CPU quota, not just the host's cores."""
    import joblib

    return max(1, min(4, joblib.cpu_count()))

"""The entry points' restart with glibc huge pages (flowers_jax/hugepages.py)."""

import os
import subprocess
import sys

import pytest

from flowers_jax import hugepages


def test_tunable_is_added_to_those_already_set():
    assert hugepages.tunables_with_hugetlb("") == "glibc.malloc.hugetlb=1"
    both = "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hugepages.tunables_with_hugetlb("glibc.malloc.arena_max=2") == both


def test_children_can_run_without_it_and_keep_other_tunables():
    env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "PATH": "/bin"}
    child = hugepages.without_huge_pages(env)
    assert child == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "PATH": "/bin", hugepages.SWITCH: "0"}
    assert "GLIBC_TUNABLES" not in hugepages.without_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert not hugepages.wanted(child, thp_mode="madvise")  # and it does not restart itself


def test_thp_mode_is_the_bracketed_choice(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hugepages._thp_mode(str(f)) == "madvise"
    assert hugepages._thp_mode(str(tmp_path / "missing")) == ""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or hugepages._glibc_version() < (2, 35), reason="needs glibc >= 2.35"
)
def test_restart_only_when_it_helps_and_never_twice():
    assert hugepages.wanted({}, thp_mode="madvise")
    assert not hugepages.wanted({}, thp_mode="always")  # the kernel already gives huge pages
    assert not hugepages.wanted({}, thp_mode="never")
    assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, thp_mode="madvise")  # the user's
    assert not hugepages.wanted({hugepages.SWITCH: "0"}, thp_mode="madvise")
    # Not where JAX runs on an accelerator: XLA's buffers are on the device there.
    assert hugepages.wanted({"JAX_PLATFORMS": "cpu"}, thp_mode="madvise")
    assert not hugepages.wanted({"JAX_PLATFORMS": "tpu"}, thp_mode="madvise")
    assert not hugepages.wanted({"JAX_PLATFORMS": "cuda,cpu"}, thp_mode="madvise")


def test_an_installed_accelerator_plugin_means_no_restart(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "libtpu" else real(name))
    assert hugepages.accelerator({}) == "the libtpu plugin is installed"
    assert not hugepages.wanted({}, thp_mode="madvise")
    assert hugepages.accelerator({"JAX_PLATFORMS": "cpu"}) == ""  # the user's choice wins


def test_a_restarted_process_runs_its_command_again_with_the_tunable():
    code = (
        "import os, sys; from flowers_jax import hugepages; print('start', flush=True); "
        "hugepages.restart_with_huge_pages(); print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.SWITCH)}
    out = subprocess.run([sys.executable, "-c", code, "arg"], env=env, capture_output=True, text=True, check=True)
    if hugepages.wanted(env):
        assert out.stdout.splitlines() == ["start", "start", "glibc.malloc.hugetlb=1 ['arg']"]
        assert out.stderr.count("flowers_jax: restarting with GLIBC_TUNABLES=glibc.malloc.hugetlb=1") == 1
    else:  # this machine's kernel or libc would not use it: no restart
        assert out.stdout.splitlines() == ["start", "None ['arg']"]

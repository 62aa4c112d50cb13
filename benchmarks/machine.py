"""The machine a benchmark ran on, as its printout and results file state it.

The development machines change CPU between sessions (the same AMD EPYC name with and without AVX-512,
about 2.5x apart in XLA's CPU throughput), so a timing is quoted with the CPU model, its core count and
whether it has AVX-512. Read from /proc/cpuinfo (Linux); elsewhere the model is "unknown CPU".
"""

from __future__ import annotations

import os


def cpu(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """{"cpu_model": str, "cpu_cores": int (usable by this process), "avx512": bool | None (None: unknown)}."""
    model, flags = "unknown CPU", None
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key == "flags" and flags is None:
                    flags = value.split()
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    avx512 = None if flags is None else "avx512f" in flags
    return {"cpu_model": model, "cpu_cores": cores, "avx512": avx512}


def describe(info: dict | None = None) -> str:
    """One line, e.g. "2 CPU cores (AMD EPYC, AVX-512)" or "... (AMD EPYC, no AVX-512)"."""
    info = info or cpu()
    isa = {True: ", AVX-512", False: ", no AVX-512", None: ""}[info["avx512"]]
    return f"{info['cpu_cores']} CPU cores ({info['cpu_model']}{isa})"

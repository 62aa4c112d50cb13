"""One training run per workdir: <workdir>/LOCK names the run that trains there.

Two trainers in one workdir would resume from the same checkpoint, write the same step folders
and every metrics row twice. The trainer therefore holds <workdir>/LOCK while it runs: JSON with
the holder's host, pid and start time (and, to tell a reused pid or a rebooted host apart, the
boot id and the pid's start tick). A second trainer stops naming the holder; a lock whose holder
is dead (same host: no such pid, another process under that pid, or another boot) is taken over,
saying so. Readers (eval, predict, calibrate, export) never take it: they only read.

On a pod every process of a run shares the workdir, so the lock belongs to the run: process 0
takes it and tells the others the outcome through a collective, so every process of a refused run
stops with the same message instead of waiting at the first all-reduce for a process 0 that left.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from etils import epath

log = logging.getLogger(__name__)

LOCK_FILE = "LOCK"


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir's lock."""


def _lock_path(workdir: str) -> epath.Path:
    return epath.Path(workdir) / LOCK_FILE


def _boot_id() -> str | None:
    try:
        return epath.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_start(pid: int) -> str | None:
    """The pid's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if unknown."""
    try:
        stat = epath.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # the command name, in parentheses, may hold spaces


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _this_run() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "processes": jax.process_count(),
        "boot_id": _boot_id(),
        "pid_start": _pid_start(pid),
    }


def _stale_reason(holder: dict[str, Any]) -> str | None:
    """Why the holder is certainly gone, or None when it may still be running (or is on another host)."""
    if holder.get("host") != socket.gethostname():
        return None  # no way to look at another host's processes
    if holder.get("boot_id") and holder["boot_id"] != _boot_id():
        return "the host has rebooted since"
    pid = int(holder["pid"])
    if not _pid_alive(pid):
        return "that process is no longer running"
    if holder.get("pid_start") and holder["pid_start"] != _pid_start(pid):
        return "another process now has that pid"
    return None


def _describe(workdir: str, holder: dict[str, Any]) -> str:
    return (
        f"workdir {workdir} is being trained by pid {holder.get('pid')} on host {holder.get('host')} since "
        f"{holder.get('started')}; stop it or choose another --workdir (if that run is gone, delete "
        f"{_lock_path(workdir)})"
    )


def _create_exclusive(path: epath.Path, text: str) -> bool:
    """Writes `text` to `path` unless it exists; True when this call created it."""
    if "://" not in str(path):
        try:  # O_EXCL: the create is atomic, exactly one of two racing trainers wins
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return True
    # Object stores (gs://): GCS can create-if-absent atomically (ifGenerationMatch=0), but neither
    # epath nor tf.io.gfile exposes it. Best available: check, write, read back. Two trainers started
    # within the same second can both pass the check; the read-back catches the one whose write was
    # overwritten, but the one that wrote first may not notice: don't start two runs at once on purpose.
    if path.exists():
        return False
    path.write_text(text)
    return path.read_text() == text


def _read(path: epath.Path) -> dict[str, Any] | None:
    """The lock's holder, None if the lock vanished meanwhile."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        int(holder["pid"])
    except (ValueError, KeyError, TypeError):
        raise WorkdirLockedError(
            f"{path} exists but is not a lock this code wrote ({text[:200]!r}); "
            "if no training runs in this workdir, delete it"
        ) from None
    return holder


def _acquire(workdir: str) -> str:
    """Takes the lock (taking over a stale one); returns the text written. Process 0 only."""
    path = _lock_path(workdir)
    text = json.dumps(_this_run())
    for _ in range(3):  # a lock released or taken over meanwhile: look again
        if _create_exclusive(path, text):
            return text
        holder = _read(path)
        if holder is None:
            continue
        reason = _stale_reason(holder)
        if reason is None:
            raise WorkdirLockedError(_describe(workdir, holder))
        # Rename, then check it was the stale lock that moved: a trainer that took the lock over in
        # between must keep it (it is put back, and looked at again).
        aside = path.parent / f"{LOCK_FILE}.stale-{os.getpid()}"
        try:
            path.rename(aside)
        except FileNotFoundError:
            continue
        if json.loads(aside.read_text()) != holder:
            aside.rename(path)
            continue
        aside.unlink()
        log.warning(
            "taking over the stale lock of pid %s on host %s (since %s): %s",
            holder["pid"],
            holder["host"],
            holder.get("started"),
            reason,
        )
    raise WorkdirLockedError(f"{path}: the lock kept changing hands; is another trainer starting here?")


def _release(workdir: str, text: str) -> None:
    path = _lock_path(workdir)
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:  # still ours
            path.unlink()


def _agree(error: str) -> str:
    """Process 0's outcome, on every process ("" = locked fine)."""
    if jax.process_count() == 1:
        return error
    from jax.experimental import multihost_utils

    refused = int(multihost_utils.broadcast_one_to_all(np.int32(bool(error))))
    if refused and not error:
        return "process 0 could not take the workdir's lock (its output names the holder)"
    return error


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds the workdir's lock for the run inside the block; released however the block exits.

    Every process of the run must enter it (it synchronises them). Raises WorkdirLockedError,
    naming the holder, when another live run has the workdir.
    """
    text = error = ""
    if jax.process_index() == 0:
        try:
            text = _acquire(workdir)
        except WorkdirLockedError as e:
            error = str(e)
    error = _agree(error)
    if error:
        if text:
            _release(workdir, text)
        raise WorkdirLockedError(error)
    try:
        yield
    finally:
        if text:
            _release(workdir, text)

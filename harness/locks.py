"""One writer per run directory (and per world being built): an exclusive file lock held for the work.

``exclusive(path, what)`` locks ``<path>.lock`` (beside the directory, so removing the directory
keeps the lock) with ``filelock``. A second process waits for it -- saying on stderr which process
holds it -- and then carries on (typically it finds the finished run and reuses it). The holder is
written to ``<path>.lock.owner`` (pid, host, command, since) while the lock is held: the lock file
itself is truncated by every process that tries it.

``BEIT3_LOCK_TIMEOUT_S`` bounds the wait (default: wait as long as the holder works); when it runs
out, :class:`LockedError` names the holder.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

TIMEOUT_ENV = "BEIT3_LOCK_TIMEOUT_S"
# Set by a process that holds a run directory's lock for the torchrun children it launches there.
HELD_ENV = "BEIT3_RUN_LOCK_HELD"


class LockedError(RuntimeError):
    """Another process holds the lock and did not let go within the allowed time."""


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


def holder(path: str | Path) -> str:
    """Who holds the lock of ``path``, in words (from its owner file)."""
    owner = lock_path(path).with_name(lock_path(path).name + ".owner")
    try:
        info = json.loads(owner.read_text())
    except (OSError, ValueError):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"process {info.get('pid')} on {info.get('host')} ({info.get('command', '?')}, since {since})"


def _timeout(timeout_s: float | None) -> float:
    if timeout_s is not None:
        return timeout_s
    raw = os.environ.get(TIMEOUT_ENV, "")
    return float(raw) if raw else -1.0  # filelock: negative = wait forever


@contextlib.contextmanager
def exclusive(path: str | Path, what: str, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (a run or world directory) for the body.

    Args:
        path: the directory the lock guards; ``<path>.lock`` is created beside it.
        what: how messages name it (``run mdm-smoke-seed0``).
        timeout_s: how long to wait for another holder; None: ``$BEIT3_LOCK_TIMEOUT_S``, else forever.

    Raises:
        LockedError: the wait ran out; the message names the holder.
    """
    target = lock_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"harness: {what} is being written by {holder(path)}; waiting for it", file=sys.stderr, flush=True)
        try:
            lock.acquire(timeout=_timeout(timeout_s))
        except Timeout:
            raise LockedError(
                f"{what} is locked by {holder(path)} ({target}); wait for it to finish, or stop that process"
            ) from None
    owner = target.with_name(target.name + ".owner")
    owner.write_text(json.dumps({"pid": os.getpid(), "host": platform.node(), "since": time.time(),
                                 "command": " ".join(os.path.basename(a) if i == 0 else a
                                                     for i, a in enumerate(sys.argv))[:200]}))
    try:
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()

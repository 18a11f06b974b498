"""An exclusive lock across processes: a lock file created with ``O_CREAT | O_EXCL``.

The file holds ``<host> <pid> <time>``. A lock whose owner process is gone (same host), or
older than :data:`LOCK_STALE_S` when its owner cannot be checked (another host), is broken
with an atomic rename, so a crashed process never blocks the others.

Example:
    >>> from keras_effv2.weights.lock import file_lock
    >>> # with file_lock("/cache/.b0.in1k.lock"):
    >>> #     ...  # one process at a time converts b0.in1k
"""

from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import contextmanager

# A lock older than this whose owner cannot be checked (another host) is taken as stale.
LOCK_STALE_S = 6 * 3600
logger = logging.getLogger("keras_effv2")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_is_stale(content: str, mtime: float) -> bool:
    parts = content.split()
    if len(parts) >= 2 and parts[0] == socket.gethostname() and parts[1].isdigit():
        return not _pid_alive(int(parts[1]))
    return time.time() - mtime > LOCK_STALE_S  # another host, or not yet written


def _break_if_stale(path: str) -> bool:
    """Remove ``path`` if its owner is gone; ``True`` when the caller should retry now."""
    try:
        mtime = os.stat(path).st_mtime
        with open(path) as f:
            content = f.read()
    except OSError:
        return True  # released meanwhile
    if not _lock_is_stale(content, mtime):
        return False
    aside = f"{path}.stale-{os.getpid()}"
    try:
        os.rename(path, aside)  # atomic: only one breaker wins
    except OSError:
        return True
    try:
        with open(aside) as f:
            if f.read() != content:  # a fresh lock was taken meanwhile: put it back
                try:
                    os.link(aside, path)
                except OSError:
                    pass
            else:
                logger.warning("keras_effv2: removed stale lock %s (%s)", path, content.strip())
    finally:
        os.remove(aside)
    return True


@contextmanager
def file_lock(path: str, poll_s: float = 0.1):
    """Hold ``path`` as an exclusive lock for the ``with`` block (waits while another has it)."""
    token = f"{socket.gethostname()} {os.getpid()} {time.time():.6f}\n"
    announced = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _break_if_stale(path):
                continue
            if not announced:
                logger.info("keras_effv2: waiting for %s (another process is converting)", path)
                announced = True
            time.sleep(poll_s)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(token)
        break
    try:
        yield
    finally:
        try:
            with open(path) as f:
                ours = f.read() == token
            if ours:
                os.remove(path)
        except OSError:
            pass

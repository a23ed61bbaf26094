"""python benchmarks/guard.py COMMAND...: run COMMAND, and kill everything below this process
once it ends or its parent dies, even by kill -9 (Linux's parent-death signal reaches a direct
child only; as a subreaper this process keeps the orphans of torchrun's agent below it).
gpu_check.py runs each step under it. No torch here: it must be watching within milliseconds.
"""
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path


def descendants(pid):
    """The processes below ``pid``, as Linux's /proc tells (none elsewhere)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def guard(command):
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    status = 1
    try:
        if os.getppid() != 1:  # else the parent died before the signal was set
            status = subprocess.call(command)
    finally:
        for pid in descendants(os.getpid()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return status


if __name__ == "__main__":
    sys.exit(guard(sys.argv[1:]))

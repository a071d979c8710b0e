"""One writer per folder: `with folder_lock(run_dir): ...` refuses a second writer at once, naming the first.

The lock is an advisory `fcntl.flock` on a file in the folder; the kernel releases it when its holder
exits, however it exits (`kill -9` included), so a crashed writer never leaves the folder locked. The file
holds the holder's pid so that the refusal can say who holds it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from anatomist.core.errors import AnatomistError

LOCK = ".anatomist-lock"
_HELD: dict[Path, int] = {}  # folders this process holds, with how deep: a holder may take its own lock again


@contextmanager
def folder_lock(folder: str | Path, what: str = "writing") -> Iterator[Path]:
    """Hold the lock of `folder` (created if missing) for the block; AnatomistError if another process holds it.

    `what` names the work in the refusal ("building its report", "running"). The lock file stays behind
    (empty once released): deleting it while another process waits on it would let two writers in.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:  # e.g. a run that builds its own report: flock would refuse our own second descriptor
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    path = folder / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            raise AnatomistError(
                f"{folder}: another anatomist process{f' (pid {holder})' if holder else ''} is {what} in this "
                "folder; wait for it to finish or use another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = 1
        try:
            yield folder
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 32).decode(errors="replace").strip()

"""The file lock: one exclusive `flock` on a file, for processes that share a folder (sweep cells, data fetches)."""
import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[IO | None]:
    """Hold an exclusive lock on `path` (made, with its folder, if missing) inside the block, waiting for its holder
    if `wait`. Yields the open lock file, whose descriptor a child process may inherit to go on holding the lock
    (subprocess's `pass_fds`), or None when `wait` is false and another process holds it. The lock is released when
    the last process holding the descriptor closes it or dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        yield handle

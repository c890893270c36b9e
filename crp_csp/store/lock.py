"""A single-writer lock beside a store file, released by the OS when its holder dies."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class StoreLockedError(RuntimeError):
    """Another process is writing this store."""


class WriterLock:
    """``with WriterLock(path):`` holds ``<path>.lock`` exclusively (``fcntl.flock``).

    A second writer gets :class:`StoreLockedError` at once. A killed holder, even by SIGKILL,
    releases the lock, so a resumed run never has to clean up.
    """

    def __init__(self, store_path: str | os.PathLike):
        self.path = Path(f"{store_path}.lock")
        self._handle = None

    def __enter__(self) -> "WriterLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreLockedError(
                f"{self.path.with_suffix('')} is being written by {holder}; wait for it to finish "
                "or stop it (the lock goes away with the process)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

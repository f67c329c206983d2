"""One writer per run folder: an exclusive OS lock on a lock file inside the folder, held for the whole run. The
operating system releases it when the process ends, however it ends (a crash or `kill -9` included), so there is
never a stale lock to clean up; the file itself stays and names the last holder."""

from __future__ import annotations

import os
import socket
import sys
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO

from crossgraft.errors import CrossgraftError, OutputError
from crossgraft.files import ensure_folder

LOCK_FILE = ".crossgraft.lock"

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(handle: IO[str]) -> bool:
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(handle: IO[str]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(handle: IO[str]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(handle: IO[str]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class RunFolderInUse(CrossgraftError):
    """Another process is writing into the run folder."""


class RunLock:
    """`with RunLock(folder):` — or `acquire()` / `release()` — makes this process the folder's one writer."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self._handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> RunLock:
        """Take the lock (creating the folder) or stop at once, naming the holder."""
        if self.held:
            return self
        path = ensure_folder(self.folder) / LOCK_FILE
        try:
            handle = open(path, "a+", encoding="utf-8")
        except OSError as error:
            raise OutputError(f"cannot write the lock file {path}: {error.strerror or error}") from error
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its name yet"
            handle.close()
            raise RunFolderInUse(
                f"{self.folder} is in use by another run ({holder}); wait for it to end or choose another folder "
                "(nothing was written)"
            )
        handle.seek(0)
        handle.truncate()
        started = datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {' '.join(sys.argv)}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            _unlock(self._handle)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()

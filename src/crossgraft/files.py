"""Writing files so that an interruption never leaves half of one: the one atomic-write helper."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: Path | str, binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on success it is flushed to disk and renamed over `path`
    (an atomic step), on any error it is removed. Readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write a text file (utf-8) atomically; returns its path."""
    with atomic_write(path) as handle:
        handle.write(text)
    return Path(path)

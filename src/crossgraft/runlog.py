"""One log file per run, plus the same lines on the terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from crossgraft.errors import OutputError
from crossgraft.files import ensure_folder

FORMAT = "%(asctime)s %(levelname)s %(message)s"


class PendingRecords(logging.Handler):
    """Holds a run's first records until its log file exists, so that a run refused while it is being set up
    writes nothing, and one that starts still has those lines in its log."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def console_logging(name: str = "crossgraft") -> logging.Logger:
    """Log INFO and above to stdout only, keeping the records for `setup_run_logging` to write to the file."""
    logger = _reset(name)
    logger.addHandler(_console())
    logger.addHandler(PendingRecords())
    return logger


def setup_run_logging(save_dir: Path, filename: str | Sequence[str], name: str = "crossgraft") -> logging.Logger:
    """Log INFO and above to `save_dir/filename` (appending, so a resumed run keeps its history; several names: the
    same lines in each) and stdout."""
    save_dir = ensure_folder(save_dir)
    handlers = []
    for file_name in [filename] if isinstance(filename, str) else list(filename):
        try:
            handler = logging.FileHandler(save_dir / file_name, encoding="utf-8")
        except OSError as error:
            raise OutputError(f"cannot write the log {save_dir / file_name}: {error.strerror or error}") from error
        handler.setFormatter(logging.Formatter(FORMAT))
        handlers.append(handler)
    pending = [r for h in logging.getLogger(name).handlers if isinstance(h, PendingRecords) for r in h.records]
    for record in pending:  # what console_logging kept while the run was being set up
        for handler in handlers:
            handler.handle(record)
    logger = _reset(name)
    for handler in handlers:
        logger.addHandler(handler)
    logger.addHandler(_console())
    return logger


def _reset(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    return logger


def _console() -> logging.Handler:
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    return console

"""One log file per run, plus the same lines on the terminal."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from crossgraft.errors import OutputError
from crossgraft.files import ensure_folder

FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_run_logging(save_dir: Path, filename: str, name: str = "crossgraft") -> logging.Logger:
    """Log INFO and above to `save_dir/filename` (appending, so a resumed run keeps its history) and stdout."""
    save_dir = ensure_folder(save_dir)
    try:
        file_handler = logging.FileHandler(save_dir / filename, encoding="utf-8")
    except OSError as error:
        raise OutputError(f"cannot write the log {save_dir / filename}: {error.strerror or error}") from error
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    file_handler.setFormatter(logging.Formatter(FORMAT))
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(file_handler)
    logger.addHandler(console)
    logger.propagate = False
    return logger

"""The project's error classes. Every error that bad input or contradictory settings can cause derives from
`CrossgraftError`: the command line prints its message and exits with status 2. Any other exception is a bug
and keeps its traceback."""

from __future__ import annotations


class CrossgraftError(Exception):
    """Something the user can fix: a missing or corrupt file, settings that cannot work. The message says what."""


class ConfigError(CrossgraftError, ValueError):
    """Settings that cannot work or contradict each other, found before anything is written."""


class ShapeError(CrossgraftError, ValueError):
    """Tensors whose shapes do not fit the module they are given to; the message names both shapes and the flag
    that sets each."""


class DataError(CrossgraftError, ValueError):
    """Bad or missing input data. The message names the file or record at fault."""


class OutputError(CrossgraftError):
    """An output folder or file that cannot be written (no permission, a file where a folder should be, …)."""


class TrainingError(CrossgraftError, RuntimeError):
    """Training cannot go on (a NaN loss, a run folder that holds another run, …); the message says why."""

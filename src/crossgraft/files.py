"""Writing files and folders so that an interruption never leaves half of one (the atomic-write helpers), and the
one careful reader of a user's text and JSON Lines files."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from crossgraft.errors import CrossgraftError, DataError, OutputError
from crossgraft.limits import MAX_NESTING, MAX_SETTINGS_BYTES


def ensure_folder(folder: Path | str) -> Path:
    """Create a folder (and its parents) for output; an impossible one is an OutputError saying why."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as error:
        raise OutputError(f"cannot create the folder {folder}: a file of that name is in the way") from error
    except NotADirectoryError as error:
        raise OutputError(f"cannot create the folder {folder}: part of its path is a file, not a folder") from error
    except OSError as error:
        raise OutputError(f"cannot create the folder {folder}: {error.strerror or error}") from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into the folder {folder}: permission denied")
    return folder


@contextmanager
def atomic_write(path: Path | str, binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on success it is flushed to disk and renamed over `path`
    (an atomic step), on any error it is removed. Readers see the old file or the new one, never a part."""
    path = Path(path)
    ensure_folder(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            handle = open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="")
        except OSError as error:
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.replace(tmp, path)
        except OSError as error:
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def with_umask_modes(folder: Path | str) -> Path:
    """Give every file under `folder` (which we just wrote) the mode the user's umask gives a new file (0644 under
    umask 022). Libraries that write through a private temporary file (safetensors, ONNX's external data) leave
    0600, which a team sharing a run folder cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)
    return Path(folder)


@contextmanager
def atomic_folder(out: Path | str) -> Iterator[Path]:
    """Write a folder all or nothing: yields a fresh staging folder beside `out`, renamed to `out` when the block
    ends; a block that fails removes it. `out` may not exist yet or be an empty folder, nothing else."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out} exists and is not empty; choose a new folder")
    staging = ensure_folder(out.parent) / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by a process that was killed
    staging.mkdir()
    try:
        yield staging
        with_umask_modes(staging)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_folder(staging: Path | str, out: Path | str) -> None:
    """Swap a finished `staging` folder in as `out`, replacing the folder there. Two renames: `out` moves aside to
    `.NAME.previous-PID`, then `staging` (named `.NAME.partial-PID` by its writer) becomes `out`, then the old one is
    removed. A kill between the renames leaves no `out`; `recover_folder` (which readers and the next writer call)
    puts the old folder back, so a reader always finds the old folder or the new one."""
    staging, out = Path(staging), Path(out)
    with_umask_modes(staging)
    previous = out.parent / f".{out.name}.previous-{os.getpid()}"
    if out.exists():
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)


def recover_folder(out: Path | str, wait_seconds: float = 5.0) -> list[str]:
    """Clean up after a `replace_folder` (or a writer of `.NAME.partial-PID`) that was killed: when `out` is missing
    and a killed swap moved it aside, move it back; remove the other leftovers of dead processes. A live process's
    leftovers are its work in progress: when one is between its two renames, wait (up to `wait_seconds`) for its
    `out` to appear. Returns what was done, one line each, for the caller to log; an unwritable parent is left as
    it is (a reader then finds what is there)."""
    out = Path(out)
    done: list[str] = []
    deadline = time.monotonic() + wait_seconds
    while True:
        leftovers = [(path, _writer_pid(path)) for path in _swap_leftovers(out)]
        busy = [path for path, pid in leftovers if pid is not None and _alive(pid)]
        dead = [path for path, pid in leftovers if path not in busy]
        if out.exists() or not any(".previous-" in path.name for path in busy) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    try:
        previous = sorted((p for p in dead if ".previous-" in p.name), key=lambda p: p.stat().st_mtime)
        if not out.exists() and previous:
            previous[-1].rename(out)
            dead.remove(previous[-1])
            done.append(f"restored {out} from {previous[-1].name}, which an interrupted replacement left")
        for path in dead:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path.name}, left by an interrupted write of {out}")
    except OSError:
        pass
    return done


def _swap_leftovers(out: Path) -> list[Path]:
    if not out.parent.is_dir():
        return []
    prefixes = (f".{out.name}.previous-", f".{out.name}.partial-")
    return [path for path in out.parent.iterdir() if path.name.startswith(prefixes)]


def _writer_pid(path: Path) -> int | None:
    suffix = path.name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else None


def _alive(pid: int) -> bool:
    """Whether another process of that id runs (our own id counts as dead: our swaps are not in progress now)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:
        return False
    return True


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write a text file (utf-8) atomically; returns its path."""
    with atomic_write(path) as handle:
        handle.write(text)
    return Path(path)


def read_text(path: Path | str, what: str = "file", max_bytes: int | None = None) -> str:
    """A utf-8 text file; a missing, unreadable or non-utf-8 file (or one over `max_bytes`) is a DataError naming it
    (and the byte)."""
    path = Path(path)
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise DataError(f"{path}: {path.stat().st_size:,} bytes, more than a {what} holds (at most {max_bytes:,})")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise DataError(f"{what} not found: {path}") from error
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not utf-8 text (byte {error.start}: {error.reason}); save it as utf-8") from error
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from error


@dataclass(frozen=True)
class JsonLine:
    """One line of a JSON Lines file: its 1-based number in the file and its parsed value."""

    number: int
    value: Any


def read_json_lines(
    path: Path | str,
    what: str = "file",
    *,
    broken_lines: list[JsonLine] | None = None,
    error: type[DataError] = DataError,
) -> list[JsonLine]:
    """Every non-empty line of a JSON Lines file, parsed (both families' .jsonl files are read here). A line that is
    not JSON is an `error` (a DataError) naming the file and line; when a `broken_lines` list is given, such a line
    is added to it instead (its text as the value) and reading goes on (a file an interrupted writer cut short ends
    in such a line)."""
    lines = []
    for number, line in enumerate(read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = parse_json(line, f"{path}:{number}", error)
        except DataError:
            if broken_lines is None:
                raise
            broken_lines.append(JsonLine(number, line))
            continue
        lines.append(JsonLine(number, value))
    return lines


def read_settings_text(path: Path | str, what: str, error: type[CrossgraftError] = DataError) -> str:
    """A small settings file's text (utf-8, at most MAX_SETTINGS_BYTES); every problem is one `error` naming it."""
    try:
        return read_text(path, what, max_bytes=MAX_SETTINGS_BYTES)
    except DataError as problem:
        raise error(str(problem)) from problem


def read_json_object(path: Path | str, what: str, error: type[CrossgraftError] = DataError) -> dict[str, Any]:
    """A small json settings file that must hold an object (`read_settings_text`, `parse_json`)."""
    document = parse_json(read_settings_text(path, what, error), str(path), error)
    if not isinstance(document, dict):
        raise error(f"{path}: expected a JSON object, found {type(document).__name__}")
    return document


def parse_json(text: str, where: str, error: type[CrossgraftError] = DataError) -> Any:
    """A JSON document read from a user's file, checked by `check_nesting`; anything else is one `error` naming
    `where` (a syntax error, nesting too deep to read, a number with more digits than Python converts)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError, MemoryError) as problem:
        raise error(f"{where}: not valid json ({json_problem(problem)})") from problem
    check_nesting(value, where, error)
    return value


def parse_yaml(text: str, where: str, error: type[CrossgraftError] = DataError) -> Any:
    """A YAML document (safe subset: plain data only) read from a user's file, checked by `check_nesting`."""
    if _flow_depth(text) > MAX_NESTING:  # refused before PyYAML spends seconds recursing into it
        raise error(f"{where}: nested more than {MAX_NESTING} levels deep")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise error(f"{where}: not valid yaml ({str(problem)[:200]})") from problem
    except (ValueError, RecursionError, MemoryError) as problem:
        raise error(f"{where}: not valid yaml ({json_problem(problem)})") from problem
    check_nesting(value, where, error)
    return value


def _flow_depth(text: str) -> int:
    """The deepest nesting of YAML flow brackets ([ and {) outside quoted text."""
    depth = deepest = 0
    quote, escaped, previous = "", False, "\n"
    for char in text:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
        elif char == '"' or (char == "'" and previous in "\n\t ,[{:-"):
            quote = char
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
        previous = char
    return deepest


def check_nesting(value: Any, where: str, error: type[CrossgraftError] = DataError) -> None:
    """Refuse data nested more than MAX_NESTING levels deep, one container reached twice (a YAML alias, which can
    also make a structure that contains itself: code that walks the data could recurse without end) and mapping
    keys that are not text (YAML allows numbers, null and more)."""
    seen: set[int] = set()
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_NESTING:
            raise error(f"{where}: nested more than {MAX_NESTING} levels deep")
        if id(item) in seen:
            raise error(f"{where}: a part is repeated by reference (a YAML alias such as *name); write it out")
        seen.add(id(item))
        if isinstance(item, dict) and not all(isinstance(key, str) for key in item):
            key = next(key for key in item if not isinstance(key, str))
            raise error(f"{where}: a key that is not text ({str(key)[:40]!r}); every key must be a name")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)


def json_problem(problem: Exception) -> str:
    """What json.loads found wrong, in a few words (its own message for a syntax error)."""
    if isinstance(problem, json.JSONDecodeError):
        return f"{problem.msg}, line {problem.lineno} column {problem.colno}"
    if isinstance(problem, RecursionError):
        return "nested too deeply to read"
    return str(problem).split(";")[0][:120]  # e.g. an integer with more digits than Python converts

"""Limits on what a user's files may hold, as settings (no reader here: `crossgraft.images` applies them)."""

from __future__ import annotations

from crossgraft.errors import ConfigError, CrossgraftError

# PIL warns above Image.MAX_IMAGE_PIXELS (89,478,485 by default) and refuses above twice it; the refusal is what the
# flag sets
DEFAULT_MAX_PIXELS = 2 * 89_478_485  # 178,956,970 pixels, e.g. 13,377 x 13,377
MAX_PIXELS_FLAG = "--max_image_pixels"
MAX_PIXELS_HELP = (
    f"decompression-bomb guard: images with more pixels are refused (default {DEFAULT_MAX_PIXELS:,}); raise it "
    "for large images you trust"
)
MAX_NESTING = 100  # levels of lists / objects in a json or yaml file a user gives (real files use fewer than 10)
MAX_SETTINGS_BYTES = 16 * 2**20  # a --config file or a class-description table
MAX_NAME_LENGTH = 200  # characters of a name that becomes a file or folder name (file systems allow 255 bytes)


def path_component(name: str, what: str, error: type[CrossgraftError] = ConfigError) -> str:
    """`name` if it can be one file or folder name inside an output folder, else an `error` naming `what`: every
    name that becomes part of a path (a class, a defect type) goes through here, so none can climb out of --out."""
    problem = None
    if name in ("", ".", ".."):
        problem = "is empty" if not name else f"is {name!r}"
    elif "/" in name or "\\" in name or "\0" in name:
        problem = "holds a path separator or a NUL character"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"is {len(name):,} characters long (at most {MAX_NAME_LENGTH})"
    if problem:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise error(f"{what} {shown!r} {problem}: it becomes a file name, so it must be one plain name")
    return name

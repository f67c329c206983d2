"""Structured mutations of a valid file, for the fuzz suite: a valid document (a Python value) has some of its nodes
swapped for other types, keys dropped or added, nesting and sizes pushed; it is then written as json, yaml, JSON
Lines or a Python literal, in some encoding, and perhaps cut short."""

from __future__ import annotations

import copy
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from crossgraft.errors import CrossgraftError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
DEADLINE_MS = 5000  # a reader that takes longer on a small file is hanging, not slow
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # reproducible in CI; FUZZ_EXAMPLES=5000 explores further by hand
    deadline=DEADLINE_MS,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", ".", "..", "../../x", "/abs", "a/b", "0", "-1", "1e999", "true", "nan", "\x00", "é" * 300])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
DEPTHS = [3, 40, 150, 3000]  # past MAX_NESTING, and past the parser's own recursion limit
HUGE = ["9" * 5000, "1" * 100_000]  # integers with more digits than Python converts by default
LONG_TEXT = ["x" * 10_000, "é" * 100_000]


def nodes(document: Any, path: tuple = ()) -> list[tuple]:
    """The path (keys and indices from the root) of every node of a json-like document."""
    found = [path]
    if isinstance(document, dict):
        for key, value in document.items():
            found += nodes(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += nodes(value, (*path, index))
    return found


def get(document: Any, path: tuple) -> Any:
    for part in path:
        document = document[part]
    return document


def put(document: Any, path: tuple, value: Any) -> Any:
    """`document` with the node at `path` replaced (the root itself when `path` is empty)."""
    if not path:
        return value
    parent = get(document, path[:-1])
    parent[path[-1]] = value
    return document


@st.composite
def mutated_document(draw: st.DrawFn, valid: Any) -> tuple[Any, dict[str, str]]:
    """A mutation of `valid`, and the raw text (marker -> text) to splice in where nesting or sizes are pushed
    beyond what the serialiser can write."""
    document = copy.deepcopy(valid)
    raw: dict[str, str] = {}
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = nodes(document)
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["swap", "drop", "add", "nest", "huge", "long", "empty", "duplicate"]))
        node = get(document, path)
        if kind == "swap":
            document = put(document, path, draw(json_values))
        elif kind == "drop" and isinstance(node, dict) and node:
            node.pop(draw(st.sampled_from(sorted(node, key=str))))
        elif kind == "drop" and isinstance(node, list) and node:
            node.pop(draw(st.integers(min_value=0, max_value=len(node) - 1)))
        elif kind == "add" and isinstance(node, dict):
            node[draw(st.text(max_size=10))] = draw(json_values)
        elif kind == "add" and isinstance(node, list):
            node.append(draw(json_values))
        elif kind == "nest":
            depth = draw(st.sampled_from(DEPTHS))
            marker = f"__raw_{len(raw)}__"
            raw[marker] = "[" * depth + json.dumps(node) + "]" * depth
            document = put(document, path, marker)
        elif kind == "huge":
            marker = f"__raw_{len(raw)}__"
            raw[marker] = draw(st.sampled_from(HUGE))
            document = put(document, path, marker)
        elif kind == "long":
            document = put(document, path, draw(st.sampled_from(LONG_TEXT)))
        elif kind == "empty":
            document = put(document, path, draw(st.sampled_from([{}, [], "", None])))
        elif kind == "duplicate" and isinstance(node, list) and node:
            node.extend(copy.deepcopy(node[:1]) * draw(st.integers(min_value=1, max_value=3)))
    return document, raw


def splice(text: str, raw: dict[str, str]) -> str:
    for marker, replacement in raw.items():
        text = text.replace(json.dumps(marker), replacement).replace(marker, replacement)
    return text


def as_json(document: Any) -> str:
    return json.dumps(document, indent=1)


def as_json_lines(document: Any) -> str:
    """Each element of a list on its own line (anything else: one line)."""
    items = document if isinstance(document, list) else [document]
    return "".join(json.dumps(item) + "\n" for item in items)


def as_yaml(document: Any) -> str:
    return json.dumps(document, indent=1)  # JSON is YAML's flow style; YAML-only forms come from YAML_INJECTIONS


def as_python(name: str) -> Callable[[Any], str]:
    def write(document: Any) -> str:
        return f"# generated\n{name} = {document!r}\n"

    return write


YAML_INJECTIONS = [
    "a: &x [1, *x]\n",
    "!!python/object/apply:os.system ['echo hi']\n",
    "a: !!binary AAAA\n",
    "? [1, 2]\n: value\n",
    "a: 1\na: 2\n",
    "%YAML 1.1\n---\na: 1\n---\nb: 2\n",
    "a: b: c\n",
    "\t- tab\n",
]


@st.composite
def mutated_bytes(draw: st.DrawFn, valid: Any, write: Callable[[Any], str], yaml: bool = False) -> bytes:
    """A valid document, mutated, written by `write`, encoded in some way and perhaps cut short."""
    if yaml and draw(st.integers(min_value=0, max_value=9)) == 0:
        text = draw(st.sampled_from(YAML_INJECTIONS))
    else:
        document, raw = draw(mutated_document(valid))
        text = splice(write(document), raw)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "bytes"]))
    if encoding == "bytes":
        data = text.encode("utf-8") + draw(st.binary(min_size=1, max_size=8))
    else:
        data = text.encode(encoding, errors="replace")
    if draw(st.booleans()) and data:
        data = data[: draw(st.integers(min_value=0, max_value=len(data) - 1))]  # cut short
    return data


COUNTER = itertools.count()


def written(folder: Path, name: str, data: bytes) -> Path:
    """`data` as FOLDER/N/NAME, a fresh subfolder per example."""
    path = folder / f"{next(COUNTER)}" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def reads_or_refuses(read: Callable[..., Any], *args: Any) -> Any:
    """The reader's result, or None when it refused with a CrossgraftError (any other exception fails the test)."""
    try:
        return read(*args)
    except CrossgraftError:
        return None

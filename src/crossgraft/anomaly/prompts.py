"""AA-CLIP's prompt ensemble (docs/aa-clip.md): 6 normal and 10 abnormal sentences per class."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from crossgraft.anomaly.catalog import PUBLIC_DATA_ROOTS
from crossgraft.errors import ConfigError
from crossgraft.files import check_nesting, parse_json, read_settings_text

NORMAL_STATES = ("{}", "a {}", "the {}")
ABNORMAL_STATES = ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage")
TEMPLATES = ("{}.", "a photo of {}.")


def class_sentences(class_text: str) -> tuple[list[str], list[str]]:
    """(normal sentences, abnormal sentences) for one class text, in the public code's order."""

    def expand(states: tuple[str, ...]) -> list[str]:
        return [template.format(state.format(class_text)) for state in states for template in TEMPLATES]

    return expand(NORMAL_STATES), expand(ABNORMAL_STATES)


# {class: description}, or {dataset: {class: description}} as the public code's REAL_NAMES table is
DescriptionTable = dict[str, Any]
PUBLIC_TABLE = "REAL_NAMES"  # the public AA-CLIP code's per-class descriptions, in dataset/constants.py
PUBLIC_TABLE_FILE = Path("dataset") / "constants.py"


def load_class_descriptions(path: Path | str | None) -> DescriptionTable:
    """Class descriptions that replace class names in the prompts, from

    - a json file: {class: description}, or {dataset: {class: description}};
    - the public AA-CLIP checkout (a folder) or its `dataset/constants.py`: the REAL_NAMES table, read as data
      (the file is parsed, never imported or run).
    Nothing given: an empty table (class names)."""
    if path is None:
        return {}
    path = Path(path)
    if path.is_dir():
        path = path / PUBLIC_TABLE_FILE
        if not path.is_file():
            raise ConfigError(f"{path} not found: a folder of class descriptions must be the public AA-CLIP checkout")
    if not path.is_file():
        raise ConfigError(f"class description file not found: {path}")
    if path.suffix == ".py":
        table = read_public_table(path)
    else:
        table = parse_json(read_settings_text(path, "class-description file", ConfigError), str(path), ConfigError)
    check_table(table, str(path))
    return table


def read_public_table(path: Path) -> DescriptionTable:
    """The REAL_NAMES literal of the public code's constants.py, taken from the parsed file (no code runs)."""
    try:
        module = ast.parse(read_settings_text(path, "class-description file", ConfigError), filename=str(path))
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:  # deep nesting: RecursionError
        raise ConfigError(f"{path}: not a readable Python file ({str(error)[:160]})") from error
    for node in module.body:
        if isinstance(node, ast.Assign):
            names, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            names, value = [node.target], node.value
        else:
            continue
        if any(isinstance(name, ast.Name) and name.id == PUBLIC_TABLE for name in names):
            try:
                table = ast.literal_eval(value)
                check_nesting(table, str(path), ConfigError)
                return table
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as error:
                raise ConfigError(
                    f"{path}, line {node.lineno}: {PUBLIC_TABLE} is not a literal table ({error}); crossgraft reads "
                    "it as data and never runs the file, so the table must be written out as a plain dict"
                ) from error
    raise ConfigError(f"{path}: no {PUBLIC_TABLE} = {{...}} table (is it the public AA-CLIP dataset/constants.py?)")


def check_table(table: object, where: str) -> None:
    """{class: str}, or {dataset: {class: str}}."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a mapping of class names to descriptions, found {type(table).__name__}")
    for key, value in table.items():
        if isinstance(value, dict):
            bad = [k for k, v in value.items() if not isinstance(v, str)]
            if bad:
                raise ConfigError(f"{where}: the descriptions of {key} must be strings ({', '.join(map(str, bad))})")
        elif not isinstance(value, str):
            raise ConfigError(f"{where}: the description of {key!r} must be a string or a table of them")


def is_nested(table: DescriptionTable) -> bool:
    return bool(table) and all(isinstance(value, dict) for value in table.values())


def descriptions_for(
    table: DescriptionTable, dataset: str | None, where: str = "the class descriptions"
) -> dict[str, str]:
    """The {class: description} a dataset's prompts use. A per-dataset table needs the dataset (it must be in the
    table); without one (predict), every dataset's classes are looked through, first match wins."""
    if not is_nested(table):
        return {str(k): str(v) for k, v in table.items()}
    if dataset is None:
        merged: dict[str, str] = {}
        for sub_table in table.values():
            merged = {**sub_table, **merged}
        return merged
    if dataset not in table:
        raise ConfigError(
            f"{where} have no table for dataset {dataset}; they have: {', '.join(sorted(table))}. Choose a dataset "
            "they describe, or give --class_descriptions for this one"
        )
    return dict(table[dataset])


def class_text(class_name: str, descriptions: dict[str, str] | None = None) -> str:
    """What goes into the prompts: the user's description, else the class name with underscores as spaces."""
    if descriptions and class_name in descriptions:
        return descriptions[class_name]
    return class_name.replace("_", " ")


def public_prompts_warning(dataset: str, descriptions: dict[str, str]) -> str | None:
    """Under the reference preset: the public code prompts every dataset it knows with REAL_NAMES descriptions,
    so a run on one of them without descriptions prompts differently. The message says so and how to fix it."""
    if dataset not in PUBLIC_DATA_ROOTS or descriptions:
        return None
    return (
        f"the public AA-CLIP code prompts {dataset} with its per-class descriptions ({PUBLIC_TABLE} in "
        f"{PUBLIC_TABLE_FILE}), this run with the class names: its prompts differ from the public code's. To match "
        "it, add --class_descriptions /path/to/AA-CLIP (your checkout of the public code)"
    )

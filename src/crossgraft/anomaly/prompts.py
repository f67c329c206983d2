"""AA-CLIP's prompt ensemble (DESIGN §3): 6 normal and 10 abnormal sentences per class."""

from __future__ import annotations

import json
from pathlib import Path

from crossgraft.errors import ConfigError

NORMAL_STATES = ("{}", "a {}", "the {}")
ABNORMAL_STATES = ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage")
TEMPLATES = ("{}.", "a photo of {}.")


def class_sentences(class_text: str) -> tuple[list[str], list[str]]:
    """(normal sentences, abnormal sentences) for one class text, in the public code's order."""

    def expand(states: tuple[str, ...]) -> list[str]:
        return [template.format(state.format(class_text)) for state in states for template in TEMPLATES]

    return expand(NORMAL_STATES), expand(ABNORMAL_STATES)


def load_class_descriptions(path: Path | None) -> dict[str, str]:
    """A json object {class_name: description}; the description replaces the class name in every prompt."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"class description file not found: {path}")
    try:
        descriptions = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a valid json file ({error})") from error
    if not isinstance(descriptions, dict) or not all(isinstance(v, str) for v in descriptions.values()):
        raise ConfigError(f"{path}: expected a json object mapping class names to description strings")
    return descriptions


def class_text(class_name: str, descriptions: dict[str, str] | None = None) -> str:
    """What goes into the prompts: the user's description, else the class name with underscores as spaces."""
    if descriptions and class_name in descriptions:
        return descriptions[class_name]
    return class_name.replace("_", " ")

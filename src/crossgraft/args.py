"""Command lines generated from config dataclasses, the same way for both families.

`ConfigArgumentParser` makes a flag per dataclass field, as transformers' `HfArgumentParser` does (help from the
field's metadata, choices from `Literal` and enums, `--flag` / `--no_flag` for booleans, `nargs="+"` for lists) but
with one spelling per flag (`--data_root`, no `--data-root` twin) and without importing transformers (help and
argument errors come before any heavy import), with four additions:
- a field whose type is itself a config dataclass contributes that dataclass's flags, as their own group,
  and the nested config is rebuilt on parsing; its defaults are the parent's (`default_factory`) ones;
- field metadata `group` puts a flag into a named group, `positional` makes it a positional argument;
- `--config FILE` (json or yaml) holds any flags, as `{flag: value}` or in sections named like the nested
  configs (a saved `run_config.json` is such a file); flags given on the command line win;
- `parse(argv)` returns the config instances, and raises `ConfigError` for a bad config file.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import enum
import importlib
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast, get_args, get_origin, get_type_hints

import yaml

from crossgraft.errors import ConfigError, CrossgraftError
from crossgraft.files import parse_json, parse_yaml, read_settings_text

CONFIG_FLAG = "--config"
PRINT_CONFIG_FLAG = "--print_config"
# keys crossgraft writes into a saved run config beside the settings themselves; ignored when read back
METADATA_KEYS = frozenset({"format", "crossgraft_version", "resolved"})
ARGPARSE_ONLY_METADATA = ("group", "positional")


class HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to a flag's help unless the help already speaks of its default or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if isinstance(action, argparse._StoreFalseAction):  # an off switch: its flag's line says the default
            return text
        if "default" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def nested_fields(dtype: type) -> dict[str, type]:
    """The fields of a config dataclass that are config dataclasses themselves: {name: type}."""
    hints = get_type_hints(dtype)
    return {f.name: hints[f.name] for f in dataclasses.fields(dtype) if dataclasses.is_dataclass(hints[f.name])}


def flatten_config(config: Any) -> dict[str, Any]:
    """{flag: value} of a config instance, nested configs included."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten_config(value))
        elif f.init:
            flat[f.name] = copy.copy(value)
    return flat


def plain_value(value: Any) -> Any:
    """A setting as json / yaml data: paths as strings, tuples as lists, enum members as their values."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return plain_value(value.value)
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    return value


def yaml_flow(value: Any) -> str:
    """One value as a single line of YAML (flow style)."""
    as_list = yaml.safe_dump([value], default_flow_style=True, width=10**9, allow_unicode=True).strip()
    return as_list[1:-1]  # [value] -> value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config instance as json-ready nested dicts (paths as strings, tuples as lists)."""
    return {key: plain_value(value) for key, value in dataclasses.asdict(config).items()}


def build_config(dtype: type, values: dict[str, Any]) -> Any:
    """Instantiate `dtype` from flat {flag: value}, rebuilding nested configs."""
    nested = nested_fields(dtype)
    kwargs = {}
    for f in dataclasses.fields(dtype):
        if not f.init:
            continue
        if f.name in nested:
            kwargs[f.name] = build_config(nested[f.name], values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return dtype(**kwargs)


def read_config_file(path: Path | str) -> dict[str, Any]:
    """A json or yaml mapping of settings; ConfigError naming the file when it cannot be read as one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = read_settings_text(path, "config file", ConfigError)
    parse = parse_yaml if path.suffix in (".yaml", ".yml") else parse_json
    data = parse(text, str(path), ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of flag names to values, found {type(data).__name__}")
    return data


def string_to_bool(value: str | bool) -> bool:
    """A boolean flag's value: yes/no, true/false, t/f, y/n, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a yes/no value (true/false, 1/0, ...), got {value!r}")


def choice_type(choices: Sequence[Any]) -> Callable[[str], Any]:
    """Maps a choice's text back to the choice (an enum member's value, a Literal's value)."""
    by_text = {str(choice): choice for choice in choices}
    return lambda text: by_text.get(text, text)


def add_field_flag(target: Any, f: dataclasses.Field, field_type: Any) -> None:
    """The flag of one dataclass field (the rules of transformers' HfArgumentParser, one spelling per flag):
    `X | None` is X; a Union with str is the other type; Literal and Enum give choices; bool takes an optional
    yes/no value and, when on by default, gets a `--no_NAME` twin; list[X] takes one or more X."""
    kwargs = {key: value for key, value in f.metadata.items() if key not in ARGPARSE_ONLY_METADATA}
    aliases = kwargs.pop("aliases", [])
    aliases = [aliases] if isinstance(aliases, str) else list(aliases)
    if get_origin(field_type) in (typing.Union, types.UnionType):
        members = get_args(field_type)
        if type(None) not in members:  # Union[X, str]: the X
            field_type = members[0] if members[1] is str else members[1]
        elif bool not in members:  # X | None: the X (str when one of several, as for a path-or-mapping setting)
            field_type = str if str in members else next(member for member in members if member is not type(None))
    origin = get_origin(field_type) or field_type
    has_default = f.default is not dataclasses.MISSING
    is_switch = field_type is bool and f.default is not dataclasses.MISSING  # --NAME / --no_NAME
    if origin is typing.Literal or (isinstance(field_type, type) and issubclass(field_type, enum.Enum)):
        kwargs["choices"] = get_args(field_type) if origin is typing.Literal else [m.value for m in field_type]
        kwargs["type"] = choice_type(kwargs["choices"])
        kwargs["default" if has_default else "required"] = f.default if has_default else True
    elif field_type is bool or field_type == bool | None:
        kwargs.update(type=string_to_bool, metavar="yes|no")
        if field_type is bool or (f.default is not None and has_default):
            kwargs.update(default=f.default if has_default else False, nargs="?", const=True)
    elif isinstance(origin, type) and issubclass(origin, list):
        kwargs.update(type=get_args(field_type)[0], nargs="+")
        if f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        elif not has_default:
            kwargs["required"] = True
    else:
        kwargs["type"] = field_type
        if has_default:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        else:
            kwargs["required"] = True
    target.add_argument(f"--{f.name}", *aliases, **kwargs)
    if is_switch:  # the off switch; its help would repeat the flag's word for word
        target.add_argument(
            f"--no_{f.name}", action="store_false", dest=f.name, default=argparse.SUPPRESS, help=f"turn --{f.name} off"
        )


class ConfigArgumentParser(argparse.ArgumentParser):
    """An argument parser for one or more config dataclasses (see the module docstring)."""

    def __init__(self, config_types: type | Sequence[type], **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)
        self._groups: dict[str, argparse._ArgumentGroup] = {}
        self._sections: set[str] = set()
        self.dataclass_types: list[Any] = [config_types] if isinstance(config_types, type) else list(config_types)
        for dtype in self.dataclass_types:
            self._add_dataclass_arguments(dtype)
        self.add_argument(
            PRINT_CONFIG_FLAG,
            action="store_true",
            help="print the full configuration (these flags with the given --config and flags applied) as YAML that "
            "--config reads back, and exit",
        )
        self.add_argument(
            CONFIG_FLAG,
            metavar="FILE",
            default=None,
            help="a .json or .yaml file of settings ({flag: value}, or in sections like a saved run_config.json); "
            "flags on the command line win",
        )
        for dtype in self.dataclass_types:
            self._set_nested_defaults(dtype)
        if self.usage is None:  # every flag is listed below, once: the usage line names the positionals only
            positionals = [action.metavar or action.dest for action in self._actions if not action.option_strings]
            self.usage = " ".join(["%(prog)s", *map(str, positionals), "[options]"])

    def error(self, message: str) -> NoReturn:
        """An argument error is one ConfigError line (the command line prints it and exits with status 2), with
        the closest flag for a misspelled one, instead of argparse's usage dump."""
        raise ConfigError(f"{self.prog}: {message}{self.suggestion(message)}; `{self.prog} --help` lists the flags")

    def suggestion(self, message: str) -> str:
        """' (did you mean --dataset?)' for an unrecognized flag close to a real one."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        flags = [flag for action in self._actions for flag in action.option_strings]
        guesses = []
        for given in message.split(":", 1)[1].split():
            flag = given.split("=", 1)[0]
            close = difflib.get_close_matches(flag, flags, n=1, cutoff=0.6) if flag.startswith("-") else []
            if close:
                guesses.append(f"{close[0]} for {flag}")
        return f" (did you mean {', '.join(guesses)}?)" if guesses else ""

    # ------------------------------------------------------------------------------------ building
    def _group(self, title: str | None) -> argparse._ArgumentGroup | None:
        if title is None:
            return None
        if title not in self._groups:
            self._groups[title] = self.add_argument_group(title)
        return self._groups[title]

    def _add_dataclass_arguments(self, dtype: Any) -> None:
        hints = get_type_hints(dtype)
        section = self._group(getattr(dtype, "_argument_group_name", None))
        for f in dataclasses.fields(dtype):
            if not f.init:
                continue
            field_type = hints[f.name]
            if dataclasses.is_dataclass(field_type):
                self._sections.add(f.name)
                self._add_dataclass_arguments(field_type)
                continue
            target = self._group(f.metadata.get("group")) or section or self
            if f.metadata.get("positional"):
                self._add_positional(target, f, field_type)
                continue
            add_field_flag(target, f, field_type)

    @staticmethod
    def _add_positional(target: Any, f: dataclasses.Field, value_type: Any) -> None:
        kwargs = {k: v for k, v in f.metadata.items() if k not in ARGPARSE_ONLY_METADATA}
        if get_origin(value_type) is list:
            kwargs.setdefault("nargs", "+")
            value_type = get_args(value_type)[0]
        target.add_argument(f.name, type=value_type, **kwargs)

    def _set_nested_defaults(self, dtype: type) -> None:
        """A nested config's flags default to the values of the parent's default instance of it."""
        for f in dataclasses.fields(dtype):
            if f.name in nested_fields(dtype) and f.default_factory is not dataclasses.MISSING:
                self.set_defaults(**flatten_config(f.default_factory()))

    # ------------------------------------------------------------------------------------- parsing
    def parse(self, argv: Sequence[str] | None = None) -> Any:
        """Parse flags (and a --config file) into the config instances: one, or a tuple of several."""
        prescan = argparse.ArgumentParser(add_help=False, exit_on_error=False)
        prescan.add_argument(CONFIG_FLAG, default=None)
        try:
            known, _ = prescan.parse_known_args(argv)
        except argparse.ArgumentError as error:
            self.error(str(error))
        if known.config:
            self.apply_config_file(known.config)
        values = vars(self.parse_args(argv))
        values.pop(CONFIG_FLAG.lstrip("-"), None)
        print_config = values.pop(PRINT_CONFIG_FLAG.lstrip("-"), False)
        try:
            configs = [build_config(dtype, values) for dtype in self.dataclass_types]
        except CrossgraftError:
            raise
        except ImportError as error:  # an option that needs a package (TrainingArguments' --deepspeed, …)
            raise ConfigError(
                f"a requested option needs a package that is not installed ({error}); install it with pip"
            ) from error
        except (ValueError, TypeError) as error:  # a library config's own checks (TrainingArguments, …)
            raise ConfigError(f"invalid settings: {str(error)[:300]}") from error
        if print_config:
            print(self.config_yaml(configs))
            raise SystemExit(0)
        return configs[0] if len(configs) == 1 else tuple(configs)

    def config_yaml(self, configs: Sequence[Any]) -> str:
        """The full configuration as YAML that `--config` reads back: every flag with its value, defaults
        included, each under its help text as a comment."""
        actions: dict[str, argparse.Action] = {}
        for action in self._actions:  # a flag, not its --no_ twin
            if not isinstance(action, argparse._StoreFalseAction) and action.dest not in ("help", "config"):
                actions.setdefault(action.dest, action)
        actions.pop(PRINT_CONFIG_FLAG.lstrip("-"), None)
        lines = [f"# {self.prog}: the full configuration (--config FILE reads it back; flags given with it win)"]
        for config in configs:
            for name, value in flatten_config(config).items():
                if name not in actions:
                    continue
                help_text = " ".join((actions[name].help or "").split())
                help_text = help_text.replace("%(default)s", "the value below").replace("%%", "%")
                lines += ["", *textwrap.wrap(help_text, 118, initial_indent="# ", subsequent_indent="# ")]
                lines.append(f"{name}: {yaml_flow(plain_value(value))}")
        return "\n".join(lines)

    def apply_config_file(self, path: Path | str) -> None:
        """Make the file's settings the defaults, so that command-line flags still win."""
        self.apply_settings(read_config_file(path), str(path))

    def fields_whose_type_allows(self, kind: str) -> set[str]:
        """The fields (of every config, nested ones included) whose type names `kind`: "dict" (a library setting
        such as TrainingArguments' --deepspeed takes a path or the DeepSpeed config itself) or "None"."""
        found: set[str] = set()
        pending: list[Any] = list(self.dataclass_types)
        while pending:
            dtype = pending.pop()
            pending.extend(nested_fields(dtype).values())
            names = {kind.lower(), "optional"} if kind == "None" else {kind.lower()}
            found.update(f.name for f in dataclasses.fields(dtype) if any(n in str(f.type).lower() for n in names))
        return found

    def apply_settings(self, settings: dict[str, Any], source: str) -> None:
        """Make `settings` ({flag: value}, or in sections named like the nested configs) the defaults."""
        flat: dict[str, Any] = {}

        def collect(data: dict[str, Any]) -> None:
            for key, value in data.items():
                if key in METADATA_KEYS:
                    continue
                if key in self._sections and isinstance(value, dict):
                    collect(value)
                else:
                    flat[key] = value

        collect(settings)
        actions = {action.dest: action for action in self._actions if action.dest != "help"}
        unknown = sorted(set(flat) - set(actions))
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; `--help` lists the flags")
        mappings, optional = self.fields_whose_type_allows("dict"), self.fields_whose_type_allows("None")
        lists = self.fields_whose_type_allows("list")
        for dest in flat:
            action = actions[dest]
            if isinstance(flat[dest], dict) and dest not in mappings:
                raise ConfigError(f"{source}: {dest} takes a single value, not a mapping")
            if isinstance(flat[dest], list) and action.nargs not in ("+", "*") and dest in lists:
                if not all(isinstance(item, str) for item in flat[dest]):  # a library setting: text or a list of it
                    raise ConfigError(f"{source}: {dest} takes a list of text")
                continue
            if flat[dest] is None and dest not in optional and action.default is not None:
                raise ConfigError(f"{source}: {dest} needs a value (null leaves it unset, which it cannot be)")
            flat[dest] = file_value(action, flat[dest], f"{source}: {dest}")
            action.required = False
            if not action.option_strings:  # a positional given in the file may be left out on the command line
                action.nargs = "*" if action.nargs in ("+", "*") else "?"
        self.set_defaults(**flat)


def file_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A setting read from a config file, converted and checked as the same flag's command-line value is (its type
    and choices), so a wrong value is one ConfigError naming the file and the setting."""
    if value is None or isinstance(value, dict):  # None: unset; a mapping: a library setting that takes one
        return value
    if isinstance(value, list):
        if action.nargs not in ("+", "*"):
            raise ConfigError(f"{where} takes one value, not a list")
        return [file_value_one(action, item, where) for item in value]
    return file_value_one(action, value, where)


def file_value_one(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, list | dict):
        raise ConfigError(f"{where}: expected a single value, found {type(value).__name__}")
    converted = value
    if callable(action.type):
        try:
            converted = action.type(value if isinstance(value, str) else str(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
            raise ConfigError(f"{where} = {str(value)[:60]!r} is not a valid value ({str(error)[:100]})") from error
    if action.choices is not None and converted not in action.choices:
        shown = ", ".join(str(choice) for choice in action.choices)
        raise ConfigError(f"{where} = {str(value)[:60]!r} is not one of the choices ({shown})")
    return converted


# ------------------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Command:
    """One subcommand: the config dataclass(es) its flags come from, and what runs with the parsed config. A config
    may be named as "module:Class" (loaded when the command's parser is built, so a family's help loads nothing)."""

    config: type | str | tuple[type | str, ...]
    run: Callable[[Any], int]
    help: str
    description: str


def resolve(reference: type | str) -> type:
    """A class, or the class a "module:Class" string names (its module imported now)."""
    if not isinstance(reference, str):
        return reference
    module, _, name = reference.partition(":")
    return cast(type, getattr(importlib.import_module(module), name))


def command_parser(
    family: str, name: str, command: Command, prog: str | None = None, **defaults: Any
) -> ConfigArgumentParser:
    """The parser of one command; `defaults` change flag defaults (the seeds' console scripts use this)."""
    prog = prog or f"crossgraft {family} {name}"
    configs = command.config if isinstance(command.config, tuple) else (command.config,)
    parser = ConfigArgumentParser([resolve(config) for config in configs], prog=prog, description=command.description)
    if defaults:
        parser.set_defaults(**defaults)
    return parser


def run_command(
    family: str, name: str, command: Command, argv: Sequence[str], prog: str | None = None, **defaults: Any
) -> int:
    """Parse `argv` into the command's config and run it."""
    return command.run(command_parser(family, name, command, prog, **defaults).parse(list(argv)))


def family_usage(family: str, summary: str, commands: dict[str, Command]) -> str:
    lines = [f"usage: crossgraft {family} COMMAND [options]   (crossgraft {family} COMMAND --help explains every flag)"]
    lines += ["", summary, "", "commands:"]
    lines += [f"  {name:<16}{command.help}" for name, command in commands.items()]
    return "\n".join(lines)


def dispatch(family: str, summary: str, commands: dict[str, Command], argv: Sequence[str]) -> int:
    """`crossgraft FAMILY COMMAND …`: the family's usage, an unknown command (exit 2), or the command."""
    argv = list(argv)
    usage = family_usage(family, summary, commands)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    if argv[0] not in commands:
        print(f"error: unknown {family} command {argv[0]!r}\n\n{usage}", file=sys.stderr)
        return 2
    return run_command(family, argv[0], commands[argv[0]], argv[1:])

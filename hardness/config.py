"""YAML configs of the config-driven systems: a schema of fields (path, kind, range, default), a file read over
its defaults, `section.key=value` overrides, and checks with errors that name the field."""
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hardness.cli import UserInputError


class ConfigError(UserInputError):
    """A bad config field: the message names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"config field {field}: {message}")


def merge_config(defaults: dict, given: Any, prefix: str = "", shorthands: dict[str, str] | None = None,
                 aliases: dict[str, str] | None = None) -> dict:
    """`given` over `defaults`, section by section; an unknown field is a ConfigError naming it. A section
    named in `shorthands` may be given as a single value, meaning {shorthands[section]: value}. `aliases`
    maps other names of fields to their own names, as full paths in the same section: {'model.small_input':
    'model.cifar_stem'}; aliases one level deeper form a group, a mapping that gives those fields
    ({'dataset.gaussian.std': 'dataset.std'} accepts `dataset: {gaussian: {std: 2}}`). A field given under
    two names is a ConfigError."""
    if not isinstance(given, dict):
        raise ConfigError(prefix.rstrip(".") or "(top level)", f"must be a mapping, got {given!r}")
    shorthands, aliases = shorthands or {}, aliases or {}
    merged = copy.deepcopy(defaults)
    given_as: dict[str, str] = {}
    for key, path, value in _own_names(given, prefix, defaults, aliases):
        if key not in defaults:
            other_names = dict.fromkeys(alias[len(prefix):].split(".")[0] for alias in aliases
                                        if alias.startswith(prefix))
            known = list(defaults) + [name for name in other_names if name not in defaults]
            raise ConfigError(path, f"unknown field; known: {', '.join(known)}")
        if key in given_as:
            raise ConfigError(path, f"given twice, also as {given_as[key]}")
        given_as[key] = path
        if isinstance(defaults[key], dict):
            if f"{prefix}{key}" in shorthands and not isinstance(value, dict):
                value = {shorthands[f"{prefix}{key}"]: value}
            merged[key] = merge_config(defaults[key], value, f"{prefix}{key}.", shorthands, aliases)
        else:
            merged[key] = value
    return merged


def _own_names(given: dict, prefix: str, defaults: dict, aliases: dict[str, str]) -> list[tuple[str, str, Any]]:
    """(own name, full path as given, value) of every field of the section `given` at `prefix`: a field given
    by an alias under its own name, and the fields of an alias group (a name that is not a field of
    `defaults`) opened into the section."""
    fields = []
    for key, value in given.items():
        path = f"{prefix}{key}"
        members = [alias[len(path) + 1:] for alias in aliases
                   if key not in defaults and alias.startswith(f"{path}.") and "." not in alias[len(path) + 1:]]
        if path in aliases:
            fields.append((aliases[path][len(prefix):], path, value))
        elif members:
            if not isinstance(value, dict):
                raise ConfigError(path, f"must be a mapping of {', '.join(members)}, got {value!r}")
            for member, inner in value.items():
                if member not in members:
                    raise ConfigError(f"{path}.{member}", f"unknown field; known: {', '.join(members)}")
                fields.append((aliases[f"{path}.{member}"][len(prefix):], f"{path}.{member}", inner))
        else:
            fields.append((key, path, value))
    return fields


def read_yaml(path: Path, kind: str, error: type[UserInputError] = UserInputError) -> Any:
    """The YAML file at `path` ({} when empty); a missing file or bad YAML is one line, an `error` that names the
    `kind` of file ('config', 'grid') and the path."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{kind} file {path} not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as problem:
        raise error(f"{kind} file {path} is not valid YAML: {str(problem).splitlines()[0]}") from problem


def read_config(path: Path, defaults: dict, overrides: Sequence[str] = (),
                shorthands: dict[str, str] | None = None, aliases: dict[str, str] | None = None) -> dict:
    """The YAML file at `path` over `defaults`, then each `section.key=value` override (value read as YAML);
    `shorthands` and `aliases` as in merge_config."""
    given = read_yaml(path, "config")
    config = merge_config(defaults, given, shorthands=shorthands, aliases=aliases)
    for override in overrides:
        field, equals, text = override.partition("=")
        if not equals:
            raise UserInputError(f"--set {override!r}: write section.key=value, e.g. training.lr=0.01")
        *sections, key = field.split(".")
        nested: dict = {key: yaml.safe_load(text)}
        for section in reversed(sections):
            nested = {section: nested}
        config = merge_config(config, nested, shorthands=shorthands, aliases=aliases)
    return config


def field_value(config: dict, field: str) -> Any:
    value = config
    for key in field.split("."):
        value = value[key]
    return value


def check_number(config: dict, field: str, low: float | None = None, integer: bool = False,
                 strict: bool = False) -> None:
    """The field is a number (an integer with `integer`; booleans are not numbers), at least `low`
    (above it with `strict`)."""
    value = field_value(config, field)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (not integer and not math.isfinite(value)):
        raise ConfigError(field, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ConfigError(field, f"must be {'>' if strict else '>='} {low}, got {value!r}")


def check_choice(config: dict, field: str, choices: Sequence[str]) -> None:
    value = field_value(config, field)
    if value not in choices:
        raise ConfigError(field, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


@dataclass(frozen=True)
class Field:
    """One config field: its dotted path, its default, and what a given value must be. `kind` is one of number,
    integer, bool, choice (one of `choices`) or any (checked by the system's own code); a number or integer is at
    least `low` (above it with `strict`) and at most `high`; `optional` also admits None."""
    path: str
    default: Any
    kind: str = "any"
    low: float | None = None
    high: float | None = None
    strict: bool = False
    choices: tuple = ()
    optional: bool = False


def schema_defaults(schema: Sequence[Field]) -> dict:
    """The nested dict of every field's default, sections in the order their first field comes."""
    defaults: dict = {}
    for field in schema:
        *sections, key = field.path.split(".")
        section = defaults
        for name in sections:
            section = section.setdefault(name, {})
        section[key] = copy.deepcopy(field.default)
    return defaults


def check_fields(config: dict, schema: Sequence[Field]) -> None:
    """Every field of `schema` in `config` is of its kind and in its range: the first that is not is a
    ConfigError naming it."""
    for field in schema:
        value = field_value(config, field.path)
        if field.kind == "any" or (field.optional and value is None):
            continue
        if field.kind in ("number", "integer"):
            check_number(config, field.path, field.low, integer=field.kind == "integer", strict=field.strict)
            if field.high is not None and value > field.high:
                raise ConfigError(field.path, f"must be <= {field.high}, got {value!r}")
        elif field.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(field.path, f"must be true or false, got {value!r}")
        elif field.kind == "choice":
            check_choice(config, field.path, field.choices)
        else:
            raise ValueError(f"field {field.path}: unknown kind {field.kind!r}")

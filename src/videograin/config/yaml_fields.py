"""A config's YAML values checked as fields: each shared value rule (``values``) with its error as a
``SpecError`` naming the config field, sections and their keys (a section's keys are the fields of the
dataclass it becomes), and the YAML loader that refuses duplicate keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from .. import values
from ..errors import SettingError, SpecError


def unless_none(check, value: Any, *args):
    """None (the key left out or null: the model's recommended value, ``backbones.recommended``) or
    ``check(value, *args)``."""
    return None if value is None else check(value, *args)


def choice(value: Any, field: str, options: tuple[str, ...]) -> str:
    return checked(values.choice, value, field, options)


def checked(rule, value: Any, field: str, *args):
    """``rule(value, field, *args)`` (a shared value rule, ``values``) with its error as a SpecError."""
    try:
        return rule(value, field, *args)
    except SettingError as err:
        raise SpecError(err.name, err.problem, err.fix) from None


def keys_of(cls, *without: str) -> tuple[str, ...]:
    """A section's YAML keys: the fields of the dataclass it becomes (less ``without``)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in without)


def check_keys(data: dict, valid: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in valid:
            raise SpecError(join(prefix, str(key)), f"unknown key {str(key)!r}",
                            values.suggest(str(key), valid, "remove it or use one of the valid keys:"))


def require(data: dict, key: str, prefix: str, fix: str) -> Any:
    if key not in data:
        raise SpecError(join(prefix, key), "is missing (required)", fix)
    return data[key]


def mapping(value: Any, field: str, optional: bool = False, fix: str = "") -> dict:
    """A config section; for an ``optional`` one, null (``edit:`` with nothing under it) means defaults."""
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise SpecError(field, f"must be a mapping of keys, got {values.describe(value)}",
                        fix or f"write `key: value` lines indented under `{field.rsplit('.', 1)[-1]}:`")
    return value


def whole(value: Any, field: str, minimum: int, maximum: int | None = None) -> int:
    return checked(values.whole, value, field, minimum, maximum)


def number(value: Any, field: str) -> float:
    """A finite float >= 0 (ints accepted, booleans not)."""
    return checked(values.number, value, field)


def boolean(value: Any, field: str) -> bool:
    return checked(values.boolean, value, field)


def guidance(value: Any, field: str) -> float:
    return checked(values.guidance, value, field)


def text(value: Any, field: str, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        fix = 'write "" for an empty value' if value is None else "write it as text, in quotes if in doubt"
        raise SpecError(field, f"must be text, got {values.describe(value)}", fix)
    if nonempty and not value.strip():
        raise SpecError(field, "is empty", "write a non-empty value")
    return value


def prompt_text(value: Any, field: str, nonempty: bool = False) -> str:
    """Text (``text``) no longer than a prompt may be (``values.prompt``), checked before any tokenizer."""
    return checked(values.prompt, text(value, field, nonempty), field)


def path_value(value: Any, field: str, base_dir: Path) -> Path:
    return (base_dir / Path(text(value, field, nonempty=True)).expanduser()).resolve()


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


# --- YAML and serialisation -------------------------------------------------------------------------


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (plain PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged by super(), overridable
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # super() reports unhashable keys
            if key in seen:
                raise SpecError("config", f"duplicate key {key!r} at line {key_node.start_mark.line + 1}",
                                "keep only one of them")
            seen.add(key)
        return super().construct_mapping(node, deep)


def yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())

"""YAML loading that keeps the line of every mapping key, for errors that name it.

`load_mapping` returns plain dicts and lists, except that each mapping is a
`LinedDict` whose `line_of(key)` gives the 1-based line where that key stands.
Every failure (missing file, unreadable file, bad YAML, a top level that is not a
mapping) becomes one `ConfigError` line naming the file and, where known, the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from proxy.errors import ConfigError


class LinedDict(dict[str, Any]):
    """A mapping loaded from YAML that remembers the line of each of its keys."""

    def __init__(self, items: list[tuple[Any, Any]], lines: dict[Any, int], line: int) -> None:
        super().__init__(items)
        self.key_lines = lines
        self.line = line

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _LineLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        self.flatten_mapping(node)
        items: list[tuple[Any, Any]] = []
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            lines[key] = key_node.start_mark.line + 1
            items.append((key, self.construct_object(value_node, deep=True)))
        return LinedDict(items, lines, node.start_mark.line + 1)


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _LineLoader.construct_mapping,
)


def load_mapping(path: Path, what: str) -> LinedDict:
    """Read `path` as a YAML mapping; `what` names the file's role in errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: expected a {what} file, found a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what} file: {_reason(exc)}") from None
    return parse_mapping(text, path, what)


def parse_mapping(text: str, path: Path, what: str) -> LinedDict:
    """Parse `text` as `load_mapping` does; `path` and `what` are only used in errors."""
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        # PyYAML reports an unclosed quote or bracket where the file ends, so name its start too.
        start = exc.context_mark
        if exc.problem and exc.context and start is not None and mark is not None:
            if start.line != mark.line:
                problem += f" ({exc.context} that started on line {start.line + 1})"
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None

    if data is None:
        return LinedDict([], {}, 1)
    if not isinstance(data, LinedDict):
        raise ConfigError(
            f"{path}, line 1: expected a mapping of keys to values, found {type_name(data)}"
        )
    return data


def parse_text(text: str) -> Any:
    """Parse YAML text as `load_mapping` does (duplicate keys rejected); errors pass through."""
    return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass


def type_name(value: object) -> str:
    """Name a YAML value's type the way a user writing YAML would."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "nothing"
    return type(value).__name__


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)

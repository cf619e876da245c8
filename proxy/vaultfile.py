"""Change entries of the vault file in place: `vault add` and `vault remove`.

Rules this module keeps:

1. No entry is ever lost. An edit is made on the text, so comments and the
   order of entries stay. The new text is then parsed again and must hold
   exactly the old data with the one entry changed. If it does not (a flow
   mapping, say, or a layout the text edit does not understand), the whole file
   is written anew from the data, and comments are lost instead.
2. The file is replaced atomically: a temporary file in the same folder is
   written with mode 0600, flushed to disk and renamed over the old one. A
   running proxy never reads a half-written vault.
3. Two commands editing the same vault at once take turns: each holds an
   exclusive lock on the vault's folder while it reads, edits and renames.

Sections other than the one edited (a future `clients:` section, say) are kept
as they are.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proxy.errors import ConfigError
from proxy.yamlfile import LinedDict, load_mapping, parse_text, type_name

FILE_MODE = 0o600
Validator = Callable[[Path, str], None]
NEW_FILE_HEADER = (
    "# eodh-proxy token vault, written by `eodh-proxy vault add`. Keep it private\n"
    "# (mode 0600); vault.example.yaml in the project documents every key.\n"
)


@contextmanager
def locked(path: Path) -> Iterator[Path]:
    """Hold an exclusive lock on the folder of `path` (created with mode 0700 if missing).

    Yields the path of the real file, with symbolic links resolved, so that the
    rename replaces the file a link points to and not the link.
    """
    target = Path(os.path.realpath(path))
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ConfigError(f"{target.parent}: cannot use vault folder: {_reason(exc)}") from None
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield target
    finally:
        os.close(folder)


@dataclass(frozen=True, slots=True)
class Change:
    """The outcome of one edit of the vault file."""

    existed: bool
    """True when the entry was in the file before the edit."""
    layout_kept: bool
    """True when comments and layout were kept, False when the file was written anew."""


def set_entry(
    path: Path, section: str, name: str, fields: Mapping[str, str], validate: Validator
) -> Change:
    """Create or replace entry `name` of `section` with `fields`.

    Each value in `fields` is written as given, so it must already be valid
    YAML for a single-line scalar. The file is created when it does not exist.
    `validate` checks the new text before it is written and raises `ConfigError`
    to leave the file unchanged.
    """
    with locked(path) as target:
        text, data = _read(target)
        entries = _section(target, data, section)
        existed = name in entries
        expected = _plain(data)
        expected.setdefault(section, {})
        if expected[section] is None:
            expected[section] = {}
        expected[section][name] = {key: yaml.safe_load(value) for key, value in fields.items()}

        if not text:
            text = NEW_FILE_HEADER
        edited, layout_kept = _checked(_edit_set(text, data, section, name, fields), expected)
        _validate(target, edited, validate)
        write_atomically(target, edited)
    return Change(existed, layout_kept)


def remove_entry(path: Path, section: str, name: str, validate: Validator) -> Change:
    """Remove entry `name` of `section`; a missing file or entry is a `ConfigError`."""
    with locked(path) as target:
        if not target.exists():
            raise ConfigError(f"{target}: vault file not found")
        text, data = _read(target)
        entries = _section(target, data, section)
        if name not in entries:
            raise ConfigError(f"{target}: no entry {name!r} in '{section}'")
        expected = _plain(data)
        del expected[section][name]

        edited, layout_kept = _checked(_edit_remove(text, entries, name), expected)
        _validate(target, edited, validate)
        write_atomically(target, edited)
    return Change(True, layout_kept)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text`: temporary file, mode 0600, fsync, rename, fsync of the folder."""
    folder = path.parent
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, FILE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _validate(path: Path, text: str, validate: Validator) -> None:
    try:
        validate(path, text)
    except ConfigError as error:
        raise ConfigError(f"vault not changed, because the result would be invalid: {error}") from None


def _read(path: Path) -> tuple[str, LinedDict]:
    if not path.exists():
        return "", LinedDict([], {}, 1)
    data = load_mapping(path, "vault")
    return path.read_text(encoding="utf-8"), data


def _section(path: Path, data: LinedDict, section: str) -> LinedDict:
    entries = data.get(section)
    if entries is None:
        return LinedDict([], {}, data.line_of(section))
    if not isinstance(entries, LinedDict):
        raise ConfigError(
            f"{path}, line {data.line_of(section)}: '{section}' must be a mapping, "
            f"found {type_name(entries)}"
        )
    return entries


def _checked(edited: str | None, expected: dict[str, Any]) -> tuple[str, bool]:
    """Return `edited` if it parses to `expected`, else `expected` written anew.

    The flag is True when the edited text, with its comments, is kept.
    """
    if edited is not None:
        try:
            if _normal(parse_text(edited)) == _normal(expected):
                return edited, True
        except yaml.YAMLError:
            pass
    return yaml.safe_dump(expected, sort_keys=False, default_flow_style=False), False


def _normal(data: Any) -> Any:
    """Return plain `data` with empty sections as empty mappings (`workspaces:` reads as None)."""
    if not isinstance(data, dict):
        return data
    return {key: {} if value is None else _plain(value) for key, value in data.items()}


def _plain(value: Any) -> Any:
    """Turn loaded YAML (with `LinedDict` mappings) into plain dicts and lists, for comparing."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


# Text edits. Lines are 0-based here; `LinedDict` lines are 1-based.


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _block_end(lines: list[str], start: int) -> int:
    """Return the index after the last content line of the block whose key is on `start`.

    The block is the key line and every following line indented deeper; trailing
    blank and comment lines belong to whatever comes next.
    """
    indent = _indent(lines[start])
    end = start + 1
    for index in range(start + 1, len(lines)):
        line = lines[index]
        if not _is_content(line):
            continue
        if _indent(line) <= indent:
            break
        end = index + 1
    return end


def _entry_lines(name: str, fields: Mapping[str, str], indent: int, step: int) -> list[str]:
    lines = [" " * indent + f"{_key(name)}:\n"]
    lines += [" " * (indent + step) + f"{key}: {value}\n" for key, value in fields.items()]
    return lines


def _key(name: str) -> str:
    return name if name.replace("-", "").isalnum() else json.dumps(name)


def _edit_set(
    text: str, data: LinedDict, section: str, name: str, fields: Mapping[str, str]
) -> str | None:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    entries = data.get(section)

    if section not in data or entries is None:
        if section in data:
            # "section:" with nothing after it: put the entry right below.
            at = data.line_of(section) - 1
            if lines[at].rstrip().endswith(":"):
                lines[at + 1 : at + 1] = _entry_lines(name, fields, 2, 2)
                return "".join(lines)
            return None
        return "".join(lines) + f"{section}:\n" + "".join(_entry_lines(name, fields, 2, 2))

    if not isinstance(entries, LinedDict) or not entries:
        return None
    first = entries.line_of(next(iter(entries))) - 1
    indent = _indent(lines[first])
    if first <= data.line_of(section) - 1:
        return None  # A flow mapping on the section's own line.

    if name in entries:
        return _replace_entry(lines, entries, name, fields, indent)
    step = _step(lines, entries, indent)
    last = entries.line_of(list(entries)[-1]) - 1
    end = _block_end(lines, last)
    lines[end:end] = _entry_lines(name, fields, indent, step)
    return "".join(lines)


def _step(lines: list[str], entries: LinedDict, indent: int) -> int:
    """Return how much deeper than their names existing entries indent their fields."""
    for key in entries:
        entry = entries[key]
        if isinstance(entry, LinedDict) and entry:
            field_line = entry.line_of(next(iter(entry))) - 1
            if field_line > entries.line_of(key) - 1:
                return max(_indent(lines[field_line]) - indent, 1)
    return 2


def _replace_entry(
    lines: list[str], entries: LinedDict, name: str, fields: Mapping[str, str], indent: int
) -> str | None:
    """Replace each field line of an existing block-style entry, keeping its comments."""
    entry = entries[name]
    key_line = entries.line_of(name) - 1
    if not isinstance(entry, LinedDict) or not entry:
        return None
    field_lines = sorted(entry.line_of(key) - 1 for key in entry)
    if field_lines[0] <= key_line:
        return None  # A flow mapping on the entry's own line.
    step = _indent(lines[field_lines[0]]) - indent

    # Drop every old field (with any continuation lines), then put the new
    # fields where the first old one was.
    end = _block_end(lines, key_line)
    kept: list[str] = []
    new_fields = _entry_lines(name, fields, indent, step)[1:]
    index = key_line + 1
    while index < end:
        if index in field_lines:
            if index == field_lines[0]:
                kept += new_fields
            index += 1
            while index < end and index not in field_lines and _is_continuation(
                lines[index], indent + step
            ):
                index += 1
            continue
        kept.append(lines[index])
        index += 1
    lines[key_line + 1 : end] = kept
    return "".join(lines)


def _is_continuation(line: str, field_indent: int) -> bool:
    return _is_content(line) and _indent(line) > field_indent


def _edit_remove(text: str, entries: LinedDict, name: str) -> str:
    lines = text.splitlines(keepends=True)
    start = entries.line_of(name) - 1
    end = _block_end(lines, start)
    del lines[start:end]
    return "".join(lines)


def _reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()

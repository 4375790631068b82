"""Reading the YAML file, remembering the line of every key for the messages.

Also how a message names its place (``path:line: key.path: problem — fix``), and
the order problems are shown in: the file's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from wxtokend.config.cost import _COMPOSER, MAX_CONFIG_BYTES, _check_cost, _TooCostly
from wxtokend.errors import ConfigError

__all__ = ["_Loader", "_in_file_order"]

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_LAST_STEP = re.compile(r"(\.[^.\[\]]*|\[\d+\])$")  # ".key" or "[3]" at a key path's end


class _Loader:
    """Reads the YAML and remembers the line of every key, for messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[str, int] = {}
        self.problems: list[str] = []  # about keys: the rest of the file is still judged

    def line_of(self, keypath: str) -> int | None:
        """The line of ``keypath``; of its nearest enclosing key if it is not in the file."""
        while keypath:
            if line := self.lines.get(keypath):
                return line
            parent = _LAST_STEP.sub("", keypath)
            if parent == keypath:
                return None
            keypath = parent
        return None

    def problem(self, keypath: str, problem: str, fix: str = "") -> str:
        line = self.line_of(keypath)
        where = f"{self.path}:{line}" if line else str(self.path)
        text = f"{where}: {keypath}: {problem}" if keypath else f"{where}: {problem}"
        return f"{text} — {fix}" if fix else text

    def read(self) -> Any:
        text = self._text()
        try:
            _check_cost(text)
            node = yaml.compose(text, Loader=_COMPOSER)
            if node is not None:
                self._index(node, "")  # before merges copy keys in with the anchor's lines
            data = yaml.SafeLoader(text).construct_document(node) if node is not None else None
        except _TooCostly as exc:
            line = exc.mark.line + 1
            raise ConfigError([f"{self.path}:{line}: {exc.problem} — {exc.fix}"]) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{self.path}:{mark.line + 1}:{mark.column + 1}" if mark else str(self.path)
            raise ConfigError(
                [f"{where}: invalid YAML: {exc.problem} — check indentation and quoting there"]
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{self.path}: invalid YAML: {exc}"]) from None
        if not isinstance(data, dict):
            raise ConfigError(
                [f"{self.path}: not a YAML mapping — start it with output_dir: and apps: keys"]
            )
        return data

    def _text(self) -> str:
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file claims
        except FileNotFoundError:
            raise ConfigError(
                [f"{self.path}: no such config file — pass the right path with -c"]
            ) from None
        except OSError as exc:
            raise ConfigError(
                [f"{self.path}: cannot read the config file: {exc.strerror}"]
            ) from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                [
                    f"{self.path}: larger than {MAX_CONFIG_BYTES >> 20} MB, the limit for a config"
                    " file — check that -c names the config (10,000 apps take about 1.3 MB)"
                ]
            )
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                [f"{self.path}: cannot read the config file: not UTF-8 text"]
            ) from None

    def _index(self, node: yaml.Node, prefix: str) -> None:
        """Record every key's line; and so that building the data cannot fail on a key,
        drop (as problems) duplicate keys and list or mapping keys, and read every
        other key as the text written: no config key is a number, true or null, so
        ``1:``, ``yes:`` or ``null:`` is an unknown key, reported as written."""
        if isinstance(node, yaml.MappingNode):
            kept: list[tuple[yaml.Node, yaml.Node]] = []
            first: dict[str, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if key.tag == _MERGE:
                    kept.append((key, value))
                    continue  # merged keys are the entry's own: they take its line
                if not isinstance(key, yaml.ScalarNode):
                    where = f"{self.path}:{line}: {prefix}" if prefix else f"{self.path}:{line}"
                    self.problems.append(
                        f"{where}: a key must be a plain word, not a list or mapping"
                        " — check the indentation and any '?' there"
                    )
                    continue
                path = f"{prefix}.{key.value}" if prefix else str(key.value)
                if key.value in first:
                    self.problems.append(
                        f"{self.path}:{line}: {path}: appears twice in one mapping (first on"
                        f" line {first[key.value]}) — keep one of them"
                    )
                    continue
                first[key.value] = line
                if key.tag != _STR:
                    key = yaml.ScalarNode(_STR, key.value, key.start_mark, key.end_mark)
                kept.append((key, value))
                self.lines[path] = line
                self._index(value, path)
            node.value = kept
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                path = f"{prefix}[{i}]"
                self.lines[path] = item.start_mark.line + 1
                self._index(item, path)


def _in_file_order(path: Path, problems: list[str]) -> list[str]:
    """Problems by line (those of the whole file first), in the order one reads the file."""
    line = re.compile(re.escape(str(path)) + r":(\d+):")

    def line_of(problem: str) -> int:
        found = line.match(problem)
        return int(found.group(1)) if found else 0

    return sorted(problems, key=line_of)

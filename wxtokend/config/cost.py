"""What reading a config may cost, and the check that refuses a file costing more.

It runs on the YAML parser's events, before any node is built, so that an alias
bomb or a document nested thousands deep is refused in a moment.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_VALUES",
    "_COMPOSER",
    "_TooCostly",
    "_check_cost",
]

# What reading a config may cost, so that a broken or hostile file (an alias bomb, a huge
# or deeply nested document) is refused in a moment rather than taking the daemon down at
# a reload. A config of 10,000 apps is about 1.3 MB and 150,000 values, 4 levels deep.
MAX_CONFIG_BYTES = 8 << 20
MAX_CONFIG_VALUES = 500_000  # scalars, lists and mappings, counted again at every alias
MAX_CONFIG_DEPTH = 64  # lists and mappings inside one another


class _TooCostly(Exception):
    """The document would cost too much to build: refused before anything is built."""

    def __init__(self, mark: Any, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.mark, self.problem, self.fix = mark, problem, fix


def _check_cost(text: str) -> None:
    """Refuse a document nested too deep, or too big once its aliases are expanded.

    Everything after parsing (composing, line indexing, validation) walks each alias
    again, so nine levels of nine aliases ("billion laughs") would be 387 million
    values. This pass runs on the parser's events, before any node exists: it keeps
    one number per anchor, so memory stays flat and each event costs the same.
    """
    sizes: dict[str, int] = {}  # anchor -> values in its node, aliases expanded
    open_: list[tuple[int, str | None]] = []  # (values before it, anchor) per open list/map
    values = plain = 0  # values with aliases expanded / as written
    for event in yaml.parse(text, Loader=_COMPOSER):
        if isinstance(event, yaml.ScalarEvent):  # the commonest first: this loop is hot
            values, plain = values + 1, plain + 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionEndEvent):
            before, anchor = open_.pop()
            if anchor:
                sizes[anchor] = values - before
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(open_) == MAX_CONFIG_DEPTH:
                raise _TooCostly(
                    event.start_mark,
                    f"lists and mappings nested more than {MAX_CONFIG_DEPTH} deep",
                    "a config needs 4 levels (apps, an app, its tickets): check the brackets"
                    " and the indentation",
                )
            open_.append((values, event.anchor))
            values, plain = values + 1, plain + 1
        elif isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for _, anchor in open_):
                raise _TooCostly(
                    event.start_mark,
                    f"alias *{event.anchor} is inside the node &{event.anchor} it names,"
                    " an endless loop",
                    "move the alias out of its anchor's node",
                )
            values += sizes.get(event.anchor or "", 1)  # undefined: the composer says so
        if values > MAX_CONFIG_VALUES:
            raise _too_many(event.start_mark, aliased=plain <= MAX_CONFIG_VALUES)


def _too_many(mark: Any, *, aliased: bool) -> _TooCostly:
    limit = f"{MAX_CONFIG_VALUES:,}"
    if aliased:
        return _TooCostly(
            mark,
            f"aliases here expand the document past {limit} values (an alias bomb?)",
            "write the repeated parts out, or alias only small parts such as <<: *defaults",
        )
    return _TooCostly(
        mark,
        f"the document holds more than {limit} values",
        "split the apps over several wxtokend instances (10,000 apps are about 150,000 values)",
    )


# libyaml's parser when PyYAML has it: the pure-Python one took seconds for 10,000 apps.
# Its nodes carry the same line marks; construction stays in the Python SafeLoader.
_COMPOSER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

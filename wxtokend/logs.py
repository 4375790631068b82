"""structlog setup: JSON lines for machines, readable lines for people.

Every event passes :data:`REDACTOR` last-but-one, so a secret or token that
slipped into any string value is replaced before it is rendered.

When stdout is journald's stream (systemd sets ``JOURNAL_STREAM`` to its device
and inode), each line starts with its syslog priority, ``<3>`` for an error,
``<4>`` a warning, ``<6>`` info, ``<7>`` debug: journald takes that as the entry's
PRIORITY (and strips it), so ``journalctl -p err -u wxtokend`` finds the errors.
The check compares the inode, so a child whose stdout went elsewhere is not fooled
by the inherited variable.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from wxtokend.redact import Redactor

__all__ = ["LEVELS", "PRIORITIES", "REDACTOR", "configure", "get_logger", "is_journal_stream"]

LEVELS = ("debug", "info", "warning", "error")

REDACTOR = Redactor()

# syslog(3) priorities, as journald reads a "<N>" line prefix.
PRIORITIES = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}

Renderer = Callable[[Any, str, MutableMapping[str, Any]], str]


def is_journal_stream(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journald stream ``JOURNAL_STREAM`` names (dev:inode)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        found = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return (found.st_dev, found.st_ino) == (int(device), int(inode))


def _with_priority(render: Renderer) -> Renderer:
    def rendered(logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        priority = PRIORITIES.get(str(event.get("level", "info")), 6)
        return f"<{priority}>{render(logger, name, event)}"

    return rendered


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = REDACTOR.scrub(value)
    return event


def configure(
    *,
    level: str = "info",
    stream: TextIO | None = None,
    json: bool | None = None,
    journal: bool | None = None,
) -> None:
    """Log to ``stream`` (stdout); JSON unless it is a terminal (or ``json`` says otherwise),
    with syslog priority prefixes when it is journald's stream (or ``journal`` says so)."""
    stream = stream or sys.stdout
    if isinstance(stream, io.TextIOWrapper) and stream.encoding.lower().replace("-", "") != "utf8":
        # Chinese hints on a non-UTF-8 stream: escaped, never a crash in the middle of a log.
        stream.reconfigure(errors="backslashreplace")
    as_json = not stream.isatty() if json is None else json
    renderer: Any = (
        # Hints quote WeChat's console menus in Chinese: keep them readable in journald.
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    if is_journal_stream(stream) if journal is None else journal:
        renderer = _with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger().bind(**context)

"""structlog setup: JSON lines for machines, readable lines for people.

Every event passes :data:`REDACTOR` last-but-one, so a secret or token that
slipped into any string value is replaced before it is rendered.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from wxtokend.redact import Redactor

__all__ = ["LEVELS", "REDACTOR", "configure", "get_logger"]

LEVELS = ("debug", "info", "warning", "error")

REDACTOR = Redactor()


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = REDACTOR.scrub(value)
    return event


def configure(
    *, level: str = "info", stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Log to ``stream`` (stdout); JSON unless it is a terminal (or ``json`` says otherwise)."""
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

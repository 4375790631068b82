"""Loading and validating the YAML config.

Reading is bounded (size, values counted through aliases, depth) before anything
is built, so no file can hang the daemon at a reload. Pydantic checks the shape
(and gives the JSON Schema for editors); the steps pydantic cannot do — reading
secret files and variables, resolving the group, finding duplicates — run
afterwards, on every part whose shape is right. Every problem becomes one line
naming the file, the line, the key path and the fix, in wxtokend's words, and
all of them come together, in the file's order, in a single
:class:`~wxtokend.errors.ConfigError`.

The package, in the order a file goes through it:

- :mod:`~wxtokend.config.reader` reads the YAML (bounded by :mod:`~wxtokend.config.cost`)
  and remembers every key's line;
- :mod:`~wxtokend.config.validate` checks its shape against
  :mod:`~wxtokend.config.models`, in the words of :mod:`~wxtokend.config.explain`;
- :mod:`~wxtokend.config.resolve` does the rest (:mod:`~wxtokend.config.apps`,
  :mod:`~wxtokend.config.duplicates`, :mod:`~wxtokend.config.fleet`) and builds the
  objects of :mod:`~wxtokend.config.settings`;
- :mod:`~wxtokend.config.load` runs those steps: :func:`load_config`.

Everything the rest of wxtokend uses is imported from here.
"""

from __future__ import annotations

from wxtokend.config.cost import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_CONFIG_VALUES
from wxtokend.config.load import load_config
from wxtokend.config.models import json_schema, parse_duration
from wxtokend.config.settings import (
    COMPONENT_FILE,
    DEFAULT_API_BASE,
    DEFAULT_WECOM_API_BASE,
    OUTPUT_DIR_MODE,
    TICKETS_FOR,
    AdminConfig,
    ApiProxyConfig,
    AppConfig,
    Config,
    Grant,
    GrantChoice,
    PlatformConfig,
    Ticket,
)

__all__ = [
    "COMPONENT_FILE",
    "DEFAULT_API_BASE",
    "DEFAULT_WECOM_API_BASE",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_VALUES",
    "OUTPUT_DIR_MODE",
    "TICKETS_FOR",
    "AdminConfig",
    "ApiProxyConfig",
    "AppConfig",
    "Config",
    "Grant",
    "GrantChoice",
    "PlatformConfig",
    "Ticket",
    "json_schema",
    "load_config",
    "parse_duration",
]

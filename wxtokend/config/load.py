"""``load_config``: read the file, check its shape, then resolve what it names."""

from __future__ import annotations

import os
from pathlib import Path

from wxtokend.config.reader import _Loader
from wxtokend.config.resolve import _Resolver
from wxtokend.config.settings import Config
from wxtokend.config.validate import _validate

__all__ = ["load_config"]


def load_config(
    path: Path | str, *, environ: dict[str, str] | None = None, secrets: bool = True
) -> Config:
    """Read, validate and resolve ``path``; raise ConfigError listing every problem.

    ``secrets=False`` is for commands that only read token files (``get``): they
    run as a consumer, which must not need the AppSecrets or the file group.
    """
    path = Path(path)
    env = os.environ if environ is None else environ
    loader = _Loader(path)
    settings, apps, problems = _validate(loader, loader.read())
    problems = [*loader.problems, *problems]
    return _Resolver(loader, settings, apps, env, secrets=secrets, problems=problems).resolve()

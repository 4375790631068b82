"""What every check after the shape check shares: the file and where problems go."""

from __future__ import annotations

from wxtokend.config.reader import _Loader

__all__ = ["_Checker"]


class _Checker:
    """The base of the checks pydantic can't do.

    Each knows the file (for lines, and the directory relative paths start from) and
    whether secrets are read at all; all of them add to one list of problems, so that
    problems on one line keep the order they were found in.
    """

    def __init__(self, loader: _Loader, *, secrets: bool, problems: list[str]) -> None:
        self.loader = loader
        self.secrets = secrets
        self.base = loader.path.absolute().parent
        self.problems = problems

    def _fail(self, keypath: str, problem: str, fix: str) -> None:
        self.problems.append(self.loader.problem(keypath, problem, fix))

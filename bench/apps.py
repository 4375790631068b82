"""The benchmark's made-up apps: appids and secrets the emulator is told about."""

from __future__ import annotations

from harness import TestApp

__all__ = ["make_apps"]


def make_apps(
    n: int, *, offset: int, name: str, grants: tuple[str, ...] = ("stable", "classic")
) -> list[TestApp]:
    """n apps named ``name0``, ``name1``...; grants taken in turn from ``grants``.

    ``offset`` keeps the appids of different figures apart.
    """
    return [
        TestApp(
            appid=f"wx{offset + i:016x}",
            secret=f"{offset + i:032x}",
            name=f"{name}{i}",
            grant=grants[i % len(grants)],
        )
        for i in range(n)
    ]

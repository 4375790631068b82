"""What every benchmark returns: figures, and the markdown table they make."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Figure", "table"]


@dataclass
class Figure:
    name: str
    value: str
    target: str
    detail: str = ""


def table(figures: list[Figure]) -> str:
    rows = ["| figure | measured | target | detail |", "|---|---|---|---|"]
    rows += [f"| {f.name} | {f.value} | {f.target} | {f.detail} |" for f in figures]
    return "\n".join(rows)

"""wxtokend: one refresher for WeChat access_tokens, read by everyone from a file."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

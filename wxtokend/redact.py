"""Keeping secrets and tokens out of logs, errors and reprs.

A token is only ever shown as its fingerprint; a secret is never shown at all.
:class:`Redactor` is the last line of defence: every log event passes through
it, and any registered value that slipped into a string is replaced.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["Redactor", "Secret", "fingerprint"]

_WORDS = re.compile(r"[A-Za-z0-9_\-]+")


def fingerprint(token: str) -> str:
    """First 8 hex digits of the token's sha256: enough to tell tokens apart."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


class Secret:
    """An AppSecret that cannot leak through ``repr``, ``str`` or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Redactor:
    """Replaces registered sensitive values inside arbitrary text.

    Values are kept per owner key (``"secret:shop"``, ``"token:shop"``) so a
    rotated token replaces its predecessor instead of growing the set forever.
    Lookup splits text into word runs and checks each in a set, which stays
    cheap with tens of thousands of registered values; values containing other
    characters fall back to a substring scan.
    """

    def __init__(self) -> None:
        self._by_owner: dict[str, str] = {}
        self._words: dict[str, str] = {}
        self._odd: dict[str, str] = {}

    def register(self, owner: str, value: str, *, label: str) -> None:
        """Remember ``value`` under ``owner``; it will be shown as ``label``."""
        self.forget(owner)
        if not value:
            return
        self._by_owner[owner] = value
        table = self._words if _WORDS.fullmatch(value) else self._odd
        table[value] = label

    def forget(self, owner: str) -> None:
        old = self._by_owner.pop(owner, None)
        if old is not None:
            self._words.pop(old, None)
            self._odd.pop(old, None)

    def scrub(self, text: str) -> str:
        if not self._words and not self._odd:
            return text
        if self._words:
            text = _WORDS.sub(lambda m: self._words.get(m.group(0), m.group(0)), text)
        for value, label in self._odd.items():
            text = text.replace(value, label)
        return text

"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class WbcError(Exception):
    """An error caused by the user's input or environment, with an actionable message."""


class BadImageError(WbcError):
    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class BadImagesError(WbcError):
    """Several files could not be read; lists the first few."""

    def __init__(self, bad: list[BadImageError], shown: int = 3):
        self.bad = bad
        head = "; ".join(str(b) for b in bad[:shown])
        more = f" (and {len(bad) - shown} more)" if len(bad) > shown else ""
        super().__init__(f"{len(bad)} unreadable image file(s): {head}{more}. Fix or remove them, or pass --skip-bad")

"""
An operating-system error as an operator reads it: C{"connection refused
(ECONNREFUSED)"} — the words and the name to search for.
"""

from __future__ import annotations

import errno
import os

__all__ = ["describe_errno"]


def describe_errno(number: object) -> str | None:
    """The text of C{errno} C{number}, or C{None} if it is not one."""
    if isinstance(number, int) and number in errno.errorcode:
        return f"{os.strerror(number).lower()} ({errno.errorcode[number]})"
    return None

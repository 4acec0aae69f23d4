"""
MPush's client types and how a device's osName picks one (spec 11.2).

A user has at most one live route per client type, so every node (Python or
Java) and the push client must classify the same osName the same way: the
type is never stored, readers recompute it from the route's osName.
"""

from __future__ import annotations

import enum

__all__ = ["ClientType", "classify"]


class ClientType(enum.IntEnum):
    """The codes MPush uses as the field names of C{mp:ur:<userId>}."""

    MOBILE = 1
    PC = 2
    WEB = 3
    UNKNOWN = -1


# Checked in this order; the first type with a matching substring wins, so
# "android-web" is MOBILE as it is in Java's DefaultClientClassifier.
_RULES: tuple[tuple[ClientType, tuple[str, ...]], ...] = (
    (ClientType.MOBILE, ("android", "ios")),
    (ClientType.PC, ("windows", "mac", "linux")),
    (ClientType.WEB, ("web", "h5")),
)


def classify(os_name: str | None) -> ClientType:
    """
    The client type of a device reporting C{os_name}.

    Java throws on a null osName and silently loses the bind (spec 21.2
    item 11); here it is simply UNKNOWN.

    @raise TypeError: C{os_name} is neither text nor C{None}.
    """
    if os_name is None:
        return ClientType.UNKNOWN
    if not isinstance(os_name, str):
        raise TypeError(f"os name must be text or None, not {type(os_name).__name__}")
    lowered = os_name.lower()
    for client_type, needles in _RULES:
        for needle in needles:
            if needle in lowered:
                return client_type
    return ClientType.UNKNOWN

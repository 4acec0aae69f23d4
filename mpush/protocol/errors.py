"""Typed protocol errors and the MPush wire error codes.

Framing, body and crypto failures each get their own exception class so the
transport adapter can map them to MPush behaviour in one place: a framing
error closes the connection silently, a body or crypto error answers
ERROR/DISPATCH_ERROR and then closes (spec 14.3).
"""

from __future__ import annotations

import enum

__all__ = [
    "ErrorCode",
    "ProtocolError",
    "FramingError",
    "FrameTooLarge",
    "NegativeLength",
    "BodyError",
    "TruncatedBody",
    "MalformedField",
    "CryptoError",
    "DecompressError",
    "InflateTooLarge",
]


class ErrorCode(enum.IntEnum):
    """The `code` byte of an ERROR message (spec 14.1)."""

    OFFLINE = 1
    PUSH_CLIENT_FAILURE = 2
    ROUTER_CHANGE = 3
    ACK_TIMEOUT = 4
    DISPATCH_ERROR = 100
    UNSUPPORTED_CMD = 101
    REPEAT_HANDSHAKE = 102
    SESSION_EXPIRED = 103
    INVALID_DEVICE = 104
    UNKNOWN = -1

    @property
    def reason(self) -> str:
        """The exact Java reason text; clients compare some of it verbatim."""
        return _REASONS[self]

    @classmethod
    def of(cls, code: int) -> "ErrorCode":
        """Map any received code to a member, UNKNOWN when undefined (as Java's toEnum)."""
        try:
            return cls(code)
        except ValueError:
            return cls.UNKNOWN


_REASONS = {
    ErrorCode.OFFLINE: "user offline",
    ErrorCode.PUSH_CLIENT_FAILURE: "push to client failure",
    ErrorCode.ROUTER_CHANGE: "router change",
    ErrorCode.ACK_TIMEOUT: "ack timeout",
    ErrorCode.DISPATCH_ERROR: "handle message error",
    ErrorCode.UNSUPPORTED_CMD: "unsupported command",
    ErrorCode.REPEAT_HANDSHAKE: "repeat handshake",
    ErrorCode.SESSION_EXPIRED: "session expired",
    ErrorCode.INVALID_DEVICE: "invalid device",
    ErrorCode.UNKNOWN: "unknown",
}


class ProtocolError(Exception):
    """Base class: the peer sent bytes that do not follow the MPush protocol."""


class FramingError(ProtocolError):
    """The byte stream cannot be split into frames; the connection must be closed.

    `packets` holds the packets PacketDecoder completed earlier in the same
    chunk, before the bad header.
    """

    packets: tuple = ()


class FrameTooLarge(FramingError):
    """A frame header announced a body larger than the configured limit."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(
            f"frame body of {length} bytes exceeds max-packet-size {limit}"
        )
        self.length = length
        self.limit = limit


class NegativeLength(FramingError):
    """A frame header announced a negative body length."""


class BodyError(ProtocolError):
    """A frame arrived whole but its body cannot be turned into a message."""


class TruncatedBody(BodyError):
    """A field needs more bytes than the body holds."""


class MalformedField(BodyError):
    """A field is present but its content is invalid (bad length, bad UTF-8, bad JSON)."""


class CryptoError(ProtocolError):
    """Decryption failed (wrong length, bad padding) or a cipher was misconfigured."""


class DecompressError(BodyError):
    """A COMPRESS-flagged body is not a valid zlib stream."""


class InflateTooLarge(DecompressError):
    """A COMPRESS-flagged body inflates beyond the allowed size (zip bomb guard)."""

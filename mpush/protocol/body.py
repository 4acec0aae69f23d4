"""The body pipeline between messages and packets (spec 4).

Sending: serialise, zlib-compress when longer than the threshold, then
encrypt with the connection's current cipher. Receiving: decrypt if CRYPTO
is set and we have a cipher, then inflate if COMPRESS is set. The order
(compress before encrypt) is fixed by the Java client.

Inflation is bounded so a small compressed frame cannot make the server
allocate without limit.
"""

from __future__ import annotations

import zlib

from mpush.protocol.errors import BodyError, DecompressError, InflateTooLarge
from mpush.protocol.packet import Flags, Packet

__all__ = [
    "DEFAULT_COMPRESS_THRESHOLD",
    "DEFAULT_MAX_INFLATED",
    "encode_body",
    "decode_body",
    "inflate",
    "make_packet",
    "make_raw_packet",
]

#: Server default `mp.core.compress-threshold` (the Java client uses 1024).
DEFAULT_COMPRESS_THRESHOLD = 10240
DEFAULT_MAX_INFLATED = 1 << 20

_CRYPTO = int(Flags.CRYPTO)
_COMPRESS = int(Flags.COMPRESS)


def encode_body(
    body: bytes,
    cipher=None,
    compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
) -> tuple[bytes, int]:
    """Return (wire_body, flags_added). `cipher` is anything with encrypt()."""
    if not body:
        return b"", 0
    added = 0
    if compress_threshold is not None and len(body) > compress_threshold:
        compressed = zlib.compress(body)
        if compressed:
            body = compressed
            added |= _COMPRESS
    if cipher is not None:
        encrypted = cipher.encrypt(body)
        if encrypted:
            body = encrypted
            added |= _CRYPTO
    return body, added


def inflate(data: bytes, max_inflated: int = DEFAULT_MAX_INFLATED) -> bytes:
    """zlib (RFC 1950) inflate that never produces more than max_inflated bytes.

    Bytes after the end of the zlib stream are ignored, as Java's
    InflaterInputStream does; a stream that stops early is an error.
    """
    if max_inflated < 1:
        raise ValueError(f"max_inflated must be positive, got {max_inflated}")
    inflater = zlib.decompressobj()
    try:
        # Ask for one byte more than allowed: getting it proves the body is
        # too big, and getting less proves zlib stopped for lack of input or
        # at the end of the stream, never because the output buffer was full.
        out = inflater.decompress(data, max_inflated + 1)
    except zlib.error as exc:
        raise DecompressError(f"compressed body is not a valid zlib stream: {exc}") from None
    if len(out) > max_inflated:
        raise InflateTooLarge(f"compressed body inflates beyond the {max_inflated}-byte limit")
    if not inflater.eof:
        raise DecompressError("compressed body is truncated (zlib stream has no end)")
    return out


def decode_body(
    packet: Packet,
    cipher=None,
    max_inflated: int = DEFAULT_MAX_INFLATED,
) -> bytes:
    """Undo encode_body for a received packet and return the plaintext body.

    CRYPTO without a cipher leaves the body as is (Java does the same). A
    non-empty body that ends up empty is "message decode ex" (spec 4.3).
    """
    body = packet.body
    if not body:
        return b""
    flags = packet.flags
    if flags & _CRYPTO and cipher is not None:
        body = cipher.decrypt(body)
    if flags & _COMPRESS:
        body = inflate(body, max_inflated)
    if not body:
        raise BodyError("message decode ex")
    return body


def make_packet(
    cmd: int,
    message,
    session_id: int = 0,
    cipher=None,
    compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
    flags: int = 0,
) -> Packet:
    """Java's "send": encode, maybe compress, maybe encrypt, add the flags."""
    body = message.encode() if message is not None else b""
    wire, added = encode_body(body, cipher, compress_threshold)
    return Packet(cmd, session_id, flags | added, wire)


def make_raw_packet(cmd: int, message, session_id: int = 0, flags: int = 0) -> Packet:
    """Java's "sendRaw": plaintext, never compressed; only the caller's flags."""
    body = message.encode() if message is not None else b""
    return Packet(cmd, session_id, flags, body)

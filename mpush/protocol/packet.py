"""MPush packet framing (spec 2): the 13-byte header, the 0xDF heartbeat byte,
and an incremental per-connection decoder.

Framing is kept apart from meaning: this module knows nothing about message
bodies, ciphers or compression. It only cuts a byte stream into packets and
turns packets back into bytes.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from mpush.protocol.errors import FrameTooLarge, FramingError, NegativeLength

__all__ = [
    "HEADER_LENGTH",
    "HEARTBEAT_BYTE",
    "DEFAULT_MAX_PACKET_SIZE",
    "Command",
    "Flags",
    "Packet",
    "HEARTBEAT",
    "encode_packet",
    "encode_frame",
    "PacketDecoder",
]

HEADER_LENGTH = 13
HEARTBEAT_BYTE = b"\xdf"
DEFAULT_MAX_PACKET_SIZE = 10240

_HEARTBEAT_ORD = 0xDF
# int32 length, int8 cmd, int16 cc, int8 flags, int32 session id, int8 lrc
_HEADER = struct.Struct(">ibhbib")
_LENGTH = struct.Struct(">i")


class Command(enum.IntEnum):
    """Command codes (spec 5). Positional in Java, so the values never change."""

    HEARTBEAT = 1
    HANDSHAKE = 2
    LOGIN = 3
    LOGOUT = 4
    BIND = 5
    UNBIND = 6
    FAST_CONNECT = 7
    PAUSE = 8
    RESUME = 9
    ERROR = 10
    OK = 11
    HTTP_PROXY = 12
    KICK = 13
    GATEWAY_KICK = 14
    PUSH = 15
    GATEWAY_PUSH = 16
    NOTIFICATION = 17
    GATEWAY_NOTIFICATION = 18
    CHAT = 19
    GATEWAY_CHAT = 20
    GROUP = 21
    GATEWAY_GROUP = 22
    ACK = 23
    NACK = 24


class Flags(enum.IntFlag):
    """
    Header flag bits (spec 2.4).  REPORT_TIMEOUTS is mpush's own, on
    GATEWAY_PUSH only: the pusher asks to be told ACK_TIMEOUT.  MPush's Java
    PushSender never sets it (and hangs on codes it does not expect).
    """

    CRYPTO = 1
    COMPRESS = 2
    BIZ_ACK = 4
    AUTO_ACK = 8
    JSON_BODY = 16
    REPORT_TIMEOUTS = 64

    ACK_BITS = BIZ_ACK | AUTO_ACK


@dataclass(frozen=True, slots=True)
class Packet:
    """One unit on the wire. Decoded values are signed, as Java reads them."""

    cmd: int
    session_id: int = 0
    flags: int = 0
    body: bytes = b""
    cc: int = 0
    lrc: int = 0

    def has_flag(self, mask: int) -> bool:
        """True if ANY bit of `mask` is set (the server's semantics, spec 2.4)."""
        return (self.flags & mask) != 0

    @property
    def is_heartbeat(self) -> bool:
        """A heartbeat byte, or a full frame with cmd 1 (answered the same way)."""
        return self.cmd == Command.HEARTBEAT


HEARTBEAT = Packet(Command.HEARTBEAT)


def _to_signed(value: int, bits: int, name: str) -> int:
    """Accept a value in signed or unsigned range of `bits` and return it signed."""
    low = -(1 << (bits - 1))
    high = (1 << bits) - 1
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"packet {name} {value!r} does not fit in {bits} bits"
        )
    if value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def encode_packet(packet: Packet) -> bytes:
    """Serialise one packet: 0xDF for a heartbeat, otherwise header + body.

    cmd, cc, flags, session_id and lrc may be given signed or unsigned; a
    value that fits in neither range raises ValueError.
    """
    cmd = packet.cmd
    if cmd == 1:
        return HEARTBEAT_BYTE
    body = packet.body
    try:
        header = _HEADER.pack(
            len(body), cmd, packet.cc, packet.flags, packet.session_id, packet.lrc
        )
    except struct.error:
        # Slow path: unsigned spellings of the byte/short/int fields.
        header = _HEADER.pack(
            len(body),
            _to_signed(cmd, 8, "cmd"),
            _to_signed(packet.cc, 16, "cc"),
            _to_signed(packet.flags, 8, "flags"),
            _to_signed(packet.session_id, 32, "session_id"),
            _to_signed(packet.lrc, 8, "lrc"),
        )
    if body:
        return header + bytes(body)
    return header


def encode_frame(cmd: int, session_id: int, flags: int, body: bytes) -> bytes:
    """The bytes of a frame, as L{encode_packet} writes them, for a sender
    that has the fields at hand (no L{Packet} built): cc and lrc are 0.

    @param cmd: a command other than HEARTBEAT.
    """
    try:
        header = _HEADER.pack(len(body), cmd, 0, flags, session_id, 0)
    except struct.error:
        return encode_packet(Packet(cmd, session_id, flags, body))
    if body:
        return header + body
    return header


class PacketDecoder:
    """Incremental decoder for one connection (spec 2.6).

    feed() returns every complete unit in arrival order. A header announcing
    a body larger than `max_packet_size` raises FrameTooLarge as soon as its
    length field is buffered, without waiting for the body (spec 21.2 #1); a
    negative length raises NegativeLength. Garbage is not resynchronised.

    After it has raised, the decoder is unusable: every later feed() raises
    FramingError again. The caller is expected to close the connection. The
    packets completed earlier in the same chunk are on the exception as
    `exc.packets` (Netty would still dispatch them before closing).
    """

    __slots__ = ("_buf", "_max", "_failure")

    def __init__(self, max_packet_size: int | None = DEFAULT_MAX_PACKET_SIZE) -> None:
        if max_packet_size is not None and max_packet_size < 0:
            raise ValueError(f"max_packet_size must be >= 0 or None, got {max_packet_size}")
        self._buf = bytearray()
        self._max = max_packet_size
        # What went wrong, as text: keeping the exception would keep its
        # traceback, whose frames hold the caller (a connection) in a cycle
        # with this decoder until the cyclic GC runs.
        self._failure: str | None = None

    @property
    def max_packet_size(self) -> int | None:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes held but not yet decoded (an incomplete frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet]:
        if self._failure is not None:
            raise FramingError(
                f"decoder already failed ({self._failure}); the connection must be closed"
            )
        buf = self._buf
        if data:
            buf += data
        end = len(buf)
        pos = 0
        packets: list[Packet] = []
        append = packets.append
        limit = self._max
        unpack_from = _HEADER.unpack_from
        view = memoryview(buf)
        try:
            while pos < end:
                if buf[pos] == _HEARTBEAT_ORD:
                    append(HEARTBEAT)
                    pos += 1
                    continue
                available = end - pos
                if available < HEADER_LENGTH:
                    if available >= 4:
                        # Judge the length as soon as it is known.
                        self._check_length(_LENGTH.unpack_from(buf, pos)[0], limit)
                    break
                length, cmd, cc, flags, session_id, lrc = unpack_from(buf, pos)
                self._check_length(length, limit)
                start = pos + HEADER_LENGTH
                stop = start + length
                if stop > end:
                    break
                append(Packet(cmd, session_id, flags, bytes(view[start:stop]), cc, lrc))
                pos = stop
        except FramingError as exc:
            exc.packets = tuple(packets)
            self._failure = str(exc)
            self._buf = bytearray()
            raise
        finally:
            view.release()
        if pos:
            # bytearray deletes from the front in amortised O(1), so neither
            # many frames per chunk nor 1-byte feeds go quadratic.
            del buf[:pos]
        return packets

    @staticmethod
    def _check_length(length: int, limit: int | None) -> None:
        if length < 0:
            raise NegativeLength(f"frame header announces a negative body length {length}")
        if limit is not None and length > limit:
            raise FrameTooLarge(length, limit)

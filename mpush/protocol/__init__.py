"""The sans-I/O MPush protocol core: framing, fields, messages, crypto and the
body pipeline. Nothing here does I/O or imports Twisted, so the same code
serves the server, the client, tests, fuzzers and benchmarks.

The submodules are the API; the most used names are re-exported here.
"""

from mpush.protocol.body import decode_body, encode_body, make_packet, make_raw_packet
from mpush.protocol.errors import (
    BodyError,
    CryptoError,
    DecompressError,
    ErrorCode,
    FramingError,
    FrameTooLarge,
    InflateTooLarge,
    MalformedField,
    NegativeLength,
    ProtocolError,
    TruncatedBody,
)
from mpush.protocol.packet import (
    HEADER_LENGTH,
    HEARTBEAT,
    HEARTBEAT_BYTE,
    Command,
    Flags,
    Packet,
    PacketDecoder,
    encode_packet,
)

__all__ = [
    "BodyError",
    "Command",
    "CryptoError",
    "DecompressError",
    "ErrorCode",
    "Flags",
    "FramingError",
    "FrameTooLarge",
    "HEADER_LENGTH",
    "HEARTBEAT",
    "HEARTBEAT_BYTE",
    "InflateTooLarge",
    "MalformedField",
    "NegativeLength",
    "Packet",
    "PacketDecoder",
    "ProtocolError",
    "TruncatedBody",
    "decode_body",
    "encode_body",
    "encode_packet",
    "make_packet",
    "make_raw_packet",
]

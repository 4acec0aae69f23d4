"""
The text forms of a reusable session, shared with MPush's Java nodes and clients.

A fast connect only works if every node reading C{mp:rs:<sessionId>} agrees on
one string format, and Java servers may share the same Redis (spec 8.2, 19.1,
21.1 item 16).  The Java client persists a similar four-part string
(spec 9.2).  Both codecs live here, sans-I/O, so the in-memory and the Redis
stores go through exactly the same code.

Null text fields are written as the literal C{null}, as Java's
C{StringBuilder.append(null)} does, and C{null} is read back as C{None}: a
device that really reports its name as C{"null"} cannot be told apart from one
that reports nothing, exactly as in Java.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

__all__ = [
    "AES_KEY_LENGTH",
    "ClientSession",
    "InvalidSession",
    "ReusableSession",
    "decode_client_session",
    "decode_key_list",
    "decode_reusable_session",
    "encode_client_session",
    "encode_key_list",
    "encode_reusable_session",
    "new_session_id",
]

#: C{mp.security.aes-key-length}: bytes in a session key and in an IV.
AES_KEY_LENGTH = 16

_NULL = "null"
_FIELD_SEPARATOR = ","
_BYTE_SEPARATOR = "|"
# Java's Byte.parseByte accepts an optional sign and decimal digits; we take
# ASCII digits only so that int()'s leniency (spaces, '_', other scripts)
# cannot make us accept what a Java node rejects.
_SIGNED_DECIMAL = re.compile(r"[+-]?[0-9]+")
# Java's Byte.toString for every byte, and back: the codec of every session
# key and IV, once per handshake and per fast connect.
_SIGNED_TEXT = tuple(str(b - 256 if b > 127 else b) for b in range(256))
_SIGNED_VALUE = {text: b for b, text in enumerate(_SIGNED_TEXT)}
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class InvalidSession(ValueError):
    """
    A session string that is not exactly MPush's format, or a session that
    cannot be written in it.  Callers treat it as "no session" (SESSION_EXPIRED).
    """


@dataclass(frozen=True, slots=True)
class ReusableSession:
    """
    What fast connect restores: the device description and the cipher
    (spec 8.2).  No userId or tags: the client binds again after a fast
    connect.
    """

    os_name: str | None
    os_version: str | None
    client_version: str | None
    device_id: str | None
    session_key: bytes
    iv: bytes


@dataclass(frozen=True, slots=True)
class ClientSession:
    """
    What the Java client keeps in C{token.dat} to try a fast connect
    (spec 9.2).  C{expire_time} is epoch milliseconds.
    """

    session_id: str
    expire_time: int
    session_key: bytes
    iv: bytes


def new_session_id() -> str:
    """
    A session id from a CSPRNG, 32 lowercase hex characters like Java's MD5
    ids, without their collisions (spec 21.2 items 3 and 20).
    """
    return secrets.token_hex(16)


def encode_key_list(data: bytes) -> str:
    """
    Bytes as Java's signed bytes in decimal, joined with C{|}: how MPush
    writes session keys and IVs into text.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"key material must be bytes, not {type(data).__name__}")
    return _BYTE_SEPARATOR.join([_SIGNED_TEXT[b] for b in bytes(data)])


def decode_key_list(text: str, length: int = AES_KEY_LENGTH) -> bytes:
    """
    The inverse of L{encode_key_list}; exactly C{length} numbers in
    -128..127, anything else raises C{ValueError}.
    """
    if not isinstance(text, str):
        raise ValueError(f"key list must be text, not {type(text).__name__}")
    if length < 1:
        raise ValueError(f"key length must be positive, not {length}")
    parts = text.split(_BYTE_SEPARATOR)
    if len(parts) != length:
        raise ValueError(f"key list has {len(parts)} numbers, expected {length}")
    try:
        # What Java writes: every number in its canonical form.
        return bytes([_SIGNED_VALUE[part] for part in parts])
    except KeyError:
        pass
    out = bytearray(length)
    for index, part in enumerate(parts):
        if _SIGNED_DECIMAL.fullmatch(part) is None:
            raise ValueError(f"key list item {index} is not a decimal: {part[:20]!r}")
        try:
            value = int(part)
        except ValueError:  # more digits than int() accepts
            raise ValueError(f"key list item {index} is out of range") from None
        if not -128 <= value <= 127:
            raise ValueError(f"key list item {index} is out of range: {value}")
        out[index] = value & 0xFF
    return bytes(out)


def _encode_text_field(name: str, value: str | None) -> str:
    if value is None:
        return _NULL
    if not isinstance(value, str):
        raise InvalidSession(f"{name} must be text or None, not {type(value).__name__}")
    if _FIELD_SEPARATOR in value:
        # Java writes it anyway and can never read it back; refusing here
        # keeps a useless value out of the shared store.
        raise InvalidSession(f"{name} contains a comma, which the format cannot hold")
    return value


def _decode_text_field(value: str) -> str | None:
    return None if value == _NULL else value


def _encode_key_field(name: str, value: bytes) -> str:
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise InvalidSession(f"{name} must be non-empty bytes")
    return encode_key_list(value)


def _decode_key_field(name: str, value: str, length: int) -> bytes:
    try:
        return decode_key_list(value, length)
    except ValueError as e:
        raise InvalidSession(f"{name}: {e}") from None


def _as_text(text: str | bytes) -> str:
    if isinstance(text, (bytes, bytearray)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidSession("session text is not UTF-8") from None
    if not isinstance(text, str):
        raise InvalidSession(f"session must be text, not {type(text).__name__}")
    return text


def encode_reusable_session(session: ReusableSession) -> str:
    """
    C{osName,osVersion,clientVersion,deviceId,KEY,IV}: the exact value MPush
    keeps in C{mp:rs:<sessionId>}.
    """
    if not isinstance(session, ReusableSession):
        raise InvalidSession(f"not a ReusableSession: {type(session).__name__}")
    return _FIELD_SEPARATOR.join(
        (
            _encode_text_field("os_name", session.os_name),
            _encode_text_field("os_version", session.os_version),
            _encode_text_field("client_version", session.client_version),
            _encode_text_field("device_id", session.device_id),
            _encode_key_field("session_key", session.session_key),
            _encode_key_field("iv", session.iv),
        )
    )


def decode_reusable_session(
    text: str | bytes, key_length: int = AES_KEY_LENGTH
) -> ReusableSession:
    """
    Read a value written by L{encode_reusable_session} or by a Java node.
    Exactly 6 comma-separated parts, key and IV of C{key_length} bytes each;
    anything else raises L{InvalidSession}.
    """
    parts = _as_text(text).split(_FIELD_SEPARATOR)
    if len(parts) != 6:
        raise InvalidSession(f"session has {len(parts)} parts, expected 6")
    os_name, os_version, client_version, device_id, key, iv = parts
    return ReusableSession(
        os_name=_decode_text_field(os_name),
        os_version=_decode_text_field(os_version),
        client_version=_decode_text_field(client_version),
        device_id=_decode_text_field(device_id),
        session_key=_decode_key_field("session key", key, key_length),
        iv=_decode_key_field("iv", iv, key_length),
    )


def encode_client_session(session: ClientSession) -> str:
    """
    C{sessionId,expireTime,KEY,IV}: what the Java client's
    C{PersistentSession.encode} writes to its storage.
    """
    if not isinstance(session, ClientSession):
        raise InvalidSession(f"not a ClientSession: {type(session).__name__}")
    if not isinstance(session.session_id, str) or not session.session_id:
        raise InvalidSession("session_id must be non-empty text")
    if _FIELD_SEPARATOR in session.session_id:
        raise InvalidSession("session_id contains a comma, which the format cannot hold")
    expire_time = session.expire_time
    if (
        isinstance(expire_time, bool)
        or not isinstance(expire_time, int)
        or not _INT64_MIN <= expire_time <= _INT64_MAX
    ):
        raise InvalidSession(f"expire_time must be a 64-bit integer, not {expire_time!r}")
    return _FIELD_SEPARATOR.join(
        (
            session.session_id,
            str(expire_time),
            _encode_key_field("session_key", session.session_key),
            _encode_key_field("iv", session.iv),
        )
    )


def decode_client_session(
    text: str | bytes, key_length: int = AES_KEY_LENGTH
) -> ClientSession:
    """
    Read the client's persisted session; anything but exactly 4 valid parts
    raises L{InvalidSession} (the client then does a full handshake).
    """
    parts = _as_text(text).split(_FIELD_SEPARATOR)
    if len(parts) != 4:
        raise InvalidSession(f"client session has {len(parts)} parts, expected 4")
    session_id, expire_text, key, iv = parts
    if not session_id:
        raise InvalidSession("client session has an empty session id")
    if _SIGNED_DECIMAL.fullmatch(expire_text) is None:
        raise InvalidSession(f"expire time is not a decimal: {expire_text[:30]!r}")
    try:
        expire_time = int(expire_text)
    except ValueError:
        raise InvalidSession("expire time is out of range") from None
    if not _INT64_MIN <= expire_time <= _INT64_MAX:
        raise InvalidSession("expire time does not fit a Java long")
    return ClientSession(
        session_id=session_id,
        expire_time=expire_time,
        session_key=_decode_key_field("session key", key, key_length),
        iv=_decode_key_field("iv", iv, key_length),
    )

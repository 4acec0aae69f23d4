"""Message bodies (spec 6), both directions.

Each message is an immutable value with `encode()` -> plaintext body and
`decode(body)` -> message. Compression and encryption belong to body.py; the
packet header (cmd, session id, flags) belongs to packet.py. Decoders read
fields in order, ignore trailing bytes and raise BodyError subclasses on
short or malformed input, which the dispatcher maps to DISPATCH_ERROR.

Null strings: the wire cannot tell None from "", so decoding always yields
None for an empty string field (spec 3.2).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from mpush.protocol.errors import ErrorCode, MalformedField
from mpush.protocol.fields import FieldReader, FieldWriter

__all__ = [
    "HandshakeMessage",
    "HandshakeOkMessage",
    "FastConnectMessage",
    "FastConnectOkMessage",
    "BindUserMessage",
    "OkMessage",
    "ErrorMessage",
    "KickUserMessage",
    "PushMessage",
    "AckMessage",
    "HttpRequestMessage",
    "HttpResponseMessage",
    "GatewayPushMessage",
    "GatewayKickUserMessage",
    "HTTP_METHODS",
]

#: HttpRequestMessage.method byte -> HTTP verb; any other value means GET.
HTTP_METHODS = {0: "GET", 1: "POST", 2: "PUT", 3: "DELETE"}


@dataclass(frozen=True, slots=True)
class HandshakeMessage:
    """cmd 2, client -> server; RSA-encrypted on the wire (6.1)."""

    device_id: str | None
    os_name: str | None
    os_version: str | None
    client_version: str | None
    iv: bytes | None
    client_key: bytes | None
    min_heartbeat: int
    max_heartbeat: int
    timestamp: int = 0

    def encode(self) -> bytes:
        return (
            FieldWriter()
            .write_string(self.device_id)
            .write_string(self.os_name)
            .write_string(self.os_version)
            .write_string(self.client_version)
            .write_bytes(self.iv)
            .write_bytes(self.client_key)
            .write_int(self.min_heartbeat)
            .write_int(self.max_heartbeat)
            .write_long(self.timestamp)
            .getvalue()
        )

    @classmethod
    def decode(cls, body: bytes) -> "HandshakeMessage":
        r = FieldReader(body)
        return cls(
            r.read_string(),
            r.read_string(),
            r.read_string(),
            r.read_string(),
            r.read_bytes(),
            r.read_bytes(),
            r.read_int(),
            r.read_int(),
            r.read_long(),
        )


@dataclass(frozen=True, slots=True)
class HandshakeOkMessage:
    """cmd 2, server -> client; AES(clientKey, iv)-encrypted (6.2)."""

    server_key: bytes | None
    heartbeat: int
    session_id: str | None
    expire_time: int

    def encode(self) -> bytes:
        return (
            FieldWriter()
            .write_bytes(self.server_key)
            .write_int(self.heartbeat)
            .write_string(self.session_id)
            .write_long(self.expire_time)
            .getvalue()
        )

    @classmethod
    def decode(cls, body: bytes) -> "HandshakeOkMessage":
        r = FieldReader(body)
        return cls(r.read_bytes(), r.read_int(), r.read_string(), r.read_long())


@dataclass(frozen=True, slots=True)
class FastConnectMessage:
    """cmd 7, client -> server; plaintext from the Java client (6.3)."""

    session_id: str | None
    device_id: str | None
    min_heartbeat: int
    max_heartbeat: int

    def encode(self) -> bytes:
        return (
            FieldWriter()
            .write_string(self.session_id)
            .write_string(self.device_id)
            .write_int(self.min_heartbeat)
            .write_int(self.max_heartbeat)
            .getvalue()
        )

    @classmethod
    def decode(cls, body: bytes) -> "FastConnectMessage":
        r = FieldReader(body)
        return cls(r.read_string(), r.read_string(), r.read_int(), r.read_int())


@dataclass(frozen=True, slots=True)
class FastConnectOkMessage:
    """cmd 7, server -> client; sent raw (6.4)."""

    heartbeat: int

    def encode(self) -> bytes:
        return FieldWriter().write_int(self.heartbeat).getvalue()

    @classmethod
    def decode(cls, body: bytes) -> "FastConnectOkMessage":
        return cls(FieldReader(body).read_int())


@dataclass(frozen=True, slots=True)
class BindUserMessage:
    """cmd 5 BIND and cmd 6 UNBIND (6.5). `data` is the Java client's "alias"."""

    user_id: str | None
    data: str | None = None
    tags: str | None = None

    def encode(self) -> bytes:
        return (
            FieldWriter()
            .write_string(self.user_id)
            .write_string(self.data)
            .write_string(self.tags)
            .getvalue()
        )

    @classmethod
    def decode(cls, body: bytes) -> "BindUserMessage":
        r = FieldReader(body)
        return cls(r.read_string(), r.read_string(), r.read_string())


@dataclass(frozen=True, slots=True)
class OkMessage:
    """cmd 11 (6.6). `cmd` is the command being answered."""

    cmd: int
    code: int = 0
    data: str | None = None

    def encode(self) -> bytes:
        return (
            FieldWriter()
            .write_byte(self.cmd)
            .write_byte(self.code)
            .write_string(self.data)
            .getvalue()
        )

    @classmethod
    def decode(cls, body: bytes) -> "OkMessage":
        r = FieldReader(body)
        return cls(r.read_byte(), r.read_byte(), r.read_string())


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """cmd 10 (6.7). `cmd` is the failed command; code 0 means "reason only"."""

    cmd: int
    code: int
    reason: str | None
    data: str | None = None

    @classmethod
    def from_code(cls, cmd: int, code: ErrorCode, data: str | None = None) -> "ErrorMessage":
        """The usual form: the reason text is the code's exact Java text."""
        return cls(int(cmd), int(code), code.reason, data)

    def encode(self) -> bytes:
        return (
            FieldWriter()
            .write_byte(self.cmd)
            .write_byte(self.code)
            .write_string(self.reason)
            .write_string(self.data)
            .getvalue()
        )

    @classmethod
    def decode(cls, body: bytes) -> "ErrorMessage":
        r = FieldReader(body)
        return cls(r.read_byte(), r.read_byte(), r.read_string(), r.read_string())


@dataclass(frozen=True, slots=True)
class KickUserMessage:
    """cmd 13, server -> client (6.8)."""

    device_id: str | None
    user_id: str | None

    def encode(self) -> bytes:
        return FieldWriter().write_string(self.device_id).write_string(self.user_id).getvalue()

    @classmethod
    def decode(cls, body: bytes) -> "KickUserMessage":
        r = FieldReader(body)
        return cls(r.read_string(), r.read_string())


@dataclass(frozen=True, slots=True)
class PushMessage:
    """cmd 15 (6.9): the body IS the content, no length prefix."""

    content: bytes

    def encode(self) -> bytes:
        return bytes(self.content)

    @classmethod
    def decode(cls, body: bytes) -> "PushMessage":
        return cls(bytes(body))


@dataclass(frozen=True, slots=True)
class AckMessage:
    """cmd 23 (6.10): empty body; the header session id names the PUSH acked."""

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, body: bytes) -> "AckMessage":
        return cls()


@dataclass(frozen=True, slots=True)
class HttpRequestMessage:
    """cmd 12, client -> server (6.11). method: 0 GET, 1 POST, 2 PUT, 3 DELETE."""

    method: int
    uri: str | None
    headers: dict | None
    body: bytes | None

    @property
    def method_name(self) -> str:
        """The HTTP verb; unknown method bytes mean GET, as in Java."""
        return HTTP_METHODS.get(self.method, "GET")

    def encode(self) -> bytes:
        return (
            FieldWriter()
            .write_byte(self.method)
            .write_string(self.uri)
            .write_headers(self.headers)
            .write_bytes(self.body)
            .getvalue()
        )

    @classmethod
    def decode(cls, body: bytes) -> "HttpRequestMessage":
        r = FieldReader(body)
        return cls(r.read_byte(), r.read_string(), r.read_headers(), r.read_bytes())


@dataclass(frozen=True, slots=True)
class HttpResponseMessage:
    """cmd 12, server -> client (6.12)."""

    status_code: int
    reason_phrase: str | None
    headers: dict | None
    body: bytes | None

    def encode(self) -> bytes:
        return (
            FieldWriter()
            .write_int(self.status_code)
            .write_string(self.reason_phrase)
            .write_headers(self.headers)
            .write_bytes(self.body)
            .getvalue()
        )

    @classmethod
    def decode(cls, body: bytes) -> "HttpResponseMessage":
        r = FieldReader(body)
        return cls(r.read_int(), r.read_string(), r.read_headers(), r.read_bytes())


_SHORT_AT = struct.Struct(">h").unpack_from
_INT_INT_SHORT_AT = struct.Struct(">iih").unpack_from
#: Three null strings (task id, tags, condition).
_THREE_NULLS = bytes(6)


def _encode_tags(tags) -> str | None:
    """Compact JSON array like fastjson: ["a","b"]. A frozenset is sorted for stable bytes."""
    if tags is None:
        return None
    if isinstance(tags, str):
        raise ValueError("tags must be a collection of str, not a str")
    items = sorted(tags) if isinstance(tags, (set, frozenset)) else list(tags)
    for tag in items:
        if not isinstance(tag, str):
            raise ValueError(f"tag {tag!r} is not a str")
    return json.dumps(items, separators=(",", ":"), ensure_ascii=False)


def _decode_tags(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedField(f"tags field is not valid JSON: {exc}") from None
    if not isinstance(value, list):
        raise MalformedField(f"tags field is not a JSON array: {text[:80]!r}")
    for tag in value:
        if not isinstance(tag, str):
            raise MalformedField(f"tags field holds a non-string member: {tag!r}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class GatewayPushMessage:
    """cmd 16, push client -> gateway (6.13). user_id None means broadcast.

    `tags` is a tuple (or frozenset) of str; on the wire a JSON array string.
    decode() returns a tuple in wire order.
    """

    user_id: str | None
    client_type: int
    timeout: int
    content: bytes | None
    task_id: str | None = None
    tags: tuple[str, ...] | frozenset[str] | None = None
    condition: str | None = None

    def encode(self) -> bytes:
        return (
            FieldWriter()
            .write_string(self.user_id)
            .write_int(self.client_type)
            .write_int(self.timeout)
            .write_bytes(self.content)
            .write_string(self.task_id)
            .write_string(_encode_tags(self.tags))
            .write_string(self.condition)
            .getvalue()
        )

    @classmethod
    def decode(cls, body: bytes) -> "GatewayPushMessage":
        # The usual body at C speed: short fields, no task, tags or
        # condition.  Anything else (or anything wrong) is read by the
        # FieldReader below, which raises the precise error.
        if body.__class__ is not bytes:
            body = bytes(body)
        try:
            n = _SHORT_AT(body, 0)[0]
            if 0 < n < 0x7FFF:
                p = 2 + n
                client_type, timeout, m = _INT_INT_SHORT_AT(body, p)
                p += 10
                if 0 < m < 0x7FFF and body[p + m:p + m + 6] == _THREE_NULLS:
                    return cls(
                        body[2:2 + n].decode("utf-8"), client_type, timeout, body[p:p + m]
                    )
        except (struct.error, UnicodeDecodeError, TypeError):
            pass
        return cls._decode_fields(body)

    @classmethod
    def _decode_fields(cls, body: bytes) -> "GatewayPushMessage":
        r = FieldReader(body)
        return cls(
            r.read_string(),
            r.read_int(),
            r.read_int(),
            r.read_bytes(),
            r.read_string(),
            _decode_tags(r.read_string()),
            r.read_string(),
        )


@dataclass(frozen=True, slots=True)
class GatewayKickUserMessage:
    """cmd 14, server -> server over the UDP gateway (6.14)."""

    user_id: str | None
    device_id: str | None
    conn_id: str | None
    client_type: int
    target_server: str | None
    target_port: int

    def encode(self) -> bytes:
        return (
            FieldWriter()
            .write_string(self.user_id)
            .write_string(self.device_id)
            .write_string(self.conn_id)
            .write_int(self.client_type)
            .write_string(self.target_server)
            .write_int(self.target_port)
            .getvalue()
        )

    @classmethod
    def decode(cls, body: bytes) -> "GatewayKickUserMessage":
        r = FieldReader(body)
        return cls(
            r.read_string(),
            r.read_string(),
            r.read_string(),
            r.read_int(),
            r.read_string(),
            r.read_int(),
        )

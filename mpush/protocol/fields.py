"""Field encoding inside message bodies (spec 3).

Bodies are plain concatenations of big-endian fields with no tags, so the
writer and the reader must agree on order; the message classes do that.
Two quirks matter for the Java client: null and "" are the same on the wire
(and decode as None), and lengths of 32767 or more use a 0x7fff + int32
extension.
"""

from __future__ import annotations

import struct

from mpush.protocol.errors import MalformedField, TruncatedBody

__all__ = [
    "FieldWriter",
    "FieldReader",
    "encode_headers",
    "decode_headers",
    "EXTENDED_LENGTH",
    "INT32_MAX",
    "INT32_MIN",
]

#: The range of a Java int: an int32 field, and every id, count or
#: millisecond setting MPush keeps in one.
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

#: int16 length value that announces an int32 extension.
EXTENDED_LENGTH = 0x7FFF
_MAX_FIELD_LENGTH = EXTENDED_LENGTH + INT32_MAX

_BYTE = struct.Struct(">b")
_SHORT = struct.Struct(">h")
_INT = struct.Struct(">i")
_LONG = struct.Struct(">q")


def _check_range(value: int, bits: int, kind: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{kind} field must be an int, got {type(value).__name__}")
    low = -(1 << (bits - 1))
    if not low <= value < -low:
        raise ValueError(f"{kind} field value {value} is outside [{low}, {-low - 1}]")


class FieldWriter:
    """Builds a body field by field; every write method returns self."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def write_byte(self, v: int) -> "FieldWriter":
        _check_range(v, 8, "byte")
        self._buf += _BYTE.pack(v)
        return self

    def write_short(self, v: int) -> "FieldWriter":
        _check_range(v, 16, "short")
        self._buf += _SHORT.pack(v)
        return self

    def write_int(self, v: int) -> "FieldWriter":
        _check_range(v, 32, "int")
        self._buf += _INT.pack(v)
        return self

    def write_long(self, v: int) -> "FieldWriter":
        _check_range(v, 64, "long")
        self._buf += _LONG.pack(v)
        return self

    def write_bytes(self, b: bytes | None) -> "FieldWriter":
        """None and b"" both become 0x0000: Java cannot tell them apart either."""
        buf = self._buf
        if not b:
            buf += b"\x00\x00"
            return self
        n = len(b)
        if n < EXTENDED_LENGTH:
            buf += _SHORT.pack(n)
        elif n <= _MAX_FIELD_LENGTH:
            buf += _SHORT.pack(EXTENDED_LENGTH)
            buf += _INT.pack(n - EXTENDED_LENGTH)
        else:
            raise ValueError(f"bytes field of {n} bytes is longer than the wire format allows")
        buf += b
        return self

    def write_string(self, s: str | None) -> "FieldWriter":
        if s is None:
            return self.write_bytes(None)
        if not isinstance(s, str):
            raise ValueError(f"string field must be str or None, got {type(s).__name__}")
        try:
            data = s.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"string field is not encodable as UTF-8: {exc}") from None
        return self.write_bytes(data)

    def write_headers(self, d: dict | None) -> "FieldWriter":
        return self.write_string(encode_headers(d))

    def getvalue(self) -> bytes:
        return bytes(self._buf)


class FieldReader:
    """Reads fields in order from one body. Trailing bytes are left unread."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int, what: str) -> int:
        """Reserve n bytes and return their start offset."""
        pos = self._pos
        if len(self._data) - pos < n:
            raise TruncatedBody(
                f"{what} needs {n} bytes at offset {pos}, only {len(self._data) - pos} left"
            )
        self._pos = pos + n
        return pos

    def read_byte(self) -> int:
        return _BYTE.unpack_from(self._data, self._take(1, "byte field"))[0]

    def read_short(self) -> int:
        return _SHORT.unpack_from(self._data, self._take(2, "short field"))[0]

    def read_int(self) -> int:
        return _INT.unpack_from(self._data, self._take(4, "int field"))[0]

    def read_long(self) -> int:
        return _LONG.unpack_from(self._data, self._take(8, "long field"))[0]

    def read_bytes(self) -> bytes | None:
        """A zero length means null (there is no empty value on the wire)."""
        start = self._pos
        data = self._data
        if len(data) - start >= 2:
            # The usual case inline (every handshake has six of these).
            n = _SHORT.unpack_from(data, start)[0]
            if n > 0 and n != EXTENDED_LENGTH and len(data) - start - 2 >= n:
                self._pos = start + 2 + n
                return data[start + 2:start + 2 + n]
        n = self.read_short()
        if n == 0:
            return None
        if n < 0:
            raise MalformedField(f"bytes field at offset {start} has negative length {n}")
        if n == EXTENDED_LENGTH:
            extra = self.read_int()
            if extra < 0:
                raise MalformedField(
                    f"bytes field at offset {start} has negative length extension {extra}"
                )
            n += extra
        pos = self._take(n, "bytes field")
        return self._data[pos:pos + n]

    def read_string(self) -> str | None:
        start = self._pos
        data = self.read_bytes()
        if data is None:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedField(f"string field at offset {start} is not UTF-8: {exc}") from None

    def read_headers(self) -> dict | None:
        return decode_headers(self.read_string())


def encode_headers(d: dict | None) -> str | None:
    """Serialise a header map as `name:value\\n` lines (spec 3.3).

    Insertion order is kept. A None value becomes the text "null", as Java
    string concatenation does. Names that are empty or contain ':' or '\\n',
    and values containing '\\n', cannot survive the Java parser and raise
    ValueError instead of silently corrupting the map.
    """
    if not d:
        return None
    parts = []
    for name, value in d.items():
        if not isinstance(name, str) or not name or ":" in name or "\n" in name:
            raise ValueError(f"header name {name!r} cannot be encoded")
        if value is None:
            value = "null"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        elif not isinstance(value, str):
            raise ValueError(f"header {name!r} value must be str, int or None, got {type(value).__name__}")
        if "\n" in value:
            raise ValueError(f"header {name!r} value contains a newline")
        parts.append(f"{name}:{value}\n")
    return "".join(parts)


def decode_headers(s: str | None) -> dict | None:
    """Parse header text exactly as the Java helper does (spec 3.3).

    Name is the text before the first ':' (no trimming); lines without ':'
    or starting with ':' are skipped; a line ending right after ':' reuses
    the previous value (None for the first); text after the last '\\n' is
    ignored; duplicate names keep the last value.
    """
    if s is None:
        return None
    headers: dict[str, str | None] = {}
    value: str | None = None
    start = 0
    while True:
        newline = s.find("\n", start)
        if newline < 0:
            break
        line = s[start:newline]
        start = newline + 1
        colon = line.find(":")
        if colon <= 0:
            continue
        if colon < len(line) - 1:
            value = line[colon + 1:]
        headers[line[:colon]] = value
    return headers

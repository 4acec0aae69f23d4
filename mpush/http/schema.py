"""
Strict validation of the HTTP API's request bodies.

Strict because a push is irreversible: a misspelt field (C{"timeout"} for
C{"timeout_ms"}) or a float where an int belongs must be refused with the
field's name, not silently replaced by a default.  Everything here works on
bytes and plain values (no twisted.web), so it is tested and fuzzed directly.
"""

from __future__ import annotations

import base64
import binascii
import json

from mpush.http.errors import InvalidRequest, UnsupportedMediaType
from mpush.node_api import MAX_USERS, PushRequest
from mpush.protocol.fields import INT32_MAX, INT32_MIN

__all__ = [
    "ACK_MODELS",
    "KICK_FIELDS",
    "kick_closes",
    "MAX_BODY_BYTES",
    "MAX_USERS",
    "OFFLINE_TTL_RANGE",
    "PUSH_FIELDS",
    "TIMEOUT_MS_RANGE",
    "check_content_type",
    "parse_json_object",
    "parse_kick",
    "parse_push",
    "path_text",
]

#: Largest request body accepted (413 beyond).
MAX_BODY_BYTES = 1024 * 1024
TIMEOUT_MS_RANGE = (1, 60_000)
#: One second to 30 days.
OFFLINE_TTL_RANGE = (1, 2_592_000)
ACK_MODELS = ("none", "auto", "biz")
DEFAULT_TIMEOUT_MS = 3000

#: Every field of C{POST /v1/push} (openapi.json PushRequest lists the same).
PUSH_FIELDS = frozenset({
    "users", "content", "content_b64", "ack", "timeout_ms", "offline_ttl",
    "broadcast", "tags", "condition", "task_id",
})
#: Every field of C{POST /v1/users/{user_id}/kick}.
KICK_FIELDS = frozenset({"client_type", "close"})



class _DuplicateKey(ValueError):
    pass


def check_content_type(values: list[bytes] | None) -> None:
    """
    The body must be declared C{application/json}; a charset parameter, if
    any, must be UTF-8 (the only encoding JSON over HTTP may use).

    @param values: every Content-Type header of the request, or C{None}.
    @raise UnsupportedMediaType: missing, repeated, or another type.
    """
    if not values:
        raise UnsupportedMediaType("Content-Type must be application/json")
    if len(values) > 1:
        raise UnsupportedMediaType("Content-Type is given more than once")
    try:
        text = values[0].decode("ascii")
    except UnicodeDecodeError:
        raise UnsupportedMediaType("Content-Type must be application/json") from None
    media_type, *params = text.split(";")
    if media_type.strip().lower() != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {media_type.strip()!r}")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(f"charset must be utf-8, not {value.strip()!r}")


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


#: The request bodies' decoder, made once (C{json.loads} with hooks makes one a call).
_DECODER = json.JSONDecoder(object_pairs_hook=_object_without_duplicates, parse_constant=_no_constants)


def parse_json_object(data: bytes) -> dict:
    """
    A UTF-8 JSON object, or a 400.  Duplicate keys, NaN and Infinity are
    refused: other parsers would read such a body differently than we do.

    @raise InvalidRequest: not UTF-8, not JSON, not an object.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"body is not UTF-8: invalid byte at offset {exc.start}") from None
    try:
        value = _DECODER.decode(text)
    except _DuplicateKey as exc:
        raise InvalidRequest(f"body has the field {str(exc)!r} more than once") from None
    except RecursionError:
        raise InvalidRequest("body is nested too deeply") from None
    except ValueError as exc:
        raise InvalidRequest(f"body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"body must be a JSON object, not {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _unknown_fields(obj: dict, known: frozenset[str]) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _text(value: object, field: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string, not {_json_type(value)}")
    if not allow_empty and not value:
        raise InvalidRequest(f"{field} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{field} is not valid Unicode (lone surrogate)") from None
    return value


def _int(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{field} must be an integer, not {_json_type(value)}")
    if not low <= value <= high:
        raise InvalidRequest(f"{field} must be in {low}..{high}, not {value}")
    return value


def _text_list(value: object, field: str, most: int | None = None) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidRequest(f"{field} must be an array of strings, not {_json_type(value)}")
    if not value:
        raise InvalidRequest(f"{field} must not be empty")
    if most is not None and len(value) > most:
        raise InvalidRequest(f"{field} names {len(value)} entries, more than {most}")
    items = [_text(item, f"{field}[{index}]") for index, item in enumerate(value)]
    # Naming a user twice must not push to them twice.
    return tuple(dict.fromkeys(items))


def _content(obj: dict) -> bytes:
    has_text, has_b64 = "content" in obj, "content_b64" in obj
    if has_text and has_b64:
        raise InvalidRequest("give content or content_b64, not both")
    if has_text:
        return _text(obj["content"], "content", allow_empty=True).encode("utf-8")
    if has_b64:
        encoded = _text(obj["content_b64"], "content_b64", allow_empty=True)
        try:
            return base64.b64decode(encoded.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            raise InvalidRequest("content_b64 is not valid base64") from None
    raise InvalidRequest("content or content_b64 is required")


def parse_push(obj: dict) -> PushRequest:
    """
    The PushRequest a C{POST /v1/push} body asks for.

    Either C{users} (1..1000 ids), or C{"broadcast": true} with optional
    C{tags}, C{condition} and C{task_id}; exactly one of C{content} (text,
    sent as UTF-8) and C{content_b64}.

    @raise InvalidRequest: naming the first offending field.
    """
    if not isinstance(obj, dict):
        raise InvalidRequest(f"body must be a JSON object, not {_json_type(obj)}")
    _unknown_fields(obj, PUSH_FIELDS)
    broadcast = obj.get("broadcast", False)
    if not isinstance(broadcast, bool):
        raise InvalidRequest(f"broadcast must be a boolean, not {_json_type(broadcast)}")
    users = tags = condition = task_id = None
    if broadcast:
        if "users" in obj:
            raise InvalidRequest("users cannot be given with broadcast")
        if "tags" in obj:
            tags = _text_list(obj["tags"], "tags")
        if "condition" in obj:
            condition = _text(obj["condition"], "condition")
        if "task_id" in obj:
            task_id = _text(obj["task_id"], "task_id")
    else:
        for field in ("tags", "condition", "task_id"):
            if field in obj:
                raise InvalidRequest(f"{field} goes with \"broadcast\": true")
        if "users" not in obj:
            raise InvalidRequest("users is required (or \"broadcast\": true)")
        users = _text_list(obj["users"], "users", MAX_USERS)
    content = _content(obj)
    ack = obj.get("ack", "none")
    if not isinstance(ack, str) or ack not in ACK_MODELS:
        raise InvalidRequest(f"ack must be one of {', '.join(ACK_MODELS)}")
    timeout_ms = DEFAULT_TIMEOUT_MS
    if "timeout_ms" in obj:
        timeout_ms = _int(obj["timeout_ms"], "timeout_ms", *TIMEOUT_MS_RANGE)
    offline_ttl = None
    if "offline_ttl" in obj:
        offline_ttl = _int(obj["offline_ttl"], "offline_ttl", *OFFLINE_TTL_RANGE)
    return PushRequest(
        users=users,
        content=content,
        ack=ack,
        timeout_ms=timeout_ms,
        offline_ttl=offline_ttl,
        broadcast=broadcast,
        tags=tags,
        condition=condition,
        task_id=task_id,
    )


def parse_kick(obj: dict | None) -> int | None:
    """
    The client type a kick body names, or C{None} (no body, or no field):
    every client type of the user.

    @raise InvalidRequest: an unknown field or a client_type that is not an int32.
    """
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise InvalidRequest(f"body must be a JSON object, not {_json_type(obj)}")
    _unknown_fields(obj, KICK_FIELDS)
    if "client_type" not in obj:
        return None
    return _int(obj["client_type"], "client_type", INT32_MIN, INT32_MAX)


def kick_closes(obj: dict | None) -> bool:
    """
    Whether a kick body asks to close the connection: yes unless
    C{"close": false} (MPush's kick, which leaves it open).  Call after
    L{parse_kick}, which vets the body.

    @raise InvalidRequest: close is not a boolean.
    """
    if obj is None or "close" not in obj:
        return True
    close = obj["close"]
    if not isinstance(close, bool):
        raise InvalidRequest(f"close must be a boolean, not {_json_type(close)}")
    return close


def path_text(segment: bytes, name: str) -> str:
    """
    A path parameter (already percent-decoded by twisted.web) as text.

    @raise InvalidRequest: not UTF-8.
    """
    try:
        return segment.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{name} in the path is not UTF-8") from None

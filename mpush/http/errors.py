"""
Every answer the HTTP API gives that is not a success, as a typed error.

A client (or the C{mpush} command) tells failures apart by C{error.code},
never by parsing messages, so the codes are a closed set listed here and in
openapi.json.  The body is always C{{"error": {"code": ..., "message": ...}}}.
"""

from __future__ import annotations

import json

__all__ = [
    "ALL_CODES",
    "ApiError",
    "GatewayTimeout",
    "InternalError",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PushRefused",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "error_body",
]


def error_body(code: str, message: str) -> bytes:
    """The JSON bytes of one error; ASCII-only so any message is safe to send."""
    return json.dumps({"error": {"code": code, "message": message}}).encode("ascii")


class ApiError(Exception):
    """An HTTP error answer: status, a stable code, a message for humans."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """Extra response headers this error needs (Allow, WWW-Authenticate)."""
        return ()

    def body(self) -> bytes:
        return error_body(self.code, self.message)


class InvalidRequest(ApiError):
    """The request is malformed: bad JSON, a wrong field, a bad path segment."""

    status = 400
    code = "invalid_request"


class PushRefused(ApiError):
    """The node refused a well-formed push (NodeAPI's PushRejected)."""

    status = 400
    code = "push_rejected"


class Unauthorized(ApiError):
    """Missing or wrong bearer token."""

    status = 401
    code = "unauthorized"

    def headers(self):
        return ((b"WWW-Authenticate", b'Bearer realm="mpush"'),)


class NotFound(ApiError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    """The path exists but not with this method; C{allow} lists the ones it has."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self):
        return ((b"Allow", ", ".join(self.allow).encode("ascii")),)


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class GatewayTimeout(ApiError):
    """The node did not answer within its own bound plus the safety margin."""

    status = 504
    code = "timeout"


class ServiceUnavailable(ApiError):
    """What the answer needs (Redis: the node registry, routes) is out or too slow now."""

    status = 503
    code = "unavailable"


class InternalError(ApiError):
    """A bug: logged with its traceback, answered without one."""

    status = 500
    code = "internal_error"


#: Every error code the API can answer with (openapi.json lists the same set).
ALL_CODES = frozenset(
    cls.code
    for cls in (InvalidRequest, PushRefused, Unauthorized, NotFound, MethodNotAllowed,
                PayloadTooLarge, UnsupportedMediaType, GatewayTimeout, ServiceUnavailable, InternalError)
)

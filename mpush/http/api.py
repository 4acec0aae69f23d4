"""
The HTTP push API's twisted.web resources: routing, auth, JSON answers, and
the life of a request whose answer comes from a Deferred.

One leaf resource (L{ApiResource}) serves everything under C{/v1} from a
route table (L{ROUTES}), so 404 vs 405 vs 401 is decided in one place and
every answer, including every error and every bug, is JSON: a traceback page
from twisted.web would leak internals and break clients that parse errors.
"""

from __future__ import annotations

import hmac
import io
import json
from dataclasses import dataclass
from importlib import resources

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from mpush.http import schema
from mpush.http.errors import (
    ApiError,
    GatewayTimeout,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PushRefused,
    ServiceUnavailable,
    Unauthorized,
)
from mpush.node_api import PushRejected
from mpush.router.interfaces import RouterUnavailable
from mpush.push.results import client_type_name, node_name

__all__ = [
    "ROUTES",
    "ROUTE_FIELDS",
    "ApiResource",
    "ApiSite",
    "CappedBody",
    "HttpApiRoot",
    "Reply",
    "Route",
    "TokenGuard",
    "check_bearer",
    "load_openapi",
]

log = Logger()

_JSON = b"application/json; charset=utf-8"
_TEXT = b"text/plain; charset=utf-8"
#: Bounds a NodeAPI call other than a push (Redis round trips) by itself.
DEFAULT_CALL_BOUND_S = 5.0
#: Added to the NodeAPI's own bound before the API gives up with a 504.
DEFAULT_SAFETY_MARGIN_S = 5.0


@dataclass(frozen=True, slots=True)
class Route:
    """One method on one path template; C{{name}} segments are parameters."""

    method: str
    path: str
    handler: str

    @property
    def segments(self) -> tuple[str, ...]:
        """The template below C{/v1/}."""
        return tuple(self.path.split("/")[2:])


#: Every route of the API (openapi.json documents exactly these).
ROUTES = (
    Route("POST", "/v1/push", "_push"),
    Route("GET", "/v1/users/{user_id}", "_user"),
    Route("POST", "/v1/users/{user_id}/kick", "_kick"),
    Route("GET", "/v1/stats", "_stats"),
    Route("GET", "/v1/tasks/{task_id}", "_task"),
    # MPush clients fetch the allot list with a bare GET (no headers can be
    # configured): an operator who serves them lists it in [http] public-paths.
    Route("GET", "/v1/allot", "_allot"),
    Route("GET", "/v1/openapi.json", "_openapi"),
)

#: L{Reply.json}'s encoder, made once (C{json.dumps} with an option makes one a call).
_ENCODER = json.JSONEncoder(allow_nan=False)

#: Each route with its template, made once.
_TEMPLATES = tuple((route, route.segments) for route in ROUTES)
#: The routes without parameters by (method, path below C{/v1/}): found with
#: one look-up (no template of the same method matches their paths).
_FIXED = {(route.method.encode("ascii"), tuple(part.encode("ascii") for part in template)): route
          for route, template in _TEMPLATES if not any(part.startswith("{") for part in template)}

#: The fields of one entry of C{GET /v1/users/{user_id}}'s C{routes}.
ROUTE_FIELDS = ("client_type", "client_type_name", "online", "node", "device_id",
                "os_name", "client_version", "conn_id")


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole answer: status, body, content type, extra headers."""

    status: int
    body: bytes
    content_type: bytes = _JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def json(cls, value: object, status: int = 200) -> "Reply":
        # ASCII escapes: a lone surrogate in a user id read from Redis is
        # still sent as valid bytes; allow_nan=False keeps the output JSON.
        return cls(status, _ENCODER.encode(value).encode("ascii"))

    @classmethod
    def text(cls, text: str, status: int = 200) -> "Reply":
        return cls(status, text.encode("utf-8"), _TEXT)

    @classmethod
    def error(cls, error: ApiError) -> "Reply":
        return cls(error.status, error.body(), _JSON, error.headers())


def load_openapi() -> bytes:
    """The OpenAPI document shipped next to this module."""
    return resources.files("mpush.http").joinpath("openapi.json").read_bytes()


def _send(request, reply: Reply) -> None:
    request.setResponseCode(reply.status)
    headers = request.responseHeaders
    headers.setRawHeaders(b"Content-Type", [reply.content_type])
    headers.setRawHeaders(b"Content-Length", [b"%d" % len(reply.body)])
    headers.setRawHeaders(b"Cache-Control", [b"no-store"])
    headers.setRawHeaders(b"X-Content-Type-Options", [b"nosniff"])
    for name, value in reply.headers:
        headers.setRawHeaders(name, [value])
    request.write(reply.body)
    request.finish()


def check_bearer(request, token: bytes | None) -> None:
    """
    Raise L{Unauthorized} unless C{request} carries C{Authorization: Bearer
    <token>} (compared in constant time); C{None} accepts every request.
    """
    if token is None:
        return
    values = request.requestHeaders.getRawHeaders(b"authorization")
    if not values:
        raise Unauthorized("Authorization: Bearer <token> is required")
    if len(values) > 1:
        raise Unauthorized("Authorization is given more than once")
    scheme, _, credentials = values[0].strip().partition(b" ")
    if scheme.lower() != b"bearer":
        raise Unauthorized("Authorization must be Bearer <token>")
    if not hmac.compare_digest(credentials.strip(), token):
        raise Unauthorized("wrong token")


def _token_bytes(token: str | bytes | None) -> bytes | None:
    if isinstance(token, str):
        token = token.encode("utf-8")
    if not token:
        return None
    if not isinstance(token, bytes) or token != token.strip() or b" " in token:
        raise ValueError("the API token must be a string without spaces (or None/empty for no auth)")
    return token


def _describe(request) -> str:
    method = getattr(request, "method", b"?") or b"?"
    uri = getattr(request, "uri", b"?") or b"?"
    return f"{method[:16].decode('ascii', 'replace')} {uri[:200].decode('utf-8', 'replace')}"


def _route_view(client_type: int, location) -> dict:
    return {
        "client_type": int(client_type),
        "client_type_name": client_type_name(int(client_type)),
        "online": bool(location.online),
        "node": node_name(location.host, location.port) if location.host else None,
        "device_id": location.device_id,
        "os_name": location.os_name,
        "client_version": location.client_version,
        "conn_id": location.conn_id,
    }


class _Pending:
    """
    One request waiting for a Deferred: answers exactly once (result, error
    or 504), and never writes once the client is gone.
    """

    __slots__ = ("request", "deferred", "timer", "answered", "gone")

    def __init__(self, request, deferred: defer.Deferred, clock: IReactorTime, timeout_s: float) -> None:
        self.request = request
        self.deferred = deferred
        self.answered = False
        self.gone = False
        request.notifyFinish().addErrback(self._client_gone)
        self.timer = clock.callLater(timeout_s, self._timed_out, timeout_s)
        deferred.addCallbacks(self._result, self._failure)

    def _client_gone(self, reason) -> None:
        # The client went away: its answer is moot, but a push or kick
        # already under way is left to finish (its side effects are the point).
        self.gone = True
        if not self.answered:
            log.info("HTTP API client went away before the answer: {request}",
                     request=_describe(self.request))

    def _answer(self, reply: Reply) -> None:
        if self.answered:
            return
        self.answered = True
        if self.timer.active():
            self.timer.cancel()
        if self.gone or self.request.finished:
            return
        _send(self.request, reply)

    def _timed_out(self, timeout_s: float) -> None:
        if self.answered:
            return
        if not self.gone:
            log.warn("HTTP API call took more than {timeout_s}s: {request}",
                     timeout_s=timeout_s, request=_describe(self.request))
        self._answer(Reply.error(GatewayTimeout(f"the node did not answer within {timeout_s:g}s")))
        self.deferred.cancel()

    def _result(self, reply: Reply) -> None:
        self._answer(reply)

    def _failure(self, failure) -> None:
        if self.answered and failure.check(defer.CancelledError):
            return
        self._answer(Reply.error(_error_for(failure.value, failure, self.request)))


def _error_for(exc: BaseException, failure, request) -> ApiError:
    """The API error an exception becomes; anything unexpected is logged as a bug."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PushRejected):
        return PushRefused(str(exc) or "the node rejected the push")
    if isinstance(exc, RouterUnavailable):
        # Redis out or slow: said once by the node already, no bug.
        return ServiceUnavailable(str(exc))
    log.failure("HTTP API request failed: {request}", failure, request=_describe(request))
    return InternalError("internal error (logged on the node)")


def _match(segments: list[bytes], template: tuple[str, ...]) -> dict[str, bytes] | None:
    if len(segments) != len(template):
        return None
    params = {}
    for segment, part in zip(segments, template):
        if part.startswith("{"):
            if not segment:
                return None
            params[part[1:-1]] = segment
        elif segment != part.encode("ascii"):
            return None
    return params


class ApiResource(Resource):
    """
    Everything under C{/v1}: a leaf that routes C{request.postpath} itself.

    @param node_api: the node facade (L{mpush.node_api.NodeAPI} contract).
    @param token: the bearer token every route requires unless its path is
        in C{public_paths}; C{None} or empty accepts every request (the
        caller then binds to loopback only).
    @param public_paths: route paths answered without the token (from
        C{[http] public-paths}, e.g. C{"/v1/allot"}).
    @param clock: schedules the safety timeouts.
    @param call_bound_s: the NodeAPI's own bound for calls other than push.
    @param safety_margin_s: added to the NodeAPI's bound (a push's is its
        C{timeout_ms}) before answering 504.
    @param max_body_bytes: larger bodies get a 413 (C{[http] max-body-size});
        give L{ApiSite} the same limit so they are not even buffered.
    """

    isLeaf = True

    def __init__(self, node_api, token: str | bytes | None = None, clock: IReactorTime | None = None,
                 call_bound_s: float = DEFAULT_CALL_BOUND_S,
                 safety_margin_s: float = DEFAULT_SAFETY_MARGIN_S,
                 max_body_bytes: int = schema.MAX_BODY_BYTES,
                 public_paths: frozenset[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        token = _token_bytes(token)
        if not call_bound_s > 0 or not safety_margin_s > 0:
            raise ValueError("timeouts must be positive")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        if clock is None:
            from twisted.internet import reactor as clock
        self._node = node_api
        self._token = token
        self._public = frozenset(public_paths)
        self._clock = clock
        self._call_bound_s = call_bound_s
        self._margin_s = safety_margin_s
        self._max_body = max_body_bytes
        self._openapi_document = load_openapi()

    # -- twisted.web --------------------------------------------------------

    def render(self, request):
        try:
            outcome = self._dispatch(request)
        except ApiError as exc:
            outcome = Reply.error(exc)
        except Exception as exc:
            outcome = Reply.error(_error_for(exc, Failure(), request))
        if isinstance(outcome, tuple):
            deferred, bound_s = outcome
            _Pending(request, deferred, self._clock, bound_s + self._margin_s)
        else:
            _send(request, outcome)
        return server.NOT_DONE_YET

    def _dispatch(self, request) -> Reply | tuple[defer.Deferred, float]:
        segments = request.postpath
        route = _FIXED.get((request.method, tuple(segments)))
        if route is not None:
            if route.path not in self._public:
                check_bearer(request, self._token)
            return getattr(self, route.handler)(request)
        candidates = [(route, params) for route, template in _TEMPLATES
                      if (params := _match(segments, template)) is not None]
        if not candidates:
            raise NotFound("no such resource")
        method = request.method.decode("ascii", "replace")
        for route, params in candidates:
            if route.method == method:
                break
        else:
            allow = tuple(sorted({route.method for route, _ in candidates}))
            raise MethodNotAllowed(f"{method} is not allowed here; use {', '.join(allow)}", allow)
        if route.path not in self._public:
            check_bearer(request, self._token)
        names = {name: schema.path_text(value, name) for name, value in params.items()}
        return getattr(self, route.handler)(request, **names)

    def _json_body(self, request, required: bool) -> dict | None:
        """The request's JSON object; C{None} for an empty optional body."""
        declared = request.requestHeaders.getRawHeaders(b"content-length")
        if declared:
            try:
                length = int(declared[0])
            except ValueError:
                length = None
            if length is not None and length > self._max_body:
                raise PayloadTooLarge(f"body is larger than {self._max_body} bytes")
        content = request.content
        data = b""
        if content is not None:
            content.seek(0)
            data = content.read(self._max_body + 1)
        if len(data) > self._max_body:
            raise PayloadTooLarge(f"body is larger than {self._max_body} bytes")
        if not data and not required:
            return None
        schema.check_content_type(request.requestHeaders.getRawHeaders(b"content-type"))
        return schema.parse_json_object(data)

    # -- routes ---------------------------------------------------------------

    def _push(self, request):
        push = schema.parse_push(self._json_body(request, required=True))
        # The node API's push returns a Deferred; anything it raises is answered by render.
        deferred = self._node.push(push)

        def view(outcome) -> Reply:
            return Reply.json({"message_id": outcome.message_id, "results": list(outcome.results)})

        return deferred.addCallback(view), push.timeout_ms / 1000.0

    def _user(self, request, user_id: str):
        deferred = defer.maybeDeferred(self._node.routes, user_id)

        def view(routes) -> Reply:
            if not routes:
                raise NotFound(f"user {user_id!r} has no route")
            listed = [_route_view(client_type, routes[client_type]) for client_type in sorted(routes)]
            return Reply.json({
                "user": user_id,
                "online": any(route["online"] for route in listed),
                "routes": listed,
            })

        return deferred.addCallback(view), self._call_bound_s

    def _kick(self, request, user_id: str):
        body = self._json_body(request, required=False)
        client_type = schema.parse_kick(body)
        close = schema.kick_closes(body)
        deferred = defer.maybeDeferred(self._node.kick, user_id, client_type, close)
        return deferred.addCallback(lambda kicked: Reply.json({"kicked": int(kicked)})), self._call_bound_s

    def _stats(self, request):
        return Reply.json(self._node.stats())

    def _task(self, request, task_id: str):
        stats = self._node.task_stats(task_id)
        if stats is None:
            raise NotFound(f"task {task_id!r} is not known")
        return Reply.json(stats)

    def _allot(self, request):
        deferred = defer.maybeDeferred(self._node.allot)

        def view(endpoints) -> Reply:
            # The MPush client splits this body on "," (spec 18.2).
            if not endpoints:
                return Reply.text("no mpush node is known", 503)
            return Reply.text(",".join(endpoints))

        return deferred.addCallback(view), self._call_bound_s

    def _openapi(self, request):
        return Reply(200, self._openapi_document)


class _NotFoundResource(Resource):
    """A JSON 404 for any path outside the API (twisted's is HTML)."""

    isLeaf = True

    def render(self, request):
        _send(request, Reply.error(NotFound("no such resource")))
        return server.NOT_DONE_YET


class TokenGuard(Resource):
    """
    A leaf resource (C{/metrics}, C{/healthz}) behind the API's token: a
    request without it gets the API's JSON 401.
    """

    isLeaf = True

    def __init__(self, resource: Resource, token: str | bytes | None) -> None:
        super().__init__()
        self._resource = resource
        self._token = _token_bytes(token)

    def render(self, request):
        try:
            check_bearer(request, self._token)
        except ApiError as exc:
            _send(request, Reply.error(exc))
            return server.NOT_DONE_YET
        return self._resource.render(request)


class HttpApiRoot(Resource):
    """
    The root the node serves on C{[net] http-server-port}: C{/v1} is the API;
    other children (C{/metrics}, C{/healthz}) are added with C{putChild}.
    """

    def __init__(self, api: ApiResource) -> None:
        super().__init__()
        self.putChild(b"v1", api)

    def getChild(self, path, request):
        return _NotFoundResource()

    def render(self, request):
        _send(request, Reply.error(NotFound("no such resource")))
        return server.NOT_DONE_YET


class CappedBody(io.BytesIO):
    """
    A request body buffer that keeps at most C{limit + 1} bytes: enough for
    the API to see "too large" and answer 413, without holding a huge upload
    in memory or on disk.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._room = limit + 1
        self.received = 0

    def write(self, data) -> int:
        size = len(data)
        self.received += size
        if self._room > 0:
            kept = bytes(data[: self._room])
            self._room -= len(kept)
            super().write(kept)
        return size


class ApiSite(server.Site):
    """
    The Site to serve the API with: request bodies are capped (see
    L{CappedBody}), and twisted.web does not parse form uploads itself (a
    malformed multipart body would get its bare, non-JSON 400 before the API
    sees the request, and a large one costs memory for nothing).

    Plain keep-alive requests are served by L{mpush.http.fast.FastApiChannel},
    which hands anything else to twisted.web.  The access log has a line
    for each request answered with an error (status 400 and up) only: a
    line per push cost an eighth of the node's CPU at a few thousand pushes
    a second, and C{/metrics} counts them.
    """

    def __init__(self, resource, *args, body_limit: int = schema.MAX_BODY_BYTES, **kwargs) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, *args, **kwargs)
        self.body_limit = body_limit

    def buildProtocol(self, addr):
        """
        The keep-alive fast path (L{mpush.http.fast}) in front of
        twisted.web, when the root serves the API at C{/v1}.
        """
        api = self.resource.children.get(b"v1") if isinstance(self.resource, HttpApiRoot) else None
        if not isinstance(api, ApiResource):
            return super().buildProtocol(addr)
        from mpush.http.fast import FastApiChannel

        channel = FastApiChannel(api, lambda: server.Site.buildProtocol(self, addr), self.body_limit,
                                 self.reactor, self.timeOut)
        channel.factory = self
        return channel

    def getContentFile(self, length):
        return CappedBody(self.body_limit)

    def log(self, request) -> None:
        if request.code >= 400:
            super().log(request)

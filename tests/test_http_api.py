"""
Tests for the HTTP push API (mpush.http) end to end: a real twisted.web Site
on loopback in front of a fake NodeAPI, driven by a raw HTTP/1.1 client so
every byte of the request (bad Content-Length, chunked bodies, several
headers of one name, a client that goes away) is under the test's control.
Safety timeouts run on a task.Clock the test advances.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.protocols.policies import WrappingFactory
from twisted.trial import unittest

from mpush.http import api, errors, schema
from mpush.http.api import ROUTE_FIELDS, ROUTES, ApiResource, ApiSite, CappedBody, HttpApiRoot
from mpush.node_api import PushOutcome, PushRejected, PushRequest
from mpush.protocol.routing import ClientLocation
from mpush.router.interfaces import RouterUnavailable

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_HEADERS = {"Content-Type": "application/json", **AUTH}

LOCATION_MOBILE = ClientLocation(host="10.0.0.1", port=3001, device_id="dev-1", os_name="android",
                                 client_version="1.0", conn_id="conn-1")
LOCATION_PC_OFFLINE = ClientLocation(host="10.0.0.2", port=3001, device_id="dev-2", os_name="windows",
                                     client_version="2.0", conn_id=None)
STATS = {"node": "10.0.0.1:3001", "connections": 3, "local_users": 2, "uptime_s": 7,
         "pushes": {"success": 1, "failure": 0, "offline": 0, "timeout": 0, "ack_timeout": 0,
                    "stored_offline": 0},
         "offline": {"stored": 0, "delivered": 0, "expired": 0, "dropped_full": 0, "refused": 0},
         "tasks": 1}
TASK = {"task_id": "t1", "sent": 5, "acked": 4, "offline": 1, "failed": 0, "stored_offline": 0,
        "delivered_offline": 0, "timeout": 0}


def success_result(user: str, client_type: int = 1) -> dict:
    return {"user": user, "client_type": client_type, "status": "success", "node": "10.0.0.1:3001",
            "reason": None, "time_points": [["send", 1], ["reply", 2]]}


class FakeNodeAPI:
    """
    The NodeAPI contract with scripted answers; records every call.  Each
    asynchronous answer is a value, an exception, or a Deferred the test
    fires; C{called} fires when a call arrives (for "the request is in").
    """

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.called = defer.Deferred()
        self.routes_by_user: dict[str, dict] = {"u1": {1: LOCATION_MOBILE, 2: LOCATION_PC_OFFLINE}}
        self.push_answer: object = None
        self.kick_answer: object = 1
        self.allot_answer: object = ["10.0.0.1:3000", "10.0.0.2:3000"]
        self.stats_answer: object = STATS
        self.tasks = {"t1": TASK}

    def _record(self, *call) -> None:
        # C{called} fires on the next reactor turn, once the API has set up
        # its side of the call (the safety timer).
        self.calls.append(call)
        called, self.called = self.called, defer.Deferred()
        reactor.callLater(0, called.callback, call)

    @staticmethod
    def _answer(value):
        if isinstance(value, BaseException):
            return defer.fail(value)
        if isinstance(value, defer.Deferred):
            return value
        return defer.succeed(value)

    def push(self, request: PushRequest):
        self._record("push", request)
        if self.push_answer is None:
            users = request.users or ()
            return defer.succeed(PushOutcome("m" * 32, [success_result(user) for user in users]))
        return self._answer(self.push_answer)

    def routes(self, user_id: str):
        self._record("routes", user_id)
        return self._answer(self.routes_by_user.get(user_id, {}))

    def kick(self, user_id: str, client_type: int | None = None, close: bool = True):
        self._record("kick", user_id, client_type, close)
        return self._answer(self.kick_answer)

    def stats(self) -> dict:
        self._record("stats")
        if isinstance(self.stats_answer, BaseException):
            raise self.stats_answer
        return self.stats_answer

    def task_stats(self, task_id: str):
        self._record("task_stats", task_id)
        return self.tasks.get(task_id)

    def allot(self):
        self._record("allot")
        return self._answer(self.allot_answer)


@dataclass
class RawResponse:
    status: int
    headers: dict[bytes, list[bytes]]
    body: bytes

    def header(self, name: str) -> bytes | None:
        values = self.headers.get(name.lower().encode("ascii"))
        return values[-1] if values else None

    def json(self):
        return json.loads(self.body.decode("utf-8"))


def parse_response(data: bytes, method: str = "GET") -> RawResponse:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete response: {data[:200]!r}")
    lines = head.split(b"\r\n")
    version, status, _ = lines[0].split(b" ", 2)
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if b"chunked" in b"".join(headers.get(b"transfer-encoding", [])):
        raise AssertionError("the API must answer with a Content-Length, not chunked")
    length = headers.get(b"content-length")
    if method == "HEAD":
        if body:
            raise AssertionError(f"a body in a HEAD answer: {body[:100]!r}")
    elif length is not None and int(length[0]) != len(body):
        raise AssertionError(f"Content-Length {length[0]!r} but {len(body)} bytes of body")
    return RawResponse(int(status), headers, body)


class _RawClient(Protocol):
    def __init__(self, payload: bytes, done: defer.Deferred) -> None:
        self.payload = payload
        self.done = done
        self.received = []

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason) -> None:
        self.done.callback(b"".join(self.received))


def build_request(method: str, path: str, headers: dict | None = None, body: bytes | None = None,
                  *, content_length: bool = True, chunked: bool = False,
                  raw_headers: list[tuple[str, str]] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    for name, value in raw_headers:
        lines.append(f"{name}: {value}")
    body = body or b""
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                          for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
    else:
        if content_length and (body or method in ("POST", "PUT")):
            lines.append(f"Content-Length: {len(body)}")
        framed = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + framed


class LoopbackApi:
    """A Site serving the API on a loopback port; tracks server connections."""

    def __init__(self, node, clock, token=TOKEN, **kwargs) -> None:
        self.api = ApiResource(node, token=token, clock=clock, **kwargs)
        self.root = HttpApiRoot(self.api)
        self.site = ApiSite(self.root, body_limit=kwargs.get("max_body_bytes", schema.MAX_BODY_BYTES))
        self.wrapper = WrappingFactory(self.site)
        self.port = reactor.listenTCP(0, self.wrapper, interface="127.0.0.1")
        self.port_number = self.port.getHost().port
        self.url = f"http://127.0.0.1:{self.port_number}"

    @defer.inlineCallbacks
    def stop(self):
        yield self.port.stopListening()
        for protocol in list(self.wrapper.protocols):
            protocol.transport.abortConnection()
        yield self.idle()

    @defer.inlineCallbacks
    def idle(self):
        """Fires once every server connection is gone (bounded)."""
        for _ in range(1000):
            if not self.wrapper.protocols:
                return
            yield task.deferLater(reactor, 0.005, lambda: None)
        raise AssertionError("server connections did not close")


class ApiTestCase(unittest.TestCase):
    token: str | None = TOKEN

    def setUp(self):
        self.node = FakeNodeAPI()
        self.clock = task.Clock()
        self.server = self.start_server()

    def start_server(self, **kwargs) -> LoopbackApi:
        kwargs.setdefault("token", self.token)
        server = LoopbackApi(self.node, self.clock, **kwargs)
        self.addCleanup(server.stop)
        return server

    def send_raw(self, payload: bytes, server: LoopbackApi | None = None) -> defer.Deferred:
        server = server or self.server
        done = defer.Deferred()
        factory = ClientFactory.forProtocol(lambda: _RawClient(payload, done))
        reactor.connectTCP("127.0.0.1", server.port_number, factory)
        return done

    @defer.inlineCallbacks
    def request(self, method: str, path: str, headers: dict | None = None, body=None, **kwargs):
        if isinstance(body, (dict, list)) or (body is not None and not isinstance(body, bytes)):
            body = json.dumps(body).encode("utf-8")
        server = kwargs.pop("server", None)
        data = yield self.send_raw(build_request(method, path, headers, body, **kwargs), server)
        return parse_response(data, method)

    def post_json(self, path: str, value, headers: dict | None = None):
        return self.request("POST", path, {**JSON_HEADERS, **(headers or {})}, value)

    def assert_error(self, response: RawResponse, status: int, code: str, message_part: str = "") -> dict:
        self.assertEqual(response.status, status, response.body)
        self.assertEqual(response.header("Content-Type"), b"application/json; charset=utf-8")
        body = response.json()
        self.assertEqual(set(body), {"error"})
        self.assertEqual(set(body["error"]), {"code", "message"})
        self.assertEqual(body["error"]["code"], code)
        self.assertIsInstance(body["error"]["message"], str)
        self.assertIn(message_part, body["error"]["message"])
        return body


class AuthTests(ApiTestCase):

    @defer.inlineCallbacks
    def test_missing_token(self):
        response = yield self.request("GET", "/v1/stats")
        self.assert_error(response, 401, "unauthorized", "Bearer")
        self.assertEqual(response.header("WWW-Authenticate"), b'Bearer realm="mpush"')
        self.assertEqual(self.node.calls, [])

    @defer.inlineCallbacks
    def test_refused_tokens(self):
        for value in [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", "Bearer", TOKEN,
                      f"Basic {TOKEN}", f"Token {TOKEN}", "Bearer \u00e9"]:
            response = yield self.request("GET", "/v1/stats", {"Authorization": value})
            self.assert_error(response, 401, "unauthorized")
        self.assertEqual(self.node.calls, [])

    @defer.inlineCallbacks
    def test_token_given_twice(self):
        response = yield self.request("GET", "/v1/stats", raw_headers=[
            ("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")])
        self.assert_error(response, 401, "unauthorized", "more than once")

    @defer.inlineCallbacks
    def test_accepted(self):
        for value in [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "]:
            response = yield self.request("GET", "/v1/stats", {"Authorization": value})
            self.assertEqual(response.status, 200, value)
            self.assertEqual(response.json(), STATS)

    @defer.inlineCallbacks
    def test_every_route_needs_the_token(self):
        """Even the allot list and this document, unless made public."""
        for route in ROUTES:
            path = route.path.replace("{user_id}", "u1").replace("{task_id}", "t1")
            response = yield self.request(route.method, path, {"Content-Type": "application/json"},
                                          b"{}" if route.method == "POST" else None)
            self.assert_error(response, 401, "unauthorized")
        self.assertEqual(self.node.calls, [])

    @defer.inlineCallbacks
    def test_public_paths(self):
        """[http] public-paths opens the routes listed, and only those."""
        server = self.start_server(public_paths=("/v1/allot",))
        response = yield self.request("GET", "/v1/allot", server=server)
        self.assertEqual(response.status, 200)
        response = yield self.request("GET", "/v1/openapi.json", server=server)
        self.assert_error(response, 401, "unauthorized")
        response = yield self.request("GET", "/v1/stats", server=server)
        self.assert_error(response, 401, "unauthorized")

    @defer.inlineCallbacks
    def test_token_guard(self):
        """/metrics and /healthz sit behind the same token when not public."""
        from twisted.web.static import Data

        server = self.start_server()
        server.root.putChild(b"metrics", api.TokenGuard(Data(b"m 1\n", "text/plain"), TOKEN))
        response = yield self.request("GET", "/metrics", server=server)
        self.assert_error(response, 401, "unauthorized", "Bearer")
        response = yield self.request("GET", "/metrics", {"Authorization": "Bearer nope"}, server=server)
        self.assert_error(response, 401, "unauthorized", "wrong token")
        response = yield self.request("GET", "/metrics", AUTH, server=server)
        self.assertEqual((response.status, response.body), (200, b"m 1\n"))

    def test_bad_token_configuration(self):
        for token in [" padded", "two words", "tail "]:
            self.assertRaises(ValueError, ApiResource, self.node, token=token, clock=self.clock)
        self.assertRaises(ValueError, ApiResource, self.node, token=TOKEN, clock=self.clock, call_bound_s=0)
        self.assertRaises(ValueError, ApiResource, self.node, token=TOKEN, clock=self.clock,
                          safety_margin_s=-1)
        self.assertRaises(ValueError, ApiResource, self.node, token=TOKEN, clock=self.clock,
                          max_body_bytes=0)


class NoTokenTests(ApiTestCase):
    token = None

    @defer.inlineCallbacks
    def test_accepts_every_request(self):
        response = yield self.request("GET", "/v1/stats")
        self.assertEqual(response.status, 200)
        response = yield self.request("GET", "/v1/stats", {"Authorization": "Bearer whatever"})
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_empty_token_is_no_token(self):
        server = self.start_server(token="")
        response = yield self.request("GET", "/v1/stats", server=server)
        self.assertEqual(response.status, 200)


class PushTests(ApiTestCase):

    @defer.inlineCallbacks
    def test_push_to_users(self):
        response = yield self.post_json("/v1/push", {
            "users": ["u1", "u2", "u1"], "content": "hello \u00e9", "ack": "auto",
            "timeout_ms": 2500, "offline_ttl": 600})
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.header("Content-Type"), b"application/json; charset=utf-8")
        self.assertEqual(response.json(), {"message_id": "m" * 32,
                                           "results": [success_result("u1"), success_result("u2")]})
        [(name, request)] = self.node.calls
        self.assertEqual(request, PushRequest(users=("u1", "u2"), content="hello \u00e9".encode("utf-8"),
                                              ack="auto", timeout_ms=2500, offline_ttl=600))

    @defer.inlineCallbacks
    def test_defaults(self):
        response = yield self.post_json("/v1/push", {"users": ["u1"], "content": ""})
        self.assertEqual(response.status, 200, response.body)
        [(_, request)] = self.node.calls
        self.assertEqual(request, PushRequest(users=("u1",), content=b""))

    @defer.inlineCallbacks
    def test_content_b64(self):
        raw = bytes(range(256))
        response = yield self.post_json("/v1/push", {"users": ["u1"],
                                                     "content_b64": base64.b64encode(raw).decode()})
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(self.node.calls[0][1].content, raw)

    @defer.inlineCallbacks
    def test_broadcast(self):
        self.node.push_answer = PushOutcome("b" * 32, [
            {"node": "10.0.0.1:3001", "status": "success", "count": 4, "reason": None}])
        response = yield self.post_json("/v1/push", {
            "broadcast": True, "tags": ["a", "b", "a"], "condition": "tags.indexOf('a') >= 0",
            "task_id": "t9", "content": "x", "timeout_ms": 60000})
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.json()["results"][0]["count"], 4)
        self.assertEqual(self.node.calls[0][1], PushRequest(
            users=None, content=b"x", timeout_ms=60000, broadcast=True, tags=("a", "b"),
            condition="tags.indexOf('a') >= 0", task_id="t9"))

    @defer.inlineCallbacks
    def test_broadcast_without_filters(self):
        self.node.push_answer = PushOutcome("b" * 32, [])
        response = yield self.post_json("/v1/push", {"broadcast": True, "content": "x"})
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(self.node.calls[0][1], PushRequest(users=None, content=b"x", broadcast=True))

    @defer.inlineCallbacks
    def test_push_rejected(self):
        for answer in [PushRejected("content is larger than 8000 bytes"),
                       defer.fail(PushRejected("content is larger than 8000 bytes"))]:
            self.node.push_answer = answer
            response = yield self.post_json("/v1/push", {"users": ["u1"], "content": "x"})
            self.assert_error(response, 400, "push_rejected", "content is larger than 8000 bytes")

    @defer.inlineCallbacks
    def test_push_rejected_raised_synchronously(self):
        def push(request):
            raise PushRejected("invalid condition: nope")

        self.node.push = push
        response = yield self.post_json("/v1/push", {"broadcast": True, "condition": "(", "content": "x"})
        self.assert_error(response, 400, "push_rejected", "invalid condition")

    @defer.inlineCallbacks
    def test_field_errors(self):
        base = {"users": ["u1"], "content": "x"}
        cases = [
            ({**base, "user": ["u1"]}, "unknown field 'user'"),
            ({**base, "timeout": 5}, "unknown field 'timeout'"),
            ({"content": "x"}, "users is required"),
            ({"users": ["u1"]}, "content or content_b64 is required"),
            ({**base, "content_b64": "eA=="}, "content or content_b64, not both"),
            ({**base, "users": []}, "users must not be empty"),
            ({**base, "users": "u1"}, "users must be an array"),
            ({**base, "users": [1]}, "users[0] must be a string"),
            ({**base, "users": ["u1", ""]}, "users[1] must not be empty"),
            ({**base, "users": [None]}, "users[0] must be a string"),
            ({**base, "users": [f"u{i}" for i in range(1001)]}, "more than 1000"),
            ({**base, "users": ["\ud800"]}, "users[0] is not valid Unicode"),
            ({**base, "content": 5}, "content must be a string"),
            ({**base, "content": None}, "content must be a string"),
            ({**base, "content": "\udfff"}, "content is not valid Unicode"),
            ({"users": ["u1"], "content_b64": "%%%"}, "content_b64 is not valid base64"),
            ({"users": ["u1"], "content_b64": "eA"}, "content_b64 is not valid base64"),
            ({"users": ["u1"], "content_b64": "\u00e9A=="}, "content_b64 is not valid base64"),
            ({"users": ["u1"], "content_b64": ["eA=="]}, "content_b64 must be a string"),
            ({**base, "ack": "always"}, "ack must be one of none, auto, biz"),
            ({**base, "ack": 8}, "ack must be one of"),
            ({**base, "ack": None}, "ack must be one of"),
            ({**base, "timeout_ms": 0}, "timeout_ms must be in 1..60000"),
            ({**base, "timeout_ms": 60001}, "timeout_ms must be in 1..60000"),
            ({**base, "timeout_ms": -1}, "timeout_ms must be in 1..60000"),
            ({**base, "timeout_ms": 3000.0}, "timeout_ms must be an integer"),
            ({**base, "timeout_ms": "3000"}, "timeout_ms must be an integer"),
            ({**base, "timeout_ms": True}, "timeout_ms must be an integer"),
            ({**base, "timeout_ms": 10**30}, "timeout_ms must be in"),
            ({**base, "offline_ttl": 0}, "offline_ttl must be in 1..2592000"),
            ({**base, "offline_ttl": 2592001}, "offline_ttl must be in 1..2592000"),
            ({**base, "offline_ttl": None}, "offline_ttl must be an integer"),
            ({**base, "offline_ttl": 1.5}, "offline_ttl must be an integer"),
            ({**base, "broadcast": "yes"}, "broadcast must be a boolean"),
            ({**base, "broadcast": 1}, "broadcast must be a boolean"),
            ({**base, "broadcast": True}, "users cannot be given with broadcast"),
            ({**base, "tags": ["a"]}, "tags goes with"),
            ({**base, "condition": "true"}, "condition goes with"),
            ({**base, "task_id": "t"}, "task_id goes with"),
            ({**base, "broadcast": False, "tags": ["a"]}, "tags goes with"),
            ({"broadcast": True, "content": "x", "tags": []}, "tags must not be empty"),
            ({"broadcast": True, "content": "x", "tags": "a"}, "tags must be an array"),
            ({"broadcast": True, "content": "x", "tags": [""]}, "tags[0] must not be empty"),
            ({"broadcast": True, "content": "x", "condition": 1}, "condition must be a string"),
            ({"broadcast": True, "content": "x", "condition": ""}, "condition must not be empty"),
            ({"broadcast": True, "content": "x", "task_id": ""}, "task_id must not be empty"),
            ({"broadcast": True, "content": "x", "task_id": 7}, "task_id must be a string"),
        ]
        for body, message in cases:
            response = yield self.post_json("/v1/push", body)
            self.assert_error(response, 400, "invalid_request", message)
        self.assertEqual(self.node.calls, [])

    @defer.inlineCallbacks
    def test_body_errors(self):
        cases = [
            (b"", "body is not JSON"),
            (b"{", "body is not JSON"),
            (b"{'users': []}", "body is not JSON"),
            (b"[]", "body must be a JSON object, not an array"),
            (b'"text"', "body must be a JSON object, not a string"),
            (b"3", "body must be a JSON object, not a number"),
            (b"null", "body must be a JSON object, not null"),
            (b'{"users": ["u1"]} x', "body is not JSON"),
            (b'{"users": ["u1"], "content": "\xff"}', "body is not UTF-8"),
            (b"\xef\xbb\xbf{}", "body is not JSON"),
            ('{"users": ["u1"], "content": "x"}'.encode("utf-16"), "body is not UTF-8"),
            (b'{"users": ["u1"], "content": "x", "content": "y"}', "'content' more than once"),
            (b'{"users": ["u1"], "content": "x", "timeout_ms": NaN}', "body is not JSON"),
            (b'{"users": ["u1"], "content": "x", "timeout_ms": Infinity}', "body is not JSON"),
            (b'{"users": ["u1"], "content": "x", "timeout_ms": 1e400}', "timeout_ms must be an integer"),
            (b'{"users": ["u1"], "content": "x", "timeout_ms": 1' + b"0" * 5000 + b"}", "body is not JSON"),
            (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        ]
        for body, message in cases:
            response = yield self.request("POST", "/v1/push", JSON_HEADERS, body)
            self.assert_error(response, 400, "invalid_request", message)
        self.assertEqual(self.node.calls, [])

    @defer.inlineCallbacks
    def test_content_type(self):
        body = {"users": ["u1"], "content": "x"}
        for content_type in [None, "text/plain", "application/x-www-form-urlencoded",
                             "application/json; charset=latin-1", "application/jsonx", "\u00e9"]:
            headers = dict(AUTH)
            if content_type is not None:
                headers["Content-Type"] = content_type
            response = yield self.request("POST", "/v1/push", headers, body)
            self.assert_error(response, 415, "unsupported_media_type", "application/json"
                              if "charset" not in (content_type or "") else "charset")
        response = yield self.request("POST", "/v1/push", AUTH, body, raw_headers=[
            ("Content-Type", "application/json"), ("Content-Type", "application/json")])
        self.assert_error(response, 415, "unsupported_media_type", "more than once")
        for content_type in ["application/json", "Application/JSON; charset=UTF-8",
                             'application/json;charset="utf-8"', "application/json; foo=bar"]:
            response = yield self.request("POST", "/v1/push", {**AUTH, "Content-Type": content_type}, body)
            self.assertEqual(response.status, 200, content_type)

    @defer.inlineCallbacks
    def test_form_bodies_are_not_parsed_by_twisted(self):
        # twisted.web would answer a malformed multipart upload itself, with
        # a bare 400 (found by the fuzz test); ApiSite turns that off.
        for content_type in ["multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]:
            response = yield self.request("POST", "/v1/push", {**AUTH, "Content-Type": content_type}, b"{}")
            self.assert_error(response, 415, "unsupported_media_type")

    @defer.inlineCallbacks
    def test_declared_length_too_large(self):
        # A small limit: the Content-Length header alone decides, before the body is read.
        server = self.start_server(max_body_bytes=1024)
        body = json.dumps({"users": ["u1"], "content": "x" * 2000}).encode()
        response = yield self.request("POST", "/v1/push", JSON_HEADERS, body, server=server)
        self.assert_error(response, 413, "payload_too_large", "1024 bytes")
        ok = json.dumps({"users": ["u1"], "content": "x" * 900}).encode()
        response = yield self.request("POST", "/v1/push", JSON_HEADERS, ok, server=server)
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_one_mebibyte(self):
        prefix = b'{"users": ["u1"], "content": "'
        suffix = b'"}'
        exact = prefix + b"x" * (schema.MAX_BODY_BYTES - len(prefix) - len(suffix)) + suffix
        self.assertEqual(len(exact), schema.MAX_BODY_BYTES)
        response = yield self.request("POST", "/v1/push", JSON_HEADERS, exact)
        self.assertEqual(response.status, 200)
        over = prefix + b"x" * (schema.MAX_BODY_BYTES + 1 - len(prefix) - len(suffix)) + suffix
        response = yield self.request("POST", "/v1/push", JSON_HEADERS, over)
        self.assert_error(response, 413, "payload_too_large")

    @defer.inlineCallbacks
    def test_chunked_body_too_large(self):
        # No Content-Length: the actual size decides.
        body = json.dumps({"users": ["u1"], "content": "x" * (schema.MAX_BODY_BYTES + 10)}).encode()
        response = yield self.request("POST", "/v1/push", JSON_HEADERS, body, chunked=True)
        self.assert_error(response, 413, "payload_too_large")
        small = json.dumps({"users": ["u1"], "content": "x"}).encode()
        response = yield self.request("POST", "/v1/push", JSON_HEADERS, small, chunked=True)
        self.assertEqual(response.status, 200)
        self.assertEqual(len(self.node.calls), 1)


class CappedBodyTests(unittest.SynchronousTestCase):

    def test_keeps_limit_plus_one(self):
        body = CappedBody(10)
        self.assertEqual(body.write(b"x" * 6), 6)
        self.assertEqual(body.write(b"y" * 6), 6)
        self.assertEqual(body.write(b"z" * 100), 100)
        self.assertEqual(body.received, 112)
        self.assertEqual(body.getvalue(), b"x" * 6 + b"y" * 5)

    def test_site_uses_it(self):
        site = ApiSite(HttpApiRoot(ApiResource(FakeNodeAPI(), clock=task.Clock())), body_limit=5)
        content = site.getContentFile(10**9)
        self.assertIsInstance(content, CappedBody)
        content.write(b"0123456789")
        content.seek(0)
        self.assertEqual(content.read(), b"012345")


class UserTests(ApiTestCase):

    @defer.inlineCallbacks
    def test_show(self):
        response = yield self.request("GET", "/v1/users/u1", AUTH)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.json(), {
            "user": "u1",
            "online": True,
            "routes": [
                {"client_type": 1, "client_type_name": "MOBILE", "online": True, "node": "10.0.0.1:3001",
                 "device_id": "dev-1", "os_name": "android", "client_version": "1.0", "conn_id": "conn-1"},
                {"client_type": 2, "client_type_name": "PC", "online": False, "node": "10.0.0.2:3001",
                 "device_id": "dev-2", "os_name": "windows", "client_version": "2.0", "conn_id": None},
            ],
        })
        self.assertEqual(self.node.calls, [("routes", "u1")])

    @defer.inlineCallbacks
    def test_offline_only_and_odd_routes(self):
        self.node.routes_by_user["u2"] = {
            -1: ClientLocation(host=None, port=0, device_id=None, os_name=None, client_version=None,
                               conn_id=None),
            7: ClientLocation(host="::1", port=3001, device_id=None, os_name="x", client_version=None,
                              conn_id=None),
        }
        response = yield self.request("GET", "/v1/users/u2", AUTH)
        self.assertEqual(response.status, 200, response.body)
        body = response.json()
        self.assertFalse(body["online"])
        self.assertEqual([(r["client_type"], r["client_type_name"], r["node"]) for r in body["routes"]],
                         [(-1, "UNKNOWN", None), (7, "7", "[::1]:3001")])

    @defer.inlineCallbacks
    def test_unknown_user(self):
        response = yield self.request("GET", "/v1/users/nobody", AUTH)
        self.assert_error(response, 404, "not_found", "nobody")

    @defer.inlineCallbacks
    def test_path_encoding(self):
        user = "a/b \u00e9?#%"
        self.node.routes_by_user[user] = {1: LOCATION_MOBILE}
        from urllib.parse import quote

        response = yield self.request("GET", "/v1/users/" + quote(user, safe=""), AUTH)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.json()["user"], user)
        response = yield self.request("GET", "/v1/users/%FF", AUTH)
        self.assert_error(response, 400, "invalid_request", "user_id in the path is not UTF-8")

    @defer.inlineCallbacks
    def test_query_string_is_ignored(self):
        response = yield self.request("GET", "/v1/users/u1?x=1", AUTH)
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_kick(self):
        self.node.kick_answer = 2
        response = yield self.request("POST", "/v1/users/u1/kick", AUTH)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.json(), {"kicked": 2})
        response = yield self.post_json("/v1/users/u1/kick", {"client_type": 1})
        self.assertEqual(response.json(), {"kicked": 2})
        response = yield self.post_json("/v1/users/u1/kick", {})
        self.assertEqual(response.status, 200)
        response = yield self.request("POST", "/v1/users/u1/kick", JSON_HEADERS, b"")
        self.assertEqual(response.status, 200)
        response = yield self.post_json("/v1/users/u1/kick", {"client_type": 2, "close": False})
        self.assertEqual(response.status, 200)
        response = yield self.post_json("/v1/users/u1/kick", {"close": "no"})
        self.assert_error(response, 400, "invalid_request", "close must be a boolean")
        self.assertEqual(self.node.calls, [("kick", "u1", None, True), ("kick", "u1", 1, True),
                                           ("kick", "u1", None, True), ("kick", "u1", None, True),
                                           ("kick", "u1", 2, False)])

    @defer.inlineCallbacks
    def test_kick_errors(self):
        for body, message in [({"client_type": "1"}, "client_type must be an integer"),
                              ({"client_type": 1.0}, "client_type must be an integer"),
                              ({"client_type": 2**31}, "client_type must be in"),
                              ({"client_type": None}, "client_type must be an integer"),
                              ({"type": 1}, "unknown field 'type'"),
                              ([1], "body must be a JSON object")]:
            response = yield self.post_json("/v1/users/u1/kick", body)
            self.assert_error(response, 400, "invalid_request", message)
        response = yield self.request("POST", "/v1/users/u1/kick", {**AUTH, "Content-Type": "text/plain"},
                                      b'{"client_type": 1}')
        self.assert_error(response, 415, "unsupported_media_type")
        self.assertEqual(self.node.calls, [])


class ReadTests(ApiTestCase):

    @defer.inlineCallbacks
    def test_stats(self):
        response = yield self.request("GET", "/v1/stats", AUTH)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json(), STATS)

    @defer.inlineCallbacks
    def test_tasks(self):
        response = yield self.request("GET", "/v1/tasks/t1", AUTH)
        self.assertEqual(response.json(), TASK)
        response = yield self.request("GET", "/v1/tasks/t2", AUTH)
        self.assert_error(response, 404, "not_found", "t2")
        self.assertEqual(self.node.calls, [("task_stats", "t1"), ("task_stats", "t2")])

    @defer.inlineCallbacks
    def test_allot(self):
        response = yield self.request("GET", "/v1/allot", AUTH)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("Content-Type"), b"text/plain; charset=utf-8")
        self.assertEqual(response.body, b"10.0.0.1:3000,10.0.0.2:3000")
        self.node.allot_answer = []
        response = yield self.request("GET", "/v1/allot", AUTH)
        self.assertEqual(response.status, 503)
        self.assertEqual(response.header("Content-Type"), b"text/plain; charset=utf-8")
        self.assertNotIn(b",", response.body)
        # The registry in Redis timed out: the usual error, and no traceback.
        self.node.allot_answer = RouterUnavailable("redis node registry: nodes failed: no answer within 2 s")
        response = yield self.request("GET", "/v1/allot", AUTH)
        self.assert_error(response, 503, "unavailable", "no answer within 2 s")
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_openapi(self):
        response = yield self.request("GET", "/v1/openapi.json", AUTH)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("Content-Type"), b"application/json; charset=utf-8")
        self.assertEqual(response.body, api.load_openapi())
        self.assertEqual(response.json()["openapi"], "3.0.3")


class ErrorTests(ApiTestCase):

    @defer.inlineCallbacks
    def test_unknown_paths(self):
        for path in ["/", "/v1", "/v1/", "/v2/push", "/v1/push/", "/v1/pushx", "/v1/users",
                     "/v1/users/", "/v1/users//kick", "/v1/users/u1/kick/x", "/v1/tasks/", "/favicon.ico",
                     "/v1/stats/extra", "//v1/stats", "/v1/%2e%2e/stats"]:
            response = yield self.request("GET", path, AUTH)
            self.assert_error(response, 404, "not_found")
        self.assertEqual(self.node.calls, [])

    @defer.inlineCallbacks
    def test_wrong_method(self):
        for method, path, allow in [("GET", "/v1/push", b"POST"), ("DELETE", "/v1/push", b"POST"),
                                    ("PUT", "/v1/users/u1", b"GET"), ("GET", "/v1/users/u1/kick", b"POST"),
                                    ("POST", "/v1/stats", b"GET"), ("OPTIONS", "/v1/allot", b"GET"),
                                    ("get", "/v1/stats", b"GET"), ("PATCH", "/v1/openapi.json", b"GET")]:
            response = yield self.request(method, path, AUTH)
            self.assert_error(response, 405, "method_not_allowed", method)
            self.assertEqual(response.header("Allow"), allow)
        response = yield self.request("HEAD", "/v1/stats", AUTH)
        self.assertEqual(response.status, 405)
        self.assertEqual(response.body, b"")
        self.assertEqual(self.node.calls, [])

    @defer.inlineCallbacks
    def test_bug_in_sync_call(self):
        self.node.stats_answer = RuntimeError("boom")
        response = yield self.request("GET", "/v1/stats", AUTH)
        body = self.assert_error(response, 500, "internal_error")
        self.assertNotIn("boom", body["error"]["message"])
        self.assertNotIn(b"Traceback", response.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_unserialisable_answer(self):
        self.node.stats_answer = {"bytes": b"x"}
        response = yield self.request("GET", "/v1/stats", AUTH)
        self.assert_error(response, 500, "internal_error")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.node.stats_answer = {"nan": float("nan")}
        response = yield self.request("GET", "/v1/stats", AUTH)
        self.assert_error(response, 500, "internal_error")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @defer.inlineCallbacks
    def test_bug_in_async_call(self):
        self.node.push_answer = KeyError("gone")
        response = yield self.post_json("/v1/push", {"users": ["u1"], "content": "x"})
        self.assert_error(response, 500, "internal_error")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.node.routes_by_user["u1"] = None  # a wrong answer shape
        response = yield self.request("GET", "/v1/users/u1", AUTH)
        self.assert_error(response, 404, "not_found")
        self.node.routes_by_user["u1"] = {1: "not a location"}
        response = yield self.request("GET", "/v1/users/u1", AUTH)
        self.assert_error(response, 500, "internal_error")
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    @defer.inlineCallbacks
    def test_bug_in_a_handler_raising_synchronously(self):
        def routes(user_id):
            raise ZeroDivisionError()

        self.node.routes = routes
        response = yield self.request("GET", "/v1/users/u1", AUTH)
        self.assert_error(response, 500, "internal_error")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_error_codes(self):
        self.assertEqual(errors.ALL_CODES, {
            "invalid_request", "push_rejected", "unauthorized", "not_found", "method_not_allowed",
            "payload_too_large", "unsupported_media_type", "timeout", "unavailable", "internal_error"})
        self.assertEqual(json.loads(errors.error_body("x", "caf\u00e9\n")),
                         {"error": {"code": "x", "message": "caf\u00e9\n"}})
        errors.error_body("x", "\ud800").decode("ascii")


class SlowNodeTests(ApiTestCase):
    """The safety timeout (on self.clock) and clients that go away."""

    def start_server(self, **kwargs) -> LoopbackApi:
        kwargs.setdefault("call_bound_s", 2.0)
        kwargs.setdefault("safety_margin_s", 0.5)
        return super().start_server(**kwargs)

    @defer.inlineCallbacks
    def test_slow_push_times_out(self):
        cancelled = []
        pending = defer.Deferred(cancelled.append)
        self.node.push_answer = pending
        answer = self.post_json("/v1/push", {"users": ["u1"], "content": "x", "timeout_ms": 1000})
        yield self.node.called
        self.clock.advance(1.49)
        self.assertFalse(pending.called)
        self.clock.advance(0.02)
        response = yield answer
        self.assert_error(response, 504, "timeout", "1.5s")
        # The node's Deferred is cancelled: nothing is left waiting for it.
        self.assertEqual(cancelled, [pending])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_slow_read_times_out(self):
        self.node.routes_by_user["u1"] = defer.Deferred()
        answer = self.request("GET", "/v1/users/u1", AUTH)
        yield self.node.called
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 2.5)
        self.clock.advance(2.5)
        response = yield answer
        self.assert_error(response, 504, "timeout")

    @defer.inlineCallbacks
    def test_answer_in_time_cancels_the_timer(self):
        pending = defer.Deferred()
        self.node.kick_answer = pending
        answer = self.request("POST", "/v1/users/u1/kick", AUTH)
        yield self.node.called
        self.clock.advance(1)
        pending.callback(3)
        response = yield answer
        self.assertEqual(response.json(), {"kicked": 3})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_late_answer_after_timeout_is_dropped(self):
        # A node Deferred that fires later anyway (its cancel has no canceller).
        pending = defer.Deferred()
        self.node.push_answer = pending
        answer = self.post_json("/v1/push", {"users": ["u1"], "content": "x", "timeout_ms": 100})
        yield self.node.called
        self.clock.advance(0.6)
        response = yield answer
        self.assert_error(response, 504, "timeout")
        pending.callback(PushOutcome("late", []))

    @defer.inlineCallbacks
    def _disconnect_while_waiting(self):
        self.cancelled = []
        pending = defer.Deferred(self.cancelled.append)
        self.node.push_answer = pending
        done = defer.Deferred()
        client = _RawClient(build_request("POST", "/v1/push", JSON_HEADERS,
                                          json.dumps({"users": ["u1"], "content": "x"}).encode()), done)
        factory = ClientFactory.forProtocol(lambda: client)
        reactor.connectTCP("127.0.0.1", self.server.port_number, factory)
        yield self.node.called
        client.transport.abortConnection()
        received = yield done
        self.assertEqual(received, b"")
        yield self.server.idle()
        return pending

    @defer.inlineCallbacks
    def test_client_gone_then_answer(self):
        pending = yield self._disconnect_while_waiting()
        # The push itself is not cancelled by the disconnect.
        self.assertEqual(self.cancelled, [])
        pending.callback(PushOutcome("m", [success_result("u1")]))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.successResultOf(pending))

    @defer.inlineCallbacks
    def test_client_gone_then_failure(self):
        pending = yield self._disconnect_while_waiting()
        pending.errback(PushRejected("too late"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_client_gone_then_timeout(self):
        pending = yield self._disconnect_while_waiting()
        self.clock.advance(10)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Cancelled at the safety timeout even though nobody waits any more.
        self.assertEqual(self.cancelled, [pending])

    @defer.inlineCallbacks
    def test_server_keeps_serving(self):
        yield self._disconnect_while_waiting()
        response = yield self.request("GET", "/v1/stats", AUTH)
        self.assertEqual(response.status, 200)


def _resolve(document: dict, node: dict) -> dict:
    while "$ref" in node:
        path = node["$ref"].lstrip("#/").split("/")
        node = document
        for part in path:
            node = node[part]
    return node


class RouteTableTests(unittest.SynchronousTestCase):
    def test_fixed_routes_are_what_the_templates_choose(self):
        """
        A route without parameters is found in one look-up: the same route
        the templates, tried in order, give for its method and path.
        """
        fixed = [route for route in ROUTES if "{" not in route.path]
        self.assertEqual(sorted(route.path for route in api._FIXED.values()), sorted(r.path for r in fixed))
        for (method, segments), route in api._FIXED.items():
            chosen = next(candidate for candidate, template in api._TEMPLATES
                          if candidate.method.encode("ascii") == method
                          and api._match(list(segments), template) is not None)
            self.assertIs(chosen, route)


class OpenApiTests(unittest.SynchronousTestCase):
    """openapi.json and the code describe the same API, both ways."""

    def setUp(self):
        self.document = json.loads(api.load_openapi())

    def schema(self, name: str) -> dict:
        return self.document["components"]["schemas"][name]

    def test_routes(self):
        documented = {(method.upper(), path)
                      for path, item in self.document["paths"].items() for method in item}
        self.assertEqual(documented, {(route.method, route.path) for route in ROUTES})

    def test_every_route_documented_as_needing_the_token(self):
        self.assertEqual(self.document["security"], [{"bearer": []}])
        for route in ROUTES:
            operation = self.document["paths"][route.path][route.method.lower()]
            self.assertNotIn("security", operation, route.path)

    def test_path_parameters(self):
        for route in ROUTES:
            operation = self.document["paths"][route.path][route.method.lower()]
            params = {_resolve(self.document, p)["name"] for p in operation.get("parameters", [])}
            named = {part[1:-1] for part in route.segments if part.startswith("{")}
            self.assertEqual(params, named, route.path)

    def test_request_fields(self):
        self.assertEqual(set(self.schema("PushRequest")["properties"]), schema.PUSH_FIELDS)
        self.assertEqual(set(self.schema("KickRequest")["properties"]), schema.KICK_FIELDS)
        self.assertIs(self.schema("PushRequest")["additionalProperties"], False)
        self.assertIs(self.schema("KickRequest")["additionalProperties"], False)
        props = self.schema("PushRequest")["properties"]
        self.assertEqual(props["ack"]["enum"], list(schema.ACK_MODELS))
        self.assertEqual((props["timeout_ms"]["minimum"], props["timeout_ms"]["maximum"]),
                         schema.TIMEOUT_MS_RANGE)
        self.assertEqual((props["offline_ttl"]["minimum"], props["offline_ttl"]["maximum"]),
                         schema.OFFLINE_TTL_RANGE)
        self.assertEqual(props["users"]["maxItems"], schema.MAX_USERS)
        self.assertEqual(props["timeout_ms"]["default"], schema.DEFAULT_TIMEOUT_MS)

    def test_response_fields(self):
        self.assertEqual(set(self.schema("Route")["properties"]), set(ROUTE_FIELDS))
        self.assertEqual(set(self.schema("Route")["required"]), set(ROUTE_FIELDS))
        self.assertEqual(set(self.schema("Stats")["properties"]), set(STATS))
        self.assertEqual(set(self.schema("TaskStats")["required"]), set(TASK))
        code = self.schema("Error")["properties"]["error"]["properties"]["code"]
        self.assertEqual(set(code["enum"]), errors.ALL_CODES)

    def test_every_ref_resolves(self):
        def walk(node):
            if isinstance(node, dict):
                if "$ref" in node:
                    _resolve(self.document, node)
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(self.document)


class DocumentedAnswersTests(ApiTestCase):
    """What the endpoints answer has exactly the documented fields."""

    def documented(self, name: str) -> set[str]:
        return set(json.loads(api.load_openapi())["components"]["schemas"][name]["properties"])

    @defer.inlineCallbacks
    def test_answers(self):
        response = yield self.post_json("/v1/push", {"users": ["u1"], "content": "x"})
        self.assertEqual(set(response.json()), self.documented("PushResponse"))
        self.assertLessEqual(set(response.json()["results"][0]), self.documented("PushResult"))
        response = yield self.request("GET", "/v1/users/u1", AUTH)
        self.assertEqual(set(response.json()), self.documented("UserRoutes"))
        response = yield self.request("POST", "/v1/users/u1/kick", AUTH)
        self.assertEqual(set(response.json()), self.documented("KickResponse"))
        response = yield self.request("GET", "/v1/users/nobody", AUTH)
        self.assertEqual(set(response.json()), self.documented("Error"))


class SchemaTests(unittest.SynchronousTestCase):
    """The validators directly, for what HTTP cannot express."""

    def test_parse_push_needs_an_object(self):
        for value in [None, [], "x", 1]:
            self.assertRaises(errors.InvalidRequest, schema.parse_push, value)
            if value is not None:
                self.assertRaises(errors.InvalidRequest, schema.parse_kick, value)

    def test_parse_kick(self):
        self.assertIsNone(schema.parse_kick(None))
        self.assertIsNone(schema.parse_kick({}))
        self.assertEqual(schema.parse_kick({"client_type": -1}), -1)
        self.assertEqual(schema.parse_kick({"close": False}), None)
        self.assertTrue(schema.kick_closes(None))
        self.assertTrue(schema.kick_closes({}))
        self.assertFalse(schema.kick_closes({"close": False}))
        self.assertRaises(errors.InvalidRequest, schema.kick_closes, {"close": 0})

    def test_path_text(self):
        self.assertEqual(schema.path_text("\u00e9".encode(), "user_id"), "\u00e9")
        exc = self.assertRaises(errors.InvalidRequest, schema.path_text, b"\xc3", "task_id")
        self.assertIn("task_id", str(exc))

    def test_content_type_values(self):
        schema.check_content_type([b"application/json"])
        for values in [None, [], [b"text/json"], [b"application/json", b"application/json"],
                       [b"application/json; charset=utf-16"], [b"\xff"]]:
            self.assertRaises(errors.UnsupportedMediaType, schema.check_content_type, values)


class RealNodeTests(unittest.TestCase):
    """The API in front of a whole loopback node (real NodeAPI, real device)."""

    timeout = 30

    def setUp(self):
        from tests.loopback_support import LoopbackNode

        self.node = LoopbackNode(self)
        self.server = LoopbackApi(self.node.api, reactor)
        self.addCleanup(self.server.stop)

    @defer.inlineCallbacks
    def device(self, user_id):
        from mpush.client.config import ClientConfig
        from mpush.client.protocol import connect_client
        from mpush.protocol.crypto import MPUSH_DEMO_PUBLIC_KEY

        config = ClientConfig(host="127.0.0.1", port=self.node.port, public_key=MPUSH_DEMO_PUBLIC_KEY,
                              device_id=f"device-of-{user_id}", user_id=user_id)
        client = yield connect_client(config, reactor)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def call(self, method, path, body=None):
        headers = dict(AUTH)
        if body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(body).encode()
        done = defer.Deferred()
        factory = ClientFactory.forProtocol(lambda: _RawClient(build_request(method, path, headers, body), done))
        reactor.connectTCP("127.0.0.1", self.server.port_number, factory)
        data = yield done
        return parse_response(data, method)

    @defer.inlineCallbacks
    def test_push_show_kick(self):
        alice = yield self.device("alice")
        response = yield self.call("POST", "/v1/push", {"users": ["alice", "nobody"], "content": "hi",
                                                        "ack": "auto"})
        self.assertEqual(response.status, 200, response.body)
        body = response.json()
        statuses = {result["user"]: result["status"] for result in body["results"]}
        self.assertEqual(statuses, {"alice": "success", "nobody": "offline"})
        received = yield alice.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"hi")
        response = yield self.call("GET", f"/v1/tasks/{body['message_id']}")
        self.assertEqual(response.json()["sent"], 1)

        response = yield self.call("GET", "/v1/users/alice")
        self.assertEqual(response.status, 200, response.body)
        [route] = response.json()["routes"]
        self.assertEqual((route["client_type_name"], route["online"], route["device_id"]),
                         ("MOBILE", True, "device-of-alice"))
        self.assertEqual(route["node"], f"127.0.0.1:{self.node.gateway_port}")
        response = yield self.call("GET", "/v1/users/nobody")
        self.assertEqual(response.status, 404)

        response = yield self.call("GET", "/v1/allot")
        self.assertEqual(response.body, f"127.0.0.1:{self.node.port}".encode())
        response = yield self.call("GET", "/v1/stats")
        self.assertEqual(response.json()["pushes"]["success"], 1)

        kicked = defer.Deferred()
        alice.on_kick = lambda device_id, user_id: kicked.callback(user_id)
        response = yield self.call("POST", "/v1/users/alice/kick", {"client_type": 1})
        self.assertEqual(response.json(), {"kicked": 1})
        self.assertEqual((yield kicked), "alice")

    @defer.inlineCallbacks
    def test_rejected_condition(self):
        response = yield self.call("POST", "/v1/push", {"broadcast": True, "content": "x",
                                                        "condition": "eval("})
        self.assertEqual(response.status, 400, response.body)
        self.assertEqual(response.json()["error"]["code"], "push_rejected")

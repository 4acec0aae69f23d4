"""
Property tests for the HTTP API: hypothesis makes up methods, paths, headers
and JSON-ish bodies, feeds them as raw HTTP/1.1 bytes to the real twisted.web
Site (an HTTPChannel over a StringTransport, a fake NodeAPI answering at once)
and checks that every answer is one well-formed response, never a 500, and
JSON whenever it is an error.  The validators are fuzzed directly as well:
they either accept or raise their typed error.
"""

from __future__ import annotations

import base64
import json
import string
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from mpush.http import schema
from mpush.http.api import ROUTES, ApiResource, ApiSite, HttpApiRoot
from mpush.http.errors import InvalidRequest
from mpush.node_api import PushRequest
from tests.test_http_api import TOKEN, FakeNodeAPI, build_request, parse_response

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Text with lone surrogates too: JSON can escape them ("\\ud800"), UTF-8 cannot carry them.
json_text = st.one_of(
    st.text(max_size=20),
    st.lists(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=20).map("".join),
)
json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    json_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(json_text, children, max_size=5)),
    max_leaves=20,
)
# Valid pushes, then each made invalid (or not) by one change: a field set
# to any JSON value, or one dropped, so every check is reached often.
valid_pushes = st.one_of(
    st.fixed_dictionaries(
        {"users": st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3),
         "content": st.one_of(st.text(max_size=20), json_text)},
        optional={"ack": st.sampled_from(schema.ACK_MODELS),
                  "timeout_ms": st.integers(*schema.TIMEOUT_MS_RANGE),
                  "offline_ttl": st.integers(*schema.OFFLINE_TTL_RANGE),
                  "broadcast": st.just(False)}),
    st.fixed_dictionaries(
        {"broadcast": st.just(True),
         "content_b64": st.binary(max_size=20).map(lambda raw: base64.b64encode(raw).decode())},
        optional={"tags": st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=3),
                  "condition": st.text(min_size=1, max_size=20),
                  "task_id": st.text(min_size=1, max_size=8),
                  "timeout_ms": st.integers(*schema.TIMEOUT_MS_RANGE)}),
)
_field_names = st.sampled_from(sorted(schema.PUSH_FIELDS) + ["extra"])


def _mutate(body: dict) -> st.SearchStrategy:
    return st.one_of(
        st.just(body),
        st.tuples(_field_names, json_values).map(lambda change: {**body, change[0]: change[1]}),
        _field_names.map(lambda name: {key: value for key, value in body.items() if key != name}),
    )


push_bodies = valid_pushes.flatmap(_mutate)
kick_bodies = st.fixed_dictionaries({}, optional={"client_type": st.one_of(st.integers(), json_values),
                                                  "other": json_values})
bodies = st.one_of(
    st.none(),
    push_bodies.map(lambda value: json.dumps(value).encode("utf-8")),
    kick_bodies.map(lambda value: json.dumps(value).encode("utf-8")),
    json_values.map(lambda value: json.dumps(value).encode("utf-8")),
    st.binary(max_size=64),
    st.text(max_size=32).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"{", b"[" * 5000, b'{"a":1,"a":2}', b"NaN", b"\xef\xbb\xbf{}"]),
)

known_segments = ["push", "users", "u1", "kick", "stats", "tasks", "t1", "allot", "openapi.json",
                  "", "..", ".", "%FF", "%00", "%2F", "v1"]
segments = st.one_of(st.sampled_from(known_segments), st.text(max_size=8).map(
    lambda text: quote(text.encode("utf-8", "surrogatepass"), safe="")))
paths = st.one_of(
    st.sampled_from(["/v1/push", "/v1/users/u1", "/v1/users/u1/kick", "/v1/stats", "/v1/tasks/t1",
                     "/v1/allot", "/v1/openapi.json", "/", "/v1", "/metrics"]),
    st.lists(segments, min_size=0, max_size=4).map(lambda parts: "/v1/" + "/".join(parts)),
    st.lists(segments, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts)),
).flatmap(lambda path: st.sampled_from([path, path + "?x=1", path + "?" + quote("é")]))
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", "FOO"])

header_text = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ", max_size=30)
header_names = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=12).filter(
    lambda name: name.lower() not in {"content-length", "transfer-encoding", "host", "connection", "expect",
                                      "content-type", "authorization"})
content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                     "application/json; charset=latin-1", "multipart/form-data; boundary=x",
                     "application/x-www-form-urlencoded"]),
    header_text,
)
authorizations = st.one_of(st.none(), st.just(f"Bearer {TOKEN}"), st.just(f"bearer {TOKEN}"),
                           st.just("Bearer wrong"), header_text)
extra_headers = st.lists(st.tuples(header_names, header_text), max_size=3)


def _route_path(route) -> st.SearchStrategy:
    return st.tuples(segments, segments).map(
        lambda values: route.path.replace("{user_id}", values[0] or "u1").replace("{task_id}", values[1] or "t1"))


# Requests aimed at a real route with the right method and token, so the
# fuzz reaches the handlers and not only the 404/405/401 answers.
routed_requests = st.sampled_from(ROUTES).flatmap(lambda route: st.tuples(
    st.just(route.method), _route_path(route),
    st.one_of(push_bodies.map(lambda value: json.dumps(value).encode("utf-8")), bodies),
    st.one_of(st.just("application/json"), content_types),
    st.one_of(st.just(f"Bearer {TOKEN}"), authorizations),
    extra_headers,
))
random_requests = st.tuples(methods, paths, bodies, content_types, authorizations, extra_headers)


class HttpFuzzTests(unittest.SynchronousTestCase):

    def setUp(self):
        self.clock = task.Clock()
        self.node = FakeNodeAPI()
        self.node.routes_by_user["u1"] = {1: self.node.routes_by_user["u1"][1]}
        resource = ApiResource(self.node, token=TOKEN, clock=self.clock)
        self.site = ApiSite(HttpApiRoot(resource), reactor=self.clock)

    def exchange(self, payload: bytes) -> bytes:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(payload)
        channel.connectionLost(Failure(ConnectionDone()))
        return transport.value()

    def check_answer(self, method: str, path: str, data: bytes) -> None:
        self.assertTrue(data.startswith(b"HTTP/1.1 "), data[:100])
        # One answer: parse_response checks Content-Length covers all the rest.
        response = parse_response(data, method)
        self.assertNotEqual(response.status, 500, (method, path, response.body))
        self.assertIsNotNone(response.header("Content-Length"))
        content_type = response.header("Content-Type")
        if method == "HEAD":
            return
        if content_type == b"text/plain; charset=utf-8":
            self.assertTrue(path.startswith("/v1/allot"), path)
            self.assertIn(response.status, (200, 503))
            return
        self.assertEqual(content_type, b"application/json; charset=utf-8", (method, path))
        value = response.json()
        if response.status >= 400:
            self.assertEqual(set(value), {"error"})
            self.assertEqual(set(value["error"]), {"code", "message"})
            self.assertIsInstance(value["error"]["code"], str)
            self.assertIsInstance(value["error"]["message"], str)
        else:
            self.assertEqual(response.status, 200)

    @SETTINGS
    @given(request=st.one_of(routed_requests, random_requests))
    def test_never_500_always_json(self, request):
        method, path, body, content_type, authorization, extra = request
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if authorization is not None:
            headers["Authorization"] = authorization
        payload = build_request(method, path, headers, body, raw_headers=extra)
        self.check_answer(method, path, self.exchange(payload))
        self.assertEqual(self.flushLoggedErrors(), [])

    @SETTINGS
    @given(body=push_bodies)
    def test_push_bodies_over_http(self, body):
        # Authorised, well-typed JSON: the answer is 200 or a 400 from the validator.
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        data = self.exchange(build_request("POST", "/v1/push", headers, json.dumps(body).encode()))
        self.check_answer("POST", "/v1/push", data)
        response = parse_response(data)
        self.assertIn(response.status, (200, 400))
        if response.status == 400:
            self.assertEqual(response.json()["error"]["code"], "invalid_request")


class SchemaFuzzTests(unittest.SynchronousTestCase):

    @SETTINGS
    @given(body=st.one_of(push_bodies, json_values))
    def test_parse_push(self, body):
        try:
            request = schema.parse_push(body)
        except InvalidRequest as exc:
            self.assertTrue(exc.message)
            return
        self.assertIsInstance(request, PushRequest)
        self.assertIsInstance(request.content, bytes)
        self.assertIn(request.ack, schema.ACK_MODELS)
        if request.broadcast:
            self.assertIsNone(request.users)
        else:
            self.assertTrue(1 <= len(request.users) <= schema.MAX_USERS)
            self.assertIsNone(request.tags)

    @SETTINGS
    @given(body=st.one_of(kick_bodies, json_values))
    def test_parse_kick(self, body):
        try:
            client_type = schema.parse_kick(body)
        except InvalidRequest:
            return
        self.assertTrue(client_type is None or isinstance(client_type, int))

    @SETTINGS
    @given(data=st.one_of(st.binary(max_size=200), bodies.filter(lambda body: body is not None)))
    def test_parse_json_object(self, data):
        try:
            value = schema.parse_json_object(data)
        except InvalidRequest:
            return
        self.assertIsInstance(value, dict)

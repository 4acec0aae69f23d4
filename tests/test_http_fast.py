"""
The HTTP API's keep-alive fast path (mpush.http.fast): plain requests are
answered by it, in order, on one connection; anything else goes to
twisted.web for the rest of the connection; idle connections are closed.
"""

from __future__ import annotations

import json

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mpush.http.api import ApiResource, ApiSite, HttpApiRoot
from mpush.http.fast import FastApiChannel
from mpush.node_api import PushOutcome

from tests.test_http_api import AUTH, TOKEN, FakeNodeAPI

PUSH_BODY = json.dumps({"users": ["u1"], "content": "hi"}).encode()


def request(method: str = "POST", path: str = "/v1/push", body: bytes = PUSH_BODY,
            headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: api"]
    fields = {**AUTH, "Content-Type": "application/json", **(headers or {})}
    if body:
        fields["Content-Length"] = str(len(body))
    lines += [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def responses(data: bytes) -> list[tuple[int, dict, bytes]]:
    """Every complete response in C{data}: (status, headers, body)."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b": ")
            headers[name.lower()] = value
        length = int(headers[b"content-length"])
        found.append((status, headers, rest[:length]))
        data = rest[length:]
    return found


class FastChannelTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.node = FakeNodeAPI()
        self.api = ApiResource(self.node, token=TOKEN, clock=self.clock)
        self.site = ApiSite(HttpApiRoot(self.api), reactor=self.clock)
        self.channel = self.site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def limited_channel(self, body_limit: int) -> tuple[FastApiChannel, StringTransport]:
        """A connection to a site taking bodies of at most C{body_limit} bytes."""
        resource = ApiResource(self.node, token=TOKEN, clock=self.clock, max_body_bytes=body_limit)
        site = ApiSite(HttpApiRoot(resource), body_limit=body_limit, reactor=self.clock)
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_site_builds_the_fast_channel(self):
        self.assertIsInstance(self.channel, FastApiChannel)

    def test_keep_alive_requests_in_order(self):
        """Three requests, one at a time, on one connection: three answers, connection open."""
        for n in range(3):
            self.channel.dataReceived(request())
        answers = responses(self.transport.value())
        headers = answers[0][1]
        self.assertEqual([a[0] for a in answers], [200, 200, 200])
        self.assertEqual(json.loads(answers[0][2])["results"][0]["user"], "u1")
        self.assertEqual(headers[b"content-type"], b"application/json; charset=utf-8")
        self.assertIn(b"date", headers)
        self.assertEqual(self.channel.served, 3)
        self.assertIsNone(self.channel.handed_over)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(len([c for c in self.node.calls if c[0] == "push"]), 3)

    def test_pipelined_waits_for_each_answer(self):
        """A request sent ahead is served only once the one before it is answered."""
        held = defer.Deferred()
        self.node.push_answer = held
        self.channel.dataReceived(request() + request("GET", "/v1/stats", b""))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual([c[0] for c in self.node.calls], ["push"])
        self.node.push_answer = None

        held.callback(PushOutcome("a" * 32, []))
        answers = responses(self.transport.value())
        self.assertEqual([a[0] for a in answers], [200, 200])
        self.assertEqual(json.loads(answers[0][2])["message_id"], "a" * 32)
        self.assertIn("pushes", json.loads(answers[1][2]))

    def test_byte_by_byte(self):
        for byte in request():
            self.channel.dataReceived(bytes([byte]))
        self.assertEqual([a[0] for a in responses(self.transport.value())], [200])

    def test_errors_are_the_apis(self):
        self.channel.dataReceived(request(headers={"Authorization": "Bearer wrong"}))
        self.channel.dataReceived(request("GET", "/v1/nothing", b""))
        self.channel.dataReceived(request(headers={"Content-Type": "text/plain"}))
        answers = responses(self.transport.value())
        self.assertEqual([a[0] for a in answers], [401, 404, 415])
        self.assertEqual(json.loads(answers[0][2])["error"]["code"], "unauthorized")
        self.assertIsNone(self.channel.handed_over)

    def test_connection_close(self):
        self.channel.dataReceived(request(headers={"Connection": "close"}) + request())
        answers = responses(self.transport.value())
        self.assertEqual([a[0] for a in answers], [200])
        self.assertEqual(answers[0][1][b"connection"], b"close")
        self.assertTrue(self.transport.disconnecting)

    def test_not_plain_goes_to_twisted_web(self):
        """
        After a fast answer, a chunked request (and everything after it) is
        twisted.web's, which answers it as before.
        """
        chunked = (b"POST /v1/push HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer " + TOKEN.encode()
                   + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"%x\r\n" % len(PUSH_BODY) + PUSH_BODY + b"\r\n0\r\n\r\n")
        self.channel.dataReceived(request() + chunked)
        self.assertIsNotNone(self.channel.handed_over)
        self.channel.dataReceived(request("GET", "/v1/stats", b""))
        answers = responses(self.transport.value())
        self.assertEqual([a[0] for a in answers], [200, 200, 200])
        self.assertEqual(self.channel.served, 1)
        self.assertIn(b"server", answers[1][1])  # twisted.web's own header
        self.assertEqual(len([c for c in self.node.calls if c[0] == "push"]), 2)

    def test_odd_heads_go_to_twisted_web(self):
        for head in (b"GET /v1/stats HTTP/1.0\r\n\r\n", b"GET /v1/stats?x=1 HTTP/1.1\r\n\r\n",
                     b"GET /metrics HTTP/1.1\r\n\r\n", b"GET /v1/stats HTTP/1.1\r\nBad Header: x\r\n\r\n",
                     b"GET /v1/stats HTTP/1.1\r\n folded\r\n\r\n",
                     b"POST /v1/push HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"):
            channel = self.site.buildProtocol(None)
            channel.makeConnection(StringTransport())
            channel.dataReceived(head)
            self.assertIsNotNone(channel.handed_over, head)
            self.assertEqual(channel.served, 0)

    def test_large_body_gets_413_from_twisted_web(self):
        channel, transport = self.limited_channel(10)
        channel.dataReceived(request())
        self.assertIsNotNone(channel.handed_over)
        self.assertEqual(responses(transport.value())[0][0], 413)

    def test_client_gone_while_pending(self):
        """The answer of a request whose client left is dropped; nothing is written."""
        self.node.push_answer = defer.Deferred()
        self.channel.dataReceived(request())
        self.channel.connectionLost(Exception("gone"))

        self.node.push_answer.callback(PushOutcome("a" * 32, []))
        self.assertEqual(self.transport.value(), b"")

    def test_idle_connection_closed(self):
        self.channel.dataReceived(request())
        self.clock.advance(self.site.timeOut - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_not_idle_while_a_request_is_served(self):
        """
        A push slower than the idle timeout keeps its connection; idleness
        counts from its answer, and from each later answer.
        """
        self.node.push_answer = defer.Deferred()
        self.channel.dataReceived(request())
        self.clock.advance(self.site.timeOut * 2.5)
        self.assertFalse(self.transport.disconnecting)
        self.node.push_answer.callback(PushOutcome("a" * 32, []))
        self.node.push_answer = None
        self.clock.advance(self.site.timeOut - 1)
        self.channel.dataReceived(request())
        self.clock.advance(self.site.timeOut - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_partial_head_closed_when_idle(self):
        self.channel.dataReceived(b"POST /v1/push HTTP/1.1\r\nHost")
        self.clock.advance(self.site.timeOut)
        self.assertTrue(self.transport.disconnecting)

    def test_sending_ahead_is_paused(self):
        """A client far ahead of its answers is not read further until they go out."""
        channel, transport = self.limited_channel(1000)
        held = defer.Deferred()
        self.node.push_answer = held
        channel.dataReceived(request() + request() * 100)
        self.assertEqual(transport.producerState, "paused")
        self.node.push_answer = None

        held.callback(PushOutcome("a" * 32, []))
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(channel.served, 101)
        self.assertEqual(len(responses(transport.value())), 101)

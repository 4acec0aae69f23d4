"""
The WebSocket server (spec 15): the JSON packet codec on its own, then a
whole node on loopback with its ws listener, driven by autobahn's client
next to TCP devices and the NodeAPI.
"""

import datetime
import json

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, ssl, task
from twisted.internet.defer import DeferredQueue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from mpush.client.config import ClientConfig
from mpush.client.protocol import connect_client
from mpush.config import CoreConfig, LimitsConfig, NetConfig, load_config
from mpush.node_api import PushRequest
from mpush.protocol.client_type import ClientType
from mpush.protocol.crypto import MPUSH_DEMO_PUBLIC_KEY
from mpush.protocol.messages import (
    AckMessage,
    ErrorMessage,
    HttpResponseMessage,
    KickUserMessage,
    OkMessage,
    PushMessage,
)
from mpush.protocol.packet import Command, Packet
from mpush.server.device.context import ConnectionState
from mpush.server.device.dispatcher import DeviceDispatcher, DeviceHandler, IDeviceHandler
from mpush.server.device.errors import ConnectionClosed
from mpush.server.ws.websocket import (
    WS_HEARTBEAT,
    BadJson,
    JsonPacket,
    NotJsonEncodable,
    WebSocketConnection,
    decode_json_packet,
    encode_json_packet,
    json_body,
    load_pages,
    make_ws_dispatcher,
    make_ws_site,
)
from mpush.tap import make_dispatcher

from tests.loopback_support import LoopbackNode
from tests.polling import wait_until
from tests.server_support import make_node

#: Seconds any single wait of these tests may take.
WAIT = 10


# -- the codec, without a network ---------------------------------------------


class JsonPacketCodecTests(SynchronousTestCase):
    def test_defaults(self):
        packet = decode_json_packet(b"{}")
        self.assertEqual((packet.cmd, packet.session_id, packet.flags, packet.body), (-1, 0, 16, None))

    def test_fields_and_unknown_keys(self):
        packet = decode_json_packet(
            '{"cmd":5,"flags":24,"sessionId":-7,"body":{"userId":"ü"},"cc":3,"x":[1]}'.encode()
        )
        self.assertEqual((packet.cmd, packet.session_id, packet.flags), (5, -7, 24))
        self.assertEqual(packet.string("userId"), "ü")
        self.assertIsNone(packet.string("tags"))

    def test_null_fields_take_defaults(self):
        packet = decode_json_packet(b'{"cmd":null,"flags":null,"sessionId":null,"body":null}')
        self.assertEqual((packet.cmd, packet.session_id, packet.flags, packet.body), (-1, 0, 16, None))

    def test_bad_frames(self):
        cases = [
            (b"not json", 0, 0),
            (b"\xff\xfe", 0, 0),
            (b"[1, 2]", 0, 0),
            (b'"text"', 0, 0),
            (b"[" * 100000, 0, 0),
            (b'{"cmd":"2"}', 0, 0),
            (b'{"cmd":true}', 0, 0),
            (b'{"cmd":2.0}', 0, 0),
            (b'{"cmd":300,"sessionId":4}', 0, 4),
            (b'{"cmd":2,"sessionId":2147483648}', 0, 0),
            (b'{"cmd":2,"sessionId":"1"}', 0, 0),
            (b'{"cmd":2,"sessionId":9,"flags":"16"}', 2, 9),
            (b'{"cmd":2,"sessionId":9,"flags":0}', 2, 9),
            (b'{"cmd":2,"sessionId":9,"flags":8}', 2, 9),
            (b'{"cmd":2,"sessionId":9,"flags":4096}', 2, 9),
            (b'{"cmd":5,"sessionId":3,"body":[1]}', 5, 3),
            (b'{"cmd":5,"sessionId":3,"body":"x"}', 5, 3),
            (b'{"cmd":5,"sessionId":' + b"9" * 5000 + b"}", 0, 0),
        ]
        for frame, cmd, session_id in cases:
            with self.assertRaises(BadJson, msg=frame[:40]) as caught:
                decode_json_packet(frame)
            refused = caught.exception
            self.assertEqual((refused.cmd, refused.session_id), (cmd, session_id), frame[:40])
            self.assertEqual((int(caught.exception.code), caught.exception.close), (100, True))

    def test_body_fields_must_be_strings(self):
        packet = decode_json_packet(b'{"cmd":2,"body":{"deviceId":5,"osName":{"a":1},"bad":"\\ud800"}}')
        for key in ("deviceId", "osName", "bad"):
            self.assertRaises(BadJson, packet.string, key)

    def test_encode_orders_keys_and_omits_a_null_body(self):
        self.assertEqual(
            encode_json_packet(JsonPacket(Command.HANDSHAKE, 3)),
            b'{"bodyLength":0,"cmd":2,"flags":16,"sessionId":3}',
        )
        self.assertEqual(
            encode_json_packet(JsonPacket(Command.PUSH, 9, 24, {"content": "é"})),
            '{"body":{"content":"é"},"bodyLength":1,"cmd":15,"flags":24,"sessionId":9}'.encode(),
        )

    def test_json_bodies(self):
        self.assertEqual(json_body(OkMessage(5, 0, "bind success")), {"cmd": 5, "data": "bind success"})
        self.assertEqual(json_body(OkMessage(16, 0, None)), {"cmd": 16})
        self.assertEqual(
            json_body(ErrorMessage(5, 0, "not handshake")), {"cmd": 5, "reason": "not handshake"}
        )
        self.assertEqual(
            json_body(ErrorMessage(-1, 101, "unsupported command", "d")),
            {"code": 101, "reason": "unsupported command", "data": "d"},
        )
        self.assertEqual(json_body(KickUserMessage("dev", "u")), {"deviceId": "dev", "userId": "u"})
        self.assertEqual(json_body(KickUserMessage(None, "u")), {"userId": "u"})
        self.assertIsNone(json_body(AckMessage()))
        self.assertIsNone(json_body(None))

    def test_push_content_is_text_like_javas_new_string(self):
        body = json_body(PushMessage("café ✓".encode() + b" \xff\xc3"))
        self.assertEqual(body, {"content": "café ✓ \ufffd\ufffd"})

    def test_messages_without_a_json_form(self):
        self.assertRaises(NotJsonEncodable, json_body, HttpResponseMessage(200, "OK", {}, b""))

    def test_pages_are_installed(self):
        pages = load_pages()
        self.assertIn(b"client.js", pages[b"/"][0])
        self.assertIs(pages[b"/"], pages[b"/"])
        self.assertIn(b"new WebSocket", pages[b"/client.js"][0])


# -- one connection over a fake channel, on a fake clock -----------------------


class FakeChannel:
    """
    What a L{WebSocketConnection} needs of autobahn's protocol, recorded.
    """

    def __init__(self):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
        # As after the upgrade: twisted.web's channel is still the producer.
        self.transport.registerProducer(object(), True)
        self.sent = []
        self.closed_with = None
        self.dropped = False

    def send_text(self, payload):
        self.sent.append(json.loads(payload))
        return True

    def sendClose(self, code):
        self.closed_with = code

    def dropConnection(self, abort=False):
        self.dropped = True

    def refuse_binary(self):
        self.closed_with = 1003


class ConnectionUnitTests(SynchronousTestCase):
    def setUp(self):
        config = load_config(None).replace(limits=LimitsConfig(pre_handshake_timeout=5000))
        self.clock = task.Clock()
        self.node = make_node(config, clock=self.clock)
        self.channel = FakeChannel()
        self.connection = WebSocketConnection(self.node, make_ws_dispatcher(self.node), self.channel)
        self.connection.opened()

    def frame(self, **packet):
        self.connection.message_received(json.dumps(packet).encode(), False)

    def test_interfaces(self):
        verifyObject(IPushProducer, self.connection)
        for handler in make_ws_dispatcher(self.node)._handlers.values():
            verifyObject(IDeviceHandler, handler)

    def test_the_tcp_listeners_handlers_serve_browsers(self):
        """
        No WebSocket copy of a handler: each command a browser may send is
        handled by the class that handles it on TCP.
        """
        ws, tcp = make_ws_dispatcher(self.node), make_dispatcher(self.node)
        commands = sorted(ws._handlers)
        self.assertEqual(commands, [2, 5, 6, 15, 23])
        self.assertEqual(
            [type(ws.handler_for(cmd)) for cmd in commands], [type(tcp.handler_for(cmd)) for cmd in commands]
        )

    def test_joins_the_node_and_takes_the_send_buffer_over(self):
        self.assertIs(self.node.connections[self.connection.conn_id], self.connection)
        self.assertIs(self.channel.transport.producer, self.connection)
        self.assertEqual(self.connection.peer, "127.0.0.1:40001")

    def test_no_handshake_in_time_aborts(self):
        self.clock.advance(4.9)
        self.assertFalse(self.channel.dropped)
        self.clock.advance(0.2)
        self.assertTrue(self.channel.dropped)
        self.assertFalse(self.connection.is_open)
        self.assertIn(b'reason="pre_handshake_timeout"', self.node.metrics.render()[0])

    def test_handshake_stops_the_timer(self):
        self.frame(cmd=2, flags=16, sessionId=1, body={"deviceId": "d"})
        self.assertEqual(self.channel.sent, [{"bodyLength": 0, "cmd": 2, "flags": 16, "sessionId": 1}])
        self.assertIs(self.connection.state, ConnectionState.HANDSHAKEN)
        self.clock.advance(60)
        self.assertFalse(self.channel.dropped)
        self.assertTrue(self.connection.is_open)

    def test_pre_handshake_deadlines_share_the_node_timer(self):
        """
        A browser's pre-handshake deadline is an entry on the node's
        deadline heap, as a TCP connection's is, not a timer of its own.
        """
        others = [WebSocketConnection(self.node, make_ws_dispatcher(self.node), FakeChannel()) for _ in range(3)]
        for other in others:
            other.opened()
        self.assertEqual(len(self.node.deadlines), 4)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(5.1)
        self.assertEqual([other.channel.dropped for other in others], [True] * 3)
        self.assertTrue(self.channel.dropped)

    def test_lost_leaves_the_node_once(self):
        self.connection.lost()
        self.connection.lost()
        self.assertEqual(self.node.connections, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.connection.state, ConnectionState.CLOSED)
        self.assertFalse(self.connection.writable)

    def test_binary_frame_is_refused_and_nothing_after_it_read(self):
        self.connection.message_received(b"{}", True)
        self.frame(cmd=2, flags=16, sessionId=1, body={"deviceId": "d"})
        self.assertEqual((self.channel.closed_with, self.channel.sent), (1003, []))

    def test_writability_follows_the_transport(self):
        self.connection.pauseProducing()
        self.assertFalse(self.connection.writable)
        self.connection.resumeProducing()
        self.assertTrue(self.connection.writable)
        self.connection.stopProducing()
        self.assertFalse(self.connection.writable)


# -- a node with its ws listener ----------------------------------------------


class WsLoopbackNode(LoopbackNode):
    """
    L{LoopbackNode} plus the WebSocket listener on a free loopback port.
    """

    def __init__(self, test_case, config=None, dispatcher=None):
        super().__init__(test_case, config=config)
        site = make_ws_site(self.node, dispatcher, reactor=reactor)
        self.ws_listening = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.ws_port = self.ws_listening.getHost().port

    @defer.inlineCallbacks
    def stop(self):
        if self.ws_listening is not None:
            listening, self.ws_listening = self.ws_listening, None
            yield listening.stopListening()
        yield super().stop()


class _ClientProtocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.client._opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.client._received(payload, isBinary)

    def onPing(self, payload):
        super().onPing(payload)
        self.factory.client.pings += 1

    def onClose(self, wasClean, code, reason):
        self.factory.client._closed(wasClean, code, reason)


class WsClient:
    """
    A test browser: JSON frames out, every frame in kept in order.
    """

    def __init__(self):
        self.protocol = None
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self.close_code = None
        self.pings = 0
        self.texts = DeferredQueue()
        self._ids = iter(range(1, 1 << 30))

    @classmethod
    def connect(cls, port, path="/", tls=None, origin=None):
        """
        Connect to C{ws://127.0.0.1:port/path}, or C{wss://} with C{tls}
        (a client context factory); as a browser would from a page of
        C{origin}, if given.
        """
        client = cls()
        scheme = "wss" if tls is not None else "ws"
        factory = WebSocketClientFactory(f"{scheme}://127.0.0.1:{port}{path}", origin=origin)
        factory.protocol = _ClientProtocol
        factory.client = client
        if tls is None:
            reactor.connectTCP("127.0.0.1", port, factory, timeout=WAIT)
        else:
            reactor.connectSSL("127.0.0.1", port, factory, tls, timeout=WAIT)
        return client.opened.addTimeout(WAIT, reactor)

    def _opened(self, protocol):
        self.protocol = protocol
        self.opened.callback(self)

    def _received(self, payload, is_binary):
        self.texts.put(payload)

    def _closed(self, was_clean, code, reason):
        self.close_code = code
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"no WebSocket: {reason}"))
        self.closed.callback((code, reason))

    def next_id(self):
        return next(self._ids)

    def send(self, cmd, body=None, session_id=None, flags=16):
        session_id = self.next_id() if session_id is None else session_id
        packet = {"cmd": cmd, "flags": flags, "sessionId": session_id}
        if body is not None:
            packet["body"] = body
        self.send_text(json.dumps(packet))
        return session_id

    def send_text(self, text):
        self.protocol.sendMessage(text.encode("utf-8") if isinstance(text, str) else text)

    def next_text(self):
        return self.texts.get().addTimeout(WAIT, reactor)

    def next(self):
        return self.next_text().addCallback(json.loads)

    @defer.inlineCallbacks
    def handshake(self, device_id, os_name="web"):
        self.send(2, {"deviceId": device_id, "osName": os_name, "osVersion": "1", "clientVersion": "t"})
        reply = yield self.next()
        assert reply["cmd"] == 2, reply
        return reply

    @defer.inlineCallbacks
    def bind(self, user_id, tags=None):
        body = {"userId": user_id}
        if tags is not None:
            body["tags"] = tags
        session_id = self.send(5, body)
        reply = yield self.next()
        assert reply == {
            "body": {"cmd": 5, "data": "bind success"},
            "bodyLength": 2,
            "cmd": 11,
            "flags": 16,
            "sessionId": session_id,
        }, reply
        return reply

    def wait_closed(self):
        return self._wait(self.closed)

    def _wait(self, deferred):
        waiting = defer.Deferred()
        deferred.addBoth(lambda result: (waiting.called or waiting.callback(result), result)[1])
        return waiting.addTimeout(WAIT, reactor)

    def close(self):
        if self.protocol is not None and not self.closed.called:
            self.protocol.sendClose(1000)
        return self._wait(self.closed).addErrback(lambda _: None)


def error_frame(cmd, code, reason, session_id):
    body = {}
    if cmd > 0:
        body["cmd"] = cmd
    if code > 0:
        body["code"] = code
    body["reason"] = reason
    return {"body": body, "bodyLength": len(body), "cmd": 10, "flags": 16, "sessionId": session_id}


class WsNodeTestCase(TestCase):
    timeout = 60
    config = None

    def setUp(self):
        self.server = WsLoopbackNode(self, config=self.config)
        self.api = self.server.api

    @defer.inlineCallbacks
    def ws(self, path="/"):
        client = yield WsClient.connect(self.server.ws_port, path)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def bound_ws(self, user_id, device_id=None):
        client = yield self.ws()
        yield client.handshake(device_id or f"ws-{user_id}")
        yield client.bind(user_id)
        return client

    @defer.inlineCallbacks
    def tcp_device(self, user_id, os_name="android", device_id=None):
        config = ClientConfig(
            host="127.0.0.1",
            port=self.server.port,
            public_key=MPUSH_DEMO_PUBLIC_KEY,
            device_id=device_id or f"tcp-{user_id}-{os_name}",
            os_name=os_name,
            user_id=user_id,
        )
        client = yield connect_client(config, reactor)
        self.addCleanup(client.close)
        return client

    def ws_connections(self):
        return [c for c in self.server.node.connections.values() if isinstance(c, WebSocketConnection)]

    def push(self, user, content, ack="none", timeout_ms=5000, **fields):
        request = PushRequest(users=(user,), content=content, ack=ack, timeout_ms=timeout_ms, **fields)
        return self.api.push(request)

    @defer.inlineCallbacks
    def assert_error_and_close(self, client, expected):
        frame = yield client.next()
        self.assertEqual(frame, expected)
        yield client.wait_closed()
        self.assertEqual(client.close_code, 1000)


class HandshakeTests(WsNodeTestCase):
    @defer.inlineCallbacks
    def test_handshake_reply_is_the_bodyless_json_packet(self):
        client = yield self.ws()
        client.send(2, {"deviceId": "browser-1", "osName": "web", "osVersion": "x", "clientVersion": "1"}, 1)
        text = yield client.next_text()
        self.assertEqual(text, b'{"bodyLength":0,"cmd":2,"flags":16,"sessionId":1}')
        [connection] = self.ws_connections()
        context = connection.context
        self.assertEqual(connection.state, ConnectionState.HANDSHAKEN)
        self.assertEqual(
            (context.device_id, context.os_name, context.os_version, context.client_version),
            ("browser-1", "web", "x", "1"),
        )
        self.assertEqual(context.client_type, ClientType.WEB)
        self.assertEqual(context.heartbeat, WS_HEARTBEAT)
        self.assertIsNone(context.cipher)
        self.assertFalse(connection.encrypted)

    @defer.inlineCallbacks
    def test_repeat_handshake_keeps_the_connection(self):
        client = yield self.ws()
        yield client.handshake("browser-2")
        session_id = client.send(2, {"deviceId": "browser-2"})
        frame = yield client.next()
        self.assertEqual(frame, error_frame(2, 102, "repeat handshake", session_id))
        yield client.bind("still-works")

    @defer.inlineCallbacks
    def test_handshake_without_device_id_is_refused(self):
        for body in (None, {}, {"deviceId": ""}, {"deviceId": None, "osName": "web"}):
            client = yield self.ws()
            session_id = client.send(2, body)
            yield self.assert_error_and_close(client, error_frame(2, 0, "Param invalid", session_id))

    @defer.inlineCallbacks
    def test_new_handshake_on_a_bound_connection_unbinds(self):
        client = yield self.bound_ws("hal")
        yield client.handshake("another-device")
        routes = yield self.api.routes("hal")
        self.assertFalse(routes[ClientType.WEB].online)
        self.assertIsNone(self.ws_connections()[0].context.user_id)


class BindTests(WsNodeTestCase):
    @defer.inlineCallbacks
    def test_bind_registers_a_web_route(self):
        yield self.bound_ws("alice")
        routes = yield self.api.routes("alice")
        self.assertEqual(list(routes), [ClientType.WEB])
        location = routes[ClientType.WEB]
        self.assertTrue(location.online)
        self.assertEqual(location.device_id, "ws-alice")
        self.assertEqual((location.host, location.port), ("127.0.0.1", self.server.gateway_port))
        [connection] = self.ws_connections()
        self.assertEqual(location.conn_id, connection.conn_id)
        self.assertEqual(connection.state, ConnectionState.BOUND)

    @defer.inlineCallbacks
    def test_bind_keeps_tags(self):
        client = yield self.ws()
        yield client.handshake("ws-t")
        yield client.bind("tina", tags="vip,beta")
        self.assertEqual(self.ws_connections()[0].context.tags, "vip,beta")
        outcome = yield self.api.push(PushRequest(content=b"for vips", broadcast=True, tags=("vip",)))
        self.assertEqual(outcome.results[0]["count"], 1)
        frame = yield client.next()
        self.assertEqual(frame["body"], {"content": "for vips"})

    @defer.inlineCallbacks
    def test_bind_before_handshake_is_refused(self):
        client = yield self.ws()
        session_id = client.send(5, {"userId": "early"})
        yield self.assert_error_and_close(client, error_frame(5, 0, "not handshake", session_id))

    @defer.inlineCallbacks
    def test_bind_without_user_is_refused(self):
        for body in (None, {"userId": ""}, {"tags": "x"}):
            client = yield self.ws()
            yield client.handshake("ws-nouser")
            session_id = client.send(5, body)
            yield self.assert_error_and_close(client, error_frame(5, 0, "invalid param", session_id))

    @defer.inlineCallbacks
    def test_bind_with_a_non_string_user_is_a_dispatch_error(self):
        client = yield self.ws()
        yield client.handshake("ws-num")
        session_id = client.send(5, {"userId": 12})
        yield self.assert_error_and_close(client, error_frame(5, 100, "handle message error", session_id))

    @defer.inlineCallbacks
    def test_unbind(self):
        client = yield self.bound_ws("ursula")
        session_id = client.send(6, {"userId": "ursula"})
        frame = yield client.next()
        self.assertEqual(
            frame,
            {
                "body": {"cmd": 6, "data": "unbind success"},
                "bodyLength": 2,
                "cmd": 11,
                "flags": 16,
                "sessionId": session_id,
            },
        )
        routes = yield self.api.routes("ursula")
        self.assertFalse(routes[ClientType.WEB].online)
        outcome = yield self.push("ursula", b"gone")
        self.assertEqual([r["status"] for r in outcome.results], ["offline"])

    @defer.inlineCallbacks
    def test_unbind_without_user_is_refused(self):
        client = yield self.bound_ws("uma")
        session_id = client.send(6, {})
        yield self.assert_error_and_close(client, error_frame(6, 0, "invalid param", session_id))

    @defer.inlineCallbacks
    def test_closing_releases_the_route(self):
        client = yield self.bound_ws("carl")
        yield client.close()
        yield wait_until(lambda: not self.server.node.connections, what="the ws connection to go")
        routes = yield self.api.routes("carl")
        self.assertFalse(routes[ClientType.WEB].online)
        self.assertEqual(self.api.local_users(), 0)


class PushTests(WsNodeTestCase):
    @defer.inlineCallbacks
    def test_push_arrives_as_json(self):
        client = yield self.bound_ws("alice")
        outcome = yield self.push("alice", "hello ✓".encode())
        [result] = outcome.results
        self.assertEqual((result["status"], result["client_type"]), ("success", 3))
        frame = yield client.next()
        self.assertEqual(frame["cmd"], 15)
        self.assertEqual(frame["flags"], 16)
        self.assertEqual(frame["body"], {"content": "hello ✓"})
        self.assertEqual(frame["bodyLength"], 1)
        self.assertGreater(frame["sessionId"], 0)

    @defer.inlineCallbacks
    def check_ack(self, ack, flags):
        client = yield self.bound_ws(f"acker-{ack}")
        pushed = self.push(f"acker-{ack}", b"please ack", ack=ack)
        frame = yield client.next()
        self.assertEqual(frame["flags"], flags)
        self.assertFalse(pushed.called)
        client.send(23, None, frame["sessionId"])
        outcome = yield pushed
        self.assertEqual([r["status"] for r in outcome.results], ["success"])
        self.assertEqual(len(self.server.node.acks), 0)

    def test_auto_ack_by_json_ack(self):
        return self.check_ack("auto", 16 | 8)

    def test_biz_ack_by_json_ack(self):
        return self.check_ack("biz", 16 | 4)

    @defer.inlineCallbacks
    def test_a_push_nobody_acks_times_out(self):
        client = yield self.bound_ws("silent")
        outcome = yield self.push("silent", b"ack me", ack="auto", timeout_ms=1000)
        self.assertEqual([r["status"] for r in outcome.results], ["ack_timeout"])
        frame = yield client.next()
        self.assertEqual(frame["body"], {"content": "ack me"})

    @defer.inlineCallbacks
    def test_an_ack_for_another_push_is_ignored(self):
        client = yield self.bound_ws("wrong-ack")
        pushed = self.push("wrong-ack", b"x", ack="auto", timeout_ms=1000)
        frame = yield client.next()
        client.send(23, None, frame["sessionId"] + 1000)
        outcome = yield pushed
        self.assertEqual([r["status"] for r in outcome.results], ["ack_timeout"])

    @defer.inlineCallbacks
    def test_an_ack_from_another_connection_is_ignored(self):
        """
        A PUSH to a WebSocket device (the general push path) is acked only
        by that connection, not by another guessing its id.
        """
        client = yield self.bound_ws("victim")
        intruder = yield self.bound_ws("mallory")
        pushed = self.push("victim", b"mine", ack="auto", timeout_ms=5000)
        frame = yield client.next()
        intruder.send(23, None, frame["sessionId"])
        # Handled in order: once this rebind is answered the ACK was read.
        yield intruder.bind("mallory")
        self.assertFalse(pushed.called)
        self.assertEqual(len(self.server.node.acks), 1)
        client.send(23, None, frame["sessionId"])
        outcome = yield pushed
        self.assertEqual([r["status"] for r in outcome.results], ["success"])

    @defer.inlineCallbacks
    def test_ws_and_tcp_devices_of_one_user_both_receive(self):
        browser = yield self.bound_ws("both")
        phone = yield self.tcp_device("both", os_name="android")
        pushed = self.push("both", b"to every device", ack="auto")
        frame = yield browser.next()
        self.assertEqual(frame["body"], {"content": "to every device"})
        browser.send(23, None, frame["sessionId"])
        outcome = yield pushed
        by_type = {r["client_type"]: r["status"] for r in outcome.results}
        self.assertEqual(by_type, {ClientType.MOBILE: "success", ClientType.WEB: "success"})
        received = yield phone.wait_for_push(timeout=WAIT)
        self.assertEqual(received.content, b"to every device")

    @defer.inlineCallbacks
    def test_offline_message_delivered_on_ws_bind(self):
        stored = yield self.push("olivia", b"kept for you", ack="auto", offline_ttl=60)
        self.assertEqual([r["status"] for r in stored.results], ["stored_offline"])
        client = yield self.bound_ws("olivia")
        frame = yield client.next()
        self.assertEqual((frame["body"], frame["flags"]), ({"content": "kept for you"}, 24))
        client.send(23, None, frame["sessionId"])
        offline = self.server.backends.offline
        yield wait_until(lambda: offline.queued() == 0, what="the acked offline message to be removed")

    @defer.inlineCallbacks
    def test_broadcast_reaches_ws_users(self):
        client = yield self.bound_ws("bea")
        outcome = yield self.api.push(PushRequest(content=b"to all", broadcast=True))
        self.assertEqual(outcome.results[0]["count"], 1)
        frame = yield client.next()
        self.assertEqual((frame["body"], frame["flags"]), ({"content": "to all"}, 16))

    @defer.inlineCallbacks
    def test_a_push_larger_than_the_inbound_limit_is_delivered(self):
        client = yield self.bound_ws("big")
        content = b"x" * 200_000
        outcome = yield self.push("big", content)
        self.assertEqual([r["status"] for r in outcome.results], ["success"])
        frame = yield client.next()
        self.assertEqual(len(frame["body"]["content"]), 200_000)

    @defer.inlineCallbacks
    def test_not_writable_connection_fails_pushes(self):
        yield self.bound_ws("slow")
        [connection] = self.ws_connections()
        self.assertIs(connection.transport.producer, connection)
        self.assertEqual(connection.transport.bufferSize, self.server.config.net.connect_server_write_high)
        connection.pauseProducing()
        outcome = yield self.push("slow", b"x")
        self.assertEqual([r["status"] for r in outcome.results], ["failure"])
        connection.resumeProducing()
        outcome = yield self.push("slow", b"y")
        self.assertEqual([r["status"] for r in outcome.results], ["success"])


class KickTests(WsNodeTestCase):
    @defer.inlineCallbacks
    def test_tcp_bind_of_the_same_type_kicks_the_ws_user(self):
        browser = yield self.bound_ws("kim")
        tcp = yield self.tcp_device("kim", os_name="web")
        frame = yield browser.next()
        self.assertEqual(
            frame,
            {
                "body": {"deviceId": "ws-kim", "userId": "kim"},
                "bodyLength": 2,
                "cmd": 13,
                "flags": 16,
                "sessionId": 0,
            },
        )
        self.assertTrue(self.ws_connections()[0].is_open)
        outcome = yield self.push("kim", b"to the new one")
        self.assertEqual([(r["client_type"], r["status"]) for r in outcome.results], [(3, "success")])
        received = yield tcp.wait_for_push(timeout=WAIT)
        self.assertEqual(received.content, b"to the new one")

    @defer.inlineCallbacks
    def test_ws_bind_kicks_the_previous_ws_user(self):
        first = yield self.bound_ws("kay", device_id="tab-1")
        yield self.bound_ws("kay", device_id="tab-2")
        frame = yield first.next()
        self.assertEqual((frame["cmd"], frame["body"]), (13, {"deviceId": "tab-1", "userId": "kay"}))

    @defer.inlineCallbacks
    def test_api_kick_reaches_the_ws_user(self):
        client = yield self.bound_ws("kevin")
        kicked = yield self.api.kick("kevin")
        self.assertEqual(kicked, 1)
        frame = yield client.next()
        self.assertEqual((frame["cmd"], frame["body"]["userId"]), (13, "kevin"))
        # An operator's kick logs the page out, and says so in the close.
        code, reason = yield client.wait_closed()
        self.assertEqual((code, reason), (4001, "kicked"))

    def test_page_knows_the_kicked_close_code(self):
        """The page tells an operator's kick by the code the server closes with."""
        import importlib.resources

        from mpush.server.ws.websocket import KICKED_CLOSE_CODE

        page = importlib.resources.files("mpush.server.ws.web").joinpath("client.js").read_text()
        self.assertIn(f"const KICKED_CLOSE = {KICKED_CLOSE_CODE};", page)
        self.assertNotIn("bound on another device", page)

    @defer.inlineCallbacks
    def test_ws_bind_kick_leaves_the_page_open(self):
        first = yield self.bound_ws("kat", device_id="tab-1")
        yield self.bound_ws("kat", device_id="tab-2")
        yield first.next()
        self.assertFalse(first.closed.called)
        self.assertEqual(len([c for c in self.ws_connections() if c.is_open]), 2)


class ClientPushTests(WsNodeTestCase):
    @defer.inlineCallbacks
    def test_auto_ack_client_push_is_answered_with_a_json_ack(self):
        client = yield self.bound_ws("pusher")
        client.send(15, {"content": "from the browser"}, 42, flags=16 | 8)
        text = yield client.next_text()
        self.assertEqual(text, b'{"bodyLength":0,"cmd":23,"flags":16,"sessionId":42}')

    @defer.inlineCallbacks
    def test_biz_ack_client_push_gets_no_reply(self):
        client = yield self.ws()
        yield client.handshake("ws-biz")
        client.send(15, {"content": "x"}, 43, flags=16 | 4)
        client.send(15, None, 44, flags=16)
        session_id = client.send(2, {"deviceId": "ws-biz"})
        frame = yield client.next()
        self.assertEqual(frame, error_frame(2, 102, "repeat handshake", session_id))

    @defer.inlineCallbacks
    def test_client_push_before_handshake_is_refused(self):
        client = yield self.ws()
        client.send(15, {"content": "x"}, 7, flags=24)
        yield self.assert_error_and_close(client, error_frame(15, 0, "not handshake", 7))

    @defer.inlineCallbacks
    def test_client_push_with_non_string_content(self):
        client = yield self.ws()
        yield client.handshake("ws-bad-content")
        client.send(15, {"content": [1]}, 8, flags=24)
        yield self.assert_error_and_close(client, error_frame(15, 100, "handle message error", 8))


class BadInputTests(WsNodeTestCase):
    @defer.inlineCallbacks
    def test_bad_json_gets_error_100_and_a_close(self):
        cases = [
            (b"hello", 0, 0),
            (b"[]", 0, 0),
            (b"[" * 60000, 0, 0),
            (b'{"cmd":"2","sessionId":3}', 0, 3),
            (b'{"cmd":2,"sessionId":5,"flags":0,"body":{"deviceId":"d"}}', 2, 5),
            (b'{"cmd":2,"sessionId":6,"body":["d"]}', 2, 6),
            (b'{"cmd":2,"sessionId":7,"body":{"deviceId":7}}', 2, 7),
            (b'{"cmd":2,"sessionId":8,"body":{"deviceId":"\\udc00"}}', 2, 8),
            (b'{"cmd":2,"sessionId":99999999999}', 0, 0),
        ]
        for frame, cmd, session_id in cases:
            client = yield self.ws()
            client.send_text(frame)
            expected = error_frame(cmd, 100, "handle message error", session_id)
            yield self.assert_error_and_close(client, expected)
        self.assertEqual(self.server.node.connections, {})

    @defer.inlineCallbacks
    def test_unknown_and_unsupported_commands_get_101_and_a_close(self):
        for cmd in (99, 1, 7, 10, 11, 12, 16, None):
            client = yield self.ws()
            yield client.handshake(f"ws-cmd-{cmd}")
            packet = {"flags": 16, "sessionId": 31}
            if cmd is not None:
                packet["cmd"] = cmd
            client.send_text(json.dumps(packet))
            yield self.assert_error_and_close(client, error_frame(cmd or -1, 101, "unsupported command", 31))

    @defer.inlineCallbacks
    def test_binary_frame_closes_with_1003(self):
        client = yield self.ws()
        client.protocol.sendMessage(b'{"cmd":2}', isBinary=True)
        yield client.wait_closed()
        self.assertEqual(client.close_code, 1003)

    @defer.inlineCallbacks
    def test_oversize_frame_closes_with_1009(self):
        client = yield self.ws()
        yield client.handshake("ws-big")
        client.send(15, {"content": "x" * 70000}, flags=24)
        yield client.wait_closed()
        self.assertEqual(client.close_code, 1009)

    @defer.inlineCallbacks
    def test_frames_after_an_error_are_not_processed(self):
        client = yield self.ws()
        client.send_text(b"{oops")
        client.send(2, {"deviceId": "late"})
        yield self.assert_error_and_close(client, error_frame(0, 100, "handle message error", 0))
        self.assertEqual(client.texts.pending, [])


class GatedHandshake(DeviceHandler):
    """
    The ws handshake, held until the test opens the gate.
    """

    command = Command.HANDSHAKE

    def __init__(self, node):
        self.real = make_ws_dispatcher(node).handler_for(Command.HANDSHAKE)
        self.gate = defer.Deferred()

    def handle(self, connection, packet, message):
        return self.gate.addCallback(lambda _: self.real.handle(connection, packet, message))


class OrderTests(TestCase):
    timeout = 60

    def make_node(self, config=None):
        self.server = WsLoopbackNode(self, config=config)
        gated = GatedHandshake(self.server.node)
        dispatcher = make_ws_dispatcher(self.server.node)
        handlers = [gated] + [dispatcher.handler_for(cmd) for cmd in (5, 6, 15, 23)]
        # A second listener of the same node with the gated handshake.
        site = make_ws_site(self.server.node, DeviceDispatcher(handlers), reactor=reactor)
        listening = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        return gated, listening.getHost().port

    @defer.inlineCallbacks
    def connect(self, port):
        client = yield WsClient.connect(port)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_frames_wait_behind_a_busy_handler(self):
        gated, port = self.make_node()
        client = yield self.connect(port)
        client.send(2, {"deviceId": "ordered", "osName": "web"}, 1)
        client.send(5, {"userId": "in-order"}, 2)
        yield wait_until(lambda: len(self.server.node.connections) == 1, what="the connection")
        [connection] = self.server.node.connections.values()
        yield wait_until(lambda: len(connection._pending) == 1, what="the BIND to queue")
        gated.gate.callback(None)
        handshake = yield client.next()
        bind = yield client.next()
        self.assertEqual((handshake["cmd"], handshake["sessionId"]), (2, 1))
        self.assertEqual(
            (bind["cmd"], bind["body"], bind["sessionId"]), (11, {"cmd": 5, "data": "bind success"}, 2)
        )

    @defer.inlineCallbacks
    def test_too_many_waiting_frames_abort(self):
        config = load_config(None).replace(limits=LimitsConfig(max_pending_packets=3))
        gated, port = self.make_node(config)
        client = yield self.connect(port)
        for session_id in range(1, 6):
            client.send(2, {"deviceId": "flood"}, session_id)
        yield client.wait_closed()
        self.assertEqual(client.close_code, 1006)
        metrics, _ = self.server.node.metrics.render()
        self.assertIn(b'mpush_refused_total{reason="pending_packets"} 1.0', metrics)

    @defer.inlineCallbacks
    def test_too_many_waiting_bytes_abort(self):
        config = load_config(None).replace(limits=LimitsConfig(max_read_size=1000))
        gated, port = self.make_node(config)
        client = yield self.connect(port)
        # The first is taken by the held handler; the two behind it are too many bytes.
        for session_id, letter in enumerate("abc", 1):
            client.send(2, {"deviceId": letter * 600}, session_id)
        yield client.wait_closed()
        metrics, _ = self.server.node.metrics.render()
        self.assertIn(b'mpush_refused_total{reason="read_size"} 1.0', metrics)


class PreHandshakeTimeoutTests(WsNodeTestCase):
    config = load_config(None).replace(limits=LimitsConfig(pre_handshake_timeout=300))

    @defer.inlineCallbacks
    def test_no_handshake_in_time_aborts(self):
        client = yield self.ws()
        yield client.wait_closed()
        self.assertEqual(client.close_code, 1006)
        metrics, _ = self.server.node.metrics.render()
        self.assertIn(b'mpush_refused_total{reason="pre_handshake_timeout"} 1.0', metrics)
        self.assertEqual(self.server.node.connections, {})


class LimitTests(WsNodeTestCase):
    config = load_config(None).replace(
        limits=LimitsConfig(max_connections_per_ip=2),
        core=CoreConfig(min_heartbeat=2000, max_heartbeat=2000),
    )

    @defer.inlineCallbacks
    def test_answered_pings_keep_it_open(self):
        client = yield self.bound_ws("quick")
        yield wait_until(lambda: client.pings >= 2, what="two pings")
        self.assertFalse(client.closed.called)
        outcome = yield self.push("quick", b"still here")
        self.assertEqual([r["status"] for r in outcome.results], ["success"])

    @defer.inlineCallbacks
    def test_connections_per_ip_are_limited(self):
        yield self.bound_ws("one")
        yield self.bound_ws("two")
        with self.assertRaises(ConnectionError):
            yield WsClient.connect(self.server.ws_port)
        metrics, _ = self.server.node.metrics.render()
        self.assertIn(b'mpush_refused_total{reason="per_ip"} 1.0', metrics)

    @defer.inlineCallbacks
    def test_a_browser_that_stops_reading_is_dropped(self):
        client = yield self.bound_ws("deaf")
        # Pings go unanswered once the client reads nothing more.
        client.protocol.transport.pauseProducing()
        yield wait_until(lambda: not self.ws_connections(), what="the deaf browser to be dropped")
        routes = yield self.api.routes("deaf")
        self.assertFalse(routes[ClientType.WEB].online)
        client.protocol.transport.resumeProducing()
        yield client.wait_closed()


class PageTests(WsNodeTestCase):
    @defer.inlineCallbacks
    def request(self, path, method=b"GET", headers=None):
        agent = Agent(reactor)
        response = yield agent.request(
            method, f"http://127.0.0.1:{self.server.ws_port}{path}".encode(), Headers(headers or {})
        )
        body = yield readBody(response)
        return response, body

    @defer.inlineCallbacks
    def test_page_and_script(self):
        for path in ("/", "/index.html", "/?user=alice"):
            response, body = yield self.request(path)
            self.assertEqual(response.code, 200)
            self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
            self.assertIn(b'<script src="client.js"', body)
            [policy] = response.headers.getRawHeaders(b"content-security-policy")
            self.assertIn(b"default-src 'none'", policy)
        response, body = yield self.request("/client.js")
        self.assertEqual(response.code, 200)
        self.assertIn(b"javascript", response.headers.getRawHeaders(b"content-type")[0])
        self.assertIn(b"CMD.HANDSHAKE", body)

    @defer.inlineCallbacks
    def test_head(self):
        response, body = yield self.request("/", method=b"HEAD")
        self.assertEqual((response.code, body), (200, b""))

    @defer.inlineCallbacks
    def test_other_paths_and_methods(self):
        response, _ = yield self.request("/nope")
        self.assertEqual(response.code, 404)
        response, _ = yield self.request("/", method=b"POST")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
        response, _ = yield self.request(
            "/elsewhere",
            headers={
                b"Upgrade": [b"websocket"],
                b"Connection": [b"Upgrade"],
                b"Sec-WebSocket-Version": [b"13"],
                b"Sec-WebSocket-Key": [b"dGhlIHNhbXBsZSBub25jZQ=="],
            },
        )
        self.assertEqual(response.code, 404)

    @defer.inlineCallbacks
    def test_websocket_only_at_root(self):
        with self.assertRaises(ConnectionError):
            yield WsClient.connect(self.server.ws_port, "/index.html")
        self.assertEqual(self.server.node.connections, {})


class OriginTests(WsNodeTestCase):
    """
    Any page a visitor opens could otherwise reach an intranet-only port
    through the visitor's browser.
    """

    @defer.inlineCallbacks
    def upgrade(self, origin):
        agent = Agent(reactor)
        headers = {
            b"Upgrade": [b"websocket"],
            b"Connection": [b"Upgrade"],
            b"Sec-WebSocket-Version": [b"13"],
            b"Sec-WebSocket-Key": [b"dGhlIHNhbXBsZSBub25jZQ=="],
            b"Origin": [origin.encode()],
        }
        response = yield agent.request(
            b"GET", f"http://127.0.0.1:{self.server.ws_port}/".encode(), Headers(headers)
        )
        body = yield readBody(response)
        return response.code, body

    @defer.inlineCallbacks
    def test_another_origin_is_403(self):
        for origin in ("http://evil.test", f"http://127.0.0.1:{self.server.ws_port + 1}", "null"):
            code, body = yield self.upgrade(origin)
            self.assertEqual(code, 403, origin)
            self.assertIn(b"origin not allowed", body)
        with self.assertRaises(ConnectionError):
            yield WsClient.connect(self.server.ws_port, origin="https://evil.test")
        self.assertEqual(self.ws_connections(), [])
        metrics, _ = self.server.node.metrics.render()
        self.assertIn(b'mpush_refused_total{reason="ws_origin"} 4.0', metrics)

    @defer.inlineCallbacks
    def test_own_page_and_clients_without_origin_pass(self):
        own = yield WsClient.connect(self.server.ws_port, origin=f"http://127.0.0.1:{self.server.ws_port}")
        self.addCleanup(own.close)
        native = yield self.ws()
        self.assertEqual(len(self.ws_connections()), 2)
        yield native.handshake("ws-native")


class OriginAllowListTests(WsNodeTestCase):
    config = load_config(None).replace(net=NetConfig(ws_allowed_origins=("https://app.example.com",)))

    @defer.inlineCallbacks
    def test_only_the_listed_origins(self):
        client = yield WsClient.connect(self.server.ws_port, origin="https://APP.example.com:443")
        self.addCleanup(client.close)
        for origin in (f"http://127.0.0.1:{self.server.ws_port}", "http://app.example.com"):
            with self.assertRaises(ConnectionError):
                yield WsClient.connect(self.server.ws_port, origin=origin)


class WriteTests(WsNodeTestCase):
    @defer.inlineCallbacks
    def test_binary_packets_without_body_are_written_as_json(self):
        client = yield self.ws()
        yield client.handshake("ws-raw")
        [connection] = self.ws_connections()
        yield connection.write_packet(Packet(Command.ACK, session_id=77))
        text = yield client.next_text()
        self.assertEqual(text, b'{"bodyLength":0,"cmd":23,"flags":16,"sessionId":77}')
        self.assertRaises(NotJsonEncodable, connection.write_packet, Packet(Command.PUSH, 1, 0, b"x"))

    @defer.inlineCallbacks
    def test_writes_after_close_fail(self):
        client = yield self.ws()
        yield client.handshake("ws-closing")
        [connection] = self.ws_connections()
        connection.close()
        self.assertFalse(connection.is_open)
        written = connection.send(Command.PUSH, PushMessage(b"late"), 1)
        self.failureResultOf(written, ConnectionClosed)
        yield client.wait_closed()
        self.assertEqual(client.close_code, 1000)


def self_signed_options():
    """
    Server TLS options from a throwaway self-signed certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ssl.PrivateCertificate.loadPEM(pem).options()


class TlsTests(TestCase):
    """
    The same site behind TLS (wss://): the connection still owns the send
    buffer, through the TLS layer.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_wss(self):
        server = LoopbackNode(self)
        site = make_ws_site(server.node, reactor=reactor)
        listening = reactor.listenSSL(0, site, self_signed_options(), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        # Loopback to a throwaway certificate: nothing to verify.
        client = yield WsClient.connect(listening.getHost().port, tls=ssl.ClientContextFactory())
        self.addCleanup(client.close)
        yield client.handshake("ws-tls")
        yield client.bind("tess")
        [connection] = server.node.connections.values()
        connection.pauseProducing()
        outcome = yield server.api.push(PushRequest(users=("tess",), content=b"not now"))
        self.assertEqual([r["status"] for r in outcome.results], ["failure"])
        connection.resumeProducing()
        outcome = yield server.api.push(PushRequest(users=("tess",), content=b"secret"))
        self.assertEqual([r["status"] for r in outcome.results], ["success"])
        frame = yield client.next()
        self.assertEqual(frame["body"], {"content": "secret"})

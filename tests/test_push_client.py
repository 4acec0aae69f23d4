"""
Tests for mpush.push: gateway connections and the pool over StringTransport on
a fake clock; the push client over loopback against fake gateway servers
built from the protocol core (they decode GATEWAY_PUSH and answer what each
test scripts), with routes and nodes in a real redis-server.
"""

from __future__ import annotations

import json
import socket

from twisted.internet import defer, error, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from mpush.protocol.body import make_raw_packet
from mpush.protocol.errors import ErrorCode
from mpush.protocol.messages import ErrorMessage, GatewayPushMessage, OkMessage
from mpush.protocol.packet import Command, Flags, Packet, PacketDecoder, encode_packet
from mpush.protocol.routing import NodeInfo, encode_push_result
from mpush.push import (
    REPORT_TIMEOUTS,
    AckModel,
    BadGatewayReply,
    BroadcastResult,
    GatewayClosed,
    GatewayConnectFailed,
    GatewayConnection,
    GatewayConnectionLost,
    GatewayPool,
    GatewayReply,
    GatewayTimeout,
    InvalidPush,
    PushBackendUnavailable,
    PushClient,
    PushClientClosed,
    PushResult,
    PushStatus,
    PushTooLarge,
    wire_timeout,
)
from mpush.push.gateway_client import CorrelationIds
from mpush.push.results import client_type_name, node_name, status_for_error

MESSAGE = GatewayPushMessage("u1", 1, 2500, b"hello")
# Server-side time points a node reports (spec 12.6).
SERVER_POINTS = [("push-center-begin", 1_700_000_000_000), ("before-send", 1_700_000_000_003),
                 ("success-end", 1_700_000_000_050)]


def free_port() -> int:
    """A loopback port nothing listens on (for "node unreachable")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ok_frame(session_id: int, data: str | None = None, cmd: int = Command.GATEWAY_PUSH) -> bytes:
    return encode_packet(make_raw_packet(Command.OK, OkMessage(cmd, 0, data), session_id))


def error_frame(session_id: int, code: int, reason: str | None = None, data: str | None = None,
                cmd: int = Command.GATEWAY_PUSH) -> bytes:
    if reason is None:
        reason = ErrorCode.of(code).reason
    return encode_packet(make_raw_packet(Command.ERROR, ErrorMessage(cmd, code, reason, data), session_id))


def sent_packets(transport: StringTransport) -> list[Packet]:
    data = transport.value()
    transport.clear()
    return PacketDecoder(None).feed(data)


# ---------------------------------------------------------------- connection


class ConnectionTests(unittest.SynchronousTestCase):
    """GatewayConnection alone: StringTransport, task.Clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.lost = []
        self.conn = GatewayConnection(self.clock, on_lost=self.lost.append)
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)

    def test_request_frame(self):
        """
        A raw GATEWAY_PUSH: cmd 16, the correlation id as packet session id,
        the caller's flags, the plaintext body.
        """
        self.conn.request(MESSAGE, REPORT_TIMEOUTS | AckModel.BIZ_ACK, 3.0)
        [packet] = sent_packets(self.transport)
        self.assertEqual(packet.cmd, Command.GATEWAY_PUSH)
        self.assertEqual(packet.session_id, 1)
        self.assertEqual(packet.flags, 0x44)
        self.assertFalse(packet.has_flag(Flags.CRYPTO | Flags.COMPRESS))
        self.assertEqual(GatewayPushMessage.decode(packet.body), MESSAGE)

    def test_correlation(self):
        """Replies in any order reach the request with their session id."""
        first = self.conn.request(MESSAGE, 0, 3.0)
        second = self.conn.request(GatewayPushMessage("u2", 1, 2500, b"x"), 0, 3.0)
        ids = [p.session_id for p in sent_packets(self.transport)]
        self.assertEqual(ids, [1, 2])
        self.conn.dataReceived(error_frame(2, ErrorCode.OFFLINE) + ok_frame(1, "one"))
        self.assertEqual(self.successResultOf(first), GatewayReply(True, 16, 0, None, "one"))
        self.assertEqual(self.successResultOf(second),
                         GatewayReply(False, 16, ErrorCode.OFFLINE, "user offline", None))
        self.assertEqual(self.conn.pending_count, 0)

    def test_reply_in_pieces(self):
        d = self.conn.request(MESSAGE, 0, 3.0)
        frame = ok_frame(1)
        for i in range(len(frame)):
            self.assertNoResult(d)
            self.conn.dataReceived(frame[i:i + 1])
        self.assertTrue(self.successResultOf(d).ok)

    def test_timeout_then_late_reply(self):
        """
        No reply in time: GatewayTimeout, the pending entry is gone, and the
        late reply changes nothing (the next request still works).
        """
        d = self.conn.request(MESSAGE, 0, 3.0)
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, GatewayTimeout)
        self.assertEqual(self.conn.pending_count, 0)
        self.conn.dataReceived(ok_frame(1))
        self.assertTrue(self.conn.open)
        d2 = self.conn.request(MESSAGE, 0, 3.0)
        [packet] = sent_packets(self.transport)[-1:]
        self.conn.dataReceived(ok_frame(packet.session_id))
        self.assertTrue(self.successResultOf(d2).ok)

    def test_reply_cancels_timer(self):
        d = self.conn.request(MESSAGE, 0, 3.0)
        self.conn.dataReceived(ok_frame(1))
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unknown_reply_dropped(self):
        d = self.conn.request(MESSAGE, 0, 3.0)
        self.conn.dataReceived(ok_frame(77))
        self.assertNoResult(d)
        self.assertTrue(self.conn.open)

    def test_connection_lost_fails_pending(self):
        first = self.conn.request(MESSAGE, 0, 3.0)
        second = self.conn.request(MESSAGE, 0, 3.0)
        self.conn.connectionLost(Failure(error.ConnectionDone("bye")))
        for d in (first, second):
            f = self.failureResultOf(d, GatewayConnectionLost)
            self.assertIn("bye", str(f.value))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.lost, [self.conn])
        self.failureResultOf(self.conn.request(MESSAGE, 0, 3.0), GatewayConnectionLost)

    def test_close(self):
        """close(): pending requests fail with GatewayClosed; fires once closed."""
        d = self.conn.request(MESSAGE, 0, 3.0)
        closed = self.conn.close()
        self.assertTrue(self.transport.disconnecting)
        self.failureResultOf(self.conn.request(MESSAGE, 0, 3.0), GatewayClosed)
        self.assertNoResult(closed)
        self.conn.connectionLost(Failure(error.ConnectionDone()))
        self.failureResultOf(d, GatewayClosed)
        self.assertIsNone(self.successResultOf(closed))
        self.assertIsNone(self.successResultOf(self.conn.close()))

    def test_close_aborts_when_stuck(self):
        closed = self.conn.close()
        self.clock.advance(5.0)
        self.assertTrue(self.transport.disconnected)
        self.conn.connectionLost(Failure(error.ConnectionAborted()))
        self.successResultOf(closed)

    def test_error_reply_decoded(self):
        d = self.conn.request(MESSAGE, 0, 3.0)
        self.conn.dataReceived(error_frame(1, ErrorCode.UNSUPPORTED_CMD, data='{"x":1}'))
        self.assertEqual(self.successResultOf(d),
                         GatewayReply(False, 16, 101, "unsupported command", '{"x":1}'))

    def test_undecodable_reply(self):
        """A truncated OK body fails that request only, with BadGatewayReply."""
        d = self.conn.request(MESSAGE, 0, 3.0)
        other = self.conn.request(MESSAGE, 0, 3.0)
        self.conn.dataReceived(encode_packet(Packet(Command.OK, 1, 0, b"\x10\x00\x00\x09ab")))
        self.failureResultOf(d, BadGatewayReply)
        self.assertNoResult(other)
        self.assertTrue(self.conn.open)

    def test_unexpected_reply_command(self):
        d = self.conn.request(MESSAGE, 0, 3.0)
        self.conn.dataReceived(encode_packet(Packet(Command.PUSH, 1, 0, b"zzz")))
        f = self.failureResultOf(d, BadGatewayReply)
        self.assertIn("unexpected reply command 15", str(f.value))

    def test_heartbeat_ignored(self):
        d = self.conn.request(MESSAGE, 0, 3.0)
        self.conn.dataReceived(b"\xdf")
        self.assertNoResult(d)

    def test_garbage_frame(self):
        """
        A frame that cannot be read (negative length) fails every pending
        request and aborts the connection; a reply before it still counts.
        """
        first = self.conn.request(MESSAGE, 0, 3.0)
        second = self.conn.request(MESSAGE, 0, 3.0)
        self.conn.dataReceived(ok_frame(1) + b"\xff\xff\xff\xff" + b"\x00" * 9)
        self.assertTrue(self.successResultOf(first).ok)
        self.failureResultOf(second, BadGatewayReply)
        self.assertTrue(self.transport.disconnected)

    def test_reply_too_large(self):
        conn = GatewayConnection(self.clock, max_reply_size=100)
        conn.makeConnection(StringTransport())
        d = conn.request(MESSAGE, 0, 3.0)
        conn.dataReceived(b"\x00\x00\x10\x00")
        self.failureResultOf(d, BadGatewayReply)

    def test_too_large_not_sent(self):
        """A body over max-packet-size would make the node close: refused here."""
        d = self.conn.request(GatewayPushMessage("u1", 1, 2500, b"x" * 10240), 0, 3.0)
        f = self.failureResultOf(d, PushTooLarge)
        self.assertEqual(f.value.limit, 10240)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.conn.pending_count, 0)

    def test_bad_arguments(self):
        self.failureResultOf(self.conn.request(MESSAGE, 0, 0), ValueError)
        self.failureResultOf(self.conn.request(MESSAGE, 0, -1), ValueError)
        bad_tags = GatewayPushMessage(None, 0, 0, b"x", tags="ab")
        self.failureResultOf(self.conn.request(bad_tags, 0, 3.0), ValueError)
        self.failureResultOf(self.conn.request(MESSAGE, 0x1000, 3.0), ValueError)
        self.assertEqual(self.transport.value(), b"")

    def test_cancel_forgets_request(self):
        d = self.conn.request(MESSAGE, 0, 3.0)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.conn.pending_count, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.conn.dataReceived(ok_frame(1))

    def test_not_connected(self):
        conn = GatewayConnection(self.clock)
        self.failureResultOf(conn.request(MESSAGE, 0, 3.0), GatewayConnectionLost)


class CorrelationIdTests(unittest.SynchronousTestCase):

    def test_counts_from_one(self):
        ids = CorrelationIds()
        self.assertEqual([ids() for _ in range(3)], [1, 2, 3])

    def test_wraps_after_java_int(self):
        ids = CorrelationIds(2**31 - 2)
        self.assertEqual([ids() for _ in range(3)], [2**31 - 2, 2**31 - 1, 1])

    def test_bad_start(self):
        self.assertRaises(ValueError, CorrelationIds, 0)
        self.assertRaises(ValueError, CorrelationIds, 2**31)

    def test_skips_pending_id(self):
        """After a wrap, an id still pending is not reused."""
        clock = task.Clock()
        ids = iter([1, 1, 2])
        conn = GatewayConnection(clock, lambda: next(ids))
        transport = StringTransport()
        conn.makeConnection(transport)
        conn.request(MESSAGE, 0, 3.0)
        conn.request(MESSAGE, 0, 3.0)
        self.assertEqual([p.session_id for p in sent_packets(transport)], [1, 2])


# ---------------------------------------------------------------------- pool


class FakeConnector:
    """Records connect attempts; the test decides how each ends."""

    def __init__(self):
        self.attempts: list[tuple[str, int, GatewayConnection, defer.Deferred]] = []
        self.cancelled: list[int] = []

    def __call__(self, host, port, protocol):
        index = len(self.attempts)
        d = defer.Deferred(lambda _: self.cancelled.append(index))
        self.attempts.append((host, port, protocol, d))
        return d

    def connect(self, index=-1) -> StringTransport:
        _, _, protocol, d = self.attempts[index]
        transport = StringTransport()
        protocol.makeConnection(transport)
        d.callback(protocol)
        return transport

    def refuse(self, index=-1):
        self.attempts[index][3].errback(error.ConnectionRefusedError("Connection refused"))


class PoolTests(unittest.SynchronousTestCase):

    def setUp(self):
        self.clock = task.Clock()
        self.connector = FakeConnector()
        self.pool = GatewayPool(None, clock=self.clock, connect_timeout=2.0, connector=self.connector)

    def test_concurrent_requests_share_one_connect(self):
        first = self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        second = self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        self.assertEqual(len(self.connector.attempts), 1)
        transport = self.connector.connect()
        self.assertEqual([p.session_id for p in sent_packets(transport)], [1, 2])
        protocol = self.connector.attempts[0][2]
        protocol.dataReceived(ok_frame(2) + ok_frame(1))
        self.assertTrue(self.successResultOf(first).ok)
        self.assertTrue(self.successResultOf(second).ok)
        # An open connection is reused without connecting again.
        self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertEqual(self.pool.connected, [("10.0.0.5", 3001)])

    def test_one_connection_per_node_ids_per_client(self):
        """Two nodes, two connections; correlation ids come from one counter."""
        self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        self.pool.request("10.0.0.6", 3001, MESSAGE, 0, 3.0)
        self.assertEqual([(h, p) for h, p, _, _ in self.connector.attempts],
                         [("10.0.0.5", 3001), ("10.0.0.6", 3001)])
        first = self.connector.connect(0)
        second = self.connector.connect(1)
        self.assertEqual([p.session_id for p in sent_packets(first)], [1])
        self.assertEqual([p.session_id for p in sent_packets(second)], [2])

    def test_reconnect_after_loss(self):
        d = self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        self.connector.connect()
        protocol = self.connector.attempts[0][2]
        protocol.connectionLost(Failure(error.ConnectionLost("reset")))
        self.failureResultOf(d, GatewayConnectionLost)
        self.assertEqual(self.pool.connected, [])
        again = self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        self.assertEqual(len(self.connector.attempts), 2)
        transport = self.connector.connect()
        [packet] = sent_packets(transport)
        self.connector.attempts[1][2].dataReceived(ok_frame(packet.session_id))
        self.assertTrue(self.successResultOf(again).ok)

    def test_connect_refused(self):
        """Every waiter gets GatewayConnectFailed; the next request tries again."""
        first = self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        second = self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        self.connector.refuse()
        for d in (first, second):
            f = self.failureResultOf(d, GatewayConnectFailed)
            self.assertEqual((f.value.host, f.value.port), ("10.0.0.5", 3001))
            self.assertIn("refused", f.value.reason)
        self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        self.assertEqual(len(self.connector.attempts), 2)

    def test_connect_timeout(self):
        d = self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 30.0)
        self.clock.advance(2.0)
        f = self.failureResultOf(d, GatewayConnectFailed)
        self.assertIn("timed out after 2 s", f.value.reason)
        # The attempt itself was cancelled.
        self.assertEqual(self.connector.cancelled, [0])

    def test_request_timeout_counts_connect_time(self):
        pool = GatewayPool(None, clock=self.clock, connect_timeout=5.0, connector=self.connector)
        d = pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        self.clock.advance(2.0)
        self.connector.connect()
        self.clock.advance(0.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, GatewayTimeout)

    def test_connector_raises(self):
        def broken(host, port, protocol):
            raise OSError("no route")

        pool = GatewayPool(None, clock=self.clock, connector=broken)
        f = self.failureResultOf(pool.request("h", 1, MESSAGE, 0, 3.0), GatewayConnectFailed)
        self.assertIn("no route", f.value.reason)

    def test_synchronous_connector(self):
        transports = []

        def at_once(host, port, protocol):
            transports.append(StringTransport())
            protocol.makeConnection(transports[-1])
            return defer.succeed(protocol)

        pool = GatewayPool(None, clock=self.clock, connector=at_once)
        d = pool.request("h", 1, MESSAGE, 0, 3.0)
        self.assertEqual(len(sent_packets(transports[0])), 1)
        self.assertNoResult(d)

    def test_cancel_waiting_request(self):
        d = self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        transport = self.connector.connect()
        self.assertEqual(transport.value(), b"")

    def test_close(self):
        waiting = self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0)
        pending = self.pool.request("10.0.0.6", 3001, MESSAGE, 0, 3.0)
        transport = self.connector.connect(1)
        closed = self.pool.close()
        self.failureResultOf(waiting, GatewayClosed)
        self.assertEqual(self.connector.cancelled, [0])
        self.assertTrue(transport.disconnecting)
        self.connector.attempts[1][2].connectionLost(Failure(error.ConnectionDone()))
        self.failureResultOf(pending, GatewayClosed)
        self.successResultOf(closed)
        self.failureResultOf(self.pool.request("10.0.0.5", 3001, MESSAGE, 0, 3.0), GatewayClosed)

    def test_bad_options(self):
        self.assertRaises(ValueError, GatewayPool, None, clock=self.clock, connect_timeout=0)
        self.failureResultOf(self.pool.request("h", 1, MESSAGE, 0, 0), ValueError)


# ------------------------------------------------------------------- results


class ResultTests(unittest.SynchronousTestCase):

    def test_report_timeouts_bit(self):
        """Our opt-in bit is clear of MPush's flags (1, 2, 4, 8, 16)."""
        self.assertEqual(REPORT_TIMEOUTS, 0x40)
        self.assertEqual(REPORT_TIMEOUTS & (1 | 2 | 4 | 8 | 16), 0)

    def test_ack_model_values(self):
        self.assertEqual([int(m) for m in AckModel], [0, 8, 4])
        self.assertEqual(AckModel.AUTO_ACK, Flags.AUTO_ACK)
        self.assertEqual(AckModel.BIZ_ACK, Flags.BIZ_ACK)

    def test_status_for_error(self):
        self.assertIs(status_for_error(16, 1), PushStatus.OFFLINE)
        self.assertIs(status_for_error(16, 2), PushStatus.FAILURE)
        self.assertIsNone(status_for_error(16, 3))
        self.assertIs(status_for_error(16, 4), PushStatus.ACK_TIMEOUT)
        for code in (0, 100, 101, 102, -1, 77):
            self.assertIs(status_for_error(16, code), PushStatus.FAILURE)
        self.assertIs(status_for_error(5, 1), PushStatus.FAILURE)

    def test_names(self):
        self.assertEqual([client_type_name(t) for t in (1, 2, 3, -1, 0, 9)],
                         ["MOBILE", "PC", "WEB", "UNKNOWN", "ANY", "9"])
        self.assertEqual(node_name("10.0.0.5", 3001), "10.0.0.5:3001")
        self.assertEqual(node_name("::1", 3001), "[::1]:3001")

    def test_to_json_dict(self):
        result = PushResult("u1", 1, PushStatus.ACK_TIMEOUT, "h:1", 4, "ack timeout",
                            (("send", 5), ("reply", 9)), True)
        self.assertEqual(result.to_json_dict(), {
            "userId": "u1", "clientType": 1, "status": "ack_timeout", "node": "h:1", "code": 4,
            "reason": "ack timeout", "timePoints": [["send", 5], ["reply", 9]], "redirected": True,
        })
        json.dumps(result.to_json_dict())
        self.assertEqual(BroadcastResult("h:1", PushStatus.SUCCESS, 3, None).to_json_dict(),
                         {"node": "h:1", "status": "success", "count": 3, "reason": None, "code": None})

    def test_wire_timeout(self):
        self.assertEqual(wire_timeout(3.0), 2500)
        self.assertEqual(wire_timeout(0.5), 1)
        self.assertEqual(wire_timeout(0.1), 1)
        self.assertEqual(wire_timeout(1e9), 2**31 - 1)


# ---------------------------------------------------------- fake gateway


class FakeGatewayProtocol(Protocol):
    def connectionMade(self):
        self.decoder = PacketDecoder(None)
        self.factory.connections.append(self)

    def dataReceived(self, data):
        for packet in self.decoder.feed(data):
            message = GatewayPushMessage.decode(packet.body)
            self.factory.received.append((packet, message))
            answer = self.factory.script(packet, message)
            if answer:
                self.transport.write(answer)
            if self.factory.close_after:
                self.transport.loseConnection()
            self.factory.notify()


class FakeGateway(Factory):
    """
    A gateway server made of the protocol core: records every GATEWAY_PUSH
    and writes what C{script(packet, message)} returns (bytes or None).
    """

    protocol = FakeGatewayProtocol

    def __init__(self, script=None):
        self.script = script if script is not None else self.succeed
        self.received: list[tuple[Packet, GatewayPushMessage]] = []
        self.connections: list[FakeGatewayProtocol] = []
        self.close_after = False
        self._waiters: list[tuple[int, defer.Deferred]] = []
        self.port = None

    @property
    def host_port(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port.getHost().port)

    @property
    def node(self) -> str:
        return "127.0.0.1:%d" % self.port.getHost().port

    @staticmethod
    def succeed(packet, message):
        # A type-0 push (embedded mode) reached the user's MOBILE connection.
        data = encode_push_result(message.user_id, message.client_type or 1, SERVER_POINTS)
        return ok_frame(packet.session_id, data)

    def wait_for(self, count: int) -> defer.Deferred:
        """Fires once C{count} requests have arrived in all."""
        d = defer.Deferred()
        self._waiters.append((count, d))
        self.notify()
        return d

    def notify(self):
        still = []
        for count, d in self._waiters:
            if len(self.received) >= count:
                d.callback(None)
            else:
                still.append((count, d))
        self._waiters = still

    def messages(self) -> list[GatewayPushMessage]:
        return [message for _, message in self.received]

    def flags(self) -> list[int]:
        return [packet.flags & 0xFF for packet, _ in self.received]


def start_gateway(test_case, script=None) -> FakeGateway:
    gateway = FakeGateway(script)
    gateway.port = reactor.listenTCP(0, gateway, interface="127.0.0.1")

    def stop():
        for conn in gateway.connections:
            conn.transport.abortConnection()
        return gateway.port.stopListening()

    test_case.addCleanup(stop)
    return gateway


def answer_error(code, data=None, reason=None):
    def script(packet, message):
        return error_frame(packet.session_id, code, reason, data)

    return script


# ------------------------------------------------------------ push client


class EmbeddedClientTests(unittest.TestCase):
    """PushClient(gateway=...): one node, no Redis."""

    timeout = 20

    def setUp(self):
        self.gateway = start_gateway(self)

    def client(self, gateway=None, **kwargs) -> PushClient:
        client = PushClient(reactor, gateway=gateway or self.gateway.host_port, **kwargs)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_success_time_points_merged(self):
        """
        Sent with client type 0 and Java's timeout - 500; the result takes the
        type the node reports and wraps its time points in ours.
        """
        results = yield self.client().push("u1", b"hello")
        [result] = results
        self.assertEqual((result.user_id, result.client_type, result.status, result.node),
                         ("u1", 1, PushStatus.SUCCESS, self.gateway.node))
        self.assertIsNone(result.code)
        self.assertFalse(result.redirected)
        names = [name for name, _ in result.time_points]
        self.assertEqual(names, ["send", "push-center-begin", "before-send", "success-end", "reply"])
        self.assertEqual(list(result.time_points[1:4]), SERVER_POINTS)
        self.assertLessEqual(result.time_points[0][1], result.time_points[-1][1])
        [message] = self.gateway.messages()
        self.assertEqual(message, GatewayPushMessage("u1", 0, 2500, b"hello"))

    @defer.inlineCallbacks
    def test_report_timeouts_on_every_request(self):
        """The 0x40 bit rides with every ack model, and with broadcasts."""
        client = self.client()
        for ack in (AckModel.NO_ACK, AckModel.AUTO_ACK, AckModel.BIZ_ACK):
            yield client.push("u1", b"x", ack=ack)
        self.gateway.script = lambda packet, message: ok_frame(packet.session_id, '{"count":0}')
        yield client.broadcast(b"x", ack=AckModel.AUTO_ACK)
        self.assertEqual(self.gateway.flags(), [0x40, 0x48, 0x44, 0x48])

    @defer.inlineCallbacks
    def test_no_reported_type(self):
        """An OK without data: success, type 0, only our time points."""
        self.gateway.script = lambda packet, message: ok_frame(packet.session_id)
        [result] = yield self.client().push("u1", b"x")
        self.assertEqual((result.status, result.client_type), (PushStatus.SUCCESS, 0))
        self.assertEqual([n for n, _ in result.time_points], ["send", "reply"])

    @defer.inlineCallbacks
    def test_unreadable_result_json_ignored(self):
        self.gateway.script = lambda packet, message: ok_frame(packet.session_id, "{not json")
        [result] = yield self.client().push("u1", b"x")
        self.assertEqual(result.status, PushStatus.SUCCESS)

    @defer.inlineCallbacks
    def test_error_codes(self):
        data = encode_push_result("u1", 2, [("offline-end", 5)])
        cases = [
            (ErrorCode.OFFLINE, PushStatus.OFFLINE, "user offline"),
            (ErrorCode.PUSH_CLIENT_FAILURE, PushStatus.FAILURE, "push to client failure"),
            (ErrorCode.ACK_TIMEOUT, PushStatus.ACK_TIMEOUT, "ack timeout"),
        ]
        client = self.client()
        for code, status, reason in cases:
            self.gateway.script = answer_error(code, data)
            [result] = yield client.push("u1", b"x")
            self.assertEqual((result.status, result.code, result.reason, result.client_type),
                             (status, int(code), reason, 2))
            self.assertIn(("offline-end", 5), result.time_points)

    @defer.inlineCallbacks
    def test_error_101_is_failure(self):
        """ERROR 101 (then a close, as a node does) ends as FAILURE, not a hang."""
        self.gateway.script = answer_error(ErrorCode.UNSUPPORTED_CMD)
        self.gateway.close_after = True
        [result] = yield self.client().push("u1", b"x")
        self.assertEqual((result.status, result.code, result.reason),
                         (PushStatus.FAILURE, 101, "unsupported command"))

    @defer.inlineCallbacks
    def test_error_100_and_reason_only(self):
        client = self.client()
        self.gateway.script = answer_error(ErrorCode.DISPATCH_ERROR)
        [result] = yield client.push("u1", b"x")
        self.assertEqual((result.status, result.code), (PushStatus.FAILURE, 100))
        self.gateway.script = answer_error(0, reason="Param invalid")
        [result] = yield client.push("u1", b"x")
        self.assertEqual((result.status, result.code, result.reason), (PushStatus.FAILURE, 0, "Param invalid"))

    @defer.inlineCallbacks
    def test_router_change_without_routes(self):
        """Embedded mode has no routes to follow: a ROUTER_CHANGE is a failure."""
        self.gateway.script = answer_error(ErrorCode.ROUTER_CHANGE)
        [result] = yield self.client().push("u1", b"x")
        self.assertEqual((result.status, result.code, result.redirected), (PushStatus.FAILURE, 3, False))
        self.assertEqual(len(self.gateway.received), 1)

    @defer.inlineCallbacks
    def test_ok_for_another_command(self):
        self.gateway.script = lambda packet, message: ok_frame(packet.session_id, cmd=Command.BIND)
        [result] = yield self.client().push("u1", b"x")
        self.assertEqual(result.status, PushStatus.FAILURE)

    @defer.inlineCallbacks
    def test_connection_lost_is_failure(self):
        """The node closes without answering: FAILURE; the next push reconnects."""
        self.gateway.script = lambda packet, message: None
        self.gateway.close_after = True
        client = self.client()
        [result] = yield client.push("u1", b"x")
        self.assertEqual(result.status, PushStatus.FAILURE)
        self.assertIn("connection lost", result.reason)
        self.gateway.script = FakeGateway.succeed
        self.gateway.close_after = False
        [result] = yield client.push("u1", b"x")
        self.assertEqual(result.status, PushStatus.SUCCESS)
        self.assertEqual(len(self.gateway.connections), 2)

    @defer.inlineCallbacks
    def test_timeout_then_late_reply_ignored(self):
        """
        No answer: TIMEOUT on the client's clock; the node's late answer is
        dropped and the connection keeps serving.
        """
        late = []

        def hold(packet, message):
            late.append(packet.session_id)
            return None

        self.gateway.script = hold
        clock = task.Clock()
        client = self.client(clock=clock)
        pushing = client.push("u1", b"x", timeout=1.5)
        yield self.gateway.wait_for(1)
        self.assertNoResult(pushing)
        clock.advance(1.5)
        [result] = yield pushing
        self.assertEqual(result.status, PushStatus.TIMEOUT)
        self.assertEqual([n for n, _ in result.time_points], ["send", "timeout"])
        self.assertEqual(self.gateway.received[0][1].timeout, 1000)
        self.gateway.script = FakeGateway.succeed
        self.gateway.connections[0].transport.write(ok_frame(late[0]))
        [result] = yield client.push("u1", b"y")
        self.assertEqual(result.status, PushStatus.SUCCESS)
        self.assertEqual(len(self.gateway.connections), 1)

    @defer.inlineCallbacks
    def test_unreachable_gateway_failure(self):
        """No registry to say the node is gone: FAILURE with the connect error."""
        client = self.client(gateway=("127.0.0.1", free_port()))
        [result] = yield client.push("u1", b"x")
        self.assertEqual(result.status, PushStatus.FAILURE)
        self.assertIn("cannot connect", result.reason)

    @defer.inlineCallbacks
    def test_push_many(self):
        """One request per distinct user, results keyed in the given order."""
        self.gateway.script = lambda packet, message: (
            answer_error(ErrorCode.OFFLINE)(packet, message) if message.user_id == "u2"
            else FakeGateway.succeed(packet, message))
        outcome = yield self.client(concurrency=2).push_many(["u1", "u2", "u3", "u1"], b"x")
        self.assertEqual(list(outcome), ["u1", "u2", "u3"])
        self.assertEqual([r.status for [r] in outcome.values()],
                         [PushStatus.SUCCESS, PushStatus.OFFLINE, PushStatus.SUCCESS])
        self.assertEqual(sorted(m.user_id for m in self.gateway.messages()), ["u1", "u2", "u3"])

    @defer.inlineCallbacks
    def test_broadcast(self):
        """user null, type 0, timeout 0, filters as given; count read from the OK."""
        self.gateway.script = lambda packet, message: ok_frame(packet.session_id, '{"count":7}')
        results = yield self.client().broadcast(b"all", tags=["a", "b"], condition="userId=='u1'",
                                                task_id="t1")
        self.assertEqual(results, [BroadcastResult(self.gateway.node, PushStatus.SUCCESS, 7, None)])
        [message] = self.gateway.messages()
        self.assertEqual(message, GatewayPushMessage(None, 0, 0, b"all", "t1", ("a", "b"), "userId=='u1'"))

    @defer.inlineCallbacks
    def test_broadcast_outcomes(self):
        client = self.client()
        self.gateway.script = lambda packet, message: ok_frame(packet.session_id)
        [result] = yield client.broadcast(b"x")
        self.assertEqual((result.status, result.count), (PushStatus.SUCCESS, None))
        self.gateway.script = lambda packet, message: ok_frame(packet.session_id, '{"count":-3}')
        [result] = yield client.broadcast(b"x")
        self.assertEqual((result.status, result.count), (PushStatus.SUCCESS, None))
        self.gateway.script = answer_error(ErrorCode.DISPATCH_ERROR)
        [result] = yield client.broadcast(b"x")
        self.assertEqual((result.status, result.code), (PushStatus.FAILURE, 100))

    @defer.inlineCallbacks
    def test_broadcast_timeout(self):
        self.gateway.script = lambda packet, message: None
        clock = task.Clock()
        client = self.client(clock=clock)
        broadcasting = client.broadcast(b"x")
        yield self.gateway.wait_for(1)
        clock.advance(29.9)
        self.assertNoResult(broadcasting)
        clock.advance(0.1)
        [result] = yield broadcasting
        self.assertEqual(result.status, PushStatus.TIMEOUT)

    @defer.inlineCallbacks
    def test_close_ends_pending_pushes(self):
        self.gateway.script = lambda packet, message: None
        client = self.client()
        pushing = client.push("u1", b"x")
        yield self.gateway.wait_for(1)
        yield client.close()
        [result] = yield pushing
        self.assertEqual(result.status, PushStatus.FAILURE)
        yield self.assertFailure(client.push("u1", b"x"), PushClientClosed)
        yield self.assertFailure(client.broadcast(b"x"), PushClientClosed)

    def test_invalid_arguments(self):
        client = self.client()
        for call in [
            lambda: client.push(None, b"x"),
            lambda: client.push("", b"x"),
            lambda: client.push(5, b"x"),
            lambda: client.push("u1", "text"),
            lambda: client.push("u1", b"x", ack=3),
            lambda: client.push("u1", b"x", timeout=0),
            lambda: client.push("u1", b"x", timeout=-1),
            lambda: client.push("u1", b"x", timeout="3"),
            lambda: client.push("u1", b"x", timeout=float("inf")),
            lambda: client.push("u1", b"x", timeout=float("nan")),
            lambda: client.push_many("u1", b"x"),
            lambda: client.push_many(None, b"x"),
            lambda: client.push_many(["u1", ""], b"x"),
            lambda: client.broadcast(b"x", tags="a,b"),
            lambda: client.broadcast(b"x", tags=[1]),
            lambda: client.broadcast(b"x", tags=5),
            lambda: client.broadcast(b"x", condition=5),
            lambda: client.broadcast(b"x", task_id=b"t"),
        ]:
            self.assertRaises(InvalidPush, call)
        self.assertEqual(self.gateway.received, [])

    @defer.inlineCallbacks
    def test_content_too_large(self):
        """
        Refused before sending: the node would close the connection.  The
        frame body is the content plus 20 bytes for user "u1".
        """
        client = self.client()
        exc = self.assertRaises(PushTooLarge, client.push, "u1", b"x" * 10221)
        self.assertIsInstance(exc, ValueError)
        self.assertRaises(PushTooLarge, client.push_many, ["u1"], b"x" * 10221)
        self.assertRaises(PushTooLarge, client.broadcast, b"x" * 10230)
        self.assertEqual(self.gateway.received, [])
        [result] = yield client.push("u1", b"x" * 10220)
        self.assertEqual(result.status, PushStatus.SUCCESS)
        self.assertEqual(len(self.gateway.received[0][0].body), 10240)

    def test_counted_size_is_the_encoded_size(self):
        """
        A one-user push's size is counted, not encoded: the same number as
        the encoder's for short and long fields, ASCII or not.
        """
        for user_id, content in [("u1", b""), ("u1", b"x" * 100), ("\u00e9l\u00e8ve-\U0001f600", b"y" * 7),
                                 ("u" * 0x7FFE, b"z"), ("u" * 0x7FFF, b"z"), ("u1", b"x" * 0x7FFF)]:
            size = len(GatewayPushMessage(user_id, 0, 0, content).encode())
            fits = PushClient(reactor, gateway=("127.0.0.1", 1), max_packet_size=size)
            fits._check_user_push_size(user_id, content)
            tight = PushClient(reactor, gateway=("127.0.0.1", 1), max_packet_size=size - 1)
            exc = self.assertRaises(PushTooLarge, tight._check_user_push_size, user_id, content)
            self.assertIn(str(size), str(exc))
        self.assertRaises(InvalidPush, fits._check_user_push_size, "\ud800", b"x")

    def test_bad_construction(self):
        for kwargs in [
            {},
            {"gateway": ("h", 1), "redis_url": "redis://h/0"},
            {"gateway": ("h", 0)},
            {"gateway": ("", 1)},
            {"gateway": "h:1"},
            {"gateway": ("h", 1), "timeout": 0},
            {"gateway": ("h", 1), "concurrency": 0},
            {"gateway": ("h", 1), "connect_timeout": 0},
            {"router": object(), "gateway": ("h", 1)},
            {"gateway": ("h", 1), "registry": object()},
            {"redis_url": "http://h/0"},
        ]:
            self.assertRaises(ValueError, PushClient, reactor, **kwargs)


# ------------------------------------------------------------------- redis


def raw_redis(port: int, *args: str) -> object:
    """
    One command on a plain socket, as a Java node or redis-cli would send it
    (integer, bulk or status replies).
    """
    payload = b"*%d\r\n" % len(args)
    for arg in args:
        data = arg.encode("utf-8")
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        reader = s.makefile("rb")
        line = reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"-":
            raise AssertionError(f"redis error {rest!r}")
        if kind == b"$":
            length = int(rest)
            return None if length < 0 else reader.read(length + 2)[:-2]
        return int(rest) if kind == b":" else rest.decode()


def java_route(port: int, conn_id: str | None = "8f2a6c1d", os_name: str = "android",
               host: str = "127.0.0.1") -> str:
    """A ClientLocation exactly as MPush's Java node writes it (spec 11.4)."""
    text = '{"port":%d,"host":"%s","deviceId":"dev-1","osName":"%s","clientVersion":"2.0"' % (
        port, host, os_name)
    if conn_id is not None:
        text += ',"connId":"%s"' % conn_id
    return text + "}"


class RedisClientTests(unittest.TestCase):
    """PushClient(redis_url=...): MPush routes planted with raw HSET, real Redis."""

    timeout = 30

    def setUp(self):
        from tests.redis_server import start_redis_server

        self.redis = start_redis_server(self)
        self.gateway = start_gateway(self)
        self.client = PushClient(reactor, redis_url=self.redis.url, redis_timeout=2.0)
        self.addCleanup(self.client.close)

    def plant(self, user_id: str, client_type: int, value: str) -> None:
        raw_redis(self.redis.port, "HSET", f"mp:ur:{user_id}", str(client_type), value)

    def registry(self):
        from mpush.router.redis import RedisNodeRegistry
        from mpush.store.redis_connection import connect_redis

        connection = connect_redis(self.redis.url)
        registry = RedisNodeRegistry(connection, reactor)
        self.addCleanup(connection.disconnect)
        self.addCleanup(registry.close)
        return registry

    @defer.inlineCallbacks
    def register_nodes(self, *gateways):
        for index, gateway in enumerate(gateways):
            host, port = gateway
            info = NodeInfo(host, port, "127.0.0.1", 3000 + index, 1_700_000_000_000 + index)
            yield self.registry().register(info)

    @defer.inlineCallbacks
    def test_no_route_is_offline(self):
        results = yield self.client.push("nobody", b"x")
        self.assertEqual(results, [PushResult("nobody", 0, PushStatus.OFFLINE, reason="user has no route")])
        self.assertEqual(self.gateway.received, [])

    @defer.inlineCallbacks
    def test_one_result_per_route(self):
        """
        An online MOBILE route is pushed through its node with type 1; an
        offline PC route is OFFLINE without contacting any node.
        """
        port = self.gateway.host_port[1]
        self.plant("u1", 1, java_route(port))
        self.plant("u1", 2, java_route(port, conn_id=None, os_name="windows"))
        results = yield self.client.push("u1", b"hello", ack=AckModel.AUTO_ACK)
        self.assertEqual([(r.client_type, r.status, r.node) for r in results],
                         [(1, PushStatus.SUCCESS, self.gateway.node), (2, PushStatus.OFFLINE, None)])
        self.assertEqual(self.gateway.messages(), [GatewayPushMessage("u1", 1, 2500, b"hello")])
        self.assertEqual(self.gateway.flags(), [AckModel.AUTO_ACK | REPORT_TIMEOUTS])

    @defer.inlineCallbacks
    def test_only_offline_routes(self):
        self.plant("u1", 1, java_route(self.gateway.host_port[1], conn_id=None))
        [result] = yield self.client.push("u1", b"x")
        self.assertEqual((result.client_type, result.status), (1, PushStatus.OFFLINE))
        self.assertEqual(self.gateway.connections, [])

    @defer.inlineCallbacks
    def test_undecodable_route_skipped(self):
        self.plant("u1", 1, "not json")
        self.plant("u1", 3, java_route(self.gateway.host_port[1], os_name="web"))
        results = yield self.client.push("u1", b"x")
        self.assertEqual([(r.client_type, r.status) for r in results], [(3, PushStatus.SUCCESS)])

    @defer.inlineCallbacks
    def test_router_change_followed_once(self):
        """
        Node A answers ROUTER_CHANGE after the user moved to node B: the route
        is read again and the push resent once, to B, for the same type.
        """
        b = start_gateway(self)

        def moved(packet, message):
            self.plant("u1", 1, java_route(b.host_port[1], conn_id="0000beef"))
            return error_frame(packet.session_id, ErrorCode.ROUTER_CHANGE,
                               data=encode_push_result("u1", 1, [("redirect-end", 1)]))

        a = start_gateway(self, moved)
        self.plant("u1", 1, java_route(a.host_port[1]))
        [result] = yield self.client.push("u1", b"x")
        self.assertEqual((result.status, result.node, result.redirected, result.client_type),
                         (PushStatus.SUCCESS, b.node, True, 1))
        self.assertEqual([m.client_type for m in a.messages() + b.messages()], [1, 1])
        names = [name for name, _ in result.time_points]
        self.assertEqual(names[:4], ["send", "redirect-end", "reply", "redirect"])
        self.assertEqual(names[4], "send")

    @defer.inlineCallbacks
    def test_second_router_change_is_failure(self):
        """A node that redirects back again: FAILURE after one resend, no loop."""
        nodes = {}

        def bounce(to):
            def script(packet, message):
                self.plant("u1", 1, java_route(nodes[to].host_port[1]))
                return error_frame(packet.session_id, ErrorCode.ROUTER_CHANGE)

            return script

        nodes["a"] = start_gateway(self, bounce("b"))
        nodes["b"] = start_gateway(self, bounce("a"))
        self.plant("u1", 1, java_route(nodes["a"].host_port[1]))
        [result] = yield self.client.push("u1", b"x")
        self.assertEqual((result.status, result.code, result.redirected, result.node),
                         (PushStatus.FAILURE, ErrorCode.ROUTER_CHANGE, True, nodes["b"].node))
        self.assertEqual((len(nodes["a"].received), len(nodes["b"].received)), (1, 1))

    @defer.inlineCallbacks
    def test_router_change_to_offline(self):
        def went_offline(packet, message):
            self.plant("u1", 1, java_route(self.gateway.host_port[1], conn_id=None))
            return error_frame(packet.session_id, ErrorCode.ROUTER_CHANGE)

        self.gateway.script = went_offline
        self.plant("u1", 1, java_route(self.gateway.host_port[1]))
        [result] = yield self.client.push("u1", b"x")
        self.assertEqual((result.status, result.redirected), (PushStatus.OFFLINE, True))
        self.assertEqual(len(self.gateway.received), 1)

    @defer.inlineCallbacks
    def test_unreachable_unregistered_node_is_offline(self):
        """The route's node is gone and not in the registry: its routes are stale."""
        self.plant("u1", 1, java_route(free_port()))
        [result] = yield self.client.push("u1", b"x")
        self.assertEqual(result.status, PushStatus.OFFLINE)
        self.assertIn("not alive", result.reason)

    @defer.inlineCallbacks
    def test_unreachable_registered_node_is_failure(self):
        port = free_port()
        yield self.register_nodes(("127.0.0.1", port))
        self.plant("u1", 1, java_route(port))
        [result] = yield self.client.push("u1", b"x")
        self.assertEqual(result.status, PushStatus.FAILURE)
        self.assertIn("cannot connect to gateway 127.0.0.1:%d" % port, result.reason)

    @defer.inlineCallbacks
    def test_broadcast_to_every_registered_node(self):
        other = start_gateway(self)
        for index, gateway in enumerate((self.gateway, other)):
            gateway.script = (lambda n: lambda packet, message: ok_frame(packet.session_id, '{"count":%d}' % n))(index + 2)
        yield self.register_nodes(self.gateway.host_port, other.host_port)
        results = yield self.client.broadcast(b"news", tags=["vip"])
        self.assertEqual(sorted((r.node, r.status, r.count) for r in results),
                         sorted([(self.gateway.node, PushStatus.SUCCESS, 2), (other.node, PushStatus.SUCCESS, 3)]))
        for gateway in (self.gateway, other):
            self.assertEqual(gateway.messages(), [GatewayPushMessage(None, 0, 0, b"news", None, ("vip",), None)])

    @defer.inlineCallbacks
    def test_broadcast_without_nodes(self):
        results = yield self.client.broadcast(b"news")
        self.assertEqual(results, [])

    @defer.inlineCallbacks
    def test_check(self):
        result = yield self.client.check()
        self.assertIsNone(result)


class RedisDownTests(unittest.TestCase):
    """Redis unreachable: results and typed errors within the timeout, no hang."""

    timeout = 30

    def setUp(self):
        self.client = PushClient(reactor, redis_url="redis://127.0.0.1:%d/0" % free_port(),
                                 redis_timeout=0.5)
        self.addCleanup(self.client.close)

    @defer.inlineCallbacks
    def test_push_is_failure(self):
        [result] = yield self.client.push("u1", b"x")
        self.assertEqual((result.status, result.node), (PushStatus.FAILURE, None))
        self.assertIn("route lookup failed", result.reason)

    @defer.inlineCallbacks
    def test_check_and_broadcast_fail(self):
        yield self.assertFailure(self.client.check(), PushBackendUnavailable)
        yield self.assertFailure(self.client.broadcast(b"x"), PushBackendUnavailable)


class InjectedRouterTests(unittest.TestCase):
    """
    PushClient(router=..., registry=...): any IRemoteRouter/INodeRegistry,
    here the in-memory ones an embedded node keeps.
    """

    timeout = 20

    def setUp(self):
        from mpush.router.memory import MemoryNodeRegistry, MemoryRemoteRouter, MemoryRoutingState

        self.gateway = start_gateway(self)
        state = MemoryRoutingState(reactor)
        self.router = MemoryRemoteRouter(reactor, state)
        self.registry = MemoryNodeRegistry(reactor, state)
        self.addCleanup(self.registry.close)
        self.client = PushClient(reactor, router=self.router, registry=self.registry)
        self.addCleanup(self.client.close)

    @defer.inlineCallbacks
    def test_push_and_broadcast(self):
        from mpush.protocol.routing import ClientLocation

        host, port = self.gateway.host_port
        yield self.router.register("u1", 2, ClientLocation(host, port, "d", "windows", "1", "c1"))
        yield self.registry.register(NodeInfo(host, port, host, 3000, 1))
        [result] = yield self.client.push("u1", b"x")
        self.assertEqual((result.client_type, result.status), (2, PushStatus.SUCCESS))
        self.gateway.script = lambda packet, message: ok_frame(packet.session_id, '{"count":1}')
        [broadcast] = yield self.client.broadcast(b"y")
        self.assertEqual((broadcast.node, broadcast.count), (self.gateway.node, 1))

    @defer.inlineCallbacks
    def test_close_leaves_injected_router_open(self):
        """The caller owns what it injected."""
        yield self.client.close()
        routes = yield self.router.lookup("u1")
        self.assertEqual(routes, {})

    @defer.inlineCallbacks
    def test_without_registry(self):
        """No registry: an unreachable node is a FAILURE; a broadcast cannot start."""
        from mpush.protocol.routing import ClientLocation

        client = PushClient(reactor, router=self.router)
        self.addCleanup(client.close)
        yield self.router.register("u1", 1, ClientLocation("127.0.0.1", free_port(), "d", "ios", "1", "c1"))
        [result] = yield client.push("u1", b"x")
        self.assertEqual(result.status, PushStatus.FAILURE)
        yield self.assertFailure(client.broadcast(b"x"), PushBackendUnavailable)


class BrokenRouterTests(unittest.TestCase):
    """A router that answers nonsense: a FAILURE result, logged, never a failed push."""

    timeout = 20

    @defer.inlineCallbacks
    def test_bad_route_object(self):
        class Router:
            def lookup(self, user_id):
                return defer.succeed({1: "not a location"})

        client = PushClient(reactor, router=Router())
        self.addCleanup(client.close)
        [result] = yield client.push("u1", b"x")
        self.assertEqual((result.client_type, result.status), (1, PushStatus.FAILURE))
        self.assertIn("internal error", result.reason)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    @defer.inlineCallbacks
    def test_router_raises(self):
        class Router:
            def lookup(self, user_id):
                raise RuntimeError("boom")

        client = PushClient(reactor, router=Router())
        self.addCleanup(client.close)
        [result] = yield client.push("u1", b"x")
        self.assertEqual(result.status, PushStatus.FAILURE)
        self.assertIn("route lookup failed: boom", result.reason)


class RedirectTargetTests(unittest.SynchronousTestCase):
    """
    The gateways an mpush node names in its ROUTER_CHANGE result.
    """

    def test_named_route_for_the_type(self):
        from mpush.push.client import _redirect_targets

        data = '{"clientType":1,"routes":{"1":"10.0.0.5:3001","2":"10.0.0.6:3001"},"userId":"u"}'
        self.assertEqual(_redirect_targets(data, 1), [(1, ("10.0.0.5", 3001))])
        self.assertEqual(_redirect_targets(data, 3), [])
        self.assertEqual(
            _redirect_targets(data, 0), [(0, ("10.0.0.5", 3001)), (0, ("10.0.0.6", 3001))]
        )

    def test_mpush_result_without_routes(self):
        from mpush.push.client import _redirect_targets

        self.assertEqual(_redirect_targets('{"timePoints":[],"userId":"u"}', 1), [])
        self.assertEqual(_redirect_targets(None, 1), [])
        self.assertEqual(_redirect_targets("not json", 1), [])
        self.assertEqual(_redirect_targets('{"routes":{"1":"nohost"}}', 1), [])
        self.assertEqual(_redirect_targets('{"routes":{"x":"h:1"}}', 1), [])
        self.assertEqual(_redirect_targets('{"routes":["h:1"]}', 1), [])
        self.assertEqual(_redirect_targets('{"routes":{"1":"[::1]:3001"}}', 1), [(1, ("::1", 3001))])

"""
Connection limits and hostile-client defences: the node's limiter alone,
the connection server over StringTransport with a fake clock, and the
connection limits over real loopback sockets.
"""

import hashlib

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from mpush.config import LimitsConfig, load_config
from mpush.protocol.body import make_packet, make_raw_packet
from mpush.protocol.messages import BindUserMessage, GatewayPushMessage, OkMessage
from mpush.protocol.packet import HEADER_LENGTH, HEARTBEAT_BYTE, Command, Flags, Packet, encode_packet
from mpush.server.device import limits
from mpush.server.device.connection import ConnectionFactory, RefusedConnection
from mpush.server.device.context import ConnectionState
from mpush.server.gateway.gateway import GatewayFactory
from mpush.server.device.limits import (
    LimitExceeded,
    NodeLimits,
    TokenBucket,
    rsa_blocks,
    source_of,
)
from mpush.store.interfaces import ISessionStore
from mpush.tap import make_dispatcher

from tests.loopback_support import LoopbackNode
from tests.polling import wait_until
from tests.server_support import ScriptedDevice, make_node


def limits_config(**fields):
    """
    The default config with C{fields} set in C{[limits]}.
    """
    return load_config(None).replace(limits=LimitsConfig(**fields))


def refusals(node, reason):
    """
    How many refusals of C{reason} the node's Prometheus metrics counted.
    """
    value = node.metrics.registry.get_sample_value("mpush_refused_total", {"reason": reason})
    return int(value or 0)


def capture_log(limiter):
    """
    Route C{limiter}'s log lines into a list, returned.
    """
    events = []
    limiter.log = Logger(namespace="test", observer=events.append)
    return events


class CountingKey:
    """
    The node's RSA key, counting its private-key decrypts: a refused
    handshake must do none.
    """

    def __init__(self, key):
        self.key = key
        self.decrypts = 0

    @property
    def key_size_bytes(self):
        return self.key.key_size_bytes

    def decrypt(self, data):
        self.decrypts += 1
        return self.key.decrypt(data)

    def __getattr__(self, name):
        return getattr(self.key, name)


def counting_key(node):
    node.private_key = CountingKey(node.private_key)
    return node.private_key


class Client:
    """
    One server connection of a node over StringTransport, from C{host}.
    """

    def __init__(self, node, host="10.0.0.1", port=40000, factory=None):
        self.factory = factory or ConnectionFactory(node, make_dispatcher(node))
        self.address = IPv4Address("TCP", host, port)
        self.transport = StringTransport(peerAddress=self.address)
        self.protocol = self.factory.buildProtocol(self.address)
        self.protocol.makeConnection(self.transport)

    @property
    def refused(self):
        return isinstance(self.protocol, RefusedConnection)

    def lose(self):
        """
        What the reactor does once the transport is gone.
        """
        self.protocol.connectionLost(None)


class Device(ScriptedDevice):
    """
    A scripted device on its own StringTransport connection.
    """

    def __init__(self, node, device_id="dev-1", host="10.0.0.1", port=40000, factory=None):
        super().__init__(device_id=device_id)
        self.client = Client(node, host, port, factory)
        self.protocol = self.client.protocol
        self.transport = self.client.transport

    def handshake(self, **overrides):
        self.protocol.dataReceived(self.handshake_bytes(**overrides))
        return self.read(self.transport)

    def handshaken(self):
        [reply] = self.handshake()
        self.ok = self.accept_handshake_ok(reply)
        return self

    def bind(self, user_id):
        packet = make_packet(
            Command.BIND, BindUserMessage(user_id), self.packet_id(), cipher=self.cipher
        )
        self.protocol.dataReceived(encode_packet(packet))
        [reply] = self.read(self.transport)
        assert reply.cmd == Command.OK, reply
        return OkMessage.decode(reply.body)


class Gateway:
    """
    A back-end pushing through the node's gateway, over StringTransport.
    """

    def __init__(self, node):
        self.protocol = GatewayFactory(node.push_center, 1 << 20).buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.protocol.makeConnection(self.transport)
        self.next_id = 0

    def push(self, user_id, content):
        self.next_id += 1
        message = GatewayPushMessage(user_id, 1, 5000, content)
        self.protocol.dataReceived(
            encode_packet(make_raw_packet(Command.GATEWAY_PUSH, message, self.next_id))
        )


# -- the limiter alone ---------------------------------------------------------


class TokenBucketTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)

    def test_burst_then_refused(self):
        bucket = TokenBucket(2, 3, self.clock)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])

    def test_refills_at_rate_up_to_capacity(self):
        bucket = TokenBucket(2, 3, self.clock)
        for _ in range(3):
            bucket.take()
        self.clock.advance(0.5)
        self.assertEqual([bucket.take(), bucket.take()], [True, False])
        self.clock.advance(3600)
        self.assertEqual(bucket.tokens, 3)

    def test_cost_above_capacity_passes_once_then_holds_back(self):
        """
        A request costing more than the bucket holds still passes from a
        full bucket; its debt delays what follows, so the rate holds.
        """
        bucket = TokenBucket(1, 2, self.clock)
        self.assertTrue(bucket.take(5))
        self.assertEqual(bucket.tokens, -3)
        self.clock.advance(3.5)
        self.assertFalse(bucket.take())
        self.clock.advance(0.5)
        self.assertTrue(bucket.take())

    def test_clock_stepping_back_adds_nothing(self):
        bucket = TokenBucket(1, 1, self.clock)
        bucket.take()
        self.clock.rightNow -= 500
        self.assertFalse(bucket.take())
        self.clock.advance(1)
        self.assertTrue(bucket.take())

    def test_starting_tokens(self):
        self.assertEqual(TokenBucket(1, 5, self.clock, tokens=2).tokens, 2)
        self.assertEqual(TokenBucket(1, 5, self.clock, tokens=-3).tokens, -3)
        self.assertEqual(TokenBucket(1, 5, self.clock, tokens=50).tokens, 5)

    def test_bad_arguments(self):
        self.assertRaises(ValueError, TokenBucket, 0, 1, self.clock)
        self.assertRaises(ValueError, TokenBucket, 1, 0.5, self.clock)
        bucket = TokenBucket(1, 1, self.clock)
        for cost in (0, -1, 1.5, True, "1"):
            self.assertRaises(ValueError, bucket.take, cost)
        self.assertEqual(bucket.tokens, 1)


class SourceTests(SynchronousTestCase):
    def test_ipv4(self):
        self.assertEqual(source_of(IPv4Address("TCP", "10.1.2.3", 5)), "10.1.2.3")

    def test_ipv6_normalised(self):
        self.assertEqual(source_of(IPv6Address("TCP", "2001:DB8:0:0::1", 5)), "2001:db8::1")

    def test_ipv4_mapped_ipv6_is_the_ipv4(self):
        self.assertEqual(source_of(IPv6Address("TCP", "::ffff:10.1.2.3", 5)), "10.1.2.3")

    def test_no_ip(self):
        self.assertIsNone(source_of(None))
        self.assertIsNone(source_of(UNIXAddress(b"/tmp/mpush.sock")))
        self.assertIsNone(source_of(IPv4Address("TCP", "", 5)))

    def test_host_that_is_not_an_ip_kept_as_is(self):
        self.assertEqual(source_of(IPv4Address("TCP", "proxy.local", 5)), "proxy.local")

    def test_rsa_blocks(self):
        class Key:
            key_size_bytes = 128

        self.assertEqual([rsa_blocks(Key, n) for n in (0, 1, 128, 129, 1280)], [1, 1, 1, 2, 10])


class RecordingMetrics:
    def __init__(self):
        self.refusals = []

    def refused(self, reason):
        self.refusals.append(reason)


class NodeLimitsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)

    def limiter(self, **fields):
        return NodeLimits(LimitsConfig(**fields), self.clock)

    def test_handshake_rate_on_by_default(self):
        """2000 RSA blocks a second, bursting to as many (see LimitsConfig)."""
        limiter = self.limiter()
        self.assertEqual(sum(limiter.allow_rsa(80) for _ in range(100)), 25)
        self.clock.advance(0.5)
        self.assertEqual(sum(limiter.allow_rsa() for _ in range(2000)), 1000)

    def address(self, host, port=1):
        return IPv4Address("TCP", host, port)

    def test_zero_means_unlimited(self):
        limiter = self.limiter(handshake_rate=0)
        slots = [limiter.admit(self.address("10.0.0.1", n)) for n in range(5000)]
        self.assertEqual(limiter.connections, 5000)
        self.assertEqual(limiter.connections_from("10.0.0.1"), 5000)
        self.assertTrue(all(limiter.allow_rsa(80) for _ in range(5000)))
        for slot in slots:
            slot.release()
        self.assertEqual(limiter.connections, 0)

    def test_node_limit(self):
        limiter = self.limiter(max_connections=2)
        first = limiter.admit(self.address("10.0.0.1"))
        limiter.admit(self.address("10.0.0.2"))
        with self.assertRaises(LimitExceeded) as raised:
            limiter.admit(self.address("10.0.0.3"))
        self.assertEqual(raised.exception.reason, limits.MAX_CONNECTIONS)
        first.release()
        limiter.admit(self.address("10.0.0.3"))
        self.assertEqual(limiter.connections, 2)

    def test_per_ip_limit(self):
        limiter = self.limiter(max_connections_per_ip=2)
        first = limiter.admit(self.address("10.0.0.1"))
        limiter.admit(self.address("10.0.0.1"))
        with self.assertRaises(LimitExceeded) as raised:
            limiter.admit(self.address("10.0.0.1"))
        self.assertEqual(raised.exception.reason, limits.PER_IP)
        limiter.admit(self.address("10.0.0.2"))
        first.release()
        limiter.admit(self.address("10.0.0.1"))
        self.assertEqual(limiter.connections_from("10.0.0.1"), 2)

    def test_refused_admission_counts_nothing(self):
        limiter = self.limiter(max_connections_per_ip=1)
        limiter.admit(self.address("10.0.0.1"))
        for _ in range(3):
            self.assertRaises(LimitExceeded, limiter.admit, self.address("10.0.0.1"))
        self.assertEqual((limiter.connections, limiter.connections_from("10.0.0.1")), (1, 1))

    def test_release_is_idempotent_and_forgets_the_source(self):
        limiter = self.limiter(max_connections_per_ip=1)
        slot = limiter.admit(self.address("10.0.0.1"))
        slot.release()
        slot.release()
        self.assertFalse(slot.held)
        self.assertEqual(limiter.connections, 0)
        self.assertEqual(limiter._per_source, {})

    def test_sources_without_ip_count_only_towards_the_node(self):
        limiter = self.limiter(max_connections=3, max_connections_per_ip=1)
        limiter.admit(None)
        limiter.admit(UNIXAddress(b"/tmp/s"))
        limiter.admit(None)
        self.assertRaises(LimitExceeded, limiter.admit, None)

    def test_handshake_burst_defaults_to_rate(self):
        limiter = self.limiter(handshake_rate=3)
        self.assertEqual([limiter.allow_rsa() for _ in range(4)], [True, True, True, False])
        self.clock.advance(1)
        self.assertEqual([limiter.allow_rsa() for _ in range(4)], [True, True, True, False])

    def test_handshake_burst(self):
        limiter = self.limiter(handshake_rate=1, handshake_burst=5)
        self.assertEqual(sum(limiter.allow_rsa() for _ in range(10)), 5)

    def test_reconfigure(self):
        """
        A reload applies new bounds to what comes next and keeps the
        handshake tokens saved up, within the new burst.
        """
        limiter = self.limiter(max_connections=1, handshake_rate=1, handshake_burst=10)
        limiter.admit(self.address("10.0.0.1"))
        for _ in range(4):
            limiter.allow_rsa()
        limiter.reconfigure(LimitsConfig(max_connections=3, handshake_rate=2, handshake_burst=20))
        limiter.admit(self.address("10.0.0.2"))
        self.assertEqual(limiter.connections, 2)
        self.assertEqual(sum(limiter.allow_rsa() for _ in range(30)), 6)
        self.clock.advance(1)
        self.assertEqual(sum(limiter.allow_rsa() for _ in range(30)), 2)
        limiter.reconfigure(LimitsConfig(max_connections=1, handshake_rate=2, handshake_burst=1))
        self.assertRaises(LimitExceeded, limiter.admit, self.address("10.0.0.3"))
        self.assertEqual(limiter.connections, 2)
        limiter.reconfigure(LimitsConfig(handshake_rate=0))
        self.assertTrue(all(limiter.allow_rsa() for _ in range(100)))

    def test_every_refusal_counted_one_line_per_second_per_reason(self):
        limiter = self.limiter()
        events = capture_log(limiter)
        metrics = RecordingMetrics()
        for n in range(5):
            limiter.refused(metrics, limits.PER_IP, f"10.0.0.1:{n}", "full")
        limiter.refused(metrics, limits.MAX_CONNECTIONS, "10.0.0.2:1", "node full")
        self.assertEqual(metrics.refusals, [limits.PER_IP] * 5 + [limits.MAX_CONNECTIONS])
        self.assertEqual(
            [(e["reason"], e["peer"], e.get("unlogged")) for e in events],
            [(limits.PER_IP, "10.0.0.1:0", None), (limits.MAX_CONNECTIONS, "10.0.0.2:1", None)],
        )
        self.clock.advance(0.999)
        limiter.refused(metrics, limits.PER_IP, "10.0.0.1:5", "full")
        self.assertEqual(len(events), 2)
        self.clock.advance(0.001)
        limiter.refused(metrics, limits.PER_IP, "10.0.0.1:6", "full")
        self.assertEqual(len(events), 3)
        self.assertEqual((events[-1]["peer"], events[-1]["unlogged"]), ("10.0.0.1:6", 5))
        self.assertEqual(len(metrics.refusals), 8)

    def test_clock_stepping_back_does_not_silence_the_log(self):
        limiter = self.limiter()
        events = capture_log(limiter)
        metrics = RecordingMetrics()
        limiter.refused(metrics, limits.PER_IP, "a", "full")
        self.clock.rightNow -= 3600
        limiter.refused(metrics, limits.PER_IP, "b", "full")
        self.assertEqual([e["peer"] for e in events], ["a", "b"])


# -- the connection server over StringTransport ----------------------------------


class ConnectionLimitTests(SynchronousTestCase):
    def test_node_limit_refuses_and_counts(self):
        node = make_node(limits_config(max_connections=2))
        events = capture_log(node.limits)
        first, second = Client(node, "10.0.0.1"), Client(node, "10.0.0.2")
        third = Client(node, "10.0.0.3")
        self.assertFalse(first.refused or second.refused)
        self.assertTrue(third.refused)
        self.assertTrue(third.transport.disconnected)
        self.assertEqual(third.transport.value(), b"")
        self.assertEqual(refusals(node, limits.MAX_CONNECTIONS), 1)
        self.assertEqual(len(node.connections), 2)
        self.assertEqual([e["reason"] for e in events], [limits.MAX_CONNECTIONS])
        # The admitted ones are untouched and still answer.
        first.protocol.dataReceived(HEARTBEAT_BYTE)
        self.assertEqual(first.transport.value(), HEARTBEAT_BYTE)
        self.assertFalse(first.transport.disconnecting)

    def test_closed_connection_frees_its_slot(self):
        node = make_node(limits_config(max_connections=1))
        first = Client(node)
        self.assertTrue(Client(node).refused)
        first.lose()
        self.assertFalse(Client(node).refused)
        self.assertEqual(refusals(node, limits.MAX_CONNECTIONS), 1)

    def test_per_ip_limit_refuses_counts_and_frees_on_close(self):
        node = make_node(limits_config(max_connections_per_ip=2))
        a1, a2 = Client(node, "10.0.0.1", 1), Client(node, "10.0.0.1", 2)
        a3 = Client(node, "10.0.0.1", 3)
        b1 = Client(node, "10.0.0.2", 1)
        self.assertEqual([c.refused for c in (a1, a2, a3, b1)], [False, False, True, False])
        self.assertEqual(refusals(node, limits.PER_IP), 1)
        a1.lose()
        self.assertEqual(node.limits.connections_from("10.0.0.1"), 1)
        a4 = Client(node, "10.0.0.1", 4)
        self.assertFalse(a4.refused)
        self.assertTrue(Client(node, "10.0.0.1", 5).refused)
        self.assertEqual(refusals(node, limits.PER_IP), 2)

    def test_losing_a_connection_twice_frees_one_slot(self):
        node = make_node(limits_config(max_connections_per_ip=2))
        first = Client(node)
        Client(node)
        first.lose()
        first.lose()
        self.assertEqual(node.limits.connections_from("10.0.0.1"), 1)

    def test_refusal_log_is_rate_limited(self):
        node = make_node(limits_config(max_connections_per_ip=1))
        events = capture_log(node.limits)
        Client(node)
        for port in range(100):
            Client(node, port=port)
        self.assertEqual(refusals(node, limits.PER_IP), 100)
        self.assertEqual(len(events), 1)
        node.clock.advance(1)
        Client(node, port=100)
        self.assertEqual(len(events), 2)
        self.assertEqual(events[-1]["unlogged"], 99)

    def test_refused_connection_under_a_wrapping_factory(self):
        """
        Refused with a protocol, not None: a wrapping factory (TLS is one)
        would otherwise hand None to its wrapper.
        """
        node = make_node(limits_config(max_connections=1))
        wrapping = WrappingFactory(ConnectionFactory(node, make_dispatcher(node)))
        address = IPv4Address("TCP", "10.0.0.1", 1)
        for port in (1, 2):
            transport = StringTransport(peerAddress=address)
            wrapper = wrapping.buildProtocol(address)
            wrapper.makeConnection(transport)
        self.assertIsInstance(wrapper.wrappedProtocol, RefusedConnection)
        self.assertTrue(transport.disconnected)
        self.assertEqual(refusals(node, limits.MAX_CONNECTIONS), 1)


class PreHandshakeTimeoutTests(SynchronousTestCase):
    def test_not_handshaken_in_time_is_aborted_and_counted(self):
        node = make_node(limits_config(pre_handshake_timeout=5000))
        client = Client(node)
        # Heartbeats keep the idle check quiet but are no handshake.
        for _ in range(4):
            node.clock.advance(1)
            client.protocol.dataReceived(HEARTBEAT_BYTE)
        self.assertFalse(client.transport.disconnecting)
        node.clock.advance(1)
        self.assertTrue(client.transport.disconnected)
        self.assertEqual(refusals(node, limits.PRE_HANDSHAKE_TIMEOUT), 1)

    def test_handshaken_connection_kept(self):
        node = make_node(limits_config(pre_handshake_timeout=5000))
        device = Device(node).handshaken()
        # The deadline is gone with the handshake, not left to fire.
        due = [c.func for c in node.clock.getDelayedCalls()]
        self.assertNotIn(device.protocol._handshake_overdue, due)
        node.clock.advance(5)
        self.assertFalse(device.transport.disconnecting)
        self.assertIs(device.protocol.state, ConnectionState.HANDSHAKEN)
        self.assertEqual(refusals(node, limits.PRE_HANDSHAKE_TIMEOUT), 0)

    def test_fast_connected_connection_kept(self):
        node = make_node(limits_config(pre_handshake_timeout=5000))
        first = Device(node).handshaken()
        second = Device(node, port=40001)
        second.protocol.dataReceived(first.fast_connect_bytes(first.ok.session_id))
        [reply] = second.read(second.transport)
        self.assertEqual(reply.cmd, Command.FAST_CONNECT)
        node.clock.advance(5)
        self.assertFalse(second.transport.disconnecting)
        self.assertIs(second.protocol.state, ConnectionState.HANDSHAKEN)
        self.assertEqual(refusals(node, limits.PRE_HANDSHAKE_TIMEOUT), 0)

    def test_zero_turns_it_off_and_the_idle_check_is_unchanged(self):
        """
        Without the timeout, MPush's idle rule alone closes a silent
        connection, at the 40 s check (spec 10.1).
        """
        node = make_node(limits_config(pre_handshake_timeout=0))
        client = Client(node)
        node.clock.pump([10, 10, 10])
        self.assertFalse(client.transport.disconnecting)
        node.clock.advance(10)
        self.assertTrue(client.transport.disconnected)
        self.assertEqual(refusals(node, limits.PRE_HANDSHAKE_TIMEOUT), 0)

    def test_closed_connection_cancels_every_timer(self):
        node = make_node(limits_config(pre_handshake_timeout=5000))
        client = Client(node)
        client.protocol.pauseProducing()

        protocol = client.protocol
        # The idle check, the handshake deadline and the slow-reader grace,
        # all on the node's one timer, armed for the earliest.
        self.assertEqual(
            (protocol._idle_due, protocol._handshake_due, protocol._stalled_due),
            (node.clock.seconds() + 10, node.clock.seconds() + 5, node.clock.seconds() + 20),
        )
        [timer] = node.clock.getDelayedCalls()
        self.assertEqual(timer.getTime(), node.clock.seconds() + 5)
        client.lose()
        self.assertEqual(node.clock.getDelayedCalls(), [])
        self.assertEqual(len(node.deadlines), 0)


class HandshakeRateTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node(limits_config(handshake_rate=1, handshake_burst=3))
        self.key = counting_key(self.node)

    def test_over_the_rate_closed_without_error_and_without_rsa(self):
        devices = [Device(self.node, f"dev-{n}", port=n) for n in range(5)]
        replies = [device.handshake() for device in devices]
        self.assertEqual([len(r) for r in replies], [1, 1, 1, 0, 0])
        self.assertEqual([r[0].cmd for r in replies[:3]], [Command.HANDSHAKE] * 3)
        self.assertEqual(self.key.decrypts, 3)
        for refused in devices[3:]:
            # A plain close (after flushing), no ERROR: the client retries later.
            self.assertEqual(refused.transport.value(), b"")
            self.assertTrue(refused.transport.disconnecting)
            self.assertFalse(refused.transport.disconnected)
        self.assertEqual(refusals(self.node, limits.HANDSHAKE_RATE), 2)
        self.node.clock.advance(1)
        self.assertEqual(len(Device(self.node, "late").handshake()), 1)
        self.assertEqual(self.key.decrypts, 4)

    def test_pipelined_handshakes_on_one_connection(self):
        device = Device(self.node)
        burst = b"".join(device.handshake_bytes(device_id=f"d{n}") for n in range(10))
        device.protocol.dataReceived(burst)
        self.assertEqual(self.key.decrypts, 3)
        self.assertTrue(device.transport.disconnecting)
        self.assertEqual(refusals(self.node, limits.HANDSHAKE_RATE), 1)

    def test_handshake_costs_one_token_per_rsa_block(self):
        node = make_node(limits_config(handshake_rate=1, handshake_burst=4))
        key = counting_key(node)
        device = Device(node)
        # Incompressible and under the compression threshold: many RSA blocks.
        long_id = "".join(hashlib.sha256(bytes([n])).hexdigest() for n in range(15))
        data = device.handshake_bytes(device_id=long_id)
        blocks = rsa_blocks(key, len(data) - HEADER_LENGTH)
        self.assertGreater(blocks, 4)
        device.protocol.dataReceived(data)
        self.assertEqual(device.read(device.transport)[0].cmd, Command.HANDSHAKE)
        # The bucket is now blocks - 4 in debt: that many seconds pass
        # before the next handshake, plus one to earn its token.
        node.clock.advance(blocks - 4)
        self.assertEqual(Device(node, "b").handshake(), [])
        node.clock.advance(1)
        self.assertEqual(len(Device(node, "c").handshake()), 1)

    def test_fast_connect_not_limited(self):
        device = Device(self.node).handshaken()
        for n in range(2):
            Device(self.node, f"other-{n}").handshake()
        # The bucket is empty: another handshake is refused...
        self.assertEqual(Device(self.node, "refused").handshake(), [])
        # ...but fast connects (no RSA) are answered.
        for port in range(5):
            again = Device(self.node, port=port)
            again.protocol.dataReceived(device.fast_connect_bytes(device.ok.session_id))
            [reply] = again.read(again.transport)
            self.assertEqual(reply.cmd, Command.FAST_CONNECT)
            self.assertIs(again.protocol.state, ConnectionState.HANDSHAKEN)
        self.assertEqual(self.key.decrypts, 3)

    def test_encrypted_packet_before_handshake_is_metered_rsa(self):
        """
        Before any handshake a CRYPTO-flagged packet is decrypted with the
        RSA key (spec 7.4): that draws on the same bucket.
        """
        body = bytes(self.key.key_size_bytes)
        packet = encode_packet(Packet(Command.FAST_CONNECT, 1, Flags.CRYPTO, body))
        first = Device(self.node)
        first.protocol.dataReceived(packet)
        self.assertEqual(self.key.decrypts, 1)
        for n in range(2):
            Device(self.node, f"d{n}").handshake()
        self.assertEqual(self.key.decrypts, 3)
        late = Device(self.node, "late")
        late.protocol.dataReceived(packet)
        self.assertEqual(self.key.decrypts, 3)
        self.assertEqual(late.transport.value(), b"")
        self.assertTrue(late.transport.disconnecting)
        self.assertEqual(refusals(self.node, limits.HANDSHAKE_RATE), 1)

    def test_flood_does_not_hold_up_a_bound_client(self):
        """
        While a flood of handshakes is refused, a bound client's pings are
        answered and its pushes delivered in the same reactor turn, and the
        flood costs no RSA beyond the burst.
        """
        bound = Device(self.node, "bound", host="10.9.9.9").handshaken()
        bound.bind("alice")
        gateway = Gateway(self.node)
        spent = self.key.decrypts
        flood = ScriptedDevice("flood").handshake_bytes()
        for n in range(300):
            Client(self.node, f"10.1.{n // 250}.{n % 250}", n).protocol.dataReceived(flood)
            if n % 50 == 0:
                bound.protocol.dataReceived(HEARTBEAT_BYTE)
                self.assertEqual(bound.transport.value(), HEARTBEAT_BYTE)
                bound.transport.clear()
                gateway.push("alice", f"push {n}".encode())
                [push] = bound.read(bound.transport)
                self.assertEqual(push.cmd, Command.PUSH)
        self.assertEqual(self.key.decrypts - spent, 2)
        self.assertEqual(refusals(self.node, limits.HANDSHAKE_RATE), 298)


@implementer(ISessionStore)
class HeldStore:
    """
    A session store that never answers a load: a fast connect then holds
    its connection's handler busy, and later packets queue.
    """

    def __init__(self):
        self.loads = []

    def save(self, session_id, session, ttl):
        return defer.succeed(None)

    def load(self, session_id):
        self.loads.append(session_id)
        return defer.Deferred()

    def close(self):
        return defer.succeed(None)


class BacklogTests(SynchronousTestCase):
    """
    What a connection may hold unhandled while its handler waits.
    """

    def busy(self, **fields):
        store = HeldStore()
        node = make_node(limits_config(**fields), store=store)
        device = Device(node)
        # A fast connect waits on the store: later packets queue.
        device.protocol.dataReceived(device.fast_connect_bytes("s1"))
        self.assertEqual(len(store.loads), 1)
        return node, device

    def test_pending_packets_from_config(self):
        node, device = self.busy(max_pending_packets=10)
        device.protocol.dataReceived(HEARTBEAT_BYTE * 10)
        self.assertFalse(device.transport.disconnecting)
        device.protocol.dataReceived(HEARTBEAT_BYTE)
        self.assertTrue(device.transport.disconnected)
        self.assertEqual(refusals(node, limits.PENDING_PACKETS), 1)

    def test_pending_bytes_bounded_by_max_read_size(self):
        node, device = self.busy(max_read_size=1000)
        frame = encode_packet(Packet(Command.BIND, 1, 0, bytes(87)))
        self.assertEqual(len(frame), 100)
        device.protocol.dataReceived(frame * 10)
        self.assertEqual(device.protocol.pending_bytes, 1000)
        self.assertFalse(device.transport.disconnecting)
        device.protocol.dataReceived(HEARTBEAT_BYTE)
        self.assertTrue(device.transport.disconnected)
        self.assertEqual(refusals(node, limits.READ_SIZE), 1)
        self.assertEqual(refusals(node, limits.PENDING_PACKETS), 0)

    def test_incomplete_frame_counts_towards_max_read_size(self):
        node, device = self.busy(max_read_size=1000)
        device.protocol.dataReceived(HEARTBEAT_BYTE * 5)
        header = encode_packet(Packet(Command.BIND, 1, 0, bytes(5000)))[:HEADER_LENGTH]
        device.protocol.dataReceived(header + bytes(982))
        self.assertEqual(device.protocol.pending_bytes, 1000)
        self.assertFalse(device.transport.disconnecting)
        device.protocol.dataReceived(b"\x00")
        self.assertTrue(device.transport.disconnected)
        self.assertEqual(refusals(node, limits.READ_SIZE), 1)

    def test_handled_packets_leave_the_count(self):
        node = make_node(limits_config(max_read_size=100, max_pending_packets=1))
        client = Client(node)
        for _ in range(50):
            client.protocol.dataReceived(HEARTBEAT_BYTE * 1000)
        self.assertEqual(client.protocol.pending_bytes, 0)
        self.assertFalse(client.transport.disconnecting)


class SlowReaderTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.device = Device(self.node).handshaken()
        self.heartbeat = self.device.protocol.context.heartbeat / 1000.0

    def test_stops_reading_while_not_writable_and_resumes(self):
        protocol, transport = self.device.protocol, self.device.transport
        protocol.pauseProducing()
        self.assertFalse(protocol.writable)
        self.assertEqual(transport.producerState, "paused")
        protocol.resumeProducing()
        self.assertTrue(protocol.writable)
        self.assertEqual(transport.producerState, "producing")
        self.node.clock.advance(10 * self.heartbeat)
        self.assertEqual(refusals(self.node, limits.SLOW_READER), 0)

    def test_not_writable_for_two_heartbeats_is_aborted(self):
        protocol, transport = self.device.protocol, self.device.transport
        # Pings keep the idle check content: only the reader is dead.
        protocol.pauseProducing()
        for _ in range(3):
            self.node.clock.advance(self.heartbeat * limits.SLOW_READER_HEARTBEATS / 4)
            protocol.dataReceived(HEARTBEAT_BYTE)
        self.assertFalse(transport.disconnecting)
        self.node.clock.advance(self.heartbeat * limits.SLOW_READER_HEARTBEATS / 4)
        self.assertTrue(transport.disconnected)
        self.assertEqual(refusals(self.node, limits.SLOW_READER), 1)

    def test_pause_after_resume_starts_a_fresh_grace(self):
        protocol, transport = self.device.protocol, self.device.transport
        grace = self.heartbeat * limits.SLOW_READER_HEARTBEATS
        protocol.pauseProducing()
        self.node.clock.advance(grace - 1)
        protocol.resumeProducing()
        protocol.pauseProducing()
        self.node.clock.advance(grace - 1)
        self.assertFalse(transport.disconnecting)
        self.node.clock.advance(1)
        self.assertTrue(transport.disconnected)


# -- real sockets ------------------------------------------------------------------


class RawClient(Protocol):
    """
    A client that records what it reads and when it is closed.
    """

    def __init__(self):
        self.received = bytearray()
        self.lost = defer.Deferred()
        self._want = None

    def dataReceived(self, data):
        self.received += data
        self._check()

    def connectionLost(self, reason):
        self.lost.callback(bytes(self.received))
        if self._want is not None:
            want, self._want = self._want, None
            want[1].errback(AssertionError(f"closed after {bytes(self.received)!r}"))

    def read_at_least(self, count):
        waiting = defer.Deferred()
        self._want = (count, waiting)
        self._check()
        return waiting

    def _check(self):
        if self._want is not None and len(self.received) >= self._want[0]:
            want, self._want = self._want, None
            want[1].callback(bytes(self.received))

    def ping(self):
        self.transport.write(HEARTBEAT_BYTE)
        return self.read_at_least(len(self.received) + 1)

    def outcome(self):
        """
        Fires with C{"answered"} at the first byte read, or C{"closed"} if
        the connection is lost before any.
        """
        if self.received:
            return defer.succeed("answered")
        if self.lost.called:
            return defer.succeed("closed")
        answered = self.read_at_least(1)
        answered.addCallbacks(lambda _: "answered", lambda _: "closed")
        return answered


class LoopbackLimitTests(TestCase):
    timeout = 30

    def connect(self, port):
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawClient())

    @defer.inlineCallbacks
    def open_clients(self, port, count):
        clients = []
        for _ in range(count):
            client = yield self.connect(port)
            self.addCleanup(client.transport.abortConnection)
            clients.append(client)
        return clients

    @defer.inlineCallbacks
    def test_per_ip_limit_over_tcp(self):
        loop = LoopbackNode(self, config=limits_config(max_connections_per_ip=2))
        first, second = yield self.open_clients(loop.port, 2)
        yield first.ping()
        yield second.ping()
        [third] = yield self.open_clients(loop.port, 1)
        received = yield third.lost
        self.assertEqual(received, b"")
        self.assertEqual(refusals(loop.node, limits.PER_IP), 1)
        first.transport.loseConnection()
        yield first.lost
        yield wait_until(lambda: loop.node.limits.connections_from("127.0.0.1") == 1)
        [fourth] = yield self.open_clients(loop.port, 1)
        pong = yield fourth.ping()
        self.assertEqual(pong, HEARTBEAT_BYTE)
        self.assertEqual(refusals(loop.node, limits.PER_IP), 1)

    @defer.inlineCallbacks
    def test_refusal_under_a_wrapping_factory_over_tcp(self):
        """
        Behind a wrapping factory (as behind TLS) a refused client is closed
        cleanly; an error logged in the reactor would fail this test.
        """
        loop = LoopbackNode(self, config=limits_config(max_connections=1))
        wrapped = WrappingFactory(ConnectionFactory(loop.node, make_dispatcher(loop.node)))
        listening = reactor.listenTCP(0, wrapped, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        [first] = yield self.open_clients(port, 1)
        yield first.ping()
        [second] = yield self.open_clients(port, 1)
        received = yield second.lost
        self.assertEqual(received, b"")
        self.assertEqual(refusals(loop.node, limits.MAX_CONNECTIONS), 1)

    @defer.inlineCallbacks
    def test_handshakes_over_the_rate_closed_without_error_over_tcp(self):
        loop = LoopbackNode(self, config=limits_config(handshake_rate=1, handshake_burst=2))
        key = counting_key(loop.node)
        bound = ScriptedDevice("bound")
        [client] = yield self.open_clients(loop.port, 1)
        client.transport.write(bound.handshake_bytes())
        yield client.read_at_least(HEADER_LENGTH)
        clients = yield self.open_clients(loop.port, 4)
        for n, flooder in enumerate(clients):
            flooder.transport.write(ScriptedDevice(f"flood-{n}").handshake_bytes())
        # One more is answered (the burst was 2); the rest are closed with
        # nothing written, while the first client's pings are answered.
        outcomes = yield defer.gatherResults([flooder.outcome() for flooder in clients])
        self.assertEqual(sorted(outcomes), ["answered", "closed", "closed", "closed"])
        for flooder, outcome in zip(clients, outcomes):
            if outcome == "closed":
                received = yield flooder.lost
                self.assertEqual(received, b"")
        pong = yield client.ping()
        self.assertEqual(pong[-1:], HEARTBEAT_BYTE)
        self.assertEqual(key.decrypts, 2)
        self.assertEqual(refusals(loop.node, limits.HANDSHAKE_RATE), 3)

"""
The node's metrics move when the events they count happen (StringTransport
node with a fake clock; Redis errors against a Redis that is not there).
"""

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush.config import load_config, parse_redis_url
from mpush.protocol.packet import Flags
from mpush.tap import Backends

from tests.process_support import free_port
from tests.server_support import ScriptedDevice, connect, make_node
from tests.test_bind_push import Device, Gateway


def sample(node, name, **labels):
    return node.metrics.registry.get_sample_value(name, labels) or 0


class NodeMetricsTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()

    def test_connections_and_bytes(self):
        protocol, transport = connect(self.node)
        self.assertEqual(sample(self.node, "mpush_connections"), 1)
        protocol.dataReceived(b"\xdf\xdf")
        self.assertEqual(sample(self.node, "mpush_received_bytes_total"), 2)
        self.assertEqual(sample(self.node, "mpush_sent_bytes_total"), 2)
        protocol.connectionLost(None)
        self.assertEqual(sample(self.node, "mpush_connections"), 0)

    def test_handshake_outcomes(self):
        Device(self.node, "dev-1")
        protocol, transport = connect(self.node)
        protocol.dataReceived(ScriptedDevice().handshake_bytes(device_id=None))
        self.assertEqual(sample(self.node, "mpush_handshakes_total", outcome="ok"), 1)
        self.assertEqual(sample(self.node, "mpush_handshakes_total", outcome="invalid"), 1)

    def test_fast_connect_outcomes(self):
        protocol, transport = connect(self.node)
        protocol.dataReceived(ScriptedDevice().fast_connect_bytes("nope"))
        self.assertEqual(sample(self.node, "mpush_fast_connects_total", outcome="expired"), 1)

    def test_binds_pushes_and_ack_latency(self):
        device = Device(self.node, "dev-1")
        device.bind("alice")
        self.assertEqual(sample(self.node, "mpush_binds_total", outcome="ok"), 1)
        gateway = Gateway(self.node)
        gateway.push("alice", flags=Flags.AUTO_ACK)
        [(_, session_id, _, _)] = device.received()
        self.node.clock.advance(0.25)
        device.ack(session_id)
        gateway.push("nobody")
        self.assertEqual(sample(self.node, "mpush_pushes_total", result="success"), 1)
        self.assertEqual(sample(self.node, "mpush_pushes_total", result="offline"), 1)
        self.assertEqual(sample(self.node, "mpush_ack_latency_seconds_count"), 1)
        self.assertEqual(sample(self.node, "mpush_ack_latency_seconds_sum"), 0.25)

    def test_ack_timeout_counted(self):
        device = Device(self.node, "dev-1")
        device.bind("alice")
        Gateway(self.node).push("alice", flags=Flags.BIZ_ACK, timeout=1000)
        self.node.clock.advance(2)
        self.assertEqual(sample(self.node, "mpush_pushes_total", result="ack_timeout"), 1)


class RedisErrorMetricsTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_failed_redis_calls_counted_by_component(self):
        port = free_port()  # nothing listens there
        config = load_config(None).replace(redis=parse_redis_url(f"redis://127.0.0.1:{port}/0"))
        backends = Backends(config, reactor)
        self.addCleanup(backends.close)
        node = make_node(config, backends=backends)
        with self.assertRaises(Exception):
            yield backends.remote.lookup("alice")
        with self.assertRaises(Exception):
            yield backends.sessions.load("some-session")
        self.assertGreaterEqual(sample(node, "mpush_redis_errors_total", component="routes"), 1)
        self.assertGreaterEqual(sample(node, "mpush_redis_errors_total", component="sessions"), 1)

"""
A draining node answers every push it has read: its gateway connections
close only once nothing read is left unanswered and the pushers have gone
quiet, so a pusher never sees its connection close under a push.
"""

import collections

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush.protocol.body import make_raw_packet
from mpush.protocol.errors import ErrorCode
from mpush.protocol.messages import ErrorMessage, GatewayPushMessage
from mpush.protocol.packet import Command, PacketDecoder, encode_packet
from mpush.push import AckModel, PushClient
from mpush.server.gateway.gateway import GatewayFactory
from mpush.server.ops.drain import GATEWAY_QUIET
from mpush.server.ops.push_tracking import DRAINING_REASON

from tests.polling import sleep, wait_until
from tests.redis_server import start_redis_server
from tests.test_faults import node_config
from tests.test_graceful_restart import DrainingNode, MovingDevice, NodeHarness, fired

#: Devices per node, and pushers sharing them.
DEVICES = 250
PUSHERS = 4


class GatewayDrainTests(SynchronousTestCase):
    """The drain's last step, on a fake clock."""

    def setUp(self):
        self.harness = NodeHarness()
        self.clock = self.harness.clock
        self.factory = GatewayFactory(self.harness.tracker, 1 << 20)
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.protocol.makeConnection(self.transport)
        self.decoder = PacketDecoder(None)
        self.sent = 0

    def push(self):
        self.sent += 1
        message = GatewayPushMessage(f"user-{self.sent}", 1, 2500, b"x")
        self.protocol.dataReceived(encode_packet(make_raw_packet(Command.GATEWAY_PUSH, message, self.sent)))

    def answers(self):
        return [ErrorMessage.decode(p.body) for p in self.decoder.feed(self.transport.value())]

    def test_gateway_read_and_answered_until_quiet_then_closed(self):
        done = fired(self.harness.drainer(gateways=self.factory).drain())
        # A pusher still sending (its routes not yet moved): every push is
        # read and answered, and the connection stays open.
        for _ in range(30):
            self.push()
            self.clock.advance(0.1)
            self.assertFalse(self.transport.disconnecting)
        answers = self.answers()
        self.assertEqual(len(answers), self.sent)
        self.assertEqual({(a.code, a.reason) for a in answers}, {(int(ErrorCode.OFFLINE), DRAINING_REASON)})
        self.assertEqual(done, [])
        # Quiet: closed once its answers are out.
        self.clock.advance(GATEWAY_QUIET + 0.1)
        self.assertTrue(self.transport.disconnecting)
        self.protocol.dataReceived(b"late bytes are not read")
        self.assertEqual(len(self.answers()), self.sent)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(0.1)
        [report] = done
        self.assertEqual(report.gateway_connections_closed, 1)
        self.assertEqual(self.factory.connections, set())

    def test_a_pusher_that_never_stops_is_closed_after_the_grace(self):
        done = fired(self.harness.drainer(gateways=self.factory, gateway_grace_s=2.0).drain())
        for _ in range(25):
            if self.transport.disconnecting:
                break
            self.push()
            self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.answers()), self.sent)  # everything read was answered
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(0.1)
        self.assertEqual(len(done), 1)


class DrainUnderLoadTests(TestCase):
    timeout = 240

    def setUp(self):
        self.redis = start_redis_server(self)

    def session_path(self):
        return self.mktemp()

    def start_node(self):
        node = DrainingNode(node_config(self.redis.port))
        self.addCleanup(node.stop)
        return node.spawn()

    @defer.inlineCallbacks
    def test_every_push_read_is_answered(self):
        node_a = yield self.start_node()
        node_b = yield self.start_node()
        devices = []
        for i in range(DEVICES):
            for index, name in ((0, "a"), (1, "b")):
                device = MovingDevice(self, f"u{name}{i}", [node_a, node_b] if index == 0 else [node_b, node_a])
                # A's devices do not come back: their routes name A until
                # its drain marks them offline, at its very end, so pushes
                # reach A's gateway until then.
                device.stopping = index == 0
                devices.append(device)
        yield defer.gatherResults([device.connect(0) for device in devices])
        outcomes = collections.Counter()
        lost = []
        pushing = {"on": True}

        async def push_loop(pusher, user):
            # Each user pushed to back to back: pushes are always in flight.
            while pushing["on"]:
                [result] = await pusher.push(user, b"x", ack=AckModel.AUTO_ACK)
                outcomes[result.status.value] += 1
                if result.reason and "gateway connection lost" in result.reason:
                    lost.append(result.reason)

        users = [device.user_id for device in devices]
        pushers = []
        for n in range(PUSHERS):
            pusher = PushClient(reactor, redis_url=self.redis.url, timeout=5.0)
            self.addCleanup(pusher.close)
            pushers.append(pusher)
        loops = [defer.ensureDeferred(push_loop(pushers[n % PUSHERS], user)) for n, user in enumerate(users)]
        yield wait_until(lambda: outcomes["success"] >= 4 * len(users), timeout=60, what="pushes flowing")
        status = yield node_a.terminate()
        self.assertEqual(status, 0, node_a.log())
        yield sleep(1.0)
        pushing["on"] = False
        yield defer.gatherResults(loops)
        self.assertEqual(lost, [], f"{outcomes}\n{node_a.log()[-3000:]}")
        self.assertGreater(outcomes["success"], 0)

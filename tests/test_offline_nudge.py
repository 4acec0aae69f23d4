"""
Offline nudges (L{mpush.offline.nudge}): the wire form, the in-memory
channel, and what a node does with a nudge, over StringTransport with a fake
clock.  The Redis channel and the race they close run on real nodes in
C{tests.test_graceful_restart.StoredWhileRebindingTests}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mpush.offline.interfaces import OfflineMessage
from mpush.offline.nudge import (
    MemoryNudgeChannel,
    Nudge,
    decode_nudge,
    deliver_nudged,
    encode_nudge,
    nudge_channel,
)
from mpush.protocol.packet import Command
from mpush.router.interfaces import RouterUnavailable
from mpush.router.memory import MemoryRoutingState

from tests.server_support import make_node
from tests.test_bind_push import Device


class WireTests(SynchronousTestCase):
    def test_channel_and_round_trip(self):
        self.assertEqual(nudge_channel("10.0.0.1", 3001), "/mpush/offline-nudge/10.0.0.1:3001")
        nudge = Nudge("ölga", 1, "c-7")
        text = encode_nudge(nudge)
        self.assertEqual(text, '{"userId": "ölga", "clientType": 1, "connId": "c-7"}')
        self.assertEqual(decode_nudge(text), nudge)
        self.assertEqual(decode_nudge(text.encode("utf-8")), nudge)

    def test_bad_nudges(self):
        for text in (
            "nope",
            "[1]",
            '{"clientType": 1, "connId": "c"}',
            '{"userId": "", "clientType": 1, "connId": "c"}',
            '{"userId": "u", "clientType": 1}',
            '{"userId": "u", "clientType": true, "connId": "c"}',
            '{"userId": "u", "clientType": "1", "connId": "c"}',
        ):
            self.assertRaises(ValueError, decode_nudge, text)


class MemoryChannelTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.clock = self.node.clock
        self.channel = MemoryNudgeChannel(MemoryRoutingState(self.clock))
        self.heard = []

    def test_published_to_the_node_it_names(self):
        self.successResultOf(self.channel.listen("10.0.0.1", 3001, self.heard.append))
        self.assertEqual(self.successResultOf(self.channel.publish("10.0.0.1", 3001, Nudge("u", 1, "c"))), 1)
        self.assertEqual(self.successResultOf(self.channel.publish("10.0.0.2", 3001, Nudge("v", 1, "c"))), 0)
        self.clock.advance(0)
        self.assertEqual(self.heard, [Nudge("u", 1, "c")])

    def test_garbage_and_failing_handlers_are_logged_not_raised(self):
        def broken(nudge):
            raise RuntimeError("handler bug")

        self.channel.listen("h", 1, broken)
        self.channel.state.publish(nudge_channel("h", 1), "garbage")
        self.channel.publish("h", 1, Nudge("u", 1, "c"))
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_closed(self):
        self.channel.listen("h", 1, self.heard.append)
        self.successResultOf(self.channel.close())
        self.channel.state.publish(nudge_channel("h", 1), encode_nudge(Nudge("u", 1, "c")))
        self.clock.advance(0)
        self.assertEqual(self.heard, [])
        self.failureResultOf(self.channel.publish("h", 1, Nudge("u", 1, "c")), RouterUnavailable)
        self.failureResultOf(self.channel.listen("h", 1, self.heard.append), RouterUnavailable)


class DeliverNudgedTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.center = self.node.router_center
        self.device = Device(self.node, "dev-1")
        self.device.bind("alice")
        now = self.node.now_ms()
        message = OfflineMessage("m1", b"stored late", "none", now, now + 60_000)
        self.successResultOf(self.center.offline.store.add("alice", message))

    def nudge(self, user="alice", conn_id=None):
        return Nudge(user, 1, conn_id or self.device.protocol.conn_id)

    def pushes(self):
        return [body for cmd, _, _, body in self.device.received() if cmd == Command.PUSH]

    def test_delivers_on_the_named_connection(self):
        self.assertEqual(self.successResultOf(deliver_nudged(self.center, self.nudge())), 1)
        self.assertEqual(self.pushes(), [b"stored late"])
        # Delivered: a second nudge finds nothing.
        self.assertEqual(self.successResultOf(deliver_nudged(self.center, self.nudge())), 0)

    def test_another_connection_or_user_gets_nothing(self):
        self.assertIsNone(deliver_nudged(self.center, self.nudge(conn_id="someone-else")))
        self.assertIsNone(deliver_nudged(self.center, self.nudge(user="bob")))
        self.assertEqual(self.pushes(), [])

    def test_unbound_connection_gets_nothing(self):
        self.device.unbind("alice")
        self.assertIsNone(deliver_nudged(self.center, self.nudge()))
        self.assertEqual(self.pushes(), [])

    def test_node_without_offline_delivery(self):
        self.center.offline = None
        self.assertIsNone(deliver_nudged(self.center, self.nudge()))

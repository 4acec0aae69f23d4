"""
The push centre's one result type: every push, whatever it turns into,
returns a L{PushHandle} that ends exactly once, and the replies it answers
provide L{IPushReply}.  One node over StringTransport with a fake clock.
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mpush.config import PushConfig, load_config
from mpush.protocol.errors import ErrorCode
from mpush.protocol.messages import GatewayPushMessage
from mpush.protocol.packet import Command, Flags, Packet
from mpush.server.gateway.push_center import (
    BroadcastTask,
    GatewayReply,
    IPushReply,
    Outcome,
    PushHandle,
)

from tests.server_support import make_node
from tests.test_bind_push import Device, Gateway


@implementer(IPushReply)
class RecordingReply:
    """A reply that keeps what the push centre answered."""

    def __init__(self, report_timeouts=False):
        self.report_timeouts = report_timeouts
        self.answers = []

    def ok(self, data):
        self.answers.append(("ok", None))

    def error(self, code, data, reason=None):
        self.answers.append(("error", code))


class Ends:
    """An observer counting the ends it saw."""

    def __init__(self):
        self.seen = []

    def __call__(self, handle):
        self.seen.append(handle.outcome)


class ReplyInterfaceTests(SynchronousTestCase):
    def test_every_reply_provides_the_interface(self):
        node = make_node()
        gateway = Gateway(node)
        packet = Packet(Command.GATEWAY_PUSH, 7, int(Flags.REPORT_TIMEOUTS))
        for reply in (GatewayReply(gateway.protocol, packet), RecordingReply()):
            self.assertTrue(verifyObject(IPushReply, reply))


class PushHandleTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.center = self.node.push_center
        self.device = Device(self.node, "dev-1")
        self.device.bind("alice")
        self.device.received()

    def push(self, user_id, flags=0, timeout=2500, reply=None, client_type=1):
        self.reply = reply if reply is not None else RecordingReply()
        handle = self.center.push(GatewayPushMessage(user_id, client_type, timeout, b"hi"), flags, self.reply)
        self.assertIsInstance(handle, PushHandle)
        self.ends = Ends()
        handle.observe(self.ends)
        return handle

    def test_delivered_at_once(self):
        handle = self.push("alice")
        self.assertEqual((handle.outcome, handle.error_code), (Outcome.SUCCESS, None))
        self.assertEqual((self.reply.answers, self.ends.seen), ([("ok", None)], [Outcome.SUCCESS]))
        self.assertIs(self.successResultOf(handle.ended()), handle)

    def test_waits_for_the_ack(self):
        handle = self.push("alice", flags=int(Flags.AUTO_ACK))
        ended = handle.ended()
        self.assertIsNone(handle.outcome)
        self.assertNoResult(ended)
        [(_, message_id, _, _)] = self.device.received()
        self.device.ack(message_id)
        self.assertIs(self.successResultOf(ended), handle)
        self.assertEqual((self.reply.answers, self.ends.seen), ([("ok", None)], [Outcome.SUCCESS]))

    def test_silent_timeout_ends_without_an_answer(self):
        handle = self.push("alice", flags=int(Flags.AUTO_ACK), timeout=1000)
        self.node.clock.advance(1.0)
        self.assertEqual((handle.outcome, handle.error_code), (Outcome.TIMEOUT, int(ErrorCode.ACK_TIMEOUT)))
        self.assertEqual((self.reply.answers, self.ends.seen), ([], [Outcome.TIMEOUT]))

    def test_reported_timeout(self):
        self.push("alice", flags=int(Flags.AUTO_ACK), timeout=1000, reply=RecordingReply(report_timeouts=True))
        self.node.clock.advance(1.0)
        self.assertEqual(self.reply.answers, [("error", int(ErrorCode.ACK_TIMEOUT))])

    def test_offline_after_a_route_lookup(self):
        handle = self.push("nobody")
        self.assertEqual(self.successResultOf(handle.ended()).outcome, Outcome.OFFLINE)
        self.assertEqual((self.reply.answers, self.ends.seen), ([("error", int(ErrorCode.OFFLINE))],
                                                                [Outcome.OFFLINE]))

    def test_stale_route_not_released_still_ends(self):
        """
        A route naming this node with no connection behind it: offline,
        and a store that cannot mark it offline is logged, not raised.
        """
        from twisted.internet import defer

        from mpush.protocol.routing import ClientLocation

        here = self.node.router_center.gateway
        remote = self.node.router_center.remote
        remote.register("ghost", 1, ClientLocation(host=here[0], port=here[1], os_name="android",
                                                   client_version="1", device_id="d-9", conn_id="c-9"))
        remote.mark_offline = lambda *args, **kwargs: defer.fail(RuntimeError("store down"))
        handle = self.push("ghost")
        self.assertEqual((handle.outcome, self.reply.answers), (Outcome.OFFLINE, [("error", int(ErrorCode.OFFLINE))]))
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])

    def test_every_client_type(self):
        handle = self.push("alice", client_type=0)
        self.assertEqual((handle.outcome, self.ends.seen), (Outcome.SUCCESS, [Outcome.SUCCESS]))

    def test_broadcast(self):
        handle = self.push(None, client_type=0)
        self.assertIsInstance(handle, BroadcastTask)
        self.assertEqual((handle.outcome, handle.count, self.ends.seen), (Outcome.SUCCESS, 1, [Outcome.SUCCESS]))
        self.assertEqual(self.reply.answers, [("ok", None)])

    def test_broadcast_with_a_bad_condition(self):
        reply = RecordingReply()
        message = GatewayPushMessage(None, 0, 0, b"x", None, None, "require('fs')")
        handle = self.center.push(message, 0, reply)
        self.assertEqual((handle.outcome, reply.answers), (Outcome.FAILURE, [("error", int(ErrorCode.PUSH_CLIENT_FAILURE))]))

    def test_parked_by_flow_control_ends_later(self):
        node = make_node(load_config(None).replace(push=PushConfig(global_limit=1)))
        device = Device(node, "dev-2")
        device.bind("bob")
        reply = RecordingReply()
        node.push_center.push(GatewayPushMessage("bob", 1, 2500, b"one"), 0, reply)
        handle = node.push_center.push(GatewayPushMessage("bob", 1, 2500, b"two"), 0, reply)
        self.assertIsNone(handle.outcome)
        node.clock.advance(1.0)
        self.assertEqual((handle.outcome, reply.answers), (Outcome.SUCCESS, [("ok", None)] * 2))

    def test_ends_once_however_often_it_is_finished(self):
        handle = self.push("alice")
        self.center._finish(handle, Outcome.FAILURE)
        self.assertEqual((handle.outcome, self.ends.seen, len(self.reply.answers)),
                         (Outcome.SUCCESS, [Outcome.SUCCESS], 1))

    def test_a_failing_observer_does_not_stop_the_others(self):
        handle = self.push("alice", flags=int(Flags.AUTO_ACK))
        later = Ends()
        handle.observe(lambda handle: 1 / 0)
        handle.observe(later)
        [(_, message_id, _, _)] = self.device.received()
        self.device.ack(message_id)
        self.assertEqual(later.seen, [Outcome.SUCCESS])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class LocalPushTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.center = self.node.push_center
        device = Device(self.node, "dev-1")
        device.bind("alice")

    def test_no_reply_the_handle_is_the_answer(self):
        handle = self.center.push_local("alice", 1, b"hi", 0, 0)
        self.assertEqual((handle.outcome, handle.client_type), (Outcome.SUCCESS, 1))
        self.assertEqual([name for name, _ in handle.points],
                         ["push-center-begin", "before-send", Outcome.SUCCESS])

    def test_a_push_that_raises_ends_failed(self):
        def broken():
            raise RuntimeError("no ids left")

        self.node.next_packet_id = broken
        handle = self.center.push_local("alice", 1, b"hi", 0, 0)
        self.assertEqual((handle.outcome, handle.error_code), (Outcome.FAILURE, int(ErrorCode.PUSH_CLIENT_FAILURE)))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

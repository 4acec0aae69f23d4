"""
The shared side of a close, done late (C{close_delay}) and skipped for a user
who bound again here meanwhile; offline claims given back only by the
connections that made some; nothing logged for a device that left while its
request waited.  A whole node on a fake clock with in-memory backends, whose
route hash can be read as Redis would hold it.
"""

import gc

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mpush.offline.interfaces import OfflineMessage
from mpush.protocol.messages import FastConnectMessage
from mpush.protocol.packet import Command, encode_packet
from mpush.protocol.body import decode_body, make_raw_packet
from mpush.protocol.routing import online_users_key, user_route_key
from mpush.server.routing import router_center
from mpush.server.device.errors import ConnectionClosed
from tests.test_bind_push import Device

from tests.server_support import make_node

DELAY = 2.0


class LazyCloseTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.clock = self.node.clock
        self.center = self.node.router_center
        self.center.close_delay = DELAY
        self.state = self.center.remote.state
        self.marks = []
        mark_offline = self.center.remote.mark_offline

        def counting(*args, **kwargs):
            self.marks.append(args[0])
            return mark_offline(*args, **kwargs)

        self.center.remote.mark_offline = counting

    def route(self, user_id, client_type=1):
        return self.state.hashes.get(user_route_key(user_id), {}).get(str(client_type))

    def online_list(self):
        return self.state.smembers(online_users_key(self.center.events.public_ip))

    def bound(self, user_id, device_id):
        device = Device(self.node, device_id)
        device.bind(user_id)
        return device

    def test_the_shared_side_waits_for_the_delay(self):
        device = self.bound("alice", "dev-1")
        device.protocol.connectionLost(None)
        # Gone here at once: no push finds the closed connection.
        self.assertIsNone(self.center.local.lookup("alice", 1))
        self.assertIn('"connId"', self.route("alice"))
        self.assertIn("alice", self.online_list())
        self.clock.advance(DELAY)
        self.assertEqual(self.marks, ["alice"])
        self.assertNotIn('"connId"', self.route("alice"))
        self.assertNotIn("alice", self.online_list())

    def test_a_user_who_bound_again_here_costs_nothing(self):
        first = self.bound("alice", "dev-1")
        first.protocol.connectionLost(None)
        second = self.bound("alice", "dev-1")
        self.clock.advance(DELAY)
        self.assertEqual(self.marks, [])
        self.assertEqual(self.center.closes_skipped, 1)
        self.assertIn(f'"connId":"{second.protocol.conn_id}"', self.route("alice"))
        self.assertIn("alice", self.online_list())

    def test_one_timer_for_a_burst_of_closes(self):
        devices = [self.bound(f"user-{i}", f"dev-{i}") for i in range(20)]
        for device in devices:
            device.protocol.connectionLost(None)
        self.assertEqual(len([c for c in self.clock.getDelayedCalls() if c.func == self.center._run_due_closes]), 1)
        self.clock.advance(DELAY)
        self.assertEqual(sorted(self.marks), sorted(f"user-{i}" for i in range(20)))

    def test_one_chunk_of_shared_work_in_flight(self):
        """
        A mass close does its Redis work a chunk at a time: the next chunk
        goes once the last one has been answered.
        """
        answers = []

        def held(user_id, client_type, conn_id=None):
            self.marks.append(user_id)
            answers.append(defer.Deferred())
            return answers[-1]

        self.center.remote.mark_offline = held
        chunk = router_center.CLOSE_CHUNK
        devices = [self.bound(f"user-{i}", f"dev-{i}") for i in range(chunk + 7)]
        for device in devices:
            device.protocol.connectionLost(None)
        self.clock.advance(DELAY)
        self.assertEqual(len(self.marks), chunk)
        for answer in answers[:-1]:
            answer.callback(True)
        self.assertEqual(len(self.marks), chunk)
        answers[chunk - 1].callback(True)
        self.assertEqual(len(self.marks), chunk + 7)

    def test_closes_later_than_the_first_wait_for_their_own_delay(self):
        first = self.bound("alice", "dev-1")
        second = self.bound("bob", "dev-2")
        first.protocol.connectionLost(None)
        self.clock.advance(DELAY / 2)
        second.protocol.connectionLost(None)
        self.clock.advance(DELAY / 2)
        self.assertEqual(self.marks, ["alice"])
        self.clock.advance(DELAY / 2)
        self.assertEqual(self.marks, ["alice", "bob"])

    def test_flush_closes_now(self):
        device = self.bound("alice", "dev-1")
        device.protocol.connectionLost(None)
        self.center.flush_closes()
        self.assertEqual(self.marks, ["alice"])
        self.clock.advance(DELAY)
        self.assertEqual(self.marks, ["alice"])

    def test_no_delay_is_at_once(self):
        self.center.close_delay = 0
        device = self.bound("alice", "dev-1")
        device.protocol.connectionLost(None)
        self.assertEqual(self.marks, ["alice"])
        self.assertNotIn('"connId"', self.route("alice"))

    def test_an_operator_kick_is_never_late(self):
        """
        An operator's kick answers once the route is offline: it must not
        wait for the delay a plain close gets.
        """
        device = self.bound("alice", "dev-1")
        released = self.center.kick_local(device.protocol, "alice", close=True)
        self.successResultOf(released)
        self.assertEqual(self.marks, ["alice"])
        self.assertNotIn('"connId"', self.route("alice"))

    def test_unbind_is_never_late(self):
        device = self.bound("alice", "dev-1")
        device.unbind("alice")
        self.assertEqual(self.marks, ["alice"])


class ClaimReleaseTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.center = self.node.router_center
        self.store = self.center.offline.store
        self.releases = []
        release = self.store.release

        def counting(user_id, owner, message_ids=None):
            self.releases.append((user_id, owner, message_ids))
            return release(user_id, owner, message_ids)

        self.store.release = counting

    def test_a_connection_that_claimed_nothing_releases_nothing(self):
        device = Device(self.node, "dev-1")
        device.bind("alice")
        device.protocol.connectionLost(None)
        self.assertEqual(self.releases, [])

    def test_a_connection_with_claims_gives_them_back(self):
        now = self.node.now_ms()
        self.store.add("alice", OfflineMessage("m1", b"hi", "auto", now, now + 60_000))
        device = Device(self.node, "dev-1")
        device.bind("alice")
        device.protocol.connectionLost(None)
        self.assertEqual(self.releases, [("alice", device.protocol.conn_id, None)])
        # Given back: the next bind gets it at once, not after the lease.
        other = Device(self.node, "dev-2")
        pushes = [decode_body(p, other.cipher) for p in other.bind("alice") if p.cmd == Command.PUSH]
        self.assertEqual(pushes, [b"hi"])


class DepartedDeviceTests(SynchronousTestCase):
    def test_no_unhandled_error_for_an_answer_nobody_reads(self):
        """
        A FAST_CONNECT refused after its device left: the ERROR has nobody
        to go to, and nothing is logged as an unhandled error.
        """
        node = make_node()
        store = node.session_store
        waiting = defer.Deferred()
        store.load = lambda session_id: waiting
        from tests.server_support import connect

        protocol, transport = connect(node)
        message = FastConnectMessage("no-such-session", "dev-1", 1000, 180000)
        protocol.dataReceived(encode_packet(make_raw_packet(Command.FAST_CONNECT, message, 7)))
        protocol.connectionLost(None)
        waiting.callback(None)
        del waiting, protocol
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(ConnectionClosed), [])
        self.assertEqual(transport.value(), b"")

"""
Offline delivery on a whole node over StringTransport with a fake clock:
order and flags, removal on ack (or on write for NO_ACK), redelivery after a
missed ack, stops on close / back-pressure / user change, store failures;
the bind path after a full handshake and after a fast connect; and two nodes
racing on one Redis store.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush.offline.delivery import (
    ACK_FLAGS,
    DELIVERY_STAT_NAMES,
    OfflineDelivery,
    ack_model_of_flags,
)
from mpush.offline.interfaces import OfflineMessage, OfflineStoreUnavailable
from mpush.offline.memory import MemoryOfflineStore
from mpush.protocol.body import decode_body
from mpush.protocol.packet import Command, Flags
from tests.server_support import connect, fast_connect_ok_of, make_node
from tests.test_bind_push import Device

LEASE_MS = 30_000
ACK_TIMEOUT_MS = 10_000
TTL_MS = 3_600_000


def wire(node, delivery):
    """
    What the lead adds to RouterCenter.bind: once BIND is answered, start
    the delivery without waiting for it.
    """
    center = node.router_center
    original = center.bind

    def bind(connection, packet, message):
        def bound(result):
            if connection.is_open and connection.context.user_id == message.user_id:
                delivery.deliver(connection, message.user_id, node.next_packet_id)
            return result

        return original(connection, packet, message).addCallback(bound)

    center.bind = bind


class RecordingDevice(Device):
    """A Device that keeps its HandshakeOk, so it can fast connect later."""

    def accept_handshake_ok(self, packet):
        self.handshake_ok = super().accept_handshake_ok(packet)
        return self.handshake_ok

    def close(self):
        self.transport.loseConnection()
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def fast_reconnect(self, port):
        """A new connection resuming the cached session."""
        self.protocol, self.transport = connect(self.node, port=port)
        self.protocol.dataReceived(self.fast_connect_bytes(self.handshake_ok.session_id))
        [reply] = self.read(self.transport)
        return fast_connect_ok_of(reply)

    def decoded(self, packets):
        return [(p.cmd, p.session_id, p.flags, decode_body(p, self.cipher)) for p in packets]


class GatedStore:
    """
    A memory store whose claims answer only when the test says so (a slow
    Redis), and whose other calls can be made to fail (a Redis outage).
    """

    def __init__(self):
        self.inner = MemoryOfflineStore()
        self.gate = None
        self.failing = set()

    def __getattr__(self, name):
        method = getattr(self.inner, name)
        if name not in ("add", "claim", "remove", "release", "count"):
            return method

        def call(*args):
            if name in self.failing:
                return defer.fail(OfflineStoreUnavailable(f"{name} down"))
            result = method(*args)
            if name == "claim" and self.gate is not None:
                gate = self.gate
                return result.addCallback(lambda value: gate.addCallback(lambda _: value))
            return result

        return call


class DeliveryTestCase(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.clock = self.node.clock
        self.store = MemoryOfflineStore()
        self.delivery = self.make_delivery(self.store)

    def make_delivery(self, store):
        return OfflineDelivery(store, self.node.acks, self.clock, lease_ms=LEASE_MS, ack_timeout_ms=ACK_TIMEOUT_MS)

    def now(self):
        return self.node.now_ms()

    def store_messages(self, *acks, user="alice", ttl=TTL_MS, store=None):
        for n, ack in enumerate(acks, 1):
            message = OfflineMessage(f"m{n}", b"offline %d" % n, ack, self.now(), self.now() + ttl)
            self.successResultOf((store or self.store).add(user, message))

    def bound_device(self, device_id="dev-1", user="alice", port=40000):
        device = RecordingDevice(self.node, device_id, port=port)
        device.bind(user)
        return device

    def deliver(self, device, user="alice", delivery=None):
        return (delivery or self.delivery).deliver(device.protocol, user, self.node.next_packet_id)

    def pushes(self, device):
        return [(sid, flags, body) for cmd, sid, flags, body in device.received() if cmd == Command.PUSH]

    def queued(self, user="alice"):
        return self.successResultOf(self.store.count(user))


class DeliveryTests(DeliveryTestCase):
    def test_in_order_with_ack_flags(self):
        self.store_messages("none", "auto", "biz")
        device = self.bound_device()
        done = self.deliver(device)
        pushes = self.pushes(device)
        self.assertEqual([body for _, _, body in pushes], [b"offline 1", b"offline 2", b"offline 3"])
        self.assertEqual(
            [flags for _, flags, _ in pushes],
            [Flags.CRYPTO, Flags.CRYPTO | Flags.AUTO_ACK, Flags.CRYPTO | Flags.BIZ_ACK],
        )
        session_ids = [sid for sid, _, _ in pushes]
        self.assertEqual(session_ids, sorted(set(session_ids)))
        # Pipelined: every message is out before any ack.  NO_ACK is gone
        # already; the others wait for their acks.
        self.assertNoResult(done)
        self.assertEqual(self.queued(), 2)
        device.ack(session_ids[2])
        self.assertEqual(self.queued(), 1)
        device.ack(session_ids[1])
        self.assertEqual(self.queued(), 0)
        self.assertEqual(self.successResultOf(done), 3)
        self.assertEqual(self.store.stats()["delivered"], 3)
        self.assertEqual(
            self.delivery.stats(),
            {"sent": 3, "delivered": 3, "ack_missed": 0, "released": 0, "store_errors": 0},
        )

    def test_nothing_queued(self):
        device = self.bound_device()
        self.assertEqual(self.successResultOf(self.deliver(device)), 0)
        self.assertEqual(self.pushes(device), [])

    def test_delivered_once(self):
        self.store_messages("none", "auto")
        first = self.bound_device("dev-1", port=1)
        self.deliver(first)
        # A second device of the user (another client type) binds meanwhile.
        laptop = RecordingDevice(self.node, "laptop", os_name="windows", port=2)
        laptop.bind("alice")
        self.assertEqual(self.successResultOf(self.deliver(laptop)), 0)
        self.assertEqual(self.pushes(laptop), [])
        self.assertEqual(len(self.pushes(first)), 2)

    def test_missed_ack_redelivered_after_the_lease(self):
        self.store_messages("auto")
        first = self.bound_device("dev-1", port=1)
        done = self.deliver(first)
        [(_, _, body)] = self.pushes(first)
        self.clock.advance(ACK_TIMEOUT_MS / 1000.0)
        self.assertEqual(self.successResultOf(done), 0)
        self.assertEqual(self.delivery.stats()["ack_missed"], 1)
        self.assertEqual(self.queued(), 1)
        # Still leased: a bind now gets nothing.
        second = self.bound_device("dev-2", port=2)
        self.assertEqual(self.successResultOf(self.deliver(second)), 0)
        self.assertEqual(self.pushes(second), [])
        # The lease ends: the next bind gets it again, and its ack removes it.
        self.clock.advance((LEASE_MS - ACK_TIMEOUT_MS) / 1000.0)
        third = self.bound_device("dev-3", port=3)
        again = self.deliver(third)
        [(session_id, flags, body_again)] = self.pushes(third)
        self.assertEqual((body_again, flags & Flags.ACK_BITS), (body, Flags.AUTO_ACK))
        third.ack(session_id)
        self.assertEqual(self.successResultOf(again), 1)
        self.assertEqual(self.queued(), 0)

    def test_late_ack_after_timeout_ignored(self):
        self.store_messages("biz")
        device = self.bound_device()
        done = self.deliver(device)
        [(session_id, _, _)] = self.pushes(device)
        self.clock.advance(ACK_TIMEOUT_MS / 1000.0)
        device.ack(session_id)
        self.assertEqual(self.successResultOf(done), 0)
        self.assertEqual(self.queued(), 1)

    def test_ack_from_another_connection_does_not_count(self):
        """
        An offline PUSH is acked only by the connection it was written to:
        another device guessing its id removes nothing.
        """
        self.store_messages("auto", "biz")
        device = self.bound_device("dev-1", port=1)
        intruder = self.bound_device("dev-2", user="mallory", port=2)
        done = self.deliver(device)
        session_ids = [sid for sid, _, _ in self.pushes(device)]
        for session_id in session_ids:
            intruder.ack(session_id)
        self.assertEqual(self.queued(), 2)
        self.assertNoResult(done)
        for session_id in session_ids:
            device.ack(session_id)
        self.assertEqual(self.queued(), 0)
        self.assertEqual(self.successResultOf(done), 2)

    def test_expired_not_delivered(self):
        self.store_messages("none", "none", ttl=5_000)
        self.clock.advance(5)
        device = self.bound_device()
        self.assertEqual(self.successResultOf(self.deliver(device)), 0)
        self.assertEqual(self.pushes(device), [])
        self.assertEqual(self.store.stats()["expired"], 2)
        self.assertEqual(self.queued(), 0)

    def test_large_message_compressed_like_any_push(self):
        message = OfflineMessage("big", b"X" * 20000, "none", self.now(), self.now() + TTL_MS)
        self.store.add("alice", message)
        device = self.bound_device()
        self.assertEqual(self.successResultOf(self.deliver(device)), 1)
        [(_, flags, body)] = self.pushes(device)
        self.assertEqual((flags, body), (Flags.CRYPTO | Flags.COMPRESS, b"X" * 20000))


class StoppedDeliveryTests(DeliveryTestCase):
    def test_closed_connection_gets_nothing(self):
        self.store_messages("none")
        device = self.bound_device()
        device.close()
        self.assertEqual(self.successResultOf(self.deliver(device)), 0)
        # Nothing was claimed: the next bind gets it at once.
        other = self.bound_device("dev-2", port=2)
        self.assertEqual(self.successResultOf(self.deliver(other)), 1)

    def test_closed_before_the_claim_answers(self):
        store = GatedStore()
        delivery = self.make_delivery(store)
        self.store_messages("none", "auto", store=store)
        store.gate = defer.Deferred()
        device = self.bound_device()
        done = self.deliver(device, delivery=delivery)
        device.close()
        store.gate.callback(None)
        self.assertEqual(self.successResultOf(done), 0)
        self.assertEqual(delivery.stats()["released"], 2)
        store.gate = None
        # Released, not left to the lease: the next bind gets both now.
        other = self.bound_device("dev-2", port=2)
        self.deliver(other, delivery=delivery)
        self.assertEqual([body for _, _, body in self.pushes(other)], [b"offline 1", b"offline 2"])

    def test_connection_closing_mid_delivery_stops_it(self):
        self.store_messages("none", "auto", "auto")
        device = self.bound_device()
        send = device.protocol.send

        def send_then_drop(*args, **kwargs):
            written = send(*args, **kwargs)
            device.close()
            return written

        device.protocol.send = send_then_drop
        done = self.deliver(device)
        self.assertEqual([body for _, _, body in self.pushes(device)], [b"offline 1"])
        self.assertEqual(self.successResultOf(done), 1)
        stats = self.delivery.stats()
        self.assertEqual((stats["sent"], stats["released"]), (1, 2))
        other = self.bound_device("dev-2", port=2)
        self.deliver(other)
        self.assertEqual([body for _, _, body in self.pushes(other)], [b"offline 2", b"offline 3"])

    def test_write_failure_releases_the_message(self):
        self.store_messages("auto")
        device = self.bound_device()
        device.protocol.send = lambda *args: defer.fail(ConnectionDone("gone"))
        self.assertEqual(self.successResultOf(self.deliver(device)), 0)
        del device.protocol.send  # the kick of the next bind writes for real
        # Its ack wait was withdrawn with it.
        self.assertEqual(len(self.node.acks), 0)
        other = self.bound_device("dev-2", port=2)
        self.assertEqual(len(self.pushes(other)), 0)
        self.deliver(other)
        self.assertEqual(len(self.pushes(other)), 1)

    def test_encoding_error_releases_the_message(self):
        self.store_messages("biz")
        device = self.bound_device()

        def broken(*args):
            raise RuntimeError("encoder bug")

        device.protocol.send = broken
        self.assertEqual(self.successResultOf(self.deliver(device)), 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.node.acks), 0)
        self.assertEqual(self.delivery.stats()["released"], 1)

    def test_slow_reader_gets_nothing_until_the_next_bind(self):
        self.store_messages("none", "none")
        device = self.bound_device()
        device.protocol.pauseProducing()
        self.assertEqual(self.successResultOf(self.deliver(device)), 0)
        self.assertEqual(self.pushes(device), [])
        device.protocol.resumeProducing()
        self.assertEqual(self.successResultOf(self.deliver(device)), 2)

    def test_user_changed_before_the_claim_answers(self):
        store = GatedStore()
        delivery = self.make_delivery(store)
        self.store_messages("none", store=store)
        store.gate = defer.Deferred()
        device = self.bound_device()
        done = self.deliver(device, delivery=delivery)
        device.bind("bob")
        device.received()
        store.gate.callback(None)
        self.assertEqual(self.successResultOf(done), 0)
        self.assertEqual(self.pushes(device), [])
        self.assertEqual(self.successResultOf(store.count("alice")), 1)

    def test_packet_id_clash_in_the_ack_table(self):
        self.store_messages("auto", "auto")
        device = self.bound_device()
        done = self.delivery.deliver(device.protocol, "alice", lambda: 7)
        [(session_id, _, _)] = self.pushes(device)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        device.ack(session_id)
        self.assertEqual(self.successResultOf(done), 1)
        self.assertEqual(self.delivery.stats()["released"], 1)


class StoreFailureTests(DeliveryTestCase):
    def test_claim_fails(self):
        store = GatedStore()
        delivery = self.make_delivery(store)
        self.store_messages("none", store=store)
        store.failing.add("claim")
        device = self.bound_device()
        self.assertEqual(self.successResultOf(self.deliver(device, delivery=delivery)), 0)
        self.assertEqual(delivery.stats()["store_errors"], 1)
        self.assertEqual(self.pushes(device), [])

    def test_remove_fails_after_the_ack(self):
        store = GatedStore()
        delivery = self.make_delivery(store)
        self.store_messages("auto", store=store)
        store.failing.add("remove")
        device = self.bound_device()
        done = self.deliver(device, delivery=delivery)
        [(session_id, _, _)] = self.pushes(device)
        device.ack(session_id)
        # The device has it; the store could not forget it: counted, and it
        # comes again after the lease (at least once).
        self.assertEqual(self.successResultOf(done), 1)
        self.assertEqual(delivery.stats()["store_errors"], 1)
        store.failing.clear()
        self.clock.advance(LEASE_MS / 1000.0)
        other = self.bound_device("dev-2", port=2)
        self.deliver(other, delivery=delivery)
        self.assertEqual(len(self.pushes(other)), 1)

    def test_release_fails(self):
        store = GatedStore()
        delivery = self.make_delivery(store)
        self.store_messages("none", store=store)
        store.failing.add("release")
        device = self.bound_device()
        device.protocol.pauseProducing()
        self.assertEqual(self.successResultOf(self.deliver(device, delivery=delivery)), 0)
        self.assertEqual(delivery.stats()["store_errors"], 1)

    def test_bad_user_id_is_not_a_crash(self):
        device = self.bound_device()
        for user in (None, "", 5):
            self.assertEqual(self.successResultOf(self.delivery.deliver(device.protocol, user, self.node.next_packet_id)), 0)
        self.assertEqual(self.delivery.stats()["store_errors"], 0)

    def test_not_a_connection_is_not_a_crash(self):
        self.assertEqual(self.successResultOf(self.delivery.deliver(None, "alice", self.node.next_packet_id)), 0)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)


class BindPathTests(DeliveryTestCase):
    """Delivery started by BIND, as the lead wires it."""

    def setUp(self):
        super().setUp()
        wire(self.node, self.delivery)

    def test_after_a_full_handshake(self):
        self.store_messages("none", "auto")
        device = RecordingDevice(self.node, "dev-1")
        packets = device.decoded(device.bind("alice"))
        self.assertEqual([p[0] for p in packets], [Command.OK, Command.PUSH, Command.PUSH])
        self.assertEqual([p[3] for p in packets[1:]], [b"offline 1", b"offline 2"])
        device.ack(packets[2][1])
        self.assertEqual(self.queued(), 0)

    def test_after_a_fast_connect(self):
        device = RecordingDevice(self.node, "dev-1", port=1)
        device.bind("alice")
        device.close()
        # Offline now: a push with an offline TTL is stored.
        self.store_messages("biz", "none")
        ok = device.fast_reconnect(port=2)
        self.assertGreater(ok.heartbeat, 0)
        packets = device.decoded(device.bind("alice"))
        self.assertEqual([p[0] for p in packets], [Command.OK, Command.PUSH, Command.PUSH])
        self.assertEqual([(p[2], p[3]) for p in packets[1:]],
                         [(Flags.CRYPTO | Flags.BIZ_ACK, b"offline 1"), (Flags.CRYPTO, b"offline 2")])
        self.assertEqual(self.queued(), 1)
        device.ack(packets[1][1])
        self.assertEqual(self.queued(), 0)

    def test_refused_bind_delivers_nothing(self):
        self.store_messages("none")
        device = RecordingDevice(self.node, "dev-1")
        [reply] = device.bind(None)
        self.assertEqual(reply.cmd, Command.ERROR)
        self.assertEqual(self.queued(), 1)


class DeliveryOptionsTests(SynchronousTestCase):
    def test_constructor_checks(self):
        node = make_node()
        store = MemoryOfflineStore()
        for lease, ack in ((0, 1), (1000, 0), (1000, 1000), (1000, 2000), (1.5, 1), (True, 1), (5000, "1")):
            self.assertRaises(ValueError, OfflineDelivery, store, node.acks, node.clock, lease, ack)
        default = OfflineDelivery(store, node.acks, node.clock)
        self.assertEqual((default.lease_ms, default.ack_timeout_ms), (30_000, 10_000))
        self.assertEqual(default.stats(), dict.fromkeys(DELIVERY_STAT_NAMES, 0))
        # The config's smallest lease still leaves room for the claim.
        small = OfflineDelivery(store, node.acks, node.clock, lease_ms=100)
        self.assertEqual(small.ack_timeout_ms, 33)
        self.assertRaises(ValueError, OfflineDelivery, store, node.acks, node.clock, lease_ms=1)

    def test_ack_models_and_flags(self):
        self.assertEqual(ACK_FLAGS, {"none": 0, "auto": 0x08, "biz": 0x04})
        self.assertEqual(ack_model_of_flags(0), "none")
        self.assertEqual(ack_model_of_flags(Flags.CRYPTO | Flags.REPORT_TIMEOUTS), "none")
        self.assertEqual(ack_model_of_flags(Flags.AUTO_ACK), "auto")
        self.assertEqual(ack_model_of_flags(Flags.BIZ_ACK), "biz")
        self.assertEqual(ack_model_of_flags(Flags.BIZ_ACK | Flags.AUTO_ACK), "auto")


class TwoNodesOneRedisTests(TestCase):
    """Two devices of a user bind at the same moment on two nodes: once."""

    timeout = 60

    def setUp(self):
        from mpush.offline.redis import RedisOfflineStore
        from mpush.store.redis_connection import connect_redis
        from tests.redis_server import start_redis_server

        server = start_redis_server(self)
        client = connect_redis(server.url, reactor, max_retry_delay=0.2, reply_timeout=1.0)
        self.addCleanup(client.disconnect)
        self.nodes = [make_node(), make_node()]
        self.stores = [RedisOfflineStore(client, reactor, timeout=2.0) for _ in self.nodes]
        for store in self.stores:
            self.addCleanup(store.close)
        self.deliveries = [
            OfflineDelivery(store, node.acks, node.clock, lease_ms=LEASE_MS, ack_timeout_ms=ACK_TIMEOUT_MS)
            for store, node in zip(self.stores, self.nodes)
        ]

    @defer.inlineCallbacks
    def test_simultaneous_binds_deliver_once(self):
        now = self.nodes[0].now_ms()
        for n in range(1, 6):
            yield self.stores[0].add("alice", OfflineMessage(f"m{n}", b"offline %d" % n, "none", now, now + TTL_MS))
        devices = [RecordingDevice(node, f"dev-{i}") for i, node in enumerate(self.nodes)]
        for device in devices:
            device.bind("alice")
        counts = yield defer.gatherResults(
            [
                delivery.deliver(device.protocol, "alice", node.next_packet_id)
                for delivery, device, node in zip(self.deliveries, devices, self.nodes)
            ]
        )
        self.assertEqual(sorted(counts), [0, 5])
        bodies = [[p[3] for p in device.decoded(device.read(device.transport))] for device in devices]
        winner = bodies[counts.index(5)]
        self.assertEqual(winner, [b"offline %d" % n for n in range(1, 6)])
        self.assertEqual(bodies[counts.index(0)], [])
        self.assertEqual((yield self.stores[1].count("alice")), 0)

"""
The routing contract (remote routes, online-user events, kicks, node
registry), as a mixin run against the in-memory implementation here and
against Redis in L{tests.test_redis_router}; plus what only the memory one
does.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mpush.protocol.routing import (
    NODES_KEY,
    OFFLINE_CHANNEL,
    ONLINE_CHANNEL,
    ClientLocation,
    InvalidKick,
    InvalidLocation,
    KickRequest,
    NodeInfo,
    encode_kick,
    kick_channel,
    node_key,
    node_routes_key,
)
from mpush.router.interfaces import (
    IKickChannel,
    INodeRegistry,
    IRemoteRouter,
    IUserEvents,
    RouterUnavailable,
)
from mpush.router.memory import (
    MemoryKickChannel,
    MemoryNodeRegistry,
    MemoryRemoteRouter,
    MemoryRoutingState,
    MemoryUserEvents,
)

from tests.polling import wait_until

NODE_A = ("10.0.0.5", 3001)
NODE_B = ("10.0.0.6", 3001)

# What a Java node writes (spec 11.4), byte for byte.
JAVA_ROUTE = (
    b'{"port":3001,"host":"10.0.0.9","deviceId":"java-dev","osName":"Android 9",'
    b'"clientVersion":"1.0","connId":"0a1b2c3d"}'
)


def location(node=NODE_A, conn_id="c1", device_id="dev-1", os_name="android") -> ClientLocation:
    host, port = node
    return ClientLocation(host, port, device_id, os_name, "2.0", conn_id)


class RoutingContractMixin:
    """
    Tests every implementation must pass.  A concrete class provides the
    factories (each call is another "node" sharing the same backend), raw
    access to the backend, and a way to let time pass.
    """

    #: (ttl, refresh) of registries in the expiry tests.
    registry_timing = (1.0, 0.3)

    # -- hooks -------------------------------------------------------------
    def make_router(self) -> IRemoteRouter:
        raise NotImplementedError

    def make_events(self, public_ip: str, gateway: tuple[str, int] = ("10.0.0.9", 3001)) -> IUserEvents:
        raise NotImplementedError

    def make_kick_channel(self) -> IKickChannel:
        raise NotImplementedError

    def make_registry(self, ttl: float, refresh: float) -> INodeRegistry:
        raise NotImplementedError

    def raw_hget(self, key: str, field: str) -> bytes | None:
        raise NotImplementedError

    def raw_hset(self, key: str, field: str, value: bytes) -> None:
        raise NotImplementedError

    def raw_smembers(self, key: str) -> set[bytes]:
        raise NotImplementedError

    def raw_exists(self, key: str) -> bool:
        raise NotImplementedError

    def raw_delete(self, key: str) -> None:
        raise NotImplementedError

    def raw_publish(self, channel: str, message: bytes) -> None:
        raise NotImplementedError

    def raw_subscribe(self, channels: list[str]) -> defer.Deferred:
        """Fires a list that collects (channel, message) as text."""
        raise NotImplementedError

    def wait(self, seconds: float) -> defer.Deferred:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------
    def eventually(self, predicate, what, step=0.05, attempts=200):
        """Let this test's time pass until C{predicate()}; a bounded number of steps."""
        return wait_until(predicate, step * attempts, step, what, sleep=self.wait)

    # -- remote router -----------------------------------------------------
    def test_provides_interfaces(self):
        self.assertTrue(verifyObject(IRemoteRouter, self.make_router()))
        self.assertTrue(verifyObject(IUserEvents, self.make_events("1.2.3.4")))
        self.assertTrue(verifyObject(IKickChannel, self.make_kick_channel()))
        self.assertTrue(verifyObject(INodeRegistry, self.make_registry(10, 3)))

    @defer.inlineCallbacks
    def test_register_returns_previous(self):
        router = self.make_router()
        first = location(conn_id="c1")
        second = location(NODE_B, conn_id="c2", device_id="dev-2")
        previous = yield router.register("u1", 1, first)
        self.assertIsNone(previous)
        previous = yield router.register("u1", 1, second)
        self.assertEqual(previous, first)
        current = yield router.lookup_type("u1", 1)
        self.assertEqual(current, second)

    @defer.inlineCallbacks
    def test_lookup(self):
        router = self.make_router()
        mobile = location(conn_id="c1")
        pc = location(NODE_B, conn_id="c2", os_name="windows")
        yield router.register("u1", 1, mobile)
        yield router.register("u1", 2, pc)
        routes = yield router.lookup("u1")
        self.assertEqual(routes, {1: mobile, 2: pc})
        self.assertEqual({k: v.client_type for k, v in routes.items()}, {1: 1, 2: 2})
        self.assertEqual((yield router.lookup("nobody")), {})
        self.assertIsNone((yield router.lookup_type("nobody", 1)))
        self.assertIsNone((yield router.lookup_type("u1", 3)))

    @defer.inlineCallbacks
    def test_lookup_many(self):
        """Each user's routes, in the order asked, from one call; undecodable fields skipped."""
        router = self.make_router()
        mobile = location(conn_id="c1")
        pc = location(NODE_B, conn_id="c2", os_name="windows")
        yield router.register("u1", 1, mobile)
        yield router.register("u1", 2, pc)
        yield router.register("u2", 1, location(conn_id="c3", device_id="dev-3"))
        self.raw_hset("mp:ur:u2", "2", b"not a route")
        found = yield router.lookup_many(["nobody", "u1", "u2"])
        self.assertEqual(found, [{}, {1: mobile, 2: pc}, {1: location(conn_id="c3", device_id="dev-3")}])
        self.assertEqual((yield router.lookup_many([])), [])

    @defer.inlineCallbacks
    def test_raw_contents_are_mpush_format(self):
        router = self.make_router()
        yield router.register("u1", 1, location(conn_id="8f2a6c1d"))
        self.assertEqual(
            self.raw_hget("mp:ur:u1", "1"),
            b'{"port":3001,"host":"10.0.0.5","deviceId":"dev-1","osName":"android",'
            b'"clientVersion":"2.0","connId":"8f2a6c1d"}',
        )
        yield router.mark_offline("u1", 1, conn_id="8f2a6c1d")
        self.assertEqual(
            self.raw_hget("mp:ur:u1", "1"),
            b'{"port":3001,"host":"10.0.0.5","deviceId":"dev-1","osName":"android","clientVersion":"2.0"}',
        )

    @defer.inlineCallbacks
    def test_unknown_type_field(self):
        router = self.make_router()
        yield router.register("u1", -1, location(os_name=None))
        self.assertEqual(self.raw_hget("mp:ur:u1", "-1"), b'{"port":3001,"host":"10.0.0.5","deviceId":"dev-1","clientVersion":"2.0","connId":"c1"}')
        routes = yield router.lookup("u1")
        self.assertEqual(list(routes), [-1])

    @defer.inlineCallbacks
    def test_reads_route_written_by_java(self):
        self.raw_hset("mp:ur:u1", "1", JAVA_ROUTE)
        router = self.make_router()
        expected = ClientLocation("10.0.0.9", 3001, "java-dev", "Android 9", "1.0", "0a1b2c3d")
        self.assertEqual((yield router.lookup_type("u1", 1)), expected)
        self.assertEqual((yield router.lookup("u1")), {1: expected})
        # And Java's route is the "previous" of a bind here.
        self.assertEqual((yield router.register("u1", 1, location())), expected)
        # Java's offline form, keys in another order.
        self.raw_hset("mp:ur:u2", "2", b'{"host":"10.0.0.9","port":3001,"osName":"mac"}')
        self.assertEqual(
            (yield router.lookup_type("u2", 2)),
            ClientLocation("10.0.0.9", 3001, None, "mac", None, None),
        )

    @defer.inlineCallbacks
    def test_undecodable_fields_skipped(self):
        router = self.make_router()
        yield router.register("u1", 1, location())
        self.raw_hset("mp:ur:u1", "2", b"garbage")
        self.raw_hset("mp:ur:u1", "x", location_bytes())
        self.raw_hset("mp:ur:u1", "3", b'{"port":"3001"}')
        routes = yield router.lookup("u1")
        self.assertEqual(routes, {1: location()})
        self.assertIsNone((yield router.lookup_type("u1", 2)))
        # A garbage previous value is no previous route.
        self.assertIsNone((yield router.register("u1", 2, location(conn_id="c9"))))
        self.assertFalse((yield router.mark_offline("u1", 3, conn_id="c1")))
        self.assertEqual(self.raw_hget("mp:ur:u1", "3"), b'{"port":"3001"}')

    @defer.inlineCallbacks
    def test_mark_offline_by_conn_id(self):
        router = self.make_router()
        yield router.register("u1", 1, location(conn_id="c1"))
        before = self.raw_hget("mp:ur:u1", "1")
        self.assertFalse((yield router.mark_offline("u1", 1, conn_id="other")))
        self.assertEqual(self.raw_hget("mp:ur:u1", "1"), before)
        self.assertTrue((yield router.mark_offline("u1", 1, conn_id="c1")))
        self.assertEqual((yield router.lookup_type("u1", 1)), location(conn_id=None))
        # Already offline.
        self.assertFalse((yield router.mark_offline("u1", 1, conn_id="c1")))
        self.assertFalse((yield router.mark_offline("u1", 1, device_id="dev-1")))

    @defer.inlineCallbacks
    def test_mark_offline_by_device(self):
        router = self.make_router()
        yield router.register("u1", 1, location(conn_id="c1", device_id="dev-1"))
        self.assertFalse((yield router.mark_offline("u1", 1, device_id="dev-2")))
        self.assertTrue((yield router.mark_offline("u1", 1, device_id="dev-1")))
        self.assertFalse((yield router.lookup_type("u1", 1)).online)

    @defer.inlineCallbacks
    def test_mark_offline_needs_an_owner(self):
        router = self.make_router()
        yield router.register("u1", 1, location())
        self.assertFalse((yield router.mark_offline("u1", 1)))
        self.assertFalse((yield router.mark_offline("nobody", 1, conn_id="c1")))
        self.assertTrue((yield router.lookup_type("u1", 1)).online)

    @defer.inlineCallbacks
    def test_mark_offline_after_rebind_elsewhere(self):
        # Spec 11.6: the old connection's close must not mark the new one offline.
        router_a, router_b = self.make_router(), self.make_router()
        yield router_a.register("u1", 1, location(NODE_A, conn_id="old"))
        yield router_b.register("u1", 1, location(NODE_B, conn_id="new", device_id="dev-2"))
        self.assertFalse((yield router_a.mark_offline("u1", 1, conn_id="old", device_id="dev-1")))
        self.assertEqual((yield router_a.lookup_type("u1", 1)).conn_id, "new")

    @defer.inlineCallbacks
    def test_node_index(self):
        router = self.make_router()
        yield router.register("u1", 1, location(NODE_A))
        yield router.register("u1", 2, location(NODE_A, os_name="linux"))
        self.assertEqual(self.raw_smembers(node_routes_key(*NODE_A)), {b"u1\t1", b"u1\t2"})
        # The route moves to B: out of A's index, into B's.
        yield router.register("u1", 1, location(NODE_B, conn_id="c2"))
        self.assertEqual(self.raw_smembers(node_routes_key(*NODE_A)), {b"u1\t2"})
        self.assertEqual(self.raw_smembers(node_routes_key(*NODE_B)), {b"u1\t1"})
        # Offline routes leave the index.
        yield router.mark_offline("u1", 1, conn_id="c2")
        self.assertEqual(self.raw_smembers(node_routes_key(*NODE_B)), set())
        # And are not indexed when written offline.
        yield router.register("u1", 2, location(NODE_A, conn_id=None))
        yield router.register("u3", 1, location(NODE_B, conn_id=None))
        self.assertFalse(self.raw_exists(node_routes_key(*NODE_A)))
        self.assertFalse(self.raw_exists(node_routes_key(*NODE_B)))

    @defer.inlineCallbacks
    def test_mark_node_offline(self):
        router = self.make_router()
        yield router.register("on-a", 1, location(NODE_A, conn_id="a1"))
        yield router.register("on-a", 2, location(NODE_A, conn_id="a2", os_name="mac"))
        yield router.register("moved", 1, location(NODE_A, conn_id="a3"))
        yield router.register("moved", 1, location(NODE_B, conn_id="b3"))
        yield router.register("gone", 1, location(NODE_A, conn_id="a4"))
        yield router.mark_offline("gone", 1, conn_id="a4")
        yield router.register("on-b", 1, location(NODE_B, conn_id="b5"))
        # A stale member (say, written before a crash) whose route moved.
        self.raw_hset("mp:ur:stale", "1", b'{"port":3001,"host":"10.0.0.6","connId":"b6"}')
        self.raw_sadd(node_routes_key(*NODE_A), b"stale\t1")
        self.raw_sadd(node_routes_key(*NODE_A), b"no tab here")

        count = yield router.mark_node_offline(*NODE_A)
        self.assertEqual(count, 2)
        routes = yield router.lookup("on-a")
        self.assertEqual({t: r.online for t, r in routes.items()}, {1: False, 2: False})
        self.assertEqual((yield router.lookup_type("moved", 1)).conn_id, "b3")
        self.assertEqual((yield router.lookup_type("on-b", 1)).conn_id, "b5")
        self.assertEqual((yield router.lookup_type("stale", 1)).conn_id, "b6")
        self.assertFalse(self.raw_exists(node_routes_key(*NODE_A)))
        self.assertEqual(self.raw_smembers(node_routes_key(*NODE_B)), {b"moved\t1", b"on-b\t1"})
        self.assertEqual((yield router.mark_node_offline(*NODE_A)), 0)

    @defer.inlineCallbacks
    def test_router_bad_input(self):
        router = self.make_router()
        yield self.assertFailure(router.register(None, 1, location()), TypeError)
        yield self.assertFailure(router.register("u1", "1", location()), TypeError)
        yield self.assertFailure(router.register("u1", 1, ("10.0.0.5", 3001)), InvalidLocation)
        yield self.assertFailure(router.register("u1", 1, location(conn_id=5)), InvalidLocation)
        yield self.assertFailure(router.lookup(5), TypeError)
        yield self.assertFailure(router.lookup_type("u1", None), TypeError)
        yield self.assertFailure(router.mark_offline(None, 1, conn_id="c"), TypeError)
        yield self.assertFailure(router.mark_node_offline("h", "1"), TypeError)
        self.assertEqual((yield router.lookup("u1")), {})

    @defer.inlineCallbacks
    def test_router_closed(self):
        router = self.make_router()
        yield router.close()
        yield self.assertFailure(router.register("u1", 1, location()), RouterUnavailable)
        yield self.assertFailure(router.lookup("u1"), RouterUnavailable)

    # -- user events -------------------------------------------------------
    @defer.inlineCallbacks
    def test_user_events(self):
        messages = yield self.raw_subscribe([ONLINE_CHANNEL, OFFLINE_CHANNEL])
        events = self.make_events("1.2.3.4")
        self.assertEqual(events.public_ip, "1.2.3.4")
        yield events.user_online("u1")
        yield events.user_online("u2")
        self.assertEqual(self.raw_zmembers("mp:oul:1.2.3.4"), {b"u1", b"u2"})
        self.assertEqual((yield events.count_online()), 2)
        yield events.user_offline("u1")
        self.assertEqual(self.raw_zmembers("mp:oul:1.2.3.4"), {b"u2"})
        self.assertEqual((yield events.count_online()), 1)
        yield self.eventually(lambda: len(messages) == 3, "3 events published")
        self.assertEqual(
            messages,
            [(ONLINE_CHANNEL, "u1"), (ONLINE_CHANNEL, "u2"), (OFFLINE_CHANNEL, "u1")],
        )
        yield events.clear()
        self.assertFalse(self.raw_exists("mp:oul:1.2.3.4"))
        self.assertEqual((yield events.count_online()), 0)

    @defer.inlineCallbacks
    def test_user_events_per_ip(self):
        here, there = self.make_events("1.1.1.1", NODE_A), self.make_events("2.2.2.2", NODE_B)
        yield here.user_online("u1")
        yield there.user_online("u2")
        yield here.clear()
        self.assertEqual((yield here.count_online()), 0)
        self.assertEqual((yield there.count_online()), 1)

    @defer.inlineCallbacks
    def test_nodes_sharing_a_list_clear_only_their_own_users(self):
        # Two workers behind one IP: one (re)starting must not wipe the other's users.
        a = self.make_events("1.2.3.4", NODE_A)
        b = self.make_events("1.2.3.4", NODE_B)
        yield a.user_online("u1")
        yield a.user_online("both")
        yield b.user_online("both")
        yield b.user_online("u2")
        yield a.clear()
        self.assertEqual(self.raw_zmembers("mp:oul:1.2.3.4"), {b"both", b"u2"})
        # A user still online on the other node stays listed when it leaves one.
        yield b.user_online("u3")
        yield a.user_online("u3")
        yield a.user_offline("u3")
        self.assertEqual(self.raw_zmembers("mp:oul:1.2.3.4"), {b"both", b"u2", b"u3"})
        yield b.user_offline("u3")
        self.assertEqual(self.raw_zmembers("mp:oul:1.2.3.4"), {b"both", b"u2"})
        # The last node to leave takes the list (as MPush's clear) with it.
        yield b.clear()
        self.assertFalse(self.raw_exists("mp:oul:1.2.3.4"))

    @defer.inlineCallbacks
    def test_restart_with_another_ip_clears_the_old_list(self):
        before = self.make_events("1.2.3.4", NODE_A)
        yield before.user_online("u1")
        yield self.make_events("1.2.3.4", NODE_B).user_online("u2")
        yield self.make_events("5.6.7.8", NODE_A).clear()
        self.assertEqual(self.raw_zmembers("mp:oul:1.2.3.4"), {b"u2"})

    @defer.inlineCallbacks
    def test_start_clears_a_list_no_node_claims(self):
        # Written by an older version (or a Java node): nobody's, so cleared.
        old = self.make_events("1.2.3.4", NODE_A)
        yield old.user_online("stale")
        self.raw_delete("mp:oulc:1.2.3.4")
        yield self.make_events("1.2.3.4", NODE_B).clear()
        self.assertFalse(self.raw_exists("mp:oul:1.2.3.4"))

    @defer.inlineCallbacks
    def test_dead_nodes_users_released_on_its_ip(self):
        a = self.make_events("1.2.3.4", NODE_A)
        b = self.make_events("1.2.3.4", NODE_B)
        elsewhere = self.make_events("5.6.7.8", ("10.0.0.7", 3001))
        yield a.user_online("u1")
        yield a.user_online("both")
        yield b.user_online("both")
        yield elsewhere.user_online("u1")
        # Any survivor can do it, whatever IP it serves.
        self.assertEqual((yield elsewhere.release_node(*NODE_A)), 1)
        self.assertEqual(self.raw_zmembers("mp:oul:1.2.3.4"), {b"both"})
        self.assertEqual(self.raw_zmembers("mp:oul:5.6.7.8"), {b"u1"})
        self.assertEqual((yield elsewhere.release_node(*NODE_A)), 0)
        yield b.user_offline("both")
        self.assertFalse(self.raw_exists("mp:oul:1.2.3.4"))

    @defer.inlineCallbacks
    def test_dead_node_back_again_keeps_its_users(self):
        # Reported dead, but registered again by then: it cleans up itself.
        a = self.make_events("1.2.3.4", NODE_A)
        yield a.user_online("u1")
        registry = self.make_registry(10, 3)
        yield registry.register(NodeInfo(NODE_A[0], NODE_A[1], None, 3000, 1))
        self.assertEqual((yield self.make_events("5.6.7.8", NODE_B).release_node(*NODE_A)), 0)
        self.assertEqual(self.raw_zmembers("mp:oul:1.2.3.4"), {b"u1"})

    @defer.inlineCallbacks
    def test_user_events_bad_input(self):
        events = self.make_events("1.2.3.4")
        yield self.assertFailure(events.user_online(None), TypeError)
        yield self.assertFailure(events.user_offline(7), TypeError)

    # -- kicks -------------------------------------------------------------
    @defer.inlineCallbacks
    def test_kick_round_trip(self):
        listener, sender = self.make_kick_channel(), self.make_kick_channel()
        received = []
        yield listener.listen(NODE_A[0], NODE_A[1], received.append)
        kick = KickRequest("u1", "dev-1", "c1", 1, NODE_A[0], NODE_A[1])
        receivers = yield sender.publish(kick)
        self.assertEqual(receivers, 1)
        yield self.eventually(lambda: received, "kick received")
        self.assertEqual(received, [kick])

    @defer.inlineCallbacks
    def test_kick_other_node_not_received(self):
        listener, sender = self.make_kick_channel(), self.make_kick_channel()
        received = []
        yield listener.listen(NODE_A[0], NODE_A[1], received.append)
        receivers = yield sender.publish(KickRequest("u1", "d", "c", 1, NODE_B[0], NODE_B[1]))
        self.assertEqual(receivers, 0)

    @defer.inlineCallbacks
    def test_kick_garbage_dropped(self):
        listener = self.make_kick_channel()
        received = []
        yield listener.listen(NODE_A[0], NODE_A[1], received.append)
        channel = kick_channel(*NODE_A)
        good = KickRequest("u2", "dev-2", "c2", 2, NODE_A[0], NODE_A[1])
        self.raw_publish(channel, b"not json")
        self.raw_publish(channel, b'{"userId":5}')
        self.raw_publish(channel, b"\xff\xfe")
        # Valid, but addressed to another node: spec 11.8 step 1.
        elsewhere = KickRequest("u2", "dev-2", "c2", 2, NODE_B[0], NODE_B[1])
        self.raw_publish(channel, encode_kick(elsewhere).encode())
        self.raw_publish(channel, encode_kick(good).encode())
        yield self.eventually(lambda: received, "good kick received")
        self.assertEqual(received, [good])

    @defer.inlineCallbacks
    def test_kick_handler_failure_does_not_stop_listening(self):
        listener, sender = self.make_kick_channel(), self.make_kick_channel()
        received = []

        def on_kick(kick):
            received.append(kick)
            if len(received) == 1:
                raise RuntimeError("handler bug")

        yield listener.listen(NODE_A[0], NODE_A[1], on_kick)
        for user in ("u1", "u2"):
            yield sender.publish(KickRequest(user, "d", "c", 1, NODE_A[0], NODE_A[1]))
        yield self.eventually(lambda: len(received) == 2, "both kicks received")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_kick_bad_input(self):
        channel = self.make_kick_channel()
        yield self.assertFailure(channel.publish({"userId": "u1"}), InvalidKick)
        yield self.assertFailure(channel.publish(KickRequest("u1", None, None, 1, None, 3001)), InvalidKick)
        yield self.assertFailure(channel.listen(NODE_A[0], NODE_A[1], "not callable"), TypeError)
        yield self.assertFailure(channel.listen(None, 3001, lambda k: None), TypeError)

    @defer.inlineCallbacks
    def test_kick_closed(self):
        listener = self.make_kick_channel()
        received = []
        yield listener.listen(NODE_A[0], NODE_A[1], received.append)
        yield listener.close()
        yield self.assertFailure(listener.listen(NODE_A[0], NODE_A[1], received.append), RouterUnavailable)
        yield self.assertFailure(
            listener.publish(KickRequest("u", "d", "c", 1, NODE_A[0], NODE_A[1])), RouterUnavailable
        )
        sender = self.make_kick_channel()
        self.assertEqual((yield sender.publish(KickRequest("u", "d", "c", 1, NODE_A[0], NODE_A[1]))), 0)

    # -- node registry -----------------------------------------------------
    @defer.inlineCallbacks
    def test_registry(self):
        a, b = self.make_registry(10, 3), self.make_registry(10, 3)
        info_a = NodeInfo(NODE_A[0], NODE_A[1], "1.2.3.4", 3000, 1700000000000)
        info_b = NodeInfo(NODE_B[0], NODE_B[1], None, 3000, 1700000000001)
        yield a.register(info_a)
        yield b.register(info_b)
        self.assertEqual((yield a.nodes()), [info_a, info_b])
        self.assertTrue((yield b.is_alive(*NODE_A)))
        self.assertFalse((yield b.is_alive("10.9.9.9", 3001)))
        self.assertEqual(self.raw_get(node_key(*NODE_A)), info_a.to_json().encode())
        self.assertEqual(self.raw_smembers(NODES_KEY), {b"10.0.0.5:3001", b"10.0.0.6:3001"})
        yield a.unregister()
        self.assertFalse((yield b.is_alive(*NODE_A)))
        self.assertEqual((yield b.nodes()), [info_b])
        # A clean leave is not a death.
        self.assertEqual((yield b.check_nodes()), [])

    @defer.inlineCallbacks
    def test_expiry_reported_once(self):
        ttl, refresh = self.registry_timing
        a, b, c = (self.make_registry(ttl, refresh) for _ in range(3))
        info_a = NodeInfo(NODE_A[0], NODE_A[1], "1.2.3.4", 3000, 1)
        dead = []
        for registry, name in ((b, "b"), (c, "c")):
            registry.on_node_dead(lambda info, name=name: dead.append((name, info)))
        yield a.register(info_a)
        yield b.register(NodeInfo(NODE_B[0], NODE_B[1], None, 3000, 2))
        yield c.register(NodeInfo("10.0.0.7", 3001, None, 3000, 3))
        self.assertEqual(len((yield b.nodes())), 3)
        self.assertEqual(len((yield c.nodes())), 3)
        # A stays registered while it refreshes, well past its TTL.
        yield self.wait(ttl * 2)
        self.assertTrue((yield b.is_alive(*NODE_A)))
        self.assertEqual(dead, [])
        # A stops refreshing (crash): exactly one survivor reports it.
        yield a.close()
        yield self.eventually(lambda: dead, "A reported dead", step=refresh / 3, attempts=400)
        yield self.wait(refresh * 3)
        self.assertEqual(len(dead), 1)
        self.assertEqual(dead[0][1], info_a)
        self.assertFalse((yield b.is_alive(*NODE_A)))
        self.assertEqual([n.host for n in (yield c.nodes())], [NODE_B[0], "10.0.0.7"])
        self.assertNotIn(b"10.0.0.5:3001", self.raw_smembers(NODES_KEY))

    @defer.inlineCallbacks
    def test_registered_again_after_being_taken_for_dead(self):
        ttl, refresh = self.registry_timing
        registry = self.make_registry(ttl, refresh)
        again = []
        registry.on_registered_again(lambda: again.append(True))
        yield registry.register(NodeInfo(NODE_A[0], NODE_A[1], None, 3000, 1))
        yield self.wait(refresh * 2)
        self.assertEqual(again, [])
        # What a survivor's check_nodes does to a node it finds expired
        # (SREM of its member), or a failover that lost the list.
        self.raw_delete(NODES_KEY)
        yield self.eventually(lambda: again, "registered again", step=refresh / 3, attempts=400)
        self.assertEqual(again, [True])
        self.assertEqual(self.raw_smembers(NODES_KEY), {b"10.0.0.5:3001"})

    @defer.inlineCallbacks
    def test_dead_node_never_read(self):
        # A member whose registration was never read here: host and port only.
        self.raw_sadd(NODES_KEY, b"10.0.0.8:3001")
        self.raw_sadd(NODES_KEY, b"garbage")
        registry = self.make_registry(10, 3)
        yield registry.register(NodeInfo(NODE_A[0], NODE_A[1], None, 3000, 1))
        dead = yield registry.check_nodes()
        self.assertEqual(dead, [NodeInfo("10.0.0.8", 3001, None, 0, 0)])
        self.assertEqual(self.raw_smembers(NODES_KEY), {b"10.0.0.5:3001"})

    @defer.inlineCallbacks
    def test_dead_callback_failure_logged(self):
        self.raw_sadd(NODES_KEY, b"10.0.0.8:3001")
        registry = self.make_registry(10, 3)
        calls = []

        def broken(info):
            calls.append(info)
            raise RuntimeError("callback bug")

        registry.on_node_dead(broken)
        registry.on_node_dead(calls.append)
        yield registry.check_nodes()
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_dead_node_routes_marked_offline(self):
        # How the node-dead callback and mark_node_offline fit together.
        ttl, refresh = self.registry_timing
        router = self.make_router()
        a, b = self.make_registry(ttl, refresh), self.make_registry(ttl, refresh)
        marked = []
        b.on_node_dead(lambda info: router.mark_node_offline(info.host, info.port).addCallback(marked.append))
        yield a.register(NodeInfo(NODE_A[0], NODE_A[1], None, 3000, 1))
        yield b.register(NodeInfo(NODE_B[0], NODE_B[1], None, 3000, 2))
        yield router.register("u1", 1, location(NODE_A, conn_id="a1"))
        yield router.register("u2", 1, location(NODE_B, conn_id="b1"))
        yield a.close()
        yield self.eventually(lambda: marked, "A's routes marked offline", step=refresh / 3, attempts=400)
        self.assertEqual(marked, [1])
        self.assertFalse((yield router.lookup_type("u1", 1)).online)
        self.assertTrue((yield router.lookup_type("u2", 1)).online)

    @defer.inlineCallbacks
    def test_node_back_keeps_its_routes(self):
        # Taken for dead, but registered again before a survivor's clean-up
        # walks its routes: that walk leaves them.
        router = self.make_router()
        registry = self.make_registry(10, 3)
        yield router.register("u1", 1, location(NODE_A, conn_id="a1"))
        yield registry.register(NodeInfo(NODE_A[0], NODE_A[1], None, 3000, 1))
        self.assertEqual((yield router.mark_node_offline(*NODE_A, unless_back=True)), 0)
        self.assertTrue((yield router.lookup_type("u1", 1)).online)
        yield registry.unregister()
        self.assertEqual((yield router.mark_node_offline(*NODE_A, unless_back=True)), 1)
        self.assertFalse((yield router.lookup_type("u1", 1)).online)

    @defer.inlineCallbacks
    def test_registry_bad_input(self):
        registry = self.make_registry(10, 3)
        yield self.assertFailure(registry.register(("h", 1)), TypeError)
        yield self.assertFailure(registry.register(NodeInfo(None, 1, None, 0, 0)), ValueError)
        yield self.assertFailure(registry.is_alive(None, 1), TypeError)
        self.assertRaises(TypeError, registry.on_node_dead, "not callable")
        self.assertRaises(ValueError, self.make_registry, 3, 3)
        self.assertRaises(ValueError, self.make_registry, 0, -1)


def location_bytes() -> bytes:
    return b'{"port":3001,"host":"10.0.0.5"}'


class MemoryRoutingTests(RoutingContractMixin, TestCase):
    """The contract on L{MemoryRoutingState}, time on a L{task.Clock}."""

    def setUp(self):
        self.clock = task.Clock()
        self.state = MemoryRoutingState(self.clock)

    def make_router(self):
        return MemoryRemoteRouter(self.clock, self.state)

    def make_events(self, public_ip, gateway=("10.0.0.9", 3001)):
        return MemoryUserEvents(public_ip, self.clock, self.state, gateway=gateway)

    def make_kick_channel(self):
        return MemoryKickChannel(self.clock, self.state)

    def make_registry(self, ttl, refresh):
        registry = MemoryNodeRegistry(self.clock, self.state, ttl=ttl, refresh=refresh)
        self.addCleanup(registry.close)
        return registry

    def raw_hget(self, key, field):
        value = self.state.hget(key, field)
        return None if value is None else value.encode("utf-8")

    def raw_hset(self, key, field, value):
        self.state.hset(key, field, value.decode("utf-8", "surrogateescape"))

    def raw_smembers(self, key):
        return {m.encode("utf-8") for m in self.state.smembers(key)}

    raw_zmembers = raw_smembers

    def raw_sadd(self, key, member):
        self.state.sadd(key, member.decode("utf-8"))

    def raw_get(self, key):
        value = self.state.get(key)
        return None if value is None else value.encode("utf-8")

    def raw_exists(self, key):
        return key in self.state.sets or key in self.state.hashes or self.state.get(key) is not None

    def raw_delete(self, key):
        self.state.delete(key)

    def raw_publish(self, channel, message):
        self.state.publish(channel, message.decode("utf-8", "surrogateescape"))

    def raw_subscribe(self, channels):
        messages = []
        for channel in channels:
            self.state.subscribe(channel, lambda m, c=channel: messages.append((c, m)))
        return defer.succeed(messages)

    def wait(self, seconds):
        # In small steps, so refresh loops run as they would in real time.
        steps = max(1, int(seconds / 0.05))
        for _ in range(steps):
            self.clock.advance(seconds / steps)
        return defer.succeed(None)

    # -- memory only -------------------------------------------------------
    def test_private_state_by_default(self):
        one, two = MemoryRemoteRouter(self.clock), MemoryRemoteRouter(self.clock)
        one.register("u1", 1, location())
        self.assertEqual(self.successResultOf(two.lookup("u1")), {})

    def test_results_already_fired(self):
        router = self.make_router()
        self.assertIsNone(self.successResultOf(router.register("u1", 1, location())))
        self.assertTrue(self.successResultOf(router.mark_offline("u1", 1, conn_id="c1")))

    def test_kick_delivered_on_next_turn(self):
        listener = self.make_kick_channel()
        received = []
        listener.listen(NODE_A[0], NODE_A[1], received.append)
        listener.publish(KickRequest("u1", "d", "c", 1, NODE_A[0], NODE_A[1]))
        self.assertEqual(received, [])
        self.clock.advance(0)
        self.assertEqual(len(received), 1)

    def test_kick_not_delivered_after_close(self):
        listener, sender = self.make_kick_channel(), self.make_kick_channel()
        received = []
        listener.listen(NODE_A[0], NODE_A[1], received.append)
        sender.publish(KickRequest("u1", "d", "c", 1, NODE_A[0], NODE_A[1]))
        listener.close()
        self.clock.advance(0)
        self.assertEqual(received, [])

    def test_other_objects_closed(self):
        events = self.make_events("1.2.3.4")
        events.close()
        self.failureResultOf(events.user_online("u1"), RouterUnavailable)
        registry = self.make_registry(10, 3)
        registry.close()
        self.failureResultOf(registry.nodes(), RouterUnavailable)

    def test_registry_stops_refreshing_after_unregister(self):
        registry = self.make_registry(1.0, 0.3)
        registry.register(NodeInfo(NODE_A[0], NODE_A[1], None, 3000, 1))
        registry.unregister()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class OfflineRouteBoundTests(SynchronousTestCase):
    """
    One process does not keep every offline route forever: beyond the
    bound, the oldest offline routes are dropped (found by the fuzzer:
    20,000 distinct users grew memory without limit).
    """

    def test_oldest_offline_routes_dropped(self):
        from twisted.internet.task import Clock

        from mpush.protocol.routing import ClientLocation
        from mpush.router.memory import MemoryRemoteRouter

        router = MemoryRemoteRouter(Clock(), max_offline_routes=3)
        for i in range(5):
            location = ClientLocation("127.0.0.1", 3001, f"d{i}", "android", None, f"c{i}")
            router.register(f"u{i}", 1, location)
            router.mark_offline(f"u{i}", 1, conn_id=f"c{i}")
        remaining = [i for i in range(5) if self.successResultOf(router.lookup(f"u{i}"))]
        self.assertEqual(remaining, [2, 3, 4])

    def test_rebound_route_is_not_dropped(self):
        from twisted.internet.task import Clock

        from mpush.protocol.routing import ClientLocation
        from mpush.router.memory import MemoryRemoteRouter

        router = MemoryRemoteRouter(Clock(), max_offline_routes=1)
        first = ClientLocation("127.0.0.1", 3001, "d0", "android", None, "c0")
        router.register("u0", 1, first)
        router.mark_offline("u0", 1, conn_id="c0")
        router.register("u0", 1, first)  # back online
        second = ClientLocation("127.0.0.1", 3001, "d1", "android", None, "c1")
        router.register("u1", 1, second)
        router.mark_offline("u1", 1, conn_id="c1")
        router.register("u2", 1, ClientLocation("127.0.0.1", 3001, "d2", "android", None, "c2"))
        router.mark_offline("u2", 1, conn_id="c2")
        self.assertTrue(self.successResultOf(router.lookup("u0"))[1].online)
        self.assertEqual(self.successResultOf(router.lookup("u1")), {})

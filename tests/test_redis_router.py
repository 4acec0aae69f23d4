"""
The routing contract against a real redis-server (byte-exact MPush keys and
values, values planted by a "Java node"), plus what only Redis has: the
separate subscriber connection, outages, hung servers and restarts.
"""

from __future__ import annotations

import socket

import txredisapi
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from mpush.protocol.routing import KickRequest, NodeInfo, kick_channel
from mpush.router.interfaces import RouterUnavailable
from mpush.router.pubsub import RedisSubscriber
from mpush.router.redis import (
    RedisKickChannel,
    RedisNodeRegistry,
    RedisRemoteRouter,
    RedisUserEvents,
)
from mpush.store.redis_calls import BoundedRedis
from mpush.store.redis_connection import connect_redis
from tests.polling import until_succeeds, wait_until
from tests.redis_proxy import RedisProxy
from tests.redis_server import start_redis_server
from tests.test_memory_router import NODE_A, RoutingContractMixin, location

# Every router call must answer within this on the reactor clock.
CALL_TIMEOUT = 0.5


def raw_command(port: int, *args: str | bytes) -> object:
    """
    One command on a fresh plain socket, as a Java node or redis-cli would
    send it: what is really in Redis, with nothing of ours in between.
    """
    parts = [a if isinstance(a, bytes) else str(a).encode("utf-8") for a in args]
    payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        return _read_reply(s.makefile("rb"))


def _read_reply(reader) -> object:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise AssertionError(f"truncated reply {line!r}")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise AssertionError(f"redis error {rest!r}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        return reader.read(length + 2)[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise AssertionError(f"unexpected reply {line!r}")


class _Collector(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):
        self.factory.messages.append((channel, message))


class _RaceBeforeEval:
    """A txredisapi handler that lets "another node" write just before our first EVAL."""

    def __init__(self, redis, other_node_writes):
        self._redis = redis
        self._other_node_writes = other_node_writes
        self.raced = 0

    def eval(self, *args, **kwargs):
        if not self.raced:
            self.raced += 1
            self._other_node_writes()
        return self._redis.eval(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._redis, name)


class RedisRoutingTestCase(TestCase):
    """A fresh redis-server per test, clients closed at cleanup."""

    timeout = 60

    def start_server(self):
        """The Redis under test: a server of this test's own (a sentinel set in a variant)."""
        return start_redis_server(self)

    def setUp(self):
        self.server = self.start_server()
        self.log_events: list[dict] = []
        globalLogPublisher.addObserver(self.log_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log_events.append)
        self.client = self.connect()

    def connect(self):
        client = connect_redis(self.server.url, reactor, max_retry_delay=0.2, reply_timeout=1.0)
        self.addCleanup(client.disconnect)
        return client

    def raw(self, *args):
        return raw_command(self.server.port, *args)

    def logged(self, text: str) -> int:
        return sum(
            1
            for event in self.log_events
            if event.get("log_namespace", "").startswith(
                ("mpush.router", "mpush.store.redis_calls", "mpush.redis_status"))
            and text in event.get("log_format", "")
        )

    def wait(self, seconds):
        return task.deferLater(reactor, seconds, lambda: None)

    def eventually(self, predicate, what, step=0.05, attempts=200):
        """Let this test's time pass until C{predicate()}; a bounded number of steps."""
        return wait_until(predicate, step * attempts, step, what, sleep=self.wait)

    def eventually_succeeds(self, call):
        """Retry C{call()} until it stops failing with RouterUnavailable; bounded."""
        return until_succeeds(call, 10.0, retry_on=(RouterUnavailable,), sleep=self.wait)


class RedisRoutingContractTests(RedisRoutingTestCase, RoutingContractMixin):
    def make_router(self):
        router = RedisRemoteRouter(self.client, reactor, timeout=CALL_TIMEOUT)
        self.addCleanup(router.close)
        return router

    def make_events(self, public_ip, gateway=("10.0.0.9", 3001)):
        events = RedisUserEvents(self.client, public_ip, reactor, timeout=CALL_TIMEOUT, gateway=gateway)
        self.addCleanup(events.close)
        return events

    def make_kick_channel(self):
        channel = RedisKickChannel(
            self.server.url, reactor, timeout=CALL_TIMEOUT, max_retry_delay=0.2, ping_interval=0.5
        )
        self.addCleanup(channel.close)
        return channel

    def make_registry(self, ttl, refresh):
        registry = RedisNodeRegistry(self.client, reactor, ttl=ttl, refresh=refresh, timeout=CALL_TIMEOUT)
        self.addCleanup(registry.close)
        return registry

    def raw_hget(self, key, field):
        return self.raw("HGET", key, field)

    def raw_hset(self, key, field, value):
        self.raw("HSET", key, field, value)

    def raw_smembers(self, key):
        return set(self.raw("SMEMBERS", key))

    def raw_zmembers(self, key):
        return set(self.raw("ZRANGE", key, "0", "-1"))

    def raw_sadd(self, key, member):
        self.raw("SADD", key, member)

    def raw_get(self, key):
        return self.raw("GET", key)

    def raw_exists(self, key):
        return self.raw("EXISTS", key) == 1

    def raw_delete(self, key):
        self.raw("DEL", key)

    def raw_publish(self, channel, message):
        self.raw("PUBLISH", channel, message)

    @defer.inlineCallbacks
    def raw_subscribe(self, channels):
        factory = txredisapi.SubscriberFactory()
        factory.protocol = _Collector
        factory.messages = []
        factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port, timeout=5))
        self.addCleanup(factory.disconnect)
        yield factory.deferred
        for channel in channels:
            yield factory.pool[0].subscribe(channel)
        return factory.messages

    # -- Redis only --------------------------------------------------------
    @defer.inlineCallbacks
    def test_user_events_raw_zset(self):
        events = self.make_events("1.2.3.4")
        yield events.user_online("u1")
        self.assertEqual(self.raw("ZRANGE", "mp:oul:1.2.3.4", "0", "-1", "WITHSCORES"), [b"u1", b"0"])
        self.assertEqual(self.raw("TYPE", "mp:oul:1.2.3.4"), "zset")

    @defer.inlineCallbacks
    def test_route_hash_is_a_hash(self):
        router = self.make_router()
        yield router.register("u1", 1, location())
        self.assertEqual(self.raw("TYPE", "mp:ur:u1"), "hash")
        self.assertEqual(self.raw("HKEYS", "mp:ur:u1"), [b"1"])
        self.assertEqual(self.raw("TTL", "mp:ur:u1"), -1)

    @defer.inlineCallbacks
    def test_registry_key_has_ttl(self):
        registry = self.make_registry(10, 3)
        yield registry.register(NodeInfo(NODE_A[0], NODE_A[1], None, 3000, 1))
        ttl_ms = self.raw("PTTL", "mp:node:10.0.0.5:3001")
        self.assertTrue(0 < ttl_ms <= 10000, ttl_ms)

    @defer.inlineCallbacks
    def test_wrong_type_key_is_refused(self):
        # Something else under the route key: Redis answers, so no outage.
        self.raw("SET", "mp:ur:u1", "not a hash")
        router = self.make_router()
        yield self.assertFailure(router.lookup("u1"), RouterUnavailable)
        yield self.assertFailure(router.register("u1", 1, location()), RouterUnavailable)
        self.assertEqual(self.logged("unavailable"), 0)

    @defer.inlineCallbacks
    def test_undecodable_bytes(self):
        self.raw("HSET", "mp:ur:u1", "1", b"\xff\xfe{")
        router = self.make_router()
        self.assertEqual((yield router.lookup("u1")), {})
        self.assertIsNone((yield router.register("u1", 1, location())))

    @defer.inlineCallbacks
    def test_redis_down_then_back(self):
        router = self.make_router()
        events = self.make_events("1.2.3.4")
        yield router.register("u1", 1, location())
        self.server.kill()
        yield self.assertFailure(router.lookup("u1"), RouterUnavailable)
        yield self.assertFailure(router.register("u1", 1, location()), RouterUnavailable)
        yield self.assertFailure(router.mark_offline("u1", 1, conn_id="c1"), RouterUnavailable)
        yield self.assertFailure(router.mark_node_offline(*NODE_A), RouterUnavailable)
        yield self.assertFailure(events.user_online("u1"), RouterUnavailable)
        yield self.eventually(lambda: self.client.reachability.unreachable, "a reconnect refused")
        # One line for the shared connection, with the OS error; the
        # components say nothing more, and each failure names its call.
        self.assertEqual(self.logged("redis {address} unreachable"), 1)
        self.assertEqual(self.logged("{name} unavailable"), 0)
        failure = yield self.assertFailure(router.lookup("u1"), RouterUnavailable)
        self.assertIn(f"lookup failed: redis 127.0.0.1:{self.server.port} unreachable: connection refused",
                      str(failure))
        self.server.start()
        routes = yield self.eventually_succeeds(lambda: router.lookup("u1"))
        # The server came back empty (no persistence).
        self.assertEqual(routes, {})
        yield router.register("u1", 1, location())
        self.assertEqual(self.logged("reachable again"), 1)
        yield self.eventually_succeeds(lambda: events.user_online("u1"))
        self.assertEqual(self.raw("ZCARD", "mp:oul:1.2.3.4"), 1)

    @defer.inlineCallbacks
    def test_redis_hung(self):
        router = self.make_router()
        yield router.register("u1", 1, location())
        self.server.pause()
        self.addCleanup(self.server.resume)
        failure = yield self.assertFailure(router.lookup("u1"), RouterUnavailable)
        self.assertIn("within", str(failure))
        self.server.resume()
        routes = yield self.eventually_succeeds(lambda: router.lookup("u1"))
        self.assertEqual(list(routes), [1])

    @defer.inlineCallbacks
    def test_late_reply_ignored(self):
        # The deadline passes, then Redis answers: the caller keeps the error.
        router = self.make_router()
        yield router.register("u1", 1, location())
        self.server.pause()
        resumed = task.deferLater(reactor, CALL_TIMEOUT * 1.5, self.server.resume)
        results = []
        d = router.lookup("u1")
        d.addBoth(results.append)
        yield resumed
        yield self.wait(0.3)
        self.assertEqual(len(results), 1)
        self.assertIsInstance(results[0].value, RouterUnavailable)

    @defer.inlineCallbacks
    def test_registry_survives_outage(self):
        registry = self.make_registry(1.0, 0.3)
        yield registry.register(NodeInfo(NODE_A[0], NODE_A[1], None, 3000, 1))
        self.server.kill()
        yield self.assertFailure(registry.nodes(), RouterUnavailable)
        self.server.start()
        # The refresh loop writes the registration again once Redis is back.
        yield self.eventually(
            lambda: raw_command(self.server.port, "EXISTS", "mp:node:10.0.0.5:3001") == 1,
            "re-registered",
            step=0.1,
        )
        self.assertEqual([n.host for n in (yield registry.nodes())], [NODE_A[0]])

    @defer.inlineCallbacks
    def test_outage_longer_than_ttl_is_no_death(self):
        # Redis is cut off from every node past their TTL (a failover): each
        # key expires, yet each node is alive and writes it again once Redis
        # answers, whichever of them looks first.
        ttl, refresh = 2.0, 0.5
        proxy = RedisProxy(self.server.port).start()
        self.addCleanup(proxy.stop)
        dead = []
        registries = []
        for info in (NodeInfo(NODE_A[0], NODE_A[1], None, 3000, 1), NodeInfo("10.0.0.6", 3001, None, 3000, 2)):
            client = connect_redis(proxy.url, reactor, max_retry_delay=0.2, reply_timeout=1.0)
            self.addCleanup(client.disconnect)
            registry = RedisNodeRegistry(client, reactor, ttl=ttl, refresh=refresh, timeout=CALL_TIMEOUT)
            self.addCleanup(registry.close)
            registry.on_node_dead(dead.append)
            yield registry.register(info)
            registries.append(registry)
        keys = ("mp:node:10.0.0.5:3001", "mp:node:10.0.0.6:3001")
        proxy.blackhole()
        yield self.eventually(lambda: self.raw("EXISTS", *keys) == 0, "both expired", step=0.1)
        # What the nodes sent meanwhile is lost with their connections.
        proxy.cut()
        proxy.heal()
        yield self.eventually(lambda: self.raw("EXISTS", *keys) == 2, "both registered again", step=0.1)
        # Past the time either would have been reported.
        yield self.wait(ttl + refresh * 2)
        self.assertEqual(dead, [])
        self.assertEqual(self.raw_smembers("mp:nodes"), {b"10.0.0.5:3001", b"10.0.0.6:3001"})

    @defer.inlineCallbacks
    def test_death_confirmed_a_ttl_after_outage(self):
        # A died while Redis was out for B: B reports it, but only once its
        # own view of Redis has been sound for a full TTL.
        ttl, refresh = 2.0, 0.5
        a, b = self.make_registry(ttl, refresh), self.make_registry(ttl, refresh)
        dead = []
        b.on_node_dead(dead.append)
        yield a.register(NodeInfo(NODE_A[0], NODE_A[1], None, 3000, 1))
        yield b.register(NodeInfo("10.0.0.6", 3001, None, 3000, 2))
        yield a.close()
        self.raw_delete("mp:node:10.0.0.5:3001")
        self.server.pause()
        self.addCleanup(self.server.resume)
        yield self.assertFailure(b.nodes(), RouterUnavailable)
        failed_at = reactor.seconds()
        self.server.resume()
        self.assertEqual((yield b.check_nodes()), [])
        self.assertIn(b"10.0.0.5:3001", self.raw_smembers("mp:nodes"))
        yield self.eventually(lambda: dead, "A reported dead", step=0.1)
        self.assertGreaterEqual(reactor.seconds() - failed_at, ttl)
        self.assertEqual([(n.host, n.port) for n in dead], [NODE_A])

    @defer.inlineCallbacks
    def test_kick_survives_restart(self):
        listener, sender = self.make_kick_channel(), self.make_kick_channel()
        received = []
        yield listener.listen(NODE_A[0], NODE_A[1], received.append)
        self.server.restart()
        channel = kick_channel(*NODE_A)
        yield self.eventually(lambda: self.logged("lost its connection") == 1, "loss noticed", step=0.1)
        yield self.eventually(lambda: listener.subscriber.subscribed(channel), "resubscribed", step=0.1)
        kick = KickRequest("u1", "d", "c", 1, NODE_A[0], NODE_A[1])
        receivers = yield self.eventually_succeeds(lambda: sender.publish(kick))
        self.assertEqual(receivers, 1)
        yield self.eventually(lambda: received, "kick after restart")
        self.assertEqual(received, [kick])
        self.assertEqual(self.logged("lost its connection"), 1)
        self.assertEqual(self.logged("reconnected; resubscribing"), 1)

    @defer.inlineCallbacks
    def test_listen_while_down(self):
        self.server.kill()
        listener = self.make_kick_channel()
        received = []
        yield self.assertFailure(listener.listen(NODE_A[0], NODE_A[1], received.append), RouterUnavailable)
        self.server.start()
        channel = kick_channel(*NODE_A)
        yield self.eventually(lambda: listener.subscriber.subscribed(channel), "subscribed", step=0.1)
        self.raw("PUBLISH", channel, '{"clientType":1,"targetPort":3001,"targetServer":"10.0.0.5","userId":"u9"}')
        yield self.eventually(lambda: received, "kick")
        self.assertEqual(received[0].user_id, "u9")

    @defer.inlineCallbacks
    def test_subscriber_hung_server_reconnects(self):
        subscriber = RedisSubscriber(self.server.url, reactor, timeout=0.3, max_retry_delay=0.2, ping_interval=0.2)
        self.addCleanup(subscriber.close)
        messages = []
        yield subscriber.subscribe("/chan", messages.append)
        self.server.pause()
        self.addCleanup(self.server.resume)
        yield self.eventually(lambda: self.logged("did not answer PING") >= 1, "hang noticed", step=0.1)
        self.assertFalse(subscriber.subscribed("/chan"))
        self.server.resume()
        yield self.eventually(lambda: subscriber.subscribed("/chan"), "resubscribed", step=0.1)
        self.raw("PUBLISH", "/chan", "hello")
        yield self.eventually(lambda: messages, "message")
        self.assertEqual(messages, ["hello"])

    @defer.inlineCallbacks
    def test_subscriber_bad_input_and_close(self):
        subscriber = RedisSubscriber(self.server.url, reactor, timeout=CALL_TIMEOUT, max_retry_delay=0.2)
        yield self.assertFailure(subscriber.subscribe("", print), TypeError)
        yield self.assertFailure(subscriber.subscribe("/c", "x"), TypeError)
        yield subscriber.close()
        yield subscriber.close()
        yield self.assertFailure(subscriber.subscribe("/c", print), RouterUnavailable)
        self.assertRaises(ValueError, RedisSubscriber, self.server.url, reactor, timeout=0)

    @defer.inlineCallbacks
    def test_mark_offline_loses_race_to_rebind(self):
        # Another node re-binds the user between our read and our write: the
        # compare-and-set notices, re-reads, and leaves the new route alone.
        router = self.make_router()
        yield router.register("u1", 1, location(conn_id="old"))
        rebound = b'{"port":3001,"host":"10.0.0.6","deviceId":"dev-1","osName":"android","connId":"new"}'
        racing = _RaceBeforeEval(self.client.redis, lambda: self.raw("HSET", "mp:ur:u1", "1", rebound))
        raced_router = RedisRemoteRouter(racing, reactor, timeout=CALL_TIMEOUT)
        self.addCleanup(raced_router.close)
        self.assertFalse((yield raced_router.mark_offline("u1", 1, conn_id="old")))
        self.assertEqual(racing.raced, 1)
        self.assertEqual(self.raw("HGET", "mp:ur:u1", "1"), rebound)

    @defer.inlineCallbacks
    def test_mark_offline_retries_after_unrelated_change(self):
        # The route changed but is still ours (a client version rewrite): the
        # retry marks it offline.
        router = self.make_router()
        yield router.register("u1", 1, location(conn_id="c1"))
        changed = b'{"port":3001,"host":"10.0.0.5","deviceId":"dev-1","clientVersion":"3.0","connId":"c1"}'
        racing = _RaceBeforeEval(self.client.redis, lambda: self.raw("HSET", "mp:ur:u1", "1", changed))
        raced_router = RedisRemoteRouter(racing, reactor, timeout=CALL_TIMEOUT)
        self.addCleanup(raced_router.close)
        self.assertTrue((yield raced_router.mark_offline("u1", 1, conn_id="c1")))
        self.assertEqual(
            self.raw("HGET", "mp:ur:u1", "1"),
            b'{"port":3001,"host":"10.0.0.5","deviceId":"dev-1","clientVersion":"3.0"}',
        )

    @defer.inlineCallbacks
    def test_closed_fails_pending(self):
        router = self.make_router()
        self.server.pause()
        self.addCleanup(self.server.resume)
        pending = router.lookup("u1")
        yield router.close()
        yield self.assertFailure(pending, RouterUnavailable)

    def test_bounded_redis_rejects_bad_timeout(self):
        self.assertRaises(ValueError, BoundedRedis, self.client, reactor, 0, "x", RouterUnavailable)
        self.assertRaises(ValueError, RedisRemoteRouter, self.client, reactor, timeout=-1)
        self.assertRaises(ValueError, RedisNodeRegistry, self.client, reactor, ttl=1, refresh=2)

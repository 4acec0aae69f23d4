"""
RedisSessionStore against a real redis-server: MPush's exact key and value,
interplay with values a Java node wrote, and outages (down, hung, restarted).
"""

from __future__ import annotations

import socket
import unittest

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mpush.protocol.session import InvalidSession, ReusableSession
from mpush.store.interfaces import ISessionStore, StoreUnavailable
from mpush.store.redis import KEY_PREFIX, RedisSessionStore, session_key
from mpush.store.redis_connection import (
    InvalidRedisUrl,
    RedisAddress,
    RedisClient,
    connect_redis,
    parse_redis_url,
)
from tests import redis_server as redis_server_module
from tests.polling import wait_until
from tests.redis_server import RedisServer, RedisServerError, find_redis_server, start_redis_server

SESSION = ReusableSession(
    os_name="android",
    os_version="6.0",
    client_version="2.0",
    device_id="dev-1",
    session_key=bytes.fromhex("f0e0d0c0b0a090807060504030201000"),
    iv=bytes(range(16)),
)
SPEC_VALUE = (
    "android,6.0,2.0,dev-1,"
    "-16|-32|-48|-64|-80|-96|-112|-128|112|96|80|64|48|32|16|0,"
    "0|1|2|3|4|5|6|7|8|9|10|11|12|13|14|15"
)

# A store call must answer within this on the reactor clock.
STORE_TIMEOUT = 0.5


def raw_command(port: int, *args: str | bytes, db: int = 0) -> object:
    """
    One command on a fresh plain socket, like a Java node or redis-cli would
    send it: what is really in Redis, with no txredisapi in between.
    """
    commands = ([("SELECT", str(db))] if db else []) + [args]
    payload = b""
    for command in commands:
        parts = [a if isinstance(a, bytes) else a.encode("utf-8") for a in command]
        payload += b"*%d\r\n" % len(parts)
        for part in parts:
            payload += b"$%d\r\n%s\r\n" % (len(part), part)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        reader = s.makefile("rb")
        reply = None
        for _ in commands:
            reply = _read_reply(reader)
        return reply


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
        data = reader.read(length + 2)
        return data[:-2]
    raise AssertionError(f"unexpected reply {line!r}")


class RedisUrlTests(SynchronousTestCase):
    def test_full(self):
        self.assertEqual(
            parse_redis_url("redis://:s%40cret@10.0.0.5:6380/3"),
            RedisAddress("10.0.0.5", 6380, 3, "s@cret", None),
        )

    def test_defaults(self):
        self.assertEqual(parse_redis_url("redis://localhost"), RedisAddress("localhost"))
        self.assertEqual(parse_redis_url("redis://localhost:7000/"), RedisAddress("localhost", 7000))

    def test_user_and_ipv6(self):
        address = parse_redis_url("redis://alice:pw@[::1]:6379/0")
        self.assertEqual((address.host, address.username, address.password), ("::1", "alice", "pw"))

    def test_password_not_in_repr(self):
        self.assertNotIn("hunter2", repr(parse_redis_url("redis://:hunter2@h:1/0")))

    def test_invalid(self):
        for bad in (
            "http://localhost:6379/0",
            "localhost:6379",
            "redis://",
            "redis://:6379/0",
            "redis://host:notaport/0",
            "redis://host:99999/0",
            "redis://host:6379/db",
            "redis://host:6379/-1",
            "redis://host:6379/0?timeout=1",
            "",
        ):
            with self.assertRaises(InvalidRedisUrl, msg=bad):
                parse_redis_url(bad)
        self.assertRaises(InvalidRedisUrl, parse_redis_url, None)

    def test_invalid_url_error_hides_password(self):
        try:
            parse_redis_url("rediss://:hunter2@host:6379/0")
        except InvalidRedisUrl as e:
            self.assertNotIn("hunter2", str(e))
        else:
            self.fail("rediss:// accepted")

    def test_bad_options(self):
        self.assertRaises(ValueError, connect_redis, "redis://h/0", poolsize=0)
        self.assertRaises(ValueError, connect_redis, "redis://h/0", reply_timeout=0)
        self.assertRaises(ValueError, connect_redis, "redis://h/0", max_retry_delay=0)


class RedisStoreTestCase(TestCase):
    """A fresh redis-server per test, and a client on it closed at cleanup."""

    # No test may hang: trial fails it after this many seconds.
    timeout = 60

    def start_server(self):
        """The Redis under test: a server of this test's own (a sentinel set in a variant)."""
        return start_redis_server(self)

    def setUp(self):
        self.server = self.start_server()
        self.log_events: list[dict] = []
        globalLogPublisher.addObserver(self.log_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log_events.append)

    def connect(self, url: str | None = None, **options) -> RedisClient:
        options.setdefault("max_retry_delay", 0.2)
        client = connect_redis(url or self.server.url, **options)
        self.addCleanup(client.disconnect)
        return client

    def make_store(self, client: RedisClient | None = None, **options) -> RedisSessionStore:
        options.setdefault("timeout", STORE_TIMEOUT)
        store = RedisSessionStore(client or self.connect(), reactor, **options)
        self.addCleanup(store.close)
        return store

    def logged(self, text: str) -> int:
        return sum(
            1
            for event in self.log_events
            if event.get("log_namespace", "").startswith(("mpush.store.redis", "mpush.redis_status"))
            and text in formatEvent(event)
        )

    def until_unreachable(self, store):
        """Until the store's connection has seen a reconnect refused."""
        return wait_until(
            lambda: store._calls.client.reachability.unreachable, what="the connection finding Redis unreachable"
        )

    @defer.inlineCallbacks
    def eventually_loads(self, store, session_id, attempts=100, pause=0.1):
        """Poll until a load succeeds; a bounded number of tries."""
        last = None
        for _ in range(attempts):
            try:
                result = yield store.load(session_id)
            except StoreUnavailable as e:
                last = e
                yield task.deferLater(reactor, pause, lambda: None)
            else:
                return result
        self.fail(f"store never recovered: {last}")


class RedisSessionStoreTests(RedisStoreTestCase):
    def test_provides_interface(self):
        self.assertTrue(verifyObject(ISessionStore, self.make_store()))

    @defer.inlineCallbacks
    def test_round_trip(self):
        store = self.make_store()
        saved = yield store.save("0123456789abcdef0123456789abcdef", SESSION, 100)
        self.assertIsNone(saved)
        loaded = yield store.load("0123456789abcdef0123456789abcdef")
        self.assertEqual(loaded, SESSION)

    @defer.inlineCallbacks
    def test_missing(self):
        store = self.make_store()
        self.assertIsNone((yield store.load("nobody")))
        self.assertIsNone((yield store.load("")))

    @defer.inlineCallbacks
    def test_raw_value_is_mpush_string_with_ttl(self):
        store = self.make_store()
        yield store.save("bc2af56ed518246b3a5b52e4d72483a4", SESSION, 86400)
        key = "mp:rs:bc2af56ed518246b3a5b52e4d72483a4"
        self.assertEqual(session_key("bc2af56ed518246b3a5b52e4d72483a4"), key)
        self.assertEqual(raw_command(self.server.port, "GET", key), SPEC_VALUE.encode())
        self.assertEqual(raw_command(self.server.port, "TYPE", key), "string")
        ttl = raw_command(self.server.port, "TTL", key)
        self.assertTrue(86390 <= ttl <= 86400, ttl)

    @defer.inlineCallbacks
    def test_no_expiry_when_ttl_not_positive(self):
        store = self.make_store()
        yield store.save("zero", SESSION, 0)
        yield store.save("negative", SESSION, -5)
        self.assertEqual(raw_command(self.server.port, "TTL", KEY_PREFIX + "zero"), -1)
        self.assertEqual(raw_command(self.server.port, "TTL", KEY_PREFIX + "negative"), -1)

    @defer.inlineCallbacks
    def test_rewrite_drops_old_ttl(self):
        store = self.make_store()
        yield store.save("s", SESSION, 50)
        yield store.save("s", SESSION, 0)
        self.assertEqual(raw_command(self.server.port, "TTL", KEY_PREFIX + "s"), -1)

    @defer.inlineCallbacks
    def test_expired_by_redis(self):
        store = self.make_store()
        yield store.save("short", SESSION, 1)
        raw_command(self.server.port, "PEXPIRE", KEY_PREFIX + "short", "1")
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertIsNone((yield store.load("short")))

    @defer.inlineCallbacks
    def test_value_written_by_java_node_loads(self):
        raw_command(
            self.server.port,
            "SET",
            "mp:rs:x",
            "null,null,null,py-vector-device,"
            "-6|-82|95|-20|-102|-35|65|113|-83|-83|-23|-23|-83|-83|97|97,"
            "1|2|3|4|5|6|7|8|9|10|11|12|13|14|15|16",
        )
        loaded = yield self.make_store().load("x")
        self.assertEqual(
            loaded,
            ReusableSession(
                None,
                None,
                None,
                "py-vector-device",
                bytes.fromhex("faae5fec9add4171adade9e9adad6161"),
                bytes.fromhex("0102030405060708090a0b0c0d0e0f10"),
            ),
        )

    @defer.inlineCallbacks
    def test_garbage_blank_and_wrong_type_read_as_none(self):
        port = self.server.port
        raw_command(port, "SET", "mp:rs:garbage", "not,a,session")
        raw_command(port, "SET", "mp:rs:seven", SPEC_VALUE + ",extra")
        raw_command(port, "SET", "mp:rs:blank", "   ")
        raw_command(port, "SET", "mp:rs:empty", "")
        raw_command(port, "SET", "mp:rs:binary", b"\xff\xfe\x00,,,,,")
        raw_command(port, "SET", "mp:rs:number", "123")
        raw_command(port, "HSET", "mp:rs:hash", "f", "v")
        store = self.make_store()
        for name in ("garbage", "seven", "blank", "empty", "binary", "number", "hash"):
            self.assertIsNone((yield store.load(name)), name)
        # Redis answered every time: that is no outage.
        self.assertEqual(self.logged("unavailable"), 0)

    @defer.inlineCallbacks
    def test_numeric_looking_strings_stay_strings(self):
        client = self.connect()
        for value in ("123", "1.50", "-0", "007", "1e5"):
            yield client.redis.set("plain", value)
            got = yield client.redis.get("plain")
            self.assertEqual((got, type(got)), (value, str))
        session = ReusableSession("123", "4.5", "6", "007", SESSION.session_key, SESSION.iv)
        store = self.make_store(client)
        yield store.save("numbers", session, 10)
        self.assertEqual((yield store.load("numbers")), session)

    @defer.inlineCallbacks
    def test_many_concurrent_calls(self):
        store = self.make_store()
        ids = [f"s{i}" for i in range(300)]
        yield defer.gatherResults([store.save(i, SESSION, 60) for i in ids])
        loaded = yield defer.gatherResults([store.load(i) for i in ids])
        self.assertEqual(loaded, [SESSION] * len(ids))

    @defer.inlineCallbacks
    def test_selected_db(self):
        url = f"redis://127.0.0.1:{self.server.port}/3"
        store = self.make_store(self.connect(url))
        yield store.save("in3", SESSION, 60)
        self.assertIsNone(raw_command(self.server.port, "GET", "mp:rs:in3"))
        self.assertEqual(raw_command(self.server.port, "GET", "mp:rs:in3", db=3), SPEC_VALUE.encode())

    @defer.inlineCallbacks
    def test_bad_arguments(self):
        store = self.make_store()
        yield self.assertFailure(store.save("s", SESSION, 1.5), TypeError)
        yield self.assertFailure(store.save("", SESSION, 1), ValueError)
        yield self.assertFailure(store.save(None, SESSION, 1), TypeError)
        bad = ReusableSession("a,b", None, None, "d", SESSION.session_key, SESSION.iv)
        yield self.assertFailure(store.save("s", bad, 1), InvalidSession)
        yield self.assertFailure(store.load(None), TypeError)
        self.assertIsNone(raw_command(self.server.port, "GET", "mp:rs:s"))
        self.assertRaises(ValueError, RedisSessionStore, self.connect(), reactor, timeout=0)

    @defer.inlineCallbacks
    def test_closed_store(self):
        store = self.make_store()
        yield store.close()
        yield store.close()
        yield self.assertFailure(store.load("s"), StoreUnavailable)
        yield self.assertFailure(store.save("s", SESSION, 1), StoreUnavailable)

    @defer.inlineCallbacks
    def test_bare_txredisapi_handler(self):
        client = self.connect()
        store = self.make_store(client.redis, close_connection=False)
        yield store.save("bare", SESSION, 60)
        self.assertEqual((yield store.load("bare")), SESSION)


class RedisOutageTests(RedisStoreTestCase):
    @defer.inlineCallbacks
    def test_killed_then_restarted(self):
        store = self.make_store()
        yield store.save("before", SESSION, 600)
        self.server.kill()
        # Each call answers (no hang) with a typed error.
        for _ in range(3):
            yield self.assertFailure(store.load("before"), StoreUnavailable)
        yield self.assertFailure(store.save("during", SESSION, 60), StoreUnavailable)
        # Said once, by the connection, with the OS error.
        yield self.until_unreachable(store)
        self.assertEqual(self.logged("unreachable: connection refused (ECONNREFUSED)"), 1)
        self.assertEqual(self.logged("redis session store unavailable"), 0)
        self.assertEqual(self.logged("reachable again"), 0)

        self.server.restart()
        # A new, empty server on the same port; the same store reconnects.
        self.assertIsNone((yield self.eventually_loads(store, "before")))
        yield store.save("after", SESSION, 60)
        self.assertEqual((yield store.load("after")), SESSION)
        self.assertEqual(self.logged("reachable again"), 1)

        # A second outage is logged again, once.
        self.server.kill()
        for _ in range(2):
            yield self.assertFailure(store.load("after"), StoreUnavailable)
        yield self.until_unreachable(store)
        self.assertEqual(self.logged("unreachable"), 2)

    @defer.inlineCallbacks
    def test_outage_fails_fast_once_known(self):
        client = self.connect()
        store = self.make_store(client)
        yield store.save("s", SESSION, 60)
        self.server.kill()
        for _ in range(100):
            if not client.connected:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertFalse(client.connected)
        for _ in range(100):
            if client.reachability.unreachable:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        # A reconnect was refused: answered at once, naming the call.
        error = self.failureResultOf(store.load("s"), StoreUnavailable).value
        self.assertIn(f"load failed: redis 127.0.0.1:{self.server.port} unreachable: connection refused", str(error))
        self.failureResultOf(store.save("s", SESSION, 60), StoreUnavailable)
        self.assertEqual(self.logged("unreachable"), 1)

    @defer.inlineCallbacks
    def test_down_from_the_start(self):
        self.server.kill()
        store = self.make_store()
        error = yield self.assertFailure(store.load("s"), StoreUnavailable)
        self.assertIn("load", str(error))
        yield self.until_unreachable(store)
        self.assertEqual(self.logged("unreachable"), 1)
        self.server.start()
        self.assertIsNone((yield self.eventually_loads(store, "s")))
        self.assertEqual(self.logged("reachable again"), 1)

    @defer.inlineCallbacks
    def test_hung_redis_times_out_and_late_replies_are_dropped(self):
        # Connection-level reply timeout longer than the store's deadline,
        # so the store's own deadline is what answers first.
        client = self.connect(reply_timeout=3.0)
        store = self.make_store(client)
        yield store.save("s", SESSION, 600)
        self.server.pause()
        try:
            error = yield self.assertFailure(store.load("s"), StoreUnavailable)
            self.assertIn("no answer to load", str(error))
            yield self.assertFailure(store.save("t", SESSION, 600), StoreUnavailable)
        finally:
            self.server.resume()
        # The queued GET and SET now get their replies, after their
        # deadlines; they are dropped and the store carries on.
        self.assertEqual((yield self.eventually_loads(store, "s")), SESSION)
        self.assertEqual(self.logged("redis session store unavailable"), 1)
        self.assertEqual(self.logged("recovered"), 1)

    @defer.inlineCallbacks
    def test_hung_connection_is_replaced(self):
        # With a short reply timeout, txredisapi aborts the connection to a
        # hung server and the pool reconnects once Redis answers again.
        client = self.connect(reply_timeout=0.3, poolsize=1)
        store = self.make_store(client, timeout=1.0)
        yield store.save("s", SESSION, 600)
        self.server.pause()
        try:
            yield self.assertFailure(store.load("s"), StoreUnavailable)
        finally:
            self.server.resume()
        self.assertEqual((yield self.eventually_loads(store, "s")), SESSION)

    @defer.inlineCallbacks
    def test_wrong_password_is_an_outage_not_a_crash(self):
        self.server.stop()
        self.server = start_redis_server(self, extra_args=("--requirepass", "right"))
        good = self.make_store(self.connect(f"redis://:right@127.0.0.1:{self.server.port}/0"))
        yield good.save("s", SESSION, 60)
        self.assertEqual((yield good.load("s")), SESSION)
        bad = self.make_store(self.connect(f"redis://:wrong@127.0.0.1:{self.server.port}/0"))
        yield self.assertFailure(bad.load("s"), StoreUnavailable)

    @defer.inlineCallbacks
    def test_close_during_outage_answers_pending_calls(self):
        self.server.kill()
        store = self.make_store()
        pending = store.load("s")
        self.assertNoResult(pending)
        yield store.close()
        yield self.assertFailure(pending, StoreUnavailable)


class RedisServerFixtureTests(SynchronousTestCase):
    def test_lifecycle(self):
        server = RedisServer()
        self.addCleanup(server.stop)
        server.start()
        port = server.port
        self.assertEqual(server.url, f"redis://127.0.0.1:{port}/0")
        self.assertEqual(raw_command(port, "PING"), "PONG")
        raw_command(port, "SET", "k", "v")
        server.restart()
        self.assertEqual(server.port, port)
        # No persistence: a restart starts empty.
        self.assertIsNone(raw_command(port, "GET", "k"))
        server.kill()
        self.assertFalse(server.running)
        self.assertRaises(OSError, socket.create_connection, ("127.0.0.1", port), 1)
        server.stop()
        server.stop()

    def _without_redis_server(self, ci):
        self.patch(redis_server_module.shutil, "which", lambda name: None)
        self.patch(redis_server_module.os, "access", lambda path, mode: False)
        environ = dict(redis_server_module.os.environ)
        environ.pop("CI", None)
        if ci:
            environ["CI"] = "true"
        self.patch(redis_server_module.os, "environ", environ)

    def test_missing_binary_fails_in_ci(self):
        self._without_redis_server(ci=True)
        error = self.assertRaises(RedisServerError, find_redis_server)
        self.assertIn(".ci/run", str(error))

    def test_missing_binary_skips_elsewhere(self):
        self._without_redis_server(ci=False)
        skip = self.assertRaises(unittest.SkipTest, find_redis_server)
        self.assertIn("apt-get install -y redis-server", str(skip))

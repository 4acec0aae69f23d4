"""
The offline store contract, run against the in-memory store and against a
real redis-server (raw keys checked with plain Redis commands), plus what
only one of them has: the memory sweep, Redis outages and TTLs, and the
message type's own checks.
"""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mpush.offline.interfaces import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_COUNT,
    STAT_NAMES,
    AddResult,
    IOfflineStore,
    InvalidOfflineMessage,
    OfflineCounters,
    OfflineInputError,
    OfflineMessage,
    OfflineStoreUnavailable,
    new_offline_message,
)
from mpush.offline.memory import MemoryOfflineStore

from tests.polling import until_succeeds, wait_until

#: A realistic wall-clock "now" in milliseconds.
T0 = 1_790_000_000_000
TTL = 60_000
LEASE = 30_000


def message(n, size=None, ack="none", created=T0, ttl=TTL, content=None) -> OfflineMessage:
    if content is None:
        content = (b"m%d-" % n).ljust(size or 8, b".")
    return OfflineMessage(f"id-{n}", content, ack, created, created + ttl)


def ids(messages) -> list[str]:
    return [m.message_id for m in messages]


class OfflineStoreContractMixin:
    """
    What every L{IOfflineStore} must do.  A concrete class provides
    C{make_store(max_count, max_bytes)}; each call is another "node" on the
    same backend.
    """

    def make_store(self, max_count=DEFAULT_MAX_COUNT, max_bytes=DEFAULT_MAX_BYTES) -> IOfflineStore:
        raise NotImplementedError

    @defer.inlineCallbacks
    def add_all(self, store, user_id, messages):
        results = []
        for m in messages:
            results.append((yield store.add(user_id, m)))
        return results

    def test_provides_interface(self):
        self.assertTrue(verifyObject(IOfflineStore, self.make_store()))

    @defer.inlineCallbacks
    def test_round_trip_in_order(self):
        store = self.make_store()
        sent = [
            message(1, ack="none", content=b"\x00\xff binary \r\n"),
            message(2, ack="auto", content="héllo ✓".encode("utf-8")),
            message(3, ack="biz", content=b""),
        ]
        results = yield self.add_all(store, "alice", sent)
        self.assertEqual(results, [AddResult(True, 0)] * 3)
        self.assertEqual((yield store.count("alice")), 3)
        claimed = yield store.claim("alice", "conn-a", LEASE, T0 + 1)
        self.assertEqual(claimed, sent)
        self.assertEqual(store.stats()["stored"], 3)

    @defer.inlineCallbacks
    def test_users_are_separate(self):
        store = self.make_store(max_count=1)
        yield store.add("alice", message(1))
        yield store.add("bob", message(2))
        self.assertEqual(ids((yield store.claim("alice", "c", LEASE, T0))), ["id-1"])
        self.assertEqual(ids((yield store.claim("bob", "c", LEASE, T0))), ["id-2"])
        self.assertEqual((yield store.claim("carol", "c", LEASE, T0)), [])
        self.assertEqual((yield store.count("carol")), 0)

    @defer.inlineCallbacks
    def test_count_bound_drops_oldest(self):
        store = self.make_store(max_count=3)
        results = yield self.add_all(store, "alice", [message(n) for n in range(1, 6)])
        self.assertEqual([r.dropped for r in results], [0, 0, 0, 1, 1])
        self.assertTrue(all(r.stored for r in results))
        self.assertEqual((yield store.count("alice")), 3)
        self.assertEqual(ids((yield store.claim("alice", "c", LEASE, T0))), ["id-3", "id-4", "id-5"])
        self.assertEqual(store.stats()["dropped_full"], 2)
        self.assertEqual(store.stats()["stored"], 5)

    @defer.inlineCallbacks
    def test_byte_bound_drops_oldest(self):
        store = self.make_store(max_bytes=10)
        first = yield self.add_all(store, "alice", [message(n, size=4) for n in (1, 2, 3)])
        self.assertEqual([r.dropped for r in first], [0, 0, 1])
        # Exactly the bound: everything older goes.
        full = yield store.add("alice", message(4, size=10))
        self.assertEqual(full, AddResult(True, 2))
        self.assertEqual(ids((yield store.claim("alice", "c", LEASE, T0))), ["id-4"])
        self.assertEqual(store.stats()["dropped_full"], 3)

    @defer.inlineCallbacks
    def test_too_large_refused(self):
        store = self.make_store(max_bytes=10)
        yield store.add("alice", message(1, size=5))
        result = yield store.add("alice", message(2, size=11))
        self.assertEqual(result, AddResult(False, 0))
        self.assertEqual(ids((yield store.claim("alice", "c", LEASE, T0))), ["id-1"])
        stats = store.stats()
        self.assertEqual((stats["refused_too_large"], stats["stored"], stats["dropped_full"]), (1, 1, 0))

    @defer.inlineCallbacks
    def test_duplicate_id_is_idempotent(self):
        store = self.make_store()
        yield store.add("alice", message(1, content=b"first"))
        again = yield store.add("alice", message(1, content=b"second"))
        self.assertEqual(again, AddResult(True, 0))
        [only] = yield store.claim("alice", "c", LEASE, T0)
        self.assertEqual(only.content, b"first")
        self.assertEqual(store.stats()["stored"], 1)

    @defer.inlineCallbacks
    def test_expired_removed_on_claim_and_counted(self):
        store = self.make_store()
        yield store.add("alice", message(1, ttl=1000))
        yield store.add("alice", message(2, ttl=5000))
        yield store.add("alice", message(3, ttl=1000))
        # expires_ms is the first instant it is gone.
        claimed = yield store.claim("alice", "c", LEASE, T0 + 1000)
        self.assertEqual(ids(claimed), ["id-2"])
        self.assertEqual(store.stats()["expired"], 2)
        self.assertEqual((yield store.count("alice")), 1)

    @defer.inlineCallbacks
    def test_expired_purged_on_add_before_dropping(self):
        store = self.make_store(max_count=2)
        yield store.add("alice", message(1, ttl=1000))
        yield store.add("alice", message(2))
        # id-1 is dead by now: it makes the room, id-2 survives.
        result = yield store.add("alice", message(3, created=T0 + 2000))
        self.assertEqual(result, AddResult(True, 0))
        self.assertEqual(ids((yield store.claim("alice", "c", LEASE, T0 + 2000))), ["id-2", "id-3"])
        stats = store.stats()
        self.assertEqual((stats["expired"], stats["dropped_full"]), (1, 0))

    @defer.inlineCallbacks
    def test_claim_once_then_after_the_lease(self):
        store = self.make_store()
        other = self.make_store()
        yield self.add_all(store, "alice", [message(1), message(2)])
        first = yield store.claim("alice", "conn-a", LEASE, T0)
        self.assertEqual(ids(first), ["id-1", "id-2"])
        # Another connection, on this node or another, gets nothing...
        self.assertEqual((yield other.claim("alice", "conn-b", LEASE, T0 + 1)), [])
        self.assertEqual((yield store.claim("alice", "conn-b", LEASE, T0 + LEASE - 1)), [])
        # ...nor does the owner: those messages are in flight already.
        self.assertEqual((yield store.claim("alice", "conn-a", LEASE, T0 + 2)), [])
        # A message added meanwhile is free.
        yield store.add("alice", message(3, created=T0 + 3))
        self.assertEqual(ids((yield other.claim("alice", "conn-b", LEASE, T0 + 4))), ["id-3"])
        # The lease of id-1 and id-2 ends: claimable again, in order.
        again = yield other.claim("alice", "conn-c", LEASE, T0 + LEASE)
        self.assertEqual(ids(again), ["id-1", "id-2"])

    @defer.inlineCallbacks
    def test_expired_claimed_message_left_to_its_lease(self):
        store = self.make_store()
        yield store.add("alice", message(1, ttl=1000))
        yield store.claim("alice", "conn-a", LEASE, T0)
        # Expired while being delivered: its ack (or lease) decides, not a claimer.
        self.assertEqual((yield store.claim("alice", "conn-b", LEASE, T0 + 2000)), [])
        self.assertEqual((yield store.count("alice")), 1)
        self.assertTrue((yield store.remove("alice", "id-1")))
        self.assertEqual(store.stats()["expired"], 0)
        # Never acked: gone once the lease ends.
        yield store.add("bob", message(2, ttl=1000))
        yield store.claim("bob", "conn-a", LEASE, T0)
        self.assertEqual((yield store.claim("bob", "conn-b", LEASE, T0 + LEASE)), [])
        self.assertEqual((yield store.count("bob")), 0)
        self.assertEqual(store.stats()["expired"], 1)

    @defer.inlineCallbacks
    def test_remove(self):
        store = self.make_store()
        yield self.add_all(store, "alice", [message(1), message(2)])
        yield store.claim("alice", "conn-a", LEASE, T0)
        self.assertTrue((yield store.remove("alice", "id-1")))
        self.assertFalse((yield store.remove("alice", "id-1")))
        self.assertFalse((yield store.remove("bob", "id-2")))
        self.assertEqual((yield store.count("alice")), 1)
        self.assertTrue((yield store.remove("alice", "id-2")))
        self.assertEqual((yield store.count("alice")), 0)
        self.assertEqual(store.stats()["delivered"], 2)
        # An emptied queue takes new messages as before.
        yield store.add("alice", message(3))
        self.assertEqual(ids((yield store.claim("alice", "conn-b", LEASE, T0))), ["id-3"])

    @defer.inlineCallbacks
    def test_release(self):
        store = self.make_store()
        yield self.add_all(store, "alice", [message(1), message(2), message(3)])
        yield store.claim("alice", "conn-a", LEASE, T0)
        # Someone else's release does nothing.
        self.assertEqual((yield store.release("alice", "conn-b")), 0)
        self.assertEqual((yield store.claim("alice", "conn-b", LEASE, T0 + 1)), [])
        self.assertEqual((yield store.release("alice", "conn-a")), 3)
        self.assertEqual(ids((yield store.claim("alice", "conn-b", LEASE, T0 + 2))), ["id-1", "id-2", "id-3"])
        self.assertEqual((yield store.release("nobody", "conn-b")), 0)

    @defer.inlineCallbacks
    def test_release_some(self):
        store = self.make_store()
        yield self.add_all(store, "alice", [message(1), message(2), message(3)])
        yield store.claim("alice", "conn-a", LEASE, T0)
        self.assertEqual((yield store.release("alice", "conn-a", ["id-2", "id-3", "id-9"])), 2)
        self.assertEqual((yield store.release("alice", "conn-a", [])), 0)
        self.assertEqual(ids((yield store.claim("alice", "conn-b", LEASE, T0 + 1))), ["id-2", "id-3"])

    @defer.inlineCallbacks
    def test_bad_arguments_are_typed_errors(self):
        store = self.make_store()
        for call in (
            lambda: store.add("", message(1)),
            lambda: store.add(None, message(1)),
            lambda: store.add("alice", "not a message"),
            lambda: store.add("\ud800", message(1)),
            lambda: store.add("x" * 257, message(1)),
            lambda: store.claim("alice", "", LEASE, T0),
            lambda: store.claim("alice", "c", 0, T0),
            lambda: store.claim("alice", "c", True, T0),
            lambda: store.claim("alice", "c", LEASE, -1),
            lambda: store.claim("alice", "c", LEASE, 1.5),
            lambda: store.claim(7, "c", LEASE, T0),
            lambda: store.remove("alice", ""),
            lambda: store.remove("alice", None),
            lambda: store.release("alice", None),
            lambda: store.release("alice", "c", "id-1"),
            lambda: store.release("alice", "c", [""]),
            lambda: store.release("alice", "c", 5),
            lambda: store.count(b"alice"),
        ):
            yield self.assertFailure(call(), OfflineInputError)
        # Nothing was stored or counted by any of them.
        self.assertEqual(store.stats(), dict.fromkeys(STAT_NAMES, 0))

    def test_bad_limits(self):
        for bad in (0, -1, True, 1.5, "10"):
            self.assertRaises(ValueError, self.make_store, max_count=bad)
            self.assertRaises(ValueError, self.make_store, max_bytes=bad)

    @defer.inlineCallbacks
    def test_closed(self):
        store = self.make_store()
        yield store.add("alice", message(1))
        yield store.close()
        yield self.assertFailure(store.add("alice", message(2)), OfflineStoreUnavailable)
        yield self.assertFailure(store.add("alice", message(3, size=DEFAULT_MAX_BYTES + 1)), OfflineStoreUnavailable)
        yield self.assertFailure(store.claim("alice", "c", LEASE, T0), OfflineStoreUnavailable)
        yield self.assertFailure(store.remove("alice", "id-1"), OfflineStoreUnavailable)
        yield self.assertFailure(store.release("alice", "c"), OfflineStoreUnavailable)
        yield self.assertFailure(store.release("alice", "c", []), OfflineStoreUnavailable)
        yield self.assertFailure(store.count("alice"), OfflineStoreUnavailable)

    @defer.inlineCallbacks
    def test_listener_sees_every_increment(self):
        seen = []
        store = self.make_store(max_count=1)
        store.counters.listener = lambda name, n: seen.append((name, n))
        yield store.add("alice", message(1))
        yield store.add("alice", message(2))
        yield store.remove("alice", "id-2")
        self.assertEqual(
            seen, [("stored", 1), ("stored", 1), ("dropped_full", 1), ("delivered", 1)]
        )


class MemoryOfflineStoreTests(OfflineStoreContractMixin, TestCase):
    def make_store(self, max_count=DEFAULT_MAX_COUNT, max_bytes=DEFAULT_MAX_BYTES):
        # Every "node" of the memory store is this one process.
        if not hasattr(self, "_store"):
            self._store = MemoryOfflineStore(max_count, max_bytes)
            return self._store
        if (max_count, max_bytes) != (self._store.max_count, self._store.max_bytes):
            return MemoryOfflineStore(max_count, max_bytes)
        return self._store

    def test_sweep_forgets_abandoned_queues(self):
        store = MemoryOfflineStore()
        store.add("alice", message(1, ttl=1000))
        store.add("bob", message(2, ttl=1000))
        store.add("bob", message(3, ttl=9000))
        store.add("carol", message(4, ttl=1000))
        store.claim("carol", "conn-a", LEASE, T0)
        self.assertEqual(store.queued(), 4)
        self.assertEqual(store.sweep(T0 + 1000), 2)
        # carol's message is leased: left to its delivery.
        self.assertEqual((store.users(), store.queued()), (2, 2))
        self.assertEqual(store.stats()["expired"], 2)
        self.assertEqual(self.successResultOf(store.count("bob")), 1)
        self.assertEqual(store.sweep(T0 + LEASE), 2)
        self.assertEqual((store.users(), store.queued()), (0, 0))
        self.assertRaises(OfflineInputError, store.sweep, "now")

    def test_listener_errors_do_not_break_the_store(self):
        def broken(name, count):
            raise RuntimeError("metrics down")

        store = MemoryOfflineStore(listener=broken)
        self.assertEqual(self.successResultOf(store.add("alice", message(1))), AddResult(True, 0))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(store.stats()["stored"], 1)


class MemoryStoreModelTests(SynchronousTestCase):
    """
    Any sequence of adds, claims, removes and releases keeps the bounds and
    the order, and agrees with a plain list model.
    """

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("add"), st.integers(0, 12), st.integers(1, 4000)),
                st.tuples(st.just("claim"), st.sampled_from(["a", "b"]), st.integers(0, 4000)),
                st.tuples(st.just("remove"), st.integers(0, 30), st.just(0)),
                st.tuples(st.just("release"), st.sampled_from(["a", "b"]), st.just(0)),
            ),
            max_size=40,
        )
    )
    def test_model(self, operations):
        max_count, max_bytes = 4, 30
        store = MemoryOfflineStore(max_count, max_bytes)
        model = []  # [id, size, expires, owner, lease_until]
        now = T0
        serial = 0
        for op, a, b in operations:
            now += 100
            if op == "add":
                serial += 1
                m = OfflineMessage(f"m{serial}", b"x" * a, "none", now, now + b)
                result = self.successResultOf(store.add("u", m))
                if a > max_bytes:
                    self.assertEqual(result, AddResult(False, 0))
                    continue
                model = [e for e in model if not (e[2] <= now and e[4] <= now)]
                dropped = 0
                while model and (len(model) + 1 > max_count or sum(e[1] for e in model) + a > max_bytes):
                    model.pop(0)
                    dropped += 1
                model.append([m.message_id, a, m.expires_ms, None, 0])
                self.assertEqual(result, AddResult(True, dropped))
            elif op == "claim":
                got = self.successResultOf(store.claim("u", a, 500, now))
                model = [e for e in model if not (e[2] <= now and e[4] <= now)]
                expected = []
                for e in model:
                    if e[4] <= now:
                        e[3], e[4] = a, now + 500
                        expected.append(e[0])
                self.assertEqual(ids(got), expected)
            elif op == "remove":
                target = f"m{a}"
                found = any(e[0] == target for e in model)
                self.assertEqual(self.successResultOf(store.remove("u", target)), found)
                model = [e for e in model if e[0] != target]
            else:
                released = sum(1 for e in model if e[3] == a)
                self.assertEqual(self.successResultOf(store.release("u", a)), released)
                for e in model:
                    if e[3] == a:
                        e[3], e[4] = None, 0
            self.assertEqual(self.successResultOf(store.count("u")), len(model))
            self.assertLessEqual(len(model), max_count)
            self.assertLessEqual(sum(e[1] for e in model), max_bytes)


class OfflineMessageTests(SynchronousTestCase):
    def test_bad_fields(self):
        good = dict(message_id="m1", content=b"x", ack="auto", created_ms=T0, expires_ms=T0 + 1)
        for field, bad in (
            ("message_id", ""),
            ("message_id", 5),
            ("message_id", "y" * 257),
            ("content", "text"),
            ("content", None),
            ("ack", "AUTO"),
            ("ack", None),
            ("created_ms", -1),
            ("created_ms", 1.0),
            ("created_ms", True),
            ("expires_ms", T0),
            ("expires_ms", T0 - 1),
            ("expires_ms", "later"),
        ):
            with self.assertRaises(InvalidOfflineMessage, msg=f"{field}={bad!r}"):
                OfflineMessage(**{**good, field: bad})

    def test_bytes_like_content_becomes_bytes(self):
        m = OfflineMessage("m1", bytearray(b"ab"), "none", T0, T0 + 1)
        self.assertEqual((type(m.content), m.content, m.size), (bytes, b"ab", 2))
        with self.assertRaises(AttributeError):
            m.content = b"changed"

    def test_new_offline_message(self):
        m = new_offline_message(b"hi", "biz", T0, 600)
        self.assertEqual((m.created_ms, m.expires_ms, m.ack, m.content), (T0, T0 + 600_000, "biz", b"hi"))
        self.assertEqual(len(m.message_id), 32)
        self.assertNotEqual(m.message_id, new_offline_message(b"hi", "biz", T0, 600).message_id)
        self.assertEqual(new_offline_message(b"", "none", T0, 1, message_id="given").message_id, "given")
        for ttl in (0, -5, 1.5, True, None):
            self.assertRaises(InvalidOfflineMessage, new_offline_message, b"", "none", T0, ttl)
        self.assertRaises(InvalidOfflineMessage, new_offline_message, b"", "none", "now", 5)
        self.assertRaises(InvalidOfflineMessage, new_offline_message, b"", "sometimes", T0, 5)

    def test_counters(self):
        counters = OfflineCounters()
        counters.add("stored", 2)
        counters.add("expired", 0)
        self.assertEqual(counters.snapshot(), {**dict.fromkeys(STAT_NAMES, 0), "stored": 2})


# -- Redis ---------------------------------------------------------------------

#: Every Redis call must answer within this on the reactor clock.
CALL_TIMEOUT = 0.5


class RedisOfflineStoreTests(OfflineStoreContractMixin, TestCase):
    """The contract against a real redis-server, one per test."""

    timeout = 60

    def start_server(self):
        """The Redis under test: a server of this test's own (a sentinel set in a variant)."""
        from tests.redis_server import start_redis_server

        return start_redis_server(self)

    def setUp(self):
        from mpush.store.redis_connection import connect_redis

        self.server = self.start_server()
        self.client = connect_redis(self.server.url, reactor, max_retry_delay=0.2, reply_timeout=1.0)
        self.addCleanup(self.client.disconnect)
        self.log_events: list[dict] = []
        globalLogPublisher.addObserver(self.log_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log_events.append)

    def make_store(self, max_count=DEFAULT_MAX_COUNT, max_bytes=DEFAULT_MAX_BYTES):
        from mpush.offline.redis import RedisOfflineStore

        store = RedisOfflineStore(
            self.client, reactor, timeout=CALL_TIMEOUT, max_count=max_count, max_bytes=max_bytes
        )
        self.addCleanup(store.close)
        return store

    def raw(self):
        """Plain commands on the pool, with nothing of the store in between."""
        return self.client.redis

    def logged(self, text: str) -> int:
        return sum(
            1
            for event in self.log_events
            if event.get("log_namespace", "").startswith(
                ("mpush.offline", "mpush.store.redis_calls", "mpush.redis_status"))
            and text in event.get("log_format", "")
        )

    def eventually_succeeds(self, call):
        """Retry C{call()} until it stops failing with OfflineStoreUnavailable; bounded."""
        return until_succeeds(call, 10.0, retry_on=(OfflineStoreUnavailable,))

    @defer.inlineCallbacks
    def test_raw_keys(self):
        from mpush.offline.redis import EXPIRED_GRACE_MS

        store = self.make_store()
        yield store.add("alice", message(1, ack="auto", content=b"\x00\xffhi"))
        yield store.add("alice", message(2, size=5, ttl=TTL * 2))
        redis = self.raw()
        self.assertEqual((yield redis.lrange("mp:off:alice", 0, -1)), ["id-1", "id-2"])
        data = yield redis.hgetall("mp:offd:alice")
        self.assertEqual(
            sorted(data),
            ["bytes", "e:id-1", "e:id-2", "exp", "m:id-1", "m:id-2", "n:id-1", "n:id-2"],
        )
        self.assertEqual(
            json.loads(data["m:id-1"]),
            {"id": "id-1", "ack": "auto", "created": T0, "expires": T0 + TTL,
             "content": base64.b64encode(b"\x00\xffhi").decode()},
        )
        self.assertEqual((data["e:id-1"], data["n:id-1"], data["n:id-2"]), (str(T0 + TTL), "4", "5"))
        self.assertEqual((data["bytes"], data["exp"]), ("9", str(T0 + 2 * TTL)))
        # Both keys vanish a grace after the latest expiry (relative to the
        # add's "now"), so the expired messages are still counted meanwhile.
        for key in ("mp:off:alice", "mp:offd:alice"):
            ttl = yield redis.execute_command("PTTL", key)
            self.assertTrue(2 * TTL + EXPIRED_GRACE_MS - 5000 < ttl <= 2 * TTL + EXPIRED_GRACE_MS, ttl)
        yield store.claim("alice", "conn-a", LEASE, T0 + 10)
        claims = yield redis.hmget("mp:offd:alice", ["c:id-1", "c:id-2"])
        self.assertEqual(claims, [f"{T0 + 10 + LEASE}|conn-a"] * 2)
        yield store.release("alice", "conn-a", ["id-1"])
        self.assertFalse((yield redis.hexists("mp:offd:alice", "c:id-1")))
        yield store.remove("alice", "id-1")
        self.assertEqual((yield redis.hget("mp:offd:alice", "bytes")), "5")
        yield store.remove("alice", "id-2")
        self.assertEqual((yield redis.exists("mp:off:alice")), 0)
        self.assertEqual((yield redis.exists("mp:offd:alice")), 0)

    @defer.inlineCallbacks
    def test_bad_entry_dropped_not_delivered(self):
        store = self.make_store()
        yield store.add("alice", message(1))
        yield store.add("alice", message(2))
        yield store.add("alice", message(3))
        redis = self.raw()
        yield redis.hset("mp:offd:alice", "m:id-1", "not json")
        yield redis.hset("mp:offd:alice", "m:id-2", json.dumps({"id": "id-2", "ack": "never"}))
        claimed = yield store.claim("alice", "conn-a", LEASE, T0)
        self.assertEqual(ids(claimed), ["id-3"])
        self.assertEqual(self.logged("dropping a bad offline entry"), 2)
        # The broken ones are taken out (after the claim answered, on another
        # connection of the pool), without counting as delivered.
        yield wait_until(
            lambda: redis.lrange("mp:off:alice", 0, -1).addCallback(lambda ids: ids == ["id-3"]),
            what="only id-3 left",
        )
        self.assertEqual(store.stats()["delivered"], 0)

    @defer.inlineCallbacks
    def test_queue_repairs_ids_without_entries(self):
        store = self.make_store()
        redis = self.raw()
        yield store.add("alice", message(1))
        yield redis.rpush("mp:off:alice", "ghost")
        self.assertEqual(ids((yield store.claim("alice", "c", LEASE, T0))), ["id-1"])
        self.assertEqual((yield redis.lrange("mp:off:alice", 0, -1)), ["id-1"])
        self.assertEqual(store.stats()["expired"], 0)

    @defer.inlineCallbacks
    def test_wrong_type_key_is_refused_not_an_outage(self):
        store = self.make_store()
        yield self.raw().set("mp:off:alice", "something else")
        failure = yield self.assertFailure(store.add("alice", message(1)), OfflineStoreUnavailable)
        self.assertIn("refused", str(failure))
        self.assertEqual(self.logged("{name} unavailable"), 0)

    @defer.inlineCallbacks
    def test_redis_down_then_back(self):
        store = self.make_store()
        failed = []
        store.observe_failures(failed.append)
        yield store.add("alice", message(1))
        self.server.kill()
        yield self.assertFailure(store.add("alice", message(2)), OfflineStoreUnavailable)
        yield self.assertFailure(store.claim("alice", "c", LEASE, T0), OfflineStoreUnavailable)
        yield self.assertFailure(store.remove("alice", "id-1"), OfflineStoreUnavailable)
        yield self.assertFailure(store.release("alice", "c"), OfflineStoreUnavailable)
        yield self.assertFailure(store.count("alice"), OfflineStoreUnavailable)
        # Said once by the connection (address, OS error), not by the store.
        for _ in range(200):
            if self.client.reachability.unreachable:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(self.logged("redis {address} unreachable"), 1)
        self.assertEqual(self.logged("{name} unavailable"), 0)
        # Metrics hear of it (calls failing fast during the outage are up
        # to the shared BoundedRedis).
        self.assertEqual(set(failed), {"redis offline store"})
        self.server.start()
        # The server came back empty (no persistence).
        self.assertEqual((yield self.eventually_succeeds(lambda: store.count("alice"))), 0)
        self.assertEqual((yield store.add("alice", message(3))), AddResult(True, 0))
        self.assertEqual(ids((yield store.claim("alice", "c", LEASE, T0))), ["id-3"])
        self.assertEqual(self.logged("reachable again"), 1)

    @defer.inlineCallbacks
    def test_redis_hung_answers_within_the_timeout(self):
        store = self.make_store()
        yield store.add("alice", message(1))
        self.server.pause()
        self.addCleanup(self.server.resume)
        failure = yield self.assertFailure(store.claim("alice", "c", LEASE, T0), OfflineStoreUnavailable)
        self.assertIn(f"within {CALL_TIMEOUT:g} s", str(failure))
        self.server.resume()
        claimed = yield self.eventually_succeeds(lambda: store.claim("alice", "c2", LEASE, T0 + LEASE + 1))
        # The timed-out claim may have run after all (its lease is over by
        # T0 + LEASE + 1): either way the message is there, once.
        self.assertEqual(ids(claimed), ["id-1"])

    def test_bad_timeout(self):
        from mpush.offline.redis import RedisOfflineStore

        self.assertRaises(ValueError, RedisOfflineStore, self.client, reactor, timeout=0)

    def test_decode_entry_rejects_garbage(self):
        from mpush.offline.redis import decode_entry, encode_entry

        m = message(1, ack="biz", content=b"\x01\x02")
        self.assertEqual(decode_entry(encode_entry(m)), m)
        good = json.loads(encode_entry(m))
        for bad in (
            "",
            "[]",
            "null",
            json.dumps({**good, "content": "!!!"}),
            json.dumps({**good, "expires": good["created"]}),
            json.dumps({k: v for k, v in good.items() if k != "ack"}),
            None,
        ):
            self.assertRaises(InvalidOfflineMessage, decode_entry, bad)

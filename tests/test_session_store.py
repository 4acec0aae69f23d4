"""
MemorySessionStore: the in-memory ISessionStore, on a fake clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mpush.protocol.session import InvalidSession, ReusableSession, encode_reusable_session
from mpush.store import ISessionStore, MemorySessionStore, StoreUnavailable

SESSION = ReusableSession(
    os_name="android",
    os_version="6.0",
    client_version="2.0",
    device_id="dev-1",
    session_key=bytes.fromhex("f0e0d0c0b0a090807060504030201000"),
    iv=bytes(range(16)),
)


class MemorySessionStoreTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemorySessionStore(self.clock)

    def load(self, session_id, store=None):
        return self.successResultOf((store or self.store).load(session_id))

    def test_provides_interface(self):
        self.assertTrue(verifyObject(ISessionStore, self.store))

    def test_save_then_load(self):
        self.assertIsNone(self.successResultOf(self.store.save("s1", SESSION, 60)))
        self.assertEqual(self.load("s1"), SESSION)

    def test_missing_and_empty_ids(self):
        self.assertIsNone(self.load("nope"))
        self.assertIsNone(self.load(""))

    def test_keeps_the_encoded_string(self):
        # Same codec as the Redis store: what is kept is MPush's string.
        self.store.save("s1", SESSION, 60)
        self.assertEqual(
            self.store._entries["s1"][1], encode_reusable_session(SESSION)
        )

    def test_ttl_expiry(self):
        self.store.save("s1", SESSION, 10)
        self.clock.advance(9.999)
        self.assertEqual(self.load("s1"), SESSION)
        self.clock.advance(0.001)
        self.assertIsNone(self.load("s1"))
        self.assertEqual(len(self.store), 0)

    def test_no_expiry_for_non_positive_ttl(self):
        self.store.save("zero", SESSION, 0)
        self.store.save("negative", SESSION, -1)
        self.clock.advance(10 * 365 * 86400)
        self.assertEqual(self.load("zero"), SESSION)
        self.assertEqual(self.load("negative"), SESSION)

    def test_rewrite_replaces_value_and_ttl(self):
        self.store.save("s1", SESSION, 10)
        other = ReusableSession(None, None, None, "dev-2", SESSION.session_key, SESSION.iv)
        self.clock.advance(5)
        self.store.save("s1", other, 100)
        self.clock.advance(50)
        self.assertEqual(self.load("s1"), other)

    def test_bounded_evicts_oldest(self):
        store = MemorySessionStore(self.clock, max_entries=3)
        for name in ("a", "b", "c", "d"):
            store.save(name, SESSION, 60)
        self.assertEqual(len(store), 3)
        self.assertIsNone(self.load("a", store))
        for name in ("b", "c", "d"):
            self.assertEqual(self.load(name, store), SESSION)

    def test_rewrite_counts_as_newest(self):
        store = MemorySessionStore(self.clock, max_entries=2)
        store.save("a", SESSION, 60)
        store.save("b", SESSION, 60)
        store.save("a", SESSION, 60)
        store.save("c", SESSION, 60)
        self.assertIsNone(self.load("b", store))
        self.assertEqual(self.load("a", store), SESSION)

    def test_expired_entries_purged_without_being_read(self):
        for i in range(10):
            self.store.save(f"old{i}", SESSION, 10)
        self.clock.advance(11)
        self.store.save("new", SESSION, 10)
        self.assertEqual(len(self.store), 1)

    def test_sweep_clears_expired_behind_a_permanent_entry(self):
        store = MemorySessionStore(self.clock, sweep_interval=60)
        store.save("forever", SESSION, 0)
        store.save("short", SESSION, 1)
        self.clock.advance(2)
        store.save("other", SESSION, 0)
        # The cheap purge stops at the permanent oldest entry...
        self.assertEqual(len(store), 3)
        self.clock.advance(60)
        store.save("trigger", SESSION, 0)
        # ...the periodic sweep does not.
        self.assertEqual(len(store), 3)
        self.assertNotIn("short", store._entries)

    def test_no_timers(self):
        self.store.save("s1", SESSION, 10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_ids(self):
        self.failureResultOf(self.store.save("", SESSION, 10), ValueError)
        self.failureResultOf(self.store.save(None, SESSION, 10), TypeError)
        self.failureResultOf(self.store.load(None), TypeError)
        self.failureResultOf(self.store.load(b"s1"), TypeError)

    def test_bad_ttl(self):
        self.failureResultOf(self.store.save("s1", SESSION, 1.5), TypeError)
        self.failureResultOf(self.store.save("s1", SESSION, "60"), TypeError)
        self.failureResultOf(self.store.save("s1", SESSION, True), TypeError)
        self.assertIsNone(self.load("s1"))

    def test_unwritable_session(self):
        bad = ReusableSession("android", "6,0", "2.0", "dev-1", SESSION.session_key, SESSION.iv)
        self.failureResultOf(self.store.save("s1", bad, 10), InvalidSession)
        self.failureResultOf(self.store.save("s1", "not a session", 10), InvalidSession)
        self.assertIsNone(self.load("s1"))

    def test_undecodable_stored_value_reads_as_none(self):
        self.store._entries["s1"] = (None, "garbage")
        self.assertIsNone(self.load("s1"))

    def test_closed(self):
        self.store.save("s1", SESSION, 10)
        self.assertIsNone(self.successResultOf(self.store.close()))
        self.failureResultOf(self.store.load("s1"), StoreUnavailable)
        self.failureResultOf(self.store.save("s1", SESSION, 10), StoreUnavailable)

    def test_bad_construction(self):
        self.assertRaises(ValueError, MemorySessionStore, self.clock, max_entries=0)
        self.assertRaises(TypeError, MemorySessionStore, self.clock, max_entries=1.5)
        self.assertRaises(ValueError, MemorySessionStore, self.clock, sweep_interval=0)

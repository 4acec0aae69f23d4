"""
C{[redis] wait-replicas}: a session write that waits (Redis C{WAIT}) until
replicas have it, on a real master and replica; a write no replica confirms
in time fails the save instead of being reported as safe.
"""

import time
import tomllib

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush.config import ConfigError, RedisConfig, parse_config
from mpush.protocol.session import ReusableSession, encode_reusable_session
from mpush.store import StoreUnavailable
from mpush.store.redis import RedisSessionStore, session_key
from mpush.store.redis_connection import connect_redis

from tests.redis_server import start_redis_server
from tests.test_redis_router import raw_command

SESSION = ReusableSession(
    os_name="android",
    os_version="6.0",
    client_version="2.0",
    device_id="dev-1",
    session_key=bytes(range(16)),
    iv=bytes(range(16, 32)),
)


class WaitReplicasTests(TestCase):
    timeout = 60

    def setUp(self):
        self.master = start_redis_server(self)

    def store(self, **options) -> RedisSessionStore:
        client = connect_redis(self.master.url, reactor, max_retry_delay=0.2)
        self.addCleanup(client.disconnect)
        store = RedisSessionStore(client, reactor, timeout=2.0, close_connection=False, **options)
        self.addCleanup(store.close)
        return store

    def replica(self):
        replica = start_redis_server(self, ("--replicaof", "127.0.0.1", str(self.master.port)))
        for _ in range(500):
            if b"master_link_status:up" in raw_command(replica.port, "INFO", "replication"):
                return replica
            time.sleep(0.02)
        self.fail("the replica never synced with the master")

    @defer.inlineCallbacks
    def test_a_saved_session_is_on_the_replica(self):
        """
        Once the save has fired, the replica already holds the session: a
        failover now would not lose it.
        """
        replica = self.replica()
        store = self.store(wait_replicas=1, wait_timeout=1.0)
        for number in range(20):
            yield store.save(f"s{number}", SESSION, 600)
            self.assertEqual(
                raw_command(replica.port, "GET", session_key(f"s{number}")),
                encode_reusable_session(SESSION).encode(),
            )

    @defer.inlineCallbacks
    def test_a_save_no_replica_confirms_fails(self):
        """
        No replica: the session is on the master, but the save says that it
        is not safe, within the WAIT timeout; without WAIT it succeeds.
        """
        store = self.store(wait_replicas=1, wait_timeout=0.05)
        error = yield self.assertFailure(store.save("alone", SESSION, 600), StoreUnavailable)
        self.assertIn("0 of 1 replicas confirmed it within 50 ms", str(error))
        self.assertIsNotNone(raw_command(self.master.port, "GET", session_key("alone")))
        yield self.store().save("plain", SESSION, 600)

    @defer.inlineCallbacks
    def test_saves_of_one_turn_share_one_wait(self):
        replica = self.replica()
        store = self.store(wait_replicas=1, wait_timeout=1.0)
        before = _wait_calls(self.master.port)
        yield defer.gatherResults([store.save(f"t{n}", SESSION, 600) for n in range(50)])
        self.assertEqual(_wait_calls(self.master.port) - before, 1)
        self.assertEqual(raw_command(replica.port, "DBSIZE"), 50)

    def test_bad_wait_replicas(self):
        for bad in (-1, 1.5, True, "1"):
            self.assertRaises(ValueError, RedisSessionStore, object(), reactor, wait_replicas=bad)


class ClusterWaitReplicasTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_each_slot_waits_on_its_own_master(self):
        """
        Saves of many slots: each batch's script and WAIT go to its slot's
        master (a WAIT elsewhere would count nothing of it; a script
        elsewhere would be MOVED), and every master's replica confirms.
        """
        from tests.redis_cluster import shared_redis_cluster

        from mpush.store.redis_cluster import key_slot

        cluster = shared_redis_cluster()
        ids = [f"c{number}" for number in range(30)]
        for slot in {key_slot(session_key(session_id)) for session_id in ids}:
            cluster.wait_replicated(slot)  # every replica linked up
        client = connect_redis(cluster.url, reactor, max_retry_delay=0.2)
        self.addCleanup(client.disconnect)
        store = RedisSessionStore(client, reactor, timeout=2.0, close_connection=False,
                                  wait_replicas=1, wait_timeout=1.0)
        self.addCleanup(store.close)
        yield defer.gatherResults([store.save(session_id, SESSION, 600) for session_id in ids])
        for session_id in ids:
            key = session_key(session_id)
            self.assertEqual(cluster.on_owner(key, "GET", key), encode_reusable_session(SESSION).encode())
        self.assertEqual(sorted(_wait_calls(master.port) > 0 for master in cluster.masters()), [True] * 3)


def _wait_calls(port: int) -> int:
    stats = raw_command(port, "INFO", "commandstats").decode()
    for line in stats.splitlines():
        if line.startswith("cmdstat_wait:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


class WaitConfigTests(SynchronousTestCase):
    def parse(self, text: str):
        return parse_config(tomllib.loads(text), "test.toml")

    def test_defaults_off(self):
        config = self.parse("[redis]\n")
        self.assertEqual((config.redis.wait_replicas, config.redis.wait_timeout), (0, 100))

    def test_values(self):
        config = self.parse('[redis]\nwait-replicas = 1\nwait-timeout = "250ms"\n')
        self.assertEqual((config.redis.wait_replicas, config.redis.wait_timeout), (1, 250))
        self.assertEqual(self.parse("[redis]\nwait-timeout = 40\n").redis.wait_timeout, 40)

    def test_errors(self):
        for text, key, fragment in (
            ("wait-replicas = -1", "[redis] wait-replicas", "between 0 and 16 replicas, got -1"),
            ('wait-replicas = "1"', "[redis] wait-replicas", "expected an integer"),
            ("wait-timeout = 0", "[redis] wait-timeout", "between 1 and 1000 ms, got 0"),
            ('wait-timeout = "2s"', "[redis] wait-timeout", "between 1 and 1000 ms, got 2000"),
            ('wait-timeout = "soon"', "[redis] wait-timeout", "soon"),
        ):
            error = self.assertRaises(ConfigError, self.parse, f"[redis]\n{text}\n")
            self.assertEqual(error.key, key)
            self.assertIn(fragment, str(error))
        self.assertRaises(ConfigError, RedisConfig, wait_timeout=0)

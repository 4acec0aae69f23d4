"""
L{mpush.store.redis_cluster} against a real Redis Cluster (three masters,
three replicas): slots, routing, C{MGET} across slots, real C{ASK} and
C{MOVED} from resharding one slot by hand, the slot map following a killed
master's promoted replica, and the session store on a cluster.
"""

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush.offline.interfaces import DEFAULT_MAX_BYTES, DEFAULT_MAX_COUNT
from mpush.offline.redis import RedisOfflineStore, offline_data_key, offline_queue_key
from mpush.protocol.routing import NODE_ROUTES_PREFIX, InvalidRouteField, decode_route_member, user_route_key
from mpush.protocol.session import ReusableSession
from mpush.store.redis import RedisSessionStore, session_key
from mpush.store.redis_cluster import RedisClusterClient, colocated, crc16, key_slot
from mpush.store.redis_connection import InvalidRedisUrl, cluster_url, connect_redis, parse_redis_url

from tests.redis_cluster import shared_redis_cluster, start_redis_cluster
from tests.test_memory_router import RoutingContractMixin
from tests.test_offline_store import OfflineStoreContractMixin, message
from tests import test_multi_node, test_redis_router


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class SlotTests(SynchronousTestCase):
    def test_crc16_xmodem_check_value(self):
        self.assertEqual(crc16(b"123456789"), 0x31C3)

    def test_known_slots(self):
        # Values as CLUSTER KEYSLOT gives them (Redis Cluster specification).
        self.assertEqual(key_slot("foo"), 12182)
        self.assertEqual(key_slot("123456789"), 12739)
        self.assertEqual(key_slot(b"foo"), 12182)

    def test_hash_tags(self):
        self.assertEqual(key_slot("{user1000}.following"), key_slot("user1000"))
        self.assertEqual(key_slot("{user1000}.followers"), key_slot("{user1000}.following"))
        # An empty tag is no tag: the whole key is hashed.
        self.assertEqual(key_slot("foo{}{bar}"), crc16(b"foo{}{bar}") % 16384)
        # The first { and the next }.
        self.assertEqual(key_slot("foo{{bar}}zap"), key_slot("{bar"))
        self.assertEqual(key_slot("foo{bar}{zap}"), key_slot("bar"))

    def test_cluster_url(self):
        url = cluster_url(("10.0.0.1:7000", "10.0.0.2:7001"), "p@ss")
        address = parse_redis_url(url)
        self.assertEqual(address.cluster_nodes, (("10.0.0.1", 7000), ("10.0.0.2", 7001)))
        self.assertEqual(address.password, "p@ss")
        self.assertNotIn("p@ss", repr(address))

    def test_bad_cluster_urls(self):
        for url in ("redis+cluster://", "redis+cluster://h", "redis+cluster://h:0", "redis+cluster://h:1/3"):
            self.assertRaises(InvalidRedisUrl, parse_redis_url, url)


class ClusterTestCase(TestCase):
    """A running cluster as C{self.cluster} and a client to it as C{self.client}."""

    timeout = 120

    def setUp(self):
        self.cluster = start_redis_cluster(self)
        self.client = connect_redis(self.cluster.url, reactor, poolsize=2)
        self.addCleanup(self.client.disconnect)

    @defer.inlineCallbacks
    def eventually(self, attempt, timeout=30.0, step=0.05):
        """Retry C{attempt} until it returns something else than False."""
        waited, last = 0.0, None
        while waited < timeout:
            try:
                result = yield defer.maybeDeferred(attempt)
            except Exception as error:
                last = error
            else:
                if result is not False:
                    return result
            yield sleep(step)
            waited += step
        self.fail(f"never succeeded: {last!r}")


class RoutingTests(ClusterTestCase):
    @defer.inlineCallbacks
    def test_keys_land_on_the_master_of_their_slot(self):
        self.assertIsInstance(self.client, RedisClusterClient)
        redis = self.client.redis
        keys = [f"k{i}" for i in range(60)]
        yield defer.gatherResults([redis.set(key, f"v{i}") for i, key in enumerate(keys)])
        for i, key in enumerate(keys):
            owner = self.cluster.owner_of(key_slot(key))
            self.assertEqual(self.cluster.command(owner, "GET", key), f"v{i}".encode())
        self.assertEqual(len({key_slot(k) for k in keys}), 60)
        # One MGET across all three masters, answered in order.
        values = yield redis.mget(keys + ["absent"])
        self.assertEqual(values, [f"v{i}" for i in range(60)] + [None])

    @defer.inlineCallbacks
    def test_script_on_one_slot_and_cross_slot_refused(self):
        redis = self.client.redis
        keys = ["{t}a", "{t}b"]
        n = yield redis.eval("for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[i]) end return #KEYS", keys, ["1", "2"])
        self.assertEqual(int(n), 2)
        self.assertEqual((yield redis.mget(keys)), ["1", "2"])
        with self.assertRaises(Exception) as refused:
            yield redis.eval("return 1", ["a", "b"], [])
        self.assertIn("CROSSSLOT", str(refused.exception))

    @defer.inlineCallbacks
    def test_ask_during_migration_then_moved_after_it(self):
        redis = self.client.redis
        key = "migrating-key"
        slot = key_slot(key)
        yield redis.set(key, "here")
        refreshes = self.client.refreshes
        source = self.cluster.owner_of(slot)
        target = next(m for m in self.cluster.masters() if m is not source)
        self.cluster.begin_migration(slot, target)
        self.cluster.migrate_key(source, target, key)
        # The source answers ASK for a key it no longer has: the client
        # follows it to the importing node for this command only.
        self.assertEqual((yield redis.get(key)), "here")
        self.assertEqual(self.client.node_of(slot), ("127.0.0.1", source.port))
        self.cluster.end_migration(slot, target)
        # Now the source answers MOVED: the map is corrected and refreshed.
        self.assertEqual((yield redis.get(key)), "here")
        self.assertEqual(self.client.node_of(slot), ("127.0.0.1", target.port))
        yield self.eventually(lambda: self.client.refreshes > refreshes)
        yield redis.set(key, "again")
        self.assertEqual(self.cluster.command(target, "GET", key), b"again")

    @defer.inlineCallbacks
    def test_map_follows_a_killed_master(self):
        redis = self.client.redis
        key = "survivor"
        slot = key_slot(key)
        yield redis.set(key, "1")
        # What a master acknowledged but did not replicate yet is lost with
        # it: wait for the replica, then kill.
        self.cluster.wait_replicated(slot)
        dead = self.cluster.kill_master(slot)
        started = reactor.seconds()

        def answered():
            return redis.get(key).addCallback(lambda value: value == "1")

        yield self.eventually(answered, timeout=30.0)
        took = reactor.seconds() - started
        self.assertEqual(self.client.node_of(slot)[1], self.cluster.owner_of(slot).port)
        self.assertNotEqual(self.client.node_of(slot)[1], dead.port)
        print(f"\n    cluster failover: slot served again through the client after {took:.2f} s")


class ClusterSessionStoreTests(ClusterTestCase):
    @defer.inlineCallbacks
    def test_many_sessions_in_one_turn(self):
        store = RedisSessionStore(self.client, reactor, close_connection=False)
        self.addCleanup(store.close)
        sessions = {
            f"s{i}": ReusableSession("android", "9", "1.0", f"dev{i}", bytes(range(i % 16, i % 16 + 16)), b"v" * 16)
            for i in range(200)
        }
        yield defer.gatherResults([store.save(sid, s, 600) for sid, s in sessions.items()])
        loaded = yield defer.gatherResults([store.load(sid) for sid in list(sessions) + ["none"]])
        self.assertEqual(loaded[:-1], list(sessions.values()))
        self.assertIsNone(loaded[-1])
        # MPush's key, readable by a Java node on the slot's master.
        owner = self.cluster.owner_of(key_slot(session_key("s7")))
        self.assertTrue(self.cluster.command(owner, "GET", session_key("s7")))


class ClusterRoutingContractTests(RoutingContractMixin, TestCase):
    """
    The routing contract every backend passes, on a Redis Cluster.  Raw
    reads of mpush's own keys gather every slot's copy of them (see
    L{RedisCluster.keys_like}); MPush's keys are read under their own names.
    """

    timeout = 60

    def setUp(self):
        self.server = shared_redis_cluster()
        self.client = connect_redis(self.server.url, reactor, max_retry_delay=0.2, reply_timeout=1.0)
        self.addCleanup(self.client.disconnect)

    make_router = test_redis_router.RedisRoutingContractTests.make_router
    make_events = test_redis_router.RedisRoutingContractTests.make_events
    make_kick_channel = test_redis_router.RedisRoutingContractTests.make_kick_channel
    make_registry = test_redis_router.RedisRoutingContractTests.make_registry
    raw_subscribe = test_redis_router.RedisRoutingContractTests.raw_subscribe
    wait = test_redis_router.RedisRoutingContractTests.wait

    def raw_publish(self, channel, message):
        self.server.command(self.server.masters()[0], "PUBLISH", channel, message)

    def raw_get(self, key):
        return self.server.on_owner(key, "GET", key)

    def raw_hset(self, key, field, value):
        self.server.on_owner(key, "HSET", key, field, value)

    def raw_hget(self, key, field):
        found = [self.server.on_owner(k, "HGET", k, field) for k in self.server.keys_like(key)]
        return next((value for value in found if value is not None), None)

    def raw_smembers(self, key):
        return {m for k in self.server.keys_like(key) for m in self.server.on_owner(k, "SMEMBERS", k)}

    def raw_zmembers(self, key):
        return {m for k in self.server.keys_like(key) for m in self.server.on_owner(k, "ZRANGE", k, "0", "-1")}

    def raw_exists(self, key):
        return bool(self.server.keys_like(key))

    def raw_delete(self, key):
        for k in self.server.keys_like(key):
            self.server.on_owner(k, "DEL", k)

    def raw_sadd(self, key, member):
        if key.startswith(NODE_ROUTES_PREFIX):
            # Where a route's index entry lives: in its route's slot.
            try:
                anchor = user_route_key(decode_route_member(member.decode())[0])
            except InvalidRouteField:
                anchor = key
            key = colocated(key, anchor)
        self.server.on_owner(key, "SADD", key, member)


class ClusterOfflineStoreTests(OfflineStoreContractMixin, TestCase):
    """The offline store contract on a Redis Cluster."""

    timeout = 60

    def setUp(self):
        self.cluster = shared_redis_cluster()
        self.client = connect_redis(self.cluster.url, reactor, max_retry_delay=0.2, reply_timeout=1.0)
        self.addCleanup(self.client.disconnect)

    def make_store(self, max_count=DEFAULT_MAX_COUNT, max_bytes=DEFAULT_MAX_BYTES):
        store = RedisOfflineStore(self.client, reactor, timeout=0.5, max_count=max_count, max_bytes=max_bytes)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def test_queue_and_data_share_a_slot(self):
        store = self.make_store()
        yield store.add("alice{x}", message(1))
        data = self.cluster.keys_like(offline_data_key("alice{x}"))
        self.assertEqual(len(data), 1)
        self.assertEqual(key_slot(data[0]), key_slot(offline_queue_key("alice{x}")))
        self.assertEqual(self.cluster.on_owner(offline_queue_key("alice{x}"), "LLEN", offline_queue_key("alice{x}")), 1)


class _NodesOnCluster:
    """Node processes (L{test_multi_node.ClusterCase}) on the shared Redis Cluster."""

    def setUp(self):
        self.redis = shared_redis_cluster()

    @property
    def redis_section(self):
        seeds = ", ".join(f'"{node}"' for node in self.redis.nodes)
        return f'[redis]\ncluster-model = "cluster"\nnodes = [{seeds}]\n'


class PushAcrossNodesOnClusterTests(_NodesOnCluster, test_multi_node.PushAcrossNodesTests):
    pass


class KickAcrossNodesOnClusterTests(_NodesOnCluster, test_multi_node.KickAcrossNodesTests):
    pass


class BroadcastOnClusterTests(_NodesOnCluster, test_multi_node.BroadcastTests):
    pass


class ResumeAnywhereOnClusterTests(_NodesOnCluster, test_multi_node.ResumeAnywhereTests):
    pass


class NodeDeathOnClusterTests(_NodesOnCluster, test_multi_node.ClusterCase):
    """A killed mpush node's routes are marked offline by a survivor: its route index is a set per slot."""

    test_killed_node_routes_marked_offline = test_multi_node.FaultTests.test_killed_node_routes_marked_offline
    redis_hget = test_multi_node.FaultTests.redis_hget

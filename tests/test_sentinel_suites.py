"""
The suites that run against one Redis, run again with C{[redis]
cluster-model = "sentinel"}: the stores and nodes find their master
through three real sentinels (C{redis+sentinel://}), on one master, one
replica and three sentinels shared by the tests of a process
(L{shared_sentinel_set}) and emptied before each test.  Raw reads go to the
master itself: what a Java node reading the same Redis sees.

Variants: the routing contract (and its raw Redis format), the offline
store contract, the session store, push, kick, broadcast, resume-anywhere
and node death across nodes, offline messages end to end, and the online
list of nodes sharing an IP.

Left out, for a real reason: the single-Redis fault tests of those suites
(C{test_redis_down_then_back}, C{test_redis_hung}, the outage tests of the
registry, kick channel and offline store, L{test_multi_node.FaultTests}'
proxy and restart tests).  They stop, pause or restart the one server
under a test; on a sentinel set that is a failover, which
L{tests.test_sentinel} and the failover rehearsal test on sets of their
own, and it would break the set the other tests share.
"""

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from mpush.config import RedisConfig, load_config
from mpush.offline.interfaces import DEFAULT_MAX_BYTES, DEFAULT_MAX_COUNT
from mpush.offline.redis import RedisOfflineStore
from mpush.store.redis_connection import connect_redis, sentinel_url

from tests import test_multi_node, test_offline_e2e, test_redis_router, test_redis_store, test_shared_ip
from tests.redis_sentinel import MASTER_NAME, shared_sentinel_set
from tests.test_memory_router import RoutingContractMixin
from tests.test_offline_store import OfflineStoreContractMixin
from tests.test_redis_store import SESSION, SPEC_VALUE, raw_command


class SentinelRoutingContractTests(test_redis_router.RedisRoutingTestCase, RoutingContractMixin):
    """The routing contract every backend passes, and mpush's raw Redis format, through sentinels."""

    def start_server(self):
        return shared_sentinel_set()

    # Taken through its module: a suite imported by name would run here too.
    _redis = test_redis_router.RedisRoutingContractTests
    make_router = _redis.make_router
    make_events = _redis.make_events
    make_kick_channel = _redis.make_kick_channel
    make_registry = _redis.make_registry
    raw_hget = _redis.raw_hget
    raw_hset = _redis.raw_hset
    raw_smembers = _redis.raw_smembers
    raw_zmembers = _redis.raw_zmembers
    raw_sadd = _redis.raw_sadd
    raw_get = _redis.raw_get
    raw_exists = _redis.raw_exists
    raw_delete = _redis.raw_delete
    raw_publish = _redis.raw_publish
    raw_subscribe = _redis.raw_subscribe

    test_user_events_raw_zset = _redis.test_user_events_raw_zset
    test_route_hash_is_a_hash = _redis.test_route_hash_is_a_hash
    test_registry_key_has_ttl = _redis.test_registry_key_has_ttl
    test_wrong_type_key_is_refused = _redis.test_wrong_type_key_is_refused
    test_undecodable_bytes = _redis.test_undecodable_bytes
    del _redis


class SentinelOfflineStoreTests(OfflineStoreContractMixin, TestCase):
    """The offline store contract through sentinels."""

    timeout = 60

    def setUp(self):
        self.sentinels = shared_sentinel_set()
        self.client = connect_redis(self.sentinels.url, reactor, max_retry_delay=0.2, reply_timeout=1.0)
        self.addCleanup(self.client.disconnect)

    def make_store(self, max_count=DEFAULT_MAX_COUNT, max_bytes=DEFAULT_MAX_BYTES):
        store = RedisOfflineStore(self.client, reactor, timeout=0.5, max_count=max_count, max_bytes=max_bytes)
        self.addCleanup(store.close)
        return store


class SentinelSessionStoreTests(test_redis_store.RedisSessionStoreTests):
    """The session store through sentinels: MPush's keys, read on the master."""

    def start_server(self):
        return shared_sentinel_set()

    @defer.inlineCallbacks
    def test_selected_db(self):
        store = self.make_store(self.connect(sentinel_url(self.server.nodes, MASTER_NAME, db=3)))
        yield store.save("in3", SESSION, 60)
        self.assertIsNone(raw_command(self.server.port, "GET", "mp:rs:in3"))
        self.assertEqual(raw_command(self.server.port, "GET", "mp:rs:in3", db=3), SPEC_VALUE.encode())


class _NodesOnSentinels:
    """Node processes (L{test_multi_node.ClusterCase}) on the shared sentinel set."""

    def setUp(self):
        self.redis = shared_sentinel_set()

    @property
    def redis_section(self):
        sentinels = ", ".join(f'"{node}"' for node in self.redis.nodes)
        return f'[redis]\ncluster-model = "sentinel"\nsentinel-master = "{MASTER_NAME}"\nnodes = [{sentinels}]\n'


class PushAcrossNodesOnSentinelTests(_NodesOnSentinels, test_multi_node.PushAcrossNodesTests):
    pass


class KickAcrossNodesOnSentinelTests(_NodesOnSentinels, test_multi_node.KickAcrossNodesTests):
    pass


class BroadcastOnSentinelTests(_NodesOnSentinels, test_multi_node.BroadcastTests):
    pass


class ResumeAnywhereOnSentinelTests(_NodesOnSentinels, test_multi_node.ResumeAnywhereTests):
    pass


class NodeDeathOnSentinelTests(_NodesOnSentinels, test_multi_node.ClusterCase):
    """A killed mpush node's routes are marked offline by a survivor."""

    test_killed_node_routes_marked_offline = test_multi_node.FaultTests.test_killed_node_routes_marked_offline
    redis_hget = test_multi_node.FaultTests.redis_hget


class OfflineMessagesOnSentinelTests(test_offline_e2e.OfflineMessagesTests):
    """Offline messages end to end (store, fast connect, deliver once, ack) with the node's state behind sentinels."""

    def base_config(self):
        sentinels = shared_sentinel_set()
        return load_config(None).replace(
            redis=RedisConfig(nodes=sentinels.nodes, cluster_model="sentinel", sentinel_master=MASTER_NAME)
        )


class SharedOnlineListOnSentinelTests(_NodesOnSentinels, test_shared_ip.SharedOnlineListTests):
    """Nodes sharing an IP keep each other's online users, in the list on the master."""

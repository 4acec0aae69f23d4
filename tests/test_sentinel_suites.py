"""
The suites that run against one Redis, run again with C{[redis]
cluster-model = "sentinel"}: the stores and nodes find their master
through three real sentinels (C{redis+sentinel://}), on one master, one
replica and three sentinels shared by the tests of a process
(L{shared_sentinel_set}) and emptied before each test.  Raw reads of the
routing and session suites go to the master itself: what a Java node
reading the same Redis sees.

Variants: the routing contract and mpush's raw Redis format, the offline
store contract and its raw format, the session store, push, kick,
broadcast, resume-anywhere and node death across nodes, offline messages
end to end, and the online list of nodes sharing an IP.

Left out, for a real reason: the single-Redis suites' fault tests, which
kill, pause or restart the one server under the test (the routing suite's
C{test_redis_down_then_back}, C{test_redis_hung}, C{test_late_reply_ignored},
C{test_closed_fails_pending} and its registry and subscriber outage tests;
the offline store's outage tests; L{test_multi_node.FaultTests}' proxy and
Redis restart tests).  Done to the shared master they would fail it over
or break the set for every later test; a master's death under sentinels
is tested on sets of their own in L{tests.test_sentinel} and
L{tests.test_failover}.  Also left out: checks of arguments that never
reach Redis (C{test_bounded_redis_rejects_bad_timeout}, C{test_bad_timeout}).
"""

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mpush.config import RedisConfig, load_config
from mpush.store.redis_connection import sentinel_url

from tests import (
    test_multi_node,
    test_offline_e2e,
    test_offline_store,
    test_redis_router,
    test_redis_store,
    test_shared_ip,
)
from tests.redis_sentinel import MASTER_NAME, shared_sentinel_set
from tests.test_memory_router import RoutingContractMixin
from tests.test_offline_store import OfflineStoreContractMixin
from tests.test_redis_store import SESSION, SPEC_VALUE, raw_command


def borrowing(suite: type, *names: str):
    """
    A class decorator giving a variant C{suite}'s methods C{names}: those
    of a single-Redis suite that hold on Sentinel too.  The suite is reached
    through its module, since trial would run here one imported by name.
    """

    def take(variant: type) -> type:
        for name in names:
            setattr(variant, name, getattr(suite, name))
        return variant

    return take


@borrowing(
    test_redis_router.RedisRoutingContractTests,
    "make_router", "make_events", "make_kick_channel", "make_registry",
    "raw_hget", "raw_hset", "raw_smembers", "raw_zmembers", "raw_sadd", "raw_get", "raw_exists", "raw_delete",
    "raw_publish", "raw_subscribe",
    "test_user_events_raw_zset", "test_route_hash_is_a_hash", "test_registry_key_has_ttl",
    "test_wrong_type_key_is_refused", "test_undecodable_bytes", "test_subscriber_bad_input_and_close",
    "test_mark_offline_loses_race_to_rebind", "test_mark_offline_retries_after_unrelated_change",
)
class SentinelRoutingContractTests(test_redis_router.RedisRoutingTestCase, RoutingContractMixin):
    """The routing contract every backend passes, and mpush's raw Redis format, through sentinels."""

    def start_server(self):
        return shared_sentinel_set()


@borrowing(
    test_offline_store.RedisOfflineStoreTests,
    "setUp", "make_store", "raw", "logged",
    "test_raw_keys", "test_bad_entry_dropped_not_delivered", "test_queue_repairs_ids_without_entries",
    "test_wrong_type_key_is_refused_not_an_outage",
)
class SentinelOfflineStoreTests(OfflineStoreContractMixin, TestCase):
    """The offline store contract, and its raw Redis format, through sentinels."""

    timeout = 60

    def start_server(self):
        return shared_sentinel_set()


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

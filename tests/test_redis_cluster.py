"""
C{[redis] cluster-model = "cluster"} against a real Redis Cluster (three
masters, three replicas): slots, routing, C{MGET} across slots, real C{ASK}
and C{MOVED} from resharding one slot by hand, the slot map following a
killed master's promoted replica, kicks across nodes; the session store,
the routing and offline contracts, offline messages end to end, and the
multi-node and shared-IP process suites on a cluster; a master killed under
pushes and reconnects.  Tests that only read and write share one cluster per
process (L{shared_redis_cluster}); those that kill or reshard start their own.
"""

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush.config import RedisConfig, load_config
from mpush.offline.interfaces import DEFAULT_MAX_BYTES, DEFAULT_MAX_COUNT
from mpush.offline.redis import RedisOfflineStore, offline_data_key, offline_queue_key
from mpush.protocol.routing import (
    NODE_ROUTES_PREFIX,
    InvalidRouteField,
    KickRequest,
    decode_route_member,
    user_route_key,
)
from mpush.protocol.session import ReusableSession
from mpush.push import AckModel, PushClient, PushStatus
from mpush.router.redis import RedisKickChannel
from mpush.store.interfaces import StoreUnavailable
from mpush.store.redis import RedisSessionStore, session_key
from mpush.store.redis_cluster import RedisClusterClient, colocated, crc16, key_slot
from mpush.store.redis_connection import InvalidRedisUrl, cluster_url, connect_redis, parse_redis_url

from tests import test_multi_node, test_offline_e2e, test_redis_router, test_sentinel, test_shared_ip
from tests.process_support import NodeProcess, connect_device
from tests.redis_cluster import shared_redis_cluster, start_redis_cluster
from tests.test_memory_router import RoutingContractMixin
from tests.test_offline_store import OfflineStoreContractMixin, message


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

    #: Retry an attempt until it returns something else than False.
    eventually = test_sentinel.SentinelTests.eventually


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
    def test_scripts_on_one_slot_and_on_one_node(self):
        redis = self.client.redis
        write = "for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[i]) end return #KEYS"
        keys = ["{t}a", "{t}b"]
        self.assertEqual(int((yield redis.eval(write, keys, ["1", "2"]))), 2)
        self.assertEqual((yield redis.mget(keys)), ["1", "2"])
        # Keys of several slots of one node: one script, keys passed in ARGV.
        owner = self.client.node_of(key_slot("a"))
        same_node = [k for k in (f"k{i}" for i in range(200)) if self.client.node_of(key_slot(k)) == owner][:5]
        self.assertEqual(len({key_slot(k) for k in same_node}), 5)
        self.assertEqual(int((yield redis.eval(write, same_node, list("abcde")))), 5)
        self.assertEqual((yield redis.mget(same_node)), list("abcde"))
        # Keys of two nodes in one script: Redis refuses the other node's.
        elsewhere = next(k for k in (f"k{i}" for i in range(200)) if self.client.node_of(key_slot(k)) != owner)
        with self.assertRaises(Exception) as refused:
            yield redis.eval(write, [same_node[0], elsewhere], ["x", "y"])
        self.assertIn("non local key", str(refused.exception))

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
    def test_node_batch_meeting_a_moved_slot_fails_then_the_map_catches_up(self):
        redis = self.client.redis
        key = "migrating-key"
        slot = key_slot(key)
        yield redis.set(key, "0")  # the map is read
        source = self.cluster.owner_of(slot)
        neighbour = next(
            k for k in (f"n{i}" for i in range(500))
            if key_slot(k) != slot and self.client.node_of(key_slot(k)) == ("127.0.0.1", source.port)
        )
        write = "for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[i]) end return #KEYS"
        self.assertEqual(int((yield redis.eval(write, [key, neighbour], ["1", "2"]))), 2)
        target = next(m for m in self.cluster.masters() if m is not source)
        self.cluster.begin_migration(slot, target)
        self.cluster.migrate_key(source, target, key)
        self.cluster.end_migration(slot, target)
        # The client's map still sends the batch to the source, which no
        # longer serves the key: that batch fails, and the map is read again.
        refreshes = self.client.refreshes
        with self.assertRaises(Exception) as refused:
            yield redis.eval(write, [key, neighbour], ["3", "4"])
        self.assertIn("non local key", str(refused.exception))
        yield self.eventually(lambda: self.client.refreshes > refreshes)
        self.assertEqual(self.client.node_of(slot), ("127.0.0.1", target.port))
        # Batched again by node, as a TurnBatch would: each part on its own master.
        self.assertEqual(int((yield redis.eval(write, [key], ["3"]))), 1)
        self.assertEqual(int((yield redis.eval(write, [neighbour], ["4"]))), 1)
        self.assertEqual((yield redis.mget([key, neighbour])), ["3", "4"])

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


    @defer.inlineCallbacks
    def test_kicks_heard_across_the_cluster_and_after_the_subscribers_node_dies(self):
        kicks = RedisKickChannel(
            self.cluster.url, reactor, timeout=1, publisher=self.client, max_retry_delay=0.2, ping_interval=0.3
        )
        self.addCleanup(kicks.close)
        heard = []
        yield self.eventually(lambda: kicks.listen("10.0.0.5", 3001, heard.append))
        kick = KickRequest("u", "d", "c", 1, "10.0.0.5", 3001)
        # Published on the master of the channel's slot, heard on whichever
        # node the subscriber is connected to (the first seed).
        yield self.eventually(lambda: kicks.publish(kick).addCallback(lambda _: bool(heard)))
        self.cluster.servers[0].kill()
        self.cluster.wait_ok()
        # The subscriber is subscribed again on the next seed that answers.
        yield self.eventually(lambda: kicks.publish(kick).addCallback(lambda _: len(heard) >= 2))
        self.assertEqual(heard[-1], kick)


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


    @defer.inlineCallbacks
    def test_a_dead_master_fails_only_its_own_sessions_loads(self):
        # One turn's loads go one command per node: the sessions of a dead
        # master fail, those of the live masters load (a reconnect storm
        # meeting a failover keeps two thirds of its fast connects).
        store = RedisSessionStore(self.client, reactor, timeout=5.0, close_connection=False)
        self.addCleanup(store.close)
        session = ReusableSession("android", "9", "1.0", "dev", bytes(range(16)), b"v" * 16)
        ids = [f"s{i}" for i in range(60)]
        yield defer.gatherResults([store.save(sid, session, 600) for sid in ids])
        dead = self.cluster.kill_master(key_slot(session_key(ids[0])))
        loads = [store.load(sid) for sid in ids]
        loaded = yield defer.DeferredList(loads, consumeErrors=True)
        on_dead = [self.cluster.owner_of(key_slot(session_key(sid))) is dead for sid in ids]
        self.assertTrue(any(on_dead) and not all(on_dead))
        for sid, was_dead, (ok, value) in zip(ids, on_dead, loaded):
            if was_dead:
                self.assertFalse(ok, sid)
                value.trap(StoreUnavailable)
            else:
                self.assertEqual((ok, value), (True, session), sid)


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


#: Seconds from a cluster master's death until pushes to the users whose
#: routes it held succeed again through an mpush node that was never
#: restarted: the cluster's failover (node timeout 1 s in the tests, then
#: the replica's election) plus the node's next slot map.  Measured 2-4 s
#: on this box; the bound leaves room for a loaded machine.
RECOVERY_BOUND = 15.0


class ClusterFailoverTests(TestCase):
    """
    A node under AUTO_ACK pushes and a stream of reconnects while a cluster
    master is SIGKILLed: every push is answered (success, offline, failure
    or timeout: none hangs), and pushes to the users whose routes the dead
    master held succeed again within L{RECOVERY_BOUND}, without a restart.
    """

    timeout = 180

    @defer.inlineCallbacks
    def test_master_killed_under_pushes_and_reconnects(self):
        cluster = start_redis_cluster(self)
        seeds = ", ".join(f'"{node}"' for node in cluster.nodes)
        node = NodeProcess(
            '[net]\nlocal-ip = "127.0.0.1"\npublic-ip = "127.0.0.1"\n'
            f'[redis]\ncluster-model = "cluster"\nnodes = [{seeds}]\n'
        )
        self.addCleanup(node.stop)
        node.start()
        pusher = PushClient(reactor, redis_url=cluster.url, timeout=2.0)
        self.addCleanup(pusher.close)
        users = [f"u{i}" for i in range(30)]
        devices = {}
        for user in users:
            devices[user] = yield connect_device(self, node, user)
        # The users whose routes live on the master about to die.
        doomed_slot = key_slot(user_route_key(users[0]))
        doomed_master = cluster.owner_of(doomed_slot)
        doomed = [u for u in users if cluster.owner_of(key_slot(user_route_key(u))) is doomed_master]
        self.assertTrue(doomed)
        cluster.wait_replicated(doomed_slot)

        answers: list = []
        pushes: list[defer.Deferred] = []
        turn = iter(range(10**6))

        def push_one():
            user = users[next(turn) % len(users)]
            sent = pusher.push(user, b"load", ack=AckModel.AUTO_ACK)
            sent.addCallback(lambda results: answers.extend(r.status for r in results))
            pushes.append(sent)

        reconnects = {"done": 0, "failed": 0}

        def reconnect_one():
            user = users[next(turn) % len(users)]
            devices[user].close()

            def done(client):
                devices[user] = client
                reconnects["done"] += 1

            def failed(_):
                reconnects["failed"] += 1

            connect_device(self, node, user).addCallbacks(done, failed)

        load = task.LoopingCall(push_one)
        load.start(0.01)
        churn = task.LoopingCall(reconnect_one)
        churn.start(0.1)
        self.addCleanup(lambda: load.running and load.stop())
        self.addCleanup(lambda: churn.running and churn.stop())
        yield sleep(1.0)

        cluster.kill_master(doomed_slot)
        killed_at = reactor.seconds()

        @defer.inlineCallbacks
        def doomed_reached():
            results = yield pusher.push(doomed[0], b"probe", ack=AckModel.AUTO_ACK)
            return results[0].status is PushStatus.SUCCESS

        yield self.eventually(doomed_reached, timeout=RECOVERY_BOUND)
        recovered = reactor.seconds() - killed_at
        yield sleep(1.0)
        load.stop()
        churn.stop()
        # Every push is answered: none hangs past the pusher's own timeout.
        yield defer.DeferredList(pushes, consumeErrors=False)
        self.assertEqual(len(answers), len(pushes))
        counts = {status.value: answers.count(status) for status in set(answers)}
        print(f"\n    cluster master killed: pushes to its users succeed again after {recovered:.2f} s "
              f"(bound {RECOVERY_BOUND:g} s); {len(pushes)} pushes answered {counts}; "
              f"reconnects {reconnects}")
        self.assertLess(recovered, RECOVERY_BOUND)
        self.assertIn(PushStatus.SUCCESS, answers)
        self.assertNotIn("Traceback", node.log())

    eventually = ClusterTestCase.eventually


class OfflineMessagesOnClusterTests(test_offline_e2e.OfflineMessagesTests):
    """Offline messages end to end (store, fast connect, deliver once, ack) with the node's state on a Redis Cluster."""

    def base_config(self):
        cluster = shared_redis_cluster()
        return load_config(None).replace(redis=RedisConfig(nodes=cluster.nodes, cluster_model="cluster"))


class SharedOnlineListOnClusterTests(_NodesOnCluster, test_shared_ip.SharedOnlineListTests):
    """Nodes sharing an IP keep each other's online users, with the counts and sets beside the list's slot."""

    def listed(self):
        key = "mp:oul:127.0.0.1"
        return {user.decode() for user in self.redis.on_owner(key, "ZRANGE", key, "0", "-1")}

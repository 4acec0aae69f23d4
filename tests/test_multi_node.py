"""
Several real C{twistd mpush} nodes sharing one real Redis: pushes find users
wherever they are connected, kicks cross nodes, dead nodes are noticed, and a
Redis restart is survived.  Devices are the Python client; back-ends are the
Python push client.
"""

import os
import signal

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from mpush.client.config import ClientConfig
from mpush.client.protocol import connect_client
from mpush.protocol.crypto import MPUSH_DEMO_PRIVATE_KEY, MPUSH_DEMO_PUBLIC_KEY
from mpush.push import AckModel, PushClient, PushStatus

from tests.polling import sleep, wait_until
from tests.process_support import NodeProcess
from tests.redis_proxy import RedisProxy
from tests.redis_server import start_redis_server


def node_config(redis_port, node_ttl="2s", node_refresh="500ms", redis_section=None):
    """A node's config on the Redis at C{redis_port}, or as C{redis_section} says (a cluster)."""
    return (
        "[security]\n"
        f'private-key = "{MPUSH_DEMO_PRIVATE_KEY}"\n'
        f'public-key = "{MPUSH_DEMO_PUBLIC_KEY}"\n'
        "[net]\n"
        'local-ip = "127.0.0.1"\n'
        + (redis_section or f'[redis]\nnodes = ["127.0.0.1:{redis_port}"]\n')
        + f'[cluster]\nnode-ttl = "{node_ttl}"\nnode-refresh = "{node_refresh}"\n'
    )


def redis_read(url, command):
    """C{command(redis)}'s reply on a connection of its own to C{url}, closed after."""
    from mpush.store.redis_connection import connect_redis

    client = connect_redis(url, reactor)

    def done(value):
        return client.disconnect().addCallback(lambda _: value)

    return command(client.redis).addBoth(done)


class ClusterCase(TestCase):
    timeout = 120

    def setUp(self):
        self.redis = start_redis_server(self)

    #: The [redis] section of the nodes' config; None: C{self.redis}'s port.
    redis_section = None

    def start_node(self):
        node = NodeProcess(node_config(self.redis.port, redis_section=self.redis_section))
        self.addCleanup(node.stop)
        return node.start()

    @defer.inlineCallbacks
    def device(self, node, user_id, device_id=None, os_name="android", tags=None, **timeouts):
        config = ClientConfig(
            host="127.0.0.1",
            port=node.port,
            public_key=MPUSH_DEMO_PUBLIC_KEY,
            device_id=device_id or f"device-of-{user_id}",
            os_name=os_name,
            user_id=user_id,
            tags=tags,
            **timeouts,
        )
        client = yield connect_client(config, reactor)
        self.addCleanup(client.close)
        return client

    def pusher(self, **kwargs):
        client = PushClient(reactor, redis_url=self.redis.url, **kwargs)
        self.addCleanup(client.close)
        return client

class PushAcrossNodesTests(ClusterCase):
    @defer.inlineCallbacks
    def test_push_reaches_user_on_either_node(self):
        node_a, node_b = self.start_node(), self.start_node()
        alice = yield self.device(node_a, "alice")
        bob = yield self.device(node_b, "bob")
        pusher = self.pusher()
        [to_alice] = yield pusher.push("alice", b"for alice", ack=AckModel.AUTO_ACK)
        [to_bob] = yield pusher.push("bob", b"for bob", ack=AckModel.AUTO_ACK)
        self.assertEqual((to_alice.status, to_bob.status), (PushStatus.SUCCESS, PushStatus.SUCCESS))
        self.assertEqual(to_alice.node, f"127.0.0.1:{node_a.gateway_port}")
        self.assertEqual(to_bob.node, f"127.0.0.1:{node_b.gateway_port}")
        received = yield alice.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"for alice")
        received = yield bob.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"for bob")

    @defer.inlineCallbacks
    def test_push_sent_to_the_wrong_node_is_redirected(self):
        """
        A pusher that asks node B for a user bound on node A gets
        ROUTER_CHANGE and delivers through A.
        """
        node_a, node_b = self.start_node(), self.start_node()
        alice = yield self.device(node_a, "alice")
        pusher = PushClient(reactor, gateway=("127.0.0.1", node_b.gateway_port))
        self.addCleanup(pusher.close)
        [result] = yield pusher.push("alice", b"via b", ack=AckModel.AUTO_ACK)
        self.assertEqual(result.status, PushStatus.SUCCESS)
        self.assertTrue(result.redirected)
        received = yield alice.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"via b")

    @defer.inlineCallbacks
    def test_offline_user(self):
        self.start_node()
        pusher = self.pusher()
        [result] = yield pusher.push("nobody", b"x")
        self.assertEqual(result.status, PushStatus.OFFLINE)

    @defer.inlineCallbacks
    def test_disconnected_user_is_offline(self):
        node = self.start_node()
        carol = yield self.device(node, "carol")
        yield carol.close()
        pusher = self.pusher()
        result = yield wait_until(
            lambda: pusher.push("carol", b"x").addCallback(
                lambda results: results[0].status is PushStatus.OFFLINE
            )
        )
        self.assertTrue(result)

    @defer.inlineCallbacks
    def test_biz_ack_and_ack_timeout(self):
        node = self.start_node()
        dave = yield self.device(node, "dave")
        pusher = self.pusher()
        pending = pusher.push("dave", b"ack me", ack=AckModel.BIZ_ACK, timeout=3.0)
        received = yield dave.wait_for_push(timeout=5)
        dave.ack(received.session_id)
        [result] = yield pending
        self.assertEqual(result.status, PushStatus.SUCCESS)
        [missed] = yield pusher.push("dave", b"never acked", ack=AckModel.BIZ_ACK, timeout=1.0)
        self.assertEqual(missed.status, PushStatus.ACK_TIMEOUT)


class KickAcrossNodesTests(ClusterCase):
    @defer.inlineCallbacks
    def test_user_moving_between_nodes(self):
        node_a, node_b = self.start_node(), self.start_node()
        first = yield self.device(node_a, "erin", device_id="phone-1")
        kicked = defer.Deferred()
        first.on_kick = lambda device_id, user_id: kicked.callback((device_id, user_id))
        second = yield self.device(node_b, "erin", device_id="phone-2")
        who = yield kicked
        self.assertEqual(who, ("phone-1", "erin"))
        pusher = self.pusher()
        [result] = yield pusher.push("erin", b"where are you", ack=AckModel.AUTO_ACK)
        self.assertEqual(result.status, PushStatus.SUCCESS)
        self.assertEqual(result.node, f"127.0.0.1:{node_b.gateway_port}")
        received = yield second.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"where are you")
        self.assertEqual(first.pushes, [])


class BroadcastTests(ClusterCase):
    @defer.inlineCallbacks
    def test_broadcast_with_tags_reaches_exactly_the_matching_users(self):
        node_a, node_b = self.start_node(), self.start_node()
        devices = {}
        for user, node, tags in [("u1", node_a, "vip"), ("u2", node_b, "vip"), ("u3", node_a, None), ("u4", node_b, "free")]:
            devices[user] = yield self.device(node, user, tags=tags)
        pusher = self.pusher()
        results = yield pusher.broadcast(b"sale", tags=["vip"])
        self.assertEqual(sorted(r.node for r in results),
                         sorted(f"127.0.0.1:{n.gateway_port}" for n in (node_a, node_b)))
        self.assertTrue(all(r.status is PushStatus.SUCCESS for r in results))
        self.assertEqual(sum(r.count for r in results), 2)
        for user in ("u1", "u2"):
            received = yield devices[user].wait_for_push(timeout=5)
            self.assertEqual(received.content, b"sale")
        yield sleep(0.3)
        self.assertEqual(devices["u3"].pushes + devices["u4"].pushes, [])


class FaultTests(ClusterCase):
    @defer.inlineCallbacks
    def test_killed_node_routes_marked_offline(self):
        node_a, node_b = self.start_node(), self.start_node()
        yield self.device(node_a, "frank")
        node_a.process.send_signal(signal.SIGKILL)
        node_a.process.wait(10)
        pusher = self.pusher(timeout=2.0)
        # Right away, the dead gateway is unreachable and unregistered soon:
        # the push never hangs, and once node B notices, the route is offline.
        result = yield wait_until(
            lambda: pusher.push("frank", b"x").addCallback(
                lambda results: results[0] if results[0].status is PushStatus.OFFLINE else None
            ),
            timeout=15,
        )
        self.assertEqual(result.status, PushStatus.OFFLINE)
        # Node B notices A's registration expired and marks A's routes
        # offline: within node-ttl plus a refresh or two.
        route = yield wait_until(
            lambda: self.redis_hget("mp:ur:frank", "1").addCallback(
                lambda value: value if value and "connId" not in value else None
            ),
            timeout=10,
        )
        self.assertIn('"deviceId":"device-of-frank"', route)
        [again] = yield pusher.push("frank", b"y")
        self.assertEqual((again.status, again.reason), (PushStatus.OFFLINE, "route offline"))

    def redis_hget(self, key, field):
        return redis_read(self.redis.url, lambda redis: redis.hget(key, field))

    def redis_get(self, key):
        return redis_read(self.redis.url, lambda redis: redis.get(key))

    @defer.inlineCallbacks
    def test_route_bound_in_an_outage_is_shared_once_redis_is_back(self):
        """
        A bind while Redis does not answer is answered OK with the route
        kept here only; once Redis takes writes again the node writes it,
        and a push through another node reaches the device.
        """
        proxy = RedisProxy(self.redis.port).start()
        self.addCleanup(proxy.stop)
        # A long node-ttl: node B must not take A for dead (that path, a
        # node registered again, shares every route too).
        node_a = NodeProcess(node_config(proxy.port, node_ttl="60s", node_refresh="1s"))
        self.addCleanup(node_a.stop)
        node_a.start()
        node_b = self.start_node()
        yield wait_until(lambda: self.redis_get(f"mp:node:127.0.0.1:{node_a.gateway_port}"), timeout=20)
        proxy.blackhole()
        heidi = yield self.device(node_a, "heidi", handshake_timeout=10.0, bind_timeout=10.0)
        # What node A sent meanwhile (the failed route write) is lost.
        proxy.cut()
        proxy.heal()
        route = yield wait_until(lambda: self.redis_hget("mp:ur:heidi", "1"), timeout=20)
        self.assertIn(f'"port":{node_a.gateway_port}', route)
        self.assertIn('"connId"', route)
        pusher = PushClient(reactor, gateway=("127.0.0.1", node_b.gateway_port))
        self.addCleanup(pusher.close)
        [result] = yield pusher.push("heidi", b"after the outage", ack=AckModel.AUTO_ACK)
        self.assertEqual(result.status, PushStatus.SUCCESS)
        self.assertTrue(result.redirected)
        received = yield heidi.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"after the outage")

    @defer.inlineCallbacks
    def test_node_taken_for_dead_shares_its_routes_again(self):
        """
        Node A cannot reach Redis for longer than node-ttl while B can: B
        takes A for dead and marks its routes offline.  A, alive all along,
        finds itself gone from the registry when Redis is back, registers
        and writes its routes again: a push through B reaches A's device.
        """
        proxy = RedisProxy(self.redis.port).start()
        self.addCleanup(proxy.stop)
        node_a = NodeProcess(node_config(proxy.port))
        self.addCleanup(node_a.stop)
        node_a.start()
        node_b = self.start_node()
        ivan = yield self.device(node_a, "ivan")
        online = yield self.redis_hget("mp:ur:ivan", "1")
        self.assertIn('"connId"', online)
        proxy.blackhole()
        yield wait_until(
            lambda: self.redis_hget("mp:ur:ivan", "1").addCallback(lambda value: value and '"connId"' not in value),
            what="B marking A's routes offline",
            timeout=20,
        )
        proxy.cut()
        proxy.heal()
        yield wait_until(
            lambda: self.redis_hget("mp:ur:ivan", "1").addCallback(lambda value: value == online),
            what="A writing its route again",
            timeout=20,
        )
        pusher = PushClient(reactor, gateway=("127.0.0.1", node_b.gateway_port))
        self.addCleanup(pusher.close)
        [result] = yield pusher.push("ivan", b"still here", ack=AckModel.AUTO_ACK)
        self.assertEqual(result.status, PushStatus.SUCCESS)
        received = yield ivan.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"still here")
        self.assertIn("had expired from the registry and was re-registered", node_a.log())

    @defer.inlineCallbacks
    def test_redis_restart_mid_run(self):
        node = self.start_node()
        grace = yield self.device(node, "grace")
        pusher = self.pusher(timeout=2.0)
        [before] = yield pusher.push("grace", b"one", ack=AckModel.AUTO_ACK)
        self.assertEqual(before.status, PushStatus.SUCCESS)
        self.redis.restart()  # no persistence: routes are gone until the device binds again
        yield grace.close()
        grace = yield self.device(node, "grace")
        [after] = yield wait_until(
            lambda: pusher.push("grace", b"two", ack=AckModel.AUTO_ACK).addCallback(
                lambda results: results if results[0].status is PushStatus.SUCCESS else None
            ),
            timeout=20,
        )
        self.assertEqual(after.status, PushStatus.SUCCESS)
        received = yield grace.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"two")


class ResumeAnywhereTests(ClusterCase):
    @defer.inlineCallbacks
    def test_fast_connect_to_another_node_right_after_the_handshake(self):
        """
        A device that has its HandshakeOk from node A can resume on node B
        at once: the session reaches Redis before the reply leaves A.  Many
        devices at a time, each going to B the moment A answered.
        """
        node_a, node_b = self.start_node(), self.start_node()
        directory = self.mktemp()
        os.makedirs(directory)

        def config(node, i):
            return ClientConfig(
                host="127.0.0.1",
                port=node.port,
                public_key=MPUSH_DEMO_PUBLIC_KEY,
                device_id=f"roamer-{i}",
                session_file=os.path.join(directory, f"{i}.dat"),
                handshake_timeout=10.0,
                bind_timeout=10.0,
            )

        @defer.inlineCallbacks
        def roam(i):
            first = yield connect_client(config(node_a, i), reactor)
            closed = first.close()
            second = yield connect_client(config(node_b, i), reactor)
            resumed = second.resumed
            yield defer.gatherResults([closed, second.close()])
            return (first.handshake_ok_count, resumed)

        outcomes = yield defer.gatherResults([roam(i) for i in range(150)])
        self.assertEqual(outcomes, [(1, True)] * 150)

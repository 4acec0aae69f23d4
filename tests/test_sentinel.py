"""
C{[redis] cluster-model = "sentinel"} on real processes: a master, a replica
and three C{redis-server --sentinel} on free ports.  The master is killed;
once the sentinels have promoted the replica, the same node process (never
restarted) binds devices, takes pushes and hears kicks again.
"""

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from mpush.protocol.routing import KickRequest
from mpush.push import AckModel, PushClient, PushStatus
from mpush.router.redis import RedisKickChannel
from mpush.store.redis_connection import connect_redis, sentinel_url

from tests.polling import until_succeeds
from tests.process_support import NodeProcess, connect_device
from tests.redis_server import start_sentinel_set
from tests.test_redis_router import raw_command


class SentinelTests(TestCase):
    timeout = 120

    def setUp(self):
        self.master, self.replica, self.sentinels = start_sentinel_set(self)
        self.nodes = [f"127.0.0.1:{s.port}" for s in self.sentinels]
        self.url = sentinel_url(tuple(self.nodes), "mymaster")

    def eventually(self, attempt, timeout=30.0):
        """Retry C{attempt} until it succeeds (a failover takes seconds)."""
        return until_succeeds(attempt, timeout)

    def failover(self):
        """Kill the master; fires once a sentinel names the replica instead."""
        self.master.kill()

        def promoted():
            name = raw_command(self.sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
            return int(name[1]) == self.replica.port

        return self.eventually(promoted)

    @defer.inlineCallbacks
    def test_pool_and_pubsub_follow_a_failover(self):
        client = connect_redis(self.url, reactor, max_retry_delay=0.2, connect_timeout=1, reply_timeout=1)
        self.addCleanup(client.disconnect)
        yield self.eventually(lambda: client.redis.set("k", "before"))
        self.assertEqual((yield client.redis.get("k")), "before")
        kicks = RedisKickChannel(self.url, reactor, timeout=1, publisher=client, max_retry_delay=0.2, ping_interval=0.3)
        self.addCleanup(kicks.close)
        heard = []
        yield self.eventually(lambda: kicks.listen("10.0.0.5", 3001, heard.append))
        kick = KickRequest("u", "d", "c", 1, "10.0.0.5", 3001)
        yield self.eventually(lambda: kicks.publish(kick).addCallback(lambda reached: reached == 1))

        yield self.failover()
        # The same pool writes to the promoted master, and the subscriber
        # is subscribed there again: a kick published now is heard.
        yield self.eventually(lambda: client.redis.set("k", "after"))
        self.assertEqual(raw_command(self.replica.port, "GET", "k"), b"after")
        yield self.eventually(lambda: kicks.publish(kick).addCallback(lambda reached: reached == 1))
        yield self.eventually(lambda: len(heard) >= 2)

    @defer.inlineCallbacks
    def test_node_keeps_working_through_a_failover(self):
        node = NodeProcess(
            "[net]\nlocal-ip = \"127.0.0.1\"\npublic-ip = \"127.0.0.1\"\n"
            f"[redis]\ncluster-model = \"sentinel\"\nsentinel-master = \"mymaster\"\nnodes = {self.nodes!r}\n".replace(
                "'", '"'
            )
        )
        self.addCleanup(node.stop)
        node.start()
        pusher = PushClient(reactor, redis_url=self.url)
        self.addCleanup(pusher.close)

        def push(user):
            def sent(results):
                return results[0].status == PushStatus.SUCCESS

            return pusher.push(user, b"hello", ack=AckModel.AUTO_ACK).addCallback(sent)

        yield self.device(node, "before")
        yield self.eventually(lambda: push("before"))

        yield self.failover()
        # No restart: once the node has reconnected to the promoted master,
        # a new device binds (its route and online event written there) and
        # is pushed to, across the gateway.  A device that bound while the
        # node was still reconnecting has no shared route: the next one
        # tries.
        attempts = iter(range(1000))

        @defer.inlineCallbacks
        def bind_and_push():
            user = f"after-{next(attempts)}"
            yield self.device(node, user)
            pushed = yield push(user)
            return user if pushed else False

        user = yield self.eventually(bind_and_push)
        self.assertIn(user.encode(), raw_command(self.replica.port, "ZRANGE", "mp:oul:127.0.0.1", "0", "-1"))
        self.assertNotIn("Traceback", node.log())

    def device(self, node, user_id):
        return connect_device(self, node, user_id)


class SentinelEndpointCloseTests(TestCase):
    @defer.inlineCallbacks
    def test_closing_fails_a_discovery_under_way_and_leaves_no_timer(self):
        """
        A pool closed while it waits for the sentinels (none answers: a
        failover under way, or all of them down) fails that wait at once
        and leaves nothing scheduled; trial's clean-reactor check is the
        other half of this test.
        """
        from mpush.store.redis_connection import SentinelMasterEndpoint, parse_redis_url
        from tests.process_support import free_port

        address = parse_redis_url(sentinel_url((f"127.0.0.1:{free_port()}",), "mymaster"))
        endpoint = SentinelMasterEndpoint(reactor, address, 5.0)
        found = endpoint.discover_master()
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(found.called)
        yield endpoint.close()
        error = yield self.assertFailure(found, Exception)
        self.assertIn("closed", str(error))

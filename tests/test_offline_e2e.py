"""
Offline messages end to end on a loopback node: stored while the user is
away, delivered once and in order when the user binds again (after a fast
connect), acked and gone; expiry and overflow are counted.
"""

import os

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from mpush.client.config import ClientConfig
from mpush.client.protocol import connect_client
from mpush.config import OfflineConfig, RedisConfig, load_config
from mpush.node_api import PushRequest
from mpush.protocol.crypto import MPUSH_DEMO_PUBLIC_KEY

from tests.loopback_support import LoopbackNode
from tests.redis_server import start_redis_server


class OfflineMessagesTests(TestCase):
    timeout = 30

    def base_config(self):
        """The node's config before the test's [offline]: in memory here."""
        return load_config(None)

    def start(self, **offline):
        config = self.base_config()
        if offline:
            config = config.replace(offline=OfflineConfig(**offline))
        self.server = LoopbackNode(self, config=config)
        self.api = self.server.api
        self.token = os.path.abspath(self.mktemp())

    @defer.inlineCallbacks
    def device(self):
        config = ClientConfig(
            host="127.0.0.1",
            port=self.server.port,
            public_key=MPUSH_DEMO_PUBLIC_KEY,
            device_id="phone-of-olga",
            user_id="olga",
            session_file=self.token,
        )
        client = yield connect_client(config, reactor)
        self.addCleanup(client.close)
        return client

    def push(self, text, ttl=600, ack="auto"):
        return self.api.push(
            PushRequest(users=("olga",), content=text.encode(), ack=ack, offline_ttl=ttl)
        )

    @defer.inlineCallbacks
    def received(self, client, count):
        for _ in range(200):
            if len(client.pushes) >= count:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        return list(client.pushes)

    def sample(self, name, **labels):
        return self.server.node.metrics.registry.get_sample_value(name, labels) or 0

    @defer.inlineCallbacks
    def test_stored_then_delivered_once_in_order_after_fast_connect(self):
        self.start()
        first = yield self.device()  # leaves a session for the fast connect
        yield first.close()
        yield task.deferLater(reactor, 0.05, lambda: None)
        for text in ("one", "two", "three"):
            outcome = yield self.push(text)
            self.assertEqual([r["status"] for r in outcome.results], ["stored_offline"])
        count = yield self.server.backends.offline.count("olga")
        self.assertEqual(count, 3)
        again = yield self.device()
        self.assertTrue(again.resumed)
        pushes = yield self.received(again, 3)
        self.assertEqual(pushes, [b"one", b"two", b"three"])
        # Auto-acked by the client: removed from the store.
        for _ in range(100):
            count = yield self.server.backends.offline.count("olga")
            if count == 0:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(count, 0)
        yield again.close()
        third = yield self.device()
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(third.pushes, [])
        self.assertEqual(self.sample("mpush_offline_messages_total", event="stored"), 3)

    @defer.inlineCallbacks
    def test_expired_messages_dropped_and_counted(self):
        self.start()
        yield self.push("old", ttl=1)
        yield task.deferLater(reactor, 1.2, lambda: None)
        client = yield self.device()
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(client.pushes, [])
        self.assertEqual(self.server.backends.offline.stats()["expired"], 1)
        self.assertEqual(self.sample("mpush_offline_messages_total", event="expired"), 1)

    @defer.inlineCallbacks
    def test_full_queue_drops_oldest_and_counts(self):
        self.start(max_count=2)
        for text in ("a", "b", "c"):
            yield self.push(text)
        self.assertEqual(self.server.backends.offline.stats()["dropped_full"], 1)
        self.assertEqual(self.sample("mpush_offline_messages_total", event="dropped_full"), 1)
        client = yield self.device()
        pushes = yield self.received(client, 2)
        self.assertEqual(pushes, [b"b", b"c"])

    @defer.inlineCallbacks
    def test_online_user_not_stored(self):
        self.start()
        client = yield self.device()
        outcome = yield self.push("live")
        self.assertEqual([r["status"] for r in outcome.results], ["success"])
        count = yield self.server.backends.offline.count("olga")
        self.assertEqual(count, 0)
        pushes = yield self.received(client, 1)
        self.assertEqual(pushes, [b"live"])


class OfflineMessagesOnRedisTests(OfflineMessagesTests):
    """The same with the node's state on one real Redis."""

    def base_config(self):
        redis = start_redis_server(self)
        return load_config(None).replace(redis=RedisConfig(nodes=(f"127.0.0.1:{redis.port}",)))

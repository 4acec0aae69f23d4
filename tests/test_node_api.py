"""
NodeAPI against a whole node on loopback: pushes through the real gateway,
kicks, routes, counts, allot and the config view.
"""

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from mpush.client.config import ClientConfig
from mpush.client.protocol import connect_client
from mpush.config import HttpConfig, load_config
from mpush.node_api import PushRejected, PushRequest
from mpush.protocol.crypto import MPUSH_DEMO_PUBLIC_KEY

from tests.loopback_support import LoopbackNode


class NodeAPITests(TestCase):
    timeout = 30

    def setUp(self):
        config = load_config(None).replace(http=HttpConfig(api_token="secret-token"))
        self.server = LoopbackNode(self, config=config)
        self.api = self.server.api

    @defer.inlineCallbacks
    def device(self, user_id, device_id=None):
        config = ClientConfig(
            host="127.0.0.1",
            port=self.server.port,
            public_key=MPUSH_DEMO_PUBLIC_KEY,
            device_id=device_id or f"device-of-{user_id}",
            user_id=user_id,
        )
        client = yield connect_client(config, reactor)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_push_to_online_and_offline_users(self):
        alice = yield self.device("alice")
        outcome = yield self.api.push(
            PushRequest(users=("alice", "nobody"), content=b"hi", ack="auto", timeout_ms=3000)
        )
        self.assertRegex(outcome.message_id, r"^[0-9a-f]{32}$")
        by_user = {r["user"]: r for r in outcome.results}
        self.assertEqual(by_user["alice"]["status"], "success")
        self.assertEqual(by_user["alice"]["client_type"], 1)
        self.assertEqual(by_user["alice"]["node"], f"127.0.0.1:{self.server.gateway_port}")
        self.assertEqual(by_user["nobody"]["status"], "offline")
        received = yield alice.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"hi")
        stats = self.api.stats()
        self.assertEqual(stats["pushes"]["success"], 1)
        self.assertEqual(stats["pushes"]["offline"], 1)
        self.assertEqual(stats["connections"], 1)
        task = self.api.task_stats(outcome.message_id)
        self.assertEqual((task["sent"], task["acked"], task["offline"]), (1, 1, 1))
        self.assertIsNone(self.api.task_stats("unknown"))

    @defer.inlineCallbacks
    def test_broadcast(self):
        yield self.device("u1")
        yield self.device("u2")
        outcome = yield self.api.push(PushRequest(content=b"all", broadcast=True, task_id="t-1"))
        [result] = outcome.results
        self.assertEqual((result["status"], result["count"]), ("success", 2))
        self.assertEqual(self.api.task_stats("t-1")["sent"], 2)

    @defer.inlineCallbacks
    def test_bad_requests_rejected(self):
        with self.assertRaises(PushRejected):
            yield self.api.push(PushRequest(users=("a",), content=b"x", ack="sometimes"))
        with self.assertRaises(PushRejected):
            yield self.api.push(PushRequest(content=b"x", broadcast=True, condition="eval("))

    @defer.inlineCallbacks
    def test_routes_and_kick(self):
        first = yield self.device("carol")
        routes = yield self.api.routes("carol")
        self.assertEqual(list(routes), [1])
        self.assertTrue(routes[1].online)
        kicked = defer.Deferred()
        first.on_kick = lambda device_id, user_id: kicked.callback(user_id)
        closed = defer.Deferred()
        first.on_close = lambda reason: closed.callback(None)
        count = yield self.api.kick("carol")
        self.assertEqual(count, 1)
        # Logged out: the route is offline when kick answers, and the
        # connection closes after the KICK.
        routes = yield self.api.routes("carol")
        self.assertFalse(routes[1].online)
        who = yield kicked
        self.assertEqual(who, "carol")
        yield closed
        none = yield self.api.kick("carol", client_type=2)
        self.assertEqual(none, 0)
        outcome = yield self.api.push(PushRequest(users=("carol",), content=b"gone?", timeout_ms=3000))
        self.assertEqual([r["status"] for r in outcome.results], ["offline"])

    @defer.inlineCallbacks
    def test_kick_without_close_is_mpush_kick(self):
        """close=False: KICK only; the connection stays open and bound."""
        erin = yield self.device("erin")
        kicked = defer.Deferred()
        erin.on_kick = lambda device_id, user_id: kicked.callback(user_id)
        count = yield self.api.kick("erin", close=False)
        self.assertEqual(count, 1)
        yield kicked
        routes = yield self.api.routes("erin")
        self.assertTrue(routes[1].online)
        outcome = yield self.api.push(PushRequest(users=("erin",), content=b"still here", ack="auto",
                                                  timeout_ms=3000))
        self.assertEqual([r["status"] for r in outcome.results], ["success"])

    @defer.inlineCallbacks
    def test_counts_and_allot(self):
        yield self.device("dave")
        self.assertEqual(self.api.connection_count(), 1)
        self.assertEqual(self.api.local_users(), 1)
        online = yield self.api.online_count()
        self.assertEqual(online, 1)
        endpoints = yield self.api.allot()
        self.assertEqual(endpoints, [f"127.0.0.1:{self.server.port}"])

    def test_config_view_masks_secrets(self):
        view = self.api.config_view()
        self.assertEqual(view["core"]["max-packet-size"], 10240)
        self.assertEqual(view["security"]["private-key"], "***")
        self.assertEqual(view["http"]["api-token"], "***")
        self.assertEqual(self.api.config_value("core.max-packet-size"), 10240)
        self.assertRaises(KeyError, self.api.config_value, "core.nope")
        self.assertRaises(KeyError, self.api.config_value, "core.max-packet-size.deeper")

    def test_config_value_by_mpush_key(self):
        """The console's conf takes MPush's mp.-prefixed keys and TOML keys."""
        value = self.api.config_value
        self.assertEqual(value("mp.core.max-packet-size"), 10240)
        self.assertEqual(value("mp.net.write-buffer-water-mark.connect-server-high"), 65536)
        self.assertEqual(value("net.write-buffer-water-mark.connect-server-high"), 65536)
        self.assertIs(value("mp.http.proxy-enabled"), False)
        self.assertEqual(value("mp.http.api-token"), "***")
        self.assertEqual(value("mp.state-dir"), self.api.config_view()["state-dir"])
        self.assertEqual(value("mp.core"), self.api.config_view()["core"])
        self.assertEqual(value("mp"), self.api.config_view())
        for ignored in ("mp.thread.pool.conn-work", "mp.core.nope", "mp.home"):
            self.assertRaises(KeyError, value, ignored)

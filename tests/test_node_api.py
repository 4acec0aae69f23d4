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
from tests.polling import wait_until


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

class InProcessAndOfflineTests(TestCase):
    """
    A push to a user bound on this node goes to its push centre directly
    (only users elsewhere go through a gateway connection), and a task's
    counts follow its offline messages' later delivery and acks.
    """

    timeout = 30

    def setUp(self):
        self.server = LoopbackNode(self)
        self.api = self.server.api

    def device(self, user_id):
        return self.server.device(user_id)

    @defer.inlineCallbacks
    def test_local_user_without_the_gateway(self):
        """
        With this node's gateway port closed, its own users are still
        pushed to (ack waits included): no loopback connection is involved.
        """
        alice = yield self.device("alice")
        yield self.server.gateway_listening.stopListening()
        outcome = yield self.api.push(PushRequest(users=("alice",), content=b"here", ack="auto"))
        [result] = outcome.results
        self.assertEqual((result["status"], result["client_type"]), ("success", 1))
        self.assertEqual(result["node"], f"127.0.0.1:{self.server.gateway_port}")
        names = [name for name, _ in result["time_points"]]
        self.assertEqual(names[0], "send")
        self.assertIn("waiting-ack", names)
        self.assertEqual(names[-2:], ["success-end", "reply"])
        received = yield alice.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"here")
        self.assertEqual(self.server.node.metrics.totals()["pushes"]["success"], 1)

    @defer.inlineCallbacks
    def test_stale_local_route_is_offline(self):
        """
        A route in the store naming this node with no connection behind it
        ends as the gateway would answer it: offline.
        """
        from mpush.protocol.routing import ClientLocation

        here = self.server.node.router_center.gateway
        location = ClientLocation(host=here[0], port=here[1], os_name="android", client_version="1",
                                  device_id="d-1", conn_id="c-1")
        yield self.server.backends.remote.register("ghost", 1, location)
        outcome = yield self.api.push(PushRequest(users=("ghost",), content=b"x"))
        [result] = outcome.results
        self.assertEqual(result["status"], "offline")
        self.assertEqual(self.server.node.metrics.totals()["pushes"]["offline"], 1)

    @defer.inlineCallbacks
    def test_stale_local_route_stored(self):
        """
        Stored after this node found the user gone: counted offline by the
        node that found it, and stored_offline by the API that stored it.
        """
        from mpush.protocol.routing import ClientLocation

        here = self.server.node.router_center.gateway
        location = ClientLocation(host=here[0], port=here[1], os_name="android", client_version="1",
                                  device_id="d-1", conn_id="c-1")
        yield self.server.backends.remote.register("ghost", 1, location)
        outcome = yield self.api.push(PushRequest(users=("ghost",), content=b"x", offline_ttl=60))
        self.assertEqual([r["status"] for r in outcome.results], ["stored_offline"])
        pushes = self.server.node.metrics.totals()["pushes"]
        self.assertEqual((pushes["offline"], pushes["stored_offline"]), (1, 1))

    @defer.inlineCallbacks
    def test_many_users_one_lookup(self):
        """
        A many-user push reads every user's routes in one lookup_many.
        """
        yield self.device("u1")
        yield self.device("u2")
        remote = self.server.backends.remote
        asked = []
        real = remote.lookup_many

        def counting(user_ids):
            asked.append(list(user_ids))
            return real(user_ids)

        remote.lookup_many = counting
        outcome = yield self.api.push(PushRequest(users=("u1", "u2", "u3"), content=b"x"))
        self.assertEqual(asked, [["u1", "u2", "u3"]])
        self.assertEqual([r["status"] for r in outcome.results], ["success", "success", "offline"])

    @defer.inlineCallbacks
    def test_many_users_in_chunks_acks_awaited(self):
        """
        A many-user push looks its users up a chunk at a time, keeps their
        order, and waits for the acks of the users that must ack.
        """
        from mpush.push.client import LOOKUP_CHUNK

        yield self.device("u7")
        yield self.device("u3")
        remote = self.server.backends.remote
        asked = []
        real = remote.lookup_many
        remote.lookup_many = lambda user_ids: asked.append(len(user_ids)) or real(user_ids)
        users = tuple(f"u{i}" for i in range(LOOKUP_CHUNK * 2))
        outcome = yield self.api.push(PushRequest(users=users, content=b"x", ack="auto"))
        self.assertEqual(asked, [LOOKUP_CHUNK, LOOKUP_CHUNK])
        self.assertEqual([r["user"] for r in outcome.results], list(users))
        statuses = {r["user"]: r["status"] for r in outcome.results if r["status"] != "offline"}
        self.assertEqual(statuses, {"u3": "success", "u7": "success"})
        for result in outcome.results:
            if result["status"] == "success":
                self.assertIn("waiting-ack", [name for name, _ in result["time_points"]])

    @defer.inlineCallbacks
    def test_many_users_lookup_failure(self):
        """A failed look-up fails each of its users' pushes, with the reason."""

        def broken(user_ids):
            return defer.fail(RuntimeError("store down"))

        self.server.backends.remote.lookup_many = broken
        outcome = yield self.api.push(PushRequest(users=("a", "b"), content=b"x"))
        self.assertEqual([(r["user"], r["status"]) for r in outcome.results], [("a", "failure"), ("b", "failure")])
        self.assertIn("store down", outcome.results[0]["reason"])

    @defer.inlineCallbacks
    def test_many_users_lookup_short_answer(self):
        """A look-up answering for fewer users than asked fails them all, as a failed look-up."""
        self.server.backends.remote.lookup_many = lambda user_ids: defer.succeed([{}])
        outcome = yield self.api.push(PushRequest(users=("a", "b"), content=b"x"))
        self.assertEqual([(r["user"], r["status"]) for r in outcome.results], [("a", "failure"), ("b", "failure")])
        self.assertIn("1 route sets for 2 users", outcome.results[1]["reason"])

    @defer.inlineCallbacks
    def test_delivered_and_acked_later(self):
        outcome = yield self.api.push(PushRequest(users=("later",), content=b"kept", ack="auto",
                                                  offline_ttl=600, task_id="t-later"))
        self.assertEqual([r["status"] for r in outcome.results], ["stored_offline"])
        before = self.api.task_stats("t-later")
        self.assertEqual((before["stored_offline"], before["sent"], before["acked"]), (1, 0, 0))
        device = yield self.device("later")
        received = yield device.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"kept")
        yield wait_until(lambda: self.api.task_stats("t-later")["acked"] == 1)
        after = self.api.task_stats("t-later")
        self.assertEqual((after["stored_offline"], after["delivered_offline"], after["sent"], after["acked"]),
                         (1, 1, 1, 1))
        totals = self.server.node.metrics.totals()
        self.assertEqual(totals["pushes"]["stored_offline"], 1)
        self.assertEqual(totals["offline"]["delivered"], 1)

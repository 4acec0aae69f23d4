"""
One truth for delivery counts: after gateway, HTTP, broadcast and offline
traffic on a whole loopback node, C{/metrics}, C{/v1/stats} and the console's
C{stats} show the same numbers, and a task's counts follow its offline
message's later delivery.
"""

import json

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor
from twisted.internet.protocol import ClientFactory
from twisted.trial.unittest import TestCase

from mpush.metrics import OFFLINE_EVENTS, PUSH_RESULTS
from mpush.push import AckModel, PushClient
from mpush.server.ops.admin import AdminFactory
from mpush.tap import make_http_site

from tests.loopback_support import LoopbackNode
from tests.polling import wait_until
from tests.test_admin import ClientSession
from tests.test_http_api import _RawClient, build_request, parse_response


class DoorsAgreeTests(TestCase):
    timeout = 30

    def setUp(self):
        self.server = LoopbackNode(self)
        node, api = self.server.node, self.server.api
        self.http = reactor.listenTCP(0, make_http_site(node, api, reactor), interface="127.0.0.1")
        self.addCleanup(self.http.stopListening)
        self.console = reactor.listenTCP(0, AdminFactory(api, reactor, local_ip="127.0.0.1"),
                                         interface="127.0.0.1")
        self.addCleanup(self.console.stopListening)

    @defer.inlineCallbacks
    def call(self, method, path, body=None):
        headers = {}
        if body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(body).encode()
        done = defer.Deferred()
        request = build_request(method, path, headers, body)
        factory = ClientFactory.forProtocol(lambda: _RawClient(request, done))
        reactor.connectTCP("127.0.0.1", self.http.getHost().port, factory)
        response = parse_response((yield done), method)
        self.assertEqual(response.status, 200, response.body)
        return response

    @defer.inlineCallbacks
    def console_stats(self):
        session = ClientSession(b"stats\r\nquit\r\n")
        address = self.console.getHost()
        yield protocol.ClientCreator(reactor, lambda: session).connectTCP(address.host, address.port)
        text = (yield session.closed).decode("utf-8")
        return json.loads(text.split("\r\n\r\n")[2])

    @defer.inlineCallbacks
    def metrics(self):
        response = yield self.call("GET", "/metrics")
        found = {"pushes": {}, "offline": {}}
        for family in text_string_to_metric_families(response.body.decode("utf-8")):
            for sample in family.samples:
                if sample.name == "mpush_pushes_total":
                    found["pushes"][sample.labels["result"]] = int(sample.value)
                elif sample.name == "mpush_offline_messages_total":
                    found["offline"][sample.labels["event"]] = int(sample.value)
        return found

    @defer.inlineCallbacks
    def test_doors_agree_after_mixed_traffic(self):
        alice = yield self.server.device("alice")
        bob = yield self.server.device("bob")

        # Gateway: a Java-style pusher on the gateway port (success, offline).
        pusher = PushClient(reactor, gateway=("127.0.0.1", self.server.gateway_port))
        self.addCleanup(pusher.close)
        [result] = yield pusher.push("alice", b"gw", AckModel.AUTO_ACK)
        self.assertTrue(result.ok, result)
        [result] = yield pusher.push("ghost", b"gw")
        self.assertEqual(result.status.value, "offline")

        # HTTP: two users here (in process), one with no route.
        response = yield self.call("POST", "/v1/push", {"users": ["alice", "bob", "nobody"],
                                                        "content": "http", "ack": "auto"})
        statuses = [r["status"] for r in response.json()["results"]]
        self.assertEqual(statuses, ["success", "success", "offline"])

        # Broadcast through HTTP: both devices.
        response = yield self.call("POST", "/v1/push", {"broadcast": True, "content": "all",
                                                        "task_id": "t-all"})
        self.assertEqual(response.json()["results"][0]["count"], 2)

        # Offline: stored, then delivered and acked when its user binds.
        response = yield self.call("POST", "/v1/push", {"users": ["later"], "content": "kept",
                                                        "ack": "auto", "offline_ttl": 600})
        self.assertEqual(response.json()["results"][0]["status"], "stored_offline")
        later_id = response.json()["message_id"]
        later = yield self.server.device("later")
        received = yield later.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"kept")

        @defer.inlineCallbacks
        def acked():
            response = yield self.call("GET", f"/v1/tasks/{later_id}")
            return response.json()["acked"] == 1

        yield wait_until(acked)
        for device, pushes in ((alice, [b"gw", b"http", b"all"]), (bob, [b"http", b"all"])):
            for content in pushes:
                received = yield device.wait_for_push(timeout=5)
                self.assertEqual(received.content, content)

        stats = (yield self.call("GET", "/v1/stats")).json()
        console = yield self.console_stats()
        exposed = yield self.metrics()
        for door in (stats, console):
            self.assertEqual(door["pushes"], {result: exposed["pushes"][result] for result in PUSH_RESULTS})
            self.assertEqual(door["offline"], {event: exposed["offline"][event] for event in OFFLINE_EVENTS})
        pushes = stats["pushes"]
        # 1 gateway + 2 HTTP + 2 broadcast; 1 gateway + 1 HTTP with no route.
        self.assertEqual((pushes["success"], pushes["offline"], pushes["stored_offline"]), (5, 2, 1))
        self.assertEqual((stats["offline"]["stored"], stats["offline"]["delivered"]), (1, 1))

        later_task = (yield self.call("GET", f"/v1/tasks/{later_id}")).json()
        self.assertEqual(
            {name: later_task[name] for name in ("sent", "acked", "stored_offline", "delivered_offline")},
            {"sent": 1, "acked": 1, "stored_offline": 1, "delivered_offline": 1},
        )
        self.assertEqual((yield self.call("GET", "/v1/tasks/t-all")).json()["sent"], 2)

    @defer.inlineCallbacks
    def doors(self):
        """What /v1/stats, the console's stats and /metrics say, after checking they agree."""
        stats = (yield self.call("GET", "/v1/stats")).json()
        console = yield self.console_stats()
        exposed = yield self.metrics()
        self.assertEqual({key: value for key, value in console.items() if key != "uptime_s"},
                         {key: value for key, value in stats.items() if key != "uptime_s"})
        self.assertEqual(stats["pushes"], {result: exposed["pushes"][result] for result in PUSH_RESULTS})
        self.assertEqual(stats["offline"], {event: exposed["offline"][event] for event in OFFLINE_EVENTS})
        return stats

    @defer.inlineCallbacks
    def task(self, task_id):
        counts = (yield self.call("GET", f"/v1/tasks/{task_id}")).json()
        return {name: value for name, value in counts.items() if value and name != "task_id"}

    @defer.inlineCallbacks
    def test_timeouts_acks_and_offline_deliveries_counted_alike(self):
        """
        Ack timeouts through both doors, a gateway broadcast, and offline
        messages delivered later with and without acks: the node's counts
        agree everywhere, and each task follows its messages to the end.
        """
        alice = yield self.server.device("alice")
        pusher = PushClient(reactor, gateway=("127.0.0.1", self.server.gateway_port))
        self.addCleanup(pusher.close)

        # Never acked: one through the gateway, one through HTTP (with a user offline).
        [result] = yield pusher.push("alice", b"gw-biz", AckModel.BIZ_ACK, timeout=0.3)
        self.assertEqual(result.status.value, "ack_timeout")
        response = yield self.call("POST", "/v1/push", {"users": ["alice", "nobody"], "content": "biz",
                                                        "ack": "biz", "timeout_ms": 300})
        self.assertEqual([r["status"] for r in response.json()["results"]], ["ack_timeout", "offline"])
        self.assertEqual((yield self.task(response.json()["message_id"])), {"ack_timeout": 1, "offline": 1})

        # Stored, then delivered when their users bind: one needs no ack, one a business ack.
        tasks = {}
        for user, ack in (("bob", "none"), ("carol", "biz")):
            response = yield self.call("POST", "/v1/push", {"users": [user], "content": f"for {user}", "ack": ack,
                                                            "offline_ttl": 600})
            self.assertEqual(response.json()["results"][0]["status"], "stored_offline")
            tasks[user] = response.json()["message_id"]
            self.assertEqual((yield self.task(tasks[user])), {"stored_offline": 1})
        bob = yield self.server.device("bob")
        self.assertEqual((yield bob.wait_for_push(timeout=5)).content, b"for bob")
        carol = yield self.server.device("carol")
        received = yield carol.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"for carol")

        @defer.inlineCallbacks
        def delivered():
            return (yield self.task(tasks["bob"])).get("delivered_offline") == 1 \
                and (yield self.task(tasks["carol"])).get("delivered_offline") == 1

        yield wait_until(delivered)
        self.assertEqual((yield self.task(tasks["bob"])), {"stored_offline": 1, "delivered_offline": 1, "sent": 1})
        self.assertEqual((yield self.task(tasks["carol"])), {"stored_offline": 1, "delivered_offline": 1, "sent": 1})
        carol.ack(received.session_id)

        @defer.inlineCallbacks
        def acked():
            return (yield self.task(tasks["carol"])).get("acked") == 1

        yield wait_until(acked)
        self.assertEqual((yield self.task(tasks["carol"])),
                         {"stored_offline": 1, "delivered_offline": 1, "sent": 1, "acked": 1})

        # A broadcast straight to the gateway reaches all three.
        [node_result] = yield pusher.broadcast(b"all")
        self.assertEqual(node_result.count, 3)
        for device in (alice, bob, carol):
            while (yield device.wait_for_push(timeout=5)).content != b"all":
                pass

        stats = yield self.doors()
        pushes = {result: count for result, count in stats["pushes"].items() if count}
        self.assertEqual(pushes, {"ack_timeout": 2, "offline": 1, "stored_offline": 2, "success": 3})
        self.assertEqual((stats["offline"]["stored"], stats["offline"]["delivered"]), (2, 2))

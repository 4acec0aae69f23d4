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

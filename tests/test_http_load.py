"""
bench/http_load.py against a whole loopback node: it pushes its users in
many-user requests and reports results by status and the server's CPU.
"""

import json
import os
import sys

from twisted.internet import defer, reactor, utils
from twisted.trial.unittest import TestCase

from mpush.tap import make_http_site

from tests.loopback_support import LoopbackNode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "bench", "http_load.py")


class HttpLoadTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_many_user_requests(self):
        server = LoopbackNode(self)
        site = reactor.listenTCP(0, make_http_site(server.node, server.api, reactor), interface="127.0.0.1")
        self.addCleanup(site.stopListening)
        yield server.device("u1")
        yield server.device("u2")
        users = self.mktemp()
        with open(users, "w") as listed:
            listed.write("u1\nu2\nnobody\n")
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            [TOOL, "--port", str(site.getHost().port), "--users-file", users, "--requests", "5",
             "--connections", "2", "--ack", "auto", "--pid", str(os.getpid())],
            env={**os.environ, "PYTHONPATH": ROOT},
        )
        self.assertEqual(code, 0, err)
        report = json.loads(out)
        self.assertEqual((report["users_per_request"], report["requests"]), (3, 5))
        self.assertEqual(report["results"], {"success": 10, "offline": 5})
        self.assertEqual(report["errors"], {})
        self.assertGreaterEqual(report["server_cpu_us_per_delivery"], 0)  # CPU ticks are 10 ms
        self.assertEqual(server.node.metrics.totals()["pushes"]["success"], 10)

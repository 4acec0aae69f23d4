"""
Redis reachability said once: the OS error of a refused connection, the
line when it is back, and the reconnect chatter kept out of the log.
"""

import errno

from twisted.internet import defer, error, task
from twisted.logger import LogLevel, Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mpush.redis_status import RedisReachability, describe_connect_error, is_retry_chatter
from mpush.server.ops.log_gate import LogLevelGate


class _Endpoint:
    def __init__(self):
        self.attempts = []

    def connect(self, factory):
        attempt = defer.Deferred()
        self.attempts.append(attempt)
        return attempt


class ReachabilityTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.events = []
        self.reach = RedisReachability("127.0.0.1:6380", self.clock)
        self.reach.log = Logger(namespace="test", observer=self.events.append)
        self.endpoint = _Endpoint()
        self.watched = self.reach.watch(self.endpoint)

    def refuse(self):
        attempt = self.watched.connect(None)
        self.endpoint.attempts[-1].errback(error.ConnectionRefusedError(osError=errno.ECONNREFUSED))
        self.failureResultOf(attempt, error.ConnectionRefusedError)  # passed on to the caller

    def test_one_line_down_one_line_back(self):
        for _ in range(5):
            self.refuse()
            self.clock.advance(0.5)
        self.assertTrue(self.reach.unreachable)
        self.assertEqual(self.reach.describe(),
                         "redis 127.0.0.1:6380 unreachable: connection refused (ECONNREFUSED)")
        self.assertEqual(len(self.events), 1)
        self.watched.connect(None)
        self.endpoint.attempts[-1].callback("protocol")
        self.assertFalse(self.reach.unreachable)
        self.assertEqual(len(self.events), 2)
        self.assertEqual(self.events[1]["seconds"], 2.5)
        self.watched.connect(None)
        self.endpoint.attempts[-1].callback("protocol")
        self.assertEqual(len(self.events), 2)

    def test_cancelled_attempt_is_no_outage(self):
        attempt = self.watched.connect(None)
        attempt.cancel()
        self.failureResultOf(attempt, defer.CancelledError)
        self.assertFalse(self.reach.unreachable)
        self.assertEqual(self.events, [])

    def test_attempt_outcome_passed_on(self):
        attempt = self.watched.connect(None)
        self.endpoint.attempts[-1].callback("protocol")
        self.assertEqual(self.successResultOf(attempt), "protocol")


class DescribeTests(SynchronousTestCase):
    def test_errors(self):
        self.assertEqual(describe_connect_error(Failure(error.ConnectionRefusedError())),
                         "connection refused (ECONNREFUSED)")
        self.assertEqual(describe_connect_error(Failure(error.TCPTimedOutError())), "connect timed out")
        self.assertIn("cannot resolve", describe_connect_error(Failure(error.DNSLookupError("nowhere"))))
        self.assertEqual(describe_connect_error(Failure(error.ConnectError(osError=errno.EHOSTUNREACH))),
                         "no route to host (EHOSTUNREACH)")


class ChatterTests(SynchronousTestCase):
    def test_gate_drops_client_service_retries(self):
        retry = {
            "log_format": "Scheduling retry {attempt} to connect {endpoint} in {delay} seconds.",
            "log_namespace": "twisted.application._client_service.ClientService",
            "log_level": LogLevel.info,
        }
        other = dict(retry, log_format="Duplicate ClientService.startService {log_source}")
        self.assertTrue(is_retry_chatter(retry))
        self.assertFalse(is_retry_chatter(other))
        gate = LogLevelGate(drop=(is_retry_chatter,))
        self.assertEqual(gate(retry).name, "no")
        self.assertEqual(gate(other).name, "maybe")

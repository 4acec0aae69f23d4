"""
L{LogThrottle}: one line per kind per interval, with the count held back.
"""

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from mpush.log_throttle import LogThrottle


class LogThrottleTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.throttle = LogThrottle(self.clock, interval=1.0)

    def test_first_line_then_held_then_counted(self):
        self.assertEqual(self.throttle.admit("a"), 0)
        self.assertEqual([self.throttle.admit("a") for _ in range(5)], [None] * 5)
        self.clock.advance(0.999)
        self.assertIsNone(self.throttle.admit("a"))
        self.clock.advance(0.001)
        self.assertEqual(self.throttle.admit("a"), 6)
        self.assertIsNone(self.throttle.admit("a"))

    def test_keys_are_independent(self):
        self.assertEqual(self.throttle.admit("a"), 0)
        self.assertEqual(self.throttle.admit("b"), 0)
        self.assertIsNone(self.throttle.admit("a"))

    def test_clock_going_back_lets_a_line_through(self):
        self.clock.advance(10)
        self.assertEqual(self.throttle.admit("a"), 0)
        self.clock.rightNow = 5
        self.assertEqual(self.throttle.admit("a"), 0)


class RouterCenterWarningTests(SynchronousTestCase):
    """
    A side effect failing for every device at once (Redis down or
    overloaded) is logged once a second per kind, with a count.
    """

    def test_failed_side_effects_are_throttled(self):
        from twisted.internet import defer
        from twisted.logger import globalLogPublisher

        from tests.server_support import make_node

        node = make_node()
        center = node.router_center
        lines = []

        def observe(event):
            if event.get("log_namespace", "").endswith("RouterCenter"):
                lines.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for n in range(5):
            center._quietly(defer.fail(RuntimeError("down")), "route of {user} not marked offline", user=f"u{n}")
        center._quietly(defer.fail(RuntimeError("down")), "offline event of {user}", user="u0")
        self.assertEqual([(e["user"], e.get("held")) for e in lines], [("u0", None), ("u0", None)])
        node.clock.advance(1)
        center._quietly(defer.fail(RuntimeError("down")), "route of {user} not marked offline", user="u9")
        self.assertEqual((lines[-1]["user"], lines[-1]["held"]), ("u9", 4))

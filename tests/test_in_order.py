"""
InOrderQueue: items run one at a time, a pending Deferred holds the rest.
"""

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mpush.server.device.in_order import InOrderQueue


class InOrderQueueTests(SynchronousTestCase):
    def setUp(self):
        self.handled = []
        self.waits = {}
        self.open = True
        self.queue = InOrderQueue(self.handle, len, lambda: self.open)

    def handle(self, item):
        self.handled.append(item)
        return self.waits.get(item)

    def test_runs_in_order_and_counts_bytes(self):
        self.queue.extend([b"a", b"bb"])
        self.assertEqual(self.queue.bytes, 3)
        self.queue.run()
        self.assertEqual(self.handled, [b"a", b"bb"])
        self.assertEqual((len(self.queue), self.queue.bytes), (0, 0))

    def test_waits_for_a_pending_handler(self):
        self.waits[b"slow"] = Deferred()
        self.queue.extend([b"slow", b"next"])
        self.queue.run()
        self.assertEqual(self.handled, [b"slow"])
        self.assertEqual((len(self.queue), self.queue.bytes), (1, 4))
        self.waits[b"slow"].callback(None)
        self.assertEqual(self.handled, [b"slow", b"next"])

    def test_stops_when_closed(self):
        self.queue.extend([b"a", b"b"])
        self.waits[b"a"] = None
        original = self.handle

        def close_after_first(item):
            self.open = False
            return original(item)

        self.queue._handle = close_after_first
        self.queue.run()
        self.assertEqual(self.handled, [b"a"])

    def test_clear(self):
        self.queue.extend([b"abc"])
        self.queue.clear()
        self.assertEqual((len(self.queue), self.queue.bytes), (0, 0))

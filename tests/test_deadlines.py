"""
L{Deadlines}: many connections' deadlines on one timer.
"""

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from mpush.server.device.deadlines import Deadlines


class Owner:
    def __init__(self, name, log, then=None):
        self.name = name
        self.wake_at = None
        self.log = log
        self.then = then  # (deadlines, delay): schedule again when woken

    def deadline_reached(self, now):
        self.log.append((self.name, now))
        if self.then is not None:
            deadlines, delay = self.then
            deadlines.schedule(self.name, self, now + delay)


class DeadlinesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.owners = {}
        self.deadlines = Deadlines(self.clock, self.owners)
        self.log = []

    def owner(self, name, then=None):
        owner = self.owners[name] = Owner(name, self.log, then)
        return owner

    def test_one_timer_for_many_owners(self):
        for n in range(100):
            self.deadlines.schedule(n, self.owner(n), 10 + n)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.log, [(0, 10)])
        self.clock.pump([1] * 99)
        self.assertEqual([name for name, _ in self.log], list(range(100)))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_earlier_deadline_wins_and_the_later_entry_is_ignored(self):
        owner = self.owner("a")
        self.deadlines.schedule("a", owner, 10)
        self.deadlines.schedule("a", owner, 4)
        self.deadlines.schedule("a", owner, 7)  # later than the one waited for: no entry
        self.assertEqual(len(self.deadlines), 2)
        self.clock.advance(4)
        self.assertEqual(self.log, [("a", 4)])
        self.clock.advance(6)
        self.assertEqual(self.log, [("a", 4)])  # the stale entry at 10
        self.assertEqual(len(self.deadlines), 0)

    def test_rescheduling_from_the_callback_keeps_other_entries_on_time(self):
        self.deadlines.schedule("slow", self.owner("slow", then=(self.deadlines, 100)), 1)
        self.deadlines.schedule("fast", self.owner("fast"), 5)
        self.clock.advance(1)
        self.clock.advance(4)
        self.assertEqual(self.log, [("slow", 1), ("fast", 5)])
        self.clock.advance(96)
        self.assertEqual(self.log[-1], ("slow", 101))

    def test_closed_owner_is_skipped_and_not_kept_alive(self):
        self.deadlines.schedule("a", self.owner("a"), 3)
        self.deadlines.schedule("b", self.owner("b"), 3)
        del self.owners["a"]
        self.clock.advance(3)
        self.assertEqual(self.log, [("b", 3)])

    def test_no_owner_left_drops_entries_and_timer(self):
        self.deadlines.schedule("a", self.owner("a"), 3)
        del self.owners["a"]
        self.deadlines.owner_gone()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.deadlines), 0)

    def test_fired_a_hair_early_still_counts(self):
        """
        A timer that goes off a hair before its deadline (float arithmetic
        in a clock) still wakes the owner, at that deadline.
        """
        owner = self.owner("a")
        self.deadlines.schedule("a", owner, 0.3)
        self.clock.advance(0.3 - 1e-9)
        self.assertEqual(self.log, [])
        self.deadlines._heap._fire()  # as a reactor would, a hair early
        self.assertEqual(self.log, [("a", 0.3)])
        self.assertIsNone(owner.wake_at)

    def test_stop(self):
        self.deadlines.schedule("a", self.owner("a"), 3)
        self.deadlines.stop()
        self.clock.advance(10)
        self.assertEqual(self.log, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

"""
The deadlines of many connections on one reactor timer.

Every connection has a next moment it must look at itself: its idle check,
its pre-handshake deadline, the grace of a slow reader.  One
C{clock.callLater} each costs about a kilobyte per connection (a
L{DelayedCall} with its dict, arguments and the reactor's heap entry); a node
that holds tens of thousands of idle devices keeps them all in one heap of
C{(when, sequence, connection id)} entries instead, with a single
L{DelayedCall} for the earliest.

Entries are never cancelled: a connection remembers the one entry it waits
for (L{IDeadlineOwner.wake_at}) and ignores the others, and entries name the
connection by id so that a closed connection is not kept alive by them.
When no connection is left the heap is dropped and the timer cancelled, so
an empty node has no timer pending.
"""

import heapq
import itertools

from zope.interface import Attribute, Interface


class IDeadlineOwner(Interface):
    """
    What L{Deadlines} calls back.
    """

    wake_at = Attribute("The time of the entry this owner waits for, or None.")

    def deadline_reached(now):
        """
        C{wake_at} has come (it is set to C{None} first): act on what is due
        and schedule the next deadline, if any.
        """


class Deadlines:
    """
    A heap of (time, sequence, owner id) with one timer for its head.

    @param clock: an C{IReactorTime}.
    @param owners: a mapping from owner id to live owner (a node's
        connections): an id it no longer holds is a closed connection.
    """

    __slots__ = ("_clock", "_owners", "_heap", "_call", "_call_time", "_sequence")

    def __init__(self, clock, owners):
        self._clock = clock
        self._owners = owners
        self._heap = []
        self._call = None
        self._call_time = None
        self._sequence = itertools.count()

    def __len__(self):
        """Entries held, stale ones included."""
        return len(self._heap)

    def schedule(self, owner_id, owner, when):
        """
        Wake C{owner} at C{when} (clock seconds) unless it already waits for
        an earlier moment.
        """
        current = owner.wake_at
        if current is not None and current <= when:
            return
        owner.wake_at = when
        heapq.heappush(self._heap, (when, next(self._sequence), owner_id))
        if self._call_time is None or when < self._call_time:
            self._arm(when)

    def owner_gone(self):
        """
        An owner closed: when none is left, drop every entry and the timer.
        """
        if not self._owners:
            self._heap = []
            self._disarm()

    def stop(self):
        """
        Forget every entry and cancel the timer (the node is stopping).
        """
        self._heap = []
        self._disarm()

    def _arm(self, when):
        self._disarm()
        self._call_time = when
        self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._fire)

    def _disarm(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._call_time = None

    def _fire(self):
        # The timer was set for _call_time; a clock's float arithmetic may
        # fire it a hair before, and that must still count as on time.
        now = self._clock.seconds()
        if self._call_time is not None:
            now = max(now, self._call_time)
        self._call = None
        self._call_time = None
        heap = self._heap
        owners = self._owners
        while heap and heap[0][0] <= now:
            when, _, owner_id = heapq.heappop(heap)
            owner = owners.get(owner_id)
            if owner is None or owner.wake_at != when:
                continue  # closed, or superseded by an earlier entry
            owner.wake_at = None
            owner.deadline_reached(now)
        if not heap:
            self._disarm()
        elif self._call_time != heap[0][0]:
            self._arm(heap[0][0])

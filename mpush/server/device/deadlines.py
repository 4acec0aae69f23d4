"""
Many deadlines on one reactor timer.

A node has a deadline per connection (its idle check, its pre-handshake
deadline, the grace of a slow reader) and one per push waiting for its ack.
One C{clock.callLater} each costs about a kilobyte (a L{DelayedCall} with its
dict, arguments and the reactor's heap entry) and a heap operation in the
reactor; L{DeadlineHeap} keeps C{(when, stamp, key)} entries in one heap with
a single L{DelayedCall} for the earliest.

Entries are never cancelled: whoever scheduled one remembers what it still
waits for and ignores the entries it no longer wants when they come.
Entries name what they are for by key (a connection id, a message id), so a
closed connection or an answered push is not kept alive by them.
"""

import heapq
import itertools
from typing import Any, Callable, Hashable, Mapping

from twisted.internet.interfaces import IReactorTime

from zope.interface import Attribute, Interface


class DeadlineHeap:
    """
    A heap of C{(when, stamp, key)} with one timer for its head.

    @param clock: an C{IReactorTime}.
    @param expire: C{expire(key, when, stamp, now)}, called for each entry
        whose time has come, in time order; it may push new entries.
    """

    __slots__ = ("_clock", "_expire", "_heap", "_call", "_call_time", "_stamps")

    def __init__(self, clock: IReactorTime, expire: Callable[[Hashable, float, int, float], None]) -> None:
        self._clock = clock
        self._expire = expire
        self._heap = []
        self._call = None
        self._call_time = None
        self._stamps = itertools.count()

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return len(self._heap)

    def push(self, when: float, key: Hashable) -> int:
        """
        Expire C{key} at C{when} (clock seconds).

        @return: the entry's stamp, unique among entries, to tell this entry
            from other ones of the same key.
        """
        stamp = next(self._stamps)
        heapq.heappush(self._heap, (when, stamp, key))
        if self._call_time is None or when < self._call_time:
            self._arm(when)
        return stamp

    def clear(self) -> None:
        """
        Forget every entry and cancel the timer.
        """
        self._heap = []
        self._disarm()

    def _arm(self, when: float) -> None:
        self._disarm()
        self._call_time = when
        self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._fire)

    def _disarm(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._call_time = None

    def _fire(self) -> None:
        # The timer was set for _call_time; a clock's float arithmetic may
        # fire it a hair before, and that must still count as on time.
        now = self._clock.seconds()
        if self._call_time is not None:
            now = max(now, self._call_time)
        self._call = None
        self._call_time = None
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, stamp, key = heapq.heappop(heap)
            self._expire(key, when, stamp, now)
        if not heap:
            self._disarm()
        elif self._call_time != heap[0][0]:
            self._arm(heap[0][0])


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
    The next deadline of each client connection of a node, on one
    L{DeadlineHeap}.

    @param clock: an C{IReactorTime}.
    @param owners: a mapping from owner id to live owner (a node's
        connections): an id it no longer holds is a closed connection.
    """

    __slots__ = ("_owners", "_heap")

    def __init__(self, clock: IReactorTime, owners: Mapping[Hashable, Any]) -> None:
        self._owners = owners
        self._heap = DeadlineHeap(clock, self._reached)

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return len(self._heap)

    def schedule(self, owner_id: Hashable, owner: Any, when: float) -> None:
        """
        Wake C{owner} at C{when} (clock seconds) unless it already waits for
        an earlier moment.
        """
        current = owner.wake_at
        if current is not None and current <= when:
            return
        owner.wake_at = when
        self._heap.push(when, owner_id)

    def owner_gone(self) -> None:
        """
        An owner closed: when none is left, drop every entry and the timer.
        """
        if not self._owners:
            self._heap.clear()

    def stop(self) -> None:
        """
        Forget every entry and cancel the timer (the node is stopping).
        """
        self._heap.clear()

    def _reached(self, owner_id: Hashable, when: float, stamp: int, now: float) -> None:
        owner = self._owners.get(owner_id)
        if owner is None or owner.wake_at != when:
            return  # closed, or superseded by an earlier entry
        owner.wake_at = None
        owner.deadline_reached(now)

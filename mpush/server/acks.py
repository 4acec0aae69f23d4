"""
Waiting for devices to acknowledge pushes (spec 12.4).

One table per process, keyed by the PUSH's packet session id, exactly as MPush
keys it.  A wait is registered *before* the PUSH is written (MPush registers
it after the write completes, and loses acks that arrive first: spec 21.2
item 19), so every ack finds its wait.  A wait may name the connection the
PUSH went to: then only an ACK from that connection resolves it (MPush takes
an ACK from anyone, so any connection could confirm any push by guessing the
process-wide counter).
"""

import heapq
import itertools

from twisted.internet.defer import Deferred


class AckTimeout(Exception):
    """
    The device did not acknowledge the push in time.
    """


class AckTable:
    """
    Pending acknowledgements by message id, each with its own deadline on
    the injected clock.

    Deadlines are kept in one heap of (deadline, sequence, message id) with
    one timer for the earliest, not a timer per wait: an answered wait
    leaves its heap entry behind, dropped when its deadline comes.
    """

    def __init__(self, clock):
        self.clock = clock
        self._waiting = {}
        self._deadlines = []
        self._sequence = itertools.count()
        self._timer = None
        self._timer_at = None

    def __len__(self):
        return len(self._waiting)

    def __contains__(self, message_id):
        return message_id in self._waiting

    def expect(self, message_id, timeout, owner=None, waiter=None):
        """
        Wait for the ack of C{message_id} for C{timeout} seconds; with an
        C{owner}, only that connection's ACK counts.

        @param waiter: told instead of a Deferred, synchronously: its
            C{callback(None)} on the ack, its C{errback(AckTimeout(...))}
            when time is up (L{withdraw} withdraws it).

        @return: a L{Deferred} that fires C{None} on the ack, or fails with
            L{AckTimeout}.  Cancelling it withdraws the wait.  With a
            C{waiter}, the waiter.
        """
        if message_id in self._waiting:
            raise ValueError(f"already waiting for the ack of message {message_id}")
        if waiter is None:
            waiting = Deferred(lambda _: self._withdraw(message_id))
        else:
            waiting = waiter
        deadline = self.clock.seconds() + timeout
        sequence = next(self._sequence)
        heapq.heappush(self._deadlines, (deadline, sequence, message_id))
        self._waiting[message_id] = (waiting, sequence, owner)
        if self._timer_at is None or deadline < self._timer_at:
            self._arm(deadline)
        return waiting

    def acknowledge(self, message_id, owner=None):
        """
        An ACK arrived (from C{owner}): resolve its wait.  Unknown, late or
        foreign acks are ignored, as MPush ignores unknown ones.

        @return: whether a wait was resolved.
        """
        entry = self._waiting.get(message_id)
        if entry is None:
            return False
        waiting, _, expected = entry
        if expected is not None and expected is not owner:
            return False
        del self._waiting[message_id]
        if not self._waiting:
            self._idle()
        waiting.callback(None)
        return True

    def withdraw(self, message_id):
        """
        Stop waiting for the ack of C{message_id}, telling no one.
        """
        self._withdraw(message_id)

    def _withdraw(self, message_id):
        if self._waiting.pop(message_id, None) is not None and not self._waiting:
            self._idle()

    def _idle(self):
        """
        Nothing is waited for: drop the leftover deadlines and the timer.
        """
        self._deadlines.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._timer_at = None

    def _arm(self, deadline):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.clock.callLater(max(deadline - self.clock.seconds(), 0.0), self._expire_due)

    def _expire_due(self):
        """
        Fail the waits whose deadline has come (the one this timer was set
        for, and any before now), then wait for the next.
        """
        due = max(self.clock.seconds(), self._timer_at)
        self._timer = self._timer_at = None
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= due:
            _, sequence, message_id = heapq.heappop(deadlines)
            entry = self._waiting.get(message_id)
            if entry is not None and entry[1] == sequence:
                del self._waiting[message_id]
                entry[0].errback(AckTimeout(f"message {message_id} not acknowledged"))
        if deadlines and (self._timer_at is None or deadlines[0][0] < self._timer_at):
            self._arm(deadlines[0][0])

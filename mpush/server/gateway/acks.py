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

from twisted.internet.defer import Deferred

from mpush.server.device.deadlines import DeadlineHeap


class AckTimeout(Exception):
    """
    The device did not acknowledge the push in time.
    """


class AckTable:
    """
    Pending acknowledgements by message id, each with its own deadline on
    the injected clock.

    Deadlines are kept on one L{DeadlineHeap}, not a timer per wait: an
    answered wait leaves its heap entry behind, ignored when its deadline
    comes.
    """

    def __init__(self, clock):
        self.clock = clock
        self._waiting = {}
        self._deadlines = DeadlineHeap(clock, self._expired)

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
        stamp = self._deadlines.push(self.clock.seconds() + timeout, message_id)
        self._waiting[message_id] = (waiting, stamp, owner)
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
        self._withdraw(message_id)
        waiting.callback(None)
        return True

    def withdraw(self, message_id):
        """
        Stop waiting for the ack of C{message_id}, telling no one.
        """
        self._withdraw(message_id)

    def _withdraw(self, message_id):
        if self._waiting.pop(message_id, None) is not None and not self._waiting:
            # Nothing is waited for: drop the leftover deadlines and the timer.
            self._deadlines.clear()

    def _expired(self, message_id, when, stamp, now):
        entry = self._waiting.get(message_id)
        if entry is not None and entry[1] == stamp:
            del self._waiting[message_id]
            entry[0].errback(AckTimeout(f"message {message_id} not acknowledged"))

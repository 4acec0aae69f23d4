"""
Redis commands that always answer in time: the one way every Redis-backed
part of mpush bounds a call, notices an outage and logs it once.

Redis being down or slow must never hang a bind, a push or a kick: a call
answers within C{timeout} seconds of the injected clock, with the caller's
"unavailable" error if Redis did not.  The deadline is a race, not a
cancellation: a command already sent is left to txredisapi, whose reply
timeout aborts a hung connection and reconnects, and a reply arriving after
the deadline is dropped.  While an outage is known and no connection is up,
calls fail at once instead of queuing behind the reconnect.  An outage is
logged once when it starts and once when it ends.

Each failed call is also reported to the instance's C{failure_observers}
(metrics count Redis errors per component).
"""

from __future__ import annotations

from typing import Callable

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mpush.store.redis_connection import RedisClient

__all__ = ["OVERLOAD_LAG", "BoundedRedis", "RedisComponent", "check_timeout"]


def check_timeout(timeout: object) -> float:
    """A positive number of seconds, or C{ValueError}."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


#: How late a deadline's timer may fire before the node counts as
#: overloaded: the reply may then be read and waiting behind our own work.
OVERLOAD_LAG = 0.25
#: How long a patient call waits again each time its deadline finds the
#: node overloaded.
_GRACE = 1.0


class _Call:
    """One command racing its deadline."""

    __slots__ = ("result", "timer", "what", "timeout", "due", "give_up_at", "fired_at")

    def __init__(self, what: str, timeout: float, due: float, give_up_at: float) -> None:
        self.what = what
        self.timeout = timeout
        self.due = due
        self.give_up_at = give_up_at
        # When the deadline's timer fired, while it waits one more turn.
        self.fired_at: float | None = None
        self.result: defer.Deferred = defer.Deferred(self._cancelled)
        self.timer: IDelayedCall | None = None

    def _cancelled(self, _) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


class BoundedRedis:
    """
    Runs commands on a shared Redis connection pool for one component,
    within a deadline, translating failures into that component's error.

    @param redis: a L{RedisClient} (preferred: it lets calls fail fast during
        an outage) or a bare txredisapi connection handler.
    @param name: what the component is called in errors and logs, e.g.
        C{"redis remote router"}.
    @param error: the exception class callers see (e.g. C{RouterUnavailable}).
    """

    log = Logger()

    def __init__(
        self,
        redis,
        clock: IReactorTime,
        timeout: float,
        name: str,
        error: type[Exception],
    ) -> None:
        if isinstance(redis, RedisClient):
            self.client: RedisClient | None = redis
            self.redis = redis.redis
        else:
            self.client = None
            self.redis = redis
        self.clock = clock
        self.timeout = check_timeout(timeout)
        self.name = name
        self.error = error
        self.available = True
        self._warned = False
        self.closed = False
        self._last_failure = ""
        self._calls: set[_Call] = set()
        self.failure_observers: list[Callable[[str], object]] = []

    def call(
        self,
        what: str,
        command: Callable[[], defer.Deferred],
        on_reply: Callable[[object], object] = lambda reply: reply,
        patience: float | None = None,
    ) -> defer.Deferred:
        """
        Run C{command()} (which sends one or more commands and returns a
        Deferred) and pass its reply through C{on_reply}.

        A call of several commands chains them inside C{command}: the
        deadline covers the whole chain.  A deadline is decided one turn
        after its timer fires, so a reply read in that turn still counts.
        With C{patience} (seconds, more than the deadline), a deadline whose
        timer fires more than L{OVERLOAD_LAG} late, or whose turn takes that
        long, while a connection is up, is taken for this node being
        overloaded rather than Redis being slow: the call waits on, a second
        at a time, up to C{patience} in all.  A session lookup
        uses it, since giving up makes the device pay a full RSA handshake.

        @return: a Deferred firing C{on_reply}'s result, or failing with
            C{error} if Redis failed, refused the command (C{ResponseError})
            or took too long.
        """
        refused = self.refusal(what)
        if refused is not None:
            return defer.fail(refused)
        timeout = self.timeout
        now = self.clock.seconds()
        call = _Call(what, timeout, now + timeout, now + max(timeout, patience or 0.0))
        call.timer = self.clock.callLater(timeout, self._deadline, call)
        self._calls.add(call)
        try:
            sent = command()
        except Exception:
            sent = defer.fail()
        sent.addBoth(self._answered, call, on_reply)
        return call.result

    def _connected(self) -> bool:
        return self.client is None or self.client.connected

    def refusal(self, what: str) -> Exception | None:
        """
        The error a call of C{what} made now would fail with at once (closed,
        or an outage known while no connection is up), or C{None}: lets a
        caller that batches refuse without waiting for the batch.
        """
        if self.closed:
            return self.error(f"{self.name} is closed")
        client = self.client
        if client is not None and not client.connected:
            if client.reachability.unreachable:
                # Said once by the client; every call names what failed.
                self._failed(client.reachability.describe())
                return self.error(f"{self.name}: {what} failed: {client.reachability.describe()}")
            if not self.available:
                return self.error(f"{self.name}: {what} failed: {self._last_failure}")
        return None

    def close(self) -> None:
        """Fail every call still waiting; later calls fail at once."""
        if self.closed:
            return
        self.closed = True
        calls, self._calls = self._calls, set()
        for call in calls:
            self._finish(call, Failure(self.error(f"{self.name} is closed")))

    def _answered(self, reply, call: _Call, on_reply: Callable) -> None:
        if call.result.called:
            # Past the deadline, closed, or cancelled: the caller has its
            # answer already.  Returning None also consumes a late failure.
            self._calls.discard(call)
            return None
        if isinstance(reply, Failure):
            if reply.check(txredisapi.ResponseError):
                # Redis is up and answered; it refused this command.
                self._recovered()
                why = reply.getErrorMessage()
                self._finish(call, Failure(self.error(f"{self.name}: redis refused {call.what}: {why}")))
                return None
            quiet = False
            if reply.check(txredisapi.ConnectionError) and self.client is not None:
                # The pool reconnects; if it cannot, the client says so once.
                why, quiet = f"connection to redis {self.client.reachability.address} lost", True
            else:
                why = f"{reply.type.__name__}: {reply.getErrorMessage()}"
            self._failed(why, quiet)
            self._finish(call, Failure(self.error(f"{self.name}: {call.what} failed: {why}")))
            return None
        self._recovered()
        try:
            value = on_reply(reply)
        except Exception:
            value = Failure()
        self._finish(call, value)
        return None

    def _deadline(self, call: _Call) -> None:
        call.timer = None
        if call.result.called:
            self._calls.discard(call)
            return
        now = self.clock.seconds()
        if call.fired_at is None:
            # Timers run before the turn's reads: a reply may be read and
            # waiting in this very turn.  Decide after it.
            call.fired_at = now
            call.timer = self.clock.callLater(0, self._deadline, call)
            return
        behind = max(call.fired_at - call.due, now - call.fired_at)
        call.fired_at = None
        if now < call.give_up_at and behind > OVERLOAD_LAG and self._connected():
            call.due = now + min(_GRACE, call.give_up_at - now)
            call.timer = self.clock.callLater(call.due - now, self._deadline, call)
            return
        client = self.client
        if client is not None and client.reachability.unreachable:
            why = client.reachability.describe()
        else:
            why = f"no answer to {call.what} within {call.timeout:g} s"
        # With no connection up the pool is reconnecting, and the client
        # says once whether it can: a deadline that beats that line to it
        # says nothing more.
        self._failed(why, quiet=not self._connected())
        self._finish(call, Failure(self.error(f"{self.name}: {call.what} failed: {why}")))

    def _finish(self, call: _Call, value) -> None:
        self._calls.discard(call)
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        if isinstance(value, Failure):
            call.result.errback(value)
        else:
            call.result.callback(value)

    def _failed(self, why: str, quiet: bool = False) -> None:
        self._last_failure = why
        for observer in self.failure_observers:
            try:
                observer(self.name)
            except Exception:
                self.log.failure("failure observer of {name}", name=self.name)
        if self.available:
            self.available = False
            if not quiet and (self.client is None or not self.client.reachability.unreachable):
                self._warned = True
                self.log.warn("{name} unavailable: {why}", name=self.name, why=why)

    def _recovered(self) -> None:
        if not self.available:
            self.available = True
            if self._warned:
                self._warned = False
                self.log.info("{name} recovered", name=self.name)


class RedisComponent:
    """
    What every Redis-backed part of mpush offers besides its own interface:
    a way to be told of its failed calls.  Expects C{self._calls}, its
    L{BoundedRedis}.
    """

    def observe_failures(self, observer: Callable[[str], object]) -> None:
        """
        Call C{observer(component name)} for every call that fails because
        Redis is down, slow or unreachable.
        """
        self._calls.failure_observers.append(observer)

"""
Waiting, in a test, for something that happens in its own time: a process
starting, a Redis failover, a socket closing, a message crossing a channel.

One helper for every test that polls.  L{wait_until} counts the steps it
has slept rather than reading a clock, so its bound guards against a hang
without timing anything, and it polls over a fake clock as well as over the
real reactor (pass the test's own C{sleep}).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer, reactor, task

__all__ = ["sleep", "wait_until"]


def sleep(seconds: float) -> defer.Deferred:
    """A Deferred that fires after C{seconds} on the real reactor."""
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    step: float = 0.05,
    what: str = "condition",
    *,
    sleep: Callable[[float], defer.Deferred] = sleep,
):
    """
    Poll C{predicate} (it may return a Deferred; a failure counts as false)
    every C{step} seconds until it gives something true, and return that.

    @param sleep: how a step passes: the real reactor's by default, or a
        test's fake clock advancing.
    @raise AssertionError: C{what} was not met within C{timeout} seconds of
        steps (naming the predicate's last error, if any).
    """
    waited = 0.0
    last_error = None
    while True:
        try:
            value = yield defer.maybeDeferred(predicate)
        except Exception as error:
            value, last_error = None, error
        if value:
            return value
        if waited >= timeout:
            break
        yield sleep(step)
        waited += step
    raise AssertionError(f"{what} not met within {timeout}s" + (f" (last error: {last_error!r})" if last_error else ""))

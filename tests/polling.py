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

__all__ = ["sleep", "until_succeeds", "wait_until"]


def sleep(seconds: float) -> defer.Deferred:
    """A Deferred that fires after C{seconds} on the real reactor."""
    return task.deferLater(reactor, seconds, lambda: None)


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    step: float = 0.05,
    what: str = "condition",
    *,
    sleep: Callable[[float], defer.Deferred] = sleep,
) -> defer.Deferred:
    """
    Poll C{predicate} (it may return a Deferred; a failure counts as false)
    every C{step} seconds until it gives something true, and return that.

    @param sleep: how a step passes: the real reactor's by default, or a
        test's fake clock advancing.
    @raise AssertionError: C{what} was not met within C{timeout} seconds of
        steps (naming the predicate's last error, if any).
    """
    return _poll(predicate, bool, (Exception,), timeout, step, what, sleep)


def until_succeeds(
    attempt: Callable[[], Any],
    timeout: float = 15.0,
    step: float = 0.1,
    what: str = "attempt",
    *,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    sleep: Callable[[float], defer.Deferred] = sleep,
) -> defer.Deferred:
    """
    Call C{attempt} (it may return a Deferred) every C{step} seconds until
    it neither fails with one of C{retry_on} nor returns C{False}, and
    return its result (which may be None): for calls that fail while a
    service recovers, such as a Redis failover.  Other errors end the wait.

    @raise AssertionError: C{what} did not succeed within C{timeout}
        seconds of steps (naming the last error, if any).
    """
    return _poll(attempt, lambda result: result is not False, retry_on, timeout, step, what, sleep)


@defer.inlineCallbacks
def _poll(call, accept, retry_on, timeout, step, what, sleep):
    waited = 0.0
    last_error = None
    while True:
        try:
            value = yield defer.maybeDeferred(call)
        except retry_on as error:
            last_error = error
        else:
            if accept(value):
                return value
        if waited >= timeout:
            break
        yield sleep(step)
        waited += step
    raise AssertionError(f"{what} not met within {timeout}s" + (f" (last error: {last_error!r})" if last_error else ""))

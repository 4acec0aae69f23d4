"""
Whether a node reaches its Redis, said once when that changes.

Every Redis-backed part of a node shares one connection pool whose
connections are made again and again while Redis is away.  Told by each
part, or by each retry, an outage is a flood of lines that never says what
is wrong ("no answer to clear within 2 s").  This module watches the pool's
connection attempts: the first that fails logs one line with the address and
the operating system's error, the first that succeeds after that logs one
line saying Redis is back, and in between calls fail at once naming the
operation and that error.  The reconnect machinery's own "Scheduling retry"
chatter is dropped from the log (L{is_retry_chatter}).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mpush.os_errors import describe_errno

__all__ = ["RedisReachability", "describe_connect_error", "is_retry_chatter"]


def describe_connect_error(failure: Failure) -> str:
    """
    The OS error of a failed connection attempt, short: C{"connection
    refused (ECONNREFUSED)"}, C{"connect timed out"}, C{"cannot resolve
    redis.internal"}.
    """
    value = failure.value
    described = describe_errno(getattr(value, "osError", None))
    if described is not None:
        return described
    if isinstance(value, net_error.ConnectionRefusedError):
        return "connection refused (ECONNREFUSED)"
    if isinstance(value, (net_error.TimeoutError, net_error.TCPTimedOutError)):
        return "connect timed out"
    if isinstance(value, net_error.DNSLookupError):
        return f"cannot resolve the host name: {failure.getErrorMessage()}"
    if isinstance(value, OSError) and describe_errno(value.errno):
        return describe_errno(value.errno)
    return f"{type(value).__name__}: {failure.getErrorMessage()}"


def is_retry_chatter(event: dict) -> bool:
    """
    Whether a log event is Twisted's C{ClientService} announcing its next
    connection attempt: one per pooled connection per retry, said better by
    L{RedisReachability}'s one line.
    """
    return str(event.get("log_format", "")).startswith("Scheduling retry ") and str(
        event.get("log_namespace", "")
    ).endswith("ClientService")


class RedisReachability:
    """
    Whether the connection attempts to one Redis server succeed.

    @ivar error: the OS error of the last failed attempt while Redis is
        unreachable, else C{None}.
    """

    log = Logger()

    def __init__(self, address: str, clock: IReactorTime) -> None:
        self.address = address
        self.clock = clock
        self.error: str | None = None
        self._since = 0.0

    @property
    def unreachable(self) -> bool:
        return self.error is not None

    def describe(self) -> str:
        """What callers are told while Redis is unreachable."""
        return f"redis {self.address} unreachable: {self.error}"

    def attempt_failed(self, failure: Failure) -> Failure:
        if failure.check(defer.CancelledError):
            return failure  # the pool is closing: not a word about Redis
        why = describe_connect_error(failure)
        if self.error is None:
            self._since = self.clock.seconds()
            self.log.warn("redis {address} unreachable: {why}", address=self.address, why=why)
        self.error = why
        return failure

    def attempt_succeeded(self, protocol):
        if self.error is not None:
            self.error = None
            self.log.info(
                "redis {address} reachable again after {seconds:.1f} s",
                address=self.address,
                seconds=self.clock.seconds() - self._since,
            )
        return protocol

    def watch(self, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
        """C{endpoint}, reporting each connection attempt here."""
        return _WatchedEndpoint(endpoint, self)


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    def __init__(self, endpoint: IStreamClientEndpoint, reachability: RedisReachability) -> None:
        self._endpoint = endpoint
        self._reachability = reachability

    def connect(self, factory):
        attempt = self._endpoint.connect(factory)
        attempt.addCallbacks(self._reachability.attempt_succeeded, self._reachability.attempt_failed)
        return attempt

    def __repr__(self) -> str:
        return repr(self._endpoint)

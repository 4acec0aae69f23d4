"""
One way to open the Redis connection pool that every Redis-backed part of
mpush shares (sessions now; routes and pub/sub later).

MPush keeps strings such as C{"123"} or session strings in Redis and Java
nodes read them back byte for byte, so txredisapi's habit of turning
numeric-looking replies into ints is switched off here, once, for everyone.
The pool is lazy and reconnects forever with a capped back-off: Redis being
down at start-up or going away later is an outage to ride out, not a crash.

Importing this module imports txredisapi, which imports the global reactor:
install a non-default reactor before importing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mpush.redis_status import RedisReachability

__all__ = [
    "InvalidRedisUrl",
    "RedisAddress",
    "RedisClient",
    "connect_redis",
    "parse_redis_url",
]

_DEFAULT_PORT = 6379


class InvalidRedisUrl(ValueError):
    """The configured Redis URL is not C{redis://[[user]:password@]host[:port][/db]}."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where and as whom to connect; the parsed form of a C{redis://} URL."""

    host: str
    port: int = _DEFAULT_PORT
    db: int = 0
    password: str | None = None
    username: str | None = None

    def __repr__(self) -> str:
        # Keep the password out of logs.
        secret = ", password=***" if self.password is not None else ""
        user = f", username={self.username!r}" if self.username else ""
        return f"RedisAddress({self.host!r}, {self.port}, db={self.db}{user}{secret})"


def parse_redis_url(url: str) -> RedisAddress:
    """
    C{redis://[[user]:password@]host[:port][/db]}; port 6379 and db 0 when
    left out.  Anything else raises L{InvalidRedisUrl}.
    """
    if not isinstance(url, str):
        raise InvalidRedisUrl(f"redis url must be text, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InvalidRedisUrl(f"bad redis url {_redact(url)!r}: {e}") from None
    if parts.scheme != "redis":
        raise InvalidRedisUrl(f"redis url must start with redis://, got {_redact(url)!r}")
    if not parts.hostname:
        raise InvalidRedisUrl(f"redis url has no host: {_redact(url)!r}")
    if parts.query or parts.fragment:
        raise InvalidRedisUrl(f"redis url takes no query or fragment: {_redact(url)!r}")
    path = parts.path.lstrip("/")
    if path == "":
        db = 0
    elif path.isascii() and path.isdigit():
        db = int(path)
    else:
        raise InvalidRedisUrl(f"redis db must be a number, got {path!r}")
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    if password == "":
        password = None
    return RedisAddress(
        host=parts.hostname,
        port=port if port is not None else _DEFAULT_PORT,
        db=db,
        password=password,
        username=username,
    )


def _redact(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, _ = head.partition("://")
    return f"{scheme}{sep}***@{tail}"


class _DirectHandler(txredisapi.ConnectionHandler):
    """
    txredisapi's connection handler without its per-command detour.

    The stock handler gets a connection for every command through an
    C{inlineCallbacks} generator and a Deferred of its connection queue:
    under a reconnect storm (seven commands per device) that was a third of
    a node's CPU.  A command that does not block a connection goes straight
    to one of the ready connections, round robin, exactly as the stock
    handler's C{peek} would hand it one; blocking commands, and any command
    while no connection is ready (it must wait for a reconnect), take the
    stock path.
    """

    def __init__(self, factory):
        super().__init__(factory)
        self._turn = 0

    def __getattr__(self, method):
        protocol_method = getattr(self._factory.protocol, method)
        stock = super().__getattr__(method)
        if getattr(protocol_method, "_blocking", False):
            return stock
        ready = self._factory.connectionQueue.pending

        def direct(*args, **kwargs):
            count = len(ready)
            if count:
                self._turn = turn = (self._turn + 1) % count
                connection = ready[turn]
                if connection.connected:
                    try:
                        return protocol_method(connection, *args, **kwargs)
                    except Exception:
                        return defer.fail()
            return stock(*args, **kwargs)

        # Looked up once per command name, not once per call.
        self.__dict__[method] = direct
        return direct


class RedisClient:
    """
    A lazy, self-reconnecting txredisapi pool.  Use C{.redis} for commands;
    they wait for a connection while none is up, so callers bound them with a
    timeout of their own.
    """

    __slots__ = ("redis", "address", "reachability", "_factory", "_clock", "_close_timeout", "_closing",
                 "_closed", "_waiters")

    log = Logger()

    def __init__(self, factory, address: RedisAddress, clock: IReactorTime, close_timeout: float):
        self._factory = factory
        #: The txredisapi connection handler: C{get}, C{set}, C{expire}, ...
        self.redis = factory.handler
        self.address = address
        #: L{RedisReachability}: logs outages once, tells calls why they fail.
        self.reachability = RedisReachability(f"{address.host}:{address.port}", clock)
        self._clock = clock
        self._close_timeout = close_timeout
        self._closing = False
        self._closed = False
        self._waiters: list[defer.Deferred] = []

    @property
    def connected(self) -> bool:
        """
        Whether at least one pooled connection is up (authenticated and on
        its db).  Lets callers fail fast during an outage instead of queuing
        commands that wait for a reconnect.
        """
        return bool(self._factory.pool)

    def disconnect(self) -> defer.Deferred:
        """
        Stop reconnecting and close every connection.  Safe to call more than
        once; each call's Deferred fires C{None} once all are closed, or after
        the close timeout, when what is left is aborted.
        """
        waiter: defer.Deferred = defer.Deferred()
        if self._closed:
            waiter.callback(None)
            return waiter
        self._waiters.append(waiter)
        if not self._closing:
            self._closing = True
            closing = self._factory.disconnect()
            closing.addTimeout(self._close_timeout, self._clock)
            closing.addErrback(self._abort_remaining)
            closing.addBoth(self._closed_now)
        return waiter

    def _gave_up(self, failure) -> None:
        self.log.error(
            "redis {address}: giving up connecting: {why}",
            address=self.address,
            why=failure.getErrorMessage(),
        )

    def _abort_remaining(self, failure) -> None:
        self.log.warn(
            "redis {address} did not close cleanly, aborting: {why}",
            address=self.address,
            why=failure.getErrorMessage(),
        )
        for connection in list(self._factory.pool):
            connection.transport.abortConnection()

    def _closed_now(self, _) -> None:
        self._closed = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def __repr__(self) -> str:
        return f"<RedisClient {self.address!r} connections={len(self._factory.pool)}>"


def connect_redis(
    url: str,
    clock: IReactorTime | None = None,
    *,
    poolsize: int = 4,
    connect_timeout: float = 5.0,
    reply_timeout: float | None = 5.0,
    max_retry_delay: float = 5.0,
    close_timeout: float = 5.0,
) -> RedisClient:
    """
    Start a lazy connection pool to C{url} and return at once; connections
    are (re)made in the background.

    @param clock: times L{RedisClient.disconnect}; the global reactor when
        C{None}.  txredisapi itself always uses the global reactor.
    @param reply_timeout: a connection that leaves a command unanswered this
        long is aborted and made again (a hung server, a silent network
        partition); C{None} waits forever.
    @param max_retry_delay: cap, in seconds, of the reconnect back-off.
    @raise InvalidRedisUrl: for a malformed C{url}.
    """
    address = parse_redis_url(url)
    if isinstance(poolsize, bool) or not isinstance(poolsize, int) or poolsize < 1:
        raise ValueError(f"poolsize must be a positive int, not {poolsize!r}")
    if not max_retry_delay > 0:
        raise ValueError(f"max_retry_delay must be positive, not {max_retry_delay!r}")
    if reply_timeout is not None and not reply_timeout > 0:
        raise ValueError(f"reply_timeout must be positive or None, not {reply_timeout!r}")
    from twisted.internet import reactor

    if clock is None:
        clock = reactor
    factory = txredisapi.RedisFactory(
        f"{address.host}:{address.port}",
        address.db or None,  # db 0 needs no SELECT
        poolsize,
        isLazy=True,
        handler=_DirectHandler,
        charset="utf-8",
        password=address.password,
        replyTimeout=reply_timeout,
        convertNumbers=False,
        username=address.username,
    )
    factory.reconnect = True
    factory.maxDelay = max_retry_delay
    factory.initialDelay = min(factory.initialDelay, max_retry_delay)
    endpoint = HostnameEndpoint(reactor, address.host, address.port, timeout=connect_timeout)
    client = RedisClient(factory, address, clock, close_timeout)
    # A lazy pool still fails this Deferred when it gives up for good (bad
    # password, bad db); nobody else waits on it, so report it here rather
    # than as an unhandled error at garbage collection.
    factory.deferred.addErrback(client._gave_up)
    factory.startConnecting(client.reachability.watch(endpoint))
    return client

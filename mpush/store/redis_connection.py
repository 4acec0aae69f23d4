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
from functools import partial
from urllib.parse import quote, unquote, urlsplit

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from mpush.redis_status import RedisReachability

__all__ = [
    "InvalidRedisUrl",
    "AnyNodeEndpoint",
    "RedisAddress",
    "RedisClient",
    "SentinelMasterEndpoint",
    "close_endpoint",
    "cluster_url",
    "connect_redis",
    "open_pool",
    "parse_redis_url",
    "redis_endpoint",
    "sentinel_url",
]

_DEFAULT_PORT = 6379
_SENTINEL_SCHEME = "redis+sentinel"
_CLUSTER_SCHEME = "redis+cluster"


class InvalidRedisUrl(ValueError):
    """
    The configured Redis URL is not C{redis://[[user]:password@]host[:port][/db]}
    nor C{redis+sentinel://[:password@]host:port,...,host:port/master[/db]}
    nor C{redis+cluster://[:password@]host:port,...,host:port}.
    """


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where and as whom to connect; the parsed form of a C{redis://} URL."""

    host: str
    port: int = _DEFAULT_PORT
    db: int = 0
    password: str | None = None
    username: str | None = None
    #: With Redis Sentinel: the sentinels, asked for the address of the
    #: master named C{master} (C{host:port} is then the first sentinel).
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    #: With Redis Cluster: the seed nodes, asked for the slot map
    #: (C{host:port} is then the first seed).
    cluster_nodes: tuple[tuple[str, int], ...] = ()

    @property
    def label(self) -> str:
        """What log lines call this server."""
        if self.cluster_nodes:
            return f"cluster {','.join(f'{h}:{p}' for h, p in self.cluster_nodes)}"
        if self.sentinels:
            return f"sentinel master {self.master}"
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        # Keep the password out of logs.
        secret = ", password=***" if self.password is not None else ""
        user = f", username={self.username!r}" if self.username else ""
        where = f"sentinels={self.sentinels!r}, master={self.master!r}" if self.sentinels else f"{self.host!r}, {self.port}"
        return f"RedisAddress({where}, db={self.db}{user}{secret})"


def sentinel_url(sentinels: tuple[str, ...], master: str, db: int = 0, password: str = "") -> str:
    """The URL of master C{master} known to C{sentinels} (C{"host:port"} each)."""
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"{_SENTINEL_SCHEME}://{auth}{','.join(sentinels)}/{quote(master, safe='')}/{db}"


def cluster_url(nodes: tuple[str, ...], password: str = "") -> str:
    """The URL of the Redis Cluster that seed C{nodes} (C{"host:port"} each) belong to."""
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"{_CLUSTER_SCHEME}://{auth}{','.join(nodes)}"


def _parse_hosts(url: str, scheme: str, what: str) -> tuple[str, str | None, list[tuple[str, int]]]:
    """The path, password and C{host:port} list of a URL of several servers."""
    rest = url[len(scheme) + 3:]
    where, _, path = rest.partition("/")
    auth, at, hosts = where.rpartition("@")
    password = unquote(auth.partition(":")[2]) if at else None
    found = []
    for node in hosts.split(","):
        host, colon, port = node.rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise InvalidRedisUrl(f"{what} must be host:port, got {node!r} in {_redact(url)!r}")
        found.append((host, int(port)))
    return path, password, found


def _parse_cluster_url(url: str) -> RedisAddress:
    path, password, nodes = _parse_hosts(url, _CLUSTER_SCHEME, "cluster node")
    if path.strip("/") not in ("", "0"):
        raise InvalidRedisUrl(f"a redis cluster has only db 0, got {path!r}")
    return RedisAddress(
        host=nodes[0][0], port=nodes[0][1], password=password or None, cluster_nodes=tuple(nodes)
    )


def _parse_sentinel_url(url: str) -> RedisAddress:
    path, password, sentinels = _parse_hosts(url, _SENTINEL_SCHEME, "sentinel")
    master, _, db = path.partition("/")
    if not master:
        raise InvalidRedisUrl(f"sentinel url names no master: {_redact(url)!r}")
    if db and not (db.isascii() and db.isdigit()):
        raise InvalidRedisUrl(f"redis db must be a number, got {db!r}")
    return RedisAddress(
        host=sentinels[0][0],
        port=sentinels[0][1],
        db=int(db or 0),
        password=password or None,
        sentinels=tuple(sentinels),
        master=unquote(master),
    )


def parse_redis_url(url: str) -> RedisAddress:
    """
    C{redis://[[user]:password@]host[:port][/db]}; port 6379 and db 0 when
    left out.  Anything else raises L{InvalidRedisUrl}.
    """
    if not isinstance(url, str):
        raise InvalidRedisUrl(f"redis url must be text, not {type(url).__name__}")
    if url.startswith(_SENTINEL_SCHEME + "://"):
        return _parse_sentinel_url(url)
    if url.startswith(_CLUSTER_SCHEME + "://"):
        return _parse_cluster_url(url)
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


@implementer(IStreamClientEndpoint)
class SentinelMasterEndpoint:
    """
    Connects to the master the sentinels name at each attempt, so that a
    pool reconnecting after its master died lands on the one a failover
    promoted.  The sentinels are asked through txredisapi's
    L{txredisapi.Sentinel} connections (the first to name a master not seen
    down wins); the wait for an answer is our own, on C{reactor}, so that
    closing the endpoint leaves no timer behind.
    """

    def __init__(self, reactor, address: RedisAddress, timeout: float) -> None:
        self._reactor = reactor
        self._master = address.master
        self._timeout = timeout
        self._sentinel = txredisapi.Sentinel(
            list(address.sentinels), connectTimeout=timeout, replyTimeout=timeout
        )
        # Discoveries waiting for a sentinel: timer -> the Deferred to fire.
        self._waiting: dict = {}

    def discover_master(self) -> defer.Deferred:
        """
        C{(host, port)} of the master, or L{txredisapi.MasterNotFoundError}
        when no sentinel names one within the timeout.
        """
        found: defer.Deferred = defer.Deferred()

        def answered(masters) -> None:
            state = masters.get(self._master) if isinstance(masters, dict) else None
            if not found.called and state and self._sentinel.check_master_state(state):
                settle()
                found.callback((state["ip"], int(state["port"])))

        def timed_out() -> None:
            self._waiting.pop(timer, None)
            if not found.called:
                found.errback(txredisapi.MasterNotFoundError(f"No master found for {self._master}"))

        def settle() -> None:
            self._waiting.pop(timer, None)
            if timer.active():
                timer.cancel()

        timer = self._reactor.callLater(self._timeout, timed_out)
        self._waiting[timer] = found
        for sentinel in self._sentinel.sentinels:
            sentinel.sentinel_masters().addCallbacks(answered, lambda _: None)
        return found

    def connect(self, protocol_factory):
        found = self.discover_master()
        found.addCallback(
            lambda where: HostnameEndpoint(self._reactor, where[0], where[1], timeout=self._timeout).connect(
                protocol_factory
            )
        )
        return found

    def close(self) -> defer.Deferred:
        """Stop waiting for sentinels (a discovery under way fails) and close the connections to them."""
        waiting, self._waiting = self._waiting, {}
        for timer, found in waiting.items():
            if timer.active():
                timer.cancel()
            if not found.called:
                found.errback(txredisapi.MasterNotFoundError(f"{self._master}: the endpoint was closed"))
        return self._sentinel.disconnect().addBoth(lambda _: None)


@implementer(IStreamClientEndpoint)
class AnyNodeEndpoint:
    """
    Connects to the first of several servers that answers, starting with the
    one that answered last: a Redis Cluster subscriber hears every node's
    PUBLISH on any node, so losing its node only sends it to the next.
    """

    def __init__(self, reactor, nodes: tuple[tuple[str, int], ...], timeout: float) -> None:
        self._reactor = reactor
        self._nodes = nodes
        self._timeout = timeout
        self._first = 0

    def connect(self, protocol_factory) -> defer.Deferred:
        order = [(self._first + i) % len(self._nodes) for i in range(len(self._nodes))]

        def attempt(failure, index: int):
            if index == len(order):
                return failure
            host, port = self._nodes[order[index]]
            tried = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout).connect(protocol_factory)
            tried.addCallback(lambda protocol: self._answered(order[index], protocol))
            return tried.addErrback(attempt, index + 1)

        return attempt(None, 0)

    def _answered(self, node: int, protocol):
        self._first = node
        return protocol


def redis_endpoint(reactor, address: RedisAddress, timeout: float):
    """Where connections to C{address} go: the server, the master the sentinels name, or any cluster node."""
    if address.cluster_nodes:
        return AnyNodeEndpoint(reactor, address.cluster_nodes, timeout)
    if address.sentinels:
        return SentinelMasterEndpoint(reactor, address, timeout)
    return HostnameEndpoint(reactor, address.host, address.port, timeout=timeout)


def close_endpoint(endpoint) -> defer.Deferred:
    """Release what an endpoint of L{redis_endpoint} holds (a sentinel's connections)."""
    close = getattr(endpoint, "close", None)
    return close() if close is not None else defer.succeed(None)


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
                 "_closed", "_waiters", "endpoint")

    log = Logger()

    def __init__(self, factory, address: RedisAddress, clock: IReactorTime, close_timeout: float, endpoint=None):
        self._factory = factory
        self.endpoint = endpoint
        #: The txredisapi connection handler: C{get}, C{set}, C{expire}, ...
        self.redis = factory.handler
        self.address = address
        #: L{RedisReachability}: logs outages once, tells calls why they fail.
        self.reachability = RedisReachability(address.label, clock)
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

    @property
    def was_up(self) -> bool:
        """Whether the whole pool was connected once (or gave up): a pool down now is then a lost server."""
        return self._factory.deferred is None

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
            closing.addBoth(lambda _: close_endpoint(self.endpoint))
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
    if address.cluster_nodes:
        from mpush.store.redis_cluster import RedisClusterClient

        return RedisClusterClient(
            address,
            clock,
            partial(
                open_pool,
                clock=clock,
                poolsize=poolsize,
                connect_timeout=connect_timeout,
                reply_timeout=reply_timeout,
                max_retry_delay=max_retry_delay,
                close_timeout=close_timeout,
            ),
            timeout=connect_timeout,
        )
    return open_pool(
        address,
        clock,
        poolsize=poolsize,
        connect_timeout=connect_timeout,
        reply_timeout=reply_timeout,
        max_retry_delay=max_retry_delay,
        close_timeout=close_timeout,
    )


def open_pool(
    address: RedisAddress,
    clock: IReactorTime | None,
    *,
    poolsize: int,
    connect_timeout: float,
    reply_timeout: float | None,
    max_retry_delay: float,
    close_timeout: float,
) -> RedisClient:
    """The pool of L{connect_redis} to one server (or sentinel master), arguments checked."""
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
    endpoint = redis_endpoint(reactor, address, connect_timeout)
    client = RedisClient(factory, address, clock, close_timeout, endpoint)
    # A lazy pool still fails this Deferred when it gives up for good (bad
    # password, bad db); nobody else waits on it, so report it here rather
    # than as an unhandled error at garbage collection.
    factory.deferred.addErrback(client._gave_up)
    factory.startConnecting(client.reachability.watch(endpoint))
    return client

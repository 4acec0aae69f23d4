"""
A Redis connection in subscriber mode that stays subscribed.

Kicks reach a node only through its subscription (spec 11.8), so losing it
silently would make remote kicks vanish.  Redis forgets subscriptions with
the connection: after every reconnect each channel is subscribed again.  A
hung server is found by a periodic PING (allowed in subscriber mode), and
every wait — subscription confirmation, PING reply, close — is bounded on
the injected clock; a wait that runs out aborts the connection, which is
then made again.

Importing this module imports txredisapi, which imports the global reactor.
"""

from __future__ import annotations

from typing import Callable

import txredisapi
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mpush.router.interfaces import RouterUnavailable
from mpush.store.redis_calls import check_timeout
from mpush.store.redis_connection import close_endpoint, parse_redis_url, redis_endpoint

__all__ = ["RedisSubscriber"]


class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):
        owner = self.factory.owner
        if owner is not None:
            owner._message(channel, message)


class _SubscriberFactory(txredisapi.RedisFactory):
    """txredisapi's reconnecting factory, telling its owner about connections."""

    protocol = _SubscriberProtocol
    owner: "RedisSubscriber | None" = None

    def addConnection(self, conn):
        super().addConnection(conn)
        if conn in self.pool and self.owner is not None:
            self.owner._connected(conn)

    def delConnection(self, conn):
        super().delConnection(conn)
        if self.owner is not None:
            self.owner._lost(conn)


class RedisSubscriber:
    """
    One subscriber connection to C{url}, kept up and subscribed to every
    channel asked for until L{close}.

    @param timeout: seconds to wait for a subscription to be confirmed, a
        PING to be answered, or the connection to close.
    @param ping_interval: seconds between health-check PINGs.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        clock: IReactorTime,
        *,
        timeout: float = 2.0,
        connect_timeout: float = 5.0,
        max_retry_delay: float = 5.0,
        ping_interval: float = 5.0,
        purpose: str = "pub/sub",
    ) -> None:
        address = parse_redis_url(url)
        # Named in its log lines: a node has one subscriber per purpose.
        self.purpose = purpose
        self._timeout = check_timeout(timeout)
        check_timeout(ping_interval)
        check_timeout(max_retry_delay)
        self._clock = clock
        self._address = address
        self._handlers: dict[str, list[Callable[[object], object]]] = {}
        # Channels confirmed on the current connection.
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[defer.Deferred]] = {}
        self._conn = None
        self._closed = False
        self._closing: defer.Deferred | None = None
        self._outage = False
        self._ping_pending = False

        # The db is irrelevant to pub/sub; no SELECT.
        factory = _SubscriberFactory(
            f"{address.host}:{address.port}",
            None,
            1,
            isLazy=True,
            handler=txredisapi.ConnectionHandler,
            charset="utf-8",
            password=address.password,
            replyTimeout=None,
            convertNumbers=False,
            username=address.username,
        )
        factory.owner = self
        factory.reconnect = True
        factory.maxDelay = max_retry_delay
        factory.initialDelay = min(factory.initialDelay, max_retry_delay)
        factory.deferred.addErrback(self._gave_up)
        self._factory = factory
        from twisted.internet import reactor

        self._endpoint = redis_endpoint(reactor, address, connect_timeout)
        factory.startConnecting(self._endpoint)
        self._ping_loop = task.LoopingCall(self._ping)
        self._ping_loop.clock = clock
        self._ping_loop.start(ping_interval, now=False)

    @property
    def connected(self) -> bool:
        """Whether the subscriber connection is up."""
        return self._conn is not None

    def subscribed(self, channel: str) -> bool:
        """Whether Redis has confirmed C{channel} on the current connection."""
        return channel in self._confirmed

    def subscribe(self, channel: str, on_message: Callable[[object], object]) -> defer.Deferred:
        """
        Call C{on_message(message)} for every message on C{channel}, from now
        until L{close}, across reconnects.

        @return: a Deferred firing C{None} once Redis has confirmed the
            subscription, or failing with L{RouterUnavailable} after
            C{timeout} (the subscription is still made when Redis is back).
        """
        if self._closed:
            return defer.fail(RouterUnavailable("redis subscriber is closed"))
        if not isinstance(channel, str) or not channel:
            return defer.fail(TypeError(f"channel must be non-empty text, not {channel!r}"))
        if not callable(on_message):
            return defer.fail(TypeError("on_message must be callable"))
        first = channel not in self._handlers
        self._handlers.setdefault(channel, []).append(on_message)
        if channel in self._confirmed:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.setdefault(channel, []).append(waiter)
        timer = self._clock.callLater(self._timeout, self._waiter_expired, channel, waiter)

        def stop_timer(result):
            if timer.active():
                timer.cancel()
            return result

        waiter.addBoth(stop_timer)
        if first and self._conn is not None:
            self._send_subscribe(self._conn, channel)
        return waiter

    def close(self) -> defer.Deferred:
        """
        Stop reconnecting and close the connection (aborted if it does not
        close within C{timeout}).  Safe to call more than once.
        """
        if self._closing is not None:
            closing = defer.Deferred()
            self._closing.addBoth(lambda r: closing.callback(None) or r)
            return closing
        self._closed = True
        if self._ping_loop.running:
            self._ping_loop.stop()
        waiters, self._waiters = self._waiters, {}
        for channel_waiters in waiters.values():
            for waiter in channel_waiters:
                if not waiter.called:
                    waiter.errback(RouterUnavailable("redis subscriber is closed"))
        self._handlers.clear()
        self._confirmed.clear()
        closing = self._factory.disconnect()
        closing.addTimeout(self._timeout, self._clock)
        closing.addErrback(self._abort_remaining)
        closing.addBoth(lambda _: close_endpoint(self._endpoint))
        closing.addBoth(lambda _: None)
        self._closing = closing
        result: defer.Deferred = defer.Deferred()
        closing.addBoth(lambda r: result.callback(None) or r)
        return result

    # Connection events from the factory

    def _connected(self, conn) -> None:
        if self._closed:
            conn.transport.loseConnection()
            return
        self._conn = conn
        self._confirmed.clear()
        self._ping_pending = False
        if self._outage:
            self._outage = False
            self.log.info(
                "redis subscriber for {purpose} {address} reconnected; resubscribing {count} channel(s)",
                purpose=self.purpose,
                address=self._address,
                count=len(self._handlers),
            )
        for channel in list(self._handlers):
            self._send_subscribe(conn, channel)

    def _lost(self, conn) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._confirmed.clear()
        if not self._closed and not self._outage:
            self._outage = True
            self.log.warn(
                "redis subscriber for {purpose} {address} lost its connection; reconnecting",
                purpose=self.purpose,
                address=self._address,
            )

    def _gave_up(self, failure) -> None:
        self.log.error(
            "redis subscriber for {purpose} {address}: giving up connecting: {why}",
            purpose=self.purpose,
            address=self._address,
            why=failure.getErrorMessage(),
        )

    # Subscribing

    def _send_subscribe(self, conn, channel: str) -> None:
        try:
            sent = conn.subscribe(channel)
        except Exception as e:
            # Lost between the event and now; the reconnect will retry.
            self.log.debug("could not subscribe to {channel}: {why}", channel=channel, why=e)
            return
        timer = self._clock.callLater(self._timeout, self._subscribe_expired, conn, channel)

        def confirmed(_) -> None:
            if timer.active():
                timer.cancel()
            if conn is not self._conn or channel not in self._handlers:
                return
            self._confirmed.add(channel)
            for waiter in self._waiters.pop(channel, []):
                if not waiter.called:
                    waiter.callback(None)

        def failed(failure) -> None:
            if timer.active():
                timer.cancel()
            if conn is self._conn and not self._closed:
                self.log.warn(
                    "redis refused to subscribe to {channel}: {why}; reconnecting",
                    channel=channel,
                    why=failure.getErrorMessage(),
                )
                self._abort(conn)

        sent.addCallbacks(confirmed, failed)

    def _subscribe_expired(self, conn, channel: str) -> None:
        if conn is self._conn and not self._closed:
            self.log.warn(
                "no confirmation of {channel} within {timeout:g} s; reconnecting",
                channel=channel,
                timeout=self._timeout,
            )
            self._abort(conn)

    def _waiter_expired(self, channel: str, waiter: defer.Deferred) -> None:
        waiters = self._waiters.get(channel)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[channel]
        if not waiter.called:
            waiter.errback(
                RouterUnavailable(
                    f"redis subscriber: {channel} not confirmed within {self._timeout:g} s; still trying"
                )
            )

    # Health check

    def _ping(self) -> None:
        conn = self._conn
        if conn is None or self._ping_pending or self._closed:
            return
        try:
            sent = conn.ping()
        except Exception:
            return
        self._ping_pending = True
        timer = self._clock.callLater(self._timeout, self._ping_expired, conn)

        def answered(result):
            if timer.active():
                timer.cancel()
            if conn is self._conn:
                self._ping_pending = False
            return None

        sent.addBoth(answered)

    def _ping_expired(self, conn) -> None:
        if conn is self._conn and not self._closed:
            self.log.warn(
                "redis subscriber for {purpose} {address} did not answer PING within {timeout:g} s; reconnecting",
                purpose=self.purpose,
                address=self._address,
                timeout=self._timeout,
            )
            self._abort(conn)

    def _abort(self, conn) -> None:
        if conn is self._conn:
            # Nothing confirmed on a connection being dropped counts any more.
            self._confirmed.clear()
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _abort_remaining(self, failure) -> None:
        self.log.warn(
            "redis subscriber for {purpose} {address} did not close cleanly, aborting: {why}",
            purpose=self.purpose,
            address=self._address,
            why=failure.getErrorMessage(),
        )
        for conn in list(self._factory.pool):
            self._abort(conn)

    # Messages

    def _message(self, channel, message) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        for handler in list(self._handlers.get(channel, ())):
            try:
                handler(message)
            except Exception:
                self.log.failure("handler of {channel} failed", channel=channel)

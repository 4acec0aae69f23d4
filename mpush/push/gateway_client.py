"""
Gateway connections of the push client: TCP to a node's gateway port, raw
MPush frames (no cipher, no compression, no heartbeat; spec 12.1), one
GATEWAY_PUSH request answered by one OK or ERROR carrying the request's
packet session id (spec 12.6).

MPush's Java push client can wait forever (an ERROR code it does not know
leaves the request pending, spec 12.7 step 5).  Here every request ends: a
reply, its own timer on the injected clock, or the connection's loss fails
it.  A late reply, after the timer, finds nothing pending and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mpush.protocol.body import make_raw_packet
from mpush.protocol.errors import BodyError, FramingError
from mpush.protocol.fields import INT32_MAX
from mpush.protocol.messages import ErrorMessage, GatewayPushMessage, OkMessage
from mpush.protocol.packet import DEFAULT_MAX_PACKET_SIZE, Command, Packet, PacketDecoder, encode_packet

__all__ = [
    "BadGatewayReply",
    "CorrelationIds",
    "GatewayClosed",
    "GatewayConnectFailed",
    "GatewayConnection",
    "GatewayConnectionLost",
    "GatewayError",
    "GatewayPool",
    "GatewayReply",
    "GatewayTimeout",
    "PushTooLarge",
]

#: Largest reply frame accepted.  Replies are an OK/ERROR with a short JSON;
#: anything near this is not a gateway talking.
MAX_REPLY_SIZE = 64 * 1024
#: After close(), how long a connection may take to flush before it is aborted.
CLOSE_TIMEOUT = 5.0
#: Packet session ids are Java ints; after the largest we start over at 1.
_MAX_SESSION_ID = INT32_MAX


# --------------------------------------------------------------------- errors


class GatewayError(Exception):
    """Base of every way a gateway request can fail without a reply."""


class GatewayConnectFailed(GatewayError):
    """The node's gateway port could not be reached (refused, unreachable, timed out)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot connect to gateway {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class GatewayTimeout(GatewayError):
    """No reply within the request's timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no reply within {seconds:g} s")
        self.seconds = seconds


class GatewayConnectionLost(GatewayError):
    """The connection went away with the request still unanswered."""


class GatewayClosed(GatewayError):
    """The pool or the connection was closed by us."""


class BadGatewayReply(GatewayError):
    """The reply to a request is neither a decodable OK nor a decodable ERROR."""


class PushTooLarge(GatewayError, ValueError):
    """
    The GATEWAY_PUSH body exceeds the gateway's max-packet-size: the node
    would close the connection on it (spec 12.1, 21.2 item 6), so it is
    never sent.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"push body of {size} bytes exceeds the gateway's {limit}-byte packet limit")
        self.size = size
        self.limit = limit


# --------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class GatewayReply:
    """
    An OK (C{ok} true) or ERROR answer to one GATEWAY_PUSH.  C{cmd} is the
    body's command field, 16 when it answers a GATEWAY_PUSH.
    """

    ok: bool
    cmd: int
    code: int
    reason: str | None = None
    data: str | None = None


class CorrelationIds:
    """
    Packet session ids for requests: 1, 2, 3, ... per push client, back to 1
    after the largest Java int.  Shared by every connection of a pool so an
    id names one request in logs on both sides.
    """

    __slots__ = ("_next",)

    def __init__(self, start: int = 1) -> None:
        if not 1 <= start <= _MAX_SESSION_ID:
            raise ValueError(f"start must be in 1..{_MAX_SESSION_ID}, not {start!r}")
        self._next = start

    def __call__(self) -> int:
        value = self._next
        self._next = 1 if value >= _MAX_SESSION_ID else value + 1
        return value


class _Pending:
    __slots__ = ("deferred", "timer")

    def __init__(self, deferred: defer.Deferred, timer) -> None:
        self.deferred = deferred
        self.timer = timer


def _cancel(call) -> None:
    if call is not None and call.active():
        call.cancel()


# ----------------------------------------------------------------- connection


class GatewayConnection(Protocol):
    """
    One TCP connection to one node's gateway port.

    Requests are correlated by packet session id in a pending table; each has
    a timer on C{clock}.  When the connection is lost, every pending request
    fails with L{GatewayConnectionLost} (or L{GatewayClosed} after L{close}).

    @param on_lost: called with this connection once it is lost (the pool
        uses it to forget the connection).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        ids: Callable[[], int] | None = None,
        *,
        max_packet_size: int | None = DEFAULT_MAX_PACKET_SIZE,
        max_reply_size: int = MAX_REPLY_SIZE,
        close_timeout: float = CLOSE_TIMEOUT,
        on_lost: Callable[["GatewayConnection"], None] | None = None,
    ) -> None:
        self.clock = clock
        self._ids = ids if ids is not None else CorrelationIds()
        self.max_packet_size = max_packet_size
        self._decoder = PacketDecoder(max_reply_size)
        self._close_timeout = close_timeout
        self._on_lost = on_lost
        self._pending: dict[int, _Pending] = {}
        self._lost = False
        self._closing = False
        self._abort_timer = None
        self._close_waiters: list[defer.Deferred] = []

    # ---------------------------------------------------------------- state

    @property
    def open(self) -> bool:
        """Connected, not lost and not closing: new requests may be sent."""
        return self.transport is not None and not self._lost and not self._closing

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def peer(self) -> str:
        if self.transport is None:
            return "?"
        address = self.transport.getPeer()
        return f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"

    # ------------------------------------------------------------- requests

    def request(self, message: GatewayPushMessage, flags: int, timeout: float) -> defer.Deferred:
        """
        Send one GATEWAY_PUSH and fire with its L{GatewayReply}.

        Fails with L{GatewayTimeout}, L{GatewayConnectionLost},
        L{GatewayClosed}, L{BadGatewayReply}, L{PushTooLarge}, or
        C{ValueError} for a message that cannot be encoded.  Cancelling the
        Deferred forgets the request (a later reply is dropped).
        """
        if not timeout > 0:
            return defer.fail(ValueError(f"timeout must be positive, not {timeout!r}"))
        if self._closing:
            return defer.fail(GatewayClosed("gateway connection is closed"))
        if self._lost or self.transport is None:
            return defer.fail(GatewayConnectionLost("gateway connection is not open"))
        session_id = self._free_id()
        try:
            packet = make_raw_packet(Command.GATEWAY_PUSH, message, session_id, flags)
            frame = encode_packet(packet)
        except (ValueError, TypeError) as exc:
            return defer.fail(ValueError(f"cannot encode the push: {exc}"))
        limit = self.max_packet_size
        if limit is not None and len(packet.body) > limit:
            return defer.fail(PushTooLarge(len(packet.body), limit))
        deferred = defer.Deferred(lambda d: self._forget(session_id, d))
        timer = self.clock.callLater(timeout, self._timed_out, session_id, timeout)
        self._pending[session_id] = _Pending(deferred, timer)
        self.transport.write(frame)
        return deferred

    def close(self) -> defer.Deferred:
        """
        Close the connection (pending requests fail with L{GatewayClosed});
        fires once it is closed, aborting it if the close takes too long.
        """
        waiter: defer.Deferred = defer.Deferred()
        if self._lost or self.transport is None:
            self._closing = True
            waiter.callback(None)
            return waiter
        self._close_waiters.append(waiter)
        if not self._closing:
            self._closing = True
            self._abort_timer = self.clock.callLater(self._close_timeout, self._abort)
            self.transport.loseConnection()
        return waiter

    def _free_id(self) -> int:
        # With 2**31 ids and requests that end within seconds, a collision
        # needs 2**31 pushes inside one timeout; skip it all the same.
        session_id = self._ids()
        while session_id in self._pending:
            session_id = self._ids()
        return session_id

    def _forget(self, session_id: int, deferred: defer.Deferred) -> None:
        pending = self._pending.get(session_id)
        if pending is not None and pending.deferred is deferred:
            del self._pending[session_id]
            _cancel(pending.timer)

    def _timed_out(self, session_id: int, timeout: float) -> None:
        pending = self._pending.pop(session_id, None)
        if pending is not None:
            pending.timer = None
            pending.deferred.errback(GatewayTimeout(timeout))

    def _abort(self) -> None:
        self._abort_timer = None
        if not self._lost and self.transport is not None:
            self.log.warn("gateway {peer} did not close in time, aborting", peer=self.peer)
            self.transport.abortConnection()

    # --------------------------------------------------------------- events

    def dataReceived(self, data: bytes) -> None:
        try:
            packets = self._decoder.feed(data)
        except FramingError as exc:
            for packet in exc.packets:
                self._received(packet)
            self.log.warn("gateway {peer} sent an unreadable frame, closing: {why}",
                          peer=self.peer, why=str(exc))
            if not self._lost and self.transport is not None:
                self._fail_all(BadGatewayReply(f"unreadable frame from the gateway: {exc}"))
                self.transport.abortConnection()
            return
        for packet in packets:
            self._received(packet)

    def connectionLost(self, reason: Failure = None) -> None:
        self._lost = True
        _cancel(self._abort_timer)
        self._abort_timer = None
        if self._closing:
            error: GatewayError = GatewayClosed("gateway connection closed")
        else:
            why = reason.getErrorMessage() if reason is not None else "connection lost"
            error = GatewayConnectionLost(f"gateway connection lost: {why}")
        self._fail_all(error)
        if self._on_lost is not None:
            on_lost, self._on_lost = self._on_lost, None
            on_lost(self)
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _fail_all(self, error: GatewayError) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            _cancel(entry.timer)
            entry.deferred.errback(Failure(error))

    def _received(self, packet: Packet) -> None:
        if packet.is_heartbeat:
            return
        pending = self._pending.pop(packet.session_id, None)
        if pending is None:
            self.log.debug(
                "dropping reply cmd={cmd} session={sid} from {peer}: no request pending (late?)",
                cmd=packet.cmd, sid=packet.session_id, peer=self.peer,
            )
            return
        _cancel(pending.timer)
        pending.timer = None
        try:
            reply = _decode_reply(packet)
        except GatewayError as exc:
            pending.deferred.errback(Failure(exc))
            return
        pending.deferred.callback(reply)


def _decode_reply(packet: Packet) -> GatewayReply:
    try:
        if packet.cmd == Command.OK:
            ok = OkMessage.decode(packet.body)
            return GatewayReply(True, ok.cmd, ok.code, None, ok.data)
        if packet.cmd == Command.ERROR:
            err = ErrorMessage.decode(packet.body)
            return GatewayReply(False, err.cmd, err.code, err.reason, err.data)
    except BodyError as exc:
        raise BadGatewayReply(f"undecodable reply (cmd {packet.cmd}): {exc}") from None
    raise BadGatewayReply(f"unexpected reply command {packet.cmd}")


# ----------------------------------------------------------------------- pool

Connector = Callable[[str, int, GatewayConnection], defer.Deferred]


def tcp_connector(reactor, timeout: float) -> Connector:
    """
    The default way to open a gateway connection: TCP, without a DNS lookup
    for IP literals.
    """

    def connect(host: str, port: int, protocol: GatewayConnection) -> defer.Deferred:
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
        return connectProtocol(endpoint, protocol)

    return connect


class _Attempt:
    __slots__ = ("connecting", "waiters")

    def __init__(self) -> None:
        self.connecting: defer.Deferred | None = None
        self.waiters: list[defer.Deferred] = []


class GatewayPool:
    """
    One lazily opened L{GatewayConnection} per gateway C{host:port}.

    Requests made while a connection is being opened wait for that same
    connection; a lost connection is forgotten and the next request opens a
    new one.  Connecting is bounded by C{connect_timeout} on C{clock}.

    @param connector: C{(host, port, protocol) -> Deferred} connecting the
        protocol; TCP on C{reactor} by default (tests pass their own).
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        *,
        clock: IReactorTime | None = None,
        connect_timeout: float = 2.0,
        max_packet_size: int | None = DEFAULT_MAX_PACKET_SIZE,
        connector: Connector | None = None,
    ) -> None:
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, not {connect_timeout!r}")
        self.clock = clock if clock is not None else reactor
        self.connect_timeout = connect_timeout
        self.max_packet_size = max_packet_size
        self._connector = connector if connector is not None else tcp_connector(reactor, connect_timeout)
        self._ids = CorrelationIds()
        self._connections: dict[tuple[str, int], GatewayConnection] = {}
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._closed = False

    @property
    def connected(self) -> list[tuple[str, int]]:
        """The (host, port) of every open connection."""
        return [key for key, conn in self._connections.items() if conn.open]

    def connection(self, host: str, port: int) -> defer.Deferred:
        """
        Fire with an open connection to C{host:port}, opening it if needed;
        fail with L{GatewayConnectFailed} or L{GatewayClosed}.
        """
        if self._closed:
            return defer.fail(GatewayClosed("push client is closed"))
        key = (host, port)
        existing = self._connections.get(key)
        if existing is not None and existing.open:
            return defer.succeed(existing)
        attempt = self._attempts.get(key)
        first = attempt is None
        if first:
            attempt = self._attempts[key] = _Attempt()
        waiter: defer.Deferred = defer.Deferred(lambda d: _drop_waiter(attempt, d))
        attempt.waiters.append(waiter)
        if first:
            self._start(key, attempt)
        return waiter

    def request(
        self, host: str, port: int, message: GatewayPushMessage, flags: int, timeout: float
    ) -> defer.Deferred:
        """
        Send C{message} to C{host:port} and fire with its L{GatewayReply}.
        C{timeout} counts from now, connecting included (a connect is also
        bounded by C{connect_timeout}).
        """
        if not timeout > 0:
            return defer.fail(ValueError(f"timeout must be positive, not {timeout!r}"))
        started = self.clock.seconds()

        def connected(conn: GatewayConnection) -> defer.Deferred:
            remaining = timeout - (self.clock.seconds() - started)
            if remaining <= 0:
                raise GatewayTimeout(timeout)
            return conn.request(message, flags, remaining)

        return self.connection(host, port).addCallback(connected)

    def close(self) -> defer.Deferred:
        """
        Close every connection and stop every connect in progress; later
        requests fail with L{GatewayClosed}.  Fires when all are closed.
        """
        self._closed = True
        attempts, self._attempts = self._attempts, {}
        for key, attempt in attempts.items():
            waiters, attempt.waiters = attempt.waiters, []
            for waiter in waiters:
                waiter.errback(GatewayClosed("push client is closed"))
            if attempt.connecting is not None:
                attempt.connecting.cancel()
        connections, self._connections = self._connections, {}
        closing = [conn.close() for conn in connections.values()]
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

    def _start(self, key: tuple[str, int], attempt: _Attempt) -> None:
        host, port = key
        protocol = GatewayConnection(
            self.clock, self._ids, max_packet_size=self.max_packet_size, on_lost=self._forget_connection
        )
        try:
            connecting = self._connector(host, port, protocol)
        except Exception:
            connecting = defer.fail()
        attempt.connecting = connecting
        connecting.addTimeout(self.connect_timeout, self.clock)
        connecting.addCallbacks(self._connected, self._connect_failed,
                                callbackArgs=(key, attempt), errbackArgs=(key, attempt))

    def _connected(self, protocol: GatewayConnection, key, attempt: _Attempt) -> None:
        attempt.connecting = None
        if self._attempts.get(key) is attempt:
            del self._attempts[key]
        if self._closed:
            protocol.close()
            return
        if protocol.open:
            self._connections[key] = protocol
            self.log.debug("gateway {host}:{port} connected", host=key[0], port=key[1])
        waiters, attempt.waiters = attempt.waiters, []
        for waiter in waiters:
            if protocol.open:
                waiter.callback(protocol)
            else:
                waiter.errback(GatewayConnectFailed(key[0], key[1], "connection lost at once"))

    def _connect_failed(self, failure: Failure, key, attempt: _Attempt) -> None:
        attempt.connecting = None
        if self._attempts.get(key) is attempt:
            del self._attempts[key]
        host, port = key
        if failure.check(defer.TimeoutError):
            reason = f"timed out after {self.connect_timeout:g} s"
        elif failure.check(defer.CancelledError):
            reason = "cancelled"
        else:
            reason = failure.getErrorMessage() or failure.type.__name__
        error = GatewayClosed("push client is closed") if self._closed else GatewayConnectFailed(host, port, reason)
        waiters, attempt.waiters = attempt.waiters, []
        for waiter in waiters:
            waiter.errback(Failure(error))

    def _forget_connection(self, protocol: GatewayConnection) -> None:
        for key, conn in list(self._connections.items()):
            if conn is protocol:
                del self._connections[key]
                self.log.debug("gateway {host}:{port} connection lost", host=key[0], port=key[1])


def _drop_waiter(attempt: _Attempt, waiter: defer.Deferred) -> None:
    try:
        attempt.waiters.remove(waiter)
    except ValueError:
        pass

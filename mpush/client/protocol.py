"""
A Twisted MPush client connection that looks, on the wire, exactly like the
Java client mpush-client-java 0.8.1 (spec 7.4, 9.2, 9.3, 10.2, 14.4, 18).

People use it to try a server by hand and the project's end-to-end tests use
it as "a real device", so it copies the Java client's byte-level behaviour
(cipher switch order, plaintext FAST_CONNECT, bind retry with identical bytes,
raw ACKs, the healthCheck rule) while exposing a Deferred API with a timeout
on every request, so nothing a test waits for can hang.

Where the Java client would reconnect (request timeout, undecodable reply,
ERROR for a command other than HANDSHAKE/FAST_CONNECT, silent server), this
client fails the pending Deferreds with a typed error and closes the
connection; reconnecting is the caller's decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Iterator

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mpush.client.config import ClientConfig
from mpush.client.session_file import SessionFile, SessionFileError
from mpush.protocol.body import decode_body, make_packet, make_raw_packet
from mpush.protocol.crypto import AES_KEY_LENGTH, AesCipher, mix_key, random_bytes
from mpush.protocol.errors import ErrorCode, FramingError, ProtocolError
from mpush.protocol.fields import INT32_MAX, INT32_MIN
from mpush.protocol.messages import (
    BindUserMessage,
    ErrorMessage,
    FastConnectMessage,
    FastConnectOkMessage,
    HandshakeMessage,
    HandshakeOkMessage,
    HttpRequestMessage,
    HttpResponseMessage,
    KickUserMessage,
    OkMessage,
    PushMessage,
)
from mpush.protocol.packet import HEARTBEAT_BYTE, Command, Flags, Packet, PacketDecoder, encode_packet
from mpush.protocol.session import (
    ClientSession,
    InvalidSession,
    decode_client_session,
    encode_client_session,
)
from mpush.tls import tls_failure

__all__ = [
    "BadServerReply",
    "BindTimeout",
    "ClientError",
    "ClientState",
    "ConnectFailed",
    "ConnectionClosed",
    "HandshakeFailed",
    "HandshakeTimeout",
    "HeartbeatTimeout",
    "MPushClientProtocol",
    "NotEstablished",
    "PingTimeout",
    "PushTimeout",
    "ReceivedPush",
    "RequestTimeout",
    "ServerError",
    "TlsVerifyFailed",
    "connect_client",
    "java_packet_ids",
]

#: Java's healthCheck gives up at this many consecutive read timeouts.
MAX_HB_TIMEOUT_COUNT = 2
#: Inflated-body bound for received packets (the Java client has none; a
#: compressed bomb must still not exhaust a test machine).
MAX_INFLATED = 16 * 1024 * 1024
#: After close(), how long the transport may take to flush before it is aborted.
CLOSE_GRACE = 5.0
#: Default wait for a pong.
PING_TIMEOUT = 3.0



# --------------------------------------------------------------------- errors


class ClientError(Exception):
    """
    Base of every failure this client reports through a Deferred or C{on_error}.
    """


class ConnectFailed(ClientError):
    """
    The TCP connection could not be made (refused, unreachable, timed out...).
    """

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot connect to {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class TlsVerifyFailed(ConnectFailed):
    """
    TLS was refused because the server's certificate was: not issued by a
    trusted CA, expired, or not for the name asked.  (Other TLS handshake
    failures are plain L{ConnectFailed}.)
    """


class ConnectionClosed(ClientError):
    """
    The connection went away before the awaited answer arrived.
    """

    def __init__(self, reason: Failure | None = None) -> None:
        why = reason.getErrorMessage() if reason is not None else "closed"
        super().__init__(f"connection closed: {why}")
        self.reason = reason


class HandshakeFailed(ClientError):
    """
    The server answered HANDSHAKE (or a later packet) with ERROR cmd 2 other
    than REPEAT_HANDSHAKE: the Java client calls stop() and never retries.
    """

    def __init__(self, error_message: ErrorMessage) -> None:
        super().__init__(
            f"handshake rejected by server: code={error_message.code} reason={error_message.reason!r}"
        )
        self.error_message = error_message


class ServerError(ClientError):
    """
    The server answered a request with ERROR (spec 6.7).
    """

    def __init__(self, error_message: ErrorMessage) -> None:
        super().__init__(
            f"server error for cmd {error_message.cmd}: code={error_message.code} "
            f"reason={error_message.reason!r}"
        )
        self.error_message = error_message


class BadServerReply(ClientError):
    """
    The server sent something the Java client cannot use (undecodable body,
    server key not 16 bytes, heartbeat <= 0, reply in the wrong state).
    """


class NotEstablished(ClientError):
    """
    A request that needs an established session was made without one.
    """


class RequestTimeout(ClientError):
    """
    No answer within the request's timeout (on the injected clock).
    """

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"no answer to {what} within {seconds:g} s")
        self.what = what
        self.seconds = seconds


class HandshakeTimeout(RequestTimeout):
    """
    No HandshakeOk / FastConnectOk (or usable ERROR) within handshake_timeout.
    """


class BindTimeout(RequestTimeout):
    """
    BIND was unanswered twice (the Java client retries once, then reconnects).
    """


class PingTimeout(RequestTimeout):
    """
    No 0xDF pong within the ping timeout.
    """


class PushTimeout(RequestTimeout):
    """
    wait_for_push() saw no push in time.
    """


class HeartbeatTimeout(ClientError):
    """
    The health check found the server silent for two checks in a row.
    """


# ---------------------------------------------------------------- small types


class ClientState(enum.Enum):
    """
    The life of one client connection.
    """

    CONNECTING = "connecting"          # no transport yet
    FAST_CONNECTING = "fast-connecting"  # FAST_CONNECT sent, stored cipher set
    HANDSHAKING = "handshaking"        # HANDSHAKE sent, AES(clientKey) set
    ESTABLISHED = "established"        # AES(sessionKey), heartbeat known
    CLOSING = "closing"                # loseConnection() called
    CLOSED = "closed"                  # connectionLost() ran


class _Kind(enum.Enum):
    HANDSHAKE = Command.HANDSHAKE
    FAST_CONNECT = Command.FAST_CONNECT
    BIND = Command.BIND
    UNBIND = Command.UNBIND
    HTTP_PROXY = Command.HTTP_PROXY


@dataclass(frozen=True, slots=True)
class ReceivedPush:
    """
    One PUSH as delivered: C{flags} unsigned, C{session_id} the packet's id
    (what an ACK must echo).
    """

    content: bytes
    session_id: int
    flags: int


class _Pending:
    """
    One request in the pending table (spec 18.5), keyed by packet session id.
    """

    __slots__ = ("kind", "deferred", "timer", "frame", "retries")

    def __init__(self, kind: _Kind, deferred: defer.Deferred | None, frame: bytes, retries: int):
        self.kind = kind
        self.deferred = deferred
        self.timer = None
        self.frame = frame
        self.retries = retries


class _Waiter:
    """
    A Deferred handed to a caller plus its timeout call.
    """

    __slots__ = ("deferred", "timer", "started")

    def __init__(self, deferred: defer.Deferred, started: float) -> None:
        self.deferred = deferred
        self.timer = None
        self.started = started


def java_packet_ids(start: int = 1) -> Iterator[int]:
    """
    Packet session ids as the Java client makes them: 1, 2, 3... wrapping
    like a Java int.
    """
    value = start
    while True:
        yield value
        value = value + 1 if value < INT32_MAX else INT32_MIN


def _cancel(call) -> None:
    if call is not None and call.active():
        call.cancel()


# ------------------------------------------------------------------ protocol


@implementer(IHandshakeListener)
class MPushClientProtocol(Protocol):
    """
    One client connection.  On connect it fast-connects (or handshakes), like
    the Java client's C{onConnected}.  Over TLS the first packet waits in the
    TLS layer until the TLS handshake is done; C{tls_established} says it is.

    Callback attributes (all optional, set before connecting):
      - C{on_established(protocol)}: HandshakeOk / FastConnectOk processed;
      - C{on_push(content, packet_session_id, flags)};
      - C{on_kick(device_id, user_id)};
      - C{on_pong()};
      - C{on_error(exception)}: a failure that closes the connection, or an
        unsolicited ERROR;
      - C{on_close(reason)}.
    """

    _log = Logger()

    def __init__(
        self,
        config: ClientConfig,
        clock: IReactorTime | None = None,
        packet_ids: Iterator[int] | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.config = config
        self.clock = clock
        self.state = ClientState.CONNECTING
        self.heartbeat = 0
        self.session_id: str | None = None
        self.resumed = False
        self.handshake_ok_count = 0
        self.fast_connect_errors: list[ErrorMessage] = []
        self.pushes: list[bytes] = []
        self.push_records: list[ReceivedPush] = []
        self.kicks: list[KickUserMessage] = []
        self.pong_count = 0
        self.bind_result: OkMessage | None = None
        self.tls_established = False
        self.on_established: Callable | None = None
        self.on_push: Callable | None = None
        self.on_kick: Callable | None = None
        self.on_pong: Callable | None = None
        self.on_error: Callable | None = None
        self.on_close: Callable | None = None

        self._rsa = config.rsa_public_key()
        self._session_file = SessionFile(config.session_file) if config.session_file else None
        self._packet_ids = packet_ids if packet_ids is not None else java_packet_ids()
        self._decoder = PacketDecoder(max_packet_size=None)
        self._cipher: AesCipher | None = None
        self._pending: dict[int, _Pending] = {}
        self._session_request: int | None = None
        self._pings: list[_Waiter] = []
        self._push_waiters: list[_Waiter] = []
        self._push_cursor = 0
        self._ready_waiters: list[defer.Deferred] = []
        self._ready: object = None  # None (pending), self, or a Failure
        self._close_waiters: list[defer.Deferred] = []
        self._abort_call = None
        self._health_loop: LoopingCall | None = None
        self._hb_timeouts = 0
        self._last_read = 0.0
        self._last_write = 0.0

    # -- Twisted entry points -------------------------------------------------

    def connectionMade(self) -> None:
        now = self.clock.seconds()
        self._last_read = now
        self._last_write = now
        self.fast_connect()

    def dataReceived(self, data: bytes) -> None:
        if self.state in (ClientState.CLOSING, ClientState.CLOSED):
            return
        self._last_read = self.clock.seconds()
        framing_error = None
        try:
            packets = self._decoder.feed(data)
        except FramingError as exc:
            packets = list(getattr(exc, "packets", ()))
            framing_error = exc
        for packet in packets:
            if self.state in (ClientState.CLOSING, ClientState.CLOSED):
                return
            try:
                self._dispatch(packet)
            except ProtocolError as exc:
                self._fail(BadServerReply(f"bad {_cmd_name(packet.cmd)} packet from server: {exc}"))
                return
        if framing_error is not None and self.state not in (ClientState.CLOSING, ClientState.CLOSED):
            self._fail(BadServerReply(f"bad framing from server: {framing_error}"))

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake succeeded (the server's certificate was verified).
        """
        self.tls_established = True

    def connectionLost(self, reason: Failure = None) -> None:
        self.state = ClientState.CLOSED
        _cancel(self._abort_call)
        self._abort_call = None
        self.stop_health_check()
        if self.config.tls and not self.tls_established:
            closed = _tls_connect_failed(self.config, reason)
            self._log.warn("mpush client failure: {error}", error=closed)
        else:
            closed = ConnectionClosed(reason)
        self._reject_ready(Failure(closed))
        self._abort_requests(closed)
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)
        self._call(self.on_close, reason)

    # -- session setup (spec 9.2, 9.3) ------------------------------------------

    def fast_connect(self) -> None:
        """
        Resume the stored session, or handshake when there is none, it does
        not decode, or it has expired (then the file is cleared first).
        """
        self._require_writable("fast connect")
        stored = self._load_session()
        if stored is None:
            self.handshake()
            return
        message = FastConnectMessage(
            stored.session_id,
            self.config.device_id,
            self.config.min_heartbeat,
            self.config.max_heartbeat,
        )
        sid = next(self._packet_ids)
        packet = make_packet(
            Command.FAST_CONNECT, message, session_id=sid, cipher=None,
            compress_threshold=self.config.compress_limit,
        )
        self.state = ClientState.FAST_CONNECTING
        self.session_id = stored.session_id
        self.resumed = False
        self._send_request(sid, _Kind.FAST_CONNECT, None, encode_packet(packet), 0,
                           self.config.handshake_timeout)
        # Java: send plaintext, THEN switch to the stored session cipher.
        self._cipher = AesCipher(stored.session_key, stored.iv)

    def handshake(self) -> None:
        """
        Full handshake: HANDSHAKE under the server's RSA key, then switch to
        AES(clientKey, iv) to read the HandshakeOk.
        """
        self._require_writable("handshake")
        self._drop_session_request()
        self._cipher = None
        client_key = random_bytes(AES_KEY_LENGTH)
        iv = random_bytes(AES_KEY_LENGTH)
        config = self.config
        message = HandshakeMessage(
            device_id=config.device_id,
            os_name=config.os_name,
            os_version=config.os_version,
            client_version=config.client_version,
            iv=iv,
            client_key=client_key,
            min_heartbeat=config.min_heartbeat,
            max_heartbeat=config.max_heartbeat,
            timestamp=0,
        )
        sid = next(self._packet_ids)
        packet = make_packet(
            Command.HANDSHAKE, message, session_id=sid, cipher=self._rsa,
            compress_threshold=config.compress_limit,
        )
        self.state = ClientState.HANDSHAKING
        self.resumed = False
        self._send_request(sid, _Kind.HANDSHAKE, None, encode_packet(packet), 0,
                           config.handshake_timeout)
        self._cipher = AesCipher(client_key, iv)

    def when_established(self) -> defer.Deferred:
        """
        A Deferred firing with this protocol once the session is established
        (and, when C{config.user_id} is set, the automatic bind answered), or
        failing with the reason it never will be.
        """
        if isinstance(self._ready, Failure):
            return defer.fail(self._ready)
        if self._ready is not None:
            return defer.succeed(self)
        d = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    # -- requests -------------------------------------------------------------

    def bind(self, user_id: str | None, tags: str | None = None) -> defer.Deferred:
        """
        BIND the user: fires with the OkMessage, fails with C{ServerError} on
        ERROR or C{BindTimeout} after one retry of the identical bytes.
        """
        return self._user_request(_Kind.BIND, user_id, tags, retries=1)

    def unbind(self, user_id: str | None) -> defer.Deferred:
        """
        UNBIND the user: fires with the OkMessage (cmd 6), fails with
        C{ServerError} or C{RequestTimeout} (the connection stays open).
        """
        return self._user_request(_Kind.UNBIND, user_id, None, retries=0)

    def http_request(self, method: int, uri: str, headers: dict | None = None,
                     body: bytes | None = None, timeout: float = PING_TIMEOUT) -> defer.Deferred:
        """
        One HTTP request through the server's proxy (spec 13), as the Java
        client's C{HttpClient}: fires with the L{HttpResponseMessage}, fails
        with C{ServerError} (the server refused it) or C{RequestTimeout};
        the connection stays open either way.
        """
        if self.state is not ClientState.ESTABLISHED:
            return defer.fail(NotEstablished(f"cannot send an http request: connection is {self.state.value}"))
        sid = next(self._packet_ids)
        packet = make_packet(
            Command.HTTP_PROXY, HttpRequestMessage(method, uri, headers, body), session_id=sid,
            cipher=self._cipher, compress_threshold=self.config.compress_limit,
        )
        d = defer.Deferred()
        self._send_request(sid, _Kind.HTTP_PROXY, d, encode_packet(packet), 0, timeout)
        return d

    def ping(self, timeout: float = PING_TIMEOUT) -> defer.Deferred:
        """
        Send 0xDF; fires with the round-trip time (seconds) when a pong comes.
        """
        if not self._writable():
            return defer.fail(NotEstablished(f"cannot ping: connection is {self.state.value}"))
        waiter = _Waiter(defer.Deferred(), self.clock.seconds())
        waiter.timer = self.clock.callLater(timeout, self._ping_timed_out, waiter, timeout)
        self._pings.append(waiter)
        self._write(HEARTBEAT_BYTE)
        return waiter.deferred

    def ack(self, session_id: int) -> None:
        """
        Acknowledge a BIZ_ACK push: ACK raw, empty body, the push's session id.
        @raise NotEstablished: the connection is closing or closed.
        """
        self._write(encode_packet(make_raw_packet(Command.ACK, None, session_id=session_id)))

    def send_raw_bytes(self, data: bytes) -> None:
        """
        Write bytes as they are (tests that feed the server garbage).
        @raise NotEstablished: the connection is closing or closed.
        """
        self._write(bytes(data))

    def wait_for_push(self, timeout: float | None = None) -> defer.Deferred:
        """
        The next push not yet returned by this method, as a C{ReceivedPush}
        (immediately when one is already queued).
        """
        if self._push_cursor < len(self.push_records):
            record = self.push_records[self._push_cursor]
            self._push_cursor += 1
            return defer.succeed(record)
        if self.state is ClientState.CLOSED:
            return defer.fail(ConnectionClosed())
        waiter = _Waiter(defer.Deferred(), self.clock.seconds())
        if timeout is not None:
            waiter.timer = self.clock.callLater(timeout, self._push_timed_out, waiter, timeout)
        self._push_waiters.append(waiter)
        return waiter.deferred

    def close(self) -> defer.Deferred:
        """
        Close the connection; fires (with None) once connectionLost has run.
        """
        if self.state is ClientState.CLOSED:
            return defer.succeed(None)
        d = defer.Deferred()
        self._close_waiters.append(d)
        self._close_transport()
        return d

    # -- health check (spec 10.2) ----------------------------------------------

    def start_health_check(self, interval: float | None = None) -> None:
        """
        Run C{health_check} every C{interval} seconds on the clock.  The
        default (heartbeat / 3, at most 10 s as in the Java test program)
        keeps consecutive checks from both seeing a stale read when the
        heartbeat is short.
        """
        self.stop_health_check()
        if interval is None:
            interval = _default_health_interval(self.heartbeat)
        loop = LoopingCall(self.health_check)
        loop.clock = self.clock
        self._health_loop = loop
        loop.start(interval, now=False).addErrback(self._health_loop_failed)

    def stop_health_check(self) -> None:
        loop, self._health_loop = self._health_loop, None
        if loop is not None and loop.running:
            loop.stop()

    def health_check(self) -> bool:
        """
        One Java C{healthCheck()}: count a read timeout when nothing was read
        for heartbeat + 1 s; close at the second in a row; otherwise ping
        when nothing was written for heartbeat - 1 s.  Returns False when it
        closed the connection.
        """
        if self.state is not ClientState.ESTABLISHED or self.heartbeat <= 0:
            return True
        now = self.clock.seconds()
        heartbeat = self.heartbeat / 1000.0
        if now - self._last_read > heartbeat + 1.0:
            self._hb_timeouts += 1
            self._log.warn("heartbeat timeout times={n}", n=self._hb_timeouts)
        else:
            self._hb_timeouts = 0
        if self._hb_timeouts >= MAX_HB_TIMEOUT_COUNT:
            self._hb_timeouts = 0
            self._fail(HeartbeatTimeout(
                f"nothing read from the server for {now - self._last_read:g} s "
                f"(heartbeat {self.heartbeat} ms)"
            ))
            return False
        if now - self._last_write > heartbeat - 1.0:
            self._write(HEARTBEAT_BYTE)
        return True

    # -- receive side ---------------------------------------------------------

    def _dispatch(self, packet: Packet) -> None:
        cmd = packet.cmd
        if cmd == Command.HEARTBEAT:
            self._on_pong()
        elif cmd == Command.HANDSHAKE:
            self._on_handshake_ok(packet)
        elif cmd == Command.FAST_CONNECT:
            self._on_fast_connect_ok(packet)
        elif cmd == Command.ERROR:
            self._on_error_message(packet)
        elif cmd == Command.OK:
            self._on_ok(packet)
        elif cmd == Command.PUSH:
            self._on_push(packet)
        elif cmd == Command.KICK:
            self._on_kick(packet)
        elif cmd == Command.ACK:
            self._log.debug("<<< ack session={sid}", sid=packet.session_id)
        elif cmd == Command.HTTP_PROXY:
            self._on_http_response(packet)
        else:
            # Java: MessageDispatcher logs "unsupported" and carries on.
            self._log.info("<<< unsupported cmd {cmd} ignored", cmd=cmd)

    def _decode(self, packet: Packet) -> bytes:
        return decode_body(packet, cipher=self._cipher, max_inflated=MAX_INFLATED)

    def _on_pong(self) -> None:
        self.pong_count += 1
        if self._pings:
            waiter = self._pings.pop(0)
            _cancel(waiter.timer)
            waiter.deferred.callback(self.clock.seconds() - waiter.started)
        self._call(self.on_pong)

    def _on_handshake_ok(self, packet: Packet) -> None:
        if self.state is not ClientState.HANDSHAKING:
            raise _unexpected(packet, self.state)
        message = HandshakeOkMessage.decode(self._decode(packet))
        self._drop_session_request()
        server_key = message.server_key or b""
        if len(server_key) != AES_KEY_LENGTH:
            self._fail(BadServerReply(
                f"HandshakeOk server key has {len(server_key)} bytes, expected {AES_KEY_LENGTH}"
            ))
            return
        if message.heartbeat <= 0:
            self._fail(BadServerReply(f"HandshakeOk heartbeat {message.heartbeat} is not positive"))
            return
        client_cipher = self._cipher
        self._cipher = AesCipher(mix_key(client_cipher.key, server_key), client_cipher.iv)
        self.heartbeat = message.heartbeat
        self.session_id = message.session_id
        self.handshake_ok_count += 1
        self._log.info(
            "<<< handshake ok heartbeat={hb} session={session}",
            hb=message.heartbeat, session=message.session_id,
        )
        if message.session_id is not None:
            self._save_session(ClientSession(
                message.session_id, message.expire_time, self._cipher.key, self._cipher.iv,
            ))
        self._established()

    def _on_fast_connect_ok(self, packet: Packet) -> None:
        if self.state is not ClientState.FAST_CONNECTING:
            raise _unexpected(packet, self.state)
        message = FastConnectOkMessage.decode(self._decode(packet))
        self._drop_session_request()
        if message.heartbeat <= 0:
            self._fail(BadServerReply(f"FastConnectOk heartbeat {message.heartbeat} is not positive"))
            return
        self.heartbeat = message.heartbeat
        self.resumed = True
        self._log.info("<<< fast connect ok heartbeat={hb}", hb=message.heartbeat)
        self._established()

    def _on_error_message(self, packet: Packet) -> None:
        error = ErrorMessage.decode(self._decode(packet))
        self._log.info(
            "<<< error cmd={cmd} code={code} reason={reason}",
            cmd=error.cmd, code=error.code, reason=error.reason,
        )
        if error.cmd == Command.FAST_CONNECT:
            # Spec 14.4: forget the session, handshake on this same connection
            # (the server's cipher is still RSA, nothing was swapped).
            self.fast_connect_errors.append(error)
            self._clear_session()
            self.handshake()
            return
        pending = self._pending.get(packet.session_id)
        if error.cmd == Command.HTTP_PROXY and pending is not None and pending.kind is _Kind.HTTP_PROXY:
            # The proxy refused this request: the connection is fine.
            del self._pending[packet.session_id]
            _cancel(pending.timer)
            pending.deferred.errback(ServerError(error))
            return
        if error.cmd == Command.HANDSHAKE:
            if error.code == ErrorCode.REPEAT_HANDSHAKE or error.reason == ErrorCode.REPEAT_HANDSHAKE.reason:
                return  # ignored by Java; a pending handshake keeps its timeout
            self._fail(HandshakeFailed(error))
            return
        # Java reconnects; the request this answers (if any) fails with the
        # ServerError through _fail, after on_error has been told.
        self._fail(ServerError(error))

    def _on_ok(self, packet: Packet) -> None:
        ok = OkMessage.decode(self._decode(packet))
        pending = self._pending.get(packet.session_id)
        if pending is None or pending.kind not in (_Kind.BIND, _Kind.UNBIND):
            self._log.info("<<< ok cmd={cmd} data={data} (unsolicited)", cmd=ok.cmd, data=ok.data)
            return
        del self._pending[packet.session_id]
        _cancel(pending.timer)
        if ok.cmd != pending.kind.value:
            pending.deferred.errback(BadServerReply(
                f"{pending.kind.name} answered by OK for cmd {ok.cmd}"
            ))
            return
        pending.deferred.callback(ok)

    def _on_http_response(self, packet: Packet) -> None:
        pending = self._pending.get(packet.session_id)
        if pending is None or pending.kind is not _Kind.HTTP_PROXY:
            # Java: nobody waits for it, ignored.
            self._log.info("<<< http response session={sid} (unsolicited)", sid=packet.session_id)
            return
        del self._pending[packet.session_id]
        _cancel(pending.timer)
        try:
            response = HttpResponseMessage.decode(self._decode(packet))
        except Exception as error:
            pending.deferred.errback(BadServerReply(f"unreadable HTTP_PROXY response: {error}"))
            return
        pending.deferred.callback(response)

    def _on_push(self, packet: Packet) -> None:
        content = PushMessage.decode(self._decode(packet)).content
        flags = packet.flags & 0xFF
        sid = packet.session_id
        record = ReceivedPush(content, sid, flags)
        if flags & Flags.AUTO_ACK:
            # Ack before telling anyone: a listener that closes must not
            # swallow the ack.
            self.ack(sid)
        self.pushes.append(content)
        self.push_records.append(record)
        if self._push_waiters:
            waiter = self._push_waiters.pop(0)
            _cancel(waiter.timer)
            self._push_cursor += 1
            waiter.deferred.callback(record)
        self._call(self.on_push, content, sid, flags)

    def _on_kick(self, packet: Packet) -> None:
        kick = KickUserMessage.decode(self._decode(packet))
        self.kicks.append(kick)
        self._log.info("<<< kicked device={d} user={u}", d=kick.device_id, u=kick.user_id)
        self._call(self.on_kick, kick.device_id, kick.user_id)

    # -- establishment --------------------------------------------------------

    def _established(self) -> None:
        self.state = ClientState.ESTABLISHED
        self._hb_timeouts = 0
        self._call(self.on_established, self)
        if self.config.user_id:
            # Java's onHandshakeOk binds the configured user.
            d = self.bind(self.config.user_id, self.config.tags)
            d.addCallbacks(self._auto_bound, self._auto_bind_failed)
        else:
            self._resolve_ready()

    def _auto_bound(self, ok: OkMessage) -> None:
        self.bind_result = ok
        self._resolve_ready()

    def _auto_bind_failed(self, failure: Failure) -> None:
        self._reject_ready(failure)

    def _resolve_ready(self) -> None:
        if self._ready is not None:
            return
        self._ready = self
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(self)

    def _reject_ready(self, failure: Failure) -> None:
        if self._ready is not None:
            return
        self._ready = failure
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(failure)

    # -- pending requests -----------------------------------------------------

    def _user_request(self, kind: _Kind, user_id, tags, retries: int) -> defer.Deferred:
        if self.state is not ClientState.ESTABLISHED:
            return defer.fail(NotEstablished(
                f"cannot {kind.name.lower()}: connection is {self.state.value}"
            ))
        sid = next(self._packet_ids)
        packet = make_packet(
            kind.value, BindUserMessage(user_id, None, tags), session_id=sid,
            cipher=self._cipher, compress_threshold=self.config.compress_limit,
        )
        d = defer.Deferred()
        self._send_request(sid, kind, d, encode_packet(packet), retries, self.config.bind_timeout)
        return d

    def _send_request(self, sid, kind, deferred, frame, retries, timeout) -> None:
        stale = self._pending.pop(sid, None)
        if stale is not None:
            _cancel(stale.timer)
        pending = _Pending(kind, deferred, frame, retries)
        pending.timer = self.clock.callLater(timeout, self._request_timed_out, sid, pending, timeout)
        self._pending[sid] = pending
        if kind in (_Kind.HANDSHAKE, _Kind.FAST_CONNECT):
            self._session_request = sid
        self._write(frame)

    def _request_timed_out(self, sid: int, pending: _Pending, timeout: float) -> None:
        if self._pending.get(sid) is not pending:
            return
        if pending.kind is _Kind.BIND and pending.retries > 0 and self.state is ClientState.ESTABLISHED:
            # Java's AckRequestMgr resends the very same bytes once.
            pending.retries -= 1
            pending.timer = self.clock.callLater(timeout, self._request_timed_out, sid, pending, timeout)
            self._log.info(">>> bind retry session={sid}", sid=sid)
            self._write(pending.frame)
            return
        if pending.kind in (_Kind.HANDSHAKE, _Kind.FAST_CONNECT):
            if self.config.tls and not self.tls_established:
                self._fail(ConnectFailed(self.config.host, self.config.port,
                                         f"no TLS handshake within {timeout:g} s (is the port TLS?)"))
                return
            self._fail(HandshakeTimeout(pending.kind.name, timeout))
        elif pending.kind is _Kind.BIND:
            # _fail fails this request too (after on_error), then closes.
            self._fail(BindTimeout("BIND", timeout * 2))
        else:
            # Java's unbind waits for nothing; the connection stays.
            del self._pending[sid]
            pending.deferred.errback(RequestTimeout(pending.kind.name, timeout))

    def _drop_session_request(self) -> None:
        sid, self._session_request = self._session_request, None
        if sid is not None:
            pending = self._pending.get(sid)
            if pending is not None and pending.kind in (_Kind.HANDSHAKE, _Kind.FAST_CONNECT):
                del self._pending[sid]
                _cancel(pending.timer)

    def _ping_timed_out(self, waiter: _Waiter, timeout: float) -> None:
        if waiter in self._pings:
            self._pings.remove(waiter)
            waiter.deferred.errback(PingTimeout("ping", timeout))

    def _push_timed_out(self, waiter: _Waiter, timeout: float) -> None:
        if waiter in self._push_waiters:
            self._push_waiters.remove(waiter)
            waiter.deferred.errback(PushTimeout("wait_for_push", timeout))

    def _abort_requests(self, error: Exception) -> None:
        """
        Fail everything still waiting (the connection is going away).
        """
        self._session_request = None
        pending, self._pending = self._pending, {}
        for request in pending.values():
            _cancel(request.timer)
            if request.deferred is not None:
                request.deferred.errback(error)
        for waiters in (self._pings, self._push_waiters):
            taken = list(waiters)
            waiters.clear()
            for waiter in taken:
                _cancel(waiter.timer)
                waiter.deferred.errback(error)

    # -- failure and closing --------------------------------------------------

    def _fail(self, error: ClientError) -> None:
        """
        Where Java reconnects or stops: report, fail what waits, close.
        """
        self._log.warn("mpush client failure: {error}", error=error)
        self._call(self.on_error, error)
        self._reject_ready(Failure(error))
        self._abort_requests(error)
        self._close_transport()

    def _close_transport(self) -> None:
        if self.state in (ClientState.CLOSING, ClientState.CLOSED):
            return
        self.state = ClientState.CLOSING
        self.stop_health_check()
        if self.transport is None:
            return
        if self.config.tls and not self.tls_established:
            # TLS would finish its handshake before closing (with a silent
            # server: never); nothing of ours was delivered yet anyway.
            self.transport.abortConnection()
            return
        self.transport.loseConnection()
        self._abort_call = self.clock.callLater(CLOSE_GRACE, self._abort_transport)

    def _abort_transport(self) -> None:
        self._abort_call = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None and self.state is ClientState.CLOSING:
            abort()

    def _health_loop_failed(self, failure: Failure) -> None:
        self._log.failure("mpush client health check crashed", failure)

    # -- I/O helpers ----------------------------------------------------------

    def _writable(self) -> bool:
        return self.transport is not None and self.state not in (ClientState.CLOSING, ClientState.CLOSED)

    def _require_writable(self, what: str) -> None:
        if not self._writable():
            raise NotEstablished(f"cannot {what}: connection is {self.state.value}")

    def _write(self, data: bytes) -> None:
        self._require_writable("write")
        self.transport.write(data)
        self._last_write = self.clock.seconds()

    def _call(self, callback, *args) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self._log.failure("mpush client callback {cb!r} raised", cb=callback)

    # -- session file ---------------------------------------------------------

    def _load_session(self) -> ClientSession | None:
        if self._session_file is None:
            return None
        text = self._session_file.read()
        if text is None or not text.strip():
            return None
        try:
            stored = decode_client_session(text.strip())
        except InvalidSession as exc:
            self._log.info("stored session unusable ({why}); handshaking", why=exc)
            self._clear_session()
            return None
        now_ms = int(self.clock.seconds() * 1000)
        if stored.expire_time < now_ms:
            self._log.info("stored session expired; handshaking")
            self._clear_session()
            return None
        return stored

    def _save_session(self, session: ClientSession) -> None:
        if self._session_file is None:
            return
        try:
            self._session_file.write(encode_client_session(session))
        except (SessionFileError, InvalidSession) as exc:
            # Java's FileSessionStorage logs and carries on: only the next
            # fast connect is lost (also for a session id the format cannot
            # hold, such as one with a comma).
            self._log.warn("session not saved: {why}", why=exc)

    def _clear_session(self) -> None:
        if self._session_file is None:
            return
        try:
            self._session_file.clear()
        except SessionFileError as exc:
            self._log.warn("{why}", why=exc)


def _cmd_name(cmd: int) -> str:
    try:
        return Command(cmd).name
    except ValueError:
        return f"cmd {cmd}"


def _unexpected(packet: Packet, state: ClientState) -> ProtocolError:
    return ProtocolError(f"unexpected {_cmd_name(packet.cmd)} reply while {state.value}")


def _tls_connect_failed(config: ClientConfig, reason: Failure | None) -> ConnectFailed:
    """
    The connection ended before its TLS handshake completed: say why.
    """
    failure = tls_failure(reason) if reason is not None else None
    if failure is not None and failure.verification:
        return TlsVerifyFailed(config.host, config.port, failure.reason)
    if failure is not None:
        return ConnectFailed(config.host, config.port, failure.reason)
    why = reason.getErrorMessage() if reason is not None else "closed"
    return ConnectFailed(config.host, config.port, f"connection lost during the TLS handshake "
                                                   f"(is the port TLS?): {why}")


def _default_health_interval(heartbeat_ms: int) -> float:
    if heartbeat_ms <= 0:
        return 1.0
    return max(0.1, min(10.0, heartbeat_ms / 3000.0))


# ------------------------------------------------------------------- connect


def connect_client(
    config: ClientConfig,
    reactor=None,
    *,
    packet_ids: Iterator[int] | None = None,
    prepare: Callable[[MPushClientProtocol], None] | None = None,
) -> defer.Deferred:
    """
    Connect over TCP (over TLS with C{config.tls}) and fire with the
    L{MPushClientProtocol} once the session is established (and the
    configured user bound).  Every step is bounded: C{connect_timeout},
    C{handshake_timeout} (which includes the TLS handshake), C{bind_timeout}.
    A refused server certificate fails with L{TlsVerifyFailed}.

    C{prepare(protocol)} runs before the connection is made, to set callbacks
    that must see the first events.
    """
    if reactor is None:
        from twisted.internet import reactor
    protocol = MPushClientProtocol(config, clock=reactor, packet_ids=packet_ids)
    if prepare is not None:
        prepare(protocol)
    host, port = config.host, config.port
    if isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=config.connect_timeout)
    elif isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=config.connect_timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=config.connect_timeout)
    tls_options = config.tls_options()
    if tls_options is not None:
        endpoint = wrapClientTLS(tls_options, endpoint)

    def connect_failed(failure: Failure):
        raise ConnectFailed(host, port, failure.getErrorMessage()) from failure.value

    d = connectProtocol(endpoint, protocol)
    d.addErrback(connect_failed)
    d.addCallback(lambda proto: proto.when_established())
    return d

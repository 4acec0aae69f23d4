"""
The connection server's Twisted edge: bytes in, packets to handlers, packets out.

L{ConnectionProtocol} is a thin adapter around the sans-I/O core.  It owns the
per-connection decoder, the queue that keeps one connection's packets strictly
in order while a handler waits (on Redis, say), the idle timer, and the
cipher-aware writers the handlers call.

It also enforces what one client may cost (C{[limits]}, counted per node in
L{mpush.server.device.limits.NodeLimits}): the factory refuses connections over the
node and per-IP limits; a connection that has not handshaken in time, that
queues too many packets or bytes behind a busy handler, or that stops
reading for too long is aborted; and RSA work before a handshake draws on
the node's handshake token bucket.  Each refusal is counted and logged by
the node's limits, never more than one line a second per reason.

Its life (new, handshaken, bound, closing, closed) is its
L{ConnectionStateMachine}'s; it reads each packet's body (L{read}) for the
dispatcher, the binary wire's way, so handlers see messages.
"""

from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mpush.config import LimitsConfig
from mpush.protocol.body import decode_body, encode_body, make_packet, make_raw_packet
from mpush.protocol.crypto import RsaPrivateKey
from mpush.protocol.errors import FramingError
from mpush.protocol.heartbeat import IdleCheck
from mpush.protocol.messages import (
    BindUserMessage,
    ErrorMessage,
    FastConnectMessage,
    HandshakeMessage,
    HttpRequestMessage,
)
from mpush.protocol.packet import (
    HEADER_LENGTH,
    HEARTBEAT,
    HEARTBEAT_BYTE,
    Command,
    Packet,
    PacketDecoder,
    encode_frame,
    encode_packet,
)
from mpush.server.device import limits
from mpush.server.device.adapter import DeviceAdapter
from mpush.server.device.context import SessionContext
from mpush.server.device.deadlines import IDeadlineOwner
from mpush.server.device.errors import ConnectionClosed
from mpush.server.device.in_order import InOrderQueue
from mpush.server.device.interfaces import IDeviceConnection
from mpush.server.device.state import ConnectionState, ConnectionStateMachine
from mpush.server.device.write_now import no_delay, unchecked_twisted_warning, write_now

#: The default of C{[limits] max-pending-packets}: packets one connection may
#: have waiting behind a handler that is still busy (on Redis, say).  The
#: bound in force is the node's C{config.limits.max_pending_packets}.
MAX_PENDING_PACKETS = LimitsConfig().max_pending_packets

_PUSH = int(Command.PUSH)
_HANDSHAKE = int(Command.HANDSHAKE)


def _as_is(body: bytes) -> bytes:
    return body


def _http_request(body: bytes) -> HttpRequestMessage:
    # An empty body is a message with every field at its default (spec 4.3).
    return HttpRequestMessage.decode(body) if body else HttpRequestMessage(0, None, None, None)


#: How each command's body reads, once decrypted and inflated; a command
#: not here has no body to read (HEARTBEAT, ACK).
_BODIES: dict[int, Callable[[bytes], Any]] = {
    _HANDSHAKE: HandshakeMessage.decode,
    int(Command.FAST_CONNECT): FastConnectMessage.decode,
    int(Command.BIND): BindUserMessage.decode,
    int(Command.UNBIND): BindUserMessage.decode,
    _PUSH: _as_is,
    int(Command.HTTP_PROXY): _http_request,
}


def _wire_size(packet: Packet) -> int:
    """
    The bytes C{packet} took on the wire: 1 for the heartbeat byte, the
    header and body for a frame.
    """
    return 1 if packet is HEARTBEAT else HEADER_LENGTH + len(packet.body)


def _gone(failure: Failure) -> None:
    failure.trap(ConnectionClosed)


class _MeteredRsaKey:
    """
    The node's RSA key as a connection's cipher before any handshake: each
    decrypt first draws on the node's handshake token bucket.  A refused
    decrypt closes the connection quietly (no ERROR, as for a refused
    HANDSHAKE) and raises L{ConnectionClosed}, so nobody answers.

    MPush decrypts any CRYPTO-flagged packet of a new connection with the
    private key (spec 7.4); without this a flood of, say, encrypted
    FAST_CONNECTs would be RSA work the handshake limit never sees.
    """

    __slots__ = ("_connection", "_key")

    def __init__(self, connection: "ConnectionProtocol", key: RsaPrivateKey) -> None:
        self._connection = connection
        self._key = key

    @property
    def key_size_bytes(self) -> int:
        return self._key.key_size_bytes

    def decrypt(self, data: bytes) -> bytes:
        if not self._connection.allow_rsa(len(data)):
            raise ConnectionClosed(self._connection.peer)
        return self._key.decrypt(data)

    def encrypt(self, data: bytes) -> bytes:
        return self._key.encrypt(data)


@implementer(IDeviceConnection, IPushProducer, IDeadlineOwner)
class ConnectionProtocol(DeviceAdapter, Protocol):
    """
    One client connection of the connection server.

    It registers itself as the transport's producer only to learn when the
    send buffer passes the high-water mark (C{pauseProducing}) and drains
    (C{resumeProducing}): a connection that is not C{writable} gets no more
    pushes, as in MPush, instead of buffering without bound.  While it is not
    writable it also stops reading, so a client that sends without reading
    cannot make the replies (pongs, OKs) pile up either; if it stays so for
    L{limits.SLOW_READER_HEARTBEATS} heartbeats it is aborted.

    @ivar context: the L{SessionContext}; replaced whole by fast connect.
    @ivar state_machine: its L{ConnectionStateMachine}.
    @ivar slot: the L{limits.ConnectionSlot} the factory admitted it with,
        released when it closes, or C{None}.
    """

    log = Logger()

    # A node holds one per device: slots (Twisted's own attributes
    # included) keep the instance without a dict.
    __slots__ = (
        "transport",
        "connected",
        "factory",
        "node",
        "dispatcher",
        "slot",
        "decoder",
        "context",
        "state_machine",
        "conn_id",
        "last_read_ms",
        "writable",
        "wake_at",
        "_idle",
        "_idle_due",
        "_handshake_due",
        "_stalled_due",
        "_pending",
    )

    #: Bodies are encrypted, keys agreed by the handshake.
    encrypted = True

    def __init__(self, node: Any, dispatcher: Any, slot: limits.ConnectionSlot | None = None) -> None:
        # Slots hide Protocol's class defaults: give them their values.
        self.transport = None
        self.connected = 0
        self.factory = None
        self.node = node
        self.dispatcher = dispatcher
        self.slot = slot
        core = node.config.core
        self.decoder = PacketDecoder(core.max_packet_size)
        self.context = SessionContext(heartbeat=core.pre_handshake_heartbeat)
        self.state_machine = ConnectionStateMachine()
        self.conn_id = None
        self.last_read_ms = 0
        self._idle = IdleCheck(core.max_hb_timeout_times)
        # Deadlines in clock seconds, on the node's one timer (L{Deadlines}).
        self.wake_at = None
        self._idle_due = None
        self._handshake_due = None
        self._stalled_due = None
        # Made when packets arrive, dropped once they are all handled: an
        # idle connection holds no queue.
        self._pending = None
        self.writable = True

    @property
    def state(self) -> ConnectionState:
        return self.state_machine.state

    # -- Twisted's side -------------------------------------------------

    def connectionMade(self) -> None:
        self.last_read_ms = self.node.now_ms()
        self.conn_id = self.node.add_connection(self)
        self.node.metrics.connection_opened()
        self.transport.bufferSize = self.node.config.net.connect_server_write_high
        self.transport.registerProducer(self, True)
        no_delay(self.transport)
        now = self.node.clock.seconds()
        timeout = self.node.config.limits.pre_handshake_timeout
        if timeout:
            self._handshake_due = now + timeout / 1000.0
        self._idle_due = now + self.context.heartbeat / 1000.0
        self._schedule_deadlines()

    def dataReceived(self, data: bytes) -> None:
        if not self.state_machine.is_open:
            return
        self.node.metrics.bytes_in(len(data))
        try:
            packets = self.decoder.feed(data)
        except FramingError as error:
            self.log.info("closing {peer}: {error}", peer=self.peer, error=error)
            self.abort()
            return
        if packets:
            self.last_read_ms = self.node.now_ms()
            pending = self._pending
            if pending is None:
                pending = self._pending = InOrderQueue(self._dispatch, _wire_size, self._accepting)
            pending.extend(packets)
            pending.run()
            if pending.idle and self._pending is pending:
                self._pending = None
        if self.state_machine.is_open:
            self._check_backlog()

    def _check_backlog(self) -> None:
        """
        Bound what this connection holds unhandled: at most
        C{max-pending-packets} packets queued behind a busy handler, and at
        most C{max-read-size} bytes read and not yet handled (the wire size
        of those packets plus the incomplete frame in the decoder).
        """
        config = self.node.config.limits
        pending = self._pending
        if pending is not None and len(pending) > config.max_pending_packets:
            self._refuse(
                limits.PENDING_PACKETS,
                f"more than {config.max_pending_packets} packets waiting (max-pending-packets)",
            )
        elif self.pending_bytes > config.max_read_size:
            self._refuse(
                limits.READ_SIZE,
                f"{self.pending_bytes} bytes read and not handled (max-read-size "
                f"{config.max_read_size})",
            )

    def connectionLost(self, reason: Failure | None) -> None:
        self.node.metrics.connection_closed()
        self.state_machine.lost()
        self.writable = False
        self._drop_pending()
        self.wake_at = self._idle_due = self._handshake_due = self._stalled_due = None
        if self.slot is not None:
            self.slot.release()
        self.node.connection_lost(self)

    # -- IPushProducer: the send buffer's high-water mark -----------------

    def pauseProducing(self) -> None:
        """
        The send buffer passed the high-water mark: no more pushes, read
        nothing until it drains, and give the peer a bounded time to read.
        """
        self.writable = False
        if not self.is_open:
            return
        pause_reading = getattr(self.transport, "pauseProducing", None)
        if pause_reading is not None:
            pause_reading()
        if self._stalled_due is None:
            grace = limits.SLOW_READER_HEARTBEATS * self.context.heartbeat / 1000.0
            self._stalled_due = self.node.clock.seconds() + grace
            self._schedule_deadlines()

    def resumeProducing(self) -> None:
        self.writable = self.is_open
        self._stalled_due = None
        if self.writable:
            resume_reading = getattr(self.transport, "resumeProducing", None)
            if resume_reading is not None:
                resume_reading()

    def stopProducing(self) -> None:
        self.writable = False
        self._stalled_due = None

    def _stalled(self) -> None:
        if self.is_open and not self.writable:
            self._refuse(
                limits.SLOW_READER,
                f"read nothing for {limits.SLOW_READER_HEARTBEATS} heartbeats with a full "
                f"send buffer",
            )

    def _drop_pending(self) -> None:
        """
        Forget the packets waiting behind a handler (the connection is
        closing): a handler still running finds nothing after it.
        """
        if self._pending is not None:
            self._pending.clear()
            self._pending = None

    def _dispatch(self, packet: Packet) -> Deferred | None:
        return self.dispatcher.dispatch(self, packet)

    def _accepting(self) -> bool:
        return self.state_machine.is_open

    def read(self, packet: Packet) -> Any:
        """
        L{IDeviceConnection}: C{packet}'s body as its command's message,
        decrypted and inflated.  A HANDSHAKE is always RSA-decrypted, after
        drawing on the node's handshake token bucket (over it, the
        connection is closed without an answer and L{ConnectionClosed}
        raised); any other body with the session cipher, or before a
        session with the metered RSA key, as MPush does (spec 7.4).
        """
        parse = _BODIES.get(packet.cmd)
        if parse is None:
            return None
        if packet.cmd == _HANDSHAKE:
            if not self.allow_rsa(len(packet.body)):
                raise ConnectionClosed(self.peer)
            cipher = self.node.private_key
        else:
            cipher = self.decrypt_cipher
        return parse(decode_body(packet, cipher, self.node.config.core.max_inflated_size))

    # -- what handlers call -----------------------------------------------

    @property
    def decrypt_cipher(self) -> Any:
        """
        What a non-handshake body is decrypted with: the session cipher, or
        before any handshake the server's RSA key, as MPush does (spec 7.4),
        metered by the node's handshake rate limit.
        """
        cipher = self.context.cipher
        if cipher is not None:
            return cipher
        return _MeteredRsaKey(self, self.node.private_key)

    @property
    def peer(self) -> str:
        """
        C{host:port} of the client, for log lines: worked out when one is
        written rather than kept per connection.
        """
        if self.transport is None:
            return "?"
        address = self.transport.getPeer()
        return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"

    @property
    def is_open(self) -> bool:
        return self.state_machine.is_open

    @property
    def pending_bytes(self) -> int:
        """
        Bytes read and not yet handled: the packets queued behind a busy
        handler, at their wire size, and the incomplete frame being read.
        """
        queued = 0 if self._pending is None else self._pending.bytes
        return queued + self.decoder.buffered

    def allow_rsa(self, length: int) -> bool:
        """
        Ask the node's handshake token bucket for the RSA work of decrypting
        C{length} bytes.  When refused, close the connection without an
        answer (an ERROR to a HANDSHAKE would stop the Java client for good,
        spec 14.4; a plain close makes it retry later) and count it.

        @return: whether the decrypt may go ahead.
        """
        node = self.node
        if node.limits.allow_rsa(limits.rsa_blocks(node.private_key, length)):
            return True
        if self.is_open:
            node.limits.refused(
                node.metrics, limits.HANDSHAKE_RATE, self.peer, "RSA work over handshake-rate"
            )
            self.close()
        return False

    def write_packet(self, packet: Packet) -> Deferred:
        """
        Queue C{packet} on the transport.

        @return: a L{Deferred} that fires once the bytes are handed to the
            transport, or fails with L{ConnectionClosed} if the connection is
            gone.  Callers chain what must happen only after a successful
            write (switching ciphers, adopting a cached session) onto it.
        """
        if not self.is_open:
            return fail(ConnectionClosed(self.peer))
        data = encode_packet(packet)
        write_now(self.transport, data)
        self.node.metrics.bytes_out(len(data))
        return succeed(None)

    def send(self, cmd: int, message: Any, session_id: int, flags: int = 0) -> Deferred:
        """
        Write C{message} the MPush "send" way: compressed above the
        threshold, then encrypted with the session cipher.
        """
        packet = make_packet(
            cmd,
            message,
            session_id,
            cipher=self.context.cipher,
            compress_threshold=self.node.config.core.compress_threshold,
            flags=flags,
        )
        return self.write_packet(packet)

    def send_push(self, content: bytes, session_id: int, flags: int = 0) -> bool:
        """
        Write a PUSH of C{content} now, the way L{send} would, without the
        Deferred: the push center's synchronous path.

        @return: whether it was handed to the transport (C{False}: closed).
        """
        if not self.state_machine.is_open:
            return False
        body, added = encode_body(content, self.context.cipher, self.node.config.core.compress_threshold)
        data = encode_frame(_PUSH, session_id, flags | added, body)
        write_now(self.transport, data)
        self.node.metrics.bytes_out(len(data))
        return True

    def send_raw(self, cmd: int, message: Any, session_id: int, flags: int = 0) -> Deferred:
        """
        Write C{message} in plaintext, uncompressed ("sendRaw").
        """
        return self.write_packet(make_raw_packet(cmd, message, session_id, flags))

    def write_heartbeat(self) -> None:
        if self.is_open:
            write_now(self.transport, HEARTBEAT_BYTE)
            self.node.metrics.bytes_out(1)

    def reply_error(
        self, request: Any, code: int, reason: str, data: str | None = None, close: bool = False
    ) -> None:
        """
        Answer C{request} with ERROR (always raw), closing afterwards if asked.
        """
        message = ErrorMessage(request.cmd, code, reason, data)
        # A device that left while its request waited (on Redis, say) has
        # nobody to tell: not an error worth a line.
        self.send_raw(Command.ERROR, message, request.session_id).addErrback(_gone)
        if close:
            self.close()

    def close(self, reason: str | None = None) -> None:
        """
        Close once what was written has been flushed; read nothing more.
        (C{reason} is for a WebSocket's close frame; TCP has none.)
        """
        if self.state_machine.close():
            self._drop_pending()
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection now, unsent data and all."""
        self.state_machine.close()
        self._drop_pending()
        self.transport.abortConnection()

    def _refuse(self, reason: str, detail: str) -> None:
        """
        A limit says this connection must go: count it, log it (rate
        limited), abort.
        """
        self.node.limits.refused(self.node.metrics, reason, self.peer, detail)
        self.abort()

    def _handshake_overdue(self) -> None:
        if self.is_open and self.state is ConnectionState.NEW:
            timeout = self.node.config.limits.pre_handshake_timeout
            self._refuse(
                limits.PRE_HANDSHAKE_TIMEOUT,
                f"no handshake within {timeout} ms of accept (pre-handshake-timeout)",
            )

    # -- deadlines: idle checks, pre-handshake, slow reader -----------------

    def _schedule_deadlines(self) -> None:
        """
        Ask the node's timer to wake this connection at its next deadline.
        """
        due = [d for d in (self._idle_due, self._handshake_due, self._stalled_due) if d is not None]
        if due and self.state_machine.is_open:
            self.node.deadlines.schedule(self.conn_id, self, min(due))

    def deadline_reached(self, now: float) -> None:
        """
        L{IDeadlineOwner}: act on every deadline that has come, in the order
        the separate timers used to fire, then wait for the next one.
        """
        if self.state is ConnectionState.CLOSED:
            return
        if self._handshake_due is not None and self._handshake_due <= now:
            self._handshake_due = None
            self._handshake_overdue()
        if self._stalled_due is not None and self._stalled_due <= now:
            self._stalled_due = None
            self._stalled()
        if self._idle_due is not None and self._idle_due <= now and self.state_machine.is_open:
            self._idle_due = None
            self._check_idle(now)
        self._schedule_deadlines()

    def _check_idle(self, now: float) -> None:
        if self._idle.expired(
            self.node.now_ms(), self.last_read_ms, self.context.heartbeat
        ):
            self.log.info(
                "closing idle connection {peer} after {n} missed heartbeats",
                peer=self.peer,
                n=self._idle.timeouts,
            )
            self.abort()
            return
        self._idle_due = now + self.context.heartbeat / 1000.0


class RefusedConnection(Protocol):
    """
    What a refused client gets: the connection aborted as soon as it is
    made, nothing written.

    C{buildProtocol} returning C{None} does the same on a plain TCP port,
    but a wrapping factory (TLS's, or any policies.WrappingFactory) hands
    that C{None} to its wrapper protocol, which fails with AttributeError in
    the reactor and leaves the socket open; this works under any wrapper.
    """

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class ConnectionFactory(ServerFactory):
    """
    Builds a L{ConnectionProtocol} per accepted client of one node, within
    the node's connection limits.
    """

    log = Logger()

    def __init__(self, node: Any, dispatcher: Any) -> None:
        self.node = node
        self.dispatcher = dispatcher

    def startFactory(self) -> None:
        warning = unchecked_twisted_warning()
        if warning is not None:
            self.log.warn("{warning}", warning=warning)

    def buildProtocol(self, addr: Any) -> Protocol:
        node = self.node
        try:
            slot = node.limits.admit(addr)
        except limits.LimitExceeded as refusal:
            peer = f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}"
            node.limits.refused(node.metrics, refusal.reason, peer, str(refusal))
            return RefusedConnection()
        return ConnectionProtocol(node, self.dispatcher, slot)

"""
The connection server's Twisted edge: bytes in, packets to handlers, packets out.

L{ConnectionProtocol} is a thin adapter around the sans-I/O core.  It owns the
per-connection decoder, the queue that keeps one connection's packets strictly
in order while a handler waits (on Redis, say), the idle timer, and the
cipher-aware writers the handlers call.
"""

import collections

from twisted.internet.defer import fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from zope.interface import implementer

from mpush.protocol.body import make_packet, make_raw_packet
from mpush.protocol.errors import FramingError
from mpush.protocol.heartbeat import IdleCheck
from mpush.protocol.messages import ErrorMessage
from mpush.protocol.packet import (
    HEARTBEAT_BYTE,
    Command,
    PacketDecoder,
    encode_packet,
)
from mpush.server.context import ConnectionState, SessionContext
from mpush.server.errors import ConnectionClosed

#: Packets one connection may have waiting behind a handler that is still
#: busy (on Redis, say).  A client that pipelines more is flooding; it is closed.
MAX_PENDING_PACKETS = 1024


@implementer(IPushProducer)
class ConnectionProtocol(Protocol):
    """
    One client connection of the connection server.

    It registers itself as the transport's producer only to learn when the
    send buffer passes the high-water mark (C{pauseProducing}) and drains
    (C{resumeProducing}): a connection that is not C{writable} gets no more
    pushes, as in MPush, instead of buffering without bound.

    @ivar context: the L{SessionContext}; replaced whole by fast connect.
    @ivar state: the L{ConnectionState}.
    """

    log = Logger()

    def __init__(self, node, dispatcher):
        self.node = node
        self.dispatcher = dispatcher
        core = node.config.core
        self.decoder = PacketDecoder(core.max_packet_size)
        self.context = SessionContext(heartbeat=core.pre_handshake_heartbeat)
        self.state = ConnectionState.NEW
        self.conn_id = None
        self.peer = None
        self.last_read_ms = 0
        self._idle = IdleCheck(core.max_hb_timeout_times)
        self._idle_call = None
        self._pending = collections.deque()
        self._busy = False
        self._processing = False
        self._closing = False
        self.writable = True

    # -- Twisted's side -------------------------------------------------

    def connectionMade(self):
        address = self.transport.getPeer()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        self.last_read_ms = self.node.now_ms()
        self.conn_id = self.node.add_connection(self)
        self.node.metrics.connection_opened()
        self.transport.bufferSize = self.node.config.net.connect_server_write_high
        self.transport.registerProducer(self, True)
        self._schedule_idle_check()

    def dataReceived(self, data):
        if self._closing:
            return
        self.node.metrics.bytes_in(len(data))
        try:
            packets = self.decoder.feed(data)
        except FramingError as error:
            self.log.info("closing {peer}: {error}", peer=self.peer, error=error)
            self._abort()
            return
        if not packets:
            return
        self.last_read_ms = self.node.now_ms()
        self._pending.extend(packets)
        self._process()
        if len(self._pending) > MAX_PENDING_PACKETS:
            self.log.warn(
                "closing {peer}: more than {limit} packets waiting",
                peer=self.peer,
                limit=MAX_PENDING_PACKETS,
            )
            self._abort()

    def connectionLost(self, reason):
        self.node.metrics.connection_closed()
        self.state = ConnectionState.CLOSED
        self._closing = True
        self.writable = False
        self._pending.clear()
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        self.node.connection_lost(self)

    # -- IPushProducer: the send buffer's high-water mark -----------------

    def pauseProducing(self):
        self.writable = False

    def resumeProducing(self):
        self.writable = self.is_open

    def stopProducing(self):
        self.writable = False

    # -- strict in-order processing ---------------------------------------

    def _process(self):
        if self._processing:
            return
        self._processing = True
        try:
            while self._pending and not self._busy and not self._closing:
                packet = self._pending.popleft()
                waiting = self.dispatcher.dispatch(self, packet)
                if waiting is not None:
                    self._busy = True
                    waiting.addBoth(self._handler_done)
        finally:
            self._processing = False

    def _handler_done(self, result):
        self._busy = False
        if not self._processing:
            self._process()
        return result

    # -- what handlers call -----------------------------------------------

    @property
    def decrypt_cipher(self):
        """
        What a non-handshake body is decrypted with: the session cipher, or
        before any handshake the server's RSA key, as MPush does (spec 7.4).
        """
        return self.context.cipher or self.node.private_key

    @property
    def is_open(self):
        return not self._closing and self.state is not ConnectionState.CLOSED

    def write_packet(self, packet):
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
        self.transport.write(data)
        self.node.metrics.bytes_out(len(data))
        return succeed(None)

    def send(self, cmd, message, session_id, flags=0):
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

    def send_raw(self, cmd, message, session_id, flags=0):
        """
        Write C{message} in plaintext, uncompressed ("sendRaw").
        """
        return self.write_packet(make_raw_packet(cmd, message, session_id, flags))

    def write_heartbeat(self):
        if self.is_open:
            self.transport.write(HEARTBEAT_BYTE)
            self.node.metrics.bytes_out(1)

    def reply_error(self, request, code, reason, data=None, close=False):
        """
        Answer C{request} with ERROR (always raw), closing afterwards if asked.
        """
        message = ErrorMessage(request.cmd, code, reason, data)
        self.send_raw(Command.ERROR, message, request.session_id)
        if close:
            self.close()

    def establish(self, context):
        """
        Make C{context} this connection's session: after a handshake's reply
        was written, or when fast connect adopts a cached session.  A user
        bound before is unbound first, so its routes do not outlive it.
        """
        if self.context.user_id is not None:
            self.node.connection_unbound(self)
        self.context = context
        self.state = ConnectionState.HANDSHAKEN

    def close(self):
        """
        Close once what was written has been flushed; read nothing more.
        """
        if not self._closing:
            self._closing = True
            self._pending.clear()
            self.transport.loseConnection()

    def _abort(self):
        self._closing = True
        self._pending.clear()
        self.transport.abortConnection()

    # -- idle detection ----------------------------------------------------

    def _schedule_idle_check(self):
        self._idle_call = self.node.clock.callLater(
            self.context.heartbeat / 1000.0, self._check_idle
        )

    def _check_idle(self):
        self._idle_call = None
        if self.state is ConnectionState.CLOSED:
            return
        if self._idle.expired(
            self.node.now_ms(), self.last_read_ms, self.context.heartbeat
        ):
            self.log.info(
                "closing idle connection {peer} after {n} missed heartbeats",
                peer=self.peer,
                n=self._idle.timeouts,
            )
            self._abort()
            return
        self._schedule_idle_check()


class ConnectionFactory(ServerFactory):
    """
    Builds a L{ConnectionProtocol} per accepted client of one node.
    """

    def __init__(self, node, dispatcher):
        self.node = node
        self.dispatcher = dispatcher

    def buildProtocol(self, addr):
        return ConnectionProtocol(self.node, self.dispatcher)

"""
The gateway server: where back-ends hand in pushes (spec 12.1).

Same framing as the client port, but never encrypted or compressed, no
heartbeat, a larger size limit (MPush applies the 10 KiB client limit here and
drops pushes of about 10 KB: spec 21.2 item 6), and only GATEWAY_PUSH.  Pushes
on one gateway connection run concurrently: each is answered whenever its
delivery (and ack) completes, matched by packet session id.

GATEWAY_PUSH carries no credentials (MPush's PushSender sends none), so who
may connect is decided by address: the port listens on loopback unless
configured otherwise, and L{SourceAllowList} turns away any other source
outside C{[net] gateway-allow} before a byte is read.
"""

import ipaddress
import struct

from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from zope.interface import implementer

from mpush.protocol.body import make_raw_packet
from mpush.protocol.errors import FramingError
from mpush.protocol.messages import ErrorMessage, GatewayPushMessage, OkMessage
from mpush.protocol.packet import Command, PacketDecoder, encode_packet
from mpush.server.device.dispatcher import IMessageHandler, MessageDispatcher
from mpush.server.device.limits import source_of
from mpush.server.gateway.push_center import GatewayReply
from mpush.server.device.write_now import no_delay, write_now


@implementer(IMessageHandler)
class GatewayPushHandler:
    """
    GATEWAY_PUSH: decode, and hand to the push center without waiting.
    """

    command = Command.GATEWAY_PUSH

    def __init__(self, push_center):
        self.push_center = push_center

    def handle(self, connection, packet):
        message = GatewayPushMessage.decode(packet.body)
        self.push_center.push(message, packet.flags, GatewayReply(connection, packet))


#: Header (spec 2.1) + OkMessage's cmd, code and data length (spec 6.6).
_OK_FRAME = struct.Struct(">ibhbibbbh")
_OK = int(Command.OK)
_GATEWAY_PUSH = int(Command.GATEWAY_PUSH)


class GatewayProtocol(Protocol):
    """
    One back-end's connection to the gateway port.
    """

    log = Logger()

    def __init__(self, dispatcher, max_packet_size, connections=None):
        self.dispatcher = dispatcher
        self.decoder = PacketDecoder(max_packet_size)
        self.peer = None
        self.is_open = False
        self._answers = None
        #: Bytes read so far: a drain waits until it stops growing.
        self.bytes_read = 0
        self._connections = connections

    def connectionMade(self):
        address = self.transport.getPeer()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        self.is_open = True
        if self._connections is not None:
            self._connections.add(self)
        no_delay(self.transport)

    def dataReceived(self, data):
        if not self.is_open:
            return
        self.bytes_read += len(data)
        try:
            packets = self.decoder.feed(data)
        except FramingError as error:
            self.log.info("closing gateway client {peer}: {error}", peer=self.peer, error=error)
            self.is_open = False
            self.transport.abortConnection()
            return
        # Answers made while this chunk is handled go out in one write at
        # its end, straight to the socket when nothing is queued.
        self._answers = []
        try:
            for packet in packets:
                if not self.is_open:
                    break
                self.dispatcher.dispatch(self, packet)
        finally:
            answers, self._answers = self._answers, None
            if answers and self.is_open:
                write_now(self.transport, b"".join(answers))

    def _write(self, data):
        answers = self._answers
        if answers is not None:
            answers.append(data)
        else:
            self.transport.write(data)

    def connectionLost(self, reason):
        self.is_open = False
        if self._connections is not None:
            self._connections.discard(self)

    def close(self):
        """
        Read nothing more; close once every answer written is sent (a
        drain, once nothing read is left unanswered).
        """
        if self.is_open:
            self._flush_answers()
            self.is_open = False
            self.transport.loseConnection()

    def write_packet(self, packet):
        if self.is_open:
            self._write(encode_packet(packet))

    def answer_ok(self, session_id, data):
        if not self.is_open:
            return
        # The frame make_raw_packet(OK, OkMessage(GATEWAY_PUSH, 0, data))
        # encodes to, in one pack, for the usual short result.
        if data.__class__ is str:
            try:
                raw = data.encode("utf-8")
                if 0 < len(raw) < 0x7FFF:
                    self._write(
                        _OK_FRAME.pack(len(raw) + 4, _OK, 0, 0, session_id, 0, _GATEWAY_PUSH, 0, len(raw)) + raw
                    )
                    return
            except (UnicodeEncodeError, struct.error):
                pass
        self.write_packet(
            make_raw_packet(Command.OK, OkMessage(Command.GATEWAY_PUSH, 0, data), session_id)
        )

    def answer_error(self, session_id, code, reason, data=None):
        self.write_packet(
            make_raw_packet(
                Command.ERROR, ErrorMessage(Command.GATEWAY_PUSH, code, reason, data), session_id
            )
        )

    def reply_error(self, request, code, reason, data=None, close=False):
        """
        The dispatcher's error policy: ERROR for the request's command, raw.
        """
        self.write_packet(
            make_raw_packet(Command.ERROR, ErrorMessage(request.cmd, code, reason, data), request.session_id)
        )
        if close and self.is_open:
            self._flush_answers()
            self.is_open = False
            self.transport.loseConnection()

    def _flush_answers(self):
        answers = self._answers
        if answers:
            self._answers = []
            self.transport.write(b"".join(answers))


#: mpush_refused_total{reason} of a connection L{SourceAllowList} turned away.
GATEWAY_ALLOW = "gateway_allow"


class SourceAllowList:
    """
    The source networks that may use the gateway (C{[net] gateway-allow}).

    Loopback is always allowed: whoever runs on the node's own host can
    reach its console and state already.  An empty list allows every source.
    """

    def __init__(self, networks: tuple[str, ...] | list[str]):
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def allows(self, address) -> bool:
        if not self.networks:
            return True
        source = source_of(address)
        if source is None:
            return True  # a UNIX socket: no network to match
        try:
            ip = ipaddress.ip_address(source)
        except ValueError:
            return False
        return ip.is_loopback or any(ip in network for network in self.networks)


class GatewayFactory(ServerFactory):
    """
    @param allow: a L{SourceAllowList}, or C{None} for any source.
    @param refused: C{refused(peer, detail)}, told of every connection the
        allow-list turned away (to count it and log it, throttled).
    """

    noisy = False

    def __init__(self, push_center, max_packet_size, allow=None, refused=None):
        self.dispatcher = MessageDispatcher([GatewayPushHandler(push_center)])
        self.max_packet_size = max_packet_size
        self.allow = allow
        self.refused = refused
        #: The open connections (a drain closes them once they are quiet).
        self.connections = set()

    def buildProtocol(self, addr):
        if self.allow is not None and not self.allow.allows(addr):
            # None: Twisted closes the socket before reading from it.
            if self.refused is not None:
                self.refused(source_of(addr), "not in [net] gateway-allow")
            return None
        return GatewayProtocol(self.dispatcher, self.max_packet_size, self.connections)

"""
The WebSocket variant of the connection server (spec 15), and its page.

Browsers speak MPush as JSON text frames: no keys, no compression of the
body, no heartbeat, no fast connect.  A L{WebSocketConnection} is an
L{mpush.server.device.interfaces.IDeviceConnection}, as the TCP connection
is: it reads each frame's JSON body into the message a binary body would
give, and the same dispatcher, state machine and handlers serve it
(HANDSHAKE takes its non-secure form, spec 8.3).  The router center, the
push center, acks and offline delivery treat a browser like any other
device: C{send(Command.PUSH, PushMessage(content), id, flags)} becomes the
JSON PUSH frame of spec 15.3.

The listener is a twisted.web L{Site} (L{make_ws_site}): a GET of C{/} that
asks to upgrade becomes a WebSocket (autobahn); a plain GET of C{/} serves
the page in C{web/}, which connects back to the same host.  twisted.web
parses the HTTP request, so its header limits and timeouts apply before
autobahn sees a byte.

Departures from MPush, invisible to its JavaScript client: a client PUSH
with AUTO_ACK is answered with a JSON ACK (MPush writes a binary packet the
WebSocket cannot carry, spec 21.2 item 16); ws connections count towards
the node's connection limits and its pre-handshake timeout; the server pings
idle browsers (the browser answers by itself) so dead ones release their
routes; frames that are not MPush JSON get ERROR 100 and a close; a
browser handshake from a page of another origin gets 403 unless
C{[net] ws-allowed-origins} lists it (MPush lets every page in).
"""

import importlib.resources
import json
from dataclasses import dataclass
from typing import Any, Callable

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from mpush.metrics import WS_ORIGIN
from mpush.origins import OriginPolicy
from mpush.protocol.fields import INT32_MAX, INT32_MIN
from mpush.protocol.messages import (
    AckMessage,
    BindUserMessage,
    ErrorMessage,
    HandshakeMessage,
    KickUserMessage,
    OkMessage,
    PushMessage,
)
from mpush.protocol.packet import Command, Flags, Packet
from mpush.server.device.ack_handler import AckHandler
from mpush.server.device.adapter import DeviceAdapter
from mpush.server.device.bind import BindHandler, UnbindHandler
from mpush.server.device.client_push import ClientPushHandler
from mpush.server.device.context import SessionContext
from mpush.server.device.deadlines import IDeadlineOwner
from mpush.server.device.dispatcher import DeviceDispatcher
from mpush.server.device.errors import ConnectionClosed, DispatchError
from mpush.server.device.handshake import NO_HEARTBEAT, HandshakeHandler
from mpush.server.device.in_order import InOrderQueue
from mpush.server.device.interfaces import IDeviceConnection
from mpush.server.device.limits import PENDING_PACKETS, PRE_HANDSHAKE_TIMEOUT, READ_SIZE, LimitExceeded
from mpush.server.device.state import ConnectionState, ConnectionStateMachine

__all__ = [
    "MAX_FRAME_SIZE",
    "MIN_PING_INTERVAL",
    "WS_HEARTBEAT",
    "BadJson",
    "JsonPacket",
    "NotJsonEncodable",
    "PageUnavailable",
    "WebRoot",
    "WebSocketConnection",
    "WebSocketFactory",
    "bind_message_of",
    "decode_json_packet",
    "encode_json_packet",
    "handshake_message_of",
    "json_body",
    "load_pages",
    "make_ws_dispatcher",
    "make_ws_site",
    "push_content_of",
]

#: The heartbeat a WebSocket session is stored with (spec 8.3): none.
WS_HEARTBEAT = NO_HEARTBEAT

#: Largest inbound frame and message payload, after inflation (spec 15.1).
MAX_FRAME_SIZE = 65536

#: Seconds autobahn waits for the peer's reply to our close frame.
CLOSE_HANDSHAKE_TIMEOUT = 5

#: Close code for a binary frame: MPush packets come only as text.
CLOSE_UNSUPPORTED_DATA = 1003

#: Close code after an operator's kick (4000-4999: the application's own),
#: so the page says "logged out", not "bound on another device".
KICKED_CLOSE_CODE = 4001

#: Fewest seconds between two pings.  autobahn's timers are batched to
#: whole seconds and may fire up to one second early, so a shorter ping
#: timeout could drop a browser whose pong is on its way.
MIN_PING_INTERVAL = 2.0



# -- the JSON packet (spec 15.2) -------------------------------------------


class BadJson(DispatchError):
    """
    A text frame that is not an MPush JSON packet, or a body field of the
    wrong type.  Answered with ERROR 100 and a close, like any packet the
    server cannot decode.

    @ivar cmd: the frame's command, when it could be read (0 otherwise).
    @ivar session_id: the frame's session id, when it could be read.
    """

    def __init__(self, detail: str, cmd: int = 0, session_id: int = 0) -> None:
        super().__init__(detail)
        self.cmd = cmd
        self.session_id = session_id


class NotJsonEncodable(TypeError):
    """
    A message a WebSocket cannot carry (spec 15.3 lists what it can).
    """


class PageUnavailable(RuntimeError):
    """
    The WebSocket page is not installed with mpush (package data
    C{mpush/server/ws/web}).
    """


@dataclass(frozen=True, slots=True)
class JsonPacket:
    """
    One packet of the WebSocket variant: the binary header's fields and a
    JSON object as body.  C{cmd} and C{session_id} are what the dispatcher
    and the handlers' replies use, as for a binary L{Packet}.
    """

    cmd: int
    session_id: int = 0
    flags: int = Flags.JSON_BODY
    body: dict | None = None

    def has_flag(self, mask: int) -> bool:
        return (self.flags & mask) != 0

    def string(self, key: str) -> str | None:
        """
        The body's field C{key} as MPush reads it: a string, or C{None}
        when absent or null.

        @raise BadJson: the value is not a string, or not valid Unicode
            (a lone surrogate escape): it could never be written back.
        """
        if self.body is None:
            return None
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise BadJson(f"body.{key} must be a string, got {type(value).__name__}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadJson(f"body.{key} is not valid Unicode") from None
        return value


def _int_field(
    fields: dict, key: str, default: int, low: int, high: int, cmd: int = 0, session_id: int = 0
) -> int:
    value = fields.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadJson(f"{key} must be an integer", cmd, session_id)
    if not low <= value <= high:
        raise BadJson(f"{key} {value} is out of range [{low}, {high}]", cmd, session_id)
    return value


def decode_json_packet(payload: bytes) -> JsonPacket:
    """
    Read one inbound text frame (UTF-8 bytes) as a L{JsonPacket}: C{cmd}
    defaults to -1 (unknown), C{sessionId} to 0, C{flags} to JSON_BODY;
    unknown keys are ignored (spec 15.2).

    @raise BadJson: not a JSON object, fields of the wrong type or range,
        or flags without JSON_BODY (MPush then takes the body for binary
        and fails the same way).
    """
    try:
        fields = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise BadJson(f"not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise BadJson(f"a packet is a JSON object, not {type(fields).__name__}")
    session_id = _int_field(fields, "sessionId", 0, INT32_MIN, INT32_MAX)
    cmd = _int_field(fields, "cmd", -1, -128, 127, session_id=session_id)
    flags = _int_field(fields, "flags", int(Flags.JSON_BODY), -128, 255, cmd, session_id) & 0xFF
    if not flags & Flags.JSON_BODY:
        raise BadJson("flags lack JSON_BODY (0x10)", cmd, session_id)
    body = fields.get("body")
    if body is not None and not isinstance(body, dict):
        raise BadJson("body must be an object or null", cmd, session_id)
    return JsonPacket(cmd, session_id, flags, body)


def encode_json_packet(packet: JsonPacket) -> bytes:
    """
    One outbound text frame: keys in alphabetical order as fastjson writes
    them, C{body} left out when null, C{bodyLength} the number of body keys.
    """
    fields = {
        "bodyLength": len(packet.body) if packet.body else 0,
        "cmd": int(packet.cmd),
        "flags": int(packet.flags),
        "sessionId": int(packet.session_id),
    }
    if packet.body is not None:
        fields["body"] = packet.body
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Every string read from a client was checked; "replace" only guards
    # against a server-made string with a lone surrogate.
    return text.encode("utf-8", "replace")


def _json_packet(cmd: int, message: Any, session_id: int, flags: int) -> JsonPacket:
    """
    C{message} as a server packet: the ack bits of C{flags} kept, no
    encryption or compression to flag (spec 15.1).
    """
    flags = (flags & ~(Flags.CRYPTO | Flags.COMPRESS)) | Flags.JSON_BODY
    return JsonPacket(int(cmd), session_id, int(flags), json_body(message))


def _present(**fields: Any) -> dict:
    return {key: value for key, value in fields.items() if value is not None}


def json_body(message: Any) -> dict | None:
    """
    The JSON body of a server message (spec 15.3), or C{None} for none.
    A PUSH's bytes become text as Java's C{new String(content, UTF_8)}
    does: malformed sequences turn into U+FFFD.

    @raise NotJsonEncodable: a message the WebSocket variant does not send.
    """
    if message is None or isinstance(message, AckMessage):
        return None
    if isinstance(message, PushMessage):
        return {"content": bytes(message.content).decode("utf-8", "replace")}
    if isinstance(message, OkMessage):
        return _present(
            cmd=message.cmd if message.cmd > 0 else None,
            code=message.code if message.code > 0 else None,
            data=message.data,
        )
    if isinstance(message, ErrorMessage):
        return _present(
            cmd=message.cmd if message.cmd > 0 else None,
            code=message.code if message.code > 0 else None,
            reason=message.reason,
            data=message.data,
        )
    if isinstance(message, KickUserMessage):
        return _present(deviceId=message.device_id, userId=message.user_id)
    raise NotJsonEncodable(f"{type(message).__name__} has no JSON form on a WebSocket")


# -- the WebSocket listener's handlers (spec 5, 8.3, 11, 12.4) ---------------


def bind_message_of(packet: JsonPacket) -> BindUserMessage:
    """
    BIND/UNBIND's body as the L{BindUserMessage} the router center takes.
    Empty strings count as absent, as on the binary wire.
    """
    return BindUserMessage(
        packet.string("userId") or None,
        packet.string("data") or None,
        packet.string("tags") or None,
    )


def handshake_message_of(packet: JsonPacket) -> HandshakeMessage:
    """
    The non-secure handshake's body (spec 8.3): a device and no keys.
    """
    return HandshakeMessage(
        device_id=packet.string("deviceId"),
        os_name=packet.string("osName"),
        os_version=packet.string("osVersion"),
        client_version=packet.string("clientVersion"),
        iv=None,
        client_key=None,
        min_heartbeat=0,
        max_heartbeat=0,
    )


def push_content_of(packet: JsonPacket) -> bytes:
    """
    A client PUSH's content, as the bytes a binary PUSH would carry.
    """
    return (packet.string("content") or "").encode("utf-8")


#: How each command's JSON body reads; a command not here has none to read.
_BODIES: dict[int, Callable[[JsonPacket], Any]] = {
    int(Command.HANDSHAKE): handshake_message_of,
    int(Command.BIND): bind_message_of,
    int(Command.UNBIND): bind_message_of,
    int(Command.PUSH): push_content_of,
}


def make_ws_dispatcher(node: Any) -> DeviceDispatcher:
    """
    The WebSocket listener's handlers, the TCP listener's own: HANDSHAKE
    (its non-secure form), BIND, UNBIND, PUSH and ACK; anything else is
    UNSUPPORTED_CMD and a close (spec 5).
    """
    metrics = node.metrics
    return DeviceDispatcher(
        [
            HandshakeHandler(node.session_store, node.config.core, metrics, node.clock),
            BindHandler(node.router_center, metrics),
            UnbindHandler(node.router_center),
            ClientPushHandler(),
            AckHandler(node.acks),
        ]
    )


# -- one browser connection ---------------------------------------------------


@implementer(IDeviceConnection, IPushProducer, IDeadlineOwner)
class WebSocketConnection(DeviceAdapter):
    """
    One open WebSocket, seen by the rest of the node as a device connection
    (L{IDeviceConnection}), a thin adapter between autobahn's frames and the
    same dispatcher, state machine and handlers as a TCP connection.

    Packets run strictly in order, as on TCP: a frame that arrives while a
    handler waits (a BIND on Redis) waits behind it.  The connection is its
    transport's producer, so above the send buffer's high-water mark it is
    not C{writable} and pushes to it fail instead of buffering.  Its
    pre-handshake deadline is on the node's deadline heap, as a TCP
    connection's is.

    @ivar channel: the autobahn protocol that carries the frames.
    """

    __slots__ = (
        "node",
        "dispatcher",
        "channel",
        "context",
        "state_machine",
        "conn_id",
        "peer",
        "writable",
        "wake_at",
        "_pending",
        "_handshake_due",
    )

    log = Logger()

    #: No body is ever encrypted on a WebSocket, nor keys agreed.
    encrypted = False

    def __init__(self, node: Any, dispatcher: DeviceDispatcher, channel: "_WebSocketChannel") -> None:
        self.node = node
        self.dispatcher = dispatcher
        self.channel = channel
        self.context = SessionContext(heartbeat=WS_HEARTBEAT)
        self.state_machine = ConnectionStateMachine()
        self.conn_id = None
        self.peer = None
        self.writable = True
        self.wake_at = None
        self._pending = InOrderQueue(self._dispatch, len, self._accepting)
        self._handshake_due = None

    @property
    def state(self) -> ConnectionState:
        return self.state_machine.state

    @property
    def transport(self) -> Any:
        return self.channel.transport

    # -- the channel's side -------------------------------------------------

    def opened(self) -> None:
        """
        The WebSocket handshake is done: join the node.
        """
        transport = self.transport
        address = transport.getPeer()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        node = self.node
        self.conn_id = node.add_connection(self)
        node.metrics.connection_opened()
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = node.config.net.connect_server_write_high
        # twisted.web's channel was the transport's producer until the
        # upgrade handed the transport over; the send buffer is ours now.
        transport.unregisterProducer()
        transport.registerProducer(self, True)
        timeout = node.config.limits.pre_handshake_timeout
        if timeout:
            self._handshake_due = node.clock.seconds() + timeout / 1000.0
            node.deadlines.schedule(self.conn_id, self, self._handshake_due)

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        if not self.state_machine.is_open:
            return
        self.node.metrics.bytes_in(len(payload))
        if is_binary:
            self.log.info("closing {peer}: a binary frame (MPush frames are JSON text)", peer=self.peer)
            self.state_machine.close()
            self._pending.clear()
            self.channel.refuse_binary()
            return
        limits = self.node.config.limits
        self._pending.extend((payload,))
        if len(self._pending) > limits.max_pending_packets:
            self._refuse(PENDING_PACKETS, f"more than {limits.max_pending_packets} frames waiting")
            return
        if self._pending.bytes > limits.max_read_size:
            self._refuse(READ_SIZE, f"more than {limits.max_read_size} bytes of frames waiting")
            return
        self._pending.run()

    def lost(self) -> None:
        """
        The transport is gone: leave the node, release the routes.
        """
        self.state_machine.lost()
        self.writable = False
        self._pending.clear()
        self.wake_at = self._handshake_due = None
        if self.conn_id is not None:
            self.node.metrics.connection_closed()
            self.node.connection_lost(self)

    # -- IPushProducer: the send buffer's high-water mark ---------------------

    def pauseProducing(self) -> None:
        self.writable = False

    def resumeProducing(self) -> None:
        self.writable = self.is_open

    def stopProducing(self) -> None:
        self.writable = False

    def _accepting(self) -> bool:
        return self.state_machine.is_open

    def _dispatch(self, payload: bytes) -> Deferred | None:
        """
        Decode one frame and hand it to the dispatcher; a frame that is not
        MPush JSON is answered and the connection closed.
        """
        try:
            packet = decode_json_packet(payload)
        except BadJson as error:
            self.log.info("closing {peer}: {error}", peer=self.peer, error=error)
            self.reply_error(error, int(error.code), error.reason, close=True)
            return None
        return self.dispatcher.dispatch(self, packet)

    # -- IDeviceConnection ------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state_machine.is_open

    def read(self, packet: JsonPacket) -> Any:
        """
        C{packet}'s JSON body as its command's message, as a TCP
        connection reads a binary one.

        @raise BadJson: a field of the wrong type.
        """
        parse = _BODIES.get(packet.cmd)
        return None if parse is None else parse(packet)

    def write_packet(self, packet: JsonPacket | Packet) -> Deferred:
        """
        Write C{packet} as one text frame.  A binary L{Packet} is taken
        only without a body.

        @return: a L{Deferred} that fires once the frame is handed to the
            transport, or fails with L{ConnectionClosed}.
        """
        if isinstance(packet, Packet):
            if packet.body:
                raise NotJsonEncodable(f"the binary body of cmd {packet.cmd} has no JSON form")
            packet = JsonPacket(packet.cmd, packet.session_id, packet.flags | Flags.JSON_BODY)
        if self._write(packet):
            return succeed(None)
        return fail(ConnectionClosed(self.peer))

    def send(self, cmd: int, message: Any, session_id: int, flags: int = 0) -> Deferred:
        """
        Write C{message} as JSON.  The ack bits of C{flags} are kept; there
        is no encryption or compression to flag (spec 15.1).
        """
        return self.write_packet(_json_packet(cmd, message, session_id, flags))

    #: On a WebSocket "send" and "sendRaw" are the same JSON frame.
    send_raw = send

    def send_push(self, content: bytes, session_id: int, flags: int = 0) -> bool:
        """
        Write a PUSH of C{content} now: the JSON PUSH frame of spec 15.3.

        @return: whether the WebSocket took it (C{False}: closed).
        """
        return self._write(_json_packet(Command.PUSH, PushMessage(content), session_id, flags))

    def _write(self, packet: JsonPacket) -> bool:
        if not self.state_machine.is_open:
            return False
        payload = encode_json_packet(packet)
        if not self.channel.send_text(payload):
            return False
        self.node.metrics.bytes_out(len(payload))
        return True

    def reply_error(
        self, request: Any, code: int, reason: str, data: str | None = None, close: bool = False
    ) -> None:
        """
        Answer C{request} with a JSON ERROR, closing afterwards if asked.
        """
        self.send(Command.ERROR, ErrorMessage(request.cmd, code, reason, data), request.session_id)
        if close:
            self.close()

    def close(self, reason: str | None = None) -> None:
        """
        Close once what was written has been sent; read nothing more.  With
        a C{reason} (an operator's kick) the close frame carries code
        L{KICKED_CLOSE_CODE} and it, so a page can tell the user why.
        """
        if self.state_machine.close():
            self._pending.clear()
            if reason is None:
                self.channel.sendClose(1000)
            else:
                self.channel.sendClose(KICKED_CLOSE_CODE, reason)

    def abort(self) -> None:
        """Drop the connection now, unsent data and all."""
        self.state_machine.close()
        self._pending.clear()
        self.channel.dropConnection(abort=True)

    def _refuse(self, reason: str, detail: str) -> None:
        self.node.limits.refused(self.node.metrics, reason, self.peer, detail)
        self.abort()

    # -- IDeadlineOwner: the pre-handshake deadline ---------------------------

    def deadline_reached(self, now: float) -> None:
        due = self._handshake_due
        if due is None:
            return
        if due > now:
            self.node.deadlines.schedule(self.conn_id, self, due)
            return
        self._handshake_due = None
        if self.state is ConnectionState.NEW and self.is_open:
            timeout = self.node.config.limits.pre_handshake_timeout
            self._refuse(PRE_HANDSHAKE_TIMEOUT, f"no handshake within {timeout} ms")

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self.conn_id} {self.peer} {self.state.name}>"


# -- autobahn's side ----------------------------------------------------------


class _WebSocketChannel(WebSocketServerProtocol):
    """
    The autobahn protocol under one L{WebSocketConnection}.  Kept apart
    because autobahn's own attributes (C{state}, C{peer}) would clash with
    the connection interface the node relies on.
    """

    def __init__(self) -> None:
        super().__init__()
        self.connection: WebSocketConnection | None = None
        self.slot = None

    def onConnect(self, request: Any) -> None:
        node = self.factory.node
        if request.path != "/":
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, "MPush's WebSocket is at /")
        try:
            self.slot = node.limits.admit(self.transport.getPeer())
        except LimitExceeded as error:
            node.limits.refused(node.metrics, error.reason, request.peer, str(error))
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "too many connections") from None
        return None  # no subprotocol (spec 15.1)

    def onOpen(self) -> None:
        factory = self.factory
        self.connection = WebSocketConnection(factory.node, factory.dispatcher, self)
        self.connection.opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.connection is not None:
            self.connection.message_received(payload, isBinary)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if self.connection is not None:
            self.connection.lost()
        if self.slot is not None:
            self.slot.release()

    def send_text(self, payload: bytes) -> bool:
        """
        Send one text frame; whether the WebSocket could take it.

        autobahn applies one size limit to both directions, but MPush's is
        inbound only (a push may be larger than what a browser may send), so
        it is lifted around our own write; nothing is read meanwhile.
        """
        if self.state != self.STATE_OPEN:
            return False
        limit = self.maxMessagePayloadSize
        self.maxMessagePayloadSize = 0
        try:
            self.sendMessage(payload, isBinary=False)
        finally:
            self.maxMessagePayloadSize = limit
        return True

    def refuse_binary(self) -> None:
        self.sendCloseFrame(
            code=CLOSE_UNSUPPORTED_DATA, reasonUtf8=b"MPush packets are JSON text frames"
        )


def _accept_deflate(offers: list) -> PerMessageDeflateOfferAccept | None:
    """
    permessage-deflate when offered (spec 15.1), without keeping the
    server's compression context between messages: an idle browser then
    costs no zlib state for what we send.
    """
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer, no_context_takeover=True)
    return None


class WebSocketFactory(WebSocketServerFactory):
    """
    Builds the WebSocket side of each browser connection of one node.

    @param dispatcher: the handlers; L{make_ws_dispatcher} by default.
    """

    protocol = _WebSocketChannel

    def __init__(self, node: Any, dispatcher: DeviceDispatcher | None = None, reactor: Any = None) -> None:
        super().__init__(server="mpush", reactor=reactor)
        self.node = node
        self.dispatcher = dispatcher if dispatcher is not None else make_ws_dispatcher(node)
        # The server's heartbeat, from its side: a browser that stops
        # reading misses a ping's pong and is dropped, releasing its routes.
        ping = max(node.config.core.max_heartbeat / 1000.0, MIN_PING_INTERVAL)
        self.setProtocolOptions(
            webStatus=False,
            maxFramePayloadSize=MAX_FRAME_SIZE,
            maxMessagePayloadSize=MAX_FRAME_SIZE,
            failByDrop=False,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            perMessageCompressionAccept=_accept_deflate,
            autoPingInterval=ping,
            autoPingTimeout=ping,
        )
        self.noisy = False


# -- the page and the HTTP side ----------------------------------------------

#: Served paths: file name in C{web/} and content type.
_PAGES = {
    b"/": ("index.html", "text/html; charset=utf-8"),
    b"/index.html": ("index.html", "text/html; charset=utf-8"),
    b"/client.js": ("client.js", "text/javascript; charset=utf-8"),
}

#: The page loads its script from here and talks to here; nothing else.
_PAGE_HEADERS = {
    b"Content-Security-Policy": b"default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    b"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-cache",
}


def load_pages() -> dict[bytes, tuple[bytes, bytes]]:
    """
    The page files, read once when the listener is built.

    @raise PageUnavailable: they are not installed.
    """
    web = importlib.resources.files(__package__).joinpath("web")
    files = {}
    for path, (name, content_type) in _PAGES.items():
        try:
            files[path] = (web.joinpath(name).read_bytes(), content_type.encode("ascii"))
        except OSError as error:
            raise PageUnavailable(
                f"the WebSocket page {name} is not installed with mpush "
                f"(package data mpush/server/ws/web): {error}"
            ) from None
    return files


def _wants_websocket(request: Any) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return any(token.strip().lower() == b"websocket" for token in upgrade.split(b","))


def _header(request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


class WebRoot(Resource):
    """
    Everything on the WebSocket port: the upgrade at C{/} (for pages the
    origin policy allows), the page at C{/} and C{/index.html}, its script,
    and 403/404/405 for the rest.

    @param refused: called with C{(peer, detail)} for each upgrade refused
        for its origin.
    """

    isLeaf = True

    def __init__(
        self,
        websocket: Resource,
        pages: dict[bytes, tuple[bytes, bytes]],
        origins: OriginPolicy | None = None,
        refused: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__()
        self.websocket = websocket
        self.pages = pages
        self.origins = origins if origins is not None else OriginPolicy()
        self.refused = refused

    def render(self, request: Any) -> bytes | int:
        if _wants_websocket(request):
            if request.path != b"/":
                return self._status(request, 404, b"no WebSocket here; MPush's is at /\n")
            origin = _header(request, b"origin")
            if not self.origins.allows(origin, request.isSecure(), _header(request, b"host")):
                if self.refused is not None:
                    self.refused(str(request.getClientAddress()), f"WebSocket from origin {origin!r}")
                return self._status(request, 403, b"origin not allowed ([net] ws-allowed-origins)\n")
            return self.websocket.render(request)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return self._status(request, 405, b"method not allowed\n")
        page = self.pages.get(request.path)
        if page is None:
            return self._status(request, 404, b"not found\n")
        body, content_type = page
        request.setHeader(b"Content-Type", content_type)
        for name, value in _PAGE_HEADERS.items():
            request.setHeader(name, value)
        return body

    @staticmethod
    def _status(request: Any, code: int, text: bytes) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return text


def make_ws_site(node: Any, dispatcher: DeviceDispatcher | None = None, reactor: Any = None) -> Site:
    """
    What the WebSocket port listens with: the page and, at C{/}, MPush's
    WebSocket for C{node}.

    @raise PageUnavailable: the page files are not installed.
    """
    factory = WebSocketFactory(node, dispatcher, reactor=reactor)

    def refused(peer: str, detail: str) -> None:
        node.limits.refused(node.metrics, WS_ORIGIN, peer, detail)

    origins = OriginPolicy(node.config.net.ws_allowed_origins)
    site = Site(WebRoot(WebSocketResource(factory), load_pages(), origins, refused))
    site.noisy = False
    return site

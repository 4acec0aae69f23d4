"""
A lean MPush device, gateway pusher, HTTP pusher and echo client for
mpush-bench, on asyncio protocols and the sans-I/O codec (mpush.protocol).

mpush.client is a faithful Java-client replica with a Deferred per request,
retries and a session file: right for tests, too heavy to open tens of
thousands of connections from one process.  This module keeps per connection
only a decoder, a cipher and one pending request, and it never resolves a
name or connects anywhere but loopback: every address goes through
L{loopback_address} first.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import itertools
import json
import os
import socket
import struct
import sys
import time
from typing import Callable

from mpush.protocol.body import decode_body, make_packet
from mpush.protocol.crypto import AES_KEY_LENGTH, AesCipher, RsaPublicKey, mix_key
from mpush.protocol.errors import ErrorCode, FramingError, ProtocolError
from mpush.protocol.fields import INT32_MAX
from mpush.protocol.messages import (
    BindUserMessage,
    ErrorMessage,
    FastConnectMessage,
    FastConnectOkMessage,
    GatewayPushMessage,
    HandshakeMessage,
    HandshakeOkMessage,
    OkMessage,
)
from mpush.protocol.packet import HEARTBEAT_BYTE, Command, Flags, Packet, PacketDecoder, encode_packet

__all__ = [
    "BenchError",
    "NotLoopback",
    "WireError",
    "ConnectFailed",
    "ConnectionLost",
    "WireTimeout",
    "ServerRejected",
    "BadAnswer",
    "STAMP_SIZE",
    "loopback_address",
    "source_addresses",
    "stamp_content",
    "read_stamp",
    "open_connection",
    "Device",
    "DeviceProtocol",
    "GatewayPusher",
    "HttpResponseReader",
    "HttpPusher",
    "http_get",
    "EchoClient",
]

#: What the bench's devices report; MOBILE for the server's classifier.
OS_NAME = "android"
OS_VERSION = "bench"
CLIENT_VERSION = "mpush-bench"
#: The Java client compresses bodies above this; so do we (never, in practice).
CLIENT_COMPRESS_THRESHOLD = 1024
#: Bound on an inflated PUSH body, so a hostile server cannot exhaust a worker.
MAX_INFLATED = 1 << 20
#: Replies and pushes larger than this are not from an MPush server.
MAX_FRAME = 1 << 20
#: Java's healthCheck pings when nothing was written for heartbeat minus this.
PING_SLACK_MS = 1000
#: Linux's IP_BIND_ADDRESS_NO_PORT: pick the source port at connect(), per
#: destination, so one source address is not limited to ~28k connections total.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

_ACK_BITS = int(Flags.AUTO_ACK | Flags.BIZ_ACK)
_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.ip_address("::1")


# -------------------------------------------------------------------- errors


class BenchError(Exception):
    """Base of every failure mpush-bench reports with a clean message."""


class NotLoopback(BenchError, ValueError):
    """A target or source outside 127.0.0.0/8 and ::1: this tool refuses it."""


class WireError(BenchError):
    """One connection or request failed."""


class ConnectFailed(WireError):
    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot connect to {_hostport(host, port)}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class ConnectionLost(WireError):
    """The server closed the connection with a request unanswered."""


class WireTimeout(WireError):
    """No answer within the request timeout."""


class ServerRejected(WireError):
    """The server answered a request with ERROR."""

    def __init__(self, error: ErrorMessage) -> None:
        name = ErrorCode.of(error.code).name if error.code else "0"
        super().__init__(
            f"server answered ERROR for cmd {error.cmd}: code {error.code} ({name}) reason {error.reason!r}"
        )
        self.error = error


class BadAnswer(WireError):
    """The server's answer is not what an MPush server sends."""


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------ addresses


def loopback_address(host: str) -> str:
    """
    The IP literal to use for C{host}, which must be on loopback: an address
    in 127.0.0.0/8, ::1, or the name C{localhost} (taken as 127.0.0.1).
    Other names are refused without being resolved, because resolving them
    could itself send a DNS query off the machine.
    """
    if not isinstance(host, str) or not host.strip():
        raise NotLoopback("no target host given")
    text = host.strip()
    if text.lower() == "localhost":
        return "127.0.0.1"
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise NotLoopback(
            f"refusing target {host!r}: mpush-bench only drives servers on loopback "
            "(an IP in 127.0.0.0/8, ::1 or 'localhost'); names are not resolved"
        ) from None
    if (address.version == 4 and address in _LOOPBACK_V4) or address == _LOOPBACK_V6:
        return str(address)
    raise NotLoopback(
        f"refusing target {host!r}: {address} is not on loopback; mpush-bench only "
        "sends traffic to 127.0.0.0/8 or ::1"
    )


def source_addresses(target: str, count: int) -> tuple[str | None, ...]:
    """
    Up to C{count} loopback source addresses 127.0.0.2, 127.0.0.3, ... to
    spread connections over, so one address's ephemeral ports are not the
    limit.  Only for an IPv4 target, and only if this system lets us bind
    them (Linux routes all of 127/8 to lo; macOS does not): otherwise
    C{(None,)}, meaning "let the kernel choose".
    """
    if count < 1 or ":" in loopback_address(target):
        return (None,)
    candidates = [f"127.0.0.{n}" for n in range(2, 2 + min(count, 250))]
    usable = []
    for address in candidates:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind((address, 0))
        except OSError:
            break
        finally:
            probe.close()
        usable.append(address)
    return tuple(usable) or (None,)


# --------------------------------------------------------------- push stamps

_STAMP = struct.Struct(">4sIIQ")
_GATEWAY_PUSH = int(Command.GATEWAY_PUSH)
#: Frame header and GatewayPushMessage's leading user id length.
_GW_HEAD = struct.Struct(">ibhbibh")
_GW_MID = struct.Struct(">iih")
_GW_TAIL = bytes(6)  # task id, tags, condition: null


def _gateway_push_frame(sid: int, flags: int, user_id, client_type: int, timeout_ms: int,
                        content: bytes) -> bytes:
    """
    encode_packet(Packet(GATEWAY_PUSH, sid, flags, GatewayPushMessage(user_id,
    client_type, timeout_ms, content).encode())), packed directly for the
    usual short user id and content.
    """
    user = user_id.encode("utf-8") if user_id else b""
    if 0 < len(user) < 0x7FFF and 0 < len(content) < 0x7FFF:
        try:
            body_length = 2 + len(user) + 10 + len(content) + 6
            return b"".join((
                _GW_HEAD.pack(body_length, _GATEWAY_PUSH, 0, flags, sid, 0, len(user)), user,
                _GW_MID.pack(client_type, timeout_ms, len(content)), content, _GW_TAIL,
            ))
        except struct.error:
            pass
    body = GatewayPushMessage(user_id, client_type, timeout_ms, content).encode()
    return encode_packet(Packet(Command.GATEWAY_PUSH, sid, flags, body))
_STAMP_MAGIC = b"MPBN"
#: Bytes at the start of every bench push content: magic, run tag, seq, send time.
STAMP_SIZE = _STAMP.size
_PADDING = bytes(range(256)) * 64


def stamp_content(tag: int, seq: int, sent_ns: int, size: int) -> bytes:
    """
    Push content of exactly C{size} bytes carrying the run tag, the sequence
    number and the send time (CLOCK_MONOTONIC, shared by every process on
    the machine) so a device in another process can measure the latency.
    """
    head = _STAMP.pack(_STAMP_MAGIC, tag, seq, sent_ns)
    if size <= STAMP_SIZE:
        return head
    return head + _PADDING[: size - STAMP_SIZE]


def read_stamp(content: bytes) -> tuple[int, int, int] | None:
    """(tag, seq, sent_ns) of a bench push, or None for any other content."""
    if len(content) < STAMP_SIZE:
        return None
    magic, tag, seq, sent_ns = _STAMP.unpack_from(content)
    if magic != _STAMP_MAGIC:
        return None
    return tag, seq, sent_ns


# ---------------------------------------------------------------- connecting

_ids = itertools.count(1)


def _next_sid() -> int:
    """Packet session ids for requests: a per-process counter, as in Java."""
    global _ids
    value = next(_ids)
    if value > INT32_MAX:
        _ids = itertools.count(2)
        value = 1
    return value


async def open_connection(factory: Callable[[], asyncio.Protocol], host: str, port: int,
                          source: str | None, timeout: float) -> asyncio.Protocol:
    """
    Connect a protocol to C{host:port} (loopback only) from the optional
    loopback C{source} address.  Fails with L{ConnectFailed}.
    """
    host = loopback_address(host)
    if source is not None:
        loopback_address(source)
    return await connect_socket(factory, host, port, source, timeout)


async def connect_socket(factory: Callable[[], asyncio.Protocol], host: str, port: int,
                         source: str | None, timeout: float) -> asyncio.Protocol:
    """
    Connect a protocol to C{host:port} from the optional C{source} address,
    whose port is picked at connect (one source serves many destinations).
    The caller has checked both addresses.  Fails with L{ConnectFailed}.
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source is not None:
            if sys.platform.startswith("linux"):
                try:
                    sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                except OSError:
                    pass
            sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        _, protocol = await loop.create_connection(factory, sock=sock)
    except asyncio.TimeoutError:
        sock.close()
        raise ConnectFailed(host, port, f"no answer within {timeout:g} s") from None
    except OSError as exc:
        sock.close()
        raise ConnectFailed(host, port, exc.strerror or str(exc)) from None
    except BaseException:
        sock.close()
        raise
    return protocol


# -------------------------------------------------------------------- device


class Device:
    """
    One simulated device: its identity and the session it got from its last
    handshake, which outlives any one connection (fast connect reuses it).
    """

    __slots__ = ("index", "device_id", "user_id", "session_id", "session_key", "iv",
                 "heartbeat_ms", "connection", "bound")

    def __init__(self, index: int, device_id: str, user_id: str) -> None:
        self.index = index
        self.device_id = device_id
        self.user_id = user_id
        self.session_id: str | None = None
        self.session_key: bytes | None = None
        self.iv: bytes | None = None
        self.heartbeat_ms = 0
        self.connection: DeviceProtocol | None = None
        self.bound = False


def _decode(packet: Packet, cipher, what: str):
    try:
        return decode_body(packet, cipher, MAX_INFLATED)
    except ProtocolError as exc:
        raise BadAnswer(f"{what}: undecodable body ({exc})") from None


class DeviceProtocol(asyncio.Protocol):
    """
    One device connection, speaking the client side of spec 7-12 the way
    the Java client does: RSA-encrypted HANDSHAKE, plaintext FAST_CONNECT,
    AES BIND, raw ACK, 0xDF pings.  One request is outstanding at a time;
    pushes arrive at any time and go to C{on_push(device, content, now_ns)}.
    """

    __slots__ = ("device", "requested_heartbeat", "on_push", "on_lost", "transport", "_decoder",
                 "_cipher", "_waiter", "_wait_sid", "_closed", "closing", "last_write",
                 "pongs", "kicks", "acks")

    def __init__(self, device: Device, requested_heartbeat: int,
                 on_push: Callable | None = None, on_lost: Callable | None = None) -> None:
        self.device = device
        self.requested_heartbeat = requested_heartbeat
        self.on_push = on_push
        self.on_lost = on_lost
        self.transport = None
        self._decoder = PacketDecoder(MAX_FRAME)
        self._cipher = None
        self._waiter: asyncio.Future | None = None
        self._wait_sid = 0
        self._closed: asyncio.Future | None = None
        self.closing = False
        self.last_write = 0.0
        self.pongs = 0
        self.kicks = 0
        self.acks = 0

    # -- asyncio -----------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._closed = asyncio.get_running_loop().create_future()
        self.last_write = time.monotonic()

    def connection_lost(self, exc) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionLost("the server closed the connection"))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self.device.connection is self:
            self.device.connection = None
            self.device.bound = False
        if not self.closing and self.on_lost is not None:
            self.on_lost(self)

    def data_received(self, data: bytes) -> None:
        try:
            packets = self._decoder.feed(data)
        except FramingError as exc:
            self._fail(BadAnswer(f"undecodable bytes from the server: {exc}"))
            return
        for packet in packets:
            cmd = packet.cmd
            if cmd == Command.PUSH:
                self._pushed(packet)
            elif cmd == Command.HEARTBEAT:
                self.pongs += 1
            elif cmd == Command.KICK:
                self.kicks += 1
            elif self._waiter is not None and packet.session_id == self._wait_sid:
                if not self._waiter.done():
                    self._waiter.set_result(packet)

    def _fail(self, error: WireError) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def _pushed(self, packet: Packet) -> None:
        now = time.monotonic_ns()
        try:
            content = decode_body(packet, self._cipher, MAX_INFLATED)
        except ProtocolError as exc:
            self._fail(BadAnswer(f"PUSH with an undecodable body: {exc}"))
            return
        if packet.flags & _ACK_BITS:
            self._write(encode_packet(Packet(Command.ACK, packet.session_id)))
            self.acks += 1
        if self.on_push is not None:
            self.on_push(self.device, content, now)

    def _write(self, data: bytes) -> None:
        self.transport.write(data)
        self.last_write = time.monotonic()

    # -- requests ------------------------------------------------------------

    async def _request(self, packet: Packet, timeout: float, what: str) -> Packet:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionLost(f"{what}: the connection is closed")
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._wait_sid = packet.session_id
        self._write(encode_packet(packet))
        try:
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise WireTimeout(f"{what}: no answer within {timeout:g} s") from None
        finally:
            self._waiter = None

    def _expect(self, reply: Packet, cmd: int, what: str) -> None:
        if reply.cmd == Command.ERROR:
            body = _decode(reply, self._cipher, what)
            try:
                error = ErrorMessage.decode(body)
            except ProtocolError as exc:
                raise BadAnswer(f"{what}: undecodable ERROR ({exc})") from None
            raise ServerRejected(error)
        if reply.cmd != cmd:
            raise BadAnswer(f"{what}: answered with cmd {reply.cmd}, expected {cmd}")

    async def handshake(self, public_key: RsaPublicKey, timeout: float) -> None:
        """Full handshake (spec 8, 9.3): afterwards the session is on the device."""
        device = self.device
        client_key = os.urandom(AES_KEY_LENGTH)
        iv = os.urandom(AES_KEY_LENGTH)
        heartbeat = self.requested_heartbeat
        message = HandshakeMessage(device.device_id, OS_NAME, OS_VERSION, CLIENT_VERSION,
                                   iv, client_key, heartbeat, heartbeat, 0)
        packet = make_packet(Command.HANDSHAKE, message, _next_sid(), public_key, CLIENT_COMPRESS_THRESHOLD)
        self._cipher = AesCipher(client_key, iv)
        reply = await self._request(packet, timeout, "HANDSHAKE")
        self._expect(reply, Command.HANDSHAKE, "HANDSHAKE")
        try:
            ok = HandshakeOkMessage.decode(_decode(reply, self._cipher, "HANDSHAKE"))
        except ProtocolError as exc:
            raise BadAnswer(f"HANDSHAKE: undecodable HandshakeOk ({exc})") from None
        if ok.server_key is None or len(ok.server_key) != AES_KEY_LENGTH:
            raise BadAnswer("HANDSHAKE: HandshakeOk carries no 16-byte server key")
        session_key = mix_key(client_key, ok.server_key)
        self._cipher = AesCipher(session_key, iv)
        device.session_id = ok.session_id
        device.session_key = session_key
        device.iv = iv
        device.heartbeat_ms = ok.heartbeat
        device.connection = self

    async def fast_connect(self, timeout: float) -> None:
        """Fast connect with the device's session (spec 9): plaintext request, raw answer."""
        device = self.device
        if device.session_id is None or device.session_key is None:
            raise BadAnswer("FAST_CONNECT: the device has no session (the handshake gave no session id)")
        heartbeat = self.requested_heartbeat
        message = FastConnectMessage(device.session_id, device.device_id, heartbeat, heartbeat)
        packet = make_packet(Command.FAST_CONNECT, message, _next_sid(), None, CLIENT_COMPRESS_THRESHOLD)
        reply = await self._request(packet, timeout, "FAST_CONNECT")
        self._expect(reply, Command.FAST_CONNECT, "FAST_CONNECT")
        try:
            ok = FastConnectOkMessage.decode(_decode(reply, None, "FAST_CONNECT"))
        except ProtocolError as exc:
            raise BadAnswer(f"FAST_CONNECT: undecodable FastConnectOk ({exc})") from None
        self._cipher = AesCipher(device.session_key, device.iv)
        device.heartbeat_ms = ok.heartbeat
        device.connection = self

    async def bind(self, timeout: float) -> None:
        """BIND the device's user (spec 11.3); OK with cmd 5 is success."""
        device = self.device
        packet = make_packet(Command.BIND, BindUserMessage(device.user_id), _next_sid(),
                             self._cipher, CLIENT_COMPRESS_THRESHOLD)
        reply = await self._request(packet, timeout, "BIND")
        self._expect(reply, Command.OK, "BIND")
        try:
            ok = OkMessage.decode(_decode(reply, self._cipher, "BIND"))
        except ProtocolError as exc:
            raise BadAnswer(f"BIND: undecodable OK ({exc})") from None
        if ok.cmd != Command.BIND:
            raise BadAnswer(f"BIND: OK answers cmd {ok.cmd}, expected {int(Command.BIND)}")
        device.bound = True

    # -- idle life ---------------------------------------------------------------

    def ping_due(self, now: float) -> bool:
        """Java's healthCheck rule: ping once nothing was written for heartbeat - 1 s."""
        heartbeat = self.device.heartbeat_ms
        return heartbeat > 0 and (now - self.last_write) * 1000.0 > heartbeat - PING_SLACK_MS

    def ping(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._write(HEARTBEAT_BYTE)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self, timeout: float) -> bool:
        """True once the connection is gone; aborts it if it lingers."""
        if self._closed is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
            return True
        except asyncio.TimeoutError:
            if self.transport is not None:
                self.transport.abort()
            return False


# ------------------------------------------------------------------- pushers


class _PusherBase:
    """
    What the push scenario needs of any pusher: fire-and-count requests,
    C{in_flight} for the window, C{wait_slot} to block on it (a subclass
    sets C{_slot} and C{lost}, and calls C{_wake} when a reply frees room), own timers
    (C{expire}) because MPush sends nothing on a push timeout (spec 12.6),
    and counters of the outcomes.
    """

    def reset_counters(self) -> None:
        """Start a new run: zero the counters (subclasses also forget what is in flight)."""
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.timeouts = 0
        self.late = 0

    def _error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1

    def _wake(self) -> None:
        slot = self._slot
        if slot is not None and not slot.done():
            slot.set_result(None)

    async def wait_slot(self, until: float) -> None:
        """
        Wait until a reply frees the window (or the connection dies, or
        C{until}); raise L{ConnectionLost} once C{lost} says why.
        """
        if self.lost:
            raise ConnectionLost(self.lost)
        self._slot = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._slot, max(until - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            pass
        finally:
            self._slot = None
        if self.lost:
            raise ConnectionLost(self.lost)


class GatewayPusher(asyncio.Protocol, _PusherBase):
    """
    A back-end's TCP connection to a node's gateway port (spec 12.1): raw
    GATEWAY_PUSH frames, pipelined, each answered by OK or ERROR with its
    packet session id.  The frames of one event-loop turn go out in one
    write (one syscall for a burst, not one per push: the load tool shares
    the cores with the server it measures).
    """

    def __init__(self) -> None:
        self.transport = None
        self._out: list[bytes] = []
        self._decoder = PacketDecoder(MAX_FRAME)
        self.pending: dict[int, int] = {}
        self._slot: asyncio.Future | None = None
        self._waiters: dict[int, asyncio.Future] = {}
        self.lost: str | None = None
        self.reset_counters()

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def reset_counters(self) -> None:
        """Answers to requests of an earlier run will count as late, not as this run's."""
        super().reset_counters()
        self.pending.clear()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = "the gateway closed the connection"
        if self.pending:
            self.errors["connection lost with the push unanswered"] = (
                self.errors.get("connection lost with the push unanswered", 0) + len(self.pending))
            self.pending.clear()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionLost(self.lost))
        self._waiters.clear()
        self._wake()

    def data_received(self, data: bytes) -> None:
        try:
            packets = self._decoder.feed(data)
        except FramingError as exc:
            self.lost = f"undecodable bytes from the gateway: {exc}"
            self.transport.abort()
            return
        for packet in packets:
            if packet.cmd not in (Command.OK, Command.ERROR):
                self._error(f"cmd{packet.cmd}")
                continue
            sid = packet.session_id
            if self.pending.pop(sid, None) is None:
                self.late += 1
                continue
            answer: OkMessage | ErrorMessage | None = None
            waiter = self._waiters.get(sid)
            try:
                if packet.cmd == Command.OK:
                    # Only a waiter reads an OK's body (a push run counts it).
                    if waiter is not None:
                        answer = OkMessage.decode(packet.body)
                    self.ok += 1
                else:
                    answer = ErrorMessage.decode(packet.body)
                    key = ErrorCode.of(answer.code).name.lower() if answer.code else (answer.reason or "error")
                    self._error(key)
            except ProtocolError:
                self._error("undecodable")
            waiter = self._waiters.pop(sid, None)
            if waiter is not None and not waiter.done():
                if answer is None:
                    waiter.set_exception(BadAnswer("the gateway's answer has an undecodable body"))
                else:
                    waiter.set_result(answer)
        self._wake()

    def push(self, user_id: str | None, content: bytes, flags: int, timeout_ms: int,
             client_type: int = 1) -> int:
        """Send one GATEWAY_PUSH now; returns its packet session id."""
        if self.lost or self.transport.is_closing():
            raise ConnectionLost(self.lost or "the gateway connection is closing")
        sid = _next_sid()
        out = self._out
        if not out:
            asyncio.get_running_loop().call_soon(self._flush)
        out.append(_gateway_push_frame(sid, flags, user_id, client_type, timeout_ms, content))
        self.pending[sid] = time.monotonic_ns()
        return sid

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    async def push_and_wait(self, user_id: str | None, content: bytes, flags: int,
                            timeout_ms: int, wait_s: float, client_type: int = 0) -> OkMessage | ErrorMessage:
        """One push, waiting for its answer (an OK or an ERROR message)."""
        sid = self.push(user_id, content, flags, timeout_ms, client_type)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[sid] = waiter
        try:
            return await asyncio.wait_for(waiter, wait_s)
        except asyncio.TimeoutError:
            self.pending.pop(sid, None)
            raise WireTimeout(f"GATEWAY_PUSH: no answer within {wait_s:g} s") from None
        finally:
            self._waiters.pop(sid, None)

    def expire(self, older_than_ns: int) -> int:
        """Forget requests sent before C{older_than_ns}; they count as timeouts."""
        stale = [sid for sid, sent in self.pending.items() if sent < older_than_ns]
        for sid in stale:
            del self.pending[sid]
        self.timeouts += len(stale)
        if stale:
            self._wake()
        return len(stale)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class HttpResponseReader:
    """
    Incremental HTTP/1.1 response parser (status, headers, a body framed by
    Content-Length or chunked), enough for the mpush HTTP API's answers.
    C{feed} returns the (status, body) pairs completed by the bytes given.
    """

    __slots__ = ("_buf", "_limit")

    class Malformed(BadAnswer):
        """The bytes are not an HTTP/1.x response."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        done = []
        while True:
            response = self._one()
            if response is None:
                break
            done.append(response)
        if len(self._buf) > self._limit:
            raise self.Malformed(f"HTTP response larger than {self._limit} bytes")
        return done

    def _one(self) -> tuple[int, bytes] | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(buf[:end]).split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise self.Malformed(f"not an HTTP response: {bytes(lines[0][:60])!r}")
        try:
            status = int(status_line[1])
        except ValueError:
            raise self.Malformed(f"bad HTTP status line: {bytes(lines[0][:60])!r}") from None
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        start = end + 4
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = bytearray()
            pos = start
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                try:
                    size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
                except ValueError:
                    raise self.Malformed("bad chunk size in HTTP response") from None
                chunk_start = line_end + 2
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0:
                        return None
                    del buf[: trailer_end + 4]
                    return status, bytes(body)
                if len(buf) < chunk_start + size + 2:
                    return None
                body += buf[chunk_start: chunk_start + size]
                pos = chunk_start + size + 2
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            raise self.Malformed("bad Content-Length in HTTP response") from None
        if length < 0:
            raise self.Malformed("negative Content-Length in HTTP response")
        if len(buf) < start + length:
            return None
        body = bytes(buf[start: start + length])
        del buf[: start + length]
        return status, body


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection of an L{HttpPusher}: one request at a time."""

    def __init__(self, pool: "HttpPusher") -> None:
        self.pool = pool
        self.transport = None
        self.reader = HttpResponseReader()
        self.sent_ns = 0
        self.busy = False
        self.stale = False
        self.dead = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.dead = True
        self.pool._lost(self)

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.reader.feed(data)
        except BadAnswer as exc:
            self.pool.lost = str(exc)
            self.transport.abort()
            return
        for status, body in responses:
            self.pool._answered(self, status, body)


class HttpPusher(_PusherBase):
    """
    Pushes through the mpush HTTP API (POST /v1/push) instead of the gateway
    port: C{window} keep-alive connections, one request in flight on each
    (the API answers a push only once it is delivered, and twisted.web
    serves pipelined requests one after the other anyway).
    """

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.host = loopback_address(host)
        self.port = port
        self.token = token
        self.connections: list[_HttpConnection] = []
        self._idle: list[_HttpConnection] = []
        self._slot: asyncio.Future | None = None
        self.lost: str | None = None
        self.reset_counters()

    async def open(self, window: int, source: str | None, timeout: float) -> None:
        for _ in range(window):
            connection = await open_connection(lambda: _HttpConnection(self), self.host, self.port,
                                               source, timeout)
            self.connections.append(connection)
            self._idle.append(connection)

    @property
    def in_flight(self) -> int:
        return sum(1 for c in self.connections if c.busy and not c.dead)

    @property
    def window(self) -> int:
        return sum(1 for c in self.connections if not c.dead)

    def _lost(self, connection: _HttpConnection) -> None:
        if connection.busy:
            connection.busy = False
            self._error("connection_lost")
        if connection in self._idle:
            self._idle.remove(connection)
        if not any(not c.dead for c in self.connections):
            self.lost = self.lost or "the HTTP API closed every connection"
        self._wake()

    def reset_counters(self) -> None:
        """A request of an earlier run still holds its connection; its answer will count as late."""
        super().reset_counters()
        for connection in self.connections:
            if connection.busy:
                connection.stale = True

    def _answered(self, connection: _HttpConnection, status: int, body: bytes) -> None:
        if not connection.busy or connection.stale:
            self.late += 1
            if connection.busy and not connection.dead:
                self._idle.append(connection)
            connection.busy = connection.stale = False
            self._wake()
            return
        connection.busy = False
        if status == 200:
            try:
                results = json.loads(body)["results"]
                statuses = {r.get("status") for r in results}
            except (ValueError, KeyError, TypeError, AttributeError):
                statuses = {"undecodable"}
            if statuses == {"success"}:
                self.ok += 1
            else:
                self._error(",".join(sorted(str(s) for s in statuses)) or "no_result")
        else:
            self._error(f"http_{status}")
        if not connection.dead:
            self._idle.append(connection)
        self._wake()

    def push(self, user_id: str | None, content: bytes, flags: int, timeout_ms: int,
             client_type: int = 1) -> int:
        if self.lost:
            raise ConnectionLost(self.lost)
        if not self._idle:
            raise WireError("HTTP pusher: no idle connection (window full)")
        connection = self._idle.pop()
        ack = "auto" if flags & Flags.AUTO_ACK else ("biz" if flags & Flags.BIZ_ACK else "none")
        request = {"content_b64": base64.b64encode(content).decode("ascii"), "ack": ack,
                   "timeout_ms": timeout_ms}
        if user_id is None:
            request["broadcast"] = True
        else:
            request["users"] = [user_id]
        body = json.dumps(request, separators=(",", ":")).encode("ascii")
        head = [
            b"POST /v1/push HTTP/1.1",
            b"Host: " + _hostport(self.host, self.port).encode("ascii"),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
        ]
        if self.token:
            head.append(b"Authorization: Bearer " + self.token.encode("utf-8"))
        connection.busy = True
        connection.sent_ns = time.monotonic_ns()
        connection.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        return 0

    def expire(self, older_than_ns: int) -> int:
        """
        A request that outlived its timer cannot be cancelled on a
        keep-alive connection: that connection is closed and counted.
        """
        stale = [c for c in self.connections if c.busy and not c.dead and c.sent_ns < older_than_ns]
        for connection in stale:
            connection.busy = False
            connection.dead = True
            connection.transport.abort()
        self.timeouts += len(stale)
        if stale and not any(not c.dead for c in self.connections):
            self.lost = "every HTTP API connection timed out"
        return len(stale)

    def close(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()


class _HttpGet(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = HttpResponseReader()
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.reader.feed(data)
        except BadAnswer as exc:
            if not self.answer.done():
                self.answer.set_exception(exc)
            return
        if responses and not self.answer.done():
            self.answer.set_result(responses[0])

    def connection_lost(self, exc) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionLost("the HTTP server closed the connection without an answer"))


async def http_get(host: str, port: int, path: str, token: str | None, timeout: float) -> tuple[int, bytes]:
    """One GET on loopback: (status, body).  For the pre-flight check of the HTTP API."""
    connection = await open_connection(_HttpGet, host, port, None, timeout)
    head = [f"GET {path} HTTP/1.1".encode("ascii"),
            b"Host: " + _hostport(loopback_address(host), port).encode("ascii"),
            b"Connection: close"]
    if token:
        head.append(b"Authorization: Bearer " + token.encode("utf-8"))
    connection.transport.write(b"\r\n".join(head) + b"\r\n\r\n")
    try:
        return await asyncio.wait_for(connection.answer, timeout)
    except asyncio.TimeoutError:
        raise WireTimeout(f"GET {path}: no answer within {timeout:g} s") from None
    finally:
        connection.transport.close()


# ---------------------------------------------------------------- echo floor


class EchoClient(asyncio.Protocol):
    """
    Frames to a raw echo server and back: the cost of the transport alone,
    for the same frame sizes as a push.  C{latencies} holds round trips (ns).
    """

    def __init__(self) -> None:
        self.transport = None
        self._decoder = PacketDecoder(MAX_FRAME)
        self.sent = 0
        self.echoed = 0
        self.latencies: list[int] = []
        self.last_ns = 0
        self.lost = False
        self._slot: asyncio.Future | None = None

    @property
    def in_flight(self) -> int:
        return self.sent - self.echoed

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        self._wake()

    def data_received(self, data: bytes) -> None:
        try:
            packets = self._decoder.feed(data)
        except FramingError:
            self.lost = True
            self.transport.abort()
            return
        now = time.monotonic_ns()
        for packet in packets:
            stamp = read_stamp(packet.body)
            if stamp is not None:
                self.latencies.append(now - stamp[2])
            self.echoed += 1
        self.last_ns = now
        self._wake()

    def _wake(self) -> None:
        slot = self._slot
        if slot is not None and not slot.done():
            slot.set_result(None)

    async def wait_slot(self, until: float) -> None:
        self._slot = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._slot, max(until - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            pass
        finally:
            self._slot = None

    def send_frame(self, body: bytes) -> None:
        self.transport.write(encode_packet(Packet(Command.PUSH, self.sent + 1, 0, body)))
        self.sent += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

"""
A server-level fuzzer: hostile connections storm a running mpush node while
honest devices keep using it, then the node is checked for damage.

Why a separate tool and not more unit tests: the bugs it looks for live
between the pieces -- a decoder that is fine alone but leaves a connection
half-registered, a handler that buffers for a peer that never reads, a
reactor starved by one flood while a real device waits for its push.  Only
a real node, real sockets and real clients show those.

What one run does:

  1. connects C{honest} real clients (L{mpush.client.protocol}), each bound
     to its own user, and starts pushing to them through the gateway with
     AUTO_ACK (L{mpush.push.PushClient}) and pinging them;
  2. opens C{connections} hostile connections, at most C{concurrency} at a
     time, spread over C{duration} seconds, each running one L{Attack}
     chosen and filled in from C{seed};
  3. stops the honest traffic, waits for what is in flight, and checks that
     every push was acknowledged and received exactly once, every ping was
     answered and no honest connection dropped; then, when it was told how
     to look (C{admin_port}, C{pid}), that the node is alive, its
     connection count is back to the honest clients and its RSS is back
     near the baseline taken before the storm.

Every hostile byte comes from C{random.Random} seeded per connection from
C{seed} (even the RSA padding of hostile handshakes), so a failing seed is a
reproducer; only the interleaving on the wire varies between runs.  The
fuzzer refuses any host that is not a loopback address, and every wait it
makes has a deadline, so it is bounded in time and in connections.

This module owns the I/O; the bytes come from L{FrameMaker}, which does no
I/O and is what the unit tests check for determinism.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import ipaddress
import random
import re
import socket
import struct
import zlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from mpush.client.config import ClientConfig
from mpush.client.protocol import connect_client
from mpush.protocol.body import decode_body
from mpush.protocol.crypto import (
    AES_KEY_LENGTH,
    MPUSH_DEMO_PUBLIC_KEY,
    RSA_PADDING_OVERHEAD,
    AesCipher,
    mix_key,
)
from mpush.protocol.errors import FramingError, ProtocolError
from mpush.protocol.fields import INT32_MAX, INT32_MIN, FieldWriter
from mpush.protocol.messages import (
    BindUserMessage,
    FastConnectMessage,
    GatewayPushMessage,
    HandshakeMessage,
    HandshakeOkMessage,
    HttpRequestMessage,
)
from mpush.protocol.packet import (
    DEFAULT_MAX_PACKET_SIZE,
    HEARTBEAT_BYTE,
    Command,
    Flags,
    PacketDecoder,
)
from mpush.push import AckModel, PushClient, PushStatus

__all__ = [
    "DEFAULT_ATTACKS",
    "MAX_CONCURRENCY",
    "MAX_CONNECTIONS",
    "MAX_DURATION",
    "MAX_HONEST",
    "Attack",
    "AttackPlan",
    "AttackStats",
    "FrameMaker",
    "FuzzConfig",
    "FuzzConfigError",
    "FuzzReport",
    "HonestReport",
    "admin_count_connections",
    "check_loopback",
    "judge",
    "plan_attacks",
    "plan_digest",
    "process_alive",
    "read_rss_kb",
    "run_fuzz",
    "scan_node_log",
]

log = Logger()

#: Hard bounds: the fuzzer is a test tool, not a load generator.
MAX_DURATION = 3600.0
MAX_CONNECTIONS = 100_000
MAX_CONCURRENCY = 512
MAX_HONEST = 100
MAX_HOLD = 120.0

_HEADER = struct.Struct(">ibhbib")


class FuzzConfigError(ValueError):
    """A fuzzer setting is unusable (or not loopback); the message names it."""


class Attack(enum.Enum):
    """
    What one hostile connection does.  The last three are heavy on purpose
    (they reproduce known weaknesses of the node) and are not in
    L{DEFAULT_ATTACKS}: name them to run them.
    """

    #: Random bytes in a few chunks, then FIN, RST or silence.
    RANDOM_BYTES = "random-bytes"
    #: A real frame cut short, then FIN, RST or silence.
    TRUNCATED = "truncated"
    #: A header announcing a body over the limit, or a negative one.
    OVERSIZE = "oversize"
    #: Bit flips and field rewrites of real frames (handshake, bind, fast
    #: connect, push, ack, ...), before any handshake.
    MUTATED = "mutated"
    #: A real handshake, then garbage under the right session key.
    GARBAGE_AFTER_HANDSHAKE = "garbage-after-handshake"
    #: A real handshake, then frames encrypted with a wrong key.
    WRONG_KEY = "wrong-key"
    #: A burst of 0xDF bytes and framed heartbeats, replies read.
    HEARTBEAT_FLOOD = "heartbeat-flood"
    #: Connect, send nothing or part of a frame, and wait to be reaped.
    HALF_OPEN = "half-open"
    #: Hundreds of small frames in one write.
    PIPELINE = "pipeline"
    #: Random, oversize and mutated frames on the gateway port.
    GATEWAY = "gateway"
    #: Pre-handshake FAST_CONNECTs whose CRYPTO bodies are many RSA blocks,
    #: pipelined (server CPU per byte received).
    RSA_BURN = "rsa-burn"
    #: A heartbeat flood from a peer that never reads (server write buffer).
    SILENT_FLOOD = "silent-flood"
    #: Max-size plaintext FAST_CONNECTs for unknown sessions, pipelined: with
    #: a Redis session store each waits on Redis while the rest queue.
    QUEUE_FILL = "queue-fill"


DEFAULT_ATTACKS = (
    Attack.RANDOM_BYTES,
    Attack.TRUNCATED,
    Attack.OVERSIZE,
    Attack.MUTATED,
    Attack.GARBAGE_AFTER_HANDSHAKE,
    Attack.WRONG_KEY,
    Attack.HEARTBEAT_FLOOD,
    Attack.HALF_OPEN,
    Attack.PIPELINE,
    Attack.GATEWAY,
)


def _signed(value, bits):
    """Any int as the signed field of that width (wrapping, as a hostile peer may)."""
    value = int(value) & ((1 << bits) - 1)
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _check_number(name, value, low, high, kind=(int, float)):
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        raise FuzzConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def check_loopback(host):
    """
    The fuzzer only ever talks to this machine: a literal loopback address
    or "localhost" (taken as 127.0.0.1).

    @return: the address to connect to.
    @raise FuzzConfigError: anything else.
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise FuzzConfigError(f"host must be a loopback IP address or localhost, got {host!r}") from None
    if not address.is_loopback:
        raise FuzzConfigError(f"host {host} is not a loopback address; the fuzzer runs on loopback only")
    return str(address)


@dataclass(frozen=True, slots=True)
class FuzzConfig:
    """
    One fuzz run, validated once.  Times are seconds.

    @ivar admin_port: the node's admin console, to check its connection
        count (C{count conn}); C{None} skips that check.
    @ivar pid: the node's process id, to check it is alive and its RSS;
        C{None} skips those checks.
    @ivar hold: the longest a hostile connection lives, half-open ones
        excepted (C{half_open_hold}: they wait to be reaped by the node's
        idle check, which takes three pre-handshake heartbeats).
    @ivar flood_bytes: heartbeat bytes one flooder sends.
    """

    host: str
    port: int
    gateway_port: int
    duration: float = 10.0
    connections: int = 200
    seed: int = 0
    concurrency: int = 32
    honest: int = 4
    admin_port: int | None = None
    pid: int | None = None
    public_key: str = MPUSH_DEMO_PUBLIC_KEY
    attacks: tuple = DEFAULT_ATTACKS
    push_rate: float = 20.0
    ping_interval: float = 0.5
    reply_timeout: float = 15.0
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    hold: float = 3.0
    half_open_hold: float = 15.0
    flood_bytes: int = 32768
    settle: float = 30.0
    rss_margin_kb: int = 20 * 1024

    def __post_init__(self):
        object.__setattr__(self, "host", check_loopback(self.host))
        for name in ("port", "gateway_port"):
            _check_number(name, getattr(self, name), 1, 65535, int)
        if self.admin_port is not None:
            _check_number("admin_port", self.admin_port, 1, 65535, int)
        if self.pid is not None:
            _check_number("pid", self.pid, 1, INT32_MAX, int)
        _check_number("duration", self.duration, 0.1, MAX_DURATION)
        _check_number("connections", self.connections, 1, MAX_CONNECTIONS, int)
        _check_number("concurrency", self.concurrency, 1, MAX_CONCURRENCY, int)
        _check_number("honest", self.honest, 1, MAX_HONEST, int)
        _check_number("seed", self.seed, -(2**63), 2**63 - 1, int)
        _check_number("push_rate", self.push_rate, 0.1, 1000)
        _check_number("ping_interval", self.ping_interval, 0.05, 60)
        _check_number("reply_timeout", self.reply_timeout, 0.5, 300)
        _check_number("max_packet_size", self.max_packet_size, 14, 16 * 1024 * 1024, int)
        _check_number("hold", self.hold, 0.1, MAX_HOLD)
        _check_number("half_open_hold", self.half_open_hold, 0.1, MAX_HOLD)
        _check_number("flood_bytes", self.flood_bytes, 1, 64 * 1024 * 1024, int)
        _check_number("settle", self.settle, 0.1, 600)
        _check_number("rss_margin_kb", self.rss_margin_kb, 0, 16 * 1024 * 1024, int)
        try:
            attacks = tuple(Attack(a) for a in self.attacks)
        except (TypeError, ValueError):
            names = ", ".join(attack.value for attack in Attack)
            raise FuzzConfigError(f"attacks must be among {names}, got {self.attacks!r}") from None
        if not attacks:
            raise FuzzConfigError("attacks must name at least one attack")
        object.__setattr__(self, "attacks", attacks)
        try:
            _load_public_key(self.public_key)
        except ValueError as error:
            raise FuzzConfigError(f"public_key: {error}") from None


def _load_public_key(text):
    """(n, e, k) of a base64 X.509 RSA public key."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("an RSA public key in base64 X.509 form is required")
    body = "".join(line.strip() for line in text.strip().splitlines() if not line.startswith("-----"))
    try:
        key = serialization.load_der_public_key(base64.b64decode(body, validate=True))
    except Exception as error:
        raise ValueError(f"not a base64 X.509 public key ({error})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    numbers = key.public_numbers()
    return numbers.n, numbers.e, (key.key_size + 7) // 8


# -- the bytes: no I/O below until HostileConnection --------------------------

@dataclass(frozen=True, slots=True)
class AttackPlan:
    """One hostile connection: its place in the run, its attack, its seed."""

    index: int
    attack: Attack
    seed: str


def plan_attacks(seed, count, attacks=DEFAULT_ATTACKS):
    """
    The hostile connections of a run, in launch order.  Attacks are dealt
    round-robin from a seeded shuffle, so every attack appears once a run
    has as many connections as attacks.
    """
    rng = random.Random(f"mpush-fuzz-plan:{seed}")
    attacks = tuple(Attack(a) for a in attacks)
    deck = []
    plans = []
    for index in range(count):
        if not deck:
            deck = list(attacks)
            rng.shuffle(deck)
        plans.append(AttackPlan(index, deck.pop(), f"{seed}:{index}"))
    return plans


class FrameMaker:
    """
    Builds every byte a hostile connection sends, from one seeded Random.

    Two makers with the same seed and public key produce the same bytes
    call for call: RSA encryption here uses its own seeded PKCS#1 v1.5
    padding, not the OS random source.
    """

    #: Header values that break parsers: signed edges and the heartbeat byte.
    INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xDF, 0xFF)

    def __init__(self, rng, public_key=MPUSH_DEMO_PUBLIC_KEY, max_packet_size=DEFAULT_MAX_PACKET_SIZE, tag="x"):
        self.rng = rng
        self.n, self.e, self.k = _load_public_key(public_key)
        self.max_packet_size = max_packet_size
        self.tag = tag
        self._sid = 0

    # -- primitives -----------------------------------------------------------

    def random_bytes(self, n):
        return self.rng.randbytes(n)

    def session_id(self):
        self._sid += 1
        return self._sid

    def text(self, max_len=12):
        """Short text mixing ASCII, CJK and non-BMP characters."""
        alphabet = "abcxyz019-_:@ \u4e2d\u00e9\U0001F600\U00010348"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, max_len)))

    def frame(self, cmd, body=b"", flags=0, session_id=None):
        """A full 13-byte-header frame, even for cmd 1 (encode_packet would send 0xDF)."""
        if session_id is None:
            session_id = self.session_id()
        return _HEADER.pack(len(body), _signed(cmd, 8), 0, _signed(flags, 8), _signed(session_id, 32), 0) + body

    def rsa_encrypt(self, data):
        """PKCS#1 v1.5 type 2 under the server key, padding from the seeded Random."""
        chunk = self.k - RSA_PADDING_OVERHEAD
        out = []
        for start in range(0, len(data), chunk):
            block = data[start:start + chunk]
            padding = bytes(self.rng.randint(1, 255) for _ in range(self.k - 3 - len(block)))
            message = int.from_bytes(b"\x00\x02" + padding + b"\x00" + block, "big")
            out.append(pow(message, self.e, self.n).to_bytes(self.k, "big"))
        return b"".join(out)

    def keys(self):
        """A client key and IV for a handshake."""
        return self.random_bytes(AES_KEY_LENGTH), self.random_bytes(AES_KEY_LENGTH)

    def handshake(self, device_id, client_key, iv, session_id=None):
        message = HandshakeMessage(device_id, "android", "6.0", "fuzz", iv, client_key, 180000, 180000)
        return self.frame(Command.HANDSHAKE, self.rsa_encrypt(message.encode()), Flags.CRYPTO, session_id)

    def user_id(self):
        return f"hostile-{self.tag}-{self.rng.randrange(1 << 30)}"

    # -- whole frames -----------------------------------------------------------

    def templates(self):
        """Real client frames, as a device would send them before a handshake."""
        client_key, iv = self.keys()
        device = f"hostile-{self.tag}"
        bind = BindUserMessage(self.user_id(), None, "t").encode()
        return [
            self.handshake(device, client_key, iv),
            self.frame(Command.FAST_CONNECT, FastConnectMessage("0" * 32, device, 180000, 180000).encode()),
            self.frame(Command.BIND, bind),
            self.frame(Command.BIND, self.rsa_encrypt(bind), Flags.CRYPTO),
            self.frame(Command.UNBIND, bind),
            self.frame(Command.PUSH, b'{"content":"x"}', Flags.AUTO_ACK),
            self.frame(Command.ACK, b"", 0, self.rng.randrange(1, 1 << 20)),
            self.frame(Command.HEARTBEAT, b""),
            self.frame(Command.HTTP_PROXY, HttpRequestMessage(1, "http://127.0.0.1/", {"a": "b"}, b"q").encode()),
        ]

    def mutate(self, frame):
        """One to eight mutations: bit flips, interesting bytes, header rewrites, cuts."""
        data = bytearray(frame)
        rng = self.rng
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(7)
            at = rng.randrange(len(data)) if data else 0
            if op == 0 and data:
                data[at] ^= 1 << rng.randrange(8)
            elif op == 1 and data:
                data[at] = rng.choice(self.INTERESTING)
            elif op == 2 and len(data) >= 4:  # rewrite the length field
                length = rng.choice([0, 1, len(data) - 13, len(data), self.max_packet_size,
                                     self.max_packet_size + 1, -1, INT32_MAX])
                data[0:4] = struct.pack(">i", length)
            elif op == 3 and len(data) >= 5:  # another command
                data[4] = rng.randrange(256)
            elif op == 4 and len(data) >= 8:  # other flags
                data[7] = rng.randrange(256)
            elif op == 5:
                del data[rng.randint(0, len(data)):]
            elif op == 6 and data:
                piece = data[at:at + rng.randint(1, 16)]
                data[at:at] = piece
        return bytes(data)

    def oversize_header(self):
        length = self.rng.choice([
            self.max_packet_size + 1,
            self.rng.randint(self.max_packet_size + 1, INT32_MAX),
            INT32_MAX,
            -1,
            INT32_MIN,
            self.rng.randint(INT32_MIN, -1),
        ])
        cmd = self.rng.choice([Command.PUSH, Command.HANDSHAKE, Command.BIND, self.rng.randint(-128, 127)])
        return _HEADER.pack(length, cmd, 0, self.rng.randint(-128, 127), self.session_id(), 0)

    def zlib_bomb(self):
        """A small compressed body that inflates to, or past, the node's 1 MiB default cap."""
        return zlib.compress(bytes(self.rng.choice([1 << 20, (1 << 20) + 1, 3 << 20])), 9)

    def garbage_body(self):
        rng = self.rng
        shape = rng.randrange(6)
        if shape == 0:
            return self.random_bytes(rng.choice([1, 7, 16, 100, 1000, 4000]))
        if shape == 1:
            return BindUserMessage(self.user_id(), self.text(), self.text()).encode()
        if shape == 2:
            return FieldWriter().write_string(self.text(40)).write_int(rng.randint(INT32_MIN, INT32_MAX)).getvalue()
        if shape == 3:
            return zlib.compress(self.random_bytes(rng.randint(1, 200)))
        if shape == 4:
            return b"\x7f\xff" + struct.pack(">i", rng.choice([-1, INT32_MAX, 100]))
        return b""

    def session_frames(self, cipher, count):
        """
        What a handshaken hostile device sends: real commands with hostile
        bodies, mostly under C{cipher} (the right key or a wrong one).
        """
        rng = self.rng
        frames = []
        for _ in range(count):
            kind = rng.randrange(10)
            flags = Flags.CRYPTO
            if kind == 0:
                cmd, body = Command.BIND, BindUserMessage(self.user_id(), self.text(), self.text()).encode()
            elif kind == 1:
                cmd, body = Command.UNBIND, BindUserMessage(self.user_id()).encode()
            elif kind == 2:
                cmd, body = Command.PUSH, self.random_bytes(rng.randint(1, 300))
                flags |= rng.choice([0, Flags.AUTO_ACK, Flags.BIZ_ACK])
            elif kind == 3:
                frames.append(self.frame(Command.ACK, b"", 0, rng.randint(INT32_MIN, INT32_MAX)))
                continue
            elif kind == 4:
                frames.append(HEARTBEAT_BYTE * rng.randint(1, 50))
                continue
            elif kind == 5:
                cmd, body = Command.FAST_CONNECT, FastConnectMessage(
                    self.random_bytes(16).hex(), self.text(), 1000, 1000).encode()
            elif kind == 6:
                cmd = rng.choice([Command.BIND, Command.PUSH])
                frames.append(self.frame(cmd, cipher.encrypt(self.zlib_bomb()), flags | Flags.COMPRESS))
                continue
            elif kind == 7:
                cmd, body = rng.randint(-128, 127), self.garbage_body()
                flags = rng.randint(-128, 127)
            elif kind == 8:
                cmd, body = Command.HTTP_PROXY, HttpRequestMessage(
                    rng.randint(-128, 127), self.text(30), {"k": self.text()}, self.random_bytes(20)).encode()
            else:
                cmd, body = rng.choice([Command.BIND, Command.PUSH, Command.UNBIND]), self.garbage_body()
            if not body:
                frames.append(self.frame(cmd, b"", flags))
            elif flags & Flags.CRYPTO and rng.randrange(8):
                frames.append(self.frame(cmd, cipher.encrypt(body), flags))
            else:
                frames.append(self.frame(cmd, body, flags))  # CRYPTO promised, plaintext sent
        return frames

    def rsa_burn_frame(self, blocks):
        """A FAST_CONNECT the node must RSA-decrypt block by block, then refuse politely."""
        plain = FastConnectMessage(self.random_bytes(16).hex(), "hostile", 1000, 1000).encode()
        chunk = self.k - RSA_PADDING_OVERHEAD
        plain += bytes(max(0, blocks * chunk - len(plain)))
        return self.frame(Command.FAST_CONNECT, self.rsa_encrypt(plain), Flags.CRYPTO)

    def queue_fill_frame(self):
        """A FAST_CONNECT padded to the size limit, refused without a close (SESSION_EXPIRED)."""
        body = FastConnectMessage(self.random_bytes(16).hex(), "hostile", 1000, 1000).encode()
        return self.frame(Command.FAST_CONNECT, body + bytes(max(0, self.max_packet_size - len(body))))

    def gateway_frames(self):
        rng = self.rng
        victim = self.user_id()
        push = GatewayPushMessage(victim, 0, rng.randint(1, 2000), self.random_bytes(rng.randint(1, 100)))
        broadcast = GatewayPushMessage(None, 0, 1000, b"hostile-broadcast", None, (f"no-such-tag-{self.tag}",))
        choice = rng.randrange(4)
        if choice == 0:
            return [self.random_bytes(rng.choice([5, 13, 200, 3000]))]
        if choice == 1:
            return [self.oversize_header()]
        template = self.frame(Command.GATEWAY_PUSH, rng.choice([push, broadcast]).encode(),
                              rng.choice([0, Flags.AUTO_ACK, Flags.BIZ_ACK]))
        if choice == 2:
            return [template]
        return [self.mutate(template) for _ in range(rng.randint(1, 4))]


# -- sockets --------------------------------------------------------------------

def _sleep(clock, seconds):
    return task.deferLater(clock, max(0.0, seconds), lambda: None)


def _endpoint(reactor, host, port, timeout):
    if ":" in host:
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


class HostileConnection(Protocol):
    """
    The socket of one attack: writes what it is told, counts what comes
    back, and can wait -- always with a deadline -- for the node to close
    it or to send a packet.
    """

    def __init__(self, clock, keep_packets=False):
        self.clock = clock
        self.bytes_in = 0
        self.bytes_out = 0
        self.lost = False
        self.closing = False
        self._decoder = PacketDecoder(1 << 20) if keep_packets else None
        self._packets = []
        self._close_waiters = []
        self._packet_waiters = []

    def connectionLost(self, reason=None):
        self.lost = True
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(True)
        packet_waiters, self._packet_waiters = self._packet_waiters, []
        for waiter in packet_waiters:
            waiter.callback(None)

    def dataReceived(self, data):
        self.bytes_in += len(data)
        if self._decoder is None:
            return
        try:
            packets = self._decoder.feed(data)
        except FramingError:
            self._decoder = None
            return
        self._packets.extend(packets)
        while self._packets and self._packet_waiters:
            self._packet_waiters.pop(0).callback(self._packets.pop(0))

    def send(self, data):
        if not self.lost and not self.closing:
            self.transport.write(data)
            self.bytes_out += len(data)

    def wait_closed(self, timeout):
        """Fires True once the node closed us, False if it has not within C{timeout}."""
        if self.lost:
            return defer.succeed(True)
        waiter = defer.Deferred(lambda d: self._close_waiters.remove(d))
        self._close_waiters.append(waiter)
        return waiter.addTimeout(timeout, self.clock, onTimeoutCancel=lambda result, timeout: False)

    def next_packet(self, timeout, wanted=None):
        """The next packet (of command C{wanted}) within C{timeout}, else None."""
        deadline = self.clock.seconds() + timeout

        @defer.inlineCallbacks
        def wait():
            while True:
                left = deadline - self.clock.seconds()
                if self.lost or left <= 0:
                    return None
                if self._packets:
                    packet = self._packets.pop(0)
                else:
                    waiter = defer.Deferred(lambda d: self._packet_waiters.remove(d))
                    self._packet_waiters.append(waiter)
                    packet = yield waiter.addTimeout(left, self.clock, onTimeoutCancel=lambda r, t: None)
                    if packet is None:
                        return None
                if wanted is None or packet.cmd == wanted:
                    return packet

        return wait()

    def pause_reading(self):
        """Stop reading, with a tiny receive buffer, so what the node sends stays on the node."""
        try:
            self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        except (AttributeError, OSError):
            pass
        self.transport.pauseProducing()

    @defer.inlineCallbacks
    def finish(self, how="fin"):
        """Close (FIN, or RST with "rst") and wait, boundedly, for the loss."""
        if self.lost:
            return
        self.closing = True
        if how == "rst":
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()
        closed = yield self.wait_closed(2.0)
        if not closed and not self.lost:
            self.transport.abortConnection()
            yield self.wait_closed(2.0)


class AttackStats:
    """Counters of one attack over a run."""

    __slots__ = ("attack", "launched", "connect_failed", "closed_by_node", "closed_by_fuzzer",
                 "handshakes", "handshakes_failed", "bytes_out", "bytes_in", "reaped")

    def __init__(self, attack):
        self.attack = attack
        self.launched = 0
        self.connect_failed = 0
        self.closed_by_node = 0
        self.closed_by_fuzzer = 0
        self.handshakes = 0
        self.handshakes_failed = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.reaped = 0

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__ if name != "attack"}


class _Attacker:
    """Runs one L{AttackPlan} on its own connection."""

    __slots__ = ("storm", "config", "clock", "plan", "stats", "rng", "maker", "conn")

    def __init__(self, storm, plan):
        self.storm = storm
        self.config = storm.config
        self.clock = storm.reactor
        self.plan = plan
        self.stats = storm.stats[plan.attack]
        self.rng = random.Random(f"mpush-fuzz:{plan.seed}")
        self.maker = FrameMaker(self.rng, self.config.public_key, self.config.max_packet_size,
                                tag=f"{self.config.seed}-{plan.index}")
        self.conn = None

    @defer.inlineCallbacks
    def run(self):
        attack = self.plan.attack
        self.stats.launched += 1
        port = self.config.gateway_port if attack is Attack.GATEWAY else self.config.port
        keep = attack in (Attack.GARBAGE_AFTER_HANDSHAKE, Attack.WRONG_KEY)
        self.conn = HostileConnection(self.clock, keep_packets=keep)
        try:
            yield connectProtocol(_endpoint(self.storm.reactor, self.config.host, port, 5), self.conn)
        except Exception:
            self.stats.connect_failed += 1
            return
        try:
            yield getattr(self, "_" + attack.name.lower())()
        finally:
            if self.conn.lost and not self.conn.closing:
                self.stats.closed_by_node += 1
            else:
                self.stats.closed_by_fuzzer += 1
                yield self.conn.finish(self.rng.choice(["fin", "rst"]))
            self.stats.bytes_out += self.conn.bytes_out
            self.stats.bytes_in += self.conn.bytes_in

    def _end(self):
        """Wait a little for the node to close us, or leave it to run()'s finish."""
        return self.conn.wait_closed(self.rng.uniform(0.05, self.config.hold))

    def _pause(self):
        return _sleep(self.clock, self.rng.uniform(0, 0.05))

    @defer.inlineCallbacks
    def _random_bytes(self):
        for _ in range(self.rng.randint(1, 4)):
            size = self.rng.choice([1, 2, 13, 100, 1000, 8000, 30000])
            data = self.maker.random_bytes(size)
            if self.rng.randrange(4) == 0:
                data = HEARTBEAT_BYTE * self.rng.randint(1, 20) + data
            self.conn.send(data)
            yield self._pause()
        yield self._end()

    @defer.inlineCallbacks
    def _truncated(self):
        frame = self.rng.choice([t for t in self.maker.templates() if len(t) > 1])
        self.conn.send(frame[:self.rng.randint(1, len(frame) - 1)])
        yield self._end()

    def _must_close(self):
        """The node has to close this connection: give it the reply timeout to do so."""
        return self.conn.wait_closed(self.config.reply_timeout)

    @defer.inlineCallbacks
    def _oversize(self):
        data = self.maker.oversize_header()
        self.conn.send(data + self.maker.random_bytes(self.rng.choice([0, 10, 5000])))
        yield self._must_close()

    @defer.inlineCallbacks
    def _mutated(self):
        templates = self.maker.templates()
        frames = [self.maker.mutate(self.rng.choice(templates)) for _ in range(self.rng.randint(1, 5))]
        if self.rng.randrange(2):
            self.conn.send(b"".join(frames))
        else:
            for frame in frames:
                self.conn.send(frame)
                yield self._pause()
        yield self._end()

    @defer.inlineCallbacks
    def _handshake(self):
        """A real handshake; the session cipher, or None if the node refused."""
        client_key, iv = self.maker.keys()
        self.conn.send(self.maker.handshake(f"hostile-{self.maker.tag}", client_key, iv))
        packet = yield self.conn.next_packet(self.config.reply_timeout, wanted=Command.HANDSHAKE)
        if packet is None:
            self.stats.handshakes_failed += 1
            return None
        try:
            body = decode_body(packet, AesCipher(client_key, iv))
            ok = HandshakeOkMessage.decode(body)
            cipher = AesCipher(mix_key(client_key, ok.server_key), iv)
        except ProtocolError:
            self.stats.handshakes_failed += 1
            return None
        self.stats.handshakes += 1
        return cipher

    @defer.inlineCallbacks
    def _garbage_after_handshake(self):
        cipher = yield self._handshake()
        if cipher is None:
            return
        yield self._session_garbage(cipher)

    @defer.inlineCallbacks
    def _wrong_key(self):
        cipher = yield self._handshake()
        if cipher is None:
            return
        wrong = AesCipher(self.maker.random_bytes(AES_KEY_LENGTH), cipher.iv)
        # At least one frame the node must decrypt; then whatever comes.
        first = self.maker.frame(Command.BIND, wrong.encrypt(BindUserMessage(self.maker.user_id()).encode()),
                                 Flags.CRYPTO)
        yield self._session_garbage(wrong, first, must_close=True)

    @defer.inlineCallbacks
    def _session_garbage(self, cipher, *first, must_close=False):
        frames = list(first) + self.maker.session_frames(cipher, self.rng.randint(1, 20))
        if self.rng.randrange(2):
            self.conn.send(b"".join(frames))
        else:
            for frame in frames:
                self.conn.send(frame)
                yield self._pause()
        yield self._must_close() if must_close else self._end()

    @defer.inlineCallbacks
    def _heartbeat_flood(self):
        yield self._flood()
        yield self._end()

    @defer.inlineCallbacks
    def _flood(self):
        left = self.config.flood_bytes
        while left > 0 and not self.conn.lost:
            size = min(left, self.rng.choice([1, 512, 4096, 16384]))
            if self.rng.randrange(8) == 0:
                chunk = self.maker.frame(Command.HEARTBEAT) * max(1, size // 13)
            else:
                chunk = HEARTBEAT_BYTE * size
            self.conn.send(chunk)
            left -= len(chunk)
            yield _sleep(self.clock, 0)

    @defer.inlineCallbacks
    def _half_open(self):
        choice = self.rng.randrange(3)
        if choice == 1:
            self.conn.send(self.rng.choice(self.maker.templates())[:self.rng.randint(1, 12)])
        elif choice == 2:
            frame = self.maker.frame(Command.BIND, self.maker.random_bytes(200))
            self.conn.send(frame[:13 + self.rng.randint(0, 100)])
        reaped = yield self.conn.wait_closed(self.config.half_open_hold)
        if reaped:
            self.stats.reaped += 1

    @defer.inlineCallbacks
    def _pipeline(self):
        rng = self.rng
        count = rng.choice([100, 500, 1100, 2000])
        kind = rng.randrange(3)
        if kind == 0:
            unit = self.maker.frame(Command.ACK, b"", 0, rng.randrange(1 << 30))
        elif kind == 1:
            unit = self.maker.frame(Command.HEARTBEAT)
        else:
            unit = self.maker.frame(rng.choice([Command.LOGIN, Command.PAUSE, Command.RESUME, 99]), b"x")
        self.conn.send(unit * count)
        yield self._end()

    @defer.inlineCallbacks
    def _gateway(self):
        for frame in self.maker.gateway_frames():
            self.conn.send(frame)
            yield self._pause()
        yield self._end()

    @defer.inlineCallbacks
    def _rsa_burn(self):
        blocks = max(1, (self.config.max_packet_size // self.maker.k))
        frame = self.maker.rsa_burn_frame(blocks)
        self.conn.send(frame * self.rng.randint(8, 32))
        yield self.conn.wait_closed(self.config.hold)

    @defer.inlineCallbacks
    def _queue_fill(self):
        # Just under the node's 1024-packet queue limit, so it keeps them all.
        self.conn.send(self.maker.queue_fill_frame() * self.rng.randint(900, 1000))
        yield self.conn.wait_closed(self.config.hold)

    @defer.inlineCallbacks
    def _silent_flood(self):
        self.conn.pause_reading()
        yield self._flood()
        yield self.conn.wait_closed(self.config.hold)


class _Storm:
    """Launches the hostile connections of a run, bounded in count, time and concurrency."""

    def __init__(self, reactor, config):
        self.reactor = reactor
        self.config = config
        self.stats = {attack: AttackStats(attack) for attack in config.attacks}
        self.plans = plan_attacks(config.seed, config.connections, config.attacks)
        self.skipped = 0
        self.errors = []

    @defer.inlineCallbacks
    def run(self):
        config = self.config
        clock = self.reactor
        semaphore = defer.DeferredSemaphore(config.concurrency)
        interval = config.duration / config.connections
        start = clock.seconds()
        running = []
        for plan in self.plans:
            yield _sleep(clock, start + plan.index * interval - clock.seconds())
            yield semaphore.acquire()
            if clock.seconds() - start > config.duration:
                semaphore.release()
                self.skipped = len(self.plans) - plan.index
                break
            attacker = _Attacker(self, plan)
            # A hard stop per connection, should an attack ever forget one.
            limit = max(config.hold, config.half_open_hold) + config.reply_timeout + 10
            done = attacker.run().addTimeout(limit, clock)
            done.addErrback(self._attack_failed, plan, attacker)
            done.addBoth(lambda _: semaphore.release())
            running.append(done)
        yield defer.DeferredList(running)

    def _attack_failed(self, failure, plan, attacker):
        self.errors.append(f"{plan.attack.value} #{plan.index} (seed {plan.seed}): {failure.getErrorMessage()}")
        log.failure("fuzzer attack {attack} #{index} failed", failure, attack=plan.attack.value, index=plan.index)
        if attacker.conn is not None and attacker.conn.transport is not None and not attacker.conn.lost:
            attacker.conn.transport.abortConnection()


# -- honest devices ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HonestReport:
    """What the honest devices saw."""

    clients: int
    pushes_sent: int
    pushes_acked: int
    push_statuses: dict
    received: int
    missing: int
    duplicates: int
    misdelivered: int
    foreign: int
    pings_ok: int
    pings_failed: int
    max_ping_rtt: float
    unexpected_closes: tuple


class _HonestFleet:
    """
    Real clients bound to users of their own, pushed to with AUTO_ACK through
    the gateway and pinged, all the time the storm runs.
    """

    def __init__(self, reactor, config):
        self.reactor = reactor
        self.config = config
        self.clients = []
        self.users = [f"honest-{config.seed}-{i}" for i in range(config.honest)]
        self.pusher = None
        self.expected = {}       # content -> user
        self.received = {}       # content -> [users]
        self.foreign = 0
        self.statuses = {}
        self.acked = 0
        self.sent = 0
        self.pings_ok = 0
        self.pings_failed = 0
        self.max_rtt = 0.0
        self.closes = []
        self._in_flight = set()
        self._pinging = set()
        self._stopping = False
        self._loops = []

    @defer.inlineCallbacks
    def start(self):
        config = self.config
        self.pusher = PushClient(self.reactor, gateway=(config.host, config.gateway_port),
                                 timeout=config.reply_timeout, max_packet_size=None)
        for user in self.users:
            client_config = ClientConfig(
                host=config.host, port=config.port, public_key=config.public_key,
                device_id=f"device-of-{user}", user_id=user,
                handshake_timeout=config.reply_timeout, bind_timeout=config.reply_timeout,
            )

            def prepare(protocol, user=user):
                protocol.on_push = lambda content, sid, flags, user=user: self._pushed(user, content)
                protocol.on_close = lambda reason, user=user: self._closed(user, reason)

            client = yield connect_client(client_config, self.reactor, prepare=prepare)
            self.clients.append(client)

    def _pushed(self, user, content):
        if content in self.expected:
            self.received.setdefault(content, []).append(user)
        else:
            self.foreign += 1

    def _closed(self, user, reason):
        if not self._stopping:
            self.closes.append(f"{user}: {reason.getErrorMessage() if reason is not None else 'closed'}")

    def start_traffic(self):
        push_loop = task.LoopingCall(self._push_one)
        push_loop.clock = self.reactor
        ping_loop = task.LoopingCall(self._ping_all)
        ping_loop.clock = self.reactor
        self._loops = [push_loop, ping_loop]
        push_loop.start(1.0 / self.config.push_rate)
        ping_loop.start(self.config.ping_interval)

    def _push_one(self):
        user = self.users[self.sent % len(self.users)]
        content = f"honest:{self.config.seed}:{self.sent}".encode()
        self.expected[content] = user
        self.sent += 1
        pushed = self.pusher.push(user, content, ack=AckModel.AUTO_ACK)
        pushed.addCallbacks(self._push_results, self._push_failed)
        self._in_flight.add(pushed)
        pushed.addBoth(lambda _: self._in_flight.discard(pushed))

    def _push_results(self, results):
        for result in results:
            self.statuses[result.status.value] = self.statuses.get(result.status.value, 0) + 1
            if result.status is PushStatus.SUCCESS:
                self.acked += 1

    def _push_failed(self, failure):
        name = f"error: {failure.type.__name__}"
        self.statuses[name] = self.statuses.get(name, 0) + 1

    def _ping_all(self):
        for client in self.clients:
            if client in self._pinging:
                continue
            self._pinging.add(client)
            started = self.reactor.seconds()
            pinged = client.ping(timeout=self.config.reply_timeout)
            pinged.addCallbacks(self._pong, self._no_pong, callbackArgs=(started,))
            pinged.addBoth(lambda _, client=client: self._pinging.discard(client))

    def _pong(self, _, started):
        self.pings_ok += 1
        self.max_rtt = max(self.max_rtt, self.reactor.seconds() - started)

    def _no_pong(self, failure):
        self.pings_failed += 1

    @defer.inlineCallbacks
    def stop_traffic(self):
        """Stop pushing and pinging; wait for every push result (each is bounded)."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        yield defer.DeferredList(list(self._in_flight))
        # A push acked is a push received; give the last deliveries a moment
        # to be counted, boundedly, then let the outstanding pings finish.
        deadline = self.reactor.seconds() + self.config.reply_timeout
        while self.reactor.seconds() < deadline and (
            len(self.received) < len(self.expected) or self._pinging
        ):
            yield _sleep(self.reactor, 0.05)

    @defer.inlineCallbacks
    def close(self):
        self._stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for client in self.clients:
            yield client.close()
        if self.pusher is not None:
            yield self.pusher.close()

    def report(self):
        missing = sum(1 for content in self.expected if content not in self.received)
        duplicates = sum(len(users) - 1 for users in self.received.values() if len(users) > 1)
        wrong = sum(1 for content, users in self.received.items() if any(u != self.expected[content] for u in users))
        return HonestReport(
            clients=len(self.clients),
            pushes_sent=self.sent,
            pushes_acked=self.acked,
            push_statuses=dict(sorted(self.statuses.items())),
            received=len(self.received),
            missing=missing,
            duplicates=duplicates,
            misdelivered=wrong,
            foreign=self.foreign,
            pings_ok=self.pings_ok,
            pings_failed=self.pings_failed,
            max_ping_rtt=round(self.max_rtt, 3),
            unexpected_closes=tuple(self.closes),
        )


# -- looking at the node ------------------------------------------------------------

def read_rss_kb(pid):
    """VmRSS of a process in kB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The state letter follows the parenthesised command name; Z is a zombie.
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class _AdminQuery(Protocol):
    def __init__(self, command):
        self.command = command
        self.data = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.command.encode() + b"\r\nquit\r\n")

    def dataReceived(self, data):
        self.data += data
        if len(self.data) > 1 << 16:
            self.transport.abortConnection()

    def connectionLost(self, reason=None):
        self.done.callback(self.data.decode("utf-8", "replace"))


@defer.inlineCallbacks
def admin_count_connections(reactor, host, admin_port, timeout=10.0):
    """
    C{count conn} on a node's admin console: its client connections.

    @raise ValueError: the console did not answer with a number.
    """
    query = _AdminQuery("count conn")
    yield connectProtocol(_endpoint(reactor, check_loopback(host), admin_port, timeout), query)
    text = yield query.done.addTimeout(timeout, reactor)
    replies = text.split("\r\n\r\n")
    # greeting (two replies), the count, the goodbye.
    for reply, following in zip(replies, replies[1:]):
        if following.startswith("have a good day") and reply.strip().isdigit():
            return int(reply.strip())
    raise ValueError(f"admin console gave no connection count: {text[-200:]!r}")


_TRACEBACK = re.compile(r"^.*(Traceback \(most recent call last\)|Unhandled Error|Unhandled error in Deferred).*$", re.M)


def scan_node_log(text):
    """
    The lines of a node's log that report an unexpected exception: what a
    fuzzer must never provoke, even when the node stays up.
    """
    return [match.group(0).strip() for match in _TRACEBACK.finditer(text)]


# -- the run -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FuzzReport:
    """The outcome of one run; C{problems} is empty when the node came through."""

    seed: int
    attacks: dict
    skipped: int
    honest: HonestReport
    connections_before: int | None
    connections_after: int | None
    rss_baseline_kb: int | None
    rss_peak_kb: int | None
    rss_after_kb: int | None
    node_alive: bool | None
    fuzzer_errors: tuple
    problems: tuple = field(default=())

    @property
    def ok(self):
        return not self.problems

    def summary(self):
        lines = [f"mpush fuzz seed={self.seed}: {'OK' if self.ok else 'PROBLEMS'}"]
        for name, stats in self.attacks.items():
            lines.append(f"  {name:<24} " + " ".join(f"{k}={v}" for k, v in stats.items()))
        if self.skipped:
            lines.append(f"  not launched before the deadline: {self.skipped}")
        h = self.honest
        lines.append(
            f"  honest: clients={h.clients} pushes={h.pushes_sent} acked={h.pushes_acked} "
            f"received={h.received} missing={h.missing} duplicates={h.duplicates} "
            f"foreign={h.foreign} pings={h.pings_ok} lost-pings={h.pings_failed} "
            f"max-rtt={h.max_ping_rtt}s statuses={h.push_statuses}"
        )
        lines.append(
            f"  node: alive={self.node_alive} connections {self.connections_before} -> "
            f"{self.connections_after}; rss kB baseline={self.rss_baseline_kb} "
            f"peak={self.rss_peak_kb} after={self.rss_after_kb}"
        )
        lines.extend(f"  PROBLEM: {problem}" for problem in self.problems)
        return "\n".join(lines)


def judge(config, honest, after, baseline, rss_after, alive, errors=()):
    """
    The problems a run shows, as sentences; empty when the node came through.

    @param honest: the L{HonestReport}.
    @param after: the node's connection count after the storm (None: not known).
    @param baseline: its RSS (kB) before the storm; C{rss_after} after it.
    @param alive: whether its process is alive (None: not watched).
    @param errors: the fuzzer's own failures (they make the run invalid).
    """
    found = []
    if alive is False:
        found.append(f"node process {config.pid} is gone")
    if honest.clients != config.honest:
        found.append(f"only {honest.clients} of {config.honest} honest clients connected")
    if honest.pushes_acked != honest.pushes_sent:
        found.append(f"{honest.pushes_sent - honest.pushes_acked} of {honest.pushes_sent} honest pushes "
                     f"not acknowledged: {honest.push_statuses}")
    if honest.missing:
        found.append(f"{honest.missing} honest pushes never reached their device")
    if honest.duplicates:
        found.append(f"{honest.duplicates} honest pushes delivered more than once")
    if honest.misdelivered:
        found.append(f"{honest.misdelivered} honest pushes reached the wrong device")
    if honest.pings_failed:
        found.append(f"{honest.pings_failed} honest pings unanswered")
    for close in honest.unexpected_closes:
        found.append(f"honest connection dropped during the storm: {close}")
    if config.admin_port is not None and after is None:
        found.append("the node's admin console did not answer after the storm")
    elif after is not None and after != honest.clients:
        found.append(f"node counts {after} connections after the storm, expected {honest.clients} (the honest ones)")
    if baseline is not None and rss_after is not None and rss_after > baseline + config.rss_margin_kb:
        found.append(f"node RSS {rss_after} kB after the storm, baseline {baseline} kB "
                     f"(allowed +{config.rss_margin_kb} kB)")
    found.extend(f"fuzzer error: {error}" for error in errors)
    return tuple(found)


@defer.inlineCallbacks
def _settle(reactor, config, honest_count):
    """
    Poll the node until its connection count is back to the honest clients
    and its RSS within the margin, or C{settle} seconds pass.
    """
    deadline = reactor.seconds() + config.settle
    count = rss = None
    while True:
        if config.admin_port is not None:
            try:
                count = yield admin_count_connections(reactor, config.host, config.admin_port)
            except Exception as error:
                log.warn("admin console did not answer: {why}", why=error)
                count = None
        rss = read_rss_kb(config.pid) if config.pid is not None else None
        count_ok = config.admin_port is None or count == honest_count
        if count_ok or reactor.seconds() >= deadline:
            return count, rss
        yield _sleep(reactor, 0.25)


@defer.inlineCallbacks
def run_fuzz(reactor, config):
    """
    One whole run against the node C{config} names.

    @return: a Deferred firing a L{FuzzReport}.  It fails only if the honest
        clients cannot connect at all (then there is nothing to compare).
    """
    fleet = _HonestFleet(reactor, config)
    peak = [None]

    def sample_rss():
        if config.pid is not None:
            value = read_rss_kb(config.pid)
            if value is not None and (peak[0] is None or value > peak[0]):
                peak[0] = value

    sampler = task.LoopingCall(sample_rss)
    sampler.clock = reactor
    try:
        yield fleet.start()
        before = baseline = None
        if config.admin_port is not None:
            before = yield admin_count_connections(reactor, config.host, config.admin_port)
        if config.pid is not None:
            baseline = read_rss_kb(config.pid)
        sampler.start(0.05)
        fleet.start_traffic()
        storm = _Storm(reactor, config)
        yield storm.run()
        yield fleet.stop_traffic()
        after, rss_after = yield _settle(reactor, config, len(fleet.clients))
        alive = process_alive(config.pid) if config.pid is not None else None
    finally:
        if sampler.running:
            sampler.stop()
        yield fleet.close()
    honest = fleet.report()
    problems = judge(config, honest, after, baseline, rss_after, alive, storm.errors)
    return FuzzReport(
        seed=config.seed,
        attacks={attack.value: stats.as_dict() for attack, stats in storm.stats.items()},
        skipped=storm.skipped,
        honest=honest,
        connections_before=before,
        connections_after=after,
        rss_baseline_kb=baseline,
        rss_peak_kb=peak[0],
        rss_after_kb=rss_after,
        node_alive=alive,
        fuzzer_errors=tuple(storm.errors),
        problems=problems,
    )


def plan_digest(config):
    """
    A short hash of the first frames every planned connection would send:
    equal for equal seeds, so two runs can be shown to be the same storm.
    """
    digest = hashlib.sha256()
    for plan in plan_attacks(config.seed, config.connections, config.attacks):
        maker = FrameMaker(random.Random(f"mpush-fuzz:{plan.seed}"), config.public_key,
                           config.max_packet_size, tag=f"{config.seed}-{plan.index}")
        digest.update(plan.attack.value.encode())
        for frame in maker.templates():
            digest.update(frame)
    return digest.hexdigest()[:16]

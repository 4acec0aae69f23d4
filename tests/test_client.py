"""
Tests for mpush.client: the client protocol over StringTransport on a fake
clock, with the server side played by the sans-I/O protocol core, and the
Java client's own bytes (shared vectors) as the reference.
"""

from __future__ import annotations

import os
import stat
import zlib

from twisted.internet import defer, error, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

import mpush.client.protocol as client_protocol
from mpush.client import (
    BadServerReply,
    BindTimeout,
    ClientConfig,
    ClientConfigError,
    ClientState,
    ConnectFailed,
    ConnectionClosed,
    HandshakeFailed,
    HandshakeTimeout,
    HeartbeatTimeout,
    MPushClientProtocol,
    NotEstablished,
    PingTimeout,
    PushTimeout,
    ReceivedPush,
    RequestTimeout,
    ServerError,
    SessionFile,
    SessionFileError,
    connect_client,
    java_packet_ids,
)
from mpush.protocol.body import decode_body, make_packet, make_raw_packet
from mpush.protocol.crypto import (
    MPUSH_DEMO_PRIVATE_KEY,
    MPUSH_DEMO_PUBLIC_KEY,
    AesCipher,
    RsaPrivateKey,
    mix_key,
)
from mpush.protocol.errors import ErrorCode
from mpush.protocol.messages import (
    BindUserMessage,
    ErrorMessage,
    FastConnectMessage,
    FastConnectOkMessage,
    HandshakeMessage,
    HandshakeOkMessage,
    KickUserMessage,
    OkMessage,
    PushMessage,
)
from mpush.protocol.packet import HEARTBEAT_BYTE, Command, Packet, PacketDecoder, encode_packet
from mpush.protocol.session import ClientSession, decode_client_session, encode_client_session
from tests.vectors import load_vectors

#: A wall-clock start for the fake clock so expire times look real.
EPOCH = 1_790_000_000.0
SERVER_KEY = bytes(range(0x10, 0x20))

_generated_key: list[RsaPrivateKey] = []


def server_private_key() -> RsaPrivateKey:
    """One generated key per test run (generation is the slow part)."""
    if not _generated_key:
        _generated_key.append(RsaPrivateKey.generate())
    return _generated_key[0]


def make_config(**overrides) -> ClientConfig:
    values = dict(
        host="127.0.0.1",
        port=3000,
        public_key=server_private_key().public_key().to_x509_base64(),
        device_id="dev-1",
    )
    values.update(overrides)
    return ClientConfig(**values)


def vector(vector_id: str) -> dict:
    for item in load_vectors()["vectors"]:
        if item["id"] == vector_id:
            return item
    raise AssertionError(f"vector {vector_id} missing from the shared vectors file")


def signed_list(data: bytes) -> str:
    return "|".join(str(b - 256 if b > 127 else b) for b in data)


class FakeServer:
    """
    The server half of a connection, built from the protocol core only.
    """

    def __init__(self, transport: StringTransport, private_key: RsaPrivateKey) -> None:
        self.transport = transport
        self.private_key = private_key
        self.decoder = PacketDecoder(max_packet_size=None)
        self.cipher: AesCipher | None = None
        self.raw = b""

    def received(self) -> list[Packet]:
        """Packets the client wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        self.raw = data
        return self.decoder.feed(data)

    def read_handshake(self) -> tuple[Packet, HandshakeMessage]:
        [packet] = self.received()
        assert packet.cmd == Command.HANDSHAKE, packet
        message = HandshakeMessage.decode(decode_body(packet, cipher=self.private_key))
        return packet, message

    def handshake_ok_frame(self, packet, message, server_key=SERVER_KEY, heartbeat=180000,
                           session_id="0123456789abcdef0123456789abcdef",
                           expire_time=int(EPOCH * 1000) + 86400000) -> bytes:
        hello_cipher = AesCipher(message.client_key, message.iv)
        reply = make_packet(
            Command.HANDSHAKE,
            HandshakeOkMessage(server_key, heartbeat, session_id, expire_time),
            session_id=packet.session_id,
            cipher=hello_cipher,
        )
        if server_key is not None and len(server_key) == 16:
            self.cipher = AesCipher(mix_key(message.client_key, server_key), message.iv)
        return encode_packet(reply)

    def send(self, cmd, message, session_id=0, flags=0, raw=False) -> bytes:
        if raw:
            packet = make_raw_packet(cmd, message, session_id=session_id, flags=flags)
        else:
            packet = make_packet(cmd, message, session_id=session_id, cipher=self.cipher, flags=flags)
        return encode_packet(packet)


class ClientTestCase(unittest.SynchronousTestCase):
    """
    A client protocol on a StringTransport and a fake clock.
    """

    private_key: RsaPrivateKey | None = None

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(EPOCH)
        self.tmp = self.mktemp()
        os.makedirs(self.tmp)

    def connect(self, config=None, packet_ids=None):
        config = config or make_config()
        proto = MPushClientProtocol(config, clock=self.clock, packet_ids=packet_ids)
        self.events: list[tuple] = []
        proto.on_push = lambda *args: self.events.append(("push",) + args)
        proto.on_kick = lambda *args: self.events.append(("kick",) + args)
        proto.on_error = lambda exc: self.events.append(("error", exc))
        proto.on_close = lambda reason: self.events.append(("close", reason))
        transport = StringTransport()
        proto.makeConnection(transport)
        server = FakeServer(transport, self.private_key or server_private_key())
        return proto, transport, server

    def establish(self, **config_overrides):
        proto, transport, server = self.connect(make_config(**config_overrides))
        packet, message = server.read_handshake()
        proto.dataReceived(server.handshake_ok_frame(packet, message))
        self.assertIs(proto.state, ClientState.ESTABLISHED)
        return proto, transport, server

    def lose(self, proto, why=None):
        proto.connectionLost(Failure(why or error.ConnectionDone()))


class HandshakeTests(ClientTestCase):

    def test_handshake_request(self):
        """
        On connect without a session the client sends HANDSHAKE, packet id 1,
        flags CRYPTO, one RSA block holding the configured identity.
        """
        proto, transport, server = self.connect(make_config(
            os_version="6.0", client_version="2.0", min_heartbeat=200000, max_heartbeat=210000,
        ))
        packet, message = server.read_handshake()
        self.assertEqual(server.raw[:13], bytes.fromhex("00000080 02 0000 01 00000001 00"))
        self.assertEqual(len(packet.body), 128)
        self.assertEqual(
            (message.device_id, message.os_name, message.os_version, message.client_version,
             message.min_heartbeat, message.max_heartbeat, message.timestamp),
            ("dev-1", "android", "6.0", "2.0", 200000, 210000, 0),
        )
        self.assertEqual((len(message.iv), len(message.client_key)), (16, 16))
        self.assertIs(proto.state, ClientState.HANDSHAKING)

    def test_handshake_ok(self):
        """
        HandshakeOk under AES(clientKey, iv) establishes the session; the
        next request is encrypted with AES(clientKey XOR serverKey, iv).
        """
        proto, transport, server = self.connect()
        established = proto.when_established()
        packet, message = server.read_handshake()
        proto.dataReceived(server.handshake_ok_frame(packet, message, heartbeat=170000))
        self.assertIs(self.successResultOf(established), proto)
        self.assertEqual(proto.heartbeat, 170000)
        self.assertEqual(proto.session_id, "0123456789abcdef0123456789abcdef")
        self.assertFalse(proto.resumed)
        self.assertEqual(proto.handshake_ok_count, 1)
        self.assertEqual(proto.fast_connect_errors, [])

        proto.bind("u1")
        [bind] = server.received()
        self.assertEqual((bind.cmd, bind.session_id, bind.flags), (Command.BIND, 2, 1))
        session_cipher = AesCipher(mix_key(message.client_key, SERVER_KEY), message.iv)
        self.assertEqual(
            BindUserMessage.decode(decode_body(bind, cipher=session_cipher)),
            BindUserMessage("u1", None, None),
        )

    def test_compressed_handshake(self):
        """
        A HANDSHAKE body above compress_limit is zlib-compressed before RSA
        (flags 0x03), as the Java client does.
        """
        proto, transport, server = self.connect(make_config(device_id="d" * 1500))
        [packet] = server.received()
        self.assertEqual(packet.flags, 0x03)
        plain = zlib.decompress(server.private_key.decrypt(packet.body))
        self.assertEqual(HandshakeMessage.decode(plain).device_id, "d" * 1500)

    def test_handshake_timeout(self):
        """
        No reply within handshake_timeout: HandshakeTimeout and a close.
        """
        proto, transport, server = self.connect()
        established = proto.when_established()
        self.clock.advance(2.9)
        self.assertNoResult(established)
        self.clock.advance(0.2)
        self.failureResultOf(established, HandshakeTimeout)
        self.assertTrue(transport.disconnecting)
        self.assertIsInstance(self.events[0][1], HandshakeTimeout)

    def test_handshake_error_is_fatal(self):
        """
        ERROR cmd 2 (not 102) -> HandshakeFailed carrying the message; the
        client closes and does not handshake again.
        """
        proto, transport, server = self.connect()
        established = proto.when_established()
        packet, _ = server.read_handshake()
        error_message = ErrorMessage(Command.HANDSHAKE, 0, "Param invalid")
        proto.dataReceived(server.send(Command.ERROR, error_message, packet.session_id, raw=True))
        failure = self.failureResultOf(established, HandshakeFailed)
        self.assertEqual(failure.value.error_message, error_message)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(server.received(), [])

    def test_repeat_handshake_error_ignored(self):
        """
        ERROR cmd 2 code 102 is ignored, like Java; the handshake timeout
        still bounds the wait.
        """
        proto, transport, server = self.connect()
        established = proto.when_established()
        packet, _ = server.read_handshake()
        proto.dataReceived(server.send(
            Command.ERROR, ErrorMessage.from_code(Command.HANDSHAKE, ErrorCode.REPEAT_HANDSHAKE),
            packet.session_id, raw=True,
        ))
        self.assertNoResult(established)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(3)
        self.failureResultOf(established, HandshakeTimeout)

    def test_bad_server_key(self):
        """
        A server key that is not 16 bytes is refused (Java reconnects).
        """
        for server_key in (bytes(15), None):
            proto, transport, server = self.connect()
            established = proto.when_established()
            packet, message = server.read_handshake()
            proto.dataReceived(server.handshake_ok_frame(packet, message, server_key=server_key))
            failure = self.failureResultOf(established, BadServerReply)
            self.assertIn("server key has", str(failure.value))
            self.assertTrue(transport.disconnecting)

    def test_zero_heartbeat(self):
        """
        A HandshakeOk heartbeat <= 0 breaks spec 18.4: refused.
        """
        proto, transport, server = self.connect()
        established = proto.when_established()
        packet, message = server.read_handshake()
        proto.dataReceived(server.handshake_ok_frame(packet, message, heartbeat=0))
        self.failureResultOf(established, BadServerReply)

    def test_undecodable_handshake_ok(self):
        """
        A HandshakeOk the client cannot decrypt -> BadServerReply, closed.
        """
        proto, transport, server = self.connect()
        established = proto.when_established()
        packet, _ = server.read_handshake()
        garbage = encode_packet(Packet(Command.HANDSHAKE, packet.session_id, 1, bytes(range(32))))
        proto.dataReceived(garbage)
        failure = self.failureResultOf(established, BadServerReply)
        self.assertIn("HANDSHAKE", str(failure.value))
        self.assertTrue(transport.disconnecting)

    def test_negative_frame_length(self):
        """
        A negative length from the server is a framing error -> closed.
        """
        proto, transport, server = self.connect()
        established = proto.when_established()
        proto.dataReceived(bytes.fromhex("ffffffff 0b 0000 00 00000001 00"))
        self.failureResultOf(established, BadServerReply)
        self.assertTrue(transport.disconnecting)

    def test_closed_before_reply(self):
        """
        The server closing before answering -> ConnectionClosed, no hang.
        """
        proto, transport, server = self.connect()
        established = proto.when_established()
        self.lose(proto, error.ConnectionLost("gone"))
        self.failureResultOf(established, ConnectionClosed)
        self.assertIs(proto.state, ClientState.CLOSED)
        self.assertEqual(self.events[-1][0], "close")
        # Later callers learn the same outcome at once.
        self.failureResultOf(proto.when_established(), ConnectionClosed)

    def test_unexpected_fast_connect_ok(self):
        """
        FastConnectOk while handshaking is a protocol violation.
        """
        proto, transport, server = self.connect()
        established = proto.when_established()
        packet, _ = server.read_handshake()
        proto.dataReceived(server.send(Command.FAST_CONNECT, FastConnectOkMessage(1000),
                                       packet.session_id, raw=True))
        self.failureResultOf(established, BadServerReply)


class SessionFileTests(ClientTestCase):

    def session_path(self):
        return os.path.join(self.tmp, "token.dat")

    def test_handshake_writes_java_format(self):
        """
        After HandshakeOk the session file holds
        C{sessionId,expireTime,KEY,IV} with signed decimals, mode 0600.
        """
        path = self.session_path()
        proto, transport, server = self.connect(make_config(session_file=path))
        packet, message = server.read_handshake()
        expire = int(EPOCH * 1000) + 5000
        proto.dataReceived(server.handshake_ok_frame(packet, message, session_id="abc", expire_time=expire))
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        session_key = mix_key(message.client_key, SERVER_KEY)
        self.assertEqual(text, f"abc,{expire},{signed_list(session_key)},{signed_list(message.iv)}")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_no_session_id_not_saved(self):
        """
        A HandshakeOk without a session id stores nothing (Java).
        """
        path = self.session_path()
        proto, transport, server = self.connect(make_config(session_file=path))
        packet, message = server.read_handshake()
        proto.dataReceived(server.handshake_ok_frame(packet, message, session_id=None))
        self.assertIs(proto.state, ClientState.ESTABLISHED)
        self.assertFalse(os.path.exists(path))

    def test_unstorable_session_id_not_saved(self):
        """
        A session id the Java format cannot hold (a comma) is not saved, and
        the handshake still succeeds.
        """
        path = self.session_path()
        proto, transport, server = self.connect(make_config(session_file=path))
        packet, message = server.read_handshake()
        proto.dataReceived(server.handshake_ok_frame(packet, message, session_id="a,b"))
        self.assertIs(proto.state, ClientState.ESTABLISHED)
        self.assertFalse(os.path.exists(path))

    def write_session(self, text):
        SessionFile(self.session_path()).write(text)

    def stored(self, expire_time=None):
        return ClientSession(
            "sess-1",
            int(EPOCH * 1000) + 60000 if expire_time is None else expire_time,
            bytes(range(16)),
            bytes(range(100, 116)),
        )

    def test_fast_connect(self):
        """
        A valid stored session -> FAST_CONNECT in plaintext (flags 0), then
        FastConnectOk establishes with the stored cipher.
        """
        self.write_session(encode_client_session(self.stored()))
        proto, transport, server = self.connect(make_config(session_file=self.session_path()))
        [packet] = server.received()
        self.assertEqual((packet.cmd, packet.session_id, packet.flags), (Command.FAST_CONNECT, 1, 0))
        self.assertEqual(
            FastConnectMessage.decode(packet.body),
            FastConnectMessage("sess-1", "dev-1", 240000, 240000),
        )
        established = proto.when_established()
        proto.dataReceived(server.send(Command.FAST_CONNECT, FastConnectOkMessage(180000), 1, raw=True))
        self.successResultOf(established)
        self.assertTrue(proto.resumed)
        self.assertEqual((proto.heartbeat, proto.session_id, proto.handshake_ok_count), (180000, "sess-1", 0))
        # The stored session is not rewritten by a fast connect.
        self.assertEqual(SessionFile(self.session_path()).read(), encode_client_session(self.stored()))
        proto.bind("u1")
        [bind] = server.received()
        cipher = AesCipher(bytes(range(16)), bytes(range(100, 116)))
        self.assertEqual(BindUserMessage.decode(decode_body(bind, cipher=cipher)).user_id, "u1")

    def test_fast_connect_error_then_handshake(self):
        """
        ERROR cmd 7 code 103: clear the file, handshake on the SAME
        connection; its HandshakeOk establishes and rewrites the file.
        """
        self.write_session(encode_client_session(self.stored()))
        proto, transport, server = self.connect(make_config(session_file=self.session_path()))
        established = proto.when_established()
        [fast] = server.received()
        proto.dataReceived(server.send(
            Command.ERROR, ErrorMessage.from_code(Command.FAST_CONNECT, ErrorCode.SESSION_EXPIRED),
            fast.session_id, raw=True,
        ))
        self.assertEqual([e.code for e in proto.fast_connect_errors], [103])
        self.assertFalse(os.path.exists(self.session_path()))
        self.assertFalse(transport.disconnecting)
        packet, message = server.read_handshake()
        self.assertEqual(packet.session_id, 2)
        self.assertNoResult(established)
        proto.dataReceived(server.handshake_ok_frame(packet, message))
        self.successResultOf(established)
        self.assertFalse(proto.resumed)
        self.assertEqual(proto.handshake_ok_count, 1)
        self.assertEqual(decode_client_session(SessionFile(self.session_path()).read()).session_id,
                         "0123456789abcdef0123456789abcdef")

    def test_fast_connect_any_error_code_falls_back(self):
        """
        Any ERROR with cmd 7 (104 here) leads to a handshake, as in Java.
        """
        self.write_session(encode_client_session(self.stored()))
        proto, transport, server = self.connect(make_config(session_file=self.session_path()))
        [fast] = server.received()
        proto.dataReceived(server.send(
            Command.ERROR, ErrorMessage.from_code(Command.FAST_CONNECT, ErrorCode.INVALID_DEVICE),
            fast.session_id, raw=True,
        ))
        server.read_handshake()
        self.assertIs(proto.state, ClientState.HANDSHAKING)

    def test_fast_connect_timeout(self):
        """
        No answer to FAST_CONNECT within handshake_timeout -> HandshakeTimeout.
        """
        self.write_session(encode_client_session(self.stored()))
        proto, transport, server = self.connect(make_config(session_file=self.session_path()))
        established = proto.when_established()
        self.clock.advance(3.01)
        self.failureResultOf(established, HandshakeTimeout)
        self.assertTrue(transport.disconnecting)

    def assert_handshakes_and_clears(self, text, cleared=True):
        self.write_session(text)
        proto, transport, server = self.connect(make_config(session_file=self.session_path()))
        server.read_handshake()
        self.assertEqual(os.path.exists(self.session_path()), not cleared)

    def test_expired_session(self):
        """
        An expired stored session -> cleared, full handshake.
        """
        self.assert_handshakes_and_clears(
            encode_client_session(self.stored(expire_time=int(EPOCH * 1000) - 1)))

    def test_garbage_session(self):
        """
        An undecodable stored session -> cleared, full handshake.
        """
        for text in ("garbage", "a,b,c", "s,1,1|2,3|4", "s,notanumber," + "0|" * 15 + "0," + "0|" * 15 + "0"):
            self.assert_handshakes_and_clears(text)

    def test_non_utf8_session(self):
        """
        A session file that is not UTF-8 -> cleared, full handshake.
        """
        with open(self.session_path(), "wb") as handle:
            handle.write(b"\xff\xfe\x00garbage")
        proto, transport, server = self.connect(make_config(session_file=self.session_path()))
        server.read_handshake()
        self.assertFalse(os.path.exists(self.session_path()))

    def test_blank_session(self):
        """
        A blank file -> full handshake (Java does not clear it then).
        """
        self.assert_handshakes_and_clears("  \n", cleared=False)

    def test_missing_session(self):
        """
        No file -> full handshake.
        """
        proto, transport, server = self.connect(make_config(session_file=self.session_path()))
        server.read_handshake()

    def test_unwritable_session_file(self):
        """
        A session file that cannot be written is logged, not fatal.
        """
        path = os.path.join(self.tmp, "missing-dir", "token.dat")
        proto, transport, server = self.connect(make_config(session_file=path))
        packet, message = server.read_handshake()
        proto.dataReceived(server.handshake_ok_frame(packet, message))
        self.assertIs(proto.state, ClientState.ESTABLISHED)
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class SessionFileUnitTests(unittest.SynchronousTestCase):

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "token.dat")

    def test_round_trip(self):
        f = SessionFile(self.path)
        self.assertIsNone(f.read())
        f.write("a,1,2,3")
        self.assertEqual(f.read(), "a,1,2,3")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        f.write("b")
        self.assertEqual(f.read(), "b")
        self.assertEqual(os.listdir(self.dir), ["token.dat"])  # no temp files left
        f.clear()
        self.assertIsNone(f.read())
        f.clear()  # clearing twice is fine

    def test_write_failure(self):
        f = SessionFile(os.path.join(self.dir, "nope", "token.dat"))
        exc = self.assertRaises(SessionFileError, f.write, "x")
        self.assertIn("nope", str(exc))

    def test_clear_failure(self):
        os.makedirs(self.path)  # a directory where the file should be
        self.assertRaises(SessionFileError, SessionFile(self.path).clear)
        self.assertIsNone(SessionFile(self.path).read())


class JavaVectorTests(ClientTestCase):
    """
    The client reproduces the Java client's bytes given the same keys.
    """

    private_key = RsaPrivateKey.from_pkcs8_base64(MPUSH_DEMO_PRIVATE_KEY)

    def vector_client(self, **overrides):
        exchange = vector("exchange_handshake_bind_push")
        keys = [bytes.fromhex(exchange["input"]["client_key"]), bytes.fromhex(exchange["input"]["iv"])]
        self.patch(client_protocol, "random_bytes", lambda n: keys.pop(0))
        config = make_config(
            public_key=MPUSH_DEMO_PUBLIC_KEY, device_id="py-vector-device",
            os_version="6.0", client_version="2.0", **overrides,
        )
        proto, transport, server = self.connect(config)
        return exchange["expected"]["steps"], proto, transport, server

    def test_exchange(self):
        """
        exchange_handshake_bind_push, step by step.
        """
        path = os.path.join(self.tmp, "token.dat")
        steps, proto, transport, server = self.vector_client(session_file=path)
        steps = {step["step"]: step for step in steps}
        packet, _ = server.read_handshake()
        self.assertEqual(decode_body(packet, cipher=self.private_key).hex(), steps["a"]["plain_body_hex"])
        self.assertEqual(packet.session_id, steps["a"]["header"]["session_id"])
        self.assertEqual(packet.flags, steps["a"]["header"]["flags"])

        proto.dataReceived(bytes.fromhex(steps["b"]["frame_hex"]))
        self.assertEqual(proto.heartbeat, 180000)
        with open(path, encoding="utf-8") as handle:
            self.assertEqual(
                handle.read(),
                vector("exchange_fast_connect")["expected"]["client_persisted_session_string"],
            )

        bound = proto.bind("user-1", "tag-a")
        self.assertEqual(transport.value().hex(), steps["d"]["frame_hex"])
        transport.clear()
        proto.dataReceived(bytes.fromhex(steps["e"]["frame_hex"]))
        self.assertEqual(self.successResultOf(bound), OkMessage(5, 0, "bind success"))
        # The encrypted OK variant (same id 2, now unsolicited) decrypts
        # fine: no BadServerReply, no close.
        proto.dataReceived(bytes.fromhex(steps["e"]["encrypted_variant"]["frame_hex"]))
        self.assertIs(proto.state, ClientState.ESTABLISHED)

        proto.dataReceived(bytes.fromhex(steps["f"]["frame_hex"]))
        self.assertEqual(transport.value().hex(), steps["g"]["frame_hex"])
        transport.clear()
        proto.dataReceived(bytes.fromhex(steps["h"]["frame_hex"]))
        self.assertEqual(transport.value(), b"")
        proto.ack(steps["h"]["header"]["session_id"])
        self.assertEqual(transport.value().hex(), steps["h"]["ack_frame_hex"])
        transport.clear()
        proto.dataReceived(bytes.fromhex(steps["i"]["frame_hex"]))
        self.assertEqual(transport.value().hex(), "0000000017000000000186a300")
        transport.clear()
        proto.dataReceived(bytes.fromhex(steps["l"]["frame_hex"]))
        proto.dataReceived(bytes.fromhex(steps["m"]["frame_hex"]))

        self.assertEqual(proto.pushes[0], b'{"msg":"hello"}')
        self.assertEqual(proto.pushes[2], bytes(ord("A") + i % 26 for i in range(3000)))
        self.assertEqual(
            [e for e in self.events if e[0] in ("push", "kick")],
            [
                ("push", proto.pushes[0], 100001, 9),
                ("push", proto.pushes[1], 100002, 5),
                ("push", proto.pushes[2], 100003, 11),
                ("kick", "py-vector-device", "user-1"),
            ],
        )
        self.assertEqual(proto.pong_count, 1)

    def test_fast_connect_vector(self):
        """
        exchange_fast_connect: the FAST_CONNECT frame from the persisted
        string is byte-identical to Java's; both answers are understood.
        """
        exchange = vector("exchange_fast_connect")
        steps = {step["step"]: step for step in exchange["expected"]["steps"]}
        path = os.path.join(self.tmp, "token.dat")
        for answer in ("b", "b_alt"):
            SessionFile(path).write(exchange["expected"]["client_persisted_session_string"])
            # The vector's expire time is 1700000000000: run the clock before it.
            clock = self.clock = task.Clock()
            clock.advance(1_600_000_000)
            proto, transport, server = self.connect(
                make_config(public_key=MPUSH_DEMO_PUBLIC_KEY, device_id="py-vector-device",
                            session_file=path),
                packet_ids=java_packet_ids(3),
            )
            self.assertEqual(transport.value().hex(), steps["a"]["frame_hex"])
            transport.clear()
            proto.dataReceived(bytes.fromhex(steps[answer]["frame_hex"]))
            if answer == "b":
                self.assertEqual((proto.state, proto.heartbeat, proto.resumed),
                                 (ClientState.ESTABLISHED, 180000, True))
            else:
                self.assertEqual(proto.fast_connect_errors,
                                 [ErrorMessage(7, 103, "session expired", None)])
                [packet] = server.received()
                self.assertEqual((packet.cmd, packet.session_id), (Command.HANDSHAKE, 4))
                self.assertFalse(os.path.exists(path))


class RequestTests(ClientTestCase):

    def test_bind_retry_identical_bytes(self):
        """
        BIND unanswered for bind_timeout is resent with the identical bytes
        once; a second timeout fails with BindTimeout and closes (Java
        reconnects).
        """
        proto, transport, server = self.establish()
        bound = proto.bind("u1", "tag")
        first = transport.value()
        transport.clear()
        self.clock.advance(2.99)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.01)
        self.assertEqual(transport.value(), first)
        transport.clear()
        self.assertNoResult(bound)
        self.clock.advance(3)
        self.failureResultOf(bound, BindTimeout)
        self.assertTrue(transport.disconnecting)

    def test_bind_answered_after_retry(self):
        proto, transport, server = self.establish()
        bound = proto.bind("u1")
        [bind] = server.received()
        self.clock.advance(3)
        server.received()
        proto.dataReceived(server.send(Command.OK, OkMessage(5, 0, "bind success"), bind.session_id, raw=True))
        self.assertEqual(self.successResultOf(bound).data, "bind success")
        self.clock.advance(10)
        self.assertEqual(server.received(), [])
        self.assertFalse(transport.disconnecting)

    def test_bind_error(self):
        """
        ERROR answering BIND -> ServerError(error_message), connection closed.
        """
        proto, transport, server = self.establish()
        bound = proto.bind("u1")
        [bind] = server.received()
        error_message = ErrorMessage(Command.BIND, 0, "invalid param")
        proto.dataReceived(server.send(Command.ERROR, error_message, bind.session_id, raw=True))
        self.assertEqual(self.failureResultOf(bound, ServerError).value.error_message, error_message)
        self.assertTrue(transport.disconnecting)

    def test_bind_wrong_ok(self):
        """
        OK for another command with the BIND's id is not a bind success.
        """
        proto, transport, server = self.establish()
        bound = proto.bind("u1")
        [bind] = server.received()
        proto.dataReceived(server.send(Command.OK, OkMessage(6, 0, "x"), bind.session_id, raw=True))
        self.failureResultOf(bound, BadServerReply)

    def test_bind_before_established(self):
        proto, transport, server = self.connect()
        self.failureResultOf(proto.bind("u1"), NotEstablished)

    def test_auto_bind(self):
        """
        With config.user_id the client binds right after HandshakeOk, like
        Java's onHandshakeOk, and is "established" once that bind is OK.
        """
        proto, transport, server = self.connect(make_config(user_id="u7", tags="t1"))
        established = proto.when_established()
        packet, message = server.read_handshake()
        proto.dataReceived(server.handshake_ok_frame(packet, message))
        self.assertNoResult(established)
        [bind] = server.received()
        self.assertEqual(BindUserMessage.decode(decode_body(bind, cipher=server.cipher)),
                         BindUserMessage("u7", None, "t1"))
        proto.dataReceived(server.send(Command.OK, OkMessage(5, 0, "bind success"), bind.session_id, raw=True))
        self.successResultOf(established)
        self.assertEqual(proto.bind_result, OkMessage(5, 0, "bind success"))

    def test_auto_bind_error(self):
        """
        ERROR for the automatic bind: on_error first, then the establishment
        fails with the same ServerError, and the connection closes.
        """
        proto, transport, server = self.connect(make_config(user_id="u7"))
        order = []
        proto.on_error = lambda exc: order.append(("on_error", exc))
        established = proto.when_established()
        established.addErrback(lambda f: order.append(("deferred", f.value)))
        packet, message = server.read_handshake()
        proto.dataReceived(server.handshake_ok_frame(packet, message))
        [bind] = server.received()
        proto.dataReceived(server.send(
            Command.ERROR, ErrorMessage(Command.BIND, 0, "bind failed"), bind.session_id, raw=True))
        self.assertEqual([kind for kind, _ in order], ["on_error", "deferred"])
        self.assertIs(order[0][1], order[1][1])
        self.assertIsInstance(order[0][1], ServerError)
        self.assertTrue(transport.disconnecting)

    def test_auto_bind_timeout(self):
        proto, transport, server = self.connect(make_config(user_id="u7"))
        established = proto.when_established()
        packet, message = server.read_handshake()
        proto.dataReceived(server.handshake_ok_frame(packet, message))
        self.clock.advance(3)
        self.assertNoResult(established)
        self.clock.advance(3)
        self.failureResultOf(established, BindTimeout)

    def test_unbind(self):
        proto, transport, server = self.establish()
        unbound = proto.unbind("u1")
        [unbind] = server.received()
        self.assertEqual((unbind.cmd, unbind.flags), (Command.UNBIND, 1))
        self.assertEqual(BindUserMessage.decode(decode_body(unbind, cipher=server.cipher)).user_id, "u1")
        proto.dataReceived(server.send(Command.OK, OkMessage(6, 0, "unbind success"), unbind.session_id, raw=True))
        self.assertEqual(self.successResultOf(unbound).cmd, 6)

    def test_unbind_timeout(self):
        """
        An unanswered UNBIND fails; the connection stays (Java does not wait).
        """
        proto, transport, server = self.establish()
        unbound = proto.unbind("u1")
        self.clock.advance(3)
        self.failureResultOf(unbound, RequestTimeout)
        self.assertFalse(transport.disconnecting)

    def test_unsolicited_error(self):
        """
        An ERROR for another command (cmd 15 here) is reported and the
        connection closed, Java's reconnect.
        """
        proto, transport, server = self.establish()
        proto.dataReceived(server.send(
            Command.ERROR, ErrorMessage.from_code(Command.PUSH, ErrorCode.UNSUPPORTED_CMD), 9, raw=True))
        [(kind, exc)] = self.events
        self.assertEqual(kind, "error")
        self.assertIsInstance(exc, ServerError)
        self.assertEqual(exc.error_message.code, 101)
        self.assertTrue(transport.disconnecting)

    def test_ping_pong(self):
        proto, transport, server = self.establish()
        pinged = proto.ping()
        self.assertEqual(transport.value(), HEARTBEAT_BYTE)
        self.clock.advance(0.25)
        self.assertNoResult(pinged)
        proto.dataReceived(HEARTBEAT_BYTE)
        self.assertEqual(self.successResultOf(pinged), 0.25)

    def test_ping_timeout(self):
        proto, transport, server = self.establish()
        pinged = proto.ping(timeout=2)
        self.clock.advance(2)
        self.failureResultOf(pinged, PingTimeout)
        self.assertFalse(transport.disconnecting)

    def test_pending_requests_fail_on_close(self):
        """
        Everything that waits fails with ConnectionClosed when the
        connection goes: nothing hangs.
        """
        proto, transport, server = self.establish()
        waiting = [proto.bind("u"), proto.unbind("u"), proto.ping(), proto.wait_for_push()]
        closed = proto.close()
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(closed)
        self.lose(proto)
        self.successResultOf(closed)
        for d in waiting:
            self.failureResultOf(d, ConnectionClosed)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(proto.close())
        self.failureResultOf(proto.ping(), NotEstablished)
        self.assertRaises(NotEstablished, proto.send_raw_bytes, b"x")
        self.assertRaises(NotEstablished, proto.ack, 1)
        self.assertRaises(NotEstablished, proto.handshake)
        self.assertRaises(NotEstablished, proto.fast_connect)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_aborts_when_stuck(self):
        proto, transport, server = self.establish()
        aborted = []
        transport.abortConnection = lambda: aborted.append(True)
        proto.close()
        self.clock.advance(client_protocol.CLOSE_GRACE)
        self.assertEqual(aborted, [True])

    def test_send_raw_bytes(self):
        proto, transport, server = self.establish()
        proto.send_raw_bytes(b"\x00\x01garbage")
        self.assertEqual(transport.value(), b"\x00\x01garbage")


class PushTests(ClientTestCase):

    def test_auto_ack(self):
        """
        PUSH with AUTO_ACK -> ACK raw, empty body, the push's session id:
        exactly 00000000 17 0000 00 <sid> 00.
        """
        proto, transport, server = self.establish()
        proto.dataReceived(server.send(Command.PUSH, PushMessage(b"hello"), session_id=5, flags=0x08))
        self.assertEqual(transport.value(), bytes.fromhex("00000000 17 0000 00 00000005 00"))
        self.assertEqual(proto.pushes, [b"hello"])
        self.assertEqual(self.events, [("push", b"hello", 5, 9)])

    def test_biz_ack_not_automatic(self):
        proto, transport, server = self.establish()
        proto.dataReceived(server.send(Command.PUSH, PushMessage(b"biz"), session_id=6, flags=0x04))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.events, [("push", b"biz", 6, 5)])
        proto.ack(6)
        self.assertEqual(transport.value(), bytes.fromhex("00000000 17 0000 00 00000006 00"))

    def test_no_ack(self):
        proto, transport, server = self.establish()
        proto.dataReceived(server.send(Command.PUSH, PushMessage(b"x"), session_id=7))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(proto.pushes, [b"x"])

    def test_large_compressed_push(self):
        proto, transport, server = self.establish()
        content = b"X" * 20000
        frame = server.send(Command.PUSH, PushMessage(content), session_id=8, flags=0x04)
        self.assertEqual(frame[7], 0x07)
        proto.dataReceived(frame)
        self.assertEqual(proto.pushes, [content])

    def test_push_split_across_reads(self):
        proto, transport, server = self.establish()
        frame = server.send(Command.PUSH, PushMessage(b"split"), session_id=9, flags=0x08)
        for i in range(len(frame)):
            proto.dataReceived(frame[i:i + 1])
        self.assertEqual(proto.pushes, [b"split"])

    def test_undecryptable_push(self):
        proto, transport, server = self.establish()
        # 15 bytes: no AES-CBC ciphertext, whatever the session key (a whole
        # block of junk still decrypts to valid padding once in ~256 keys).
        proto.dataReceived(encode_packet(Packet(Command.PUSH, 3, 1, b"\x01" * 15)))
        [(kind, exc)] = self.events
        self.assertIsInstance(exc, BadServerReply)
        self.assertTrue(transport.disconnecting)

    def test_wait_for_push(self):
        proto, transport, server = self.establish()
        proto.dataReceived(server.send(Command.PUSH, PushMessage(b"a"), session_id=1))
        first = proto.wait_for_push()
        self.assertEqual(self.successResultOf(first), ReceivedPush(b"a", 1, 1))
        second = proto.wait_for_push(timeout=5)
        self.assertNoResult(second)
        proto.dataReceived(server.send(Command.PUSH, PushMessage(b"b"), session_id=2, flags=4))
        self.assertEqual(self.successResultOf(second), ReceivedPush(b"b", 2, 5))
        third = proto.wait_for_push(timeout=5)
        self.clock.advance(5)
        self.failureResultOf(third, PushTimeout)

    def test_kick(self):
        proto, transport, server = self.establish()
        proto.dataReceived(server.send(Command.KICK, KickUserMessage("dev-1", "u1")))
        self.assertEqual(self.events, [("kick", "dev-1", "u1")])
        self.assertEqual(proto.kicks, [KickUserMessage("dev-1", "u1")])

    def test_callback_error_contained(self):
        """
        A listener that raises is logged; the connection carries on.
        """
        proto, transport, server = self.establish()

        def broken(*args):
            raise RuntimeError("listener bug")

        proto.on_push = broken
        proto.dataReceived(server.send(Command.PUSH, PushMessage(b"a"), session_id=1, flags=8))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIs(proto.state, ClientState.ESTABLISHED)
        self.assertEqual(transport.value(), bytes.fromhex("00000000 17 0000 00 00000001 00"))

    def test_unsupported_command_ignored(self):
        proto, transport, server = self.establish()
        proto.dataReceived(server.send(Command.HTTP_PROXY, PushMessage(b"x"), session_id=1))
        proto.dataReceived(encode_packet(Packet(99, 1)))
        self.assertIs(proto.state, ClientState.ESTABLISHED)


class HttpProxyRequestTests(ClientTestCase):
    """http_request: one HTTP_PROXY request answered by session id (spec 13)."""

    def test_answered(self):
        from mpush.protocol.messages import HttpRequestMessage, HttpResponseMessage

        proto, transport, server = self.establish()
        d = proto.http_request(0, "http://example.com/x", {"A": "1"}, None, timeout=5)
        [packet] = server.received()
        self.assertEqual(packet.cmd, Command.HTTP_PROXY)
        request = HttpRequestMessage.decode(decode_body(packet, cipher=server.cipher))
        self.assertEqual((request.method_name, request.uri, request.headers), ("GET", "http://example.com/x", {"A": "1"}))
        proto.dataReceived(server.send(Command.HTTP_PROXY, HttpResponseMessage(200, "OK", {}, b"body"),
                                       session_id=packet.session_id))
        response = self.successResultOf(d)
        self.assertEqual((response.status_code, response.body), (200, b"body"))

    def test_refused_or_unanswered_leaves_the_connection_open(self):
        from mpush.client.protocol import RequestTimeout, ServerError

        proto, transport, server = self.establish()
        refused = proto.http_request(0, "http://example.com/", timeout=5)
        [packet] = server.received()
        proto.dataReceived(server.send(Command.ERROR, ErrorMessage(Command.HTTP_PROXY, 1, "disabled"),
                                       session_id=packet.session_id))
        self.failureResultOf(refused, ServerError)
        unanswered = proto.http_request(0, "http://example.com/", timeout=5)
        self.clock.advance(5)
        self.failureResultOf(unanswered, RequestTimeout)
        self.assertIs(proto.state, ClientState.ESTABLISHED)


class HealthCheckTests(ClientTestCase):

    def test_pings_then_closes_on_silence(self):
        """
        Java healthCheck with heartbeat 180 s checked every 10 s: ping once
        nothing was written for 179 s; the second check in a row finding
        nothing read for 181 s closes.
        """
        proto, transport, server = self.establish()
        transport.clear()
        proto.start_health_check(10)
        self.clock.advance(170)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(10)
        self.assertEqual(transport.value(), HEARTBEAT_BYTE)
        self.clock.advance(10)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertIsInstance(self.events[0][1], HeartbeatTimeout)

    def test_pongs_keep_it_alive(self):
        proto, transport, server = self.establish()
        proto.start_health_check(10)
        pings = 0
        for _ in range(200):
            self.clock.advance(10)
            if transport.value():
                self.assertEqual(transport.value(), HEARTBEAT_BYTE)
                pings += 1
                transport.clear()
                proto.dataReceived(HEARTBEAT_BYTE)
        self.assertEqual(pings, 11)
        self.assertIs(proto.state, ClientState.ESTABLISHED)

    def test_default_interval_short_heartbeat(self):
        """
        With a 3 s heartbeat the default interval (1 s) keeps a responsive
        server connected.
        """
        proto, transport, server = self.connect()
        packet, message = server.read_handshake()
        proto.dataReceived(server.handshake_ok_frame(packet, message, heartbeat=3000))
        proto.start_health_check()
        for _ in range(60):
            self.clock.advance(1)
            if transport.value():
                transport.clear()
                proto.dataReceived(HEARTBEAT_BYTE)
        self.assertIs(proto.state, ClientState.ESTABLISHED)
        self.assertGreater(proto.pong_count, 10)

    def test_stops_on_close(self):
        proto, transport, server = self.establish()
        proto.start_health_check(10)
        self.lose(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConfigTests(unittest.SynchronousTestCase):

    def test_defaults(self):
        config = make_config()
        self.assertEqual(
            (config.os_name, config.min_heartbeat, config.max_heartbeat, config.handshake_timeout,
             config.bind_timeout, config.compress_limit, config.user_id, config.session_file),
            ("android", 240000, 240000, 3.0, 3.0, 1024, None, None),
        )

    def test_bad_values(self):
        for overrides, word in [
            (dict(public_key="not base64!"), "public_key"),
            (dict(public_key=""), "public_key"),
            (dict(public_key="QUJD"), "public_key"),
            (dict(port=0), "port"),
            (dict(port=70000), "port"),
            (dict(device_id=""), "device_id"),
            (dict(max_heartbeat=0), "max_heartbeat"),
            (dict(handshake_timeout=0), "handshake_timeout"),
            (dict(user_id=""), "user_id"),
            (dict(compress_limit=-1), "compress_limit"),
        ]:
            exc = self.assertRaises(ClientConfigError, make_config, **overrides)
            self.assertIn(word, str(exc))


class ConnectClientTests(ClientTestCase):

    def test_connect_and_establish(self):
        reactor = MemoryReactorClock()
        reactor.advance(EPOCH)
        d = connect_client(make_config(host="127.0.0.1", port=3999), reactor=reactor)
        [(host, port, factory, timeout, _)] = reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 3999, 5.0))
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        server = FakeServer(transport, server_private_key())
        packet, message = server.read_handshake()
        self.assertNoResult(d)
        proto.dataReceived(server.handshake_ok_frame(packet, message))
        client = self.successResultOf(d)
        self.assertIsInstance(client, MPushClientProtocol)
        self.assertEqual(client.heartbeat, 180000)

    def test_connection_refused(self):
        reactor = MemoryReactorClock()
        d = connect_client(make_config(port=3999), reactor=reactor)
        [(_, _, factory, _, _)] = reactor.tcpClients
        factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
        failure = self.failureResultOf(d, ConnectFailed)
        self.assertIn("127.0.0.1:3999", str(failure.value))
        self.assertIn("refused", str(failure.value).lower())

    def test_hostname_and_ipv6(self):
        reactor = MemoryReactorClock()
        connect_client(make_config(host="::1"), reactor=reactor)
        self.assertEqual(reactor.tcpClients[0][0], "::1")


class _ScriptedServer(Protocol):
    """
    A one-connection MPush server for the real-socket test: answers the
    handshake and a ping, built from the protocol core only.
    """

    def __init__(self, private_key):
        self.private_key = private_key
        self.decoder = PacketDecoder()

    def dataReceived(self, data):
        for packet in self.decoder.feed(data):
            if packet.cmd == Command.HEARTBEAT:
                self.transport.write(HEARTBEAT_BYTE)
            elif packet.cmd == Command.HANDSHAKE:
                message = HandshakeMessage.decode(decode_body(packet, cipher=self.private_key))
                reply = make_packet(
                    Command.HANDSHAKE,
                    HandshakeOkMessage(SERVER_KEY, 60000, "real-session", 0),
                    session_id=packet.session_id,
                    cipher=AesCipher(message.client_key, message.iv),
                )
                self.transport.write(encode_packet(reply))


class RealSocketTests(unittest.TestCase):

    @defer.inlineCallbacks
    def test_connect_ping_close(self):
        """
        connect_client over a real loopback socket: handshake, ping, close.
        """
        from twisted.internet import reactor

        key = server_private_key()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: _ScriptedServer(key)),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        config = make_config(port=port.getHost().port)
        client = yield connect_client(config)
        self.assertEqual((client.heartbeat, client.session_id), (60000, "real-session"))
        yield client.ping()
        yield client.close()
        self.assertIs(client.state, ClientState.CLOSED)

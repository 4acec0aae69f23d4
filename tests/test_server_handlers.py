"""
The connection server's handlers over StringTransport with a fake clock:
handshake, heartbeat, idle, fast connect, ordering and the error policy.
"""

import struct

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mpush.config import LimitsConfig, load_config
from mpush.protocol.body import make_packet
from mpush.protocol.crypto import AesCipher, mix_key
from mpush.protocol.messages import FastConnectMessage
from mpush.protocol.packet import HEARTBEAT_BYTE, Command, Flags, Packet, encode_packet
from mpush.protocol.session import ReusableSession, decode_reusable_session
from mpush.server.device.connection import MAX_PENDING_PACKETS
from mpush.server.device.context import ConnectionState
from mpush.server.device.dispatcher import IDeviceHandler
from mpush.server.device import handshake
from mpush.store.interfaces import ISessionStore, StoreUnavailable
from mpush.tap import make_dispatcher

from tests.server_support import (
    EPOCH,
    ScriptedDevice,
    connect,
    error_of,
    fast_connect_ok_of,
    make_node,
)


@implementer(ISessionStore)
class ManualStore:
    """
    A session store whose answers the test releases by hand, to hold a
    handler in the middle of its work.
    """

    def __init__(self):
        self.loads = []
        self.saved = {}

    def save(self, session_id, session, ttl):
        self.saved[session_id] = session
        return defer.succeed(None)

    def load(self, session_id):
        waiting = defer.Deferred()
        self.loads.append((session_id, waiting))
        return waiting

    def close(self):
        return defer.succeed(None)


class HandlerInterfaceTests(SynchronousTestCase):
    def test_handlers_provide_the_interface(self):
        for handler in make_dispatcher(make_node())._handlers.values():
            self.assertTrue(verifyObject(IDeviceHandler, handler))


class HandshakeTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.protocol, self.transport = connect(self.node)
        self.device = ScriptedDevice()

    def handshake(self):
        self.protocol.dataReceived(self.device.handshake_bytes(session_id=7))
        [reply] = self.device.read(self.transport)
        return reply, self.device.accept_handshake_ok(reply)

    def test_connection_state_lives_in_slots(self):
        """
        A node holds one connection per device: everything it keeps is in
        slots, so no per-instance dict is ever made (about 300 bytes each).
        """
        self.handshake()
        self.protocol.pauseProducing()
        self.protocol.resumeProducing()
        self.assertEqual(vars(self.protocol), {})

    def test_idle_connection_holds_no_packet_queue(self):
        """
        The in-order queue exists while packets wait and is dropped once
        they are handled: an idle connection keeps none.
        """
        self.assertIsNone(self.protocol._pending)
        self.handshake()
        self.assertIsNone(self.protocol._pending)
        self.protocol.dataReceived(HEARTBEAT_BYTE)
        self.assertIsNone(self.protocol._pending)
        self.assertEqual(self.protocol.pending_bytes, 0)

    def test_session_cached_before_the_reply(self):
        """
        HandshakeOk leaves only once the session is in the store, so the
        device can fast-connect to any node sharing it at once; a store that
        fails still lets the handshake finish.
        """
        store = self.node.session_store
        for outcome in ("saved", "failed"):
            saving = defer.Deferred()
            saved = []

            def slow_save(session_id, session, ttl, saving=saving, saved=saved):
                saved.append(session_id)
                return saving

            store.save = slow_save
            protocol, transport = connect(self.node)
            device = ScriptedDevice()
            protocol.dataReceived(device.handshake_bytes(session_id=7))
            self.assertEqual((len(saved), transport.value()), (1, b""))
            if outcome == "saved":
                saving.callback(None)
            else:
                saving.errback(StoreUnavailable("redis session store unavailable"))
            [reply] = device.read(transport)
            self.assertEqual(device.accept_handshake_ok(reply).session_id, saved[0])
            self.assertIs(protocol.state, ConnectionState.HANDSHAKEN)

    def test_handshake_ok(self):
        """
        HandshakeOk echoes the request id, is AES(clientKey, iv) encrypted
        (flags 0x01) and carries a 16-byte server key, the negotiated
        heartbeat, a 32-hex session id and a 64-bit expiry one day ahead.
        """
        reply, ok = self.handshake()
        self.assertEqual((reply.session_id, reply.flags), (7, Flags.CRYPTO))
        self.assertEqual(len(ok.server_key), 16)
        self.assertEqual(ok.heartbeat, 180000)
        self.assertRegex(ok.session_id, r"^[0-9a-f]{32}$")
        self.assertEqual(ok.expire_time, int(EPOCH * 1000) + 86400 * 1000)
        self.assertFalse(self.transport.disconnecting)

    def test_switches_to_session_key_after_write(self):
        reply, ok = self.handshake()
        context = self.protocol.context
        self.assertIs(self.protocol.state, ConnectionState.HANDSHAKEN)
        self.assertEqual(context.device_id, "dev-1")
        self.assertEqual((context.os_name, context.os_version, context.client_version),
                         ("android", "13", "1.0"))
        self.assertEqual(context.cipher.key, mix_key(self.device.client_key, ok.server_key))
        self.assertEqual(context.cipher.iv, self.device.iv)
        self.assertEqual(context.heartbeat, 180000)

    def test_session_cached_in_mpush_format(self):
        _, ok = self.handshake()
        loaded = []
        self.node.session_store.load(ok.session_id).addCallback(loaded.append)
        [session] = loaded
        self.assertEqual(
            session,
            ReusableSession("android", "13", "1.0", "dev-1",
                            mix_key(self.device.client_key, ok.server_key), self.device.iv),
        )

    def test_heartbeat_negotiated_within_server_range(self):
        config = self.node.config
        core = type(config.core)(min_heartbeat=10000, max_heartbeat=60000)
        node = make_node(config.replace(core=core))
        for asked, granted in [(240000, 60000), (30000, 30000), (1000, 10000)]:
            protocol, transport = connect(node)
            device = ScriptedDevice(max_heartbeat=asked)
            protocol.dataReceived(device.handshake_bytes())
            [reply] = device.read(transport)
            self.assertEqual(device.accept_handshake_ok(reply).heartbeat, granted)

    def test_inverted_server_range_grants_the_minimum(self):
        """
        Spec 8.4: with min-heartbeat above max-heartbeat the minimum wins,
        whatever the client asks.
        """
        core = type(self.node.config.core)(min_heartbeat=300000, max_heartbeat=60000)
        node = make_node(self.node.config.replace(core=core))
        for asked in (1000, 60000, 120000, 300000, 400000):
            protocol, transport = connect(node)
            device = ScriptedDevice(max_heartbeat=asked)
            protocol.dataReceived(device.handshake_bytes())
            [reply] = device.read(transport)
            self.assertEqual(device.accept_handshake_ok(reply).heartbeat, 300000, asked)
            self.assertEqual(protocol.context.heartbeat, 300000, asked)

    def test_session_ids_are_distinct(self):
        ids = set()
        for i in range(50):
            protocol, transport = connect(self.node)
            device = ScriptedDevice(device_id=f"d{i}")
            protocol.dataReceived(device.handshake_bytes())
            [reply] = device.read(transport)
            ids.add(device.accept_handshake_ok(reply).session_id)
        self.assertEqual(len(ids), 50)

    def test_repeat_handshake_keeps_connection(self):
        self.handshake()
        self.protocol.dataReceived(self.device.handshake_bytes(session_id=8))
        [reply] = self.device.read(self.transport)
        error = error_of(reply)
        self.assertEqual((error.cmd, error.code, error.reason), (2, 102, "repeat handshake"))
        self.assertEqual((reply.session_id, reply.flags), (8, 0))
        self.assertFalse(self.transport.disconnecting)

    def test_second_device_on_same_connection_handshakes_again(self):
        _, first = self.handshake()
        other = ScriptedDevice(device_id="dev-2")
        self.protocol.dataReceived(other.handshake_bytes())
        [reply] = other.read(self.transport)
        second = other.accept_handshake_ok(reply)
        self.assertNotEqual(first.session_id, second.session_id)
        self.assertEqual(self.protocol.context.device_id, "dev-2")

    def assertParamInvalid(self, data):
        self.protocol.dataReceived(data)
        [reply] = self.device.read(self.transport)
        error = error_of(reply)
        self.assertEqual((error.cmd, error.code, error.reason), (2, 0, "Param invalid"))
        self.assertEqual(reply.flags, 0)
        self.assertTrue(self.transport.disconnecting)
        # Closing without ever having had a session.
        self.assertIsNone(self.protocol.context.cipher)
        self.assertIs(self.protocol.state, ConnectionState.CLOSING)

    def test_missing_device_id(self):
        self.assertParamInvalid(self.device.handshake_bytes(device_id=None))

    def test_short_iv(self):
        self.assertParamInvalid(self.device.handshake_bytes(iv=b"x" * 15))

    def test_missing_client_key(self):
        self.assertParamInvalid(self.device.handshake_bytes(client_key=None))

    def test_wrong_number_of_rsa_blocks(self):
        """
        A body that is not whole 128-byte RSA blocks is a dispatch error:
        ERROR 100, raw, then close.
        """
        frame = encode_packet(Packet(Command.HANDSHAKE, 3, Flags.CRYPTO, b"\x01" * 200))
        self.protocol.dataReceived(frame)
        [reply] = self.device.read(self.transport)
        error = error_of(reply)
        self.assertEqual((error.cmd, error.code, error.reason), (2, 100, "handle message error"))
        self.assertTrue(self.transport.disconnecting)

    def test_bad_rsa_padding(self):
        """
        A block that is not a valid PKCS#1 encryption decrypts (implicit
        rejection) to noise that is no handshake: a clean ERROR and close.
        """
        frame = encode_packet(Packet(Command.HANDSHAKE, 3, Flags.CRYPTO, b"\x01" * 128))
        self.protocol.dataReceived(frame)
        [reply] = self.device.read(self.transport)
        error = error_of(reply)
        self.assertEqual(error.cmd, 2)
        self.assertIn(error.code, (0, 100))
        self.assertTrue(self.transport.disconnecting)


class HeartbeatTests(SynchronousTestCase):
    def setUp(self):
        # MPush's idle rule alone: no [limits] pre-handshake-timeout.
        self.node = make_node(load_config(None).replace(limits=LimitsConfig(pre_handshake_timeout=0)))
        self.clock = self.node.clock
        self.protocol, self.transport = connect(self.node)

    def test_pong(self):
        self.protocol.dataReceived(HEARTBEAT_BYTE)
        self.assertEqual(self.transport.value(), HEARTBEAT_BYTE)

    def test_framed_heartbeat_answered_with_one_byte(self):
        self.protocol.dataReceived(encode_packet(Packet(Command.HEARTBEAT, 5)) + b"\xdf")
        self.assertEqual(self.transport.value(), b"\xdf\xdf")

    def test_flood_of_heartbeats_all_answered(self):
        for _ in range(50):
            self.protocol.dataReceived(HEARTBEAT_BYTE * 4096)
        self.assertEqual(self.transport.value(), HEARTBEAT_BYTE * 4096 * 50)
        self.assertFalse(self.transport.disconnecting)

    def test_silent_connection_closed_at_third_late_check(self):
        """
        Before the handshake the check runs every 10 s; a connection that
        sends nothing is closed at the 40 s check (spec 10.1).
        """
        self.clock.pump([10, 10, 10])
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)

    def test_pings_keep_connection_open(self):
        for _ in range(20):
            self.clock.advance(9)
            self.protocol.dataReceived(HEARTBEAT_BYTE)
        self.assertFalse(self.transport.disconnecting)

    def test_idle_timer_follows_negotiated_heartbeat(self):
        device = ScriptedDevice()
        self.protocol.dataReceived(device.handshake_bytes())
        # The check due at 10 s was scheduled before the handshake; after
        # it, checks run every 180 s.
        self.clock.pump([10, 180, 180])
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(180)
        self.assertTrue(self.transport.disconnecting)

    def test_closed_connection_cancels_timer(self):
        self.protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNotIn(self.protocol.conn_id, self.node.connections)


class FastConnectTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        first, transport = connect(self.node)
        self.device = ScriptedDevice()
        first.dataReceived(self.device.handshake_bytes())
        [reply] = self.device.read(transport)
        self.ok = self.device.accept_handshake_ok(reply)
        self.protocol, self.transport = connect(self.node)

    def test_fast_connect_ok(self):
        """
        FastConnectOk is raw with the renegotiated heartbeat; afterwards the
        connection speaks the cached session key.
        """
        self.protocol.dataReceived(self.device.fast_connect_bytes(self.ok.session_id, packet_id=9))
        [reply] = self.device.read(self.transport)
        self.assertEqual((reply.session_id, reply.flags), (9, 0))
        self.assertEqual(fast_connect_ok_of(reply).heartbeat, 180000)
        self.assertEqual(encode_packet(reply)[:13], bytes.fromhex("00000004070000000000000900"))
        self.assertIs(self.protocol.state, ConnectionState.HANDSHAKEN)
        self.assertEqual(self.protocol.context.device_id, "dev-1")
        self.assertEqual(self.protocol.context.cipher.key, self.device.cipher.key)

    def test_heartbeat_renegotiated_from_the_fast_connect(self):
        """
        Spec 9.1: fast connect negotiates again from the FastConnect
        message's own max heartbeat, not the server's bound nor the
        handshake's value.
        """
        core = type(self.node.config.core)(min_heartbeat=10000, max_heartbeat=60000)
        node = make_node(self.node.config.replace(core=core))
        first, transport = connect(node)
        first.dataReceived(self.device.handshake_bytes())
        ok = self.device.accept_handshake_ok(self.device.read(transport)[0])
        for asked, granted in [(30000, 30000), (45000, 45000), (240000, 60000), (1000, 10000)]:
            protocol, transport = connect(node)
            self.device.max_heartbeat = asked
            protocol.dataReceived(self.device.fast_connect_bytes(ok.session_id))
            [reply] = self.device.read(transport)
            self.assertEqual(fast_connect_ok_of(reply).heartbeat, granted, asked)
            self.assertEqual(protocol.context.heartbeat, granted, asked)

    def test_inverted_server_range_grants_the_minimum(self):
        core = type(self.node.config.core)(min_heartbeat=300000, max_heartbeat=60000)
        node = make_node(self.node.config.replace(core=core))
        first, transport = connect(node)
        first.dataReceived(self.device.handshake_bytes())
        ok = self.device.accept_handshake_ok(self.device.read(transport)[0])
        for asked in (1000, 120000, 400000):
            protocol, transport = connect(node)
            self.device.max_heartbeat = asked
            protocol.dataReceived(self.device.fast_connect_bytes(ok.session_id))
            [reply] = self.device.read(transport)
            self.assertEqual(fast_connect_ok_of(reply).heartbeat, 300000, asked)

    def test_unknown_session(self):
        self.protocol.dataReceived(self.device.fast_connect_bytes("0" * 32, packet_id=1))
        [reply] = self.device.read(self.transport)
        # The exact frame of spec 20.3.
        self.assertEqual(
            encode_packet(reply),
            bytes.fromhex("000000150a00000000000001000767000f73657373696f6e2065787069726564" "0000"),
        )
        self.assertFalse(self.transport.disconnecting)
        self.assertIs(self.protocol.state, ConnectionState.NEW)

    def test_handshake_after_expired_on_same_connection(self):
        self.protocol.dataReceived(self.device.fast_connect_bytes("nope"))
        self.device.read(self.transport)
        self.protocol.dataReceived(self.device.handshake_bytes())
        [reply] = self.device.read(self.transport)
        self.device.accept_handshake_ok(reply)
        self.assertIs(self.protocol.state, ConnectionState.HANDSHAKEN)

    def test_empty_session_id(self):
        self.protocol.dataReceived(self.device.fast_connect_bytes(None))
        [reply] = self.device.read(self.transport)
        self.assertEqual(error_of(reply).code, 103)

    def test_session_expires_with_ttl(self):
        self.node.clock.advance(86400 + 1)
        # A connection made a day ago would have met the pre-handshake timeout.
        self.protocol, self.transport = connect(self.node)
        self.protocol.dataReceived(self.device.fast_connect_bytes(self.ok.session_id))
        [reply] = self.device.read(self.transport)
        self.assertEqual(error_of(reply).code, 103)

    def test_wrong_device(self):
        self.protocol.dataReceived(
            self.device.fast_connect_bytes(self.ok.session_id, device_id="someone-else")
        )
        [reply] = self.device.read(self.transport)
        error = error_of(reply)
        self.assertEqual((error.cmd, error.code, error.reason), (7, 104, "invalid device"))
        self.assertFalse(self.transport.disconnecting)
        self.assertIsNone(self.protocol.context.cipher)

    def test_missing_device_is_invalid(self):
        self.protocol.dataReceived(
            self.device.fast_connect_bytes(self.ok.session_id, device_id="")
        )
        [reply] = self.device.read(self.transport)
        self.assertEqual(error_of(reply).code, 104)

    def test_bad_aes_padding_after_handshake(self):
        """
        A CRYPTO body that does not decrypt under the session key: ERROR 100
        and close.
        """
        self.protocol.dataReceived(self.device.fast_connect_bytes(self.ok.session_id))
        self.device.read(self.transport)
        frame = encode_packet(Packet(Command.FAST_CONNECT, 4, Flags.CRYPTO, b"\x13" * 16))
        self.protocol.dataReceived(frame)
        [reply] = self.device.read(self.transport)
        error = error_of(reply)
        self.assertEqual((error.cmd, error.code), (7, 100))
        self.assertTrue(self.transport.disconnecting)

    def test_encrypted_fast_connect_under_session_key(self):
        """
        A CRYPTO-flagged fast connect on an established connection is
        decrypted with the connection's cipher, as in MPush.
        """
        self.protocol.dataReceived(self.device.fast_connect_bytes(self.ok.session_id))
        self.device.read(self.transport)
        message = FastConnectMessage(self.ok.session_id, "dev-1", 240000, 240000)
        packet = make_packet(Command.FAST_CONNECT, message, 5, cipher=self.device.cipher)
        self.protocol.dataReceived(encode_packet(packet))
        [reply] = self.device.read(self.transport)
        self.assertEqual(fast_connect_ok_of(reply).heartbeat, 180000)


class StoreDependentTests(SynchronousTestCase):
    """
    Fast connect against a store that answers late, fails, or answers after
    the connection is gone.
    """

    def setUp(self):
        self.store = ManualStore()
        self.node = make_node(store=self.store)
        self.protocol, self.transport = connect(self.node)
        self.device = ScriptedDevice()
        self.session = ReusableSession("android", "1", "1", "dev-1", b"k" * 16, b"i" * 16)

    def test_packets_wait_for_the_busy_handler(self):
        """
        A ping pipelined behind a fast connect is answered only after the
        fast connect's reply: one connection's packets run strictly in order.
        """
        self.protocol.dataReceived(self.device.fast_connect_bytes("s1") + HEARTBEAT_BYTE)
        self.assertEqual(self.transport.value(), b"")
        [(session_id, waiting)] = self.store.loads
        self.assertEqual(session_id, "s1")
        waiting.callback(self.session)
        replies = self.device.read(self.transport)
        self.assertEqual([p.cmd for p in replies], [Command.FAST_CONNECT, Command.HEARTBEAT])

    def test_store_down_answers_session_expired(self):
        self.protocol.dataReceived(self.device.fast_connect_bytes("s1"))
        self.store.loads[0][1].errback(StoreUnavailable("redis: connection refused"))
        [reply] = self.device.read(self.transport)
        self.assertEqual(error_of(reply).code, 103)
        self.assertFalse(self.transport.disconnecting)

    def test_unexpected_store_error_is_a_dispatch_error(self):
        self.protocol.dataReceived(self.device.fast_connect_bytes("s1"))
        self.store.loads[0][1].errback(RuntimeError("bug"))
        [reply] = self.device.read(self.transport)
        self.assertEqual(error_of(reply).code, 100)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_connection_gone_before_the_write(self):
        """
        If the connection closes while the store is asked, the cached
        session is never attached and nothing fails.
        """
        self.protocol.dataReceived(self.device.fast_connect_bytes("s1"))
        self.protocol.connectionLost(None)
        self.store.loads[0][1].callback(self.session)
        self.assertEqual(self.transport.value(), b"")
        self.assertIsNone(self.protocol.context.cipher)
        self.assertIs(self.protocol.state, ConnectionState.CLOSED)

    def test_too_many_packets_behind_a_busy_handler(self):
        self.protocol.dataReceived(self.device.fast_connect_bytes("s1"))
        self.protocol.dataReceived(HEARTBEAT_BYTE * (MAX_PENDING_PACKETS + 1))
        self.assertTrue(self.transport.disconnected)


class BadInputTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.protocol, self.transport = connect(self.node)
        self.device = ScriptedDevice()

    def assertRejected(self, cmd, code):
        [reply] = self.device.read(self.transport)
        error = error_of(reply)
        self.assertEqual((error.cmd, error.code), (cmd, code))
        self.assertTrue(self.transport.disconnecting)

    def test_reserved_command(self):
        self.protocol.dataReceived(encode_packet(Packet(Command.LOGIN, 1)))
        self.assertRejected(3, 101)

    def test_unknown_command_code(self):
        self.protocol.dataReceived(encode_packet(Packet(99, 1, 0, b"x")))
        self.assertRejected(99, 101)

    def test_client_sent_error(self):
        self.protocol.dataReceived(encode_packet(Packet(Command.ERROR, 1)))
        self.assertRejected(10, 101)

    def test_garbage_small_length(self):
        """
        Garbage whose first bytes read as a small length parse as a header
        with a nonsense command: UNSUPPORTED_CMD and close.
        """
        self.protocol.dataReceived(b"\x00\x00\x00\x02" + b"\x7fgarbage!!!!!!")
        self.assertRejected(0x7F, 101)

    def test_oversize_rejected_from_the_header(self):
        header = struct.pack(">ibhbib", 10241, Command.PUSH, 0, 0, 1, 0)
        self.protocol.dataReceived(header)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.transport.value(), b"")

    def test_max_size_accepted(self):
        frame = encode_packet(Packet(Command.HEARTBEAT, 1, 0, b"\x00" * 10240))
        self.protocol.dataReceived(frame)
        self.assertEqual(self.transport.value(), HEARTBEAT_BYTE)

    def test_negative_length(self):
        self.protocol.dataReceived(struct.pack(">ibhbib", -5, 2, 0, 0, 1, 0))
        self.assertTrue(self.transport.disconnected)

    def test_garbage_after_close_ignored(self):
        self.protocol.dataReceived(struct.pack(">ibhbib", -5, 2, 0, 0, 1, 0))
        self.protocol.dataReceived(b"\xdf" * 10)
        self.assertEqual(self.transport.value(), b"")

    def test_truncated_frame_then_close(self):
        frame = self.device.handshake_bytes()
        self.protocol.dataReceived(frame[:50])
        self.assertEqual(self.transport.value(), b"")
        self.protocol.connectionLost(None)
        self.assertNotIn(self.protocol.conn_id, self.node.connections)

    def test_truncated_body_fields(self):
        """
        A plaintext fast connect whose fields stop short: ERROR 100, close.
        """
        frame = encode_packet(Packet(Command.FAST_CONNECT, 2, 0, b"\x00\x20abc"))
        self.protocol.dataReceived(frame)
        self.assertRejected(7, 100)

    def test_nothing_processed_after_rejection(self):
        frame = encode_packet(Packet(Command.LOGIN, 1)) + HEARTBEAT_BYTE
        self.protocol.dataReceived(frame)
        self.assertRejected(3, 101)

    def test_other_connections_unaffected(self):
        other, transport = connect(self.node)
        self.protocol.dataReceived(encode_packet(Packet(99, 1)))
        other.dataReceived(HEARTBEAT_BYTE)
        self.assertEqual(transport.value(), HEARTBEAT_BYTE)
        self.assertFalse(transport.disconnecting)


class CipherOrderTests(SynchronousTestCase):
    def test_packet_in_same_chunk_uses_new_session_key(self):
        """
        A packet that arrives in the same read as the handshake, encrypted
        with the new session key, is decrypted with it: the switch happens
        right after the HandshakeOk write, before the next packet is handled.
        """
        server_key = bytes(range(0x10, 0x20))
        self.patch(handshake, "random_bytes", lambda n: server_key[:n])
        node = make_node()
        protocol, transport = connect(node)
        device = ScriptedDevice()
        session_key = mix_key(device.client_key, server_key)
        follow_up = make_packet(
            Command.FAST_CONNECT,
            FastConnectMessage("unknown", "dev-1", 240000, 240000),
            3,
            cipher=AesCipher(session_key, device.iv),
        )
        protocol.dataReceived(device.handshake_bytes() + encode_packet(follow_up))
        handshake_ok, answer = device.read(transport)
        self.assertEqual(device.accept_handshake_ok(handshake_ok).server_key, server_key)
        # Decrypted fine (else ERROR 100): the unknown session is reported.
        self.assertEqual(error_of(answer).code, 103)

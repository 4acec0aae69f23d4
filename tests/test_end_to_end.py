"""
End to end over loopback: a node listening on a real port, the Python client
on the other side, the real reactor; Redis tests against a real redis-server.
"""

import dataclasses
import os
import socket

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from mpush.client.config import ClientConfig
from mpush.config import load_config
from mpush.client.protocol import connect_client
from mpush.protocol.crypto import MPUSH_DEMO_PUBLIC_KEY
from mpush.protocol.packet import HEARTBEAT_BYTE
from mpush.protocol.session import ClientSession, encode_client_session
from mpush.store.redis import RedisSessionStore
from mpush.store.redis_connection import connect_redis

from tests.loopback_support import LoopbackNode
from tests.redis_server import start_redis_server


class EndToEndCase(TestCase):
    timeout = 30

    def client_config(self, port, **overrides):
        settings = dict(
            host="127.0.0.1",
            port=port,
            public_key=MPUSH_DEMO_PUBLIC_KEY,
            device_id="device-e2e",
            os_name="android",
        )
        settings.update(overrides)
        return ClientConfig(**settings)

    @defer.inlineCallbacks
    def connect(self, port, **overrides):
        client = yield connect_client(self.client_config(port, **overrides), reactor)
        self.addCleanup(client.close)
        return client

    def session_file(self):
        return os.path.join(self.mktemp() + "-token.dat")


class HandshakeAndPingTests(EndToEndCase):
    @defer.inlineCallbacks
    def test_handshake_then_ping(self):
        server = LoopbackNode(self)
        client = yield self.connect(server.port)
        self.assertEqual(client.heartbeat, 180000)
        self.assertRegex(client.session_id, r"^[0-9a-f]{32}$")
        self.assertFalse(client.resumed)
        yield client.ping()
        yield client.ping()
        self.assertEqual(client.pong_count, 2)
        [connection] = server.node.connections.values()
        self.assertEqual(connection.context.device_id, "device-e2e")

    @defer.inlineCallbacks
    def test_many_clients(self):
        server = LoopbackNode(self)
        clients = yield defer.gatherResults(
            [self.connect(server.port, device_id=f"d{i}") for i in range(20)]
        )
        self.assertEqual(len({c.session_id for c in clients}), 20)
        self.assertEqual(len(server.node.connections), 20)


class FastConnectTests(EndToEndCase):
    @defer.inlineCallbacks
    def test_fast_connect_ok(self):
        server = LoopbackNode(self)
        token = self.session_file()
        first = yield self.connect(server.port, session_file=token)
        yield first.close()
        second = yield self.connect(server.port, session_file=token)
        self.assertTrue(second.resumed)
        self.assertEqual(second.handshake_ok_count, 0)
        self.assertEqual(second.session_id, first.session_id)
        # The resumed session speaks the cached key: a ping and the server's
        # view of the device prove the connection is established.
        yield second.ping()
        [connection] = server.node.connections.values()
        self.assertEqual(connection.context.device_id, "device-e2e")
        self.assertEqual(connection.context.heartbeat, 180000)

    @defer.inlineCallbacks
    def test_heartbeat_inside_the_server_range_on_handshake_and_fast_connect(self):
        """
        A client range strictly inside the server's: both the handshake and
        the fast connect grant the client's own maximum, on the wire and in
        the server's idle timer.
        """
        config = load_config(None)
        server = LoopbackNode(self, config=config.replace(
            core=dataclasses.replace(config.core, min_heartbeat=10000, max_heartbeat=600000)
        ))
        token = self.session_file()
        first = yield self.connect(server.port, session_file=token, min_heartbeat=60000, max_heartbeat=120000)
        self.assertEqual(first.heartbeat, 120000)
        [connection] = server.node.connections.values()
        self.assertEqual(connection.context.heartbeat, 120000)
        yield first.close()
        second = yield self.connect(server.port, session_file=token, min_heartbeat=30000, max_heartbeat=90000)
        self.assertTrue(second.resumed)
        self.assertEqual(second.heartbeat, 90000)
        yield second.ping()
        [connection] = server.node.connections.values()
        self.assertEqual(connection.context.heartbeat, 90000)

    def write_session(self, path, session_id):
        expire = int(reactor.seconds() * 1000) + 3_600_000
        text = encode_client_session(ClientSession(session_id, expire, b"\x01" * 16, b"\x02" * 16))
        with open(path, "w") as token:
            token.write(text)

    @defer.inlineCallbacks
    def test_fast_connect_expired_falls_back_to_handshake(self):
        server = LoopbackNode(self)
        token = self.session_file()
        self.write_session(token, "f" * 32)
        client = yield self.connect(server.port, session_file=token)
        self.assertFalse(client.resumed)
        self.assertEqual([e.code for e in client.fast_connect_errors], [103])
        self.assertEqual(client.handshake_ok_count, 1)
        yield client.ping()

    @defer.inlineCallbacks
    def test_fast_connect_wrong_device(self):
        server = LoopbackNode(self)
        token = self.session_file()
        first = yield self.connect(server.port, session_file=token)
        yield first.close()
        other = yield self.connect(server.port, session_file=token, device_id="another-device")
        self.assertFalse(other.resumed)
        self.assertEqual([e.code for e in other.fast_connect_errors], [104])
        self.assertNotEqual(other.session_id, first.session_id)
        yield other.ping()


class RedisSessionTests(EndToEndCase):
    def setUp(self):
        self.redis = start_redis_server(self)

    def redis_store(self):
        client = connect_redis(self.redis.url, reactor)
        store = RedisSessionStore(client, reactor, timeout=1.0)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def test_restarted_node_resumes_session(self):
        """
        A session cached in Redis by one node is resumed after that node is
        replaced by a fresh one (a restart): nothing of it lived in memory.
        """
        token = self.session_file()
        server = LoopbackNode(self, store=self.redis_store())
        first = yield self.connect(server.port, session_file=token)
        yield first.close()
        yield server.stop()
        restarted = LoopbackNode(self, store=self.redis_store())
        second = yield self.connect(restarted.port, session_file=token)
        self.assertTrue(second.resumed)
        yield second.ping()

    @defer.inlineCallbacks
    def test_redis_down_fast_connect_degrades_to_handshake(self):
        token = self.session_file()
        server = LoopbackNode(self, store=self.redis_store())
        first = yield self.connect(server.port, session_file=token)
        yield first.close()
        self.redis.stop()
        second = yield self.connect(server.port, session_file=token)
        self.assertFalse(second.resumed)
        self.assertEqual([e.code for e in second.fast_connect_errors], [103])
        self.assertEqual(second.handshake_ok_count, 1)
        yield second.ping()


class BadInputTests(EndToEndCase):
    def raw_exchange(self, port, data, read_timeout=5.0):
        """
        Send C{data} on a plain socket (in a thread) and read until the
        server closes (or resets) it; return what it sent.
        """

        def exchange():
            with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
                sock.sendall(data)
                received = b""
                while True:
                    try:
                        chunk = sock.recv(65536)
                    except ConnectionResetError:
                        return received
                    if not chunk:
                        return received
                    received += chunk

        from twisted.internet.threads import deferToThread

        return deferToThread(exchange)

    @defer.inlineCallbacks
    def test_garbage_closes_only_that_connection(self):
        server = LoopbackNode(self)
        honest = yield self.connect(server.port)
        received = yield self.raw_exchange(server.port, b"\x00\x01\x00\x00GARBAGE-GARBAGE")
        self.assertEqual(received, b"")
        received = yield self.raw_exchange(server.port, b"\x00\x00\x00\x01\x03" + b"\x00" * 9)
        self.assertEqual(received[4:5], b"\x0a")  # ERROR 101 for LOGIN, then close
        yield honest.ping()

    @defer.inlineCallbacks
    def test_heartbeat_flood(self):
        server = LoopbackNode(self)
        honest = yield self.connect(server.port, device_id="honest")
        flood = HEARTBEAT_BYTE * 200_000

        def flood_and_close():
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(flood)
                sock.shutdown(socket.SHUT_WR)
                received = 0
                while True:
                    chunk = sock.recv(65536)
                    if not chunk or received + len(chunk) >= len(flood):
                        return received + len(chunk)
                    received += len(chunk)

        from twisted.internet.threads import deferToThread

        answered = yield deferToThread(flood_and_close)
        self.assertEqual(answered, len(flood))
        yield honest.ping()


class SlowReaderTests(EndToEndCase):
    @defer.inlineCallbacks
    def test_slow_reader_fails_pushes_and_server_memory_stays_bounded(self):
        """
        A device that stops reading fills the kernel buffers, then the
        server's send buffer up to the high-water mark: from then on pushes
        to it fail with PUSH_CLIENT_FAILURE instead of growing memory, and
        other devices are unaffected.
        """
        from mpush.push import PushClient, PushStatus

        server = LoopbackNode(self)
        slow = yield self.connect(server.port, device_id="slow", user_id="slow-user")
        fast = yield self.connect(server.port, device_id="fast", user_id="fast-user")
        slow.transport.pauseProducing()  # the device stops reading its socket
        pusher = PushClient(reactor, gateway=("127.0.0.1", server.gateway_port), timeout=5.0)
        self.addCleanup(pusher.close)
        content = b"z" * 4000
        statuses = []
        for _ in range(3000):
            [result] = yield pusher.push("slow-user", content)
            statuses.append(result.status)
            if result.status is PushStatus.FAILURE:
                break
        self.assertEqual(statuses[-1], PushStatus.FAILURE)
        self.assertEqual(statuses[-1:], [PushStatus.FAILURE])
        [connection] = [c for c in server.node.connections.values() if c.context.user_id == "slow-user"]
        transport = connection.transport
        buffered = len(transport.dataBuffer) + transport._tempDataLen
        high = server.config.net.connect_server_write_high
        self.assertLess(buffered, high + 2 * len(content) + 64)
        [again] = yield pusher.push("slow-user", content)
        self.assertEqual(again.status, PushStatus.FAILURE)
        [other] = yield pusher.push("fast-user", b"still fine")
        self.assertEqual(other.status, PushStatus.SUCCESS)
        received = yield fast.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"still fine")


class JavaStylePusherTests(EndToEndCase):
    @defer.inlineCallbacks
    def test_ack_timeout_sends_nothing_to_a_java_pusher(self):
        """
        MPush's Java PushSender never sets REPORT_TIMEOUTS and hangs on any
        code but 1-3: an ack that never comes gets it no reply at all (its
        own timer reports the timeout), then it goes on working.
        """
        from mpush.protocol.body import make_raw_packet
        from mpush.protocol.messages import GatewayPushMessage, OkMessage
        from mpush.protocol.packet import Command, Flags, PacketDecoder, encode_packet
        from twisted.internet.threads import deferToThread

        server = LoopbackNode(self)
        device = yield self.connect(server.port, user_id="ivan")

        def java_pusher():
            decoder = PacketDecoder(None)
            with socket.create_connection(("127.0.0.1", server.gateway_port), timeout=5) as sock:
                unacked = GatewayPushMessage("ivan", 1, 500, b"biz", None, None, None)
                sock.sendall(encode_packet(make_raw_packet(Command.GATEWAY_PUSH, unacked, 1, Flags.BIZ_ACK)))
                sock.settimeout(2.0)
                try:
                    early = sock.recv(65536)
                except socket.timeout:
                    early = b""
                sock.settimeout(5)
                plain = GatewayPushMessage("ivan", 1, 2500, b"plain", None, None, None)
                sock.sendall(encode_packet(make_raw_packet(Command.GATEWAY_PUSH, plain, 2)))
                later = b""
                while not decoder.feed(later) and len(later) < 13:
                    later += sock.recv(65536)
                return early, PacketDecoder(None).feed(later)

        early, [reply] = yield deferToThread(java_pusher)
        self.assertEqual(early, b"")
        self.assertEqual((reply.cmd, reply.session_id), (Command.OK, 2))
        self.assertEqual(OkMessage.decode(reply.body).cmd, Command.GATEWAY_PUSH)
        for _ in range(100):
            if len(device.pushes) == 2:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(device.pushes, [b"biz", b"plain"])

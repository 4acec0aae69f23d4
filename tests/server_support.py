"""
Test support for the connection server: a node on a fake clock, connections
over C{StringTransport}, and a scripted device that speaks the wire protocol
with the sans-I/O core alone (no mpush.client, so a client bug cannot hide a
server bug).
"""

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mpush.config import SecurityConfig, load_config
from mpush.protocol.body import decode_body, make_packet, make_raw_packet
from mpush.protocol.crypto import (
    MPUSH_DEMO_PRIVATE_KEY,
    MPUSH_DEMO_PUBLIC_KEY,
    AesCipher,
    RsaPrivateKey,
    mix_key,
)
from mpush.protocol.messages import (
    ErrorMessage,
    FastConnectMessage,
    FastConnectOkMessage,
    HandshakeMessage,
    HandshakeOkMessage,
)
from mpush.protocol.packet import HEARTBEAT_BYTE, Command, PacketDecoder, encode_packet
from mpush.tap import Backends, build_node, make_dispatcher

DEMO_KEY = RsaPrivateKey.from_pkcs8_base64(MPUSH_DEMO_PRIVATE_KEY)

#: A wall-clock start for fake clocks, so expire times look real.
EPOCH = 1_790_000_000.0


def demo_config(config=None):
    """
    C{config} (default: the defaults) with MPush's demo key pair, so no key
    is generated and clients can use the published public key.
    """
    config = config or load_config(None)
    return config.replace(
        security=SecurityConfig(private_key=MPUSH_DEMO_PRIVATE_KEY, public_key=MPUSH_DEMO_PUBLIC_KEY)
    )


def make_node(config=None, clock=None, store=None, backends=None):
    """
    A whole node (router and push centers included) on in-memory backends
    and a fake clock set to a realistic wall-clock time.
    """
    clock = clock or task.Clock()
    if not clock.seconds():
        clock.advance(EPOCH)
    config = demo_config(config)
    backends = backends or Backends(config, clock)
    if store is not None:
        backends.sessions = store
    node, _, _ = build_node(config, clock, backends)
    return node


def connect(node, dispatcher=None, port=40000):
    """
    A server connection of C{node} over a fresh StringTransport.
    """
    from mpush.server.device.connection import ConnectionFactory

    factory = ConnectionFactory(node, dispatcher or make_dispatcher(node))
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
    protocol.makeConnection(transport)
    return protocol, transport


class ScriptedDevice:
    """
    The device side of one connection, driven step by step by a test.
    """

    def __init__(self, device_id="dev-1", os_name="android", max_heartbeat=240000):
        self.device_id = device_id
        self.os_name = os_name
        self.max_heartbeat = max_heartbeat
        self.client_key = bytes(range(0xF0, 0x100))
        self.iv = bytes(range(16))
        self.cipher = None
        self.decoder = PacketDecoder(None)
        self.next_id = 0

    def packet_id(self):
        self.next_id += 1
        return self.next_id

    def handshake_bytes(self, session_id=None, **overrides):
        fields = dict(
            device_id=self.device_id,
            os_name=self.os_name,
            os_version="13",
            client_version="1.0",
            iv=self.iv,
            client_key=self.client_key,
            min_heartbeat=self.max_heartbeat,
            max_heartbeat=self.max_heartbeat,
        )
        fields.update(overrides)
        packet = make_packet(
            Command.HANDSHAKE,
            HandshakeMessage(**fields),
            session_id or self.packet_id(),
            cipher=DEMO_KEY.public_key(),
            compress_threshold=1024,
        )
        return encode_packet(packet)

    def fast_connect_bytes(self, session_id, device_id=None, packet_id=None):
        message = FastConnectMessage(
            session_id,
            self.device_id if device_id is None else device_id,
            self.max_heartbeat,
            self.max_heartbeat,
        )
        return encode_packet(
            make_raw_packet(Command.FAST_CONNECT, message, packet_id or self.packet_id())
        )

    def read(self, transport):
        """
        Every unit the server wrote since the last read, decoded.
        """
        data = transport.value()
        transport.clear()
        return self.decoder.feed(data)

    def accept_handshake_ok(self, packet):
        """
        Decrypt a HandshakeOk as the Java client does and adopt the session key.
        """
        assert packet.cmd == Command.HANDSHAKE, packet
        body = decode_body(packet, AesCipher(self.client_key, self.iv))
        ok = HandshakeOkMessage.decode(body)
        self.cipher = AesCipher(mix_key(self.client_key, ok.server_key), self.iv)
        return ok


def error_of(packet):
    assert packet.cmd == Command.ERROR, packet
    return ErrorMessage.decode(packet.body)


def fast_connect_ok_of(packet):
    assert packet.cmd == Command.FAST_CONNECT, packet
    return FastConnectOkMessage.decode(packet.body)


__all__ = [
    "DEMO_KEY",
    "demo_config",
    "EPOCH",
    "HEARTBEAT_BYTE",
    "ScriptedDevice",
    "connect",
    "error_of",
    "fast_connect_ok_of",
    "make_node",
]

"""
HANDSHAKE: agree the session keys with a new device (spec 8.1).

The body is always RSA-decrypted, whatever the connection's state.  The
session is cached for fast connect first; then the reply, HandshakeOk, goes
out under AES(clientKey, iv), and only once it has been written does the
connection switch to AES(clientKey XOR serverKey, iv) and adopt the device.

RSA is the expensive part, so a handshake first draws on the node's
handshake token bucket (C{[limits] handshake-rate}).
"""

from twisted.logger import Logger
from zope.interface import implementer

from mpush import debug_log
from mpush.protocol.body import decode_body, make_packet
from mpush.protocol.crypto import AES_KEY_LENGTH, AesCipher, mix_key, random_bytes
from mpush.protocol.heartbeat import negotiate_heartbeat
from mpush.protocol.messages import HandshakeMessage, HandshakeOkMessage
from mpush.protocol.packet import Command
from mpush.protocol.session import new_session_id
from mpush.server.device.context import SessionContext
from mpush.server.device.dispatcher import IMessageHandler
from mpush.server.device.errors import ParamInvalid, RepeatHandshake


def validate_handshake(message):
    """
    Refuse a handshake that cannot yield a session: no device id, or an IV
    or client key that is not 16 bytes.  (MPush answers a missing key with
    ERROR 100 because it mixes keys before validating; the client stops
    either way, so the clearer answer is given.)
    """
    if not message.device_id:
        raise ParamInvalid("handshake without a device id")
    if message.iv is None or len(message.iv) != AES_KEY_LENGTH:
        raise ParamInvalid(f"iv must be {AES_KEY_LENGTH} bytes")
    if message.client_key is None or len(message.client_key) != AES_KEY_LENGTH:
        raise ParamInvalid(f"client key must be {AES_KEY_LENGTH} bytes")


@implementer(IMessageHandler)
class HandshakeHandler:
    """
    Full handshake of the TCP connection server.
    """

    command = Command.HANDSHAKE
    log = Logger()

    def __init__(self, node):
        self.node = node

    def handle(self, connection, packet):
        try:
            return self._handshake(connection, packet)
        except RepeatHandshake:
            self.node.metrics.handshake("repeat")
            raise
        except ParamInvalid:
            self.node.metrics.handshake("invalid")
            raise
        except Exception:
            self.node.metrics.handshake("error")
            raise

    def _handshake(self, connection, packet):
        node = self.node
        core = node.config.core
        # The rate limit is asked before any RSA work; over it, the
        # connection is closed without an ERROR (which would stop the Java
        # client for good, spec 14.4): it retries later.
        if not connection.allow_rsa(len(packet.body)):
            return None
        body = decode_body(packet, node.private_key, core.max_inflated_size)
        message = HandshakeMessage.decode(body)
        validate_handshake(message)
        if message.device_id == connection.context.device_id:
            raise RepeatHandshake(f"device {message.device_id} already handshaken")

        server_key = random_bytes(AES_KEY_LENGTH)
        session_key = mix_key(message.client_key, server_key)
        heartbeat = negotiate_heartbeat(
            message.max_heartbeat, core.min_heartbeat, core.max_heartbeat
        )
        session_id = new_session_id()
        expire_time = node.now_ms() + core.session_expired_time * 1000
        client_cipher = AesCipher(message.client_key, message.iv)
        reply = make_packet(
            Command.HANDSHAKE,
            HandshakeOkMessage(server_key, heartbeat, session_id, expire_time),
            packet.session_id,
            cipher=client_cipher,
            compress_threshold=core.compress_threshold,
        )
        context = SessionContext(
            heartbeat=heartbeat,
            cipher=AesCipher(session_key, message.iv),
            device_id=message.device_id,
            os_name=message.os_name,
            os_version=message.os_version,
            client_version=message.client_version,
        )
        # The session is cached before the reply goes out, so a device that
        # has its HandshakeOk can fast-connect at once to any node sharing
        # the store.  A store that is down costs this device its next fast
        # connect, never this handshake.
        saved = node.session_store.save(
            session_id, context.to_reusable_session(session_key, message.iv), core.session_expired_time
        )
        saved.addErrback(self._not_cached, session_id)
        saved.addCallback(self._reply, connection, reply, client_cipher, context)
        return saved

    def _reply(self, _, connection, reply, client_cipher, context):
        # As in MPush: until the reply is out, the connection speaks
        # AES(clientKey, iv); a failed write leaves it so.
        connection.context.cipher = client_cipher
        written = connection.write_packet(reply)
        written.addCallback(self._established, connection, context)
        return written

    def _established(self, _, connection, context):
        connection.establish(context)
        self.node.metrics.handshake("ok")
        if debug_log.wanted():
            self.log.debug(
                "handshake ok {peer} device={device} heartbeat={heartbeat}",
                peer=connection.peer,
                device=context.device_id,
                heartbeat=context.heartbeat,
            )

    def _not_cached(self, failure, session_id):
        self.log.debug(
            "session {session} not cached: {why}",
            session=session_id,
            why=failure.getErrorMessage(),
        )

"""
HANDSHAKE: agree the session keys with a new device (spec 8.1).

On an encrypted connection (TCP) the body was RSA-decrypted by the
connection, whatever its state, after drawing on the node's handshake token
bucket (C{[limits] handshake-rate}).  The session is cached for fast connect
first; then the reply, HandshakeOk, goes out under AES(clientKey, iv), and
only once it has been written does the connection switch to
AES(clientKey XOR serverKey, iv) and adopt the device.

A WebSocket's handshake is the non-secure one (spec 8.3): a device id and no
keys; the reply has no body; no reusable session, so no fast connect.
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mpush import debug_log
from mpush.config import CoreConfig
from mpush.metrics import IMetrics
from mpush.protocol.body import make_packet
from mpush.protocol.crypto import AES_KEY_LENGTH, AesCipher, mix_key, random_bytes
from mpush.protocol.heartbeat import negotiate_heartbeat
from mpush.protocol.messages import HandshakeMessage, HandshakeOkMessage
from mpush.protocol.packet import Command, Packet
from mpush.protocol.session import new_session_id
from mpush.server.device.context import SessionContext
from mpush.server.device.dispatcher import DeviceHandler
from mpush.server.device.errors import ConnectionClosed, ParamInvalid, RepeatHandshake
from mpush.store.interfaces import ISessionStore

#: The heartbeat of a session without one (spec 8.3): the largest Java int.
NO_HEARTBEAT = 2**31 - 1


def validate_handshake(message: HandshakeMessage, keys: bool = True) -> None:
    """
    Refuse a handshake that cannot yield a session: no device id, or (when
    it agrees C{keys}) an IV or client key that is not 16 bytes.  (MPush
    answers a missing key with ERROR 100 because it mixes keys before
    validating; the client stops either way, so the clearer answer is given.)
    """
    if not message.device_id:
        raise ParamInvalid("handshake without a device id")
    if not keys:
        return
    if message.iv is None or len(message.iv) != AES_KEY_LENGTH:
        raise ParamInvalid(f"iv must be {AES_KEY_LENGTH} bytes")
    if message.client_key is None or len(message.client_key) != AES_KEY_LENGTH:
        raise ParamInvalid(f"client key must be {AES_KEY_LENGTH} bytes")


def _refuse_repeat(connection: Any, message: HandshakeMessage) -> None:
    """
    A second handshake from the device already established here is
    answered REPEAT_HANDSHAKE, and the session kept.
    """
    if message.device_id == connection.context.device_id:
        raise RepeatHandshake(f"device {message.device_id} already handshaken")


class HandshakeHandler(DeviceHandler):
    """
    The full handshake of an encrypted connection, the non-secure one of a
    WebSocket.

    @param sessions: where sessions are cached for fast connect.
    @param core: the C{[core]} config (heartbeats, session expiry, compression).
    """

    command = Command.HANDSHAKE
    log = Logger()

    def __init__(
        self, sessions: ISessionStore, core: CoreConfig, metrics: IMetrics, clock: IReactorTime
    ) -> None:
        self.sessions = sessions
        self.core = core
        self.metrics = metrics
        self.clock = clock

    def refused(self, exception: Exception) -> None:
        # A handshake over the rate limit was closed without a word: not an error.
        if not isinstance(exception, ConnectionClosed):
            self.metrics.handshake("error")

    def handle(self, connection: Any, packet: Any, message: HandshakeMessage) -> Deferred | None:
        try:
            validate_handshake(message, keys=connection.encrypted)
            _refuse_repeat(connection, message)
            if connection.encrypted:
                return self._handshake(connection, packet, message)
            return self._plain_handshake(connection, packet, message)
        except RepeatHandshake:
            self.metrics.handshake("repeat")
            raise
        except ParamInvalid:
            self.metrics.handshake("invalid")
            raise
        except Exception:
            self.metrics.handshake("error")
            raise

    def _handshake(self, connection: Any, packet: Any, message: HandshakeMessage) -> Deferred:
        core = self.core

        server_key = random_bytes(AES_KEY_LENGTH)
        session_key = mix_key(message.client_key, server_key)
        heartbeat = negotiate_heartbeat(
            message.max_heartbeat, core.min_heartbeat, core.max_heartbeat
        )
        session_id = new_session_id()
        expire_time = int(self.clock.seconds() * 1000) + core.session_expired_time * 1000
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
        saved = self.sessions.save(
            session_id, context.to_reusable_session(session_key, message.iv), core.session_expired_time
        )
        saved.addErrback(self._not_cached, session_id)
        saved.addCallback(self._reply, connection, reply, client_cipher, context)
        return saved

    def _plain_handshake(self, connection: Any, packet: Any, message: HandshakeMessage) -> Deferred:
        context = SessionContext(
            heartbeat=NO_HEARTBEAT,
            device_id=message.device_id,
            os_name=message.os_name,
            os_version=message.os_version,
            client_version=message.client_version,
        )
        written = connection.send_raw(Command.HANDSHAKE, None, packet.session_id)
        return written.addCallback(self._established, connection, context)

    def _reply(
        self, _: object, connection: Any, reply: Packet, client_cipher: AesCipher, context: SessionContext
    ) -> Deferred:
        # As in MPush: until the reply is out, the connection speaks
        # AES(clientKey, iv); a failed write leaves it so.
        connection.context.cipher = client_cipher
        written = connection.write_packet(reply)
        written.addCallback(self._established, connection, context)
        return written

    def _established(self, _: object, connection: Any, context: SessionContext) -> None:
        connection.establish(context)
        self.metrics.handshake("ok")
        if debug_log.wanted():
            self.log.debug(
                "handshake ok {peer} device={device} heartbeat={heartbeat} type={type}",
                peer=connection.peer,
                device=context.device_id,
                heartbeat=context.heartbeat,
                type=context.client_type.name,
            )

    def _not_cached(self, failure: Failure, session_id: str) -> None:
        self.log.debug(
            "session {session} not cached: {why}",
            session=session_id,
            why=failure.getErrorMessage(),
        )

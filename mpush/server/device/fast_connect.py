"""
FAST_CONNECT: resume a cached session without RSA (spec 9.1).

The chain is: look the session up; refuse it (SESSION_EXPIRED or
INVALID_DEVICE, connection kept for a handshake) or write FastConnectOk raw;
and only in the callback of that write adopt the cached keys and device.
Any failure before that leaves the connection exactly as it was.
"""

from twisted.logger import Logger
from zope.interface import implementer

from mpush import debug_log
from mpush.protocol.body import decode_body
from mpush.protocol.crypto import AesCipher
from mpush.protocol.heartbeat import negotiate_heartbeat
from mpush.protocol.messages import FastConnectMessage, FastConnectOkMessage
from mpush.protocol.packet import Command
from mpush.server.device.context import SessionContext
from mpush.server.device.dispatcher import IMessageHandler
from mpush.server.device.errors import ConnectionClosed, InvalidDevice, SessionExpired
from mpush.store.interfaces import StoreUnavailable


@implementer(IMessageHandler)
class FastConnectHandler:
    """
    Session resumption of the TCP connection server.
    """

    command = Command.FAST_CONNECT
    log = Logger()

    def __init__(self, node):
        self.node = node

    def handle(self, connection, packet):
        try:
            return self._fast_connect(connection, packet)
        except SessionExpired:
            self.node.metrics.fast_connect("expired")
            raise
        except Exception:
            self.node.metrics.fast_connect("error")
            raise

    def _fast_connect(self, connection, packet):
        body = decode_body(
            packet, connection.decrypt_cipher, self.node.config.core.max_inflated_size
        )
        message = FastConnectMessage.decode(body)
        if not message.session_id:
            raise SessionExpired("fast connect without a session id")
        looked_up = self.node.session_store.load(message.session_id)
        looked_up.addCallbacks(
            self._resume,
            self._store_failed,
            callbackArgs=(connection, packet, message),
            errbackArgs=(message,),
        )
        return looked_up.addErrback(self._count_refusal)

    def _count_refusal(self, failure):
        if failure.check(SessionExpired):
            self.node.metrics.fast_connect("expired")
        elif failure.check(InvalidDevice):
            self.node.metrics.fast_connect("invalid_device")
        elif not failure.check(ConnectionClosed):
            self.node.metrics.fast_connect("error")
        return failure

    def _store_failed(self, failure, message):
        # The store logs its outage once; the client just handshakes.
        failure.trap(StoreUnavailable)
        raise SessionExpired(f"session store unavailable: {failure.getErrorMessage()}")

    def _resume(self, session, connection, packet, message):
        if session is None:
            raise SessionExpired(f"no session {message.session_id}")
        if session.device_id != message.device_id:
            raise InvalidDevice(
                f"session {message.session_id} belongs to another device"
            )
        core = self.node.config.core
        heartbeat = negotiate_heartbeat(
            message.max_heartbeat, core.min_heartbeat, core.max_heartbeat
        )
        context = SessionContext(
            heartbeat=heartbeat,
            cipher=AesCipher(session.session_key, session.iv),
            device_id=session.device_id,
            os_name=session.os_name,
            os_version=session.os_version,
            client_version=session.client_version,
        )
        written = connection.send_raw(
            Command.FAST_CONNECT, FastConnectOkMessage(heartbeat), packet.session_id
        )
        written.addCallback(self._adopt, connection, context, message)
        return written

    def _adopt(self, _, connection, context, message):
        connection.establish(context)
        self.node.metrics.fast_connect("ok")
        if debug_log.wanted():
            self.log.debug(
                "fast connect ok {peer} device={device} session={session}",
                peer=connection.peer,
                device=context.device_id,
                session=message.session_id,
            )

"""
FAST_CONNECT: resume a cached session without RSA (spec 9.1).

The chain is: look the session up; refuse it (SESSION_EXPIRED or
INVALID_DEVICE, connection kept for a handshake) or write FastConnectOk raw;
and only in the callback of that write adopt the cached keys and device.
Any failure before that leaves the connection exactly as it was.
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mpush import debug_log
from mpush.config import CoreConfig
from mpush.metrics import IMetrics
from mpush.protocol.crypto import AesCipher
from mpush.protocol.heartbeat import negotiate_heartbeat
from mpush.protocol.messages import FastConnectMessage, FastConnectOkMessage
from mpush.protocol.packet import Command
from mpush.protocol.session import ReusableSession
from mpush.server.device.context import SessionContext
from mpush.server.device.dispatcher import DeviceHandler
from mpush.server.device.errors import ConnectionClosed, InvalidDevice, SessionExpired
from mpush.store.interfaces import ISessionStore, StoreUnavailable


class FastConnectHandler(DeviceHandler):
    """
    Session resumption of the TCP connection server.

    @param sessions: the sessions handshakes cached.
    @param core: the C{[core]} config (heartbeat bounds).
    """

    command = Command.FAST_CONNECT
    log = Logger()

    def __init__(self, sessions: ISessionStore, core: CoreConfig, metrics: IMetrics) -> None:
        self.sessions = sessions
        self.core = core
        self.metrics = metrics

    def refused(self, exception: Exception) -> None:
        self.metrics.fast_connect("error")

    def handle(self, connection: Any, packet: Any, message: FastConnectMessage) -> Deferred:
        try:
            return self._fast_connect(connection, packet, message)
        except SessionExpired:
            self.metrics.fast_connect("expired")
            raise
        except Exception:
            self.metrics.fast_connect("error")
            raise

    def _fast_connect(self, connection: Any, packet: Any, message: FastConnectMessage) -> Deferred:
        if not message.session_id:
            raise SessionExpired("fast connect without a session id")
        looked_up = self.sessions.load(message.session_id)
        looked_up.addCallbacks(
            self._resume,
            self._store_failed,
            callbackArgs=(connection, packet, message),
            errbackArgs=(message,),
        )
        return looked_up.addErrback(self._count_refusal)

    def _count_refusal(self, failure: Failure) -> Failure:
        if failure.check(SessionExpired):
            self.metrics.fast_connect("expired")
        elif failure.check(InvalidDevice):
            self.metrics.fast_connect("invalid_device")
        elif not failure.check(ConnectionClosed):
            self.metrics.fast_connect("error")
        return failure

    def _store_failed(self, failure: Failure, message: FastConnectMessage) -> None:
        # The store logs its outage once; the client just handshakes.
        failure.trap(StoreUnavailable)
        raise SessionExpired(f"session store unavailable: {failure.getErrorMessage()}")

    def _resume(
        self, session: ReusableSession | None, connection: Any, packet: Any, message: FastConnectMessage
    ) -> Deferred:
        if session is None:
            raise SessionExpired(f"no session {message.session_id}")
        if session.device_id != message.device_id:
            raise InvalidDevice(
                f"session {message.session_id} belongs to another device"
            )
        core = self.core
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

    def _adopt(self, _: object, connection: Any, context: SessionContext, message: FastConnectMessage) -> None:
        connection.establish(context)
        self.metrics.fast_connect("ok")
        if debug_log.wanted():
            self.log.debug(
                "fast connect ok {peer} device={device} session={session}",
                peer=connection.peer,
                device=context.device_id,
                session=message.session_id,
            )

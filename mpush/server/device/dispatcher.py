"""
Routing packets to message handlers by command code.

Handlers implement L{IMessageHandler} (the gateway's) or L{IDeviceHandler}
(a device listener's) and are registered once per listener; the dispatcher
applies MPush's error policy (spec 14.3) so that no handler repeats it: no
handler means UNSUPPORTED_CMD and a close, any failure means an ERROR reply
chosen by L{mpush.server.device.errors.error_reply}.  It also refuses a body
in clear on an encrypted session, once for every handler.

L{DeviceDispatcher} adds what every device packet goes through before its
handler: the connection's state machine says whether the command is allowed
now (one set lookup, L{mpush.server.device.state.ALLOWED}), and the
connection reads the body once, its own wire's way, so a handler receives a
message and serves TCP and WebSocket devices alike.
"""

from typing import Any, Iterable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from mpush.protocol.errors import ProtocolError
from mpush.protocol.packet import Command, Flags
from mpush.server.device.errors import NotEncrypted, Rejection, UnsupportedCommand, error_reply
from mpush.server.device.state import READ_BEFORE_REFUSING

#: The commands whose bodies MPush's clients always encrypt once they have a
#: session cipher (the Java client's C{BaseMessage.send}).  FAST_CONNECT is
#: sent in clear by design, HANDSHAKE under RSA, ACK without a body.
ENCRYPTED_COMMANDS = frozenset({Command.BIND, Command.UNBIND, Command.PUSH, Command.HTTP_PROXY})


class IMessageHandler(Interface):
    """
    Handles every packet of one command on a connection.
    """

    command = Attribute("The command code (an int) this handler answers.")

    def handle(connection, packet):
        """
        Act on one decoded packet.

        @param connection: the connection the packet arrived on.
        @param packet: the L{mpush.protocol.packet.Packet}, body still as
            received (compressed and/or encrypted).
        @return: C{None} when done, or a L{Deferred} that fires when the
            connection may go on to its next packet.  Raise, or errback, with
            a L{mpush.server.device.errors.Rejection} to answer ERROR.
        """


class IDeviceHandler(Interface):
    """
    Handles every packet of one command from devices, after the dispatcher
    has checked the connection's state and read the body.
    """

    command = Attribute("The command code (an int) this handler answers.")

    def validate(message):
        """
        Refuse, by raising a L{mpush.server.device.errors.Rejection}, a
        message that is wrong on its own, whatever the connection's state
        (MPush answers a BIND without a user id so even before a handshake).
        """

    def handle(connection, packet, message):
        """
        Act on one packet.

        @param connection: the L{mpush.server.device.interfaces.IDeviceConnection}.
        @param packet: the packet (its C{cmd}, C{session_id} and C{flags}).
        @param message: its body as the connection read it (a message, the
            body's bytes, or C{None} for a command without a body).
        @return: C{None} when done, or a L{Deferred} that fires when the
            connection may go on to its next packet.  Raise, or errback, with
            a L{mpush.server.device.errors.Rejection} to answer ERROR.
        """

    def refused(exception):
        """
        The dispatcher refused a packet of this command before L{handle}
        (an unreadable body, an invalid message, the wrong state): count it.
        """


@implementer(IDeviceHandler)
class DeviceHandler:
    """
    What most device handlers do with a message on its own and a refusal:
    nothing.  Subclasses set C{command} and write L{handle}.
    """

    command: int

    def validate(self, message: Any) -> None:
        pass

    def refused(self, exception: Exception) -> None:
        pass


def _command_name(cmd: int) -> str:
    try:
        return Command(cmd).name
    except ValueError:
        return str(cmd)


def _in_clear(connection: Any, packet: Any) -> bool:
    """
    Whether C{packet} carries a body in clear where a client would have
    encrypted it: knowing a session id must not be enough to act on it.
    MPush decrypts only what has the CRYPTO flag and takes the rest as is.
    """
    return (
        packet.cmd in ENCRYPTED_COMMANDS
        and connection.context.cipher is not None
        and bool(packet.body)
        and not packet.flags & Flags.CRYPTO
    )


class MessageDispatcher:
    """
    The handlers of one listener, by command code.
    """

    log = Logger()

    def __init__(self, handlers: Iterable[Any] = ()) -> None:
        self._handlers = {}
        for handler in handlers:
            self.register(handler)

    def register(self, handler: Any) -> None:
        """
        Add C{handler}; one handler per command.
        """
        command = int(handler.command)
        if command in self._handlers:
            raise ValueError(f"a handler for {_command_name(command)} is already registered")
        self._handlers[command] = handler

    def handler_for(self, command: int) -> Any:
        return self._handlers.get(command)

    def dispatch(self, connection: Any, packet: Any) -> Deferred | None:
        """
        Hand C{packet} to its handler.

        @return: C{None}, or a L{Deferred} that fires (never fails) once the
            handler is done and any error has been answered.
        """
        handler = self._handlers.get(packet.cmd)
        if handler is None:
            self._reject(connection, packet, UnsupportedCommand())
            return None
        if _in_clear(connection, packet):
            refusal = NotEncrypted(f"{_command_name(packet.cmd)} body in clear on an encrypted session")
            self._reject(connection, packet, refusal)
            return None
        try:
            result = self._handle(handler, connection, packet)
        except Exception as exception:
            self._reject(connection, packet, exception)
            return None
        if isinstance(result, Deferred):
            return result.addErrback(self._failed, connection, packet)
        return None

    def _handle(self, handler: Any, connection: Any, packet: Any) -> Deferred | None:
        return handler.handle(connection, packet)

    def _failed(self, failure: Failure, connection: Any, packet: Any) -> None:
        self._reject(connection, packet, failure.value, failure)

    def _reject(
        self, connection: Any, packet: Any, exception: BaseException, failure: Failure | None = None
    ) -> None:
        reply = error_reply(exception)
        if reply is None:
            return
        code, reason, close = reply
        if not isinstance(exception, (Rejection, ProtocolError)):
            if failure is None:
                self.log.failure(
                    "unexpected error handling {cmd} from {peer}",
                    cmd=_command_name(packet.cmd),
                    peer=connection.peer,
                )
            else:
                self.log.failure(
                    "unexpected error handling {cmd} from {peer}",
                    failure,
                    cmd=_command_name(packet.cmd),
                    peer=connection.peer,
                )
        else:
            self.log.info(
                "{cmd} from {peer} refused: {code} {reason} ({detail})",
                cmd=_command_name(packet.cmd),
                peer=connection.peer,
                code=code,
                reason=reason,
                detail=str(exception),
            )
        connection.reply_error(packet, code, reason, close=close)


class DeviceDispatcher(MessageDispatcher):
    """
    The L{IDeviceHandler}s of one device listener (TCP or WebSocket), by
    command code, behind the connection's state machine.
    """

    def _handle(self, handler: IDeviceHandler, connection: Any, packet: Any) -> Deferred | None:
        """
        Check the command against the connection's state, read the body,
        and hand the message to its handler.  A command the state does not
        allow is refused before its body is read (no work, no RSA, for a
        device without a session), except BIND and UNBIND, which MPush reads
        and checks first (L{READ_BEFORE_REFUSING}).
        """
        cmd = packet.cmd
        machine = connection.state_machine
        allowed = cmd in machine.allowed
        try:
            if not allowed and cmd not in READ_BEFORE_REFUSING:
                raise machine.refusal(cmd)
            message = connection.read(packet)
            handler.validate(message)
            if not allowed:
                raise machine.refusal(cmd)
        except Exception as exception:
            handler.refused(exception)
            raise
        return handler.handle(connection, packet, message)

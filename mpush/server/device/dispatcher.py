"""
Routing packets to message handlers by command code.

Handlers implement L{IMessageHandler} and are registered once per listener;
the dispatcher applies MPush's error policy (spec 14.3) so that no handler
repeats it: no handler means UNSUPPORTED_CMD and a close, any failure means
an ERROR reply chosen by L{mpush.server.device.errors.error_reply}.  It also
refuses a body in clear on an encrypted session, once for every handler.
"""

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from mpush.protocol.errors import ProtocolError
from mpush.protocol.packet import Command, Flags
from mpush.server.device.errors import NotEncrypted, Rejection, UnsupportedCommand, error_reply

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

        @param connection: the L{mpush.server.device.connection.ConnectionProtocol}
            the packet arrived on.
        @param packet: the L{mpush.protocol.packet.Packet}, body still as
            received (compressed and/or encrypted).
        @return: C{None} when done, or a L{Deferred} that fires when the
            connection may go on to its next packet.  Raise, or errback, with
            a L{mpush.server.device.errors.Rejection} to answer ERROR.
        """


def _command_name(cmd):
    try:
        return Command(cmd).name
    except ValueError:
        return str(cmd)


def _in_clear(connection, packet) -> bool:
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

    def __init__(self, handlers=()):
        self._handlers = {}
        for handler in handlers:
            self.register(handler)

    def register(self, handler):
        """
        Add C{handler}; one handler per command.
        """
        command = int(handler.command)
        if command in self._handlers:
            raise ValueError(f"a handler for {_command_name(command)} is already registered")
        self._handlers[command] = handler

    def handler_for(self, command):
        return self._handlers.get(command)

    def dispatch(self, connection, packet):
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
            result = handler.handle(connection, packet)
        except Exception as exception:
            self._reject(connection, packet, exception)
            return None
        if isinstance(result, Deferred):
            return result.addErrback(self._failed, connection, packet)
        return None

    def _failed(self, failure, connection, packet):
        self._reject(connection, packet, failure.value, failure)

    def _reject(self, connection, packet, exception, failure=None):
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

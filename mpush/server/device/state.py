"""
A device connection's life as an explicit state machine.

new -> handshaken -> bound -> closing -> closed, with the commands each state
allows in one table (L{ALLOWED}), checked once by the device dispatcher, and
every transition made through a method of L{ConnectionStateMachine}: a
transition the table of moves does not list raises L{IllegalTransition}
instead of leaving a connection in a state nobody planned for.  TCP and
WebSocket connections each hold one and read their state from it.
"""

import enum

from mpush.protocol.packet import Command
from mpush.server.device.errors import ConnectionClosed, NotHandshaken, Rejection

__all__ = [
    "ALLOWED",
    "READ_BEFORE_REFUSING",
    "ConnectionState",
    "ConnectionStateMachine",
    "IllegalTransition",
]


class ConnectionState(enum.Enum):
    """
    Where a connection is in its life.

    NEW: accepted, no keys agreed.  HANDSHAKEN: a session is in force (by a
    handshake or a fast connect).  BOUND: handshaken and a user bound, so
    routes point here.  CLOSING: the server decided to close it; nothing
    more is read or handled, what was written still goes out.  CLOSED: the
    transport is gone.
    """

    NEW = "new"
    HANDSHAKEN = "handshaken"
    BOUND = "bound"
    CLOSING = "closing"
    CLOSED = "closed"


#: Commands a connection may send before it has a session: the ones that
#: make one, the heartbeat, and acks (an unknown ack is ignored anyway).
_WITHOUT_SESSION = frozenset(
    int(cmd) for cmd in (Command.HEARTBEAT, Command.HANDSHAKE, Command.FAST_CONNECT, Command.ACK)
)

#: Commands that act for a device, so need its session.
_WITH_SESSION = frozenset(int(cmd) for cmd in (Command.BIND, Command.UNBIND, Command.PUSH, Command.HTTP_PROXY))

#: The commands each state lets through to their handlers.  A command that
#: has no handler on a listener is UNSUPPORTED_CMD before this is asked.
ALLOWED: dict[ConnectionState, frozenset[int]] = {
    ConnectionState.NEW: _WITHOUT_SESSION,
    ConnectionState.HANDSHAKEN: _WITHOUT_SESSION | _WITH_SESSION,
    ConnectionState.BOUND: _WITHOUT_SESSION | _WITH_SESSION,
    ConnectionState.CLOSING: frozenset(),
    ConnectionState.CLOSED: frozenset(),
}

#: Commands whose body is read before a refusal by state is answered: MPush
#: answers a BIND or UNBIND without a user id (or with an unreadable body)
#: so whatever the state, and the wire stays as it was.
READ_BEFORE_REFUSING = frozenset(int(cmd) for cmd in (Command.BIND, Command.UNBIND))

#: The moves L{ConnectionStateMachine} makes, from each state.
_MOVES: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.NEW: frozenset({ConnectionState.HANDSHAKEN, ConnectionState.CLOSING, ConnectionState.CLOSED}),
    ConnectionState.HANDSHAKEN: frozenset(
        {ConnectionState.HANDSHAKEN, ConnectionState.BOUND, ConnectionState.CLOSING, ConnectionState.CLOSED}
    ),
    ConnectionState.BOUND: frozenset(
        {ConnectionState.HANDSHAKEN, ConnectionState.BOUND, ConnectionState.CLOSING, ConnectionState.CLOSED}
    ),
    ConnectionState.CLOSING: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """
    A move the state machine does not allow: a bug in the server, never the
    client's doing (the dispatcher refuses what a client may not send).
    """


class ConnectionStateMachine:
    """
    The state of one device connection and the only way to change it.

    @ivar state: the current L{ConnectionState}; read it, never assign it.
    @ivar allowed: the commands L{state} lets through (from L{ALLOWED}),
        kept beside it so the dispatcher's check is one set lookup.
    @ivar is_open: whether the connection still reads, handles and writes
        (not closing or closed), kept beside it for the per-push check.
    """

    __slots__ = ("state", "allowed", "is_open")

    def __init__(self) -> None:
        self.state = ConnectionState.NEW
        self.allowed = ALLOWED[ConnectionState.NEW]
        self.is_open = True

    def _move(self, to: ConnectionState) -> None:
        if to not in _MOVES[self.state]:
            raise IllegalTransition(f"a {self.state.value} connection cannot become {to.value}")
        self.state = to
        self.allowed = ALLOWED[to]
        self.is_open = to is not ConnectionState.CLOSING and to is not ConnectionState.CLOSED

    def refusal(self, command: int) -> Rejection:
        """
        Why C{command}, which L{allowed} does not hold, is refused: the
        device has no session yet (ERROR "not handshake" and a close, as
        MPush answers), or the connection is closing and nobody is answered.
        """
        if self.state is ConnectionState.NEW:
            return NotHandshaken(f"{_name(command)} before handshake")
        return ConnectionClosed(f"{_name(command)} on a {self.state.value} connection")

    def establish(self) -> None:
        """
        A handshake's reply was written, or fast connect adopted a cached
        session: the connection has a session (a new one replaces the last).
        """
        self._move(ConnectionState.HANDSHAKEN)

    def bind(self) -> None:
        """
        A user was bound to the connection.
        """
        self._move(ConnectionState.BOUND)

    def unbind(self) -> None:
        """
        The bound user is gone (unbind, another user's bind, a close): a
        bound connection is handshaken again; any other state stays.
        """
        if self.state is ConnectionState.BOUND:
            self._move(ConnectionState.HANDSHAKEN)

    def close(self) -> bool:
        """
        The server closes the connection.

        @return: whether this started the close (C{False}: it was closing
            or closed already), so the adapter closes its transport once.
        """
        if not self.is_open:
            return False
        self._move(ConnectionState.CLOSING)
        return True

    def lost(self) -> None:
        """
        The transport is gone.
        """
        if self.state is not ConnectionState.CLOSED:
            self._move(ConnectionState.CLOSED)

    def __repr__(self) -> str:
        return f"<ConnectionStateMachine {self.state.value}>"


def _name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return str(command)

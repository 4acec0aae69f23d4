"""
Writing a packet to a client's socket in the turn that made it.

Twisted's C{transport.write} queues the bytes, registers the socket for
writing (an C{epoll_ctl}), writes in the reactor's next pass and
unregisters (another C{epoll_ctl}).  A push goes to one device, usually
to a connection with nothing queued: L{write_now} hands it to the socket at
once instead (as Netty's C{writeAndFlush} does), and only what the socket
does not take goes through C{transport.write}, in order, with its usual
buffering, producer and error handling.

To know that nothing is queued it reads C{tcp.Server}'s internals
(C{dataBuffer}, C{_tempDataLen}, C{_writeDisconnected}...), which Twisted
does not promise to keep: it does so only under the Twisted releases it was
checked against (L{CHECKED_TWISTED_VERSIONS}); under any other it writes
with C{transport.write} alone, and the connection server says so once when
it starts (L{unchecked_twisted_warning}).
"""

import twisted
from twisted.internet import tcp

__all__ = [
    "CHECKED_TWISTED_VERSIONS",
    "direct_write_class",
    "no_delay",
    "unchecked_twisted_warning",
    "write_now",
]

#: The Twisted releases whose C{abstract.FileDescriptor.write},
#: C{doWrite} and C{tcp.Server} were read to check what L{write_now}
#: relies on.  Add a release here only after reading them again.
CHECKED_TWISTED_VERSIONS = frozenset({"26.10.0"})


def direct_write_class(version: str) -> type | None:
    """
    The transport class whose socket L{write_now} may write to under
    Twisted C{version}: C{tcp.Server} for a checked release, C{None} (write
    only through C{transport.write}) for any other.
    """
    return tcp.Server if version in CHECKED_TWISTED_VERSIONS else None


def unchecked_twisted_warning(version: str = twisted.__version__) -> str | None:
    """
    What to tell the operator when Twisted C{version} is not one
    L{write_now} was checked against; C{None} when it is.
    """
    if version in CHECKED_TWISTED_VERSIONS:
        return None
    checked = ", ".join(sorted(CHECKED_TWISTED_VERSIONS))
    return (
        f"Twisted {version} is not a release mpush's direct socket write was checked against "
        f"({checked}): every write goes through transport.write, which is correct but costs "
        f"a reactor pass per push"
    )


_SERVER = direct_write_class(twisted.__version__)


def write_now(transport, data: bytes) -> None:
    """
    Write C{data} on C{transport}: to its socket now when that keeps the
    order (a plain TCP server connection, nothing queued, not closing, no
    TLS, a checked Twisted), otherwise as C{transport.write}.
    """
    if (
        transport.__class__ is not _SERVER
        or transport.dataBuffer
        or transport._tempDataLen
        or transport.TLS
        or transport.disconnecting
        or not transport.connected
        or transport._writeDisconnected
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except OSError:
        # EAGAIN: queue it; a broken connection: the write pass reports it.
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])


def no_delay(transport) -> None:
    """
    TCP_NODELAY, as MPush's Netty servers have it: what is written goes out
    at once, not held back by Nagle until the peer's delayed ACK.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass

"""
Writing a packet to a client's socket in the turn that made it.

Twisted's C{transport.write} queues the bytes, registers the socket for
writing (an C{epoll_ctl}), writes in the reactor's next pass and
unregisters (another C{epoll_ctl}).  A push goes to one device, usually
to a connection with nothing queued: L{write_now} hands it to the socket at
once instead (as Netty's C{writeAndFlush} does), and only what the socket
does not take goes through C{transport.write}, in order, with its usual
buffering, producer and error handling.
"""

from twisted.internet import tcp

__all__ = ["no_delay", "write_now"]

_SERVER = tcp.Server


def write_now(transport, data):
    """
    Write C{data} on C{transport}: to its socket now when that keeps the
    order (a plain TCP server connection, nothing queued, not closing, no
    TLS), otherwise as C{transport.write}.
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


def no_delay(transport):
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

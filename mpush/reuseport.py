"""
A listening port several processes share through C{SO_REUSEPORT}.

With C{[cluster] workers = N} every worker binds the client, WebSocket and
HTTP ports itself with C{SO_REUSEPORT}; the kernel then spreads new
connections evenly over the workers' sockets (by a hash of the 4-tuple), so
no process is woken for a connection another one takes, and no socket is
handed from process to process.  (A single socket opened by the supervisor
and adopted by every worker works too, but every worker is woken for each
connection and the busiest one tends to win.)

The socket is made here and adopted by the reactor
(C{IReactorSocket.adoptStreamPort}); a TLS port wraps the factory as
C{listenSSL} would.
"""

import socket

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

__all__ = ["ReusePortService", "reuseport_supported"]

log = Logger()


def reuseport_supported():
    return hasattr(socket, "SO_REUSEPORT")


def _family(interface):
    return socket.AF_INET6 if interface and ":" in interface else socket.AF_INET


class ReusePortService(service.Service):
    """
    Listen on C{port} (at C{interface}, "" = every IPv4 address, an IPv6
    literal listens on IPv6) with C{SO_REUSEPORT}, for C{factory}.

    Like C{strports.service} with twistd, a port that cannot be bound raises
    from C{startService}, so a worker that cannot listen stops at once.

    @ivar port: the listening port once started (C{IListeningPort}).
    """

    def __init__(self, reactor, port, interface, factory, *, backlog=50, tls_options=None):
        self.reactor = reactor
        self.port_number = port
        self.interface = interface or ""
        self.factory = factory
        self.backlog = backlog
        self.tls_options = tls_options
        self.port = None

    def startService(self):
        family = _family(self.interface)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((self.interface, self.port_number))
                sock.listen(self.backlog)
            except OSError as error:
                raise CannotListenError(self.interface, self.port_number, error) from None
            sock.setblocking(False)
            factory = self.factory
            if self.tls_options is not None:
                from twisted.protocols.tls import TLSMemoryBIOFactory

                factory = TLSMemoryBIOFactory(self.tls_options, False, factory)
            # adoptStreamPort duplicates the descriptor; ours is closed below.
            self.port = self.reactor.adoptStreamPort(sock.fileno(), family, factory)
        finally:
            sock.close()
        service.Service.startService(self)

    def stopService(self):
        """
        Stop accepting (idempotent: a drain stops listeners before the
        service tree stops).
        """
        service.Service.stopService(self)
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

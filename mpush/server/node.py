"""
One mpush node: what every connection of this process shares.

The configuration, the RSA key, the session store, the clock and the table
of live connections live here, built once by L{mpush.tap} and handed to
handlers, so that nothing reaches for module globals or the global reactor.
"""

import itertools
import secrets

from twisted.logger import Logger

from mpush.metrics import NullMetrics
from mpush.protocol.fields import INT32_MAX
from mpush.server.gateway.acks import AckTable
from mpush.server.device.deadlines import Deadlines
from mpush.server.device.limits import NodeLimits

#: Packet session ids are Java ints: the counter wraps to 1 past this.
MAX_PACKET_ID = INT32_MAX


class ServerNode:
    """
    The shared state of one connection-server process.

    @ivar config: the validated L{mpush.config.Config}.
    @ivar private_key: the L{mpush.protocol.crypto.RsaPrivateKey}.
    @ivar session_store: an L{mpush.store.interfaces.ISessionStore}.
    @ivar clock: an L{twisted.internet.interfaces.IReactorTime}.
    @ivar connections: live connections by connection id.
    @ivar acks: the process-wide L{AckTable}.
    @ivar router_center: the L{mpush.server.routing.router_center.RouterCenter}
        that binds users, or C{None} on a node without the push path.
    @ivar metrics: an L{mpush.metrics.IMetrics}; L{NullMetrics} unless the
        node exposes metrics.
    @ivar limits: the L{NodeLimits} all its client connections share.
    @ivar deadlines: the L{Deadlines} of its client connections (idle
        checks, pre-handshake and slow-reader deadlines) on one timer.
    """

    log = Logger()

    def __init__(self, config, private_key, session_store, clock):
        self.config = config
        self.private_key = private_key
        self.session_store = session_store
        self.clock = clock
        self.connections = {}
        self.deadlines = Deadlines(clock, self.connections)
        self.acks = AckTable(clock)
        self.router_center = None
        self.http_proxy = None
        self.metrics = NullMetrics()
        self.limits = NodeLimits(config.limits, clock)
        self._packet_ids = itertools.count(1)

    def now_ms(self):
        """
        Wall-clock milliseconds, from the injected clock.
        """
        return int(self.clock.seconds() * 1000)

    def next_packet_id(self):
        """
        A fresh packet session id for a server-originated packet (PUSH):
        one process-wide counter from 1, as MPush does (spec 2.3).
        """
        value = next(self._packet_ids)
        if value > MAX_PACKET_ID:
            self._packet_ids = itertools.count(2)
            value = 1
        return value

    def add_connection(self, connection):
        """
        Register a new connection; return its id, unique among live ones.
        """
        while True:
            conn_id = secrets.token_hex(4)
            if conn_id not in self.connections:
                self.connections[conn_id] = connection
                return conn_id

    def connection_lost(self, connection):
        """
        A connection closed: forget it, and release the routes it owned.
        """
        if self.connections.get(connection.conn_id) is connection:
            del self.connections[connection.conn_id]
            self.deadlines.owner_gone()
        if self.http_proxy is not None:
            self.http_proxy.cancel_requests(connection)
        self.connection_unbound(connection)

    def connection_unbound(self, connection):
        """
        The user bound on C{connection} is no longer there (close, or a new
        handshake on the same connection).
        """
        if self.router_center is not None and connection.context.user_id is not None:
            self.router_center.connection_closed(connection)

"""
One mpush node: what every connection of this process shares.

The configuration, the RSA key, the session store, the clock, the table of
live connections and the push path (router center, push center, HTTP proxy)
live here.  Each part is given to the node when it is built, by
L{mpush.tap.build_node}, or built by the node from parts it is given: nothing
is patched on afterwards, and nothing reaches for module globals or the
global reactor.
"""

from __future__ import annotations

import itertools
import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mpush.config import Config
from mpush.metrics import IMetrics, NullMetrics
from mpush.protocol.crypto import RsaPrivateKey
from mpush.protocol.fields import INT32_MAX
from mpush.server.device.deadlines import Deadlines
from mpush.server.device.limits import NodeLimits
from mpush.server.gateway.acks import AckTable
from mpush.server.gateway.push_center import PushCenter
from mpush.store.interfaces import ISessionStore

if TYPE_CHECKING:
    from mpush.server.proxy.http_proxy import HttpProxyHandler
    from mpush.server.routing.router_center import RouterCenter
    from mpush.store.broadcast_control import IBroadcastControl

#: Packet session ids are Java ints: the counter wraps to 1 past this.
MAX_PACKET_ID = INT32_MAX


class PacketIds:
    """
    The session ids of server-originated packets (PUSH): one process-wide
    counter from 1, wrapping to 1 past L{MAX_PACKET_ID}, as MPush does
    (spec 2.3).  The node and the router center draw from the same one.
    """

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = itertools.count(1)

    def next(self) -> int:
        value = next(self._count)
        if value > MAX_PACKET_ID:
            self._count = itertools.count(2)
            value = 1
        return value


class ServerNode:
    """
    The shared state of one connection-server process.

    @ivar config: the validated L{mpush.config.Config} (replaced on reload).
    @ivar private_key: the L{mpush.protocol.crypto.RsaPrivateKey}.
    @ivar session_store: an L{mpush.store.interfaces.ISessionStore}.
    @ivar clock: an L{twisted.internet.interfaces.IReactorTime}.
    @ivar connections: live connections by connection id.
    @ivar acks: the process-wide L{AckTable}.
    @ivar packet_ids: the L{PacketIds} of server-originated packets.
    @ivar metrics: an L{mpush.metrics.IMetrics}; L{NullMetrics} unless the
        node exposes metrics.
    @ivar router_center: the L{mpush.server.routing.router_center.RouterCenter}
        that binds users, or C{None} on a node without the push path.
    @ivar push_center: the L{PushCenter} over C{router_center}, built by the
        node; C{None} without a router center.
    @ivar http_proxy: the L{mpush.server.proxy.http_proxy.HttpProxyHandler},
        or C{None} when C{[proxy]} is not enabled.
    @ivar limits: the L{NodeLimits} all its client connections share.
    @ivar deadlines: the L{Deadlines} of its client connections (idle
        checks, pre-handshake and slow-reader deadlines) on one timer.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        private_key: RsaPrivateKey,
        session_store: ISessionStore,
        clock: IReactorTime,
        *,
        metrics: IMetrics | None = None,
        acks: AckTable | None = None,
        packet_ids: PacketIds | None = None,
        router_center: RouterCenter | None = None,
        broadcasts: IBroadcastControl | None = None,
        http_proxy: HttpProxyHandler | None = None,
    ) -> None:
        """
        @param acks: the table the offline delivery of C{router_center}
            waits on too; a new one by default.
        @param packet_ids: the counter C{router_center} draws from too; a
            new one by default.
        @param broadcasts: the L{IBroadcastControl} of the push center.
        """
        self.config = config
        self.private_key = private_key
        self.session_store = session_store
        self.clock = clock
        self.connections: dict[str, Any] = {}
        self.deadlines = Deadlines(clock, self.connections)
        self.acks = acks if acks is not None else AckTable(clock)
        self.packet_ids = packet_ids if packet_ids is not None else PacketIds()
        self.metrics: IMetrics = metrics if metrics is not None else NullMetrics()
        self.limits = NodeLimits(config.limits, clock)
        self.router_center = router_center
        self.push_center = PushCenter(self, router_center, broadcasts) if router_center is not None else None
        self.http_proxy = http_proxy

    def now_ms(self) -> int:
        """
        Wall-clock milliseconds, from the injected clock.
        """
        return int(self.clock.seconds() * 1000)

    def next_packet_id(self) -> int:
        """
        A fresh packet session id for a server-originated packet (PUSH).
        """
        return self.packet_ids.next()

    def add_connection(self, connection: Any) -> str:
        """
        Register a new connection; return its id, unique among live ones.
        """
        while True:
            conn_id = secrets.token_hex(4)
            if conn_id not in self.connections:
                self.connections[conn_id] = connection
                return conn_id

    def connection_lost(self, connection: Any) -> None:
        """
        A connection closed: forget it, and release the routes it owned.
        """
        if self.connections.get(connection.conn_id) is connection:
            del self.connections[connection.conn_id]
            self.deadlines.owner_gone()
        if self.http_proxy is not None:
            self.http_proxy.cancel_requests(connection)
        self.connection_unbound(connection)

    def connection_unbound(self, connection: Any) -> None:
        """
        The user bound on C{connection} is no longer there (close, or a new
        handshake on the same connection).
        """
        if self.router_center is not None and connection.context.user_id is not None:
            self.router_center.connection_closed(connection)

"""
Who is bound where: binds, unbinds, closes and kicks (spec 11).

The router center keeps the local routes (user -> client type -> connection)
and the shared ones (C{mp:ur:<userId>}) in step, publishes online/offline
events and kicks the connection a new bind replaces, on this node or, through
the kick channel, on another.  Two MPush races are closed here: a route is
only released by the connection that still owns it, and a remote kick only
reaches the connection it names (spec 21.2).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mpush.log_throttle import LogThrottle
from mpush.protocol.messages import KickUserMessage, OkMessage
from mpush.protocol.packet import Command
from mpush.protocol.routing import ClientLocation, KickRequest
from mpush.router.interfaces import RouterUnavailable
from mpush.server.device.errors import BindFailed, ConnectionClosed

if TYPE_CHECKING:
    from mpush.offline.delivery import OfflineDelivery
    from mpush.protocol.messages import BindUserMessage
    from mpush.protocol.packet import Packet
    from mpush.router.interfaces import IKickChannel, IRemoteRouter, IUserEvents
    from mpush.router.local import LocalRouter
    from mpush.server.device.bind_validator import IBindValidator

#: A device's connection, TCP or WebSocket (an IDeviceConnection).
DeviceConnection = Any


#: Closes whose shared side is done at a time (L{RouterCenter.connection_closed}),
#: and routes shared again at a time (L{RouterCenter.share_again}).
CLOSE_CHUNK = 500

#: Seconds between attempts to share the routes Redis could not take.
RESHARE_INTERVAL = 1.0


def _answer(written: defer.Deferred) -> defer.Deferred:
    """
    A reply to a device that may have gone while Redis was asked: nobody is
    left to tell, so a closed connection is not an error.
    """
    return written.addErrback(lambda failure: failure.trap(ConnectionClosed))


class RouterCenter:
    """
    Binds users to connections of this node and keeps every router in step.

    @ivar gateway: this node's gateway endpoint C{(host, port)}: what its
        routes carry and what "is this route mine?" compares.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        next_packet_id: Callable[[], int],
        local: LocalRouter,
        remote: IRemoteRouter,
        events: IUserEvents,
        kicks: IKickChannel,
        validator: IBindValidator,
        gateway: tuple[str, int],
        offline: OfflineDelivery | None = None,
        close_delay: float = 0.0,
    ) -> None:
        self.clock = clock
        #: Draws the session id of a server-originated packet (the node's).
        self.next_packet_id = next_packet_id
        self.offline = offline
        self.local = local
        self.remote = remote
        self.events = events
        self.kicks = kicks
        self.validator = validator
        self.gateway = gateway
        # A Redis outage or overload fails these side effects for every
        # device at once: one line a second per kind, with a count.
        self._warnings = LogThrottle(clock)
        #: Seconds the shared side of a close waits (0: done at once).
        self.close_delay = close_delay
        # (due, user_id, client_type, owned, conn_id) in the order closed.
        self._closed = collections.deque()
        self._closed_timer = None
        self._closes_running = False
        #: Closes whose shared bookkeeping was skipped: the user had bound
        #: again on this node before it was due.
        self.closes_skipped = 0
        # (user_id, client_type) of local routes Redis does not have (their
        # write failed, or this node was taken for dead): shared again once
        # Redis takes writes.  A subset of the local routes, so bounded.
        self._unshared: dict[tuple[str, int], None] = {}
        self._reshare_timer = None
        self._resharing = False
        # conn_id of the bound connections kicked (a re-login kick leaves
        # them open), until they bind again, unbind or close.
        self._kicked: set[str] = set()
        #: Routes written to Redis again after their first write failed.
        self.routes_shared_again = 0

    # -- BIND / UNBIND -----------------------------------------------------

    @defer.inlineCallbacks
    def bind(self, connection: DeviceConnection, packet: Packet, message: BindUserMessage) -> defer.Deferred:
        """
        Bind C{message.user_id} to C{connection} and answer OK (spec 11.3).
        The dispatcher let the BIND through only on a connection with a
        session and a user id in the message.
        """
        context = connection.context
        if context.user_id is not None:
            if context.user_id == message.user_id:
                # The Java client's retry resends identical bytes: answer again.
                context.tags = message.tags
                _answer(connection.send_raw(
                    Command.OK, OkMessage(Command.BIND, 0, "bind success"), packet.session_id
                ))
                return
            yield self._release(connection)
        accepted = yield defer.maybeDeferred(
            self.validator.validate, message.user_id, message.data, context
        )
        if not accepted:
            raise BindFailed(f"validator refused user {message.user_id}")
        if not connection.is_open:
            return
        user_id, client_type = message.user_id, context.client_type
        replaced = self.local.register(user_id, client_type, connection)
        self._kicked.discard(connection.conn_id)
        context.user_id = user_id
        context.tags = message.tags
        connection.state_machine.bind()
        previous = yield self._register_remote(connection, user_id, client_type)
        self._quietly(self.events.user_online(user_id), "online event of {user}", user=user_id)
        _answer(connection.send_raw(
            Command.OK, OkMessage(Command.BIND, 0, "bind success"), packet.session_id
        ))
        self._kick_replaced(connection, user_id, client_type, replaced, previous)
        if self.offline is not None:
            # Not waited for: the acks it waits on queue behind this BIND.
            self.offline.deliver(connection, user_id, self.next_packet_id)

    @defer.inlineCallbacks
    def unbind(self, connection: DeviceConnection, packet: Packet, message: BindUserMessage) -> defer.Deferred:
        """
        Unbind the user bound on C{connection}, whatever user id the message
        names (as MPush), and answer OK (spec 11.5).  As for L{bind}, the
        dispatcher checked the session and the user id.
        """
        if connection.context.user_id is not None:
            yield self._release(connection)
        _answer(connection.send_raw(
            Command.OK, OkMessage(Command.UNBIND, 0, "unbind success"), packet.session_id
        ))

    def connection_closed(self, connection: DeviceConnection, at_once: bool = False) -> defer.Deferred:
        """
        Release the routes a closed connection still owns (spec 11.6).  A
        route that a newer connection took over is left alone.  Offline
        messages it had claimed but not acked go back to the queue.

        The local route goes at once.  With a C{close_delay}, the shared
        side (the offline event, the route in Redis) waits that long and is
        skipped for a user who has bound again here meanwhile, whose BIND
        rewrote the route: in a reconnect storm most closes then cost no
        Redis work at all, and none delays a resuming device.  Until then
        the route still names this node, whose gateway answers a push to
        it OFFLINE, as it would after the route was marked.  C{at_once}
        (an operator's kick) does it all now.
        """
        user_id = connection.context.user_id
        if self.offline is not None:
            self._quietly(
                self.offline.release_claims(user_id, connection.conn_id),
                "offline claims of {user} not released",
                user=user_id,
            )
        if at_once or self.close_delay <= 0:
            return self._release(connection)
        due = self.clock.seconds() + self.close_delay
        self._closed.append((due,) + self._release_local(connection) + (connection.conn_id,))
        if self._closed_timer is None and not self._closes_running:
            self._closed_timer = self.clock.callLater(self.close_delay, self._run_due_closes)
        return defer.succeed(None)

    def flush_closes(self) -> defer.Deferred:
        """
        Do the shared side of every close waiting, now (a node stopping).
        Routes still waiting to be shared again are dropped: a stopping
        node withdraws its routes.

        @return: a Deferred that fires once all of it is done.
        """
        self._cancel_closed_timer()
        self._cancel_reshare()
        self._unshared.clear()
        closed, self._closed = list(self._closed), collections.deque()
        return self._release_closed(closed)

    def _run_due_closes(self) -> None:
        """
        The shared side of the closes that are due, L{CLOSE_CHUNK} at a
        time, the next chunk only once the last one is done: a mass close
        never has more than one chunk of Redis work (and its memory) in
        flight, and resuming devices never queue behind it.
        """
        self._closed_timer = None
        now = self.clock.seconds()
        chunk = []
        while self._closed and self._closed[0][0] <= now and len(chunk) < CLOSE_CHUNK:
            chunk.append(self._closed.popleft())
        if not chunk:
            self._closes_running = False
            if self._closed:
                wait = max(self._closed[0][0] - now, 0.0)
                self._closed_timer = self.clock.callLater(wait, self._run_due_closes)
            return
        self._closes_running = True
        self._release_closed(chunk).addCallback(lambda _: self._run_due_closes())

    def _cancel_closed_timer(self) -> None:
        call, self._closed_timer = self._closed_timer, None
        if call is not None and call.active():
            call.cancel()

    def _release_closed(self, closed: list[tuple]) -> defer.Deferred:
        released = []
        for _, user_id, client_type, owned, conn_id in closed:
            if self.local.lookup(user_id, client_type) is not None:
                self.closes_skipped += 1
                continue
            released.append(self._release_shared(user_id, client_type, owned, conn_id))
        return defer.gatherResults(released, consumeErrors=True).addBoth(lambda _: None)

    def _release(self, connection: DeviceConnection) -> defer.Deferred:
        return self._release_shared(*self._release_local(connection), connection.conn_id)

    def _release_local(self, connection: DeviceConnection) -> tuple[str, int, bool]:
        """
        Unbind C{connection} here.

        @return: C{(user_id, client_type, owned)}, C{owned} saying whether
            the local route was still this connection's.
        """
        context = connection.context
        user_id, client_type = context.user_id, context.client_type
        context.user_id = None
        context.tags = None
        connection.state_machine.unbind()
        owned = self.local.unregister(user_id, client_type, connection)
        self._kicked.discard(connection.conn_id)
        if owned:
            self._unshared.pop((user_id, client_type), None)
        return user_id, client_type, owned

    def _release_shared(self, user_id: str, client_type: int, owned: bool, conn_id: str) -> defer.Deferred:
        if owned:
            self._quietly(self.events.user_offline(user_id), "offline event of {user}", user=user_id)
        released = self.remote.mark_offline(user_id, client_type, conn_id=conn_id)
        return self._quietly(released, "route of {user} not marked offline", user=user_id)

    def location_of(self, connection: DeviceConnection) -> ClientLocation:
        """
        The ClientLocation this node writes for C{connection}: the gateway
        endpoint, not the client port (spec 11.4).
        """
        context = connection.context
        host, port = self.gateway
        return ClientLocation(
            host=host,
            port=port,
            device_id=context.device_id,
            os_name=context.os_name,
            client_version=context.client_version,
            conn_id=connection.conn_id,
        )

    def _register_remote(self, connection: DeviceConnection, user_id: str, client_type: int) -> defer.Deferred:
        self._unshared.pop((user_id, client_type), None)
        registered = self.remote.register(user_id, client_type, self.location_of(connection))

        def unavailable(failure: Failure) -> None:
            # MPush swallows this too, and the device stays unreachable from
            # other nodes until it binds again; we write the route again
            # once Redis takes writes.
            self.log.warn(
                "route of {user} not shared: {why}", user=user_id, why=failure.getErrorMessage()
            )
            self._share_later(failure, connection, user_id, client_type)
            return None

        return registered.addErrback(unavailable)

    # -- routes Redis could not take ------------------------------------------

    def share_again(self) -> None:
        """
        Write every local route to Redis again, a chunk at a time: this
        node had been taken for dead, and its routes marked offline.
        """
        for user_id, client_type, _ in self.local.routes():
            self._unshared[(user_id, client_type)] = None
        self._schedule_reshare(0.0)

    @property
    def routes_unshared(self) -> int:
        """Local routes waiting to be written to Redis again."""
        return len(self._unshared)

    def _share_later(self, failure: Failure, connection: DeviceConnection, user_id: str, client_type: int) -> None:
        if failure.check(RouterUnavailable) and self.local.lookup(user_id, client_type) is connection:
            self._unshared[(user_id, client_type)] = None
            self._schedule_reshare(RESHARE_INTERVAL)

    def _schedule_reshare(self, delay: float) -> None:
        if self._reshare_timer is None and not self._resharing and self._unshared:
            self._reshare_timer = self.clock.callLater(delay, self._reshare)

    def _cancel_reshare(self) -> None:
        call, self._reshare_timer = self._reshare_timer, None
        if call is not None and call.active():
            call.cancel()

    def _reshare(self) -> None:
        """
        Write one chunk of the unshared routes that are still bound here, as
        their BIND would have (route, online event, kick of the route it
        replaces); the next chunk right after, or a while later if Redis
        still fails.  Users who unbound, closed or were kicked meanwhile are
        skipped.
        """
        self._reshare_timer = None
        chunk = []
        while self._unshared and len(chunk) < CLOSE_CHUNK:
            key = next(iter(self._unshared))
            del self._unshared[key]
            connection = self.local.lookup(*key)
            if connection is not None and connection.conn_id not in self._kicked:
                chunk.append(self._share_route(connection, *key))
        if not chunk:
            return
        self._resharing = True

        def done(shared: list[bool]) -> None:
            self._resharing = False
            self.routes_shared_again += sum(shared)
            if all(shared):
                self._schedule_reshare(0.0)
            else:
                self._schedule_reshare(RESHARE_INTERVAL)

        defer.gatherResults(chunk).addCallback(done)

    def _share_route(self, connection: DeviceConnection, user_id: str, client_type: int) -> defer.Deferred:
        registered = self.remote.register(user_id, client_type, self.location_of(connection))

        def shared(previous: ClientLocation | None) -> bool:
            self._quietly(self.events.user_online(user_id), "online event of {user}", user=user_id)
            self._kick_replaced(connection, user_id, client_type, None, previous)
            return True

        def failed(failure: Failure) -> bool:
            if self.local.lookup(user_id, client_type) is connection:
                self._unshared.setdefault((user_id, client_type), None)
            if not failure.check(RouterUnavailable):
                self.log.failure("route of {user} not shared again", failure, user=user_id)
                self._unshared.pop((user_id, client_type), None)
            return False

        return registered.addCallbacks(shared, failed)

    # -- kicks --------------------------------------------------------------

    def _kick_replaced(
        self,
        connection: DeviceConnection,
        user_id: str,
        client_type: int,
        replaced: DeviceConnection | None,
        previous: ClientLocation | None,
    ) -> None:
        """
        After a bind: tell the connection it replaced that it is kicked, here
        or on the node that owns it.
        """
        if replaced is not None and replaced is not connection:
            self.kick_local(replaced, user_id)
            return
        if previous is None or not previous.online or previous.conn_id == connection.conn_id:
            return
        if previous.gateway == tuple(self.gateway):
            return  # a stale route of this node: nothing to kick
        kick = KickRequest(
            user_id=user_id,
            device_id=previous.device_id,
            conn_id=previous.conn_id,
            client_type=int(client_type),
            target_server=previous.host,
            target_port=previous.port,
        )
        self._quietly(self.kicks.publish(kick), "kick of {user} not published", user=user_id)

    def kick_local(self, connection: DeviceConnection, user_id: str, close: bool = False) -> defer.Deferred:
        """
        Send KICK to a connection of this node.  A re-login kick leaves it
        open (MPush, spec 11.8); an operator's (C{close}) then closes it and
        releases its routes at once, so the device gets no more pushes.

        @return: a Deferred that fires once the routes are released.
        """
        if not connection.is_open:
            return defer.succeed(None)
        # Replaced: its route must not be written back while it stays open.
        self._kicked.add(connection.conn_id)
        self.log.info(
            "kicking {user} on {peer} (device {device}){closing}",
            user=user_id,
            peer=connection.peer,
            device=connection.context.device_id,
            closing=", closing it" if close else "",
        )
        _answer(connection.send(Command.KICK, KickUserMessage(connection.context.device_id, user_id), 0))
        if not close:
            return defer.succeed(None)
        if connection.context.user_id is None:
            released = defer.succeed(None)
        else:
            released = self.connection_closed(connection, at_once=True)
        connection.close(reason="kicked")
        return released

    def remote_kick(self, kick: KickRequest) -> None:
        """
        A kick for this node arrived on the kick channel: deliver it only to
        the connection it names (spec 11.8, receiver side).
        """
        if (kick.target_server, kick.target_port) != tuple(self.gateway):
            self.log.info("ignoring a kick for {host}:{port}", host=kick.target_server, port=kick.target_port)
            return
        connection = self.local.lookup(kick.user_id, kick.client_type)
        if connection is not None and connection.conn_id == kick.conn_id:
            self.kick_local(connection, kick.user_id, close=kick.close)

    def _quietly(self, result: object, message: str, **fields: object) -> defer.Deferred:
        """
        Log, and do not propagate, the failure of a side effect that must not
        fail the request it belongs to.
        """

        def log_failure(failure: Failure) -> None:
            held = self._warnings.admit(message)
            if held is None:
                return
            if held:
                self.log.warn(
                    message + ": {why} ({held} more like it since the last such line)",
                    why=failure.getErrorMessage(),
                    held=held,
                    **fields,
                )
            else:
                self.log.warn(message + ": {why}", why=failure.getErrorMessage(), **fields)

        if isinstance(result, defer.Deferred):
            return result.addErrback(log_failure)
        return defer.succeed(result)

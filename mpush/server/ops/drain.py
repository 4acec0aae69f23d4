"""
Taking a node out of service without losing what it was doing.

Sessions and routes live in Redis, so a node can leave without its devices
losing anything: it stops accepting, lets the pushes and ack waits it has
started finish (up to a deadline), closes its client connections (the
devices fast-connect to another node), marks its routes offline and
unregisters.  Pushes that reach it meanwhile are answered by the
L{mpush.server.ops.push_tracking.PushTracker}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sized

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from mpush.router.interfaces import INodeRegistry, IRemoteRouter
    from mpush.server.gateway.gateway import GatewayFactory
    from mpush.server.ops.push_tracking import PushTracker

__all__ = [
    "CLOSE_GRACE",
    "GATEWAY_GRACE",
    "GATEWAY_QUIET",
    "POLL_INTERVAL",
    "STEP_TIMEOUT",
    "DrainReport",
    "Drainer",
]

#: Seconds closed client connections get to flush before they are aborted.
CLOSE_GRACE = 2.0
#: Seconds a draining node's gateway connections must have read nothing
#: (and its pushes all be answered) before they are closed: pushers that
#: follow routes have moved on by then, and nothing they sent goes unread.
GATEWAY_QUIET = 0.5
#: Longest a draining node waits for its gateway connections to go quiet.
GATEWAY_GRACE = 5.0
#: Seconds between two looks at the work still in flight.
POLL_INTERVAL = 0.05
#: Seconds one backend step of a drain (routes, registry) may take.
STEP_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class DrainReport:
    """
    What one drain did.

    @ivar timed_out: the deadline passed with work still in flight.
    @ivar routes_marked: routes marked offline; C{None} when that failed.
    """

    listeners: int
    timed_out: bool
    pushes_left: int
    acks_left: int
    connections_closed: int
    connections_aborted: int
    routes_marked: int | None
    unregistered: bool
    refused_pushes: int
    seconds: float
    gateway_connections_closed: int = 0


def _positive_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


class Drainer:
    """
    Takes a node out of service without losing what it was doing.

    @param listening_ports: what accepts connections: listening ports
        (C{stopListening}) or services (C{stopService}, e.g. strports).
    @param deadline_s: how long in-flight pushes and ack waits may take.
    @param connections: the node's live client connections by id (closed,
        and watched until they have gone).
    @param acks: the node's ack waits (L{mpush.server.gateway.acks.AckTable}):
        waited for until empty.
    @param clock: the node's L{IReactorTime}.
    @param pushes: the L{PushTracker} the gateway pushes through; without it
        only ack waits are waited for and new pushes are not turned away.
    @param registry: the node registry to leave (L{INodeRegistry}).
    @param remote: the remote router whose routes of this node are marked
        offline (L{IRemoteRouter}); none are without it.
    @param gateway: returns this node's C{(host, port)} in routes, read
        when the drain runs (a test node learns its gateway port after it is
        built).
    @param gateways: the L{mpush.server.gateway.gateway.GatewayFactory}: once the
        node has left, its connections are closed when quiet (see
        L{GATEWAY_QUIET}) instead of dropped at exit under a push.
    """

    log = Logger()

    def __init__(
        self,
        listening_ports: Iterable[Any],
        deadline_s: float,
        *,
        connections: Mapping[str, Any],
        acks: Sized,
        clock: IReactorTime,
        pushes: PushTracker | None = None,
        registry: INodeRegistry | None = None,
        remote: IRemoteRouter | None = None,
        gateway: Callable[[], tuple[str, int] | None] = lambda: None,
        close_grace_s: float = CLOSE_GRACE,
        step_timeout_s: float = STEP_TIMEOUT,
        poll_interval_s: float = POLL_INTERVAL,
        gateways: GatewayFactory | None = None,
        gateway_quiet_s: float = GATEWAY_QUIET,
        gateway_grace_s: float = GATEWAY_GRACE,
    ) -> None:
        self.connections = connections
        self.acks = acks
        self.listening_ports = list(listening_ports)
        self.deadline_s = _positive_seconds(deadline_s, "deadline_s")
        self.close_grace_s = _positive_seconds(close_grace_s, "close_grace_s")
        self.step_timeout_s = _positive_seconds(step_timeout_s, "step_timeout_s")
        self.poll_interval_s = _positive_seconds(poll_interval_s, "poll_interval_s")
        self.pushes = pushes
        self.gateways = gateways
        self.gateway_quiet_s = _positive_seconds(gateway_quiet_s, "gateway_quiet_s")
        self.gateway_grace_s = _positive_seconds(gateway_grace_s, "gateway_grace_s")
        self.registry = registry
        self.remote = remote
        self._gateway = gateway
        self.clock = clock
        self._started = False
        self._finished = False
        self._report: DrainReport | None = None
        self._waiters: list[defer.Deferred] = []

    @property
    def draining(self) -> bool:
        """
        Whether a drain has started (for health checks: a draining node is
        not one to send new clients to).
        """
        return self._started

    def drain(self) -> defer.Deferred:
        """
        Drain once; a later call gets the same outcome.

        @return: a Deferred firing a L{DrainReport} (C{None} after an
            unexpected error, which is logged); it never fails, and it fires
            within C{deadline_s} plus two close graces, two backend step
            timeouts and the gateway grace.
        """
        if self._finished:
            return defer.succeed(self._report)
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        if not self._started:
            self._started = True
            running = defer.ensureDeferred(self._run())
            running.addErrback(self._unexpected)
            running.addCallback(self._done)
        return waiter

    def _unexpected(self, failure: Failure) -> None:
        self.log.failure("drain failed unexpectedly", failure)
        return None

    def _done(self, report: DrainReport | None) -> None:
        self._finished, self._report = True, report
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(report)

    async def _run(self) -> DrainReport:
        started = self.clock.seconds()
        if self.pushes is not None:
            self.pushes.draining = True
        self.log.info(
            "drain: no longer accepting on {n} listener(s); {connections} client connection(s), "
            "{pushes} push(es) in flight, {acks} ack wait(s)",
            n=len(self.listening_ports),
            connections=len(self.connections),
            pushes=self._pushes_in_flight(),
            acks=len(self.acks),
        )
        await self._stop_listening()
        timed_out = await self._wait_idle(started + self.deadline_s)
        pushes_left, acks_left = self._pushes_in_flight(), len(self.acks)
        if timed_out:
            self.log.warn(
                "drain: deadline of {deadline}s passed with {pushes} push(es) and {acks} ack wait(s) "
                "left; their devices may get them without the pusher being told",
                deadline=self.deadline_s,
                pushes=pushes_left,
                acks=acks_left,
            )
        else:
            self.log.info(
                "drain: in-flight pushes and ack waits done after {s:.3f}s",
                s=self.clock.seconds() - started,
            )
        closed, aborted = await self._close_connections()
        routes = await self._mark_routes_offline()
        unregistered = await self._unregister()
        gateways_closed = await self._close_gateways()
        report = DrainReport(
            listeners=len(self.listening_ports),
            timed_out=timed_out,
            pushes_left=pushes_left,
            acks_left=acks_left,
            connections_closed=closed,
            connections_aborted=aborted,
            routes_marked=routes,
            unregistered=unregistered,
            refused_pushes=self.pushes.refused if self.pushes is not None else 0,
            seconds=self.clock.seconds() - started,
            gateway_connections_closed=gateways_closed,
        )
        self.log.info(
            "drain: done in {s:.3f}s: {closed} connection(s) closed ({aborted} aborted), "
            "{refused} push(es) answered offline while draining",
            s=report.seconds,
            closed=closed,
            aborted=aborted,
            refused=report.refused_pushes,
        )
        return report

    def _pushes_in_flight(self) -> int:
        return self.pushes.in_flight if self.pushes is not None else 0

    async def _stop_listening(self) -> None:
        stopping = []
        for port in self.listening_ports:
            if hasattr(port, "stopListening"):
                stopping.append(defer.maybeDeferred(port.stopListening))
            else:
                stopping.append(defer.maybeDeferred(port.stopService))
        results = await defer.DeferredList(stopping, consumeErrors=True)
        for ok, value in results:
            if not ok:
                self.log.warn("drain: a listener did not stop: {why}", why=value.getErrorMessage())

    def _sleep(self, seconds: float) -> defer.Deferred:
        waiting = defer.Deferred()
        self.clock.callLater(seconds, waiting.callback, None)
        return waiting

    async def _wait_idle(self, deadline: float) -> bool:
        """
        Wait until nothing is in flight; C{True} if the deadline came first.
        """
        while self._pushes_in_flight() or len(self.acks):
            now = self.clock.seconds()
            if now >= deadline:
                return True
            await self._sleep(min(self.poll_interval_s, deadline - now))
        return False

    async def _close_connections(self) -> tuple[int, int]:
        connections = list(self.connections.values())
        for connection in connections:
            try:
                connection.close()
            except Exception:
                self.log.failure("drain: closing {peer}", peer=connection.peer)
        deadline = self.clock.seconds() + self.close_grace_s
        while any(self._still_open(c) for c in connections) and self.clock.seconds() < deadline:
            await self._sleep(min(self.poll_interval_s, deadline - self.clock.seconds()))
        lingering = [c for c in connections if self._still_open(c)]
        for connection in lingering:
            connection.abort()
        self.log.info(
            "drain: closed {n} client connection(s), {aborted} aborted after {grace}s; "
            "their devices reconnect to another node",
            n=len(connections),
            aborted=len(lingering),
            grace=self.close_grace_s,
        )
        return len(connections), len(lingering)

    async def _close_gateways(self) -> int:
        """
        Keep reading and answering (OFFLINE) on the gateway connections
        until they have read nothing for C{gateway_quiet_s} with no push
        unanswered, or C{gateway_grace_s} has passed; then close them once
        their answers are sent.  A push a pusher sent is thus read and
        answered, not lost in a socket the exit tears down.
        """
        if self.gateways is None:
            return 0
        connections = self.gateways.connections
        start = now = self.clock.seconds()
        deadline = start + self.gateway_grace_s
        counts = {c: c.bytes_read for c in connections}
        quiet_since = now
        while connections and now < deadline:
            await self._sleep(min(self.poll_interval_s, deadline - now))
            now = self.clock.seconds()
            current = {c: c.bytes_read for c in connections}
            if current != counts or self._pushes_in_flight():
                counts, quiet_since = current, now
            elif now - quiet_since >= self.gateway_quiet_s:
                break
        closing = list(connections)
        for connection in closing:
            connection.close()
        close_by = self.clock.seconds() + self.close_grace_s
        while connections and self.clock.seconds() < close_by:
            await self._sleep(min(self.poll_interval_s, close_by - self.clock.seconds()))
        for connection in list(connections):
            connection.transport.abortConnection()
        self.log.info(
            "drain: closed {n} gateway connection(s) after {s:.3f}s, {pushes} push(es) unanswered",
            n=len(closing),
            s=self.clock.seconds() - start,
            pushes=self._pushes_in_flight(),
        )
        return len(closing)

    def _still_open(self, connection: Any) -> bool:
        return self.connections.get(connection.conn_id) is connection

    async def _bounded(self, what: str, call: Callable[[], Any]) -> tuple[bool, Any]:
        try:
            step = defer.maybeDeferred(call)
            step.addTimeout(self.step_timeout_s, self.clock)
            return True, await step
        except Exception as error:
            self.log.warn("drain: {what} failed: {why}", what=what, why=str(error) or type(error).__name__)
            return False, None

    @property
    def gateway(self) -> tuple[str, int] | None:
        """
        The C{(host, port)} this node's routes carry, read when the drain
        runs.
        """
        gateway = self._gateway()
        return tuple(gateway) if gateway is not None else None

    async def _mark_routes_offline(self) -> int | None:
        gateway = self.gateway
        if self.remote is None or gateway is None:
            return None
        host, port = gateway
        ok, count = await self._bounded(
            "marking routes offline", lambda: self.remote.mark_node_offline(host, port)
        )
        if not ok:
            return None
        self.log.info("drain: marked {n} route(s) of {host}:{port} offline", n=count, host=host, port=port)
        return count

    async def _unregister(self) -> bool:
        if self.registry is None:
            return False
        ok, _ = await self._bounded("unregistering from the node registry", self.registry.unregister)
        if ok:
            self.log.info("drain: unregistered from the node registry")
        return ok

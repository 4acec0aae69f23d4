"""
A node's life after start: draining on SIGTERM, reloading on SIGHUP.

Sessions and routes live in Redis, so a node can leave without its devices
losing anything: it stops accepting, lets the pushes and ack waits it has
started finish (up to a deadline), closes its client connections (the
devices fast-connect to another node), marks its routes offline and
unregisters.  Pushes that reach it meanwhile are answered OFFLINE ("node
draining"), which a pusher with an offline TTL stores for the device's next
bind, instead of being written to a connection about to close.

What can change without a restart ([push], [limits], [bind], the log level)
is applied on SIGHUP; what cannot is named in the log.

twistd turns SIGTERM into C{stopService}, but then kills itself with
SIGTERM again, so the process never exits 0: L{install_sigterm} stops the
reactor instead, and a drained node exits 0.
"""

from __future__ import annotations

import dataclasses
import signal
import tomllib
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    Logger,
    LogPublisher,
    PredicateResult,
    globalLogPublisher,
)

from mpush import debug_log
from mpush.config import Config, ConfigError
from mpush.protocol.errors import ErrorCode
from mpush.protocol.routing import encode_push_result
from mpush.server.device.bind_validator import load_bind_validator
from mpush.server.gateway.push_center import Outcome, PushHandle

__all__ = [
    "CLOSE_GRACE",
    "DRAINING_REASON",
    "DrainReport",
    "Drainer",
    "InstalledSignal",
    "LogLevelError",
    "LogLevelGate",
    "PushTracker",
    "ReloadReport",
    "Reloader",
    "install_sighup",
    "install_sigterm",
    "parse_log_level",
    "read_log_level",
    "reload",
]

log = Logger()

#: The reason of the OFFLINE (or FAILURE, for a broadcast) a draining node
#: answers new pushes with.
DRAINING_REASON = "node draining"
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


# -- pushes in flight ---------------------------------------------------------


class PushTracker:
    """
    The push center as the gateway sees it: every push it starts is counted
    until its L{mpush.server.gateway.push_center.PushHandle} ends, so a drain
    knows when the work it started is done; while draining, new pushes are
    answered at once instead.

    Give it to L{mpush.server.gateway.gateway.GatewayFactory} in place of the push
    center (it has the same C{push(message, flags, reply)}, and returns a handle too).

    @ivar draining: set by L{Drainer}; new pushes are then refused.
    @ivar refused: how many pushes were refused while draining.
    """

    log = Logger()

    def __init__(self, push_center):
        self.push_center = push_center
        self.node = push_center.node
        self.draining = False
        self.refused = 0
        self._in_flight = 0

    @property
    def in_flight(self):
        """
        Pushes started and not answered yet.
        """
        return self._in_flight

    def push(self, message, flags, reply):
        if self.draining:
            return self._refuse(message, reply)
        self._in_flight += 1
        try:
            handle = self.push_center.push(message, flags, reply)
        except BaseException:
            self._in_flight -= 1
            raise
        # Every push ends (answered, or a silent timeout), at once or later.
        handle.observe(self._ended)
        return handle

    def _ended(self, handle):
        self._in_flight -= 1

    def _refuse(self, message, reply):
        """
        A push reaching a draining node: OFFLINE (the device is about to
        leave; a pusher with an offline TTL stores it for the next bind), or
        FAILURE for a broadcast (this node's users are moving elsewhere).
        """
        self.refused += 1
        if message.user_id is None:
            reply.error(int(ErrorCode.PUSH_CLIENT_FAILURE), None, DRAINING_REASON)
            self.node.metrics.push("failure")
            return PushHandle(Outcome.FAILURE)
        now = self.node.now_ms()
        data = encode_push_result(
            message.user_id, message.client_type, [("push-center-begin", now), ("offline-end", now)]
        )
        reply.error(int(ErrorCode.OFFLINE), data, DRAINING_REASON)
        self.node.metrics.push("offline")
        return PushHandle(Outcome.OFFLINE)


# -- draining -----------------------------------------------------------------


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


def _positive_seconds(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


class Drainer:
    """
    Takes a node out of service without losing what it was doing.

    @param node: the L{mpush.server.node.ServerNode}.
    @param listening_ports: what accepts connections: listening ports
        (C{stopListening}) or services (C{stopService}, e.g. strports).
    @param deadline_s: how long in-flight pushes and ack waits may take.
    @param pushes: the L{PushTracker} the gateway pushes through; without it
        only ack waits are waited for and new pushes are not turned away.
    @param registry: the node registry to leave (L{INodeRegistry}).
    @param remote: the remote router whose routes of this node are marked
        offline; the router center's by default.
    @param gateway: this node's C{(host, port)} in routes; the router
        center's by default.
    @param gateways: the L{mpush.server.gateway.gateway.GatewayFactory}: once the
        node has left, its connections are closed when quiet (see
        L{GATEWAY_QUIET}) instead of dropped at exit under a push.
    """

    log = Logger()

    def __init__(
        self,
        node,
        listening_ports,
        deadline_s,
        *,
        pushes=None,
        registry=None,
        remote=None,
        gateway=None,
        clock=None,
        close_grace_s=CLOSE_GRACE,
        step_timeout_s=STEP_TIMEOUT,
        poll_interval_s=POLL_INTERVAL,
        gateways=None,
        gateway_quiet_s=GATEWAY_QUIET,
        gateway_grace_s=GATEWAY_GRACE,
    ):
        self.node = node
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
        center = node.router_center
        self.remote = remote if remote is not None else getattr(center, "remote", None)
        self._gateway = tuple(gateway) if gateway is not None else None
        self.clock = clock if clock is not None else node.clock
        self._started = False
        self._finished = False
        self._report = None
        self._waiters = []

    @property
    def draining(self):
        """
        Whether a drain has started (for health checks: a draining node is
        not one to send new clients to).
        """
        return self._started

    def drain(self):
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

    def _unexpected(self, failure):
        self.log.failure("drain failed unexpectedly", failure)
        return None

    def _done(self, report):
        self._finished, self._report = True, report
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(report)

    async def _run(self):
        started = self.clock.seconds()
        if self.pushes is not None:
            self.pushes.draining = True
        self.log.info(
            "drain: no longer accepting on {n} listener(s); {connections} client connection(s), "
            "{pushes} push(es) in flight, {acks} ack wait(s)",
            n=len(self.listening_ports),
            connections=len(self.node.connections),
            pushes=self._pushes_in_flight(),
            acks=len(self.node.acks),
        )
        await self._stop_listening()
        timed_out = await self._wait_idle(started + self.deadline_s)
        pushes_left, acks_left = self._pushes_in_flight(), len(self.node.acks)
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

    def _pushes_in_flight(self):
        return self.pushes.in_flight if self.pushes is not None else 0

    async def _stop_listening(self):
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

    def _sleep(self, seconds):
        waiting = defer.Deferred()
        self.clock.callLater(seconds, waiting.callback, None)
        return waiting

    async def _wait_idle(self, deadline):
        """
        Wait until nothing is in flight; C{True} if the deadline came first.
        """
        while self._pushes_in_flight() or len(self.node.acks):
            now = self.clock.seconds()
            if now >= deadline:
                return True
            await self._sleep(min(self.poll_interval_s, deadline - now))
        return False

    async def _close_connections(self):
        connections = list(self.node.connections.values())
        for connection in connections:
            try:
                connection.close()
            except Exception:
                self.log.failure("drain: closing {peer}", peer=getattr(connection, "peer", "?"))
        deadline = self.clock.seconds() + self.close_grace_s
        while any(self._still_open(c) for c in connections) and self.clock.seconds() < deadline:
            await self._sleep(min(self.poll_interval_s, deadline - self.clock.seconds()))
        lingering = [c for c in connections if self._still_open(c)]
        for connection in lingering:
            transport = getattr(connection, "transport", None)
            if transport is not None and hasattr(transport, "abortConnection"):
                transport.abortConnection()
        self.log.info(
            "drain: closed {n} client connection(s), {aborted} aborted after {grace}s; "
            "their devices reconnect to another node",
            n=len(connections),
            aborted=len(lingering),
            grace=self.close_grace_s,
        )
        return len(connections), len(lingering)

    async def _close_gateways(self):
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

    def _still_open(self, connection):
        return self.node.connections.get(getattr(connection, "conn_id", None)) is connection

    async def _bounded(self, what, call):
        try:
            step = defer.maybeDeferred(call)
            step.addTimeout(self.step_timeout_s, self.clock)
            return True, await step
        except Exception as error:
            self.log.warn("drain: {what} failed: {why}", what=what, why=str(error) or type(error).__name__)
            return False, None

    @property
    def gateway(self):
        """
        The C{(host, port)} this node's routes carry, read when the drain
        runs (a test node learns its gateway port after it is built).
        """
        if self._gateway is not None:
            return self._gateway
        center = self.node.router_center
        return tuple(center.gateway) if center is not None else None

    async def _mark_routes_offline(self):
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

    async def _unregister(self):
        if self.registry is None:
            return False
        ok, _ = await self._bounded("unregistering from the node registry", self.registry.unregister)
        if ok:
            self.log.info("drain: unregistered from the node registry")
        return ok


# -- log level ----------------------------------------------------------------


class LogLevelError(ValueError):
    """
    A log level that is not one of debug, info, warn, error, critical.
    """


_LEVELS = (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical)
_LEVEL_NAMES = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "fatal": LogLevel.critical,
    "critical": LogLevel.critical,
}


#: The level a node logs at when C{[mpush] log-level} is not set.
DEFAULT_LOG_LEVEL = LogLevel.info


def parse_log_level(name):
    """
    A L{LogLevel} from MPush's C{[mpush] log-level} words (log4j's, with
    "trace" as debug and "fatal" as critical), in any case.
    """
    if not isinstance(name, str):
        raise LogLevelError(f"[mpush] log-level: expected a string, got {type(name).__name__}")
    level = _LEVEL_NAMES.get(name.strip().lower())
    if level is None:
        raise LogLevelError(
            f"[mpush] log-level: expected one of debug, info, warn, error, critical; got {name!r}"
        )
    return level


def read_log_level(path):
    """
    The C{[mpush] log-level} of the TOML file at C{path} (the config schema
    accepts the key, this reads it); L{DEFAULT_LOG_LEVEL} when absent or no
    path.  Debug lines (one per handshake, fast connect and bind) cost a
    busy node a sixth of its CPU, so a node logs them only when asked.
    """
    if path is None:
        return DEFAULT_LOG_LEVEL
    with open(path, "rb") as config:
        data = tomllib.load(config)
    value = data.get("mpush", {}).get("log-level") if isinstance(data.get("mpush"), dict) else None
    return DEFAULT_LOG_LEVEL if value is None else parse_log_level(value)


class LogLevelGate:
    """
    Drops log events below a level that can change at run time.

    Installed on a publisher (twistd's global one by default), it moves the
    observers already there behind one filter, so what twistd writes to its
    log file is filtered.  Events without a level pass, unless one of the
    C{drop} predicates (chatter said better elsewhere) matches.
    """

    def __init__(self, level=LogLevel.debug, drop=()):
        self.level = level
        self.drop = tuple(drop)
        self._publisher = None
        self._moved = ()
        self._filter = None

    @property
    def installed(self):
        return self._publisher is not None

    def __call__(self, event):
        """
        The predicate: C{no} for an event below the level.
        """
        level = event.get("log_level")
        if level in _LEVELS and _LEVELS.index(level) < _LEVELS.index(self.level):
            return PredicateResult.no
        if any(drop(event) for drop in self.drop):
            return PredicateResult.no
        return PredicateResult.maybe

    def set_level(self, level):
        if level not in _LEVELS:
            raise LogLevelError(f"not a log level: {level!r}")
        self.level = level
        self._tell_hot_paths()

    def _tell_hot_paths(self):
        debug_log.set_wanted(self._publisher is None or self.level == LogLevel.debug)

    def install(self, publisher=None):
        """
        Put the observers of C{publisher} behind this gate.

        @raise LogLevelError: C{publisher} is not a L{LogPublisher} whose
            observers can be moved.
        """
        if self._publisher is not None:
            return
        publisher = publisher if publisher is not None else globalLogPublisher
        observers = getattr(publisher, "_observers", None)
        if not isinstance(publisher, LogPublisher) or not isinstance(observers, list):
            raise LogLevelError(f"cannot filter {publisher!r}: not a LogPublisher")
        moved = tuple(observers)
        for observer in moved:
            publisher.removeObserver(observer)
        self._filter = FilteringLogObserver(LogPublisher(*moved), [self])
        publisher.addObserver(self._filter)
        self._publisher, self._moved = publisher, moved
        self._tell_hot_paths()

    def uninstall(self):
        """
        Give the publisher its observers back.
        """
        if self._publisher is None:
            return
        self._publisher.removeObserver(self._filter)
        for observer in self._moved:
            self._publisher.addObserver(observer)
        self._publisher, self._moved, self._filter = None, (), None
        self._tell_hot_paths()


# -- reload -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """
    What one reload did: settings applied, settings that changed in the
    file but need a restart, and what could not be applied (kept as it was).
    """

    applied: tuple
    needs_restart: tuple
    errors: tuple


#: Config tables a reload applies; every other change needs a restart.
RELOADABLE = ("push", "limits", "bind")
#: [limits] keys read where they are used; the RSA token bucket is built once.
_LIMITS_BUCKET_KEYS = ("handshake_rate", "handshake_burst")


def _label(name):
    return "[mpush] state-dir" if name == "state_dir" else f"[{name}]"


def _changed_keys(old, new):
    return [
        field.name.replace("_", "-")
        for field in dataclasses.fields(old)
        if getattr(old, field.name) != getattr(new, field.name)
    ]


def reload(node, new_config, *, log_gate=None, log_level=None):
    """
    Apply to C{node} what can change at run time, from C{new_config}:
    [push] flow-control limits, tag-match and default-timeout, [limits],
    the [bind] validator, and C{log_level} (a L{LogLevel}, through
    C{log_gate}).  Everything else that differs is logged as needing a
    restart and left as it runs.

    @return: a L{ReloadReport}.
    """
    if not isinstance(new_config, Config):
        raise TypeError(f"reload needs a Config, not {type(new_config).__name__}")
    old = node.config
    applied, restart, errors = [], [], []
    keep = {}
    for field in dataclasses.fields(old):
        name = field.name
        if name == "source" or name in RELOADABLE:
            continue
        if getattr(old, name) != getattr(new_config, name):
            restart.append(_label(name))
    if new_config.bind != old.bind:
        try:
            validator = load_bind_validator(new_config)
        except ConfigError as error:
            errors.append(str(error))
            keep["bind"] = old.bind
        else:
            if node.router_center is not None:
                node.router_center.validator = validator
            applied.append("[bind] " + ", ".join(_changed_keys(old.bind, new_config.bind)))
    limits = new_config.limits
    if limits != old.limits:
        node_limits = getattr(node, "limits", None)
        bucket_changed = any(getattr(limits, k) != getattr(old.limits, k) for k in _LIMITS_BUCKET_KEYS)
        if bucket_changed and not hasattr(node_limits, "reconfigure"):
            # Only the bucket's own keys wait for a restart.
            limits = dataclasses.replace(limits, **{k: getattr(old.limits, k) for k in _LIMITS_BUCKET_KEYS})
            restart.append("[limits] handshake-rate, handshake-burst")
        if limits != old.limits:
            if hasattr(node_limits, "reconfigure"):
                node_limits.reconfigure(limits)
            elif node_limits is not None:
                node_limits.config = limits
            applied.append("[limits] " + ", ".join(_changed_keys(old.limits, limits)))
        keep["limits"] = limits
    if new_config.push != old.push:
        push = new_config.push
        center = getattr(node, "push_center", None)
        if center is not None:
            flow = center.flow
            flow.limit, flow.duration, flow.total = push.global_limit, push.global_duration / 1000.0, push.global_max
        applied.append("[push] " + ", ".join(_changed_keys(old.push, push)))
    node.config = old.replace(
        push=new_config.push, bind=keep.get("bind", new_config.bind), limits=keep.get("limits", old.limits)
    )
    if log_level is not None:
        if log_gate is None:
            errors.append("[mpush] log-level: this node has no log level gate")
        elif log_level != log_gate.level:
            log_gate.set_level(log_level)
            if not log_gate.installed:
                try:
                    log_gate.install()
                except LogLevelError as error:
                    errors.append(str(error))
            applied.append(f"[mpush] log-level = {log_level.name}")
    report = ReloadReport(tuple(applied), tuple(restart), tuple(errors))
    _log_report(report)
    return report


def _log_report(report):
    if report.applied:
        log.info("reload: applied {what}", what="; ".join(report.applied))
    else:
        log.info("reload: nothing to apply")
    for label in report.needs_restart:
        log.warn("reload: {what} changed; it takes effect after a restart", what=label)
    for error in report.errors:
        log.warn("reload: not applied, kept as it was: {error}", error=error)


class Reloader:
    """
    What SIGHUP runs: read the configuration again and L{reload} it.

    @param load: returns the new L{mpush.config.Config} (the file with the
        command line's overrides); may raise L{ConfigError}.
    @param log_level: returns the new L{LogLevel} or C{None}
        (e.g. C{lambda: read_log_level(path)}).
    """

    log = Logger()

    def __init__(self, node, load, *, log_gate=None, log_level=None):
        self.node = node
        self.load = load
        self.log_gate = log_gate
        self.log_level = log_level

    def __call__(self):
        """
        @return: the L{ReloadReport}, or C{None} when the file was refused
            (the node keeps running on what it has).
        """
        try:
            config = self.load()
            level = self.log_level() if self.log_level is not None else None
        except (ConfigError, LogLevelError, OSError, tomllib.TOMLDecodeError) as error:
            self.log.warn("reload refused, running on the previous config: {error}", error=error)
            return None
        return reload(self.node, config, log_gate=self.log_gate, log_level=level)


# -- signals ------------------------------------------------------------------


class InstalledSignal:
    """
    A handler put in place by this module; L{uninstall} restores the one it
    replaced.
    """

    __slots__ = ("signum", "handler", "previous", "installed")

    def __init__(self, signum, handler):
        self.signum = signum
        self.handler = handler
        self.previous = None
        self.installed = False

    def install(self):
        self.previous = signal.signal(self.signum, self.handler)
        self.installed = True

    def uninstall(self):
        if self.installed:
            signal.signal(self.signum, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False


def _run_reload(reload_callable):
    log.info("SIGHUP: reloading the configuration")
    done = defer.maybeDeferred(reload_callable)
    done.addErrback(lambda failure: log.failure("reload failed", failure))


def install_sighup(reactor, reload_callable):
    """
    Run C{reload_callable()} in the reactor on each SIGHUP (which would
    otherwise kill the process).  Installed at once.

    @return: the L{InstalledSignal}.
    """

    def on_sighup(signum, frame):
        reactor.callFromThread(_run_reload, reload_callable)

    installed = InstalledSignal(signal.SIGHUP, on_sighup)
    installed.install()
    return installed


def _stop(reactor):
    try:
        reactor.stop()
    except ReactorNotRunning:
        log.info("SIGTERM: already stopping")
        return
    log.info("SIGTERM: draining, then exiting")


def install_sigterm(reactor):
    """
    Make SIGTERM stop the reactor (so services stop, and a node drains)
    without twistd's re-kill, so the process exits 0.  Installed once the
    reactor runs, after its own handlers.

    @return: the L{InstalledSignal}.
    """

    def on_sigterm(signum, frame):
        reactor.callFromThread(_stop, reactor)

    installed = InstalledSignal(signal.SIGTERM, on_sigterm)
    reactor.callWhenRunning(installed.install)
    return installed

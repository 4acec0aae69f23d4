"""
C{twistd mpush}: command-line options and the service tree of one node.

The plugin in C{twisted/plugins/mpush_plugin.py} names this module; twistd
calls L{Options} to parse the command line and L{makeService} to build a
C{MultiService} from one validated configuration: the connection server, the
gateway server, and the stores and routers they share (in memory, or in
Redis when one is configured).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from twisted.application import service, strports
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python import usage

from mpush.config import Config, ConfigError, TlsConfig, apply_overrides, check_workers, load_config, worker_config
from mpush.config_warnings import config_warnings
from mpush.gc_tuning import tune_gc
from mpush.keys import load_key_material
from mpush.listen_errors import describe_listen_error, listen_keys
from mpush.netinfo import local_ip, public_ip
from mpush.protocol.routing import NodeInfo
from mpush.redis_status import is_retry_chatter
from mpush.router.local import LocalRouter
from mpush.metrics import PrometheusMetrics
from mpush.node_api import NodeAPI
from mpush.offline.delivery import OfflineDelivery
from mpush.offline.nudge import MemoryNudgeChannel, RedisNudgeChannel, deliver_nudged
from mpush.server.device.ack_handler import AckHandler
from mpush.server.ops.admin import AdminFactory
from mpush.server.device.bind import BindHandler, UnbindHandler
from mpush.server.device.bind_validator import load_bind_validator
from mpush.store.broadcast_control import MemoryBroadcastControl, RedisBroadcastControl
from mpush.server.device.client_push import ClientPushHandler
from mpush.server.device.connection import ConnectionFactory
from mpush.server.device.dispatcher import DeviceDispatcher
from mpush.server.device.fast_connect import FastConnectHandler
from mpush.server.gateway.gateway import GATEWAY_ALLOW, GatewayFactory, SourceAllowList
from mpush.server.ops.drain import Drainer
from mpush.server.ops.log_gate import LogLevelGate, read_log_level
from mpush.server.ops.push_tracking import PushTracker
from mpush.server.ops.reload import Reloader
from mpush.server.ops.signals import ProcessSignals
from mpush.server.device.handshake import HandshakeHandler
from mpush.server.device.heartbeat import HeartbeatHandler
from mpush.server.node import PacketIds, ServerNode
from mpush.server.gateway.acks import AckTable
from mpush.server.routing.router_center import RouterCenter
from mpush.tls import server_tls_options, tls_endpoint

if TYPE_CHECKING:
    from twisted.web.server import Site

log = Logger()

#: Seconds between sweeps of expired offline messages kept in memory.
OFFLINE_SWEEP_INTERVAL = 60.0


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"port out of range: {value}")
    return value


def _workers(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--workers: expected a whole number of processes, got {text!r}") from None


class Options(usage.Options):
    """
    Plugin options; each overrides the matching key of the config file.
    """

    synopsis = "[options]"
    longdesc = (
        "Run an MPush-compatible push server node. Without --config and "
        "--redis it runs on in-memory stores with nothing else installed."
    )
    optParameters = [
        ["config", "c", None, "TOML config file (see etc/mpush.toml)."],
        ["connect-port", None, None, "Client port ([net] connect-server-port, default 3000).", _port],
        ["gateway-port", None, None, "Gateway port for pushes ([net] gateway-server-port, default 3001; 0 disables).", _port],
        ["admin-port", None, None, "Admin console port ([net] admin-server-port, default 3002; 0 disables).", _port],
        ["http-port", None, None, "HTTP push API, /metrics and /healthz ([net] http-server-port, default 8080; 0 disables).", _port],
        ["redis", None, None, "Redis URL redis://[:password@]host:port/db ([redis] nodes); absent = in-memory stores."],
        ["state-dir", None, None, "Directory for generated keys ([mpush] state-dir, default /var/lib/mpush)."],
        ["workers", None, None, "Server processes sharing the client, WebSocket and HTTP ports ([cluster] workers, default 1; more than 1 needs Redis).", _workers],
    ]

    #: Set by L{mpush.worker} in a worker process (0-based): the node then
    #: runs that worker's config (its own gateway and console ports).
    worker_index = None

    def postOptions(self) -> None:
        try:
            config = self._read()
            # Checked on what the whole box runs, before any worker is started.
            check_workers(config)
        except ConfigError as error:
            # One line naming the key, not twistd's whole usage text.
            raise SystemExit(f"mpush: {error}")
        #: What the whole box runs; C{config} is this process's part of it.
        self.base_config = config
        if self.worker_index is not None:
            config = worker_config(config, self.worker_index)
        self.config = config

    def _read(self) -> Config:
        config = apply_overrides(
            load_config(self["config"]),
            connect_port=self["connect-port"],
            gateway_port=self["gateway-port"],
            admin_port=self["admin-port"],
            redis_url=self["redis"],
            http_port=self["http-port"],
            workers=self["workers"],
        )
        return config.replace(state_dir=self["state-dir"]) if self["state-dir"] else config

    def reload_config(self) -> Config:
        """
        The config as the command line gives it, read again (SIGHUP);
        raises ConfigError, never exits.
        """
        config = self._read()
        if self.worker_index is not None:
            config = worker_config(config, self.worker_index)
        return config

    def command_line(self) -> list[str]:
        """
        The options given, as arguments that give the same configuration
        (a worker process is started with them).
        """
        args = []
        for name in ("config", "connect-port", "gateway-port", "admin-port", "http-port", "redis", "state-dir", "workers"):
            value = self[name]
            if value is None:
                continue
            if name in ("config", "state-dir"):
                value = os.path.abspath(value)
            args += [f"--{name}", str(value)]
        return args


#: Seconds a node's Redis connection may leave a command unanswered before
#: it is aborted and made again.
NODE_REDIS_REPLY_TIMEOUT = 15.0


def registry_timing(config: Config) -> dict[str, float]:
    cluster = config.cluster
    return {"ttl": cluster.node_ttl / 1000.0, "refresh": cluster.node_refresh / 1000.0}


def gateway_of(config: Config) -> tuple[str, int]:
    """A node's gateway endpoint: its identity in routes and among the nodes."""
    return (local_ip(config.net), config.net.gateway_server_port)


class Backends:
    """
    The shared state of a node, in memory or in Redis: sessions, routes,
    online-user events, the kick and offline-nudge channels and the node
    registry.
    """

    def __init__(self, config, clock):
        url = config.redis.url()
        self.redis = None
        self.redis_url = url
        if url is None:
            from mpush.router.memory import (
                MemoryKickChannel,
                MemoryNodeRegistry,
                MemoryRemoteRouter,
                MemoryRoutingState,
                MemoryUserEvents,
            )
            from mpush.offline.memory import MemoryOfflineStore
            from mpush.store.memory import MemorySessionStore

            state = MemoryRoutingState(clock)
            self.nudges = MemoryNudgeChannel(state)
            self.offline = MemoryOfflineStore(config.offline.max_count, config.offline.max_bytes)
            self.broadcasts = MemoryBroadcastControl()
            self.sessions = MemorySessionStore(clock)
            self.remote = MemoryRemoteRouter(clock, state)
            self.events = MemoryUserEvents(public_ip(config.net), clock, state, gateway=gateway_of(config))
            self.kicks = MemoryKickChannel(clock, state)
            self.registry = MemoryNodeRegistry(clock, state, **registry_timing(config))
        else:
            from mpush.offline.redis import RedisOfflineStore
            from mpush.router.redis import (
                RedisKickChannel,
                RedisNodeRegistry,
                RedisRemoteRouter,
                RedisUserEvents,
            )
            from mpush.store.redis import LOAD_PATIENCE as SESSION_LOAD_PATIENCE, RedisSessionStore
            from mpush.store.redis_connection import connect_redis

            # Callers are answered within BoundedRedis's own deadline (2 s)
            # whatever happens; the connection itself is declared hung only
            # after NODE_REDIS_REPLY_TIMEOUT.  txredisapi times each command
            # from when it was sent, so under a reconnect storm a reply
            # already waiting in the socket behind a busy reactor looked
            # "hung" at 5 s, and dropping the connection failed every call
            # in flight at once.
            self.redis = connect_redis(url, clock, reply_timeout=NODE_REDIS_REPLY_TIMEOUT)
            self.offline = RedisOfflineStore(
                self.redis, clock, max_count=config.offline.max_count, max_bytes=config.offline.max_bytes
            )
            self.broadcasts = RedisBroadcastControl(self.redis, clock)
            self.sessions = RedisSessionStore(
                self.redis, clock, close_connection=False, load_patience=SESSION_LOAD_PATIENCE,
                wait_replicas=config.redis.wait_replicas, wait_timeout=config.redis.wait_timeout / 1000,
            )
            self.remote = RedisRemoteRouter(self.redis, clock)
            self.events = RedisUserEvents(self.redis, public_ip(config.net), clock, gateway=gateway_of(config))
            self.kicks = RedisKickChannel(url, clock, publisher=self.redis)
            self.nudges = RedisNudgeChannel(url, clock, publisher=self.redis)
            self.registry = RedisNodeRegistry(self.redis, clock, **registry_timing(config))

    def observe_failures(self, metrics):
        """
        Count every failed Redis call in C{metrics}, by component.
        """
        components = (
            (self.sessions, "sessions"),
            (self.remote, "routes"),
            (self.events, "events"),
            (self.kicks, "kicks"),
            (self.registry, "registry"),
            (self.broadcasts, "broadcast"),
            (self.offline, "offline"),
            (self.nudges, "offline"),
        )
        for component, label in components:
            observe = getattr(component, "observe_failures", None)
            if observe is not None:
                observe(lambda _name, label=label: metrics.redis_error(label))

    @defer.inlineCallbacks
    def close(self):
        for part in (
            self.registry, self.kicks, self.nudges, self.events, self.remote, self.broadcasts, self.offline,
            self.sessions,
        ):
            try:
                yield part.close()
            except Exception as error:
                log.warn("closing {part}: {why}", part=type(part).__name__, why=error)
        if self.redis is not None:
            yield self.redis.disconnect()


@dataclass(frozen=True)
class NodeListeners:
    """
    What a node serves with (L{build_listeners}), before a service runs it.

    @ivar services: the node's child services in start order: the ports,
        and what publishes the node (ZooKeeper registration last).
    @ivar accepting: those of C{services} that accept connections: what a
        drain stops first.
    @ivar gateway: the gateway port's factory, whose connections a drain
        closes once quiet; C{None} without a gateway port.
    """

    services: tuple[service.IService, ...] = ()
    accepting: tuple[service.IService, ...] = ()
    gateway: GatewayFactory | None = None


@dataclass(frozen=True)
class NodeLifecycle:
    """
    A node's life after start (L{build_lifecycle}): the pushes its gateway
    counts, the drain on stop, the log level gate and the signal handlers
    its service installs when it starts.
    """

    pushes: PushTracker
    drainer: Drainer
    log_gate: LogLevelGate
    signals: ProcessSignals


class NodeService(service.MultiService):
    """
    One node: its listeners as children; on start it announces itself,
    listens for kicks and offline nudges and installs its signal handlers;
    on stop it drains, withdraws, releases its stores and gives the
    process's signal handlers back.

    @ivar worker: 0-based worker number under a supervisor, C{None} for a
        lone node.
    """

    def __init__(
        self,
        node: ServerNode,
        backends: Backends,
        info: NodeInfo,
        api: NodeAPI | None = None,
        *,
        listeners: NodeListeners = NodeListeners(),
        lifecycle: NodeLifecycle | None = None,
        worker: int | None = None,
    ) -> None:
        super().__init__()
        self.node = node
        self.backends = backends
        self.info = info
        self.api = api
        self._sweeper: task.LoopingCall | None = None
        self.drainer = lifecycle.drainer if lifecycle is not None else None
        self.log_gate = lifecycle.log_gate if lifecycle is not None else None
        self.signals = lifecycle.signals if lifecycle is not None else None
        self.worker = worker
        for child in listeners.services:
            child.setServiceParent(self)

    def privilegedStartService(self) -> None:
        with _one_line_listen_errors(self.node.config):
            super().privilegedStartService()

    def startService(self) -> None:
        with _one_line_listen_errors(self.node.config):
            self._start()

    def _start(self) -> None:
        tune_gc()
        if self.log_gate is not None:
            level = read_log_level(self.node.config.source)
            if level is not None:
                self.log_gate.set_level(level)
                self.log_gate.install()
        super().startService()
        center = self.node.router_center
        backends = self.backends
        log.info(
            "mpush node starting{worker}: client port {port}, gateway {host}:{gateway}, state {where}",
            worker="" if self.worker is None else f" (worker {self.worker})",
            port=self.node.config.net.connect_server_port,
            host=self.info.host,
            gateway=self.info.port,
            where="in Redis" if backends.redis is not None else "in memory",
        )
        # Only the users this endpoint put in the online list before: other
        # nodes (workers) behind the same IP keep theirs.
        self._quietly(backends.events.clear(), "online list not cleared")
        # Routes this endpoint left online before a crash point at no
        # connection now; a restart within node-ttl is never reported dead.
        self._quietly(
            backends.remote.mark_node_offline(self.info.host, self.info.port),
            "stale routes not marked offline",
        )
        self._quietly(
            backends.kicks.listen(self.info.host, self.info.port, center.remote_kick),
            "kick channel not listening",
        )
        self._quietly(
            backends.nudges.listen(self.info.host, self.info.port, lambda nudge: deliver_nudged(center, nudge)),
            "offline nudges not heard",
        )
        backends.registry.on_node_dead(self._node_dead)
        backends.registry.on_registered_again(center.share_again)
        self._quietly(backends.registry.register(self.info), "node not registered")
        sweep = getattr(backends.offline, "sweep", None)
        if sweep is not None:
            self._sweeper = task.LoopingCall(self._sweep_offline, sweep)
            self._sweeper.clock = self.node.clock
            self._sweeper.start(OFFLINE_SWEEP_INTERVAL, now=False)
        if self.signals is not None:
            self.signals.install()

    def _sweep_offline(self, sweep: Callable[[int], object]) -> None:
        sweep(self.node.now_ms())
        self.node.metrics.offline_queue_size(self.backends.offline.queued())

    def _node_dead(self, info: NodeInfo) -> defer.Deferred:
        log.warn("node {host}:{port} is gone; marking its routes offline", host=info.host, port=info.port)
        self._quietly(self.backends.events.release_node(info.host, info.port), "dead node's online users left listed")
        return self.backends.remote.mark_node_offline(info.host, info.port, unless_back=True)

    @defer.inlineCallbacks
    def stopService(self) -> defer.Deferred:
        try:
            yield self._stop()
        finally:
            # Last: a second SIGTERM during the drain still finds ours.
            if self.signals is not None:
                self.signals.uninstall()

    @defer.inlineCallbacks
    def _stop(self) -> defer.Deferred:
        if self.drainer is not None:
            # Stop accepting, let pushes and acks finish, close clients so
            # they fast-connect elsewhere, withdraw routes and registration.
            yield self.drainer.drain()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        yield super().stopService()
        if self.api is not None:
            yield self.api.close()
        if self.node.http_proxy is not None:
            yield self.node.http_proxy.close()
        backends = self.backends
        # Closes still waiting for their shared side: do it before the
        # routes of the whole node are marked offline.
        yield self.node.router_center.flush_closes()
        for step, why in (
            (lambda: backends.registry.unregister(), "node not unregistered"),
            (lambda: backends.remote.mark_node_offline(self.info.host, self.info.port), "routes not marked offline"),
            (lambda: backends.events.clear(), "online list not cleared"),
        ):
            try:
                yield step()
            except Exception as error:
                log.warn(why + ": {why}", why=error)
        yield backends.close()

    def _quietly(self, result: object, why: str) -> None:
        if isinstance(result, defer.Deferred):
            result.addErrback(lambda failure: log.warn(why + ": {why}", why=failure.getErrorMessage()))


#: Seconds the Redis side of a client's close waits, so that the devices of
#: a reconnect storm that bind again here meanwhile cost it nothing
#: (L{RouterCenter.connection_closed}).
ROUTE_CLOSE_DELAY = 2.0


@contextlib.contextmanager
def _one_line_listen_errors(config: Config) -> Iterator[None]:
    """A port that cannot be listened on stops twistd with one line, not a traceback."""
    try:
        yield
    except CannotListenError as error:
        raise SystemExit(f"mpush: {describe_listen_error(error, listen_keys(config.net))}") from None


def make_dispatcher(node: ServerNode) -> DeviceDispatcher:
    """
    The connection server's handlers, by command code (spec 5).
    """
    core, metrics = node.config.core, node.metrics
    handlers = [
        HeartbeatHandler(),
        HandshakeHandler(node.session_store, core, metrics, node.clock),
        FastConnectHandler(node.session_store, core, metrics),
    ]
    if node.router_center is not None:
        router_center = node.router_center
        handlers += [
            BindHandler(router_center, metrics),
            UnbindHandler(router_center),
            AckHandler(node.acks),
            ClientPushHandler(),
        ]
    if node.http_proxy is not None:
        handlers.append(node.http_proxy)
    return DeviceDispatcher(handlers)


def build_node(
    config: Config, clock: IReactorTime, backends: Backends | None = None
) -> tuple[ServerNode, Backends, NodeInfo]:
    """
    Everything a node shares, from one config: the node is built complete,
    from its parts (metrics, acks, packet ids, router center, HTTP proxy).

    @param clock: the reactor (a L{task.Clock} in tests).
    @return: C{(node, backends, info)}.
    """
    keys = load_key_material(config.security, config.state_dir)
    validator = load_bind_validator(config)
    backends = backends or Backends(config, clock)
    metrics = PrometheusMetrics()
    backends.observe_failures(metrics)
    backends.offline.counters.listener = lambda name, count: metrics.offline(
        "refused" if name == "refused_too_large" else name, count
    )
    acks = AckTable(clock)
    packet_ids = PacketIds()
    delivery = OfflineDelivery(backends.offline, acks, clock, lease_ms=config.offline.lease)
    gateway = gateway_of(config)
    host = gateway[0]
    router_center = RouterCenter(
        clock, packet_ids.next, LocalRouter(), backends.remote, backends.events, backends.kicks, validator,
        gateway,
        offline=delivery,
        close_delay=ROUTE_CLOSE_DELAY if backends.redis is not None else 0.0,
    )
    http_proxy = None
    if config.proxy.enabled:
        from mpush.server.proxy.http_proxy import HttpProxyHandler

        http_proxy = HttpProxyHandler(config.proxy, clock)
    node = ServerNode(
        config, keys.private_key, backends.sessions, clock,
        metrics=metrics,
        acks=acks,
        packet_ids=packet_ids,
        router_center=router_center,
        broadcasts=backends.broadcasts,
        http_proxy=http_proxy,
    )
    info = NodeInfo(
        host=host,
        port=config.net.gateway_server_port,
        connect_host=public_ip(config.net),
        connect_port=config.net.connect_server_port,
        started_ms=node.now_ms(),
    )
    return node, backends, info


def _endpoint(port: int, interface: str, backlog: int | None = None) -> str:
    description = f"tcp:{port}"
    if backlog:
        description += f":backlog={backlog}"
    if interface:
        description += ":interface=" + interface.replace(":", "\\:")
    return description


def _listen(
    reactor: Any,
    port: int,
    interface: str,
    factory: ServerFactory,
    tls_options: Any = None,
    backlog: int | None = None,
    shared: bool = False,
) -> service.IService:
    """
    A service listening on C{port}: plain TCP through strports, or TLS with
    C{tls_options}; C{shared} (a worker's client, WebSocket and HTTP ports):
    with C{SO_REUSEPORT}, beside the other workers.
    """
    if shared:
        from mpush.reuseport import ReusePortService

        return ReusePortService(reactor, port, interface, factory, backlog=backlog or 50, tls_options=tls_options)
    if tls_options is None:
        return strports.service(_endpoint(port, interface, backlog), factory)
    listener = StreamServerEndpointService(
        tls_endpoint(reactor, port, interface, tls_options, backlog or 50), factory)
    listener._raiseSynchronously = True  # as strports.service: a busy port stops twistd at start
    return listener


def makeService(options: Options) -> service.IService:
    """
    The service of C{twistd mpush}, in three steps tests reuse: the node
    (L{build_node}), its listeners (L{build_listeners}) and its life after
    start (L{build_lifecycle}).  Nothing is listened on and no signal
    handler installed until the service starts.
    """
    from twisted.internet import reactor

    config = options.config
    worker = getattr(options, "worker_index", None)
    if config.cluster.workers > 1 and worker is None:
        # The process systemd runs: it only supervises the workers.
        from mpush.supervisor import make_supervisor

        return make_supervisor(options, reactor)
    try:
        tls_options = server_tls_options(config.tls) if _serves_tls(config.tls) else None
        node, backends, info = build_node(config, reactor)
    except ConfigError as error:
        raise SystemExit(f"mpush: {error.with_source(options['config'])}")
    for warning in config_warnings(config, info.host):
        log.warn("{warning}", warning=warning)
    api = NodeAPI(node, backends, info, reactor, offline=backends.offline)
    pushes = track_pushes(node)
    listeners = build_listeners(node, api, info, pushes, reactor, tls_options=tls_options, worker=worker)
    lifecycle = build_lifecycle(
        node, backends, listeners, pushes, reactor, reload=options.reload_config, config_path=options["config"]
    )
    return NodeService(node, backends, info, api, listeners=listeners, lifecycle=lifecycle, worker=worker)


def track_pushes(node: ServerNode) -> PushTracker:
    """
    The node's push centre as its gateway sees it: pushes counted until
    answered, refused once a drain starts.
    """
    return PushTracker(node.push_center, clock=node.clock, metrics=node.metrics)


def _serves_tls(tls: TlsConfig) -> bool:
    return bool(tls.connect_server or tls.ws_server or tls.http_server)


def build_listeners(
    node: ServerNode,
    api: NodeAPI,
    info: NodeInfo,
    pushes: PushTracker,
    reactor: Any,
    *,
    tls_options: Any = None,
    worker: int | None = None,
) -> NodeListeners:
    """
    The ports a node serves on, from its config: clients, gateway (pushing
    through C{pushes}), admin console, HTTP API, WebSocket; a worker's
    report publisher; ZooKeeper registration last (registered only once
    every port is bound, withdrawn first).  None listens yet.
    """
    config = node.config
    net, tls = config.net, config.tls
    shared = worker is not None
    services: list[service.IService] = []
    accepting: list[service.IService] = []

    def serve(listener: service.IService) -> None:
        services.append(listener)
        accepting.append(listener)

    connections = ConnectionFactory(node, make_dispatcher(node))
    connections.noisy = False
    serve(_listen(reactor, net.connect_server_port, net.connect_server_bind_ip, connections,
                  tls_options if tls.connect_server else None, backlog=net.connect_server_backlog,
                  shared=shared))
    gateway = None
    if net.gateway_server_port:
        gateway = make_gateway_factory(node, pushes)
        serve(strports.service(_endpoint(net.gateway_server_port, net.gateway_server_bind_ip), gateway))
    if net.admin_server_port:
        admin = AdminFactory(api, reactor, local_ip=info.host)
        serve(strports.service(_endpoint(net.admin_server_port, net.admin_server_bind_ip), admin))
    # The tracker knows the moment a drain starts (it refuses pushes from then).
    draining = lambda: pushes.draining  # noqa: E731
    reports = None
    if worker is not None and config.cluster.workers > 1:
        # The shared HTTP port answers for every worker of the box.
        from mpush.worker_view import ReportPublisher, WorkerReports

        reports = WorkerReports(os.path.join(config.state_dir, "workers"), worker, config.cluster.workers, reactor)
        services.append(ReportPublisher(reports, node.metrics, api, lambda: health(api, draining), reactor))
    if net.http_server_port:
        serve(_listen(reactor, net.http_server_port, http_interface(config),
                      make_http_site(node, api, reactor, draining=draining, reports=reports),
                      tls_options if tls.http_server else None, shared=shared))
    if net.ws_server_port:
        from mpush.server.ws.websocket import make_ws_site

        ws_site = make_ws_site(node, reactor=reactor)
        serve(_listen(reactor, net.ws_server_port, "", ws_site, tls_options if tls.ws_server else None,
                      shared=shared))
    if config.zk.enabled:
        from mpush.zk import ZkRegistration, cluster_nodes

        nodes = cluster_nodes(config, connect_host=info.connect_host, gateway_host=info.host)
        try:
            services.append(ZkRegistration(config, nodes, reactor))
        except ConfigError as error:
            raise SystemExit(f"mpush: {error}")
    return NodeListeners(tuple(services), tuple(accepting), gateway)


def build_lifecycle(
    node: ServerNode,
    backends: Backends,
    listeners: NodeListeners,
    pushes: PushTracker,
    reactor: Any,
    *,
    reload: Callable[[], Config],
    config_path: str | None,
) -> NodeLifecycle:
    """
    A node's drain (of C{listeners}, within C{[cluster] drain-timeout}),
    log level gate, and the signal handlers that run them: SIGTERM drains,
    SIGHUP applies C{reload()} and the log level of C{config_path}.
    """
    center = node.router_center
    drainer = Drainer(
        listeners.accepting, node.config.cluster.drain_timeout / 1000.0,
        connections=node.connections, acks=node.acks, clock=node.clock, pushes=pushes,
        registry=backends.registry, remote=center.remote, gateway=lambda: center.gateway,
        gateways=listeners.gateway,
    )
    log_gate = LogLevelGate(drop=(is_retry_chatter,))
    reloader = Reloader(node, reload, log_gate=log_gate, log_level=lambda: read_log_level(config_path))
    return NodeLifecycle(pushes, drainer, log_gate, ProcessSignals(reactor, reloader))


def make_gateway_factory(node: ServerNode, pushes: PushTracker) -> GatewayFactory:
    """
    The gateway port's factory: sources outside C{[net] gateway-allow} are
    closed at accept, counted and logged (at most a line a second).
    """
    config = node.config
    allow = SourceAllowList(config.net.gateway_allow) if config.net.gateway_allow else None

    def refused(peer: str, detail: str) -> None:
        node.limits.refused(node.metrics, GATEWAY_ALLOW, peer, detail)

    return GatewayFactory(pushes, config.core.max_gateway_packet_size, allow=allow, refused=refused)


def http_interface(config: Config) -> str:
    """
    Where the HTTP API listens: anywhere configured when it has a token,
    loopback only when it has none (anyone who reaches it could push).
    """
    if config.http.api_token:
        return config.net.http_server_bind_ip
    log.warn(
        "HTTP API on 127.0.0.1:{port} only: no [http] api-token is configured",
        port=config.net.http_server_port,
    )
    return "127.0.0.1"


def make_http_site(
    node: ServerNode,
    api: NodeAPI,
    clock: IReactorTime,
    draining: Callable[[], bool] = lambda: False,
    reports: Any = None,
) -> Site:
    """
    The HTTP API with /metrics and /healthz beside it; with C{reports} (a
    worker of several), /metrics, /healthz and /v1/stats answer for them all.
    """
    from mpush.http.api import ApiResource, ApiSite, HttpApiRoot, TokenGuard
    from mpush.metrics import HealthResource, MetricsResource

    config = node.config
    token = config.http.api_token or None
    public = config.http.public_paths
    metrics = node.metrics
    check = lambda: health(api, draining)  # noqa: E731
    if reports is not None:
        from mpush.worker_view import NodeMetricsView, NodeStatsView, node_health

        metrics, api = NodeMetricsView(node.metrics, reports), NodeStatsView(api, reports)
        own_check = check
        check = lambda: node_health(own_check, reports)  # noqa: E731
    resource = ApiResource(
        api, token=token, clock=clock, max_body_bytes=config.http.max_body_size, public_paths=public
    )
    root = HttpApiRoot(resource)
    for name, child in (
        ("metrics", MetricsResource(metrics)),
        ("healthz", HealthResource(check, clock=clock)),
    ):
        if token is not None and f"/{name}" not in public:
            child = TokenGuard(child, token)
        root.putChild(name.encode("ascii"), child)
    site = ApiSite(root, body_limit=config.http.max_body_size)
    site.noisy = False
    return site


@defer.inlineCallbacks
def health(api: NodeAPI, draining: Callable[[], bool] = lambda: False) -> defer.Deferred:
    """
    Healthy when the node can reach its shared state (Redis, when it has
    one) and is not draining for a shutdown.
    """
    if draining():
        raise RuntimeError("node is draining")
    online = yield api.online_count()
    return {"connections": api.connection_count(), "online": online}

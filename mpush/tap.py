"""
C{twistd mpush}: command-line options and the service tree of one node.

The plugin in C{twisted/plugins/mpush_plugin.py} names this module; twistd
calls L{Options} to parse the command line and L{makeService} to build a
C{MultiService} from one validated configuration: the connection server, the
gateway server, and the stores and routers they share (in memory, or in
Redis when one is configured).
"""

import contextlib
import os

from twisted.application import service, strports
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from mpush.config import ConfigError, apply_overrides, check_workers, load_config, worker_config
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
from mpush.server.device.dispatcher import MessageDispatcher
from mpush.server.device.fast_connect import FastConnectHandler
from mpush.server.gateway.gateway import GATEWAY_ALLOW, GatewayFactory, SourceAllowList
from mpush.server.ops.lifecycle import (
    Drainer,
    LogLevelGate,
    PushTracker,
    Reloader,
    install_sighup,
    install_sigterm,
    read_log_level,
)
from mpush.server.device.handshake import HandshakeHandler
from mpush.server.device.heartbeat import HeartbeatHandler
from mpush.server.node import ServerNode
from mpush.server.gateway.push_center import PushCenter
from mpush.server.routing.router_center import RouterCenter
from mpush.tls import server_tls_options, tls_endpoint

log = Logger()

#: Seconds between sweeps of expired offline messages kept in memory.
OFFLINE_SWEEP_INTERVAL = 60.0


def _port(text):
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"port out of range: {value}")
    return value


def _workers(text):
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

    def postOptions(self):
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

    def _read(self):
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

    def reload_config(self):
        """
        The config as the command line gives it, read again (SIGHUP);
        raises ConfigError, never exits.
        """
        config = self._read()
        if self.worker_index is not None:
            config = worker_config(config, self.worker_index)
        return config

    def command_line(self):
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


def registry_timing(config):
    cluster = config.cluster
    return {"ttl": cluster.node_ttl / 1000.0, "refresh": cluster.node_refresh / 1000.0}


def gateway_of(config) -> tuple[str, int]:
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


class NodeService(service.MultiService):
    """
    One node: its listeners as children; on start it announces itself and
    listens for kicks and offline nudges, on stop it withdraws and releases
    its stores.
    """

    def __init__(self, node, backends, info, api=None):
        super().__init__()
        self.node = node
        self.backends = backends
        self.info = info
        self.api = api
        self._sweeper = None
        self.drainer = None
        self.log_gate = None
        #: 0-based worker number under a supervisor, None for a lone node.
        self.worker = None

    def privilegedStartService(self):
        with _one_line_listen_errors(self.node.config):
            super().privilegedStartService()

    def startService(self):
        with _one_line_listen_errors(self.node.config):
            self._start()

    def _start(self):
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
        self._quietly(backends.registry.register(self.info), "node not registered")
        sweep = getattr(backends.offline, "sweep", None)
        if sweep is not None:
            self._sweeper = task.LoopingCall(self._sweep_offline, sweep)
            self._sweeper.clock = self.node.clock
            self._sweeper.start(OFFLINE_SWEEP_INTERVAL, now=False)

    def _sweep_offline(self, sweep):
        sweep(self.node.now_ms())
        self.node.metrics.offline_queue_size(self.backends.offline.queued())

    def _node_dead(self, info):
        log.warn("node {host}:{port} is gone; marking its routes offline", host=info.host, port=info.port)
        self._quietly(self.backends.events.release_node(info.host, info.port), "dead node's online users left listed")
        return self.backends.remote.mark_node_offline(info.host, info.port)

    @defer.inlineCallbacks
    def stopService(self):
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

    def _quietly(self, result, why):
        if isinstance(result, defer.Deferred):
            result.addErrback(lambda failure: log.warn(why + ": {why}", why=failure.getErrorMessage()))


#: Seconds the Redis side of a client's close waits, so that the devices of
#: a reconnect storm that bind again here meanwhile cost it nothing
#: (L{RouterCenter.connection_closed}).
ROUTE_CLOSE_DELAY = 2.0


@contextlib.contextmanager
def _one_line_listen_errors(config):
    """A port that cannot be listened on stops twistd with one line, not a traceback."""
    try:
        yield
    except CannotListenError as error:
        raise SystemExit(f"mpush: {describe_listen_error(error, listen_keys(config.net))}") from None


def make_dispatcher(node):
    """
    The connection server's handlers, by command code (spec 5).
    """
    handlers = [HeartbeatHandler(), HandshakeHandler(node), FastConnectHandler(node)]
    if node.router_center is not None:
        handlers += [BindHandler(node), UnbindHandler(node), AckHandler(node), ClientPushHandler(node)]
    if node.http_proxy is not None:
        handlers.append(node.http_proxy)
    return MessageDispatcher(handlers)


def build_node(config, clock, backends=None):
    """
    Everything a node shares, from one config.

    @return: C{(node, backends, info)}.
    """
    keys = load_key_material(config.security, config.state_dir)
    validator = load_bind_validator(config)
    backends = backends or Backends(config, clock)
    node = ServerNode(config, keys.private_key, backends.sessions, clock)
    node.metrics = PrometheusMetrics()
    backends.observe_failures(node.metrics)
    backends.offline.counters.listener = lambda name, count: node.metrics.offline(
        "refused" if name == "refused_too_large" else name, count
    )
    delivery = OfflineDelivery(backends.offline, node.acks, clock, lease_ms=config.offline.lease)
    gateway = gateway_of(config)
    host = gateway[0]
    node.router_center = RouterCenter(
        node, LocalRouter(), backends.remote, backends.events, backends.kicks, validator, gateway,
        offline=delivery,
        close_delay=ROUTE_CLOSE_DELAY if backends.redis is not None else 0.0,
    )
    node.push_center = PushCenter(node, node.router_center, backends.broadcasts)
    if config.proxy.enabled:
        from mpush.server.proxy.http_proxy import HttpProxyHandler

        node.http_proxy = HttpProxyHandler(node)
    info = NodeInfo(
        host=host,
        port=config.net.gateway_server_port,
        connect_host=public_ip(config.net),
        connect_port=config.net.connect_server_port,
        started_ms=node.now_ms(),
    )
    return node, backends, info


def _endpoint(port, interface, backlog=None):
    description = f"tcp:{port}"
    if backlog:
        description += f":backlog={backlog}"
    if interface:
        description += ":interface=" + interface.replace(":", "\\:")
    return description


def _listen(parent, reactor, port, interface, factory, tls_options=None, backlog=None, shared=False):
    """
    Listen on C{port}: plain TCP through strports, or TLS with C{tls_options};
    C{shared} (a worker's client, WebSocket and HTTP ports): with
    C{SO_REUSEPORT}, beside the other workers.
    """
    if shared:
        from mpush.reuseport import ReusePortService

        ReusePortService(
            reactor, port, interface, factory, backlog=backlog or 50, tls_options=tls_options
        ).setServiceParent(parent)
        return
    if tls_options is None:
        strports.service(_endpoint(port, interface, backlog), factory).setServiceParent(parent)
        return
    listener = StreamServerEndpointService(
        tls_endpoint(reactor, port, interface, tls_options, backlog or 50), factory)
    listener._raiseSynchronously = True  # as strports.service: a busy port stops twistd at start
    listener.setServiceParent(parent)


def makeService(options):
    from twisted.internet import reactor

    config = options.config
    worker = getattr(options, "worker_index", None)
    if config.cluster.workers > 1 and worker is None:
        # The process systemd runs: it only supervises the workers.
        from mpush.supervisor import make_supervisor

        return make_supervisor(options, reactor)
    shared = worker is not None
    tls = config.tls
    try:
        tls_options = None
        if tls.connect_server or tls.ws_server or tls.http_server:
            tls_options = server_tls_options(tls)
        node, backends, info = build_node(config, reactor)
    except ConfigError as error:
        raise SystemExit(f"mpush: {error.with_source(options['config'])}")
    api = NodeAPI(node, backends, info, reactor, offline=backends.offline)
    top = NodeService(node, backends, info, api)
    if worker is not None:
        top.worker = worker
    net = config.net
    connections = ConnectionFactory(node, make_dispatcher(node))
    connections.noisy = False
    _listen(top, reactor, net.connect_server_port, net.connect_server_bind_ip, connections,
            tls_options if tls.connect_server else None, backlog=net.connect_server_backlog,
            shared=shared)
    pushes = PushTracker(node.push_center)
    for warning in config_warnings(config, info.host):
        log.warn("{warning}", warning=warning)
    gateway = None
    if net.gateway_server_port:
        gateway = make_gateway_factory(node, pushes)
        strports.service(
            _endpoint(net.gateway_server_port, net.gateway_server_bind_ip), gateway
        ).setServiceParent(top)
    if net.admin_server_port:
        admin = AdminFactory(api, reactor, local_ip=info.host)
        strports.service(
            _endpoint(net.admin_server_port, net.admin_server_bind_ip), admin
        ).setServiceParent(top)
    draining = lambda: bool(top.drainer and top.drainer.draining)  # noqa: E731
    reports = None
    if worker is not None and config.cluster.workers > 1:
        # The shared HTTP port answers for every worker of the box.
        from mpush.worker_view import ReportPublisher, WorkerReports

        reports = WorkerReports(os.path.join(config.state_dir, "workers"), worker, config.cluster.workers, reactor)
        ReportPublisher(reports, node.metrics, api, lambda: health(api, draining), reactor).setServiceParent(top)
    if net.http_server_port:
        _listen(top, reactor, net.http_server_port, http_interface(config),
                make_http_site(node, api, reactor, draining=draining, reports=reports),
                tls_options if tls.http_server else None, shared=shared)
    if net.ws_server_port:
        from mpush.server.ws.websocket import make_ws_site

        ws_site = make_ws_site(node, reactor=reactor)
        _listen(top, reactor, net.ws_server_port, "", ws_site, tls_options if tls.ws_server else None,
                shared=shared)
    if config.zk.enabled:
        # Last: registered only once every listener is bound, withdrawn first.
        from mpush.zk import ZkRegistration, cluster_nodes

        nodes = cluster_nodes(config, connect_host=info.connect_host, gateway_host=info.host)
        try:
            ZkRegistration(config, nodes, reactor).setServiceParent(top)
        except ConfigError as error:
            raise SystemExit(f"mpush: {error}")
    from mpush.reuseport import ReusePortService

    listeners = [child for child in top if isinstance(child, (StreamServerEndpointService, ReusePortService))]
    top.drainer = Drainer(
        node, listeners, config.cluster.drain_timeout / 1000.0, pushes=pushes, registry=backends.registry,
        gateways=gateway,
    )
    top.log_gate = LogLevelGate(drop=(is_retry_chatter,))
    install_sigterm(reactor)
    install_sighup(
        reactor,
        Reloader(
            node,
            options.reload_config,
            log_gate=top.log_gate,
            log_level=lambda: read_log_level(options["config"]),
        ),
    )
    return top


def make_gateway_factory(node, pushes):
    """
    The gateway port's factory: sources outside C{[net] gateway-allow} are
    closed at accept, counted and logged (at most a line a second).
    """
    config = node.config
    allow = SourceAllowList(config.net.gateway_allow) if config.net.gateway_allow else None

    def refused(peer, detail):
        node.limits.refused(node.metrics, GATEWAY_ALLOW, peer, detail)

    return GatewayFactory(pushes, config.core.max_gateway_packet_size, allow=allow, refused=refused)


def http_interface(config):
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


def make_http_site(node, api, clock, draining=lambda: False, reports=None):
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
def health(api, draining=lambda: False):
    """
    Healthy when the node can reach its shared state (Redis, when it has
    one) and is not draining for a shutdown.
    """
    if draining():
        raise RuntimeError("node is draining")
    online = yield api.online_count()
    return {"connections": api.connection_count(), "online": online}

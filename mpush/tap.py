"""
C{twistd mpush}: command-line options and the service tree of one node.

The plugin in C{twisted/plugins/mpush_plugin.py} names this module; twistd
calls L{Options} to parse the command line and L{makeService} to build a
C{MultiService} from one validated configuration.
"""

from twisted.application import service, strports
from twisted.logger import Logger
from twisted.python import usage

from mpush.config import ConfigError, apply_overrides, load_config
from mpush.keys import load_key_material
from mpush.server.connection import ConnectionFactory
from mpush.server.dispatcher import MessageDispatcher
from mpush.server.fast_connect import FastConnectHandler
from mpush.server.handshake import HandshakeHandler
from mpush.server.heartbeat import HeartbeatHandler
from mpush.server.node import ServerNode

log = Logger()


def _port(text):
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"port out of range: {value}")
    return value


class Options(usage.Options):
    """
    Plugin options; each overrides the matching key of the config file.
    """

    synopsis = "[options]"
    longdesc = (
        "Run an MPush-compatible connection server. Without --config and "
        "--redis it runs on in-memory stores with nothing else installed."
    )
    optParameters = [
        ["config", "c", None, "TOML config file (see etc/mpush.toml)."],
        ["connect-port", None, None, "Client port ([net] connect-server-port, default 3000).", _port],
        ["gateway-port", None, None, "Gateway port ([net] gateway-server-port, default 3001).", _port],
        ["admin-port", None, None, "Admin console port ([net] admin-server-port, default 3002).", _port],
        ["redis", None, None, "Redis URL redis://[:password@]host:port/db ([redis] nodes); absent = in-memory stores."],
        ["state-dir", None, None, "Directory for generated keys ([mpush] state-dir, default /var/lib/mpush)."],
    ]

    def postOptions(self):
        try:
            config = load_config(self["config"])
            config = apply_overrides(
                config,
                connect_port=self["connect-port"],
                gateway_port=self["gateway-port"],
                admin_port=self["admin-port"],
                redis_url=self["redis"],
            )
        except ConfigError as error:
            # One line naming the key, not twistd's whole usage text.
            raise SystemExit(f"mpush: {error}")
        if self["state-dir"]:
            config = config.replace(state_dir=self["state-dir"])
        self.config = config


class NodeService(service.MultiService):
    """
    One node: its listeners as children, its stores released on stop.
    """

    def __init__(self, node):
        super().__init__()
        self.node = node

    def startService(self):
        config = self.node.config
        log.info(
            "mpush node starting: client port {port}, sessions in {store}",
            port=config.net.connect_server_port,
            store=type(self.node.session_store).__name__,
        )
        super().startService()

    def stopService(self):
        stopped = super().stopService()
        stopped.addCallback(lambda _: self.node.session_store.close())
        return stopped


def make_session_store(config, clock):
    """
    The reusable-session store the config asks for: Redis when a node is
    configured, memory otherwise.
    """
    url = config.redis.url()
    if url is None:
        from mpush.store.memory import MemorySessionStore

        return MemorySessionStore(clock)
    from mpush.store.redis import RedisSessionStore
    from mpush.store.redis_connection import connect_redis

    return RedisSessionStore(connect_redis(url, clock), clock)


def make_dispatcher(node):
    """
    The connection server's handlers, by command code (spec 5).
    """
    return MessageDispatcher(
        [HeartbeatHandler(), HandshakeHandler(node), FastConnectHandler(node)]
    )


def build_node(config, clock):
    """
    Everything a node shares, from one config.
    """
    keys = load_key_material(config.security, config.state_dir)
    return ServerNode(config, keys.private_key, make_session_store(config, clock), clock)


def connect_endpoint(config):
    net = config.net
    description = f"tcp:{net.connect_server_port}:backlog=1024"
    if net.connect_server_bind_ip:
        description += ":interface=" + net.connect_server_bind_ip.replace(":", "\\:")
    return description


def makeService(options):
    from twisted.internet import reactor

    config = options.config
    try:
        node = build_node(config, reactor)
    except ConfigError as error:
        raise SystemExit(f"mpush: {error}")
    top = NodeService(node)
    factory = ConnectionFactory(node, make_dispatcher(node))
    strports.service(connect_endpoint(config), factory).setServiceParent(top)
    return top

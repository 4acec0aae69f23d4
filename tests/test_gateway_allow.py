"""
Who may use the gateway port: loopback by default, an allow-list of source
networks, a warning when anyone can reach it, and refusals counted and
logged at most once a second.
"""

import dataclasses

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mpush.config import ConfigError, NetConfig, RedisConfig, load_config, parse_config
from mpush.push import AckModel, PushClient, PushStatus
from mpush.server.gateway.gateway import GatewayProtocol, SourceAllowList
from mpush.config_warnings import gateway_warnings
from mpush.tap import make_gateway_factory, track_pushes

from tests.process_support import listening_socket
from tests.server_support import make_node
from tests.test_twistd_node import NodeCase, demo_key_config


def with_net(**changes):
    config = load_config(None)
    return config.replace(net=dataclasses.replace(config.net, **changes))


class ConfigTests(SynchronousTestCase):
    def test_gateway_listens_on_loopback_by_default(self):
        self.assertEqual(NetConfig().gateway_server_bind_ip, "127.0.0.1")
        self.assertEqual(NetConfig().gateway_allow, ())

    def test_allow_list_parsed_and_checked(self):
        config = parse_config({"net": {"gateway-allow": ["10.0.0.0/8", "192.0.2.7"]}})
        self.assertEqual(config.net.gateway_allow, ("10.0.0.0/8", "192.0.2.7"))
        error = self.assertRaises(ConfigError, parse_config, {"net": {"gateway-allow": ["10.0.0.0/33"]}})
        self.assertIn("[net] gateway-allow", str(error))


class SourceAllowListTests(SynchronousTestCase):
    def test_sources(self):
        allow = SourceAllowList(["10.0.0.0/8", "2001:db8::/32"])
        self.assertTrue(allow.allows(IPv4Address("TCP", "10.1.2.3", 1)))
        self.assertFalse(allow.allows(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertTrue(allow.allows(IPv6Address("TCP", "2001:db8::5", 1)))
        self.assertTrue(allow.allows(IPv6Address("TCP", "::ffff:10.9.9.9", 1)))
        self.assertFalse(allow.allows(IPv6Address("TCP", "::ffff:192.0.2.1", 1)))
        # The node's own host is always allowed.
        self.assertTrue(allow.allows(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertTrue(allow.allows(IPv6Address("TCP", "::1", 1)))
        self.assertTrue(allow.allows(UNIXAddress(b"/tmp/x")))

    def test_empty_list_allows_every_source(self):
        self.assertTrue(SourceAllowList([]).allows(IPv4Address("TCP", "192.0.2.1", 1)))


class RefusalTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.node = make_node(with_net(gateway_allow=("10.0.0.0/8",)), clock=self.clock)
        self.events = []
        self.node.limits.log = Logger(namespace="test", observer=self.events.append)
        self.factory = make_gateway_factory(self.node, track_pushes(self.node))

    def refused(self):
        value = self.node.metrics.registry.get_sample_value(
            "mpush_refused_total", {"reason": "gateway_allow"})
        return int(value or 0)

    def test_outside_source_closed_counted_and_logged_once_a_second(self):
        outsider = IPv4Address("TCP", "192.0.2.9", 4000)
        for _ in range(3):
            self.assertIsNone(self.factory.buildProtocol(outsider))
        self.assertEqual(self.refused(), 3)
        self.assertEqual(len(self.events), 1)
        self.assertEqual(self.events[0]["peer"], "192.0.2.9")
        self.clock.advance(1.0)
        self.assertIsNone(self.factory.buildProtocol(outsider))
        self.assertEqual(len(self.events), 2)
        self.assertEqual(self.events[1]["unlogged"], 2)

    def test_listed_and_loopback_sources_served(self):
        for host in ("10.4.5.6", "127.0.0.1"):
            protocol = self.factory.buildProtocol(IPv4Address("TCP", host, 4000))
            self.assertIsInstance(protocol, GatewayProtocol)
        self.assertEqual(self.refused(), 0)

    def test_no_list_serves_everyone(self):
        node = make_node(with_net(gateway_server_bind_ip=""), clock=self.clock)
        factory = make_gateway_factory(node, track_pushes(node))
        self.assertIsInstance(factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1)), GatewayProtocol)


class WarningTests(SynchronousTestCase):
    def test_default_is_quiet(self):
        self.assertEqual(gateway_warnings(load_config(None), "127.0.0.1"), [])

    def test_open_to_the_world_without_allow_list(self):
        for bind in ("", "0.0.0.0", "10.0.0.5", "::"):
            [warning] = gateway_warnings(with_net(gateway_server_bind_ip=bind), "10.0.0.5")
            self.assertIn("no [net] gateway-allow", warning)
            self.assertIn(":3001", warning)

    def test_allow_list_silences_it(self):
        config = with_net(gateway_server_bind_ip="", gateway_allow=("10.0.0.0/8",))
        self.assertEqual(gateway_warnings(config, "10.0.0.5"), [])

    def test_loopback_gateway_in_a_cluster(self):
        config = with_net(local_ip="10.0.0.5").replace(redis=RedisConfig(nodes=("10.0.0.9:6379",)))
        [warning] = gateway_warnings(config, "10.0.0.5")
        self.assertIn("other nodes and PushSender cannot reach it", warning)
        from mpush.config import ZkConfig

        zk_only = with_net(local_ip="10.0.0.5").replace(zk=ZkConfig(enabled=True))
        [warning] = gateway_warnings(zk_only, "10.0.0.5")
        self.assertIn("PushSender", warning)


def listen_address(port):
    """The local address of the socket listening on C{port} (ss), or None."""
    fields = listening_socket(port)
    return None if fields is None else fields[3].rsplit(":", 1)[0]


class NodeTests(NodeCase):
    def test_default_node_gateway_on_loopback(self):
        node = self.start_node(demo_key_config())
        address = listen_address(node.gateway_port)
        if address is None:
            raise SkipTest("no ss(8) to read the listening address")
        self.assertEqual(address, "127.0.0.1")

    @defer.inlineCallbacks
    def test_configured_gateway_takes_pushes_and_warns_without_list(self):
        """
        Opened to other hosts with an allow-list, the gateway still takes
        pushes (as MPush's PushSender sends them) and says nothing; opened
        without one, the log says so.
        """
        node = self.start_node(
            demo_key_config() + '[net]\ngateway-server-bind-ip = "0.0.0.0"\ngateway-allow = ["10.0.0.0/8"]\n'
        )
        client = yield self.connect(node.port, None)
        yield client.bind("alice")
        pusher = PushClient(reactor, gateway=("127.0.0.1", node.gateway_port))
        self.addCleanup(pusher.close)
        [result] = yield pusher.push("alice", b"through the gateway", ack=AckModel.AUTO_ACK)
        self.assertEqual(result.status, PushStatus.SUCCESS)
        self.assertNotIn("gateway-allow", node.log())
        open_node = self.start_node(demo_key_config() + '[net]\ngateway-server-bind-ip = "0.0.0.0"\n')
        self.assertIn("reachable from other hosts with no [net] gateway-allow", open_node.log())

"""
A node built from its parts (L{mpush.server.node}): complete when it is
constructed, its push path built over the router centre it is given, and
one packet id counter shared by the node and the router centre.
"""

import dataclasses
import itertools

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mpush.keys import load_key_material
from mpush.metrics import IMetrics, NullMetrics, PrometheusMetrics
from mpush.protocol.packet import Command
from mpush.server.gateway.push_center import PushCenter
from mpush.server.node import MAX_PACKET_ID, PacketIds, ServerNode
from mpush.server.proxy.http_proxy import HttpProxyHandler
from mpush.server.routing.router_center import RouterCenter
from mpush.store.memory import MemorySessionStore
from mpush.tap import build_node, make_dispatcher

from tests.server_support import EPOCH, demo_config


class PacketIdsTests(SynchronousTestCase):
    def test_counts_from_one(self):
        ids = PacketIds()
        self.assertEqual([ids.next() for _ in range(3)], [1, 2, 3])

    def test_wraps_to_one_past_the_largest_java_int(self):
        ids = PacketIds()
        ids._count = itertools.count(MAX_PACKET_ID)  # 2**31 draws later
        self.assertEqual([ids.next() for _ in range(3)], [MAX_PACKET_ID, 1, 2])


class BuiltNodeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(EPOCH)

    def build(self, config=None):
        node, _, _ = build_node(demo_config(config), self.clock)
        return node

    def test_complete_when_built(self):
        node = self.build()
        verifyObject(IMetrics, node.metrics)
        self.assertIsInstance(node.metrics, PrometheusMetrics)
        self.assertIsInstance(node.router_center, RouterCenter)
        self.assertIsInstance(node.push_center, PushCenter)
        self.assertIs(node.push_center.router_center, node.router_center)
        self.assertIs(node.router_center.clock, self.clock)
        self.assertIsNone(node.http_proxy)
        self.assertIsNone(make_dispatcher(node).handler_for(Command.HTTP_PROXY))

    def test_one_packet_id_counter(self):
        node = self.build()
        drawn = [node.next_packet_id(), node.router_center.next_packet_id(), node.next_packet_id()]
        self.assertEqual(drawn, [1, 2, 3])

    def test_proxy_built_when_enabled(self):
        config = demo_config()
        node = self.build(config.replace(proxy=dataclasses.replace(config.proxy, enabled=True)))
        self.addCleanup(node.http_proxy.close)
        self.assertIsInstance(node.http_proxy, HttpProxyHandler)
        self.assertIs(make_dispatcher(node).handler_for(Command.HTTP_PROXY), node.http_proxy)

    def test_node_without_push_path(self):
        config = demo_config()
        keys = load_key_material(config.security, config.state_dir)
        node = ServerNode(config, keys.private_key, MemorySessionStore(self.clock), self.clock)
        self.assertIsInstance(node.metrics, NullMetrics)
        self.assertEqual((node.router_center, node.push_center, node.http_proxy), (None, None, None))
        self.assertEqual(node.next_packet_id(), 1)

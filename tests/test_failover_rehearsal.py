"""
The multi-host rehearsal's parts that need no root: the node configs it
writes are valid mpush configs for every Redis model it runs, and its load
processes refuse any address outside the rehearsal network.  The rehearsal
itself (network namespaces, root) is not part of the default run: see
C{python -m mpush.bench.rehearsal --help}.
"""

import tomllib

from twisted.trial.unittest import SynchronousTestCase

from mpush.bench import rehearsal
from mpush.bench.rehearsal_load import endpoint, rehearsal_address
from mpush.config import parse_config
from mpush.protocol.crypto import RsaPrivateKey


class NodeConfigTests(SynchronousTestCase):
    def config(self, redis_model):
        processes = rehearsal.Processes(self.mktemp())
        redis = redis_model(processes)
        text = rehearsal.node_config("mpr-n2", redis.node_section(), "10.77.0.11:2181", "t" * 32,
                                     RsaPrivateKey.generate())
        return parse_config(tomllib.loads(text), "rehearsal.toml")

    def test_sentinel_node(self):
        config = self.config(rehearsal.SentinelRedis)
        self.assertEqual(config.cluster.workers, rehearsal.WORKERS)
        self.assertEqual(config.net.public_ip, "10.77.0.12")
        self.assertEqual(config.net.gateway_server_bind_ip, "10.77.0.12")
        self.assertEqual(config.redis.cluster_model, "sentinel")
        self.assertEqual(len(config.redis.nodes), 3)
        self.assertTrue(config.zk.enabled)
        self.assertIn("/v1/allot", config.http.public_paths)
        # Every address a node is given is inside the rehearsal network.
        for address in (config.net.local_ip, config.net.connect_server_bind_ip, config.net.http_server_bind_ip):
            rehearsal_address(address)
        for node in config.redis.nodes:
            endpoint(node)

    def test_cluster_node(self):
        if not rehearsal.cluster_supported():
            raise self.skipTest("this mpush refuses cluster-model = \"cluster\"")
        config = self.config(rehearsal.ClusterRedis)
        self.assertEqual(config.redis.cluster_model, "cluster")
        self.assertEqual(len(config.redis.nodes), 6)


class AddressTests(SynchronousTestCase):
    def test_only_the_rehearsal_network(self):
        self.assertEqual(rehearsal_address("10.77.0.101"), "10.77.0.101")
        self.assertEqual(endpoint("10.77.0.11:3000"), ("10.77.0.11", 3000))
        for outside in ("10.77.1.1", "8.8.8.8", "192.168.0.1", "127.0.0.1"):
            self.assertRaises(ValueError, rehearsal_address, outside)
        self.assertRaises(ValueError, endpoint, "example.com:80")

    def test_hosts_and_sources_are_inside(self):
        for address in (*rehearsal.HOST_ADDRESSES.values(), *rehearsal.LOAD_SOURCES):
            rehearsal_address(address)

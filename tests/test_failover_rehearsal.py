"""
The multi-host rehearsal's parts that need no root: the node configs it
writes are valid mpush configs for every Redis model it runs, and its load
processes refuse any address outside the rehearsal network.  The rehearsal
itself (network namespaces, root) is not part of the default run: see
C{python -m mpush.bench.rehearsal --help}.  Its report is checked here on
answers shaped like the load processes' own.
"""

import tomllib

from twisted.trial.unittest import SynchronousTestCase

from mpush.bench import rehearsal
from mpush.bench.rehearsal_load import endpoint, push_content, push_number, rehearsal_address
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


class PushNumberTests(SynchronousTestCase):
    def test_round_trip(self):
        self.assertEqual(push_number(push_content(7)), 7)
        self.assertEqual(push_number(push_content(123456)), 123456)

    def test_other_content_has_no_number(self):
        for content in (b"", b"rehearsal", b"rehearsal x", b"other 5", b"rehearsal -1"):
            self.assertIsNone(push_number(content))


def load_answer(success=3, received=3, not_received=0, reconnects=None):
    """One load process's answers to C{push} and C{report}, as it sends them."""
    push = {"sent": success + 1, "answered": {"success": success, "offline": 1}, "unanswered": 0,
            "retried": {}, "pushes received by devices": received, "success but not received": not_received,
            "bound but offline": ["u1"]}
    report = {"devices": 10, "bound now": 10, "reconnecting now": 0,
              "reconnects": {"fast connect": 2, "handshake": 1, "attempt failed: ConnectFailed": 3},
              "reconnect ms": reconnects if reconnects is not None else
              {"fast connect": [100.0, 300.0], "handshake": [2000.0]}}
    return push, report


class ReportTests(SynchronousTestCase):
    def test_pushes_lost_are_summed(self):
        answers = [load_answer(not_received=0)[0], load_answer(success=4, received=2, not_received=2)[0]]
        summary = rehearsal.push_summary(answers)
        self.assertEqual(summary["answered"], {"success": 7, "offline": 2})
        self.assertEqual(summary["lost (success but not received)"], 2)
        self.assertEqual(summary["users bound but answered offline"], 1)

    def test_reconnect_times_by_kind(self):
        reports = [load_answer()[1], load_answer(reconnects={"fast connect": [200.0]})[1]]
        times = rehearsal.reconnect_times(reports)
        self.assertEqual(times["all"]["devices"], 4)
        self.assertEqual(times["fast connect"], {"devices": 3, "ms p50/p90/p99/max": [200, 300, 300, 300]})
        self.assertEqual(times["handshake"]["ms p50/p90/p99/max"], [2000, 2000, 2000, 2000])
        self.assertEqual(rehearsal.reconnect_times([load_answer(reconnects={})[1]]),
                         {"all": {"devices": 0, "ms p50/p90/p99/max": [None, None, None, None]}})

    def test_route_endpoint(self):
        dead = "10.77.0.13"
        route = '1 {"port":3002,"host":"10.77.0.13","deviceId":"d"} 2 {"port":3001,"host":"10.77.0.11"}'
        self.assertEqual(rehearsal.route_endpoint(route, dead),
                         "10.77.0.13:3002 (the killed node), 10.77.0.11:3001")
        self.assertEqual(rehearsal.route_endpoint("", dead), "none")
        self.assertEqual(rehearsal.route_endpoint("1 {not json", dead), "unreadable")

    def test_summary_says_what_came_back_and_what_was_lost(self):
        push, report = load_answer(success=5, received=4, not_received=1)
        pushes = rehearsal.push_summary([push])
        results = {
            "connect": {"bound": 30000, "failed": {}, "seconds": 15.9, "per second": 1883},
            "pushes before the faults": rehearsal.push_summary([load_answer()[0]]),
            "pushes during the faults": pushes,
            "faults": {"mpush node killed": "mpr-n3 (10.77.0.13)", "redis master killed": "10.77.0.11:7001",
                       "seconds redis kill -> serving": 4.2},
            "reconnects": {"by kind": report["reconnects"], "devices back": 3, "still reconnecting": 0,
                           "ms lost -> bound again": rehearsal.reconnect_times([report])},
            "pushes after recovery": rehearsal.push_summary([load_answer()[0]]),
            "lost devices (not bound at the end)": 0,
        }
        text = "\n".join(rehearsal.summary(results))
        self.assertIn("30,000 in 15.9 s (1,883/s)", text)
        self.assertIn("2 by fast connect in p50/p90/max 300/300/300 ms", text)
        self.assertIn("1 by handshake in p50/p90/max 2000/2000/2000 ms", text)
        self.assertIn("3 failed attempts", text)
        self.assertIn("pushes during the faults: 6 sent, answered 5 success, 1 offline; 0 hung", text)
        self.assertIn("1 pushes answered success but never received", text)
        self.assertIn("1 users bound but answered offline after recovery", text)

"""
The shared HTTP port of several workers answering for the node: reports
written and read, expositions and stats merged, health of every worker.
"""

import json
import os

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from mpush.worker_view import (
    STALE_AFTER,
    NodeStatsView,
    WorkerReports,
    merge_expositions,
    merge_stats,
    node_health,
)

EXPOSITION = """# HELP mpush_pushes_total Pushes by result.
# TYPE mpush_pushes_total counter
mpush_pushes_total{{result="success"}} {pushes}
# HELP mpush_connections Open client connections.
# TYPE mpush_connections gauge
mpush_connections {connections}
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds {start}
# HELP mpush_ack_latency_seconds Ack latency.
# TYPE mpush_ack_latency_seconds histogram
mpush_ack_latency_seconds_bucket{{le="0.1"}} {pushes}
mpush_ack_latency_seconds_bucket{{le="+Inf"}} {pushes}
mpush_ack_latency_seconds_count {pushes}
mpush_ack_latency_seconds_sum 0.5
"""


def exposition(pushes, connections, start):
    return EXPOSITION.format(pushes=pushes, connections=connections, start=start)


class MergeTests(SynchronousTestCase):
    def test_totals_and_each_worker_under_a_label(self):
        text = merge_expositions({0: exposition(3, 2, 100), 1: exposition(4, 5, 90)}).decode()
        lines = set(text.splitlines())
        for line in (
            'mpush_pushes_total{result="success"} 7.0',
            'mpush_pushes_total{result="success",worker="0"} 3.0',
            'mpush_pushes_total{result="success",worker="1"} 4.0',
            "mpush_connections 7.0",
            'mpush_connections{worker="1"} 5.0',
            "process_start_time_seconds 90.0",  # the earliest, not a sum
            'mpush_ack_latency_seconds_bucket{le="0.1"} 7.0',
            "mpush_ack_latency_seconds_count 7.0",
            "mpush_ack_latency_seconds_sum 1.0",
        ):
            self.assertIn(line, lines)
        self.assertEqual(text.count("# TYPE mpush_pushes_total counter"), 1)

    def test_stats_summed_with_each_worker(self):
        own = {"node": "h:3001", "connections": 2, "uptime_s": 5, "pushes": {"success": 1, "offline": 0}}
        other = {"node": "h:3002", "connections": 3, "uptime_s": 9, "pushes": {"success": 2, "offline": 1}}
        merged = merge_stats(own, 0, {1: {"stats": other}, 2: "no report"})
        self.assertEqual((merged["connections"], merged["uptime_s"], merged["pushes"]),
                         (5, 9, {"success": 3, "offline": 1}))
        self.assertEqual(merged["node"], "h:3001")
        self.assertEqual([w["worker"] for w in merged["workers"]], [0, 1, 2])
        self.assertEqual(merged["workers"][2], {"worker": 2, "unavailable": "no report"})


class ReportsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.directory = os.path.join(self.mktemp(), "workers")
        self.first = WorkerReports(self.directory, 0, 3, self.clock)
        self.second = WorkerReports(self.directory, 1, 3, self.clock)

    def test_written_read_and_stale(self):
        self.second.write({"stats": {"connections": 1}})
        siblings = self.first.siblings()
        self.assertEqual(siblings[1]["stats"], {"connections": 1})
        self.assertEqual(siblings[2], "no report")
        self.assertNotIn(0, siblings)
        self.clock.advance(STALE_AFTER + 1)
        self.assertEqual(self.first.siblings()[1], f"no report for {STALE_AFTER + 1:.0f} s")
        self.assertEqual(os.listdir(self.directory), ["worker-1.json"])  # no temporary left

    def test_unreadable(self):
        os.makedirs(self.directory)
        with open(os.path.join(self.directory, "worker-1.json"), "w") as broken:
            broken.write("{")
        self.assertTrue(self.first.siblings()[1].startswith("unreadable report"))

    def test_health_of_the_node(self):
        reports = WorkerReports(self.directory, 0, 2, self.clock)
        check = lambda: defer.succeed({"connections": 2, "online": 5})  # noqa: E731
        self.failureResultOf(node_health(check, reports), RuntimeError)  # worker 1 never reported
        self.second.write({"health": {"ok": True, "detail": {"connections": 3}}})
        self.assertEqual(self.successResultOf(node_health(check, reports)),
                         {"connections": 5, "online": 5, "workers": {"0": "ok", "1": "ok"}})
        self.second.write({"health": {"ok": False, "reason": "RouterUnavailable: redis down"}})
        failure = self.failureResultOf(node_health(check, reports), RuntimeError)
        self.assertIn("worker 1: RouterUnavailable: redis down", str(failure.value))

    def test_stats_view_delegates(self):
        class Api:
            def stats(self):
                return {"connections": 1}

            def allot(self):
                return ["h:3000"]

        self.second.write({"stats": {"connections": 4}})
        view = NodeStatsView(Api(), WorkerReports(self.directory, 0, 2, self.clock))
        self.assertEqual(view.stats()["connections"], 5)
        self.assertEqual(view.allot(), ["h:3000"])
        json.dumps(view.stats())

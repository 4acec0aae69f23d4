"""
mpush-bench: its arithmetic, its refusal of anything off loopback, its
command line, and a smoke run of every scenario against a real C{twistd
mpush} node with tiny counts.  The smoke tests check that the JSON lines
parse and that the counts add up, never how fast anything was.
"""

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
from contextlib import redirect_stderr
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from mpush.bench import cli, stats
from mpush.bench.scenarios import ALL_ORDER, SCENARIOS, Settings, share
from mpush.bench.wire import (
    STAMP_SIZE,
    BadAnswer,
    EchoClient,
    HttpResponseReader,
    NotLoopback,
    loopback_address,
    open_connection,
    read_stamp,
    source_addresses,
    stamp_content,
)
from mpush.protocol.crypto import MPUSH_DEMO_PRIVATE_KEY, MPUSH_DEMO_PUBLIC_KEY, RsaPrivateKey

from tests.process_support import REPO, NodeProcess, free_port, node_environment
from tests.redis_server import start_redis_server
from tests.test_workers import WorkersProcess

#: Ceiling on one bench subprocess; its own --duration is far below this.
RUN_TIMEOUT = 180


def dead_pid():
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------------------------- stats


class PercentileTests(SynchronousTestCase):
    def test_nearest_rank(self):
        values = list(range(1, 101))
        self.assertEqual(stats.percentile(values, 50), 50)
        self.assertEqual(stats.percentile(values, 99), 99)
        self.assertEqual(stats.percentile(values, 100), 100)
        self.assertEqual(stats.percentile(values, 0), 1)

    def test_value_is_always_observed(self):
        """No interpolation: p50 of two values is the lower one, not their mean."""
        self.assertEqual(stats.percentile([10, 20], 50), 10)
        self.assertEqual(stats.percentile([10, 20], 51), 20)
        self.assertEqual(stats.percentile([1.5, 2.5, 3.5], 90), 3.5)

    def test_single_value(self):
        for q in (0, 1, 50, 99, 100):
            self.assertEqual(stats.percentile([7], q), 7)

    def test_no_samples(self):
        self.assertIsNone(stats.percentile([], 50))
        self.assertIsNone(stats.summarize_ms([]))

    def test_bad_percentile(self):
        for q in (-1, 100.5, "50", None, True, float("nan")):
            self.assertRaises(ValueError, stats.percentile, [1, 2, 3], q)

    def test_summary_in_ms(self):
        samples = [i * 1_000_000 for i in range(1, 101)]  # 1..100 ms
        summary = stats.summarize_ms(reversed(samples))
        self.assertEqual(summary["n"], 100)
        self.assertEqual((summary["p50"], summary["p90"], summary["p99"]), (50.0, 90.0, 99.0))
        self.assertEqual(summary["max"], 100.0)
        self.assertEqual(summary["mean"], 50.5)

    def test_rate(self):
        self.assertEqual(stats.rate_per_s(300, 1.5), 200.0)
        self.assertIsNone(stats.rate_per_s(10, 0))
        self.assertIsNone(stats.rate_per_s(10, None))


class ShareTests(SynchronousTestCase):
    def test_shares_add_up(self):
        for total in (0, 1, 7, 100, 101):
            for parts in (1, 2, 3, 8):
                shares = [share(total, parts, i) for i in range(parts)]
                self.assertEqual(sum(shares), total)
                self.assertLessEqual(max(shares) - min(shares), 1)

    def test_bad_split(self):
        self.assertRaises(ValueError, share, 10, 0, 0)
        self.assertRaises(ValueError, share, 10, 2, 2)
        self.assertRaises(ValueError, share, -1, 2, 0)


class ProcTests(SynchronousTestCase):
    def test_own_process(self):
        self.assertGreater(stats.read_rss_kib(os.getpid()), 0)
        self.assertGreaterEqual(stats.read_cpu_seconds(os.getpid()), 0.0)
        stats.check_process(os.getpid())

    def test_gone_process(self):
        pid = dead_pid()
        self.assertRaises(stats.ProcessGone, stats.read_rss_kib, pid)
        self.assertRaises(stats.ProcessGone, stats.read_cpu_seconds, pid)

    def test_bad_pid(self):
        for pid in (0, -5, "12", True):
            self.assertRaises(ValueError, stats.read_rss_kib, pid)


class TableTests(SynchronousTestCase):
    def test_alignment_and_missing_values(self):
        columns = [stats.Column("name"), stats.Column("n", "count"), stats.Column("rate", "per s", 1)]
        text = stats.format_table("title", columns, [
            {"name": "a", "n": 1200, "rate": 3.14159},
            {"name": "longer", "n": 5, "rate": None},
        ])
        lines = text.splitlines()
        self.assertEqual(lines[0], "title")
        self.assertEqual(lines[1].split(), ["name", "count", "per", "s"])
        self.assertEqual(lines[3].split(), ["a", "1,200", "3.1"])
        self.assertEqual(lines[4].split(), ["longer", "5", "-"])
        # Numbers are right-aligned: both counts end in the same column.
        self.assertEqual(lines[3].index("1,200") + 5, lines[4].index("5") + 1)


# ---------------------------------------------------------------- loopback


class LoopbackTests(SynchronousTestCase):
    def test_loopback_targets(self):
        self.assertEqual(loopback_address("127.0.0.1"), "127.0.0.1")
        self.assertEqual(loopback_address("127.255.255.254"), "127.255.255.254")
        self.assertEqual(loopback_address("::1"), "::1")
        self.assertEqual(loopback_address("[::1]"), "::1")
        self.assertEqual(loopback_address("localhost"), "127.0.0.1")
        self.assertEqual(loopback_address(" LocalHost "), "127.0.0.1")

    def test_other_targets_refused(self):
        for host in ("10.0.0.1", "0.0.0.0", "8.8.8.8", "192.168.1.1", "::", "2001:db8::1",
                     "::ffff:127.0.0.1", "128.0.0.1", "", "  ", None):
            self.assertRaises(NotLoopback, loopback_address, host)

    def test_names_are_never_resolved(self):
        """A DNS lookup could leave the machine: names other than localhost are refused unresolved."""
        with mock.patch.object(socket, "getaddrinfo", side_effect=AssertionError("resolved")), \
                mock.patch.object(socket, "gethostbyname", side_effect=AssertionError("resolved")):
            error = self.assertRaises(NotLoopback, loopback_address, "example.com")
        self.assertIn("loopback", str(error))

    def test_connect_refuses_before_any_socket(self):
        opened = []
        real_socket = socket.socket

        def spy(*args, **kwargs):
            opened.append(args)
            return real_socket(*args, **kwargs)

        async def attempt():
            await open_connection(EchoClient, "192.0.2.1", 80, None, 1.0)

        with mock.patch.object(socket, "socket", spy):
            self.assertRaises(NotLoopback, asyncio.run, attempt())
        self.assertEqual([args for args in opened if args and args[0] != socket.AF_UNIX], [])

    def test_source_addresses(self):
        self.assertEqual(source_addresses("::1", 8), (None,))
        self.assertEqual(source_addresses("127.0.0.1", 0), (None,))
        sources = source_addresses("127.0.0.1", 4)
        self.assertLessEqual(len(sources), 4)
        for source in sources:
            if source is not None:
                self.assertEqual(loopback_address(source), source)
        self.assertRaises(NotLoopback, source_addresses, "10.0.0.1", 4)


# --------------------------------------------------------------- wire bits


class StampTests(SynchronousTestCase):
    def test_round_trip(self):
        for size in (STAMP_SIZE, 100, 4096):
            content = stamp_content(0xFEEDBEEF, 41, 123456789012345, size)
            self.assertEqual(len(content), size)
            self.assertEqual(read_stamp(content), (0xFEEDBEEF, 41, 123456789012345))

    def test_foreign_content(self):
        self.assertIsNone(read_stamp(b"hello"))
        self.assertIsNone(read_stamp(b"x" * 64))


class HttpResponseReaderTests(SynchronousTestCase):
    def test_content_length_in_pieces(self):
        reader = HttpResponseReader()
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"a\": 123}\n"
        self.assertEqual(reader.feed(raw[:20]), [])
        self.assertEqual(reader.feed(raw[20:-3]), [])
        self.assertEqual(reader.feed(raw[-3:]), [(200, b"{\"a\": 123}\n")])

    def test_chunked_and_pipelined(self):
        reader = HttpResponseReader()
        raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
               b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(reader.feed(raw), [(200, b"abcdefg"), (401, b"{}")])

    def test_malformed(self):
        for raw in (b"SMTP nonsense\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
            self.assertRaises(BadAnswer, HttpResponseReader().feed, raw)

    def test_size_limit(self):
        reader = HttpResponseReader(limit=100)
        self.assertRaises(BadAnswer, reader.feed, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 200)


# --------------------------------------------------------------- arguments


class ArgumentTests(SynchronousTestCase):
    def parse(self, *argv):
        return cli.parse_config(list(argv), environ={})

    def assertUsage(self, *argv, contains=None):
        error = self.assertRaises(cli.UsageError, self.parse, *argv)
        if contains:
            self.assertIn(contains, str(error))
        return error

    def test_defaults(self):
        config = self.parse("handshake", "--demo-key")
        self.assertEqual(config.scenarios, ("handshake",))
        self.assertEqual((config.target.host, config.target.port, config.target.gateway_port),
                         ("127.0.0.1", 3000, 3001))
        self.assertEqual(config.settings.workers, os.cpu_count())
        self.assertEqual(config.settings.duration, 30.0)
        self.assertEqual(config.settings.sizes, (100, 4096))
        self.assertEqual(config.settings.pusher, "gateway")

    def test_all_runs_every_scenario_idle_first(self):
        config = self.parse("all", "--demo-key")
        self.assertEqual(sorted(config.scenarios), sorted(SCENARIOS))
        self.assertEqual(config.scenarios, ALL_ORDER)
        self.assertEqual(config.scenarios[0], "idle")

    def test_floors_need_no_server_key(self):
        config = self.parse("floors")
        self.assertEqual(config.target.public_key, "")

    def test_key_required_for_server_scenarios(self):
        self.assertUsage("handshake", contains="--demo-key")

    def test_bad_keys(self):
        self.assertUsage("handshake", "--public-key", "not base64!", contains="public key")
        self.assertUsage("handshake", "--public-key-file", "/nonexistent/key.txt", contains="cannot read")
        self.assertUsage("floors", "--private-key", "QUJD", contains="private key")
        self.assertUsage("handshake", "--demo-key", "--public-key", MPUSH_DEMO_PUBLIC_KEY)

    def test_key_files(self):
        directory = self.mktemp()
        os.makedirs(directory)
        public = os.path.join(directory, "public.txt")
        private = os.path.join(directory, "private.txt")
        with open(public, "w") as handle:
            handle.write("-----BEGIN PUBLIC KEY-----\n" + MPUSH_DEMO_PUBLIC_KEY + "\n-----END PUBLIC KEY-----\n")
        with open(private, "w") as handle:
            handle.write(MPUSH_DEMO_PRIVATE_KEY)
        config = self.parse("handshake", "floors", "--public-key-file", public, "--private-key-file", private)
        self.assertEqual(config.target.public_key, MPUSH_DEMO_PUBLIC_KEY)
        self.assertEqual(config.settings.private_key, MPUSH_DEMO_PRIVATE_KEY)

    def test_target_off_loopback_is_refused(self):
        for host in ("10.1.2.3", "example.com", "0.0.0.0", "2001:db8::1"):
            self.assertRaises(NotLoopback, self.parse, "handshake", "--demo-key", "--host", host)

    def test_bad_numbers(self):
        self.assertUsage("handshake", "--demo-key", "--count", "0")
        self.assertUsage("handshake", "--demo-key", "--workers", "-1")
        self.assertUsage("handshake", "--demo-key", "--port", "70000")
        self.assertUsage("handshake", "--demo-key", "--duration", "0")
        self.assertUsage("handshake", "--demo-key", "--duration", "inf")
        self.assertUsage("handshake", "--demo-key", "--timeout", "abc")
        self.assertUsage("push", "--demo-key", "--rate", "-5")

    def test_bad_push_options(self):
        self.assertUsage("push", "--demo-key", "--sizes", "10", contains="outside")
        self.assertUsage("push", "--demo-key", "--sizes", "100,20000", contains="outside")
        self.assertUsage("push", "--demo-key", "--sizes", "big")
        self.assertUsage("push", "--demo-key", "--acks", "biz", contains="ack modes")
        self.assertUsage("push", "--demo-key", "--rate", "100", "--sweep")

    def test_scenarios(self):
        self.assertUsage()
        self.assertUsage("warp-speed", "--demo-key")

    def test_server_pid_must_exist(self):
        self.assertUsage("idle", "--demo-key", "--server-pid", str(dead_pid()), contains="--server-pid")
        config = self.parse("idle", "--demo-key", "--server-pid", str(os.getpid()))
        self.assertEqual(config.settings.server_pid, os.getpid())

    def test_http_pusher(self):
        config = cli.parse_config(["push", "--demo-key", "--http-port", "8080"],
                                  environ={"MPUSH_API_TOKEN": "secret"})
        self.assertEqual(config.settings.pusher, "http")
        self.assertEqual((config.target.http_port, config.target.http_token), (8080, "secret"))

    def test_main_exit_codes(self):
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            self.assertEqual(cli.main(["handshake", "--demo-key", "--host", "10.0.0.1"]), cli.EXIT_USAGE)
        self.assertIn("loopback", stderr.getvalue())
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            self.assertEqual(cli.main(["handshake"]), cli.EXIT_USAGE)
        self.assertIn("public key", stderr.getvalue())

    def test_unreachable_server(self):
        port = free_port()
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            status = cli.main(["handshake", "--demo-key", "--port", str(port), "--timeout", "2"])
        self.assertEqual(status, cli.EXIT_FAILED)
        self.assertIn("unreachable", stderr.getvalue())
        self.assertIn(str(port), stderr.getvalue())

    def test_settings_view_hides_the_private_key(self):
        view = Settings(private_key=MPUSH_DEMO_PRIVATE_KEY).view()
        self.assertEqual(view["private_key"], "given")
        self.assertNotIn("progress", view)


# ------------------------------------------------------------ smoke tests


def node_config(heartbeat=None, redis_port=None, workers=None):
    text = (
        "[security]\n"
        f'private-key = "{MPUSH_DEMO_PRIVATE_KEY}"\n'
        f'public-key = "{MPUSH_DEMO_PUBLIC_KEY}"\n'
        "[net]\n"
        'local-ip = "127.0.0.1"\n'
    )
    if workers:
        text += f"[cluster]\nworkers = {workers}\n"
    if heartbeat:
        text += f'[core]\nmin-heartbeat = "{heartbeat}"\nmax-heartbeat = "{heartbeat}"\n'
    if redis_port:
        text += f'[redis]\nnodes = ["127.0.0.1:{redis_port}"]\n'
    return text


class SmokeTests(SynchronousTestCase):
    """
    Every scenario, as a subprocess (C{python -m mpush.bench}), against a
    real node with tiny counts and two worker processes.
    """

    def start_node(self, heartbeat=None, redis_port=None, workers=None):
        config = node_config(heartbeat, redis_port, workers)
        node = WorkersProcess(config, workers) if workers else NodeProcess(config)
        self.addCleanup(node.stop)
        return node.start()

    def bench(self, node, *args, expect=0):
        # The test's own options come last, so they win over these defaults.
        command = [
            sys.executable, "-m", "mpush.bench",
            "--port", str(node.port), "--gateway-port", str(node.gateway_port),
            "--demo-key", "--workers", "2", "--json-only", *args,
        ]
        result = subprocess.run(command, cwd=REPO, env=node_environment(), capture_output=True,
                                text=True, timeout=RUN_TIMEOUT)
        self.assertEqual(result.returncode, expect, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        return lines, result.stderr

    def one(self, node, *args):
        lines, _ = self.bench(node, *args)
        self.assertEqual(len(lines), 1, lines)
        result = lines[0]
        self.assertTrue(result["ok"], result)
        self.assertEqual(result["errors"], {})
        self.assertEqual(result["params"]["workers"], 2)
        return result

    def assertLatency(self, latency, n):
        self.assertEqual(latency["n"], n)
        self.assertLessEqual(latency["p50"], latency["p99"])
        self.assertLessEqual(latency["p99"], latency["max"])

    def test_handshake(self):
        node = self.start_node()
        result = self.one(node, "handshake", "--count", "24", "--duration", "30")
        self.assertEqual(result["scenario"], "handshake")
        self.assertEqual((result["count"], result["completed"], result["failed"]), (24, 24, 0))
        self.assertFalse(result["truncated"])
        self.assertLatency(result["latency_ms"], 24)

    def test_fast_connect(self):
        node = self.start_node()
        result = self.one(node, "fast-connect", "--count", "24", "--duration", "30")
        self.assertEqual(result["setup"]["handshaken"], 24)
        self.assertEqual((result["completed"], result["failed"]), (24, 0))
        self.assertLatency(result["latency_ms"], 24)

    def test_storm(self):
        node = self.start_node()
        result = self.one(node, "storm", "--count", "30", "--duration", "30")
        self.assertEqual(result["setup"]["bound"], 30)
        self.assertEqual(result["disconnected"], 30)
        self.assertEqual((result["devices"], result["bound_again"], result["failed"]), (30, 30, 0))
        self.assertEqual(result["fallback_handshakes"], 0)
        self.assertIsNotNone(result["all_bound_s"])
        self.assertLatency(result["latency_ms"], 30)

    def storm_with_redis(self, workers=None):
        """
        The storm on Redis, its costs read from the node's processes and
        from Redis: every device back, no fallback, a turn's Redis work in
        a few scripts rather than several commands per device.
        """
        redis = start_redis_server(self)
        node = self.start_node(redis_port=redis.port, workers=workers)
        result = self.one(
            node, "storm", "--count", "200", "--duration", "60",
            "--server-pid", str(node.process.pid), "--redis-port", str(redis.port),
        )
        self.assertEqual((result["devices"], result["bound_again"], result["failed"]), (200, 200, 0))
        self.assertEqual(result["fallback_handshakes"], 0)
        self.assertGreater(result["server_cpu_us_per_device"], 0)
        redis_work = result["redis_per_device"]
        # One lookup per resume, batched: far fewer scripts and MGETs than devices.
        self.assertLess(redis_work["scripts"], 1.0, redis_work)
        self.assertLessEqual(redis_work["by_command"].get("mget", 0), 1.0, redis_work)
        self.assertEqual(list(result["rss_kib"]), ["before", "connected", "after_close", "after_storm"])
        self.assertEqual(result["connect_ms"]["n"], 200)
        return result

    def test_storm_with_redis(self):
        self.storm_with_redis()

    def test_storm_with_redis_and_two_workers(self):
        result = self.storm_with_redis(workers=2)
        # The workers' RSS is counted with the supervisor's.
        self.assertGreater(result["rss_kib"]["before"], 3 * 20 * 1024)

    def assertRunAddsUp(self, run, count):
        self.assertEqual(run["sent"], count, run)
        self.assertEqual(run["ok_replies"], count, run)
        self.assertEqual(run["delivered"], count, run)
        self.assertEqual((run["error_replies"], run["timeouts"], run["duplicates"]), (0, 0, 0), run)
        self.assertEqual(run["acks_sent"], count if run["ack"] == "auto" else 0, run)
        self.assertLatency(run["latency_ms"], count)

    def test_push_through_the_gateway(self):
        node = self.start_node()
        result = self.one(node, "push", "--devices", "6", "--count", "40", "--duration", "40")
        self.assertEqual((result["pusher"], result["devices"]), ("gateway", 6))
        runs = result["runs"]
        self.assertEqual([(r["ack"], r["content_bytes"]) for r in runs],
                         [("none", 100), ("none", 4096), ("auto", 100), ("auto", 4096)])
        for run in runs:
            self.assertEqual(run["label"], "peak")
            self.assertRunAddsUp(run, 40)

    def test_push_sweep(self):
        node = self.start_node()
        result = self.one(node, "push", "--devices", "4", "--count", "30", "--sizes", "100",
                          "--acks", "auto", "--sweep", "--duration", "45")
        runs = result["runs"]
        self.assertEqual([r["label"] for r in runs], ["peak", "50%", "90%"])
        peak = runs[0]["delivered_per_s"]
        self.assertEqual(runs[1]["target_rate"], round(peak * 0.5, 1))
        self.assertEqual(runs[2]["target_rate"], round(peak * 0.9, 1))
        for run in runs:
            self.assertRunAddsUp(run, 30)

    def test_push_at_a_rate(self):
        node = self.start_node()
        result = self.one(node, "push", "--devices", "4", "--count", "20", "--sizes", "100",
                          "--acks", "none", "--rate", "200", "--duration", "30")
        [run] = result["runs"]
        self.assertEqual((run["label"], run["target_rate"]), ("rate", 200.0))
        self.assertRunAddsUp(run, 20)

    def test_push_through_the_http_api(self):
        node = self.start_node()
        result = self.one(node, "push", "--http-port", str(node.http_port), "--devices", "4",
                          "--count", "20", "--sizes", "100", "--window", "4", "--duration", "30")
        self.assertEqual(result["pusher"], "http")
        self.assertEqual([r["ack"] for r in result["runs"]], ["none", "auto"])
        for run in result["runs"]:
            self.assertRunAddsUp(run, 20)

    def test_broadcast(self):
        node = self.start_node()
        result = self.one(node, "broadcast", "--count", "30", "--duration", "30")
        self.assertEqual(result["answer"], "ok")
        self.assertEqual((result["devices"], result["expected"], result["received"]), (30, 30, 30))
        self.assertEqual(result["duplicates"], 0)
        self.assertLatency(result["latency_ms"], 30)

    def test_idle(self):
        """With a 2 s heartbeat the devices must ping to stay connected; the server answers each."""
        node = self.start_node(heartbeat="2s")
        result = self.one(node, "idle", "--count", "20", "--duration", "8",
                          "--server-pid", str(node.process.pid))
        self.assertEqual((result["devices"], result["connected_at_end"], result["closed_by_server"]), (20, 20, 0))
        self.assertEqual(result["heartbeats_ms"], [2000])
        self.assertGreater(result["pings"], 0)
        self.assertGreater(result["pongs"], 0)
        # One ping per device may straddle each edge of the window.
        self.assertLessEqual(abs(result["pongs"] - result["pings"]), 2 * result["devices"])
        self.assertEqual(result["server_pid"], node.process.pid)
        for key in ("rss_before_kib", "rss_after_kib", "rss_end_kib"):
            self.assertIsInstance(result[key], int)
        self.assertIsInstance(result["server_cpu_s"], float)
        self.assertGreater(result["window_s"], 0)

    def test_idle_without_server_pid(self):
        node = self.start_node()
        result = self.one(node, "idle", "--count", "6", "--duration", "4")
        self.assertEqual(result["devices"], 6)
        self.assertIsNone(result["rss_per_connection_kib"])
        self.assertIn("--server-pid", result["note"])

    def test_floors(self):
        node = self.start_node()
        result = self.one(node, "floors", "--count", "40", "--duration", "30")
        rsa = result["rsa_decrypt"]
        self.assertEqual((rsa["key"], rsa["key_bits"], rsa["ops"]), ("demo", 1024, 40))
        self.assertEqual([row["content_bytes"] for row in result["echo"]], [100, 4096])
        for row in result["echo"]:
            self.assertEqual(row["sent"], 400)
            self.assertEqual(row["echoed"], 400)
            self.assertGreater(row["frame_bytes"], row["content_bytes"])
            self.assertLatency(row["latency_ms"], 400)
        self.assertEqual((result["idle_twisted"]["connections"], result["idle_twisted"]["failed"]), (40, 0))
        connects = result["connect_twisted"]
        self.assertEqual((connects["completed"], connects["failed"]), (40, 0))
        self.assertLatency(connects["latency_ms"], 40)

    def test_floors_with_a_given_private_key(self):
        node = self.start_node()
        key = RsaPrivateKey.generate(1024).to_pkcs8_base64()
        result = self.one(node, "floors", "--count", "10", "--sizes", "100", "--private-key", key,
                          "--duration", "20")
        self.assertEqual((result["rsa_decrypt"]["key"], result["rsa_decrypt"]["ops"]), ("given", 10))
        self.assertNotIn(key, json.dumps(result))

    def test_every_scenario_in_one_run(self):
        node = self.start_node()
        lines, stderr = self.bench(node, "all", "--count", "8", "--devices", "4", "--sizes", "100",
                                   "--duration", "15")
        self.assertEqual([line["scenario"] for line in lines], list(ALL_ORDER))
        for line in lines:
            self.assertTrue(line["ok"], line)
        self.assertEqual(stderr, "")

    def test_table_without_json_only(self):
        node = self.start_node()
        command = [sys.executable, "-m", "mpush.bench", "handshake", "--count", "5", "--workers", "1",
                   "--port", str(node.port), "--demo-key"]
        result = subprocess.run(command, cwd=REPO, env=node_environment(), capture_output=True,
                                text=True, timeout=RUN_TIMEOUT)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["completed"], 5)
        self.assertIn("completed", result.stderr)
        self.assertIn("p99 ms", result.stderr)

    def test_wrong_port_is_a_wrong_answer(self):
        """The gateway port does not speak the device protocol: exit 1, clearly."""
        node = self.start_node()
        command = [sys.executable, "-m", "mpush.bench", "handshake", "--count", "5",
                   "--port", str(node.gateway_port), "--demo-key", "--timeout", "3"]
        result = subprocess.run(command, cwd=REPO, env=node_environment(), capture_output=True,
                                text=True, timeout=RUN_TIMEOUT)
        self.assertEqual(result.returncode, cli.EXIT_FAILED, result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertIn("handshake", result.stderr)
        self.assertIn(str(node.gateway_port), result.stderr)

    def test_wrong_public_key(self):
        node = self.start_node()
        other = RsaPrivateKey.generate(1024).public_key().to_x509_base64()
        command = [sys.executable, "-m", "mpush.bench", "handshake", "--count", "5",
                   "--port", str(node.port), "--public-key", other, "--timeout", "3"]
        result = subprocess.run(command, cwd=REPO, env=node_environment(), capture_output=True,
                                text=True, timeout=RUN_TIMEOUT)
        self.assertEqual(result.returncode, cli.EXIT_FAILED, result.stderr)
        self.assertIn("--public-key", result.stderr)

    def test_wrong_gateway_port(self):
        node = self.start_node()
        lines, stderr = self.bench(node, "push", "--count", "5", "--gateway-port", str(free_port()),
                                   expect=cli.EXIT_FAILED)
        self.assertEqual(lines, [])
        self.assertIn("gateway unreachable", stderr)

    def test_connection_port_is_not_a_gateway(self):
        node = self.start_node()
        lines, stderr = self.bench(node, "push", "--count", "5", "--gateway-port", str(node.port),
                                   expect=cli.EXIT_FAILED)
        self.assertEqual(lines, [])
        self.assertIn("not an MPush gateway", stderr)

    def test_gateway_port_is_not_the_http_api(self):
        node = self.start_node()
        lines, stderr = self.bench(node, "push", "--count", "5", "--http-port", str(node.gateway_port),
                                   "--timeout", "3", expect=cli.EXIT_FAILED)
        self.assertEqual(lines, [])
        self.assertIn("like the mpush HTTP API", stderr)

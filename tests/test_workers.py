"""
C{[cluster] workers = N}: the setting and its checks, then real processes: a
supervisor (C{twistd mpush}) with real workers over a real Redis, devices on
the one shared client port landing on every worker, pushes (push client,
HTTP API, broadcast) reaching all of them, a killed worker restarted, SIGTERM
stopping everything with exit status 0, and no worker outliving a SIGKILLed
supervisor.
"""

import json
import os
import random
import signal
import socket
import subprocess
import time

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush import tap
from mpush.client.config import ClientConfig
from mpush.client.protocol import connect_client
from mpush.config import (
    ClusterConfig,
    Config,
    ConfigError,
    NetConfig,
    RedisConfig,
    apply_overrides,
    check_workers,
    parse_config,
    worker_config,
)
from mpush.push import AckModel, PushClient, PushStatus

from tests.polling import sleep, wait_until
from tests.process_support import NodeProcess, node_environment, run_twistd, worker_share
from tests.redis_server import start_redis_server
from tests.test_redis_router import raw_command

REDIS = RedisConfig(nodes=("127.0.0.1:6390",))


def with_workers(count, redis=REDIS, **net):
    return Config(cluster=ClusterConfig(workers=count), redis=redis, net=NetConfig(**net))


class WorkersSettingTests(SynchronousTestCase):
    """
    The key, its range, and what N > 1 needs.
    """

    def test_default_is_one(self):
        self.assertEqual(Config().cluster.workers, 1)
        check_workers(Config())  # one process: nothing needed

    def test_parsed_from_cluster_table(self):
        config = parse_config({"cluster": {"workers": 3}})
        self.assertEqual(config.cluster.workers, 3)

    def test_bad_values(self):
        for value, words in (
            (0, "between 1 and 64, got 0"),
            (-2, "between 1 and 64, got -2"),
            (65, "between 1 and 64, got 65"),
            ("3", "expected an integer"),
            (2.5, "expected an integer"),
            (True, "expected an integer"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse_config({"cluster": {"workers": value}}, source="/etc/mpush/mpush.toml")
            message = str(caught.exception)
            self.assertEqual(len(message.splitlines()), 1, message)
            self.assertIn("[cluster] workers", message)
            self.assertIn(words, message)
            self.assertIn("/etc/mpush/mpush.toml", message)

    def test_more_than_one_needs_redis(self):
        with self.assertRaises(ConfigError) as caught:
            check_workers(with_workers(3, redis=RedisConfig(), gateway_server_port=4001, admin_server_port=4101))
        message = str(caught.exception)
        self.assertIn("[cluster] workers", message)
        self.assertIn("workers = 3 needs Redis: set [redis] nodes", message)

    def test_redis_from_the_command_line_is_enough(self):
        config = Config(cluster=ClusterConfig(workers=2), net=NetConfig(admin_server_port=3101))
        config = apply_overrides(config, redis_url="redis://127.0.0.1:6390/0")
        check_workers(config)

    def test_needs_the_gateway(self):
        with self.assertRaises(ConfigError) as caught:
            check_workers(with_workers(2, gateway_server_port=0))
        self.assertIn("gateway-server-port is 0", str(caught.exception))

    def test_per_worker_ports_must_not_overlap(self):
        # The defaults: gateway 3001, console 3002; two workers need 3001-3002.
        with self.assertRaises(ConfigError) as caught:
            check_workers(with_workers(2))
        message = str(caught.exception)
        self.assertIn("[net] gateway-server-port (3001-3002)", message)
        self.assertIn("[net] admin-server-port (3002-3003)", message)
        for net in (
            {"gateway_server_port": 2999, "admin_server_port": 3101},  # 2999-3000 hits the client port
            {"gateway_server_port": 8079, "admin_server_port": 3101},  # 8079-8080 hits the HTTP API
            {"admin_server_port": 7999, "http_server_port": 8000},
            {"admin_server_port": 3101, "ws_server_port": 3102},
        ):
            self.assertRaises(ConfigError, check_workers, with_workers(2, **net))
        check_workers(with_workers(2, admin_server_port=3101))
        check_workers(with_workers(2, admin_server_port=0, http_server_port=0))

    def test_ports_beyond_65535(self):
        with self.assertRaises(ConfigError) as caught:
            check_workers(with_workers(4, gateway_server_port=65534, admin_server_port=3101))
        self.assertIn("beyond 65535", str(caught.exception))

    def test_worker_config(self):
        config = with_workers(3, admin_server_port=3101)
        for index in range(3):
            net = worker_config(config, index).net
            self.assertEqual(
                (net.connect_server_port, net.gateway_server_port, net.admin_server_port, net.http_server_port),
                (3000, 3001 + index, 3101 + index, 8080),
            )
        self.assertEqual(worker_config(with_workers(2, admin_server_port=0), 1).net.admin_server_port, 0)

    def test_command_line_option(self):
        options = tap.Options()
        options.parseOptions(["--workers", "2", "--redis", "redis://127.0.0.1:6390/0", "--admin-port", "3101"])
        self.assertEqual(options.config.cluster.workers, 2)
        self.assertIn("--workers", options.command_line())
        for bad in ("0", "65", "x"):
            options = tap.Options()
            with self.assertRaises((SystemExit, Exception)) as caught:
                options.parseOptions(["--workers", bad, "--redis", "redis://127.0.0.1:6390/0"])
            self.assertIn("workers", str(caught.exception))

    def test_worker_options_run_that_workers_ports(self):
        options = tap.Options()
        options.worker_index = 1
        options.parseOptions(["--workers", "2", "--redis", "redis://127.0.0.1:6390/0", "--admin-port", "3101"])
        self.assertEqual(options.config.net.gateway_server_port, 3002)
        self.assertEqual(options.config.net.admin_server_port, 3102)
        self.assertEqual(options.base_config.net.gateway_server_port, 3001)
        # A reload compares like with like: no port "needs a restart".
        self.assertEqual(options.reload_config(), options.config)


# -- real processes -------------------------------------------------------------


def free_block(count, taken=()):
    """
    The first of C{count} consecutive free ports, below Linux's ephemeral
    range (32768 up), so that no outgoing connection of this busy machine
    takes one between this probe and the worker's bind, and in a range of
    their own (16000-21999: not the Redis Cluster tests' nor
    L{free_port}'s), this test process's share of it.
    """
    low, high = worker_share(16000, 22000)
    for _ in range(500):
        first = random.randrange(low, high - count)
        ports = range(first, first + count)
        if any(port in taken for port in ports):
            continue
        probes = []
        try:
            for port in ports:
                sock = socket.socket()
                probes.append(sock)
                sock.bind(("", port))
            return first
        except OSError:
            continue
        finally:
            for sock in probes:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def alive(pid):
    """
    Whether C{pid} runs (a zombie does not: it has exited).
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def worker_pids(parent):
    """
    The running C{mpush.worker} children of C{parent}, by worker index.
    """
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
        except OSError:
            continue
        if fields[0] == "Z" or int(fields[1]) != parent or b"mpush.worker" not in args:
            continue
        found[int(args[args.index(b"mpush.worker") + 1])] = int(entry)
    return found


class WorkersProcess(NodeProcess):
    """
    C{twistd mpush} with C{workers} workers: each worker's gateway and
    console ports follow the first ones.
    """

    def __init__(self, config_text, workers):
        super().__init__(config_text)
        self.workers = workers
        taken = set()
        for name, count in (("port", 1), ("http_port", 1), ("gateway_port", workers), ("admin_port", workers)):
            first = free_block(count, taken)
            taken.update(range(first, first + count))
            setattr(self, name, first)

    def spawn(self):
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.directory,
            env=node_environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        return self.process

    def gateway_ports(self):
        return [self.gateway_port + i for i in range(self.workers)]

    def start(self, timeout=30.0):
        self.spawn()
        waiting = [self.port, self.http_port] + self.gateway_ports() + [self.admin_port + i for i in range(self.workers)]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mpush exited with {self.process.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.5).close()
                waiting.pop(0)
                if not waiting and "all %d workers are listening" % self.workers in self.log():
                    return self
                if not waiting:
                    waiting.append(self.port)
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mpush workers did not listen within {timeout}s: {self.log()}")

    def stop(self, timeout=30.0):
        if self.process is None or self.process.poll() is not None:
            return
        pids = list(worker_pids(self.process.pid).values())
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        for pid in pids:  # never leave a worker behind, whatever the test did
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def workers_config(redis_port):
    return (
        "[net]\n"
        'local-ip = "127.0.0.1"\n'
        'public-ip = "127.0.0.1"\n'
        f'[redis]\nnodes = ["127.0.0.1:{redis_port}"]\n'
        '[cluster]\nworkers = 2\nnode-ttl = "2s"\nnode-refresh = "500ms"\ndrain-timeout = "1s"\n'
    )


class RefusalTests(TestCase):
    timeout = 60

    def test_workers_without_redis_refused(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "mpush.toml")
        with open(path, "w") as config:
            config.write("[cluster]\nworkers = 3\n[net]\nadmin-server-port = 3101\n")
        result = run_twistd(["--nodaemon", "--pidfile=", "mpush", "--config", path, "--state-dir", directory])
        self.assertNotEqual(result.returncode, 0)
        message = (result.stdout + result.stderr).strip()
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertIn("workers = 3 needs Redis: set [redis] nodes", message)
        self.assertFalse(os.path.exists(os.path.join(directory, "rsa_private_key.pkcs8.b64")))

    def test_bad_workers_option_refused(self):
        result = run_twistd(["--nodaemon", "--pidfile=", "mpush", "--workers", "0"])
        self.assertNotEqual(result.returncode, 0)
        message = (result.stdout + result.stderr).strip()
        self.assertIn("[cluster] workers: must be between 1 and 64, got 0", message)


class WorkersCase(TestCase):
    timeout = 120

    def setUp(self):
        self.redis = start_redis_server(self)

    def start(self, workers=2, extra=""):
        node = WorkersProcess(workers_config(self.redis.port) + extra, workers)
        self.addCleanup(node.stop)
        node.start()
        self.public_key = self.stored_public_key(node)
        return node

    def stored_public_key(self, node):
        with open(os.path.join(node.directory, "state", "rsa_public_key.x509.b64")) as stored:
            return stored.read().strip()

    @defer.inlineCallbacks
    def device(self, node, user_id):
        config = ClientConfig(
            host="127.0.0.1",
            port=node.port,
            public_key=self.public_key,
            device_id=f"device-of-{user_id}",
            user_id=user_id,
        )
        client = yield connect_client(config, reactor)
        self.addCleanup(client.close)
        return client

    def pusher(self):
        client = PushClient(reactor, redis_url=self.redis.url)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def devices_on_every_worker(self, node, batch=12, most=96):
        """
        Connect devices to the shared port until every worker has some:
        C{(devices by user, gateway port by user)}.
        """
        devices, where = {}, {}
        pusher = self.pusher()
        while len(devices) < most:
            start = len(devices)
            users = [f"user-{n}" for n in range(start, start + batch)]
            clients = yield defer.gatherResults([self.device(node, user) for user in users])
            devices.update(zip(users, clients))
            for user in users:
                [result] = yield pusher.push(user, b"where", ack=AckModel.AUTO_ACK)
                self.assertEqual(result.status, PushStatus.SUCCESS, result)
                where[user] = int(result.node.rsplit(":", 1)[1])
                received = yield devices[user].wait_for_push(timeout=5)
                self.assertEqual(received.content, b"where")
            if set(where.values()) == set(node.gateway_ports()):
                return devices, where
        self.fail(f"{most} devices all landed on {set(where.values())}")

    def http(self, node, method, path, body=None):
        import urllib.error
        import urllib.request

        from twisted.internet.threads import deferToThread

        def call():
            request = urllib.request.Request(
                f"http://127.0.0.1:{node.http_port}{path}",
                data=None if body is None else json.dumps(body).encode(),
                method=method,
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        return deferToThread(call)

    def online_count(self):
        return raw_command(self.redis.port, "ZCARD", "mp:oul:127.0.0.1")


class SharedPortTests(WorkersCase):
    @defer.inlineCallbacks
    def test_devices_spread_and_pushes_reach_every_worker(self):
        node = self.start()
        pids = worker_pids(node.process.pid)
        self.assertEqual(sorted(pids), [0, 1])
        self.assertNotIn(node.process.pid, pids.values())
        # The supervisor serves nothing itself: the workers hold the ports.
        devices, where = yield self.devices_on_every_worker(node)
        self.assertEqual(set(where.values()), set(node.gateway_ports()))

        # The HTTP API on the shared port (whichever worker answers) reaches
        # users on both workers, through their own gateways.
        users = sorted(devices)
        status, body = yield self.http(node, "POST", "/v1/push", {"users": users, "content": "over http", "ack": "auto"})
        self.assertEqual(status, 200, body)
        results = json.loads(body)["results"]
        self.assertEqual({r["user"]: r["status"] for r in results}, {user: "success" for user in users})
        self.assertEqual(
            {r["user"]: int(r["node"].rsplit(":", 1)[1]) for r in results}, where
        )
        for user in users:
            received = yield devices[user].wait_for_push(timeout=5)
            self.assertEqual(received.content, b"over http")

        # A broadcast goes to every worker, each sending to its own devices.
        sent = yield self.pusher().broadcast(b"to all", timeout=5)
        self.assertEqual(sorted(r.node for r in sent), sorted(f"127.0.0.1:{p}" for p in node.gateway_ports()))
        self.assertEqual(sum(r.count for r in sent), len(users))
        for user in users:
            received = yield devices[user].wait_for_push(timeout=5)
            self.assertEqual(received.content, b"to all")

        # The allot list names the shared client port once.
        status, body = yield self.http(node, "GET", "/v1/allot")
        self.assertEqual((status, body), (200, f"127.0.0.1:{node.port}"))

        # One online list for the IP, filled by both workers.
        count = self.online_count()
        self.assertEqual(count, len(users))
        log = node.log()
        self.assertIn("[worker-0 ", log)
        self.assertIn("[worker-1 ", log)


class NodeWideHttpTests(WorkersCase):
    @defer.inlineCallbacks
    def test_metrics_health_and_stats_answer_for_every_worker(self):
        """
        Whichever worker takes the scrape, /metrics counts the whole node
        (with each worker's figures under a worker label), /v1/stats sums
        the workers and /healthz names them all.
        """
        node = self.start()
        devices, where = yield self.devices_on_every_worker(node)
        pushed = len(devices)  # one AUTO_ACK push each, on both workers
        # Through the API too: counted by the worker that decided each push.
        status, body = yield self.http(node, "POST", "/v1/push", {"users": sorted(devices), "content": "x"})
        self.assertEqual(status, 200, body)
        yield sleep(1.5)  # every worker has reported since
        for _ in range(6):  # connections land on either worker
            status, body = yield self.http(node, "GET", "/metrics")
            self.assertEqual(status, 200)
            self.assertIn(f'mpush_pushes_total{{result="success"}} {float(2 * pushed)}', body)
            self.assertIn(f"mpush_connections {float(pushed)}", body)
            per_worker = {
                line.split("worker=\"")[1].split("\"")[0]: float(line.rsplit(" ", 1)[1])
                for line in body.splitlines()
                if line.startswith("mpush_connections{")
            }
            self.assertEqual(set(per_worker), {"0", "1"})
            self.assertEqual(sum(per_worker.values()), pushed)
            status, body = yield self.http(node, "GET", "/v1/stats")
            stats = json.loads(body)
            # The same counters as /metrics: gateway and API pushes alike.
            self.assertEqual((stats["connections"], stats["pushes"]["success"]), (pushed, 2 * pushed))
            self.assertEqual(sorted(w["worker"] for w in stats["workers"]), [0, 1])
            status, body = yield self.http(node, "GET", "/healthz")
            health = json.loads(body)
            self.assertEqual((status, health["connections"], health["workers"]), (200, pushed, {"0": "ok", "1": "ok"}))


class SupervisionTests(WorkersCase):
    @defer.inlineCallbacks
    def test_killed_worker_is_restarted(self):
        node = self.start()
        devices, where = yield self.devices_on_every_worker(node)
        online = self.online_count()
        before = worker_pids(node.process.pid)
        os.kill(before[1], signal.SIGKILL)
        yield wait_until(lambda: not alive(before[1]))
        now = yield wait_until(
            lambda: (lambda pids: pids if len(pids) == 2 and pids[1] != before[1] else None)(
                worker_pids(node.process.pid)
            )
        )
        self.assertEqual(now[0], before[0])
        yield wait_until(lambda: "worker-1 (pid %d) is listening" % now[1] in node.log())
        self.assertIn("worker-1 (pid %d) exited with signal 9" % before[1], node.log())
        # The restarted worker took its predecessor's users out of the
        # online list, and left the other worker's in.
        self.assertEqual(online, len(where))
        kept = sum(1 for port in where.values() if port == node.gateway_port)
        yield wait_until(lambda: self.online_count() == kept)
        # Users of the surviving worker still get pushes; the restarted one
        # takes new devices on its gateway.
        pusher = self.pusher()
        survivor = next(user for user, port in where.items() if port == node.gateway_port)
        [result] = yield pusher.push(survivor, b"still here", ack=AckModel.AUTO_ACK)
        self.assertEqual(result.status, PushStatus.SUCCESS)
        yield wait_until(lambda: _connects(node.gateway_port + 1))

    @defer.inlineCallbacks
    def test_sigterm_stops_every_worker_and_exits_zero(self):
        node = self.start()
        yield self.devices_on_every_worker(node, batch=4)
        pids = worker_pids(node.process.pid)
        node.process.send_signal(signal.SIGTERM)
        code = yield wait_until(lambda: node.process.poll() is not None and (node.process.returncode,))
        self.assertEqual(code, (0,), node.log())
        for pid in pids.values():
            self.assertFalse(alive(pid))
        log = node.log()
        self.assertIn("worker-0 (pid %d) exited with status 0" % pids[0], log)
        self.assertIn("worker-1 (pid %d) exited with status 0" % pids[1], log)
        self.assertIn("[worker-1 mpush.server.ops.drain.Drainer#info] drain: done", log)

    @defer.inlineCallbacks
    def test_sighup_reaches_every_worker(self):
        node = self.start()
        node.process.send_signal(signal.SIGHUP)
        yield wait_until(
            lambda: all(f"[worker-{i} mpush.server.ops.signals#info] SIGHUP: reloading" in node.log() for i in (0, 1))
        )
        self.assertEqual(sorted(worker_pids(node.process.pid)), [0, 1])

    @defer.inlineCallbacks
    def test_no_worker_outlives_a_killed_supervisor(self):
        node = self.start()
        pids = worker_pids(node.process.pid)
        self.assertEqual(len(pids), 2)
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()
        yield wait_until(lambda: not any(alive(pid) for pid in pids.values()), timeout=20)

    @defer.inlineCallbacks
    def test_worker_that_cannot_listen_stops_the_start(self):
        """
        A port in use is not a reason to restart forever: the supervisor
        stops the others and exits non-zero, saying why.
        """
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        node = WorkersProcess(workers_config(self.redis.port), 2)
        self.addCleanup(node.stop)
        blocker.bind(("127.0.0.1", node.gateway_port + 1))
        blocker.listen(1)
        node.spawn()
        code = yield wait_until(lambda: node.process.poll() is not None and (node.process.returncode,), timeout=40)
        self.assertEqual(code, (1,))
        log = node.log()
        self.assertIn("worker-1", log)
        self.assertIn("before it listened", log)
        self.assertIn(f"mpush: cannot listen on 127.0.0.1:{node.gateway_port + 1} ([net] gateway-server-port "
                      f"or --gateway-port): address already in use (EADDRINUSE)", log)
        self.assertNotIn("Traceback", log)


def _connects(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False

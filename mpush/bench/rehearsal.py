"""
The multi-host rehearsal (issue 18, item 4): a whole deployment on one
machine, with hosts made of network namespaces.

    sudo python -m mpush.bench.rehearsal --devices 30000

builds a bridge and four namespaces on 10.77.0.0/24 (three "hosts" and a
load host), runs in each host an mpush node with two workers, Redis (a
Redis Cluster of three masters and three replicas when mpush supports it,
else a master, a replica and three sentinels) and ZooKeeper in the first,
and load processes in the load host holding the devices.  It pushes across
nodes, then SIGKILLs one mpush node and one Redis master under load, and
prints what happened: how fast the dead node's devices came back on the
survivors and how (fast connect or handshake), every push by how it was
answered, and what was lost.

Only addresses of 10.77.0.0/24 inside those namespaces (and loopback) are
used.  Everything is removed on exit, also after an error or Ctrl-C.  Needs
root (ip netns), redis-server and redis-cli, and for ZooKeeper Debian's
zookeeper package (skipped with a note without it).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from mpush.protocol.crypto import RsaPrivateKey

BRIDGE = "mpr-br0"
PREFIX = "10.77.0."
HOSTS = ("mpr-n1", "mpr-n2", "mpr-n3")
LOAD_HOST = "mpr-load"
HOST_ADDRESSES = {name: f"{PREFIX}{11 + index}" for index, name in enumerate(HOSTS)}
#: Source addresses of the load host: each holds its share of the devices.
LOAD_SOURCES = tuple(f"{PREFIX}{101 + n}" for n in range(8))
CONNECT_PORT, GATEWAY_PORT, ADMIN_PORT, HTTP_PORT = 3000, 3001, 3101, 8080
ZK_PORT, SENTINEL_PORT, REDIS_PORT, REDIS_REPLICA_PORT = 2181, 26379, 7001, 7002
WORKERS = 2
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ZK_JAR = "/usr/share/java/zookeeper.jar"


class RehearsalError(Exception):
    """The rehearsal could not be set up; the message says what to do."""


def run(*argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def in_host(host: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", host, *argv]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ------------------------------------------------------------------ network


class Network:
    """The bridge, the namespaces and their veth pairs; L{remove} undoes all."""

    def build(self) -> None:
        self.remove()
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "link", "set", BRIDGE, "up")
        for index, host in enumerate(HOSTS + (LOAD_HOST,)):
            outside = f"mpr-v{index}"
            run("ip", "netns", "add", host)
            run("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", host)
            run("ip", "link", "set", outside, "master", BRIDGE)
            run("ip", "link", "set", outside, "up")
            addresses = LOAD_SOURCES if host == LOAD_HOST else (HOST_ADDRESSES[host],)
            for address in addresses:
                run("ip", "-n", host, "addr", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", host, "link", "set", "eth0", "up")
            run("ip", "-n", host, "link", "set", "lo", "up")
            # Room for every device's connection from one load address.
            run(*in_host(host, "sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000"))
        # Each host must reach the others through the bridge.
        for host in HOSTS[1:] + (LOAD_HOST,):
            if not port_open(host, HOST_ADDRESSES[HOSTS[0]], 9, expect_refused=True):
                raise RehearsalError(
                    f"{host} cannot reach {HOST_ADDRESSES[HOSTS[0]]} across bridge {BRIDGE}: is bridged "
                    "traffic filtered (sysctl net.bridge.bridge-nf-call-iptables=1 with a DROP policy)?"
                )

    def remove(self) -> None:
        for host in HOSTS + (LOAD_HOST,):
            kill_everything_in(host)
            run("ip", "netns", "del", host, check=False)
        run("ip", "link", "del", BRIDGE, check=False)


def kill_everything_in(host: str) -> None:
    """SIGKILL what still runs in C{host} (only the rehearsal starts anything there)."""
    listed = run("ip", "netns", "pids", host, check=False)
    for pid in listed.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def port_open(host: str, address: str, port: int, expect_refused: bool = False) -> bool:
    """Whether C{address:port} accepts a connection from inside C{host} (or, with
    C{expect_refused}, at least answers: a refusal proves the path)."""
    probe = run(*in_host(host, "timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"), check=False)
    if expect_refused:
        return probe.returncode == 0 or "refused" in probe.stderr
    return probe.returncode == 0


def wait_port(host: str, address: str, port: int, deadline: float, what: str) -> None:
    ends = time.monotonic() + deadline
    while time.monotonic() < ends:
        if port_open(host, address, port):
            return
        time.sleep(0.3)
    raise RehearsalError(f"{what} did not listen on {address}:{port} within {deadline:g} s")


# ---------------------------------------------------------------- processes


class Processes:
    """Every process the rehearsal starts, by name, each in its own group."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.running: dict[str, subprocess.Popen] = {}

    def log(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.log")

    def start(self, name: str, host: str, argv: list[str], **options) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        options.setdefault("stdout", open(self.log(name), "ab"))
        options.setdefault("stderr", subprocess.STDOUT)
        process = subprocess.Popen(in_host(host, *argv), env=env, start_new_session=True,
                                   stdin=options.pop("stdin", subprocess.DEVNULL), **options)
        self.running[name] = process
        return process

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(10)

    def stop_all(self) -> None:
        for process in self.running.values():
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        ends = time.monotonic() + 10
        for name, process in list(self.running.items()):
            try:
                process.wait(max(ends - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.running.clear()


# -------------------------------------------------------------------- redis


def redis_argv(directory: str, address: str, port: int, *extra: str) -> list[str]:
    data = os.path.join(directory, f"redis-{address}-{port}")
    os.makedirs(data, exist_ok=True)
    return ["redis-server", "--bind", address, "--port", str(port), "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--dir", data, "--daemonize", "no", *extra]


def redis_cli(host: str, address: str, port: int, *command: str, timeout: float = 10.0) -> str:
    return run(*in_host(host, "redis-cli", "-h", address, "-p", str(port), *command),
               check=False, timeout=timeout).stdout


class SentinelRedis:
    """A master (first host), its replica (second) and a sentinel in each host."""

    model = "sentinel"

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.master = HOST_ADDRESSES[HOSTS[0]]
        self.replica = HOST_ADDRESSES[HOSTS[1]]

    def start(self) -> None:
        directory = self.processes.directory
        self.processes.start("redis-master", HOSTS[0], redis_argv(directory, self.master, REDIS_PORT))
        self.processes.start("redis-replica", HOSTS[1], redis_argv(
            directory, self.replica, REDIS_PORT, "--replicaof", self.master, str(REDIS_PORT)))
        for host in HOSTS:
            address = HOST_ADDRESSES[host]
            config = os.path.join(directory, f"sentinel-{host}.conf")
            with open(config, "w") as written:
                written.write(
                    f"sentinel monitor mymaster {self.master} {REDIS_PORT} 2\n"
                    "sentinel down-after-milliseconds mymaster 2000\n"
                    "sentinel failover-timeout mymaster 10000\n"
                )
            self.processes.start(f"sentinel-{host}", host, [
                "redis-server", config, "--sentinel", "--bind", address, "--port", str(SENTINEL_PORT),
                "--protected-mode", "no", "--dir", directory])
        for host in HOSTS:
            wait_port(host, HOST_ADDRESSES[host], SENTINEL_PORT, 20, f"the sentinel of {host}")
        wait_port(HOSTS[0], self.master, REDIS_PORT, 20, "the Redis master")

    def node_section(self) -> str:
        sentinels = json.dumps([f"{HOST_ADDRESSES[h]}:{SENTINEL_PORT}" for h in HOSTS])
        return f'[redis]\ncluster-model = "sentinel"\nsentinel-master = "mymaster"\nnodes = {sentinels}\n'

    def kill_master(self) -> str:
        self.processes.kill("redis-master")
        return f"{self.master}:{REDIS_PORT} (the Sentinel master)"

    def route(self, key: str) -> str:
        return " ".join(redis_cli(HOSTS[1], self.replica, REDIS_PORT, "HGETALL", key).split())

    def promoted(self) -> bool:
        answer = redis_cli(HOSTS[2], HOST_ADDRESSES[HOSTS[2]], SENTINEL_PORT,
                           "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        return answer.split()[:1] == [self.replica]


class ClusterRedis:
    """Redis Cluster: a master and a replica in each host, made by redis-cli."""

    model = "cluster"

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.seeds = [f"{HOST_ADDRESSES[h]}:{port}" for port in (REDIS_PORT, REDIS_REPLICA_PORT) for h in HOSTS]
        self.killed: str | None = None

    def start(self) -> None:
        directory = self.processes.directory
        for host in HOSTS:
            address = HOST_ADDRESSES[host]
            for port in (REDIS_PORT, REDIS_REPLICA_PORT):
                self.processes.start(f"redis-{host}-{port}", host, redis_argv(
                    directory, address, port, "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "2000",
                    # A dead master's slots only: the others go on serving
                    # while its replica is elected (README "Scaling out").
                    "--cluster-require-full-coverage", "no"))
        for host in HOSTS:
            for port in (REDIS_PORT, REDIS_REPLICA_PORT):
                wait_port(host, HOST_ADDRESSES[host], port, 20, f"Redis {host}:{port}")
        made = run(*in_host(HOSTS[0], "redis-cli", "--cluster", "create", *self.seeds,
                            "--cluster-replicas", "1", "--cluster-yes"), check=False, timeout=60)
        if made.returncode != 0:
            raise RehearsalError(f"redis-cli --cluster create failed: {made.stdout[-400:]} {made.stderr[-400:]}")
        self.wait_ok(30)

    def wait_ok(self, deadline: float) -> None:
        ends = time.monotonic() + deadline
        while time.monotonic() < ends:
            if self.promoted():
                return
            time.sleep(0.3)
        raise RehearsalError("the Redis Cluster never reported cluster_state:ok")

    def node_section(self) -> str:
        return f'[redis]\ncluster-model = "cluster"\nnodes = {json.dumps(self.seeds)}\n'

    def kill_master(self) -> str:
        # The first host's master: its replica is in another host.
        host, address = HOSTS[0], HOST_ADDRESSES[HOSTS[0]]
        role = redis_cli(host, address, REDIS_PORT, "ROLE").split()[:1]
        port = REDIS_PORT if role == ["master"] else REDIS_REPLICA_PORT
        self.processes.kill(f"redis-{host}-{port}")
        self.killed = f"{address}:{port}"
        return f"{self.killed} (a Cluster master)"

    def route(self, key: str) -> str:
        host = HOSTS[1]
        return " ".join(redis_cli(host, HOST_ADDRESSES[host], REDIS_PORT, "-c", "HGETALL", key).split())

    def promoted(self) -> bool:
        """The cluster is ok and (after a kill) the dead master serves no slot any more."""
        host = HOSTS[1]
        info = redis_cli(host, HOST_ADDRESSES[host], REDIS_PORT, "CLUSTER", "INFO")
        if "cluster_state:ok" not in info:
            return False
        if self.killed is None:
            return True
        nodes = redis_cli(host, HOST_ADDRESSES[host], REDIS_PORT, "CLUSTER", "NODES").splitlines()
        # id address flags master ping pong epoch link [slot ranges...]
        dead = [line.split() for line in nodes if f" {self.killed}@" in line]
        return bool(dead) and len(dead[0]) <= 8


def cluster_supported() -> bool:
    from mpush.config import ConfigError, RedisConfig

    try:
        RedisConfig(nodes=("10.77.0.11:7001",), cluster_model="cluster")
    except ConfigError:
        return False
    return True


# ---------------------------------------------------------------- zookeeper


def start_zookeeper(processes: Processes) -> str | None:
    java = shutil.which("java")
    if java is None or not os.path.isfile(ZK_JAR):
        say("ZooKeeper skipped: install it with apt-get install -y zookeeper")
        return None
    host, address = HOSTS[0], HOST_ADDRESSES[HOSTS[0]]
    data = os.path.join(processes.directory, "zookeeper")
    os.makedirs(data, exist_ok=True)
    config = os.path.join(data, "zoo.cfg")
    with open(config, "w") as written:
        written.write(f"tickTime=500\ndataDir={data}\nclientPort={ZK_PORT}\nclientPortAddress={address}\n"
                      "maxClientCnxns=0\nadmin.enableServer=false\nforceSync=no\n")
    classpath = ZK_JAR + (":/usr/share/java/slf4j-simple.jar" if os.path.isfile("/usr/share/java/slf4j-simple.jar") else "")
    processes.start("zookeeper", host, [
        java, "-Xmx256m", "-XX:+UseSerialGC", "-Djava.net.preferIPv4Stack=true",
        "-Dzookeeper.admin.enableServer=false", "-cp", classpath,
        "org.apache.zookeeper.server.ZooKeeperServerMain", config])
    wait_port(host, address, ZK_PORT, 60, "ZooKeeper")
    return f"{address}:{ZK_PORT}"


def zookeeper_entries(zk: str, digest: str) -> int | str:
    """How many connection servers are registered in ZooKeeper (/mpush/cluster/cs)."""
    script = (
        "import sys\nfrom kazoo.client import KazooClient\n"
        f"c = KazooClient(hosts={zk!r}, timeout=5, auth_data=[('digest', {digest!r})]); c.start(5)\n"
        "print(len(c.get_children('/mpush/cluster/cs')) if c.exists('/mpush/cluster/cs') else 0)\n"
        "c.stop()\n"
    )
    answer = run(*in_host(LOAD_HOST, sys.executable, "-c", script), check=False)
    return int(answer.stdout) if answer.stdout.strip().isdigit() else f"unread: {answer.stderr[-200:]}"


# -------------------------------------------------------------------- nodes


def node_config(host: str, redis_section: str, zk: str | None, token: str, key: RsaPrivateKey) -> str:
    address = HOST_ADDRESSES[host]
    zk_section = f'[zk]\nenabled = true\nserver-address = "{zk}"\ndigest = "rehearsal:{token}"\n' if zk else ""
    return (
        f'[security]\nprivate-key = "{key.to_pkcs8_base64()}"\npublic-key = "{key.public_key().to_x509_base64()}"\n'
        f'[net]\nlocal-ip = "{address}"\npublic-ip = "{address}"\n'
        f'connect-server-bind-ip = "{address}"\nconnect-server-port = {CONNECT_PORT}\n'
        f'gateway-server-bind-ip = "{address}"\ngateway-server-port = {GATEWAY_PORT}\n'
        f'gateway-allow = ["{PREFIX}0/24"]\n'
        f'admin-server-bind-ip = "127.0.0.1"\nadmin-server-port = {ADMIN_PORT}\n'
        f'http-server-bind-ip = "{address}"\nhttp-server-port = {HTTP_PORT}\n'
        f'[http]\napi-token = "{token}"\npublic-paths = ["/healthz", "/v1/allot"]\n'
        f"[cluster]\nworkers = {WORKERS}\n"
        f"{redis_section}{zk_section}"
    )


def start_node(processes: Processes, host: str, text: str) -> None:
    directory = os.path.join(processes.directory, host)
    os.makedirs(directory, exist_ok=True)
    config = os.path.join(directory, "mpush.toml")
    with open(config, "w") as written:
        written.write(text)
    processes.start(f"mpush-{host}", host, [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "--nodaemon", "--pidfile=", "--logfile", os.path.join(directory, "twistd.log"),
        "mpush", "--config", config, "--state-dir", os.path.join(directory, "state")])


# --------------------------------------------------------------------- load


class LoadProcesses:
    """The load processes in the load host, driven by JSON lines."""

    def __init__(self, processes: Processes, count: int, devices: int, token: str, public_key: str,
                 reconnect_spread: float) -> None:
        nodes = ",".join(f"{HOST_ADDRESSES[h]}:{CONNECT_PORT}" for h in HOSTS)
        apis = ",".join(f"{HOST_ADDRESSES[h]}:{HTTP_PORT}" for h in HOSTS)
        self.answers: queue.Queue = queue.Queue()
        self.members = []
        for index in range(count):
            process = processes.start(f"load-{index}", LOAD_HOST, [
                sys.executable, "-m", "mpush.bench.rehearsal_load", "--index", str(index), "--of", str(count),
                "--devices", str(devices), "--nodes", nodes, "--apis", apis,
                "--sources", ",".join(LOAD_SOURCES), "--token", token, "--public-key", public_key,
                "--reconnect-spread", str(reconnect_spread),
            ], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(processes.log(f"load-{index}"), "ab"))
            self.members.append(process)
            threading.Thread(target=self._read, args=(index, process), daemon=True).start()

    def _read(self, index: int, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.answers.put((index, json.loads(line)))
        self.answers.put((index, None))

    def send(self, **command) -> None:
        line = (json.dumps(command) + "\n").encode()
        for process in self.members:
            process.stdin.write(line)
            process.stdin.flush()

    def collect(self, deadline: float) -> list[dict]:
        answers: list[dict] = []
        ends = time.monotonic() + deadline
        while len(answers) < len(self.members):
            try:
                index, answer = self.answers.get(timeout=max(ends - time.monotonic(), 0.01))
            except queue.Empty:
                raise RehearsalError(f"load processes did not answer within {deadline:g} s") from None
            if answer is None:
                raise RehearsalError(f"load process {index} exited; see its log")
            answers.append(answer)
        return answers

    def ask(self, deadline: float, **command) -> list[dict]:
        self.send(**command)
        return self.collect(deadline)


def merged(answers: list[dict], key: str) -> dict:
    total: dict = {}
    for answer in answers:
        for name, count in answer[key].items():
            total[name] = total.get(name, 0) + count
    return total


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))])


def push_summary(answers: list[dict]) -> dict:
    return {
        "sent": sum(a["sent"] for a in answers),
        "answered": merged(answers, "answered"),
        "unanswered (hung)": sum(a["unanswered"] for a in answers),
        "retried": merged(answers, "retried"),
        "received by devices": sum(a["pushes received by devices"] for a in answers),
        "lost (success but not received)": sum(a["success but not received"] for a in answers),
        "users bound but answered offline": len({u for a in answers for u in a["bound but offline"]}),
    }


def offline_users(answers: list[dict]) -> list[str]:
    return sorted({u for a in answers for u in a["bound but offline"]})


def reconnect_times(reports: list[dict]) -> dict:
    """How long the dead node's devices took to be bound again, in all and by
    how they came back: C{{kind: {"devices": n, "ms p50/p90/p99/max": [...]}}}."""
    by_kind: dict[str, list[float]] = {}
    for report in reports:
        for kind, times in report["reconnect ms"].items():
            by_kind.setdefault(kind, []).extend(times)
    every = [ms for times in by_kind.values() for ms in times]
    return {kind: {"devices": len(times),
                   "ms p50/p90/p99/max": [percentile(times, 0.5), percentile(times, 0.9),
                                          percentile(times, 0.99), round(max(times)) if times else None]}
            for kind, times in (("all", every), *sorted(by_kind.items()))}


def route_endpoint(route: str, dead: str) -> str:
    """Where one C{HGETALL mp:ur:<user>} answer (C{client-type json ...}, as
    L{SentinelRedis.route} flattens it) sends the user: C{host:port}s, the
    killed node marked; C{"none"} without a route."""
    if not route:
        return "none"
    places = []
    for value in route.split(" ")[1::2]:
        try:
            found = json.loads(value)
            place = f"{found['host']}:{found['port']}"
        except (ValueError, KeyError, TypeError):
            place = "unreadable"
        places.append(place + (" (the killed node)" if place.startswith(dead + ":") else ""))
    return ", ".join(places)


def routes_of(redis, users: list[str], dead: str) -> dict:
    """Where Redis routes C{users} now (the first 50): C{{endpoint: users}}."""
    found: dict = {}
    for user in users[:50]:
        place = route_endpoint(redis.route(f"mp:ur:{user}"), dead)
        found[place] = found.get(place, 0) + 1
    return found


def counts(answered: dict) -> str:
    return ", ".join(f"{count:,} {kind}" for kind, count in sorted(answered.items(), key=lambda kv: -kv[1]))


def summary(results: dict) -> list[str]:
    """The results in a few sentences: what a reader of the rehearsal asks first."""
    connect, back = results["connect"], results["reconnects"]
    lines = [f"devices bound: {connect['bound']:,} in {connect['seconds']} s ({connect['per second']:,}/s)"]
    faults = results.get("faults")
    if faults:
        lines.append(f"killed: mpush node {faults['mpush node killed']}, Redis master "
                     f"{faults['redis master killed']} (serving again after {faults['seconds redis kill -> serving']} s)")
        kinds = ", ".join(f"{times['devices']:,} by {kind} in p50/p90/max "
                          f"{times['ms p50/p90/p99/max'][0]}/{times['ms p50/p90/p99/max'][1]}/"
                          f"{times['ms p50/p90/p99/max'][3]} ms"
                          for kind, times in back["ms lost -> bound again"].items() if kind != "all")
        failed = sum(n for kind, n in back["by kind"].items() if kind.startswith("attempt failed"))
        lines.append(f"the killed node's devices back on the survivors: {back['devices back']:,} "
                     f"({kinds or 'none'}); {failed:,} failed attempts on the way; "
                     f"{back['still reconnecting']:,} still reconnecting")
    for phase in ("pushes before the faults", "pushes during the faults", "pushes after recovery"):
        if phase in results:
            pushes = results[phase]
            lines.append(f"{phase}: {pushes['sent']:,} sent, answered {counts(pushes['answered']) or 'none'}; "
                         f"{pushes['unanswered (hung)']:,} hung")
    lost = sum(results[p]["lost (success but not received)"] for p in
               ("pushes before the faults", "pushes during the faults", "pushes after recovery") if p in results)
    after = results.get("pushes after recovery", {})
    lines.append(f"loss: {results.get('lost devices (not bound at the end)', 0):,} devices not bound at the end, "
                 f"{lost:,} pushes answered success but never received, "
                 f"{after.get('users bound but answered offline', 0):,} users bound but answered offline "
                 "after recovery (their next bind routes them again)")
    return lines


# ------------------------------------------------------------------ the run


def rehearse(options) -> dict:
    directory = tempfile.mkdtemp(prefix="mpush-rehearsal-")
    processes = Processes(directory)
    network = Network()
    results: dict = {"devices": options.devices, "workers per node": WORKERS, "logs": directory,
                     "reconnect spread s": options.reconnect_spread}
    try:
        say(f"network: bridge {BRIDGE}, hosts {', '.join(f'{h}={a}' for h, a in HOST_ADDRESSES.items())}, "
            f"load host {LOAD_HOST} with {len(LOAD_SOURCES)} source addresses")
        network.build()
        redis = (ClusterRedis if options.redis == "cluster" else SentinelRedis)(processes)
        say(f"redis: {redis.model}")
        redis.start()
        zk = None if options.no_zk else start_zookeeper(processes)
        token = os.urandom(16).hex()
        key = RsaPrivateKey.generate()
        for host in HOSTS:
            start_node(processes, host, node_config(host, redis.node_section(), zk, token, key))
        for host in HOSTS:
            address = HOST_ADDRESSES[host]
            for port, what in ((CONNECT_PORT, "connect"), (HTTP_PORT, "HTTP"),
                               *((GATEWAY_PORT + i, f"gateway {i}") for i in range(WORKERS))):
                wait_port(LOAD_HOST, address, port, 60, f"mpush {host} {what} port")
        say(f"mpush: {len(HOSTS)} nodes x {WORKERS} workers up; ZooKeeper: {zk or 'none'}")
        if zk:
            results["zookeeper cs entries at start"] = zookeeper_entries(zk, f"rehearsal:{token}")

        load = LoadProcesses(processes, options.load_processes, options.devices, token,
                             key.public_key().to_x509_base64(), options.reconnect_spread)
        started = time.monotonic()
        connected = load.ask(options.devices / 20 + 120, cmd="connect")
        seconds = time.monotonic() - started
        results["connect"] = {
            "bound": sum(a["ok"] for a in connected), "failed": merged(connected, "failed"),
            "seconds": round(seconds, 1), "per second": round(sum(a["ok"] for a in connected) / seconds),
        }
        say(f"devices: {results['connect']}")

        rate = options.rate / options.load_processes
        push = dict(cmd="push", rate=rate, timeout_ms=3000)
        results["pushes before the faults"] = push_summary(load.ask(60, seconds=options.phase, **push))
        say(f"pushes across nodes: {results['pushes before the faults']}")

        # Faults, under load: the pushes go on while a node and a Redis
        # master die and the dead node's devices come back elsewhere.
        fault_seconds = options.phase * 3
        load.send(seconds=fault_seconds, **push)
        time.sleep(options.phase / 2)
        victim = HOSTS[2]
        node_killed_at = time.monotonic()
        processes.kill(f"mpush-{victim}")
        say(f"SIGKILLed mpush node {victim} ({HOST_ADDRESSES[victim]}, both workers)")
        time.sleep(options.phase / 2)
        master_killed_at = time.monotonic()
        killed = redis.kill_master()
        say(f"SIGKILLed Redis master {killed}")
        promoted_after = None
        while time.monotonic() - master_killed_at < 60:
            if redis.promoted():
                promoted_after = round(time.monotonic() - master_killed_at, 2)
                break
            time.sleep(0.2)
        say(f"Redis serving again {promoted_after} s after the kill")
        results["pushes during the faults"] = push_summary(load.collect(fault_seconds + 60))
        say(f"pushes during the faults: {results['pushes during the faults']}")

        ends = time.monotonic() + options.recovery_deadline
        while True:
            reports = load.ask(30, cmd="report")
            reconnecting = sum(r["reconnecting now"] for r in reports)
            if not reconnecting or time.monotonic() > ends:
                break
            time.sleep(1)
        times = reconnect_times(reports)
        results["faults"] = {
            "mpush node killed": f"{victim} ({HOST_ADDRESSES[victim]})",
            "redis master killed": killed,
            "seconds redis kill -> serving": promoted_after,
            "seconds from node kill to the report": round(time.monotonic() - node_killed_at, 1),
        }
        results["reconnects"] = {
            "by kind": merged(reports, "reconnects"),
            "devices back": times["all"]["devices"],
            "ms lost -> bound again": times,
            "still reconnecting": reconnecting,
            "bound now": sum(r["bound now"] for r in reports),
        }
        say(f"reconnects: {results['reconnects']}")
        after = load.ask(60, seconds=options.phase, **push)
        results["pushes after recovery"] = push_summary(after)
        say(f"pushes after recovery: {results['pushes after recovery']}")
        if offline_users(after):
            results["routes in redis of those users (up to 50)"] = routes_of(
                redis, offline_users(after), HOST_ADDRESSES[victim])
        if zk:
            results["zookeeper cs entries at the end"] = zookeeper_entries(zk, f"rehearsal:{token}")
        results["lost devices (not bound at the end)"] = options.devices - results["reconnects"]["bound now"]
        load.send(cmd="quit")
        return results
    finally:
        processes.stop_all()
        network.remove()
        if not options.keep_logs:
            shutil.rmtree(directory, ignore_errors=True)


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mpush.bench.rehearsal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=30000, help="devices held across the nodes (default 30000)")
    parser.add_argument("--redis", choices=("cluster", "sentinel"), default=None,
                        help="Redis model (default: cluster when this mpush supports it, else sentinel)")
    parser.add_argument("--rate", type=float, default=200.0, help="pushes per second, in all (default 200)")
    parser.add_argument("--phase", type=float, default=10.0, help="seconds of each push phase (default 10)")
    parser.add_argument("--load-processes", type=int, default=4, help="load processes (default 4)")
    parser.add_argument("--recovery-deadline", type=float, default=180.0,
                        help="seconds to wait for the dead node's devices to come back (default 180)")
    parser.add_argument("--reconnect-spread", type=float, default=2.0,
                        help="seconds over which a dead node's devices start reconnecting (default 2)")
    parser.add_argument("--no-zk", action="store_true", help="run without ZooKeeper")
    parser.add_argument("--keep-logs", action="store_true", help="keep every process's log")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    options = parser.parse_args(argv)
    if options.redis is None:
        options.redis = "cluster" if cluster_supported() else "sentinel"
    if options.devices < options.load_processes:
        parser.error("--devices must be at least --load-processes")
    return options


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    options = parse(argv)
    if os.geteuid() != 0:
        print("the rehearsal needs root (ip netns): sudo python -m mpush.bench.rehearsal", file=sys.stderr)
        return 2
    for tool in ("ip", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            print(f"the rehearsal needs {tool}: apt-get install -y iproute2 redis-server", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _interrupted)
    load_before = os.getloadavg()
    try:
        results = rehearse(options)
    except RehearsalError as error:
        print(f"rehearsal failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rehearsal interrupted; everything was removed", file=sys.stderr)
        return 130
    results["redis model"] = options.redis
    results["load average before/after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    text = json.dumps(results, indent=1)
    print("REHEARSAL " + text)
    print("\n".join(["SUMMARY", *(f"  {line}" for line in summary(results))]))
    if options.json:
        with open(options.json, "w") as written:
            written.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""
A real, throw-away Redis Cluster for tests: three masters and three
replicas, each a C{redis-server --cluster-enabled yes} on a free port of
127.0.0.1 with no persistence, joined by C{redis-cli --cluster create}.

Fault tests kill a master (L{RedisCluster.kill_master}) and wait for its
replica to take over (L{RedisCluster.wait_promoted}); resharding tests move
one slot by hand (L{RedisCluster.begin_migration} and friends) to get real
C{ASK} and C{MOVED} replies.  Every wait has a deadline; every process is
stopped in the test's cleanup.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
import unittest

from tests.process_support import worker_share
from tests.redis_server import RedisServer, RedisServerError, shared_redis_set
from tests.test_redis_router import raw_command

__all__ = ["RedisCluster", "shared_redis_cluster", "start_redis_cluster"]

#: Milliseconds before a silent master is failed over: short, for tests.
NODE_TIMEOUT_MS = 1000
_READY_DEADLINE = 30.0
#: A node also listens on its port + 10000 (the cluster bus): both stay
#: below 55535 and below Linux's ephemeral range (32768 and up), so that no
#: client's source port takes one between the pick and the bind; bus ports
#: (22000-25999) stay below the node processes' ports (L{free_port}).
_PORT_RANGE = (12000, 16000)
_BUS_OFFSET = 10000


def _free_on_loopback(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A port free with its bus port, neither in C{taken}."""
    for _ in range(500):
        port = random.randrange(*worker_share(*_PORT_RANGE))
        if {port, port + _BUS_OFFSET} & taken:
            continue
        if _free_on_loopback(port) and _free_on_loopback(port + _BUS_OFFSET):
            taken.update((port, port + _BUS_OFFSET))
            return port
    raise RedisServerError("no free port pair for a redis cluster node")


def _cli() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        raise unittest.SkipTest("redis-cli not installed; install it with: apt-get install -y redis-tools")
    return found


class RedisCluster:
    """Six cluster-enabled servers: C{masters} then C{replicas} once L{start}ed."""

    def __init__(self, masters: int = 3, replicas_per_master: int = 1) -> None:
        self.cli = _cli()
        taken: set[int] = set()
        self.servers = [
            RedisServer(port=free_cluster_port(taken), extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                # A replica promoted while its master was cut off for long
                # still takes over: a test kills the master at will.
                "--cluster-replica-validity-factor", "0",
            ))
            for _ in range(masters * (1 + replicas_per_master))
        ]
        self._replicas = replicas_per_master

    @property
    def nodes(self) -> tuple[str, ...]:
        """C{"host:port"} of every server, as C{[redis] nodes} lists seeds."""
        return tuple(f"127.0.0.1:{server.port}" for server in self.servers)

    @property
    def port(self) -> int:
        """A running node's port: where a subscriber may listen (PUBLISH reaches every node)."""
        return next(server.port for server in self.servers if server.running)

    def keys_like(self, key: str) -> list[str]:
        """
        C{key} and the keys mpush made of it in cluster mode (C{"{tag}" +
        key}, see L{mpush.store.redis_cluster.colocated}) that exist.
        """
        pattern = "{*}" + "".join("\\" + c if c in "*?[]\\" else c for c in key)
        found = [key] if self.on_owner(key, "EXISTS", key) else []
        for master in self.masters():
            cursor = "0"
            while True:
                cursor, keys = self.command(master, "SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
                found += [k.decode() for k in keys]
                if cursor in (b"0", "0"):
                    break
        return found

    def on_owner(self, key: str, *args: str) -> object:
        """C{args} sent to the master of C{key}'s slot."""
        from mpush.store.redis_cluster import key_slot

        return self.command(self.owner_of(key_slot(key)), *args)

    @property
    def url(self) -> str:
        from mpush.store.redis_connection import cluster_url

        return cluster_url(self.nodes)

    def start(self) -> "RedisCluster":
        for server in self.servers:
            server.start()
        created = subprocess.run(
            [self.cli, "--cluster", "create", *self.nodes, "--cluster-replicas", str(self._replicas),
             "--cluster-yes"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        if created.returncode != 0:
            raise RedisServerError(f"redis-cli --cluster create failed: {created.stdout[-500:]} {created.stderr[-500:]}")
        self.wait_ok()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def flush(self) -> None:
        """Empty every master (and so its replicas), between the tests sharing it."""
        for master in self.masters():
            self.command(master, "FLUSHALL")

    @property
    def healthy(self) -> bool:
        """All six running and the cluster ok: a shared cluster is only reused so."""
        if not all(server.running for server in self.servers):
            return False
        try:
            self.wait_ok(deadline=2.0)
        except RedisServerError:
            return False
        return True

    def command(self, server: RedisServer, *args: str) -> object:
        """One command to C{server} on a fresh socket."""
        return raw_command(server.port, *args)

    def wait_ok(self, deadline: float = _READY_DEADLINE) -> None:
        """Until every running server says the cluster is ok and agrees who serves every slot."""
        end = time.monotonic() + deadline
        last = ""
        while time.monotonic() < end:
            try:
                states = [self.command(s, "CLUSTER", "INFO") for s in self.servers if s.running]
                maps = {self._slot_owners(s) for s in self.servers if s.running}
            except (OSError, AssertionError) as e:
                last = repr(e)
            else:
                if all(b"cluster_state:ok" in state for state in states) and len(maps) == 1:
                    return
                last = "not yet ok or not agreed"
            time.sleep(0.1)
        raise RedisServerError(f"redis cluster not ok within {deadline:g} s: {last}")

    def _slot_owners(self, server: RedisServer) -> tuple:
        return tuple(sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in self.command(server, "CLUSTER", "SLOTS")))

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def owner_of(self, slot: int) -> RedisServer:
        """The master serving C{slot} now, as the first running server sees it."""
        viewer = next(server for server in self.servers if server.running)
        for start, end, port in self._slot_owners(viewer):
            if start <= slot <= end:
                return self.server_on(port)
        raise RedisServerError(f"no master serves slot {slot}")

    def masters(self) -> list[RedisServer]:
        viewer = next(server for server in self.servers if server.running)
        return [self.server_on(port) for port in sorted({port for _, _, port in self._slot_owners(viewer)})]

    def node_id(self, server: RedisServer) -> str:
        return self.command(server, "CLUSTER", "MYID").decode()

    def wait_replicated(self, slot: int, deadline: float = _READY_DEADLINE) -> None:
        """Until every replica of C{slot}'s master has all its master's writes."""
        master = self.owner_of(slot)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            info = dict(
                line.split(":", 1)
                for line in self.command(master, "INFO", "replication").decode().splitlines()
                if ":" in line
            )
            offsets = [
                int(dict(part.split("=", 1) for part in value.split(","))["offset"])
                for name, value in info.items()
                if name.startswith("slave")
            ]
            if offsets and all(offset >= int(info["master_repl_offset"]) for offset in offsets):
                return
            time.sleep(0.05)
        raise RedisServerError(f"the replicas of slot {slot} did not catch up within {deadline:g} s")

    def kill_master(self, slot: int) -> RedisServer:
        """SIGKILL the master of C{slot}; returns it (it may be restarted, as a replica)."""
        master = self.owner_of(slot)
        master.kill()
        return master

    def wait_promoted(self, slot: int, dead: RedisServer, deadline: float = _READY_DEADLINE) -> RedisServer:
        """Until a running server other than C{dead} serves C{slot} and the cluster is ok."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                owner = self.owner_of(slot)
                if owner is not dead and owner.running:
                    self.wait_ok(max(end - time.monotonic(), 0.1))
                    return owner
            except (OSError, AssertionError, RedisServerError):
                pass
            time.sleep(0.1)
        raise RedisServerError(f"no replica took slot {slot} over within {deadline:g} s")

    def begin_migration(self, slot: int, target: RedisServer) -> RedisServer:
        """Mark C{slot} MIGRATING on its owner and IMPORTING on C{target}; returns the owner."""
        source = self.owner_of(slot)
        self.command(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", self.node_id(source))
        self.command(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", self.node_id(target))
        return source

    def migrate_key(self, source: RedisServer, target: RedisServer, key: str) -> None:
        self.command(source, "MIGRATE", "127.0.0.1", str(target.port), key, "0", "5000")

    def end_migration(self, slot: int, target: RedisServer) -> None:
        """Give C{slot} to C{target} on every master (its keys must have been migrated)."""
        target_id = self.node_id(target)
        for server in self.masters() + [target]:
            self.command(server, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        self.wait_ok()


def start_redis_cluster(test_case: unittest.TestCase) -> RedisCluster:
    """A started L{RedisCluster}, stopped in C{test_case}'s cleanup."""
    cluster = RedisCluster()
    test_case.addCleanup(cluster.stop)
    cluster.start()
    return cluster


def shared_redis_cluster() -> RedisCluster:
    """
    One cluster for every test of this process that only reads and writes
    keys (see L{shared_redis_set}).  Tests that kill or reshard use
    L{start_redis_cluster}.
    """
    return shared_redis_set(RedisCluster)

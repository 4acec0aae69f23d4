"""
A real, throw-away Redis Sentinel set for tests: one master, one replica
and three sentinels, each a redis-server on a free port of 127.0.0.1 with
no persistence, shared by the tests of one process that only read and
write keys (L{shared_sentinel_set}).  Failover tests, which kill the
master, start their own (L{tests.redis_server.start_sentinel_set}).
"""

from __future__ import annotations

import time

from tests.redis_server import RedisServer, RedisServerError, sentinel_watch, shared_redis_set
from tests.test_redis_router import raw_command

__all__ = ["SentinelSet", "shared_sentinel_set"]

MASTER_NAME = "mymaster"
_READY_DEADLINE = 30.0
#: Nothing kills the shared master: a long silence before a sentinel calls
#: it down keeps a loaded machine from failing it over under the tests.
_DOWN_AFTER_MS = 30000


class SentinelSet:
    """A master, its replica and three sentinels watching it once L{start}ed."""

    def __init__(self, sentinels: int = 3) -> None:
        self.master = RedisServer()
        self.replica = RedisServer()
        self.sentinels = [RedisServer() for _ in range(sentinels)]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica, *self.sentinels]

    @property
    def nodes(self) -> tuple[str, ...]:
        """C{"host:port"} of every sentinel, as C{[redis] nodes} lists them."""
        return tuple(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)

    @property
    def port(self) -> int:
        """The master's port: where raw reads see what mpush wrote."""
        return self.master.port

    @property
    def url(self) -> str:
        from mpush.store.redis_connection import sentinel_url

        return sentinel_url(self.nodes, MASTER_NAME)

    def start(self) -> "SentinelSet":
        self.master.start()
        self.replica.extra_args = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.start()
        watch = sentinel_watch(MASTER_NAME, self.master.port, _DOWN_AFTER_MS)
        for sentinel in self.sentinels:
            sentinel.extra_args = ("--sentinel",)
            sentinel.config_text = watch
            sentinel.start()
        self.wait_ready()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def flush(self) -> None:
        """Empty the master (and so its replica), between the tests sharing it."""
        raw_command(self.master.port, "FLUSHALL")

    def named_master(self, sentinel: RedisServer) -> int:
        """The master's port as C{sentinel} names it."""
        return int(raw_command(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)[1])

    def wait_ready(self, deadline: float = _READY_DEADLINE) -> None:
        """Until the replica is in sync and every sentinel names the master."""
        end = time.monotonic() + deadline
        last = ""
        while time.monotonic() < end:
            try:
                linked = b"master_link_status:up" in raw_command(self.replica.port, "INFO", "replication")
                named = {self.named_master(sentinel) for sentinel in self.sentinels}
            except (OSError, AssertionError, TypeError) as e:
                last = repr(e)
            else:
                if linked and named == {self.master.port}:
                    return
                last = f"replica linked {linked}, sentinels name {sorted(named)}"
            time.sleep(0.1)
        raise RedisServerError(f"sentinel set not ready within {deadline:g} s: {last}")

    @property
    def healthy(self) -> bool:
        """All five running and the master still the master: a shared set is only reused so."""
        if not all(server.running for server in self.servers):
            return False
        try:
            self.wait_ready(deadline=2.0)
        except RedisServerError:
            return False
        return True


def shared_sentinel_set() -> SentinelSet:
    """
    One sentinel set for every test of this process that only reads and
    writes keys (see L{shared_redis_set}).
    """
    return shared_redis_set(SentinelSet)

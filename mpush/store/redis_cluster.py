"""
Redis Cluster inside the reactor, on txredisapi's connections.

A cluster splits the keys into 16384 slots (CRC16 of the key, or of its
C{{hash tag}}, mod 16384), each served by one master.  L{RedisClusterClient}
keeps the slot map (from C{CLUSTER SLOTS}), a small txredisapi pool per
master (L{mpush.store.redis_connection.open_pool}, the same pool as with one
Redis), and sends each command to the master of its key's slot.  A C{MOVED}
reply updates the map, asks for a fresh one and sends the command again; an
C{ASK} reply sends it once to the named node behind C{ASKING}; C{TRYAGAIN}
and C{CLUSTERDOWN} (a slot mid-migration, a failover under way) are retried
a few times after a short pause.  A lost or unreachable node makes the client
ask for the map again, so a promoted replica takes over the slots within a
refresh of the failover.  C{MGET} over keys of many slots is split into one
C{MGET} per slot and the replies put back in order; other multi-key commands
and scripts must name keys of one slot (callers batch per slot, see
L{mpush.store.redis_batch.TurnBatch}).

Why not a maintained cluster client (redis-py's C{RedisCluster}) in threads:
every command would cross to a thread and back, and mpush's hot paths send
one batched command per turn whose cost is mostly the node's own CPU, which
threads do not add; the reactor-native client keeps BoundedRedis deadlines,
pipelining (every command written in one turn leaves in one write per node)
and the reconnect-storm batching exactly as with one Redis.  The
measurement is in bench/RESULTS.md ("Redis Cluster").
"""

from __future__ import annotations

from typing import Callable

import txredisapi
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mpush.redis_status import RedisReachability
from mpush.store.redis_batch import group_by_slot
from mpush.store.redis_connection import RedisAddress, RedisClient

__all__ = ["SLOTS", "RedisClusterClient", "colocated", "crc16", "is_cluster", "key_slot", "slot_tag"]

#: Hash slots of a Redis Cluster.
SLOTS = 16384
#: Redirections (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) one command follows at most.
MAX_REDIRECTS = 5
#: Seconds between retries of a slot that is migrating or a cluster that is down.
RETRY_DELAY = 0.1
#: Seconds between two requests for the slot map, at the least.
MIN_REFRESH_INTERVAL = 0.2


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), as Redis Cluster hashes keys."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: str | bytes) -> int:
    """
    The slot of C{key}: of the part between the first C{{} and the next
    C{}} when that part is not empty, else of the whole key.
    """
    data = key.encode("utf-8") if isinstance(key, str) else key
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc16(data) % SLOTS


_slot_tags: list[str] = []


def slot_tag(slot: int) -> str:
    """A short text whose slot is C{slot} (computed once for all slots, on first use)."""
    if not _slot_tags:
        tags: list[str | None] = [None] * SLOTS
        missing, number = SLOTS, 0
        while missing:
            text = f"{number:x}"
            found = crc16(text.encode("ascii")) % SLOTS
            if tags[found] is None:
                tags[found] = text
                missing -= 1
            number += 1
        _slot_tags.extend(tags)  # type: ignore[arg-type]
    return _slot_tags[slot]


def colocated(key: str, anchor: str) -> str:
    """
    C{key} with a leading hash tag that puts it in C{anchor}'s slot, so that
    one script may touch both: for mpush's own keys next to one of MPush's,
    whose names are fixed.  The tag comes first, so braces in C{key} do not
    matter.
    """
    return "{" + slot_tag(key_slot(anchor)) + "}" + key


def is_cluster(redis: object) -> bool:
    """Whether C{redis} (a client, or a component's BoundedRedis client) is a Redis Cluster."""
    return isinstance(redis, RedisClusterClient)


Node = tuple[str, int]


class _ClusterCommands:
    """
    What C{RedisClusterClient.redis} is: txredisapi's command methods, each
    sent to the master of its first argument's slot.
    """

    def __init__(self, cluster: "RedisClusterClient") -> None:
        self._cluster = cluster

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        cluster = self._cluster

        def keyed(*args, **kwargs) -> defer.Deferred:
            key = args[0] if args else None
            slot = key_slot(key) if isinstance(key, (str, bytes)) else None
            return cluster.execute(slot, method, args, kwargs)

        self.__dict__[method] = keyed
        return keyed

    def mget(self, keys, *more) -> defer.Deferred:
        keys = ([keys] if isinstance(keys, (str, bytes)) else list(keys)) + list(more)
        groups = group_by_slot(keys, key_slot)
        if len(groups) <= 1:
            return self._cluster.execute(key_slot(keys[0]) if keys else None, "mget", (keys,), {})
        sent = [self._cluster.execute(key_slot(keys[g[0]]), "mget", ([keys[i] for i in g],), {}) for g in groups]

        def reassembled(replies: list) -> list:
            values: list = [None] * len(keys)
            for group, reply in zip(groups, replies):
                for index, value in zip(group, reply):
                    values[index] = value
            return values

        gathered = defer.gatherResults(sent, consumeErrors=True)
        return gathered.addCallbacks(reassembled, lambda failure: failure.value.subFailure)

    def eval(self, script, keys=(), args=()) -> defer.Deferred:
        slot = key_slot(keys[0]) if keys else None
        return self._cluster.execute(slot, "eval", (script, list(keys), list(args)), {})

    def disconnect(self) -> defer.Deferred:
        return self._cluster.disconnect()


class RedisClusterClient(RedisClient):
    """
    A Redis Cluster looking like one L{RedisClient} to the rest of mpush
    (a subclass, so that every component taking a client takes it):
    C{.redis} for commands, C{.connected}, C{.reachability}, C{disconnect}.

    @param open_pool: C{open_pool(address)} opens a L{RedisClient} to one node.
    @param timeout: seconds one node may take to answer C{CLUSTER SLOTS}.
    """

    log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        clock: IReactorTime | None,
        open_pool: Callable[[RedisAddress], RedisClient],
        *,
        timeout: float = 5.0,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.address = address
        self.endpoint = None
        self.redis = _ClusterCommands(self)
        self.reachability = RedisReachability(address.label, clock)
        self._clock = clock
        self._open_pool = open_pool
        self._timeout = timeout
        self._seeds: tuple[Node, ...] = address.cluster_nodes
        #: The master of every slot, once a map was read.
        self._owners: list[Node | None] = [None] * SLOTS
        self._mapped = False
        self._pools: dict[Node, RedisClient] = {}
        self._map_waiters: list[defer.Deferred] = []
        self._refreshing: defer.Deferred | None = None
        self._refresh_call = None
        self._last_refresh = -MIN_REFRESH_INTERVAL
        self._closed = False
        #: Slot maps read: tests and figures count refreshes with it.
        self.refreshes = 0
        slot_tag(0)  # the tags' table: half a second once, at start rather than mid-storm
        self.refresh_soon()

    # -- what BoundedRedis and the stores use --------------------------------

    @property
    def connected(self) -> bool:
        """Whether a slot map is known and a pool to at least one master is up."""
        return self._mapped and any(self._pools[node].connected for node in self.masters() if node in self._pools)

    def masters(self) -> set[Node]:
        return {node for node in self._owners if node is not None}

    def slot_of(self, key: str | bytes) -> int:
        return key_slot(key)

    def node_of(self, slot: int) -> Node | None:
        """The master serving C{slot} as far as this client knows."""
        return self._owners[slot]

    def execute(self, slot: int | None, method: str, args: tuple, kwargs: dict, redirects: int = 0) -> defer.Deferred:
        """Send C{method(*args, **kwargs)} to the master of C{slot} (any master when C{None})."""
        if self._closed:
            return defer.fail(txredisapi.ConnectionError(f"redis {self.address.label} is closed"))
        if not self._mapped:
            waiter: defer.Deferred = defer.Deferred()
            self._map_waiters.append(waiter)
            self.refresh_soon()
            return waiter.addCallback(lambda _: self.execute(slot, method, args, kwargs, redirects))
        node = self._owners[slot] if slot is not None else self._any_master()
        if node is None:
            self.refresh_soon()
            return defer.fail(txredisapi.ConnectionError(f"redis cluster: no master serves slot {slot}"))
        pool = self._pool(node)
        connected = pool.connected
        if not connected:
            self.refresh_soon()
            if pool.was_up or pool.reachability.unreachable:
                # Lost, or failing over: fail this one fast while the map is read again.
                return defer.fail(txredisapi.ConnectionError(f"redis cluster node {node[0]}:{node[1]} is down"))
        try:
            sent = getattr(pool.redis, method)(*args, **kwargs)
        except Exception:
            sent = defer.fail()
        if not connected:
            # Waits for the pool's first connection, not for ever.
            sent.addTimeout(self._timeout, self._clock)
        return sent.addErrback(self._redirected, slot, method, args, kwargs, redirects, node)

    def execute_on(self, node: Node, method: str, args: tuple, kwargs: dict) -> defer.Deferred:
        """C{method} on master C{node} itself (a SCAN of its keys), no redirection followed."""
        if self._closed or node not in self.masters():
            return defer.fail(txredisapi.ConnectionError(f"redis cluster: {node[0]}:{node[1]} is not a master"))
        return getattr(self._pool(node).redis, method)(*args, **kwargs)

    def disconnect(self) -> defer.Deferred:
        """Close every pool; commands waiting for a map fail."""
        self._closed = True
        if self._refresh_call is not None and self._refresh_call.active():
            self._refresh_call.cancel()
        self._refresh_call = None
        self._fail_map_waiters(txredisapi.ConnectionError(f"redis {self.address.label} is closed"))
        pools, self._pools = list(self._pools.values()), {}
        return defer.gatherResults([pool.disconnect() for pool in pools]).addBoth(lambda _: None)

    # -- redirections ---------------------------------------------------------

    def _redirected(self, failure: Failure, slot, method, args, kwargs, redirects: int, node: Node):
        if failure.check(txredisapi.ConnectionError, defer.TimeoutError):
            self.refresh_soon()
            return failure
        if not failure.check(txredisapi.ResponseError) or redirects >= MAX_REDIRECTS or self._closed:
            return failure
        kind, _, rest = failure.getErrorMessage().partition(" ")
        if kind in ("MOVED", "ASK"):
            moved_slot, _, where = rest.partition(" ")
            host, _, port = where.rpartition(":")
            target = (host or node[0], int(port))
            if kind == "ASK":
                return self._ask(target, slot, method, args, kwargs, redirects + 1)
            self._owners[int(moved_slot)] = target
            self.refresh_soon()
            return self.execute(slot, method, args, kwargs, redirects + 1)
        if kind in ("TRYAGAIN", "CLUSTERDOWN"):
            if kind == "CLUSTERDOWN":
                self.refresh_soon()
            return task.deferLater(
                self._clock, RETRY_DELAY, self.execute, slot, method, args, kwargs, redirects + 1
            )
        return failure

    def _ask(self, target: Node, slot, method, args, kwargs, redirects: int) -> defer.Deferred:
        """C{ASKING} then the command, on one connection of C{target}'s pool."""
        pool = self._pool(target)
        found = pool._factory.getConnection(peek=True)
        found.addTimeout(self._timeout, self._clock)

        def send(connection) -> defer.Deferred:
            connection.execute_command("ASKING").addErrback(lambda _: None)
            if method == "eval":
                # Not EVALSHA first: its NOSCRIPT retry would go without ASKING.
                script, keys, values = args
                return connection.execute_command("EVAL", script, len(keys), *keys, *values)
            return getattr(connection, method)(*args, **kwargs)

        found.addCallback(send)
        return found.addErrback(self._redirected, slot, method, args, kwargs, redirects, target)

    # -- the slot map ----------------------------------------------------------

    def refresh_soon(self) -> None:
        """Ask for the slot map now, or as soon as the last request is old enough."""
        if self._closed or self._refreshing is not None or (
            self._refresh_call is not None and self._refresh_call.active()
        ):
            return
        wait = self._last_refresh + MIN_REFRESH_INTERVAL - self._clock.seconds()
        self._refresh_call = self._clock.callLater(max(wait, 0.0), self.refresh)

    def refresh(self) -> defer.Deferred:
        """Read the slot map from the first node that answers; fires C{True} if one did."""
        if self._refreshing is not None:
            return self._refreshing
        self._last_refresh = self._clock.seconds()
        self._refreshing = refreshing = self._read_map(self._candidates())
        refreshing.addBoth(self._refreshed)
        return refreshing

    def _candidates(self) -> list[Node]:
        connected = [node for node, pool in self._pools.items() if pool.connected]
        known = [node for node in self._pools if node not in connected]
        return connected + known + [seed for seed in self._seeds if seed not in self._pools]

    def _read_map(self, candidates: list[Node]) -> defer.Deferred:
        if not candidates or self._closed:
            return defer.fail(txredisapi.ConnectionError("no redis cluster node answered CLUSTER SLOTS"))
        node = candidates[0]
        asked = self._pool(node).redis.execute_command("CLUSTER", "SLOTS")
        asked.addTimeout(self._timeout, self._clock)
        asked.addCallback(self._apply_map, node)
        asked.addErrback(lambda _: self._read_map(candidates[1:]))
        return asked

    def _apply_map(self, reply, asked: Node) -> bool:
        owners: list[Node | None] = [None] * SLOTS
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            node = (str(master[0]) or asked[0], int(master[1]))
            owners[start : end + 1] = [node] * (end - start + 1)
        self._owners = owners
        self.refreshes += 1
        masters = self.masters()
        for node in masters:
            self._pool(node)
        for node in [node for node in self._pools if node not in masters]:
            # A replica, a seed, or a master failed over: no command goes there.
            self._pools.pop(node).disconnect()
        return True

    def _refreshed(self, result) -> None:
        self._refreshing = None
        if isinstance(result, Failure):
            self.reachability.attempt_failed(result)
            self._fail_map_waiters(result.value)
            if self._map_waiters or not self._mapped or any(not p.connected for p in self._pools.values()):
                self.refresh_soon()
            return None
        self.reachability.attempt_succeeded(None)
        self._mapped = True
        waiters, self._map_waiters = self._map_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if any(not pool.connected and pool.reachability.unreachable for pool in self._pools.values()):
            # A master is down: keep asking until a replica replaces it.
            self.refresh_soon()
        return None

    def _fail_map_waiters(self, error: Exception) -> None:
        waiters, self._map_waiters = self._map_waiters, []
        for waiter in waiters:
            waiter.errback(txredisapi.ConnectionError(f"redis cluster map unknown: {error}"))

    def _any_master(self) -> Node | None:
        connected = [node for node in self.masters() if node in self._pools and self._pools[node].connected]
        return connected[0] if connected else next(iter(self.masters()), None)

    def _pool(self, node: Node) -> RedisClient:
        pool = self._pools.get(node)
        if pool is None:
            pool = self._pools[node] = self._open_pool(
                RedisAddress(host=node[0], port=node[1], password=self.address.password)
            )
        return pool

    def __repr__(self) -> str:
        return f"<RedisClusterClient {self.address.label} masters={len(self.masters())}>"

"""
Routing state in Redis, shared with MPush's Java nodes and push client
(spec 11, 19): routes in C{mp:ur:<userId>}, the online-user list
C{mp:oul:<publicIp>} and its channels, kicks on C{/mpush/kick/<host>:<port>};
plus ours, which Java ignores: the per-node route index C{mp:nr:<host>:<port>}
and the node registry C{mp:node:<host>:<port>} / C{mp:nodes}.

On a Redis Cluster, MPush's keys keep their names; each of ours is put in
the slot of the MPush key a script touches with it (L{colocated}): a route's
index entry in the route's slot (the index is then one set per slot, found
by SCAN when a node dies), the counts, sets and IP map of an online list in
that list's slot.

Every call is bounded by a deadline on the injected clock and fails with
L{RouterUnavailable} (see L{mpush.store.redis_calls}).  A call that timed out
may still have been carried out by Redis.  Route changes that must not race
a re-bind on another connection are compare-and-set Lua scripts.

Importing this module imports txredisapi, which imports the global reactor.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mpush.protocol.routing import (
    NODE_ROUTES_PREFIX,
    NODES_KEY,
    OFFLINE_CHANNEL,
    ONLINE_IPS_KEY,
    ONLINE_CHANNEL,
    ClientLocation,
    InvalidLocation,
    InvalidNodeInfo,
    InvalidRouteField,
    KickRequest,
    NodeInfo,
    client_type_field,
    decode_location,
    decode_node_member,
    decode_route_member,
    encode_location,
    encode_node_member,
    encode_route_member,
    kick_channel,
    node_key,
    node_online_key,
    node_routes_key,
    online_counts_key,
    online_users_key,
    parse_client_type_field,
    user_route_key,
)
from mpush.router.interfaces import (
    IKickChannel,
    INodeRegistry,
    IRemoteRouter,
    IUserEvents,
    RouterUnavailable,
    call_registered_again,
    check_registry_options,
    deliver_kick,
    kick_message,
)
from mpush.router.pubsub import RedisSubscriber
from mpush.store.redis_batch import TurnBatch, cluster_groups
from mpush.store.redis_cluster import colocated, is_cluster, per_node
from mpush.store.redis_calls import BoundedRedis, RedisComponent, check_timeout
from mpush.store.redis_connection import RedisClient, connect_redis, parse_redis_url

__all__ = [
    "RedisKickChannel",
    "RedisNodeRegistry",
    "RedisRemoteRouter",
    "RedisUserEvents",
]

# For each route KEYS[i]: HGET the old value, HSET the new one, index it
# under its node and take it out of the index of the node that owned it
# before.  One script, so two binds racing on different nodes cannot leave
# the index pointing at the loser; one script for all the binds of a turn.
# The old owner comes from the old JSON (cjson), so an undecodable old value
# only skips the clean-up.  Returns the old values (nil where none).
#   ARGV[1]: index key prefix; then per route: field, new value, index
#   member, new index key ("" when the route is offline or has no host),
#   and what comes before the prefix in this route's index keys (on a
#   Redis Cluster the hash tag of the route's slot, else "")
_REGISTER_MANY = """
local prefix = ARGV[1]
local olds = {}
for i, key in ipairs(KEYS) do
  local a = 5 * i - 3
  local field, member, index = ARGV[a], ARGV[a + 2], ARGV[a + 3]
  local old = redis.call('HGET', key, field)
  redis.call('HSET', key, field, ARGV[a + 1])
  if index ~= '' then redis.call('SADD', index, member) end
  if old then
    local ok, loc = pcall(cjson.decode, old)
    if ok and type(loc) == 'table' and type(loc['host']) == 'string'
        and type(loc['port']) == 'number' then
      local was = ARGV[a + 4] .. prefix .. loc['host'] .. ':' .. string.format('%d', loc['port'])
      if was ~= index then redis.call('SREM', was, member) end
    end
  end
  olds[i] = old or false
end
return olds
"""

# HGET field ARGV[i] of each KEYS[i] (nil where none): the reads of a turn's
# compare-and-sets in one command.
_HGET_MANY = """
local values = {}
for i, key in ipairs(KEYS) do values[i] = redis.call('HGET', key, ARGV[i]) or false end
return values
"""

# Every route of each user of KEYS, as HGETALL's flat [field, value, ...].
_HGETALL_MANY = """
local routes = {}
for i, key in ipairs(KEYS) do routes[i] = redis.call('HGETALL', key) end
return routes
"""

# Compare-and-set of routes, one per KEYS[i]: only if the field still holds
# exactly what the caller decided on, rewrite it (unless the new value is
# "") and drop the index member (unless the index key is "").  Expect-missing
# "1": expect no field.  Returns 1 or 0 per route.
#   ARGV per route: field, expected, new value, index key, member, expect-missing
_COMPARE_AND_SET_MANY = """
local done = {}
for i, key in ipairs(KEYS) do
  local a = 6 * i - 5
  local field = ARGV[a]
  local cur = redis.call('HGET', key, field)
  local same
  if ARGV[a + 5] == '1' then same = not cur else same = cur == ARGV[a + 1] end
  if same then
    if ARGV[a + 2] ~= '' then redis.call('HSET', key, field, ARGV[a + 2]) end
    if ARGV[a + 3] ~= '' then redis.call('SREM', ARGV[a + 3], ARGV[a + 4]) end
    done[i] = 1
  else
    done[i] = 0
  end
end
return done
"""

# Online and offline events, in order: per user a ZADD (ARGV "1") or ZREM
# (ARGV "0") on the online list KEYS[1], then a PUBLISH on its channel.
# Several nodes share a list (workers behind one IP): each keeps the users
# it put online in its own set KEYS[3], and KEYS[2] counts, per user, the
# nodes whose set has it; an offline event takes a user out of the list only
# once no node has it.  KEYS[4] maps this node (ARGV[3]) to its IP (ARGV[4]),
# for whoever cleans up after it (L{_RELEASE_NODE}).
#   ARGV[1], ARGV[2]: online and offline channels; ARGV[3], ARGV[4]: this
#   node's "<host>:<port>" and public IP; then per event: op, user
_EVENTS = """
local online, offline = ARGV[1], ARGV[2]
local list, counts, mine = KEYS[1], KEYS[2], KEYS[3]
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
for a = 5, #ARGV, 2 do
  local user = ARGV[a + 1]
  if ARGV[a] == '1' then
    redis.call('ZADD', list, 0, user)
    if redis.call('SADD', mine, user) == 1 then redis.call('HINCRBY', counts, user, 1) end
    redis.call('PUBLISH', online, user)
  else
    local left = 0
    if redis.call('SREM', mine, user) == 1 then
      left = redis.call('HINCRBY', counts, user, -1)
    else
      left = tonumber(redis.call('HGET', counts, user)) or 0
    end
    if left <= 0 then
      redis.call('HDEL', counts, user)
      redis.call('ZREM', list, user)
    end
    redis.call('PUBLISH', offline, user)
  end
end
return (#ARGV - 4) / 2
"""

# Forget what one node put online (its start and stop, or its death): each
# user of its set KEYS[3] leaves the list KEYS[1] unless another node still
# has it (the counts KEYS[2]); then its set and its entry ARGV[1] in KEYS[4]
# go.  Only while KEYS[4] still maps it to the IP ARGV[2] the keys were made
# for (else -2), and with ARGV[3] "1" (a dead node) only while its
# registration KEYS[5] is absent (else -1: it is back, and cleans up itself).
# Returns how many users left the list.
_RELEASE_NODE = """
if redis.call('HGET', KEYS[4], ARGV[1]) ~= ARGV[2] then return -2 end
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[5]) == 1 then return -1 end
local gone = 0
for _, user in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
    redis.call('HDEL', KEYS[2], user)
    redis.call('ZREM', KEYS[1], user)
    gone = gone + 1
  end
end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[4], ARGV[1])
return gone
"""

# The online list KEYS[1] when no node counts any of its users (KEYS[2]
# absent): what is left was written before the counts existed, or by a Java
# node, and a start clears it as MPush does.
_SWEEP_UNCLAIMED = """
if redis.call('EXISTS', KEYS[2]) == 0 then return redis.call('DEL', KEYS[1]) end
return 0
"""

# PUBLISH ARGV[2i] on channel ARGV[2i-1]: the kicks of a turn in one command.
# Returns how many subscribers each reached.
_PUBLISH_MANY = """
local reached = {}
for a = 1, #ARGV, 2 do reached[#reached + 1] = redis.call('PUBLISH', ARGV[a], ARGV[a + 1]) end
return reached
"""

# Attempts of a compare-and-set before giving up on a route that keeps
# changing under us (then someone else is actively binding it: leave it).
_CAS_ATTEMPTS = 5
# Members per SSCAN page while walking a dead node's index.
_SCAN_COUNT = 200


def _client_of(redis) -> RedisClient | None:
    return redis if isinstance(redis, RedisClient) else None


@implementer(IRemoteRouter)
class RedisRemoteRouter(RedisComponent):
    """
    L{IRemoteRouter} on Redis.

    @param redis: a L{RedisClient} (or a bare txredisapi handler).
    @param close_connection: whether L{close} also disconnects C{redis};
        off by default because the pool is shared with the other Redis
        components, which may still need it while shutting down.
    """

    log = Logger()

    def __init__(
        self,
        redis,
        clock: IReactorTime,
        timeout: float = 2.0,
        *,
        close_connection: bool = False,
    ) -> None:
        self._calls = BoundedRedis(redis, clock, timeout, "redis remote router", RouterUnavailable)
        self._redis = self._calls.redis
        self._client = _client_of(redis)
        self._close_connection = close_connection
        # What a turn's binds and closes ask goes as one script each: the
        # registers (bounded), and the reads and writes of compare-and-sets
        # (inside a bounded mark_offline already).
        self._cluster = is_cluster(redis)
        by_key = partial(cluster_groups, redis)
        self._registers: TurnBatch = TurnBatch(
            clock,
            self._register_many,
            refusal=partial(self._calls.refusal, "register"),
            group_of=by_key(lambda route: route[1]),
        )
        self._reads: TurnBatch = TurnBatch(clock, self._read_many, group_of=by_key(lambda read: read[0]))
        self._swaps: TurnBatch = TurnBatch(clock, self._swap_many, group_of=by_key(lambda swap: swap[0]))

    def _index_key(self, host: str, port: int, route_key: str) -> str:
        """The route index of node C{host:port} that holds the route C{route_key}."""
        index = node_routes_key(host, port)
        return colocated(index, route_key) if self._cluster else index

    def register(self, user_id: str, client_type: int, location: ClientLocation) -> defer.Deferred:
        try:
            key = user_route_key(user_id)
            field = client_type_field(client_type)
            value = encode_location(location)
            member = encode_route_member(user_id, client_type)
        except Exception:
            return defer.fail()
        # Only online routes are indexed: the index is what a node's death
        # would have to mark offline.
        index = self._index_key(location.host, location.port, key) if location.host is not None and location.online else ""
        return self._registers.submit((user_id, key, field, value, member, index))

    def _register_many(self, routes: list[tuple[str, str, str, str, str, str]]) -> defer.Deferred:
        keys = [route[1] for route in routes]
        # The old owner's index is named by the script: in a cluster, the one
        # in each route's slot.
        args = [NODE_ROUTES_PREFIX]
        for _, key, field, value, member, index in routes:
            args += (field, value, member, index, colocated("", key) if self._cluster else "")

        def decoded(olds) -> list:
            return [self._decode(old, route[0], route[2]) for old, route in zip(olds, routes)]

        return self._calls.call("register", lambda: self._redis.eval(_REGISTER_MANY, keys, args), decoded)

    def _read_many(self, fields: list[tuple[str, str]]) -> defer.Deferred:
        return self._redis.eval(_HGET_MANY, [key for key, _ in fields], [field for _, field in fields])

    def _swap_many(self, swaps: list[tuple]) -> defer.Deferred:
        args: list[str] = []
        for swap in swaps:
            args += swap[1:]
        return self._redis.eval(_COMPARE_AND_SET_MANY, [swap[0] for swap in swaps], args)

    def lookup(self, user_id: str) -> defer.Deferred:
        try:
            key = user_route_key(user_id)
        except Exception:
            return defer.fail()
        return self._calls.call("lookup", lambda: self._redis.hgetall(key), lambda h: self._decode_all(h, user_id))

    def lookup_many(self, user_ids: list[str]) -> defer.Deferred:
        """
        L{lookup} of many users in one script (a many-user push): a list of
        route dicts in the order of C{user_ids}.
        """
        try:
            keys = [user_route_key(user_id) for user_id in user_ids]
        except Exception:
            return defer.fail()

        def decoded(replies) -> list[dict[int, ClientLocation]]:
            return [self._decode_all(dict(zip(flat[::2], flat[1::2])), user_id)
                    for flat, user_id in zip(replies, user_ids)]

        return self._calls.call("lookup", lambda: self._hgetall_many(keys), decoded)

    def _hgetall_many(self, keys: list[str]) -> defer.Deferred:
        if not self._cluster:
            return self._redis.eval(_HGETALL_MANY, keys, [])
        return per_node(self._calls.client, keys, lambda some: self._redis.eval(_HGETALL_MANY, some, []))

    def lookup_type(self, user_id: str, client_type: int) -> defer.Deferred:
        try:
            key = user_route_key(user_id)
            field = client_type_field(client_type)
        except Exception:
            return defer.fail()
        return self._calls.call(
            "lookup_type",
            lambda: self._redis.hget(key, field),
            lambda value: self._decode(value, user_id, field),
        )

    def mark_offline(
        self,
        user_id: str,
        client_type: int,
        conn_id: str | None = None,
        device_id: str | None = None,
    ) -> defer.Deferred:
        try:
            key = user_route_key(user_id)
            field = client_type_field(client_type)
            member = encode_route_member(user_id, client_type)
            for name, value in (("conn id", conn_id), ("device id", device_id)):
                if value is not None and not isinstance(value, str):
                    raise TypeError(f"{name} must be text or None, not {type(value).__name__}")
        except Exception:
            return defer.fail()

        def owned(location: ClientLocation) -> bool:
            return location.owned_by(conn_id, device_id)

        return self._calls.call(
            "mark_offline",
            lambda: self._offline_if(key, field, member, user_id, owned),
        )

    @defer.inlineCallbacks
    def _offline_if(
        self,
        key: str,
        field: str,
        member: str,
        user_id: str,
        should: Callable[[ClientLocation], bool],
        *,
        drop_index: str | None = None,
    ):
        """
        Read the route, decide with C{should}, and compare-and-set it
        offline; re-read when it changed in between.  With C{drop_index}, a
        route left alone is still taken out of that index (if unchanged).
        Fires whether it marked the route offline.
        """
        for _ in range(_CAS_ATTEMPTS):
            raw = yield self._reads.submit((key, field))
            location = self._decode(raw, user_id, field)
            if location is not None and should(location):
                index = self._index_key(location.host, location.port, key) if location.host is not None else ""
                new = encode_location(location.offline())
                expected, missing = raw, "0"
            elif drop_index is not None:
                index, new = drop_index, ""
                expected, missing = ("", "1") if raw is None else (raw, "0")
                location = None
            else:
                return False
            done = yield self._swaps.submit((key, field, expected, new, index, member, missing))
            if int(done) == 1:
                return location is not None
        self.log.info("route {user}/{field} kept changing; left as is", user=user_id, field=field)
        return False

    def mark_node_offline(self, host: str, port: int, unless_back: bool = False) -> defer.Deferred:
        try:
            index = node_routes_key(host, port)
            registration = node_key(host, port)
        except Exception:
            return defer.fail()
        back: Callable[[], defer.Deferred] | None = None
        if unless_back:
            # Asked before each page: the routes of a page in flight when the
            # node comes back may still be marked; it writes them again after.
            def registered() -> defer.Deferred:
                return self._calls.call(
                    "mark_node_offline check", lambda: self._redis.exists(registration), lambda n: bool(int(n))
                )

            back = registered
        if self._cluster:
            return self._walk_shards(index, (host, port), back)
        return self._walk_index(index, (host, port), back)

    @defer.inlineCallbacks
    def _walk_shards(self, index: str, gateway: tuple[str, int], back: Callable[[], defer.Deferred] | None):
        # In a cluster the index is a set per slot, "{tag}" + index: SCAN
        # every master for them, then walk each.
        pattern = "{*}" + "".join("\\" + c if c in "*?[]\\" else c for c in index)
        count = 0
        for node in sorted(self._calls.client.masters()):
            cursor = "0"
            while True:
                page = yield self._calls.call(
                    "mark_node_offline scan",
                    lambda c=cursor, n=node: self._calls.client.execute_on(
                        n, "scan", (c,), {"pattern": pattern, "count": _SCAN_COUNT * 5}
                    ),
                )
                cursor = str(page[0])
                for shard in page[1]:
                    count += yield self._walk_index(shard, gateway, back)
                if cursor == "0":
                    break
        return count

    @defer.inlineCallbacks
    def _walk_index(self, index: str, gateway: tuple[str, int], back: Callable[[], defer.Deferred] | None):
        # One bounded call per SSCAN page and per route, rather than one
        # deadline for a walk whose length depends on the node's size.
        count = 0
        cursor = "0"
        while True:
            if back is not None and (yield back()):
                return count
            page = yield self._calls.call(
                "mark_node_offline scan",
                lambda c=cursor: self._redis.sscan(index, c, count=_SCAN_COUNT),
            )
            cursor, members = str(page[0]), page[1]
            marked = yield defer.gatherResults(
                [self._node_route_offline(index, gateway, m) for m in members],
                consumeErrors=True,
            ).addErrback(lambda f: f.value.subFailure)
            count += sum(marked)
            if cursor == "0":
                return count

    def _node_route_offline(self, index: str, gateway: tuple[str, int], member) -> defer.Deferred:
        try:
            user_id, client_type = decode_route_member(member)
        except InvalidRouteField as e:
            self.log.warn("dropping bad route index member {member!r}: {why}", member=member, why=e)
            return self._calls.call("mark_node_offline srem", lambda: self._redis.srem(index, member), lambda _: 0)
        key = user_route_key(user_id)
        field = client_type_field(client_type)

        def still_there(location: ClientLocation) -> bool:
            return location.online and location.gateway == gateway

        return self._calls.call(
            "mark_node_offline",
            lambda: self._offline_if(
                key, field, encode_route_member(user_id, client_type), user_id, still_there, drop_index=index
            ),
            int,
        )

    def close(self) -> defer.Deferred:
        self._calls.close()
        if self._close_connection:
            return _disconnect(self._client, self._redis)
        return defer.succeed(None)

    def _decode(self, value, user_id: str, field: str) -> ClientLocation | None:
        if value is None:
            return None
        try:
            return decode_location(value)
        except InvalidLocation as e:
            self.log.warn("ignoring undecodable route {user}/{field}: {why}", user=user_id, field=field, why=e)
            return None

    def _decode_all(self, fields: dict, user_id: str) -> dict[int, ClientLocation]:
        routes = {}
        for field, value in fields.items():
            try:
                client_type = parse_client_type_field(field)
            except InvalidRouteField as e:
                self.log.warn("skipping route {user}/{field!r}: {why}", user=user_id, field=field, why=e)
                continue
            location = self._decode(value, user_id, str(client_type))
            if location is not None:
                routes[client_type] = location
        return routes


def _disconnect(client: RedisClient | None, redis) -> defer.Deferred:
    if client is not None:
        return client.disconnect()
    return defer.maybeDeferred(redis.disconnect).addBoth(lambda _: None)


@implementer(IUserEvents)
class RedisUserEvents(RedisComponent):
    """
    L{IUserEvents} on Redis: C{mp:oul:<publicIp>} and the online/offline
    channels, exactly as Java nodes write them; beside them, which node put
    each user there (C{mp:ouln:<host>:<port>}, C{mp:oulc:<publicIp>},
    C{mp:oulip}), so nodes sharing an IP leave each other's users alone.

    @param gateway: this node's gateway endpoint C{(host, port)}, its
        identity among the nodes sharing the list.
    """

    def __init__(
        self,
        redis,
        public_ip: str,
        clock: IReactorTime,
        timeout: float = 2.0,
        *,
        gateway: tuple[str, int],
        close_connection: bool = False,
    ) -> None:
        self.public_ip = public_ip
        self._key = online_users_key(public_ip)
        host, port = gateway
        self._member = encode_node_member(host, port)
        self._gateway = (host, port)
        self._cluster = is_cluster(redis)
        self._keys = self._list_keys(public_ip, host, port)
        self._calls = BoundedRedis(redis, clock, timeout, "redis user events", RouterUnavailable)
        self._redis = self._calls.redis
        self._client = _client_of(redis)
        self._close_connection = close_connection
        self._events: TurnBatch = TurnBatch(clock, self._send_events, refusal=partial(self._calls.refusal, "online/offline events"))

    def _list_keys(self, ip: str, host: str, port: int) -> list[str]:
        """
        The online list of C{ip}, its counts, node C{host:port}'s set and the
        node-to-IP map; in a cluster, ours in the list's slot (the map is then
        one per list, beside the global one that says where to look).
        """
        users = online_users_key(ip)
        ours = [online_counts_key(ip), node_online_key(host, port), ONLINE_IPS_KEY]
        if self._cluster:
            ours = [colocated(key, users) for key in ours]
        return [users, *ours]

    def user_online(self, user_id: str) -> defer.Deferred:
        return self._event(user_id, ONLINE_CHANNEL)

    def user_offline(self, user_id: str) -> defer.Deferred:
        return self._event(user_id, OFFLINE_CHANNEL)

    def _event(self, user_id: str, channel: str) -> defer.Deferred:
        if not isinstance(user_id, str):
            return defer.fail(TypeError(f"user id must be text, not {type(user_id).__name__}"))
        return self._events.submit(("1" if channel == ONLINE_CHANNEL else "0", user_id))

    def _send_events(self, events: list[tuple[str, str]]) -> defer.Deferred:
        args = [ONLINE_CHANNEL, OFFLINE_CHANNEL, self._member, self.public_ip]
        for event in events:
            args += event

        def send() -> defer.Deferred:
            sent = self._redis.eval(_EVENTS, self._keys, args)
            if not self._cluster:
                return sent
            # Where survivors look up this node's IP (another slot).
            mapped = self._redis.hset(ONLINE_IPS_KEY, self._member, self.public_ip)
            return defer.gatherResults([sent, mapped], consumeErrors=True).addErrback(
                lambda failure: failure.value.subFailure
            )

        return self._calls.call("online/offline events", send, lambda _: [None] * len(events))

    def count_online(self) -> defer.Deferred:
        return self._calls.call("count_online", lambda: self._redis.zcard(self._key), int)

    @defer.inlineCallbacks
    def clear(self):
        # Our own IP is tried first, so that at a start the first command
        # sent is the clean-up itself, ahead of any new bind's events.
        yield self._release(*self._gateway, dead=False, ip=self.public_ip)
        keys = self._keys[:2]
        yield self._calls.call("clear", lambda: self._redis.eval(_SWEEP_UNCLAIMED, keys, []), lambda _: None)

    def release_node(self, host: str, port: int) -> defer.Deferred:
        try:
            encode_node_member(host, port)
        except Exception:
            return defer.fail()
        return self._release(host, port, dead=True)

    @defer.inlineCallbacks
    def _release(self, host: str, port: int, *, dead: bool, ip: str | None = None):
        member = encode_node_member(host, port)
        for _ in range(_CAS_ATTEMPTS):
            if ip is None:
                # The IP the node wrote its users under: a dead node's, or
                # ours before a restart with another public IP.
                ip = yield self._calls.call("release", lambda: self._redis.hget(ONLINE_IPS_KEY, member))
                if ip is None:
                    return 0
                if isinstance(ip, bytes):
                    ip = ip.decode("utf-8", "replace")
            keys = self._list_keys(ip, host, port)
            if not self._cluster:
                keys.append(node_key(host, port))
                dead_check = "1" if dead else "0"
            else:
                # The registration is in another slot: asked first, so a
                # node that comes back in between still cleans up after itself.
                if dead:
                    back = yield self._calls.call("release", lambda: self._redis.exists(node_key(host, port)), int)
                    if back:
                        return 0
                keys.append(keys[3])
                dead_check = "0"
            gone = yield self._calls.call(
                "release", lambda: self._redis.eval(_RELEASE_NODE, keys, [member, ip, dead_check]), int
            )
            if gone != -2:
                if self._cluster and gone >= 0:
                    yield self._calls.call("release", lambda: self._redis.hdel(ONLINE_IPS_KEY, member), int)
                return max(gone, 0)
            ip = None
        return 0

    def close(self) -> defer.Deferred:
        self._calls.close()
        if self._close_connection:
            return _disconnect(self._client, self._redis)
        return defer.succeed(None)


@implementer(IKickChannel)
class RedisKickChannel(RedisComponent):
    """
    L{IKickChannel} on Redis pub/sub.  Listening needs a connection of its
    own in subscriber mode (L{RedisSubscriber}, reconnecting and
    resubscribing); publishing goes through C{publisher}, a L{RedisClient}
    (a one-connection pool to C{url} of our own when not given).
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        clock: IReactorTime,
        timeout: float = 2.0,
        *,
        publisher: RedisClient | None = None,
        max_retry_delay: float = 5.0,
        ping_interval: float = 5.0,
    ) -> None:
        timeout = check_timeout(timeout)
        parse_redis_url(url)  # a bad URL fails here, not at the first listen
        self._own_publisher = publisher is None
        if publisher is None:
            publisher = connect_redis(url, clock, poolsize=1, max_retry_delay=max_retry_delay)
        self._publisher = publisher
        self._calls = BoundedRedis(publisher, clock, timeout, "redis kick channel", RouterUnavailable)
        self._kicks: TurnBatch = TurnBatch(clock, self._publish_many, refusal=partial(self._calls.refusal, "publish"))
        self._url = url
        self._clock = clock
        self._timeout = timeout
        self._max_retry_delay = max_retry_delay
        self._ping_interval = ping_interval
        check_timeout(ping_interval)
        # Made on the first listen: a node that only publishes needs none.
        self._subscriber: RedisSubscriber | None = None
        self._closed = False

    @property
    def subscriber(self) -> RedisSubscriber | None:
        """The subscriber connection once listening (health checks, tests)."""
        return self._subscriber

    def publish(self, kick: KickRequest) -> defer.Deferred:
        try:
            channel, message = kick_message(kick)
        except Exception:
            return defer.fail()
        return self._kicks.submit((channel, message))

    def _publish_many(self, kicks: list[tuple[str, str]]) -> defer.Deferred:
        args = [part for kick in kicks for part in kick]
        return self._calls.call(
            "publish", lambda: self._calls.redis.eval(_PUBLISH_MANY, [], args), lambda reached: [int(n) for n in reached]
        )

    def listen(self, host: str, port: int, on_kick: Callable[[KickRequest], object]) -> defer.Deferred:
        if self._closed:
            return defer.fail(RouterUnavailable("redis kick channel is closed"))
        try:
            channel = kick_channel(host, port)
            if not callable(on_kick):
                raise TypeError("on_kick must be callable")
        except Exception:
            return defer.fail()

        def on_message(message) -> None:
            deliver_kick(self.log, host, port, on_kick, message)

        if self._subscriber is None:
            self._subscriber = RedisSubscriber(
                self._url,
                self._clock,
                timeout=self._timeout,
                max_retry_delay=self._max_retry_delay,
                ping_interval=self._ping_interval,
                purpose="kicks",
            )
        return self._subscriber.subscribe(channel, on_message)

    def close(self) -> defer.Deferred:
        self._closed = True
        self._calls.close()
        closing = []
        if self._subscriber is not None:
            closing.append(self._subscriber.close())
        if self._own_publisher:
            closing.append(self._publisher.disconnect())
        return defer.gatherResults(closing, consumeErrors=True).addBoth(lambda _: None)


@implementer(INodeRegistry)
class RedisNodeRegistry(RedisComponent):
    """
    L{INodeRegistry} on Redis: C{mp:node:<host>:<port>} holds this node's
    NodeInfo JSON with a TTL refreshed every C{refresh} seconds, and
    C{mp:nodes} lists every node ever registered until one of the others
    notices the key has gone (SREM answers 1 to exactly one of them).

    A key that went because Redis was out is no death: every node missed its
    refreshes then.  So after any failed call of its own, a registry reports
    no node dead for a full C{ttl}, the time each live node has to write its
    key again (C{refresh} is shorter).
    """

    log = Logger()

    def __init__(
        self,
        redis,
        clock: IReactorTime,
        ttl: float = 10.0,
        refresh: float = 3.0,
        timeout: float = 2.0,
        *,
        close_connection: bool = False,
    ) -> None:
        check_registry_options(ttl, refresh)
        self._calls = BoundedRedis(redis, clock, timeout, "redis node registry", RouterUnavailable)
        self._redis = self._calls.redis
        self._client = _client_of(redis)
        self._close_connection = close_connection
        self._clock = clock
        self._ttl_ms = max(1, int(ttl * 1000))
        self._refresh = float(refresh)
        self._info: NodeInfo | None = None
        self._loop: task.LoopingCall | None = None
        self._seen: dict[str, NodeInfo] = {}
        self._callbacks: list[Callable[[NodeInfo], object]] = []
        self._again_callbacks: list[Callable[[], object]] = []
        #: Until when (clock seconds) no node is reported dead: a full ttl
        #: after this registry last failed to reach Redis.
        self._unsure_until = 0.0
        self._calls.failure_observers.append(lambda _name: self._redis_failed())

    def _redis_failed(self) -> None:
        self._unsure_until = self._clock.seconds() + self._ttl_ms / 1000.0

    def register(self, info: NodeInfo) -> defer.Deferred:
        if self._calls.closed:
            return defer.fail(RouterUnavailable("redis node registry is closed"))
        try:
            if not isinstance(info, NodeInfo):
                raise TypeError(f"not a NodeInfo: {type(info).__name__}")
            info.to_json()
        except Exception:
            return defer.fail()
        self._info = info
        if self._loop is None:
            self._loop = task.LoopingCall(self._tick)
            self._loop.clock = self._clock
            self._loop.start(self._refresh, now=False).addErrback(
                lambda f: self.log.failure("node registry refresh stopped", f)
            )
        return self._write(first=True)

    def _write(self, first: bool = False) -> defer.Deferred:
        info = self._info
        key = node_key(info.host, info.port)
        member = encode_node_member(info.host, info.port)
        value = info.to_json()
        redis = self._redis

        def send():
            return redis.set(key, value, pexpire=self._ttl_ms).addCallback(lambda _: redis.sadd(NODES_KEY, member))

        def written(added) -> None:
            if not first and added == 1:
                # Someone found us expired: they may have marked our routes
                # offline.
                self.log.warn(
                    "node {member} had expired from the registry and was re-registered",
                    member=member,
                )
                call_registered_again(self._again_callbacks, self.log)

        return self._calls.call("register", send, written)

    def _tick(self) -> defer.Deferred | None:
        if self._info is None or self._calls.closed:
            return None
        d = self._write()
        d.addCallback(lambda _: self.check_nodes())
        d.addErrback(self._refresh_failed)
        return d

    def _refresh_failed(self, failure) -> None:
        # The loop must go on; an outage is already logged (once) by the
        # bounded calls.
        self._redis_failed()
        if not failure.check(RouterUnavailable):
            self.log.failure("node registry refresh failed", failure)

    def _read_live(self):
        """(members, {member: NodeInfo of the live ones}) in one bounded call."""
        redis = self._redis

        def send():
            def got_members(members):
                members = sorted(str(m) if not isinstance(m, bytes) else m.decode("utf-8", "replace") for m in members)
                if not members:
                    return members, []
                keys = []
                for member in members:
                    try:
                        host, port = decode_node_member(member)
                        keys.append(node_key(host, port))
                    except InvalidNodeInfo:
                        keys.append(node_key(member, 0))  # never exists
                return redis.mget(keys).addCallback(lambda values: (members, values))

            return redis.smembers(NODES_KEY).addCallback(got_members)

        return self._calls.call("nodes", send, self._decode_live)

    def _decode_live(self, reply) -> tuple[list[str], dict[str, NodeInfo]]:
        members, values = reply
        live = {}
        for member, value in zip(members, values):
            if value is None:
                continue
            try:
                info = NodeInfo.from_json(value)
            except InvalidNodeInfo as e:
                self.log.warn("ignoring bad node registration {member}: {why}", member=member, why=e)
                continue
            live[member] = info
            self._seen[member] = info
        return members, live

    def nodes(self) -> defer.Deferred:
        d = self._read_live()
        d.addCallback(lambda r: sorted(r[1].values(), key=lambda n: (n.host, n.port)))
        return d

    def is_alive(self, host: str, port: int) -> defer.Deferred:
        try:
            key = node_key(host, port)
        except Exception:
            return defer.fail()
        return self._calls.call("is_alive", lambda: self._redis.exists(key), lambda n: bool(int(n)))

    @defer.inlineCallbacks
    def check_nodes(self):
        members, live = yield self._read_live()
        own = encode_node_member(self._info.host, self._info.port) if self._info else None
        dead = []
        if self._clock.seconds() < self._unsure_until:
            # Redis was out for us lately, so maybe for them: wait.
            return dead
        for member in members:
            if member == own or member in live:
                continue
            removed = yield self._calls.call(
                "check_nodes", lambda m=member: self._redis.srem(NODES_KEY, m), int
            )
            if removed != 1:
                continue  # another node got there first
            info = self._seen.pop(member, None)
            if info is None:
                try:
                    info = NodeInfo.from_member(member)
                except InvalidNodeInfo as e:
                    self.log.warn("dropped bad node member {member!r}: {why}", member=member, why=e)
                    continue
            dead.append(info)
        for info in dead:
            self._report_dead(info)
        return dead

    def _report_dead(self, info: NodeInfo) -> None:
        self.log.info("node {host}:{port} is dead", host=info.host, port=info.port)
        for callback in list(self._callbacks):
            d = defer.maybeDeferred(callback, info)
            d.addErrback(
                lambda f, info=info: self.log.failure(
                    "node-dead callback failed for {host}:{port}", f, host=info.host, port=info.port
                )
            )

    def on_registered_again(self, callback: Callable[[], object]) -> None:
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._again_callbacks.append(callback)

    def on_node_dead(self, callback: Callable[[NodeInfo], object]) -> None:
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._callbacks.append(callback)

    def unregister(self) -> defer.Deferred:
        self._stop_loop()
        info, self._info = self._info, None
        if info is None:
            return defer.succeed(None)
        key = node_key(info.host, info.port)
        member = encode_node_member(info.host, info.port)
        redis = self._redis
        return self._calls.call(
            "unregister",
            lambda: redis.delete(key).addCallback(lambda _: redis.srem(NODES_KEY, member)),
            lambda _: None,
        )

    def _stop_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def close(self) -> defer.Deferred:
        self._stop_loop()
        self._calls.close()
        if self._close_connection:
            return _disconnect(self._client, self._redis)
        return defer.succeed(None)

"""
Routing state in process memory: one node with nothing else installed (the
embedded default), and the reference the Redis implementation is tested
against.

The shared state (L{MemoryRoutingState}) plays the part of Redis: the
values are kept as the same MPush strings, hashes, sets and channels, so both
implementations go through the same codecs and the same ownership rules, and
several "nodes" in one process (tests) can share one state.  Every Deferred
returned here has already fired; pub/sub delivery is on the next turn of the
clock (C{callLater(0)}), as a message really published would arrive.
"""

from __future__ import annotations

import collections
from functools import partial

from typing import Callable

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mpush.protocol.routing import (
    NODES_KEY,
    OFFLINE_CHANNEL,
    ONLINE_CHANNEL,
    ONLINE_IPS_KEY,
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

__all__ = [
    "MemoryKickChannel",
    "MemoryNodeRegistry",
    "MemoryRemoteRouter",
    "MemoryRoutingState",
    "MemoryUserEvents",
]


class MemoryRoutingState:
    """
    What Redis would hold, for routers in one process: hashes, sets, sorted
    set members, expiring strings and pub/sub channels, by Redis key.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        #: hashes: key -> field -> value (C{mp:ur:<userId>})
        self.hashes: dict[str, dict[str, str]] = {}
        #: sets and sorted sets (scores are all 0): key -> members
        self.sets: dict[str, set[str]] = {}
        #: strings with an optional expiry: key -> (deadline or None, value)
        self.strings: dict[str, tuple[float | None, str]] = {}
        self._subscribers: dict[str, list[Callable[[str], object]]] = {}

    # hashes
    def hget(self, key: str, field: str) -> str | None:
        return self.hashes.get(key, {}).get(field)

    def hset(self, key: str, field: str, value: str) -> None:
        self.hashes.setdefault(key, {})[field] = value

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self.hashes.get(key, {}))

    def hdel(self, key: str, field: str) -> None:
        fields = self.hashes.get(key)
        if fields is not None:
            fields.pop(field, None)
            if not fields:
                del self.hashes[key]

    # sets
    def sadd(self, key: str, member: str) -> bool:
        members = self.sets.setdefault(key, set())
        added = member not in members
        members.add(member)
        return added

    def srem(self, key: str, member: str) -> bool:
        members = self.sets.get(key)
        if members is None or member not in members:
            return False
        members.discard(member)
        if not members:
            del self.sets[key]
        return True

    def smembers(self, key: str) -> set[str]:
        return set(self.sets.get(key, ()))

    def delete(self, key: str) -> None:
        self.sets.pop(key, None)
        self.hashes.pop(key, None)
        self.strings.pop(key, None)

    # expiring strings
    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        deadline = None if ttl is None else self.clock.seconds() + ttl
        self.strings[key] = (deadline, value)

    def get(self, key: str) -> str | None:
        entry = self.strings.get(key)
        if entry is None:
            return None
        deadline, value = entry
        if deadline is not None and self.clock.seconds() >= deadline:
            del self.strings[key]
            return None
        return value

    # pub/sub
    def publish(self, channel: str, message: str) -> int:
        """Deliver on the next clock turn; returns the number of subscribers."""
        subscribers = list(self._subscribers.get(channel, ()))
        for subscriber in subscribers:
            self.clock.callLater(0, self._deliver, subscriber, channel, message)
        return len(subscribers)

    def subscribe(self, channel: str, subscriber: Callable[[str], object]) -> None:
        self._subscribers.setdefault(channel, []).append(subscriber)

    def unsubscribe(self, channel: str, subscriber: Callable[[str], object]) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers and subscriber in subscribers:
            subscribers.remove(subscriber)
            if not subscribers:
                del self._subscribers[channel]

    def subscribed(self, channel: str, subscriber: Callable[[str], object]) -> bool:
        return subscriber in self._subscribers.get(channel, ())

    def _deliver(self, subscriber: Callable[[str], object], channel: str, message: str) -> None:
        # Unsubscribed since the publish: a real subscriber would not get it.
        if not self.subscribed(channel, subscriber):
            return
        try:
            subscriber(message)
        except Exception:
            self.log.failure("subscriber of {channel} failed", channel=channel)


class _Closable:
    """A C{closed} flag that turns every later call into L{RouterUnavailable}."""

    _what = "memory router"

    def __init__(self) -> None:
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RouterUnavailable(f"{self._what} is closed")

    def close(self) -> defer.Deferred:
        self._closed = True
        return defer.succeed(None)


def _fired(function: Callable, *args) -> defer.Deferred:
    """Run now and hand back a fired Deferred, failures included."""
    try:
        return defer.succeed(function(*args))
    except Exception:
        return defer.fail()


@implementer(IRemoteRouter)
class MemoryRemoteRouter(_Closable):
    """L{IRemoteRouter} on a L{MemoryRoutingState}."""

    _what = "memory remote router"
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        state: MemoryRoutingState | None = None,
        max_offline_routes: int = 100_000,
    ) -> None:
        super().__init__()
        self.state = state if state is not None else MemoryRoutingState(clock)
        # Redis keeps offline routes forever (MPush never deletes them); one
        # process must not: the oldest offline routes beyond this are dropped,
        # which reads the same (no route is as offline as an offline one).
        self.max_offline_routes = max_offline_routes
        self._offline = collections.OrderedDict()

    def register(self, user_id: str, client_type: int, location: ClientLocation) -> defer.Deferred:
        return _fired(self._register, user_id, client_type, location)

    def _register(self, user_id: str, client_type: int, location: ClientLocation) -> ClientLocation | None:
        self._check_open()
        key = user_route_key(user_id)
        field = client_type_field(client_type)
        value = encode_location(location)
        member = encode_route_member(user_id, client_type)
        old = self.state.hget(key, field)
        self.state.hset(key, field, value)
        self._offline.pop((key, field), None)
        indexed = location.host is not None and location.online
        if indexed:
            self.state.sadd(node_routes_key(location.host, location.port), member)
        previous = self._decode(old, user_id, field)
        if previous is not None and previous.host is not None and not (
            indexed and previous.gateway == location.gateway
        ):
            self.state.srem(node_routes_key(previous.host, previous.port), member)
        return previous

    def lookup(self, user_id: str) -> defer.Deferred:
        return _fired(self._lookup, user_id)

    def _lookup(self, user_id: str) -> dict[int, ClientLocation]:
        self._check_open()
        routes = {}
        for field, value in self.state.hgetall(user_route_key(user_id)).items():
            try:
                client_type = parse_client_type_field(field)
            except InvalidRouteField as e:
                self.log.warn("skipping route {user}/{field!r}: {why}", user=user_id, field=field, why=e)
                continue
            location = self._decode(value, user_id, field)
            if location is not None:
                routes[client_type] = location
        return routes

    def lookup_many(self, user_ids: list[str]) -> defer.Deferred:
        return _fired(lambda: [self._lookup(user_id) for user_id in user_ids])

    def lookup_type(self, user_id: str, client_type: int) -> defer.Deferred:
        return _fired(self._lookup_type, user_id, client_type)

    def _lookup_type(self, user_id: str, client_type: int) -> ClientLocation | None:
        self._check_open()
        field = client_type_field(client_type)
        return self._decode(self.state.hget(user_route_key(user_id), field), user_id, field)

    def mark_offline(
        self,
        user_id: str,
        client_type: int,
        conn_id: str | None = None,
        device_id: str | None = None,
    ) -> defer.Deferred:
        return _fired(self._mark_offline, user_id, client_type, conn_id, device_id)

    def _mark_offline(self, user_id, client_type, conn_id, device_id) -> bool:
        self._check_open()
        key = user_route_key(user_id)
        field = client_type_field(client_type)
        location = self._decode(self.state.hget(key, field), user_id, field)
        if location is None or not location.owned_by(conn_id, device_id):
            return False
        self._write_offline(key, field, location, encode_route_member(user_id, client_type))
        return True

    def mark_node_offline(self, host: str, port: int, unless_back: bool = False) -> defer.Deferred:
        return _fired(self._mark_node_offline, host, port, unless_back)

    def _mark_node_offline(self, host: str, port: int, unless_back: bool = False) -> int:
        self._check_open()
        index = node_routes_key(host, port)
        count = 0
        if unless_back and self.state.get(node_key(host, port)) is not None:
            return count
        for member in self.state.smembers(index):
            self.state.srem(index, member)
            try:
                user_id, client_type = decode_route_member(member)
            except InvalidRouteField as e:
                self.log.warn("dropping bad route index member {member!r}: {why}", member=member, why=e)
                continue
            key = user_route_key(user_id)
            field = client_type_field(client_type)
            location = self._decode(self.state.hget(key, field), user_id, field)
            if location is not None and location.online and location.gateway == (host, port):
                self._write_offline(key, field, location, member)
                count += 1
        return count

    def _write_offline(self, key: str, field: str, location: ClientLocation, member: str) -> None:
        self.state.hset(key, field, encode_location(location.offline()))
        if location.host is not None:
            self.state.srem(node_routes_key(location.host, location.port), member)
        self._offline[(key, field)] = None
        self._offline.move_to_end((key, field))
        while len(self._offline) > self.max_offline_routes:
            (old_key, old_field), _ = self._offline.popitem(last=False)
            self.state.hdel(old_key, old_field)

    def _decode(self, value: str | None, user_id: str, field: str) -> ClientLocation | None:
        if value is None:
            return None
        try:
            return decode_location(value)
        except InvalidLocation as e:
            self.log.warn("ignoring undecodable route {user}/{field}: {why}", user=user_id, field=field, why=e)
            return None


@implementer(IUserEvents)
class MemoryUserEvents(_Closable):
    """L{IUserEvents} on a L{MemoryRoutingState}, as L{mpush.router.redis} keeps it."""

    _what = "memory user events"

    def __init__(
        self,
        public_ip: str,
        clock: IReactorTime,
        state: MemoryRoutingState | None = None,
        *,
        gateway: tuple[str, int],
    ) -> None:
        super().__init__()
        self.public_ip = public_ip
        self._key = online_users_key(public_ip)
        self._gateway = gateway
        self.state = state if state is not None else MemoryRoutingState(clock)

    def user_online(self, user_id: str) -> defer.Deferred:
        return _fired(self._event, user_id, True)

    def user_offline(self, user_id: str) -> defer.Deferred:
        return _fired(self._event, user_id, False)

    def _event(self, user_id: str, online: bool) -> None:
        self._check_open()
        if not isinstance(user_id, str):
            raise TypeError(f"user id must be text, not {type(user_id).__name__}")
        state = self.state
        host, port = self._gateway
        counts, mine = online_counts_key(self.public_ip), node_online_key(host, port)
        state.hset(ONLINE_IPS_KEY, encode_node_member(host, port), self.public_ip)
        if online:
            state.sadd(self._key, user_id)
            if state.sadd(mine, user_id):
                state.hset(counts, user_id, str(int(state.hget(counts, user_id) or 0) + 1))
            state.publish(ONLINE_CHANNEL, user_id)
        else:
            left = int(state.hget(counts, user_id) or 0)
            if state.srem(mine, user_id):
                left -= 1
                state.hset(counts, user_id, str(left))
            if left <= 0:
                state.hdel(counts, user_id)
                state.srem(self._key, user_id)
            state.publish(OFFLINE_CHANNEL, user_id)

    def count_online(self) -> defer.Deferred:
        return _fired(self._count)

    def _count(self) -> int:
        self._check_open()
        return len(self.state.sets.get(self._key, ()))

    def clear(self) -> defer.Deferred:
        return _fired(self._clear)

    def _clear(self) -> None:
        self._check_open()
        self._release(*self._gateway, dead=False)
        if online_counts_key(self.public_ip) not in self.state.hashes:
            self.state.delete(self._key)

    def release_node(self, host: str, port: int) -> defer.Deferred:
        return _fired(partial(self._release, dead=True), host, port)

    def _release(self, host: str, port: int, *, dead: bool) -> int:
        self._check_open()
        state = self.state
        member = encode_node_member(host, port)
        ip = state.hget(ONLINE_IPS_KEY, member)
        if ip is None or (dead and state.get(node_key(host, port)) is not None):
            return 0
        counts, listed, mine = online_counts_key(ip), online_users_key(ip), node_online_key(host, port)
        gone = 0
        for user_id in state.smembers(mine):
            left = int(state.hget(counts, user_id) or 0) - 1
            if left > 0:
                state.hset(counts, user_id, str(left))
                continue
            state.hdel(counts, user_id)
            state.srem(listed, user_id)
            gone += 1
        state.delete(mine)
        state.hdel(ONLINE_IPS_KEY, member)
        return gone


@implementer(IKickChannel)
class MemoryKickChannel(_Closable):
    """L{IKickChannel} within one process, through a L{MemoryRoutingState}."""

    _what = "memory kick channel"
    log = Logger()

    def __init__(self, clock: IReactorTime, state: MemoryRoutingState | None = None) -> None:
        super().__init__()
        self.state = state if state is not None else MemoryRoutingState(clock)
        self._listening: list[tuple[str, Callable[[str], None]]] = []

    def publish(self, kick: KickRequest) -> defer.Deferred:
        return _fired(self._publish, kick)

    def _publish(self, kick: KickRequest) -> int:
        self._check_open()
        channel, message = kick_message(kick)
        return self.state.publish(channel, message)

    def listen(self, host: str, port: int, on_kick: Callable[[KickRequest], object]) -> defer.Deferred:
        return _fired(self._listen, host, port, on_kick)

    def _listen(self, host: str, port: int, on_kick: Callable[[KickRequest], object]) -> None:
        self._check_open()
        if not callable(on_kick):
            raise TypeError("on_kick must be callable")
        channel = kick_channel(host, port)

        def subscriber(message: str) -> None:
            deliver_kick(self.log, host, port, on_kick, message)

        self.state.subscribe(channel, subscriber)
        self._listening.append((channel, subscriber))

    def close(self) -> defer.Deferred:
        listening, self._listening = self._listening, []
        for channel, subscriber in listening:
            self.state.unsubscribe(channel, subscriber)
        return super().close()


@implementer(INodeRegistry)
class MemoryNodeRegistry(_Closable):
    """
    L{INodeRegistry} on a L{MemoryRoutingState}: registrations are expiring
    strings refreshed by a C{LoopingCall} on the clock, exactly as in Redis.
    """

    _what = "memory node registry"
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        state: MemoryRoutingState | None = None,
        ttl: float = 10.0,
        refresh: float = 3.0,
    ) -> None:
        super().__init__()
        check_registry_options(ttl, refresh)
        self.state = state if state is not None else MemoryRoutingState(clock)
        self._clock = clock
        self._ttl = float(ttl)
        self._refresh = float(refresh)
        self._info: NodeInfo | None = None
        self._loop: task.LoopingCall | None = None
        self._seen: dict[str, NodeInfo] = {}
        self._callbacks: list[Callable[[NodeInfo], object]] = []
        self._again_callbacks: list[Callable[[], object]] = []

    def register(self, info: NodeInfo) -> defer.Deferred:
        return _fired(self._register, info)

    def _register(self, info: NodeInfo) -> None:
        self._check_open()
        if not isinstance(info, NodeInfo):
            raise TypeError(f"not a NodeInfo: {type(info).__name__}")
        info.to_json()  # refuse what could not be written
        self._info = info
        self._write(first=True)
        if self._loop is None:
            self._loop = task.LoopingCall(self._tick)
            self._loop.clock = self._clock
            self._loop.start(self._refresh, now=False)

    def _write(self, first: bool = False) -> None:
        info = self._info
        self.state.set(node_key(info.host, info.port), info.to_json(), self._ttl)
        added = self.state.sadd(NODES_KEY, encode_node_member(info.host, info.port))
        if added and not first:
            self.log.warn("node {host}:{port} had expired from the registry and was re-registered",
                          host=info.host, port=info.port)
            call_registered_again(self._again_callbacks, self.log)

    def _tick(self) -> None:
        if self._closed or self._info is None:
            return
        self._write()
        self._check_nodes()

    def nodes(self) -> defer.Deferred:
        return _fired(self._nodes)

    def _nodes(self) -> list[NodeInfo]:
        self._check_open()
        live = []
        for member in self.state.smembers(NODES_KEY):
            info = self._read(member)
            if info is not None:
                live.append(info)
        return sorted(live, key=lambda n: (n.host, n.port))

    def _read(self, member: str) -> NodeInfo | None:
        try:
            host, port = decode_node_member(member)
        except InvalidNodeInfo:
            return None
        value = self.state.get(node_key(host, port))
        if value is None:
            return None
        try:
            info = NodeInfo.from_json(value)
        except InvalidNodeInfo as e:
            self.log.warn("ignoring bad node registration {member}: {why}", member=member, why=e)
            return None
        self._seen[member] = info
        return info

    def is_alive(self, host: str, port: int) -> defer.Deferred:
        return _fired(self._is_alive, host, port)

    def _is_alive(self, host: str, port: int) -> bool:
        self._check_open()
        return self.state.get(node_key(host, port)) is not None

    def check_nodes(self) -> defer.Deferred:
        return _fired(self._check_nodes)

    def _check_nodes(self) -> list[NodeInfo]:
        self._check_open()
        own = encode_node_member(self._info.host, self._info.port) if self._info else None
        dead = []
        for member in sorted(self.state.smembers(NODES_KEY)):
            if member == own or self._read(member) is not None:
                continue
            # Whoever removes the member reports it: once across all nodes.
            if not self.state.srem(NODES_KEY, member):
                continue
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
        return _fired(self._unregister)

    def _unregister(self) -> None:
        self._check_open()
        self._stop_loop()
        info, self._info = self._info, None
        if info is not None:
            self.state.delete(node_key(info.host, info.port))
            self.state.srem(NODES_KEY, encode_node_member(info.host, info.port))

    def _stop_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def close(self) -> defer.Deferred:
        self._stop_loop()
        return super().close()

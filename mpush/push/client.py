"""
The push client for Python back-ends: find where a user is connected, hand
the push to that node's gateway, and report one result per route (spec
12.7), like MPush's Java PushSender, with three differences:

 - every push ends with a result (Java can leave a callback uncalled on an
   unexpected ERROR code, spec 12.7 step 5), and every wait is bounded;
 - requests carry L{REPORT_TIMEOUTS}, so nodes answer ACK_TIMEOUT instead of
   staying silent when the device did not ack in time;
 - no route cache: each push reads C{mp:ur:<userId>} afresh, so a push never
   goes to a route Redis no longer holds (correctness over one HGETALL).

Two ways to find nodes: C{redis_url} (routes in Redis, nodes in our node
registry; nodes shared with Java MPush work) or C{gateway=(host, port)}
(embedded mode: one node, no Redis; pushes go there with client type 0 and
the node delivers to every type the user has on it).
"""

from __future__ import annotations

import json
from typing import Iterable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mpush.protocol.errors import ErrorCode
from mpush.protocol.fields import EXTENDED_LENGTH, INT32_MAX
from mpush.protocol.messages import GatewayPushMessage
from mpush.protocol.packet import DEFAULT_MAX_PACKET_SIZE, Command
from mpush.protocol.routing import InvalidPushResult, decode_push_result
from mpush.push.gateway_client import (
    GatewayConnectFailed,
    GatewayError,
    GatewayPool,
    GatewayReply,
    GatewayTimeout,
    PushTooLarge,
)
from mpush.push.results import (
    REPORT_TIMEOUTS,
    AckModel,
    BroadcastResult,
    PushResult,
    PushStatus,
    node_name,
    status_for_error,
)

__all__ = [
    "DEFAULT_BROADCAST_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "InvalidPush",
    "PushBackendUnavailable",
    "PushClient",
    "PushClientClosed",
    "PushTooLarge",
    "wire_timeout",
]

#: Seconds to wait for a single push's answer (Java's PushContext default).
DEFAULT_TIMEOUT = 3.0
#: Seconds to wait for a node to finish a broadcast: nodes pace broadcasts
#: (3000 pushes/s by default, spec 12.5), so this is far longer.
DEFAULT_BROADCAST_TIMEOUT = 30.0
#: Users pushed to at once by push_many (route lookups and requests in flight).
DEFAULT_CONCURRENCY = 100



class InvalidPush(ValueError):
    """An argument of push, push_many or broadcast is unusable; nothing was sent."""


class PushClientClosed(Exception):
    """The client was closed; it sends nothing more."""


class PushBackendUnavailable(Exception):
    """
    Nodes or routes cannot be read (Redis down, too slow, or no registry):
    a broadcast cannot know where to go.
    """


def wire_timeout(timeout: float) -> int:
    """
    The GATEWAY_PUSH timeout field for a push waiting C{timeout} seconds: like
    Java, 500 ms less than the client waits (so the node answers first), at
    least 1 (0 would mean "no deadline"), at most a Java int.
    """
    ms = int(timeout * 1000) - 500
    return max(1, min(ms, INT32_MAX))


def _now_ms(clock: IReactorTime) -> int:
    return int(clock.seconds() * 1000)


def _check_user(user_id) -> str:
    if not isinstance(user_id, str):
        raise InvalidPush(f"user id must be text, not {type(user_id).__name__}")
    if not user_id:
        raise InvalidPush("user id must not be empty")
    return user_id


def _check_content(content) -> bytes:
    if isinstance(content, (bytearray, memoryview)):
        content = bytes(content)
    if not isinstance(content, bytes):
        raise InvalidPush(f"content must be bytes, not {type(content).__name__}")
    return content


def _check_ack(ack) -> AckModel:
    try:
        return AckModel(ack)
    except ValueError:
        raise InvalidPush(f"ack must be an AckModel (0, 4 or 8), not {ack!r}") from None


def _check_timeout(timeout, default: float) -> float:
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidPush(f"timeout must be a positive number of seconds, not {timeout!r}")
    if timeout == float("inf"):
        raise InvalidPush("timeout must be finite")
    return float(timeout)


def _check_optional_text(value, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidPush(f"{what} must be text or None, not {type(value).__name__}")
    return value


def _check_tags(tags) -> tuple[str, ...] | None:
    if tags is None:
        return None
    if isinstance(tags, (str, bytes)):
        raise InvalidPush("tags must be a collection of text, not one string")
    try:
        items = sorted(tags) if isinstance(tags, (set, frozenset)) else list(tags)
    except TypeError:
        raise InvalidPush(f"tags must be a collection of text, not {tags!r}") from None
    for tag in items:
        if not isinstance(tag, str):
            raise InvalidPush(f"tag {tag!r} is not text")
    return tuple(items)


def _check_gateway(gateway) -> tuple[str, int]:
    try:
        host, port = gateway
    except (TypeError, ValueError):
        raise ValueError(f"gateway must be (host, port), not {gateway!r}") from None
    if not isinstance(host, str) or not host:
        raise ValueError(f"gateway host must be non-empty text, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"gateway port must be 1..65535, not {port!r}")
    return host, port


#: Users a many-user push looks up in one command at most (as many as a
#: turn's batch of one-user look-ups: L{mpush.store.redis_batch.DEFAULT_MAX_ITEMS}).
LOOKUP_CHUNK = 500


class PushClient:
    """
    Push to users and broadcast through mpush (or MPush) gateways.

    Argument errors raise L{InvalidPush} at once; everything that happens
    after that is a result (L{PushResult}, L{BroadcastResult}), never a
    hang: route lookups are bounded by C{redis_timeout}, connects by
    C{connect_timeout}, replies by the push's C{timeout}.

    @param reactor: for TCP connections (and time, unless C{clock} is given).
    @param redis_url: routes from Redis C{mp:ur:<uid>}, nodes from our
        registry there.
    @param gateway: C{(host, port)} of the one node of embedded mode.
    @param router: instead of C{redis_url}, any
        L{mpush.router.interfaces.IRemoteRouter} (e.g. the in-memory one of an
        embedded node); C{registry} an optional
        L{mpush.router.interfaces.INodeRegistry} with it.
    @param timeout: default seconds to wait for a push's answer.
    @param max_packet_size: the gateways' max-packet-size: a push whose frame
        body is larger is refused here (the node would drop the connection).
    @param connector: C{(host, port, protocol) -> Deferred}, for tests.
    @param local: the push centre of the node this client runs in (its
        HTTP API): a route to that node's gateway is pushed in process
        (L{mpush.server.gateway.push_center.PushCenter.push_local}), not through a
        loopback connection to its own gateway.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        *,
        redis_url: str | None = None,
        gateway: tuple[str, int] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        broadcast_timeout: float = DEFAULT_BROADCAST_TIMEOUT,
        connect_timeout: float = 2.0,
        redis_timeout: float = 2.0,
        max_packet_size: int | None = DEFAULT_MAX_PACKET_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        clock: IReactorTime | None = None,
        router=None,
        registry=None,
        connector=None,
        local=None,
    ) -> None:
        chosen = [name for name, value in (("redis_url", redis_url), ("gateway", gateway),
                                           ("router", router)) if value is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of redis_url, gateway or router"
                             + (f" (got {', '.join(chosen)})" if chosen else ""))
        if registry is not None and router is None:
            raise ValueError("registry goes with router")
        self.timeout = _check_timeout(timeout, DEFAULT_TIMEOUT)
        self.broadcast_timeout = _check_timeout(broadcast_timeout, DEFAULT_BROADCAST_TIMEOUT)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, not {concurrency!r}")
        self.clock = clock if clock is not None else reactor
        self.max_packet_size = max_packet_size
        self._concurrency = concurrency
        self._gateway: tuple[str, int] | None = None
        self._router = router
        self._registry = registry
        self._redis = None
        if gateway is not None:
            self._gateway = _check_gateway(gateway)
        if isinstance(redis_timeout, bool) or not isinstance(redis_timeout, (int, float)) \
                or not 0 < redis_timeout < float("inf"):
            raise ValueError(f"redis_timeout must be a positive number of seconds, not {redis_timeout!r}")
        self._pool = GatewayPool(
            reactor,
            clock=self.clock,
            connect_timeout=connect_timeout,
            max_packet_size=max_packet_size,
            connector=connector,
        )
        self._closed = False
        self._local = local
        self._lookups = None
        # Last: from here on there is a connection to close.
        if redis_url is not None:
            self._open_redis(redis_url, redis_timeout)
        if self._router is not None and hasattr(self._router, "lookup_many"):
            # The lookups asked in one reactor turn (a many-user push, or
            # many one-user pushes at once) go to Redis as one command.
            from mpush.store.redis_batch import TurnBatch

            self._lookups = TurnBatch(self.clock, lambda user_ids: self._router.lookup_many(user_ids))

    def _open_redis(self, redis_url: str, redis_timeout: float) -> None:
        # Imported here: txredisapi imports the global reactor, which an
        # embedded-mode client has no use for.
        from mpush.router.redis import RedisNodeRegistry, RedisRemoteRouter
        from mpush.store.redis_connection import connect_redis

        self._redis = connect_redis(redis_url, self.clock, reply_timeout=redis_timeout)
        self._router = RedisRemoteRouter(self._redis, self.clock, timeout=redis_timeout)
        self._registry = RedisNodeRegistry(self._redis, self.clock, timeout=redis_timeout)

    @property
    def embedded(self) -> bool:
        """Whether pushes go to one fixed gateway, without route lookups."""
        return self._gateway is not None

    # ------------------------------------------------------------------ API

    def push(self, user_id: str, content: bytes, ack: AckModel = AckModel.NO_ACK,
             timeout: float | None = None) -> defer.Deferred:
        """
        Push C{content} to every route (client type) of C{user_id}.

        @return: Deferred firing C{list[PushResult]}, one per route, by client
            type; C{[OFFLINE]} when the user has no route.  It never errbacks,
            except with L{PushClientClosed}.
        @raise InvalidPush: a bad argument, or content too large.
        """
        user_id = _check_user(user_id)
        content = _check_content(content)
        ack = _check_ack(ack)
        timeout = _check_timeout(timeout, self.timeout)
        self._check_user_push_size(user_id, content)
        if self._closed:
            return defer.fail(PushClientClosed("push client is closed"))
        return _settled(self._push_user(user_id, content, ack, timeout))

    def push_many(self, user_ids: Iterable[str], content: bytes, ack: AckModel = AckModel.NO_ACK,
                  timeout: float | None = None) -> defer.Deferred:
        """
        L{push} to each user (each once, at most C{concurrency} at a time).

        @return: Deferred firing C{dict[user_id, list[PushResult]]} in the
            order of C{user_ids}.
        """
        if isinstance(user_ids, (str, bytes)):
            raise InvalidPush("user_ids must be a collection of user ids, not one string")
        try:
            users = list(dict.fromkeys(_check_user(user_id) for user_id in user_ids))
        except TypeError:
            raise InvalidPush(f"user_ids must be iterable, not {type(user_ids).__name__}") from None
        content = _check_content(content)
        ack = _check_ack(ack)
        timeout = _check_timeout(timeout, self.timeout)
        if users:
            # The frame's size grows with the user id's UTF-8 length alone.
            longest = max(users, key=lambda user_id: len(user_id.encode("utf-8", "surrogatepass")))
            self._check_user_push_size(longest, content)
        if self._closed:
            return defer.fail(PushClientClosed("push client is closed"))
        if self._lookups is not None and len(users) <= self._concurrency:
            return self._push_users(users, content, ack, timeout)
        if len(users) <= self._concurrency:
            pushes = [self._push_user(user_id, content, ack, timeout) for user_id in users]
        else:
            semaphore = defer.DeferredSemaphore(self._concurrency)
            pushes = [semaphore.run(self._push_user, user_id, content, ack, timeout) for user_id in users]
        return _gather(pushes).addCallback(lambda results: dict(zip(users, results)))

    def broadcast(self, content: bytes, tags: Iterable[str] | None = None, condition: str | None = None,
                  task_id: str | None = None, timeout: float | None = None,
                  ack: AckModel = AckModel.NO_ACK) -> defer.Deferred:
        """
        Broadcast to the users bound on every known node (spec 12.5): each
        node filters by C{condition}, else C{tags}.

        @return: Deferred firing C{list[BroadcastResult]}, one per node (empty
            when no node is registered); errbacks with
            L{PushBackendUnavailable} when the nodes cannot be listed.
        """
        content = _check_content(content)
        tags = _check_tags(tags)
        condition = _check_optional_text(condition, "condition")
        task_id = _check_optional_text(task_id, "task id")
        ack = _check_ack(ack)
        timeout = _check_timeout(timeout, self.broadcast_timeout)
        # Timeout 0 on the wire, like Java: a broadcast has no deadline there.
        message = GatewayPushMessage(None, 0, 0, content, task_id or None, tags, condition)
        self._check_size(message)
        if self._closed:
            return defer.fail(PushClientClosed("push client is closed"))
        return self._broadcast(message, int(ack) | REPORT_TIMEOUTS, timeout)

    def check(self) -> defer.Deferred:
        """
        Fire C{None} once the node registry answers (Redis is reachable);
        errback L{PushBackendUnavailable} otherwise.  Embedded mode has
        nothing to check.
        """
        if self._registry is None:
            return defer.succeed(None)
        d = defer.maybeDeferred(self._registry.nodes)

        def failed(failure):
            raise PushBackendUnavailable(f"cannot read the node registry: {failure.getErrorMessage()}")

        return d.addCallbacks(lambda _: None, failed)

    def close(self) -> defer.Deferred:
        """
        Close gateway connections (unanswered pushes end as FAILURE) and the
        Redis connection.  Fires C{None} when done.
        """
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        closing = [self._pool.close()]
        if self._redis is not None:
            for owned in (self._router, self._registry):
                closing.append(defer.maybeDeferred(owned.close))
            closing.append(self._redis.disconnect())
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

    # ------------------------------------------------------------ internals

    def _check_size(self, message: GatewayPushMessage) -> None:
        try:
            size = len(message.encode())
        except (ValueError, TypeError) as exc:
            raise InvalidPush(f"cannot encode the push: {exc}") from None
        limit = self.max_packet_size
        if limit is not None and size > limit:
            raise PushTooLarge(size, limit)

    def _check_user_push_size(self, user_id: str, content: bytes) -> None:
        """
        L{_check_size} of a push to C{user_id}, counted instead of encoded
        when both fields are short (every push a request makes pays this).
        """
        try:
            user_bytes = len(user_id.encode("utf-8"))
        except UnicodeEncodeError:
            user_bytes = EXTENDED_LENGTH
        if user_bytes >= EXTENDED_LENGTH or len(content) >= EXTENDED_LENGTH:
            self._check_size(GatewayPushMessage(user_id, 0, 0, content))
            return
        # Two length-prefixed fields, two ints, three empty fields.
        size = 2 + user_bytes + 8 + 2 + len(content) + 6
        limit = self.max_packet_size
        if limit is not None and size > limit:
            raise PushTooLarge(size, limit)

    def _push_user(self, user_id: str, content: bytes, ack: AckModel, timeout: float) -> defer.Deferred:
        if self._gateway is not None:
            host, port = self._gateway
            pushed = self._guard(user_id, 0, self._send, user_id, 0, host, port, content, ack, timeout,
                                 [], False)
            if isinstance(pushed, defer.Deferred):
                return pushed.addCallback(_one)
            return defer.succeed([pushed])
        try:
            looked_up = self._lookup(user_id)
        except Exception:
            looked_up = defer.fail()
        return looked_up.addCallbacks(self._push_routes, _lookup_failed, (user_id, content, ack, timeout),
                                      errbackArgs=(user_id,))

    def _push_users(self, users: list[str], content: bytes, ack: AckModel, timeout: float) -> defer.Deferred:
        """
        L{push_many} with a router that looks many users up at once: one
        look-up per chunk of users, then each user's routes pushed with no
        Deferred of its own unless its push waits (an ack, another node).
        """
        looked_up = []
        for start in range(0, len(users), LOOKUP_CHUNK):
            chunk = users[start:start + LOOKUP_CHUNK]
            try:
                found = self._router.lookup_many(chunk)
            except Exception:
                found = defer.fail()
            looked_up.append(found.addCallbacks(self._push_chunk, _chunk_lookup_failed,
                                                (chunk, content, ack, timeout), errbackArgs=(chunk,)))

        def pushed(per_chunk):
            results = [result for chunk_results in per_chunk for result in chunk_results]
            if not any(isinstance(result, defer.Deferred) for result in results):
                return dict(zip(users, results))
            return _gather([result if isinstance(result, defer.Deferred) else defer.succeed(result)
                            for result in results]).addCallback(lambda done: dict(zip(users, done)))

        return _gather(looked_up).addCallback(pushed)

    def _push_chunk(self, found, chunk: list[str], content: bytes, ack: AckModel, timeout: float) -> list:
        """Each user's results (a list, or a Deferred of one) from its routes C{found}."""
        if len(found) != len(chunk):
            return _chunk_lookup_failed(Failure(RuntimeError(f"{len(found)} route sets for {len(chunk)} users")),
                                        chunk)
        return [self._push_routes(routes, user_id, content, ack, timeout)
                for user_id, routes in zip(chunk, found)]

    def _push_routes(self, routes, user_id: str, content: bytes, ack: AckModel, timeout: float):
        """The results of a push to each route: a list, or a Deferred of one while some are under way."""
        if not routes:
            return [PushResult(user_id, 0, PushStatus.OFFLINE, reason="user has no route")]
        pushes = [
            self._guard(user_id, client_type, self._push_route, user_id, client_type, routes[client_type],
                        content, ack, timeout)
            for client_type in sorted(routes)
        ]
        waiting = [pushed for pushed in pushes if isinstance(pushed, defer.Deferred)]
        if not waiting:
            return pushes
        if len(pushes) == 1:
            return waiting[0].addCallback(_one)
        return _gather([pushed if isinstance(pushed, defer.Deferred) else defer.succeed(pushed)
                        for pushed in pushes])

    def _lookup(self, user_id: str) -> defer.Deferred:
        if self._lookups is not None:
            return self._lookups.submit(user_id)
        return self._router.lookup(user_id)

    def _guard(self, user_id: str, client_type: int, push, *args) -> PushResult | defer.Deferred:
        """
        A bug must not turn one route's result into a failed push_many: the
        result of C{push(*args)}, a L{PushResult} when known at once.
        """

        def unexpected(failure):
            self.log.failure("push to {user}/{type} failed unexpectedly", failure,
                             user=user_id, type=client_type)
            return PushResult(user_id, client_type, PushStatus.FAILURE,
                              reason=f"internal error: {failure.getErrorMessage()}")

        try:
            pushed = push(*args)
        except Exception:
            return defer.fail().addErrback(unexpected)
        if not isinstance(pushed, defer.Deferred):
            return pushed
        return pushed.addErrback(unexpected)

    def _push_route(self, user_id, client_type, location, content, ack, timeout, points=None,
                    redirected=False) -> PushResult | defer.Deferred:
        # The type sent is the hash field the route is stored under, which is
        # how nodes index routes; Java recomputes it from osName, which gives
        # the same value for every route a node (Java or ours) wrote.
        points = [] if points is None else points
        if not location.online:
            return PushResult(
                user_id, client_type, PushStatus.OFFLINE, reason="route offline",
                time_points=tuple(points), redirected=redirected,
            )
        host, port = location.gateway
        if not host or not 0 < port < 65536:
            return PushResult(
                user_id, client_type, PushStatus.FAILURE,
                reason=f"route has no usable gateway address ({host!r}, {port!r})",
                time_points=tuple(points), redirected=redirected,
            )
        return self._send(user_id, client_type, host, port, content, ack, timeout, points, redirected)

    def _send(self, user_id, client_type, host, port, content, ack, timeout, points, redirected):
        """One push to one node, and what its answer means."""
        local = self._local
        if local is not None and (host, port) == tuple(local.router_center.gateway):
            return self._send_here(user_id, client_type, host, port, content, ack, timeout, points,
                                   redirected)
        return self._send_gateway(user_id, client_type, host, port, content, ack, timeout, points,
                                  redirected)

    def _send_here(self, user_id, client_type, host, port, content, ack, timeout, points, redirected):
        """The push centre of this process delivers: no frames, no JSON."""
        points.append(("send", _now_ms(self.clock)))
        pushed = self._local.push_local(user_id, client_type, content, int(ack), wire_timeout(timeout))

        def ended(local):
            points.extend(local.points)
            points.append(("reply", _now_ms(self.clock)))
            code = local.error_code
            if code is None:
                return PushResult(user_id, client_type if client_type > 0 else local.client_type,
                                  PushStatus.SUCCESS, node_name(host, port), None, None, tuple(points),
                                  redirected)
            reply = GatewayReply(False, Command.GATEWAY_PUSH, code, ErrorCode(code).reason)
            named = _named_targets(local.routes or {}, client_type)
            return self._answer(reply, local.client_type, named, user_id, client_type, host, port,
                                content, ack, timeout, points, redirected)

        if pushed.outcome is not None:
            # Ended already (the usual case): its result, no Deferred.
            return ended(pushed)
        return pushed.ended().addCallback(ended)

    @defer.inlineCallbacks
    def _send_gateway(self, user_id, client_type, host, port, content, ack, timeout, points, redirected):
        """One GATEWAY_PUSH to one node's gateway port."""
        node = node_name(host, port)
        message = GatewayPushMessage(user_id, client_type, wire_timeout(timeout), content)
        flags = int(ack) | REPORT_TIMEOUTS

        def result(status, code=None, reason=None):
            return PushResult(user_id, client_type, status, node, code, reason, tuple(points), redirected)

        points.append(("send", _now_ms(self.clock)))
        try:
            reply: GatewayReply = yield self._pool.request(host, port, message, flags, timeout)
        except GatewayConnectFailed as exc:
            points.append(("connect-failed", _now_ms(self.clock)))
            alive = yield self._node_alive(host, port)
            if alive is False:
                return result(PushStatus.OFFLINE,
                              reason=f"node {node} is not alive, its routes are stale ({exc.reason})")
            return result(PushStatus.FAILURE, reason=str(exc))
        except GatewayTimeout as exc:
            points.append(("timeout", _now_ms(self.clock)))
            return result(PushStatus.TIMEOUT, reason=str(exc))
        except (GatewayError, ValueError) as exc:
            points.append(("error", _now_ms(self.clock)))
            return result(PushStatus.FAILURE, reason=str(exc))
        reported_type, server_points = self._read_result(reply.data, node)
        points.extend(server_points)
        points.append(("reply", _now_ms(self.clock)))
        named = [] if reply.ok else _redirect_targets(reply.data, client_type)
        answered = yield self._answer(reply, reported_type, named, user_id, client_type, host, port,
                                      content, ack, timeout, points, redirected)
        return answered

    def _answer(self, reply, reported_type, named, user_id, client_type, host, port, content, ack,
                timeout, points, redirected):
        """
        The result a node's answer means (a L{PushResult}, or a Deferred of
        one when a ROUTER_CHANGE is followed): C{named} lists the routes a
        redirect names.
        """
        node = node_name(host, port)

        def result(status, code=None, reason=None, reported_type=0):
            shown_type = client_type if client_type > 0 or reported_type <= 0 else reported_type
            return PushResult(user_id, shown_type, status, node, code, reason, tuple(points), redirected)

        if reply.ok:
            if reply.cmd != Command.GATEWAY_PUSH:
                return result(PushStatus.FAILURE, reason=f"OK for command {reply.cmd}, not a push",
                              reported_type=reported_type)
            return result(PushStatus.SUCCESS, reported_type=reported_type)
        status = status_for_error(reply.cmd, reply.code)
        if status is not None:
            return result(status, reply.code, reply.reason, reported_type)
        # ROUTER_CHANGE: the user moved to another node; follow once.
        if redirected or (self._router is None and not named):
            why = "again after a redirect" if redirected else "and there are no routes to follow"
            return result(PushStatus.FAILURE, reply.code, f"{reply.reason or 'router change'} {why}",
                          reported_type)
        return self._follow(reply, named, user_id, client_type, node, content, ack, timeout, points)

    @defer.inlineCallbacks
    def _follow(self, reply, named, user_id, client_type, node, content, ack, timeout, points):
        """Push again where a ROUTER_CHANGE says the user went (once)."""
        points.append(("redirect", _now_ms(self.clock)))
        if named:
            # An mpush node names where the user is: no lookup needed.
            target_type, target = named[0]
            followed = yield self._send(user_id, target_type, target[0], target[1], content, ack,
                                        timeout, points, True)
            return followed
        try:
            routes = yield self._router.lookup(user_id)
        except Exception as exc:
            return PushResult(user_id, client_type, PushStatus.FAILURE, node, reply.code,
                              f"router change, then route lookup failed: {exc}",
                              tuple(points), True)
        location = routes.get(client_type)
        if location is None:
            return PushResult(user_id, client_type, PushStatus.OFFLINE, None, None,
                              "router change, then no route", tuple(points), True)
        followed = yield self._push_route(user_id, client_type, location, content, ack, timeout,
                                          points, True)
        return followed

    @defer.inlineCallbacks
    def _node_alive(self, host: str, port: int):
        """True/False from the registry; None when there is none or it cannot say."""
        if self._registry is None:
            return None
        try:
            alive = yield self._registry.is_alive(host, port)
        except Exception as exc:
            self.log.warn("cannot ask the node registry about {host}:{port}: {why}",
                          host=host, port=port, why=str(exc))
            return None
        return bool(alive)

    def _read_result(self, data: str | None, node: str) -> tuple[int, list[tuple[str, int]]]:
        if data is None:
            return 0, []
        try:
            _user, client_type, time_points = decode_push_result(data)
        except InvalidPushResult as exc:
            self.log.debug("ignoring unreadable push result from {node}: {why}", node=node, why=str(exc))
            return 0, []
        return client_type, list(time_points)

    @defer.inlineCallbacks
    def _broadcast(self, message: GatewayPushMessage, flags: int, timeout: float):
        if self._gateway is not None:
            nodes = [self._gateway]
        elif self._registry is None:
            raise PushBackendUnavailable("no node registry to find nodes for a broadcast")
        else:
            try:
                infos = yield self._registry.nodes()
            except Exception as exc:
                raise PushBackendUnavailable(f"cannot list nodes: {exc}") from None
            nodes = list(dict.fromkeys((info.host, info.port) for info in infos))
        sends = [self._broadcast_node(host, port, message, flags, timeout) for host, port in nodes]
        results = yield defer.gatherResults(sends, consumeErrors=True)
        return results

    @defer.inlineCallbacks
    def _broadcast_node(self, host, port, message, flags, timeout):
        node = node_name(host, port)
        try:
            reply: GatewayReply = yield self._pool.request(host, port, message, flags, timeout)
        except GatewayTimeout as exc:
            return BroadcastResult(node, PushStatus.TIMEOUT, None, str(exc))
        except (GatewayError, ValueError) as exc:
            return BroadcastResult(node, PushStatus.FAILURE, None, str(exc))
        if reply.ok and reply.cmd == Command.GATEWAY_PUSH:
            return BroadcastResult(node, PushStatus.SUCCESS, _broadcast_count(reply.data), None)
        if reply.ok:
            return BroadcastResult(node, PushStatus.FAILURE, None, f"OK for command {reply.cmd}, not a push")
        status = status_for_error(reply.cmd, reply.code) or PushStatus.FAILURE
        return BroadcastResult(node, status, None, reply.reason, reply.code)


def _settled(chain: defer.Deferred) -> defer.Deferred:
    """
    A Deferred that fires once C{chain} has its final result: C{chain}
    itself counts as called as soon as its first step (the route lookup)
    is done, while the push is still under way.
    """
    settled = defer.Deferred()
    chain.chainDeferred(settled)
    return settled


def _gather(pushes: list[defer.Deferred]) -> defer.Deferred:
    """
    The results of C{pushes} (which never fail: see L{PushClient._guard}) in
    order, once all have fired; lighter than C{gatherResults} for the many
    that fired already.
    """
    results: list = [None] * len(pushes)
    gathered = defer.Deferred()
    remaining = [len(pushes)]

    def one(result, index):
        results[index] = result
        remaining[0] -= 1
        if remaining[0] == 0:
            failed = [item for item in results if isinstance(item, Failure)]
            if failed:
                gathered.errback(failed[0])
            else:
                gathered.callback(results)

    for index, pushed in enumerate(pushes):
        pushed.addBoth(one, index)
    if not pushes:
        gathered.callback(results)
    return gathered


def _one(result: PushResult) -> list[PushResult]:
    return [result]


def _lookup_failed(failure, user_id: str) -> list[PushResult]:
    return [PushResult(user_id, 0, PushStatus.FAILURE, reason=f"route lookup failed: {failure.getErrorMessage()}")]


def _chunk_lookup_failed(failure, chunk: list[str]) -> list[list[PushResult]]:
    return [_lookup_failed(failure, user_id) for user_id in chunk]


def _broadcast_count(data: str | None) -> int | None:
    """N of a broadcast OK's C{{"count": N}}; None when absent or unreadable."""
    if data is None:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    count = value.get("count") if isinstance(value, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return None
    return count


def _redirect_targets(data: str | None, client_type: int) -> list[tuple[int, tuple[str, int]]]:
    """
    The gateways an mpush node's ROUTER_CHANGE names (its result JSON's
    C{"routes": {clientType: "host:port"}}), for C{client_type} (every type
    when it is 0 or less), as C{[(client_type, (host, port))]}.  MPush nodes
    send no such key: the list is empty and the route is looked up again.
    """
    if not data:
        return []
    try:
        routes = json.loads(data).get("routes")
    except (ValueError, AttributeError):
        return []
    if not isinstance(routes, dict):
        return []
    return _named_targets(routes, client_type)


def _named_targets(routes: dict, client_type: int) -> list[tuple[int, tuple[str, int]]]:
    """L{_redirect_targets} of an already decoded C{routes} object."""
    targets = []
    for field, where in sorted(routes.items()):
        try:
            target_type = int(field)
            host, _, port = str(where).rpartition(":")
            target = (host.strip("[]"), int(port))
        except ValueError:
            continue
        if not target[0] or not 0 < target[1] < 65536:
            continue
        if client_type > 0 and target_type != client_type:
            continue
        targets.append((target_type if client_type > 0 else 0, target))
    return targets

"""
Nudges: "run offline delivery again for this user on that connection".

A push that finds its user offline is stored after its route lookup.  A user
who binds in between has had the bind's claim run before the message was
there, so the message would wait for the user's next bind although the user
is online.  Hence the API reads the routes again once the message is stored
and nudges the node of every online route.  A bind registers its route
before it claims, so of the API's second lookup and the bind's claim, one
sees the other: either the claim takes the message, or the lookup finds the
route and the nudge delivers it.  Claims make a second delivery run
harmless.

A node listens on C{/mpush/offline-nudge/<host>:<port>} (its gateway
endpoint, as for kicks); a nudge is a small JSON object.  The channel is
mpush's own: MPush keeps no offline messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mpush.router.interfaces import RouterUnavailable
from mpush.server.device.context import ConnectionState
from mpush.store.redis_calls import BoundedRedis, RedisComponent, check_timeout

__all__ = [
    "MemoryNudgeChannel",
    "Nudge",
    "RedisNudgeChannel",
    "decode_nudge",
    "deliver_nudged",
    "encode_nudge",
    "nudge_channel",
]

_CHANNEL_PREFIX = "/mpush/offline-nudge/"


@dataclass(frozen=True, slots=True)
class Nudge:
    """The route a stored message's user was found on after storing it."""

    user_id: str
    client_type: int
    conn_id: str


def nudge_channel(host: str, port: int) -> str:
    """Where the node with gateway endpoint C{host:port} listens for nudges."""
    return f"{_CHANNEL_PREFIX}{host}:{int(port)}"


def encode_nudge(nudge: Nudge) -> str:
    return json.dumps(
        {"userId": nudge.user_id, "clientType": nudge.client_type, "connId": nudge.conn_id},
        ensure_ascii=False,
    )


def decode_nudge(message: object) -> Nudge:
    """
    @raise ValueError: not a nudge.
    """
    if isinstance(message, bytes):
        message = message.decode("utf-8")
    fields = json.loads(message)
    if not isinstance(fields, dict):
        raise ValueError("a nudge is a JSON object")
    user_id, client_type, conn_id = fields.get("userId"), fields.get("clientType"), fields.get("connId")
    if not (isinstance(user_id, str) and user_id and isinstance(conn_id, str) and conn_id):
        raise ValueError("a nudge needs a userId and a connId")
    if isinstance(client_type, bool) or not isinstance(client_type, int):
        raise ValueError("a nudge needs an int clientType")
    return Nudge(user_id, client_type, conn_id)


def deliver_nudged(center, nudge: Nudge) -> defer.Deferred | None:
    """
    Run C{center}'s offline delivery for C{nudge} if the connection it names
    is still this node's, open and bound to that user; otherwise nothing
    (the user left or bound again, and that bind delivers).

    @return: the delivery's Deferred, or C{None} when none was started.
    """
    if center.offline is None:
        return None
    connection = center.local.lookup(nudge.user_id, nudge.client_type)
    if (
        connection is None
        or connection.conn_id != nudge.conn_id
        or not connection.is_open
        or connection.state is not ConnectionState.BOUND
        or connection.context.user_id != nudge.user_id
    ):
        return None
    return center.offline.deliver(connection, nudge.user_id, center.next_packet_id)


def _receiver(log: Logger, on_nudge: Callable[[Nudge], object]) -> Callable[[object], None]:
    """What a listener does with one channel message: never raise into the transport."""

    def received(message: object) -> None:
        try:
            nudge = decode_nudge(message)
        except (ValueError, UnicodeDecodeError) as error:
            log.warn("dropping bad offline nudge: {why}", why=error)
            return
        try:
            on_nudge(nudge)
        except Exception:
            log.failure("offline nudge for {user} failed", user=nudge.user_id)

    return received


class MemoryNudgeChannel:
    """Nudges between nodes of one process, on a L{MemoryRoutingState}."""

    log = Logger()

    def __init__(self, state) -> None:
        self.state = state
        self._listening: list[tuple[str, Callable[[str], None]]] = []
        self._closed = False

    def publish(self, host: str, port: int, nudge: Nudge) -> defer.Deferred:
        if self._closed:
            return defer.fail(RouterUnavailable("memory nudge channel is closed"))
        return defer.succeed(self.state.publish(nudge_channel(host, port), encode_nudge(nudge)))

    def listen(self, host: str, port: int, on_nudge: Callable[[Nudge], object]) -> defer.Deferred:
        if self._closed:
            return defer.fail(RouterUnavailable("memory nudge channel is closed"))
        channel, subscriber = nudge_channel(host, port), _receiver(self.log, on_nudge)
        self.state.subscribe(channel, subscriber)
        self._listening.append((channel, subscriber))
        return defer.succeed(None)

    def close(self) -> defer.Deferred:
        self._closed = True
        listening, self._listening = self._listening, []
        for channel, subscriber in listening:
            self.state.unsubscribe(channel, subscriber)
        return defer.succeed(None)


class RedisNudgeChannel(RedisComponent):
    """
    Nudges on Redis pub/sub: published through C{publisher} (the node's
    L{RedisClient}), heard on a L{RedisSubscriber} of their own, made on the
    first listen.
    """

    log = Logger()

    def __init__(self, url: str, clock: IReactorTime, publisher, timeout: float = 2.0) -> None:
        self._calls = BoundedRedis(publisher, clock, check_timeout(timeout), "redis offline nudges", RouterUnavailable)
        self._url = url
        self._clock = clock
        self._timeout = timeout
        self._subscriber = None

    def publish(self, host: str, port: int, nudge: Nudge) -> defer.Deferred:
        channel, message = nudge_channel(host, port), encode_nudge(nudge)
        return self._calls.call("publish", lambda: self._calls.redis.publish(channel, message), int)

    def listen(self, host: str, port: int, on_nudge: Callable[[Nudge], object]) -> defer.Deferred:
        if self._calls.closed:
            return defer.fail(RouterUnavailable("redis offline nudges are closed"))
        if self._subscriber is None:
            from mpush.router.pubsub import RedisSubscriber

            self._subscriber = RedisSubscriber(
                self._url, self._clock, timeout=self._timeout, purpose="offline nudges"
            )
        return self._subscriber.subscribe(nudge_channel(host, port), _receiver(self.log, on_nudge))

    def close(self) -> defer.Deferred:
        self._calls.close()
        if self._subscriber is None:
            return defer.succeed(None)
        return self._subscriber.close()

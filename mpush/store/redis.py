"""
Reusable sessions in Redis, readable and writable by MPush's Java nodes.

Key C{mp:rs:<sessionId>}, value MPush's session string, expiry by Redis TTL
(spec 8.2, 19.1).  Redis being down or slow must never hang a handshake or a
fast connect: every call goes through L{BoundedRedis}, so it answers within
C{timeout} seconds with L{StoreUnavailable} if Redis did not, fails at once
during a known outage, and an outage is logged once when it starts and once
when it ends.
"""

from __future__ import annotations

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mpush.protocol.session import (
    InvalidSession,
    ReusableSession,
    decode_reusable_session,
    encode_reusable_session,
)
from mpush.store.interfaces import (
    ISessionStore,
    StoreUnavailable,
    check_session_id,
    check_ttl,
)
from mpush.store.redis_calls import BoundedRedis, RedisComponent, check_timeout
from mpush.store.redis_connection import RedisClient

__all__ = ["KEY_PREFIX", "RedisSessionStore", "session_key"]

#: MPush's CacheKeys.SESSION_KEY prefix.
KEY_PREFIX = "mp:rs:"


def session_key(session_id: str) -> str:
    """The Redis key of a reusable session, as Java nodes spell it."""
    return KEY_PREFIX + session_id


def _wrong_type_is_missing(failure):
    """
    Redis answered that the key holds something else: not a session.
    """
    failure.trap(txredisapi.ResponseError)
    if str(failure.value).startswith("WRONGTYPE"):
        return None
    return failure


@implementer(ISessionStore)
class RedisSessionStore(RedisComponent):
    """
    L{ISessionStore} on Redis.

    @param redis: a L{RedisClient} from
        L{mpush.store.redis_connection.connect_redis} (preferred: it lets the
        store fail fast during an outage), or a bare txredisapi connection
        handler.
    @param clock: times the per-call deadline.
    @param timeout: seconds each call may take before it errbacks with
        L{StoreUnavailable}.
    @param close_connection: whether L{close} also disconnects C{redis}.
        Disconnecting a L{RedisClient} twice is harmless, so stores sharing
        one client may all leave this on.
    """

    log = Logger()

    def __init__(
        self,
        redis,
        clock: IReactorTime,
        timeout: float = 2.0,
        *,
        close_connection: bool = True,
    ) -> None:
        self._calls = BoundedRedis(
            redis, clock, check_timeout(timeout), "redis session store", StoreUnavailable
        )
        self._redis = self._calls.redis
        self._client = redis if isinstance(redis, RedisClient) else None
        self._close_connection = close_connection

    def save(self, session_id: str, session: ReusableSession, ttl: int) -> defer.Deferred:
        try:
            check_session_id(session_id)
            ttl = check_ttl(ttl)
            value = encode_reusable_session(session)
        except Exception:
            return defer.fail()
        key = session_key(session_id)
        # SET ... EX is SET then EXPIRE in one step; Java nodes only GET.
        expire = ttl if ttl > 0 else None
        return self._calls.call("save", lambda: self._redis.set(key, value, expire=expire), _saved)

    def load(self, session_id: str) -> defer.Deferred:
        if not isinstance(session_id, str):
            return defer.fail(
                TypeError(f"session id must be text, not {type(session_id).__name__}")
            )
        if not session_id:
            return defer.succeed(None)
        key = session_key(session_id)
        return self._calls.call(
            "load",
            lambda: self._redis.get(key).addErrback(_wrong_type_is_missing),
            lambda reply: self._decode(reply, session_id),
        )

    def close(self) -> defer.Deferred:
        self._calls.close()
        if not self._close_connection:
            return defer.succeed(None)
        if self._client is not None:
            return self._client.disconnect()
        return defer.maybeDeferred(self._redis.disconnect).addBoth(lambda _: None)

    def _decode(self, reply: object, session_id: str) -> ReusableSession | None:
        if reply is None:
            return None
        if isinstance(reply, str) and not reply.strip():
            return None
        try:
            return decode_reusable_session(reply)
        except InvalidSession as e:
            self.log.debug(
                "ignoring undecodable session {session}: {why}", session=session_id, why=str(e)
            )
            return None


def _saved(_reply: object) -> None:
    return None

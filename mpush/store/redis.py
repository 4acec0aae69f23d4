"""
Reusable sessions in Redis, readable and writable by MPush's Java nodes.

Key C{mp:rs:<sessionId>}, value MPush's session string, expiry by Redis TTL
(spec 8.2, 19.1).  Redis being down or slow must never hang a handshake or a
fast connect: every call answers within C{timeout} seconds of the injected
clock, with L{StoreUnavailable} if Redis did not.  The deadline is a race,
not a cancellation, so a command already sent is left to txredisapi, whose
reply timeout aborts a hung connection and reconnects; a reply that arrives
after the deadline is dropped.  While an outage is known and no connection is
up, calls fail at once instead of queuing behind the reconnect.  An outage is
logged once when it starts and once when it ends.
"""

from __future__ import annotations

from typing import Callable

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
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
from mpush.store.redis_connection import RedisClient

__all__ = ["KEY_PREFIX", "RedisSessionStore", "session_key"]

#: MPush's CacheKeys.SESSION_KEY prefix.
KEY_PREFIX = "mp:rs:"


def session_key(session_id: str) -> str:
    """The Redis key of a reusable session, as Java nodes spell it."""
    return KEY_PREFIX + session_id


class _Call:
    """One store call racing its deadline."""

    __slots__ = ("result", "timer", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self.result: defer.Deferred = defer.Deferred(self._cancelled)
        self.timer: IDelayedCall | None = None

    def _cancelled(self, _) -> None:
        # The caller gave up; the deadline has nothing left to guard.
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


@implementer(ISessionStore)
class RedisSessionStore:
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
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if isinstance(redis, RedisClient):
            self._client: RedisClient | None = redis
            self._redis = redis.redis
        else:
            self._client = None
            self._redis = redis
        self._clock = clock
        self._timeout = float(timeout)
        self._close_connection = close_connection
        self._available = True
        self._last_failure = ""
        self._closed = False
        self._calls: set[_Call] = set()

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
        return self._call("save", lambda: self._redis.set(key, value, expire=expire), _saved)

    def load(self, session_id: str) -> defer.Deferred:
        if not isinstance(session_id, str):
            return defer.fail(
                TypeError(f"session id must be text, not {type(session_id).__name__}")
            )
        if not session_id:
            return defer.succeed(None)
        key = session_key(session_id)
        return self._call("load", lambda: self._redis.get(key), self._decode(session_id))

    def close(self) -> defer.Deferred:
        if not self._closed:
            self._closed = True
            calls, self._calls = self._calls, set()
            for call in calls:
                self._finish(call, Failure(StoreUnavailable("redis session store is closed")))
        if not self._close_connection:
            return defer.succeed(None)
        if self._client is not None:
            return self._client.disconnect()
        return defer.maybeDeferred(self._redis.disconnect).addBoth(lambda _: None)

    def _decode(self, session_id: str) -> Callable[[object], ReusableSession | None]:
        def decode(reply: object) -> ReusableSession | None:
            if reply is None:
                return None
            if isinstance(reply, str) and not reply.strip():
                return None
            try:
                return decode_reusable_session(reply)
            except InvalidSession as e:
                self.log.debug(
                    "ignoring undecodable session {session}: {why}",
                    session=session_id,
                    why=str(e),
                )
                return None

        return decode

    def _call(
        self, what: str, command: Callable[[], defer.Deferred], on_reply: Callable
    ) -> defer.Deferred:
        if self._closed:
            return defer.fail(StoreUnavailable("redis session store is closed"))
        if not self._available and self._client is not None and not self._client.connected:
            # Known outage and nothing to send on: answer now rather than
            # queue a command behind the reconnect.
            return defer.fail(
                StoreUnavailable(f"redis session store unavailable: {self._last_failure}")
            )
        call = _Call(what)
        call.timer = self._clock.callLater(self._timeout, self._deadline, call)
        self._calls.add(call)
        try:
            sent = command()
        except Exception:
            sent = defer.fail()
        sent.addBoth(self._answered, call, on_reply)
        return call.result

    def _answered(self, reply, call: _Call, on_reply: Callable) -> None:
        if call.result.called:
            # Past the deadline, closed, or cancelled: the caller has its
            # answer already.  Returning None also consumes a late failure.
            self._calls.discard(call)
            return None
        if isinstance(reply, Failure):
            if reply.check(txredisapi.ResponseError) and str(reply.value).startswith("WRONGTYPE"):
                # Redis answered: the key holds something else, not a session.
                self._recovered()
                self._finish(call, on_reply(None))
                return None
            why = f"{reply.type.__name__}: {reply.getErrorMessage()}"
            self._failed(why)
            self._finish(call, Failure(StoreUnavailable(f"redis session store unavailable: {why}")))
            return None
        self._recovered()
        try:
            value = on_reply(reply)
        except Exception:
            value = Failure()
        self._finish(call, value)
        return None

    def _deadline(self, call: _Call) -> None:
        call.timer = None
        if call.result.called:
            self._calls.discard(call)
            return
        why = f"no answer to {call.what} within {self._timeout:g} s"
        self._failed(why)
        self._finish(call, Failure(StoreUnavailable(f"redis session store unavailable: {why}")))

    def _finish(self, call: _Call, value) -> None:
        self._calls.discard(call)
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        if isinstance(value, Failure):
            call.result.errback(value)
        else:
            call.result.callback(value)

    def _failed(self, why: str) -> None:
        self._last_failure = why
        if self._available:
            self._available = False
            self.log.warn("redis session store unavailable: {why}", why=why)

    def _recovered(self) -> None:
        if not self._available:
            self._available = True
            self.log.info("redis session store recovered")


def _saved(_reply: object) -> None:
    return None

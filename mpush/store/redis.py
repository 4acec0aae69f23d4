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

from functools import partial

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
from mpush.store.redis_batch import TurnBatch, cluster_groups
from mpush.store.redis_calls import BoundedRedis, RedisComponent, check_timeout
from mpush.store.redis_cluster import is_cluster
from mpush.store.redis_connection import RedisClient

__all__ = ["KEY_PREFIX", "LOAD_PATIENCE", "RedisSessionStore", "session_key"]

#: MPush's CacheKeys.SESSION_KEY prefix.
KEY_PREFIX = "mp:rs:"


def session_key(session_id: str) -> str:
    """The Redis key of a reusable session, as Java nodes spell it."""
    return KEY_PREFIX + session_id


#: Seconds a session lookup may wait for Redis while this node is
#: overloaded (see L{BoundedRedis.call}'s patience).  A lookup that gives up
#: turns a cheap fast connect into a full RSA handshake, the dearest thing a
#: busy node can do; a slow or unreachable Redis still fails it in time.
LOAD_PATIENCE = 8.0

# SET each KEYS[i] to ARGV[2i-1] with a TTL of ARGV[2i] seconds (0: none):
# the sessions of one turn's handshakes in one command.
_SAVE_MANY = """
for i, key in ipairs(KEYS) do
  local ttl = ARGV[2 * i]
  if ttl == '0' then
    redis.call('SET', key, ARGV[2 * i - 1])
  else
    redis.call('SET', key, ARGV[2 * i - 1], 'EX', ttl)
  end
end
return #KEYS
"""


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
    @param load_patience: seconds a lookup may wait while the node is
        overloaded (a node gives L{LOAD_PATIENCE}); none when not given.
    @param close_connection: whether L{close} also disconnects C{redis}.
        Disconnecting a L{RedisClient} twice is harmless, so stores sharing
        one client may all leave this on.
    @param wait_replicas: after each turn's saves, Redis C{WAIT} until this
        many replicas have them (0: no WAIT), so a device holding its
        HandshakeOk can still fast-connect after a failover; a save that
        fewer replicas confirmed within C{wait_timeout} seconds fails.
    """

    log = Logger()

    def __init__(
        self,
        redis,
        clock: IReactorTime,
        timeout: float = 2.0,
        *,
        close_connection: bool = True,
        load_patience: float | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 0.1,
    ) -> None:
        self._calls = BoundedRedis(
            redis, clock, check_timeout(timeout), "redis session store", StoreUnavailable
        )
        self._load_patience = None if load_patience is None else check_timeout(load_patience)
        self._redis = self._calls.redis
        # One MGET for the lookups of a turn, one script for its saves.
        refusal = self._calls.refusal
        # In a cluster, one per node: a node that is down fails its own
        # sessions' loads only, not those of the whole turn.
        self._load_batch: TurnBatch = TurnBatch(
            clock, self._load_many, refusal=partial(refusal, "load"), group_of=cluster_groups(redis, session_key)
        )
        # In a cluster, one save script per slot (an MGET is split by the client).
        self._save_batch: TurnBatch = TurnBatch(
            clock, self._save_many, refusal=partial(refusal, "save"), group_of=cluster_groups(redis, lambda save: save[0])
        )
        self._client = redis if isinstance(redis, RedisClient) else None
        self._close_connection = close_connection
        if isinstance(wait_replicas, bool) or not isinstance(wait_replicas, int) or wait_replicas < 0:
            raise ValueError(f"wait_replicas must be an int of 0 or more, not {wait_replicas!r}")
        self._wait_replicas = wait_replicas
        self._wait_ms = max(1, round(check_timeout(wait_timeout) * 1000))

    def save(self, session_id: str, session: ReusableSession, ttl: int) -> defer.Deferred:
        try:
            check_session_id(session_id)
            ttl = check_ttl(ttl)
            value = encode_reusable_session(session)
        except Exception:
            return defer.fail()
        # SET ... EX is SET then EXPIRE in one step; Java nodes only GET.
        return self._save_batch.submit((session_key(session_id), value, str(max(ttl, 0))))

    def load(self, session_id: str) -> defer.Deferred:
        if not isinstance(session_id, str):
            return defer.fail(
                TypeError(f"session id must be text, not {type(session_id).__name__}")
            )
        if not session_id:
            return defer.succeed(None)
        return self._load_batch.submit(session_id)

    def _load_many(self, session_ids: list[str]) -> defer.Deferred:
        # MGET answers nil for a key holding another type: not a session.
        keys = [session_key(session_id) for session_id in session_ids]
        return self._calls.call(
            "load",
            lambda: self._redis.mget(keys),
            lambda replies: [self._decode(reply, sid) for reply, sid in zip(replies, session_ids)],
            patience=self._load_patience,
        )

    def _save_many(self, saves: list[tuple[str, str, str]]) -> defer.Deferred:
        keys = [key for key, _, _ in saves]
        args = [part for _, value, ttl in saves for part in (value, ttl)]
        if not self._wait_replicas:
            return self._calls.call(
                "save", lambda: self._redis.eval(_SAVE_MANY, keys, args), lambda _: [None] * len(saves)
            )
        return self._calls.call(
            "save", lambda: self._save_and_wait(keys, args), partial(self._replicated, len(saves))
        )

    @defer.inlineCallbacks
    def _save_and_wait(self, keys: list[str], args: list[str]):
        # WAIT counts the replicas that have this connection's writes: the
        # script and the WAIT must share one connection, hence a pipeline.
        client = self._client
        if is_cluster(client):
            # The pipeline of the master of this batch's slot (one per batch).
            pipe = yield client.execute(client.slot_of(keys[0]), "pipeline", (), {})
        else:
            pipe = yield self._redis.pipeline()
        pipe.eval(_SAVE_MANY, keys, args)
        pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms)
        replies = yield pipe.execute_pipeline()
        return replies

    def _replicated(self, count: int, replies: list) -> list[None]:
        replicas = int(replies[-1])
        if replicas < self._wait_replicas:
            raise StoreUnavailable(
                f"session saved on the master, but {replicas} of {self._wait_replicas} "
                f"replicas confirmed it within {self._wait_ms} ms"
            )
        return [None] * count

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


"""
Offline messages in Redis, shared by every node: a user may bind on any of
them.

Keys (ours; MPush has no offline store and Java nodes never read them):

  - C{mp:off:<userId>} (list): the user's message ids, oldest first.
  - C{mp:offd:<userId>} (hash), per message id C{<id>}:
      - C{m:<id>}: the message as JSON
        C{{"id", "ack", "created", "expires", "content" (base64)}};
      - C{e:<id>}: its expiry, wall-clock ms;
      - C{n:<id>}: its content length in bytes;
      - C{c:<id>}: its claim, C{"<leaseUntilMs>|<owner>"}, while claimed;
    and for the queue: C{bytes}, the total content length, and C{exp}, the
    latest expiry.

Both keys get the same TTL, set on every add to "latest expiry - now" plus
L{EXPIRED_GRACE_MS}, so the queue of a user who never comes back vanishes on
its own; they are deleted when the last message goes.  The grace keeps
expired messages in sight for a while: the next claim or add of the user
drops and counts them (C{expired}), as the in-memory store does; a queue
nobody touches within the grace goes uncounted.  The TTL is relative, so a
skew between the nodes' clocks and Redis's only moves the deadline by the
skew.

Every change is one Lua script, so two nodes adding, claiming or acking the
same user's messages at once cannot lose a bound or deliver a message twice.
The scripts never decode JSON: what they need is in the C{e:}, C{n:} and
C{c:} fields.

Every call is bounded by a deadline on the injected clock and fails with
L{OfflineStoreUnavailable} (see L{mpush.store.redis_calls}).  A call that
timed out may still have been carried out by Redis.

Importing this module imports txredisapi, which imports the global reactor.
"""

from __future__ import annotations

import base64
import binascii
import json
from functools import partial
from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mpush.offline.interfaces import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_COUNT,
    AddResult,
    IOfflineStore,
    InvalidOfflineMessage,
    OfflineCounters,
    OfflineInputError,
    OfflineMessage,
    OfflineStoreUnavailable,
    check_lease,
    check_limits,
    check_message_id,
    check_message_ids,
    check_now,
    check_owner,
    check_user_id,
)
from mpush.store.redis_batch import TurnBatch, cluster_groups
from mpush.store.redis_cluster import colocated, is_cluster
from mpush.store.redis_calls import BoundedRedis, RedisComponent
from mpush.store.redis_connection import RedisClient

__all__ = [
    "EXPIRED_GRACE_MS",
    "QUEUE_PREFIX",
    "DATA_PREFIX",
    "RedisOfflineStore",
    "decode_entry",
    "encode_entry",
    "offline_data_key",
    "offline_queue_key",
]

QUEUE_PREFIX = "mp:off:"
DATA_PREFIX = "mp:offd:"

#: How long a queue outlives its latest expiry, so its expired messages are
#: counted when the user next binds (or gets a message), not lost unseen.
EXPIRED_GRACE_MS = 3_600_000


def offline_queue_key(user_id: str) -> str:
    """C{mp:off:<userId>}: the list of message ids, oldest first."""
    return QUEUE_PREFIX + check_user_id(user_id)


def offline_data_key(user_id: str) -> str:
    """C{mp:offd:<userId>}: the hash of entries, expiries, sizes and claims."""
    return DATA_PREFIX + check_user_id(user_id)


def encode_entry(message: OfflineMessage) -> str:
    """The C{m:<id>} value: JSON, content in base64 (replies are text)."""
    return json.dumps(
        {
            "id": message.message_id,
            "ack": message.ack,
            "created": message.created_ms,
            "expires": message.expires_ms,
            "content": base64.b64encode(message.content).decode("ascii"),
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def decode_entry(value: object) -> OfflineMessage:
    """
    The inverse of L{encode_entry}.

    @raise InvalidOfflineMessage: for anything else (written by a bug, by
        hand, or by another version).
    """
    try:
        fields = json.loads(value)
        content = base64.b64decode(fields["content"], validate=True)
        return OfflineMessage(
            message_id=fields["id"],
            content=content,
            ack=fields["ack"],
            created_ms=fields["created"],
            expires_ms=fields["expires"],
        )
    except InvalidOfflineMessage:
        raise
    except (TypeError, ValueError, KeyError, binascii.Error) as error:
        raise InvalidOfflineMessage(f"undecodable offline entry: {error}") from None


# Shared by the scripts: is message ARGV id claimed under a live lease, who
# owns it, and how to drop it with its fields and bytes.
_HELPERS = """
local queue, data = KEYS[1], KEYS[2]
local function claim_of(id)
  local c = redis.call('HGET', data, 'c:' .. id)
  if not c then return nil, nil end
  local bar = string.find(c, '|', 1, true)
  if not bar then return 0, '' end
  return tonumber(string.sub(c, 1, bar - 1)) or 0, string.sub(c, bar + 1)
end
local function leased(id, now)
  local until_ms = claim_of(id)
  return until_ms ~= nil and until_ms > now
end
local function forget(id)
  local n = tonumber(redis.call('HGET', data, 'n:' .. id) or '0') or 0
  redis.call('HDEL', data, 'm:' .. id, 'e:' .. id, 'n:' .. id, 'c:' .. id)
  if n > 0 then redis.call('HINCRBY', data, 'bytes', string.format('%d', -n)) end
end
local function drop(id)
  redis.call('LREM', queue, 1, id)
  forget(id)
end
local function purge_expired(now)
  local expired = 0
  for _, id in ipairs(redis.call('LRANGE', queue, 0, -1)) do
    if redis.call('HEXISTS', data, 'm:' .. id) == 0 then
      drop(id)
    elseif not leased(id, now) and (tonumber(redis.call('HGET', data, 'e:' .. id) or '0') or 0) <= now then
      drop(id)
      expired = expired + 1
    end
  end
  return expired
end
local function delete_if_empty()
  if redis.call('LLEN', queue) == 0 then redis.call('DEL', queue, data) end
end
"""

# ARGV: id, entry, size, expires, now (= created), max count, max bytes,
# grace (ms the keys outlive the latest expiry).
# Returns {status, dropped, expired}: status 1 stored, 2 already queued.
_ADD = _HELPERS + """
local id, size, expires, now = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_count, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
if redis.call('HEXISTS', data, 'm:' .. id) == 1 then return {2, 0, 0} end
local expired = purge_expired(now)
local count = redis.call('LLEN', queue)
local bytes = tonumber(redis.call('HGET', data, 'bytes') or '0') or 0
local dropped = 0
while count > 0 and (count + 1 > max_count or bytes + size > max_bytes) do
  local oldest = redis.call('LPOP', queue)
  bytes = bytes - (tonumber(redis.call('HGET', data, 'n:' .. oldest) or '0') or 0)
  forget(oldest)
  count = count - 1
  dropped = dropped + 1
end
redis.call('RPUSH', queue, id)
redis.call('HSET', data, 'm:' .. id, ARGV[2], 'e:' .. id, ARGV[4], 'n:' .. id, ARGV[3])
redis.call('HINCRBY', data, 'bytes', ARGV[3])
local latest = math.max(tonumber(redis.call('HGET', data, 'exp') or '0') or 0, expires)
redis.call('HSET', data, 'exp', string.format('%d', latest))
local ttl = string.format('%d', math.max(latest - now + tonumber(ARGV[8]), 1))
redis.call('PEXPIRE', queue, ttl)
redis.call('PEXPIRE', data, ttl)
return {1, dropped, expired}
"""

# ARGV: owner, lease until, now.  Returns {expired, id, entry, id, entry, ...}.
_CLAIM = _HELPERS + """
local owner, lease_until, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local expired = purge_expired(now)
local out = {expired}
for _, id in ipairs(redis.call('LRANGE', queue, 0, -1)) do
  if not leased(id, now) then
    redis.call('HSET', data, 'c:' .. id, lease_until .. '|' .. owner)
    table.insert(out, id)
    table.insert(out, redis.call('HGET', data, 'm:' .. id))
  end
end
delete_if_empty()
return out
"""

# ARGV: id.  Returns 1 if it was there.
_REMOVE = _HELPERS + """
if redis.call('HEXISTS', data, 'm:' .. ARGV[1]) == 0 then return 0 end
drop(ARGV[1])
delete_if_empty()
return 1
"""

# ARGV: owner, then the ids to release (none: every claim of owner).
# Returns how many claims were dropped.
_RELEASE = _HELPERS + """
local owner = ARGV[1]
local ids = {}
if #ARGV > 1 then
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('LRANGE', queue, 0, -1)
end
local released = 0
for _, id in ipairs(ids) do
  local until_ms, who = claim_of(id)
  if until_ms ~= nil and who == owner then
    redis.call('HDEL', data, 'c:' .. id)
    released = released + 1
  end
end
return released
"""


# 1 per queue KEYS[i] that exists, else 0: a turn's binds ask in one command
# whether there is anything to claim (nearly always not).
_EXISTING = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('EXISTS', key) end
return out
"""

# Every claim of owner ARGV[i] on the queue KEYS[2i-1] (data KEYS[2i]):
# the closes of a turn in one command.  Returns the claims dropped per queue.
_RELEASE_ALL_MANY = """
local out = {}
for i, owner in ipairs(ARGV) do
  local queue, data = KEYS[2 * i - 1], KEYS[2 * i]
  local released = 0
  for _, id in ipairs(redis.call('LRANGE', queue, 0, -1)) do
    local c = redis.call('HGET', data, 'c:' .. id)
    if c then
      local bar = string.find(c, '|', 1, true)
      local who = bar and string.sub(c, bar + 1) or ''
      if who == owner then
        redis.call('HDEL', data, 'c:' .. id)
        released = released + 1
      end
    end
  end
  out[i] = released
end
return out
"""


@implementer(IOfflineStore)
class RedisOfflineStore(RedisComponent):
    """
    L{IOfflineStore} on Redis.  C{observe_failures} (from
    L{RedisComponent}) reports its failed calls, for metrics.

    @param redis: a L{RedisClient} (or a bare txredisapi handler).
    @param timeout: seconds each call may take on C{clock}.
    @param listener: passed to L{OfflineCounters}.
    @param close_connection: whether L{close} also disconnects C{redis};
        off by default because the pool is shared with the other Redis
        components.
    """

    log = Logger()

    def __init__(
        self,
        redis,
        clock: IReactorTime,
        timeout: float = 2.0,
        max_count: int = DEFAULT_MAX_COUNT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        listener=None,
        *,
        close_connection: bool = False,
    ) -> None:
        self.max_count, self.max_bytes = check_limits(max_count, max_bytes)
        self._calls = BoundedRedis(redis, clock, timeout, "redis offline store", OfflineStoreUnavailable)
        self._redis = self._calls.redis
        self._client = redis if isinstance(redis, RedisClient) else None
        self._close_connection = close_connection
        self.counters = OfflineCounters(listener)
        refusal = self._calls.refusal
        # On a Redis Cluster a user's data hash sits in its queue's slot, and
        # the batches send one script per slot.
        self._keys: Callable[[str], list[str]] = _cluster_keys if is_cluster(redis) else _keys
        self._existing: TurnBatch = TurnBatch(
            clock, self._existing_many, refusal=partial(refusal, "claim"), group_of=cluster_groups(redis, lambda queue: queue)
        )
        self._releases: TurnBatch = TurnBatch(
            clock,
            self._release_many,
            refusal=partial(refusal, "release"),
            group_of=cluster_groups(redis, lambda release: offline_queue_key(release[0])),
        )

    # -- IOfflineStore ---------------------------------------------------

    def add(self, user_id: str, message: OfflineMessage) -> defer.Deferred:
        try:
            keys = self._keys(user_id)
            if not isinstance(message, OfflineMessage):
                raise OfflineInputError(f"expected an OfflineMessage, not {type(message).__name__}")
        except Exception:
            return defer.fail()
        if message.size > self.max_bytes:
            if self._calls.closed:
                return defer.fail(OfflineStoreUnavailable("redis offline store is closed"))
            self.counters.add("refused_too_large")
            return defer.succeed(AddResult(stored=False, dropped=0))
        args = [
            message.message_id,
            encode_entry(message),
            str(message.size),
            str(message.expires_ms),
            str(message.created_ms),
            str(self.max_count),
            str(self.max_bytes),
            str(EXPIRED_GRACE_MS),
        ]
        return self._calls.call("add", lambda: self._redis.eval(_ADD, keys, args), self._added)

    def claim(self, user_id: str, owner: str, lease_ms: int, now_ms: int) -> defer.Deferred:
        try:
            keys = self._keys(user_id)
            args = [check_owner(owner), str(check_now(now_ms) + check_lease(lease_ms)), str(now_ms)]
        except Exception:
            return defer.fail()

        def claim_if_queued(exists) -> defer.Deferred | list:
            if not exists:
                return []
            return self._calls.call(
                "claim", lambda: self._redis.eval(_CLAIM, keys, args), lambda reply: self._claimed(reply, user_id)
            )

        return self._existing.submit(keys[0]).addCallback(claim_if_queued)

    def _existing_many(self, queues: list[str]) -> defer.Deferred:
        return self._calls.call(
            "claim", lambda: self._redis.eval(_EXISTING, queues, []), lambda found: [int(n) for n in found]
        )

    def _release_many(self, releases: list[tuple[str, str]]) -> defer.Deferred:
        keys: list[str] = []
        for user_id, _ in releases:
            keys += self._keys(user_id)
        owners = [owner for _, owner in releases]
        return self._calls.call(
            "release", lambda: self._redis.eval(_RELEASE_ALL_MANY, keys, owners), lambda done: [int(n) for n in done]
        )

    def remove(self, user_id: str, message_id: str) -> defer.Deferred:
        return self._remove(user_id, message_id, "delivered")

    def release(self, user_id: str, owner: str, message_ids=None) -> defer.Deferred:
        try:
            keys = self._keys(user_id)
            args = [check_owner(owner)]
            wanted = check_message_ids(message_ids)
        except Exception:
            return defer.fail()
        if wanted is None:
            # A close: every claim of the owner, batched with the turn's others.
            return self._releases.submit((user_id, args[0]))
        if not wanted:
            if self._calls.closed:
                return defer.fail(OfflineStoreUnavailable("redis offline store is closed"))
            return defer.succeed(0)
        args += sorted(wanted)
        return self._calls.call("release", lambda: self._redis.eval(_RELEASE, keys, args), int)

    def count(self, user_id: str) -> defer.Deferred:
        try:
            key = offline_queue_key(user_id)
        except Exception:
            return defer.fail()
        return self._calls.call("count", lambda: self._redis.llen(key), int)

    def stats(self) -> dict[str, int]:
        return self.counters.snapshot()

    def close(self) -> defer.Deferred:
        self._calls.close()
        if self._close_connection and self._client is not None:
            return self._client.disconnect()
        return defer.succeed(None)

    # -- replies -------------------------------------------------------------

    def _added(self, reply) -> AddResult:
        status, dropped, expired = (int(x) for x in reply)
        if status == 2:
            return AddResult(stored=True, dropped=0)
        self.counters.add("expired", expired)
        self.counters.add("stored")
        self.counters.add("dropped_full", dropped)
        return AddResult(stored=True, dropped=dropped)

    def _claimed(self, reply, user_id: str) -> list[OfflineMessage]:
        self.counters.add("expired", int(reply[0]))
        messages = []
        for message_id, value in zip(reply[1::2], reply[2::2]):
            try:
                message = decode_entry(value)
                if message.message_id != message_id:
                    raise InvalidOfflineMessage(f"entry of {message_id!r} names {message.message_id!r}")
            except InvalidOfflineMessage as error:
                # Deliverable by nobody: take it out so it stops costing a
                # slot of the queue on every bind.
                self.log.warn("dropping a bad offline entry of {user}: {why}", user=user_id, why=error)
                self._discard_bad(user_id, message_id)
                continue
            messages.append(message)
        return messages

    def _discard_bad(self, user_id: str, message_id: str) -> None:
        self._remove(user_id, message_id, None).addErrback(
            lambda failure: self.log.warn(
                "bad offline entry of {user} not removed: {why}", user=user_id, why=failure.getErrorMessage()
            )
        )

    def _remove(self, user_id: str, message_id: str, counter: str | None) -> defer.Deferred:
        try:
            keys = self._keys(user_id)
            args = [check_message_id(message_id)]
        except Exception:
            return defer.fail()

        def removed(reply) -> bool:
            found = bool(int(reply))
            if found and counter is not None:
                self.counters.add(counter)
            return found

        return self._calls.call("remove", lambda: self._redis.eval(_REMOVE, keys, args), removed)


def _keys(user_id: str) -> list[str]:
    return [offline_queue_key(user_id), offline_data_key(user_id)]


def _cluster_keys(user_id: str) -> list[str]:
    queue = offline_queue_key(user_id)
    return [queue, colocated(offline_data_key(user_id), queue)]


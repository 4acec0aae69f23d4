"""
Offline messages in process memory: the store of a single node run without
Redis.

Each user has an insertion-ordered dict of entries (id -> message and
claim): in order like a deque, and an ack removes its message by id in
constant time.  Nothing here reads a clock; callers pass the time in.
Queues of users who never come back are reclaimed by L{MemoryOfflineStore.sweep},
which the node calls periodically.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet import defer
from zope.interface import implementer

from mpush.offline.interfaces import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_COUNT,
    AddResult,
    IOfflineStore,
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

__all__ = ["MemoryOfflineStore"]


class _Entry:
    """A queued message and who claims it until when."""

    __slots__ = ("message", "owner", "lease_until")

    def __init__(self, message: OfflineMessage) -> None:
        self.message = message
        self.owner: str | None = None
        self.lease_until = 0

    def leased(self, now_ms: int) -> bool:
        return self.owner is not None and self.lease_until > now_ms


class _Queue:
    """One user's messages, oldest first, and their total content bytes."""

    __slots__ = ("entries", "bytes")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0

    def pop(self, message_id: str) -> _Entry | None:
        entry = self.entries.pop(message_id, None)
        if entry is not None:
            self.bytes -= entry.message.size
        return entry

    def pop_oldest(self) -> _Entry:
        _, entry = self.entries.popitem(last=False)
        self.bytes -= entry.message.size
        return entry

    def purge_expired(self, now_ms: int) -> int:
        stale = [
            message_id
            for message_id, entry in self.entries.items()
            if entry.message.expired(now_ms) and not entry.leased(now_ms)
        ]
        for message_id in stale:
            self.pop(message_id)
        return len(stale)


@implementer(IOfflineStore)
class MemoryOfflineStore:
    """
    L{IOfflineStore} in a dict of per-user queues.

    @param listener: passed to L{OfflineCounters}: told of every counter
        increment.
    """

    def __init__(
        self,
        max_count: int = DEFAULT_MAX_COUNT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        listener=None,
    ) -> None:
        self.max_count, self.max_bytes = check_limits(max_count, max_bytes)
        self.counters = OfflineCounters(listener)
        self._queues: dict[str, _Queue] = {}
        self._closed = False

    # -- IOfflineStore ---------------------------------------------------

    def add(self, user_id: str, message: OfflineMessage) -> defer.Deferred:
        return self._run(self._add, user_id, message)

    def claim(self, user_id: str, owner: str, lease_ms: int, now_ms: int) -> defer.Deferred:
        return self._run(self._claim, user_id, owner, lease_ms, now_ms)

    def remove(self, user_id: str, message_id: str) -> defer.Deferred:
        return self._run(self._remove, user_id, message_id)

    def release(self, user_id: str, owner: str, message_ids=None) -> defer.Deferred:
        return self._run(self._release, user_id, owner, message_ids)

    def count(self, user_id: str) -> defer.Deferred:
        return self._run(self._count, user_id)

    def stats(self) -> dict[str, int]:
        return self.counters.snapshot()

    def close(self) -> defer.Deferred:
        self._closed = True
        self._queues.clear()
        return defer.succeed(None)

    # -- memory only -------------------------------------------------------

    def sweep(self, now_ms: int) -> int:
        """
        Purge every expired, unleased message of every user and forget empty
        queues: what Redis key expiry does for the Redis store.

        @return: how many messages were purged (also counted as C{expired}).
        """
        check_now(now_ms)
        purged = 0
        for user_id in list(self._queues):
            queue = self._queues[user_id]
            purged += queue.purge_expired(now_ms)
            if not queue.entries:
                del self._queues[user_id]
        self.counters.add("expired", purged)
        return purged

    def users(self) -> int:
        """How many users have a queue."""
        return len(self._queues)

    def queued(self) -> int:
        """How many messages wait, all users together (the queue-size gauge)."""
        return sum(len(queue.entries) for queue in self._queues.values())

    # -- the work ----------------------------------------------------------

    def _run(self, operation, *args) -> defer.Deferred:
        if self._closed:
            return defer.fail(OfflineStoreUnavailable("memory offline store is closed"))
        try:
            return defer.succeed(operation(*args))
        except Exception:
            return defer.fail()

    def _add(self, user_id: str, message: OfflineMessage) -> AddResult:
        check_user_id(user_id)
        if not isinstance(message, OfflineMessage):
            raise OfflineInputError(f"expected an OfflineMessage, not {type(message).__name__}")
        if message.size > self.max_bytes:
            self.counters.add("refused_too_large")
            return AddResult(stored=False, dropped=0)
        queue = self._queues.get(user_id)
        if queue is None:
            queue = self._queues[user_id] = _Queue()
        elif message.message_id in queue.entries:
            return AddResult(stored=True, dropped=0)
        self.counters.add("expired", queue.purge_expired(message.created_ms))
        dropped = 0
        while queue.entries and (
            len(queue.entries) + 1 > self.max_count or queue.bytes + message.size > self.max_bytes
        ):
            queue.pop_oldest()
            dropped += 1
        queue.entries[message.message_id] = _Entry(message)
        queue.bytes += message.size
        self.counters.add("stored")
        self.counters.add("dropped_full", dropped)
        return AddResult(stored=True, dropped=dropped)

    def _claim(self, user_id: str, owner: str, lease_ms: int, now_ms: int) -> list[OfflineMessage]:
        check_user_id(user_id)
        check_owner(owner)
        check_lease(lease_ms)
        check_now(now_ms)
        queue = self._queues.get(user_id)
        if queue is None:
            return []
        self.counters.add("expired", queue.purge_expired(now_ms))
        taken = []
        for entry in queue.entries.values():
            if entry.leased(now_ms):
                continue
            entry.owner = owner
            entry.lease_until = now_ms + lease_ms
            taken.append(entry.message)
        self._forget_if_empty(user_id, queue)
        return taken

    def _remove(self, user_id: str, message_id: str) -> bool:
        check_user_id(user_id)
        check_message_id(message_id)
        queue = self._queues.get(user_id)
        if queue is None or queue.pop(message_id) is None:
            return False
        self._forget_if_empty(user_id, queue)
        self.counters.add("delivered")
        return True

    def _release(self, user_id: str, owner: str, message_ids) -> int:
        check_user_id(user_id)
        check_owner(owner)
        wanted = check_message_ids(message_ids)
        queue = self._queues.get(user_id)
        if queue is None:
            return 0
        released = 0
        for message_id, entry in queue.entries.items():
            if entry.owner == owner and (wanted is None or message_id in wanted):
                entry.owner = None
                entry.lease_until = 0
                released += 1
        return released

    def _count(self, user_id: str) -> int:
        check_user_id(user_id)
        queue = self._queues.get(user_id)
        return 0 if queue is None else len(queue.entries)

    def _forget_if_empty(self, user_id: str, queue: _Queue) -> None:
        if not queue.entries:
            del self._queues[user_id]


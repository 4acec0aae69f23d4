"""
Many requests of one reactor turn sent to Redis as one command.

A reconnect storm asks Redis the same few things for thousands of devices at
once: load this session, register that route, publish this event.  Each
command costs the node far more CPU than it costs Redis (a deadline timer,
Deferreds, the encoder and the reply parser), so per-device commands made
Redis work the node's bottleneck and let it starve fast connects behind a
backlog of close bookkeeping.  A L{TurnBatch} collects what callers ask for
during one turn and sends it as one command (an C{MGET}, or a Lua script
that loops), at most C{max_items} a command, then hands each caller its own
answer.

Nothing here waits: a batch is sent in the first turn after its first
request (C{callLater(0)}), so a lone request costs one turn, not a delay.

On a Redis Cluster a command may only touch keys of one hash slot: given
C{slot_of}, a batch sends one command per slot among its items (see
L{cluster_slots}); the commands of one turn still leave together, one write
per cluster node, and each caller still gets its own answer.
"""

from __future__ import annotations

from typing import Callable, Generic, Sequence, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

__all__ = ["DEFAULT_MAX_ITEMS", "TurnBatch", "cluster_slots", "group_by_slot"]

Item = TypeVar("Item")

#: Requests per command at the most: large enough to take a storm's turn in
#: a few commands, small enough that one script keeps Redis busy for only a
#: few milliseconds.
DEFAULT_MAX_ITEMS = 500


def cluster_slots(redis: object, key: Callable[[Item], str]) -> Callable[[Item], int] | None:
    """
    For a L{TurnBatch} on C{redis}: the slot of an item's key C{key(item)}
    when C{redis} is a Redis Cluster client, else C{None} (one Redis: any
    keys in one command).
    """
    slot_of = getattr(redis, "slot_of", None)
    if slot_of is None:
        return None
    return lambda item: slot_of(key(item))


def group_by_slot(items: Sequence[Item], slot_of: Callable[[Item], int]) -> list[list[int]]:
    """The indices of C{items}, one list per slot, in order within each."""
    groups: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(slot_of(item), []).append(index)
    return list(groups.values())


class TurnBatch(Generic[Item]):
    """
    Collects requests and runs them, a chunk at a time, in the next turn.

    @param clock: schedules the flush.
    @param run: C{run(items)} sends one command for C{items} (a list) and
        returns a Deferred firing a sequence of one result per item, in
        order; a result that is a L{Failure} fails that item alone.  If the
        Deferred fails, every item of the chunk fails with it.
    @param max_items: the most items one C{run} gets.
    @param refusal: C{refusal()} is asked on each request: an exception
        fails the request at once instead of batching it (a closed
        component, a known outage: see L{BoundedRedis.refusal}).
    @param slot_of: C{slot_of(item)}, the Redis Cluster slot of an item's
        keys: a C{run} then gets items of one slot only (L{cluster_slots}).
    """

    __slots__ = ("_clock", "_run", "_max_items", "_refusal", "_items", "_waiters", "_flush_call", "_slot_of")

    def __init__(
        self,
        clock: IReactorTime,
        run: Callable[[list[Item]], defer.Deferred],
        max_items: int = DEFAULT_MAX_ITEMS,
        refusal: Callable[[], Exception | None] = lambda: None,
        slot_of: Callable[[Item], int] | None = None,
    ) -> None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ValueError(f"max_items must be a positive int, not {max_items!r}")
        self._clock = clock
        self._run = run
        self._max_items = max_items
        self._refusal = refusal
        self._slot_of = slot_of
        self._items: list[Item] = []
        self._waiters: list[defer.Deferred] = []
        self._flush_call: IDelayedCall | None = None

    def __len__(self) -> int:
        """Requests waiting for the next flush."""
        return len(self._items)

    def submit(self, item: Item) -> defer.Deferred:
        """
        Ask for C{item} in the next batch.

        @return: a Deferred firing this item's result.
        """
        refused = self._refusal()
        if refused is not None:
            return defer.fail(refused)
        waiter: defer.Deferred = defer.Deferred()
        self._items.append(item)
        self._waiters.append(waiter)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)
        return waiter

    def flush(self) -> None:
        """Send everything waiting now, C{max_items} to a command."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        items, waiters = self._items, self._waiters
        self._items, self._waiters = [], []
        if self._slot_of is not None:
            self._send_per_slot(items, waiters)
            return
        size = self._max_items
        for start in range(0, len(items), size):
            self._send(items[start : start + size], waiters[start : start + size])

    def _send_per_slot(self, items: list[Item], waiters: list[defer.Deferred]) -> None:
        try:
            groups = group_by_slot(items, self._slot_of)
        except Exception:
            self._failed(Failure(), waiters)
            return
        size = self._max_items
        for group in groups:
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                self._send([items[i] for i in chunk], [waiters[i] for i in chunk])

    def _send(self, items: list[Item], waiters: list[defer.Deferred]) -> None:
        try:
            sent = self._run(items)
        except Exception:
            sent = defer.fail()
        sent.addCallbacks(self._answered, self._failed, callbackArgs=(waiters,), errbackArgs=(waiters,))

    @staticmethod
    def _answered(results: Sequence[object], waiters: list[defer.Deferred]) -> None:
        if len(results) != len(waiters):
            TurnBatch._failed(
                Failure(ValueError(f"{len(results)} results for {len(waiters)} requests")), waiters
            )
            return
        for waiter, result in zip(waiters, results):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    @staticmethod
    def _failed(failure: Failure, waiters: list[defer.Deferred]) -> None:
        for waiter in waiters:
            waiter.errback(failure)

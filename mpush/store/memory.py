"""
Reusable sessions in process memory: a single node, tests, or no Redis.

Values are kept as the encoded MPush string, so this store and the Redis one
go through the same codec and disagree on nothing.  Expiry follows the
injected clock without a timer per entry: expired entries are invisible,
dropped when met, and cleared by a cheap purge at the oldest end plus an
occasional full sweep.  The number of entries is bounded; the oldest write
goes first.
"""

from __future__ import annotations

from collections import OrderedDict

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

__all__ = ["MemorySessionStore"]

# Expired entries examined at the oldest end on each write.  With one TTL for
# every session (the normal case) write order is expiry order, so this alone
# keeps the table clean.
_PURGE_BATCH = 64


@implementer(ISessionStore)
class MemorySessionStore:
    """
    L{ISessionStore} in a bounded C{OrderedDict}; every Deferred it returns
    has already fired.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        max_entries: int = 1_000_000,
        sweep_interval: float = 300.0,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int):
            raise TypeError(f"max_entries must be an int, not {max_entries!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        if not sweep_interval > 0:
            raise ValueError(f"sweep_interval must be positive, not {sweep_interval!r}")
        self._clock = clock
        self._max_entries = max_entries
        self._sweep_interval = float(sweep_interval)
        # session id -> (deadline in clock seconds or None, encoded session)
        self._entries: OrderedDict[str, tuple[float | None, str]] = OrderedDict()
        self._last_sweep = clock.seconds()
        self._closed = False

    def __len__(self) -> int:
        """Entries held, expired ones not yet purged included."""
        return len(self._entries)

    def save(self, session_id: str, session: ReusableSession, ttl: int) -> defer.Deferred:
        try:
            self._check_open()
            check_session_id(session_id)
            ttl = check_ttl(ttl)
            value = encode_reusable_session(session)
        except Exception:
            return defer.fail()
        now = self._clock.seconds()
        deadline = now + ttl if ttl > 0 else None
        entries = self._entries
        # A rewrite counts as the newest write for eviction.
        entries.pop(session_id, None)
        entries[session_id] = (deadline, value)
        while len(entries) > self._max_entries:
            entries.popitem(last=False)
        self._purge(now)
        return defer.succeed(None)

    def load(self, session_id: str) -> defer.Deferred:
        try:
            self._check_open()
            if not isinstance(session_id, str):
                raise TypeError(
                    f"session id must be text, not {type(session_id).__name__}"
                )
        except Exception:
            return defer.fail()
        now = self._clock.seconds()
        self._purge(now)
        entry = self._entries.get(session_id)
        if entry is None:
            return defer.succeed(None)
        deadline, value = entry
        if deadline is not None and now >= deadline:
            del self._entries[session_id]
            return defer.succeed(None)
        try:
            return defer.succeed(decode_reusable_session(value))
        except InvalidSession as e:
            # Only reachable if the codec changed under a live table.
            self.log.debug("undecodable session {session}: {why}", session=session_id, why=e)
            return defer.succeed(None)

    def close(self) -> defer.Deferred:
        self._closed = True
        self._entries.clear()
        return defer.succeed(None)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("memory session store is closed")

    def _purge(self, now: float) -> None:
        entries = self._entries
        for _ in range(_PURGE_BATCH):
            if not entries:
                break
            oldest = next(iter(entries))
            deadline = entries[oldest][0]
            if deadline is None or now < deadline:
                break
            del entries[oldest]
        if now - self._last_sweep >= self._sweep_interval:
            self._last_sweep = now
            expired = [
                key
                for key, (deadline, _) in entries.items()
                if deadline is not None and now >= deadline
            ]
            for key in expired:
                del entries[key]

"""
One connection's received packets, handled strictly in arrival order.

Handshake, fast connect and bind change state the next packet depends on,
and some of them wait on Redis: a packet whose handler returns a Deferred
holds back the ones after it until that Deferred fires (spec 21.3).  Every
transport (TCP, WebSocket) queues through this one mechanism.
"""

import collections
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred


class InOrderQueue:
    """
    Items waiting to be handled, with the bytes they took on the wire.

    @param handle: C{handle(item)} -> C{None}, or a Deferred to wait for.
    @param size_of: C{size_of(item)} -> the bytes C{item} took on the wire.
    @param is_open: C{is_open()} -> whether to go on handling items.
    """

    __slots__ = ("_handle", "_size_of", "_is_open", "_items", "bytes", "_busy", "_running")

    def __init__(
        self,
        handle: Callable[[Any], Deferred | None],
        size_of: Callable[[Any], int],
        is_open: Callable[[], bool],
    ) -> None:
        self._handle = handle
        self._size_of = size_of
        self._is_open = is_open
        # Created when items arrive and dropped when they are all handled:
        # an empty deque is ~600 bytes, and an idle connection has none.
        self._items = None
        self.bytes = 0
        self._busy = False
        self._running = False

    @property
    def idle(self) -> bool:
        """
        Nothing waiting and no handler being waited for: the queue can go.
        """
        return not self._busy and not self._items

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def extend(self, items: Iterable[Any]) -> None:
        if self._items is None:
            self._items = collections.deque(items)
        else:
            self._items.extend(items)
        self.bytes += sum(map(self._size_of, items))

    def clear(self) -> None:
        self._items = None
        self.bytes = 0

    def run(self) -> None:
        """
        Handle items until one must be waited for, none is left, or the
        connection closes.
        """
        if self._running:
            return
        self._running = True
        try:
            while self._items and not self._busy and self._is_open():
                item = self._items.popleft()
                self.bytes -= self._size_of(item)
                waiting = self._handle(item)
                if waiting is not None:
                    self._busy = True
                    waiting.addBoth(self._done)
        finally:
            self._running = False
            if not self._items:
                self._items = None

    def _done(self, result: Any) -> Any:
        self._busy = False
        if not self._running:
            self.run()
        return result

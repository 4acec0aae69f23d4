"""
Push rate limits (MPush's C{mp.push.flow-control}), as burst shaping.

A window of C{duration} admits C{limit} sends; a send over it is told how long
to wait for the next window, not refused (spec 21.2 item 21: flow control
should shape bursts, not set the ceiling).  C{max} caps the total.
"""

import enum

from twisted.internet.interfaces import IReactorTime


class FlowDecision(enum.Enum):
    GO = "go"
    WAIT = "wait"
    EXCEEDED = "exceeded"


class FlowControl:
    """
    A fixed-window rate limit with an optional total cap.

    @param limit: sends per window; 0 means unlimited.
    @param duration: the window, in milliseconds.
    @param total: cap over the whole life of this object; 0 means none.
    """

    __slots__ = ("limit", "duration", "total", "clock", "_window_start", "_in_window", "sent")

    def __init__(self, limit: int, duration: float, total: int, clock: IReactorTime) -> None:
        self.limit = limit
        self.duration = duration / 1000.0
        self.total = total
        self.clock = clock
        self._window_start = clock.seconds()
        self._in_window = 0
        self.sent = 0

    def check(self) -> FlowDecision:
        """
        Ask to send one; on C{GO} the send is counted.
        """
        if self.total and self.sent >= self.total:
            return FlowDecision.EXCEEDED
        if self.limit:
            now = self.clock.seconds()
            if now - self._window_start >= self.duration:
                self._window_start = now
                self._in_window = 0
            if self._in_window >= self.limit:
                return FlowDecision.WAIT
            self._in_window += 1
        self.sent += 1
        return FlowDecision.GO

    def delay(self) -> float:
        """
        Seconds until the current window ends.
        """
        return max(0.0, self._window_start + self.duration - self.clock.seconds())

"""
Pushes in flight at the gateway, counted so that a drain knows when the work
it started is done; while the node drains, new pushes are answered at once
(OFFLINE, "node draining") instead of being written to a connection about to
close.  A pusher with an offline TTL stores such a push for the device's next
bind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mpush.protocol.errors import ErrorCode
from mpush.protocol.routing import encode_push_result

if TYPE_CHECKING:
    from mpush.metrics import IMetrics
    from mpush.protocol.messages import GatewayPushMessage
    from mpush.server.gateway.push_center import PushCenter

__all__ = ["DRAINING_REASON", "EXPIRY_GRACE", "PushTracker"]

#: The reason of the OFFLINE (or FAILURE, for a broadcast) a draining node
#: answers new pushes with.
DRAINING_REASON = "node draining"
#: Seconds past its own timeout a push parked by flow control is still
#: counted in flight (its later attempt reports to no one we can watch).
EXPIRY_GRACE = 1.0


class _TrackedReply:
    """
    A gateway reply that tells its tracker when the push is answered (or,
    for a silent timeout, ends: C{settle}).
    """

    __slots__ = ("_reply", "_tracker", "settled", "_timer")

    def __init__(self, reply: Any, tracker: PushTracker) -> None:
        self._reply = reply
        self._tracker = tracker
        self.settled = False
        self._timer = None

    @property
    def report_timeouts(self) -> bool:
        return self._reply.report_timeouts

    @property
    def connection(self) -> Any:
        return self._reply.connection

    @property
    def session_id(self) -> int:
        return self._reply.session_id

    def ok(self, data: bytes | None) -> None:
        try:
            self._reply.ok(data)
        finally:
            if not self.settled:
                self.settle()

    def error(self, code: int, data: bytes | None, reason: str | None = None) -> None:
        try:
            self._reply.error(code, data, reason)
        finally:
            self.settle()

    def settle(self, result: object = None) -> object:
        if not self.settled:
            self.settled = True
            if self._timer is not None:
                if self._timer.active():
                    self._timer.cancel()
                self._timer = None
            self._tracker._in_flight -= 1
        return result

    def expire_after(self, clock: IReactorTime, seconds: float) -> None:
        self._timer = clock.callLater(seconds, self.settle)


class PushTracker:
    """
    The push center as the gateway sees it: every push it starts is counted
    until it is answered, so a drain knows when the work it started is done;
    while draining, new pushes are answered at once instead.

    Give it to L{mpush.server.gateway.gateway.GatewayFactory} in place of the push
    center (it has the same C{push(message, flags, reply)}).

    @ivar draining: set by L{Drainer}; new pushes are then refused.
    @ivar refused: how many pushes were refused while draining.
    """

    log = Logger()

    def __init__(
        self,
        push_center: PushCenter,
        *,
        clock: IReactorTime,
        metrics: IMetrics,
        default_timeout_ms: Callable[[], int],
    ) -> None:
        """
        @param default_timeout_ms: the node's C{[push] default-timeout} as it
            is now (a reload changes it).
        """
        self.push_center = push_center
        self.clock = clock
        self.metrics = metrics
        self.default_timeout_ms = default_timeout_ms
        self.draining = False
        self.refused = 0
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """
        Pushes started and not answered yet.
        """
        return self._in_flight

    def push(self, message: GatewayPushMessage, flags: int, reply: Any) -> object:
        if self.draining:
            self._refuse(message, reply)
            return None
        tracked = _TrackedReply(reply, self)
        self._in_flight += 1
        try:
            result = self.push_center.push(message, flags, tracked)
        except BaseException:
            tracked.settle()
            raise
        if result.__class__ is str:
            # Ended (settled by its answer), or PENDING: settled by its
            # answer or, for a silent timeout, by the push center.
            pass
        elif isinstance(result, defer.Deferred):
            # A silent timeout answers no one: the Deferred still fires.
            result.addBoth(tracked.settle)
        elif not tracked.settled:
            if result is None and message.user_id is not None:
                # Parked by flow control: its retry's result goes nowhere we
                # see, but it ends by its own deadline at the latest.
                timeout = message.timeout if message.timeout > 0 else self.default_timeout_ms()
                tracked.expire_after(self.clock, timeout / 1000.0 + EXPIRY_GRACE)
            else:
                tracked.settle()
        return result

    def _refuse(self, message: GatewayPushMessage, reply: Any) -> None:
        """
        A push reaching a draining node: OFFLINE (the device is about to
        leave; a pusher with an offline TTL stores it for the next bind), or
        FAILURE for a broadcast (this node's users are moving elsewhere).
        """
        self.refused += 1
        if message.user_id is None:
            reply.error(int(ErrorCode.PUSH_CLIENT_FAILURE), None, DRAINING_REASON)
            self.metrics.push("failure")
            return
        now = int(self.clock.seconds() * 1000)
        data = encode_push_result(
            message.user_id, message.client_type, [("push-center-begin", now), ("offline-end", now)]
        )
        reply.error(int(ErrorCode.OFFLINE), data, DRAINING_REASON)
        self.metrics.push("offline")

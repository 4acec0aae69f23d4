"""
Pushes in flight at the gateway, counted so that a drain knows when the work
it started is done; while the node drains, new pushes are answered at once
(OFFLINE, "node draining") instead of being written to a connection about to
close.  A pusher with an offline TTL stores such a push for the device's next
bind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mpush.protocol.errors import ErrorCode
from mpush.protocol.routing import encode_push_result
from mpush.server.gateway.push_center import Outcome, PushHandle

if TYPE_CHECKING:
    from mpush.metrics import IMetrics
    from mpush.protocol.messages import GatewayPushMessage
    from mpush.server.gateway.push_center import PushCenter

__all__ = ["DRAINING_REASON", "PushTracker"]

#: The reason of the OFFLINE (or FAILURE, for a broadcast) a draining node
#: answers new pushes with.
DRAINING_REASON = "node draining"


class PushTracker:
    """
    The push center as the gateway sees it: every push it starts is counted
    until its L{mpush.server.gateway.push_center.PushHandle} ends, so a drain
    knows when the work it started is done; while draining, new pushes are
    answered at once instead.

    Give it to L{mpush.server.gateway.gateway.GatewayFactory} in place of the push
    center (it has the same C{push(message, flags, reply)}, and returns a handle too).

    @ivar draining: set by L{Drainer}; new pushes are then refused.
    @ivar refused: how many pushes were refused while draining.
    """

    log = Logger()

    def __init__(self, push_center: PushCenter, *, clock: IReactorTime, metrics: IMetrics) -> None:
        self.push_center = push_center
        self.clock = clock
        self.metrics = metrics
        self.draining = False
        self.refused = 0
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """
        Pushes started and not answered yet.
        """
        return self._in_flight

    def push(self, message: GatewayPushMessage, flags: int, reply: Any) -> PushHandle:
        if self.draining:
            return self._refuse(message, reply)
        self._in_flight += 1
        try:
            handle = self.push_center.push(message, flags, reply)
        except BaseException:
            self._in_flight -= 1
            raise
        # Every push ends (answered, or a silent timeout), at once or later.
        handle.observe(self._ended)
        return handle

    def _ended(self, handle: PushHandle) -> None:
        self._in_flight -= 1

    def _refuse(self, message: GatewayPushMessage, reply: Any) -> PushHandle:
        """
        A push reaching a draining node: OFFLINE (the device is about to
        leave; a pusher with an offline TTL stores it for the next bind), or
        FAILURE for a broadcast (this node's users are moving elsewhere).
        """
        self.refused += 1
        if message.user_id is None:
            reply.error(int(ErrorCode.PUSH_CLIENT_FAILURE), None, DRAINING_REASON)
            self.metrics.push("failure")
            return PushHandle(Outcome.FAILURE)
        now = int(self.clock.seconds() * 1000)
        data = encode_push_result(
            message.user_id, message.client_type, [("push-center-begin", now), ("offline-end", now)]
        )
        reply.error(int(ErrorCode.OFFLINE), data, DRAINING_REASON)
        self.metrics.push("offline")
        return PushHandle(Outcome.OFFLINE)

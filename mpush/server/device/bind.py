"""
BIND and UNBIND: the connection's side of user routing (spec 11.3, 11.5).

The handlers only check that the message names a user; the router center
decides.  Both run strictly in order with the connection's other packets, so
a BIND that waits on Redis is answered before anything sent after it.
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mpush.metrics import IMetrics
from mpush.protocol.messages import BindUserMessage
from mpush.protocol.packet import Command
from mpush.server.device.dispatcher import DeviceHandler
from mpush.server.device.errors import BindFailed, InvalidParam, NotHandshaken


class BindHandler(DeviceHandler):
    command = Command.BIND

    def __init__(self, router_center: Any, metrics: IMetrics) -> None:
        self.router_center = router_center
        self.metrics = metrics

    def validate(self, message: BindUserMessage) -> None:
        if not message.user_id:
            raise InvalidParam("bind without a user id")

    def refused(self, exception: Exception) -> None:
        if isinstance(exception, (InvalidParam, NotHandshaken)):
            self.metrics.bind("invalid")

    def handle(self, connection: Any, packet: Any, message: BindUserMessage) -> Deferred:
        bound = self.router_center.bind(connection, packet, message)
        return bound.addCallbacks(self._bound, self._refused)

    def _bound(self, result: Any) -> Any:
        self.metrics.bind("ok")
        return result

    def _refused(self, failure: Failure) -> Failure:
        if failure.check(BindFailed):
            self.metrics.bind("refused")
        return failure


class UnbindHandler(DeviceHandler):
    command = Command.UNBIND

    def __init__(self, router_center: Any) -> None:
        self.router_center = router_center

    def validate(self, message: BindUserMessage) -> None:
        if not message.user_id:
            raise InvalidParam("unbind without a user id")

    def handle(self, connection: Any, packet: Any, message: BindUserMessage) -> Deferred:
        return self.router_center.unbind(connection, packet, message)

"""
BIND and UNBIND: the connection's side of user routing (spec 11.3, 11.5).

The handlers only decode; the router center decides.  Both run strictly in
order with the connection's other packets, so a BIND that waits on Redis is
answered before anything sent after it.
"""

from zope.interface import implementer

from mpush.protocol.body import decode_body
from mpush.protocol.messages import BindUserMessage
from mpush.protocol.packet import Command
from mpush.server.device.dispatcher import IMessageHandler
from mpush.server.device.errors import BindFailed, InvalidParam, NotHandshaken


def _decode(node, connection, packet):
    body = decode_body(packet, connection.decrypt_cipher, node.config.core.max_inflated_size)
    return BindUserMessage.decode(body)


@implementer(IMessageHandler)
class BindHandler:
    command = Command.BIND

    def __init__(self, node):
        self.node = node

    def handle(self, connection, packet):
        message = _decode(self.node, connection, packet)
        bound = self.node.router_center.bind(connection, packet, message)
        return bound.addCallbacks(self._bound, self._refused)

    def _bound(self, result):
        self.node.metrics.bind("ok")
        return result

    def _refused(self, failure):
        if failure.check(BindFailed):
            self.node.metrics.bind("refused")
        elif failure.check(InvalidParam, NotHandshaken):
            self.node.metrics.bind("invalid")
        return failure


@implementer(IMessageHandler)
class UnbindHandler:
    command = Command.UNBIND

    def __init__(self, node):
        self.node = node

    def handle(self, connection, packet):
        message = _decode(self.node, connection, packet)
        return self.node.router_center.unbind(connection, packet, message)

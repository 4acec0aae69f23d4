"""
ACK from a device: resolve the push it acknowledges (spec 12.4).

The ack key is the PUSH's packet session id, in one table for the whole
process; an ack for an unknown or expired push is ignored, as in MPush.
"""

from zope.interface import implementer

from mpush.protocol.packet import Command
from mpush.server.device.dispatcher import IMessageHandler


@implementer(IMessageHandler)
class AckHandler:
    command = Command.ACK

    def __init__(self, node):
        self.node = node

    def handle(self, connection, packet):
        self.node.acks.acknowledge(packet.session_id, connection)

"""
HEARTBEAT: answer every ping with the one-byte pong (spec 10.1, 21.1 item 2).

Reading the ping already counted as activity for the idle check; the only
thing left is the echo, for the 0xDF byte and for a framed cmd-1 packet alike.
"""

from zope.interface import implementer

from mpush.protocol.packet import Command
from mpush.server.device.dispatcher import IMessageHandler


@implementer(IMessageHandler)
class HeartbeatHandler:
    command = Command.HEARTBEAT

    def handle(self, connection, packet):
        connection.write_heartbeat()

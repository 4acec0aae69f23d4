"""
HEARTBEAT: answer every ping with the one-byte pong (spec 10.1, 21.1 item 2).

Reading the ping already counted as activity for the idle check; the only
thing left is the echo, for the 0xDF byte and for a framed cmd-1 packet alike.
Only the TCP listener has it: a WebSocket carries no heartbeat (spec 15).
"""

from typing import Any

from mpush.protocol.packet import Command
from mpush.server.device.dispatcher import DeviceHandler


class HeartbeatHandler(DeviceHandler):
    command = Command.HEARTBEAT

    def handle(self, connection: Any, packet: Any, message: None) -> None:
        connection.write_heartbeat()

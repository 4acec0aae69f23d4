"""
ACK from a device: resolve the push it acknowledges (spec 12.4).

The ack key is the PUSH's packet session id, in one table for the whole
process; an ack for an unknown or expired push is ignored, as in MPush.
"""

from typing import Any

from mpush.protocol.packet import Command
from mpush.server.device.dispatcher import DeviceHandler
from mpush.server.gateway.acks import AckTable


class AckHandler(DeviceHandler):
    command = Command.ACK

    def __init__(self, acks: AckTable) -> None:
        self.acks = acks

    def handle(self, connection: Any, packet: Any, message: None) -> None:
        self.acks.acknowledge(packet.session_id, connection)

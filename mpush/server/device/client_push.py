"""
PUSH from a device ("client push", spec 12.4): logged, and acknowledged when
the device asked for AUTO_ACK.  MPush hands it to an SPI that does nothing by
default; so does mpush, apart from the log line.

The ACK is written raw and without a body, which a WebSocket writes as its
JSON ACK (MPush writes a binary packet there, spec 21.2 item 16).
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mpush.protocol.packet import Command, Flags
from mpush.server.device.dispatcher import DeviceHandler


class ClientPushHandler(DeviceHandler):
    command = Command.PUSH
    log = Logger()

    def handle(self, connection: Any, packet: Any, content: bytes) -> Deferred | None:
        self.log.debug(
            "client push from {user} ({device}): {size} bytes",
            user=connection.context.user_id,
            device=connection.context.device_id,
            size=len(content),
        )
        if packet.has_flag(Flags.AUTO_ACK):
            return connection.send_raw(Command.ACK, None, packet.session_id)
        return None

"""
PUSH from a device ("client push", spec 12.4): logged, and acknowledged when
the device asked for AUTO_ACK.  MPush hands it to an SPI that does nothing by
default; so does mpush, apart from the log line.
"""

from twisted.logger import Logger
from zope.interface import implementer

from mpush.protocol.body import decode_body, make_raw_packet
from mpush.protocol.packet import Command, Flags
from mpush.server.device.dispatcher import IMessageHandler
from mpush.server.device.errors import NotHandshaken


@implementer(IMessageHandler)
class ClientPushHandler:
    command = Command.PUSH
    log = Logger()

    def __init__(self, node):
        self.node = node

    def handle(self, connection, packet):
        if not connection.context.handshaken:
            raise NotHandshaken("client push before handshake")
        content = decode_body(
            packet, connection.decrypt_cipher, self.node.config.core.max_inflated_size
        )
        self.log.debug(
            "client push from {user} ({device}): {size} bytes",
            user=connection.context.user_id,
            device=connection.context.device_id,
            size=len(content),
        )
        if packet.has_flag(Flags.AUTO_ACK):
            connection.write_packet(make_raw_packet(Command.ACK, None, packet.session_id))

"""
The seam between a device's connection and the rest of the node.

Handlers, the router center, the push center, acks and offline delivery
talk to a device only through L{IDeviceConnection}; the TCP protocol and the
WebSocket connection are its two adapters, each speaking its own wire
(binary frames, JSON text frames) behind the same methods.
"""

from zope.interface import Attribute, Interface

__all__ = ["IDeviceConnection"]


class IDeviceConnection(Interface):
    """
    One connected device, whatever carries its packets.
    """

    context = Attribute("The L{mpush.server.device.context.SessionContext}; replaced whole by establish.")
    state_machine = Attribute(
        "The L{mpush.server.device.state.ConnectionStateMachine}: the only place its state changes."
    )
    state = Attribute("The current L{mpush.server.device.state.ConnectionState} (read only).")
    conn_id = Attribute("The id the node knows it by, unique among live connections.")
    peer = Attribute("C{host:port} of the device, for log lines.")
    writable = Attribute("False while the send buffer is over its high-water mark or the connection is closed.")
    is_open = Attribute("Whether it still reads, handles and writes.")
    encrypted = Attribute(
        "Whether its packets carry keys and ciphers (TCP) or none (WebSocket, spec 15): what a "
        "handshake agrees differs."
    )

    def read(packet):
        """
        The body of C{packet} as its command's message (a message of
        L{mpush.protocol.messages}; a client PUSH's content as bytes), read
        the way this connection's wire carries it (binary, decrypted and
        inflated; or JSON); C{None} for a command without a body.  The
        dispatcher calls it once per packet, so handlers receive messages.

        @raise Exception: the body cannot be read; the dispatcher answers it.
        """

    def write_packet(packet):
        """
        Queue C{packet}.

        @return: a L{Deferred} that fires once it is handed to the transport,
            or fails with L{mpush.server.device.errors.ConnectionClosed}.
        """

    def send(cmd, message, session_id, flags=0):
        """
        Write C{message} the MPush "send" way (compressed and encrypted where
        the wire has them); a L{Deferred} as L{write_packet}'s.
        """

    def send_raw(cmd, message, session_id, flags=0):
        """
        Write C{message} the MPush "sendRaw" way (neither); a L{Deferred}.
        """

    def send_push(content, session_id, flags=0):
        """
        Write a PUSH of C{content} (bytes) now, without a Deferred: the push
        center's synchronous path.

        @return: whether it was handed to the transport.
        """

    def reply_error(request, code, reason, data=None, close=False):
        """
        Answer C{request} (anything with C{cmd} and C{session_id}) with
        ERROR, closing afterwards if asked.
        """

    def establish(context):
        """
        Make C{context} the connection's session (a handshake's reply was
        written, or fast connect adopted a cached session).
        """

    def close(reason=None):
        """
        Close once what was written has gone out; read nothing more.
        C{reason} says why to a device whose wire can carry it.
        """

    def abort():
        """
        Drop the connection now, unsent data and all (a drain's last resort
        for a connection that did not close in its grace).
        """

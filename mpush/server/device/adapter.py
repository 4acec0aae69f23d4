"""
What the TCP and WebSocket adapters over a device connection share.

Both hold a L{ConnectionStateMachine}, a L{SessionContext} and a
pre-handshake deadline; adopting a session touches all three the same way
on either wire, so it is written once here.
"""

from __future__ import annotations

from typing import Any

from mpush.server.device.context import SessionContext
from mpush.server.device.state import ConnectionStateMachine

__all__ = ["DeviceAdapter"]


class DeviceAdapter:
    """
    A mixin for the device connections: L{establish} of
    L{mpush.server.device.interfaces.IDeviceConnection}.
    """

    __slots__ = ()

    node: Any
    context: SessionContext
    state_machine: ConnectionStateMachine
    _handshake_due: float | None

    def establish(self, context: SessionContext) -> None:
        """
        Make C{context} this connection's session: after a handshake's reply
        was written, or when fast connect adopts a cached session.  A user
        bound before is unbound first, so its routes do not outlive it.
        """
        if self.context.user_id is not None:
            self.node.connection_unbound(self)
        self.context = context
        self.state_machine.establish()
        self._handshake_due = None
